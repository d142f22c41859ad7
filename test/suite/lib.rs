//! What the E2E suite's test binaries share: the services' URLs, an HTTP client, alert
//! payloads, polling with deadlines, and [`Stack`], which stops, starts and execs into the
//! services of the running stack for the fault tests.
//!
//! - `tests/e2e.rs`: the main suite, over HTTP only; its tests run in parallel.
//! - `tests/faults.rs`: fault injection (a service stopped, restarted); one at a time, after
//!   the main suite, each leaving the stack as it found it. `cargo xtask e2e --faults` runs it
//!   with `E2E_STACK` naming the run's `stack.json` (see [`Stack`]).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use e2e_stack::{clean_up, ServiceControl, StackFile};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn url(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| {
            panic!("{var} is not set: run the suite with `cargo xtask e2e`, or set {var} to a running service's URL")
        })
        .trim_end_matches('/')
        .to_owned()
}

pub fn gateway() -> String {
    url("GATEWAY_URL")
}

pub fn data_storage() -> String {
    url("DATA_STORAGE_URL")
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A line of a fault test's report: written to stderr directly, so it shows even when the
/// harness captures the output of passing tests.
pub fn report(line: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr(), "    [report] {}", line.as_ref());
}

/// An alert name no other test and no earlier run uses.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// An AlertManager webhook (version 4) with one firing alert.
pub fn webhook(alert_name: &str, namespace: &str) -> Value {
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alert_name}\"}}"),
        "status": "firing",
        "receiver": "gateway",
        "groupLabels": {"alertname": alert_name},
        "commonLabels": {"alertname": alert_name},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": alert_name, "namespace": namespace, "severity": "critical", "pod": "api-0"},
            "annotations": {"summary": "E2E test alert"},
            "startsAt": "2026-11-27T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "0123456789abcdef"
        }]
    })
}

/// POSTs a webhook; panics if the gateway does not answer.
pub async fn send(c: &Client, body: &Value) -> (StatusCode, Value) {
    let resp = c
        .post(format!("{}/api/v1/signals/prometheus", gateway()))
        .json(body)
        .send()
        .await
        .expect("POST to the gateway");
    let status = resp.status();
    (
        status,
        resp.json().await.expect("JSON answer from the gateway"),
    )
}

/// One try of a webhook: the answer, or why there was none.
pub async fn try_send(
    c: &Client,
    body: &Value,
) -> Result<(StatusCode, Value, Option<String>), String> {
    let resp = c
        .post(format!("{}/api/v1/signals/prometheus", gateway()))
        .timeout(Duration::from_secs(10))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.map_err(|e| format!("{e}"))?;
    Ok((status, body, retry_after))
}

/// What it took a client that retries to have a webhook kept.
#[derive(Debug, Default, Clone)]
pub struct Attempts {
    /// `503` answers (each with `Retry-After`).
    pub unavailable: u32,
    /// Connection refused or reset, timeouts: no answer at all.
    pub no_answer: u32,
}

/// Sends a webhook as AlertManager would: again after a `503` or no answer, until it is
/// answered `2xx` or the deadline passes (then panics). Any other answer panics.
pub async fn send_until_kept(
    c: &Client,
    body: &Value,
    deadline: Instant,
) -> (StatusCode, Value, Attempts) {
    let mut attempts = Attempts::default();
    loop {
        match try_send(c, body).await {
            Ok((status, answer, _)) if status.is_success() => return (status, answer, attempts),
            Ok((StatusCode::SERVICE_UNAVAILABLE, answer, retry_after)) => {
                assert!(retry_after.is_some(), "503 without Retry-After: {answer}");
                attempts.unavailable += 1;
            }
            Ok((status, answer, _)) => panic!("unexpected answer {status}: {answer}"),
            Err(_) => attempts.no_answer += 1,
        }
        assert!(
            Instant::now() < deadline,
            "webhook not kept before the deadline ({attempts:?}): {body}"
        );
        // The client's retry interval, as AlertManager's; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn audit_trail(c: &Client, correlation_id: &str) -> Vec<Value> {
    let resp = c
        .get(format!("{}/api/v1/audit/events", data_storage()))
        .query(&[("correlation_id", correlation_id)])
        .send()
        .await
        .expect("GET audit events");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["events"].as_array().expect("events array").clone()
}

/// The audit trail of a correlation once it holds at least `n` events (they reach
/// DataStorage through the gateway's outbox, a moment after the webhook's answer); panics
/// if it does not within `within`.
pub async fn audit_trail_of(
    c: &Client,
    correlation_id: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let events = audit_trail(c, correlation_id).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "correlation {correlation_id} holds {} events after {within:?}, expected {n}: {events:#?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

/// A value from the gateway's `/metrics`, if present.
pub async fn metric(c: &Client, name: &str) -> Option<f64> {
    let text = c
        .get(format!("{}/metrics", gateway()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// How long [`Stack::start`] tries to have a service's container running.
const START_WITHIN: Duration = Duration::from_secs(60);

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `within` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit trail a signal copied `occurrences` times must have, as (index, type).
pub fn expected_trail(occurrences: u64) -> Vec<(i64, String)> {
    (1..=occurrences as i64)
        .flat_map(|k| {
            let follow = if k == 1 {
                "signal.created"
            } else {
                "signal.deduplicated"
            };
            [
                (2 * k - 1, "signal.received".to_owned()),
                (2 * k, follow.to_owned()),
            ]
        })
        .collect()
}

/// The running stack, as `cargo xtask e2e --faults` describes it in `stack.json` (the
/// contract's [`StackFile`]), with the services `gateway`, `data-storage`, `postgres` and
/// `redis`.
#[derive(Debug, Clone)]
pub struct Stack {
    pub runtime: String,
    /// The gateway's `DEDUP_TTL_SECONDS` in this run.
    pub dedup_ttl: Duration,
    services: BTreeMap<String, ServiceControl>,
    path: PathBuf,
}

pub use e2e_stack::SERVICES;

impl Stack {
    /// Reads the file `E2E_STACK` names; panics with what to do when it is not set.
    pub fn from_env() -> Stack {
        let path = std::env::var("E2E_STACK").unwrap_or_else(|_| {
            panic!(
                "E2E_STACK is not set: the fault tests stop and start services, so they run only \
                 through `cargo xtask e2e --faults`, or with E2E_STACK=path/to/stack.json (and \
                 GATEWAY_URL, DATA_STORAGE_URL) against a stack kept with `cargo xtask e2e --keep`"
            )
        });
        Stack::from_file(Path::new(&path)).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn from_file(path: &Path) -> Result<Stack, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Stack::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Stack, String> {
        let file =
            StackFile::parse(text, &SERVICES).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Stack {
            runtime: file.runtime,
            dedup_ttl: Duration::from_secs(file.dedup_ttl_seconds),
            services: file.services,
            path: path.to_owned(),
        })
    }

    fn commands(&self, name: &str) -> &ServiceControl {
        self.services.get(name).unwrap_or_else(|| {
            panic!(
                "no service {name:?} in {} (it has {:?})",
                self.path.display(),
                self.services.keys().collect::<Vec<_>>()
            )
        })
    }

    async fn run(argv: &[String]) -> String {
        let out = Self::output(argv).await;
        assert!(
            out.status.success(),
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn output(argv: &[String]) -> std::process::Output {
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
    }

    /// Stops a service (its pod: the process gets SIGTERM, then SIGKILL after the grace
    /// period). On a local podman, the stop ends when the monitors (conmon) of the pod's
    /// containers have (why: [`clean_up`]).
    pub async fn stop(&self, name: &str) {
        report(format!("stopping {name}"));
        let commands = self.commands(name);
        let monitors = match &commands.pod {
            Some(pod) => monitors(pod).await,
            None => Vec::new(),
        };
        Self::run(&commands.stop).await;
        poll(
            &format!("podman's clean-up of {name}"),
            START_WITHIN,
            || async { (!monitors.iter().any(|&pid| clean_up::monitoring(pid))).then_some(()) },
        )
        .await;
    }

    /// Starts a stopped service (a running one is left as it is), until its container runs a
    /// command. Wait for readiness with [`Stack::wait_ready`] before relying on it.
    pub async fn start(&self, name: &str) {
        report(format!("starting {name}"));
        let commands = self.commands(name);
        Self::run(&commands.start).await;
        let mut probe = commands.exec.clone();
        probe.push("true".into());
        poll(
            &format!("{name} to run after its start"),
            START_WITHIN,
            || async { Self::output(&probe).await.status.success().then_some(()) },
        )
        .await;
    }

    /// Stops, then starts a service.
    pub async fn restart(&self, name: &str) {
        self.stop(name).await;
        self.start(name).await;
    }

    /// Runs `args` inside the service's container and returns its standard output.
    pub async fn exec(&self, name: &str, args: &[&str]) -> String {
        let mut argv = self.commands(name).exec.clone();
        argv.extend(args.iter().map(|a| a.to_string()));
        Self::run(&argv).await
    }

    /// Runs SQL in the audit database (`psql -At`: one row a line, columns split by `|`).
    pub async fn sql(&self, sql: &str) -> String {
        self.exec(
            "postgres",
            &[
                "sh",
                "-c",
                r#"psql -X -v ON_ERROR_STOP=1 -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1""#,
                "psql",
                sql,
            ],
        )
        .await
    }

    /// Every audit event stored for these correlations, straight from PostgreSQL, in the
    /// order stored: correlation id -> [(correlation_index, event_type)].
    pub async fn stored_trails(
        &self,
        correlation_ids: &[String],
    ) -> BTreeMap<String, Vec<(i64, String)>> {
        let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for chunk in correlation_ids.chunks(500) {
            let list: Vec<String> = chunk
                .iter()
                .map(|c| {
                    assert!(
                        c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'),
                        "unexpected correlation id {c:?}"
                    );
                    format!("'{c}'")
                })
                .collect();
            let rows = self
                .sql(&format!(
                    "SELECT correlation_id, COALESCE(correlation_index, 0), event_type \
                     FROM audit_events WHERE correlation_id IN ({}) ORDER BY sequence",
                    list.join(",")
                ))
                .await;
            for line in rows.lines().filter(|l| !l.is_empty()) {
                let mut parts = line.split('|');
                let (cid, index, ty) = (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().parse().unwrap(),
                    parts.next().unwrap().to_owned(),
                );
                out.entry(cid).or_default().push((index, ty));
            }
        }
        out
    }

    /// Every correlation id stored for alerts whose name starts with `prefix`.
    pub async fn correlations_of(&self, alert_name_prefix: &str) -> BTreeMap<String, String> {
        assert!(
            alert_name_prefix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-'),
            "unexpected prefix {alert_name_prefix:?}"
        );
        self.sql(&format!(
            "SELECT DISTINCT correlation_id, data->>'alert_name' FROM audit_events \
             WHERE data->>'alert_name' LIKE '{alert_name_prefix}%'"
        ))
        .await
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(cid, name)| (cid.to_owned(), name.to_owned()))
        .collect()
    }

    /// Waits until the gateway says `ready` (Redis answers, DataStorage answers, the outbox
    /// is not behind) and DataStorage's `/health/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        wait_ready(within).await
    }

    /// Waits until the gateway's outbox is empty (every audit event delivered).
    pub async fn wait_outbox_empty(&self, within: Duration) {
        let c = client();
        poll("the gateway's outbox to empty", within, || async {
            (metric(&c, "gateway_outbox_pending_events").await == Some(0.0)).then_some(())
        })
        .await
    }

    /// Starts every service again when dropped (a fault test that failed half-way still
    /// leaves the stack running), then waits for readiness.
    pub fn guard(&self) -> StackGuard {
        StackGuard(self.clone())
    }
}

/// The running monitors (conmon) of a pod's containers, its infra container's included.
async fn monitors(pod: &str) -> Vec<u32> {
    let podman = |args: Vec<String>| [vec!["podman".to_owned()], args].concat();
    let ids = Stack::run(&podman(clean_up::pod_container_ids(pod))).await;
    let ids: Vec<String> = ids.split_whitespace().map(str::to_owned).collect();
    clean_up::monitors_of(&ids)
}

/// See [`Stack::guard`].
pub struct StackGuard(Stack);

impl Drop for StackGuard {
    fn drop(&mut self) {
        for name in SERVICES {
            let argv = &self.0.commands(name).start;
            let _ = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .output();
        }
        // A runtime of its own, on a thread of its own: this may run inside the test's.
        let waited = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(ready_within(Duration::from_secs(60))))
        })
        .join();
        if !matches!(waited, Ok(Ok(true))) {
            report("the stack did not become ready again within 60s after the test");
        }
    }
}

/// Whether the stack is ready now: see [`Stack::wait_ready`].
pub async fn is_ready(c: &Client) -> Result<(), String> {
    let g = c
        .get(format!("{}/ready", gateway()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("gateway /ready: {e}"))?;
    let status = g.status();
    let body: Value = g.json().await.map_err(|e| format!("gateway /ready: {e}"))?;
    if status != StatusCode::OK || body["status"] != "ready" {
        return Err(format!("gateway /ready: {status} {body}"));
    }
    let d = c
        .get(format!("{}/health/ready", data_storage()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("data-storage /health/ready: {e}"))?;
    if d.status() != StatusCode::OK {
        return Err(format!("data-storage /health/ready: {}", d.status()));
    }
    Ok(())
}

async fn ready_within(within: Duration) -> bool {
    let c = client();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_ready(&c).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// See [`Stack::wait_ready`].
pub async fn wait_ready(within: Duration) {
    let c = client();
    let deadline = Instant::now() + within;
    loop {
        let why = match is_ready(&c).await {
            Ok(()) => return,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "the stack is not ready within {within:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"{
      "runtime": "podman",
      "dedup_ttl_seconds": 5,
      "services": {
        "gateway": {"stop": ["podman","pod","stop","-t","10","gateway-x"], "start": ["podman","pod","start","gateway-x"], "exec": ["podman","exec","-i","gateway-x-gateway"]},
        "data-storage": {"stop": ["a"], "start": ["b"], "exec": ["c"]},
        "postgres": {"stop": ["a"], "start": ["b"], "exec": ["c"]},
        "redis": {"stop": ["a"], "start": ["b"], "exec": ["c"]}
      }
    }"#;

    #[test]
    fn reads_the_stack_file_the_xtask_writes() {
        let s = Stack::parse(STACK, Path::new("stack.json")).unwrap();
        assert_eq!(s.dedup_ttl, Duration::from_secs(5));
        assert_eq!(s.commands("gateway").stop.last().unwrap(), "gateway-x");
        let no_ttl = STACK.replace("\"dedup_ttl_seconds\": 5,", "");
        assert!(Stack::parse(&no_ttl, Path::new("stack.json"))
            .unwrap_err()
            .contains("dedup_ttl_seconds"));
        let no_redis = STACK.replace("\"redis\"", "\"other\"");
        assert!(Stack::parse(&no_redis, Path::new("stack.json"))
            .unwrap_err()
            .contains("redis"));
    }

    #[test]
    fn expected_trails_alternate_received_and_follow_up() {
        let t = expected_trail(2);
        assert_eq!(
            t,
            [
                (1, "signal.received".to_owned()),
                (2, "signal.created".to_owned()),
                (3, "signal.received".to_owned()),
                (4, "signal.deduplicated".to_owned())
            ]
        );
    }
}
