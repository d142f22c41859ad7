//! AlertManager webhook payloads and signal fingerprints (pure, unit-tested).

use std::collections::BTreeMap;

use serde::Deserialize;
use service_kit::limits;
use sha2::{Digest, Sha256};

/// The webhook body AlertManager POSTs (version 4). Only what the gateway uses is typed;
/// the rest is accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct Webhook {
    pub alerts: Option<Vec<Alert>>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    #[serde(default)]
    pub status: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    pub starts_at: Option<String>,
}

/// One alert, checked: what the gateway deduplicates and records.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub alert_name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub severity: Option<String>,
    pub status: String,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: Option<String>,
    pub fingerprint: String,
}

/// Checks a webhook and turns its alerts into signals; the error is a reason for a `400`
/// answer, naming the field.
pub fn signals(hook: Webhook) -> Result<Vec<Signal>, String> {
    let alerts = hook.alerts.ok_or("alerts is required")?;
    if alerts.is_empty() {
        return Err("alerts must hold at least one alert".into());
    }
    alerts
        .into_iter()
        .enumerate()
        .map(|(i, alert)| to_signal(alert).map_err(|reason| format!("alerts[{i}].{reason}")))
        .collect()
}

/// Parses and checks a webhook body (tests and tools; the route uses the JSON extractor).
#[cfg(test)]
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Signal>, String> {
    let hook: Webhook = service_kit::api::parse_json(body)
        .map_err(|reason| format!("invalid JSON body: {reason}"))?;
    signals(hook)
}

fn to_signal(alert: Alert) -> Result<Signal, String> {
    let labels = alert.labels.ok_or("labels is required")?;
    let alert_name = labels
        .get("alertname")
        .filter(|v| !v.trim().is_empty())
        .ok_or("labels.alertname is required")?
        .clone();
    limits::check_string_map(
        "labels",
        labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        limits::MAX_LABELS_BYTES,
    )?;
    limits::check_string_map(
        "annotations",
        alert
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        limits::MAX_ANNOTATIONS_BYTES,
    )?;
    let status = alert.status.unwrap_or_else(|| "firing".into());
    limits::check_text("status", &status)?;
    if let Some(s) = &alert.starts_at {
        limits::check_text("startsAt", s)?;
    }
    let namespace = labels.get("namespace").cloned().unwrap_or_default();
    Ok(Signal {
        fingerprint: fingerprint(&alert_name, &namespace, &labels),
        severity: labels.get("severity").cloned(),
        status,
        annotations: alert.annotations,
        starts_at: alert.starts_at,
        alert_name,
        namespace,
        labels,
    })
}

/// A stable identity for an alert: SHA-256 over the alert name, the namespace and every
/// label sorted by name. Each part is length-prefixed, so no two label sets collide by
/// shifting characters between a name and a value.
pub fn fingerprint(alert_name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    put(alert_name);
    put(namespace);
    for (k, v) in labels {
        put(k);
        put(v);
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fingerprint_ignores_label_order_but_not_values() {
        let a = parse_webhook(
            br#"{"alerts":[{"labels":{"alertname":"A","namespace":"n","pod":"p","x":"1"}}]}"#,
        )
        .unwrap();
        let b = parse_webhook(
            br#"{"alerts":[{"labels":{"x":"1","pod":"p","namespace":"n","alertname":"A"}}]}"#,
        )
        .unwrap();
        let c = parse_webhook(
            br#"{"alerts":[{"labels":{"alertname":"A","namespace":"n","pod":"q","x":"1"}}]}"#,
        )
        .unwrap();
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_ne!(a[0].fingerprint, c[0].fingerprint);
        assert_eq!(a[0].fingerprint.len(), 64);
    }

    #[test]
    fn fingerprint_parts_do_not_run_together() {
        let one = fingerprint("A", "n", &labels(&[("ab", "c")]));
        let two = fingerprint("A", "n", &labels(&[("a", "bc")]));
        assert_ne!(one, two);
    }

    #[test]
    fn annotations_and_timestamps_do_not_change_the_fingerprint() {
        let a = parse_webhook(br#"{"alerts":[{"labels":{"alertname":"A"},"annotations":{"summary":"x"},"startsAt":"2026-01-01T00:00:00Z"}]}"#).unwrap();
        let b = parse_webhook(
            br#"{"alerts":[{"labels":{"alertname":"A"},"annotations":{"summary":"y"}}]}"#,
        )
        .unwrap();
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_eq!(a[0].namespace, "");
        assert_eq!(a[0].status, "firing");
    }

    #[test]
    fn oversized_or_unstorable_labels_are_refused_naming_the_field() {
        let big = "x".repeat(limits::MAX_LABELS_BYTES);
        let err = parse_webhook(
            format!(r#"{{"alerts":[{{"labels":{{"alertname":"A","pod":"{big}"}}}}]}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(err.starts_with("alerts[0].labels hold"), "{err}");
        let big = "x".repeat(limits::MAX_ANNOTATIONS_BYTES);
        let err = parse_webhook(
            format!(
                r#"{{"alerts":[{{"labels":{{"alertname":"A"}},"annotations":{{"d":"{big}"}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert!(err.starts_with("alerts[0].annotations hold"), "{err}");
        let err = parse_webhook(br#"{"alerts":[{"labels":{"alertname":"A","x":"\u0000"}}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("alerts[0].labels.x contains the NUL"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse_webhook(br#"{"alerts":[{"labels":{"alertname":"A","n":1}}]}"#).unwrap_err();
        assert!(
            err.starts_with("invalid JSON body: alerts[0].labels.n: invalid type"),
            "{err}"
        );
        let err = parse_webhook(br#"{"alerts":"many"}"#).unwrap_err();
        assert!(
            err.starts_with("invalid JSON body: alerts: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn malformed_payloads_are_explained() {
        assert!(parse_webhook(b"{not json")
            .unwrap_err()
            .starts_with("invalid JSON body"));
        assert_eq!(parse_webhook(b"{}").unwrap_err(), "alerts is required");
        assert_eq!(
            parse_webhook(br#"{"alerts":[]}"#).unwrap_err(),
            "alerts must hold at least one alert"
        );
        assert_eq!(
            parse_webhook(br#"{"alerts":[{}]}"#).unwrap_err(),
            "alerts[0].labels is required"
        );
        assert_eq!(
            parse_webhook(
                br#"{"alerts":[{"labels":{"alertname":"A"}},{"labels":{"severity":"x"}}]}"#
            )
            .unwrap_err(),
            "alerts[1].labels.alertname is required"
        );
    }
}
