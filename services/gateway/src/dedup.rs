//! Deduplication in Redis: one atomic script per signal, so concurrent copies of the same
//! alert can never both be "first".

use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

/// For key `signal:<fingerprint>` (a hash): add one to `count`; on the first occurrence store
/// the correlation id and start the TTL. Returns the count and the signal's correlation id.
/// Redis runs a script atomically, so there is no read-then-write race.
const SCRIPT: &str = r#"
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
if count == 1 then
  redis.call('HSET', KEYS[1], 'correlation_id', ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return {count, redis.call('HGET', KEYS[1], 'correlation_id')}
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// 1 for the first copy within the TTL, then 2, 3, ...
    pub count: u64,
    /// The correlation id chosen by the first copy; every copy shares it.
    pub correlation_id: String,
}

impl Occurrence {
    pub fn is_new(&self) -> bool {
        self.count == 1
    }
}

pub struct Dedup {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    ttl: Duration,
}

impl Dedup {
    pub fn new(url: &str, ttl: Duration) -> anyhow::Result<Self> {
        Ok(Dedup {
            client: redis::Client::open(url).with_context(|| format!("REDIS_URL {url:?}"))?,
            conn: Mutex::new(None),
            script: redis::Script::new(SCRIPT),
            ttl,
        })
    }

    /// A shared, self-reconnecting connection, made on first use so the gateway can start
    /// before Redis does.
    async fn connection(&self) -> anyhow::Result<ConnectionManager> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            ConnectionManager::new(self.client.clone()),
        )
        .await
        .context("connecting to Redis: no answer within 3s")?
        .context("connecting to Redis")?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Records one occurrence of the signal with this fingerprint.
    pub async fn record(
        &self,
        fingerprint: &str,
        new_correlation_id: &str,
    ) -> anyhow::Result<Occurrence> {
        let mut conn = self.connection().await?;
        let (count, correlation_id): (u64, String) = self
            .script
            .key(format!("signal:{fingerprint}"))
            .arg(new_correlation_id)
            .arg(self.ttl.as_secs())
            .invoke_async(&mut conn)
            .await
            .context("running the deduplication script in Redis")?;
        Ok(Occurrence {
            count,
            correlation_id,
        })
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        anyhow::ensure!(pong == "PONG", "Redis answered {pong:?} to PING");
        Ok(())
    }
}
