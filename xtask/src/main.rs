//! `cargo xtask`: build the E2E images and run the E2E suite against real containers.
//!
//! `main` only parses the command line and dispatches; each subcommand lives in a module of
//! its own, one per stage of the pipeline.

mod build;
mod diagnose;
mod dockerignore;
mod fingerprint;
mod memory;
mod cmd;
mod e2e;
mod engine;
mod images;
mod interrupt;
mod manifests;
mod project;
mod ready;
mod report;
mod runtime;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "E2E images and E2E runs for Gateway and DataStorage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile the service binaries once on the host and build every E2E image.
    PrebuildImages(build::PrebuildArgs),
    /// Build the images, bring up PostgreSQL, Redis, DataStorage and Gateway, run the E2E
    /// suite against them and tear everything down.
    E2e(e2e::E2eArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    let result = project::Project::locate().and_then(|project| match cli.command {
        Command::PrebuildImages(args) => args.run(&project),
        Command::E2e(args) => args.run(&project),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
