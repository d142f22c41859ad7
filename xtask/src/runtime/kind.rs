//! The stack in a Kind cluster: a cluster of the run's own from `test/e2e/kind-cluster.yaml`
//! (or `--reuse-cluster NAME`), the images loaded with `kind load image-archive` into the nodes
//! that lack them (in parallel), the manifests applied with kubectl into a namespace of the
//! run's own, readiness polled with a deadline (a crash-looping container fails the wait at
//! once), a bundle of logs on failure, and the cluster deleted unless `--keep`.
//!
//! Built against kind's and kubectl's documented command line; Kind cannot run on this
//! project's machines, so what runs here is the plan (the exact commands) and the rendered
//! files, checked by tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_norway::Value;

use crate::{cmd::Cmd, engine::Engine, handoff::Handoff, project::Project, report::Reporter};

use super::{
    step::{Phase, Step},
    url_var, Created as AnyCreated, RunId, RunRecord, ServiceControl, Stack, StackControl,
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
    /// Deletes the cluster, or only the namespace of a reused one.
    pub fn teardown(&self) -> Vec<Cmd> {
        if self.reuse {
            vec![kubectl(&self.cluster).args([
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ])]
        } else {
            vec![kind(self.provider).args(["delete", "cluster", "--name", &self.cluster])]
        }
    }
}

fn kind(provider: Engine) -> Cmd {
    let c = Cmd::new("kind");
    match provider {
        Engine::Podman => c.env("KIND_EXPERIMENTAL_PROVIDER", "podman"),
        Engine::Docker => c,
    }
}

/// `save` of images into one plain tar (podman: all of them, not only the first).
fn save(provider: Engine, tar: &str, images: &[String]) -> Cmd {
    let c = Cmd::new(provider.program()).arg("save");
    let c = if provider == Engine::Podman { c.arg("--multi-image-archive") } else { c };
    c.args(["--output", tar]).args(images.iter().cloned())
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
    /// The node provider: docker, or podman (`KIND_EXPERIMENTAL_PROVIDER=podman`).
    pub provider: Engine,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// NodePort to host port, from the cluster config.
    pub ports: BTreeMap<u16, u16>,
    /// Service name to NodePort, from the manifests.
    pub node_ports: BTreeMap<String, u16>,
    /// The uncompressed archive `kind load image-archive` reads.
    pub archive_tar: PathBuf,
    /// Where the images come from: an archive of `save-images`, or the engine.
    pub archive_source: Option<PathBuf>,
    /// The images, as the manifests run them.
    pub references: Vec<String>,
    /// The Pods of the manifests, by name.
    pub pods: Vec<String>,
    pub files: KindFiles,
}

/// The files a Kind run writes before it starts.
#[derive(Debug, Clone)]
pub struct KindFiles {
    /// The rendered cluster config (empty for a reused cluster).
    pub config: String,
    /// The rendered manifests.
    pub stack: String,
    /// With `--keep`: where the cluster's port mappings are recorded, for `--reuse-cluster`.
    pub ports_record: Option<PathBuf>,
}

impl KindRun {
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("kind-cluster.yaml")
    }

    pub fn stack_file(&self) -> PathBuf {
        self.dir.join("stack.yaml")
    }

    pub fn bundle_dir(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    fn kind(&self) -> Cmd {
        kind(self.provider)
    }

    fn kubectl(&self) -> Cmd {
        kubectl(&self.cluster)
    }

    fn kubectl_ns(&self) -> Cmd {
        self.kubectl().args(["--namespace", &self.namespace])
    }

    pub fn created(&self) -> Created {
        Created {
            cluster: self.cluster.clone(),
            reuse: self.reuse,
            namespace: self.namespace.clone(),
            provider: self.provider,
        }
    }

    /// Makes the plain tar `kind load image-archive` reads: unpacks the saved archive, or
    /// saves the images from the engine.
    pub fn make_tar(&self) -> Cmd {
        let tar = self.archive_tar.display().to_string();
        match &self.archive_source {
            Some(a) if a.extension().is_some_and(|e| e == "zst") => {
                Cmd::new("zstd").args(["-d", "-q", "-f", "-o", &tar]).arg(a.display().to_string())
            }
            Some(a) => Cmd::new("cp").arg(a.display().to_string()).arg(tar),
            None => save(self.provider, &tar, &self.references),
        }
    }

    pub fn create_cluster(&self) -> Cmd {
        self.kind()
            .args(["create", "cluster", "--name", &self.cluster, "--config"])
            .arg(self.config_file().display().to_string())
            .args(["--wait", "120s"])
    }

    pub fn get_nodes(&self) -> Cmd {
        self.kind().args(["get", "nodes", "--name", &self.cluster])
    }

    /// Whether a node already has an image (asked of the node's containerd).
    pub fn node_has_image(&self, node: &str, reference: &str) -> Cmd {
        Cmd::new(self.provider.program()).args([
            "exec",
            node,
            "crictl",
            "inspecti",
            "-q",
            &containerd_name(reference),
        ])
    }

    pub fn load_archive(&self, node: &str) -> Cmd {
        self.kind()
            .args(["load", "image-archive"])
            .arg(self.archive_tar.display().to_string())
            .args(["--name", &self.cluster, "--nodes", node])
    }

    pub fn create_namespace(&self) -> Cmd {
        self.kubectl().args(["create", "namespace", &self.namespace])
    }

    pub fn apply(&self) -> Cmd {
        self.kubectl_ns().args(["apply", "--filename"]).arg(self.stack_file().display().to_string())
    }

    pub fn get_pods_json(&self) -> Cmd {
        self.kubectl_ns().args(["get", "pods", "--output", "json"])
    }

    /// The commands of a failure bundle: (file in the bundle, command).
    pub fn bundle(&self, pods: &[String]) -> Vec<(String, Cmd)> {
        let export = self
            .kind()
            .args(["export", "logs"])
            .arg(self.bundle_dir().join("kind").display().to_string());
        let mut cmds = vec![
            ("kind-export-logs.txt".into(), export.args(["--name", &self.cluster])),
            (
                "events.txt".into(),
                self.kubectl_ns().args(["get", "events", "--sort-by=.lastTimestamp"]),
            ),
            ("describe-pods.txt".into(), self.kubectl_ns().args(["describe", "pods"])),
        ];
        for pod in pods {
            let logs = self.kubectl_ns().args([
                "logs",
                &format!("pod/{pod}"),
                "--all-containers",
                "--timestamps",
            ]);
            cmds.push((format!("{pod}.previous.log"), logs.clone().arg("--previous")));
            cmds.insert(cmds.len() - 1, (format!("{pod}.log"), logs));
        }
        cmds
    }

    /// The commands that replace pods in the running cluster (the dev loop's rule: only the
    /// pods whose image or manifest changed): the new images into the nodes, each changed
    /// Pod deleted, the new manifests applied (which recreates them and leaves the rest).
    pub fn replace_cmds(&self, pods: &[String], images: &[String]) -> Vec<Cmd> {
        let tar = self.archive_tar.display().to_string();
        let mut cmds = Vec::new();
        if !images.is_empty() {
            cmds.push(save(self.provider, &tar, images));
            cmds.push(self.kind().args(["load", "image-archive", &tar, "--name", &self.cluster]));
        }
        for pod in pods {
            let delete = ["delete", &format!("pod/{pod}"), "--wait=true", "--ignore-not-found"];
            cmds.push(self.kubectl_ns().args(delete));
        }
        if !pods.is_empty() {
            cmds.push(self.apply());
        }
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

    /// The run as phases: the image archive, the cluster (recorded before it is made), the
    /// images into the nodes that lack them, the manifests into the run's namespace, the
    /// wait until ready, then the given test phases.
    fn plan<'a>(&'a self, ready_timeout: Duration, tests: Vec<Phase<'a>>) -> Vec<Phase<'a>> {
        let files = &self.files;
        let mut phases = vec![Phase::new(
            "image archive for kind",
            vec![
                Step::Write { path: self.stack_file(), contents: files.stack.clone() },
                // `kind load image-archive` reads a plain tar: unpack the archive, or save one.
                Step::Run {
                    cmd: self.make_tar(),
                    doing: "making the image archive for kind".into(),
                },
            ],
        )];
        let mut deploy = Vec::new();
        if self.reuse {
            deploy.push(Step::Record(self.final_record()));
        } else {
            let mut create = vec![
                Step::Record(self.final_record()),
                Step::Write { path: self.config_file(), contents: files.config.clone() },
                Step::Run { cmd: self.create_cluster(), doing: "creating the Kind cluster".into() },
            ];
            if let Some(path) = &files.ports_record {
                create.push(Step::Write {
                    path: path.clone(),
                    contents: serde_json::to_string(&self.ports).expect("ports serialise"),
                });
            }
            phases.push(Phase::new("create cluster", create));
        }
        let node = format!("{}-control-plane", self.cluster);
        let mut what = vec![format!("{}  (the nodes)", self.get_nodes())];
        what.extend(
            self.references
                .iter()
                .map(|r| format!("{}  (per node and image)", self.node_has_image(&node, r))),
        );
        what.push(format!("{}  (each node that lacks one, all at once)", self.load_archive(&node)));
        phases.push(Phase::new(
            "load images",
            vec![Step::Watch {
                what: what.join("\n"),
                run: Box::new(move |r| load_images(self, r, &self.log)),
            }],
        ));
        deploy.push(Step::Run {
            cmd: self.create_namespace(),
            doing: "creating the run's namespace".into(),
        });
        deploy.push(Step::Run { cmd: self.apply(), doing: "applying the manifests".into() });
        phases.push(Phase::new("deploy", deploy));
        phases.push(Phase::new(
            "wait until ready",
            vec![Step::Watch {
                what: format!("{}  (polled until every pod is Ready)", self.get_pods_json()),
                run: Box::new(move |r| wait_ready(self, ready_timeout, r)),
            }],
        ));
        phases.extend(tests);
        phases
    }

    fn wait_ready(&self, r: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        wait_ready(self, timeout, r)
    }

    /// `<SERVICE>_URL` for each NodePort Service mapped to the host.
    fn urls(&self) -> BTreeMap<String, String> {
        self.node_ports
            .iter()
            .filter_map(|(svc, np)| {
                self.ports.get(np).map(|hp| (url_var(svc), format!("http://127.0.0.1:{hp}")))
            })
            .collect()
    }

    /// A Pod is deleted, and the run's manifests applied again bring it back (bare Pods
    /// have no controller to scale; the other Pods are unchanged by the apply).
    fn control(&self, dedup_ttl_seconds: u64) -> StackControl {
        let services = self
            .pods
            .iter()
            .map(|pod| {
                let file = self.stack_file();
                (
                    pod.clone(),
                    ServiceControl::new(
                        &self.kubectl_ns().args(["delete", &format!("pod/{pod}"), "--wait=true"]),
                        &self
                            .kubectl_ns()
                            .args(["apply", "--filename"])
                            .arg(file.display().to_string()),
                        &self.kubectl_ns().args(["exec", "-i", pod, "--"]),
                    ),
                )
            })
            .collect();
        StackControl { runtime: "kind", dedup_ttl_seconds, services }
    }

    fn final_record(&self) -> RunRecord {
        RunRecord {
            id: self.id.clone(),
            pid: std::process::id(),
            created: AnyCreated::Kind(self.created()),
        }
    }

    fn keep_instructions(&self) -> String {
        let mut s = format!(
            "the cluster is left running: kubectl --context kind-{} --namespace {} get pods\n",
            self.cluster, self.namespace
        );
        for (k, v) in self.urls() {
            s.push_str(&format!("  {k}={v}\n"));
        }
        s.push_str(&format!("  remove it: cargo xtask e2e --down {}", self.id));
        s
    }

    /// The failure bundle: kind's exported logs, the namespace's events, every pod described
    /// and its logs (and its previous container's).
    fn save_failure(&self) -> anyhow::Result<PathBuf> {
        let _ = std::fs::remove_file(&self.archive_tar);
        let bundle = self.bundle_dir();
        std::fs::create_dir_all(&bundle)?;
        for (file, c) in self.bundle(&self.pods) {
            let text = c.survives_interrupt().read().unwrap_or_else(|e| format!("{e:#}"));
            std::fs::write(bundle.join(file), text)?;
        }
        Ok(bundle)
    }

    fn failure_commands(&self) -> Vec<String> {
        self.bundle(&self.pods)
            .into_iter()
            .map(|(file, c)| format!("{c}  # on failure, into bundle/{file}"))
            .collect()
    }

    fn replace(
        &mut self,
        project: &Project,
        r: &Reporter,
        handoff: &Handoff,
    ) -> anyhow::Result<Vec<String>> {
        let manifests = crate::manifests::Manifests::load(&project.manifests_dir())?;
        let (yaml, _) = manifests.render_kind(&handoff.pinned())?;
        let (old, new) = (pod_docs(&self.files.stack), pod_docs(&yaml));
        let names: Vec<String> =
            new.keys().filter(|k| old.get(*k) != new.get(*k)).cloned().collect();
        let images: Vec<String> = handoff
            .images
            .iter()
            .filter(|i| !self.references.contains(&i.reference))
            .map(|i| i.reference.clone())
            .collect();
        crate::fsx::write_atomic(&self.stack_file(), &yaml)?;
        for cmd in self.replace_cmds(&names, &images) {
            r.command(&cmd);
            cmd.run_logged(&self.log).with_context(|| format!("replacing {}", names.join(", ")))?;
        }
        let _ = std::fs::remove_file(&self.archive_tar);
        self.references = handoff.images.iter().map(|i| i.reference.clone()).collect();
        self.files.stack = yaml;
        Ok(names)
    }
}

/// Each Pod's document in rendered manifests, by name (to see which pods changed).
pub fn pod_docs(yaml: &str) -> BTreeMap<String, String> {
    yaml.split("---\n")
        .filter_map(|doc| {
            let v: Value = serde_norway::from_str(doc).ok()?;
            (v["kind"].as_str() == Some("Pod"))
                .then(|| Some((v["metadata"]["name"].as_str()?.to_owned(), doc.to_owned())))?
        })
        .collect()
}

/// containerd names `localhost/x:1` as is, and `x:1` as `docker.io/library/x:1`.
pub fn containerd_name(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or("");
    if reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

/// Renders the cluster config: its name and a free host port for every extraPortMapping.
/// Returns the YAML and NodePort to host port.
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
        if let Some(mappings) = node.get_mut("extraPortMappings").and_then(Value::as_sequence_mut) {
            for m in mappings {
                let container_port = m["containerPort"]
                    .as_u64()
                    .context("an extraPortMapping without containerPort")?
                    as u16;
                let host_port = free_port()?;
                m["hostPort"] = Value::Number(host_port.into());
                ports.insert(container_port, host_port);
            }
        }
    }
    Ok((serde_norway::to_string(&doc)?, ports))
}

/// What a pod's status says, reduced to what the wait needs.
#[derive(Debug, PartialEq, Eq)]
pub enum PodHealth {
    Ready,
    Waiting(String),
    /// Crash-looping, or failed: stop waiting at once.
    Failed(String),
}

/// Decides from one item of `kubectl get pods -o json`.
pub fn pod_health(pod: &serde_json::Value) -> PodHealth {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if phase == "Failed" {
        return PodHealth::Failed(format!(
            "phase Failed: {}",
            pod["status"]["message"].as_str().unwrap_or("")
        ));
    }
    let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    for s in &statuses {
        let name = s["name"].as_str().unwrap_or("?");
        let waiting = s["state"]["waiting"]["reason"].as_str().unwrap_or("");
        if matches!(
            waiting,
            "CrashLoopBackOff"
                | "ErrImageNeverPull"
                | "ImagePullBackOff"
                | "ErrImagePull"
                | "CreateContainerConfigError"
                | "InvalidImageName"
        ) {
            return PodHealth::Failed(format!("container {name}: {waiting}"));
        }
        if s["restartCount"].as_u64().unwrap_or(0) > 0 {
            let code = s["lastState"]["terminated"]["exitCode"].as_i64().unwrap_or(0);
            return PodHealth::Failed(format!(
                "container {name} restarted (last exit code {code})"
            ));
        }
    }
    let ready = pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    if ready {
        PodHealth::Ready
    } else {
        PodHealth::Waiting(format!("phase {phase}"))
    }
}

/// Polls the namespace's pods until every one is Ready, with a deadline; fails at once on
/// a crash loop, with the pod's logs and `kubectl describe`.
pub fn wait_ready(run: &KindRun, timeout: Duration, r: &Reporter) -> anyhow::Result<()> {
    let mut waiting = Vec::new();
    let ready = crate::poll::until(timeout, Duration::from_millis(500), || {
        let list: serde_json::Value = serde_json::from_str(&run.get_pods_json().read()?)?;
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        waiting.clear();
        for pod in &pods {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            match pod_health(pod) {
                PodHealth::Ready => {}
                PodHealth::Waiting(why) => waiting.push(format!("{name}: {why}")),
                PodHealth::Failed(why) => {
                    let pod = format!("pod/{name}");
                    let logs =
                        run.kubectl_ns().args(["logs", &pod, "--all-containers", "--tail", "30"]);
                    let describe = run.kubectl_ns().args(["describe", &pod]);
                    let (logs, describe) =
                        (logs.read().unwrap_or_default(), describe.read().unwrap_or_default());
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
    anyhow::ensure!(ready, "not ready after {}s:\n  {}", timeout.as_secs(), waiting.join("\n  "));
    Ok(())
}

/// Loads the archive into every node that lacks one of the images, all nodes at once.
pub fn load_images(run: &KindRun, r: &Reporter, log: &Path) -> anyhow::Result<()> {
    let nodes: Vec<String> = run
        .get_nodes()
        .read()?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "kind reports no nodes for cluster {}", run.cluster);
    let lacking: Vec<&String> = nodes
        .iter()
        .filter(|n| {
            run.references.iter().any(|img| !run.node_has_image(n, img).succeeds().unwrap_or(false))
        })
        .collect();
    if lacking.is_empty() {
        r.line("  every node has every image");
        let _ = std::fs::remove_file(&run.archive_tar);
        return Ok(());
    }
    let loaded = std::thread::scope(|s| {
        let handles: Vec<_> = lacking
            .iter()
            .map(|n| {
                let c = run.load_archive(n);
                r.command(&c);
                s.spawn(move || c.run_logged(log))
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("no panic"))
    });
    let _ = std::fs::remove_file(&run.archive_tar);
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::manifests::Manifests;
    use crate::runtime::step;

    fn run(reuse: bool, provider: Engine) -> KindRun {
        run_in(Path::new("/r"), reuse, provider)
    }

    fn run_in(root: &Path, reuse: bool, provider: Engine) -> KindRun {
        let dir = root.join("target/e2e/runs/1");
        KindRun {
            id: serde_json::from_str("\"20261127-103501-42\"").unwrap(),
            cluster: if reuse { "team".into() } else { "e2e-103501-42".into() },
            reuse,
            namespace: "e2e-103501-42".into(),
            provider,
            log: root.join("target/e2e/logs/run-1.log"),
            ports: [(30080, 41000), (30081, 41001)].into(),
            node_ports: [("gateway".to_owned(), 30080), ("data-storage".to_owned(), 30081)].into(),
            archive_tar: dir.join("images.tar"),
            archive_source: Some("/r/images.tar.zst".into()),
            references: vec!["localhost/e2e-gateway:aaaa".into()],
            pods: vec!["gateway".into()],
            dir,
            files: files(),
        }
    }

    fn files() -> KindFiles {
        KindFiles { config: "kind: Cluster".into(), stack: "---".into(), ports_record: None }
    }

    fn suite(run: &KindRun) -> Vec<Phase<'static>> {
        let mut cmd = Cmd::new("cargo").args(["test", "-p", "e2e-suite"]);
        for (k, v) in run.urls() {
            cmd = cmd.env(k, v);
        }
        vec![Phase::new("run E2E suite", vec![Step::Terminal { cmd, doing: "the suite".into() }])]
    }

    #[test]
    fn the_kind_plan_is_the_documented_command_line() {
        let run = run(false, Engine::Podman);
        let mut plan = step::print(&run.plan(Duration::from_secs(1), suite(&run)));
        plan.extend(run.final_record().teardown().iter().map(ToString::to_string));
        let expected = [
            "zstd -d -q -f -o /r/target/e2e/runs/1/images.tar /r/images.tar.zst",
            "KIND_EXPERIMENTAL_PROVIDER=podman kind create cluster --name e2e-103501-42 --config /r/target/e2e/runs/1/kind-cluster.yaml --wait 120s",
            "# KIND_EXPERIMENTAL_PROVIDER=podman kind get nodes --name e2e-103501-42  (the nodes)",
            "# podman exec e2e-103501-42-control-plane crictl inspecti -q localhost/e2e-gateway:aaaa  (per node and image)",
            "# KIND_EXPERIMENTAL_PROVIDER=podman kind load image-archive /r/target/e2e/runs/1/images.tar --name e2e-103501-42 --nodes e2e-103501-42-control-plane  (each node that lacks one, all at once)",
            "kubectl --context kind-e2e-103501-42 create namespace e2e-103501-42",
            "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml",
            "# kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 get pods --output json  (polled until every pod is Ready)",
            "DATA_STORAGE_URL=http://127.0.0.1:41001 GATEWAY_URL=http://127.0.0.1:41000 cargo test -p e2e-suite",
            "KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name e2e-103501-42",
        ];
        assert_eq!(plan, expected);
        let bundle: Vec<String> =
            run.bundle(&["POD".into()]).iter().map(|(f, c)| format!("{f}: {c}")).collect();
        assert_eq!(bundle[0], "kind-export-logs.txt: KIND_EXPERIMENTAL_PROVIDER=podman kind export logs /r/target/e2e/runs/1/bundle/kind --name e2e-103501-42");
        assert!(bundle
            .iter()
            .any(|l| l.ends_with("logs pod/POD --all-containers --timestamps --previous")));
    }

    #[test]
    fn the_printed_plan_is_the_executed_plan() {
        for reuse in [false, true] {
            let root = std::env::temp_dir()
                .join(format!("xtask-kind-plan-{}-{reuse}", std::process::id()));
            let run = run_in(&root, reuse, Engine::Docker);
            let plan = run.plan(Duration::from_secs(1), suite(&run));
            let mut printed = step::printed_commands(&plan);
            printed.extend(run.final_record().teardown().iter().map(ToString::to_string));
            let (mut rec, record) = step::record_run(&run.dir, &run.log, &[&plan]);
            let record = record.expect("recorded before the cluster exists");
            assert_eq!(record, run.final_record());
            let r = Reporter::quiet();
            crate::runtime::teardown(&run.dir, &record, &run.log, &r, &mut rec).unwrap();
            assert_eq!(rec.commands, printed, "reuse: {reuse}");
            std::fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn the_dev_loop_replaces_only_changed_pods_through_kubectl() {
        let run = run(false, Engine::Podman);
        let cmds: Vec<String> = run
            .replace_cmds(&["gateway".into()], &["localhost/e2e-gateway:bbbb".into()])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            cmds,
            [
                "podman save --multi-image-archive --output /r/target/e2e/runs/1/images.tar localhost/e2e-gateway:bbbb",
                "KIND_EXPERIMENTAL_PROVIDER=podman kind load image-archive /r/target/e2e/runs/1/images.tar --name e2e-103501-42",
                "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 delete pod/gateway --wait=true --ignore-not-found",
                "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml",
            ]
        );
        assert!(run.replace_cmds(&[], &[]).is_empty(), "nothing changed, nothing run");
        let m =
            Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
                .unwrap();
        let (old, _) = m.render_kind(&BTreeMap::new()).unwrap();
        let pinned =
            [("localhost/e2e-gateway".to_owned(), "localhost/e2e-gateway:new".to_owned())].into();
        let (new, _) = m.render_kind(&pinned).unwrap();
        let (old, new) = (pod_docs(&old), pod_docs(&new));
        let changed: Vec<&String> = new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
        assert_eq!(changed, ["gateway"]);
    }

    #[test]
    fn a_reused_cluster_is_neither_created_nor_deleted() {
        let run = run(true, Engine::Docker);
        let mut plan = step::print(&run.plan(Duration::from_secs(1), vec![]));
        plan.extend(run.final_record().teardown().iter().map(ToString::to_string));
        assert!(
            !plan.iter().any(|l| l.contains("create cluster") || l.contains("delete cluster")),
            "{plan:#?}"
        );
        assert!(
            !plan.iter().any(|l| l.contains("KIND_EXPERIMENTAL_PROVIDER")),
            "docker is kind's default provider"
        );
        assert!(plan.last().unwrap().starts_with("kubectl --context kind-team delete namespace e2e-103501-42 --wait=false --ignore-not-found"));
    }

    #[test]
    fn cluster_config_gets_its_name_and_free_host_ports() {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../test/e2e/kind-cluster.yaml"
        ))
        .unwrap();
        let mut next = 50000;
        let (yaml, ports) = render_cluster_config(&template, "e2e-x", || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        assert_eq!(ports, BTreeMap::from([(30080, 50001), (30081, 50002)]));
        let doc: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(doc["name"].as_str(), Some("e2e-x"));
        assert_eq!(doc["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
        let m = &doc["nodes"][0]["extraPortMappings"][0];
        assert_eq!(
            (m["containerPort"].as_u64(), m["hostPort"].as_u64()),
            (Some(30080), Some(50001))
        );
        assert_eq!(m["listenAddress"].as_str(), Some("127.0.0.1"));
    }

    #[test]
    fn manifests_for_kind_pin_images_never_pull_and_keep_services() {
        let m =
            Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
                .unwrap();
        let images: BTreeMap<String, String> =
            [("localhost/e2e-gateway".to_owned(), "localhost/e2e-gateway:abc".to_owned())].into();
        let (yaml, node_ports) = m.render_kind(&images).unwrap();
        assert!(yaml.contains("image: localhost/e2e-gateway:abc"));
        assert!(!yaml.contains("imagePullPolicy: IfNotPresent"));
        assert_eq!(yaml.matches("imagePullPolicy: Never").count(), 4);
        assert!(yaml.contains("kind: Secret") && yaml.contains("kind: Service"));
        assert_eq!(
            node_ports,
            BTreeMap::from([("data-storage".to_owned(), 30081), ("gateway".to_owned(), 30080)])
        );
        // The NodePorts are exactly the ports the cluster config maps to the host.
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../test/e2e/kind-cluster.yaml"
        ))
        .unwrap();
        let (_, ports) = render_cluster_config(&template, "x", || Ok(1)).unwrap();
        let mapped: Vec<u16> = ports.keys().copied().collect();
        let mut wanted: Vec<u16> = node_ports.values().copied().collect();
        wanted.sort_unstable();
        assert_eq!(mapped, wanted);
    }

    #[test]
    fn without_an_archive_the_engine_saves_one() {
        let r = KindRun { archive_source: None, ..run(false, Engine::Podman) };
        assert_eq!(r.make_tar().to_string(), "podman save --multi-image-archive --output /r/target/e2e/runs/1/images.tar localhost/e2e-gateway:aaaa");
    }

    /// kubectl itself parses the rendered manifests (offline: `--local`), as `kubectl apply` would.
    #[test]
    fn kubectl_parses_the_rendered_manifests() {
        let m =
            Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
                .unwrap();
        let (yaml, _) = m.render_kind(&BTreeMap::new()).unwrap();
        let file = std::env::temp_dir().join(format!("xtask-kind-{}.yaml", std::process::id()));
        std::fs::write(&file, yaml).unwrap();
        let out = std::process::Command::new("kubectl")
            .args(["label", "--local", "--dry-run=client", "-o", "name", "e2e.check=1", "-f"])
            .arg(&file)
            .env("KUBECONFIG", "/dev/null")
            .output()
            .expect("kubectl is needed for this test (apt-get install kubectl)");
        std::fs::remove_file(&file).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let names: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(
            names,
            [
                "secret/postgres-credentials",
                "pod/postgres",
                "service/postgres",
                "pod/redis",
                "service/redis",
                "pod/data-storage",
                "service/data-storage",
                "pod/gateway",
                "service/gateway"
            ]
        );
    }

    #[test]
    fn pod_health_fails_fast_on_crash_loops() {
        let pod = |status: serde_json::Value| serde_json::json!({ "status": status });
        assert_eq!(
            pod_health(&pod(
                serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "g", "restartCount": 0, "state": {"running": {}}}]})
            )),
            PodHealth::Ready
        );
        assert!(matches!(
            pod_health(&pod(serde_json::json!({"phase": "Pending"}))),
            PodHealth::Waiting(_)
        ));
        assert!(matches!(
            pod_health(&pod(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "g", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}))),
            PodHealth::Failed(w) if w.contains("CrashLoopBackOff")
        ));
        assert!(matches!(
            pod_health(&pod(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "g", "restartCount": 1, "lastState": {"terminated": {"exitCode": 2}}, "state": {"running": {}}}]}))),
            PodHealth::Failed(w) if w.contains("exit code 2")
        ));
        assert!(matches!(
            pod_health(&pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "g", "restartCount": 0, "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]})
            )),
            PodHealth::Failed(_)
        ));
    }

    #[test]
    fn containerd_names() {
        assert_eq!(containerd_name("localhost/e2e-gateway:1"), "localhost/e2e-gateway:1");
        assert_eq!(containerd_name("redis:7"), "docker.io/library/redis:7");
        assert_eq!(containerd_name("team/x:1"), "docker.io/team/x:1");
        assert_eq!(containerd_name("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
    }
}
