//! What `e2e` and `dev` share: a run's options, images, early infrastructure, stack, suite
//! phases, and the only two things a run does at once.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Mutex},
    thread::{scope, ScopedJoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    archive,
    build::{self, compile, Activity, BuildOptions, CompileIn, Session},
    doctor,
    engine::Engine,
    handoff::Handoff,
    manifests::{distinct, Manifests, PodmanStack, Subnet},
    memory,
    problem::Problem,
    project::Project,
    registry,
    report::Reporter,
    runtime::{
        self, free_port,
        kind::{self, KindRun},
        podman::{claim_network, engine_subnets, Arriving, PodmanRun},
        step::{Live, Phase, Runner, Step},
        RunId, RunRecord, Stack,
    },
    suite::{self, InEngine, SuiteIn},
};

/// The gateway's deduplication TTL in `--faults` runs, short enough for a test to see it expire.
const FAULTS_DEDUP_TTL_SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// `podman kube play` on a network of the run's own.
    #[default]
    Podman,
    /// A Kind cluster (provider: the engine, docker or podman).
    Kind,
}

/// What every run is decided from: `cargo xtask e2e`'s command line, or what `dev` converts
/// its own into (the rest left at their defaults).
#[derive(clap::Args, Debug, Default)]
pub struct RunOptions {
    /// Where the stack runs.
    #[arg(long, value_enum, default_value_t = Runtime::Podman)]
    pub runtime: Runtime,
    /// Leave the stack (or the Kind cluster) running and print how to reach and remove it.
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for every service to be ready, in seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS", value_parser = seconds)]
    pub ready_timeout: Duration,
    /// Then run the fault tests (services stopped and restarted under load) one at a time,
    /// with a short deduplication TTL for the gateway.
    #[arg(long)]
    pub faults: bool,
    /// Load the images from this archive (from `cargo xtask save-images`) instead of building.
    #[arg(long, value_name = "ARCHIVE")]
    pub images: Option<PathBuf>,
    /// Pull the images from REGISTRY/PREFIX (pushed by `save-images --push`) instead of building.
    #[arg(long, value_name = "REGISTRY/PREFIX", conflicts_with = "images")]
    pub registry: Option<String>,
    /// With --images: run even when the archive does not match this checkout (loudly warned).
    #[arg(long, requires = "images")]
    pub allow_stale: bool,
    /// Kind: name the cluster [default: e2e-<run>, unique per run].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Kind: use this cluster of an earlier `--runtime kind --keep` (only the run's namespace
    /// is created and removed).
    #[arg(long, value_name = "NAME", conflicts_with = "cluster_name")]
    pub reuse_cluster: Option<String>,
    /// Where the suite runs [default: this machine; in the engine, on the run's network,
    /// when the engine is remote and its published ports are not reachable from here].
    #[arg(long, value_enum)]
    pub suite_in: Option<suite::SuiteIn>,
    /// Print the exact commands of the whole run without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove what earlier runs left (every one not in progress, or the one named), then exit.
    #[arg(long, value_name = "RUN", num_args = 0..=1, default_missing_value = "")]
    pub down: Option<String>,
    #[command(flatten)]
    pub build: BuildOptions,
    /// Arguments for the test harness, after `--` (e.g. `-- metrics` to run matching tests).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// `--ready-timeout`'s value: whole seconds (`e2e` and `dev`).
pub fn seconds(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

/// Where a run's images come from: decided once, from the options, when the run opens; every
/// part of the run (provisioning, doctor, the images phase, the early start, Kind, the dry
/// run, the report) asks this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Built, each whose inputs changed (as `prebuild-images` does).
    Build,
    /// Loaded from an archive of `save-images` (`--images`), checked against this checkout
    /// unless `--allow-stale`.
    Archive { path: PathBuf, allow_stale: bool },
    /// Pulled from `--registry REGISTRY/PREFIX` (where `save-images --push` put them).
    Registry(String),
}

impl ImageSource {
    /// The archive's path, when the images are loaded from one.
    pub fn archive(&self) -> Option<&Path> {
        match self {
            ImageSource::Archive { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A run's images, and the suite's compile left to run beside the deploy (its `-j`).
pub struct Images {
    pub handoff: Handoff,
    pub activity: Activity,
    pub pending_suite: Option<usize>,
}

/// What a run is decided from: `e2e`'s options, or those `dev` fills in. Its images are
/// loaded from `--images`, else pulled from `--registry`, else built.
impl RunOptions {
    /// Where the images come from: `--images`, else `--registry`, else built.
    pub fn image_source(&self) -> ImageSource {
        match (&self.images, &self.registry) {
            (Some(path), _) => {
                ImageSource::Archive { path: path.clone(), allow_stale: self.allow_stale }
            }
            (None, Some(prefix)) => ImageSource::Registry(prefix.clone()),
            (None, None) => ImageSource::Build,
        }
    }

    /// The runtime's engine: podman for podman; for Kind the one asked for, else the one installed.
    pub fn engine(&self) -> Result<Option<Engine>, Problem> {
        match (self.runtime, self.build.engine) {
            (Runtime::Podman, Some(Engine::Docker)) => Err(Problem::new(
                "`--runtime podman` runs the stack with `podman kube play`; --engine docker goes with --runtime kind",
                "drop --engine, or add --runtime kind",
            )),
            (Runtime::Podman, _) => Ok(Some(Engine::Podman)),
            (Runtime::Kind, e) => Ok(e),
        }
    }

    /// The suite, then (`--faults`) the fault tests, as phases, after writing `stack.json` (how
    /// to stop, start and enter each service); the suite first waits for `gate`'s compile.
    pub fn tests<'a>(
        &'a self,
        project: &'a Project,
        stack: &'a dyn Stack,
        gate: Option<&'a SuiteGate<'_>>,
    ) -> Vec<Phase<'a>> {
        let file = stack.dir().join("stack.json");
        let control = stack.control(FAULTS_DEDUP_TTL_SECONDS).to_json();
        let mut steps = vec![Step::Write { path: file.clone(), contents: control }];
        steps.extend(gate.map(|gate| Step::Watch {
            what: "the E2E suite's compile, started beside the deploy, has finished".into(),
            run: Box::new(move |_| gate.wait()),
        }));
        steps.extend(stack.suite_steps(project));
        let cmd = stack.suite(project, "e2e", &self.test_args);
        steps.push(Step::Terminal { cmd, doing: "the E2E suite failed".into() });
        let mut phases = vec![Phase::new(crate::report::phase::SUITE, steps)];
        if self.faults {
            let cmd = suite::run(project, "faults", &stack.urls())
                .env("E2E_STACK", file.display().to_string())
                .arg("--test-threads=1");
            let doing = "the fault tests failed".into();
            phases.push(Phase::new("run fault tests", vec![Step::Terminal { cmd, doing }]));
        }
        phases
    }
}

/// A run under way: its options, and what each of its steps needs.
pub struct Run<'a> {
    pub opts: RunOptions,
    /// Where the images come from (see [`RunOptions::image_source`]).
    pub source: ImageSource,
    pub project: &'a Project,
    pub r: Reporter,
    pub session: Session,
    pub manifests: Manifests,
    pub id: RunId,
    /// The run's subnet once chosen, and (but on a dry run) the record of its network, made.
    network: std::sync::OnceLock<(Subnet, Option<RunRecord>)>,
}

impl<'a> Run<'a> {
    /// The engine decided, the session opened, the manifests read (with the fault tests' short
    /// deduplication TTL when they run).
    pub fn open(project: &'a Project, mut opts: RunOptions, id: RunId) -> Result<Self> {
        let r = Reporter::new();
        opts.build.engine = opts.engine()?;
        let source = opts.image_source();
        // Loading or pulling images needs no base image: only a build makes or pulls one.
        let provision = source == ImageSource::Build && !opts.dry_run;
        let session = Session::open(project, &opts.build, &r, provision)?;
        let mut manifests = Manifests::load(&project.manifests_dir())?;
        if opts.faults {
            let ttl = FAULTS_DEDUP_TTL_SECONDS.to_string();
            manifests.set_env("gateway", "DEDUP_TTL_SECONDS", &ttl)?;
        }
        Ok(Run { opts, source, project, r, session, manifests, id, network: Default::default() })
    }

    /// The run's subnet, sized to its pods: on a dry run chosen, else claimed (the network made
    /// and recorded, see [`claim_network`]) once, by the first part of the run that needs it.
    fn subnet(&self) -> Result<Subnet> {
        if let Some((subnet, _)) = self.network.get() {
            return Ok(*subnet);
        }
        let Run { opts, project, r, session, manifests, id, .. } = self;
        let pods = manifests.pods().len();
        let claimed = match opts.dry_run {
            true => (Subnet::choose(id.as_str(), pods, &engine_subnets()?)?, None),
            false => {
                let engine = (session.remote(), session.engine_version());
                let (subnet, record) = claim_network(id, pods, &id.dir(project), engine, r)?;
                (subnet, Some(record))
            }
        };
        Ok(self.network.get_or_init(|| claimed).0)
    }

    /// What the run has made before its plan runs: its network, once claimed.
    pub fn made(&self) -> Option<RunRecord> {
        self.network.get().and_then(|(_, record)| record.clone())
    }

    pub fn cx(&self) -> build::Ctx<'_> {
        let Run { opts, project, r, session, .. } = self;
        build::Ctx { project, r, opts: &opts.build, session }
    }

    /// Every prerequisite, checked before anything is done.
    pub fn require(&self) -> Result<()> {
        let Run { opts, project, r, session, .. } = self;
        if opts.faults && SuiteIn::resolve(opts.suite_in, session.remote()) == SuiteIn::Engine {
            return Err(Problem::new(
                "the fault tests stop and start services with the engine's command line, so they run on this machine, \
                 and this engine's published ports are not reachable from here",
                "run --faults against a local engine, or pass --suite-in host where the engine publishes its ports here \
                 (podman machine forwards them)",
            )
            .into());
        }
        let (archive, kind) =
            (self.source.archive().map(Path::to_owned), opts.runtime == Runtime::Kind);
        let needs = doctor::Needs { kind, archive, start_container: false };
        // The same checks as `doctor`, stopping the run before anything happens when one fails.
        r.phase("doctor", |r| {
            let checks = doctor::run_checks(project, session, &needs);
            anyhow::ensure!(
                checks.iter().all(|c| c.result.is_ok()),
                "a prerequisite is missing; nothing was done.\n{}",
                doctor::render(&checks)
            );
            r.line(format!("  {} checks passed", checks.len()));
            Ok(())
        })
    }

    /// The images: built, loaded or pulled, and the suite's compile still to do (`-j`).
    pub fn images(&self) -> Result<Images> {
        let (cx, none) = (self.cx(), Activity::default());
        let (handoff, activity) = match &self.source {
            ImageSource::Archive { path, allow_stale } => {
                (archive::load(cx, path, *allow_stale)?, none)
            }
            ImageSource::Registry(prefix) => (registry::pull(cx, prefix)?, none),
            ImageSource::Build => {
                let prepared = build::prepare(cx, build::Goal::Build(&[]))?;
                if !prepared.plan.iter().all(|i| i.is_cached()) {
                    return build_beside_suite(cx, prepared);
                }
                build::finish(cx, prepared, true)?
            }
        };
        let jobs = self.session.facts.env(Some(&handoff.base_image_id))?.cargo_jobs();
        Ok(Images { handoff, activity, pending_suite: Some(jobs) })
    }

    /// The pods that can start before the service images exist (their images hold no binary of
    /// ours and are cached, or come first in the archive), or `None`.
    pub fn early_start(&self) -> Option<PodmanRun> {
        let Run { opts, source, project, session, manifests, id, .. } = self;
        if opts.runtime != Runtime::Podman || opts.build.force {
            return None;
        }
        let names: Vec<String> =
            session.images.infrastructure().into_iter().map(str::to_owned).collect();
        // Their images: cached here, or coming with the archive (awaited before they start).
        let (pinned, arriving): (BTreeMap<String, String>, _) = match source {
            ImageSource::Archive { path, .. } => {
                let images = archive::read_manifest(path).ok()?.handoff.images.into_iter();
                let (pinned, arriving): (_, Vec<_>) = images
                    .filter(|i| names.contains(&i.name))
                    .map(|i| ((i.repository, i.reference.clone()), (i.reference, i.id)))
                    .unzip();
                (pinned, Some(arriving))
            }
            ImageSource::Registry(_) => return None,
            ImageSource::Build => {
                let items = build::plan_quietly(project, session, &names).ok()?;
                if !items.iter().all(|i| i.is_cached()) {
                    return None;
                }
                (items.into_iter().map(|i| (i.spec.repository, i.reference)).collect(), None)
            }
        };
        if pinned.is_empty() {
            return None;
        }
        // Which pods can start early, from the stack on any subnet: the run's is claimed only
        // when some can.
        let anywhere = Subnet::choose(id.as_str(), manifests.pods().len(), &[]).ok()?;
        let stack = manifests
            .render_podman(&pinned, id.suffix(), Some(anywhere), distinct(free_port))
            .ok()?;
        let early: std::collections::BTreeSet<String> = stack
            .pods
            .iter()
            .filter(|p| p.containers.iter().all(|c| pinned.values().any(|r| *r == c.image)))
            .map(|p| p.name.clone())
            .collect();
        if early.is_empty() {
            return None;
        }
        let arriving = arriving.map(|images| Arriving { images, ended: Default::default() });
        let stack = self.render_podman(&pinned).ok()?;
        let (network_made, remote) = (!opts.dry_run, session.remote());
        let version = session.engine_version().to_owned();
        let run = PodmanRun::new(project, id.clone(), stack);
        Some(PodmanRun { early, arriving, network_made, remote, version, ..run })
    }

    /// The stack on the runtime asked for, with `handoff`'s images; on podman, going on from `early`.
    pub fn stack(&self, handoff: &Handoff, early: Option<PodmanRun>) -> Result<Box<dyn Stack>> {
        let Run { opts, project, session, manifests, id, .. } = self;
        if opts.runtime == Runtime::Kind {
            return Ok(Box::new(self.kind(handoff)?));
        }
        let pinned = handoff.pinned();
        let (stack, early) = match early {
            // The same stack with every image pinned now, on the ports the early part chose.
            Some(started) => (started.rerender(manifests, &pinned)?, started.early),
            None => (self.render_podman(&pinned)?, Default::default()),
        };
        let (remote, network_made) = (session.remote(), !opts.dry_run);
        let version = session.engine_version().to_owned();
        let run = PodmanRun::new(project, id.clone(), stack);
        let mut run = PodmanRun { early, remote, version, network_made, ..run };
        // In the engine (as asked, or when it is remote), the suite's package goes with the run,
        // so the teardown removes its image.
        if SuiteIn::resolve(opts.suite_in, remote) == SuiteIn::Engine {
            let base = &session.facts.base_image;
            let mut package = InEngine::new(project, Engine::Podman, id.suffix(), base);
            // Compiled in the engine (as asked, or as the platforms decide).
            let in_engine = session.facts.engine.as_ref().is_ok_and(|f| {
                let host = compile::host_platform();
                compile::resolve(opts.build.compile_in, &host, &f.platform) == CompileIn::Engine
            });
            package.compiled_in_engine =
                in_engine.then(|| project.e2e_dir.join("engine-bin").join("suite"));
            if session.facts.engine.as_ref().is_ok_and(|f| !f.isolation.caps_hold()) {
                package.cap = None;
            }
            run.suite = Some(package);
        }
        Ok(Box::new(run))
    }

    /// The manifests for podman, on the run's subnet and free host ports.
    fn render_podman(&self, pinned: &BTreeMap<String, String>) -> Result<PodmanStack> {
        let (manifests, suffix) = (&self.manifests, self.id.suffix());
        manifests.render_podman(pinned, suffix, Some(self.subnet()?), distinct(free_port))
    }

    fn kind(&self, handoff: &Handoff) -> Result<KindRun> {
        let Run { opts, project, manifests, id, .. } = self;
        let (cluster, reuse) = match (&opts.reuse_cluster, &opts.cluster_name) {
            (Some(name), _) => (name.clone(), true),
            (None, name) => (name.clone().unwrap_or_else(|| id.namespace()), false),
        };
        let (stack, node_ports) = manifests.render_kind(&handoff.pinned())?;
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
            kind::render_cluster_config(&template, &cluster, distinct(free_port))?
        };
        let (dir, ports_record) = (id.dir(project), (opts.keep && !reuse).then_some(record));
        Ok(KindRun {
            id: id.clone(),
            cluster,
            reuse,
            namespace: id.namespace(),
            // The engine that built or loaded the images is kind's provider.
            provider: handoff.engine,
            archive_source: self.source.archive().map(Path::to_owned),
            log: id.log(project),
            dir,
            ports,
            node_ports,
            references: handoff.images.iter().map(|i| i.reference.clone()).collect(),
            pods: manifests.pods(),
            config,
            stack,
            ports_record,
        })
    }

    /// The first thing a run does at once: the images, and meanwhile `early`'s pods (PostgreSQL,
    /// Redis); when either fails, what started is torn down. Returns what `early` recorded.
    pub fn images_beside(&self, early: Option<&PodmanRun>) -> Result<(Images, Option<RunRecord>)> {
        let Some(run) = early else {
            return Ok((self.images()?, None));
        };
        let r = &self.r;
        let (images, (started, record)) = scope(|s| {
            let starting = s.spawn(|| {
                let (dir, log) = (run.dir.clone(), run.log.clone());
                let mut runner = Runner { dir, log, exec: &mut Live, record: None };
                (runner.phases(r, &run.plan_early()), runner.record)
            });
            let images = self.images();
            // Pods awaiting the archive's images stop waiting for any that did not come.
            if let Some(arriving) = &run.arriving {
                arriving.ended.store(true, Ordering::SeqCst);
            }
            (images, starting.join().expect("no panic"))
        });
        if images.is_err() || started.is_err() {
            // Nothing else will run: what started early is torn down now.
            if let Err(t) = runtime::finish(run, r, record.as_ref(), false) {
                r.line(format!("{t:#}"));
            }
        }
        // The images' error first: when they fail, what waited on them fails too.
        let images = images?;
        started?;
        Ok((images, record))
    }

    /// The second: a suite compile still to do (no build ran beside it) runs beside the deploy,
    /// and the suite waits for it through the gate.
    pub fn beside_suite_compile<T>(
        &self,
        pending: Option<usize>,
        deploy_and_test: impl FnOnce(Option<&SuiteGate<'_>>) -> T,
    ) -> T {
        let (project, r) = (self.project, &self.r);
        scope(|s| {
            let compiling = pending.map(|jobs| s.spawn(move || compile_suite(project, r, jobs)));
            deploy_and_test(compiling.map(|h| SuiteGate(Mutex::new(Some(h)))).as_ref())
        })
    }
}

/// Builds wait on podman and apt more than on the CPU, so the suite compiles meanwhile; on a
/// local engine its rustc jobs' memory leaves the builds' budget, as long as the largest fits.
fn build_beside_suite(cx: build::Ctx, mut prepared: build::Prepared) -> Result<Images> {
    let (project, r) = (cx.project, cx.r);
    let env = &mut prepared.env;
    let jobs = memory::cargo_jobs(env.host_budget.bytes / 2, memory::cpus());
    let biggest = prepared.plan.iter().map(|i| i.spec.memory).max().unwrap_or(0);
    let budget = &mut env.budget;
    let room = budget.bytes.saturating_sub(biggest);
    let reserved = if env.facts.remote { 0 } else { (jobs as u64 * memory::RUSTC_JOB).min(room) };
    budget.bytes -= reserved;
    let kept = memory::human(reserved);
    if reserved > 0 {
        budget.source =
            format!("{}, less {kept} for the E2E suite compiling meanwhile", budget.source);
    }
    r.line(format!(
        "the E2E suite compiles (cargo -j {jobs}) while the images build: {kept} of the budget is kept for it"
    ));
    let (built, compiled) = scope(|s| {
        let compiling = s.spawn(|| compile_suite(project, r, jobs));
        let built = build::finish(cx, prepared, true);
        (built, compiling.join().expect("no panic"))
    });
    compiled?;
    let (handoff, activity) = built?;
    Ok(Images { handoff, activity, pending_suite: None })
}

/// A suite compile running beside the deploy, waited for once, before the suite runs.
pub struct SuiteGate<'s>(Mutex<Option<ScopedJoinHandle<'s, Result<()>>>>);

impl SuiteGate<'_> {
    fn wait(&self) -> Result<()> {
        let compiling = self.0.lock().expect("not poisoned").take();
        let panicked = |_| Err(anyhow::anyhow!("the suite's compile panicked"));
        compiling.map_or(Ok(()), |h| h.join().unwrap_or_else(panicked))
    }
}

/// `cargo test --no-run` of the suite, as a phase.
pub fn compile_suite(project: &Project, r: &Reporter, jobs: usize) -> Result<()> {
    r.phase("compile E2E suite", |r| suite::compile_here(project, r, jobs))
}
