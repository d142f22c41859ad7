//! Where the stack runs: podman (`kube play` on a network of the run's own), a Kind cluster,
//! or a Kubernetes cluster that exists already, either as [`step`]s printed (`--dry-run`) or
//! executed. Each runtime makes its stack from the run ([`stack`]); the rest of the xtask
//! sees only [`Stack`]. What a run creates is recorded in `state.json` ([`RunRecord`]) before
//! it is created, for `e2e --down`.

pub mod kind;
pub mod kube;
pub mod podman;
pub mod step;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    thread::scope,
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    build::PlanItem,
    cmd::Cmd,
    engine_images::EngineImages,
    fsx,
    project::Project,
    report::Reporter,
    run::{Run, RunImages, RunOptions, Runtime, SuiteGate},
    suite,
};
use step::{Phase, RealExec, Runner, Step};

pub use crate::run::RunId;

/// The stack on the runtime the run asks for, with `engine_images`' images; going on from `early`
/// when some of it started before the images existed.
pub fn stack(
    run: &Run,
    engine_images: &EngineImages,
    early: Option<Box<dyn EarlyStart>>,
) -> anyhow::Result<Box<dyn Stack>> {
    if let Some(early) = early {
        return early.go_on(run, engine_images);
    }
    Ok(match run.opts.runtime {
        Runtime::Podman => Box::new(podman::PodmanRun::new_for(run, engine_images)?),
        Runtime::Kind => Box::new(kind::KindRun::new(run, engine_images)?),
        Runtime::Kube => Box::new(kube::KubeRun::new(run, engine_images)?),
    })
}

/// What of the stack can start while the images are built or loaded, if anything.
pub fn early_start(run: &Run) -> Option<Box<dyn EarlyStart>> {
    match run.opts.runtime {
        Runtime::Podman => Some(Box::new(podman::PodmanRun::early(run)?)),
        Runtime::Kind | Runtime::Kube => None,
    }
}

/// The suite, then (`--faults`) the fault tests, as phases, after writing `stack.json` (how
/// to stop, start and enter each service); the suite first waits for `gate`'s compile.
pub fn tests<'a>(
    opts: &'a RunOptions,
    project: &'a Project,
    stack: &'a dyn Stack,
    gate: Option<&'a SuiteGate<'_>>,
) -> Vec<Phase<'a>> {
    let file = stack.dir().join("stack.json");
    let control = stack.control(crate::run::FAULTS_DEDUP_TTL_SECONDS).to_json();
    let mut steps = vec![Step::Write { path: file.clone(), contents: control }];
    steps.extend(gate.map(|gate| Step::Watch {
        what: "the E2E suite's compile, started beside the deploy, has finished".into(),
        polls: Vec::new(),
        run: Box::new(move |_, _| gate.wait()),
    }));
    steps.extend(stack.suite_steps(project));
    let cmd = stack.suite(project, "e2e", &opts.test_args);
    steps.push(Step::Terminal { cmd, doing: "the E2E suite failed".into() });
    let mut phases = vec![Phase::new(crate::report::phase::SUITE, steps)];
    if opts.faults {
        let cmd = suite::run(project, "faults", &stack.urls())
            .env("E2E_STACK", file.display().to_string())
            .arg("--test-threads=1");
        let doing = "the fault tests failed".into();
        phases.push(Phase::new("run fault tests", vec![Step::Terminal { cmd, doing }]));
    }
    phases
}

/// The first thing a run does at once: the images, and meanwhile `early`'s pods (PostgreSQL,
/// Redis); when either fails, what started is torn down. Returns what `early` recorded.
pub fn images_beside(
    run: &Run,
    early: Option<&dyn EarlyStart>,
) -> anyhow::Result<(RunImages, Option<RunRecord>)> {
    let Some(early) = early else {
        return Ok((run.images(&|_| {})?, None));
    };
    let reporter = &run.reporter;
    let stack = early.as_stack();
    let dir = stack.dir().to_owned();
    let log = stack.log().to_owned();
    let (images, (started, record)) = scope(|s| {
        let starting = s.spawn(|| {
            let mut runner = Runner { dir, log, exec: &mut RealExec, record: None };
            (runner.phases(reporter, &early.plan_early()), runner.record)
        });
        let images = run.images(&|reference| early.image_arrived(reference));
        // Pods awaiting the archive's images stop waiting for any that did not come.
        early.images_ended();
        (images, starting.join().expect("no panic"))
    });
    if images.is_err() || started.is_err() {
        // Nothing else will run: what started early is torn down now.
        if let Err(t) = finish(stack, reporter, record.as_ref(), false) {
            reporter.line(format!("{t:#}"));
        }
    }
    // The images' error first: when they fail, what waited on them fails too.
    let images = images?;
    started?;
    Ok((images, record))
}

/// Part of a stack started before the images exist (podman's PostgreSQL and Redis pods).
pub trait EarlyStart: Sync {
    fn plan_early(&self) -> Vec<Phase<'_>>;
    /// An image is in (the load tells of each, when it loads one at a time).
    fn image_arrived(&self, reference: &str);
    /// The images' phase has ended: stop waiting for any image that did not come.
    fn images_ended(&self);
    /// To tear down what started, when the images fail.
    fn as_stack(&self) -> &dyn Stack;
    /// The whole stack, going on from what started, with `engine_images`' images.
    fn go_on(
        self: Box<Self>,
        run: &Run,
        engine_images: &EngineImages,
    ) -> anyhow::Result<Box<dyn Stack>>;
}

/// A stack on podman ([`podman::PodmanRun`]), in Kind ([`kind::KindRun`]) or in a cluster of
/// others ([`kube::KubeRun`]): `e2e` and `dev` drive each through this, and never ask which.
pub trait Stack {
    fn id(&self) -> &RunId;
    fn dir(&self) -> &Path;
    fn log(&self) -> &Path;
    /// What exists already before the plan runs (podman's network, claimed when the stack was
    /// made), for the teardown.
    fn made(&self) -> Option<RunRecord> {
        None
    }
    /// Deploy, wait until ready, then `tests`.
    fn plan<'a>(&'a self, ready_timeout: Duration, tests: Vec<Phase<'a>>) -> Vec<Phase<'a>>;
    /// Until every service is ready again (after `dev` replaced some).
    fn wait_ready(&self, reporter: &Reporter, timeout: Duration) -> anyhow::Result<()>;
    /// `<SERVICE>_URL` for a suite on this machine.
    fn urls(&self) -> BTreeMap<String, String>;
    fn control(&self, dedup_ttl_seconds: u64) -> StackFile;
    /// What the run has created once every step ran (for `--dry-run`'s teardown).
    fn final_record(&self) -> RunRecord;
    fn keep_instructions(&self) -> String;
    /// After a failure: what explains it, kept in the run's directory; returns where.
    fn save_failure(&self) -> anyhow::Result<PathBuf>;
    /// The commands [`Stack::save_failure`] runs, for `--dry-run`.
    fn failure_commands(&self) -> Vec<String> {
        Vec::new()
    }
    /// `dev`: replaces the pods whose rendering with `engine_images`' images changed; their names.
    fn replace(
        &mut self,
        project: &Project,
        reporter: &Reporter,
        engine_images: &EngineImages,
    ) -> anyhow::Result<Vec<String>>;
    /// `dev`'s live update: each binary of `changed` copied into its image's containers,
    /// restarted in place, the stack then naming `plan`'s images. The containers, or `None`
    /// when a new image and pod are needed.
    fn sync_binaries(
        &mut self,
        _project: &Project,
        _r: &Reporter,
        _changed: &[&PlanItem],
        _plan: &[PlanItem],
    ) -> anyhow::Result<Option<Vec<String>>> {
        Ok(None)
    }
    fn where_it_runs(&self) -> Option<String> {
        None
    }
    /// Steps before the suite runs (packaging it for the engine).
    fn suite_steps<'a>(&'a self, _project: &'a Project) -> Vec<step::Step<'a>> {
        Vec::new()
    }
    /// One of the suite's test binaries against this stack (here, with the published URLs).
    fn suite(&self, project: &Project, test: &str, args: &[String]) -> Cmd {
        crate::suite::run(project, test, &self.urls()).args(args.iter().cloned())
    }
}

/// Runs the phases (after what `record` says was made already); on failure keeps what
/// explains it. Returns the outcome and the record of what exists, for [`finish`].
pub fn execute(
    stack: &dyn Stack,
    reporter: &Reporter,
    project: &Project,
    plan: &[Phase],
    record: Option<RunRecord>,
) -> (anyhow::Result<()>, Option<RunRecord>) {
    let dir = stack.dir().to_owned();
    let log = stack.log().to_owned();
    let mut runner = Runner { dir, log, exec: &RealExec, record };
    let outcome = runner.phases(reporter, plan);
    if outcome.is_err() && runner.record.is_some() {
        reporter.line(match stack.save_failure() {
            Ok(dir) => format!("what explains the failure is kept in {}", project.display(&dir)),
            Err(e) => format!("could not keep the containers' logs: {e:#}"),
        });
    }
    (outcome, runner.record)
}

/// The end of every run: tears down what `record` says exists, or with `keep` leaves it and
/// says how to reach it.
pub fn finish(
    stack: &dyn Stack,
    reporter: &Reporter,
    record: Option<&RunRecord>,
    keep: bool,
) -> anyhow::Result<()> {
    let Some(record) = record else { return Ok(()) };
    if keep {
        reporter.line(stack.keep_instructions());
        return Ok(());
    }
    reporter.phase("tear down", |reporter| {
        teardown(stack.dir(), record, stack.log(), reporter, &RealExec)
    })
}

/// What a run has created (or is about to), as recorded in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub pid: u32,
    pub created: Created,
}

/// Per runtime: each object is set before it is created, so removing what does not exist
/// (a run interrupted half-way) is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runtime", rename_all = "lowercase")]
pub enum Created {
    Podman(podman::Created),
    Kind(kind::Created),
    Kube(kube::Created),
}

impl RunRecord {
    pub fn new(id: &RunId, created: Created) -> RunRecord {
        RunRecord { id: id.clone(), pid: std::process::id(), created }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Option<RunRecord> {
        serde_json::from_slice(&std::fs::read(RunRecord::path(dir)).ok()?).ok()
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        fsx::write_json(&RunRecord::path(dir), self)
    }

    /// The teardown, as stages: the commands of a stage run at once, the stages in turn.
    pub fn teardown(&self) -> Vec<Vec<Cmd>> {
        match &self.created {
            Created::Podman(c) => c.teardown(),
            Created::Kind(c) => c.teardown(),
            Created::Kube(c) => c.teardown(),
        }
    }

    /// After a failed teardown: what of the record is still there.
    pub fn leftovers(&self, exec: &dyn step::Exec) -> Vec<String> {
        match &self.created {
            Created::Podman(c) => c.leftovers(&mut |cmd| exec.probe(cmd)),
            Created::Kind(c) => c.leftovers(),
            Created::Kube(c) => c.leftovers(),
        }
    }
}

/// Runs the teardown of a record: every step, even when one fails and even after Ctrl-C.
/// A step fails too when what it removes is gone already, so only what is left counts: if
/// anything, every failure is reported; if nothing, the record is removed.
pub fn teardown(
    dir: &Path,
    record: &RunRecord,
    log: &Path,
    reporter: &Reporter,
    exec: &dyn step::Exec,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for stage in record.teardown() {
        let stage: Vec<Cmd> = stage.into_iter().map(Cmd::survives_interrupt).collect();
        stage.iter().for_each(|c| reporter.command(c));
        failures.extend(exec.run_all(&stage, log));
    }
    // Only a failed step needs judging by what is left (asking costs a command per object).
    let left = match failures.is_empty() {
        true => Vec::new(),
        false => record.leftovers(exec),
    };
    let left = left.join(", ");
    let failures = failures.join("\n");
    let id = &record.id;
    anyhow::ensure!(
        left.is_empty(),
        "teardown left something behind ({left}):\n{failures}\n  fix: `cargo xtask e2e --down {id}` tries again"
    );
    let _ = std::fs::remove_file(RunRecord::path(dir));
    Ok(())
}

/// `cargo xtask e2e --down [RUN]`: removes what runs left (crashed, interrupted twice, or
/// `--keep`). Without a run id, every run whose process is gone; a run in progress is only
/// removed when named.
pub fn down(project: &Project, reporter: &Reporter, only: Option<&str>) -> anyhow::Result<()> {
    let runs = project.runs_dir();
    // In the order of the runs' ids, which are their directories' names.
    let found: Vec<(PathBuf, RunRecord)> = (crate::report::run_dirs(project).into_iter())
        .filter_map(|dir| Some((dir.clone(), RunRecord::load(&dir)?)))
        .filter(|(_, record)| only.is_none_or(|id| record.id.as_str() == id))
        .collect();
    if let Some(id) = only {
        let runs = project.display(&runs);
        anyhow::ensure!(!found.is_empty(), "no run {id} with anything left in {runs}");
    } else if found.is_empty() {
        reporter.line("nothing to remove: no run has left anything");
        return Ok(());
    }
    let mut failures = Vec::new();
    for (dir, record) in found {
        let id = &record.id;
        let pid = record.pid;
        // Its process still running: a run in progress.
        if only.is_none()
            && pid != std::process::id()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            reporter.line(format!(
                "run {id} is in progress (pid {pid}): left alone; `--down {id}` removes it anyway"
            ));
            continue;
        }
        reporter.line(format!("removing what run {id} left"));
        if let Err(e) = teardown(&dir, &record, &id.log(project), reporter, &RealExec) {
            failures.push(format!("{e:#}"));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A container's or a pod's state, reduced to what a wait for readiness needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    Waiting(String),
    /// Exited, restarted, crash-looping: waiting longer will not help.
    Failed(String),
}

/// `data-storage` becomes `DATA_STORAGE_URL`.
pub fn url_var(service: &str) -> String {
    format!("{}_URL", service.to_ascii_uppercase().replace('-', "_"))
}

pub use e2e_stack::{ServiceControl, StackFile};

/// A service's commands, as the stack file holds them (argv lists).
pub fn service_control(stop: &Cmd, start: &Cmd, exec: &Cmd) -> ServiceControl {
    let argv = |c: &Cmd| [&c.program].into_iter().chain(&c.args).cloned().collect();
    ServiceControl { stop: argv(stop), start: argv(start), exec: argv(exec), pod: None }
}

/// A port that is free on loopback now (the engine binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_vars() {
        assert_eq!(url_var("data-storage"), "DATA_STORAGE_URL");
        assert_eq!(url_var("gateway"), "GATEWAY_URL");
    }
}
