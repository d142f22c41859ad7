//! One place decides how progress is shown. On a terminal: indicatif bars (one overall,
//! one per running build) with lines printed above them, so child output never tears a
//! bar. Elsewhere (CI logs): plain timestamped lines only. Every external command is echoed
//! once before it runs; each phase is printed with the time it took.

use std::{
    io::IsTerminal,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cmd::Cmd;

pub struct Reporter {
    bars: Option<MultiProgress>,
    phases: Mutex<Vec<(String, Duration, bool)>>,
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
        let ok = result.is_ok();
        self.line(format!(
            "<== {name}: {} in {}",
            if ok { "done" } else { "FAILED" },
            secs(took)
        ));
        self.phases
            .lock()
            .unwrap()
            .push((name.to_owned(), took, ok));
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
        let width = phases
            .iter()
            .map(|(n, ..)| n.len())
            .max()
            .unwrap_or(0)
            .max("total (wall)".len());
        let total = self.started.elapsed();
        let mut out = String::new();
        for (name, took, ok) in phases.iter() {
            out.push_str(&format!(
                "  {name:<width$}  {:>8}  {}\n",
                secs(*took),
                if *ok { "ok" } else { "FAILED" }
            ));
        }
        out.push_str(&format!(
            "  {:<width$}  {:>8}\n",
            "total (wall)",
            secs(total)
        ));
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
            .map(|(n, d, _)| (n.clone(), (d.as_secs_f64() * 1000.0).round() / 1000.0))
            .collect()
    }
}

/// UTC wall-clock time as HH:MM:SS, without a date-time dependency.
fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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
        let r = Reporter {
            bars: None,
            phases: Mutex::new(Vec::new()),
            started: Instant::now(),
        };
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
            &[
                vec!["gateway".into(), "built".into()],
                vec!["pg".into(), "cached".into()],
            ],
        );
        assert_eq!(t, "  image    state\n  gateway  built\n  pg       cached");
    }
}
