//! Audit events: what the Gateway records for each signal, and the DataStorage client that
//! delivers them (in batches, from the outbox; see `outbox.rs` and `delivery.rs`).
//!
//! Each copy of a signal records two events under its correlation id, in order:
//! `signal.received` (with the labels and annotations), then `signal.created` (first copy)
//! or `signal.deduplicated` (a repeat, with its occurrence count). Their ids and their
//! positions in the correlation (`correlation_index` 2n-1 and 2n for the n-th copy) are
//! fixed when the signal is handled, so every delivery of an event is the same event, and
//! DataStorage stores it once.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::value::RawValue;
use service_kit::limits;

use crate::alert::Signal;

/// The event types the gateway records, in the order a signal produces them.
pub const RECEIVED: &str = "signal.received";
pub const CREATED: &str = "signal.created";
pub const DEDUPLICATED: &str = "signal.deduplicated";

/// The data of `signal.received`.
#[derive(Serialize)]
struct ReceivedData<'a> {
    fingerprint: &'a str,
    alert_name: &'a str,
    namespace: &'a str,
    status: &'a str,
    severity: Option<&'a str>,
    labels: &'a std::collections::BTreeMap<String, String>,
    annotations: &'a std::collections::BTreeMap<String, String>,
    starts_at: Option<&'a str>,
}

/// The data of `signal.created` / `signal.deduplicated`, less the occurrence count (known
/// only once the signal is deduplicated; [`follow_up_data`] adds it).
#[derive(Serialize)]
struct BaseData<'a> {
    fingerprint: &'a str,
    alert_name: &'a str,
    namespace: &'a str,
    status: &'a str,
    severity: Option<&'a str>,
}

/// What the outbox keeps for one signal's two events, prepared when the signal is handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub resource: String,
    /// `signal.received`'s data, as JSON.
    pub received_data: String,
    /// The follow-up event's data less `occurrence`, as JSON.
    pub base_data: String,
}

/// Prepares a signal's audit events and checks that DataStorage will take them: both events,
/// as they will be sent, must fit [`limits::MAX_EVENT_BYTES`] (DataStorage's limit).
pub fn prepare(signal: &Signal) -> Result<Prepared, String> {
    let received = ReceivedData {
        fingerprint: &signal.fingerprint,
        alert_name: &signal.alert_name,
        namespace: &signal.namespace,
        status: &signal.status,
        severity: signal.severity.as_deref(),
        labels: &signal.labels,
        annotations: &signal.annotations,
        starts_at: signal.starts_at.as_deref(),
    };
    let base = BaseData {
        fingerprint: &signal.fingerprint,
        alert_name: &signal.alert_name,
        namespace: &signal.namespace,
        status: &signal.status,
        severity: signal.severity.as_deref(),
    };
    let prepared = Prepared {
        resource: format!(
            "{}/{}",
            if signal.namespace.is_empty() {
                "-"
            } else {
                &signal.namespace
            },
            signal.alert_name
        ),
        received_data: serde_json::to_string(&received).expect("serializing audit data"),
        base_data: serde_json::to_string(&base).expect("serializing audit data"),
    };
    let largest = largest_event_len(&prepared);
    if largest > limits::MAX_EVENT_BYTES {
        return Err(format!(
            "labels and annotations make an audit event of {largest} bytes, more than the {} DataStorage takes",
            limits::MAX_EVENT_BYTES
        ));
    }
    Ok(prepared)
}

/// The size, as sent, of the larger of a signal's two events, at the largest values the
/// fields fixed later can take (a UUID correlation id, the largest index and occurrence).
fn largest_event_len(p: &Prepared) -> usize {
    let max_follow_up = follow_up_data(&p.base_data, u64::MAX);
    [p.received_data.as_str(), max_follow_up.as_str()]
        .iter()
        .map(|data| {
            event_json(&OutboxEvent {
                event_id: PLACEHOLDER_ID.into(),
                event_type: DEDUPLICATED.into(),
                correlation_id: PLACEHOLDER_ID.into(),
                correlation_index: u64::MAX,
                event_timestamp: "2026-01-01T00:00:00.000000Z".into(),
                resource: p.resource.clone(),
                data: (*data).to_owned(),
                occurrence: None,
            })
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
        })
        .max()
        .unwrap_or(0)
}

const PLACEHOLDER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// Adds `occurrence` to the base data (a JSON object serialized by serde_json, so it ends in
/// `}` and is not empty).
pub fn follow_up_data(base: &str, occurrence: u64) -> String {
    let body = base.strip_suffix('}').unwrap_or(base);
    format!("{body},\"occurrence\":{occurrence}}}")
}

/// One audit event as the outbox keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub event_id: String,
    pub event_type: String,
    pub correlation_id: String,
    pub correlation_index: u64,
    pub event_timestamp: String,
    pub resource: String,
    /// The data as JSON; for the follow-up event without `occurrence`, which is added from
    /// the field below.
    pub data: String,
    pub occurrence: Option<u64>,
}

/// The event as DataStorage's API takes it.
#[derive(Serialize)]
struct WireEvent<'a> {
    event_id: &'a str,
    event_type: &'a str,
    correlation_id: &'a str,
    correlation_index: u64,
    event_timestamp: &'a str,
    service: &'static str,
    resource: &'a str,
    data: &'a RawValue,
}

/// The event as DataStorage takes it, as JSON. Fails only if the kept data is not JSON.
pub fn event_json(e: &OutboxEvent) -> anyhow::Result<String> {
    let data = match e.occurrence {
        Some(n) => follow_up_data(&e.data, n),
        None => e.data.clone(),
    };
    let data = RawValue::from_string(data).context("the kept event data is not JSON")?;
    Ok(serde_json::to_string(&WireEvent {
        event_id: &e.event_id,
        event_type: &e.event_type,
        correlation_id: &e.correlation_id,
        correlation_index: e.correlation_index,
        event_timestamp: &e.event_timestamp,
        service: "gateway",
        resource: &e.resource,
        data: &data,
    })?)
}

/// Joins events (each already JSON) into a batch body, `{"events":[...]}`.
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let mut body = String::from("{\"events\":[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e);
    }
    body.push_str("]}");
    body
}

/// The bytes a batch body adds around its events: `{"events":[` `]}` and the commas.
pub const BATCH_OVERHEAD: usize = "{\"events\":[]}".len();

/// Why a delivery failed.
#[derive(Debug)]
pub enum DeliveryError {
    /// DataStorage did not take it now (unreachable, 5xx, timeout): retry later, unchanged.
    Retry(String),
    /// DataStorage refused it for good (400, 409, 413, 422): retrying will not help.
    Refused(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Retry(s) | DeliveryError::Refused(s) => f.write_str(s),
        }
    }
}

pub struct AuditClient {
    http: reqwest::Client,
    base: String,
}

impl AuditClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // DataStorage answers within its own 15 s bound; a batch normally takes
            // milliseconds. Past this, the same batch is sent again (stored once all the same).
            .timeout(Duration::from_secs(10))
            // Generous for a busy small machine; a refused connection fails at once anyway.
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(10))
            .pool_max_idle_per_host(8)
            .build()?;
        Ok(AuditClient {
            http,
            base: base.to_owned(),
        })
    }

    /// Sends a batch body (see [`batch_body`]); DataStorage stores it all or nothing.
    pub async fn post_batch(&self, body: String) -> Result<(), DeliveryError> {
        self.post("/api/v1/audit/events/batch", body).await
    }

    /// Sends one event (see [`event_json`]).
    pub async fn post_one(&self, body: String) -> Result<(), DeliveryError> {
        self.post("/api/v1/audit/events", body).await
    }

    async fn post(&self, path: &str, body: String) -> Result<(), DeliveryError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retry(format!("DataStorage not reached: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let reason = format!("DataStorage answered {status}: {text}");
        match status.as_u16() {
            400 | 409 | 413 | 422 => Err(DeliveryError::Refused(reason)),
            _ => Err(DeliveryError::Retry(reason)),
        }
    }

    pub async fn ready(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/health/ready", self.base))
            .send()
            .await
            .context("DataStorage not reached")?;
        anyhow::ensure!(
            resp.status().is_success(),
            "DataStorage /health/ready answered {}",
            resp.status()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::parse_webhook;

    fn signal(labels: &str, annotations: &str) -> Signal {
        parse_webhook(
            format!(r#"{{"alerts":[{{"labels":{labels},"annotations":{annotations},"startsAt":"2026-01-01T00:00:00Z"}}]}}"#)
                .as_bytes(),
        )
        .unwrap()
        .remove(0)
    }

    fn outbox_event(
        p: &Prepared,
        event_type: &str,
        index: u64,
        occurrence: Option<u64>,
    ) -> OutboxEvent {
        OutboxEvent {
            event_id: "e".into(),
            event_type: event_type.into(),
            correlation_id: "c".into(),
            correlation_index: index,
            event_timestamp: "2026-01-01T00:00:00.000000Z".into(),
            resource: p.resource.clone(),
            data: if occurrence.is_some() {
                p.base_data.clone()
            } else {
                p.received_data.clone()
            },
            occurrence,
        }
    }

    #[test]
    fn events_carry_what_the_audit_trail_shows() {
        let s = signal(
            r#"{"alertname":"A","namespace":"n","severity":"critical"}"#,
            r#"{"summary":"x"}"#,
        );
        let p = prepare(&s).unwrap();
        assert_eq!(p.resource, "n/A");
        let received = event_json(&outbox_event(&p, RECEIVED, 1, None)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&received).unwrap();
        assert_eq!(v["service"], "gateway");
        assert_eq!(v["correlation_index"], 1);
        assert_eq!(v["data"]["labels"]["alertname"], "A");
        assert_eq!(v["data"]["annotations"]["summary"], "x");
        assert_eq!(v["data"]["fingerprint"], s.fingerprint.as_str());

        let follow = event_json(&outbox_event(&p, DEDUPLICATED, 4, Some(2))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&follow).unwrap();
        assert_eq!(v["event_type"], DEDUPLICATED);
        assert_eq!(v["data"]["occurrence"], 2);
        assert_eq!(v["data"]["severity"], "critical");
        assert!(v["data"].get("labels").is_none());
    }

    #[test]
    fn a_signal_whose_event_datastorage_would_refuse_is_refused() {
        // Within the annotation limit in bytes, but each control character takes six bytes
        // once escaped in JSON: the event would be larger than DataStorage takes.
        let controls = "\\u0001".repeat(50_000);
        let s = signal(r#"{"alertname":"A"}"#, &format!(r#"{{"d":"{controls}"}}"#));
        assert_eq!(s.annotations["d"].len(), 50_000);
        let err = prepare(&s).unwrap_err();
        assert!(
            err.contains("more than the 262144 DataStorage takes"),
            "{err}"
        );

        // The bound is what a real event can reach: the largest index and occurrence.
        let p = prepare(&signal(r#"{"alertname":"A"}"#, r#"{"a":"b"}"#)).unwrap();
        let real = event_json(&outbox_event(&p, DEDUPLICATED, 2, Some(1))).unwrap();
        assert!(real.len() <= largest_event_len(&p));
    }

    #[test]
    fn batch_bodies_are_json() {
        let body = batch_body(["{\"a\":1}", "{\"b\":2}"]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(batch_body(std::iter::empty()).len(), BATCH_OVERHEAD);
    }
}
