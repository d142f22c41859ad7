//! The stack in a Kind cluster: what it does, and why it is checked only as a command plan
//! against kind's and kubectl's documentation, is docs/kind.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_norway::Value;

use crate::{cmd::Cmd, engine::Engine, handoff::Handoff, project::Project, report::Reporter};

use super::{
    service_control,
    step::{self, Exec, Live, Phase, Step},
    url_var, Created as AnyCreated, Health, RunId, RunRecord, Stack, StackFile,
};

/// What a Kind run creates, as recorded for `e2e --down`: a cluster of its own (deleted
/// whole), or a namespace in a reused one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Created {
    pub cluster: String,
    pub reuse: bool,
    pub namespace: String,
    pub provider: Engine,
}

impl Created {
    /// One stage, one command.
    pub fn teardown(&self) -> Vec<Vec<Cmd>> {
        let (ns, flags) = (&self.namespace, ["--wait=false", "--ignore-not-found"]);
        vec![vec![match self.reuse {
            true => kubectl(&self.cluster).args(["delete", "namespace", ns]).args(flags),
            false => kind(self.provider).args(["delete", "cluster", "--name", &self.cluster]),
        }]]
    }
}

fn kind(provider: Engine) -> Cmd {
    match provider {
        Engine::Podman => Cmd::new("kind").env("KIND_EXPERIMENTAL_PROVIDER", "podman"),
        Engine::Docker => Cmd::new("kind"),
    }
}

fn kubectl(cluster: &str) -> Cmd {
    Cmd::new("kubectl").args(["--context", &format!("kind-{cluster}")])
}

/// A Kind run: names, files and ports, all decided before anything runs.
#[derive(Debug, Clone)]
pub struct KindRun {
    pub id: RunId,
    pub cluster: String,
    /// `--reuse-cluster`: the cluster is not created nor deleted, only the namespace.
    pub reuse: bool,
    pub namespace: String,
    pub provider: Engine,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// NodePort to host port, from the cluster config.
    pub ports: BTreeMap<u16, u16>,
    /// Service name to NodePort, from the manifests.
    pub node_ports: BTreeMap<String, u16>,
    /// Where the images come from: an archive of `save-images`, or the engine.
    pub archive_source: Option<PathBuf>,
    /// The images, and the Pods, as the manifests name them.
    pub references: Vec<String>,
    pub pods: Vec<String>,
    /// The rendered cluster config (empty for a reused cluster) and manifests.
    pub config: String,
    pub stack: String,
    /// With `--keep`: where the cluster's port mappings are recorded, for `--reuse-cluster`.
    pub ports_record: Option<PathBuf>,
}

impl KindRun {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The uncompressed archive `kind load image-archive` reads.
    fn tar(&self) -> String {
        self.file("images.tar")
    }

    fn kind(&self, args: &[&str]) -> Cmd {
        kind(self.provider).args(args.iter().copied()).args(["--name", &self.cluster])
    }

    /// kubectl in the run's namespace.
    fn kubectl_ns(&self, args: &[&str]) -> Cmd {
        kubectl(&self.cluster).args(["--namespace", &self.namespace]).args(args.iter().copied())
    }

    pub fn make_tar(&self) -> Cmd {
        match &self.archive_source {
            Some(a) if a.extension().is_some_and(|e| e == "zst") => Cmd::new("zstd")
                .args(["-d", "-q", "-f", "-o", &self.tar()])
                .arg(a.display().to_string()),
            Some(a) => Cmd::new("cp").arg(a.display().to_string()).arg(self.tar()),
            None => self.provider.save(&self.references, Some(Path::new(&self.tar()))),
        }
    }

    fn node_has_image(&self, node: &str, reference: &str) -> Cmd {
        let c = Cmd::new(self.provider.program()).args(["exec", node, "crictl", "inspecti", "-q"]);
        c.arg(containerd_name(reference))
    }

    fn load_archive(&self, node: &str) -> Cmd {
        self.kind(&["load", "image-archive", &self.tar()]).args(["--nodes", node])
    }

    fn apply(&self) -> Cmd {
        self.kubectl_ns(&["apply", "--filename", &self.file("stack.yaml")])
    }

    fn get_pods_json(&self) -> Cmd {
        self.kubectl_ns(&["get", "pods", "--output", "json"])
    }

    /// Loads the archive into every node that lacks one of the images, all nodes at once.
    fn load_images(&self, r: &Reporter) -> anyhow::Result<()> {
        let nodes = self.kind(&["get", "nodes"]).read()?;
        let nodes: Vec<&str> = nodes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        anyhow::ensure!(!nodes.is_empty(), "kind reports no nodes for cluster {}", self.cluster);
        let has = |n: &str, i: &String| self.node_has_image(n, i).succeeds().unwrap_or(false);
        let lacking: Vec<Cmd> = nodes
            .into_iter()
            .filter(|n| !self.references.iter().all(|i| has(n, i)))
            .map(|n| self.load_archive(n))
            .collect();
        if lacking.is_empty() {
            r.line("  every node has every image");
        }
        lacking.iter().for_each(|c| r.command(c));
        let failed = Live.run_all(&lacking, &self.log);
        let _ = std::fs::remove_file(self.tar());
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
        Ok(())
    }

    /// The failure bundle (docs/kind.md), as (file, command).
    pub fn bundle(&self, pods: &[String]) -> Vec<(String, Cmd)> {
        let ns = |args: &[&str]| self.kubectl_ns(args);
        let export = self.kind(&["export", "logs", &self.file("bundle/kind")]);
        let mut cmds = vec![
            ("kind-export-logs.txt".into(), export),
            ("events.txt".into(), ns(&["get", "events", "--sort-by=.lastTimestamp"])),
            ("describe-pods.txt".into(), ns(&["describe", "pods"])),
        ];
        for pod in pods {
            let logs = ns(&["logs", &format!("pod/{pod}"), "--all-containers", "--timestamps"]);
            cmds.push((format!("{pod}.log"), logs.clone()));
            cmds.push((format!("{pod}.previous.log"), logs.arg("--previous")));
        }
        cmds
    }

    /// The new images into the nodes, each changed Pod deleted, the manifests applied (which
    /// recreates them and leaves the rest).
    pub fn replace_cmds(&self, pods: &[String], images: &[String]) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        if !images.is_empty() {
            cmds.push(self.provider.save(images, Some(Path::new(&self.tar()))));
            cmds.push(self.kind(&["load", "image-archive", &self.tar()]));
        }
        for pod in pods {
            let delete = self.kubectl_ns(&["delete", &format!("pod/{pod}"), "--wait=true"]);
            cmds.push(delete.arg("--ignore-not-found"));
        }
        cmds.extend((!pods.is_empty()).then(|| self.apply()));
        cmds
    }
}

impl Stack for KindRun {
    fn id(&self) -> &RunId {
        &self.id
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn log(&self) -> &Path {
        &self.log
    }

    fn plan<'a>(&'a self, ready_timeout: Duration, tests: Vec<Phase<'a>>) -> Vec<Phase<'a>> {
        let run = |cmd, doing: &str| Step::Run { cmd, doing: doing.into() };
        let write = |path, contents| Step::Write { path, contents };
        // `kind load image-archive` reads a plain tar: unpack the archive, or save one.
        let tar = vec![
            write(self.dir.join("stack.yaml"), self.stack.clone()),
            run(self.make_tar(), "making the image archive for kind"),
        ];
        let mut phases = vec![Phase::new("image archive for kind", tar)];
        if !self.reuse {
            let config = self.file("kind-cluster.yaml");
            let create =
                self.kind(&["create", "cluster"]).args(["--config", &config, "--wait", "120s"]);
            let mut steps = vec![
                Step::Record(self.final_record()),
                write(config.into(), self.config.clone()),
                run(create, "creating the Kind cluster"),
            ];
            let ports = serde_json::to_string(&self.ports).expect("ports serialise");
            steps.extend(self.ports_record.clone().map(|path| write(path, ports)));
            phases.push(Phase::new("create cluster", steps));
        }
        let node = format!("{}-control-plane", self.cluster);
        let mut what = format!("{}  (the nodes)\n", self.kind(&["get", "nodes"]));
        for r in &self.references {
            what += &format!("{}  (per node and image)\n", self.node_has_image(&node, r));
        }
        what += &format!("{}  (each node that lacks one, all at once)", self.load_archive(&node));
        let load = Step::Watch { what, run: Box::new(move |r| self.load_images(r)) };
        phases.push(Phase::new("load images", vec![load]));
        let namespace = kubectl(&self.cluster).args(["create", "namespace", &self.namespace]);
        let record = self.reuse.then(|| Step::Record(self.final_record()));
        let deploy = [
            run(namespace, "creating the run's namespace"),
            run(self.apply(), "applying the manifests"),
        ];
        phases.push(Phase::new("deploy", record.into_iter().chain(deploy).collect()));
        let what = format!("{}  (polled until every pod is Ready)", self.get_pods_json());
        let wait = Step::Watch { what, run: Box::new(move |r| self.wait_ready(r, ready_timeout)) };
        phases.push(Phase::new("wait until ready", vec![wait]));
        phases.into_iter().chain(tests).collect()
    }

    fn wait_ready(&self, r: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        let ready = crate::poll::until(timeout, Duration::from_millis(500), || {
            let list: serde_json::Value = serde_json::from_str(&self.get_pods_json().read()?)?;
            let pods = list["items"].as_array().cloned().unwrap_or_default();
            waiting.clear();
            for pod in &pods {
                let name = pod["metadata"]["name"].as_str().unwrap_or("?");
                match pod_health(pod) {
                    Health::Ready => {}
                    Health::Waiting(why) => waiting.push(format!("{name}: {why}")),
                    Health::Failed(why) => {
                        let pod = format!("pod/{name}");
                        let read = |args: &[&str]| self.kubectl_ns(args).read().unwrap_or_default();
                        let logs = read(&["logs", &pod, "--all-containers", "--tail", "30"]);
                        let describe = read(&["describe", &pod]);
                        anyhow::bail!("pod {name} failed while waiting for readiness: {why}\n--- logs ---\n{logs}\n--- describe ---\n{describe}");
                    }
                }
            }
            let ready = !pods.is_empty() && waiting.is_empty();
            if ready {
                r.line(format!("  {} pods ready", pods.len()));
            }
            Ok(ready)
        })?;
        let (waiting, secs) = (waiting.join("\n  "), timeout.as_secs());
        anyhow::ensure!(ready, "not ready after {secs}s:\n  {waiting}");
        Ok(())
    }

    fn urls(&self) -> BTreeMap<String, String> {
        let url = |np| self.ports.get(np).map(|p| format!("http://127.0.0.1:{p}"));
        self.node_ports.iter().filter_map(|(svc, np)| Some((url_var(svc), url(np)?))).collect()
    }

    /// A Pod is deleted, and the run's manifests applied again bring it back (bare Pods
    /// have no controller to scale; the other Pods are unchanged by the apply).
    fn control(&self, dedup_ttl_seconds: u64) -> StackFile {
        let services = self.pods.iter().map(|pod| {
            let stop = self.kubectl_ns(&["delete", &format!("pod/{pod}"), "--wait=true"]);
            let exec = self.kubectl_ns(&["exec", "-i", pod, "--"]);
            (pod.clone(), service_control(&stop, &self.apply(), &exec))
        });
        StackFile { runtime: "kind".into(), dedup_ttl_seconds, services: services.collect() }
    }

    fn final_record(&self) -> RunRecord {
        let (cluster, namespace) = (self.cluster.clone(), self.namespace.clone());
        let created = Created { cluster, reuse: self.reuse, namespace, provider: self.provider };
        RunRecord::new(&self.id, AnyCreated::Kind(created))
    }

    fn keep_instructions(&self) -> String {
        let urls: String = self.urls().iter().map(|(k, v)| format!("  {k}={v}\n")).collect();
        format!(
            "the cluster is left running: kubectl --context kind-{} --namespace {} get pods\n{urls}  remove it: cargo xtask e2e --down {}",
            self.cluster, self.namespace, self.id
        )
    }

    fn save_failure(&self) -> anyhow::Result<PathBuf> {
        let _ = std::fs::remove_file(self.tar());
        let bundle = self.dir.join("bundle");
        std::fs::create_dir_all(&bundle)?;
        for (file, c) in self.bundle(&self.pods) {
            let text = c.survives_interrupt().read().unwrap_or_else(|e| format!("{e:#}"));
            std::fs::write(bundle.join(file), text)?;
        }
        Ok(bundle)
    }

    fn failure_commands(&self) -> Vec<String> {
        let bundle = self.bundle(&self.pods).into_iter();
        bundle.map(|(file, c)| format!("{c}  # on failure, into bundle/{file}")).collect()
    }

    fn replace(
        &mut self,
        project: &Project,
        r: &Reporter,
        handoff: &Handoff,
    ) -> anyhow::Result<Vec<String>> {
        let manifests = crate::manifests::Manifests::load(&project.manifests_dir())?;
        let (yaml, _) = manifests.render_kind(&handoff.pinned())?;
        let names = changed_pods(&self.stack, &yaml);
        let references: Vec<String> = handoff.images.iter().map(|i| i.reference.clone()).collect();
        let images: Vec<String> =
            references.iter().filter(|i| !self.references.contains(i)).cloned().collect();
        crate::fsx::write_atomic(&self.dir.join("stack.yaml"), &yaml)?;
        let doing = format!("replacing {}", names.join(", "));
        step::run_shown(r, &self.log, &self.replace_cmds(&names, &images), &doing)?;
        let _ = std::fs::remove_file(self.tar());
        self.references = references;
        self.stack = yaml;
        Ok(names)
    }
}

/// The Pods of `new` (rendered manifests) to create again: their document differs from `old`'s,
/// or they read a Secret whose document does (a container reads its Secrets when created).
pub fn changed_pods(old: &str, new: &str) -> Vec<String> {
    let changed = |kind: &str| {
        let (old, new) = (docs_of(old, kind), docs_of(new, kind));
        new.into_iter().filter(move |(name, doc)| old.get(name) != Some(doc))
    };
    let secrets: BTreeSet<String> = changed("Secret").map(|(name, _)| name).collect();
    let pods_of_secrets = docs_of(new, "Pod")
        .into_iter()
        .filter(|(_, doc)| crate::manifests::secrets_read(doc).iter().any(|s| secrets.contains(s)));
    let pods: BTreeSet<String> =
        changed("Pod").chain(pods_of_secrets).map(|(name, _)| name).collect();
    pods.into_iter().collect()
}

/// Each document of this kind in rendered manifests, by name.
fn docs_of(yaml: &str, kind: &str) -> BTreeMap<String, Value> {
    yaml.split("---\n")
        .filter_map(|doc| {
            let v: Value = serde_norway::from_str(doc).ok()?;
            let name = v["metadata"]["name"].as_str()?.to_owned();
            (v["kind"].as_str() == Some(kind)).then_some((name, v))
        })
        .collect()
}

/// containerd names `localhost/x:1` as is, and `x:1` as `docker.io/library/x:1`.
pub fn containerd_name(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            reference.to_owned()
        }
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    }
}

/// The cluster config with its name and a free host port for every extraPortMapping, and
/// NodePort to host port.
pub fn render_cluster_config(
    template: &str,
    name: &str,
    mut free_port: impl FnMut() -> anyhow::Result<u16>,
) -> anyhow::Result<(String, BTreeMap<u16, u16>)> {
    let mut doc: Value =
        serde_norway::from_str(template).context("parsing the Kind cluster config")?;
    anyhow::ensure!(
        doc["kind"].as_str() == Some("Cluster"),
        "the Kind cluster config must be `kind: Cluster`"
    );
    doc["name"] = Value::String(name.to_owned());
    let mut ports = BTreeMap::new();
    for node in doc["nodes"].as_sequence_mut().context("the Kind cluster config has no nodes")? {
        let mappings = node.get_mut("extraPortMappings").and_then(Value::as_sequence_mut);
        for m in mappings.into_iter().flatten() {
            let port =
                m["containerPort"].as_u64().context("an extraPortMapping without containerPort")?;
            let host_port = free_port()?;
            m["hostPort"] = Value::Number(host_port.into());
            ports.insert(port as u16, host_port);
        }
    }
    Ok((serde_norway::to_string(&doc)?, ports))
}

/// The waiting reasons that will not pass by themselves.
const FAILED: &str = "CrashLoopBackOff ErrImageNeverPull ImagePullBackOff ErrImagePull \
                      CreateContainerConfigError InvalidImageName";

/// Decides from one item of `kubectl get pods -o json`.
pub fn pod_health(pod: &serde_json::Value) -> Health {
    let status = &pod["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    if phase == "Failed" {
        let message = status["message"].as_str().unwrap_or("");
        return Health::Failed(format!("phase Failed: {message}"));
    }
    for s in status["containerStatuses"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        let waiting = s["state"]["waiting"]["reason"].as_str().unwrap_or("");
        if FAILED.split_whitespace().any(|r| r == waiting) {
            return Health::Failed(format!("container {name}: {waiting}"));
        }
        let code = s["lastState"]["terminated"]["exitCode"].as_i64().unwrap_or(0);
        if s["restartCount"].as_u64().unwrap_or(0) > 0 {
            return Health::Failed(format!("container {name} restarted (last exit code {code})"));
        }
    }
    let conditions = status["conditions"].as_array().into_iter().flatten();
    match conditions.into_iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
        true => Health::Ready,
        false => Health::Waiting(format!("phase {phase}")),
    }
}

#[cfg(test)]
mod tests;
