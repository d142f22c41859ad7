//! What the services' API tests share (feature `testing`, enabled by their
//! dev-dependencies only): one request sent through a router, and the check that a service's
//! routes are exactly its OpenAPI document's.

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::{api::Route, openapi};

/// A reply, its body read whole and parsed as JSON (`Null` when it is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends one request to `app`, with `body` as JSON when given.
pub async fn call(app: Router, method: &Method, path: &str, body: Option<&Value>) -> Reply {
    let mut req = Request::builder().method(method.clone()).uri(path);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// The document (`name` in messages) lists exactly `routes`, and each route serves exactly
/// the methods it declares: any other method gets `405`.
pub async fn assert_routes_documented<S>(
    routes: Vec<Route<S>>,
    app: impl Fn() -> Router,
    doc: &Value,
    name: &str,
) {
    let declared: Vec<(&str, &[Method])> = routes.iter().map(|(p, m, _)| (*p, *m)).collect();
    let served: std::collections::BTreeSet<(String, String)> = declared
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(|m| ((*path).to_owned(), m.to_string())))
        .collect();
    assert_eq!(openapi::operations(doc), served, "{name} vs routes()");
    for (path, methods) in declared {
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let status = call(app(), &m, path, None).await.status;
            assert_eq!(
                status != StatusCode::METHOD_NOT_ALLOWED,
                methods.contains(&m),
                "{m} {path} answered {status}"
            );
        }
    }
}
