//! End-to-end tests of Gateway and DataStorage, reached over HTTP only.
//!
//! `cargo xtask e2e` brings the services up and runs this suite with `GATEWAY_URL` and
//! `DATA_STORAGE_URL` set. Each test uses alert names of its own, so tests can run in
//! parallel, in any order, and against a stack that earlier runs already used.
//!
//! Audit events reach DataStorage through the gateway's outbox, a moment after the webhook
//! is answered: tests that read the audit trail poll it with a deadline.

use std::time::Duration;

use e2e_suite::{
    audit_trail, audit_trail_of, client, data_storage, gateway, metric, send, types, unique,
    webhook,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long audit events may take to arrive through the outbox.
const DELIVERY: Duration = Duration::from_secs(20);

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

    let events = audit_trail_of(&c, &cid, 4, DELIVERY).await;
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
    let indexes: Vec<i64> = events
        .iter()
        .map(|e| e["correlation_index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4]);
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
    let events = audit_trail_of(&c, &cid, 100, DELIVERY).await;
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
    assert!(
        ready["outbox"]["max_events"].as_u64().unwrap() >= 2,
        "{ready}"
    );
}

#[tokio::test]
async fn metrics_counters_move() {
    let c = client();
    // Other tests run in parallel, so counters only ever grow by at least our share.
    let m = |name| {
        let c = c.clone();
        async move {
            metric(&c, name)
                .await
                .unwrap_or_else(|| panic!("{name} missing"))
        }
    };
    let before = (
        m("gateway_signals_received_total").await,
        m("gateway_signals_created_total").await,
        m("gateway_signals_deduplicated_total").await,
    );
    let alert = webhook(&unique("MetricsMove"), "obs");
    send(&c, &alert).await;
    send(&c, &alert).await;
    let after = (
        m("gateway_signals_received_total").await,
        m("gateway_signals_created_total").await,
        m("gateway_signals_deduplicated_total").await,
    );
    for gauge in [
        "gateway_outbox_pending_events",
        "gateway_outbox_oldest_pending_seconds",
        "gateway_outbox_delivered_total",
        "gateway_outbox_delivery_retries_total",
        "gateway_outbox_refused_total",
        "gateway_audit_failures_total",
    ] {
        m(gauge).await;
    }
    assert!(
        after.0 >= before.0 + 2.0,
        "received {before:?} -> {after:?}"
    );
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
        assert_eq!(body["status"], "created");
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

#[tokio::test]
async fn data_storage_writes_are_idempotent_on_event_id() {
    let c = client();
    let events = format!("{}/api/v1/audit/events", data_storage());
    let cid = unique("idem");
    let id = uuid::Uuid::new_v4().to_string();
    let event = json!({"event_id": id, "event_type": "step.one", "correlation_id": cid,
                       "correlation_index": 1, "event_timestamp": "2026-11-30T10:00:00.123456Z",
                       "service": "e2e", "data": {"n": 1}});
    let first = c.post(&events).json(&event).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let repeat = c.post(&events).json(&event).send().await.unwrap();
    assert_eq!(repeat.status(), StatusCode::OK, "a repeat is a success");
    let body: Value = repeat.json().await.unwrap();
    assert_eq!(body, json!({"event_id": id, "status": "existing"}));

    let mut other = event.clone();
    other["data"]["n"] = json!(2);
    let conflict = c.post(&events).json(&other).send().await.unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let trail = audit_trail(&c, &cid).await;
    assert_eq!(trail.len(), 1, "stored once: {trail:#?}");
    assert_eq!(trail[0]["event_id"], id.as_str());
    assert_eq!(trail[0]["correlation_index"], 1);

    // A batch is stored in order, all or nothing, and may repeat what is stored.
    let batch = format!("{}/api/v1/audit/events/batch", data_storage());
    let second = uuid::Uuid::new_v4().to_string();
    let two = json!({"events": [event, {"event_id": second, "event_type": "step.two",
                                        "correlation_id": cid, "correlation_index": 2}]});
    let resp = c.post(&batch).json(&two).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["created"].as_u64(), body["existing"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    let bad = json!({"events": [{"event_id": uuid::Uuid::new_v4(), "event_type": "step.three",
                                 "correlation_id": cid}, other]});
    let resp = c.post(&batch).json(&bad).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let reason: Value = resp.json().await.unwrap();
    assert!(
        reason["error"]
            .as_str()
            .unwrap()
            .starts_with("events[1]: event_id"),
        "{reason}"
    );
    assert_eq!(
        types(&audit_trail(&c, &cid).await),
        ["step.one", "step.two"],
        "nothing of the refused batch was stored"
    );
}

#[tokio::test]
async fn a_label_datastorage_would_refuse_is_refused_by_the_gateway() {
    let c = client();
    let name = unique("HugeLabel");
    let mut alert = webhook(&name, "limits");
    alert["alerts"][0]["labels"]["blob"] = json!("x".repeat(1024 * 1024));
    let (status, body) = send(&c, &alert).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("alerts[0].labels hold"), "{error}");

    let mut alert = webhook(&name, "limits");
    alert["alerts"][0]["labels"]["pod"] = json!(7);
    let (status, body) = send(&c, &alert).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("alerts[0].labels.pod: invalid type"),
        "{body}"
    );
}

#[tokio::test]
async fn both_services_publish_their_openapi_document() {
    let c = client();
    for (base, title) in [(gateway(), "Gateway"), (data_storage(), "DataStorage")] {
        let resp = c.get(format!("{base}/openapi.json")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(doc["info"]["title"], title);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    }
    let missing = c
        .get(format!("{}/nowhere", gateway()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].is_string());
}
