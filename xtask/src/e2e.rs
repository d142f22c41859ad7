//! `cargo xtask e2e`: doctor, images, stack, readiness, suite, logs, teardown, report.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use serde::Serialize;

use crate::{
    archive,
    build::{self, BuildOptions, Handoff},
    cmd::Cmd,
    doctor,
    engine::Engine,
    images, interrupt,
    manifests::Manifests,
    project::Project,
    ready,
    report::Reporter,
    runtime::{self, kind, podman::PodmanRun},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `podman kube play` on a network of the run's own.
    Podman,
    /// A Kind cluster (provider: the engine, docker or podman).
    Kind,
}

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// Where the stack runs.
    #[arg(long, value_enum, default_value_t = Runtime::Podman)]
    pub runtime: Runtime,
    /// Leave the stack (or the Kind cluster) running and print how to reach and remove it.
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for every service to be ready, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub ready_timeout: u64,
    /// Load the images from this archive (from `cargo xtask save-images`) instead of building.
    #[arg(long, value_name = "ARCHIVE")]
    pub images: Option<PathBuf>,
    /// Pull the images from REGISTRY/PREFIX (pushed by `save-images --push`) instead of building.
    #[arg(long, value_name = "REGISTRY/PREFIX", conflicts_with = "images")]
    pub registry: Option<String>,
    /// With --images: run even when the archive does not match this checkout (loudly warned).
    #[arg(long, requires = "images")]
    pub allow_stale: bool,
    /// Kind: name the cluster [default: e2e-<run>, unique per run].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Kind: use this existing cluster (made by an earlier `--runtime kind --keep`); only the
    /// run's namespace is created and removed.
    #[arg(long, value_name = "NAME", conflicts_with = "cluster_name")]
    pub reuse_cluster: Option<String>,
    /// Print the exact commands of the whole run without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove what earlier runs left (every run that is not in progress, or the one named),
    /// then exit.
    #[arg(long, value_name = "RUN", num_args = 0..=1, default_missing_value = "")]
    pub down: Option<String>,
    #[command(flatten)]
    pub build: BuildOptions,
    /// Arguments for the test harness, after `--` (e.g. `-- metrics` to run matching tests).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// `target/e2e/runs/<id>/report.json`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub runtime: Runtime,
    pub passed: bool,
    pub error: Option<String>,
    /// Seconds per phase, in order.
    pub phases: Vec<(String, f64)>,
    pub images_cached: usize,
    pub images_built: usize,
    pub bytes_loaded: u64,
}

impl E2eArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        if let Some(run) = &self.down {
            return runtime::podman::down(
                project,
                &r,
                Some(run.as_str()).filter(|s| !s.is_empty()),
            );
        }
        let engine = match (self.runtime, self.build.engine) {
            (Runtime::Podman, Some(Engine::Docker)) => anyhow::bail!(
                "`--runtime podman` runs the stack with `podman kube play`; --engine docker goes with --runtime kind.\n  \
                 fix: drop --engine, or add --runtime kind"
            ),
            (_, Some(e)) => e,
            (Runtime::Podman, None) => Engine::Podman,
            (Runtime::Kind, None) => Engine::detect(None)?,
        };
        let opts = BuildOptions {
            engine: Some(engine),
            ..self.build.clone()
        };
        let manifests = Manifests::load(&project.manifests_dir())?;
        let id = self
            .cluster_name
            .clone()
            .map_or_else(runtime::run_id, |n| format!("{}-{n}", runtime::run_id()));
        if self.dry_run {
            return self.dry_run(project, &r, &opts, &manifests, &id);
        }
        let needs = doctor::Needs {
            engine: Some(engine),
            kind: self.runtime == Runtime::Kind,
            archive: self.images.clone(),
        };
        doctor::require(project, &r, &opts, &needs)?;

        let handoff = self.images_for_run(project, &r, &opts)?;
        let built = handoff.built_now.len();
        let cached = handoff.images.len().saturating_sub(built);
        interrupt::check()?;

        let (outcome, dir) = match self.runtime {
            Runtime::Podman => self.run_podman(project, &r, &manifests, &handoff, id.clone()),
            Runtime::Kind => self.run_kind(project, &r, &manifests, &handoff, engine, id.clone()),
        };
        r.line(format!("phases:\n{}", r.summary()));
        let report = RunReport {
            run: id,
            runtime: self.runtime,
            passed: outcome.is_ok(),
            error: outcome.as_ref().err().map(|e| format!("{e:#}")),
            phases: r.phase_times(),
            images_cached: cached,
            images_built: built,
            bytes_loaded: self
                .images
                .as_ref()
                .and_then(|a| std::fs::metadata(a).ok())
                .map_or(0, |m| m.len()),
        };
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
        r.line(format!(
            "report: {}",
            project.display(&dir.join("report.json"))
        ));
        if outcome.is_ok() {
            r.line("E2E passed");
        }
        outcome
    }

    /// The images, built, loaded or pulled; and the E2E suite compiled meanwhile. Image builds
    /// wait on podman and apt more than on the CPU, so the suite compiles while they run,
    /// with the memory of its rustc jobs taken out of the builds' budget.
    fn images_for_run(
        &self,
        project: &Project,
        r: &Reporter,
        opts: &BuildOptions,
    ) -> anyhow::Result<Handoff> {
        let compile_suite = |jobs: usize| {
            r.phase("compile E2E suite", |r| {
                let cmd = suite(project).args(["--no-run", "-j", &jobs.to_string()]);
                r.command(&cmd);
                cmd.run_logged(&project.logs_dir().join("cargo-test-build.log"))
                    .context("compiling the E2E suite")
            })
        };
        let cpus = crate::memory::cpus();
        let handoff = match (&self.images, &self.registry) {
            (Some(archive), _) => archive::load(project, r, archive, self.allow_stale, opts)?,
            (None, Some(prefix)) => archive::pull(project, r, prefix, opts)?,
            (None, None) => {
                let mut prepared = build::prepare(project, r, opts, &[], None)?;
                if prepared
                    .plan
                    .iter()
                    .all(|i| matches!(i.action, build::Action::Cached { .. }))
                {
                    build::finish(project, r, opts, prepared)?
                } else {
                    let jobs = crate::memory::cargo_jobs(prepared.budget.bytes / 2, cpus);
                    let reserved = jobs as u64 * crate::memory::RUSTC_JOB;
                    let biggest = prepared
                        .plan
                        .iter()
                        .map(|i| i.spec.memory)
                        .max()
                        .unwrap_or(0);
                    // Never so much that the largest image no longer fits.
                    let reserved = reserved.min(prepared.budget.bytes.saturating_sub(biggest));
                    prepared.budget.bytes -= reserved;
                    prepared.budget.source = format!(
                        "{}, less {} for the E2E suite compiling meanwhile",
                        prepared.budget.source,
                        crate::memory::human(reserved)
                    );
                    r.line(format!(
                        "the E2E suite compiles (cargo -j {jobs}) while the images build: {} of the budget is kept for it",
                        crate::memory::human(reserved)
                    ));
                    let (handoff, compiled) = std::thread::scope(|s| {
                        let compiling = s.spawn(|| compile_suite(jobs));
                        let handoff = build::finish(project, r, opts, prepared);
                        (handoff, compiling.join().expect("no panic"))
                    });
                    compiled?;
                    return handoff;
                }
            }
        };
        compile_suite(crate::memory::cargo_jobs(opts.budget()?.bytes, cpus))?;
        Ok(handoff)
    }

    fn run_podman(
        &self,
        project: &Project,
        r: &Reporter,
        manifests: &Manifests,
        handoff: &Handoff,
        id: String,
    ) -> (anyhow::Result<()>, PathBuf) {
        let stack =
            match manifests.render_podman(&handoff.pinned(), &runtime::suffix(&id), free_port) {
                Ok(s) => s,
                Err(e) => return (Err(e), project.runs_dir().join(&id)),
            };
        let mut run = PodmanRun::new(project, id, stack);
        r.line(format!(
            "run {} (network {}, files in {})",
            run.id,
            run.network(),
            project.display(&run.dir)
        ));
        let outcome = (|| {
            r.phase("deploy", |r| run.up(r))?;
            r.phase("wait until ready", |r| {
                ready::wait_ready(&run, Duration::from_secs(self.ready_timeout), r)
            })?;
            r.phase("run E2E suite", |r| self.run_suite(project, r, run.urls()))
        })();
        if outcome.is_err() {
            match run.save_logs() {
                Ok(dir) => r.line(format!(
                    "every container's log is saved in {}",
                    project.display(&dir)
                )),
                Err(e) => r.line(format!("could not save the containers' logs: {e:#}")),
            }
        }
        let teardown = if self.keep {
            r.line(run.keep_instructions());
            Ok(())
        } else {
            r.phase("tear down", |r| run.down(r))
        };
        (combine(outcome, teardown), run.dir.clone())
    }

    fn kind_run(
        &self,
        project: &Project,
        engine: Engine,
        manifests: &Manifests,
        handoff: &Handoff,
        id: &str,
    ) -> anyhow::Result<(kind::KindRun, String, String)> {
        let dir = project.runs_dir().join(id);
        let suffix = runtime::suffix(id);
        let (cluster, reuse) = match (&self.reuse_cluster, &self.cluster_name) {
            (Some(name), _) => (name.clone(), true),
            (None, Some(name)) => (name.clone(), false),
            (None, None) => (format!("e2e-{suffix}"), false),
        };
        let (stack_yaml, node_ports) = kind::render_manifests(manifests, &handoff.pinned())?;
        let (config_yaml, ports) = if reuse {
            let recorded = project
                .e2e_dir()
                .join("clusters")
                .join(format!("{cluster}.json"));
            let ports: BTreeMap<u16, u16> = serde_json::from_slice(&std::fs::read(&recorded).with_context(|| {
                format!(
                    "cluster {cluster} was not made by `cargo xtask e2e --runtime kind --keep` ({} is missing), so its port mappings are unknown",
                    project.display(&recorded)
                )
            })?)?;
            (String::new(), ports)
        } else {
            let template =
                std::fs::read_to_string(project.root.join("test/e2e/kind-cluster.yaml"))?;
            kind::render_cluster_config(&template, &cluster, free_port)?
        };
        let run = kind::KindRun {
            cluster,
            reuse,
            namespace: format!("e2e-{suffix}"),
            provider: engine,
            archive_tar: dir.join("images.tar"),
            archive_source: self.images.clone(),
            dir,
            ports,
            node_ports,
            references: kind::references(handoff),
        };
        Ok((run, config_yaml, stack_yaml))
    }

    fn run_kind(
        &self,
        project: &Project,
        r: &Reporter,
        manifests: &Manifests,
        handoff: &Handoff,
        engine: Engine,
        id: String,
    ) -> (anyhow::Result<()>, PathBuf) {
        let (run, config_yaml, stack_yaml) =
            match self.kind_run(project, engine, manifests, handoff, &id) {
                Ok(x) => x,
                Err(e) => return (Err(e), project.runs_dir().join(&id)),
            };
        let log = project.logs_dir().join(format!("run-{id}.log"));
        let mut created = false;
        let state = runtime::podman::RunState {
            id: id.clone(),
            pid: std::process::id(),
            kind: Some(run.state()),
            ..Default::default()
        };
        let outcome = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(&run.dir)?;
            std::fs::write(run.stack_file(), &stack_yaml)?;
            r.phase("image archive for kind", |r| {
                // `kind load image-archive` reads a plain tar: unpack the archive, or save one.
                let make = run.make_tar();
                r.command(&make);
                make.run_logged(&log)
            })?;
            // Recorded before the cluster exists, so `e2e --down` finds it after a crash.
            state.save(&run.dir)?;
            if !run.reuse {
                r.phase("create cluster", |r| {
                    std::fs::write(run.config_file(), &config_yaml)?;
                    let create = run.create_cluster();
                    r.command(&create);
                    created = true;
                    create
                        .run_logged(&log)
                        .context("creating the Kind cluster")?;
                    if self.keep {
                        let dir = project.e2e_dir().join("clusters");
                        std::fs::create_dir_all(&dir)?;
                        std::fs::write(
                            dir.join(format!("{}.json", run.cluster)),
                            serde_json::to_vec(&run.ports)?,
                        )?;
                    }
                    Ok(())
                })?;
            }
            r.phase("load images", |r| kind::load_images(&run, r, &log))?;
            r.phase("deploy", |r| {
                for c in [run.create_namespace(), run.apply()] {
                    r.command(&c);
                    c.run_logged(&log)?;
                }
                Ok(())
            })?;
            r.phase("wait until ready", |r| {
                kind::wait_ready(&run, Duration::from_secs(self.ready_timeout), r)
            })?;
            r.phase("run E2E suite", |r| self.run_suite(project, r, run.urls()))
        })();
        if outcome.is_err() && (created || run.reuse) {
            let bundle = run.bundle_dir();
            let _ = std::fs::create_dir_all(&bundle);
            let pods: Vec<String> = manifests
                .docs
                .iter()
                .filter(|d| d["kind"] == "Pod")
                .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            for (file, c) in run.bundle(&pods) {
                let text = c
                    .survives_interrupt()
                    .read()
                    .unwrap_or_else(|e| format!("{e:#}"));
                let _ = std::fs::write(bundle.join(file), text);
            }
            r.line(format!("failure bundle: {}", project.display(&bundle)));
        }
        let teardown = if self.keep {
            r.line(format!(
                "the cluster is left running: kubectl --context kind-{} --namespace {} get pods",
                run.cluster, run.namespace
            ));
            for (k, v) in run.urls() {
                r.line(format!("  {k}={v}"));
            }
            Ok(())
        } else if created || run.reuse {
            r.phase("tear down", |r| {
                runtime::podman::teardown(&run.dir, &state, &log, r)
            })
        } else {
            Ok(())
        };
        let _ = std::fs::remove_file(&run.archive_tar);
        (combine(outcome, teardown), run.dir.clone())
    }

    fn run_suite(
        &self,
        project: &Project,
        r: &Reporter,
        urls: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut cmd = suite(project);
        for (var, url) in urls {
            cmd = cmd.env(var, url);
        }
        let cmd = cmd.arg("--").args(self.test_args.iter().cloned());
        r.command(&cmd);
        cmd.run_inherit().context("the E2E suite failed")
    }

    /// Prints every command the run would run, in order, and runs none of them.
    fn dry_run(
        &self,
        project: &Project,
        r: &Reporter,
        opts: &BuildOptions,
        manifests: &Manifests,
        id: &str,
    ) -> anyhow::Result<()> {
        let engine = opts.engine.unwrap_or(Engine::Podman);
        let mut lines: Vec<String> = Vec::new();
        let handoff = match (&self.images, &self.registry) {
            (Some(a), _) => {
                let m = archive::verify(a)?;
                lines.push(format!(
                    "{}  # after verifying the archive's SHA-256",
                    archive::load_cmd(engine, a, m.compression)
                ));
                Handoff {
                    engine,
                    platform: m.platform,
                    base_image: m.base_image,
                    base_image_id: m.base_image_id,
                    images: m.images,
                    built_now: vec![],
                }
            }
            (None, registry) => {
                let images = build::load_images(project, opts)?;
                let binaries: Vec<&str> = images
                    .images
                    .iter()
                    .filter_map(images::ImageSpec::binary)
                    .collect();
                let jobs = crate::memory::cargo_jobs(opts.budget()?.bytes, crate::memory::cpus());
                lines.push(build::cargo_build(project, &binaries, jobs).to_string());
                let prepared = build::prepare_with(project, r, opts, &[], None, false).context(
                    "a dry run plans with the binaries on disk: run `cargo build` once first",
                )?;
                for item in &prepared.plan {
                    match (&item.action, registry) {
                        (build::Action::Cached { .. }, _) => lines.push(format!(
                            "# {} is cached: {}",
                            item.spec.name, item.reference
                        )),
                        (build::Action::Build { .. }, Some(prefix)) => lines.push(format!(
                            "{engine_name} pull {prefix}/{}:{}  # then tagged {}",
                            item.spec.name,
                            crate::fingerprint::tag(&item.fingerprint),
                            item.reference,
                            engine_name = engine.program()
                        )),
                        (build::Action::Build { reason }, None) => lines.push(format!(
                            "{}  # {reason}",
                            build::build_cmd_for(project, engine, item)
                        )),
                    }
                }
                Handoff {
                    engine,
                    platform: prepared.env.platform.clone(),
                    base_image: prepared.env.base_image.clone(),
                    base_image_id: prepared.env.base_image_id.clone(),
                    images: prepared
                        .plan
                        .iter()
                        .map(|i| i.record(String::new(), 0))
                        .collect(),
                    built_now: vec![],
                }
            }
        };
        lines.push(suite(project).arg("--no-run").to_string());
        match self.runtime {
            Runtime::Podman => {
                let stack =
                    manifests.render_podman(&handoff.pinned(), &runtime::suffix(id), free_port)?;
                let run = PodmanRun::new(project, id.to_owned(), stack);
                lines.extend(run.plan_up().iter().map(ToString::to_string));
                lines.push(
                    "# readiness: each container's readinessProbe, polled (podman exec / HTTP GET)"
                        .into(),
                );
                let mut s = suite(project);
                for (k, v) in run.urls() {
                    s = s.env(k, v);
                }
                lines.push(s.arg("--").args(self.test_args.iter().cloned()).to_string());
                lines.extend(
                    run.plan_down().iter().map(|c| {
                        format!("{c}{}", if self.keep { "  # skipped: --keep" } else { "" })
                    }),
                );
            }
            Runtime::Kind => {
                let (run, _, _) = self.kind_run(project, engine, manifests, &handoff, id)?;
                lines.extend(
                    run.plan(
                        &suite(project)
                            .arg("--")
                            .args(self.test_args.iter().cloned()),
                    ),
                );
            }
        }
        println!("{}", lines.join("\n"));
        Ok(())
    }
}

fn combine(outcome: anyhow::Result<()>, teardown: anyhow::Result<()>) -> anyhow::Result<()> {
    match (outcome, teardown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e.context("E2E failed")),
        (Ok(()), Err(t)) => Err(t.context("E2E passed but the teardown failed")),
        (Err(e), Err(t)) => {
            Err(e.context(format!("E2E failed, and the teardown failed too: {t:#}")))
        }
    }
}

/// `cargo test` of the E2E suite crate.
fn suite(project: &Project) -> Cmd {
    Cmd::new(Project::cargo())
        .args(["test", "--locked", "-p", "e2e-suite", "--test", "e2e"])
        .cwd(&project.root)
}

/// A port that is free on loopback now (the engine binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
