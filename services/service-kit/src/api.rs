//! One style of JSON API for both services: every error is `{"error": "..."}` with its
//! status, and the extractors below reject bad input in that style.
//!
//! - [`JsonBody`]: `415` unless `Content-Type` is `application/json`; `413` when the body is
//!   larger than the route's limit (the body is read to its end first, up to
//!   [`limits::MAX_DRAINED_BYTES`], so the client gets the answer instead of a reset
//!   connection); `400` naming the field for invalid JSON, a wrong type or a missing field.
//! - [`Query`]: `400` naming the parameter.
//! - [`not_found`] and [`method_not_allowed`]: the router's fallbacks, in the same style.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use http_body_util::BodyExt;
use serde::{de::DeserializeOwned, Serialize};

use crate::limits;

/// An error answer: a status, a reason a client can act on, and for `503` how many seconds
/// to wait before retrying (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// `503 Service Unavailable` with `Retry-After: retry_after_s`: nothing was kept, send
    /// the same request again later.
    pub fn unavailable(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(retry_after_s),
        }
    }

    /// `500`, with the details in the log only.
    pub fn internal(err: &anyhow::Error) -> ApiError {
        tracing::error!(error = format!("{err:#}"), "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error, see the service log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Accepts `application/json` (with or without parameters) and nothing else.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses JSON into `T`; the error names the field (`alerts[0].labels: invalid type: ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(describe_path_error)?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

fn describe_path_error(err: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = err.path().to_string();
    if path == "." || path.is_empty() {
        err.into_inner().to_string()
    } else {
        format!("{path}: {}", err.into_inner())
    }
}

/// A JSON request body of at most `LIMIT` bytes, deserialized into `T`.
pub struct JsonBody<T, const LIMIT: usize = { limits::DEFAULT_BODY_BYTES }>(pub T);

impl<S, T, const LIMIT: usize> FromRequest<S> for JsonBody<T, LIMIT>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_json_body(req, LIMIT).await?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(|reason| ApiError::bad_request(format!("invalid JSON body: {reason}")))
    }
}

/// Checks the content type and reads the body, at most `limit` bytes.
pub async fn read_json_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limits::MAX_DRAINED_BYTES as u64) {
        // Too large to be worth reading to its end: answer at once (the connection closes).
        return Err(too_large(len, limit));
    }
    read_limited(req.into_body(), limit).await
}

fn too_large(len: u64, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {len} bytes, more than the {limit} allowed"),
    )
}

/// Reads a body of at most `limit` bytes. A larger one is still read to its end (discarded,
/// up to [`limits::MAX_DRAINED_BYTES`] and for at most 30 s) before the `413` answer, so that
/// a client still sending gets the answer instead of a reset connection.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("reading the request body failed: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if total <= limit as u64 {
                    buf.extend_from_slice(&data);
                } else if total > limits::MAX_DRAINED_BYTES as u64 {
                    break;
                }
            }
        }
        Ok::<(), ApiError>(())
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(result) => result?,
        Err(_) if total <= limit as u64 => {
            return Err(ApiError::bad_request(
                "the request body did not arrive within 30s",
            ))
        }
        Err(_) => {}
    }
    if total > limit as u64 {
        return Err(too_large(total, limit));
    }
    Ok(Bytes::from(buf))
}

/// Query parameters deserialized into `T`; `400` naming the parameter otherwise.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The router's fallback for paths it does not serve.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such path")
}

/// The router's fallback for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// One route of a service: its path, the methods it serves and its handlers. Each service
/// lists its routes once; [`serve`] routes exactly those, and its tests check them against
/// its OpenAPI document.
pub type Route<S> = (
    &'static str,
    &'static [axum::http::Method],
    axum::routing::MethodRouter<S>,
);

/// A router of exactly `routes`, with the JSON fallbacks.
pub fn serve<S: Clone + Send + Sync + 'static>(routes: Vec<Route<S>>) -> axum::Router<S> {
    let router = routes
        .into_iter()
        .fold(axum::Router::new(), |r, (path, _, handler)| {
            r.route(path, handler)
        });
    with_fallbacks(router)
}

/// Adds the JSON fallbacks for unknown paths (`404`) and methods (`405`).
pub fn with_fallbacks<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
) -> axum::Router<S> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{routing::post, Router};
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Thing {
        name: String,
        items: Vec<u32>,
    }

    async fn thing(JsonBody(t): JsonBody<Thing, 64>) -> String {
        t.name
    }

    fn app() -> Router {
        with_fallbacks(Router::new().route("/thing", post(thing)))
    }

    async fn call(req: Request) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, ct, json)
    }

    fn post_json(body: impl Into<Body>) -> Request {
        Request::post("/thing")
            .header("content-type", "application/json; charset=utf-8")
            .body(body.into())
            .unwrap()
    }

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

    #[tokio::test]
    async fn rejections_are_json_and_name_the_field() {
        let (s, ct, body) = call(post_json(r#"{"name":"a","items":[1,"x"]}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(ct.as_deref(), Some("application/json"));
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("invalid JSON body: items[1]: invalid type"),
            "{error}"
        );

        let (s, _, body) = call(post_json(r#"{"items":[]}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("missing field `name`"),
            "{body}"
        );

        let (s, _, body) = call(post_json("{nope")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"));

        let (s, _, body) = call(post_json(r#"{"name":"a","items":[]} trailing"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

        let text = Request::post("/thing")
            .header("content-type", "text/plain")
            .body(Body::from("{}"))
            .unwrap();
        let (s, _, body) = call(text).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"], "Content-Type must be application/json");
    }

    #[tokio::test]
    async fn an_oversized_body_is_read_and_answered_413() {
        let big = format!(r#"{{"name":"{}","items":[]}}"#, "x".repeat(1000));
        let (s, ct, body) = call(post_json(big)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ct.as_deref(), Some("application/json"));
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("more than the 64 allowed"),
            "{body}"
        );
        let (s, _, _) = call(post_json(r#"{"name":"ok","items":[1]}"#)).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn fallbacks_answer_in_json() {
        let (s, _, body) = call(Request::get("/nothing").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no such path");
        let (s, _, body) = call(Request::get("/thing").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].is_string());
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let resp = ApiError::unavailable("Redis is down", 2).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }
}
