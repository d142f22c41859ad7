//! Counters and gauges, exposed in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::outbox::Backlog;

#[derive(Default)]
pub struct Metrics {
    pub received: AtomicU64,
    pub created: AtomicU64,
    pub deduplicated: AtomicU64,
    /// Alerts answered 503 because Redis could not keep them.
    pub unavailable: AtomicU64,
    /// Alerts answered 503 because the outbox was at its bound.
    pub refused: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_retries: AtomicU64,
    pub audit_failures: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The text of `/metrics`; the outbox gauges only when Redis answered for them.
    pub fn render(&self, backlog: Option<Backlog>, max_events: u64) -> String {
        let counters = [
            (
                "gateway_signals_received_total",
                "Alerts received from AlertManager webhooks.",
                &self.received,
            ),
            (
                "gateway_signals_created_total",
                "Alerts seen for the first time within the deduplication window.",
                &self.created,
            ),
            (
                "gateway_signals_deduplicated_total",
                "Alerts that repeated one already seen within the window.",
                &self.deduplicated,
            ),
            (
                "gateway_signals_unavailable_total",
                "Alerts answered 503 (Retry-After) because Redis could not keep them; nothing of them was kept.",
                &self.unavailable,
            ),
            (
                "gateway_outbox_refused_total",
                "Alerts answered 503 (Retry-After) because the outbox was at its bound.",
                &self.refused,
            ),
            (
                "gateway_outbox_delivered_total",
                "Audit events delivered from the outbox to DataStorage.",
                &self.delivered,
            ),
            (
                "gateway_outbox_delivery_retries_total",
                "Deliveries to DataStorage that failed and are retried with backoff.",
                &self.delivery_retries,
            ),
            (
                "gateway_audit_failures_total",
                "Audit events DataStorage refused for good, kept in the dead letters (audit:outbox:dead).",
                &self.audit_failures,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge(
            "gateway_outbox_max_events",
            "The outbox bound: past it, webhooks are answered 503.",
            max_events.to_string(),
        );
        if let Some(b) = backlog {
            gauge(
                "gateway_outbox_pending_events",
                "Audit events kept in the outbox, not yet stored by DataStorage.",
                b.pending.to_string(),
            );
            gauge(
                "gateway_outbox_oldest_pending_seconds",
                "Age of the oldest audit event waiting in the outbox (0 when none).",
                format!("{:.3}", b.oldest_age_ms as f64 / 1000.0),
            );
            gauge(
                "gateway_outbox_dead_letter_events",
                "Audit events in the dead letters (refused for good by DataStorage).",
                b.dead_letters.to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.received);
        Metrics::inc(&m.received);
        let text = m.render(
            Some(Backlog {
                pending: 4,
                oldest_age_ms: 1500,
                dead_letters: 0,
            }),
            100,
        );
        assert!(text.contains(
            "# TYPE gateway_signals_received_total counter\ngateway_signals_received_total 2\n"
        ));
        assert!(text.contains("gateway_signals_created_total 0\n"));
        assert!(text.contains(
            "# TYPE gateway_outbox_pending_events gauge\ngateway_outbox_pending_events 4\n"
        ));
        assert!(text.contains("gateway_outbox_oldest_pending_seconds 1.500\n"));
        let without = m.render(None, 100);
        assert!(!without.contains("gateway_outbox_pending_events"));
        assert!(without.contains("gateway_outbox_max_events 100\n"));
    }
}
