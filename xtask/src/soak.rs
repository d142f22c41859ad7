//! `cargo xtask soak`: `e2e` N times in a row on its engine, to find a flaky suite: passes,
//! failures with their logs, p50/p95 of the wall time and each phase (docs/commands.md).

use std::{path::PathBuf, time::Duration, time::Instant};

use anyhow::Context;
use serde::Serialize;

use crate::report::{percentile, run_dirs, secs, table, Reporter, RunReport};
use crate::{cmd::Cmd, project::Project};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How many E2E runs, one after another.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Stop at the first failure (its logs are kept) instead of going on.
    #[arg(long)]
    pub fail_fast: bool,
    /// Options for each `cargo xtask e2e` (after `--`), e.g. `-- --faults`.
    #[arg(last = true)]
    pub e2e_args: Vec<String>,
}

/// One run of the soak, as its `report.json` and exit status tell it.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Its report (none: a default), passed only if the run also exited well.
    #[serde(flatten)]
    pub report: RunReport,
    pub wall_s: f64,
    /// The run's `target/e2e/runs/<id>` (report, logs on failure), if it made one.
    pub run_dir: Option<PathBuf>,
    /// The run's whole output.
    pub output: PathBuf,
}

/// `soak.json`.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    runs: usize,
    passed: usize,
    failed: usize,
    e2e_args: &'a [String],
    wall_p50_s: f64,
    wall_p95_s: f64,
    phases: Vec<(String, f64, f64)>,
    outcomes: &'a [Outcome],
}

impl SoakArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        anyhow::ensure!(self.runs > 0, "--runs must be at least 1");
        let reporter = Reporter::new();
        let runs = self.runs;
        let args = &self.e2e_args;
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let dir = project.e2e_dir.join("soak").join(stamp);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let shown = project.display(&dir);
        reporter.line(format!(
            "soak: {runs} runs of cargo xtask e2e {}; each run's output in {shown}",
            args.join(" ")
        ));
        // On Ctrl-C a run gets it too and tears down: it is waited for, not killed.
        let cmd = Cmd::new(std::env::current_exe()?.display().to_string()).arg("e2e").args(args);
        let mut outcomes: Vec<Outcome> = Vec::new();
        for i in 1..=runs {
            crate::interrupt::check()?;
            let before = run_dirs(project);
            let output = dir.join(format!("run-{i}.log"));
            let start = Instant::now();
            let status = cmd.clone().survives_interrupt().run_logged(&output);
            let new_dir = run_dirs(project).difference(&before).last().cloned();
            let run_outcome = outcome(status, start.elapsed(), new_dir, output);
            let wall = secs(Duration::from_secs_f64(run_outcome.wall_s));
            if run_outcome.report.passed {
                reporter.line(format!("run {i}/{runs}: passed in {wall}"));
            } else {
                let report = &run_outcome.report;
                let error = report.error.as_deref().unwrap_or("no report").lines().next();
                let logs = run_outcome.run_dir.as_ref().map_or(String::new(), |d| {
                    format!("; container logs in {}", project.display(&d.join("logs")))
                });
                let error = error.unwrap_or("");
                let output = project.display(&run_outcome.output);
                reporter.line(format!(
                    "run {i}/{runs}: FAILED after {wall}: {error}\n  output: {output}{logs}"
                ));
            }
            outcomes.push(run_outcome);
            if self.fail_fast && outcomes.last().is_some_and(|o| !o.report.passed) {
                break;
            }
        }
        let summary = summarize(&outcomes, args);
        let json = dir.join("soak.json");
        std::fs::write(&json, serde_json::to_string_pretty(&summary)?)?;
        let wall = ("wall (whole run)".to_owned(), summary.wall_p50_s, summary.wall_p95_s);
        let rows: Vec<Vec<String>> = (summary.phases.iter().chain([&wall]))
            .map(|(name, p50, p95)| vec![name.clone(), format!("{p50:.2}s"), format!("{p95:.2}s")])
            .collect();
        let table = table(&["phase", "p50", "p95"], &rows);
        let mut out = format!(
            "soak: {} passed, {} failed of {} runs\n{table}",
            summary.passed, summary.failed, summary.runs
        );
        let failures = summary.outcomes.iter().enumerate().filter(|(_, o)| !o.report.passed);
        for (i, failure) in failures {
            let logs = failure.run_dir.as_ref().map_or(failure.output.clone(), |d| d.join("logs"));
            out += &format!("\nfailed: run {} ({})", i + 1, project.display(&logs));
        }
        reporter.line(out);
        let failed = summary.failed;
        let json = project.display(&json);
        anyhow::ensure!(
            failed == 0,
            "{failed} of {} runs failed (their logs are named above; {json})",
            summary.runs
        );
        Ok(())
    }
}

/// A run's outcome: its report, if it wrote one, and how it exited.
fn outcome(
    status: anyhow::Result<()>,
    wall: Duration,
    run_dir: Option<PathBuf>,
    output: PathBuf,
) -> Outcome {
    let read = |d: &PathBuf| RunReport::read(&d.join("report.json")).ok();
    let mut report = run_dir.as_ref().and_then(read).unwrap_or_default();
    report.passed &= status.is_ok();
    report.error = report.error.or_else(|| status.err().map(|e| format!("{e:#}")));
    Outcome { report, wall_s: wall.as_secs_f64(), run_dir, output }
}

fn summarize<'a>(outcomes: &'a [Outcome], e2e_args: &'a [String]) -> Summary<'a> {
    let walls: Vec<f64> = outcomes.iter().map(|o| o.wall_s).collect();
    // Each phase in the order runs have it, over the runs that have it.
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, took) in outcomes.iter().flat_map(|o| &o.report.phases) {
        match phases.iter_mut().find(|(known, _)| known == name) {
            Some((_, times)) => times.push(*took),
            None => phases.push((name.clone(), vec![*took])),
        }
    }
    let passed = outcomes.iter().filter(|o| o.report.passed).count();
    Summary {
        runs: outcomes.len(),
        passed,
        failed: outcomes.len() - passed,
        e2e_args,
        wall_p50_s: percentile(&walls, 50.0),
        wall_p95_s: percentile(&walls, 95.0),
        phases: phases
            .into_iter()
            .map(|(name, times)| (name, percentile(&times, 50.0), percentile(&times, 95.0)))
            .collect(),
        outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 10.0);
        assert_eq!(percentile(&values, 95.0), 19.0);
        assert_eq!(percentile(&values, 100.0), 20.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(percentile::<f64>(&[], 50.0), 0.0);
    }

    #[test]
    fn a_run_passes_only_when_it_exited_well_and_its_report_says_so() {
        let dir = std::env::temp_dir().join(format!("xtask-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = |passed: bool| {
            std::fs::write(
                dir.join("report.json"),
                format!(
                    r#"{{"passed": {passed}, "error": {}, "phases": [["deploy", 1.5], ["tear down", 0.5]]}}"#,
                    if passed { "null".into() } else { "\"the E2E suite failed\"".to_string() }
                ),
            )
            .unwrap()
        };
        let out = || dir.join("run-1.log");
        report(true);
        let ok = outcome(Ok(()), Duration::from_secs(3), Some(dir.clone()), out());
        assert!(ok.report.passed && ok.report.error.is_none());
        assert_eq!(ok.report.phases, [("deploy".into(), 1.5), ("tear down".into(), 0.5)]);
        report(false);
        let bad = outcome(
            Err(anyhow::anyhow!("exit code 1")),
            Duration::from_secs(3),
            Some(dir.clone()),
            out(),
        );
        assert!(!bad.report.passed);
        assert_eq!(bad.report.error.as_deref(), Some("the E2E suite failed"));
        let none = outcome(Err(anyhow::anyhow!("no engine")), Duration::ZERO, None, out());
        assert!(!none.report.passed && none.report.error.as_deref() == Some("no engine"));
        let summary = summarize(std::slice::from_ref(&ok), &[]);
        assert_eq!((summary.passed, summary.failed), (1, 0));
        assert_eq!(summary.phases[0], ("deploy".into(), 1.5, 1.5));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
