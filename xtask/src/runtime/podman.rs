//! The stack on podman: a network of the run's own, the Secrets created from the
//! manifests, every Pod played from one rendered file; and teardown of all of it.
//!
//! What a run creates is recorded in `target/e2e/runs/<id>/state.json` before it is created,
//! so `cargo xtask e2e --down` can remove what a crashed or `--keep` run left.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    cmd::Cmd,
    engine::{container_name, Podman},
    manifests::{secret_payload, PodmanStack},
    project::Project,
    report::Reporter,
};

/// What a run has created (or is about to), as recorded on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub id: String,
    pub pid: u32,
    pub network: String,
    pub stack_file: PathBuf,
    pub pods: Vec<String>,
    /// Set before each object is created: removing what does not exist is harmless.
    pub network_created: bool,
    pub secrets: Vec<String>,
    pub played: bool,
    /// For a Kind run: its cluster (created, or reused) and namespace.
    #[serde(default)]
    pub kind: Option<crate::runtime::kind::KindState>,
}

impl RunState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Option<RunState> {
        serde_json::from_slice(&std::fs::read(RunState::path(dir)).ok()?).ok()
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, RunState::path(dir))?;
        Ok(())
    }

    /// The teardown, as commands: pods, then secrets, then the network (or, for Kind, the
    /// cluster or the namespace).
    pub fn teardown(&self) -> Vec<Cmd> {
        if let Some(kind) = &self.kind {
            return kind.teardown();
        }
        let mut steps = Vec::new();
        if self.played {
            steps.push(Podman.kube_down(&self.stack_file));
            // `kube down` misses pods a failed play left half-made; this catches them.
            steps.extend(self.pods.iter().map(|p| Podman.pod_rm(p)));
        }
        steps.extend(self.secrets.iter().map(|s| Podman.secret_rm(s)));
        if self.network_created {
            steps.push(Podman.network_rm(&self.network));
        }
        steps
    }

    /// What of this run still exists in podman (after a teardown: what it failed to remove).
    pub fn leftovers(&self) -> Vec<String> {
        if self.kind.is_some() {
            return Vec::new();
        }
        let exists = |c: Cmd| c.survives_interrupt().succeeds().unwrap_or(false);
        let mut left = Vec::new();
        if self.played {
            left.extend(
                self.pods
                    .iter()
                    .filter(|p| exists(Podman.pod_exists(p)))
                    .map(|p| format!("pod {p}")),
            );
        }
        left.extend(
            self.secrets
                .iter()
                .filter(|s| exists(Podman.secret_exists(s)))
                .map(|s| format!("secret {s}")),
        );
        if self.network_created && exists(Podman.network_exists(&self.network)) {
            left.push(format!("network {}", self.network));
        }
        left
    }

    /// Whether the process that made this run is still running.
    pub fn in_progress(&self) -> bool {
        self.pid != std::process::id() && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

pub struct PodmanRun {
    pub id: String,
    /// `target/e2e/runs/<id>`: the rendered stack, its state, logs on failure.
    pub dir: PathBuf,
    pub stack: PodmanStack,
    logs: PathBuf,
    state: RunState,
}

impl PodmanRun {
    pub fn new(project: &Project, id: String, stack: PodmanStack) -> PodmanRun {
        let dir = project.runs_dir().join(&id);
        let state = RunState {
            id: id.clone(),
            pid: std::process::id(),
            network: format!("e2e-{id}"),
            stack_file: dir.join("stack.yaml"),
            pods: stack.pods.iter().map(|p| p.name.clone()).collect(),
            ..RunState::default()
        };
        PodmanRun {
            logs: project.logs_dir().join(format!("run-{id}.log")),
            id,
            dir,
            stack,
            state,
        }
    }

    /// The run's own podman network.
    pub fn network(&self) -> &str {
        &self.state.network
    }

    pub fn stack_file(&self) -> PathBuf {
        self.state.stack_file.clone()
    }

    /// Every container as podman names it, with the pod's name in the manifests.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.stack
            .pods
            .iter()
            .flat_map(|p| {
                p.containers.iter().map(move |c| {
                    (
                        format!("{}-{}", p.base, c.name),
                        container_name(&p.name, &c.name),
                    )
                })
            })
            .collect()
    }

    /// The services' URLs for the test suite: `<POD>_URL` for each published pod.
    pub fn urls(&self) -> BTreeMap<String, String> {
        self.stack
            .published
            .iter()
            .map(|p| {
                (
                    url_var(&p.base),
                    format!("http://127.0.0.1:{}", p.host_port),
                )
            })
            .collect()
    }

    /// The commands `up` runs, for `--dry-run`.
    pub fn plan_up(&self) -> Vec<Cmd> {
        let mut cmds = vec![Podman.network_create(self.network())];
        cmds.extend(
            self.stack
                .secrets
                .iter()
                .map(|s| Podman.secret_create(&s.name, &self.secret_file(&s.name))),
        );
        cmds.push(Podman.kube_play(self.network(), &self.stack_file()));
        cmds
    }

    /// The commands `down` runs after a complete `up`, for `--dry-run`.
    pub fn plan_down(&self) -> Vec<Cmd> {
        RunState {
            network_created: true,
            secrets: self.stack.secrets.iter().map(|s| s.name.clone()).collect(),
            played: true,
            ..self.state.clone()
        }
        .teardown()
    }

    fn secret_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("secret-{name}.json"))
    }

    /// Creates the network and the secrets and plays the stack, recording each object in
    /// the run's state before creating it.
    pub fn up(&mut self, r: &Reporter) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(self.stack_file(), &self.stack.yaml)?;

        self.state.network_created = true;
        self.state.save(&self.dir)?;
        let net = Podman.network_create(self.network());
        r.command(&net);
        net.run_logged(&self.logs)
            .context("creating the run's podman network")?;

        for secret in self.stack.secrets.clone() {
            let file = self.secret_file(&secret.name);
            write_private(&file, &secret_payload(&secret))?;
            self.state.secrets.push(secret.name.clone());
            self.state.save(&self.dir)?;
            let create = Podman.secret_create(&secret.name, &file);
            r.command(&create);
            let result = create.run_logged(&self.logs);
            let _ = std::fs::remove_file(&file);
            result.with_context(|| format!("creating podman secret {}", secret.name))?;
        }

        self.state.played = true;
        self.state.save(&self.dir)?;
        let play = Podman.kube_play(self.network(), &self.stack_file());
        r.command(&play);
        play.run_logged(&self.logs)
            .context("starting the pods with podman kube play")?;
        Ok(())
    }

    pub fn down(&mut self, r: &Reporter) -> anyhow::Result<()> {
        teardown(&self.dir, &self.state, &self.logs, r)?;
        // Nothing is left to remove: a second `down` does nothing.
        self.state.network_created = false;
        self.state.secrets.clear();
        self.state.played = false;
        Ok(())
    }

    /// Saves every container's log (and its state) under `<run dir>/logs/`, named by the
    /// manifests' pod names (`gateway-gateway.log`).
    pub fn save_logs(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        for (file, container) in self.containers() {
            let logs = Podman
                .logs(&container)
                .survives_interrupt()
                .read()
                .unwrap_or_else(|e| format!("(no log: {e:#})\n"));
            let state = Podman
                .container_state(&container)
                .survives_interrupt()
                .read()
                .unwrap_or_else(|e| format!("{e:#}"));
            std::fs::write(
                dir.join(format!("{file}.log")),
                format!("# container {container}, state: {}\n{logs}", state.trim()),
            )?;
        }
        Ok(dir)
    }

    /// How to reach and remove a stack left up with `--keep`.
    pub fn keep_instructions(&self) -> String {
        let mut s = String::from("the stack is left running:\n");
        for (var, url) in self.urls() {
            s.push_str(&format!("  {var}={url}\n"));
        }
        let vars: Vec<String> = self
            .urls()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!(
            "  run the suite again: {} cargo test -p e2e-suite\n",
            vars.join(" ")
        ));
        let names: Vec<String> = self.containers().into_iter().map(|(_, c)| c).collect();
        s.push_str(&format!(
            "  logs: podman logs -f CONTAINER, for {}\n",
            names.join(", ")
        ));
        s.push_str(&format!(
            "  remove it: cargo xtask e2e --down {}\n",
            self.id
        ));
        s
    }
}

/// Runs the teardown of a state: every step, even when one fails and even after Ctrl-C.
/// A step may fail because what it removes never existed (a run interrupted half-way) or is
/// gone already, so what counts is what is left afterwards: if anything is, every failure is
/// reported; if nothing is, the state file is removed.
pub fn teardown(dir: &Path, state: &RunState, log: &Path, r: &Reporter) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for step in state.teardown() {
        let step = step.survives_interrupt();
        r.command(&step);
        if let Err(e) = step.run_logged(log) {
            failures.push(format!("{e:#}"));
        }
    }
    let left = state.leftovers();
    if !failures.is_empty() && (state.kind.is_some() || !left.is_empty()) {
        anyhow::bail!(
            "teardown left something behind{}:\n{}\n  fix: `cargo xtask e2e --down {}` tries again",
            if left.is_empty() {
                String::new()
            } else {
                format!(" ({})", left.join(", "))
            },
            failures.join("\n"),
            state.id
        );
    }
    let _ = std::fs::remove_file(RunState::path(dir));
    Ok(())
}

/// `cargo xtask e2e --down [RUN]`: removes what runs left (crashed, interrupted twice, or
/// `--keep`). Without a run id, every run whose process is gone; a run in progress is only
/// removed when named.
pub fn down(project: &Project, r: &Reporter, only: Option<&str>) -> anyhow::Result<()> {
    let runs = project.runs_dir();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&runs) {
        for e in entries.filter_map(Result::ok) {
            if let Some(state) = RunState::load(&e.path()) {
                found.push((e.path(), state));
            }
        }
    }
    found.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    if let Some(id) = only {
        found.retain(|(_, s)| s.id == id);
        anyhow::ensure!(
            !found.is_empty(),
            "no run {id} with anything left in {}",
            project.display(&runs)
        );
    }
    if found.is_empty() {
        r.line("nothing to remove: no run has left anything");
        return Ok(());
    }
    let mut failures = Vec::new();
    for (dir, state) in found {
        if only.is_none() && state.in_progress() {
            r.line(format!(
                "run {} is in progress (pid {}): left alone; `--down {}` removes it anyway",
                state.id, state.pid, state.id
            ));
            continue;
        }
        r.line(format!("removing what run {} left", state.id));
        let log = project.logs_dir().join(format!("run-{}.log", state.id));
        if let Err(e) = teardown(&dir, &state, &log, r) {
            failures.push(format!("{e:#}"));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// `data-storage` becomes `DATA_STORAGE_URL`.
pub fn url_var(pod: &str) -> String {
    format!("{}_URL", pod.to_ascii_uppercase().replace('-', "_"))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_vars() {
        assert_eq!(url_var("data-storage"), "DATA_STORAGE_URL");
        assert_eq!(url_var("gateway"), "GATEWAY_URL");
    }

    #[test]
    fn the_podman_plan_is_exact() {
        let m = crate::manifests::Manifests::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"),
        )
        .unwrap();
        let stack = m
            .render_podman(&BTreeMap::new(), "103501-42", || Ok(40000))
            .unwrap();
        let project = Project {
            root: "/r".into(),
            target_dir: "/r/target".into(),
            e2e_dir: "/r/target/e2e".into(),
        };
        let run = PodmanRun::new(&project, "20261127-103501-42".into(), stack);
        let up: Vec<String> = run.plan_up().iter().map(ToString::to_string).collect();
        assert_eq!(
            up,
            [
                "podman network create --label e2e.xtask=1 e2e-20261127-103501-42",
                "podman secret create postgres-credentials-103501-42 /r/target/e2e/runs/20261127-103501-42/secret-postgres-credentials-103501-42.json",
                "podman kube play --network e2e-20261127-103501-42 /r/target/e2e/runs/20261127-103501-42/stack.yaml",
            ]
        );
        let down: Vec<String> = run.plan_down().iter().map(ToString::to_string).collect();
        assert_eq!(
            down,
            [
                "podman kube down /r/target/e2e/runs/20261127-103501-42/stack.yaml",
                "podman pod rm --force --ignore postgres-103501-42",
                "podman pod rm --force --ignore redis-103501-42",
                "podman pod rm --force --ignore data-storage-103501-42",
                "podman pod rm --force --ignore gateway-103501-42",
                "podman secret rm postgres-credentials-103501-42",
                "podman network rm --force e2e-20261127-103501-42",
            ]
        );
        assert_eq!(run.urls()["GATEWAY_URL"], "http://127.0.0.1:40000");
    }

    #[test]
    fn a_kind_run_state_tears_down_its_cluster() {
        use crate::{engine::Engine, runtime::kind::KindState};
        let own = RunState {
            kind: Some(KindState {
                cluster: "e2e-1".into(),
                reuse: false,
                namespace: "e2e-1".into(),
                provider: Engine::Podman,
            }),
            ..RunState::default()
        };
        let cmds: Vec<String> = own.teardown().iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            ["KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name e2e-1"]
        );
        let json = serde_json::to_string(&own).unwrap();
        assert_eq!(
            serde_json::from_str::<RunState>(&json).unwrap(),
            own,
            "the state file round-trips"
        );
    }

    #[test]
    fn teardown_removes_exactly_what_was_recorded() {
        let half = RunState {
            id: "1".into(),
            network: "e2e-1".into(),
            stack_file: "s.yaml".into(),
            pods: vec!["gateway-1".into()],
            network_created: true,
            ..RunState::default()
        };
        let cmds: Vec<String> = half.teardown().iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            ["podman network rm --force e2e-1"],
            "nothing was played yet"
        );
        let full = RunState {
            secrets: vec!["pg-1".into()],
            played: true,
            ..half
        };
        let cmds: Vec<String> = full.teardown().iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            [
                "podman kube down s.yaml",
                "podman pod rm --force --ignore gateway-1",
                "podman secret rm pg-1",
                "podman network rm --force e2e-1"
            ]
        );
    }
}
