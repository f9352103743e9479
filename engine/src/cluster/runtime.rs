//! The bus's two sides: the [`Bus`] handle the loops and handles publish
//! through (never blocking), and the bus thread that owns the broker
//! connection and delivers what other nodes publish.

use std::{io, sync::Arc, thread::JoinHandle, time::Duration};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    BusCounters, ClusterStats, Content, Envelope, NodeId,
    envelope::{encode_channel, encode_frames},
};
use crate::{
    Broadcast, ServerHandle,
    channels::encode_broadcast,
    protocol::WireProtocol,
    pubsub::{InterestHook, TopicRegistry},
};

/// Envelopes waiting for the bus thread; past this, publishes are dropped
/// and counted rather than held.
const PUBLISH_QUEUE: usize = 65_536;

/// One envelope to publish: the topic (the broker channel is derived from
/// it) and the encoded envelope.
pub(crate) type Outgoing = (Arc<str>, Bytes);

/// The publishing side of the bus: cheap to share, never blocks.
#[derive(Debug)]
pub(crate) struct Bus {
    node: NodeId,
    publishes: mpsc::Sender<Outgoing>,
    interest: mpsc::UnboundedSender<Box<str>>,
    stop: watch::Sender<bool>,
    counters: Arc<BusCounters>,
}

/// What the bus thread receives from the [`Bus`].
#[derive(Debug)]
pub(crate) struct BusReceiver {
    pub(crate) publishes: mpsc::Receiver<Outgoing>,
    pub(crate) interest: mpsc::UnboundedReceiver<Box<str>>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Resolves once the server is shutting down.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the Bus is gone, which is a stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

impl BusReceiver {
    /// Takes what is queued to publish without sending it (the broker is
    /// unreachable), counting it as dropped; returns how many.
    pub(crate) fn drop_queued(&mut self, counters: &BusCounters) -> u64 {
        let mut dropped = 0;
        while self.publishes.try_recv().is_ok() {
            dropped += 1;
        }
        BusCounters::add(&counters.publishes_dropped, dropped);
        dropped
    }
}

impl Bus {
    /// A bus for a node, and the receiving side for its thread.
    pub(crate) fn new() -> (Arc<Self>, BusReceiver) {
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let bus = Arc::new(Self {
            node: new_node_id(),
            publishes: publish_tx,
            interest: interest_tx,
            stop: stop_tx,
            counters: Arc::default(),
        });
        let receiver = BusReceiver {
            publishes: publish_rx,
            interest: interest_rx,
            stop: stop_rx,
        };
        (bus, receiver)
    }

    /// The registry hook that tells the bus thread about interest changes.
    pub(crate) fn interest_hook(&self) -> InterestHook {
        let interest = self.interest.clone();
        // A closed channel means the bus thread has stopped: nothing to do.
        Box::new(move |topic| {
            let _ = interest.send(Box::from(topic));
        })
    }

    /// Hands `broadcast` to the bus thread for the other nodes.
    pub(crate) fn forward(&self, broadcast: &Broadcast) {
        let topic = broadcast.topic();
        let encoded = match (broadcast.message(), broadcast.is_binary()) {
            (Some(message), false) => {
                encode_channel(self.node, topic, &message.event, &message.payload)
            }
            _ => encode_frames(
                self.node,
                topic,
                (0..WireProtocol::COUNT)
                    .filter_map(WireProtocol::from_index)
                    .filter_map(|protocol| broadcast.frame(protocol).map(|f| (protocol, &f[..]))),
            ),
        };
        let Ok(bytes) = encoded else {
            tracing::warn!(
                topic = broadcast.topic(),
                "broadcast too large for the bus envelope"
            );
            BusCounters::add(&self.counters.publishes_dropped, 1);
            return;
        };
        if self
            .publishes
            .try_send((Arc::from(broadcast.topic()), bytes))
            .is_err()
        {
            BusCounters::add(&self.counters.publishes_dropped, 1);
        }
    }

    /// Asks the bus thread to stop.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        self.counters.snapshot()
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
}

impl Inbound {
    pub(crate) fn registry(&self) -> &TopicRegistry {
        self.server.registry()
    }

    /// Delivers one envelope's message to this node's subscribers.
    pub(crate) fn deliver(&self, bytes: &[u8]) {
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                BusCounters::add(&self.counters.decode_errors, 1);
                tracing::debug!(%err, "bus envelope dropped");
                return;
            }
        };
        if envelope.origin == self.node {
            BusCounters::add(&self.counters.received_own, 1);
            return;
        }
        BusCounters::add(&self.counters.received, 1);
        let topic = envelope.topic;
        let Some(entry) = self.server.topic(&topic) else {
            return;
        };
        let broadcast = match envelope.content {
            Content::Channel { event, payload } => {
                encode_broadcast(&topic, &event, payload, &entry)
            }
            Content::Frames(frames) => {
                let mut by_protocol: [Option<Bytes>; WireProtocol::COUNT] = Default::default();
                for (protocol, frame) in frames {
                    by_protocol[protocol.index()] = Some(frame);
                }
                Broadcast::frames(&topic, by_protocol)
            }
        };
        self.server.broadcast_local(broadcast);
    }
}

/// Starts the bus thread for `broker`, delivering to `server`'s loops.
pub(crate) fn spawn(
    broker: super::Broker,
    bus: &Bus,
    receiver: BusReceiver,
    server: ServerHandle,
) -> io::Result<JoinHandle<()>> {
    let inbound = Inbound {
        node: bus.node,
        server,
        counters: Arc::clone(&bus.counters),
    };
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

async fn run(broker: super::Broker, receiver: BusReceiver, inbound: Inbound) {
    match broker {
        super::Broker::Memory => {}
        #[cfg(feature = "redis")]
        super::Broker::Redis { url } => super::redis::run(url, receiver, inbound).await,
        #[cfg(feature = "nats")]
        super::Broker::Nats { url } => super::nats::run(url, receiver, inbound).await,
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
                BusCounters::add(&counters.publishes_dropped, 1);
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
