//! `cargo xtask e2e`: doctor, images, stack, readiness, suite, logs, teardown, report.
//!
//! The images stage builds, loads or pulls (see `build`, `archive`, `registry`); the rest of
//! the run is a list of phases from the runtime (`runtime::podman` or `runtime::kind`) that
//! is either printed (`--dry-run`) or executed, then torn down from what was recorded.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context;
use serde::Serialize;

use crate::{
    archive,
    build::{self, Action, Activity, BuildOptions, Session},
    doctor,
    engine::Engine,
    fingerprint,
    handoff::Handoff,
    interrupt,
    manifests::Manifests,
    problem::Problem,
    project::Project,
    registry,
    report::{self, Reporter},
    runtime::{
        self, free_port,
        kind::{self, KindFiles, KindRun},
        podman::PodmanRun,
        step::{self, Live, Phase, Runner, Step},
        RunId, StackControl,
    },
    suite::{self, InEngine, SuiteIn},
    timeline::SpanState,
};

/// The deduplication TTL the gateway gets for `--faults` runs, so that a test can see a
/// signal's deduplication expire.
pub const FAULTS_DEDUP_TTL_SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `podman kube play` on a network of the run's own.
    Podman,
    /// A Kind cluster (provider: the engine, docker or podman).
    Kind,
}

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// Where the stack runs.
    #[arg(long, value_enum, default_value_t = Runtime::Podman)]
    pub runtime: Runtime,
    /// Leave the stack (or the Kind cluster) running and print how to reach and remove it.
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for every service to be ready, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub ready_timeout: u64,
    /// After the suite, run the fault tests (services stopped and restarted under load),
    /// one at a time; the gateway gets a short deduplication TTL for them.
    #[arg(long)]
    pub faults: bool,
    /// Load the images from this archive (from `cargo xtask save-images`) instead of building.
    #[arg(long, value_name = "ARCHIVE")]
    pub images: Option<std::path::PathBuf>,
    /// Pull the images from REGISTRY/PREFIX (pushed by `save-images --push`) instead of building.
    #[arg(long, value_name = "REGISTRY/PREFIX", conflicts_with = "images")]
    pub registry: Option<String>,
    /// With --images: run even when the archive does not match this checkout (loudly warned).
    #[arg(long, requires = "images")]
    pub allow_stale: bool,
    /// Kind: name the cluster [default: e2e-<run>, unique per run].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Kind: use this existing cluster (made by an earlier `--runtime kind --keep`); only the
    /// run's namespace is created and removed.
    #[arg(long, value_name = "NAME", conflicts_with = "cluster_name")]
    pub reuse_cluster: Option<String>,
    /// Where the suite runs [default: this machine; in the engine, on the run's network,
    /// when the engine is remote and its published ports are not reachable from here].
    #[arg(long, value_enum)]
    pub suite_in: Option<SuiteIn>,
    /// Print the exact commands of the whole run without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove what earlier runs left (every run that is not in progress, or the one named),
    /// then exit.
    #[arg(long, value_name = "RUN", num_args = 0..=1, default_missing_value = "")]
    pub down: Option<String>,
    #[command(flatten)]
    pub build: BuildOptions,
    /// Arguments for the test harness, after `--` (e.g. `-- metrics` to run matching tests).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// `target/e2e/runs/<id>/report.json`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub runtime: Runtime,
    pub passed: bool,
    pub error: Option<String>,
    /// Seconds per phase, in order.
    pub phases: Vec<(String, f64)>,
    pub images_cached: usize,
    pub images_built: usize,
    pub bytes_loaded: u64,
    /// Seconds from the start of the run to the start of the suite (none if it never started).
    pub first_test_s: Option<f64>,
}

/// The engine a runtime runs with: podman's stack needs podman; Kind takes either (the one
/// asked for, else the one installed).
pub fn engine_for(runtime: Runtime, requested: Option<Engine>) -> Result<Option<Engine>, Problem> {
    match (runtime, requested) {
        (Runtime::Podman, Some(Engine::Docker)) => Err(Problem::new(
            "`--runtime podman` runs the stack with `podman kube play`; --engine docker goes with --runtime kind",
            "drop --engine, or add --runtime kind",
        )),
        (Runtime::Podman, _) => Ok(Some(Engine::Podman)),
        (Runtime::Kind, e) => Ok(e),
    }
}

impl E2eArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        if let Some(run) = &self.down {
            return runtime::down(project, &r, Some(run.as_str()).filter(|s| !s.is_empty()));
        }
        let opts = BuildOptions {
            engine: engine_for(self.runtime, self.build.engine)?,
            ..self.build.clone()
        };
        // The engine is decided and asked once, here; every stage takes these facts.
        // Loading an archive needs no base image: only a build makes or pulls one.
        let provision = self.images.is_none() && !self.dry_run;
        let session = Session::open(project, &opts, &r, provision)?;
        let mut manifests = Manifests::load(&project.manifests_dir())?;
        if self.faults {
            manifests.set_env(
                "gateway",
                "DEDUP_TTL_SECONDS",
                &FAULTS_DEDUP_TTL_SECONDS.to_string(),
            )?;
        }
        let id = RunId::new(self.cluster_name.as_deref());
        if self.dry_run {
            return self.dry_run(project, &r, &opts, &session, &manifests, &id);
        }
        let remote = session.facts.engine.as_ref().is_ok_and(|f| f.remote);
        if self.faults && SuiteIn::resolve(self.suite_in, remote) == SuiteIn::Engine {
            return Err(Problem::new(
                "the fault tests stop and start services with the engine's command line, so they run on this machine, \
                 and this engine's published ports are not reachable from here",
                "run --faults against a local engine, or pass --suite-in host where the engine publishes its ports here \
                 (podman machine forwards them)",
            )
            .into());
        }
        let needs = doctor::Needs {
            kind: self.runtime == Runtime::Kind,
            archive: self.images.clone(),
            start_container: false,
        };
        doctor::require(project, &r, &session, &needs)?;

        // PostgreSQL and Redis start while the service binaries compile and their images
        // build, when their own images are there already.
        let early = self.early_start(project, &session, &manifests, &id);
        let (images, started) = std::thread::scope(|s| {
            let started = early.as_ref().map(|run| {
                s.spawn(|| {
                    let mut runner = Runner {
                        dir: run.dir.clone(),
                        log: run.log.clone(),
                        exec: &mut Live,
                        record: None,
                    };
                    let result = runner.phases(&r, &run.plan_early());
                    (result, runner.record)
                })
            });
            let images = self.images_deferring_suite(project, &r, &opts, &session, true);
            // Pods awaiting the archive's images stop waiting for any that did not come.
            if let Some(arriving) = early.as_ref().and_then(|run| run.arriving.as_ref()) {
                arriving
                    .ended
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            (images, started.map(|h| h.join().expect("no panic")))
        });
        let (early_result, early_record) = match started {
            Some((result, record)) => (result, record),
            None => (Ok(()), None),
        };
        if let (Some(run), Some(record), Err(_)) | (Some(run), Some(record), Ok(Err(_))) = (
            &early,
            &early_record,
            images.as_ref().map(|_| early_result.as_ref()),
        ) {
            // Nothing else will run: what started early is torn down now.
            let teardown = r.phase("tear down", |r| {
                runtime::teardown(&run.dir, record, &run.log, r, &mut Live)
            });
            if let Err(t) = teardown {
                r.line(format!("{t:#}"));
            }
        }
        // The images' error first: when they fail, what waited on them fails too.
        let (handoff, activity, pending) = images?;
        early_result?;
        let early = early.map(|run| (run, early_record));
        let built = handoff.built_now.len();
        let cached = handoff.images.len().saturating_sub(built);
        interrupt::check()?;

        // A suite compile left over (nothing to build) runs beside the deploy; the suite
        // waits for it.
        let outcome = std::thread::scope(|s| {
            let reporter = &r;
            let compiling =
                pending.map(|jobs| s.spawn(move || run_suite_compile(project, reporter, jobs)));
            let gate = SuiteGate(std::sync::Mutex::new(compiling));
            match self.runtime {
                Runtime::Podman => {
                    let begun = Begun {
                        gate: &gate,
                        early,
                        remote,
                        base_image: session.facts.base_image.clone(),
                        compiled_in_engine: compiled_in_engine(self.build.compile_in, &session),
                    };
                    self.run_podman(project, &r, &manifests, &handoff, &id, begun)
                }
                Runtime::Kind => self.run_kind(project, &r, &manifests, &handoff, &id, &gate),
            }
        });
        let dir = id.dir(project);
        r.line(format!("phases:\n{}", r.summary()));
        let report = RunReport {
            run: id.to_string(),
            runtime: self.runtime,
            passed: outcome.is_ok(),
            error: outcome.as_ref().err().map(|e| format!("{e:#}")),
            phases: r.phase_times(),
            images_cached: cached,
            images_built: built,
            bytes_loaded: self
                .images
                .as_ref()
                .and_then(|a| std::fs::metadata(a).ok())
                .map_or(0, |m| m.len()),
            first_test_s: r
                .phase_spans()
                .iter()
                .find(|p| p.name == "run E2E suite")
                .map(|p| (p.start_s * 1000.0).round() / 1000.0),
        };
        crate::fsx::write_json(&dir.join("report.json"), &report)?;
        let loaded = self.images.is_some() || self.registry.is_some();
        let images: Vec<(String, SpanState)> = handoff
            .images
            .iter()
            .map(|i| {
                let state = match (handoff.built_now.contains(&i.name), loaded) {
                    (true, _) => SpanState::Built,
                    (false, true) => SpanState::Loaded,
                    (false, false) => SpanState::Cached,
                };
                (i.name.clone(), state)
            })
            .collect();
        report::write_timeline(
            &r,
            &dir,
            &format!("cargo xtask e2e: run {id}"),
            &match &report.error {
                None => "passed".to_owned(),
                Some(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
            },
            &images,
            &activity,
            session.facts.budget.as_ref().ok().map(|b| b.bytes),
        )?;
        r.line(format!(
            "report: {} (and report.html beside it)",
            project.display(&dir.join("report.json"))
        ));
        if outcome.is_ok() {
            r.line("E2E passed");
        }
        outcome
    }

    /// The images, built, loaded or pulled; and the E2E suite compiled meanwhile. Image builds
    /// wait on podman and apt more than on the CPU, so the suite compiles while they run,
    /// with the memory of its rustc jobs taken out of the builds' budget.
    pub(crate) fn images_for_run(
        &self,
        project: &Project,
        r: &Reporter,
        opts: &BuildOptions,
        session: &Session,
    ) -> anyhow::Result<(Handoff, Activity)> {
        let (handoff, activity, pending) =
            self.images_deferring_suite(project, r, opts, session, false)?;
        if let Some(jobs) = pending {
            run_suite_compile(project, r, jobs)?;
        }
        Ok((handoff, activity))
    }

    /// [`Self::images_for_run`]; with `defer`, a suite compile that would run after the
    /// images is left to the caller (returned as its `-j`), to run beside the deploy.
    fn images_deferring_suite(
        &self,
        project: &Project,
        r: &Reporter,
        opts: &BuildOptions,
        session: &Session,
        defer: bool,
    ) -> anyhow::Result<(Handoff, Activity, Option<usize>)> {
        let compile_suite = |jobs: usize| -> anyhow::Result<Option<usize>> {
            if defer {
                return Ok(Some(jobs));
            }
            run_suite_compile(project, r, jobs)?;
            Ok(None)
        };
        let handoff = match (&self.images, &self.registry) {
            (Some(archive), _) => {
                archive::load(project, r, archive, self.allow_stale, opts, session)?
            }
            (None, Some(prefix)) => registry::pull(project, r, prefix, opts, session)?,
            (None, None) => {
                let mut prepared = build::prepare(project, r, opts, session, &[], None, true)?;
                if prepared.plan.iter().all(|i| i.is_cached()) {
                    let (handoff, activity) = build::finish(project, r, opts, prepared)?;
                    let pending = compile_suite(session.facts.env(None)?.cargo_jobs())?;
                    return Ok((handoff, activity, pending));
                }
                let env = &mut prepared.env;
                let jobs =
                    crate::memory::cargo_jobs(env.host_budget.bytes / 2, crate::memory::cpus());
                let biggest = prepared
                    .plan
                    .iter()
                    .map(|i| i.spec.memory)
                    .max()
                    .unwrap_or(0);
                // The suite's rustc jobs run beside the builds; on a local engine they share
                // its memory. Never so much that the largest image no longer fits.
                let reserved = if env.facts.remote {
                    0
                } else {
                    (jobs as u64 * crate::memory::RUSTC_JOB)
                        .min(env.budget.bytes.saturating_sub(biggest))
                };
                env.budget.bytes -= reserved;
                if reserved > 0 {
                    env.budget.source = format!(
                        "{}, less {} for the E2E suite compiling meanwhile",
                        env.budget.source,
                        crate::memory::human(reserved)
                    );
                }
                r.line(format!(
                    "the E2E suite compiles (cargo -j {jobs}) while the images build: {} of the budget is kept for it",
                    crate::memory::human(reserved)
                ));
                let (built, compiled) = std::thread::scope(|s| {
                    let compiling = s.spawn(|| run_suite_compile(project, r, jobs));
                    let built = build::finish(project, r, opts, prepared);
                    (built, compiling.join().expect("no panic"))
                });
                compiled?;
                let (handoff, activity) = built?;
                return Ok((handoff, activity, None));
            }
        };
        let pending = compile_suite(
            session
                .facts
                .env(Some(&handoff.base_image_id))?
                .cargo_jobs(),
        )?;
        Ok((handoff, Activity::default(), pending))
    }

    /// The suite, then (with `--faults`) the fault tests, as phases of the run; the suite
    /// first waits for a compile still running (`gate`). With `in_engine`, the suite is
    /// packaged and run in a container on the run's network (the services' in-network URLs),
    /// its output and exit status as on this machine.
    pub(crate) fn test_phases<'a, 's: 'a>(
        &self,
        project: &'a Project,
        urls: &BTreeMap<String, String>,
        dir: &Path,
        control: StackControl,
        gate: Option<&'a SuiteGate<'s>>,
        in_engine: Option<(&'a InEngine, &PodmanRun)>,
    ) -> Vec<Phase<'a>> {
        let mut suite_steps = Vec::new();
        if let Some(gate) = gate {
            suite_steps.push(Step::Watch {
                what: "the E2E suite's compile, started beside the deploy, has finished".into(),
                run: Box::new(move |_| gate.wait()),
            });
        }
        match in_engine {
            Some((package, run)) => {
                suite_steps.push(Step::Watch {
                    what: format!(
                        "the suite's test binaries (as their compile placed them) packaged, \
                         unless an image of the same content is in the engine: {}",
                        package.build()
                    ),
                    run: Box::new(move |r| package.package(project, r)),
                });
                suite_steps.push(Step::Terminal {
                    cmd: package.run(
                        &run.network(),
                        &run.stack.hosts(),
                        "e2e",
                        &run.network_urls(),
                        &self.test_args,
                    ),
                    doing: "the E2E suite failed (run in the engine)".into(),
                });
            }
            None => suite_steps.push(Step::Terminal {
                cmd: suite::run(project, "e2e", urls).args(self.test_args.iter().cloned()),
                doing: "the E2E suite failed".into(),
            }),
        }
        // How to stop, start and enter each service (for the fault tests, the load
        // benchmark, and anyone with a `--keep` stack).
        let file = dir.join("stack.json");
        suite_steps.insert(
            0,
            Step::Write {
                path: file.clone(),
                contents: serde_json::to_string_pretty(&control).expect("serialises"),
            },
        );
        let mut phases = vec![Phase::new("run E2E suite", suite_steps)];
        if self.faults {
            phases.push(Phase::new(
                "run fault tests",
                vec![Step::Terminal {
                    cmd: suite::run(project, "faults", urls)
                        .env("E2E_STACK", file.display().to_string())
                        .arg("--test-threads=1"),
                    doing: "the fault tests failed".into(),
                }],
            ));
        }
        phases
    }

    /// The run with the pods that can start before the service images exist (their images
    /// package no binary of ours and are there already), or `None`.
    fn early_start(
        &self,
        project: &Project,
        session: &Session,
        manifests: &Manifests,
        id: &RunId,
    ) -> Option<PodmanRun> {
        if self.runtime != Runtime::Podman || self.registry.is_some() || self.build.force {
            return None;
        }
        let names: Vec<String> = session
            .images
            .infrastructure()
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Their images: cached here, or coming with the archive (awaited before they start).
        let (pinned, arriving): (BTreeMap<String, String>, _) = match &self.images {
            Some(archive) => {
                let manifest = archive::read_manifest(archive).ok()?;
                let records: Vec<_> = manifest
                    .images
                    .into_iter()
                    .filter(|i| names.contains(&i.name))
                    .collect();
                let arriving = records
                    .iter()
                    .map(|i| (i.reference.clone(), i.id.clone()))
                    .collect::<Vec<_>>();
                (
                    records
                        .into_iter()
                        .map(|i| (i.repository, i.reference))
                        .collect(),
                    Some(arriving),
                )
            }
            None => {
                let items = build::plan_quietly(project, session, &names).ok()?;
                if !items.iter().all(|i| i.is_cached()) {
                    return None;
                }
                let pinned = items
                    .iter()
                    .map(|i| (i.spec.repository.clone(), i.reference.clone()))
                    .collect();
                (pinned, None)
            }
        };
        if pinned.is_empty() {
            return None;
        }
        let subnet = runtime::podman::subnet_for(id).ok()?;
        let stack = manifests
            .render_podman(&pinned, id.suffix(), Some(subnet), free_port)
            .ok()?;
        let early: std::collections::BTreeSet<String> = stack
            .pods
            .iter()
            .filter(|p| {
                p.containers
                    .iter()
                    .all(|c| pinned.values().any(|r| *r == c.image))
            })
            .map(|p| p.name.clone())
            .collect();
        if early.is_empty() {
            return None;
        }
        let mut run = PodmanRun::new(project, id.clone(), stack);
        run.early = early;
        run.arriving = arriving.map(|images| runtime::podman::Arriving {
            images,
            ended: Default::default(),
        });
        Some(run)
    }

    /// Where the suite runs (as asked, else in the engine when it is remote), and when in
    /// the engine, its package (recorded with the run, so the teardown removes its image).
    fn suite_package(
        &self,
        project: &Project,
        run: &mut PodmanRun,
        remote: bool,
        base_image: &str,
        compiled_in_engine: bool,
    ) -> Option<InEngine> {
        run.remote = remote;
        let package = (SuiteIn::resolve(self.suite_in, remote) == SuiteIn::Engine).then(|| {
            let mut p = InEngine::new(project, Engine::Podman, run.id.suffix(), base_image);
            p.compiled_in_engine =
                compiled_in_engine.then(|| project.e2e_dir().join("engine-bin").join("suite"));
            p
        });
        run.suite_image = package.as_ref().map(|p| p.image.clone());
        package
    }

    pub(crate) fn podman_run(
        &self,
        project: &Project,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
    ) -> anyhow::Result<PodmanRun> {
        let subnet = runtime::podman::subnet_for(id)?;
        let stack =
            manifests.render_podman(&handoff.pinned(), id.suffix(), Some(subnet), free_port)?;
        Ok(PodmanRun::new(project, id.clone(), stack))
    }

    fn run_podman<'g, 's: 'g>(
        &self,
        project: &Project,
        r: &Reporter,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
        begun: Begun<'g, 's>,
    ) -> anyhow::Result<()> {
        let Begun {
            gate,
            early,
            remote,
            base_image,
            compiled_in_engine,
        } = begun;
        let (mut run, record) = match early {
            // The same stack with every image pinned now, on the ports the early part chose.
            Some((started, record)) => {
                let stack = started.rerender(manifests, &handoff.pinned())?;
                let mut run = PodmanRun::new(project, id.clone(), stack);
                run.early = started.early;
                (run, record)
            }
            None => (self.podman_run(project, manifests, handoff, id)?, None),
        };
        r.line(format!(
            "run {} (network {}, files in {})",
            run.id,
            run.network(),
            project.display(&run.dir)
        ));
        let package =
            self.suite_package(project, &mut run, remote, &base_image, compiled_in_engine);
        if run.remote {
            r.line(format!(
                "the engine is remote: readiness is asked inside the containers; the suite runs {}",
                if package.is_some() {
                    "in the engine, on the run's network"
                } else {
                    "here (--suite-in host)"
                }
            ));
        }
        let in_engine = package.as_ref().map(|p| (p, &run));
        let tests = self.test_phases(
            project,
            &run.urls(),
            &run.dir,
            run.stack_control(FAULTS_DEDUP_TTL_SECONDS),
            Some(gate),
            in_engine,
        );
        let plan = run.plan(Duration::from_secs(self.ready_timeout), tests);
        let mut runner = Runner {
            dir: run.dir.clone(),
            log: run.log.clone(),
            exec: &mut Live,
            record,
        };
        let outcome = runner.phases(r, &plan);
        if outcome.is_err() {
            match run.save_logs() {
                Ok(dir) => r.line(format!(
                    "every container's log is saved in {}",
                    project.display(&dir)
                )),
                Err(e) => r.line(format!("could not save the containers' logs: {e:#}")),
            }
        }
        let teardown = match (&runner.record, self.keep) {
            (Some(_), true) => {
                r.line(run.keep_instructions());
                Ok(())
            }
            (Some(record), false) => r.phase("tear down", |r| {
                runtime::teardown(&run.dir, record, &run.log, r, &mut Live)
            }),
            (None, _) => Ok(()),
        };
        combine(outcome, teardown)
    }

    pub(crate) fn kind_run(
        &self,
        project: &Project,
        engine: Engine,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
    ) -> anyhow::Result<(KindRun, KindFiles)> {
        let dir = id.dir(project);
        let (cluster, reuse) = match (&self.reuse_cluster, &self.cluster_name) {
            (Some(name), _) => (name.clone(), true),
            (None, Some(name)) => (name.clone(), false),
            (None, None) => (id.namespace(), false),
        };
        let (stack, node_ports) = manifests.render_kind(&handoff.pinned())?;
        let record = project
            .e2e_dir()
            .join("clusters")
            .join(format!("{cluster}.json"));
        let (config, ports) = if reuse {
            let ports: BTreeMap<u16, u16> = serde_json::from_slice(&std::fs::read(&record).with_context(|| {
                format!(
                    "cluster {cluster} was not made by `cargo xtask e2e --runtime kind --keep` ({} is missing), so its port mappings are unknown",
                    project.display(&record)
                )
            })?)?;
            (String::new(), ports)
        } else {
            let template =
                std::fs::read_to_string(project.root.join("test/e2e/kind-cluster.yaml"))?;
            kind::render_cluster_config(&template, &cluster, free_port)?
        };
        let run = KindRun {
            id: id.clone(),
            cluster,
            reuse,
            namespace: id.namespace(),
            provider: engine,
            archive_tar: dir.join("images.tar"),
            archive_source: self.images.clone(),
            log: id.log(project),
            dir,
            ports,
            node_ports,
            references: handoff.images.iter().map(|i| i.reference.clone()).collect(),
            pods: manifests.pods(),
        };
        let files = KindFiles {
            config,
            stack,
            ports_record: (self.keep && !reuse).then_some(record),
        };
        Ok((run, files))
    }

    fn run_kind<'g, 's: 'g>(
        &self,
        project: &Project,
        r: &Reporter,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
        gate: &'g SuiteGate<'s>,
    ) -> anyhow::Result<()> {
        // The engine that built or loaded the images is kind's provider.
        let (run, files) = self.kind_run(project, handoff.engine, manifests, handoff, id)?;
        let tests = self.test_phases(
            project,
            &run.urls(),
            &run.dir,
            run.stack_control(FAULTS_DEDUP_TTL_SECONDS),
            Some(gate),
            None,
        );
        let plan = run.plan(&files, Duration::from_secs(self.ready_timeout), tests);
        let mut runner = Runner {
            dir: run.dir.clone(),
            log: run.log.clone(),
            exec: &mut Live,
            record: None,
        };
        let outcome = runner.phases(r, &plan);
        if outcome.is_err() && runner.record.is_some() {
            let bundle = run.bundle_dir();
            let _ = std::fs::create_dir_all(&bundle);
            for (file, c) in run.bundle(&run.pods) {
                let text = c
                    .survives_interrupt()
                    .read()
                    .unwrap_or_else(|e| format!("{e:#}"));
                let _ = std::fs::write(bundle.join(file), text);
            }
            r.line(format!("failure bundle: {}", project.display(&bundle)));
        }
        let teardown = match (&runner.record, self.keep) {
            (Some(_), true) => {
                r.line(format!(
                    "the cluster is left running: kubectl --context kind-{} --namespace {} get pods",
                    run.cluster, run.namespace
                ));
                for (k, v) in run.urls() {
                    r.line(format!("  {k}={v}"));
                }
                Ok(())
            }
            (Some(record), false) => r.phase("tear down", |r| {
                runtime::teardown(&run.dir, record, &run.log, r, &mut Live)
            }),
            (None, _) => Ok(()),
        };
        let _ = std::fs::remove_file(&run.archive_tar);
        combine(outcome, teardown)
    }

    /// Prints every command the run would run, in order, and runs none of them: the image
    /// stage as planned, then the runtime's phases (the same values a run executes), then
    /// the teardown.
    fn dry_run(
        &self,
        project: &Project,
        r: &Reporter,
        opts: &BuildOptions,
        session: &Session,
        manifests: &Manifests,
        id: &RunId,
    ) -> anyhow::Result<()> {
        let mut lines: Vec<String> = Vec::new();
        let handoff = match (&self.images, &self.registry) {
            (Some(a), _) => {
                let m = archive::verify(a)?;
                let env = session.facts.env(Some(&m.base_image_id))?;
                lines.push(format!(
                    "{}  # after verifying the archive's SHA-256",
                    archive::load_cmd(env.engine(), a, m.compression)
                ));
                m.handoff(env.engine(), &env.facts.at)
            }
            (None, registry) => {
                let env = session.facts.env(None)?;
                let binaries: Vec<&str> = session
                    .images
                    .images
                    .iter()
                    .filter_map(crate::images::ImageSpec::binary)
                    .collect();
                lines.push(
                    build::cargo_build(project, &binaries, env.cargo_jobs(), opts.release)
                        .to_string(),
                );
                let prepared = build::prepare(project, r, opts, session, &[], None, false)
                    .context(
                        "a dry run plans with the binaries on disk: run `cargo build` once first",
                    )?;
                for item in &prepared.plan {
                    match (&item.action, registry) {
                        (Action::Cached(_), _) => lines.push(format!(
                            "# {} is cached: {}",
                            item.spec.name, item.reference
                        )),
                        (Action::Build { .. }, Some(prefix)) => lines.push(format!(
                            "{} pull {prefix}/{}:{}  # then tagged {}",
                            env.engine().program(),
                            item.spec.name,
                            fingerprint::tag(&item.fingerprint),
                            item.reference,
                        )),
                        (Action::Build { reason }, None) => lines.push(format!(
                            "{}  # {reason}",
                            build::build_cmd_for(project, env.engine(), item)
                        )),
                    }
                }
                build::planned_handoff(&prepared)
            }
        };
        lines.push(suite::compile(project, 1).to_string());
        let keep = if self.keep { "  # skipped: --keep" } else { "" };
        match self.runtime {
            Runtime::Podman => {
                let mut run = self.podman_run(project, manifests, &handoff, id)?;
                if let Some(early) = self.early_start(project, session, manifests, id) {
                    run.early = early.early;
                    run.arriving = early.arriving;
                    let mut first = vec![if self.images.is_some() {
                        "# while the archive loads (its first images are these):".to_owned()
                    } else {
                        "# while the service binaries compile and their images build:".to_owned()
                    }];
                    first.extend(step::print(&run.plan_early()));
                    lines.splice(0..0, first);
                }
                let package = self.suite_package(
                    project,
                    &mut run,
                    session.facts.engine.as_ref().is_ok_and(|f| f.remote),
                    &session.facts.base_image,
                    compiled_in_engine(self.build.compile_in, session),
                );
                let in_engine = package.as_ref().map(|p| (p, &run));
                let tests = self.test_phases(
                    project,
                    &run.urls(),
                    &run.dir,
                    run.stack_control(FAULTS_DEDUP_TTL_SECONDS),
                    None,
                    in_engine,
                );
                lines.extend(step::print(
                    &run.plan(Duration::from_secs(self.ready_timeout), tests),
                ));
                lines.extend(
                    run.final_record()
                        .teardown()
                        .iter()
                        .map(|c| format!("{c}{keep}")),
                );
            }
            Runtime::Kind => {
                let (run, files) =
                    self.kind_run(project, handoff.engine, manifests, &handoff, id)?;
                let tests = self.test_phases(
                    project,
                    &run.urls(),
                    &run.dir,
                    run.stack_control(FAULTS_DEDUP_TTL_SECONDS),
                    None,
                    None,
                );
                lines.extend(step::print(&run.plan(
                    &files,
                    Duration::from_secs(self.ready_timeout),
                    tests,
                )));
                for (file, c) in run.bundle(&run.pods) {
                    lines.push(format!("{c}  # on failure, into bundle/{file}"));
                }
                lines.extend(
                    run.final_record()
                        .teardown()
                        .iter()
                        .map(|c| format!("{c}{keep}")),
                );
            }
        }
        println!("{}", lines.join("\n"));
        Ok(())
    }
}

/// What began before the stack's own phases: the suite's compile, and the pods started
/// early (with what they recorded).
pub(crate) struct Begun<'g, 's> {
    gate: &'g SuiteGate<'s>,
    early: Option<(PodmanRun, Option<runtime::RunRecord>)>,
    /// The engine is remote: readiness from inside, the suite (by default) in the engine.
    remote: bool,
    base_image: String,
    /// The binaries (and the suite's tests) were compiled in the engine.
    compiled_in_engine: bool,
}

/// Whether this run's binaries compile in the engine (as asked, or as the platforms decide).
fn compiled_in_engine(asked: Option<build::CompileIn>, session: &Session) -> bool {
    session.facts.engine.as_ref().is_ok_and(|f| {
        build::compile::resolve(asked, &build::compile::host_platform(), &f.platform)
            == build::CompileIn::Engine
    })
}

/// A suite compile running beside the deploy, waited for once, before the suite runs.
pub(crate) struct SuiteGate<'s>(
    std::sync::Mutex<Option<std::thread::ScopedJoinHandle<'s, anyhow::Result<()>>>>,
);

impl SuiteGate<'_> {
    fn wait(&self) -> anyhow::Result<()> {
        match self.0.lock().expect("not poisoned").take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the suite's compile panicked"))),
            None => Ok(()),
        }
    }
}

/// `cargo test --no-run` of the suite, as a phase.
fn run_suite_compile(project: &Project, r: &Reporter, jobs: usize) -> anyhow::Result<()> {
    r.phase("compile E2E suite", |r| {
        suite::compile_here(project, r, jobs)
    })
}

fn combine(outcome: anyhow::Result<()>, teardown: anyhow::Result<()>) -> anyhow::Result<()> {
    match (outcome, teardown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e.context("E2E failed")),
        (Ok(()), Err(t)) => Err(t.context("E2E passed but the teardown failed")),
        (Err(e), Err(t)) => {
            Err(e.context(format!("E2E failed, and the teardown failed too: {t:#}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_follows_the_runtime() {
        assert_eq!(engine_for(Runtime::Podman, None), Ok(Some(Engine::Podman)));
        let p = engine_for(Runtime::Podman, Some(Engine::Docker)).unwrap_err();
        assert!(p.fix.contains("--runtime kind"), "{p}");
        assert_eq!(engine_for(Runtime::Kind, None), Ok(None));
        assert_eq!(
            engine_for(Runtime::Kind, Some(Engine::Docker)),
            Ok(Some(Engine::Docker))
        );
    }

    #[test]
    fn fault_tests_run_after_the_suite_one_at_a_time_with_the_stack_file() {
        let args = E2eArgs {
            runtime: Runtime::Podman,
            keep: false,
            ready_timeout: 1,
            faults: true,
            images: None,
            registry: None,
            allow_stale: false,
            cluster_name: None,
            reuse_cluster: None,
            dry_run: false,
            suite_in: None,
            down: None,
            build: BuildOptions::default(),
            test_args: vec!["metrics".into()],
        };
        let project = Project {
            root: "/r".into(),
            target_dir: "/r/target".into(),
            e2e_dir: "/r/target/e2e".into(),
        };
        let urls = [("GATEWAY_URL".to_owned(), "http://127.0.0.1:1".to_owned())].into();
        let control = StackControl {
            runtime: "podman",
            dedup_ttl_seconds: 5,
            services: BTreeMap::new(),
        };
        let phases = args.test_phases(&project, &urls, Path::new("/r/run"), control, None, None);
        let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["run E2E suite", "run fault tests"]);
        assert_eq!(
            step::print(&phases),
            [
                "GATEWAY_URL=http://127.0.0.1:1 /r/target/e2e/suite/e2e metrics",
                "GATEWAY_URL=http://127.0.0.1:1 E2E_STACK=/r/run/stack.json /r/target/e2e/suite/faults --test-threads=1",
            ]
        );
    }
}
