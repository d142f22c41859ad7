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
                run: Box::new(move |r| ready::wait_ready(self, ready_timeout, r)),
            }],
        ));
        phases.extend(tests);
        phases
    }

    fn wait_ready(&self, r: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        ready::wait_ready(self, timeout, r)
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

mod ready;

#[cfg(test)]
mod tests;
