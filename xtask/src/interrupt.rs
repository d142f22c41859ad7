//! Ctrl-C and SIGTERM: the first asks the run to stop and tear down what it made; the
//! second aborts at once.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install() {
    let result = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: aborting without cleaning up (`podman pod ps` shows what is left)");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping and tearing down (press Ctrl-C again to abort at once)");
    });
    if let Err(err) = result {
        eprintln!("warning: could not install the Ctrl-C handler: {err}");
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(!interrupted(), "interrupted");
    Ok(())
}
