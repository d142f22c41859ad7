//! End-to-end tests of Gateway and DataStorage, reached over HTTP only.
//!
//! `cargo xtask e2e` brings the services up and runs this suite with `GATEWAY_URL` and
//! `DATA_STORAGE_URL` set. Each test uses alert names of its own, so tests can run in
//! parallel, in any order, and against a stack that earlier runs already used.

use std::time::Duration;

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

fn gateway() -> String {
    url("GATEWAY_URL")
}

fn data_storage() -> String {
    url("DATA_STORAGE_URL")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An alert name no other test and no earlier run uses.
fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

fn webhook(alert_name: &str, namespace: &str) -> Value {
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

async fn send(c: &Client, body: &Value) -> (StatusCode, Value) {
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

async fn audit_trail(c: &Client, correlation_id: &str) -> Vec<Value> {
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

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

async fn metric(c: &Client, name: &str) -> u64 {
    let text = c
        .get(format!("{}/metrics", gateway()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn new_alert_is_created_and_repeat_is_deduplicated() {
    let c = client();
    let alert = webhook(&unique("DiskFull"), "payments");
    let (status, first) = send(&c, &alert).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["signals"][0]["status"], "created");
    assert_eq!(first["signals"][0]["occurrence"], 1);

    let (status, second) = send(&c, &alert).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(second["signals"][0]["status"], "deduplicated");
    assert_eq!(second["signals"][0]["occurrence"], 2);
    assert_eq!(
        second["signals"][0]["fingerprint"],
        first["signals"][0]["fingerprint"]
    );
    assert_eq!(
        second["signals"][0]["correlation_id"],
        first["signals"][0]["correlation_id"]
    );
}

#[tokio::test]
async fn same_name_in_another_namespace_is_another_signal() {
    let c = client();
    let name = unique("PodCrashLooping");
    let (a, first) = send(&c, &webhook(&name, "team-a")).await;
    let (b, other) = send(&c, &webhook(&name, "team-b")).await;
    assert_eq!((a, b), (StatusCode::CREATED, StatusCode::CREATED));
    assert_ne!(
        first["signals"][0]["fingerprint"],
        other["signals"][0]["fingerprint"]
    );
}

#[tokio::test]
async fn audit_trail_holds_the_expected_events_in_order() {
    let c = client();
    let alert = webhook(&unique("HighLatency"), "checkout");
    let (_, first) = send(&c, &alert).await;
    let (_, _) = send(&c, &alert).await;
    let cid = first["signals"][0]["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let events = audit_trail(&c, &cid).await;
    assert_eq!(
        types(&events),
        [
            "signal.received",
            "signal.created",
            "signal.received",
            "signal.deduplicated"
        ],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!(e["correlation_id"], cid.as_str());
        assert_eq!(e["service"], "gateway");
        assert_eq!(e["data"]["fingerprint"], first["signals"][0]["fingerprint"]);
    }
    assert_eq!(events[3]["data"]["occurrence"], 2);
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence not increasing: {seqs:?}"
    );
}

#[tokio::test]
async fn malformed_requests_are_rejected() {
    let c = client();
    let endpoint = format!("{}/api/v1/signals/prometheus", gateway());

    let bad_json = c
        .post(&endpoint)
        .header("content-type", "application/json")
        .body("{\"alerts\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);

    let no_alerts = c
        .post(&endpoint)
        .json(&json!({"version": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_alerts.status(), StatusCode::BAD_REQUEST);
    let reason: Value = no_alerts.json().await.unwrap();
    assert!(
        reason["error"].as_str().unwrap().contains("alerts"),
        "{reason}"
    );

    let no_name = c
        .post(&endpoint)
        .json(&json!({"alerts": [{"labels": {"namespace": "x"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_name.status(), StatusCode::BAD_REQUEST);

    let text = c
        .post(&endpoint)
        .header("content-type", "text/plain")
        .body(webhook("X", "y").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let get = c.get(&endpoint).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let put = c
        .put(&endpoint)
        .json(&webhook("X", "y"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn fifty_concurrent_copies_create_exactly_one_signal() {
    let c = client();
    let alert = webhook(&unique("ConcurrentStorm"), "load");
    let answers = futures::future::join_all((0..50).map(|_| send(&c, &alert))).await;

    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!((created, accepted), (1, 49), "{answers:?}");
    let mut occurrences: Vec<u64> = answers
        .iter()
        .map(|(_, b)| b["signals"][0]["occurrence"].as_u64().unwrap())
        .collect();
    occurrences.sort_unstable();
    assert_eq!(
        occurrences,
        (1..=50).collect::<Vec<u64>>(),
        "every copy counted once"
    );

    let cid = answers[0].1["signals"][0]["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(answers
        .iter()
        .all(|(_, b)| b["signals"][0]["correlation_id"] == cid.as_str()));
    let events = audit_trail(&c, &cid).await;
    let count = |t: &str| types(&events).iter().filter(|x| **x == t).count();
    assert_eq!(
        (
            count("signal.received"),
            count("signal.created"),
            count("signal.deduplicated")
        ),
        (50, 1, 49)
    );
}

#[tokio::test]
async fn readiness_and_liveness_endpoints_answer() {
    let c = client();
    for (base, path) in [
        (gateway(), "/health"),
        (gateway(), "/ready"),
        (data_storage(), "/health/live"),
        (data_storage(), "/health/ready"),
    ] {
        let resp = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{base}{path}");
    }
    let ready: Value = c
        .get(format!("{}/ready", gateway()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["redis"], "ok");
    assert_eq!(ready["data_storage"], "ok");
}

#[tokio::test]
async fn metrics_counters_move() {
    let c = client();
    // Other tests run in parallel, so counters only ever grow by at least our share.
    let before = (
        metric(&c, "gateway_signals_received_total").await,
        metric(&c, "gateway_signals_created_total").await,
        metric(&c, "gateway_signals_deduplicated_total").await,
    );
    let alert = webhook(&unique("MetricsMove"), "obs");
    send(&c, &alert).await;
    send(&c, &alert).await;
    let after = (
        metric(&c, "gateway_signals_received_total").await,
        metric(&c, "gateway_signals_created_total").await,
        metric(&c, "gateway_signals_deduplicated_total").await,
    );
    assert!(after.0 >= before.0 + 2, "received {before:?} -> {after:?}");
    assert!(after.1 > before.1, "created {before:?} -> {after:?}");
    assert!(after.2 > before.2, "deduplicated {before:?} -> {after:?}");
}

#[tokio::test]
async fn data_storage_validates_and_lists_events() {
    let c = client();
    let events = format!("{}/api/v1/audit/events", data_storage());
    let cid = unique("cid");
    for t in ["step.one", "step.two", "step.three"] {
        let resp = c
            .post(&events)
            .json(&json!({"event_type": t, "correlation_id": cid, "service": "e2e", "data": {"n": t}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.unwrap();
        assert!(
            uuid::Uuid::parse_str(body["event_id"].as_str().unwrap()).is_ok(),
            "{body}"
        );
    }
    assert_eq!(
        types(&audit_trail(&c, &cid).await),
        ["step.one", "step.two", "step.three"]
    );

    let missing = c
        .post(&events)
        .json(&json!({"correlation_id": cid}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let reason: Value = missing.json().await.unwrap();
    assert_eq!(reason["error"], "event_type is required");
    let bad = c
        .post(&events)
        .header("content-type", "application/json")
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let text = c
        .post(&events)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_cid = c.get(&events).send().await.unwrap();
    assert_eq!(no_cid.status(), StatusCode::BAD_REQUEST);
    assert!(audit_trail(&c, &unique("nobody")).await.is_empty());
}
