//! What `e2e` and `dev` share: a run's options, its images (built, loaded or pulled), the
//! infrastructure started while they come, the stack on either runtime, the suite's phases,
//! and the two things a run does at once (declared here, and only here).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;

use crate::{
    archive,
    build::{self, Activity, BuildOptions, CompileIn, Session},
    doctor,
    engine::Engine,
    handoff::Handoff,
    manifests::Manifests,
    memory,
    problem::Problem,
    project::Project,
    registry,
    report::Reporter,
    runtime::{
        self, free_port,
        kind::{self, KindFiles, KindRun},
        podman::{subnet_for, Arriving, PodmanRun},
        step::{Live, Phase, Runner, Step},
        RunId, RunRecord, Stack,
    },
    suite::{self, InEngine, SuiteIn},
};

/// The deduplication TTL the gateway gets for `--faults` runs, so that a test can see a
/// signal's deduplication expire.
pub const FAULTS_DEDUP_TTL_SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `podman kube play` on a network of the run's own.
    Podman,
    /// A Kind cluster (provider: the engine, docker or podman).
    Kind,
}

/// Where a run's images come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Built here (what changed), the suite compiling meanwhile.
    Build,
    /// Loaded from an archive of `save-images` (`allow_stale`: even when it does not match).
    Archive { path: PathBuf, allow_stale: bool },
    /// Pulled from `REGISTRY/PREFIX` (pushed by `save-images --push`).
    Registry(String),
}

/// What a run is decided from: `e2e`'s options, or `dev`'s.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub runtime: Runtime,
    pub keep: bool,
    pub ready_timeout: Duration,
    pub faults: bool,
    pub source: Source,
    /// Kind: the cluster's name, or an existing cluster to reuse.
    pub cluster_name: Option<String>,
    pub reuse_cluster: Option<String>,
    pub suite_in: Option<SuiteIn>,
    pub build: BuildOptions,
    pub test_args: Vec<String>,
}

/// A run's images, and the suite's compile left to run beside the deploy (its `-j`).
pub struct Images {
    pub handoff: Handoff,
    pub activity: Activity,
    pub pending_suite: Option<usize>,
}

impl RunOptions {
    /// The engine the runtime runs with: podman's stack needs podman; Kind takes either (the
    /// one asked for, else the one installed).
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

    /// The manifests, with the fault tests' short deduplication TTL when they run.
    pub fn manifests(&self, project: &Project) -> anyhow::Result<Manifests> {
        let mut manifests = Manifests::load(&project.manifests_dir())?;
        if self.faults {
            let ttl = FAULTS_DEDUP_TTL_SECONDS.to_string();
            manifests.set_env("gateway", "DEDUP_TTL_SECONDS", &ttl)?;
        }
        Ok(manifests)
    }

    /// Every prerequisite, checked before anything is done.
    pub fn require(
        &self,
        project: &Project,
        r: &Reporter,
        session: &Session,
    ) -> anyhow::Result<()> {
        if self.faults && SuiteIn::resolve(self.suite_in, session.remote()) == SuiteIn::Engine {
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
            archive: match &self.source {
                Source::Archive { path, .. } => Some(path.clone()),
                _ => None,
            },
            start_container: false,
        };
        doctor::require(project, r, session, &needs)
    }

    /// The images: built, loaded or pulled. Image builds wait on podman and apt more than
    /// on the CPU, so the suite compiles while they run, with its rustc jobs' memory taken
    /// out of the builds' budget. With `defer`, a compile that would run after the images
    /// is left to [`beside_suite_compile`].
    pub fn images(
        &self,
        project: &Project,
        r: &Reporter,
        session: &Session,
        defer: bool,
    ) -> anyhow::Result<Images> {
        let cx = build::Ctx { project, r, opts: &self.build, session };
        let handoff = match &self.source {
            Source::Archive { path, allow_stale } => archive::load(cx, path, *allow_stale)?,
            Source::Registry(prefix) => registry::pull(cx, prefix)?,
            Source::Build => {
                let mut prepared = build::prepare(cx, build::Goal::Build(&[]))?;
                let env = &mut prepared.env;
                let jobs = if prepared.plan.iter().all(|i| i.is_cached()) {
                    env.cargo_jobs()
                } else {
                    memory::cargo_jobs(env.host_budget.bytes / 2, memory::cpus())
                };
                if prepared.plan.iter().all(|i| i.is_cached()) {
                    let (handoff, activity) = build::finish(cx, prepared)?;
                    let pending_suite = compile_suite_unless(defer, project, r, jobs)?;
                    return Ok(Images { handoff, activity, pending_suite });
                }
                // The suite's rustc jobs run beside the builds; on a local engine they share
                // its memory. Never so much that the largest image no longer fits.
                let biggest = prepared.plan.iter().map(|i| i.spec.memory).max().unwrap_or(0);
                let reserved = if env.facts.remote {
                    0
                } else {
                    (jobs as u64 * memory::RUSTC_JOB).min(env.budget.bytes.saturating_sub(biggest))
                };
                env.budget.bytes -= reserved;
                if reserved > 0 {
                    env.budget.source = format!(
                        "{}, less {} for the E2E suite compiling meanwhile",
                        env.budget.source,
                        memory::human(reserved)
                    );
                }
                r.line(format!(
                    "the E2E suite compiles (cargo -j {jobs}) while the images build: {} of the budget is kept for it",
                    memory::human(reserved)
                ));
                let (built, compiled) = std::thread::scope(|s| {
                    let compiling = s.spawn(|| compile_suite(project, r, jobs));
                    let built = build::finish(cx, prepared);
                    (built, compiling.join().expect("no panic"))
                });
                compiled?;
                let (handoff, activity) = built?;
                return Ok(Images { handoff, activity, pending_suite: None });
            }
        };
        let jobs = session.facts.env(Some(&handoff.base_image_id))?.cargo_jobs();
        let pending_suite = compile_suite_unless(defer, project, r, jobs)?;
        Ok(Images { handoff, activity: Activity::default(), pending_suite })
    }

    /// The pods that can start before the service images exist (their images package no
    /// binary of ours and are there already, or come first in the archive), or `None`.
    pub fn early_start(
        &self,
        project: &Project,
        session: &Session,
        manifests: &Manifests,
        id: &RunId,
    ) -> Option<PodmanRun> {
        if self.runtime != Runtime::Podman || self.build.force {
            return None;
        }
        let names: Vec<String> =
            session.images.infrastructure().into_iter().map(str::to_owned).collect();
        // Their images: cached here, or coming with the archive (awaited before they start).
        let (pinned, arriving): (BTreeMap<String, String>, _) = match &self.source {
            Source::Registry(_) => return None,
            Source::Archive { path, .. } => {
                let manifest = archive::read_manifest(path).ok()?;
                let records: Vec<_> =
                    manifest.images.into_iter().filter(|i| names.contains(&i.name)).collect();
                let arriving =
                    records.iter().map(|i| (i.reference.clone(), i.id.clone())).collect();
                let pinned = records.into_iter().map(|i| (i.repository, i.reference)).collect();
                (pinned, Some(arriving))
            }
            Source::Build => {
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
        let subnet = subnet_for(id).ok()?;
        let stack = manifests.render_podman(&pinned, id.suffix(), Some(subnet), free_port).ok()?;
        let early: std::collections::BTreeSet<String> = stack
            .pods
            .iter()
            .filter(|p| p.containers.iter().all(|c| pinned.values().any(|r| *r == c.image)))
            .map(|p| p.name.clone())
            .collect();
        if early.is_empty() {
            return None;
        }
        let mut run = PodmanRun::new(project, id.clone(), stack);
        run.early = early;
        run.arriving = arriving.map(|images| Arriving { images, ended: Default::default() });
        Some(run)
    }

    /// The stack on the runtime asked for, its manifests rendered with the images of
    /// `handoff`; on podman, going on from what `early` started.
    pub fn stack(
        &self,
        project: &Project,
        session: &Session,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
        early: Option<PodmanRun>,
    ) -> anyhow::Result<Box<dyn Stack>> {
        match self.runtime {
            Runtime::Podman => {
                Ok(Box::new(self.podman(project, session, manifests, handoff, id, early)?))
            }
            // The engine that built or loaded the images is kind's provider.
            Runtime::Kind => Ok(Box::new(self.kind(project, manifests, handoff, id)?)),
        }
    }

    fn podman(
        &self,
        project: &Project,
        session: &Session,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
        early: Option<PodmanRun>,
    ) -> anyhow::Result<PodmanRun> {
        let mut run = match early {
            // The same stack with every image pinned now, on the ports the early part chose.
            Some(started) => {
                let mut run = PodmanRun::new(
                    project,
                    id.clone(),
                    started.rerender(manifests, &handoff.pinned())?,
                );
                run.early = started.early;
                run
            }
            None => {
                let subnet = subnet_for(id)?;
                let stack = manifests.render_podman(
                    &handoff.pinned(),
                    id.suffix(),
                    Some(subnet),
                    free_port,
                )?;
                PodmanRun::new(project, id.clone(), stack)
            }
        };
        run.remote = session.remote();
        // Where the suite runs (as asked, else in the engine when it is remote), and when in
        // the engine, its package (recorded with the run, so the teardown removes its image).
        if SuiteIn::resolve(self.suite_in, run.remote) == SuiteIn::Engine {
            let base = &session.facts.base_image;
            let mut package = InEngine::new(project, Engine::Podman, id.suffix(), base);
            package.compiled_in_engine = self
                .compiles_in_engine(session)
                .then(|| project.e2e_dir().join("engine-bin").join("suite"));
            run.suite = Some(package);
        }
        Ok(run)
    }

    fn kind(
        &self,
        project: &Project,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &RunId,
    ) -> anyhow::Result<KindRun> {
        let dir = id.dir(project);
        let (cluster, reuse) = match (&self.reuse_cluster, &self.cluster_name) {
            (Some(name), _) => (name.clone(), true),
            (None, Some(name)) => (name.clone(), false),
            (None, None) => (id.namespace(), false),
        };
        let (stack, node_ports) = manifests.render_kind(&handoff.pinned())?;
        let record = project.e2e_dir().join("clusters").join(format!("{cluster}.json"));
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
        Ok(KindRun {
            id: id.clone(),
            cluster,
            reuse,
            namespace: id.namespace(),
            provider: handoff.engine,
            archive_tar: dir.join("images.tar"),
            archive_source: match &self.source {
                Source::Archive { path, .. } => Some(path.clone()),
                _ => None,
            },
            log: id.log(project),
            dir,
            ports,
            node_ports,
            references: handoff.images.iter().map(|i| i.reference.clone()).collect(),
            pods: manifests.pods(),
            files: KindFiles {
                config,
                stack,
                ports_record: (self.keep && !reuse).then_some(record),
            },
        })
    }

    /// Whether this run's binaries compile in the engine (as asked, or as the platforms decide).
    fn compiles_in_engine(&self, session: &Session) -> bool {
        session.facts.engine.as_ref().is_ok_and(|f| {
            build::compile::resolve(
                self.build.compile_in,
                &build::compile::host_platform(),
                &f.platform,
            ) == CompileIn::Engine
        })
    }

    /// The suite, then (with `--faults`) the fault tests, as phases of the run, with the
    /// stack's control file (how to stop, start and enter each service, for the fault tests,
    /// the load benchmark, and anyone with a `--keep` stack). The suite first waits for a
    /// compile still running (`gate`).
    pub fn tests<'a>(
        &'a self,
        project: &'a Project,
        stack: &'a dyn Stack,
        gate: Option<&'a SuiteGate<'_>>,
    ) -> Vec<Phase<'a>> {
        let file = stack.dir().join("stack.json");
        let control = stack.control(FAULTS_DEDUP_TTL_SECONDS);
        let mut steps = vec![Step::Write {
            path: file.clone(),
            contents: serde_json::to_string_pretty(&control).expect("serialises"),
        }];
        if let Some(gate) = gate {
            steps.push(Step::Watch {
                what: "the E2E suite's compile, started beside the deploy, has finished".into(),
                run: Box::new(move |_| gate.wait()),
            });
        }
        steps.extend(stack.suite_steps(project));
        steps.push(Step::Terminal {
            cmd: stack.suite(project, "e2e", &self.test_args),
            doing: "the E2E suite failed".into(),
        });
        let mut phases = vec![Phase::new("run E2E suite", steps)];
        if self.faults {
            let cmd = suite::run(project, "faults", &stack.urls())
                .env("E2E_STACK", file.display().to_string())
                .arg("--test-threads=1");
            phases.push(Phase::new(
                "run fault tests",
                vec![Step::Terminal { cmd, doing: "the fault tests failed".into() }],
            ));
        }
        phases
    }
}

/// The images, and meanwhile the pods of `early` (PostgreSQL and Redis, whose images are
/// there already or come first in the archive): the first of the two things a run does at
/// once. When either fails, what started is torn down. Returns what `early` recorded.
pub fn images_beside_infrastructure(
    r: &Reporter,
    early: Option<&PodmanRun>,
    images: impl FnOnce() -> anyhow::Result<Images>,
) -> anyhow::Result<(Images, Option<RunRecord>)> {
    let Some(run) = early else {
        return Ok((images()?, None));
    };
    let (images, (started, record)) = std::thread::scope(|s| {
        let starting = s.spawn(|| {
            let mut runner = Runner {
                dir: run.dir.clone(),
                log: run.log.clone(),
                exec: &mut Live,
                record: None,
            };
            (runner.phases(r, &run.plan_early()), runner.record)
        });
        let images = images();
        // Pods awaiting the archive's images stop waiting for any that did not come.
        if let Some(arriving) = &run.arriving {
            arriving.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        (images, starting.join().expect("no panic"))
    });
    if let (Some(record), true) = (&record, images.is_err() || started.is_err()) {
        // Nothing else will run: what started early is torn down now.
        let teardown =
            r.phase("tear down", |r| runtime::teardown(&run.dir, record, &run.log, r, &mut Live));
        if let Err(t) = teardown {
            r.line(format!("{t:#}"));
        }
    }
    // The images' error first: when they fail, what waited on them fails too.
    let images = images?;
    started?;
    Ok((images, record))
}

/// The second: a suite compile still to do (nothing was built, so it did not run beside
/// the builds) runs beside the deploy; the suite waits for it through the gate.
pub fn beside_suite_compile<T>(
    project: &Project,
    r: &Reporter,
    pending: Option<usize>,
    deploy_and_test: impl FnOnce(Option<&SuiteGate<'_>>) -> T,
) -> T {
    std::thread::scope(|s| {
        let compiling = pending.map(|jobs| s.spawn(move || compile_suite(project, r, jobs)));
        let gate = compiling.map(|h| SuiteGate(std::sync::Mutex::new(Some(h))));
        deploy_and_test(gate.as_ref())
    })
}

/// A suite compile running beside the deploy, waited for once, before the suite runs.
pub struct SuiteGate<'s>(
    std::sync::Mutex<Option<std::thread::ScopedJoinHandle<'s, anyhow::Result<()>>>>,
);

impl SuiteGate<'_> {
    fn wait(&self) -> anyhow::Result<()> {
        match self.0.lock().expect("not poisoned").take() {
            Some(h) => {
                h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the suite's compile panicked")))
            }
            None => Ok(()),
        }
    }
}

/// `cargo test --no-run` of the suite, as a phase.
pub fn compile_suite(project: &Project, r: &Reporter, jobs: usize) -> anyhow::Result<()> {
    r.phase("compile E2E suite", |r| suite::compile_here(project, r, jobs))
}

fn compile_suite_unless(
    defer: bool,
    project: &Project,
    r: &Reporter,
    jobs: usize,
) -> anyhow::Result<Option<usize>> {
    if defer {
        return Ok(Some(jobs));
    }
    compile_suite(project, r, jobs)?;
    Ok(None)
}
