//! Fault tests: services of the running stack stopped and restarted while alerts arrive.
//!
//! `cargo xtask e2e --faults` runs them after the main suite, one at a time
//! (`--test-threads=1`), with `E2E_STACK` naming the run's `stack.json` (see
//! `e2e_suite::Stack`) and the gateway's deduplication TTL short. Each test waits for the
//! stack to be ready first and leaves it started and ready (a guard starts every service
//! again even when the test fails), and uses alert names of its own.
//!
//! What each test must find, after recovery, straight from PostgreSQL: every signal that was
//! answered `2xx` has exactly its audit events (`signal.received` then `signal.created` or
//! `signal.deduplicated`, per copy, at `correlation_index` 1, 2, 3, ...), each once, in
//! order; and nothing answered `503` left anything behind. Each prints what it sent and what
//! was stored (`[report]` lines on stderr).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use e2e_suite::{
    client, data_storage, expected_trail, gateway, metric, poll, report, send, send_until_kept,
    try_send, unique, webhook, Attempts, Stack, StackGuard,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

const READY: Duration = Duration::from_secs(90);

async fn setup(test: &str) -> (Stack, StackGuard, Client) {
    let stack = Stack::from_env();
    report(format!("== {test}"));
    stack.wait_ready(READY).await;
    let guard = stack.guard();
    (stack, guard, client())
}

fn correlation_id(answer: &Value) -> String {
    answer["signals"][0]["correlation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no correlation id in {answer}"))
        .to_owned()
}

fn occurrence(answer: &Value) -> u64 {
    answer["signals"][0]["occurrence"].as_u64().unwrap()
}

async fn gauge(c: &Client, name: &str) -> f64 {
    metric(c, name).await.unwrap_or(f64::NAN)
}

/// After recovery: waits until the outbox is delivered, then checks that each correlation
/// holds exactly the trail of its number of copies. Returns the events stored.
async fn check_trails(stack: &Stack, expected: &BTreeMap<String, u64>) -> usize {
    stack.wait_outbox_empty(READY).await;
    let cids: Vec<String> = expected.keys().cloned().collect();
    let stored = stack.stored_trails(&cids).await;
    let mut events = 0;
    for (cid, copies) in expected {
        let trail = stored.get(cid).cloned().unwrap_or_default();
        assert_eq!(
            trail,
            expected_trail(*copies),
            "correlation {cid} ({copies} copies) does not hold exactly its audit events"
        );
        events += trail.len();
    }
    // And across the whole audit trail, not only this test's: no event stored twice.
    let twice = stack
        .sql(
            "SELECT count(*) FROM (SELECT 1 FROM audit_events WHERE correlation_index IS NOT NULL \
             GROUP BY correlation_id, correlation_index HAVING count(*) > 1) AS d",
        )
        .await;
    assert_eq!(twice.trim(), "0", "events stored twice in audit_events");
    let total = stack.sql("SELECT count(*) FROM audit_events").await;
    report(format!(
        "audit_events holds {} events in all, none twice",
        total.trim()
    ));
    events
}

/// Sends `total` distinct alerts named `<tag>-<i>`, one every `every`, each once; publishes
/// how many were answered. Returns the answers in order.
fn paced_burst(
    c: &Client,
    tag: &str,
    total: usize,
    every: Duration,
) -> (
    tokio::task::JoinHandle<Vec<(StatusCode, Value)>>,
    watch::Receiver<usize>,
) {
    let (tx, rx) = watch::channel(0);
    let (c, tag) = (c.clone(), tag.to_owned());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut answers = Vec::with_capacity(total);
        for i in 0..total {
            tick.tick().await;
            answers.push(send(&c, &webhook(&format!("{tag}-{i}"), "faults")).await);
            tx.send_replace(i + 1);
        }
        answers
    });
    (task, rx)
}

/// Every answer must be 201 with a new signal; returns correlation id -> 1 copy.
fn all_created(answers: &[(StatusCode, Value)]) -> BTreeMap<String, u64> {
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::CREATED, "alert {i}: {body}");
        assert_eq!(occurrence(body), 1, "alert {i}: {body}");
    }
    answers
        .iter()
        .map(|(_, body)| (correlation_id(body), 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_storage_down_for_10s_during_a_burst_of_200_alerts() {
    let (stack, _guard, c) = setup("DataStorage down for 10 s during a burst of 200 alerts").await;
    let retries_before = gauge(&c, "gateway_outbox_delivery_retries_total").await;
    let tag = unique("FaultDsDown");
    let (burst, mut sent) = paced_burst(&c, &tag, 200, Duration::from_millis(65));
    sent.wait_for(|n| *n >= 30).await.unwrap();

    stack.stop("data-storage").await;
    let down_at = Instant::now();
    // The fault lasts 10 s; meanwhile the gateway must keep taking alerts, say it is
    // degraded, and hold their audit events in its outbox.
    let mut peak = 0.0f64;
    let mut degraded = false;
    while down_at.elapsed() < Duration::from_secs(10) {
        peak = peak.max(gauge(&c, "gateway_outbox_pending_events").await);
        if let Ok(r) = c.get(format!("{}/ready", gateway())).send().await {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status,
                StatusCode::OK,
                "the gateway still takes webhooks: {body}"
            );
            degraded |= body["status"] == "degraded";
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent_while_down = *sent.borrow();
    stack.start("data-storage").await;
    let answers = burst.await.unwrap();
    assert!(
        degraded,
        "/ready never said degraded while DataStorage was down"
    );
    assert!(
        peak >= 40.0,
        "the outbox never held the events (peak {peak})"
    );

    stack.wait_ready(READY).await;
    let expected = all_created(&answers);
    let events = check_trails(&stack, &expected).await;
    let retries = gauge(&c, "gateway_outbox_delivery_retries_total").await - retries_before;
    report(format!(
        "sent 200 alerts (about {} while DataStorage was down), all answered 201; outbox peaked at {peak} pending events, {retries} delivery retries",
        sent_while_down.saturating_sub(30)
    ));
    report(format!(
        "stored {events} audit events for {} signals: each signal exactly its 2 events, once, in order",
        expected.len()
    ));
    assert_eq!(events, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_503_with_retry_after_during_then_201_202_after() {
    let (stack, _guard, c) = setup("Redis restarted").await;
    let a = webhook(&unique("FaultRedisA"), "faults");
    let b = webhook(&unique("FaultRedisB"), "faults");
    let (status, first_a) = send(&c, &a).await;
    assert_eq!(status, StatusCode::CREATED, "{first_a}");
    let a_sent = Instant::now();

    stack.stop("redis").await;
    let mut refused = 0;
    for _ in 0..3 {
        let (status, body, retry_after) = try_send(&c, &b).await.expect("an answer, not a reset");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u32>().is_ok()),
            "503 without Retry-After: {body}"
        );
        assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
        refused += 1;
    }
    let ready = c.get(format!("{}/ready", gateway())).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    stack.start("redis").await;

    let (status, kept_b, attempts) =
        send_until_kept(&c, &b, Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(status, StatusCode::CREATED, "{kept_b}");
    let (status, again_b) = send(&c, &b).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again_b}");
    let mut expected = BTreeMap::from([(correlation_id(&kept_b), 2)]);
    // Redis keeps its data across the restart (AOF): within the TTL, A is still known.
    let (status, again_a) = send(&c, &a).await;
    if a_sent.elapsed() + Duration::from_secs(1) < stack.dedup_ttl {
        assert_eq!(status, StatusCode::ACCEPTED, "{again_a}");
        assert_eq!(correlation_id(&again_a), correlation_id(&first_a));
        assert_eq!(occurrence(&again_a), 2);
        expected.insert(correlation_id(&first_a), 2);
    } else {
        expected.insert(correlation_id(&first_a), 1);
        expected.insert(correlation_id(&again_a), occurrence(&again_a));
    }
    stack.wait_ready(READY).await;
    let events = check_trails(&stack, &expected).await;
    report(format!(
        "while Redis was down: {refused} webhooks answered 503 with Retry-After; after: B kept after {} more 503s and {} unanswered tries (201), B again 202, A again {}",
        attempts.unavailable,
        attempts.no_answer,
        status.as_u16()
    ));
    report(format!(
        "stored {events} audit events for {} correlations, each exactly once; nothing for the refused tries",
        expected.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_survives_a_redis_restart() {
    let (stack, _guard, c) = setup("the outbox survives a Redis restart").await;
    let tag = unique("FaultOutboxAof");
    stack.stop("data-storage").await;
    let mut answers = Vec::new();
    for i in 0..50 {
        answers.push(send(&c, &webhook(&format!("{tag}-{i}"), "faults")).await);
    }
    let expected = all_created(&answers);
    let before = gauge(&c, "gateway_outbox_pending_events").await;
    assert!(before >= 100.0, "pending {before}");
    stack.restart("redis").await;
    let after = poll("the gateway to read the outbox again", READY, || async {
        metric(&c, "gateway_outbox_pending_events").await
    })
    .await;
    assert!(
        after >= 100.0,
        "the outbox lost events in the restart: {before} -> {after}"
    );
    stack.start("data-storage").await;
    stack.wait_ready(READY).await;
    let events = check_trails(&stack, &expected).await;
    report(format!(
        "sent 50 alerts with DataStorage down (all 201); outbox {before} pending before the Redis restart, {after} after"
    ));
    report(format!(
        "stored {events} audit events for 50 signals after DataStorage came back, each exactly once"
    ));
    assert_eq!(events, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_restarted_with_sigterm_during_a_burst() {
    let (stack, _guard, c) = setup("the Gateway restarted (SIGTERM) during a burst").await;
    let tag = unique("FaultGwRestart");
    let total = 200;
    let next = Arc::new(AtomicUsize::new(0));
    let (kept_tx, mut kept_rx) = watch::channel(0usize);
    let kept_tx = Arc::new(kept_tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (c, tag, next, kept_tx) = (c.clone(), tag.clone(), next.clone(), kept_tx.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return out;
                    }
                    let body = webhook(&format!("{tag}-{i}"), "faults");
                    let (status, answer, attempts) = send_until_kept(&c, &body, deadline).await;
                    kept_tx.send_modify(|n| *n += 1);
                    out.push((i, status, answer, attempts));
                }
            })
        })
        .collect();
    kept_rx.wait_for(|n| *n >= 40).await.unwrap();
    stack.restart("gateway").await;
    let mut results: Vec<(usize, StatusCode, Value, Attempts)> = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    results.sort_by_key(|r| r.0);
    assert_eq!(results.len(), total);
    stack.wait_ready(READY).await;
    stack.wait_outbox_empty(READY).await;

    // Every correlation stored for these alerts, by alert name; a copy whose answer was lost
    // in the restart was kept all the same, and its retry counted as a repeat.
    let stored_cids = stack.correlations_of(&tag).await;
    let mut expected = BTreeMap::new();
    let (mut unanswered, mut unavailable, mut twice) = (0, 0, 0);
    for (i, _, answer, attempts) in &results {
        unanswered += attempts.no_answer;
        unavailable += attempts.unavailable;
        let name = format!("{tag}-{i}");
        let cid = correlation_id(answer);
        let occ = occurrence(answer);
        if occ > 1 {
            twice += 1;
        }
        expected.insert(cid.clone(), occ);
        // Other correlations of the same alert: earlier windows (the TTL passed during a
        // retry); each must be complete, and is checked below with its own length.
        for (other, n) in &stored_cids {
            if *n == name && *other != cid {
                expected.insert(other.clone(), 0);
            }
        }
    }
    let others: Vec<String> = expected
        .iter()
        .filter(|(_, occ)| **occ == 0)
        .map(|(cid, _)| cid.clone())
        .collect();
    let stored = stack.stored_trails(&others).await;
    for cid in &others {
        let len = stored.get(cid).map(Vec::len).unwrap_or(0) as u64;
        assert!(
            len > 0 && len.is_multiple_of(2),
            "correlation {cid}: {stored:?}"
        );
        expected.insert(cid.clone(), len / 2);
    }
    let events = check_trails(&stack, &expected).await;
    report(format!(
        "sent {total} alerts with 8 clients that retry; the gateway restarted after 40: {unanswered} tries unanswered, {unavailable} answered 503; every alert kept in the end ({twice} kept twice: the answer was lost, the retry counted as a repeat)"
    ));
    report(format!(
        "stored {events} audit events in {} correlations: every alert has its audit trail, each event once, in order",
        expected.len()
    ));
    for name in (0..total).map(|i| format!("{tag}-{i}")) {
        assert!(
            stored_cids.values().any(|n| *n == name),
            "{name} has no audit trail"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_during_a_burst() {
    let (stack, _guard, c) = setup("PostgreSQL restarted during a burst").await;
    let tag = unique("FaultPgRestart");
    let (burst, mut sent) = paced_burst(&c, &tag, 150, Duration::from_millis(60));
    sent.wait_for(|n| *n >= 30).await.unwrap();

    stack.stop("postgres").await;
    let down_at = Instant::now();
    // For 5 s: DataStorage refuses writes with 503 and says it is not ready; the gateway
    // keeps taking alerts and holds their audit events.
    let probe_cid = unique("pg-down-probe");
    let probe = json!({"event_type": "probe.write", "correlation_id": probe_cid});
    let (mut refused_writes, mut not_ready) = (0, 0);
    while down_at.elapsed() < Duration::from_secs(5) {
        let write = c
            .post(format!("{}/api/v1/audit/events", data_storage()))
            .json(&probe)
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(write.headers().contains_key("retry-after"));
        refused_writes += 1;
        let ready = c
            .get(format!("{}/health/ready", data_storage()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        not_ready += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pending = gauge(&c, "gateway_outbox_pending_events").await;
    let down_for = Instant::now();
    stack.start("postgres").await;
    // DataStorage recovers by itself, without a restart.
    poll("DataStorage ready again", READY, || async {
        let r = c
            .get(format!("{}/health/ready", data_storage()))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let recovered_in = down_for.elapsed();
    let answers = burst.await.unwrap();
    stack.wait_ready(READY).await;
    let expected = all_created(&answers);
    let events = check_trails(&stack, &expected).await;
    let probe_rows = stack
        .sql(&format!(
            "SELECT count(*) FROM audit_events WHERE correlation_id = '{probe_cid}'"
        ))
        .await;
    assert_eq!(probe_rows.trim(), "0", "a write answered 503 was stored");
    report(format!(
        "sent 150 alerts, PostgreSQL stopped after 30 for 5 s (DataStorage: {refused_writes} writes answered 503 with Retry-After, /health/ready 503 {not_ready} times; outbox {pending} pending), all alerts answered 201; DataStorage ready {:.1}s after PostgreSQL started, by itself",
        recovered_in.as_secs_f64()
    ));
    report(format!(
        "stored {events} audit events for {} signals, each exactly once, in order",
        expected.len()
    ));
    assert_eq!(events, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_is_new_again_once_the_dedup_ttl_passed() {
    let (stack, _guard, c) = setup("deduplication TTL expiry").await;
    let ttl = stack.dedup_ttl;
    let alert = webhook(&unique("FaultTtl"), "faults");
    let (status, first) = send(&c, &alert).await;
    let t0 = Instant::now();
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, second) = send(&c, &alert).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(correlation_id(&second), correlation_id(&first));

    let mut repeats = 1;
    let deadline = t0 + ttl + Duration::from_secs(10);
    let renewed = loop {
        let (status, body) = send(&c, &alert).await;
        if status == StatusCode::CREATED {
            break body;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        repeats += 1;
        assert!(
            Instant::now() < deadline,
            "still deduplicated {:?} after the first copy (TTL {ttl:?})",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let after = t0.elapsed();
    assert!(
        after + Duration::from_millis(500) >= ttl,
        "new again after {after:?}, before the TTL {ttl:?}"
    );
    assert_ne!(correlation_id(&renewed), correlation_id(&first));
    assert_eq!(occurrence(&renewed), 1);
    let expected = BTreeMap::from([
        (correlation_id(&first), 1 + repeats),
        (correlation_id(&renewed), 1),
    ]);
    let events = check_trails(&stack, &expected).await;
    report(format!(
        "TTL {}s: 201, then {repeats} repeats answered 202 in the same correlation, then 201 with a new correlation after {:.2}s",
        ttl.as_secs(),
        after.as_secs_f64()
    ));
    report(format!(
        "stored {events} audit events: {} in the first correlation, 2 in the second",
        2 * (1 + repeats)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_body_gets_413_not_a_reset() {
    let (_stack, _guard, c) = setup("an oversized body").await;
    let size = 20 * 1024 * 1024;
    let mut alert = webhook(&unique("FaultHuge"), "faults");
    alert["alerts"][0]["annotations"]["blob"] = json!("x".repeat(size));
    let body = alert.to_string();
    let sent = body.len();
    for (url, what) in [
        (
            format!("{}/api/v1/signals/prometheus", gateway()),
            "gateway webhook",
        ),
        (
            format!("{}/api/v1/audit/events/batch", data_storage()),
            "data-storage batch",
        ),
        (
            format!("{}/api/v1/audit/events", data_storage()),
            "data-storage event",
        ),
    ] {
        let resp = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer to {sent} bytes: {e}"));
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{what}");
        let answer: Value = resp.json().await.expect("a JSON error body");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("allowed"), "{what}: {error}");
        report(format!("{what}: {sent} bytes -> 413 {error}"));
    }
    // The gateway still answers on a new connection.
    let (status, _) = send(&c, &webhook(&unique("FaultAfterHuge"), "faults")).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// The services find each other by name while containers join and leave the network: each
/// restart of Redis takes its container off the run's network and puts it back, and on
/// podman 4.3 each of those makes aardvark-dns (1.4) tear down and rebind its sockets, losing
/// the lookups in flight (a 5 s resolver timeout, or NXDOMAIN from the host's nameserver
/// next in `resolv.conf`). That is what stalled DataStorage's new PostgreSQL connections in
/// the 2 GiB rig (docs/dns-hang.md). Lookups run in a loop in the gateway (DataStorage's
/// name) and in DataStorage (PostgreSQL's) through 12 restarts; none may fail or stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_resolve_while_containers_join_and_leave_the_network() {
    let (stack, _guard, _c) = setup("names resolve while containers join and leave").await;
    // Until /tmp/e2e-lookups-stop exists: every failed lookup, and every one that took 2 s
    // or more (a lost query waits out the resolver's 5 s), is a line; the count is last.
    let lookups = |var: &str, n: u32| {
        format!(
            r#"rm -f /tmp/e2e-lookups-stop-{n}
host=${{{var}#*://}}; host=${{host%%[:/]*}}; count=0
until [ -e /tmp/e2e-lookups-stop-{n} ]; do
  start=$(date +%s%N)
  getent ahosts "$host" >/dev/null || echo "failed: $host at $(date +%T.%N)"
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  [ "$ms" -lt 2000 ] || echo "stalled: $host for $ms ms at $(date +%T.%N)"
  count=$((count + 1))
done
echo "lookups: $count of $host""#
        )
    };
    let loop_in = |service: &'static str, var: &'static str, n: u32| {
        let stack = stack.clone();
        let script = lookups(var, n);
        tokio::spawn(async move { stack.exec(service, &["bash", "-c", &script]).await })
    };
    let loops = vec![
        ("gateway", 1, loop_in("gateway", "DATA_STORAGE_URL", 1)),
        ("gateway", 2, loop_in("gateway", "DATA_STORAGE_URL", 2)),
        (
            "data-storage",
            3,
            loop_in("data-storage", "POSTGRES_HOST", 3),
        ),
        (
            "data-storage",
            4,
            loop_in("data-storage", "POSTGRES_HOST", 4),
        ),
    ];
    let restarts = 12;
    for _ in 0..restarts {
        stack.restart("redis").await;
    }
    let mut bad = Vec::new();
    for (service, n, handle) in loops {
        stack
            .exec(service, &["touch", &format!("/tmp/e2e-lookups-stop-{n}")])
            .await;
        let out = handle.await.expect("a lookup loop panicked");
        report(format!("{service}: {}", out.lines().last().unwrap_or("")));
        bad.extend(
            out.lines()
                .filter(|l| !l.starts_with("lookups:"))
                .map(|l| format!("{service}: {l}")),
        );
    }
    report(format!(
        "{} membership changes of the run's network ({restarts} Redis restarts), {} lookups failed or stalled",
        2 * restarts,
        bad.len()
    ));
    assert!(
        bad.is_empty(),
        "name lookups failed or stalled:\n{}",
        bad.join("\n")
    );
}
