//! Webhooks: the backend is told, asynchronously, when a topic gets its
//! first or loses its last subscriber in the cluster, and when a member
//! joins or leaves a topic's presence (Pusher's `channel_occupied`,
//! `channel_vacated`, `member_added`, `member_removed`).
//!
//! Each event is one `POST` of `{"time_ms": ..., "events": [{"name": ...,
//! "topic": ..., "key": ...}]}`, signed with HMAC-SHA256 of the body under
//! the configured secret (`X-Herald-Signature: sha256=HEX`). A failed
//! delivery is retried after 100 ms, 200 ms, 400 ms ... up to the
//! configured number of retries, then dropped; all of it is counted. The
//! engine raises the events on its own threads (loops included): here they
//! are only queued, and a full queue drops and counts.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use herald::channels::TopicEvent;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::pool::{CallError, CallPool, PoolConfig};

/// The header that carries the body's signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-herald-signature";

/// The first retry's delay; each next one doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Webhook deliveries, counted.
#[derive(Debug, Default)]
pub(crate) struct WebhookStats {
    /// Events raised and queued.
    pub(crate) events: AtomicU64,
    /// Events the backend took (a 2xx answer).
    pub(crate) delivered: AtomicU64,
    /// Deliveries tried again after a failure.
    pub(crate) retries: AtomicU64,
    /// Events dropped: retries spent, or the queue full.
    pub(crate) dropped: AtomicU64,
}

/// Sends topic events to the backend.
pub(crate) struct Webhooks {
    pool: CallPool,
    url: Arc<str>,
    secret: Option<Vec<u8>>,
    retries: u32,
    stats: WebhookStats,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &self.url)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub(crate) fn start(
        url: &str,
        secret: Option<&str>,
        retries: u32,
        pool: &PoolConfig,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            pool: CallPool::start("webhook", pool, 1)?,
            url: Arc::from(url),
            secret: secret.map(|secret| secret.as_bytes().to_vec()),
            retries,
            stats: WebhookStats::default(),
        }))
    }

    pub(crate) fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Queues `event` for delivery.
    pub(crate) fn send(self: &Arc<Self>, event: TopicEvent) {
        self.stats.events.fetch_add(1, Relaxed);
        let body = serde_json::to_vec(&json!({
            "time_ms": unix_millis(),
            "events": [event_json(&event)],
        }))
        .unwrap_or_default();
        self.deliver(body, 0);
    }

    fn deliver(self: &Arc<Self>, body: Vec<u8>, attempt: u32) {
        let webhooks = Arc::clone(self);
        let header = self
            .secret
            .as_deref()
            .map(|secret| (SIGNATURE_HEADER, signature(secret, &body)));
        let retry_body = body.clone();
        let on_answer = move |answered: Result<Vec<u8>, CallError>| match answered {
            Ok(_) => {
                webhooks.stats.delivered.fetch_add(1, Relaxed);
            }
            Err(CallError::Busy) => {
                webhooks.stats.dropped.fetch_add(1, Relaxed);
            }
            Err(err) if attempt < webhooks.retries => {
                tracing::debug!(%err, attempt, "webhook failed; retrying");
                webhooks.stats.retries.fetch_add(1, Relaxed);
                // On a webhook thread: a backend that is down slows these
                // threads only.
                std::thread::sleep(FIRST_RETRY * 2u32.saturating_pow(attempt));
                webhooks.deliver(retry_body, attempt + 1);
            }
            Err(err) => {
                tracing::warn!(%err, "webhook dropped after its retries");
                webhooks.stats.dropped.fetch_add(1, Relaxed);
            }
        };
        let on_answer = Box::new(on_answer);
        self.pool.call_with(&self.url, 0, body, header, on_answer);
    }
}

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let mut hex = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn event_json(event: &TopicEvent) -> serde_json::Value {
    match event {
        TopicEvent::Occupied { topic } => json!({ "name": "topic_occupied", "topic": topic }),
        TopicEvent::Vacated { topic } => json!({ "name": "topic_vacated", "topic": topic }),
        TopicEvent::MemberAdded { topic, key } => {
            json!({ "name": "member_added", "topic": topic, "key": key })
        }
        TopicEvent::MemberRemoved { topic, key } => {
            json!({ "name": "member_removed", "topic": topic, "key": key })
        }
        other => json!({ "name": "unknown", "event": format!("{other:?}") }),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
