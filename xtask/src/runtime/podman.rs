//! The stack on podman: a network of the run's own, the Secrets created from the
//! manifests, every Pod played from one rendered file; and teardown of all of it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{
    cmd::Cmd,
    engine::{container_name, Podman},
    manifests::{secret_payload, PodmanStack},
    project::Project,
    report::Reporter,
};

pub struct PodmanRun {
    pub id: String,
    pub network: String,
    /// `target/e2e/runs/<id>`: the rendered stack, secrets' payloads while up, logs on failure.
    pub dir: PathBuf,
    pub stack: PodmanStack,
    logs: PathBuf,
    created_network: bool,
    created_secrets: Vec<String>,
    played: bool,
}

impl PodmanRun {
    pub fn new(project: &Project, id: String, stack: PodmanStack) -> PodmanRun {
        let dir = project.runs_dir().join(&id);
        PodmanRun {
            network: format!("e2e-{id}"),
            logs: project.logs_dir().join(format!("run-{id}.log")),
            id,
            dir,
            stack,
            created_network: false,
            created_secrets: Vec::new(),
            played: false,
        }
    }

    pub fn stack_file(&self) -> PathBuf {
        self.dir.join("stack.yaml")
    }

    /// Every container as podman names it, with its pod.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.stack
            .pods
            .iter()
            .flat_map(|p| p.containers.iter().map(move |c| (p.name.clone(), container_name(&p.name, &c.name))))
            .collect()
    }

    /// The services' URLs for the test suite: `<POD>_URL` for each published pod.
    pub fn urls(&self) -> BTreeMap<String, String> {
        self.stack
            .published
            .iter()
            .map(|p| (url_var(&p.pod), format!("http://127.0.0.1:{}", p.host_port)))
            .collect()
    }

    /// Refuses to start over what another run (or a crashed one) left: podman names pods
    /// and secrets globally, and `kube play` would fail half-way.
    pub fn check_free(&self, r: &Reporter) -> anyhow::Result<()> {
        let mut taken = Vec::new();
        for pod in &self.stack.pods {
            if Podman.pod_exists(&pod.name).succeeds()? {
                taken.push(format!("pod {}", pod.name));
            }
        }
        for s in &self.stack.secrets {
            if Podman.secret_exists(&s.name).succeeds()? {
                taken.push(format!("secret {}", s.name));
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let pods: Vec<&str> = self.stack.pods.iter().map(|p| p.name.as_str()).collect();
        let secrets: Vec<&str> = self.stack.secrets.iter().map(|s| s.name.as_str()).collect();
        r.line("  another E2E stack is up (a run in progress, a `--keep` run, or one that crashed)");
        anyhow::bail!(
            "{} already exist{} in podman.\n  fix: wait for the other run, or remove what is left with\n    podman pod rm -f {}\n    podman secret rm {}",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            pods.join(" "),
            secrets.join(" ")
        )
    }

    /// Creates the network and the secrets and plays the stack. What was created is
    /// remembered, so `down` removes exactly that, even after a failure half-way.
    pub fn up(&mut self, r: &Reporter) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(self.stack_file(), &self.stack.yaml)?;

        let net = Podman.network_create(&self.network);
        r.command(&net);
        net.run_logged(&self.logs).context("creating the run's podman network")?;
        self.created_network = true;

        for secret in self.stack.secrets.clone() {
            let file = self.dir.join(format!("secret-{}.json", secret.name));
            write_private(&file, &secret_payload(&secret))?;
            let create = Podman.secret_create(&secret.name, &file);
            r.command(&create);
            let result = create.run_logged(&self.logs);
            let _ = std::fs::remove_file(&file);
            result.with_context(|| format!("creating podman secret {}", secret.name))?;
            self.created_secrets.push(secret.name);
        }

        let play = Podman.kube_play(&self.network, &self.stack_file());
        r.command(&play);
        self.played = true; // a failed play can still leave pods behind
        play.run_logged(&self.logs).context("starting the pods with podman kube play")?;
        Ok(())
    }

    /// Removes every pod, secret and the network this run created. Runs every step even
    /// when one fails, and even after Ctrl-C, and reports all failures at the end.
    pub fn down(&mut self, r: &Reporter) -> anyhow::Result<()> {
        let mut steps: Vec<Cmd> = Vec::new();
        if self.played {
            steps.push(Podman.kube_down(&self.stack_file()));
            // `kube down` misses pods a failed play left half-made; this catches them.
            steps.extend(self.stack.pods.iter().map(|p| Podman.pod_rm(&p.name)));
        }
        steps.extend(self.created_secrets.iter().map(|s| Podman.secret_rm(s)));
        if self.created_network {
            steps.push(Podman.network_rm(&self.network));
        }
        let mut failures = Vec::new();
        for step in steps {
            let step = step.survives_interrupt();
            r.command(&step);
            if let Err(e) = step.run_logged(&self.logs) {
                failures.push(format!("{e:#}"));
            }
        }
        self.played = false;
        self.created_secrets.clear();
        self.created_network = false;
        anyhow::ensure!(failures.is_empty(), "teardown left something behind:\n{}", failures.join("\n"));
        Ok(())
    }

    /// Saves every container's log (and its state) under `<run dir>/logs/`.
    pub fn save_logs(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        for (_, container) in self.containers() {
            let logs = Podman
                .logs(&container)
                .survives_interrupt()
                .read()
                .unwrap_or_else(|e| format!("(no log: {e:#})\n"));
            let state = Podman.container_state(&container).read().unwrap_or_else(|e| format!("{e:#}"));
            std::fs::write(dir.join(format!("{container}.log")), format!("# state: {}\n{logs}", state.trim()))?;
        }
        Ok(dir)
    }

    /// How to reach and remove a stack left up with `--keep`.
    pub fn keep_instructions(&self) -> String {
        let mut s = String::from("the stack is left running:\n");
        for (var, url) in self.urls() {
            s.push_str(&format!("  {var}={url}\n"));
        }
        s.push_str(&format!(
            "  run the suite again: {}\n",
            self.urls().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ") + " cargo test -p e2e-suite"
        ));
        s.push_str("  logs: podman logs -f gateway-gateway (and data-storage-data-storage, postgres-postgres, redis-redis)\n");
        s.push_str("  remove it:\n");
        s.push_str(&format!("    {}\n", Podman.kube_down(&self.stack_file())));
        for secret in &self.created_secrets {
            s.push_str(&format!("    {}\n", Podman.secret_rm(secret)));
        }
        s.push_str(&format!("    {}\n", Podman.network_rm(&self.network)));
        s
    }
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
    #[test]
    fn url_vars() {
        assert_eq!(super::url_var("data-storage"), "DATA_STORAGE_URL");
        assert_eq!(super::url_var("gateway"), "GATEWAY_URL");
    }
}
