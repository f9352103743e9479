//! The bus on core NATS (the `async-nats` client).
//!
//! Topic `T` is the subject `herald.` followed by `T` with the bytes NATS
//! gives meaning to (`.`, `*`, `>`, whitespace, `%` and non-ASCII)
//! percent-escaped, so every topic maps to one subject token and no topic
//! is a wildcard. One subscription per topic with local subscribers, each
//! forwarded by a small task; dropping the task's subscriber unsubscribes.
//!
//! The client reconnects and resubscribes by itself (forever: no attempt
//! limit); the bus reports its state through the client's events. The
//! connection uses `no_echo`, so a node does not even receive its own
//! envelopes back; the origin check stays as a second guard.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use async_nats::{ConnectOptions, Event, connection::State};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{
    BusCounters,
    runtime::{
        Backoff, BusReceiver, Inbound, LAST_PUBLISH, Outgoing, Subject, stopped, wait_dropping,
    },
};
use crate::metrics::{add, set};

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A subject no one subscribes to, for round trips through the server.
const BARRIER_SUBJECT: &str = "_HERALD.barrier";
/// The subject every node listens to (outside the topics' namespace).
const CONTROL_SUBJECT: &str = "herald-control";

/// The most envelopes taken from the queue at once.
const MAX_BATCH: usize = 512;

/// Runs the bus until the server stops.
pub(crate) async fn run(url: String, mut receiver: BusReceiver, inbound: Inbound) {
    let counters = Arc::clone(&inbound.counters);
    let mut backoff = Backoff::new();
    let client = loop {
        let attempt = options(Arc::clone(&counters)).connect(url.as_str());
        let result = tokio::select! {
            () = stopped(&mut receiver.stop) => return,
            result = tokio::time::timeout(CONNECT_TIMEOUT, attempt) => result,
        };
        match result {
            Ok(Ok(client)) => break client,
            Ok(Err(err)) => {
                let delay = backoff.next_delay();
                tracing::warn!(%url, %err, retry_in = ?delay, "cannot reach NATS; serving local traffic only");
                if !wait_dropping(&mut receiver, &counters, delay).await {
                    return;
                }
            }
            Err(_) => {
                let delay = backoff.next_delay();
                tracing::warn!(%url, retry_in = ?delay, "connecting to NATS timed out; serving local traffic only");
                if !wait_dropping(&mut receiver, &counters, delay).await {
                    return;
                }
            }
        }
    };
    set(&counters.connected, 1);
    tracing::info!(%url, "cluster bus connected to NATS");
    let mut bus = NatsBus {
        client,
        subscriptions: HashMap::new(),
        control: None,
        inbound: &inbound,
        counters: &counters,
        outage_drops: 0,
    };
    bus.serve(&mut receiver).await;
    for (_, task) in bus.subscriptions.drain() {
        task.abort();
    }
    if let Some(task) = bus.control.take() {
        task.abort();
    }
}

/// Connection options: reconnect forever, no echo, events into counters.
fn options(counters: Arc<BusCounters>) -> ConnectOptions {
    let ever_connected = Arc::new(AtomicBool::new(false));
    ConnectOptions::new()
        .name("herald")
        .no_echo()
        .max_reconnects(None::<usize>)
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(move |event| {
            let counters = Arc::clone(&counters);
            let ever_connected = Arc::clone(&ever_connected);
            async move {
                match event {
                    Event::Connected => {
                        set(&counters.connected, 1);
                        if ever_connected.swap(true, Relaxed) {
                            add(&counters.reconnects, 1);
                            tracing::info!(
                                "cluster bus reconnected to NATS; subscriptions restored"
                            );
                        }
                    }
                    Event::Disconnected => {
                        set(&counters.connected, 0);
                        tracing::warn!(
                            "lost the NATS connection; reconnecting, local traffic continues"
                        );
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
}

struct NatsBus<'a> {
    client: async_nats::Client,
    /// The forwarding task of each subscribed topic.
    subscriptions: HashMap<Box<str>, JoinHandle<()>>,
    /// The forwarding task of the control subject.
    control: Option<JoinHandle<()>>,
    inbound: &'a Inbound,
    counters: &'a BusCounters,
    /// Publishes dropped since the connection was lost (logged once).
    outage_drops: u64,
}

impl NatsBus<'_> {
    async fn serve(&mut self, receiver: &mut BusReceiver) {
        self.listen_to_control().await;
        for topic in self.inbound.local_topics() {
            self.settle(&topic).await;
        }
        let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
        let mut backoff = Backoff::new();
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut receiver.stop) => {
                    // What was handed over before the stop (the node's
                    // goodbye) still goes out, briefly.
                    receiver.take_queued(&mut batch);
                    if !batch.is_empty() {
                        // Written is not enough: closing a connection with
                        // unread messages from the broker resets it, and
                        // the server may drop what it had not read yet. A
                        // round trip makes sure it has handled the goodbye.
                        let last = async {
                            self.publish(&mut batch).await;
                            let _ = self.client.flush().await;
                            self.server_round_trip().await;
                        };
                        let _ = tokio::time::timeout(LAST_PUBLISH, last).await;
                    }
                    return;
                }
                // Until the control subscription holds, retry it.
                () = tokio::time::sleep(backoff.next_delay()), if self.control.is_none() => {
                    self.listen_to_control().await;
                }
                Some(topic) = receiver.interest.recv() => self.settle(&topic).await,
                count = receiver.publishes.recv_many(&mut batch, MAX_BATCH) => {
                    if count == 0 {
                        return;
                    }
                    self.publish(&mut batch).await;
                }
            }
        }
    }

    /// Subscribes to the control subject (disconnects by name), once; the
    /// client keeps it across reconnects.
    async fn listen_to_control(&mut self) {
        match self.forward_subject(CONTROL_SUBJECT.to_owned()).await {
            Ok(task) => self.control = Some(task),
            Err(err) => {
                tracing::warn!(%err, "NATS subscribe to the control subject failed; retrying")
            }
        }
    }

    /// Subscribes to `topic` if this node has subscribers of it and is not
    /// subscribed yet; unsubscribes if it has none left.
    async fn settle(&mut self, topic: &str) {
        let wanted = self.inbound.has_local_interest(topic);
        if wanted && !self.subscriptions.contains_key(topic) {
            match self.forward_subject(topic_subject(topic)).await {
                Ok(task) => {
                    self.subscriptions.insert(Box::from(topic), task);
                }
                Err(err) => tracing::warn!(topic, %err, "NATS subscribe failed"),
            }
        } else if !wanted && let Some(task) = self.subscriptions.remove(topic) {
            // Dropping the subscriber inside the task unsubscribes.
            task.abort();
        }
        set(
            &self.counters.subscriptions,
            self.subscriptions.len() as u64,
        );
    }

    /// Subscribes to `subject` and forwards its messages to this node,
    /// from a task of their own; live at the server once this returns.
    async fn forward_subject(
        &self,
        subject: String,
    ) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
        let mut subscriber = self.client.subscribe(subject).await?;
        let inbound = self.inbound.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                inbound.deliver(&message.payload);
            }
        });
        self.server_round_trip().await;
        Ok(task)
    }

    /// Waits until the server has processed everything this connection
    /// sent so far (a subscription counts as live only then). The client's
    /// `flush` only empties its write buffer, so this sends a request to a
    /// subject nobody serves: the server's "no responders" answer comes
    /// after it has handled the commands before it.
    async fn server_round_trip(&self) {
        let request = self.client.request(BARRIER_SUBJECT, Bytes::new());
        if tokio::time::timeout(CONNECT_TIMEOUT, request)
            .await
            .is_err()
        {
            tracing::debug!("NATS round trip after subscribe timed out");
        }
    }

    /// Publishes a batch; while the connection is down, drops and counts it
    /// (core NATS is at-most-once, and a stale broadcast delivered late is
    /// worse than none).
    async fn publish(&mut self, batch: &mut Vec<Outgoing>) {
        let count = batch.len() as u64;
        if self.client.connection_state() != State::Connected {
            if self.outage_drops == 0 {
                tracing::warn!(
                    "NATS unreachable: dropping broadcasts for other nodes until it is back"
                );
            }
            self.outage_drops += count;
            add(&self.counters.publishes_dropped, count);
            batch.clear();
            return;
        }
        if self.outage_drops > 0 {
            tracing::warn!(
                dropped = self.outage_drops,
                "NATS is back; broadcasts dropped during the outage"
            );
            self.outage_drops = 0;
        }
        for (subject, envelope) in batch.drain(..) {
            let subject = match subject {
                Subject::Topic(topic) => topic_subject(&topic),
                // No history store on NATS (see `Cluster::history_store`).
                Subject::History(target) => topic_subject(&target.topic),
                Subject::Control => CONTROL_SUBJECT.to_owned(),
            };
            match self.client.publish(subject, envelope).await {
                Ok(()) => add(&self.counters.publishes, 1),
                Err(err) => {
                    add(&self.counters.publishes_dropped, 1);
                    tracing::debug!(%err, "NATS publish failed");
                }
            }
        }
    }
}

/// The subject of a topic: `herald.` and the topic, escaped to one token.
fn topic_subject(topic: &str) -> String {
    let mut subject = String::with_capacity(7 + topic.len());
    subject.push_str("herald.");
    for byte in topic.bytes() {
        let plain = byte.is_ascii_graphic() && !matches!(byte, b'.' | b'*' | b'>' | b'%');
        if plain {
            subject.push(char::from(byte));
        } else {
            subject.push_str(&format!("%{byte:02X}"));
        }
    }
    subject
}

#[cfg(test)]
mod tests {
    use super::topic_subject;

    #[test]
    fn every_topic_is_one_literal_subject_token() {
        assert_eq!(topic_subject("room:lobby"), "herald.room:lobby");
        assert_eq!(topic_subject("a.b c*>%"), "herald.a%2Eb%20c%2A%3E%25");
        assert_eq!(topic_subject("é"), "herald.%C3%A9");
        assert_ne!(topic_subject("a.b"), topic_subject("a%2Eb"));
    }
}
