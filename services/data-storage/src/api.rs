//! HTTP routes.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use service_kit::{
    api::{ApiError, JsonBody, Query},
    limits,
};

use crate::{
    db::{Store, StoreError},
    event::{self, BatchAnswer, EventList, NewBatch, NewEvent, WriteAnswer, WriteStatus},
};

type AppState = Arc<Store>;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("../../../docs/openapi/data-storage.json");

/// Every route: its path, its methods and its handlers. [`router`] serves exactly these, and
/// the tests check them against [`OPENAPI`].
pub fn routes() -> Vec<(&'static str, &'static [Method], MethodRouter<AppState>)> {
    vec![
        (
            "/api/v1/audit/events",
            &[Method::GET, Method::POST],
            get(list_events).post(create_event),
        ),
        (
            "/api/v1/audit/events/batch",
            &[Method::POST],
            post(create_batch),
        ),
        (
            "/health/live",
            &[Method::GET],
            get(|| async { Json(Health { status: "alive" }) }),
        ),
        ("/health/ready", &[Method::GET], get(ready)),
        (
            "/openapi.json",
            &[Method::GET],
            service_kit::openapi::document_route(OPENAPI),
        ),
    ]
}

pub fn router(store: AppState) -> Router {
    service_kit::api::serve(routes()).with_state(store)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => {
                tracing::warn!(reason, "PostgreSQL unavailable");
                ApiError::unavailable(reason, 1)
            }
            StoreError::Invalid(reason) => ApiError::bad_request(reason),
            StoreError::Conflict(reason) => ApiError::new(StatusCode::CONFLICT, reason),
            StoreError::Internal(err) => ApiError::internal(&err),
        }
    }
}

/// `201` when stored now, `200` when this event id was stored already (nothing new stored).
async fn create_event(
    State(store): State<AppState>,
    JsonBody(new): JsonBody<NewEvent, { limits::MAX_EVENT_BYTES }>,
) -> Result<Response, ApiError> {
    let valid = event::validate(new, "").map_err(ApiError::bad_request)?;
    let event_id = valid.event_id;
    tracing::info!(%event_id, event_type = %valid.event_type, correlation_id = %valid.correlation_id, "writing an event");
    let status = store.insert(vec![valid]).await?[0];
    let code = match status {
        WriteStatus::Created => StatusCode::CREATED,
        WriteStatus::Existing => StatusCode::OK,
    };
    Ok((code, Json(WriteAnswer { event_id, status })).into_response())
}

/// Stores a batch in its order, in one transaction: all or nothing.
async fn create_batch(
    State(store): State<AppState>,
    JsonBody(batch): JsonBody<NewBatch, { limits::MAX_BATCH_BYTES }>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let events = event::validate_batch(batch).map_err(ApiError::bad_request)?;
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let statuses = store.insert(events).await?;
    let created = statuses
        .iter()
        .filter(|s| **s == WriteStatus::Created)
        .count();
    tracing::info!(events = ids.len(), created, "batch written");
    Ok(Json(BatchAnswer {
        created,
        existing: ids.len() - created,
        events: ids
            .into_iter()
            .zip(statuses)
            .map(|(event_id, status)| WriteAnswer { event_id, status })
            .collect(),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    correlation_id: Option<String>,
}

async fn list_events(
    State(store): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<EventList>, ApiError> {
    let correlation_id =
        event::validate_correlation_id(q.correlation_id).map_err(ApiError::bad_request)?;
    let events = store.list(&correlation_id).await?;
    Ok(Json(EventList {
        correlation_id,
        count: events.len(),
        events,
    }))
}

/// What `/health/ready` answers.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: ReadyStatus,
    /// `ok`, or why PostgreSQL is not usable.
    pub postgres: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
    Migrating,
    Unavailable,
}

async fn ready(State(store): State<AppState>) -> Response {
    let answer = if !store.is_migrated() {
        Readiness {
            status: ReadyStatus::Migrating,
            postgres: "the schema migrations have not run yet".into(),
        }
    } else {
        match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => Readiness {
                status: ReadyStatus::Ready,
                postgres: "ok".into(),
            },
            Ok(Err(StoreError::Unavailable(reason))) => Readiness {
                status: ReadyStatus::Unavailable,
                postgres: reason,
            },
            Ok(Err(other)) => Readiness {
                status: ReadyStatus::Unavailable,
                postgres: format!("{other:?}"),
            },
            Err(_) => Readiness {
                status: ReadyStatus::Unavailable,
                postgres: "no answer within 2s".into(),
            },
        }
    };
    let code = if answer.status == ReadyStatus::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use service_kit::{openapi, testing};

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("docs/openapi/data-storage.json is JSON")
    }

    /// A store whose PostgreSQL is nowhere: every route still answers (503 where it needs
    /// the database), which is all the routing checks need.
    fn app() -> Router {
        let config = crate::config::Config::from_lookup(|k| match k {
            "POSTGRES_HOST" => Some("127.0.0.1".into()),
            "POSTGRES_PORT" => Some("1".into()),
            "POSTGRES_USER" | "POSTGRES_PASSWORD" | "POSTGRES_DB" => Some("x".into()),
            _ => None,
        })
        .unwrap();
        router(Arc::new(Store::new(&config).unwrap()))
    }

    async fn call(method: &Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let reply = testing::call(app(), method, path, body.as_ref()).await;
        (reply.status, reply.body)
    }

    #[tokio::test]
    async fn the_document_lists_exactly_the_routes() {
        testing::assert_routes_documented(routes(), app, &doc(), "docs/openapi/data-storage.json")
            .await;
    }

    #[tokio::test]
    async fn the_served_document_is_the_kept_one() {
        let (status, served) = call(&Method::GET, "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served, doc());
    }

    #[test]
    fn request_examples_are_valid_events() {
        let doc = doc();
        let single = openapi::request_examples(&doc, "/api/v1/audit/events", "POST");
        assert!(!single.is_empty());
        for ex in single {
            let new: NewEvent = serde_json::from_value(ex.clone()).unwrap();
            event::validate(new, "").unwrap();
        }
        let batches = openapi::request_examples(&doc, "/api/v1/audit/events/batch", "POST");
        assert!(!batches.is_empty());
        for ex in batches {
            let batch: NewBatch = serde_json::from_str(&ex.to_string()).unwrap();
            event::validate_batch(batch).unwrap();
        }
    }

    #[test]
    fn answers_match_the_document() {
        let doc = doc();
        let id = uuid::Uuid::new_v4();
        let now = chrono::Utc::now();
        let check = |path: &str, method: &str, status: u16, value: Value| {
            let schema = openapi::response_schema(&doc, path, method, status)
                .unwrap_or_else(|| panic!("{method} {path} {status} is not documented"));
            openapi::validate(&doc, schema, &value)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}\n{value}"));
        };
        let written = serde_json::to_value(WriteAnswer {
            event_id: id,
            status: WriteStatus::Created,
        })
        .unwrap();
        check("/api/v1/audit/events", "POST", 201, written.clone());
        check("/api/v1/audit/events", "POST", 200, written.clone());
        check(
            "/api/v1/audit/events/batch",
            "POST",
            200,
            serde_json::to_value(BatchAnswer {
                created: 1,
                existing: 0,
                events: vec![WriteAnswer {
                    event_id: id,
                    status: WriteStatus::Existing,
                }],
            })
            .unwrap(),
        );
        let stored = event::StoredEvent {
            event_id: id,
            sequence: 7,
            event_type: "signal.received".into(),
            correlation_id: "c".into(),
            correlation_index: Some(1),
            event_timestamp: now,
            service: "gateway".into(),
            resource: None,
            data: json!({"a": 1}),
            stored_at: now,
        };
        check(
            "/api/v1/audit/events",
            "GET",
            200,
            serde_json::to_value(EventList {
                correlation_id: "c".into(),
                count: 1,
                events: vec![stored],
            })
            .unwrap(),
        );
        for status in [ReadyStatus::Ready, ReadyStatus::Unavailable] {
            let code = if status == ReadyStatus::Ready {
                200
            } else {
                503
            };
            check(
                "/health/ready",
                "GET",
                code,
                serde_json::to_value(Readiness {
                    status,
                    postgres: "ok".into(),
                })
                .unwrap(),
            );
        }
        check("/health/live", "GET", 200, json!({"status": "alive"}));
        let error = json!({"error": "x"});
        for (path, method, codes) in [
            (
                "/api/v1/audit/events",
                "POST",
                &[400, 409, 413, 415, 503][..],
            ),
            (
                "/api/v1/audit/events/batch",
                "POST",
                &[400, 409, 413, 415, 503],
            ),
            ("/api/v1/audit/events", "GET", &[400, 503]),
        ] {
            for code in codes {
                check(path, method, *code, error.clone());
            }
        }
    }

    #[tokio::test]
    async fn writes_without_postgres_answer_503_with_retry_after() {
        let event = json!({"event_type": "a", "correlation_id": "c"});
        let resp = testing::call(app(), &Method::POST, "/api/v1/audit/events", Some(&event)).await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers.contains_key("retry-after"));
        let (status, body) = call(&Method::GET, "/health/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "migrating");
    }
}
