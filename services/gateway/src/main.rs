//! Gateway: takes Prometheus AlertManager webhooks, deduplicates them in Redis and records
//! audit events in DataStorage.
//!
//! Configuration comes from environment variables (see [`config::Config`]); logs are JSON
//! lines on stdout; SIGTERM and SIGINT shut the server down gracefully.

mod alert;
mod api;
mod audit;
mod config;
mod dedup;
mod metrics;

use std::sync::Arc;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::init_logging();
    let config = config::Config::from_env().context("reading configuration")?;
    tracing::info!(listen = %config.listen_addr, redis = %config.redis_url, data_storage = %config.data_storage_url, dedup_ttl_s = config.dedup_ttl.as_secs(), "starting gateway");

    let app = Arc::new(api::App {
        dedup: dedup::Dedup::new(&config.redis_url, config.dedup_ttl)?,
        audit: audit::AuditClient::new(&config.data_storage_url)?,
        metrics: metrics::Metrics::default(),
    });
    service_kit::serve("gateway", config.listen_addr, api::router(app)).await
}
