//! Audit events, recorded in DataStorage.

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::alert::Signal;

pub struct AuditClient {
    http: reqwest::Client,
    base: String,
}

/// The event types the gateway records, in the order a signal produces them.
pub const RECEIVED: &str = "signal.received";
pub const CREATED: &str = "signal.created";
pub const DEDUPLICATED: &str = "signal.deduplicated";

impl AuditClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(AuditClient {
            http,
            base: base.to_owned(),
        })
    }

    pub async fn record(
        &self,
        event_type: &str,
        correlation_id: &str,
        signal: &Signal,
        extra: Value,
    ) -> anyhow::Result<()> {
        let mut data = json!({
            "fingerprint": signal.fingerprint,
            "alert_name": signal.alert_name,
            "namespace": signal.namespace,
            "status": signal.status,
            "severity": signal.severity,
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        let body = json!({
            "event_type": event_type,
            "correlation_id": correlation_id,
            "service": "gateway",
            "resource": format!("{}/{}", if signal.namespace.is_empty() { "-" } else { &signal.namespace }, signal.alert_name),
            "data": data,
        });
        let resp = self
            .http
            .post(format!("{}/api/v1/audit/events", self.base))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("sending {event_type} to DataStorage"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("DataStorage answered {status} to {event_type}: {text}");
        }
        Ok(())
    }

    pub async fn ready(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/health/ready", self.base))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "DataStorage /health/ready answered {}",
            resp.status()
        );
        Ok(())
    }
}
