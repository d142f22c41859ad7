//! Audit events: the wire format and its validation (pure, unit-tested).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const MAX_ID_LEN: usize = 128;

/// The body of `POST /api/v1/audit/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub event_type: Option<String>,
    pub correlation_id: Option<String>,
    /// RFC 3339; defaults to the time the event is stored.
    pub event_timestamp: Option<DateTime<Utc>>,
    pub service: Option<String>,
    pub resource: Option<String>,
    /// Free-form JSON object with the event's details.
    pub data: Option<serde_json::Value>,
}

/// An event that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event_type: String,
    pub correlation_id: String,
    pub event_timestamp: Option<DateTime<Utc>>,
    pub service: String,
    pub resource: Option<String>,
    pub data: serde_json::Value,
}

/// A stored event, as listed by `GET /api/v1/audit/events`.
#[derive(Debug, Serialize)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub correlation_id: String,
    pub event_timestamp: DateTime<Utc>,
    pub service: String,
    pub resource: Option<String>,
    pub data: serde_json::Value,
    pub stored_at: DateTime<Utc>,
}

/// Checks an incoming event; the error is a reason a client can act on.
pub fn validate(e: NewEvent) -> Result<ValidEvent, String> {
    let event_type = required_id("event_type", e.event_type)?;
    if !event_type
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "event_type {event_type:?} may only hold lowercase letters, digits, '.', '_' and '-'"
        ));
    }
    let correlation_id = required_id("correlation_id", e.correlation_id)?;
    let data = match e.data {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err("data must be a JSON object".into()),
    };
    Ok(ValidEvent {
        event_type,
        correlation_id,
        event_timestamp: e.event_timestamp,
        service: e
            .service
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into()),
        resource: e.resource.filter(|s| !s.is_empty()),
        data,
    })
}

/// Checks the `correlation_id` query parameter of a listing.
pub fn validate_correlation_id(value: Option<String>) -> Result<String, String> {
    required_id("correlation_id", value)
}

fn required_id(field: &str, value: Option<String>) -> Result<String, String> {
    let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
    if value.is_empty() {
        return Err(format!("{field} is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{field} is longer than {MAX_ID_LEN} characters"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidEvent, String> {
        validate(serde_json::from_str(json).map_err(|e| e.to_string())?)
    }

    #[test]
    fn minimal_event_is_valid_with_defaults() {
        let e = parse(r#"{"event_type":"signal.received","correlation_id":"c-1"}"#).unwrap();
        assert_eq!(e.event_type, "signal.received");
        assert_eq!(e.service, "unknown");
        assert_eq!(e.data, serde_json::json!({}));
        assert!(e.event_timestamp.is_none());
    }

    #[test]
    fn missing_or_bad_fields_are_named() {
        let err = parse(r#"{"correlation_id":"c"}"#).unwrap_err();
        assert_eq!(err, "event_type is required");
        let err = parse(r#"{"event_type":"a","correlation_id":"  "}"#).unwrap_err();
        assert_eq!(err, "correlation_id is required");
        let err = parse(r#"{"event_type":"Bad Type","correlation_id":"c"}"#).unwrap_err();
        assert!(err.contains("lowercase"), "{err}");
        let err = parse(r#"{"event_type":"a","correlation_id":"c","data":[1]}"#).unwrap_err();
        assert_eq!(err, "data must be a JSON object");
        let long = "x".repeat(129);
        let err = parse(&format!(
            r#"{{"event_type":"a","correlation_id":"{long}"}}"#
        ))
        .unwrap_err();
        assert!(err.contains("longer than 128"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_timestamps_are_rejected() {
        assert!(serde_json::from_str::<NewEvent>(r#"{"event_type":"a","colour":"red"}"#).is_err());
        assert!(serde_json::from_str::<NewEvent>(
            r#"{"event_type":"a","correlation_id":"c","event_timestamp":"yesterday"}"#
        )
        .is_err());
    }
}
