//! HTTP routes.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use crate::{db::Store, event};

type AppState = Arc<Store>;

pub fn router(store: AppState) -> Router {
    Router::new()
        .route("/api/v1/audit/events", get(list_events).post(create_event))
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route("/health/ready", get(ready))
        .with_state(store)
}

/// An error answer: a status and a reason in `{"error": ...}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn internal(err: anyhow::Error) -> ApiError {
    tracing::error!(error = format!("{err:#}"), "request failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error, see the service log".into(),
    )
}

/// Accepts `application/json` (with or without parameters) and nothing else.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn create_event(
    State(store): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".into(),
        ));
    }
    let new: event::NewEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let valid = event::validate(new).map_err(|reason| ApiError(StatusCode::BAD_REQUEST, reason))?;
    let id = store.insert(&valid).await.map_err(internal)?;
    tracing::info!(event_id = %id, event_type = %valid.event_type, correlation_id = %valid.correlation_id, "event stored");
    Ok((StatusCode::CREATED, Json(json!({ "event_id": id }))))
}

#[derive(Deserialize)]
struct ListQuery {
    correlation_id: Option<String>,
}

async fn list_events(
    State(store): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let correlation_id = event::validate_correlation_id(q.correlation_id)
        .map_err(|reason| ApiError(StatusCode::BAD_REQUEST, reason))?;
    let events = store.list(&correlation_id).await.map_err(internal)?;
    Ok(Json(
        json!({ "correlation_id": correlation_id, "count": events.len(), "events": events }),
    ))
}

async fn ready(State(store): State<AppState>) -> Response {
    if !store.is_migrated() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "migrating"})),
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "postgres": format!("{err:#}")})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "postgres": "no answer within 2s"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_check_accepts_parameters_only_for_json() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
