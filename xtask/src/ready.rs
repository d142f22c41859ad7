//! Waiting until every service is ready: each container's readiness probe from the
//! manifests is run by the xtask (podman does not act on probes), polling with a deadline.
//! A container that exits or restarts ends the wait at once, with its log.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::{
    engine::{container_name, Podman},
    interrupt,
    manifests::Probe,
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

pub fn wait_ready(run: &PodmanRun, timeout: Duration, r: &Reporter) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut ready = BTreeSet::new();
    let mut last_reason = std::collections::BTreeMap::new();
    let total: usize = run.stack.pods.iter().map(|p| p.containers.len()).sum();
    loop {
        for pod in &run.stack.pods {
            for c in &pod.containers {
                let name = container_name(&pod.name, &c.name);
                if ready.contains(&name) {
                    continue;
                }
                let state = Podman.container_state(&name).read().unwrap_or_default();
                match classify(&state) {
                    Health::Failed(why) => {
                        let log = Podman.logs(&name).read().unwrap_or_default();
                        let tail: Vec<&str> = log
                            .lines()
                            .rev()
                            .take(30)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        anyhow::bail!(
                            "container {name} {why} while waiting for readiness; its last log lines:\n    | {}",
                            tail.join("\n    | ")
                        );
                    }
                    Health::Starting => {
                        last_reason.insert(name.clone(), "starting".to_owned());
                        continue;
                    }
                    Health::Running => {}
                }
                let outcome = match &c.readiness {
                    None => Ok(()),
                    Some(Probe::Exec(command)) => match Podman.exec(&name, command).succeeds() {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(format!("`{}` failed", command.join(" "))),
                        Err(e) => Err(format!("{e:#}")),
                    },
                    // A remote engine's published ports are not this machine's: ask from inside.
                    Some(Probe::Http { path, port }) if run.remote => {
                        match Podman.http_probe(&name, *port, path).read() {
                            Ok(status) if http_ok(&status) => Ok(()),
                            Ok(status) => {
                                Err(format!("GET {path} on port {port}: {}", status.trim()))
                            }
                            Err(e) => Err(format!("GET {path} on port {port}: {e:#}")),
                        }
                    }
                    Some(Probe::Http { path, port }) => match run.stack.host_port(&pod.name, *port)
                    {
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
                };
                match outcome {
                    Ok(()) => {
                        r.line(format!("  {name} ready after {}", secs(start.elapsed())));
                        ready.insert(name);
                    }
                    Err(reason) => {
                        last_reason.insert(name, reason);
                    }
                }
            }
        }
        if ready.len() == total {
            return Ok(());
        }
        interrupt::check()?;
        if Instant::now() >= deadline {
            let waiting: Vec<String> = last_reason
                .iter()
                .filter(|(n, _)| !ready.contains(*n))
                .map(|(n, why)| format!("  {n}: {why}"))
                .collect();
            anyhow::bail!(
                "not ready after {}s:\n{}\n  (raise the limit with --ready-timeout SECONDS)",
                timeout.as_secs(),
                waiting.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
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
