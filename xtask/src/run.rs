//! What `e2e` and `dev` share: a run's options, images, early infrastructure, stack, suite
//! phases, and the only two things a run does at once.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    thread::{scope, ScopedJoinHandle},
    time::Duration,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    archive,
    build::{self, Activity, BuildOptions, Session},
    doctor,
    engine::Engine,
    engine_images::EngineImages,
    manifests::Manifests,
    memory,
    problem::Problem,
    project::Project,
    registry,
    report::Reporter,
    suite::{self, SuiteIn},
};

/// The gateway's deduplication TTL in `--faults` runs, short enough for a test to see it expire.
pub const FAULTS_DEDUP_TTL_SECONDS: u64 = 5;

/// Where the stack runs (`--runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// `podman kube play` on a network of the run's own.
    #[default]
    Podman,
    /// A Kind cluster (provider: the engine, docker or podman).
    Kind,
    /// A Kubernetes cluster that exists already (`--context`), a namespace per run, the images
    /// pulled from `--registry`.
    Kube,
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
    /// Kube: the kubectl context of the cluster (a namespace of the run's own is created and
    /// removed in it; the images come from --registry).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
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
pub struct RunImages {
    pub engine_images: EngineImages,
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
            (Runtime::Kind | Runtime::Kube, e) => Ok(e),
        }
    }

    /// What the runtime needs of the options, checked before anything runs.
    pub fn check_runtime(&self) -> Result<(), Problem> {
        let kube = self.runtime == Runtime::Kube;
        let kind_options = self.cluster_name.is_some() || self.reuse_cluster.is_some();
        if kube && (self.context.is_none() || self.registry.is_none()) {
            return Err(Problem::new(
                "`--runtime kube` runs the stack in a cluster that exists already, which pulls its images: it needs the cluster's kubectl context and the registry",
                "add --context NAME (`kubectl config get-contexts` lists them) and --registry REGISTRY/PREFIX (filled by `cargo xtask save-images --push REGISTRY/PREFIX`)",
            ));
        }
        if !kube && self.context.is_some() {
            return Err(Problem::new(
                "--context names the cluster of `--runtime kube`",
                "add --runtime kube, or drop --context",
            ));
        }
        if self.runtime != Runtime::Kind && kind_options {
            return Err(Problem::new(
                "--cluster-name and --reuse-cluster name a Kind cluster",
                "add --runtime kind, or drop them",
            ));
        }
        Ok(())
    }
}

/// A run's id, `20261127-103501-4242` (UTC time, then the process id), which sorts by time
/// and is unique per process; every name a run gives derives from it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A new id; `name` (e.g. `--cluster-name`) is appended when given.
    pub fn new(name: Option<&str>) -> RunId {
        let id = format!("{}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"), std::process::id());
        RunId(name.map_or_else(|| id.clone(), |n| format!("{id}-{n}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The short, unique part that object names get: `103501-4242`.
    pub fn suffix(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(_, rest)| rest)
    }

    pub fn dir(&self, project: &Project) -> PathBuf {
        project.runs_dir().join(&self.0)
    }

    pub fn log(&self, project: &Project) -> PathBuf {
        project.logs_dir().join(format!("run-{}.log", self.0))
    }

    pub fn network(&self) -> String {
        format!("e2e-{}", self.0)
    }

    /// The Kubernetes namespace of the run (and the default Kind cluster name).
    pub fn namespace(&self) -> String {
        format!("e2e-{}", self.suffix())
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A run under way: its options, and what each of its steps needs.
pub struct Run<'a> {
    pub opts: RunOptions,
    /// Where the images come from (see [`RunOptions::image_source`]).
    pub source: ImageSource,
    pub project: &'a Project,
    pub reporter: Reporter,
    pub session: Session,
    pub manifests: Manifests,
    pub id: RunId,
}

impl<'a> Run<'a> {
    /// The engine decided, the session opened, the manifests read (with the fault tests' short
    /// deduplication TTL when they run).
    pub fn open(project: &'a Project, mut opts: RunOptions, id: RunId) -> Result<Self> {
        let reporter = Reporter::new();
        opts.check_runtime()?;
        opts.build.engine = opts.engine()?;
        let source = opts.image_source();
        // Loading or pulling images needs no base image: only a build makes or pulls one.
        let provision = source == ImageSource::Build && !opts.dry_run;
        let session = Session::open(project, &opts.build, &reporter, provision)?;
        let mut manifests = Manifests::load(&project.manifests_dir())?;
        if opts.faults {
            let ttl = FAULTS_DEDUP_TTL_SECONDS.to_string();
            manifests.set_env("gateway", "DEDUP_TTL_SECONDS", &ttl)?;
        }
        Ok(Run { opts, source, project, reporter, session, manifests, id })
    }

    pub fn inputs(&self) -> build::Inputs<'_> {
        let Run { opts, project, reporter, session, .. } = self;
        build::Inputs { project, reporter, opts: &opts.build, session }
    }

    /// Every prerequisite, checked before anything is done.
    pub fn require(&self) -> Result<()> {
        let Run { opts, project, reporter, session, .. } = self;
        if opts.faults && SuiteIn::resolve(opts.suite_in, session.remote()) == SuiteIn::Engine {
            return Err(Problem::new(
                "the fault tests stop and start services with the engine's command line, so they run on this machine, \
                 and this engine's published ports are not reachable from here",
                "run --faults against a local engine, or pass --suite-in host where the engine publishes its ports here \
                 (podman machine forwards them)",
            )
            .into());
        }
        let needs = doctor::Needs {
            kind: opts.runtime == Runtime::Kind,
            kubectl: opts.runtime != Runtime::Podman,
            archive: self.source.archive().map(Path::to_owned),
            start_container: false,
        };
        // The same checks as `doctor`, stopping the run before anything happens when one fails.
        reporter.phase("doctor", |reporter| {
            let checks = doctor::run_checks(project, session, &needs);
            anyhow::ensure!(
                checks.iter().all(|c| c.result.is_ok()),
                "a prerequisite is missing; nothing was done.\n{}",
                doctor::render(&checks)
            );
            reporter.line(format!("  {} checks passed", checks.len()));
            Ok(())
        })
    }

    /// The images: built, loaded or pulled, and the suite's compile still to do (`-j`).
    /// `arrived` hears of each image of an archive as soon as it is in, when the load tells.
    pub fn images(&self, arrived: &(dyn Fn(&str) + Sync)) -> Result<RunImages> {
        let inputs = self.inputs();
        let none = Activity::default();
        let (engine_images, activity) = match &self.source {
            ImageSource::Archive { path, allow_stale } => {
                (archive::load(inputs, path, *allow_stale, arrived)?, none)
            }
            ImageSource::Registry(prefix) => (registry::pull(inputs, prefix)?, none),
            ImageSource::Build => {
                let prepared = build::prepare(inputs, build::Goal::Build(&[]))?;
                if !prepared.plan.iter().all(|i| i.is_cached()) {
                    return build_beside_suite(inputs, prepared);
                }
                build::finish(inputs, prepared, true)?
            }
        };
        let jobs = self.session.facts.env(Some(&engine_images.base_image_id))?.cargo_jobs();
        Ok(RunImages { engine_images, activity, pending_suite: Some(jobs) })
    }

    /// The second: a suite compile still to do (no build ran beside it) runs beside the deploy,
    /// and the suite waits for it through the gate.
    pub fn beside_suite_compile<T>(
        &self,
        pending: Option<usize>,
        deploy_and_test: impl FnOnce(Option<&SuiteGate<'_>>) -> T,
    ) -> T {
        let project = self.project;
        let reporter = &self.reporter;
        scope(|s| {
            let compiling =
                pending.map(|jobs| s.spawn(move || compile_suite(project, reporter, jobs)));
            deploy_and_test(compiling.map(|h| SuiteGate(Mutex::new(Some(h)))).as_ref())
        })
    }
}

/// Builds wait on podman and apt more than on the CPU, so the suite compiles meanwhile; on a
/// local engine its rustc jobs' memory leaves the builds' budget, as long as the largest fits.
fn build_beside_suite(inputs: build::Inputs, mut prepared: build::Prepared) -> Result<RunImages> {
    let project = inputs.project;
    let reporter = inputs.reporter;
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
    reporter.line(format!(
        "the E2E suite compiles (cargo -j {jobs}) while the images build: {kept} of the budget is kept for it"
    ));
    let (built, compiled) = scope(|s| {
        let compiling = s.spawn(|| compile_suite(project, reporter, jobs));
        let built = build::finish(inputs, prepared, true);
        (built, compiling.join().expect("no panic"))
    });
    compiled?;
    let (engine_images, activity) = built?;
    Ok(RunImages { engine_images, activity, pending_suite: None })
}

/// A suite compile running beside the deploy, waited for once, before the suite runs.
pub struct SuiteGate<'s>(Mutex<Option<ScopedJoinHandle<'s, Result<()>>>>);

impl SuiteGate<'_> {
    pub fn wait(&self) -> Result<()> {
        let compiling = self.0.lock().expect("not poisoned").take();
        let panicked = |_| Err(anyhow::anyhow!("the suite's compile panicked"));
        compiling.map_or(Ok(()), |h| h.join().unwrap_or_else(panicked))
    }
}

/// `cargo test --no-run` of the suite, as a phase.
pub fn compile_suite(project: &Project, reporter: &Reporter, jobs: usize) -> Result<()> {
    reporter.phase("compile E2E suite", |reporter| suite::compile_here(project, reporter, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_run_id() {
        let id = RunId("20261127-103501-42".into());
        assert_eq!(id.suffix(), "103501-42");
        assert_eq!(id.network(), "e2e-20261127-103501-42");
        assert_eq!(id.namespace(), "e2e-103501-42");
        let new = RunId::new(Some("mine"));
        assert_eq!(
            new.as_str().len(),
            "20261127-103501-".len() + std::process::id().to_string().len() + 5
        );
        assert!(new.as_str().ends_with(&format!("-{}-mine", std::process::id())));
    }
}
