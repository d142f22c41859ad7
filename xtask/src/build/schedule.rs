//! Running the builds the plan asks for, as many at once as memory allows ([`memory::admit`]);
//! after a failure no new build starts, running ones finish, and every failure is explained.

use std::{collections::HashMap, path::PathBuf, sync::mpsc, time::Instant};

use anyhow::{Context, Result};

use super::{
    plan::{Action, PlanItem},
    Inputs,
};
use crate::{
    cmd::{Cmd, CmdError},
    diagnose,
    engine::{BuildCmd, ImageInfo, FINGERPRINT_LABEL},
    engine_images::ImageRecord,
    facts::Env,
    images::podman_size,
    interrupt,
    memory::{self, human},
    project::Project,
    report::{secs, table},
    sampler::Sampler,
    timeline::{Activity, BuildSpan},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildFailure {
    /// Killed for memory (exit 137, `Killed`): its cap was too small for what ran.
    OutOfMemory {
        step: Option<String>,
        /// The most builds that ran at once while this one did.
        at_once: usize,
    },
    /// Any other failure: the step, and the command's error (log path and last lines).
    Failed { step: Option<String>, error: String },
    /// The engine said it built the image, but does not have it.
    Vanished,
}

pub struct Outcome {
    pub result: Result<ImageInfo, BuildFailure>,
    pub span: BuildSpan,
    pub peak: Option<u64>,
}

/// Runs the builds, prints what became of every image, and fails with every failure
/// explained. Returns each planned image's record, and what the builds did over time.
pub fn run(inputs: Inputs, env: &Env, plan: &[PlanItem]) -> Result<(Vec<ImageRecord>, Activity)> {
    let (outcomes, activity) =
        inputs.reporter.phase("build images", |_| Ok(execute(inputs, env, plan)))?;
    inputs.reporter.line(format!("images:\n{}", outcome_table(plan, &outcomes)));
    let result = |i: &PlanItem| outcomes.get(&i.spec.name).map(|o| o.result.as_ref());
    let failures: Vec<String> = plan
        .iter()
        .filter_map(|i| Some(format!("- {}", explain(inputs.project, i, result(i)?.err()?))))
        .collect();
    let failed = failures.len();
    anyhow::ensure!(failed == 0, "{failed} image build(s) failed:\n{}", failures.join("\n"));
    interrupt::check()?;
    let records = plan.iter().map(|item| {
        let image = match &item.action {
            Action::Cached(image) => Some(image),
            Action::Build { .. } => result(item).and_then(|outcome| outcome.ok()),
        };
        image.map(|image| item.record(image)).context("a build without an outcome")
    });
    Ok((records.collect::<Result<_>>()?, activity))
}

fn execute(inputs: Inputs, env: &Env, plan: &[PlanItem]) -> (HashMap<String, Outcome>, Activity) {
    let reporter = inputs.reporter;
    let budget = env.budget.bytes;
    let jobs = env.build_jobs(inputs.opts.jobs);
    let to_build: Vec<&PlanItem> = plan.iter().filter(|i| !i.is_cached()).collect();
    let mut outcomes = HashMap::new();
    if to_build.is_empty() {
        reporter.line("  nothing to build");
        return (outcomes, Activity::default());
    }
    let overall = reporter.overall(to_build.len() as u64, "images");
    let mut queue = to_build.into_iter().peekable();
    // The memory sampled is this machine's: it says something of the builds only when the
    // engine runs here.
    let sampler = (!env.facts.remote).then(Sampler::start);
    let (tx, rx) = mpsc::channel::<(String, Outcome)>();
    std::thread::scope(|scope| {
        // Each running build's name, cap, and the most builds that ran at once while it did.
        let mut running: Vec<(String, u64, usize)> = Vec::new();
        let mut stopping = false;
        loop {
            while !stopping && !interrupt::interrupted() {
                let caps: Vec<u64> = running.iter().map(|b| b.1).collect();
                let fits = |i: &&PlanItem| memory::admit(&caps, i.spec.memory, budget, jobs);
                let Some(item) = queue.next_if(fits) else { break };
                running.push((item.spec.name.clone(), item.spec.memory, 0));
                let at_once = running.len();
                running.iter_mut().for_each(|b| b.2 = b.2.max(at_once));
                let tx = tx.clone();
                let sampler = &sampler;
                scope.spawn(move || {
                    let outcome = build_one(inputs, env, item, sampler.as_ref());
                    let _ = tx.send((item.spec.name.clone(), outcome));
                });
            }
            let Some(Ok((name, mut outcome))) = (!running.is_empty()).then(|| rx.recv()) else {
                break;
            };
            let (_, _, crowd) =
                running.remove(running.iter().position(|b| b.0 == name).expect("running"));
            overall.inc(1);
            if let Err(failure) = &mut outcome.result {
                if let BuildFailure::OutOfMemory { at_once, .. } = failure {
                    *at_once = crowd;
                }
                if !stopping && (!running.is_empty() || queue.peek().is_some()) {
                    let still_running = running.len();
                    reporter.line(format!(
                        "  {name} failed: starting no new builds; waiting for {still_running} running"
                    ));
                }
                stopping = true;
            }
            outcomes.insert(name, outcome);
        }
    });
    let memory = sampler.map(Sampler::stop).unwrap_or_default();
    reporter.finish(&overall);
    let builds = plan.iter().filter_map(|i| Some(outcomes.get(&i.spec.name)?.span.clone()));
    let activity = Activity { builds: builds.collect(), memory };
    (outcomes, activity)
}

fn explain(project: &Project, item: &PlanItem, failure: &BuildFailure) -> String {
    let name = &item.spec.name;
    let at = |step: &Option<String>| step.as_ref().map_or(String::new(), |s| format!(" at `{s}`"));
    match failure {
        BuildFailure::OutOfMemory { step, at_once } => format!(
            "image {name} was killed for running out of memory: its build hit its memory cap of {}{} \
             with {at_once} build(s) running.\n  fix: raise `memory` for {name} in the images file, or lower --jobs.\n  log: {}",
            podman_size(item.spec.memory),
            at(step),
            project.display(&build_log(project, name))
        ),
        BuildFailure::Failed { step, error } => format!("image {name} failed{}: {error}", at(step)),
        BuildFailure::Vanished => {
            format!("image {name}: the build succeeded but {} is not in the engine", item.reference)
        }
    }
}

fn build_log(project: &Project, name: &str) -> PathBuf {
    project.logs_dir().join(format!("build-{name}.log"))
}

pub fn build_cmd_for(project: &Project, env: &Env, item: &PlanItem) -> Cmd {
    env.engine().build(&BuildCmd {
        reference: item.reference.clone(),
        dockerfile: &project.root.join(&item.spec.dockerfile),
        context: &item.context,
        memory: env.cap(item.spec.memory),
        build_args: item.spec.build_args.clone(),
        labels: [(FINGERPRINT_LABEL.to_owned(), item.fingerprint.clone())].into(),
        no_cache: matches!(&item.action, Action::Build { reason } if reason == "--force"),
    })
}

fn build_one(inputs: Inputs, env: &Env, item: &PlanItem, sampler: Option<&Sampler>) -> Outcome {
    let project = inputs.project;
    let reporter = inputs.reporter;
    let started = Instant::now();
    let name = &item.spec.name;
    let cmd = build_cmd_for(project, env, item);
    let log = build_log(project, name);
    let _ = std::fs::remove_file(&log);
    let cap =
        env.cap(item.spec.memory).unwrap_or_else(|| "none: the engine cannot enforce one".into());
    reporter.line(format!("  building {name} (cap {cap})"));
    let result = super::run_spinning(reporter, &cmd, &log, name, "building");
    let took = started.elapsed();
    let peak = sampler.and_then(|s| s.peak_between(started, Some(started + took)));
    let result = result.map_err(|err| {
        let code = err.downcast_ref::<CmdError>().and_then(|e| e.code);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match diagnose::diagnose(code, &text) {
            (true, step) => BuildFailure::OutOfMemory { step, at_once: 1 },
            (false, step) => BuildFailure::Failed { step, error: format!("{err:#}") },
        }
    });
    let result =
        result.and_then(|()| env.engine().image(&item.reference).ok_or(BuildFailure::Vanished));
    if result.is_ok() {
        reporter.line(format!("  built {} in {}", item.reference, secs(took)));
    }
    let image = name.clone();
    let cap = item.spec.memory;
    let ok = result.is_ok();
    Outcome { result, span: BuildSpan { image, started, took, cap, ok }, peak }
}

fn outcome_table(plan: &[PlanItem], outcomes: &HashMap<String, Outcome>) -> String {
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|item| {
            let [result, time, size, peak] = match (&item.action, outcomes.get(&item.spec.name)) {
                (Action::Cached(image), _) => ["cached".into(), dash(), human(image.size), dash()],
                (Action::Build { .. }, Some(outcome)) => [
                    if outcome.result.is_ok() { "built" } else { "FAILED" }.into(),
                    secs(outcome.span.took),
                    outcome.result.as_ref().map_or_else(|_| dash(), |image| human(image.size)),
                    outcome.peak.map_or_else(dash, human),
                ],
                (Action::Build { .. }, None) => ["not started".into(), dash(), dash(), dash()],
            };
            vec![item.spec.name.clone(), result, time, size, peak]
        })
        .collect();
    format!(
        "{}\n  (peak memory: the machine's memory in use above its level when the build started, sampled every 100 ms; \
         not sampled when the engine runs on another machine)",
        table(&["image", "result", "time", "size", "peak memory"], &rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> PlanItem {
        PlanItem {
            spec: crate::images::ImageSpec {
                name: name.into(),
                repository: format!("localhost/e2e-{name}"),
                dockerfile: "d".into(),
                context: crate::images::BuildContext::Dir("c".into()),
                memory: 512 << 20,
                build_args: Default::default(),
            },
            context: "c".into(),
            fingerprint: "f".repeat(64),
            outside_binary: "f".repeat(64),
            reference: format!("localhost/e2e-{name}:ffff"),
            action: Action::Build { reason: "not built yet".into() },
        }
    }

    #[test]
    fn oom_failures_say_what_to_change() {
        let project = Project {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            e2e_dir: "/repo/target/e2e".into(),
        };
        let msg = explain(
            &project,
            &item("postgres"),
            &BuildFailure::OutOfMemory { step: Some("RUN apt-get install".into()), at_once: 2 },
        );
        assert!(
            msg.contains("postgres") && msg.contains("out of memory") && msg.contains("512m"),
            "{msg}"
        );
        assert!(
            msg.contains("at `RUN apt-get install`") && msg.contains("2 build(s) running"),
            "{msg}"
        );
        assert!(
            msg.contains("raise `memory` for postgres") && msg.contains("lower --jobs"),
            "{msg}"
        );
        let other = explain(
            &project,
            &item("redis"),
            &BuildFailure::Failed {
                step: Some("COPY x /x".into()),
                error: "`podman build` failed".into(),
            },
        );
        assert!(other.contains("redis failed at `COPY x /x`"), "{other}");
    }
}
