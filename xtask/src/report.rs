//! One place decides how progress is shown: phases with their durations, and every
//! external command echoed once before it runs. Lines carry a timestamp, which is what a
//! CI log needs and what a terminal can live with.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cmd::Cmd;

#[derive(Default)]
pub struct Reporter {
    phases: Vec<(String, Duration, bool)>,
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter::default()
    }

    pub fn line(&self, msg: impl AsRef<str>) {
        eprintln!("[{}] {}", clock(), msg.as_ref());
    }

    pub fn command(&self, cmd: &Cmd) {
        self.line(format!("  $ {cmd}"));
    }

    /// Runs one phase, printing its start and its end with the time it took.
    pub fn phase<T>(&mut self, name: &str, f: impl FnOnce(&mut Reporter) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.line(format!("==> {name}"));
        let start = Instant::now();
        let result = f(self);
        let took = start.elapsed();
        let ok = result.is_ok();
        self.line(format!("<== {name}: {} in {}", if ok { "done" } else { "FAILED" }, secs(took)));
        self.phases.push((name.to_owned(), took, ok));
        result
    }

    /// The phases so far with their durations, for the closing summary.
    pub fn summary(&self) -> String {
        let width = self.phases.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
        let total: Duration = self.phases.iter().map(|(_, d, _)| *d).sum();
        let mut out = String::new();
        for (name, took, ok) in &self.phases {
            out.push_str(&format!("  {name:<width$}  {:>8}  {}\n", secs(*took), if *ok { "ok" } else { "FAILED" }));
        }
        out.push_str(&format!("  {:<width$}  {:>8}\n", "total", secs(total)));
        out
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// UTC wall-clock time as HH:MM:SS, without a date-time dependency.
fn clock() -> String {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_phases_and_total() {
        let mut r = Reporter::new();
        r.phase("build", |_| Ok(())).unwrap();
        let _ = r.phase("test", |_| anyhow::bail!("no")).map(|()| ());
        let s = r.summary();
        assert!(s.contains("build") && s.contains("ok"), "{s}");
        assert!(s.contains("test") && s.contains("FAILED"), "{s}");
        assert!(s.contains("total"), "{s}");
    }
}
