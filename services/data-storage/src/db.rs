//! PostgreSQL: the pool, the schema migrations and the queries.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    config::Config,
    event::{StoredEvent, ValidEvent},
};

/// Migrations in order. Each runs once (recorded in `schema_migrations`), under an
/// advisory lock so that two replicas starting together do not race; the statements are
/// idempotent as well, so running the whole list twice is harmless.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS audit_events (
        sequence        BIGSERIAL PRIMARY KEY,
        event_id        UUID NOT NULL UNIQUE,
        event_type      TEXT NOT NULL,
        correlation_id  TEXT NOT NULL,
        event_timestamp TIMESTAMPTZ NOT NULL,
        service         TEXT NOT NULL,
        resource        TEXT,
        data            JSONB NOT NULL DEFAULT '{}'::jsonb,
        stored_at       TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS audit_events_correlation
        ON audit_events (correlation_id, sequence);",
)];

const MIGRATION_LOCK: i64 = 0x6175_6469_745f_6576; // "audit_ev"

pub struct Store {
    pool: Pool,
    migrated: watch::Sender<bool>,
}

impl Store {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.pg_host)
            .port(config.pg_port)
            .user(&config.pg_user)
            .password(&config.pg_password)
            .dbname(&config.pg_database)
            .application_name("data-storage")
            .connect_timeout(Duration::from_secs(3));
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(2)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?;
        Ok(Store {
            pool,
            migrated: watch::channel(false).0,
        })
    }

    pub fn is_migrated(&self) -> bool {
        *self.migrated.borrow()
    }

    /// Runs the migrations that have not run yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("connecting to PostgreSQL")?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if done {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("migration {version}"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "migration applied");
        }
        tx.commit().await?;
        self.migrated.send_replace(true);
        Ok(())
    }

    /// Answers whether PostgreSQL answers a query now.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub async fn insert(&self, e: &ValidEvent) -> anyhow::Result<Uuid> {
        let client = self.pool.get().await?;
        let id = Uuid::new_v4();
        client
            .execute(
                "INSERT INTO audit_events
                    (event_id, event_type, correlation_id, event_timestamp, service, resource, data)
                 VALUES ($1, $2, $3, COALESCE($4, now()), $5, $6, $7)",
                &[
                    &id,
                    &e.event_type,
                    &e.correlation_id,
                    &e.event_timestamp,
                    &e.service,
                    &e.resource,
                    &e.data,
                ],
            )
            .await?;
        Ok(id)
    }

    pub async fn list(&self, correlation_id: &str) -> anyhow::Result<Vec<StoredEvent>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT event_id, sequence, event_type, correlation_id, event_timestamp,
                        service, resource, data, stored_at
                 FROM audit_events WHERE correlation_id = $1 ORDER BY sequence",
                &[&correlation_id],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                event_id: r.get(0),
                sequence: r.get(1),
                event_type: r.get(2),
                correlation_id: r.get(3),
                event_timestamp: r.get(4),
                service: r.get(5),
                resource: r.get(6),
                data: r.get(7),
                stored_at: r.get(8),
            })
            .collect())
    }
}

/// Retries the migrations until they succeed: PostgreSQL may start after this service.
pub async fn migrate_until_done(store: Arc<Store>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.migrate().await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "migrations not applied yet"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}
