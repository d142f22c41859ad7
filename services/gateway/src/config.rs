//! Configuration from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `REDIS_URL`, default `redis://redis:6379`.
    pub redis_url: String,
    /// `DATA_STORAGE_URL`, default `http://data-storage:8080`.
    pub data_storage_url: String,
    /// `DEDUP_TTL_SECONDS`, default 300: how long a repeat counts as a duplicate.
    pub dedup_ttl: Duration,
    /// `OUTBOX_MAX_EVENTS`, default 100000: the most audit events the outbox keeps while
    /// DataStorage does not take them; past it, webhooks are answered 503 (Retry-After).
    pub outbox_max_events: u64,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let value = |key: &str, default: &str| {
            get(key)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let ttl: u64 = value("DEDUP_TTL_SECONDS", "300")
            .parse()
            .context("DEDUP_TTL_SECONDS must be a whole number of seconds")?;
        anyhow::ensure!(ttl > 0, "DEDUP_TTL_SECONDS must be at least 1");
        let outbox_max_events: u64 = value("OUTBOX_MAX_EVENTS", "100000")
            .parse()
            .context("OUTBOX_MAX_EVENTS must be a whole number of events")?;
        anyhow::ensure!(
            outbox_max_events >= 2,
            "OUTBOX_MAX_EVENTS must be at least 2 (one signal's events)"
        );
        Ok(Config {
            listen_addr: value("LISTEN_ADDR", "0.0.0.0:8080")
                .parse()
                .context("LISTEN_ADDR must look like 0.0.0.0:8080")?,
            redis_url: value("REDIS_URL", "redis://redis:6379"),
            data_storage_url: value("DATA_STORAGE_URL", "http://data-storage:8080")
                .trim_end_matches('/')
                .to_owned(),
            dedup_ttl: Duration::from_secs(ttl),
            outbox_max_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.dedup_ttl, Duration::from_secs(300));
        assert_eq!(c.data_storage_url, "http://data-storage:8080");
        assert_eq!(c.outbox_max_events, 100_000);
        let err =
            Config::from_lookup(|k| (k == "OUTBOX_MAX_EVENTS").then(|| "1".into())).unwrap_err();
        assert!(err.to_string().contains("OUTBOX_MAX_EVENTS"));
        let err =
            Config::from_lookup(|k| (k == "DEDUP_TTL_SECONDS").then(|| "0".into())).unwrap_err();
        assert!(err.to_string().contains("DEDUP_TTL_SECONDS"));
        let c = Config::from_lookup(|k| (k == "DATA_STORAGE_URL").then(|| "http://ds:1/".into()))
            .unwrap();
        assert_eq!(c.data_storage_url, "http://ds:1");
    }
}
