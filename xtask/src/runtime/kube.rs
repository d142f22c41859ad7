//! The stack in a Kubernetes cluster, in a namespace of the run's own: what every cluster
//! shares ([`Namespace`]: apply, readiness, the failure bundle, the fault tests' handles, `dev`'s
//! replace), and the runtime for a cluster that exists already (`--runtime kube --context
//! NAME`, images pulled from `--registry`, services reached through `kubectl port-forward`).
//! Kind ([`super::kind`]) is the case that adds a cluster's lifecycle and `kind load`.
//! Neither is run here: docs/kubernetes.md says what is checked, and how.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context;
use serde_norway::Value;

use crate::{
    cmd::Cmd,
    engine_images::EngineImages,
    manifests::{ClusterKind, ServicePorts},
    project::Project,
    report::Reporter,
    run::Run,
};

use super::{
    free_port, service_control,
    step::{Exec, Phase, Poll, RealExec, Step},
    url_var, Created as AnyCreated, Health, RunId, RunRecord, Stack, StackFile,
};

/// A run's namespace in the cluster a kubectl context names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Namespace {
    pub context: String,
    pub name: String,
}

impl Namespace {
    /// kubectl against the context's cluster.
    pub fn kubectl(&self) -> Cmd {
        Cmd::new("kubectl").args(["--context", &self.context])
    }

    /// kubectl in the run's namespace.
    pub fn kubectl_in(&self, args: &[&str]) -> Cmd {
        self.kubectl().args(["--namespace", &self.name]).args(args.iter().copied())
    }

    pub fn create(&self) -> Cmd {
        self.kubectl().args(["create", "namespace", &self.name])
    }

    /// Removes the namespace and everything in it, without waiting for its finalizers.
    pub fn delete(&self) -> Cmd {
        let delete = self.kubectl().args(["delete", "namespace", &self.name]);
        delete.args(["--wait=false", "--ignore-not-found"])
    }

    pub fn apply(&self, file: &Path) -> Cmd {
        self.kubectl_in(&["apply", "--filename", &file.display().to_string()])
    }

    pub fn get_pods_json(&self) -> Cmd {
        self.kubectl_in(&["get", "pods", "--output", "json"])
    }

    /// The wait until ready, as a step of a plan.
    pub fn wait_step(&self, timeout: Duration) -> Step<'_> {
        Step::Watch {
            what: "until every pod is Ready".into(),
            polls: vec![Poll::Cmd(self.get_pods_json())],
            run: Box::new(move |reporter, exec| self.wait_ready(reporter, timeout, exec)),
        }
    }

    /// Until every pod is Ready; a crash loop, a restart or an image error ends the wait at
    /// once, with the pod's logs and `kubectl describe`.
    pub fn wait_ready(
        &self,
        reporter: &Reporter,
        timeout: Duration,
        exec: &dyn Exec,
    ) -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        let ready = crate::poll::until(timeout, Duration::from_millis(500), || {
            let list: serde_json::Value = serde_json::from_str(&exec.read(&self.get_pods_json())?)?;
            let pods = list["items"].as_array().cloned().unwrap_or_default();
            waiting.clear();
            for pod in &pods {
                let name = pod["metadata"]["name"].as_str().unwrap_or("?");
                match pod_health(pod) {
                    Health::Ready => {}
                    Health::Waiting(why) => waiting.push(format!("{name}: {why}")),
                    Health::Failed(why) => {
                        let pod = format!("pod/{name}");
                        let read =
                            |args: &[&str]| exec.read(&self.kubectl_in(args)).unwrap_or_default();
                        let logs = read(&["logs", &pod, "--all-containers", "--tail", "30"]);
                        let describe = read(&["describe", &pod]);
                        anyhow::bail!("pod {name} failed while waiting for readiness: {why}\n--- logs ---\n{logs}\n--- describe ---\n{describe}");
                    }
                }
            }
            let ready = !pods.is_empty() && waiting.is_empty();
            if ready {
                reporter.line(format!("  {} pods ready", pods.len()));
            }
            Ok(ready)
        })?;
        let waiting = waiting.join("\n  ");
        anyhow::ensure!(ready, "not ready after {}s:\n  {waiting}", timeout.as_secs());
        Ok(())
    }

    /// The namespace's part of a failure bundle (docs/kubernetes.md), as (file, command).
    pub fn bundle(&self, pods: &[String]) -> Vec<(String, Cmd)> {
        let mut cmds = vec![
            ("events.txt".into(), self.kubectl_in(&["get", "events", "--sort-by=.lastTimestamp"])),
            ("describe-pods.txt".into(), self.kubectl_in(&["describe", "pods"])),
        ];
        for pod in pods {
            let pod_ref = format!("pod/{pod}");
            let logs = self.kubectl_in(&["logs", &pod_ref, "--all-containers", "--timestamps"]);
            cmds.push((format!("{pod}.log"), logs.clone()));
            cmds.push((format!("{pod}.previous.log"), logs.arg("--previous")));
        }
        cmds
    }

    /// The fault tests' handles: a Pod is deleted, and the run's manifests applied again bring
    /// it back (bare Pods have no controller to scale; the other Pods are unchanged by the apply).
    pub fn control(&self, runtime: &str, pods: &[String], stack: &Path, ttl: u64) -> StackFile {
        let services = pods.iter().map(|pod| {
            let stop = self.kubectl_in(&["delete", &format!("pod/{pod}"), "--wait=true"]);
            let exec = self.kubectl_in(&["exec", "-i", pod, "--"]);
            (pod.clone(), service_control(&stop, &self.apply(stack), &exec))
        });
        StackFile { runtime: runtime.into(), dedup_ttl_seconds: ttl, services: services.collect() }
    }

    /// `dev`'s replace: each changed Pod deleted, then the manifests applied (which recreates
    /// them and leaves the rest).
    pub fn replace_pods(&self, pods: &[String], stack: &Path) -> Vec<Cmd> {
        let mut cmds: Vec<Cmd> = (pods.iter())
            .map(|pod| self.kubectl_in(&["delete", &format!("pod/{pod}"), "--wait=true"]))
            .map(|delete| delete.arg("--ignore-not-found"))
            .collect();
        cmds.extend((!pods.is_empty()).then(|| self.apply(stack)));
        cmds
    }

    /// Writes the failure bundle's commands' outputs into `bundle`.
    pub fn save_bundle(bundle: &Path, cmds: Vec<(String, Cmd)>) -> anyhow::Result<()> {
        std::fs::create_dir_all(bundle)?;
        for (file, cmd) in cmds {
            let text = cmd.survives_interrupt().read().unwrap_or_else(|e| format!("{e:#}"));
            std::fs::write(bundle.join(file), text)?;
        }
        Ok(())
    }
}

/// What a run in a shared cluster creates, as recorded for `e2e --down`: its namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Created {
    pub namespace: Namespace,
}

impl Created {
    pub fn teardown(&self) -> Vec<Vec<Cmd>> {
        vec![vec![self.namespace.delete()]]
    }

    /// Not probed: a failed delete counts as left.
    pub fn leftovers(&self) -> Vec<String> {
        vec![format!("namespace {}", self.namespace.name)]
    }
}

/// A run in a cluster that exists already: a namespace of its own, images from a registry,
/// each Service the suite reaches forwarded to a port here.
#[derive(Debug)]
pub struct KubeRun {
    pub id: RunId,
    pub namespace: Namespace,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// The rendered manifests, and the Pods they hold.
    pub stack: String,
    pub pods: Vec<String>,
    /// Per Service the suite reaches: its port in the cluster, and the port here.
    pub forwarded: BTreeMap<String, (u16, u16)>,
    /// The `kubectl port-forward`s running, stopped when the run is dropped.
    pub forwards: Mutex<Vec<duct::Handle>>,
}

impl KubeRun {
    /// From the run's options: `--context` names the cluster, `--registry` the images (the
    /// references the images record pins are rewritten to the registry's).
    pub fn new(run: &Run, engine_images: &EngineImages) -> anyhow::Result<KubeRun> {
        let Run { opts, project, manifests, id, .. } = run;
        let context = opts.context.clone().context("--runtime kube needs --context NAME")?;
        let prefix = opts.registry.as_deref().context("--runtime kube needs --registry")?;
        let pinned = registry_references(engine_images, prefix);
        let (stack, exposed) = manifests.render_kubernetes(&pinned, ClusterKind::Shared)?;
        let mut forwarded = BTreeMap::new();
        for (service, ServicePorts { port, .. }) in exposed {
            forwarded.insert(service, (port, free_port()?));
        }
        Ok(KubeRun {
            id: id.clone(),
            namespace: Namespace { context, name: id.namespace() },
            dir: id.dir(project),
            log: id.log(project),
            stack,
            pods: manifests.pods(),
            forwarded,
            forwards: Mutex::default(),
        })
    }

    fn stack_file(&self) -> PathBuf {
        self.dir.join("stack.yaml")
    }

    /// `kubectl port-forward` of a Service to its port here (loopback only).
    pub fn port_forward(&self, service: &str, port: u16, here: u16) -> Cmd {
        let target = format!("service/{service}");
        let ports = format!("{here}:{port}");
        self.namespace.kubectl_in(&["port-forward", &target, &ports, "--address", "127.0.0.1"])
    }

    fn port_forwards(&self) -> Vec<Cmd> {
        let forwards = self.forwarded.iter();
        forwards.map(|(service, &(port, here))| self.port_forward(service, port, here)).collect()
    }

    /// Until each forwarded port here accepts connections.
    fn until_forwarded(&self, reporter: &Reporter, exec: &dyn Exec) -> anyhow::Result<()> {
        for (service, &(_, here)) in &self.forwarded {
            let listening = || Ok(exec.connects(here));
            let pause = Duration::from_millis(100);
            let up = crate::poll::until(Duration::from_secs(30), pause, listening)?;
            let log = self.log.display();
            anyhow::ensure!(
                up,
                "the port-forward of {service} to 127.0.0.1:{here} did not listen within 30 s (its output is in {log})"
            );
            reporter.line(format!("  {service} forwarded to 127.0.0.1:{here}"));
        }
        Ok(())
    }
}

impl Drop for KubeRun {
    fn drop(&mut self) {
        for handle in self.forwards.lock().expect("not poisoned").drain(..) {
            let _ = handle.kill();
        }
    }
}

impl Stack for KubeRun {
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
        let deploy = vec![
            Step::Write { path: self.stack_file(), contents: self.stack.clone() },
            Step::Record(self.final_record()),
            run(self.namespace.create(), "creating the run's namespace"),
            run(self.namespace.apply(&self.stack_file()), "applying the manifests"),
        ];
        let forward = Step::Background {
            cmds: self.port_forwards(),
            into: &self.forwards,
            doing: "forwarding the services' ports here".into(),
        };
        let listening = Step::Watch {
            what: "until each forwarded port here connects".into(),
            polls: self.forwarded.values().map(|&(_, here)| Poll::Connect(here)).collect(),
            run: Box::new(|reporter, exec| self.until_forwarded(reporter, exec)),
        };
        let phases = [
            Phase::new("deploy", deploy),
            Phase::new("wait until ready", vec![self.namespace.wait_step(ready_timeout)]),
            Phase::new("forward ports", vec![forward, listening]),
        ];
        phases.into_iter().chain(tests).collect()
    }

    fn wait_ready(&self, reporter: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        self.namespace.wait_ready(reporter, timeout, &RealExec)
    }

    fn urls(&self) -> BTreeMap<String, String> {
        let url = |here: u16| format!("http://127.0.0.1:{here}");
        self.forwarded.iter().map(|(service, &(_, here))| (url_var(service), url(here))).collect()
    }

    fn control(&self, dedup_ttl_seconds: u64) -> StackFile {
        self.namespace.control("kube", &self.pods, &self.stack_file(), dedup_ttl_seconds)
    }

    fn final_record(&self) -> RunRecord {
        let created = Created { namespace: self.namespace.clone() };
        RunRecord::new(&self.id, AnyCreated::Kube(created))
    }

    fn keep_instructions(&self) -> String {
        let Namespace { context, name } = &self.namespace;
        let forwards: String = (self.port_forwards().iter()).map(|c| format!("  {c}\n")).collect();
        format!(
            "the namespace is left: kubectl --context {context} --namespace {name} get pods\n  its services, from here:\n{forwards}  remove it: cargo xtask e2e --down {}",
            self.id
        )
    }

    fn save_failure(&self) -> anyhow::Result<PathBuf> {
        let bundle = self.dir.join("bundle");
        Namespace::save_bundle(&bundle, self.namespace.bundle(&self.pods))?;
        Ok(bundle)
    }

    fn failure_commands(&self) -> Vec<String> {
        let bundle = self.namespace.bundle(&self.pods).into_iter();
        bundle.map(|(file, c)| format!("{c}  # on failure, into bundle/{file}")).collect()
    }

    fn replace(
        &mut self,
        _project: &Project,
        _r: &Reporter,
        _engine_images: &EngineImages,
    ) -> anyhow::Result<Vec<String>> {
        anyhow::bail!("`dev` does not run against a shared cluster (--runtime kube)")
    }
}

/// The images as the cluster pulls them: `REGISTRY/PREFIX/<name>:<fingerprint tag>`, by the
/// repository the manifests name.
pub fn registry_references(engine_images: &EngineImages, prefix: &str) -> BTreeMap<String, String> {
    let remote = |i: &crate::engine_images::ImageRecord| {
        crate::registry::remote_reference(prefix, &i.name, &i.fingerprint)
    };
    engine_images.images.iter().map(|i| (i.repository.clone(), remote(i))).collect()
}

/// The Pods of `new` (rendered manifests) to create again: their document differs from `old`'s,
/// or they read a Secret whose document does (a container reads its Secrets when created).
pub fn changed_pods(old: &str, new: &str) -> Vec<String> {
    let changed = |kind: &str| {
        let old = docs_of(old, kind);
        let new = docs_of(new, kind);
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
        if FAILED.split_whitespace().any(|reason| reason == waiting) {
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
pub mod tests;
