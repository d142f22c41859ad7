//! Helpers of `dev`'s live update on podman (Tilt's; `sync_binaries` in podman.rs).

use std::time::Duration;

use super::{ready, Podman};

/// Until a started container runs (started again while podman 4.3's clean-up of its stop
/// stops it again: the race the suite's `Stack::start` meets too), within 60 s.
pub(super) fn running_after_start(container: &str) -> anyhow::Result<()> {
    let running = crate::poll::until(Duration::from_secs(60), Duration::from_millis(50), || {
        match ready::health(container) {
            ready::Health::Running => return Ok(true),
            ready::Health::Starting => {}
            ready::Health::Failed(_) => drop(Podman.container_start(container).read()),
        }
        Ok(false)
    })?;
    anyhow::ensure!(running, "{container} did not run within 60 s of its start");
    Ok(())
}

/// Where a Dockerfile's `COPY` puts a binary: `COPY gateway /usr/local/bin/gateway` (flags
/// such as `--chmod` allowed; a destination ending in `/` gets the binary's name).
pub fn binary_destination(dockerfile: &str, binary: &str) -> Option<String> {
    dockerfile.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if !words.next()?.eq_ignore_ascii_case("COPY") {
            return None;
        }
        match words.filter(|w| !w.starts_with("--")).collect::<Vec<_>>()[..] {
            [src, dest] if src == binary && dest.ends_with('/') => Some(format!("{dest}{binary}")),
            [src, dest] if src == binary => Some(dest.to_owned()),
            _ => None,
        }
    })
}
