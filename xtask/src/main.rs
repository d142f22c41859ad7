//! `cargo xtask`: build the E2E images and run the E2E suite against real containers; a module
//! per subcommand.

mod archive;
mod bench;
mod build;
mod cmd;
mod dev;
mod diagnose;
mod dockerignore;
mod doctor;
mod e2e;
mod engine;
mod engine_images;
mod facts;
mod fingerprint;
mod fsx;
mod images;
mod interrupt;
mod isolation;
mod manifests;
mod memory;
mod parallel;
mod poll;
mod problem;
mod project;
mod quirks;
mod registry;
mod report;
mod run;
mod runtime;
mod sampler;
mod soak;
mod suite;
mod timeline;
mod tunnel;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "E2E images and E2E runs for Gateway and DataStorage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the images, bring up PostgreSQL, Redis, DataStorage and Gateway, run the E2E
    /// suite against them and tear everything down.
    E2e(run::RunOptions),
    /// The developer's loop: the stack up once, then on every change rebuild what changed,
    /// replace only the pods that run it, and rerun the suite. Ctrl-C tears down.
    Dev(dev::DevArgs),
    /// Build every E2E image whose inputs changed (content-addressed tags), within memory.
    PrebuildImages(build::PrebuildArgs),
    /// Save every image of target/e2e/images.json into one verified archive (zstd), for CI.
    SaveImages(archive::SaveArgs),
    /// Verify an archive from save-images against this checkout and load it.
    LoadImages(archive::LoadArgs),
    /// Check every prerequisite (engine, base image, memory, disk, kind and kubectl) and print the fixes.
    Doctor(doctor::DoctorArgs),
    /// Print where a run's report.html is, and a summary of it (the last run by default).
    Report(report::ReportArgs),
    /// Run `e2e` N times in a row: passes, failures with their logs, p50/p95 of each phase.
    Soak(soak::SoakArgs),
    /// Benchmarks, as medians: `images` (no-op and cold builds), `archive` (save, load, and
    /// `e2e --images`), `loop` (a warm `e2e`, a change with `dev` against `e2e`).
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let project = project::Project::locate();
    // Before any thread: it points this process's podman calls at the forwarded socket.
    let uses_engine = !matches!(cli.command, Command::Report(_));
    let _tunnel = match (&project, uses_engine) {
        (Ok(project), true) => tunnel::open(&project.logs_dir().join("ssh-tunnel.log")),
        _ => None,
    };
    interrupt::install();
    let result = project.and_then(|project| match cli.command {
        Command::PrebuildImages(args) => args.run(&project),
        Command::E2e(options) => e2e::run(options, &project),
        Command::Dev(args) => args.run(&project),
        Command::Doctor(args) => args.run(&project),
        Command::SaveImages(args) => args.run(&project),
        Command::LoadImages(args) => args.run(&project),
        Command::Report(args) => args.run(&project),
        Command::Soak(args) => args.run(&project),
        Command::Bench(args) => args.run(&project),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
