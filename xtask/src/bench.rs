//! `cargo xtask bench-images`: what content-addressed, memory-bounded builds buy, measured
//! side by side in one go, as medians over several runs:
//!
//! - a no-op `prebuild-images` (everything cached) against a plain `podman build` of the same
//!   Dockerfiles and contexts using podman's layer cache;
//! - a cold build of every image (no layer cache) one at a time against all at once,
//!   each with its wall time and the machine's peak memory above the level before it.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    build::{self, Handoff},
    engine::{BuildCmd, Engine},
    images, memory,
    project::Project,
    report::{secs, table, Reporter},
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Runs of the cold builds (each takes tens of seconds).
    #[arg(long, default_value_t = 3)]
    pub cold_runs: usize,
    /// Skip the cold builds.
    #[arg(long)]
    pub no_cold: bool,
}

struct Sample {
    wall: Duration,
    peak: u64,
}

impl BenchArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        let exe = std::env::current_exe()?;
        let prebuild = |extra: &[&str]| -> anyhow::Result<Sample> {
            measure(|| {
                let out = Command::new(&exe)
                    .arg("prebuild-images")
                    .args(extra)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "prebuild-images failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            })
        };

        r.line("warming up: one prebuild-images so that every image is cached");
        prebuild(&[])?;
        let handoff =
            Handoff::load(project).context("no target/e2e/images.json after prebuild-images")?;
        let specs = build::load_images(project, &Default::default())?.images;

        // The plain builds: the same Dockerfiles, contexts, caps and arguments, with podman's
        // layer cache, under tags of their own.
        let plain_builds: Vec<_> = specs
            .iter()
            .map(|spec| {
                let context = match &spec.context {
                    images::BuildContext::Dir(d) => project.root.join(d),
                    images::BuildContext::Binary(_) => {
                        project.e2e_dir().join("context").join(&spec.name)
                    }
                };
                (spec.clone(), context)
            })
            .collect();
        let plain = || -> anyhow::Result<Sample> {
            measure(|| {
                for (spec, context) in &plain_builds {
                    let dockerfile = project.root.join(&spec.dockerfile);
                    let cmd = Engine::Podman.build(&BuildCmd {
                        reference: format!("{}:bench-plain", spec.repository),
                        dockerfile: &dockerfile,
                        context,
                        memory: images::podman_size(spec.memory),
                        build_args: spec.build_args.clone(),
                        labels: Default::default(),
                        no_cache: false,
                    });
                    cmd.run_logged(&project.logs_dir().join("bench-plain.log"))?;
                }
                Ok(())
            })
        };
        plain()?; // warm the layer cache for the plain builds too

        let mut noop = Vec::new();
        let mut plains = Vec::new();
        for i in 0..self.runs {
            r.line(format!("no-op run {}/{}", i + 1, self.runs));
            noop.push(prebuild(&[])?);
            plains.push(plain()?);
        }
        let mut rows = vec![
            row("no-op prebuild-images (all cached)", &noop),
            row("plain podman build, layer cache", &plains),
        ];
        let speedup = median(&plains.iter().map(|s| s.wall).collect::<Vec<_>>()).as_secs_f64()
            / median(&noop.iter().map(|s| s.wall).collect::<Vec<_>>()).as_secs_f64();

        let mut cold_note = String::new();
        if !self.no_cold {
            let n = specs.len().to_string();
            let mut one = Vec::new();
            let mut all = Vec::new();
            for i in 0..self.cold_runs {
                r.line(format!(
                    "cold run {}/{} (no layer cache): one at a time, then all at once",
                    i + 1,
                    self.cold_runs
                ));
                one.push(prebuild(&["--force", "--jobs", "1"])?);
                all.push(prebuild(&["--force", "--jobs", &n])?);
            }
            rows.push(row("cold, one at a time (--jobs 1)", &one));
            rows.push(row(&format!("cold, all at once (--jobs {n})"), &all));
            let budget = memory::default_budget(&memory::read()?);
            let worst = one.iter().chain(&all).map(|s| s.peak).max().unwrap_or(0);
            let caps: u64 = specs.iter().map(|s| s.memory).sum();
            cold_note = format!(
                "\n  peak memory of any cold run: {} (sum of the images' caps: {}; default budget now: {})",
                memory::human(worst),
                memory::human(caps),
                memory::human(budget.bytes)
            );
        }
        for spec in &specs {
            let _ = Engine::Podman
                .inspect_image(&format!("{}:bench-plain", spec.repository))
                .read();
            let _ = Command::new("podman")
                .args(["rmi", &format!("{}:bench-plain", spec.repository)])
                .output();
        }
        r.line(format!(
            "results ({} images, medians):\n{}\n  no-op prebuild-images is {speedup:.1}x faster than the plain builds{cold_note}",
            handoff.images.len(),
            table(&["measurement", "runs", "median wall", "min", "max", "median peak memory"], &rows)
        ));
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArchiveArgs {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

impl BenchArchiveArgs {
    /// Archive size against the images' sizes; save and load with zstd and without; and the
    /// time from `e2e --images` (images removed first) to the first test against a warm `e2e`.
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        let exe = std::env::current_exe()?;
        let xtask = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(&exe).args(args).output()?;
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            anyhow::ensure!(
                out.status.success(),
                "xtask {} failed:\n{text}",
                args.join(" ")
            );
            Ok(text)
        };
        r.line("warming up: prebuild-images, so that every image is cached");
        xtask(&["prebuild-images"])?;
        let handoff = Handoff::load(project).context("no images.json")?;
        let refs: Vec<String> = handoff.images.iter().map(|i| i.reference.clone()).collect();
        let remove = || {
            let _ = Command::new("podman").arg("rmi").args(&refs).output();
        };
        let dir = project.e2e_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let zst = dir.join("images.tar.zst");
        let tar = dir.join("images.tar");
        let (zst_s, tar_s) = (zst.display().to_string(), tar.display().to_string());

        let (mut save_z, mut save_n, mut load_z, mut load_n) = (vec![], vec![], vec![], vec![]);
        for i in 0..self.runs {
            r.line(format!("save/load run {}/{}", i + 1, self.runs));
            save_z.push(measure(|| {
                xtask(&["save-images", "--output", &zst_s]).map(drop)
            })?);
            save_n.push(measure(|| {
                xtask(&["save-images", "--compress", "none", "--output", &tar_s]).map(drop)
            })?);
            remove();
            load_z.push(measure(|| xtask(&["load-images", &zst_s]).map(drop))?);
            remove();
            load_n.push(measure(|| xtask(&["load-images", &tar_s]).map(drop))?);
        }
        let (mut from_archive, mut warm) = (vec![], vec![]);
        for i in 0..self.runs {
            r.line(format!(
                "e2e run {}/{}: --images (images removed first), then warm",
                i + 1,
                self.runs
            ));
            remove();
            from_archive.push(until_tests(&xtask(&["e2e", "--images", &zst_s])?)?);
            warm.push(until_tests(&xtask(&["e2e"])?)?);
        }
        let sum: u64 = handoff.images.iter().map(|i| i.size).sum();
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rows = vec![
            row("save-images, zstd", &save_z),
            row("save-images, no compression", &save_n),
            row("load-images, zstd (images removed first)", &load_z),
            row(
                "load-images, no compression (images removed first)",
                &load_n,
            ),
        ];
        let to_tests = |v: &[Duration]| secs3(median(v));
        r.line(format!(
            "results (medians of {} runs):\n{}\n  sizes: the {} images together {}; archive with zstd {}, without {}\n  \
             time to the first test: `e2e --images` {} (min {}, max {}), warm `e2e` {} (min {}, max {})",
            self.runs,
            table(&["measurement", "runs", "median wall", "min", "max", "median peak memory"], &rows),
            handoff.images.len(),
            memory::human(sum),
            memory::human(size(&zst)),
            memory::human(size(&tar)),
            to_tests(&from_archive),
            secs3(*from_archive.iter().min().unwrap_or(&Duration::ZERO)),
            secs3(*from_archive.iter().max().unwrap_or(&Duration::ZERO)),
            to_tests(&warm),
            secs3(*warm.iter().min().unwrap_or(&Duration::ZERO)),
            secs3(*warm.iter().max().unwrap_or(&Duration::ZERO)),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

/// From an `e2e` run's phase table: the time of every phase before the suite started.
pub fn until_tests(output: &str) -> anyhow::Result<Duration> {
    let table = output
        .rsplit_once("phases:")
        .map(|(_, t)| t)
        .context("no phase table in the e2e output")?;
    let mut total = 0.0;
    for line in table.lines() {
        let line = line.trim();
        if line.starts_with("run E2E suite") {
            return Ok(Duration::from_secs_f64(total));
        }
        if let Some(t) = line
            .split_whitespace()
            .find_map(|w| w.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()))
        {
            total += t;
        }
    }
    anyhow::bail!("no `run E2E suite` phase in the e2e output")
}

fn row(name: &str, samples: &[Sample]) -> Vec<String> {
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let peaks: Vec<u64> = samples.iter().map(|s| s.peak).collect();
    vec![
        name.to_owned(),
        samples.len().to_string(),
        secs3(median(&walls)),
        secs3(*walls.iter().min().unwrap_or(&Duration::ZERO)),
        secs3(*walls.iter().max().unwrap_or(&Duration::ZERO)),
        memory::human(median(&peaks)),
    ]
}

fn secs3(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        secs(d)
    }
}

pub fn median<T: Copy + Ord + Default>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Wall time of `f`, and the machine's peak memory in use above the level before it.
fn measure(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Sample> {
    let base = memory::used_now().unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(memory::used_now().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        }
    });
    let start = Instant::now();
    let result = f();
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.join().unwrap_or(0);
    result?;
    Ok(Sample {
        wall,
        peak: peak.saturating_sub(base),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_to_the_first_test_sums_the_phases_before_it() {
        let out = "x\n[10:00:00] phases:\n  check prerequisites  0.3s  ok\n  load images  5.2s  ok\n  run E2E suite  0.7s  ok\n  total (wall)  6.2s\n";
        assert_eq!(
            super::until_tests(out).unwrap(),
            std::time::Duration::from_secs_f64(5.5)
        );
        assert!(super::until_tests("no table").is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3, 1, 2]), 2);
        assert_eq!(super::median(&[4, 1, 3, 2]), 3);
        assert_eq!(super::median::<u32>(&[]), 0);
    }
}
