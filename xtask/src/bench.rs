//! `cargo xtask bench-images`: what content-addressed, memory-bounded builds buy, measured
//! side by side in one go, as medians over several runs:
//!
//! - a no-op `prebuild-images` (everything cached) against a plain `podman build` of the same
//!   Dockerfiles and contexts using podman's layer cache;
//! - a cold build of every image (no layer cache) one at a time against all at once,
//!   each with its wall time and the machine's peak memory above the level before it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    build,
    cmd::Cmd,
    engine::BuildCmd,
    handoff::Handoff,
    images, memory,
    project::Project,
    report::{secs, table, Reporter},
    sampler::Sampler,
};

/// `cargo xtask ARGS...` as this very binary, its output in the benchmark's log.
fn xtask(args: &[&str]) -> anyhow::Result<Cmd> {
    Ok(Cmd::new(std::env::current_exe()?.display().to_string()).args(args.iter().copied()))
}

fn bench_log(project: &Project) -> PathBuf {
    project.logs_dir().join("bench.log")
}

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
        let log = bench_log(project);
        let prebuild = |extra: &[&str]| -> anyhow::Result<Sample> {
            let mut args = vec!["prebuild-images"];
            args.extend_from_slice(extra);
            let cmd = xtask(&args)?;
            measure(|| cmd.run_logged(&log))
        };

        r.line("warming up: one prebuild-images so that every image is cached");
        prebuild(&[])?;
        let handoff =
            Handoff::load(project).context("no target/e2e/images.json after prebuild-images")?;
        let specs = build::load_images(project, &Default::default())?.images;
        let engine = handoff.engine;

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
                    let cmd = engine.build(&BuildCmd {
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
            let _ = engine
                .untag(&format!("{}:bench-plain", spec.repository))
                .read();
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
        let log = bench_log(project);
        let run = |args: &[&str]| -> anyhow::Result<()> { xtask(args)?.run_logged(&log) };
        r.line("warming up: prebuild-images, so that every image is cached");
        run(&["prebuild-images"])?;
        let handoff = Handoff::load(project).context("no images.json")?;
        let refs: Vec<String> = handoff.images.iter().map(|i| i.reference.clone()).collect();
        let remove = || {
            let _ = Cmd::new(handoff.engine.program())
                .arg("rmi")
                .args(refs.iter().cloned())
                .read();
        };
        // The time to the first test, from the report of the e2e run just made.
        let e2e = |args: &[&str]| -> anyhow::Result<Duration> {
            run(args)?;
            first_test(&latest_report(project)?)
        };
        let dir = project.e2e_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let zst = dir.join("images.tar.zst");
        let tar = dir.join("images.tar");
        let (zst_s, tar_s) = (zst.display().to_string(), tar.display().to_string());

        let (mut save_z, mut save_n, mut load_z, mut load_n) = (vec![], vec![], vec![], vec![]);
        for i in 0..self.runs {
            r.line(format!("save/load run {}/{}", i + 1, self.runs));
            save_z.push(measure(|| run(&["save-images", "--output", &zst_s]))?);
            save_n.push(measure(|| {
                run(&["save-images", "--compress", "none", "--output", &tar_s])
            })?);
            remove();
            load_z.push(measure(|| run(&["load-images", &zst_s]))?);
            remove();
            load_n.push(measure(|| run(&["load-images", &tar_s]))?);
        }
        let (mut from_archive, mut warm) = (vec![], vec![]);
        for i in 0..self.runs {
            r.line(format!(
                "e2e run {}/{}: --images (images removed first), then warm",
                i + 1,
                self.runs
            ));
            remove();
            from_archive.push(e2e(&["e2e", "--images", &zst_s])?);
            warm.push(e2e(&["e2e"])?);
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

#[derive(clap::Args, Debug)]
pub struct BenchLoopArgs {
    /// Runs of each measurement (at least 5 for the medians the goals are stated in).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The line `bench-loop` appends to the gateway's `main.rs`, run `n`: a kept static, so the
/// binary changes as with a one-line edit (and nothing else does).
fn probe_line(n: usize) -> String {
    // Unique across benchmark runs too, so that no earlier image has this binary.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "\n#[used]\nstatic BENCH_LOOP_PROBE: [u8; 32] = *b\"{:08}{:024}\";\n",
        n % 100_000_000,
        nanos % 10u128.pow(24)
    )
}

impl BenchLoopArgs {
    /// (a) a warm `e2e`; (b) a one-line gateway change to a finished suite, with `dev`
    /// against `e2e`; (c) `e2e --images` (images removed first) to its first test against
    /// a warm `e2e`. Medians, side by side in one go.
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        let log = bench_log(project);
        let exe = std::env::current_exe()?.display().to_string();
        let run = |args: &[&str]| -> anyhow::Result<Duration> {
            let start = Instant::now();
            xtask(args)?.run_logged(&log)?;
            Ok(start.elapsed())
        };
        let main_rs = project.root.join("services/gateway/src/main.rs");
        let original = std::fs::read_to_string(&main_rs)?;
        // Put the source back whatever happens.
        struct Restore<'a>(&'a Path, &'a str);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let _ = std::fs::write(self.0, self.1);
            }
        }
        let _restore = Restore(&main_rs, &original);
        r.line("warming up: a whole e2e, so that everything is compiled and built");
        run(&["e2e"])?;

        let (mut warm, mut warm_first) = (vec![], vec![]);
        let (mut with_e2e, mut with_dev) = (vec![], vec![]);
        let mut change = 0;
        for i in 0..self.runs {
            r.line(format!(
                "run {}/{}: warm e2e, then a change with e2e",
                i + 1,
                self.runs
            ));
            let wall = run(&["e2e"])?;
            let report = latest_report(project)?;
            warm.push(wall);
            warm_first.push(first_test(&report)?);
            change += 1;
            std::fs::write(&main_rs, format!("{original}{}", probe_line(change)))?;
            let wall = run(&["e2e"])?;
            // To a finished suite: the run's wall time less its teardown.
            with_e2e.push(wall.saturating_sub(phase(&latest_report(project)?, "tear down")?));
        }
        std::fs::write(&main_rs, &original)?;

        r.line("dev: the stack up once, then one change per run");
        let dev_log = project.logs_dir().join("bench-dev.log");
        let _ = std::fs::remove_file(&dev_log);
        let dev = duct::cmd(&exe, ["dev"])
            .stdout_path(&dev_log)
            .stderr_path(&dev_log)
            .unchecked()
            .start()?;
        let outcome = (|| -> anyhow::Result<()> {
            wait_for(&dev_log, "] watching ", Duration::from_secs(300))?;
            for i in 0..self.runs {
                change += 1;
                let cycles = count(&dev_log, "] cycle ")?;
                let start = Instant::now();
                std::fs::write(&main_rs, format!("{original}{}", probe_line(change)))?;
                wait_for_count(&dev_log, "] cycle ", cycles + 1, Duration::from_secs(300))?;
                with_dev.push(start.elapsed());
                let last = std::fs::read_to_string(&dev_log)?;
                let line = last
                    .lines()
                    .rfind(|l| l.contains("] cycle "))
                    .unwrap_or("")
                    .to_owned();
                r.line(format!("  dev run {}: {}", i + 1, line));
                anyhow::ensure!(line.contains("suite passed"), "a dev cycle failed: {line}");
            }
            Ok(())
        })();
        // Stop dev as a developer does (Ctrl-C), and let it tear down.
        for pid in dev.pids() {
            let _ = Cmd::new("kill").args(["-INT", &pid.to_string()]).read();
        }
        let _ = dev.wait();
        std::fs::write(&main_rs, &original)?;
        outcome?;

        r.line("e2e --images: the images removed first, then loaded from an archive");
        let handoff = Handoff::load(project).context("no images.json")?;
        let dir = project.e2e_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let archive = dir.join("loop.tar.zst").display().to_string();
        run(&["save-images", "--build", "--output", &archive])?;
        let refs: Vec<String> = handoff.images.iter().map(|i| i.reference.clone()).collect();
        let mut from_archive = vec![];
        for i in 0..self.runs {
            r.line(format!("run {}/{}: e2e --images", i + 1, self.runs));
            let _ = Cmd::new(handoff.engine.program())
                .arg("rmi")
                .args(refs.iter().cloned())
                .read();
            run(&["e2e", "--images", &archive])?;
            from_archive.push(first_test(&latest_report(project)?)?);
        }
        let _ = std::fs::remove_dir_all(&dir);

        let m = |v: &[Duration]| median(v);
        let rows = vec![
            stat_row("(a) warm e2e, wall", &warm),
            stat_row("(a) warm e2e, to the first test", &warm_first),
            stat_row(
                "(b) one-line gateway change to a finished suite: e2e",
                &with_e2e,
            ),
            stat_row(
                "(b) the same with dev (change saved to cycle summary)",
                &with_dev,
            ),
            stat_row("(c) e2e --images, to the first test", &from_archive),
        ];
        r.line(format!(
            "results (medians of {} runs, one go):\n{}\n  dev is {:.1}x faster than e2e for a change; e2e --images reaches its first test in {:.2}x the time of a warm e2e",
            self.runs,
            table(&["measurement", "runs", "median", "min", "max"], &rows),
            m(&with_e2e).as_secs_f64() / m(&with_dev).as_secs_f64().max(0.001),
            m(&from_archive).as_secs_f64() / m(&warm_first).as_secs_f64().max(0.001),
        ));
        Ok(())
    }
}

fn stat_row(name: &str, v: &[Duration]) -> Vec<String> {
    vec![
        name.to_owned(),
        v.len().to_string(),
        secs3(median(v)),
        secs3(*v.iter().min().unwrap_or(&Duration::ZERO)),
        secs3(*v.iter().max().unwrap_or(&Duration::ZERO)),
    ]
}

/// How many lines of a log contain `what`.
fn count(log: &Path, what: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count())
}

fn wait_for(log: &Path, what: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for_count(log, what, 1, timeout)
}

/// Polls a log until `n` lines contain `what`, with a deadline.
fn wait_for_count(log: &Path, what: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while count(log, what)? < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "waited {}s for {what:?} in {}",
            timeout.as_secs(),
            log.display()
        );
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A phase's duration, from a run's `report.json`.
fn phase(report: &Path, name: &str) -> anyhow::Result<Duration> {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    r["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_f64())
        .map(Duration::from_secs_f64)
        .with_context(|| format!("no phase {name:?} in {}", report.display()))
}

/// The newest `report.json` under `target/e2e/runs/`.
pub fn latest_report(project: &Project) -> anyhow::Result<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(project.runs_dir())
        .context("no runs yet")?
        .filter_map(Result::ok)
        .map(|e| e.path().join("report.json"))
        .filter(|p| p.is_file())
        .collect();
    runs.sort();
    runs.pop().context("no run has written a report.json")
}

/// From a run's `report.json`: when the suite started, since the run started.
pub fn first_test(report: &Path) -> anyhow::Result<Duration> {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    r["first_test_s"]
        .as_f64()
        .map(Duration::from_secs_f64)
        .with_context(|| {
            format!(
                "{} has no first_test_s: the suite did not start",
                report.display()
            )
        })
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
    let sampler = Sampler::start();
    let start = Instant::now();
    let result = f();
    let wall = start.elapsed();
    let peak = sampler.peak_between(start, None).unwrap_or(0);
    drop(sampler.stop());
    result?;
    Ok(Sample { wall, peak })
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_to_the_first_test_comes_from_the_report() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        std::fs::write(&report, r#"{"first_test_s": 5.5}"#).unwrap();
        assert_eq!(
            super::first_test(&report).unwrap(),
            std::time::Duration::from_secs_f64(5.5)
        );
        std::fs::write(&report, r#"{"first_test_s": null}"#).unwrap();
        assert!(super::first_test(&report).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3, 1, 2]), 2);
        assert_eq!(super::median(&[4, 1, 3, 2]), 3);
        assert_eq!(super::median::<u32>(&[]), 0);
    }
}
