//! What Gateway and DataStorage share: JSON logs, serving HTTP, and a graceful shutdown on
//! SIGTERM (what Kubernetes and podman send) or SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

/// JSON log lines on stdout; the level from `LOG_LEVEL` (an `EnvFilter`), `info` by default.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .init();
}

/// Serves `router` on `addr` until SIGTERM or SIGINT, then lets requests in flight finish.
pub async fn serve(name: &str, addr: SocketAddr, router: axum::Router) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("{name} stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
