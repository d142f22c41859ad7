//! HTTP routes.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Json, Router,
};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use service_kit::{
    api::{ApiError, JsonBody},
    limits,
};

use crate::{
    alert::{self, Webhook},
    audit::{self, AuditClient},
    metrics::Metrics,
    outbox::{AcceptError, Backlog, Occurrence, Outbox},
};

pub struct App {
    pub outbox: Arc<Outbox>,
    pub audit: AuditClient,
    pub metrics: Arc<Metrics>,
}

type AppState = Arc<App>;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("../../../docs/openapi/gateway.json");

/// Past this age of its oldest pending audit event, the outbox counts as behind and `/ready`
/// says `degraded`.
const BEHIND_AFTER_MS: u64 = 5_000;

/// Every route: its path, its methods and its handlers. [`router`] serves exactly these, and
/// the tests check them against [`OPENAPI`].
pub fn routes() -> Vec<(&'static str, &'static [Method], MethodRouter<AppState>)> {
    vec![
        (
            "/api/v1/signals/prometheus",
            &[Method::POST],
            post(prometheus_webhook),
        ),
        (
            "/health",
            &[Method::GET],
            get(|| async { Json(Health { status: "alive" }) }),
        ),
        ("/ready", &[Method::GET], get(ready)),
        ("/metrics", &[Method::GET], get(metrics)),
        (
            "/openapi.json",
            &[Method::GET],
            service_kit::openapi::document_route(OPENAPI),
        ),
    ]
}

pub fn router(app: AppState) -> Router {
    service_kit::api::serve(routes()).with_state(app)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// What became of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalStatus {
    /// The first copy within the deduplication window.
    Created,
    /// A repeat of a signal already seen within the window.
    Deduplicated,
}

#[derive(Debug, Serialize)]
pub struct SignalOutcome {
    pub status: SignalStatus,
    pub fingerprint: String,
    pub correlation_id: String,
    pub occurrence: u64,
    pub alert_name: String,
    pub namespace: String,
}

#[derive(Debug, Serialize)]
pub struct WebhookAnswer {
    pub signals: Vec<SignalOutcome>,
}

/// 201 when any alert in the payload is new, 202 when every one repeats a known signal.
pub fn overall_status(outcomes: &[SignalOutcome]) -> StatusCode {
    if outcomes.iter().any(|o| o.status == SignalStatus::Created) {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    }
}

/// Keeps the webhook whole (deduplication and audit events, in Redis) before answering:
/// `2xx` means kept, `503` with `Retry-After` means nothing of it was kept.
async fn prometheus_webhook(
    State(app): State<AppState>,
    JsonBody(hook): JsonBody<Webhook, { limits::MAX_WEBHOOK_BYTES }>,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let signals = alert::signals(hook).map_err(ApiError::bad_request)?;
    let prepared = signals
        .iter()
        .enumerate()
        .map(|(i, s)| audit::prepare(s).map_err(|reason| format!("alerts[{i}]: {reason}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    let n = signals.len() as u64;
    Metrics::add(&app.metrics.received, n);
    // In a task of its own: a client that goes away while Redis keeps the webhook cannot
    // cut the counting short (the webhook is kept all the same; its retry is a repeat).
    let keeping = tokio::spawn(keep(app, signals, prepared));
    let outcomes = keeping
        .await
        .map_err(|e| ApiError::internal(&anyhow::anyhow!("keeping the webhook: {e}")))??;
    Ok((
        overall_status(&outcomes),
        Json(WebhookAnswer { signals: outcomes }),
    ))
}

/// Keeps the signals and their audit events (one Redis script), counts them, and says what
/// became of each.
async fn keep(
    app: AppState,
    signals: Vec<alert::Signal>,
    prepared: Vec<audit::Prepared>,
) -> Result<Vec<SignalOutcome>, ApiError> {
    let n = signals.len() as u64;
    let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let occurrences = match app.outbox.accept(&signals, &prepared, &timestamp).await {
        Ok(o) => o,
        Err(AcceptError::Unavailable(err)) => {
            Metrics::add(&app.metrics.unavailable, n);
            tracing::error!(
                error = format!("{err:#}"),
                alerts = n,
                "webhook not kept: Redis unavailable"
            );
            return Err(ApiError::unavailable(
                format!("signals not kept, deduplication unavailable: {err:#}"),
                1,
            ));
        }
        Err(AcceptError::Full { pending }) => {
            Metrics::add(&app.metrics.refused, n);
            tracing::error!(
                pending,
                max = app.outbox.max_events,
                "webhook not kept: the outbox is full"
            );
            return Err(ApiError::unavailable(
                format!(
                    "signals not kept: {pending} audit events wait for DataStorage, the outbox holds at most {}",
                    app.outbox.max_events
                ),
                5,
            ));
        }
    };
    Ok(signals
        .into_iter()
        .zip(occurrences)
        .map(|(signal, occurrence)| {
            let status = if occurrence.is_new() {
                Metrics::inc(&app.metrics.created);
                SignalStatus::Created
            } else {
                Metrics::inc(&app.metrics.deduplicated);
                SignalStatus::Deduplicated
            };
            let Occurrence {
                count,
                correlation_id,
            } = occurrence;
            tracing::debug!(fingerprint = %signal.fingerprint, alert = %signal.alert_name, namespace = %signal.namespace, occurrence = count, correlation_id = %correlation_id, ?status, "signal");
            SignalOutcome {
                status,
                fingerprint: signal.fingerprint,
                correlation_id,
                occurrence: count,
                alert_name: signal.alert_name,
                namespace: signal.namespace,
            }
        })
        .collect())
}

/// The result of one readiness check: `"ok"` or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    Failed(String),
}

impl Check {
    pub fn is_ok(&self) -> bool {
        *self == Check::Ok
    }

    fn of(r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>) -> Check {
        match r {
            Ok(Ok(())) => Check::Ok,
            Ok(Err(e)) => Check::Failed(format!("{e:#}")),
            Err(_) => Check::Failed("no answer within 2s".into()),
        }
    }
}

impl Serialize for Check {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Check::Ok => s.serialize_str("ok"),
            Check::Failed(why) => s.serialize_str(why),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    /// Signals are kept and their audit events reach DataStorage.
    Ready,
    /// Signals are kept, but their audit events wait in the outbox (DataStorage does not
    /// answer, or delivery is behind). Still `200`: the gateway takes webhooks.
    Degraded,
    /// Signals cannot be kept (Redis unavailable, or the outbox full): webhooks get `503`.
    Unavailable,
}

#[derive(Debug, Serialize)]
pub struct OutboxState {
    pub pending_events: u64,
    pub max_events: u64,
    pub oldest_pending_seconds: f64,
    pub dead_letter_events: u64,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub redis: Check,
    pub data_storage: Check,
    /// `null` when Redis does not answer.
    pub outbox: Option<OutboxState>,
}

/// Decides readiness from the checks.
pub fn readiness(
    redis: Check,
    data_storage: Check,
    backlog: Option<Backlog>,
    max_events: u64,
) -> Readiness {
    let status = match (&redis, backlog) {
        (Check::Failed(_), _) | (_, None) => ReadyStatus::Unavailable,
        (_, Some(b)) if b.pending + 2 > max_events => ReadyStatus::Unavailable,
        (_, Some(b)) if !data_storage.is_ok() || b.oldest_age_ms > BEHIND_AFTER_MS => {
            ReadyStatus::Degraded
        }
        _ => ReadyStatus::Ready,
    };
    Readiness {
        status,
        redis,
        data_storage,
        outbox: backlog.map(|b| OutboxState {
            pending_events: b.pending,
            max_events,
            oldest_pending_seconds: b.oldest_age_ms as f64 / 1000.0,
            dead_letter_events: b.dead_letters,
        }),
    }
}

async fn ready(State(app): State<AppState>) -> Response {
    // Redis operations are bounded inside the outbox (and must not be cut short from here:
    // a cancelled call could not drop a dead connection).
    let (backlog, ds) = tokio::join!(
        app.outbox.backlog(),
        tokio::time::timeout(Duration::from_secs(2), app.audit.ready()),
    );
    let (redis, backlog) = match backlog {
        Ok(b) => (Check::Ok, Some(b)),
        Err(e) => (Check::Failed(format!("{e:#}")), None),
    };
    let answer = readiness(redis, Check::of(ds), backlog, app.outbox.max_events);
    let code = if answer.status == ReadyStatus::Unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(answer)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let backlog = app.outbox.backlog().await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(backlog, app.outbox.max_events),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use service_kit::{openapi, testing};

    fn outcome(status: SignalStatus) -> SignalOutcome {
        SignalOutcome {
            status,
            fingerprint: "f".repeat(64),
            correlation_id: "c".into(),
            occurrence: 1,
            alert_name: "A".into(),
            namespace: String::new(),
        }
    }

    #[test]
    fn any_new_alert_makes_the_answer_201() {
        assert_eq!(
            overall_status(&[
                outcome(SignalStatus::Deduplicated),
                outcome(SignalStatus::Created)
            ]),
            StatusCode::CREATED
        );
        assert_eq!(
            overall_status(&[outcome(SignalStatus::Deduplicated)]),
            StatusCode::ACCEPTED
        );
    }

    #[test]
    fn readiness_is_degraded_not_unavailable_while_the_outbox_holds_the_events() {
        let b = |pending, oldest_age_ms| {
            Some(Backlog {
                pending,
                oldest_age_ms,
                dead_letters: 0,
            })
        };
        let down = || Check::Failed("down".into());
        assert_eq!(
            readiness(Check::Ok, Check::Ok, b(0, 0), 100).status,
            ReadyStatus::Ready
        );
        assert_eq!(
            readiness(Check::Ok, Check::Ok, b(10, 100), 100).status,
            ReadyStatus::Ready
        );
        assert_eq!(
            readiness(Check::Ok, down(), b(0, 0), 100).status,
            ReadyStatus::Degraded
        );
        assert_eq!(
            readiness(Check::Ok, Check::Ok, b(10, 60_000), 100).status,
            ReadyStatus::Degraded
        );
        assert_eq!(
            readiness(Check::Ok, down(), b(99, 0), 100).status,
            ReadyStatus::Unavailable
        );
        assert_eq!(
            readiness(down(), Check::Ok, None, 100).status,
            ReadyStatus::Unavailable
        );
        let v = serde_json::to_value(readiness(Check::Ok, down(), b(3, 1500), 100)).unwrap();
        assert_eq!(v["redis"], "ok");
        assert_eq!(v["data_storage"], "down");
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["outbox"]["pending_events"], 3);
    }

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("docs/openapi/gateway.json is JSON")
    }

    /// Redis and DataStorage are nowhere: every route still answers, which is all the
    /// routing checks need.
    fn app() -> Router {
        router(Arc::new(App {
            outbox: Arc::new(
                Outbox::new("redis://127.0.0.1:1", Duration::from_secs(5), 100).unwrap(),
            ),
            audit: AuditClient::new("http://127.0.0.1:1").unwrap(),
            metrics: Arc::new(Metrics::default()),
        }))
    }

    async fn call(method: &Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let reply = testing::call(app(), method, path, body.as_ref()).await;
        (reply.status, reply.body)
    }

    #[tokio::test]
    async fn the_document_lists_exactly_the_routes() {
        testing::assert_routes_documented(routes(), app, &doc(), "docs/openapi/gateway.json").await;
    }

    #[tokio::test]
    async fn the_served_document_is_the_kept_one() {
        let (status, served) = call(&Method::GET, "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served, doc());
    }

    #[tokio::test]
    async fn without_redis_a_webhook_gets_503_with_retry_after() {
        let body = json!({"alerts": [{"labels": {"alertname": "A"}}]});
        let resp = testing::call(
            app(),
            &Method::POST,
            "/api/v1/signals/prometheus",
            Some(&body),
        )
        .await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers[header::RETRY_AFTER], "1");
        let (status, ready) = call(&Method::GET, "/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ready["status"], "unavailable");
        let doc = doc();
        let schema = openapi::response_schema(&doc, "/ready", "GET", 503).unwrap();
        openapi::validate(&doc, schema, &ready).unwrap();
    }

    #[test]
    fn request_examples_are_valid_webhooks() {
        let doc = doc();
        let examples = openapi::request_examples(&doc, "/api/v1/signals/prometheus", "POST");
        assert!(!examples.is_empty());
        for ex in examples {
            let hook: Webhook = serde_json::from_value(ex.clone()).unwrap();
            let signals = alert::signals(hook).unwrap();
            for s in &signals {
                audit::prepare(s).unwrap();
            }
        }
    }

    #[test]
    fn answers_match_the_document() {
        let doc = doc();
        let check = |path: &str, method: &str, status: u16, value: Value| {
            let schema = openapi::response_schema(&doc, path, method, status)
                .unwrap_or_else(|| panic!("{method} {path} {status} is not documented"));
            openapi::validate(&doc, schema, &value)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}\n{value}"));
        };
        for (code, status) in [
            (201, SignalStatus::Created),
            (202, SignalStatus::Deduplicated),
        ] {
            let answer = WebhookAnswer {
                signals: vec![outcome(status)],
            };
            check(
                "/api/v1/signals/prometheus",
                "POST",
                code,
                serde_json::to_value(answer).unwrap(),
            );
        }
        let backlog = Some(Backlog {
            pending: 1,
            oldest_age_ms: 5,
            dead_letters: 0,
        });
        let ready = readiness(Check::Ok, Check::Failed("x".into()), backlog, 100);
        check("/ready", "GET", 200, serde_json::to_value(ready).unwrap());
        check("/health", "GET", 200, json!({"status": "alive"}));
        for code in [400, 413, 415, 503] {
            check(
                "/api/v1/signals/prometheus",
                "POST",
                code,
                json!({"error": "x"}),
            );
        }
    }
}
