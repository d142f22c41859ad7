//! HTTP routes.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

use crate::{
    alert::{self, Signal},
    audit::{self, AuditClient},
    dedup::Dedup,
    metrics::Metrics,
};

pub struct App {
    pub dedup: Dedup,
    pub audit: AuditClient,
    pub metrics: Metrics,
}

type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/api/v1/signals/prometheus", post(prometheus_webhook))
        .route(
            "/health",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(app)
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// 201 when any alert in the payload is new, 202 when every one repeats a known signal.
pub fn overall_status(outcomes: &[Value]) -> StatusCode {
    if outcomes.iter().any(|o| o["status"] == "created") {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    }
}

async fn prometheus_webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let signals = match alert::parse_webhook(&body) {
        Ok(s) => s,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let mut outcomes = Vec::with_capacity(signals.len());
    for signal in &signals {
        match process(&app, signal).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), fingerprint = %signal.fingerprint, "deduplication failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("deduplication unavailable: {err:#}"),
                );
            }
        }
    }
    (
        overall_status(&outcomes),
        Json(json!({ "signals": outcomes })),
    )
        .into_response()
}

/// Deduplicates one signal, then records `signal.received` and `signal.created` or
/// `signal.deduplicated` under the signal's correlation id, in that order.
async fn process(app: &App, signal: &Signal) -> anyhow::Result<Value> {
    Metrics::inc(&app.metrics.received);
    let occurrence = app
        .dedup
        .record(&signal.fingerprint, &uuid::Uuid::new_v4().to_string())
        .await?;
    let cid = &occurrence.correlation_id;
    let status = if occurrence.is_new() {
        "created"
    } else {
        "deduplicated"
    };
    if occurrence.is_new() {
        Metrics::inc(&app.metrics.created);
    } else {
        Metrics::inc(&app.metrics.deduplicated);
    }
    tracing::info!(fingerprint = %signal.fingerprint, alert = %signal.alert_name, namespace = %signal.namespace, occurrence = occurrence.count, correlation_id = %cid, status, "signal");

    let follow_up = if occurrence.is_new() {
        audit::CREATED
    } else {
        audit::DEDUPLICATED
    };
    for (event_type, extra) in [
        (
            audit::RECEIVED,
            json!({ "labels": signal.labels, "annotations": signal.annotations, "starts_at": signal.starts_at }),
        ),
        (follow_up, json!({ "occurrence": occurrence.count })),
    ] {
        if let Err(err) = app.audit.record(event_type, cid, signal, extra).await {
            // The alert itself was handled; a missing audit record is counted and logged.
            Metrics::inc(&app.metrics.audit_failures);
            tracing::error!(error = format!("{err:#}"), event_type, correlation_id = %cid, "audit event not recorded");
        }
    }
    Ok(json!({
        "status": status,
        "fingerprint": signal.fingerprint,
        "correlation_id": cid,
        "occurrence": occurrence.count,
        "alert_name": signal.alert_name,
        "namespace": signal.namespace,
    }))
}

async fn ready(State(app): State<AppState>) -> Response {
    let deadline = Duration::from_secs(2);
    let (redis, ds) = tokio::join!(
        tokio::time::timeout(deadline, app.dedup.ping()),
        tokio::time::timeout(deadline, app.audit.ready()),
    );
    let describe = |r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "no answer within 2s".to_owned(),
    };
    let (redis, ds) = (describe(redis), describe(ds));
    let ok = redis == "ok" && ds == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "status": if ok { "ready" } else { "unavailable" }, "redis": redis, "data_storage": ds })))
        .into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_new_alert_makes_the_answer_201() {
        assert_eq!(
            overall_status(&[
                json!({"status":"deduplicated"}),
                json!({"status":"created"})
            ]),
            StatusCode::CREATED
        );
        assert_eq!(
            overall_status(&[json!({"status":"deduplicated"})]),
            StatusCode::ACCEPTED
        );
    }
}
