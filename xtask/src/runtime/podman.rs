//! The stack on podman: a network of the run's own, the Secrets created from the
//! manifests, every Pod played from one rendered file; and teardown of all of it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    build::PlanItem,
    cmd::Cmd,
    engine::{container_name, Engine, Podman},
    engine_images::EngineImages,
    manifests::{repository, Manifests, PodmanStack, Published, Secret, Subnet},
    project::Project,
    quirks::{self, PodRemoval},
    report::{secs, Reporter},
    suite::InEngine,
};

use super::{
    service_control,
    step::{self, Exec, Phase, Poll, Step},
    url_var, Created as AnyCreated, RunId, RunRecord, Stack, StackFile,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub network: Option<String>,
    pub secrets: Vec<String>,
    /// Set before `kube play`.
    pub pods: Vec<String>,
    /// Images of the run's own (the suite packaged for the engine), removed with it.
    #[serde(default)]
    pub images: Vec<String>,
    /// The engine is remote (see [`quirks::PodRemoval`]).
    #[serde(default)]
    pub remote: bool,
    /// The engine's version, which decides how pods are removed (see [`quirks::pod_removal`]).
    #[serde(default)]
    pub version: String,
}

impl Created {
    /// In stages, as docs/run.md (tear down) gives them; the pods' as the engine's version
    /// wants ([`quirks::pod_removal`]). Each stage's commands a pod each, at once: one `pod stop`
    /// of many stops them in turn (50 pods: 14 s), and a remote engine's 3 s per pod for its exec
    /// sessions' conmons (docs/run.md, step 4) overlap instead of adding up. No kill on a local
    /// podman 4: a kill's clean-ups can still be in the pod's cgroup at `pod rm`, which then
    /// waits 3 s (5 soak runs of 50); its `pod stop --time 0` kills and cleans up itself.
    pub fn teardown(&self) -> Vec<Vec<Cmd>> {
        let each = |cmd: fn(Podman, &str) -> Cmd| -> Vec<Cmd> {
            self.pods.iter().map(|p| cmd(Podman, p)).collect()
        };
        let pods = match quirks::pod_removal(&self.version, self.remote) {
            PodRemoval::RmAtOnce => vec![each(Podman::pod_rm_now)],
            PodRemoval::StopThenRm { kill_first } => {
                let kill = if kill_first { each(Podman::pod_kill) } else { Vec::new() };
                vec![kill, each(Podman::pod_stop_now), each(Podman::pod_rm)]
            }
        };
        let mut stages = pods;
        stages.extend([
            self.secrets.iter().map(|s| Podman.secret_rm(s)).collect(),
            (!self.images.is_empty()).then(|| Podman.images_rm(&self.images)).into_iter().collect(),
            self.network.iter().map(|net| Podman.network_rm(net)).collect::<Vec<_>>(),
        ]);
        stages.retain(|s| !s.is_empty());
        stages
    }

    pub fn leftovers(&self, exists: &mut dyn FnMut(&Cmd) -> bool) -> Vec<String> {
        let pods = self.pods.iter().map(|p| ("pod", p, Podman.pod_exists(p)));
        let secrets = self.secrets.iter().map(|s| ("secret", s, Podman.secret_exists(s)));
        let net = self.network.iter().map(|n| ("network", n, Podman.network_exists(n)));
        let all = pods.chain(secrets).chain(net);
        all.filter(|(.., c)| exists(c)).map(|(k, n, _)| format!("{k} {n}")).collect()
    }
}

/// Images an archive is loading, awaited by the pods that run them.
#[derive(Debug, Clone)]
pub struct AwaitedImages {
    /// Reference and image ID of each.
    pub images: Vec<(String, String)>,
    pub arrivals: Arc<Arrivals>,
}

/// What the load has told: the images it has put in (when it loads one at a time), and
/// whether it has ended.
#[derive(Debug, Default)]
pub struct Arrivals {
    pub arrived: Mutex<BTreeSet<String>>,
    pub ended: AtomicBool,
}

impl Arrivals {
    pub fn image(&self, reference: &str) {
        self.arrived.lock().expect("not poisoned").insert(reference.to_owned());
    }
}

impl AwaitedImages {
    const DEADLINE: Duration = Duration::from_secs(15 * 60);

    fn names(images: &[(String, String)]) -> String {
        images.iter().map(|(reference, _)| reference.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What [`AwaitedImages::wait`] polls first: the IDs of every image.
    fn poll(&self) -> Cmd {
        let references: Vec<String> =
            self.images.iter().map(|(reference, _)| reference.clone()).collect();
        Engine::Podman.image_ids(&references)
    }

    /// Until every image is in the engine, or the load has ended without it: told by the
    /// load (every 20 ms), else seen in the engine by one `podman image inspect` of all of them
    /// every 300 ms (a podman process costs CPU the load needs).
    pub fn wait(&self, reporter: &Reporter, exec: &dyn Exec) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut missing = self.images.clone();
        let mut asked: Option<Instant> = None;
        let arrived = crate::poll::until(Self::DEADLINE, Duration::from_millis(20), || {
            // Read before looking: a load that ended before the look left what it loaded.
            let ended = self.arrivals.ended.load(Ordering::SeqCst);
            let told = self.arrivals.arrived.lock().expect("not poisoned").clone();
            missing.retain(|(reference, _)| !told.contains(reference));
            let due = asked.is_none_or(|t| t.elapsed() >= Duration::from_millis(300));
            if missing.is_empty() || !(ended || due) {
                return Ok(missing.is_empty());
            }
            asked = Some(Instant::now());
            let references: Vec<String> =
                missing.iter().map(|(reference, _)| reference.clone()).collect();
            let found = exec.read_any(&Engine::Podman.image_ids(&references)).unwrap_or_default();
            missing.retain(|(_, id)| !found.lines().any(|l| l.trim() == id));
            let done = missing.is_empty();
            let names = Self::names(&missing);
            anyhow::ensure!(done || !ended, "the archive's load ended without {names}");
            Ok(done)
        })?;
        let names = Self::names(&missing);
        let deadline = secs(Self::DEADLINE);
        anyhow::ensure!(arrived, "{names} did not arrive within {deadline} of loading the archive");
        reporter.line(format!("  loaded after {}", secs(start.elapsed())));
        Ok(())
    }
}

/// The subnets of the engine's networks.
pub fn engine_subnets() -> anyhow::Result<Vec<(Ipv4Addr, u32)>> {
    let listed = Podman
        .network_subnets()
        .read()
        .context("listing the engine's networks, to give the run's network a free subnet")?;
    Ok(crate::manifests::parse_subnets(&listed))
}

/// The run's network, made on a subnet of its own for `pods` pods, and recorded in the run's
/// `state.json` before it is made. The free subnet is read from `podman network ls`: another
/// run (or a route of the machine) can take it before the `network create`, and podman then
/// refuses it as "already used". That refusal answers the choice: the next free subnet is
/// chosen, the refused one counted as used (a protocol, not a retry of the same thing).
pub fn claim_network(
    id: &RunId,
    pods: usize,
    dir: &Path,
    (remote, version): (bool, &str),
    reporter: &Reporter,
) -> anyhow::Result<(Subnet, RunRecord)> {
    let version = version.to_owned();
    let created = Created { network: Some(id.network()), remote, version, ..Default::default() };
    let record = RunRecord::new(id, AnyCreated::Podman(created));
    record.save(dir)?;
    Ok((claim_subnet(id, pods, reporter, engine_subnets)?, record))
}

/// [`claim_network`]'s choice and create, `used` listing the subnets in use.
pub fn claim_subnet(
    id: &RunId,
    pods: usize,
    reporter: &Reporter,
    used: impl Fn() -> anyhow::Result<Vec<(Ipv4Addr, u32)>>,
) -> anyhow::Result<Subnet> {
    let mut refused: Vec<Subnet> = Vec::new();
    loop {
        let mut taken_now = used()?;
        taken_now.extend(refused.iter().map(|s| (s.base, s.prefix)));
        let subnet = Subnet::choose(id.as_str(), pods, &taken_now)?;
        let cmd = network_create(id, Some(subnet)).survives_interrupt();
        reporter.command(&cmd);
        match cmd.read() {
            Ok(_) => return Ok(subnet),
            Err(e) if taken(&e) && refused.len() < 16 => {
                reporter.line(format!("  {subnet} was taken meanwhile: choosing another"));
                refused.push(subnet);
            }
            Err(e) => return Err(e.context("creating the run's podman network")),
        }
    }
}

/// podman's refusal of a subnet that another network (or a route of the machine) has.
pub fn taken(err: &anyhow::Error) -> bool {
    format!("{err:#}").contains("is already used on the host or by another config")
}

fn network_create(id: &RunId, subnet: Option<Subnet>) -> Cmd {
    let subnet = subnet.map(|s| (s.to_string(), s.dynamic_range()));
    Podman.network_create(&id.network(), subnet)
}

pub struct PodmanRun {
    pub id: RunId,
    /// The engine runs on another machine (docs/remote-engine.md: readiness, the suite).
    pub remote: bool,
    /// The engine's version (see [`quirks`]).
    pub version: String,
    /// The suite, packaged for the engine and run on the run's network.
    pub suite: Option<InEngine>,
    /// The pods started before the service images exist ([`Self::plan_early`]), once their
    /// images are in (`awaited`, when an archive loads them).
    pub early: BTreeSet<String>,
    pub awaited: Option<AwaitedImages>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub stack: PodmanStack,
    /// The network exists already ([`claim_network`]): the plan does not make it.
    pub network_made: bool,
    /// Containers that run another image than `stack` names: those a live update synced
    /// (their image is built once `dev` is idle), by container name.
    pub created_from: BTreeMap<String, String>,
    /// The record of the network, when it was claimed (made) before the plan runs.
    pub made: Option<RunRecord>,
    /// The IDs of a pod's containers, infra included, asked once per pod by a live update
    /// (a replaced pod's are asked again).
    pub pod_container_ids: BTreeMap<String, Vec<String>>,
}

impl PodmanRun {
    pub fn new(project: &Project, id: RunId, stack: PodmanStack) -> PodmanRun {
        let dir = id.dir(project);
        let log = id.log(project);
        let early = BTreeSet::new();
        let created_from = BTreeMap::new();
        PodmanRun {
            pod_container_ids: BTreeMap::new(),
            remote: false,
            version: String::new(),
            suite: None,
            early,
            awaited: None,
            dir,
            log,
            id,
            stack,
            network_made: false,
            created_from,
            made: None,
        }
    }

    /// The image a container was created from: a probe on a remote engine runs in a new
    /// container of it (`stack` may name one that a live update has not built yet).
    pub fn image_of<'a>(&'a self, container: &str, c: &'a crate::manifests::Container) -> &'a str {
        self.created_from.get(container).unwrap_or(&c.image)
    }

    /// The manifests rendered again with `pinned` images, on the same host ports and subnet.
    pub fn rerender(
        &self,
        manifests: &Manifests,
        pinned: &BTreeMap<String, String>,
    ) -> anyhow::Result<PodmanStack> {
        let mut ports = self.stack.published.iter().map(|p| Ok(p.host_port));
        let free_port =
            crate::manifests::distinct(|| ports.next().unwrap_or_else(super::free_port));
        manifests.render_podman(pinned, self.id.suffix(), self.stack.subnet, free_port)
    }

    pub fn stack_file(&self) -> PathBuf {
        self.dir.join("stack.yaml")
    }

    pub fn pod_file(&self, pod: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{pod}.yaml"))
    }

    /// The record of the network, the first `secrets` secrets and the pods that `pod` picks.
    fn record(&self, secrets: usize, pod: impl Fn(&str) -> bool) -> RunRecord {
        let created = Created {
            network: Some(self.id.network()),
            secrets: self.stack.secrets.iter().take(secrets).map(|s| s.name.clone()).collect(),
            pods: self.stack.pods.iter().map(|p| p.name.clone()).filter(|p| pod(p)).collect(),
            images: self.suite.iter().map(|p| p.image.clone()).collect(),
            remote: self.remote,
            version: self.version.clone(),
        };
        RunRecord::new(&self.id, AnyCreated::Podman(created))
    }

    /// (`<manifest pod>-<container>`, podman's name) of every container.
    pub fn containers(&self) -> Vec<(String, String)> {
        (self.stack.containers())
            .map(|(p, c)| (format!("{}-{}", p.base, c.name), container_name(&p.name, &c.name)))
            .collect()
    }

    /// `<POD>_URL` for each published pod: `http://{host}`.
    fn urls_at(&self, host: impl Fn(&Published) -> String) -> BTreeMap<String, String> {
        let published = self.stack.published.iter();
        published.map(|p| (url_var(&p.base), format!("http://{}", host(p)))).collect()
    }

    /// The network, the secrets, and the pods in `early` (PostgreSQL and Redis), before the
    /// service images exist; empty when no pod starts early.
    pub fn plan_early(&self) -> Vec<Phase<'_>> {
        if self.early.is_empty() {
            return Vec::new();
        }
        let mut steps = self.setup_steps();
        steps.push(Step::Record(self.record(usize::MAX, |pod| self.early.contains(pod))));
        if let Some(awaited) = &self.awaited {
            let names = AwaitedImages::names(&awaited.images);
            let what = format!("until the archive's load has put {names} in the engine");
            let polls = vec![Poll::Cmd(awaited.poll())];
            let run =
                Box::new(move |reporter: &Reporter, exec: &dyn Exec| awaited.wait(reporter, exec));
            steps.push(Step::Watch { what, polls, run });
        }
        steps.extend(self.play_steps(|pod| self.early.contains(pod)));
        vec![Phase::new("deploy infrastructure", steps)]
    }

    /// The network and the secrets, each recorded before it is made, each command run to its
    /// end after Ctrl-C (docs/run.md, tear down; of 60 SIGTERMs as a secret was made, 32 cut
    /// the create short and 4 damaged the secret database before, none since).
    fn setup_steps(&self) -> Vec<Step<'_>> {
        let cmd = network_create(&self.id, self.stack.subnet).survives_interrupt();
        let mut steps = vec![Step::Record(self.record(0, |_| false))];
        if !self.network_made {
            steps.push(Step::Run { cmd, doing: "creating the run's podman network".into() });
        }
        for (i, secret) in self.stack.secrets.iter().enumerate() {
            steps.push(Step::Record(self.record(i + 1, |_| false)));
            steps
                .push(self.secret_step(secret, &format!("creating podman secret {}", secret.name)));
        }
        steps
    }

    /// Makes a podman secret from its payload, written to a private file only while the
    /// command that reads it runs: as the engine's version reads it ([`quirks::secret_making`]).
    fn secret_step(&self, secret: &Secret, doing: &str) -> Step<'static> {
        let (file, cmd, payload) = match quirks::secret_making(&self.version) {
            quirks::SecretMaking::CreateFromJson => {
                let file = self.dir.join(format!("secret-{}.json", secret.name));
                let cmd = Podman.secret_create(&secret.name, &file);
                (file, cmd, secret.payload.clone())
            }
            quirks::SecretMaking::KubePlay => {
                let file = self.dir.join(format!("secret-{}.yaml", secret.name));
                let cmd = Podman.kube_play_secrets(&self.id.network(), &file);
                (file, cmd, secret.manifest())
            }
        };
        let cmd = cmd.survives_interrupt();
        Step::Secret { cmd, file, payload, doing: doing.to_owned() }
    }

    /// The files of the pods that `play` picks, then one `kube play` per pod, all at once:
    /// faster than one play of the whole stack (measured 0.76 s against 1.19 s for the four
    /// pods); each runs to its end after Ctrl-C, as [`Self::setup_steps`].
    fn play_steps(&self, play: impl Fn(&str) -> bool) -> Vec<Step<'_>> {
        let (mut steps, mut cmds) = (Vec::new(), Vec::new());
        let pods = self.stack.pods.iter().zip(&self.stack.pod_yaml);
        for (pod, yaml) in pods.filter(|(pod, _)| play(&pod.name)) {
            let file = self.pod_file(&pod.name);
            let address = self.stack.address(&pod.name);
            cmds.push(Podman.kube_play(&self.id.network(), address, &file).survives_interrupt());
            steps.push(Step::Write { path: file, contents: yaml.clone() });
        }
        let doing = "starting the pods with podman kube play".into();
        steps.push(Step::Parallel { cmds, doing });
        steps
    }
}

impl Stack for PodmanRun {
    fn id(&self) -> &RunId {
        &self.id
    }

    fn made(&self) -> Option<RunRecord> {
        self.made.clone()
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn log(&self) -> &Path {
        &self.log
    }

    /// Deploys what [`PodmanRun::plan_early`] did not.
    fn plan<'a>(&'a self, ready_timeout: Duration, tests: Vec<Phase<'a>>) -> Vec<Phase<'a>> {
        let what = "until each container's readinessProbe passes (each container on its own; while one does not, its state is read too)";
        let polls = self.stack.containers().map(|(pod, c)| ready::first_poll(self, pod, c));
        let run = move |reporter: &Reporter, exec: &dyn Exec| {
            ready::wait_ready(self, ready_timeout, reporter, exec)
        };
        let wait = Step::Watch { what: what.into(), polls: polls.collect(), run: Box::new(run) };
        let mut deploy = if self.early.is_empty() { self.setup_steps() } else { Vec::new() };
        deploy.push(Step::Record(self.final_record()));
        deploy.push(Step::Write { path: self.stack_file(), contents: self.stack.yaml.clone() });
        deploy.extend(self.play_steps(|pod| !self.early.contains(pod)));
        let phases = [Phase::new("deploy", deploy), Phase::new("wait until ready", vec![wait])];
        phases.into_iter().chain(tests).collect()
    }

    fn wait_ready(&self, reporter: &Reporter, timeout: Duration) -> anyhow::Result<()> {
        ready::wait_ready(self, timeout, reporter, &step::RealExec)
    }

    fn urls(&self) -> BTreeMap<String, String> {
        self.urls_at(|p| format!("127.0.0.1:{}", p.host_port))
    }

    fn final_record(&self) -> RunRecord {
        self.record(usize::MAX, |_| true)
    }

    fn control(&self, dedup_ttl_seconds: u64) -> StackFile {
        let services = self.stack.pods.iter().filter_map(|p| {
            let exec = Podman.exec_prefix(&container_name(&p.name, &p.containers.first()?.name));
            let stop = Podman.pod_stop(&p.name);
            let start = Podman.pod_start(&p.name);
            let mut control = service_control(&stop, &start, &exec);
            control.pod = (!self.remote).then(|| p.name.clone());
            Some((p.base.clone(), control))
        });
        StackFile { runtime: "podman".into(), dedup_ttl_seconds, services: services.collect() }
    }

    /// Every container's log and state in `logs/gateway-gateway.log` and so on.
    fn save_failure(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        let read = |c: Cmd| c.survives_interrupt().read();
        for (file, name) in self.containers() {
            let logs = read(Podman.logs(&name)).unwrap_or_else(|e| format!("(no log: {e:#})\n"));
            let state = read(Podman.container_state(&name)).unwrap_or_else(|e| format!("{e:#}"));
            let text = format!("# container {name}, state: {}\n{logs}", state.trim());
            std::fs::write(dir.join(format!("{file}.log")), text)?;
        }
        Ok(dir)
    }

    fn keep_instructions(&self) -> String {
        let vars: Vec<String> = self.urls().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let each: String = vars.iter().map(|v| format!("  {v}\n")).collect();
        let names: Vec<String> = self.containers().into_iter().map(|(_, c)| c).collect();
        let all = vars.join(" ");
        let names = names.join(", ");
        let id = &self.id;
        format!(
            "the stack is left running:\n{each}  run the suite again: {all} cargo test -p e2e-suite --test e2e\n  \
             logs: podman logs -f CONTAINER, for {names}\n  \
             stop, start, enter a service: {} (E2E_STACK for the fault tests and test/bench/run.sh)\n  \
             remove it: cargo xtask e2e --down {id}\n",
            self.dir.join("stack.json").display()
        )
    }

    fn where_it_runs(&self) -> Option<String> {
        let net = self.id.network();
        Some(match (&self.suite, self.remote) {
            (None, false) => format!("network {net}"),
            (suite, _) => format!(
                "network {net}; the engine is remote: readiness is asked inside the containers; the suite runs {}",
                if suite.is_some() { "in the engine, on the run's network" } else { "here (--suite-in host)" }
            ),
        })
    }

    fn suite_steps<'a>(&'a self, project: &'a Project) -> Vec<Step<'a>> {
        let Some(p) = &self.suite else { return Vec::new() };
        let what = format!("the suite's test binaries (as their compile placed them) packaged, unless an image of the same content is in the engine: {}", p.build());
        let run = Box::new(move |reporter: &Reporter, _: &dyn Exec| p.package(project, reporter));
        vec![Step::Watch { what, polls: Vec::new(), run }]
    }

    fn suite(&self, project: &Project, test: &str, args: &[String]) -> Cmd {
        let Some(p) = &self.suite else {
            return crate::suite::run(project, test, &self.urls()).args(args.iter().cloned());
        };
        let urls = self.urls_at(|p| format!("{}:{}", p.pod, p.container_port));
        p.run(&self.id.network(), &self.stack.hosts(), test, &urls, args)
    }

    /// Tilt's live update (docs/commands.md, `dev`), when no manifest and no Secret changed
    /// (rendered with the images that run now, they are what runs).
    fn sync_binaries(
        &mut self,
        project: &Project,
        reporter: &Reporter,
        changed: &[&PlanItem],
        plan: &[PlanItem],
    ) -> anyhow::Result<Option<Vec<String>>> {
        let manifests = Manifests::load(&project.manifests_dir())?;
        let images = self.stack.containers().map(|(_, c)| &c.image);
        let now = images.map(|i| (repository(i).to_owned(), i.clone())).collect();
        let as_now = self.rerender(&manifests, &now)?;
        if as_now.pod_yaml != self.stack.pod_yaml || as_now.secrets != self.stack.secrets {
            return Ok(None);
        }
        let mut synced = Vec::new();
        for item in changed {
            let binary = item.spec.binary().unwrap_or_default();
            let dockerfile = std::fs::read_to_string(project.root.join(&item.spec.dockerfile))?;
            let Some(dest) = binary_destination(&dockerfile, binary) else { return Ok(None) };
            let file = item.context.join(binary);
            let repo = item.spec.repository.as_str();
            for (pod, c) in self.stack.containers().filter(|(_, c)| repository(&c.image) == repo) {
                let name = container_name(&pod.name, &c.name);
                let doing = format!("syncing {binary} into {name}");
                let monitors = if self.remote {
                    Vec::new()
                } else {
                    ready::monitors(&mut self.pod_container_ids, &pod.name)
                };
                step::run_shown(reporter, &self.log, &[Podman.container_stop(&name)], &doing)?;
                ready::until_cleaned_up(&monitors)?;
                // Its start is checked by the readiness that follows (a container that ends is
                // reported there, with its state).
                let cmds = [Podman.cp_into(&file, &name, &dest), Podman.container_start(&name)];
                step::run_shown(reporter, &self.log, &cmds, &doing)?;
                self.created_from.entry(name.clone()).or_insert_with(|| c.image.clone());
                synced.push(name);
            }
        }
        // The files name `plan`'s images (what runs, once packaged): later cycles compare to them.
        let pinned =
            plan.iter().map(|i| (i.spec.repository.clone(), i.reference.clone())).collect();
        let new = self.rerender(&manifests, &pinned)?;
        for (pod, yaml) in new.pods.iter().zip(&new.pod_yaml) {
            crate::fsx::write_atomic(&self.pod_file(&pod.name), yaml)?;
        }
        crate::fsx::write_atomic(&self.stack_file(), &new.yaml)?;
        self.stack = new;
        Ok(Some(synced))
    }

    fn replace(
        &mut self,
        project: &Project,
        reporter: &Reporter,
        engine_images: &EngineImages,
    ) -> anyhow::Result<Vec<String>> {
        let stack =
            self.rerender(&Manifests::load(&project.manifests_dir())?, &engine_images.pinned())?;
        let secrets = changed_secrets(&self.stack, &stack);
        let changed = changed_pods(&self.stack, &stack);
        // Stopped, not killed: a service finishes what it was doing (the gateway releases its
        // outbox lease for the new one).
        for pod in changed.iter().map(|&i| &stack.pods[i].name) {
            let cmds = [Podman.pod_stop(pod), Podman.pod_rm(pod)];
            step::run_shown(reporter, &self.log, &cmds, &format!("replacing {pod}"))?;
        }
        // A Secret is read when its pods are played: made again before them, as the run made
        // it (its payload on disk only while the create runs).
        let mut runner = step::Runner {
            dir: self.dir.clone(),
            log: self.log.clone(),
            exec: &step::RealExec,
            record: None,
        };
        for secret in &secrets {
            let doing = format!("replacing podman secret {}", secret.name);
            if self.stack.secrets.iter().any(|s| s.name == secret.name) {
                let cmd = Podman.secret_rm(&secret.name).survives_interrupt();
                runner.step(reporter, &Step::Run { cmd, doing: doing.clone() })?;
            }
            runner.step(reporter, &self.secret_step(secret, &doing))?;
        }
        for &i in &changed {
            let pod = &stack.pods[i];
            let file = self.pod_file(&pod.name);
            crate::fsx::write_atomic(&file, &stack.pod_yaml[i])?;
            let play = Podman.kube_play(&self.id.network(), stack.address(&pod.name), &file);
            step::run_shown(reporter, &self.log, &[play], &format!("replacing {}", pod.name))?;
            for c in &pod.containers {
                self.created_from.remove(&container_name(&pod.name, &c.name));
            }
            self.pod_container_ids.remove(&pod.name);
        }
        let names = changed.iter().map(|&i| stack.pods[i].name.clone()).collect();
        crate::fsx::write_atomic(&self.stack_file(), &stack.yaml)?;
        self.stack = stack;
        Ok(names)
    }
}

/// The pods of `new` to create again: their rendered YAML differs from `old`'s, or they read a
/// Secret that changed (a container reads its Secrets when it is created).
pub fn changed_pods(old: &PodmanStack, new: &PodmanStack) -> Vec<usize> {
    let secrets: Vec<&str> = changed_secrets(old, new).iter().map(|s| &*s.name).collect();
    (0..new.pods.len())
        .filter(|&i| {
            old.pod_yaml.get(i) != new.pod_yaml.get(i)
                || old.pods.get(i).map(|p| &p.name) != Some(&new.pods[i].name)
                || new.pods[i].secrets.iter().any(|s| secrets.contains(&s.as_str()))
        })
        .collect()
}

/// The Secrets of `new` that `old` lacks or holds with another payload.
pub fn changed_secrets<'a>(old: &PodmanStack, new: &'a PodmanStack) -> Vec<&'a Secret> {
    new.secrets.iter().filter(|s| !old.secrets.contains(s)).collect()
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

mod open;
mod ready;

#[cfg(test)]
pub(crate) mod tests;
