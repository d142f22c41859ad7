//! PostgreSQL: the pool, the schema migrations and the queries.
//!
//! Writes are idempotent on `event_id`: a batch is inserted in one statement, in order, in
//! one transaction, skipping ids already stored; a skipped event whose content differs from
//! what is stored under its id makes the whole batch a conflict (nothing is stored).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    config::Config,
    event::{StoredEvent, ValidEvent, WriteStatus},
};

/// Migrations in order. Each runs once (recorded in `schema_migrations`), under an
/// advisory lock so that two replicas starting together do not race; the statements are
/// idempotent as well, so running the whole list twice is harmless.
const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        "ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS correlation_index BIGINT;",
    ),
];

const MIGRATION_LOCK: i64 = 0x6175_6469_745f_6576; // "audit_ev"

/// Any database operation answers within this, whatever PostgreSQL does (503 past it).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The events of a batch as arrays, one per column, in the batch's order.
const EVENTS: &str = "UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[],
                             $6::text[], $7::text[], $8::jsonb[])
        WITH ORDINALITY AS e(event_id, event_type, correlation_id, correlation_index,
                             event_timestamp, service, resource, data, ord)";

/// Why a query failed, as the API answers it.
#[derive(Debug)]
pub enum StoreError {
    /// PostgreSQL does not answer (down, restarting, unreachable) or the schema is not
    /// migrated yet: `503`, retry later.
    Unavailable(String),
    /// PostgreSQL refused a value: `400`.
    Invalid(String),
    /// An event id is stored already with other content: `409`.
    Conflict(String),
    /// Anything else: `500`.
    Internal(anyhow::Error),
}

impl From<PoolError> for StoreError {
    fn from(err: PoolError) -> Self {
        match err {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) | PoolError::Closed => {
                StoreError::Unavailable(format!("PostgreSQL: {err}"))
            }
            other => StoreError::Internal(anyhow::anyhow!("PostgreSQL pool: {other}")),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        if let Some(db) = err.as_db_error() {
            let code = db.code().code();
            return match &code[..2] {
                // connection exception, transaction rollback (serialization, deadlock),
                // insufficient resources, object not in prerequisite state (lock timeout),
                // operator intervention (shutdown, restart, cannot connect now, timeout):
                // all pass, so the client retries
                "08" | "40" | "53" | "55" | "57" => {
                    StoreError::Unavailable(format!("PostgreSQL: {}", db.message()))
                }
                // data exception: a value PostgreSQL cannot take
                "22" => StoreError::Invalid(format!("a value was refused: {}", db.message())),
                _ => StoreError::Internal(anyhow::Error::new(err)),
            };
        }
        let source = std::error::Error::source(&err);
        let io = source.is_some_and(|s| s.is::<std::io::Error>());
        let text = match source {
            Some(s) => format!("{err}: {s}"),
            None => err.to_string(),
        };
        if err.is_closed()
            || io
            || text.starts_with("error connecting")
            || text.starts_with("timeout")
        {
            StoreError::Unavailable(format!("PostgreSQL: {text}"))
        } else {
            StoreError::Internal(anyhow::Error::new(err))
        }
    }
}

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
            // A busy small machine (a 2 GiB VM under a burst) can take seconds to resolve a
            // name and open a session: 2 s here turned a burst into 503s there.
            .connect_timeout(Duration::from_secs(5))
            // A PostgreSQL that vanished without closing its connections (its network gone,
            // as when its pod is stopped) is noticed within seconds rather than minutes.
            .tcp_user_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            // And the other way round: a session of a DataStorage that vanished in the
            // middle of a transaction holds its locks for 10 s at most; a write waits 3 s at
            // most for a lock, and any statement runs 10 s at most (each then answers 503).
            .options(
                "-c idle_in_transaction_session_timeout=10s -c lock_timeout=3s -c statement_timeout=10s",
            );
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection PostgreSQL closed (a restart) is seen as closed and replaced.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
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
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    fn ensure_migrated(&self) -> Result<(), StoreError> {
        if self.is_migrated() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the schema migrations have not run yet (PostgreSQL not reached since start)"
                    .into(),
            ))
        }
    }

    /// Stores the events in their order, in one transaction. An event whose id is stored
    /// already is not stored again ([`WriteStatus::Existing`]), unless its content differs
    /// (then nothing of the batch is stored: [`StoreError::Conflict`]).
    ///
    /// The transaction runs in a task of its own: a client that goes away (its request
    /// cancelled) cannot leave it half-way; it commits or rolls back all the same.
    pub async fn insert(
        self: &Arc<Self>,
        events: Vec<ValidEvent>,
    ) -> Result<Vec<WriteStatus>, StoreError> {
        self.ensure_migrated()?;
        let store = self.clone();
        let task = tokio::spawn(async move {
            tokio::time::timeout(OPERATION_TIMEOUT, store.insert_now(&events))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "PostgreSQL did not answer within 15s".into(),
                    ))
                })
        });
        task.await
            .unwrap_or_else(|e| Err(StoreError::Internal(anyhow::anyhow!("insert task: {e}"))))
    }

    async fn insert_now(&self, events: &[ValidEvent]) -> Result<Vec<WriteStatus>, StoreError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let cids: Vec<&str> = events.iter().map(|e| e.correlation_id.as_str()).collect();
        let indexes: Vec<Option<i64>> = events.iter().map(|e| e.correlation_index).collect();
        let times: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.event_timestamp).collect();
        let services: Vec<&str> = events.iter().map(|e| e.service.as_str()).collect();
        let resources: Vec<Option<&str>> = events.iter().map(|e| e.resource.as_deref()).collect();
        let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO audit_events (event_id, event_type, correlation_id, correlation_index,
                                           event_timestamp, service, resource, data)
                 SELECT e.event_id, e.event_type, e.correlation_id, e.correlation_index,
                        COALESCE(e.event_timestamp, now()), e.service, e.resource, e.data
                 FROM {EVENTS}
                 ORDER BY e.ord
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id"
            ))
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &ids, &types, &cids, &indexes, &times, &services, &resources, &data,
        ];
        let inserted: std::collections::HashSet<Uuid> = tx
            .query(&insert, &params)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if inserted.len() < events.len() {
            let created: Vec<Uuid> = inserted.iter().copied().collect();
            let check = tx
                .prepare_cached(&format!(
                    "SELECT e.ord, e.event_id FROM {EVENTS}
                     JOIN audit_events a ON a.event_id = e.event_id
                     WHERE NOT (e.event_id = ANY($9::uuid[]))
                       AND ((a.event_type, a.correlation_id, a.correlation_index, a.service,
                             a.resource, a.data)
                            IS DISTINCT FROM
                            (e.event_type, e.correlation_id, e.correlation_index, e.service,
                             e.resource, e.data)
                            OR (e.event_timestamp IS NOT NULL
                                AND a.event_timestamp <> e.event_timestamp))
                     ORDER BY e.ord
                     LIMIT 1"
                ))
                .await?;
            let mut with_created: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
            with_created.push(&created);
            if let Some(row) = tx.query_opt(&check, &with_created).await? {
                let ord: i64 = row.get(0);
                let id: Uuid = row.get(1);
                tx.rollback().await?;
                let at = if events.len() == 1 {
                    String::new()
                } else {
                    format!("events[{}]: ", ord - 1)
                };
                return Err(StoreError::Conflict(format!(
                    "{at}event_id {id} is stored already with other content"
                )));
            }
        }
        tx.commit().await?;
        Ok(ids
            .iter()
            .map(|id| {
                if inserted.contains(id) {
                    WriteStatus::Created
                } else {
                    WriteStatus::Existing
                }
            })
            .collect())
    }

    pub async fn list(&self, correlation_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.ensure_migrated()?;
        tokio::time::timeout(OPERATION_TIMEOUT, self.list_now(correlation_id))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "PostgreSQL did not answer within 15s".into(),
                ))
            })
    }

    async fn list_now(&self, correlation_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let query = client
            .prepare_cached(
                "SELECT event_id, sequence, event_type, correlation_id, correlation_index,
                        event_timestamp, service, resource, data, stored_at
                 FROM audit_events WHERE correlation_id = $1 ORDER BY sequence",
            )
            .await?;
        let rows = client.query(&query, &[&correlation_id]).await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                event_id: r.get(0),
                sequence: r.get(1),
                event_type: r.get(2),
                correlation_id: r.get(3),
                correlation_index: r.get(4),
                event_timestamp: r.get(5),
                service: r.get(6),
                resource: r.get(7),
                data: r.get(8),
                stored_at: r.get(9),
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
