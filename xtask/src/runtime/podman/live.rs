//! `dev`'s live update on podman (Tilt's): a binary synced into the containers that run it.

use std::time::Duration;

use super::{container_name, ready, Podman, PodmanRun};
use crate::runtime::step::run_shown;
use crate::{build::PlanItem, fsx, manifests::repository, project::Project, report::Reporter};

impl PodmanRun {
    /// Tilt's live update: when no manifest changed (rendered with the images that run now,
    /// they are what runs), each container of a changed image is stopped with SIGTERM (the
    /// gateway hands its outbox lease over), gets the new binary where the Dockerfile's
    /// `COPY` put it, and starts again in the same pod: same address, no new pod.
    pub(super) fn live_update(
        &mut self,
        project: &Project,
        r: &Reporter,
        changed: &[&PlanItem],
        plan: &[PlanItem],
    ) -> anyhow::Result<Option<Vec<String>>> {
        let manifests = crate::manifests::Manifests::load(&project.manifests_dir())?;
        let images = self.stack.containers().map(|(_, c)| &c.image);
        let now = images.map(|i| (repository(i).to_owned(), i.clone())).collect();
        if self.rerender(&manifests, &now)?.pod_yaml != self.stack.pod_yaml {
            return Ok(None);
        }
        let mut synced = Vec::new();
        for item in changed {
            let binary = item.spec.binary().unwrap_or_default();
            let dockerfile = std::fs::read_to_string(project.root.join(&item.spec.dockerfile))?;
            let Some(dest) = binary_destination(&dockerfile, binary) else {
                return Ok(None);
            };
            let file = item.context.join(binary);
            let containers = self.stack.containers();
            for (pod, c) in containers.filter(|(_, c)| repository(&c.image) == item.spec.repository)
            {
                let name = container_name(&pod.name, &c.name);
                let (stop, start) = (Podman.container_stop(&name), Podman.container_start(&name));
                let cmds = [stop, Podman.cp_into(&file, &name, &dest), start];
                run_shown(r, &self.log, &cmds, &format!("syncing {binary} into {name}"))?;
                running_after_start(&name)?;
                synced.push(name);
            }
        }
        // The stack's files name the images of `plan` (what now runs, once packaged), so
        // later cycles compare against them.
        let pinned =
            plan.iter().map(|i| (i.spec.repository.clone(), i.reference.clone())).collect();
        let new = self.rerender(&manifests, &pinned)?;
        for (pod, yaml) in new.pods.iter().zip(&new.pod_yaml) {
            fsx::write_atomic(&self.pod_file(&pod.name), yaml)?;
        }
        fsx::write_atomic(&self.stack_file(), &new.yaml)?;
        self.stack = new;
        Ok(Some(synced))
    }
}

/// Until a started container runs (started again while podman 4.3's clean-up of its stop
/// stops it again: the race the suite's `Stack::start` meets too), within 60 s.
fn running_after_start(container: &str) -> anyhow::Result<()> {
    let running = crate::poll::until(Duration::from_secs(60), Duration::from_millis(50), || {
        match ready::health(container) {
            ready::Health::Running => return Ok(true),
            ready::Health::Starting => {}
            ready::Health::Failed(_) => drop(Podman.container_start(container).read()),
        }
        Ok(false)
    })?;
    anyhow::ensure!(running, "{container} did not run within 60 s of its start");
    Ok(())
}

/// Where a Dockerfile's `COPY` puts a binary: `COPY gateway /usr/local/bin/gateway` (flags
/// such as `--chmod` allowed; a destination ending in `/` gets the binary's name).
pub fn binary_destination(dockerfile: &str, binary: &str) -> Option<String> {
    dockerfile.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if !words.next()?.eq_ignore_ascii_case("COPY") {
            return None;
        }
        match words.filter(|w| !w.starts_with("--")).collect::<Vec<_>>()[..] {
            [src, dest] if src == binary && dest.ends_with('/') => Some(format!("{dest}{binary}")),
            [src, dest] if src == binary => Some(dest.to_owned()),
            _ => None,
        }
    })
}
