//! Until every service is ready: the xtask runs each container's readiness probe (podman
//! does not act on probes); a container that exits or restarts ends the wait, with its log.

use super::*;
use e2e_stack::clean_up;

use crate::manifests::{Container, Pod, Probe as ProbeSpec};
use crate::{interrupt, runtime::Health};

/// Decides from `podman container inspect` output (`status exit-code restarts`).
pub fn classify(state: &str) -> Health {
    let mut parts = state.split_whitespace();
    let status = parts.next().unwrap_or("unknown");
    let mut number = || parts.next().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let exit = number();
    let restarts = number();
    match status {
        _ if restarts > 0 => {
            Health::Failed(format!("restarted {restarts} time(s), last exit code {exit}"))
        }
        "running" => Health::Ready,
        "created" | "configured" | "initialized" => Health::Waiting(status.to_owned()),
        "exited" | "stopped" | "dead" => Health::Failed(format!("{status} with exit code {exit}")),
        other => Health::Failed(format!("in state {other}")),
    }
}

fn health_through(exec: &dyn Exec, container: &str) -> Health {
    classify(&exec.read(&Podman.container_state(container)).unwrap_or_default())
}

/// The running monitors (conmon) of a pod's containers, infra included, on a local engine; a
/// conmon ends only once its container's clean-up (`podman container cleanup`, at its exit)
/// has run. The containers' IDs are asked once per pod (`known`).
pub(super) fn monitors(known: &mut BTreeMap<String, Vec<String>>, pod: &str) -> Vec<u32> {
    if !known.contains_key(pod) {
        let ids = Podman.pod_container_ids(pod).read().unwrap_or_default();
        let ids: Vec<String> = ids.split_whitespace().map(str::to_owned).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        known.insert(pod.to_owned(), ids);
    }
    clean_up::monitors_of(&known[pod])
}

/// Until a stopped pod's monitors have ended (why: [`clean_up`]).
pub(super) fn until_cleaned_up(monitors: &[u32]) -> anyhow::Result<()> {
    let ended = || Ok(monitors.iter().all(|&pid| !clean_up::monitoring(pid)));
    let done = crate::poll::until(Duration::from_secs(30), Duration::from_millis(20), ended)?;
    anyhow::ensure!(done, "podman's clean-up of the stopped containers did not end within 30 s");
    Ok(())
}

/// Until every container of the run is ready, each polled on its own (its probe, then, while
/// it is not ready, its state), so that one container's slow probe delays no other's.
pub fn wait_ready(
    run: &PodmanRun,
    timeout: Duration,
    reporter: &Reporter,
    exec: &dyn Exec,
) -> anyhow::Result<()> {
    let start = Instant::now();
    // Set when one container has failed: the others stop polling.
    let stop = &AtomicBool::new(false);
    let failed = std::thread::scope(|s| {
        let polling: Vec<_> = (run.stack.containers())
            .map(|(pod, c)| {
                let waiting = Waiting { run, pod, c, stop, start, timeout, exec };
                s.spawn(move || waiting.until_ready(reporter))
            })
            .collect();
        let outcomes =
            polling.into_iter().map(|h| h.join().unwrap_or(Err("its poll panicked".into())));
        outcomes.filter_map(Result::err).collect::<Vec<_>>().join("\n")
    });
    interrupt::check()?;
    anyhow::ensure!(
        failed.is_empty() || start.elapsed() < timeout,
        "not ready after {}s:\n{failed}\n  (raise the limit with --ready-timeout SECONDS)",
        timeout.as_secs()
    );
    anyhow::ensure!(failed.is_empty(), "while waiting for readiness:\n{failed}");
    Ok(())
}

/// One try of a container's readiness, as the manifests' probe gives it: a command whose
/// exit says (in the container, or in a new container of its image in its pod on a remote
/// engine: docs/run.md, step 4), an HTTP GET from here, or, without a probe, its state.
pub fn first_poll(run: &PodmanRun, pod: &Pod, c: &Container) -> Poll {
    match readiness_try(run, pod, c) {
        Ok(Try::Passes { cmd, .. }) | Ok(Try::Running(cmd)) => Poll::Cmd(cmd),
        Ok(Try::Get(url)) => Poll::Get(url),
        Err(why) => Poll::Cmd(Cmd::new(format!("# cannot poll: {why}"))),
    }
}

/// What one try of readiness runs.
enum Try {
    /// Ready once the container runs (no probe): its state.
    Running(Cmd),
    /// Ready when this command exits 0; else `failed` says why not.
    Passes { cmd: Cmd, failed: String, what: String },
    /// Ready when this URL answers 2xx.
    Get(String),
}

fn readiness_try(run: &PodmanRun, pod: &Pod, c: &Container) -> Result<Try, String> {
    let name = &container_name(&pod.name, &c.name);
    let remote = run.remote;
    // A probe loops where it runs, one engine call per slice; on a remote engine in a new
    // container of the image in the pod, not `podman exec` (docs/run.md, step 4; 13 s in the rig).
    let in_container = |probe: Vec<String>, failed: String, what: String| {
        let cmd = match remote {
            true => Podman.run_in_pod(&pod.name, run.image_of(name, c), &probe),
            false => Podman.exec(name, &probe),
        };
        Ok(Try::Passes { cmd, failed, what })
    };
    match &c.readiness {
        None => Ok(Try::Running(Podman.container_state(name))),
        Some(ProbeSpec::Exec(command)) => {
            let failed = format!("`{}` failed", command.join(" "));
            in_container(until_ready(COMMAND, command, SLICE_SECONDS), failed, String::new())
        }
        Some(ProbeSpec::Tcp { port }) => {
            let connect = until_ready(TCP_CONNECT, &[port.to_string()], SLICE_SECONDS);
            let what = format!("TCP port {port}: ");
            in_container(connect, format!("{what}no connection"), what)
        }
        Some(ProbeSpec::Http { path, port }) if remote => {
            let get = until_ready(HTTP_GET, &[port.to_string(), path.clone()], SLICE_SECONDS);
            let what = format!("GET {path} on port {port}: ");
            in_container(get, format!("{what}no 2xx answer"), what)
        }
        Some(ProbeSpec::Http { path, port }) => {
            let host_port = run.stack.host_port(&pod.name, *port).ok_or_else(|| {
                format!("port {port} is not published, so GET {path} cannot be checked")
            })?;
            Ok(Try::Get(format!("http://127.0.0.1:{host_port}{path}")))
        }
    }
}

/// One container's wait for readiness, beside the others'.
struct Waiting<'a> {
    run: &'a PodmanRun,
    pod: &'a Pod,
    c: &'a Container,
    /// Set when one container has failed: the others stop polling.
    stop: &'a AtomicBool,
    start: Instant,
    timeout: Duration,
    exec: &'a dyn Exec,
}

impl Waiting<'_> {
    /// Until the container's readiness probe passes (`Ok`, shown), the container fails,
    /// another one did (`stop`, set on failure), or the time is up (`Err`, why).
    fn until_ready(&self, reporter: &Reporter) -> Result<(), String> {
        let Waiting { pod, c, stop, start, timeout, exec, .. } = *self;
        let name = &container_name(&pod.name, &c.name);
        let attempt = readiness_try(self.run, pod, c);
        let once = || match &attempt {
            Err(why) => Err(why.clone()),
            Ok(Try::Running(cmd)) => match classify(&exec.read(cmd).unwrap_or_default()) {
                Health::Ready => Ok(()),
                _ => Err("starting".to_owned()),
            },
            Ok(Try::Passes { cmd, failed, what }) => match exec.succeeds(cmd) {
                Ok(true) => Ok(()),
                Ok(false) => Err(failed.clone()),
                Err(e) => Err(format!("{what}{e:#}")),
            },
            Ok(Try::Get(url)) => match exec.get(url) {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("GET {url} answered {status}")),
                Err(why) => Err(why),
            },
        };
        // An HTTP GET costs next to nothing; a probe run in the container costs a `podman exec`.
        let local_http = matches!(attempt, Ok(Try::Get(_)));
        let pause = Duration::from_millis(if local_http { 50 } else { 100 });
        let mut reason = String::new();
        let ready = crate::poll::until(timeout, pause, || {
            reason = match once() {
                Ok(()) => return Ok(true),
                Err(reason) => reason,
            };
            // Not ready: an exit or a restart ends the wait at once.
            if let Health::Failed(why) = health_through(exec, name) {
                let log = exec.read(&Podman.logs(name)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                anyhow::ensure!(!lines.is_empty(), "{why}; its log is empty now");
                let tail = lines[lines.len().saturating_sub(30)..].join("\n    | ");
                anyhow::bail!("{why}; its last log lines:\n    | {tail}");
            }
            anyhow::ensure!(
                !stop.load(Ordering::SeqCst),
                "not ready ({reason}) when the wait ended"
            );
            Ok(false)
        });
        let why = match ready {
            Ok(true) => {
                reporter.line(format!("  {name} ready after {}", secs(start.elapsed())));
                return Ok(());
            }
            Ok(false) => reason,
            Err(e) if interrupt::interrupted() => {
                format!("not ready ({reason}) when the wait ended: {e}")
            }
            Err(e) => format!("{e:#}"),
        };
        stop.store(true, Ordering::SeqCst);
        Err(format!("  {name}: {why}"))
    }
}

/// How long one engine call of a probe polls before the xtask looks at the container's state.
const SLICE_SECONDS: u32 = 3;

/// A probe body for [`until_ready`]: `GET $2` on port `$1` here, passing on a 2xx status.
const HTTP_GET: &str = r#"exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
read -r line <&3; exec 3>&-
[[ $line =~ ^HTTP/[0-9.]+\ 2[0-9][0-9] ]]"#;

/// A probe body for [`until_ready`]: a TCP connection to port `$1` here.
const TCP_CONNECT: &str = r#"exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
exec 3>&-"#;

/// A probe body for [`until_ready`]: its arguments are the command.
const COMMAND: &str = r#""$@""#;

/// `bash -c` looping a probe (`body`, a constant; `args` its positional parameters) every
/// 50 ms until it passes (exit 0) or for at least `slice` seconds (20 tries a second, exit 1).
pub fn until_ready(body: &str, args: &[String], slice: u32) -> Vec<String> {
    // Counted tries, not `$SECONDS` (whole seconds: a slice of 1 could end at once).
    let script = format!(
        "probe() {{\n{body}\n}}\ntries=$(({slice} * 20))\n\
         until probe \"$@\" >/dev/null 2>&1; do\n  tries=$((tries - 1))\n  \
         [ \"$tries\" -gt 0 ] || exit 1\n  sleep 0.05\ndone"
    );
    ["bash", "-c", &script, "ready"].map(str::to_owned).into_iter().chain(args.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop as the container runs it, here with this machine's bash.
    fn looped(body: &str, args: &[&str], slice: u32) -> bool {
        let argv =
            until_ready(body, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), slice);
        std::process::Command::new(&argv[0]).args(&argv[1..]).status().unwrap().success()
    }

    /// A server on a free loopback port answering every request with `status`.
    fn http_server(status: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                use std::io::{Read, Write};
                // The whole request: closing with some of it unread would send a reset.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(c, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        port
    }

    #[test]
    fn a_probe_loops_in_one_shell_until_it_passes_or_its_slice_ends() {
        assert!(looped(COMMAND, &["true"], 1));
        assert!(!looped(COMMAND, &["false"], 1));
        // Passes on the third try: the loop went on.
        let dir = std::env::temp_dir().join(format!("xtask-ready-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let count = dir.join("n").display().to_string();
        let third = format!("echo x >>{count}; [ $(wc -l <{count}) -ge 3 ]");
        assert!(looped(COMMAND, &["bash", "-c", &third], 2));
        std::fs::remove_dir_all(dir).unwrap();
        let ok = http_server("200 OK").to_string();
        let busy = http_server("503 Service Unavailable").to_string();
        assert!(looped(HTTP_GET, &[&ok, "/health/ready"], 1));
        assert!(!looped(HTTP_GET, &[&busy, "/health/ready"], 1));
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!looped(HTTP_GET, &[&closed.to_string(), "/"], 1));
        assert!(looped(TCP_CONNECT, &[&ok], 1), "a listening port connects");
        assert!(!looped(TCP_CONNECT, &[&closed.to_string()], 1), "a closed one does not");
    }

    #[test]
    fn classifies_podman_states() {
        assert_eq!(classify("running 0 0"), Health::Ready);
        assert_eq!(classify("created 0 0"), Health::Waiting("created".into()));
        assert_eq!(classify("exited 1 0"), Health::Failed("exited with exit code 1".into()));
        assert!(matches!(classify("running 0 2"), Health::Failed(w) if w.contains("restarted 2")));
        assert!(matches!(classify(""), Health::Failed(w) if w.contains("unknown")));
    }
}
