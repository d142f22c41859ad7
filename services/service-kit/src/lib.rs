//! What Gateway and DataStorage share: JSON logs, serving HTTP, a graceful shutdown on
//! SIGTERM (what Kubernetes and podman send) or SIGINT, one style of JSON API errors and the
//! extractors that produce it ([`api`]), the limits both services apply to the same input
//! ([`limits`]), and serving their OpenAPI documents ([`openapi`]).

pub mod api;
pub mod limits;
pub mod openapi;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};

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

/// Set once SIGTERM or SIGINT arrives; every clone sees it. The HTTP server and background
/// tasks (the Gateway's outbox delivery) stop on it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Listens for SIGTERM and SIGINT from now on.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
            tx.send_replace(true);
        });
        Shutdown(rx)
    }

    /// A shutdown that `trigger` sets (tests).
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once shutdown was asked for (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the sender is gone: nobody can ask any more, so treat it as asked.
        let _ = self.0.wait_for(|set| *set).await;
    }
}

/// Serves `router` on `addr` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    router: axum::Router,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .context("serving HTTP")?;
    tracing::info!("{name} stopped serving HTTP");
    Ok(())
}
