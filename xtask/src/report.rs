//! How progress is shown (docs/run.md: bars on a terminal, timestamped lines in CI, each
//! command echoed, each phase timed), and what a run leaves behind: `report.json`, its timeline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{collections::BTreeSet, io::IsTerminal, sync::Mutex};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::timeline::{self, Span, SpanState, Timeline};
use crate::{cmd::Cmd, project::Project};

/// The names of the phases that code looks for (in reports, benchmarks and CI's greps).
pub mod phase {
    pub const SUITE: &str = "run E2E suite";
    /// Whichever brings the run's images.
    pub const IMAGES: [&str; 3] = ["build images", "load images", "pull images"];
    pub const TEAR_DOWN: &str = "tear down";
}

pub struct Reporter {
    bars: Option<MultiProgress>,
    /// Each phase as a span since the reporter started.
    phases: Mutex<Vec<Span>>,
    started: Instant,
}

impl Reporter {
    /// Bars when stderr is a terminal (and not in CI), plain lines otherwise.
    pub fn new() -> Reporter {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bars = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Reporter { bars, phases: Mutex::default(), started: Instant::now() }
    }

    #[cfg(test)]
    pub fn quiet() -> Reporter {
        Reporter { bars: None, phases: Mutex::default(), started: Instant::now() }
    }

    pub fn line(&self, msg: impl AsRef<str>) {
        let text = format!("[{}] {}", chrono::Utc::now().format("%H:%M:%S"), msg.as_ref());
        match &self.bars {
            Some(bars) => drop(bars.println(text)),
            None => eprintln!("{text}"),
        }
    }

    pub fn command(&self, cmd: &Cmd) {
        self.line(format!("  $ {cmd}"));
    }

    /// Runs one phase, printing its start and its end with the time it took.
    pub fn phase<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Reporter) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.line(format!("==> {name}"));
        let start = Instant::now();
        let result = f(self);
        let took = start.elapsed();
        let ok = result.is_ok();
        self.line(format!("<== {name}: {} in {}", if ok { "done" } else { "FAILED" }, secs(took)));
        let start_s = self.offset(start);
        let state = if ok { SpanState::Ok } else { SpanState::Failed };
        let name = name.to_owned();
        let end_s = start_s + took.as_secs_f64();
        let detail = secs(took);
        self.phases.lock().unwrap().push(Span { name, start_s, end_s, state, detail });
        result
    }

    /// An overall bar of `len` steps (hidden when not on a terminal).
    pub fn overall(&self, len: u64, what: &str) -> ProgressBar {
        let template = "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})";
        self.add(ProgressBar::new(len), template, what)
    }

    /// A spinner for one running task (hidden when not on a terminal).
    pub fn spinner(&self, name: &str, msg: &str) -> ProgressBar {
        let bar =
            self.add(ProgressBar::new_spinner(), "{prefix:>12} {spinner} {msg} ({elapsed})", name);
        if !bar.is_hidden() {
            bar.set_message(msg.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        bar
    }

    fn add(&self, bar: ProgressBar, template: &str, prefix: &str) -> ProgressBar {
        let Some(bars) = &self.bars else { return ProgressBar::hidden() };
        let style = ProgressStyle::with_template(template).expect("a valid template");
        bars.add(bar.with_style(style.progress_chars("=> ")).with_prefix(prefix.to_owned()))
    }

    pub fn finish(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        if let Some(bars) = &self.bars {
            bars.remove(bar);
        }
    }

    /// The phases so far with their durations, and the wall time since the start (phases
    /// may overlap).
    pub fn summary(&self) -> String {
        let phases = self.phase_spans();
        let total = "total (wall)";
        let width = phases.iter().map(|p| p.name.len()).fold(total.len(), usize::max);
        let mut out = String::new();
        for phase in &phases {
            let ok = if phase.state == SpanState::Ok { "ok" } else { "FAILED" };
            out += &format!("  {:<width$}  {:>8}  {ok}\n", phase.name, phase.detail);
        }
        out + &format!("  {total:<width$}  {:>8}\n", secs(self.started.elapsed()))
    }

    /// Seconds from the reporter's start to `instant` (0 for earlier instants).
    pub fn offset(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.started).as_secs_f64()
    }

    pub fn phase_spans(&self) -> Vec<Span> {
        self.phases.lock().unwrap().clone()
    }
}

pub fn secs(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// `target/e2e/runs/<id>/report.json`: written by `e2e`, read by `soak` and `bench`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunReport {
    pub run: String,
    /// `podman` or `kind` (as the run's `--runtime`).
    pub runtime: Option<String>,
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

impl RunReport {
    pub fn read(path: &Path) -> anyhow::Result<RunReport> {
        let reading = || format!("reading {}", path.display());
        serde_json::from_slice(&std::fs::read(path).with_context(reading)?).with_context(reading)
    }

    pub fn latest(project: &Project) -> anyhow::Result<RunReport> {
        let newest =
            run_dirs(project).into_iter().map(|d| d.join("report.json")).rfind(|p| p.is_file());
        RunReport::read(&newest.context("no run has written a report.json")?)
    }

    pub fn first_test(&self) -> anyhow::Result<Duration> {
        let missing = "the run's report has no first_test_s: the suite did not start";
        Ok(Duration::from_secs_f64(self.first_test_s.context(missing)?))
    }
}

/// The folders under `target/e2e/runs/`, in the order of their names (the order they began).
pub fn run_dirs(project: &Project) -> BTreeSet<PathBuf> {
    std::fs::read_dir(project.runs_dir())
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A plain-text table with a header row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let width = |i: usize| all.iter().filter_map(|row| row.get(i)).map(|c| c.chars().count()).max();
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0)).collect();
    let line = |row: &&Vec<String>| {
        let cells = row.iter().zip(&widths).map(|(cell, w)| format!("  {cell:<w$}"));
        cells.collect::<String>().trim_end().to_owned()
    };
    all.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// The middle value (of an even count, the upper of the two middle ones); the default of none.
pub fn median<T: Copy + PartialOrd + Default>(values: &[T]) -> T {
    nth(values, values.len() / 2 + 1)
}

/// The nearest-rank percentile `p` (0-100) of `values`; the default (0) of none.
pub fn percentile<T: Copy + PartialOrd + Default>(values: &[T], p: f64) -> T {
    nth(values, ((p / 100.0) * values.len() as f64).ceil() as usize)
}

/// The `rank`th smallest value (from 1, kept within the values); the default of none.
fn nth<T: Copy + PartialOrd + Default>(values: &[T], rank: usize) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied().unwrap_or_default()
}

/// `cargo xtask report [RUN]`: where a run's report is, and what it says.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The run id (a folder of target/e2e/runs) [default: the last run].
    pub run: Option<String>,
}

impl ReportArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let dir = match &self.run {
            Some(id) => project.runs_dir().join(id),
            None => (run_dirs(project).into_iter())
                .rfind(|d| d.join("timeline.json").is_file())
                .context("no run has written a report yet: run `cargo xtask e2e`")?,
        };
        let file = dir.join("timeline.json");
        let missing = || format!("no report for that run ({} is missing)", file.display());
        let recorded: Timeline =
            serde_json::from_slice(&std::fs::read(&file).with_context(missing)?)?;
        // A closed pipe (`| head`) is not an error worth a panic.
        use std::io::Write;
        let out = &mut std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}\n{}",
            dir.join("report.html").display(),
            timeline::text_summary(&recorded)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_phases_and_total() {
        let reporter =
            Reporter { bars: None, phases: Mutex::new(Vec::new()), started: Instant::now() };
        reporter.phase("build", |_| Ok(())).unwrap();
        let _ = reporter.phase("test", |_| -> anyhow::Result<()> { anyhow::bail!("no") });
        let summary = reporter.summary();
        assert!(summary.contains("build") && summary.contains("ok"), "{summary}");
        assert!(summary.contains("test") && summary.contains("FAILED"), "{summary}");
        assert!(summary.contains("total"), "{summary}");
    }

    #[test]
    fn tables_align() {
        let rendered = table(
            &["image", "state"],
            &[vec!["gateway".into(), "built".into()], vec!["pg".into(), "cached".into()]],
        );
        assert_eq!(rendered, "  image    state\n  gateway  built\n  pg       cached");
    }
}
