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
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let config = config::Config::from_env().context("reading configuration")?;
    tracing::info!(listen = %config.listen_addr, redis = %config.redis_url, data_storage = %config.data_storage_url, dedup_ttl_s = config.dedup_ttl.as_secs(), "starting gateway");

    let app = Arc::new(api::App {
        dedup: dedup::Dedup::new(&config.redis_url, config.dedup_ttl)?,
        audit: audit::AuditClient::new(&config.data_storage_url)?,
        metrics: metrics::Metrics::default(),
    });
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("gateway stopped");
    Ok(())
}

fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
