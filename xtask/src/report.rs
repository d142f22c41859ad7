//! One place decides how progress is shown. On a terminal: indicatif bars (one overall,
//! one per running build) with lines printed above them, so child output never tears a
//! bar. Elsewhere (CI logs): plain timestamped lines only. Every external command is echoed
//! once before it runs; each phase is printed with the time it took.

use std::{
    io::IsTerminal,
    sync::Mutex,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    cmd::Cmd,
    timeline::{self, SpanState, Timeline},
};

pub struct Reporter {
    bars: Option<MultiProgress>,
    /// Each phase: name, start (since the reporter started), duration, success.
    phases: Mutex<Vec<(String, Duration, Duration, bool)>>,
    started: Instant,
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Reporter {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Reporter {
            bars: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            phases: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// Plain lines, never bars (for tests).
    #[cfg(test)]
    pub fn quiet() -> Reporter {
        Reporter { bars: None, phases: Mutex::new(Vec::new()), started: Instant::now() }
    }

    pub fn line(&self, msg: impl AsRef<str>) {
        let text = format!("[{}] {}", clock(), msg.as_ref());
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(text);
            }
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
        let offset = start.duration_since(self.started);
        let ok = result.is_ok();
        self.line(format!("<== {name}: {} in {}", if ok { "done" } else { "FAILED" }, secs(took)));
        self.phases.lock().unwrap().push((name.to_owned(), offset, took, ok));
        result
    }

    /// An overall bar of `len` steps (hidden when not on a terminal).
    pub fn overall(&self, len: u64, what: &str) -> ProgressBar {
        let Some(mp) = &self.bars else {
            return ProgressBar::hidden();
        };
        let bar = mp.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_owned());
        bar
    }

    /// A spinner for one running task (hidden when not on a terminal).
    pub fn spinner(&self, name: &str, msg: &str) -> ProgressBar {
        let Some(mp) = &self.bars else {
            return ProgressBar::hidden();
        };
        let bar = mp.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {msg} ({elapsed})")
                .expect("a valid template"),
        );
        bar.set_prefix(name.to_owned());
        bar.set_message(msg.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Removes a finished bar from the screen.
    pub fn finish(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        if let Some(mp) = &self.bars {
            mp.remove(bar);
        }
    }

    /// The phases so far with their durations, for the closing summary. The total is the
    /// wall time since the start (phases may overlap).
    pub fn summary(&self) -> String {
        let phases = self.phases.lock().unwrap();
        let width =
            phases.iter().map(|(n, ..)| n.len()).max().unwrap_or(0).max("total (wall)".len());
        let total = self.started.elapsed();
        let mut out = String::new();
        for (name, _, took, ok) in phases.iter() {
            out.push_str(&format!(
                "  {name:<width$}  {:>8}  {}\n",
                secs(*took),
                if *ok { "ok" } else { "FAILED" }
            ));
        }
        out.push_str(&format!("  {:<width$}  {:>8}\n", "total (wall)", secs(total)));
        out
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Reporter {
    /// The phases as (name, seconds), for the run report.
    pub fn phase_times(&self) -> Vec<(String, f64)> {
        self.phases
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _, d, _)| (n.clone(), (d.as_secs_f64() * 1000.0).round() / 1000.0))
            .collect()
    }

    /// Seconds from the reporter's start to `t` (0 for earlier instants).
    pub fn offset(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64()
    }

    /// The phases as spans on the run's time axis.
    pub fn phase_spans(&self) -> Vec<timeline::Span> {
        self.phases
            .lock()
            .unwrap()
            .iter()
            .map(|(name, start, took, ok)| timeline::Span {
                name: name.clone(),
                start_s: start.as_secs_f64(),
                end_s: (*start + *took).as_secs_f64(),
                state: if *ok { SpanState::Ok } else { SpanState::Failed },
                detail: secs(*took),
            })
            .collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Writes `report.html` beside `report.json`: the phases and every image on one time axis,
/// and the memory the builds used against the budget and their caps.
pub fn write_timeline(
    r: &Reporter,
    dir: &std::path::Path,
    title: &str,
    outcome: &str,
    images: &[(String, SpanState)],
    activity: &crate::build::Activity,
    budget: Option<u64>,
) -> anyhow::Result<std::path::PathBuf> {
    let t = timeline_of(r, title, outcome, images, activity, budget);
    let path = dir.join("report.html");
    crate::fsx::write_atomic(&path, timeline::render_html(&t))?;
    crate::fsx::write_json(&dir.join("timeline.json"), &t)?;
    Ok(path)
}

/// The run's timeline: phases from the reporter, a span per image (built or failed ones as
/// they ran, cached and loaded ones as marks at the start of their phase), memory samples.
pub fn timeline_of(
    r: &Reporter,
    title: &str,
    outcome: &str,
    images: &[(String, SpanState)],
    activity: &crate::build::Activity,
    budget: Option<u64>,
) -> Timeline {
    let phases = r.phase_spans();
    let images_at = phases
        .iter()
        .find(|p| ["build images", "load images", "pull images"].contains(&p.name.as_str()))
        .map_or((0.0, 0.0), |p| (p.start_s, p.end_s));
    let spans = images
        .iter()
        .map(|(name, state)| match activity.builds.iter().find(|b| &b.image == name) {
            Some(b) => timeline::Span {
                name: name.clone(),
                start_s: r.offset(b.started),
                end_s: r.offset(b.started) + b.took.as_secs_f64(),
                state: if b.ok { SpanState::Built } else { SpanState::Failed },
                detail: format!("{} (cap {})", secs(b.took), crate::memory::human(b.cap)),
            },
            None => timeline::Span {
                name: name.clone(),
                start_s: images_at.0,
                end_s: if *state == SpanState::Loaded { images_at.1 } else { images_at.0 },
                state: *state,
                detail: format!("{state:?}").to_lowercase(),
            },
        })
        .collect();
    Timeline {
        title: title.to_owned(),
        outcome: outcome.to_owned(),
        total_s: r.elapsed().as_secs_f64(),
        phases,
        images: spans,
        memory: activity
            .memory
            .iter()
            .map(|(t, used)| timeline::Sample { t_s: r.offset(*t), used_bytes: *used })
            .collect(),
        budget_bytes: budget,
        caps: activity
            .builds
            .iter()
            .map(|b| timeline::Cap {
                image: b.image.clone(),
                start_s: r.offset(b.started),
                end_s: r.offset(b.started) + b.took.as_secs_f64(),
                cap_bytes: b.cap,
            })
            .collect(),
    }
}

/// UTC wall-clock time as HH:MM:SS.
fn clock() -> String {
    chrono::Utc::now().format("%H:%M:%S").to_string()
}

/// A plain-text table with a header row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut line = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            line.push_str(&format!("  {cell:<w$}"));
        }
        line.trim_end().to_owned()
    };
    let mut out = fmt_row(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&fmt_row(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_phases_and_total() {
        let r = Reporter { bars: None, phases: Mutex::new(Vec::new()), started: Instant::now() };
        r.phase("build", |_| Ok(())).unwrap();
        let _ = r.phase("test", |_| -> anyhow::Result<()> { anyhow::bail!("no") });
        let s = r.summary();
        assert!(s.contains("build") && s.contains("ok"), "{s}");
        assert!(s.contains("test") && s.contains("FAILED"), "{s}");
        assert!(s.contains("total"), "{s}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["image", "state"],
            &[vec!["gateway".into(), "built".into()], vec!["pg".into(), "cached".into()]],
        );
        assert_eq!(t, "  image    state\n  gateway  built\n  pg       cached");
    }
}

/// `cargo xtask report [RUN]`: where a run's report is, and what it says.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The run id (a folder of target/e2e/runs) [default: the last run].
    pub run: Option<String>,
}

impl ReportArgs {
    pub fn run(self, project: &crate::project::Project) -> anyhow::Result<()> {
        use anyhow::Context;
        let runs = project.runs_dir();
        let dir = match &self.run {
            Some(id) => runs.join(id),
            None => {
                let mut dirs: Vec<_> = std::fs::read_dir(&runs)
                    .with_context(|| {
                        format!("no runs yet in {}: run `cargo xtask e2e`", project.display(&runs))
                    })?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|d| d.join("timeline.json").is_file())
                    .collect();
                dirs.sort();
                dirs.pop().context("no run has written a report yet: run `cargo xtask e2e`")?
            }
        };
        let file = dir.join("timeline.json");
        let t: Timeline =
            serde_json::from_slice(&std::fs::read(&file).with_context(|| {
                format!("no report for that run ({} is missing)", file.display())
            })?)?;
        // A closed pipe (`| head`) is not an error worth a panic.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", dir.join("report.html").display());
        let _ = writeln!(out, "{}", timeline::text_summary(&t));
        Ok(())
    }
}
