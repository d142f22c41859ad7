//! `cargo xtask soak`: the E2E cycle N times in a row, against whatever engine `e2e` would
//! use (the local one, or `CONTAINER_HOST`'s), and what a flaky suite needs to be found:
//! passes, failures (each with its run's saved logs), and p50/p95 of the wall time and of
//! each phase. `target/e2e/soak/<stamp>/` keeps each run's output and `soak.json`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;

use crate::{
    cmd::Cmd,
    project::Project,
    report::{secs, table, Reporter},
};

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
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub passed: bool,
    pub wall_s: f64,
    /// The run's directory (`target/e2e/runs/<id>`: report, logs on failure), when it made one.
    pub run_dir: Option<PathBuf>,
    /// The run's whole output.
    pub output: PathBuf,
    pub error: Option<String>,
    pub phases: Vec<(String, f64)>,
}

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
        let r = Reporter::new();
        let dir = project
            .e2e_dir()
            .join("soak")
            .join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let exe = std::env::current_exe()?.display().to_string();
        r.line(format!(
            "soak: {} runs of cargo xtask e2e {}; each run's output in {}",
            self.runs,
            self.e2e_args.join(" "),
            project.display(&dir)
        ));
        let mut outcomes = Vec::new();
        for i in 1..=self.runs {
            crate::interrupt::check()?;
            let before = run_dirs(project);
            let output = dir.join(format!("run-{i}.log"));
            // On Ctrl-C the run gets it too and tears down: it is waited for, not killed.
            let cmd = Cmd::new(&exe)
                .arg("e2e")
                .args(self.e2e_args.iter().cloned())
                .survives_interrupt();
            let start = Instant::now();
            let status = cmd.run_logged(&output);
            let wall = start.elapsed();
            let new_dir = run_dirs(project).difference(&before).last().cloned();
            let outcome = outcome(status.is_ok(), wall, new_dir, output, status.err());
            r.line(describe(i, self.runs, &outcome, project));
            let failed = !outcome.passed;
            outcomes.push(outcome);
            if failed && self.fail_fast {
                break;
            }
        }
        let summary = summarize(&outcomes, &self.e2e_args);
        std::fs::write(
            dir.join("soak.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        r.line(render(&summary, project));
        anyhow::ensure!(
            summary.failed == 0,
            "{} of {} runs failed (their logs are named above; {})",
            summary.failed,
            summary.runs,
            project.display(&dir.join("soak.json"))
        );
        Ok(())
    }
}

fn run_dirs(project: &Project) -> BTreeSet<PathBuf> {
    std::fs::read_dir(project.runs_dir())
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn outcome(
    exited_ok: bool,
    wall: Duration,
    run_dir: Option<PathBuf>,
    output: PathBuf,
    error: Option<anyhow::Error>,
) -> Outcome {
    let report: Option<serde_json::Value> = run_dir
        .as_ref()
        .and_then(|d| std::fs::read(d.join("report.json")).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let phases = report
        .as_ref()
        .and_then(|r| serde_json::from_value(r["phases"].clone()).ok())
        .unwrap_or_default();
    let error = report
        .as_ref()
        .and_then(|r| r["error"].as_str().map(str::to_owned))
        .or_else(|| error.map(|e| format!("{e:#}")));
    Outcome {
        passed: exited_ok && report.as_ref().is_some_and(|r| r["passed"] == true),
        wall_s: wall.as_secs_f64(),
        run_dir,
        output,
        error,
        phases,
    }
}

fn describe(i: usize, n: usize, o: &Outcome, project: &Project) -> String {
    let wall = secs(Duration::from_secs_f64(o.wall_s));
    if o.passed {
        return format!("run {i}/{n}: passed in {wall}");
    }
    let logs = o
        .run_dir
        .as_ref()
        .map(|d| format!("; container logs in {}", project.display(&d.join("logs"))))
        .unwrap_or_default();
    format!(
        "run {i}/{n}: FAILED after {wall}: {}\n  output: {}{logs}",
        o.error
            .as_deref()
            .unwrap_or("no report")
            .lines()
            .next()
            .unwrap_or(""),
        project.display(&o.output)
    )
}

/// The nearest-rank percentile `p` (0-100) of `values`; 0 when there are none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn summarize<'a>(outcomes: &'a [Outcome], e2e_args: &'a [String]) -> Summary<'a> {
    let walls: Vec<f64> = outcomes.iter().map(|o| o.wall_s).collect();
    // Each phase in the order runs have it, over the runs that have it.
    let mut order: Vec<String> = Vec::new();
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (name, t) in outcomes.iter().flat_map(|o| &o.phases) {
        if !order.contains(name) {
            order.push(name.clone());
        }
        times.entry(name.clone()).or_default().push(*t);
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    Summary {
        runs: outcomes.len(),
        passed,
        failed: outcomes.len() - passed,
        e2e_args,
        wall_p50_s: percentile(&walls, 50.0),
        wall_p95_s: percentile(&walls, 95.0),
        phases: order
            .into_iter()
            .map(|n| {
                let t = &times[&n];
                (n, percentile(t, 50.0), percentile(t, 95.0))
            })
            .collect(),
        outcomes,
    }
}

fn render(s: &Summary, project: &Project) -> String {
    let f = |x: f64| format!("{x:.2}s");
    let mut rows: Vec<Vec<String>> = s
        .phases
        .iter()
        .map(|(n, p50, p95)| vec![n.clone(), f(*p50), f(*p95)])
        .collect();
    rows.push(vec![
        "wall (whole run)".into(),
        f(s.wall_p50_s),
        f(s.wall_p95_s),
    ]);
    let mut out = format!(
        "soak: {} passed, {} failed of {} runs\n{}",
        s.passed,
        s.failed,
        s.runs,
        table(&["phase", "p50", "p95"], &rows)
    );
    for (i, o) in s.outcomes.iter().enumerate().filter(|(_, o)| !o.passed) {
        out.push_str(&format!(
            "\nfailed: run {} ({})",
            i + 1,
            o.run_dir
                .as_ref()
                .map(|d| project.display(&d.join("logs")))
                .unwrap_or_else(|| project.display(&o.output))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&v, 100.0), 20.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
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
        let ok = outcome(true, Duration::from_secs(3), Some(dir.clone()), out(), None);
        assert!(ok.passed && ok.error.is_none());
        assert_eq!(
            ok.phases,
            [("deploy".into(), 1.5), ("tear down".into(), 0.5)]
        );
        report(false);
        let bad = outcome(
            false,
            Duration::from_secs(3),
            Some(dir.clone()),
            out(),
            None,
        );
        assert!(!bad.passed);
        assert_eq!(bad.error.as_deref(), Some("the E2E suite failed"));
        let none = outcome(
            false,
            Duration::ZERO,
            None,
            out(),
            Some(anyhow::anyhow!("no engine")),
        );
        assert!(!none.passed && none.error.as_deref() == Some("no engine"));
        let s = summarize(std::slice::from_ref(&ok), &[]);
        assert_eq!((s.passed, s.failed), (1, 0));
        assert_eq!(s.phases[0], ("deploy".into(), 1.5, 1.5));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
