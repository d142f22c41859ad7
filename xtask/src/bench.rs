//! `cargo xtask bench <images|archive|loop>`: what the pipeline buys, side by side in one go,
//! as medians of several runs.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use xshell::cmd;

use crate::memory::{self, human};
use crate::report::{median, phase, table, Reporter, RunReport};
use crate::sampler::Sampler;
use crate::{
    build, cmd::Cmd, engine::BuildCmd, engine_images::EngineImages, images, project::Project,
};

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// No-op `prebuild-images` against plain `podman build`s (layer cache), and cold builds one
    /// at a time against all at once: wall time and peak memory above the level before.
    Images {
        /// Runs of each measurement; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Runs of the cold builds (each takes tens of seconds).
        #[arg(long, default_value_t = 3)]
        cold_runs: usize,
        /// Skip the cold builds.
        #[arg(long)]
        no_cold: bool,
    },
    /// Archive against image sizes, save and load with and without zstd, and `e2e --images`
    /// (images removed first) to its first test against a warm `e2e`.
    Archive {
        /// Runs of each measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// (a) warm `e2e`; (b) a one-line gateway change to a finished suite, `dev` against `e2e`;
    /// (c) `e2e --images` (images removed first) to its first test. Always restores
    /// `services/gateway/src/main.rs`.
    Loop {
        /// Runs of each measurement (at least 5 for the medians the goals are stated in).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// A stack that grows: the shipped manifests plus copies of one pod, up to each size of
    /// `--pods`; warm `e2e` of each (wall, deploy, readiness, tear down) and the wall's growth
    /// per added pod. The stacks are written to target/e2e/bench/scale-N (`E2E_MANIFESTS`).
    Scale {
        /// Stack sizes, in pods.
        #[arg(long, value_delimiter = ',', default_value = "4,10,25,50")]
        pods: Vec<usize>,
        /// The pod that is copied.
        #[arg(long, default_value = "gateway")]
        copy: String,
        /// Runs of each size; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

impl Bench {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let bencher = Bencher { project, reporter: Reporter::new() };
        match self {
            Bench::Images { runs, cold_runs, no_cold } => bencher.images(runs, cold_runs, no_cold),
            Bench::Archive { runs } => bencher.archive(runs),
            Bench::Loop { runs } => bencher.dev_loop(runs),
            Bench::Scale { pods, copy, runs } => bencher.scale(&pods, &copy, runs),
        }
    }
}

/// One measurement: a time and, for a whole command, the peak memory above the level before.
struct Sample {
    time: Duration,
    peak: Option<u64>,
}

impl From<Duration> for Sample {
    fn from(time: Duration) -> Sample {
        Sample { time, peak: None }
    }
}

struct Bencher<'a> {
    project: &'a Project,
    reporter: Reporter,
}

impl Bencher<'_> {
    /// `cargo xtask ARGS...` as this very binary, its output in the benchmark's log.
    fn xtask(&self, args: &[&str]) -> anyhow::Result<Sample> {
        self.xtask_with(args, None)
    }

    /// [`Self::xtask`], with the stack of the manifests in `manifests` when given.
    fn xtask_with(&self, args: &[&str], manifests: Option<&Path>) -> anyhow::Result<Sample> {
        let mut cmd =
            Cmd::new(std::env::current_exe()?.display().to_string()).args(args.iter().copied());
        if let Some(dir) = manifests {
            cmd = cmd.env("E2E_MANIFESTS", dir.display().to_string());
        }
        measure(|| cmd.run_logged(&self.project.logs_dir().join("bench.log")))
    }

    fn e2e(&self, args: &[&str]) -> anyhow::Result<(Sample, RunReport)> {
        let sample = self.xtask(&[&["e2e"], args].concat())?;
        Ok((sample, RunReport::latest(self.project)?))
    }

    /// The time to the first test of `e2e --images ARCHIVE`, the images removed first.
    fn first_test_loaded(
        &self,
        engine_images: &EngineImages,
        archive: &str,
    ) -> anyhow::Result<Sample> {
        remove_images(self.project, engine_images)?;
        Ok(self.e2e(&["--images", archive])?.1.first_test()?.into())
    }

    /// `prebuild-images`, so that every image is cached; its images record.
    fn warm_up(&self) -> anyhow::Result<EngineImages> {
        self.reporter.line("warming up: one prebuild-images so that every image is cached");
        self.xtask(&["prebuild-images"])?;
        EngineImages::load(self.project).context("no target/e2e/images.json after prebuild-images")
    }

    /// `f` `runs` times, each run announced: its `K` measurements, each as a series of `runs`.
    fn repeat<const K: usize>(
        &self,
        runs: usize,
        what: &str,
        mut f: impl FnMut() -> anyhow::Result<[Sample; K]>,
    ) -> anyhow::Result<[Vec<Sample>; K]> {
        let mut series = [(); K].map(|()| Vec::new());
        for i in 1..=runs {
            self.reporter.line(format!("{what}: run {i}/{runs}"));
            for (samples, sample) in series.iter_mut().zip(f()?) {
                samples.push(sample);
            }
        }
        Ok(series)
    }

    fn results(&self, title: &str, rows: &[(impl AsRef<str>, Vec<Sample>)], note: &str) {
        let header = ["measurement", "runs", "median", "min", "max", "median peak memory"];
        let rows: Vec<_> = rows.iter().map(|(name, s)| row(name.as_ref(), s)).collect();
        self.reporter.line(format!("results ({title}):\n{}\n  {note}", table(&header, &rows)));
    }

    fn images(&self, runs: usize, cold_runs: usize, no_cold: bool) -> anyhow::Result<()> {
        let project = self.project;
        let engine_images = self.warm_up()?;
        let specs = build::load_images(project, &Default::default(), None)?.images;
        // Plain builds: the same Dockerfiles, contexts, caps and arguments, under tags of their own.
        let tag = |spec: &images::ImageSpec| format!("{}:bench-plain", spec.repository);
        let plain_one = |spec: &images::ImageSpec| {
            let context = match &spec.context {
                images::BuildContext::Dir(dir) => project.root.join(dir),
                images::BuildContext::Binary(_) => project.e2e_dir.join("context").join(&spec.name),
            };
            let cmd = engine_images.engine.build(&BuildCmd {
                reference: tag(spec),
                dockerfile: &project.root.join(&spec.dockerfile),
                context: &context,
                memory: Some(images::podman_size(spec.memory)),
                build_args: spec.build_args.clone(),
                labels: Default::default(),
                no_cache: false,
            });
            cmd.run_logged(&project.logs_dir().join("bench-plain.log"))
        };
        let plain = || measure(|| specs.iter().try_for_each(plain_one));
        plain()?; // warm the layer cache for the plain builds too
        let [noop, plains] =
            self.repeat(runs, "no-op", || Ok([self.xtask(&["prebuild-images"])?, plain()?]))?;
        let speedup = ratio(&plains, &noop);
        let mut note =
            format!("no-op prebuild-images is {speedup:.1}x faster than the plain builds");
        let mut rows = vec![
            ("no-op prebuild-images (all cached)".to_owned(), noop),
            ("plain podman build, layer cache".to_owned(), plains),
        ];
        if !no_cold {
            let all_jobs = specs.len().to_string();
            let what = "cold (no layer cache): one at a time, then all at once";
            let cold = |jobs: &str| self.xtask(&["prebuild-images", "--force", "--jobs", jobs]);
            let [one, all] = self.repeat(cold_runs, what, || Ok([cold("1")?, cold(&all_jobs)?]))?;
            let worst = one.iter().chain(&all).filter_map(|s| s.peak).max().unwrap_or(0);
            let caps = specs.iter().map(|s| s.memory).sum();
            let budget = memory::read()?.bytes;
            note += &format!(
                "\n  peak memory of any cold run: {} (sum of the images' caps: {}; default budget now: {})",
                human(worst),
                human(caps),
                human(budget)
            );
            rows.push(("cold, one at a time (--jobs 1)".to_owned(), one));
            rows.push((format!("cold, all at once (--jobs {all_jobs})"), all));
        }
        for spec in &specs {
            let _ = engine_images.engine.untag(&tag(spec)).read();
        }
        self.results(&format!("{} images, medians", engine_images.images.len()), &rows, &note);
        Ok(())
    }

    fn archive(&self, runs: usize) -> anyhow::Result<()> {
        let engine_images = self.warm_up()?;
        let dir = self.project.e2e_dir.join("bench");
        std::fs::create_dir_all(&dir)?;
        let zst = dir.join("images.tar.zst");
        let tar = dir.join("images.tar");
        let zst_s = zst.display().to_string();
        let tar_s = tar.display().to_string();
        let load = |archive: &str| {
            remove_images(self.project, &engine_images)?;
            self.xtask(&["load-images", archive])
        };
        let [save_z, save_n, load_z, load_n] = self.repeat(runs, "save/load", || {
            let save_z = self.xtask(&["save-images", "--output", &zst_s])?;
            let save_n = self.xtask(&["save-images", "--compress", "none", "--output", &tar_s])?;
            Ok([save_z, save_n, load(&zst_s)?, load(&tar_s)?])
        })?;
        let what = "e2e --images (images removed first), then warm e2e";
        let [from_archive, warm] = self.repeat(runs, what, || {
            let loaded = self.first_test_loaded(&engine_images, &zst_s)?;
            Ok([loaded, self.e2e(&[])?.1.first_test()?.into()])
        })?;
        let size = |p: &Path| human(std::fs::metadata(p).map_or(0, |m| m.len()));
        let count = engine_images.images.len();
        let sum = engine_images.images.iter().map(|i| i.size).sum();
        let note = format!(
            "sizes: the {count} images together {}; archive with zstd {}, without {}",
            human(sum),
            size(&zst),
            size(&tar)
        );
        let _ = std::fs::remove_dir_all(&dir);
        let rows = [
            ("save-images, zstd", save_z),
            ("save-images, no compression", save_n),
            ("load-images, zstd (images removed first)", load_z),
            ("load-images, no compression (images removed first)", load_n),
            ("e2e --images, to the first test", from_archive),
            ("warm e2e, to the first test", warm),
        ];
        self.results(&format!("medians of {runs} runs"), &rows, &note);
        Ok(())
    }

    fn dev_loop(&self, runs: usize) -> anyhow::Result<()> {
        let reporter = &self.reporter;
        let main_rs = self.project.root.join("services/gateway/src/main.rs");
        let original = std::fs::read_to_string(&main_rs)?;
        // Put the source back whatever happens.
        struct Restore<'a>(&'a Path, &'a str);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let _ = std::fs::write(self.0, self.1);
            }
        }
        let _restore = Restore(&main_rs, &original);
        // A kept static, unique across runs: only the binary changes, and no earlier image has it.
        let change = || -> anyhow::Result<()> {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos();
            let probe = format!("static BENCH_LOOP_PROBE: u128 = {nanos};");
            Ok(std::fs::write(&main_rs, format!("{original}\n#[used]\n{probe}\n"))?)
        };
        reporter.line("warming up: a whole e2e, so that everything is compiled and built");
        self.xtask(&["e2e"])?;
        let [warm, warm_first, with_e2e] =
            self.repeat(runs, "warm e2e, then a change with e2e", || {
                let (warm, report) = self.e2e(&[])?;
                let first = report.first_test()?;
                change()?;
                let (changed, report) = self.e2e(&[])?;
                // To a finished suite: the run's wall time less its teardown.
                let (_, tear_down) = (report.phases.iter().find(|(n, _)| n == phase::TEAR_DOWN))
                    .context("the run's report has no phase \"tear down\"")?;
                let to_suite = changed.time.saturating_sub(Duration::from_secs_f64(*tear_down));
                Ok([warm, first.into(), to_suite.into()])
            })?;
        std::fs::write(&main_rs, &original)?;

        reporter.line("dev: the stack up once, then one change per run");
        let log = self.project.logs_dir().join("bench-dev.log");
        let _ = std::fs::remove_file(&log);
        let dev = duct::cmd(std::env::current_exe()?, ["dev"]).unchecked();
        let dev = dev.stdout_path(&log).stderr_path(&log).start()?;
        let with_dev = wait_for(&log, "] watching ", 1).and_then(|_| {
            self.repeat(runs, "dev, a change", || {
                let cycles = wait_for(&log, "] cycle ", 0)?.len();
                let start = Instant::now();
                change()?;
                let line = wait_for(&log, "] cycle ", cycles + 1)?.pop().unwrap_or_default();
                let took = start.elapsed();
                reporter.line(format!("  {line}"));
                anyhow::ensure!(line.contains("suite passed"), "a dev cycle failed: {line}");
                Ok([took.into()])
            })
        });
        // Stop dev as a developer does (Ctrl-C), and let it tear down.
        let sh = self.project.shell()?;
        let pids: Vec<String> = dev.pids().iter().map(u32::to_string).collect();
        let _ = cmd!(sh, "kill -INT {pids...}").quiet().run();
        let _ = dev.wait();
        std::fs::write(&main_rs, &original)?;
        let [with_dev] = with_dev?;

        reporter.line("e2e --images: the images removed first, then loaded from an archive");
        let engine_images = EngineImages::load(self.project).context("no images.json")?;
        let dir = self.project.e2e_dir.join("bench");
        std::fs::create_dir_all(&dir)?;
        let archive = dir.join("loop.tar.zst").display().to_string();
        self.xtask(&["save-images", "--build", "--output", &archive])?;
        let [from_archive] = self.repeat(runs, "e2e --images", || {
            Ok([self.first_test_loaded(&engine_images, &archive)?])
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        let note = format!(
            "dev is {:.1}x faster than e2e for a change; e2e --images reaches its first test in {:.2}x the time of a warm e2e",
            ratio(&with_e2e, &with_dev),
            ratio(&from_archive, &warm_first),
        );
        let rows = [
            ("(a) warm e2e, wall", warm),
            ("(a) warm e2e, to the first test", warm_first),
            ("(b) one-line gateway change to a finished suite: e2e", with_e2e),
            ("(b) the same with dev (change saved to cycle summary)", with_dev),
            ("(c) e2e --images, to the first test", from_archive),
        ];
        self.results(&format!("medians of {runs} runs, one go"), &rows, &note);
        Ok(())
    }
}

impl Bencher<'_> {
    fn scale(&self, sizes: &[usize], copy: &str, runs: usize) -> anyhow::Result<()> {
        let project = self.project;
        self.warm_up()?;
        let shipped = crate::manifests::Manifests::load(&project.shipped_manifests())?;
        let base = shipped.pods().len();
        anyhow::ensure!(
            sizes.iter().all(|&n| n >= base),
            "every size of --pods must be at least the {base} pods the manifests have"
        );
        let mut rows = Vec::new();
        for &pods in sizes {
            let dir = project.e2e_dir.join("bench").join(format!("scale-{pods}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            for entry in std::fs::read_dir(project.shipped_manifests())? {
                let path = entry?.path();
                std::fs::copy(&path, dir.join(path.file_name().context("a file name")?))?;
            }
            std::fs::write(dir.join("90-copies.yaml"), shipped.copies_of(copy, pods - base)?)?;
            self.reporter.line(format!("{pods} pods: one warm-up run, then {runs}"));
            self.xtask_with(&["e2e"], Some(&dir))?;
            let [wall, deploy, ready, down] = self.repeat(runs, &format!("{pods} pods"), || {
                let wall = self.xtask_with(&["e2e"], Some(&dir))?;
                let report = RunReport::latest(project)?;
                let took = |name: &str| -> Sample {
                    let recorded = report.phases.iter().find(|(phase_name, _)| phase_name == name);
                    let secs = recorded.map_or(0.0, |(_, secs)| *secs);
                    Duration::from_secs_f64(secs).into()
                };
                Ok([wall, took("deploy"), took("wait until ready"), took("tear down")])
            })?;
            rows.push((pods, wall, deploy, ready, down));
        }
        let first = rows.first().map(|(pods, wall, ..)| (*pods, median(&times(wall))));
        let mut table_rows = Vec::new();
        for (pods, wall, deploy, ready, down) in &rows {
            let baseline = first.filter(|(first_pods, _)| pods > first_pods);
            let per_pod = baseline.map_or("-".to_owned(), |(first_pods, first_wall)| {
                let grown = median(&times(wall)).as_secs_f64() - first_wall.as_secs_f64();
                format!("{:.3}s", grown / (pods - first_pods) as f64)
            });
            let median_secs =
                |samples: &[Sample]| format!("{:.2}s", median(&times(samples)).as_secs_f64());
            table_rows.push(vec![
                pods.to_string(),
                median_secs(wall),
                median_secs(deploy),
                median_secs(ready),
                median_secs(down),
                per_pod,
            ]);
        }
        let header =
            ["pods", "wall", "deploy", "wait until ready", "tear down", "wall per added pod"];
        let title = format!("warm e2e, medians of {runs} runs, copies of {copy}");
        self.reporter.line(format!("results ({title}):\n{}", table(&header, &table_rows)));
        Ok(())
    }
}

fn remove_images(project: &Project, engine_images: &EngineImages) -> anyhow::Result<()> {
    let sh = project.shell()?;
    let engine = engine_images.engine.program();
    let refs = engine_images.images.iter().map(|i| &i.reference);
    let _ = cmd!(sh, "{engine} rmi {refs...}").quiet().ignore_stdout().ignore_stderr().run();
    Ok(())
}

/// The lines of a log that contain `what`, once there are at least `count` (polled up to 300 s).
fn wait_for(log: &Path, what: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let done = crate::poll::until(Duration::from_secs(300), Duration::from_millis(20), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        lines = text.lines().filter(|l| l.contains(what)).map(Into::into).collect();
        Ok(lines.len() >= count)
    })?;
    anyhow::ensure!(done, "waited 300s for {what:?} in {}", log.display());
    Ok(lines)
}

/// Wall time of `f`, and the machine's peak memory in use above the level before it.
fn measure(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Sample> {
    let sampler = Sampler::start();
    let start = Instant::now();
    let result = f();
    let time = start.elapsed();
    let peak = Some(sampler.peak_between(start, None).unwrap_or(0));
    let _ = sampler.stop();
    result.map(|()| Sample { time, peak })
}

fn times(samples: &[Sample]) -> Vec<Duration> {
    samples.iter().map(|s| s.time).collect()
}

/// A row: runs; median, min, max time (ms precision under 10 s); median peak memory or `-`.
fn row(name: &str, samples: &[Sample]) -> Vec<String> {
    let durations = times(samples);
    let min = durations.iter().min().copied();
    let max = durations.iter().max().copied();
    let stats = [median(&durations), min.unwrap_or_default(), max.unwrap_or_default()].map(|d| {
        let precision = if d < Duration::from_secs(10) { 3 } else { 1 };
        format!("{:.precision$}s", d.as_secs_f64())
    });
    let peaks: Vec<u64> = samples.iter().filter_map(|s| s.peak).collect();
    let peak = if peaks.is_empty() { "-".into() } else { human(median(&peaks)) };
    [name.to_owned(), samples.len().to_string()].into_iter().chain(stats).chain([peak]).collect()
}

/// The median time of `a` over that of `b`.
fn ratio(a: &[Sample], b: &[Sample]) -> f64 {
    median(&times(a)).as_secs_f64() / median(&times(b)).as_secs_f64().max(0.001)
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_to_the_first_test_comes_from_the_report() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let first_test = || super::RunReport::read(&report).unwrap().first_test();
        std::fs::write(&report, r#"{"first_test_s": 5.5}"#).unwrap();
        assert_eq!(first_test().unwrap(), std::time::Duration::from_secs_f64(5.5));
        std::fs::write(&report, r#"{"first_test_s": null}"#).unwrap();
        assert!(first_test().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3, 1, 2]), 2);
        assert_eq!(super::median(&[4, 1, 3, 2]), 3);
        assert_eq!(super::median::<u32>(&[]), 0);
    }

    #[test]
    fn rows_have_the_median_min_max_and_the_peak_when_measured() {
        let sample = |ms, peak| super::Sample { time: std::time::Duration::from_millis(ms), peak };
        let row = super::row(
            "x",
            &[sample(1500, Some(3 << 20)), sample(12_000, None), sample(900, Some(1 << 20))],
        );
        assert_eq!(row, ["x", "3", "1.500s", "0.900s", "12.0s", "3 MiB"]);
        assert_eq!(super::row("y", &[sample(2, None)])[5], "-");
    }
}
