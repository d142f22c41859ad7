//! `cargo xtask e2e`: images, stack, readiness, suite, logs, teardown.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;

use crate::{
    archive,
    build::{self, BuildOptions},
    engine::Engine,
    cmd::Cmd,
    manifests::Manifests,
    project::Project,
    ready,
    report::Reporter,
    runtime::{self, podman::PodmanRun},
};

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// Leave the stack running afterwards and print how to reach it and how to remove it.
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
    #[command(flatten)]
    pub build: BuildOptions,
    /// Arguments for the test harness, after `--` (e.g. `-- metrics` to run matching tests).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

impl E2eArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        if self.build.engine == Some(Engine::Docker) {
            anyhow::bail!(
                "`e2e` runs the stack with podman (`podman kube play`); --engine docker is for `prebuild-images`.\n  \
                 fix: drop --engine, or use --engine podman"
            );
        }
        let manifests = Manifests::load(&project.manifests_dir())?;
        let opts = BuildOptions { engine: Some(Engine::Podman), ..self.build.clone() };
        let handoff = match (&self.images, &self.registry) {
            (Some(archive), _) => archive::load(project, &r, archive, self.allow_stale, &opts)?,
            (None, Some(prefix)) => archive::pull(project, &r, prefix, &opts)?,
            (None, None) => build::prebuild(project, &r, &opts, &[])?,
        };
        r.phase("compile E2E suite", |r| {
            let cmd = suite(project).arg("--no-run");
            r.command(&cmd);
            cmd.run_logged(&project.logs_dir().join("cargo-test-build.log")).context("compiling the E2E suite")
        })?;

        let stack = manifests.render_podman(&handoff.pinned(), free_port)?;
        let mut run = PodmanRun::new(project, runtime::run_id(), stack);
        r.line(format!("run {} (network {}, files in {})", run.id, run.network, project.display(&run.dir)));
        run.check_free(&r)?;

        let outcome = self.exercise(project, &r, &mut run);
        if outcome.is_err() {
            match run.save_logs() {
                Ok(dir) => r.line(format!("every container's log is saved in {}", project.display(&dir))),
                Err(e) => r.line(format!("could not save the containers' logs: {e:#}")),
            }
        }
        let teardown = if self.keep {
            r.line(run.keep_instructions());
            Ok(())
        } else {
            r.phase("tear down", |r| run.down(r))
        };
        r.line(format!("phases:\n{}", r.summary()));
        match (outcome, teardown) {
            (Ok(()), Ok(())) => {
                r.line("E2E passed");
                Ok(())
            }
            (Err(e), Ok(())) => Err(e.context("E2E failed")),
            (Ok(()), Err(t)) => Err(t.context("E2E passed but the teardown failed")),
            (Err(e), Err(t)) => Err(e.context(format!("E2E failed, and the teardown failed too: {t:#}"))),
        }
    }

    fn exercise(&self, project: &Project, r: &Reporter, run: &mut PodmanRun) -> anyhow::Result<()> {
        r.phase("deploy", |r| run.up(r))?;
        r.phase("wait until ready", |r| ready::wait_ready(run, Duration::from_secs(self.ready_timeout), r))?;
        r.phase("run E2E suite", |r| {
            let mut cmd = suite(project);
            for (var, url) in run.urls() {
                cmd = cmd.env(var, url);
            }
            let cmd = cmd.arg("--").args(self.test_args.iter().cloned());
            r.command(&cmd);
            cmd.run_inherit().context("the E2E suite failed")
        })
    }
}

/// `cargo test` of the E2E suite crate.
fn suite(project: &Project) -> Cmd {
    Cmd::new(Project::cargo()).args(["test", "--locked", "-p", "e2e-suite", "--test", "e2e"]).cwd(&project.root)
}

/// A port that is free on loopback now (the engine binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
