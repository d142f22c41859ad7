//! Deduplication and the audit outbox, both in Redis, written together by one script per
//! webhook.
//!
//! For each alert the script adds one to the signal's count (`signal:<fingerprint>`, a hash
//! holding the count and the correlation id, which expires after the TTL counted from the
//! first copy) and appends the signal's two audit events to the outbox, a Redis stream
//! (`audit:outbox`). Redis runs a script atomically and its AOF records the script's effects
//! as one transaction, so a webhook is kept whole or not at all: there is never a counted
//! signal without its audit events, nor events for a signal that was not counted. The
//! answer to the webhook is sent only after that, so a `2xx` means kept. If Redis cannot
//! take it (down, out of memory, or the outbox at its bound) the webhook is answered `503`
//! and nothing of it was kept.
//!
//! The stream keeps the order events were appended in, which within a correlation is the
//! order of `correlation_index`; the delivery task (`delivery.rs`) sends them to DataStorage
//! from the head, in that order, and deletes them only once DataStorage stored them.
//! One gateway at a time delivers: it holds a lease (`audit:outbox:lease`), renewed while
//! it delivers and released when it stops; another gateway takes over when it lapses.

use std::time::{Duration, Instant};

use anyhow::Context;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
};
use tokio::sync::{Mutex, Notify};

use crate::{
    alert::Signal,
    audit::{self, OutboxEvent, Prepared},
};

/// The outbox stream.
pub const STREAM: &str = "audit:outbox";
/// Events DataStorage refused for good (should never happen: both services check the same
/// limits); kept for an operator, counted in `gateway_audit_failures_total`.
pub const DEAD_LETTERS: &str = "audit:outbox:dead";
const LEASE: &str = "audit:outbox:lease";

/// KEYS[1]: the outbox stream; KEYS[2..]: `signal:<fingerprint>` of each alert, in order.
/// ARGV[1]: TTL in seconds; ARGV[2]: the outbox bound (events); ARGV[3]: the timestamp;
/// ARGV[4..6]: the event types received, created, deduplicated; then six values per alert: a new correlation id (used if the signal is new), the ids of
/// its two events, the resource, the received event's data, the follow-up's base data.
/// Returns, per alert, the count and the correlation id; or `{"full", pending}` when the
/// alerts' events do not fit under the bound (then nothing was written).
const ACCEPT: &str = r#"
local n = #KEYS - 1
local pending = redis.call('XLEN', KEYS[1])
if pending + 2 * n > tonumber(ARGV[2]) then
  return {'full', tostring(pending)}
end
local out = {}
for i = 1, n do
  local key = KEYS[i + 1]
  local a = 7 + 6 * (i - 1)
  local count = redis.call('HINCRBY', key, 'count', 1)
  if count == 1 then
    redis.call('HSET', key, 'correlation_id', ARGV[a])
    redis.call('EXPIRE', key, tonumber(ARGV[1]))
  end
  local cid = redis.call('HGET', key, 'correlation_id')
  local follow = ARGV[6]
  if count == 1 then follow = ARGV[5] end
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[a + 1], 'type', ARGV[4], 'cid', cid,
    'idx', tostring(2 * count - 1), 'ts', ARGV[3], 'res', ARGV[a + 3], 'data', ARGV[a + 4])
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[a + 2], 'type', follow, 'cid', cid,
    'idx', tostring(2 * count), 'ts', ARGV[3], 'res', ARGV[a + 3], 'data', ARGV[a + 5],
    'occ', tostring(count))
  out[2 * i - 1] = tostring(count)
  out[2 * i] = cid
end
return out
"#;

/// KEYS[1]: the lease; ARGV[1]: this gateway's id; ARGV[2]: the lease in ms. 1 if held now.
const TAKE_LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

const RELEASE_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// How long a lease lasts unless renewed; the delivery task renews it on every round,
/// which takes at most the DataStorage timeout (10 s) and two Redis calls (2 s each). It is
/// also how long delivery waits after a gateway died without releasing it (killed, not
/// stopped): kept just above the longest round.
pub const LEASE_MS: u64 = 15_000;

/// One copy of a signal, counted.
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

/// Why a webhook was not kept.
#[derive(Debug)]
pub enum AcceptError {
    /// Redis did not take it (unreachable, timeout, out of memory).
    Unavailable(anyhow::Error),
    /// The outbox holds `pending` events: the webhook's would pass the bound.
    Full { pending: u64 },
}

/// An event read from the outbox, with its stream id.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stream_id: String,
    /// The event, or why the entry could not be read as one.
    pub event: Result<OutboxEvent, String>,
}

/// What `/ready` and `/metrics` show of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    /// Age of the oldest pending event (0 when none).
    pub oldest_age_ms: u64,
    pub dead_letters: u64,
}

pub struct Outbox {
    client: redis::Client,
    /// The request path's connection, and the delivery task's own (so that reading a large
    /// batch never delays a webhook), each made on first use.
    requests: Mutex<Slot>,
    delivery: Mutex<Slot>,
    accept: redis::Script,
    take_lease: redis::Script,
    release_lease: redis::Script,
    ttl: Duration,
    pub max_events: u64,
    /// Woken when events were appended, so delivery starts at once.
    pub appended: Notify,
}

/// Redis operations fail within this (a stopped Redis can leave a connection hanging).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connection attempt, calls fail at once for this long.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// A connection made on first use, and the last failure to make one.
#[derive(Default)]
struct Slot {
    conn: Option<ConnectionManager>,
    failed: Option<(Instant, String)>,
}

impl Outbox {
    pub fn new(url: &str, ttl: Duration, max_events: u64) -> anyhow::Result<Self> {
        Ok(Outbox {
            client: redis::Client::open(url).with_context(|| format!("REDIS_URL {url:?}"))?,
            requests: Mutex::new(Slot::default()),
            delivery: Mutex::new(Slot::default()),
            accept: redis::Script::new(ACCEPT),
            take_lease: redis::Script::new(TAKE_LEASE),
            release_lease: redis::Script::new(RELEASE_LEASE),
            ttl,
            max_events,
            appended: Notify::new(),
        })
    }

    async fn connection(&self, slot: &Mutex<Slot>) -> anyhow::Result<ConnectionManager> {
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.conn.as_ref() {
            return Ok(conn.clone());
        }
        // While Redis is down, fail at once for a moment rather than have every request
        // wait for its own connection attempt.
        if let Some((at, why)) = &slot.failed {
            if at.elapsed() < RECONNECT_PAUSE {
                anyhow::bail!("{why} (less than 0.5s ago)");
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let made = tokio::time::timeout(
            REDIS_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to Redis: no answer within 2s"))
        .and_then(|r| r.context("connecting to Redis"));
        match made {
            Ok(conn) => {
                slot.conn = Some(conn.clone());
                slot.failed = None;
                Ok(conn)
            }
            Err(err) => {
                slot.failed = Some((Instant::now(), format!("{err:#}")));
                Err(err)
            }
        }
    }

    /// Runs `f` on a connection, within [`REDIS_TIMEOUT`]. A timeout or a connection error
    /// drops the connection, so the next call connects anew: a Redis that was stopped and
    /// started again has a new address, and a connection to the old one only ever times out
    /// (the redis crate's manager reconnects on a reset, not on a timeout).
    async fn run<T>(
        &self,
        slot: &Mutex<Slot>,
        what: &str,
        f: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> anyhow::Result<T> {
        let conn = self.connection(slot).await?;
        match tokio::time::timeout(REDIS_TIMEOUT, f(conn)).await {
            Err(_) => {
                slot.lock().await.conn = None;
                anyhow::bail!("{what}: Redis did not answer within 2s")
            }
            Ok(Err(err)) => {
                // Only an answer from Redis itself (a script's error, out of memory, still
                // loading) leaves the connection trusted; anything else (I/O, a dropped or
                // refused connection, a failed reconnect, a reply that did not parse) drops
                // it, so the next call connects anew to whatever address Redis has now.
                let redis_answered = matches!(
                    err.kind(),
                    redis::ErrorKind::ResponseError
                        | redis::ErrorKind::ExtensionError
                        | redis::ErrorKind::ExecAbortError
                        | redis::ErrorKind::NoScriptError
                        | redis::ErrorKind::BusyLoadingError
                );
                if !redis_answered || err.is_unrecoverable_error() {
                    slot.lock().await.conn = None;
                }
                Err(anyhow::Error::new(err).context(format!("{what} in Redis")))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Counts each signal and appends its audit events, all at once; `prepared[i]` belongs
    /// to `signals[i]`. `timestamp` is the events' time (RFC 3339).
    pub async fn accept(
        &self,
        signals: &[Signal],
        prepared: &[Prepared],
        timestamp: &str,
    ) -> Result<Vec<Occurrence>, AcceptError> {
        let mut invocation = self.accept.prepare_invoke();
        invocation
            .key(STREAM)
            .arg(self.ttl.as_secs())
            .arg(self.max_events)
            .arg(timestamp)
            .arg(audit::RECEIVED)
            .arg(audit::CREATED)
            .arg(audit::DEDUPLICATED);
        for (s, p) in signals.iter().zip(prepared) {
            invocation
                .key(format!("signal:{}", s.fingerprint))
                .arg(uuid::Uuid::new_v4().to_string())
                .arg(uuid::Uuid::new_v4().to_string())
                .arg(uuid::Uuid::new_v4().to_string())
                .arg(&p.resource)
                .arg(&p.received_data)
                .arg(&p.base_data);
        }
        let reply: Vec<String> = self
            .run(&self.requests, "keeping the webhook", async |mut c| {
                invocation.invoke_async(&mut c).await
            })
            .await
            .map_err(AcceptError::Unavailable)?;
        if reply.first().map(String::as_str) == Some("full") {
            let pending = reply.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            return Err(AcceptError::Full { pending });
        }
        self.appended.notify_one();
        parse_accept_reply(&reply, signals.len()).map_err(AcceptError::Unavailable)
    }

    /// Takes or renews the delivery lease for `holder`; true if it holds it now.
    pub async fn hold_lease(&self, holder: &str) -> anyhow::Result<bool> {
        let mut invocation = self.take_lease.prepare_invoke();
        invocation.key(LEASE).arg(holder).arg(LEASE_MS);
        let held: i64 = self
            .run(
                &self.delivery,
                "taking the delivery lease",
                async |mut c| invocation.invoke_async(&mut c).await,
            )
            .await?;
        Ok(held == 1)
    }

    pub async fn release_lease(&self, holder: &str) -> anyhow::Result<()> {
        let mut invocation = self.release_lease.prepare_invoke();
        invocation.key(LEASE).arg(holder);
        let _: i64 = self
            .run(
                &self.delivery,
                "releasing the delivery lease",
                async |mut c| invocation.invoke_async(&mut c).await,
            )
            .await?;
        Ok(())
    }

    /// The oldest `count` events, oldest first.
    pub async fn read(&self, count: usize) -> anyhow::Result<Vec<Entry>> {
        let reply: StreamRangeReply = self
            .run(&self.delivery, "reading the outbox", async |mut c| {
                redis::cmd("XRANGE")
                    .arg(STREAM)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|id| Entry {
                event: parse_entry(&id.map),
                stream_id: id.id,
            })
            .collect())
    }

    /// Deletes delivered events.
    pub async fn remove(&self, stream_ids: &[String]) -> anyhow::Result<()> {
        if stream_ids.is_empty() {
            return Ok(());
        }
        let _: u64 = self
            .run(
                &self.delivery,
                "deleting delivered events",
                async |mut c| {
                    redis::cmd("XDEL")
                        .arg(STREAM)
                        .arg(stream_ids)
                        .query_async(&mut c)
                        .await
                },
            )
            .await?;
        Ok(())
    }

    /// Moves an entry DataStorage refused for good to the dead letters, with the reason.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> anyhow::Result<()> {
        let text = match &entry.event {
            Ok(e) => audit::event_json(e).unwrap_or_else(|err| format!("{err:#}")),
            Err(why) => why.clone(),
        };
        let _: () = self
            .run(&self.delivery, "keeping a dead letter", async |mut c| {
                redis::pipe()
                    .atomic()
                    .cmd("XADD")
                    .arg(DEAD_LETTERS)
                    .arg("*")
                    .arg("stream_id")
                    .arg(&entry.stream_id)
                    .arg("event")
                    .arg(&text)
                    .arg("reason")
                    .arg(reason)
                    .ignore()
                    .cmd("XDEL")
                    .arg(STREAM)
                    .arg(&entry.stream_id)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// How many events wait, how old the oldest is, how many dead letters there are.
    pub async fn backlog(&self) -> anyhow::Result<Backlog> {
        let (pending, head, dead): (u64, StreamRangeReply, u64) = self
            .run(&self.requests, "measuring the outbox", async |mut c| {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(STREAM)
                    .cmd("XRANGE")
                    .arg(STREAM)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XLEN")
                    .arg(DEAD_LETTERS)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let oldest_age_ms = head
            .ids
            .first()
            .and_then(|id| id.id.split('-').next()?.parse::<u64>().ok())
            .map(|ms| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                now.saturating_sub(ms)
            })
            .unwrap_or(0);
        Ok(Backlog {
            pending,
            oldest_age_ms,
            dead_letters: dead,
        })
    }
}

fn parse_accept_reply(reply: &[String], alerts: usize) -> anyhow::Result<Vec<Occurrence>> {
    anyhow::ensure!(
        reply.len() == 2 * alerts,
        "the outbox script answered {} values for {alerts} alerts",
        reply.len()
    );
    reply
        .chunks(2)
        .map(|pair| {
            Ok(Occurrence {
                count: pair[0]
                    .parse()
                    .with_context(|| format!("count {:?}", pair[0]))?,
                correlation_id: pair[1].clone(),
            })
        })
        .collect()
}

fn parse_entry(
    map: &std::collections::HashMap<String, redis::Value>,
) -> Result<OutboxEvent, String> {
    let field = |name: &str| -> Result<String, String> {
        match map.get(name) {
            Some(v) => redis::from_redis_value::<String>(v)
                .map_err(|e| format!("field {name} is not text: {e}")),
            None => Err(format!("field {name} is missing")),
        }
    };
    let number = |name: &str| -> Result<u64, String> {
        field(name)?
            .parse()
            .map_err(|e| format!("field {name} is not a number: {e}"))
    };
    Ok(OutboxEvent {
        event_id: field("id")?,
        event_type: field("type")?,
        correlation_id: field("cid")?,
        correlation_index: number("idx")?,
        event_timestamp: field("ts")?,
        resource: field("res")?,
        data: field("data")?,
        occurrence: if map.contains_key("occ") {
            Some(number("occ")?)
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_reply_is_read_per_alert() {
        let reply: Vec<String> = ["1", "c-1", "3", "c-2"].map(String::from).to_vec();
        let occ = parse_accept_reply(&reply, 2).unwrap();
        assert!(occ[0].is_new());
        assert_eq!(occ[1].count, 3);
        assert_eq!(occ[1].correlation_id, "c-2");
        assert!(parse_accept_reply(&reply, 3).is_err());
    }

    #[test]
    fn entries_are_read_back_as_events() {
        let map: std::collections::HashMap<String, redis::Value> = [
            ("id", "e"),
            ("type", "signal.deduplicated"),
            ("cid", "c"),
            ("idx", "4"),
            ("ts", "2026-01-01T00:00:00.000000Z"),
            ("res", "n/A"),
            ("data", "{\"a\":1}"),
            ("occ", "2"),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                redis::Value::BulkString(v.as_bytes().to_vec()),
            )
        })
        .collect();
        let e = parse_entry(&map).unwrap();
        assert_eq!(e.correlation_index, 4);
        assert_eq!(e.occurrence, Some(2));
        let mut broken = map.clone();
        broken.remove("cid");
        assert_eq!(parse_entry(&broken).unwrap_err(), "field cid is missing");
    }
}
