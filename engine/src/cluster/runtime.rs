//! The bus's two sides, and the one place where the cluster starts a
//! thread and an async runtime.
//!
//! - [`Bus`] is the [`Relay`] the server's loops and handles publish
//!   through: it encodes an envelope and hands it to the bus thread without
//!   ever blocking (a full queue drops and counts).
//! - The bus thread, `herald-bus`, started by the server once its loops
//!   run ([`Relay::start`]), runs a single-threaded tokio runtime that owns
//!   the broker connection: it publishes what the loops handed over,
//!   follows local interest with broker subscriptions, and delivers what
//!   other nodes publish to this node's loops ([`Inbound`]).

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    Broker, BusCounters, Content, Envelope, NodeId,
    envelope::{encode_channel, encode_disconnect, encode_frames, encode_sync},
    history::{Epochs, HISTORY_MARK, META_TTL_MS, decode_published, encode_exclusion},
};
use crate::{
    broadcast::Broadcast,
    channels::history::{Publish, Recovery, RecoveryRead},
    metrics::add,
    protocol::WireProtocol,
    reactor::{Relay, ServerHandle, SyncHandler},
};

/// Envelopes waiting for the bus thread; past this, publishes are dropped
/// and counted rather than held.
const PUBLISH_QUEUE: usize = 65_536;

/// Where an envelope is published.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    /// A topic's channel: the nodes with subscribers of it.
    Topic(Arc<str>),
    /// The control channel every node listens to (disconnects by name).
    Control,
    /// A topic with history: the broker assigns the offset, stores the
    /// publication and publishes it (Redis only).
    History(Arc<HistoryTarget>),
}

/// Where a publication with history goes, and how it is kept.
#[derive(Debug)]
pub(crate) struct HistoryTarget {
    pub(crate) topic: Arc<str>,
    pub(crate) size: usize,
    pub(crate) ttl_ms: u64,
    /// How long the stream's epoch and offset are kept after the last
    /// publication.
    pub(crate) meta_ttl_ms: u64,
    /// The excluded connection, as the script carries it.
    pub(crate) exclude: String,
    /// The epoch a stream without one takes.
    pub(crate) new_epoch: String,
}

/// One envelope to publish, and where.
pub(crate) type Outgoing = (Subject, Bytes);

/// The publishing side of the bus: cheap to share, never blocks.
#[derive(Debug)]
pub(crate) struct Bus {
    broker: Broker,
    node: NodeId,
    publishes: mpsc::Sender<Outgoing>,
    interest: mpsc::UnboundedSender<Box<str>>,
    stop: watch::Sender<bool>,
    counters: Arc<BusCounters>,
    /// The bus thread's side, until the server starts it.
    receiver: Mutex<Option<BusReceiver>>,
    /// Where the channels layer takes other nodes' sync messages.
    sync_handler: Arc<OnceLock<SyncHandler>>,
    /// Joins' history reads, for the bus thread.
    history_reads: mpsc::UnboundedSender<RecoveryRead>,
    epochs: Arc<Epochs>,
}

/// What the bus thread receives from the [`Bus`].
#[derive(Debug)]
pub(crate) struct BusReceiver {
    pub(crate) publishes: mpsc::Receiver<Outgoing>,
    pub(crate) interest: mpsc::UnboundedReceiver<Box<str>>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) history_reads: mpsc::UnboundedReceiver<RecoveryRead>,
}

/// Resolves once the server is shutting down.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the Bus is gone, which is a stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How long a stopping bus may take to publish what was handed over before
/// the stop (a node's goodbye to the others).
pub(crate) const LAST_PUBLISH: Duration = Duration::from_secs(1);

impl BusReceiver {
    /// Moves what is queued to publish into `batch`, without waiting.
    pub(crate) fn take_queued(&mut self, batch: &mut Vec<Outgoing>) {
        while let Ok(outgoing) = self.publishes.try_recv() {
            batch.push(outgoing);
        }
    }

    /// Takes what is queued to publish without sending it (the broker is
    /// unreachable), counting it as dropped; returns how many.
    pub(crate) fn drop_queued(&mut self, counters: &BusCounters) -> u64 {
        let mut dropped = 0;
        while self.publishes.try_recv().is_ok() {
            dropped += 1;
        }
        add(&counters.publishes_dropped, dropped);
        dropped
    }
}

impl Bus {
    /// A bus joining this node to others through `broker`; its thread
    /// starts with the server.
    pub(crate) fn new(broker: Broker) -> Self {
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (reads_tx, reads_rx) = mpsc::unbounded_channel();
        let receiver = BusReceiver {
            publishes: publish_rx,
            interest: interest_rx,
            stop: stop_rx,
            history_reads: reads_rx,
        };
        let node = new_node_id();
        Self {
            broker,
            node,
            history_reads: reads_tx,
            epochs: Arc::new(Epochs::new(node)),
            publishes: publish_tx,
            interest: interest_tx,
            stop: stop_tx,
            counters: Arc::default(),
            receiver: Mutex::new(Some(receiver)),
            sync_handler: Arc::default(),
        }
    }

    /// The bus's counters, shared with its thread.
    pub(crate) fn counters(&self) -> Arc<BusCounters> {
        Arc::clone(&self.counters)
    }

    /// Hands a publication with history to the bus thread (the broker
    /// assigns its offset and publishes it to every node, this one too).
    pub(crate) fn publish_history(&self, publish: Publish<'_>) {
        let envelope = encode_channel(self.node, publish.topic, publish.event, &publish.payload);
        let ttl_ms = u64::try_from(publish.rule.max_age().as_millis()).unwrap_or(u64::MAX);
        let target = HistoryTarget {
            topic: Arc::from(publish.topic),
            size: publish.rule.max_size(),
            ttl_ms,
            meta_ttl_ms: ttl_ms.max(META_TTL_MS),
            exclude: encode_exclusion(publish.exclude),
            new_epoch: self.epochs.fresh(),
        };
        self.hand_over(Subject::History(Arc::new(target)), envelope);
    }

    /// Hands a join's history read to the bus thread; a stopped bus
    /// answers at once that the store is unavailable.
    pub(crate) fn read_history(&self, read: RecoveryRead) {
        if let Err(mpsc::error::SendError(read)) = self.history_reads.send(read) {
            read.reply.send(Recovery::unavailable());
        }
    }

    /// Hands an envelope to the bus thread, or counts it dropped.
    fn hand_over(&self, subject: Subject, envelope: Result<Bytes, super::EnvelopeError>) {
        let Ok(bytes) = envelope else {
            tracing::warn!("message too large for the bus envelope; not sent to other nodes");
            add(&self.counters.publishes_dropped, 1);
            return;
        };
        if self.publishes.try_send((subject, bytes)).is_err() {
            add(&self.counters.publishes_dropped, 1);
        }
    }
}

impl Relay for Bus {
    fn forward(&self, broadcast: &Broadcast) {
        let topic = broadcast.topic();
        let envelope = match (broadcast.event(), broadcast.payload()) {
            (Some(event), Some(payload)) if !broadcast.is_binary() => {
                encode_channel(self.node, topic, event, payload)
            }
            _ => encode_frames(
                self.node,
                topic,
                WireProtocol::ALL.into_iter().filter_map(|protocol| {
                    let frame = broadcast.frame(protocol)?;
                    Some((protocol, &frame[..]))
                }),
            ),
        };
        self.hand_over(Subject::Topic(Arc::from(topic)), envelope);
    }

    fn forward_disconnect(&self, name: &str) {
        self.hand_over(Subject::Control, encode_disconnect(self.node, name));
    }

    fn interest_changed(&self, topic: &str) {
        // A closed channel means the bus thread has stopped: nothing to do.
        let _ = self.interest.send(Box::from(topic));
    }

    fn start(&self, server: ServerHandle) -> io::Result<JoinHandle<()>> {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(receiver) = receiver else {
            return Err(io::Error::other(
                "this cluster bus already serves a server; make one Cluster per server",
            ));
        };
        let inbound = Inbound {
            node: self.node,
            server,
            counters: Arc::clone(&self.counters),
            sync_handler: Arc::clone(&self.sync_handler),
            epochs: Arc::clone(&self.epochs),
        };
        spawn(self.broker.clone(), receiver, inbound)
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    fn node_id(&self) -> u64 {
        self.node
    }

    fn forward_sync(&self, message: Bytes) {
        self.hand_over(Subject::Control, encode_sync(self.node, &message));
    }

    fn set_sync_handler(&self, handler: SyncHandler) {
        let _ = self.sync_handler.set(handler);
    }
}

/// A node id unlikely to collide with another process's: the randomness of
/// the standard library's hasher keys, mixed with the time and process id.
fn new_node_id() -> NodeId {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// The receiving side: turns envelopes from other nodes into local
/// broadcasts.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    node: NodeId,
    server: ServerHandle,
    pub(crate) counters: Arc<BusCounters>,
    sync_handler: Arc<OnceLock<SyncHandler>>,
    epochs: Arc<Epochs>,
}

impl Inbound {
    /// A fresh epoch for a stream that has none.
    pub(crate) fn new_epoch(&self) -> String {
        self.epochs.fresh()
    }

    /// The topics with subscribers on this node.
    pub(crate) fn local_topics(&self) -> Vec<String> {
        self.server.topics()
    }

    /// Whether this node has subscribers of `topic`.
    pub(crate) fn has_local_interest(&self, topic: &str) -> bool {
        self.server.topic(topic).is_some()
    }

    /// Delivers one envelope's message to this node's subscribers.
    pub(crate) fn deliver(&self, bytes: &[u8]) {
        if bytes.first() == Some(&HISTORY_MARK) {
            return self.deliver_with_offset(bytes);
        }
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                add(&self.counters.decode_errors, 1);
                tracing::debug!(%err, "bus envelope dropped");
                return;
            }
        };
        if envelope.origin == self.node {
            add(&self.counters.received_own, 1);
            return;
        }
        add(&self.counters.received, 1);
        let topic = envelope.topic;
        let broadcast = match envelope.content {
            Content::Disconnect => {
                self.server.disconnect_local(&topic);
                return;
            }
            Content::Sync(message) => {
                if let Some(handler) = self.sync_handler.get() {
                    (handler.0)(envelope.origin, &message);
                }
                return;
            }
            Content::Channel { event, payload } => {
                let Some(entry) = self.server.topic(&topic) else {
                    return;
                };
                Broadcast::channel(&topic, &event, payload, &entry)
            }
            Content::Frames(frames) => {
                if self.server.topic(&topic).is_none() {
                    return;
                }
                let mut by_protocol: [Option<Bytes>; WireProtocol::COUNT] = Default::default();
                for (protocol, frame) in frames {
                    by_protocol[protocol.index()] = Some(frame);
                }
                Broadcast::encoded(&topic, by_protocol)
            }
        };
        self.server.broadcast_local(broadcast);
    }
}

impl Inbound {
    /// A publication with history, as the broker published it: delivered
    /// here whichever node published it (the publisher did not deliver it
    /// itself), in the order the broker assigned offsets.
    fn deliver_with_offset(&self, bytes: &[u8]) {
        let decoded = decode_published(bytes)
            .and_then(|published| Some((Envelope::decode(published.envelope).ok()?, published)));
        let Some((envelope, published)) = decoded else {
            add(&self.counters.decode_errors, 1);
            return;
        };
        add(&self.counters.received, 1);
        let Content::Channel { event, payload } = envelope.content else {
            add(&self.counters.decode_errors, 1);
            return;
        };
        let topic = envelope.topic;
        let Some(entry) = self.server.topic(&topic) else {
            return;
        };
        let position = (Arc::from(published.epoch), published.offset);
        let mut broadcast = Broadcast::channel_at(&topic, &event, payload, &entry, position);
        if envelope.origin == self.node
            && let Some((loop_index, conn)) = published.exclude
        {
            broadcast = broadcast.excluding(loop_index, conn);
        }
        self.server.broadcast_local(broadcast);
    }
}

/// Starts the bus thread for `broker`, delivering through `inbound`.
fn spawn(broker: Broker, receiver: BusReceiver, inbound: Inbound) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("herald-bus".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(%err, "cannot start the cluster bus runtime; running as a single node");
                    return;
                }
            };
            runtime.block_on(run(broker, receiver, inbound));
        })
}

async fn run(broker: Broker, receiver: BusReceiver, inbound: Inbound) {
    match broker {
        Broker::Memory => {}
        #[cfg(feature = "redis")]
        Broker::Redis { url } => super::redis::run(url, receiver, inbound).await,
        #[cfg(feature = "nats")]
        Broker::Nats { url } => super::nats::run(url, receiver, inbound).await,
    }
}

/// Exponential backoff between connection attempts: 100 ms doubling to 5 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Waits `delay` (or until stopped; returns `false` then), dropping and
/// counting what is queued to publish meanwhile.
pub(crate) async fn wait_dropping(
    receiver: &mut BusReceiver,
    counters: &BusCounters,
    delay: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            () = stopped(&mut receiver.stop) => return false,
            () = tokio::time::sleep_until(deadline) => {
                receiver.drop_queued(counters);
                return true;
            }
            Some(_) = receiver.publishes.recv() => {
                add(&counters.publishes_dropped, 1);
            }
            Some(read) = receiver.history_reads.recv() => {
                read.reply.send(Recovery::unavailable());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[7], Duration::from_secs(5));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
