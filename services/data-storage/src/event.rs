//! Audit events: the wire format and its validation (pure, unit-tested).

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use service_kit::limits;
use uuid::Uuid;

const MAX_ID_LEN: usize = 128;

/// The body of `POST /api/v1/audit/events`, and each element of a batch's `events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Chosen by the client to make the write idempotent: a repeat with the same id (and the
    /// same content) stores nothing new. A fresh id is chosen when absent.
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub correlation_id: Option<String>,
    /// The event's position within its correlation (1, 2, ...), when the client knows it.
    pub correlation_index: Option<i64>,
    /// RFC 3339; defaults to the time the event is stored.
    pub event_timestamp: Option<DateTime<Utc>>,
    pub service: Option<String>,
    pub resource: Option<String>,
    /// Free-form JSON object with the event's details.
    pub data: Option<serde_json::Value>,
}

/// The body of `POST /api/v1/audit/events/batch`: the events stay raw until each is
/// measured against [`limits::MAX_EVENT_BYTES`], exactly as it was sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    pub events: Vec<Box<RawValue>>,
}

/// An event that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub correlation_id: String,
    pub correlation_index: Option<i64>,
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
    pub correlation_index: Option<i64>,
    pub event_timestamp: DateTime<Utc>,
    pub service: String,
    pub resource: Option<String>,
    pub data: serde_json::Value,
    pub stored_at: DateTime<Utc>,
}

/// Whether a write stored the event now or found it stored already (a repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Created,
    Existing,
}

/// The answer to one event's write.
#[derive(Debug, Serialize)]
pub struct WriteAnswer {
    pub event_id: Uuid,
    pub status: WriteStatus,
}

/// The answer to a batch.
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    pub created: usize,
    pub existing: usize,
    pub events: Vec<WriteAnswer>,
}

/// The answer to a listing.
#[derive(Debug, Serialize)]
pub struct EventList {
    pub correlation_id: String,
    pub count: usize,
    pub events: Vec<StoredEvent>,
}

/// Checks an incoming event; the error is a reason a client can act on, its fields named
/// after `at` (empty for a single event, `events[3].` in a batch).
pub fn validate(e: NewEvent, at: &str) -> Result<ValidEvent, String> {
    let event_type = required_id(&format!("{at}event_type"), e.event_type)?;
    if !event_type
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{at}event_type {event_type:?} may only hold lowercase letters, digits, '.', '_' and '-'"
        ));
    }
    let correlation_id = required_id(&format!("{at}correlation_id"), e.correlation_id)?;
    if let Some(index) = e.correlation_index {
        if index < 1 {
            return Err(format!("{at}correlation_index must be 1 or more"));
        }
    }
    if let Some(ts) = e.event_timestamp {
        if !(1..=9999).contains(&ts.year()) {
            return Err(format!(
                "{at}event_timestamp must lie in the years 1 to 9999"
            ));
        }
    }
    let data = match e.data {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err(format!("{at}data must be a JSON object")),
    };
    limits::check_json_text(&format!("{at}data"), &data)?;
    limits::check_event_data_maps(&format!("{at}data"), &data)?;
    let service = e.service.filter(|s| !s.is_empty());
    if let Some(s) = &service {
        limits::check_text(&format!("{at}service"), s)?;
    }
    let resource = e.resource.filter(|s| !s.is_empty());
    if let Some(r) = &resource {
        limits::check_text(&format!("{at}resource"), r)?;
    }
    Ok(ValidEvent {
        event_id: e.event_id.unwrap_or_else(Uuid::new_v4),
        event_type,
        correlation_id,
        correlation_index: e.correlation_index,
        event_timestamp: e.event_timestamp,
        service: service.unwrap_or_else(|| "unknown".into()),
        resource,
        data,
    })
}

/// Checks a batch: its size, each event as sent against [`limits::MAX_EVENT_BYTES`], each
/// event's content, and that no event id repeats within it.
pub fn validate_batch(batch: NewBatch) -> Result<Vec<ValidEvent>, String> {
    if batch.events.is_empty() {
        return Err("events must hold at least one event".into());
    }
    if batch.events.len() > limits::MAX_BATCH_EVENTS {
        return Err(format!(
            "events holds {} events, more than the {} allowed in one batch",
            batch.events.len(),
            limits::MAX_BATCH_EVENTS
        ));
    }
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(batch.events.len());
    for (i, raw) in batch.events.iter().enumerate() {
        let at = format!("events[{i}].");
        let len = raw.get().len();
        if len > limits::MAX_EVENT_BYTES {
            return Err(format!(
                "events[{i}] is {len} bytes, more than the {} allowed for one event",
                limits::MAX_EVENT_BYTES
            ));
        }
        let new: NewEvent = service_kit::api::parse_json(raw.get().as_bytes())
            .map_err(|reason| format!("events[{i}]: {reason}"))?;
        let given_id = new.event_id;
        let valid = validate(new, &at)?;
        if let Some(id) = given_id {
            if let Some(first) = seen.insert(id, i) {
                return Err(format!("events[{i}].event_id repeats events[{first}]"));
            }
        }
        out.push(valid);
    }
    Ok(out)
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
    limits::check_text(field, &value)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidEvent, String> {
        validate(serde_json::from_str(json).map_err(|e| e.to_string())?, "")
    }

    #[test]
    fn minimal_event_is_valid_with_defaults() {
        let e = parse(r#"{"event_type":"signal.received","correlation_id":"c-1"}"#).unwrap();
        assert_eq!(e.event_type, "signal.received");
        assert_eq!(e.service, "unknown");
        assert_eq!(e.data, serde_json::json!({}));
        assert!(e.event_timestamp.is_none());
        assert!(e.correlation_index.is_none());
    }

    #[test]
    fn a_given_event_id_is_kept() {
        let e = parse(r#"{"event_id":"0b6f9b8e-6a5e-4b8a-9d3c-2f9f6c1e2a10","event_type":"a","correlation_id":"c","correlation_index":2}"#).unwrap();
        assert_eq!(
            e.event_id.to_string(),
            "0b6f9b8e-6a5e-4b8a-9d3c-2f9f6c1e2a10"
        );
        assert_eq!(e.correlation_index, Some(2));
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
        let err =
            parse(r#"{"event_type":"a","correlation_id":"c","correlation_index":0}"#).unwrap_err();
        assert_eq!(err, "correlation_index must be 1 or more");
        let err = parse(r#"{"event_type":"a","correlation_id":"c\u0000"}"#).unwrap_err();
        assert!(err.starts_with("correlation_id contains the NUL"), "{err}");
        let err = parse(r#"{"event_type":"a","correlation_id":"c","data":{"x":["\u0000"]}}"#)
            .unwrap_err();
        assert!(err.starts_with("data.x[0] contains the NUL"), "{err}");
        let err = parse(
            r#"{"event_type":"a","correlation_id":"c","event_timestamp":"+10000-01-01T00:00:00Z"}"#,
        );
        assert!(err.is_err());
    }

    #[test]
    fn gateway_label_limits_apply_to_event_data() {
        let big = "v".repeat(limits::MAX_LABELS_BYTES);
        let err = parse(&format!(
            r#"{{"event_type":"a","correlation_id":"c","data":{{"labels":{{"x":"{big}"}}}}}}"#
        ))
        .unwrap_err();
        assert!(err.starts_with("data.labels hold"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_timestamps_are_rejected() {
        assert!(serde_json::from_str::<NewEvent>(r#"{"event_type":"a","colour":"red"}"#).is_err());
        assert!(serde_json::from_str::<NewEvent>(
            r#"{"event_type":"a","correlation_id":"c","event_timestamp":"yesterday"}"#
        )
        .is_err());
    }

    fn batch(json: &str) -> Result<Vec<ValidEvent>, String> {
        validate_batch(serde_json::from_str(json).map_err(|e| e.to_string())?)
    }

    #[test]
    fn batches_name_the_event_at_fault() {
        let ok = batch(r#"{"events":[{"event_type":"a","correlation_id":"c"},{"event_type":"b","correlation_id":"c"}]}"#).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            batch(r#"{"events":[]}"#).unwrap_err(),
            "events must hold at least one event"
        );
        let err =
            batch(r#"{"events":[{"event_type":"a","correlation_id":"c"},{"correlation_id":"c"}]}"#)
                .unwrap_err();
        assert_eq!(err, "events[1].event_type is required");
        let err = batch(r#"{"events":[{"event_type":"a","correlation_id":"c"},{"event_type":1}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("events[1]: event_type: invalid type"),
            "{err}"
        );
        let id = "0b6f9b8e-6a5e-4b8a-9d3c-2f9f6c1e2a10";
        let err = batch(&format!(r#"{{"events":[{{"event_id":"{id}","event_type":"a","correlation_id":"c"}},{{"event_id":"{id}","event_type":"a","correlation_id":"c"}}]}}"#)).unwrap_err();
        assert_eq!(err, "events[1].event_id repeats events[0]");
        let big = "x".repeat(limits::MAX_EVENT_BYTES);
        let err = batch(&format!(
            r#"{{"events":[{{"event_type":"a","correlation_id":"c","data":{{"x":"{big}"}}}}]}}"#
        ))
        .unwrap_err();
        assert!(err.contains("more than the 262144 allowed"), "{err}");
    }
}
