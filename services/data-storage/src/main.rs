//! DataStorage: a REST API over PostgreSQL for audit events.
//!
//! Configuration comes from environment variables (see [`config::Config`]); logs are JSON
//! lines on stdout; SIGTERM and SIGINT shut the server down gracefully.

mod api;
mod config;
mod db;
mod event;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let config = config::Config::from_env().context("reading configuration")?;
    tracing::info!(listen = %config.listen_addr, db_host = %config.pg_host, db_name = %config.pg_database, "starting data-storage");

    let store = Arc::new(db::Store::new(&config).context("creating the PostgreSQL pool")?);
    // Migrations run in the background and are retried until PostgreSQL answers, so the
    // service can start before its database; `/health/ready` reports 503 until they ran.
    tokio::spawn(db::migrate_until_done(store.clone()));

    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    axum::serve(listener, api::router(store))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("data-storage stopped");
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
