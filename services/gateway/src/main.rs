//! Gateway: takes Prometheus AlertManager webhooks, deduplicates them in Redis and records
//! audit events in DataStorage, through an outbox in Redis (see `outbox.rs`).
//!
//! Configuration comes from environment variables (see [`config::Config`]); logs are JSON
//! lines on stdout; SIGTERM and SIGINT shut the server down gracefully: requests in flight
//! finish, and the outbox is left to the next start.

mod alert;
mod api;
mod audit;
mod config;
mod delivery;
mod metrics;
mod outbox;

use std::{sync::Arc, time::Duration};

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::init_logging();
    let config = config::Config::from_env().context("reading configuration")?;
    tracing::info!(listen = %config.listen_addr, redis = %config.redis_url, data_storage = %config.data_storage_url, dedup_ttl_s = config.dedup_ttl.as_secs(), outbox_max_events = config.outbox_max_events, "starting gateway");

    let shutdown = service_kit::Shutdown::on_signals();
    let outbox = Arc::new(outbox::Outbox::new(
        &config.redis_url,
        config.dedup_ttl,
        config.outbox_max_events,
    )?);
    let metrics = Arc::new(metrics::Metrics::default());
    let delivery = tokio::spawn(
        delivery::Delivery {
            outbox: outbox.clone(),
            client: audit::AuditClient::new(&config.data_storage_url)?,
            metrics: metrics.clone(),
            holder: uuid::Uuid::new_v4().to_string(),
        }
        .run(shutdown.clone()),
    );
    let app = Arc::new(api::App {
        outbox,
        audit: audit::AuditClient::new(&config.data_storage_url)?,
        metrics,
    });
    let served =
        service_kit::serve("gateway", config.listen_addr, api::router(app), shutdown).await;
    // Delivery stops after its current round; one still waiting for DataStorage after 3 s
    // is left: its events stay in the outbox and are sent again (stored once all the same).
    if tokio::time::timeout(Duration::from_secs(3), delivery)
        .await
        .is_err()
    {
        tracing::warn!("audit delivery did not stop within 3s; its events stay in the outbox");
    }
    tracing::info!("gateway stopped");
    served
}
