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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::init_logging();
    let config = config::Config::from_env().context("reading configuration")?;
    tracing::info!(listen = %config.listen_addr, db_host = %config.pg_host, db_name = %config.pg_database, "starting data-storage");

    let store = Arc::new(db::Store::new(&config).context("creating the PostgreSQL pool")?);
    // Migrations run in the background and are retried until PostgreSQL answers, so the
    // service can start before its database; `/health/ready` reports 503 until they ran.
    tokio::spawn(db::migrate_until_done(store.clone()));

    service_kit::serve(
        "data-storage",
        config.listen_addr,
        api::router(store),
        service_kit::Shutdown::on_signals(),
    )
    .await
}
