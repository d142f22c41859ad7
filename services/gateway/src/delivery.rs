//! The delivery task: sends the outbox's events to DataStorage, oldest first, in batches,
//! and deletes them once DataStorage stored them. When DataStorage does not take a batch
//! (unreachable, 503, timeout) the same events are sent again after a backoff (100 ms,
//! doubling, at most 2 s), as long as it takes: nothing is dropped. DataStorage stores an
//! event id once, so a batch sent twice (stored, but the answer lost) stores nothing twice.
//!
//! A batch DataStorage refuses for good (400, 409, 413: it should never happen, as both
//! services check the same limits) is sent again one event at a time, and only the events
//! refused on their own are moved to the dead letters, so one bad event never holds up the
//! others. Events are never reordered: delivery goes on from the head of the stream.

use std::{sync::Arc, time::Duration};

use service_kit::{limits, Shutdown};

use crate::{
    audit::{self, AuditClient, DeliveryError},
    metrics::Metrics,
    outbox::{Entry, Outbox},
};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle gateway looks at the outbox (other gateways may append to it).
const IDLE_POLL: Duration = Duration::from_millis(500);

pub struct Delivery {
    pub outbox: Arc<Outbox>,
    pub client: AuditClient,
    pub metrics: Arc<Metrics>,
    /// This gateway's id in the lease.
    pub holder: String,
}

/// The lease is renewed when a third of it has passed, not on every round.
const RENEW_AFTER: Duration = Duration::from_millis(crate::outbox::LEASE_MS / 3);

/// A batch of entries: the events as JSON and their stream ids, within DataStorage's limits.
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub stream_ids: Vec<String>,
    pub events: Vec<String>,
}

/// Takes entries from the head while the batch stays within DataStorage's limits; entries
/// that cannot be read as events are returned apart (they go to the dead letters). Stops at
/// the first unreadable entry after a readable one, so the order is kept.
pub fn make_batch(entries: &[Entry]) -> (Batch, Vec<(Entry, String)>) {
    let mut batch = Batch {
        stream_ids: Vec::new(),
        events: Vec::new(),
    };
    let mut broken = Vec::new();
    let mut bytes = audit::BATCH_OVERHEAD;
    for entry in entries {
        let json = match &entry.event {
            Ok(e) => audit::event_json(e).map_err(|err| format!("{err:#}")),
            Err(why) => Err(why.clone()),
        };
        match json {
            Ok(json) => {
                if batch.events.len() == limits::MAX_BATCH_EVENTS
                    || (!batch.events.is_empty()
                        && bytes + 1 + json.len() > limits::MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes += json.len() + 1;
                batch.stream_ids.push(entry.stream_id.clone());
                batch.events.push(json);
            }
            Err(why) if batch.events.is_empty() => broken.push((entry.clone(), why)),
            Err(_) => break,
        }
    }
    (batch, broken)
}

impl Delivery {
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        let mut renewed: Option<std::time::Instant> = None;
        while !shutdown.is_set() {
            let wait = match self.round(&mut renewed).await {
                Ok(Round::Delivered) => {
                    if failing {
                        tracing::info!("DataStorage takes audit events again");
                        failing = false;
                    }
                    backoff = BACKOFF_START;
                    continue;
                }
                Ok(Round::Idle) => IDLE_POLL,
                Ok(Round::NotLeader) => Duration::from_secs(1),
                Err(reason) => {
                    Metrics::inc(&self.metrics.delivery_retries);
                    if !failing {
                        tracing::warn!(
                            reason,
                            "audit events not delivered yet; retrying with backoff"
                        );
                        failing = true;
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = self.outbox.appended.notified(), if wait == IDLE_POLL => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(err) = self.outbox.release_lease(&self.holder).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "delivery lease not released; it lapses by itself"
            );
        }
        tracing::info!(
            "audit delivery stopped; what is left in the outbox is delivered by the next start"
        );
    }

    async fn round(&self, renewed: &mut Option<std::time::Instant>) -> Result<Round, String> {
        if renewed.is_none_or(|at| at.elapsed() > RENEW_AFTER) {
            *renewed = None;
            if !self
                .outbox
                .hold_lease(&self.holder)
                .await
                .map_err(|e| format!("{e:#}"))?
            {
                return Ok(Round::NotLeader);
            }
            *renewed = Some(std::time::Instant::now());
        }
        let entries = self
            .outbox
            .read(limits::MAX_BATCH_EVENTS)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if entries.is_empty() {
            return Ok(Round::Idle);
        }
        let (batch, broken) = make_batch(&entries);
        let first = broken.len();
        for (entry, why) in broken {
            self.give_up(&entry, &why).await?;
        }
        if batch.events.is_empty() {
            return Ok(Round::Delivered);
        }
        let count = batch.events.len();
        match self
            .client
            .post_batch(audit::batch_body(batch.events.iter().map(String::as_str)))
            .await
        {
            Ok(()) => {
                self.outbox
                    .remove(&batch.stream_ids)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                Metrics::add(&self.metrics.delivered, count as u64);
                Ok(Round::Delivered)
            }
            Err(DeliveryError::Retry(reason)) => Err(reason),
            Err(DeliveryError::Refused(reason)) => {
                tracing::warn!(
                    reason,
                    count,
                    "DataStorage refused a batch; sending its events one by one"
                );
                self.one_by_one(&entries[first..first + count], batch).await
            }
        }
    }

    async fn one_by_one(&self, entries: &[Entry], batch: Batch) -> Result<Round, String> {
        for (entry, json) in entries.iter().zip(batch.events) {
            match self.client.post_one(json).await {
                Ok(()) => {
                    self.outbox
                        .remove(std::slice::from_ref(&entry.stream_id))
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    Metrics::inc(&self.metrics.delivered);
                }
                Err(DeliveryError::Refused(reason)) => self.give_up(entry, &reason).await?,
                Err(DeliveryError::Retry(reason)) => return Err(reason),
            }
        }
        Ok(Round::Delivered)
    }

    async fn give_up(&self, entry: &Entry, reason: &str) -> Result<(), String> {
        tracing::error!(stream_id = %entry.stream_id, reason, "audit event refused for good; kept in the dead letters");
        self.outbox
            .dead_letter(entry, reason)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Metrics::inc(&self.metrics.audit_failures);
        Ok(())
    }
}

enum Round {
    Delivered,
    Idle,
    NotLeader,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::OutboxEvent;

    fn entry(i: usize, data_len: usize) -> Entry {
        Entry {
            stream_id: format!("{i}-0"),
            event: Ok(OutboxEvent {
                event_id: format!("e{i}"),
                event_type: "signal.received".into(),
                correlation_id: "c".into(),
                correlation_index: i as u64 + 1,
                event_timestamp: "2026-01-01T00:00:00.000000Z".into(),
                resource: "n/A".into(),
                data: format!("{{\"x\":\"{}\"}}", "y".repeat(data_len)),
                occurrence: None,
            }),
        }
    }

    #[test]
    fn batches_stay_within_datastorage_limits_and_order() {
        let many: Vec<Entry> = (0..limits::MAX_BATCH_EVENTS + 10)
            .map(|i| entry(i, 10))
            .collect();
        let (batch, broken) = make_batch(&many);
        assert_eq!(batch.events.len(), limits::MAX_BATCH_EVENTS);
        assert_eq!(batch.stream_ids[0], "0-0");
        assert!(broken.is_empty());

        let big: Vec<Entry> = (0..100).map(|i| entry(i, 200_000)).collect();
        let (batch, _) = make_batch(&big);
        let body = audit::batch_body(batch.events.iter().map(String::as_str));
        assert!(body.len() <= limits::MAX_BATCH_BYTES, "{}", body.len());
        assert!(batch.events.len() >= 40, "{}", batch.events.len());
    }

    #[test]
    fn unreadable_entries_at_the_head_are_set_apart_but_never_skipped_over() {
        let bad = Entry {
            stream_id: "9-0".into(),
            event: Err("field cid is missing".into()),
        };
        let (batch, broken) = make_batch(&[bad.clone(), entry(1, 1)]);
        assert_eq!(broken.len(), 1);
        assert_eq!(batch.events.len(), 1);
        let (batch, broken) = make_batch(&[entry(1, 1), bad, entry(2, 1)]);
        assert!(broken.is_empty());
        assert_eq!(batch.stream_ids, ["1-0"]);
    }
}
