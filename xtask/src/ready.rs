//! Waiting until every service is ready: each container's readiness probe from the
//! manifests is run by the xtask (podman does not act on probes), polling with a deadline.
//! A container that exits or restarts ends the wait at once, with its log.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    engine::{container_name, Podman},
    interrupt,
    manifests::{Container, Pod, Probe},
    report::{secs, Reporter},
    runtime::podman::PodmanRun,
};

/// What podman says of a container, reduced to what the wait needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    Running,
    Starting,
    Failed(String),
}

/// Decides from `podman container inspect` output (`status exit-code restarts`).
pub fn classify(state: &str) -> Health {
    let mut parts = state.split_whitespace();
    let status = parts.next().unwrap_or("unknown");
    let exit: i64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let restarts: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    match status {
        _ if restarts > 0 => Health::Failed(format!(
            "restarted {restarts} time(s), last exit code {exit}"
        )),
        "running" => Health::Running,
        "created" | "configured" | "initialized" => Health::Starting,
        "exited" | "stopped" | "dead" => Health::Failed(format!("{status} with exit code {exit}")),
        other => Health::Failed(format!("in state {other}")),
    }
}

/// Until every container is ready, each polled on its own (its probe, then, while it is not
/// ready, its state), so that one container's slow probe delays no other's.
pub fn wait_ready(run: &PodmanRun, timeout: Duration, r: &Reporter) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .http_status_as_error(false)
        .build()
        .into();
    // Set when one container has failed or time is up: the others stop polling.
    let stop = AtomicBool::new(false);
    let containers: Vec<(&Pod, &Container)> = run
        .stack
        .pods
        .iter()
        .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        .collect();
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
        let polling: Vec<_> = containers
            .iter()
            .map(|(pod, c)| {
                let (agent, stop) = (&agent, &stop);
                s.spawn(move || {
                    let name = container_name(&pod.name, &c.name);
                    let outcome = poll(run, pod, c, &name, agent, stop, deadline);
                    match &outcome {
                        Ok(()) => r.line(format!("  {name} ready after {}", secs(start.elapsed()))),
                        Err(_) => stop.store(true, Ordering::SeqCst),
                    }
                    outcome.map_err(|why| format!("  {name}: {why}"))
                })
            })
            .collect();
        polling
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("its poll panicked".into())))
            .collect()
    });
    interrupt::check()?;
    let failed: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        return Ok(());
    }
    if Instant::now() >= deadline {
        anyhow::bail!(
            "not ready after {}s:\n{}\n  (raise the limit with --ready-timeout SECONDS)",
            timeout.as_secs(),
            failed.join("\n")
        );
    }
    anyhow::bail!("while waiting for readiness:\n{}", failed.join("\n"))
}

/// One container, until its probe passes (`Ok`), it fails, the deadline passes or another
/// container failed (`Err`, why).
fn poll(
    run: &PodmanRun,
    pod: &Pod,
    c: &Container,
    name: &str,
    agent: &ureq::Agent,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<(), String> {
    // An HTTP GET costs next to nothing; a probe run in the container costs a `podman exec`.
    let pause = match &c.readiness {
        Some(Probe::Http { .. }) if !run.remote => Duration::from_millis(50),
        _ => Duration::from_millis(100),
    };
    loop {
        let reason = match probe(run, pod, c, name, agent) {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        // Not ready: has it failed? (An exit or a restart ends the wait at once.)
        let state = Podman.container_state(name).read().unwrap_or_default();
        if let Health::Failed(why) = classify(&state) {
            let log = Podman.logs(name).read().unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            if lines.is_empty() {
                return Err(format!("{why}; its log is empty now"));
            }
            let tail = lines[lines.len().saturating_sub(30)..].join("\n    | ");
            return Err(format!("{why}; its last log lines:\n    | {tail}"));
        }
        if stop.load(Ordering::SeqCst) || interrupt::interrupted() {
            return Err(format!("not ready ({reason}) when the wait ended"));
        }
        if Instant::now() >= deadline {
            return Err(reason);
        }
        std::thread::sleep(pause);
    }
}

/// The container's readiness probe, once: `Ok` when it passes, else why not.
fn probe(
    run: &PodmanRun,
    pod: &Pod,
    c: &Container,
    name: &str,
    agent: &ureq::Agent,
) -> Result<(), String> {
    match &c.readiness {
        None => match classify(&Podman.container_state(name).read().unwrap_or_default()) {
            Health::Running => Ok(()),
            _ => Err("starting".into()),
        },
        Some(Probe::Exec(command)) => match Podman.exec(name, command).succeeds() {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("`{}` failed", command.join(" "))),
            Err(e) => Err(format!("{e:#}")),
        },
        // A remote engine's published ports are not this machine's: ask from inside.
        Some(Probe::Http { path, port }) if run.remote => {
            match Podman.http_probe(name, *port, path).read() {
                Ok(status) if http_ok(&status) => Ok(()),
                Ok(status) => Err(format!("GET {path} on port {port}: {}", status.trim())),
                Err(e) => Err(format!("GET {path} on port {port}: {e:#}")),
            }
        }
        Some(Probe::Http { path, port }) => match run.stack.host_port(&pod.name, *port) {
            None => Err(format!(
                "port {port} is not published, so GET {path} cannot be checked"
            )),
            Some(host_port) => {
                let url = format!("http://127.0.0.1:{host_port}{path}");
                match agent.get(&url).call() {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("GET {url} answered {}", resp.status())),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            }
        },
    }
}

/// Whether an HTTP status line (`HTTP/1.1 200 OK`) says success.
pub fn http_ok(status_line: &str) -> bool {
    status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2') && code.len() == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert!(http_ok("HTTP/1.1 200 OK\r\n"));
        assert!(http_ok("HTTP/1.0 204 No Content"));
        assert!(!http_ok("HTTP/1.1 503 Service Unavailable"));
        assert!(!http_ok(""));
    }

    #[test]
    fn classifies_podman_states() {
        assert_eq!(classify("running 0 0"), Health::Running);
        assert_eq!(classify("created 0 0"), Health::Starting);
        assert_eq!(
            classify("exited 1 0"),
            Health::Failed("exited with exit code 1".into())
        );
        assert!(matches!(classify("running 0 2"), Health::Failed(w) if w.contains("restarted 2")));
        assert!(matches!(classify(""), Health::Failed(w) if w.contains("unknown")));
    }
}
