//! Counters, exposed in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub received: AtomicU64,
    pub created: AtomicU64,
    pub deduplicated: AtomicU64,
    pub audit_failures: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows = [
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
                "gateway_audit_failures_total",
                "Audit events that could not be recorded in DataStorage.",
                &self.audit_failures,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
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
        let text = m.render();
        assert!(text.contains(
            "# TYPE gateway_signals_received_total counter\ngateway_signals_received_total 2\n"
        ));
        assert!(text.contains("gateway_signals_created_total 0\n"));
    }
}
