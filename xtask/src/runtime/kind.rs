//! The stack in a Kind cluster: a Kubernetes cluster ([`super::kube`]) whose lifecycle the run
//! owns, with its images loaded by `kind load`. What it does, and why it is checked only as a
//! command plan against kind's and kubectl's documentation, is docs/kubernetes.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_norway::Value;

use crate::{
    cmd::Cmd,
    engine::Engine,
    engine_images::EngineImages,
    manifests::{distinct, ClusterKind},
    project::Project,
    report::Reporter,
    run::Run,
};

use super::{
    free_port,
    kube::{changed_pods, Namespace},
    step::{self, Exec, Phase, Poll, RealExec, Step},
    url_var, Created as AnyCreated, RunId, RunRecord, Stack, StackFile,
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
    /// Not probed: a failed delete counts as left.
    pub fn leftovers(&self) -> Vec<String> {
        match self.reuse {
            true => vec![format!("namespace {}", self.namespace)],
            false => vec![format!("cluster {}", self.cluster)],
        }
    }

    /// One stage, one command.
    pub fn teardown(&self) -> Vec<Vec<Cmd>> {
        let namespace = Namespace { context: context(&self.cluster), name: self.namespace.clone() };
        vec![vec![match self.reuse {
            true => namespace.delete(),
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

/// The kubectl context kind makes for a cluster.
fn context(cluster: &str) -> String {
    format!("kind-{cluster}")
}

/// A Kind run: names, files and ports, all decided before anything runs.
#[derive(Debug, Clone)]
pub struct KindRun {
    pub id: RunId,
    pub cluster: String,
    /// `--reuse-cluster`: the cluster is not created nor deleted, only the namespace.
    pub reuse: bool,
    pub namespace: Namespace,
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
    /// From the run's options: a cluster of the run's own (`e2e-<run>`, or `--cluster-name`)
    /// from test/e2e/kind-cluster.yaml with free host ports, or `--reuse-cluster`'s, whose port
    /// mappings its `--keep` run recorded.
    pub fn new(run: &Run, engine_images: &EngineImages) -> anyhow::Result<KindRun> {
        let Run { opts, project, manifests, id, source, .. } = run;
        let (cluster, reuse) = match (&opts.reuse_cluster, &opts.cluster_name) {
            (Some(name), _) => (name.clone(), true),
            (None, name) => (name.clone().unwrap_or_else(|| id.namespace()), false),
        };
        let (stack, exposed) =
            manifests.render_kubernetes(&engine_images.pinned(), ClusterKind::Kind)?;
        let node_ports = exposed.into_iter().map(|(service, p)| (service, p.node_port)).collect();
        let record = project.e2e_dir.join("clusters").join(format!("{cluster}.json"));
        let (config, ports) = if reuse {
            let ports = std::fs::read(&record).with_context(|| {
                format!(
                    "cluster {cluster} was not made by `cargo xtask e2e --runtime kind --keep` ({} is missing), so its port mappings are unknown",
                    project.display(&record)
                )
            })?;
            (String::new(), serde_json::from_slice(&ports)?)
        } else {
            let template =
                std::fs::read_to_string(project.root.join("test/e2e/kind-cluster.yaml"))?;
            render_cluster_config(&template, &cluster, distinct(free_port))?
        };
        let ports_record = (opts.keep && !reuse).then_some(record);
        Ok(KindRun {
            id: id.clone(),
            namespace: Namespace { context: context(&cluster), name: id.namespace() },
            cluster,
            reuse,
            // The engine that built or loaded the images is kind's provider.
            provider: engine_images.engine,
            archive_source: source.archive().map(Path::to_owned),
            log: id.log(project),
            dir: id.dir(project),
            ports,
            node_ports,
            references: engine_images.images.iter().map(|i| i.reference.clone()).collect(),
            pods: manifests.pods(),
            config,
            stack,
            ports_record,
        })
    }

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

    fn stack_file(&self) -> PathBuf {
        self.dir.join("stack.yaml")
    }

    /// Loads the archive into every node that lacks one of the images, all nodes at once.
    fn load_images(&self, reporter: &Reporter, exec: &dyn Exec) -> anyhow::Result<()> {
        let nodes = exec.read(&self.kind(&["get", "nodes"]))?;
        let nodes: Vec<&str> = nodes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        anyhow::ensure!(!nodes.is_empty(), "kind reports no nodes for cluster {}", self.cluster);
        let has = |n: &str, i: &String| exec.succeeds(&self.node_has_image(n, i)).unwrap_or(false);
        let lacking: Vec<Cmd> = nodes
            .into_iter()
            .filter(|n| !self.references.iter().all(|i| has(n, i)))
            .map(|n| self.load_archive(n))
            .collect();
        if lacking.is_empty() {
            reporter.line("  every node has every image");
        }
        lacking.iter().for_each(|c| reporter.command(c));
        let failed = exec.run_all(&lacking, &self.log);
        let _ = std::fs::remove_file(self.tar());
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
        Ok(())
    }

    /// The failure bundle (docs/kubernetes.md), as (file, command): kind's export of the
    /// cluster's logs, then the namespace's.
    pub fn bundle(&self, pods: &[String]) -> Vec<(String, Cmd)> {
        let export = self.kind(&["export", "logs", &self.file("bundle/kind")]);
        let mut cmds = vec![("kind-export-logs.txt".into(), export)];
        cmds.extend(self.namespace.bundle(pods));
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
        cmds.extend(self.namespace.replace_pods(pods, &self.stack_file()));
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
            write(self.stack_file(), self.stack.clone()),
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
        // As polled in a cluster of one node (the shipped config's).
        let node = format!("{}-control-plane", self.cluster);
        let mut polls = vec![Poll::Cmd(self.kind(&["get", "nodes"]))];
        polls.extend(self.references.iter().map(|i| Poll::Cmd(self.node_has_image(&node, i))));
        let what = format!(
            "the images into each node that lacks one (polled: the nodes, then per node and image), all at once:\n{}",
            self.load_archive(&node)
        );
        let load = Step::Watch {
            what,
            polls,
            run: Box::new(|reporter, exec| self.load_images(reporter, exec)),
        };
        phases.push(Phase::new("load images", vec![load]));
        let record = self.reuse.then(|| Step::Record(self.final_record()));
        let deploy = [
            run(self.namespace.create(), "creating the run's namespace"),
            run(self.namespace.apply(&self.stack_file()), "applying the manifests"),
        ];
        phases.push(Phase::new("deploy", record.into_iter().chain(deploy).collect()));
        let wait = self.namespace.wait_step(ready_timeout);
        phases.push(Phase::new("wait until ready", vec![wait]));
        phases.into_iter().chain(tests).collect()
    }

    fn wait_ready(&self, reporter: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        self.namespace.wait_ready(reporter, timeout, &RealExec)
    }

    fn urls(&self) -> BTreeMap<String, String> {
        let url = |np| self.ports.get(np).map(|p| format!("http://127.0.0.1:{p}"));
        self.node_ports.iter().filter_map(|(svc, np)| Some((url_var(svc), url(np)?))).collect()
    }

    fn control(&self, dedup_ttl_seconds: u64) -> StackFile {
        self.namespace.control("kind", &self.pods, &self.stack_file(), dedup_ttl_seconds)
    }

    fn final_record(&self) -> RunRecord {
        let created = Created {
            cluster: self.cluster.clone(),
            reuse: self.reuse,
            namespace: self.namespace.name.clone(),
            provider: self.provider,
        };
        RunRecord::new(&self.id, AnyCreated::Kind(created))
    }

    fn keep_instructions(&self) -> String {
        let urls: String = self.urls().iter().map(|(k, v)| format!("  {k}={v}\n")).collect();
        format!(
            "the cluster is left running: kubectl --context {} --namespace {} get pods\n{urls}  remove it: cargo xtask e2e --down {}",
            self.namespace.context, self.namespace.name, self.id
        )
    }

    fn save_failure(&self) -> anyhow::Result<PathBuf> {
        let _ = std::fs::remove_file(self.tar());
        let bundle = self.dir.join("bundle");
        Namespace::save_bundle(&bundle, self.bundle(&self.pods))?;
        Ok(bundle)
    }

    fn failure_commands(&self) -> Vec<String> {
        let bundle = self.bundle(&self.pods).into_iter();
        bundle.map(|(file, c)| format!("{c}  # on failure, into bundle/{file}")).collect()
    }

    fn replace(
        &mut self,
        project: &Project,
        reporter: &Reporter,
        engine_images: &EngineImages,
    ) -> anyhow::Result<Vec<String>> {
        let manifests = crate::manifests::Manifests::load(&project.manifests_dir())?;
        let (yaml, _) = manifests.render_kubernetes(&engine_images.pinned(), ClusterKind::Kind)?;
        let names = changed_pods(&self.stack, &yaml);
        let references: Vec<String> =
            engine_images.images.iter().map(|i| i.reference.clone()).collect();
        let images: Vec<String> =
            references.iter().filter(|i| !self.references.contains(i)).cloned().collect();
        crate::fsx::write_atomic(&self.stack_file(), &yaml)?;
        let doing = format!("replacing {}", names.join(", "));
        step::run_shown(reporter, &self.log, &self.replace_cmds(&names, &images), &doing)?;
        let _ = std::fs::remove_file(self.tar());
        self.references = references;
        self.stack = yaml;
        Ok(names)
    }
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

#[cfg(test)]
mod tests;
