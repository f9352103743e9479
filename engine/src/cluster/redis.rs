//! The bus on Redis pub/sub.
//!
//! Two connections: a pub/sub connection (split into the sink that
//! subscribes and the stream of messages) and a multiplexed connection that
//! publishes, pipelining everything queued at once into one round trip.
//! Topic `T` is the Redis channel `herald:T` (channels are binary-safe).
//!
//! Redis forgets a connection's subscriptions when it drops, so on every
//! (re)connection the bus subscribes again to every topic in the registry.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::{AsyncCommands as _, aio::PubSubSink};

use super::{
    BusCounters,
    history::{PUBLISH_SCRIPT, READ_SCRIPT, meta_key, recovery_from, stream_key},
    runtime::{
        Backoff, BusReceiver, HistoryTarget, Inbound, LAST_PUBLISH, Outgoing, Subject, stopped,
        wait_dropping,
    },
};
use crate::{
    channels::{
        MAX_RECOVERED,
        history::{Recovery, RecoveryRead},
    },
    metrics::{add, set},
};

/// The prefix of herald's Redis channels of topics.
const CHANNEL_PREFIX: &str = "herald:";
/// The channel every node listens to (outside the topics' namespace).
const CONTROL_CHANNEL: &str = "herald-control";

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most envelopes pipelined in one round trip.
const MAX_BATCH: usize = 512;

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    Lost(String),
}

/// Runs the bus until the server stops.
pub(crate) async fn run(url: String, mut receiver: BusReceiver, inbound: Inbound) {
    let counters = Arc::clone(&inbound.counters);
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%url, %err, "invalid Redis URL; cluster bus disabled, every broadcast counted as dropped");
            while wait_dropping(&mut receiver, &counters, Duration::from_secs(3600)).await {}
            return;
        }
    };
    let mut backoff = Backoff::new();
    let mut ever_connected = false;
    // Failed attempts in the outage under way: the first is a warning, the
    // retries are debug lines, and the recovery says how many there were.
    let mut failed_attempts = 0u32;
    loop {
        let connection = tokio::select! {
            () = stopped(&mut receiver.stop) => return,
            result = tokio::time::timeout(CONNECT_TIMEOUT, connect(&client)) => {
                result.unwrap_or_else(|_| Err(redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))))
            }
        };
        let (sink, stream, publisher) = match connection {
            Ok(connection) => connection,
            Err(err) => {
                let delay = backoff.next_delay();
                if failed_attempts == 0 {
                    tracing::warn!(%url, %err, retry_in = ?delay, "cannot reach Redis; serving local traffic only, retrying");
                } else {
                    tracing::debug!(%url, %err, retry_in = ?delay, "Redis still unreachable");
                }
                failed_attempts += 1;
                if !wait_dropping(&mut receiver, &counters, delay).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        if ever_connected {
            add(&counters.reconnects, 1);
        }
        ever_connected = true;
        set(&counters.connected, 1);
        tracing::info!(%url, failed_attempts, "cluster bus connected to Redis");
        failed_attempts = 0;
        // Without scripting (an ACL that allows pub/sub only), the bus
        // still joins the nodes; only history is unavailable.
        let mut loader = publisher.clone();
        let load = tokio::time::timeout(CONNECT_TIMEOUT, Scripts::load(&mut loader));
        let scripts = match load.await {
            Ok(Ok(scripts)) => Some(scripts),
            Ok(Err(err)) => {
                tracing::warn!(%url, %err, "cannot load the history scripts into Redis: topics with history are unavailable");
                None
            }
            Err(_) => {
                tracing::warn!(%url, "loading the history scripts timed out: topics with history are unavailable");
                None
            }
        };
        let mut session = Session {
            sink,
            publisher,
            subscribed: HashSet::new(),
            inbound: &inbound,
            counters: &counters,
            scripts,
            scripts_lost: false,
        };
        let ended = session.serve(&mut receiver, stream).await;
        set(&counters.connected, 0);
        set(&counters.subscriptions, 0);
        match ended {
            Ended::Stopped => return,
            Ended::Lost(err) => {
                tracing::warn!(%url, %err, "lost the Redis connection; reconnecting, local traffic continues");
            }
        }
    }
}

type Connection = (
    PubSubSink,
    redis::aio::PubSubStream,
    redis::aio::MultiplexedConnection,
);

async fn connect(client: &redis::Client) -> redis::RedisResult<Connection> {
    let (sink, stream) = client.get_async_pubsub().await?.split();
    let publisher = client.get_multiplexed_async_connection().await?;
    Ok((sink, stream, publisher))
}

/// The SHA1s of the history scripts, loaded once per connection.
#[derive(Debug, Clone)]
struct Scripts {
    publish: Arc<str>,
    read: Arc<str>,
}

impl Scripts {
    async fn load(connection: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Self> {
        let load = |script: &'static str| {
            let mut command = redis::cmd("SCRIPT");
            command.arg("LOAD").arg(script);
            command
        };
        let publish: String = load(PUBLISH_SCRIPT).query_async(connection).await?;
        let read: String = load(READ_SCRIPT).query_async(connection).await?;
        Ok(Self {
            publish: Arc::from(publish),
            read: Arc::from(read),
        })
    }
}

/// One connection's life.
struct Session<'a> {
    sink: PubSubSink,
    publisher: redis::aio::MultiplexedConnection,
    subscribed: HashSet<Box<str>>,
    inbound: &'a Inbound,
    counters: &'a BusCounters,
    /// `None` when Redis refused them: history publishes are dropped and
    /// counted, reads answered "unavailable".
    scripts: Option<Scripts>,
    /// Whether Redis answered NOSCRIPT (its script cache was flushed).
    scripts_lost: bool,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        receiver: &mut BusReceiver,
        mut stream: redis::aio::PubSubStream,
    ) -> Ended {
        // Whatever gained or lost interest while disconnected is settled by
        // subscribing to the registry's topics as they are now.
        while receiver.interest.try_recv().is_ok() {}
        if let Err(err) = self.sink.subscribe(CONTROL_CHANNEL).await {
            return Ended::Lost(err.to_string());
        }
        for topic in self.inbound.local_topics() {
            if let Err(err) = self.settle(&topic).await {
                return Ended::Lost(err.to_string());
            }
        }
        let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut receiver.stop) => {
                    // What was handed over before the stop (the node's
                    // goodbye) still goes out, briefly.
                    receiver.take_queued(&mut batch);
                    if !batch.is_empty() {
                        let _ = tokio::time::timeout(LAST_PUBLISH, self.publish(&mut batch)).await;
                    }
                    return Ended::Stopped;
                }
                Some(topic) = receiver.interest.recv() => {
                    if let Err(err) = self.settle(&topic).await {
                        return Ended::Lost(err.to_string());
                    }
                }
                Some(read) = receiver.history_reads.recv() => {
                    // Subscribed on the broker before the read: what is
                    // published after it reaches the joining client.
                    while let Ok(topic) = receiver.interest.try_recv() {
                        if let Err(err) = self.settle(&topic).await {
                            read.reply.send(Recovery::unavailable());
                            return Ended::Lost(err.to_string());
                        }
                    }
                    match &self.scripts {
                        Some(scripts) => {
                            let script = Arc::clone(&scripts.read);
                            let epoch = self.inbound.new_epoch();
                            tokio::spawn(read_history(self.publisher.clone(), script, epoch, read));
                        }
                        None => read.reply.send(Recovery::unavailable()),
                    }
                }
                message = stream.next() => match message {
                    Some(message) => self.inbound.deliver(message.get_payload_bytes()),
                    None => return Ended::Lost("subscription stream ended".into()),
                },
                count = receiver.publishes.recv_many(&mut batch, MAX_BATCH) => {
                    if count == 0 {
                        return Ended::Stopped;
                    }
                    if let Err(err) = self.publish(&mut batch).await {
                        return Ended::Lost(err.to_string());
                    }
                }
            }
        }
    }

    /// Subscribes to `topic` if this node has subscribers of it and is not
    /// subscribed yet; unsubscribes if it has none left.
    async fn settle(&mut self, topic: &str) -> redis::RedisResult<()> {
        let wanted = self.inbound.has_local_interest(topic);
        let subscribed = self.subscribed.contains(topic);
        if wanted && !subscribed {
            self.sink.subscribe(topic_channel(topic)).await?;
            self.subscribed.insert(Box::from(topic));
        } else if !wanted && subscribed {
            self.sink.unsubscribe(topic_channel(topic)).await?;
            self.subscribed.remove(topic);
        }
        set(&self.counters.subscriptions, self.subscribed.len() as u64);
        Ok(())
    }

    /// Publishes a batch in one pipelined round trip; on failure the whole
    /// batch counts as dropped.
    async fn publish(&mut self, batch: &mut Vec<Outgoing>) -> redis::RedisResult<()> {
        if self.scripts.is_none() {
            let before = batch.len();
            batch.retain(|(subject, _)| !matches!(subject, Subject::History(_)));
            add(
                &self.counters.publishes_dropped,
                (before - batch.len()) as u64,
            );
            if batch.is_empty() {
                return Ok(());
            }
        }
        let count = batch.len() as u64;
        if let [(subject @ (Subject::Topic(_) | Subject::Control), envelope)] = batch.as_slice() {
            let result = self
                .publisher
                .publish::<_, _, ()>(channel(subject), envelope.as_ref())
                .await;
            batch.clear();
            return self.settle_publishes(count, result.map(|()| 0));
        }
        // Each command answers for itself: a script refused (out of
        // memory, a lost script cache) drops its publication, not the
        // connection and everything else in the batch.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (subject, envelope) in batch.iter() {
            match subject {
                Subject::History(target) => self.append_history(&mut pipe, target, envelope),
                _ => {
                    pipe.publish(channel(subject), envelope.as_ref());
                }
            }
        }
        batch.clear();
        let answers = pipe
            .query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut self.publisher)
            .await;
        let failed = answers.map(|answers| self.refused_commands(&answers));
        if let Ok(failed) = &failed
            && *failed > 0
            && self.scripts_lost
        {
            self.reload_scripts().await;
        }
        self.settle_publishes(count, failed)
    }

    /// Counts the commands Redis refused, logs the first, and notes a lost
    /// script cache.
    fn refused_commands(&mut self, answers: &[redis::RedisResult<redis::Value>]) -> u64 {
        let mut failed = 0;
        for err in answers.iter().filter_map(|answer| answer.as_ref().err()) {
            if failed == 0 {
                tracing::warn!(%err, "Redis refused a publish");
            }
            failed += 1;
            if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                self.scripts_lost = true;
            }
        }
        failed
    }

    /// Loads the history scripts again (Redis lost its script cache).
    async fn reload_scripts(&mut self) {
        let mut loader = self.publisher.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, Scripts::load(&mut loader)).await {
            Ok(Ok(scripts)) => {
                self.scripts = Some(scripts);
                self.scripts_lost = false;
            }
            _ => tracing::warn!("reloading the history scripts into Redis failed"),
        }
    }

    /// Counts a batch's outcome: `Ok(n)` with `n` publications refused one
    /// by one, or the connection's failure (the whole batch dropped).
    fn settle_publishes(
        &self,
        count: u64,
        outcome: redis::RedisResult<u64>,
    ) -> redis::RedisResult<()> {
        match outcome {
            Ok(refused) => {
                add(&self.counters.publishes, count - refused);
                add(&self.counters.publishes_dropped, refused);
                Ok(())
            }
            Err(err) => {
                add(&self.counters.publishes_dropped, count);
                tracing::warn!(%err, dropped = count, "publishing to Redis failed");
                Err(err)
            }
        }
    }
}

impl Session<'_> {
    /// Queues the publish script for one publication with history.
    fn append_history(&self, pipe: &mut redis::Pipeline, target: &HistoryTarget, envelope: &[u8]) {
        let Some(scripts) = &self.scripts else {
            return; // filtered out in `publish`
        };
        pipe.cmd("EVALSHA")
            .arg(&*scripts.publish)
            .arg(2)
            .arg(stream_key(&target.topic))
            .arg(meta_key(&target.topic))
            .arg(topic_channel(&target.topic))
            .arg(target.size)
            .arg(target.ttl_ms)
            .arg(target.meta_ttl_ms)
            .arg(&target.new_epoch)
            .arg(&target.exclude)
            .arg(envelope);
    }
}

/// Runs the read script for one join and sends the answer to its loop.
async fn read_history(
    mut connection: redis::aio::MultiplexedConnection,
    script: Arc<str>,
    new_epoch: String,
    read: RecoveryRead,
) {
    let since = read
        .since
        .as_ref()
        .map_or(-1, |since| i64::try_from(since.offset).unwrap_or(i64::MAX));
    let mut command = redis::cmd("EVALSHA");
    command
        .arg(&*script)
        .arg(2)
        .arg(stream_key(&read.topic))
        .arg(meta_key(&read.topic))
        .arg(since)
        .arg(MAX_RECOVERED)
        .arg(new_epoch)
        // A stream nobody published to yet (a join names it) is kept only
        // as long as its publications would be: joins alone cannot fill
        // Redis with streams for a day.
        .arg(u64::try_from(read.rule.max_age().as_millis()).unwrap_or(u64::MAX));
    let answer = tokio::time::timeout(
        READ_TIMEOUT,
        command.query_async::<redis::Value>(&mut connection),
    )
    .await;
    let recovery = match answer {
        Ok(Ok(value)) => recovery_from(&value, read.since.as_ref()),
        Ok(Err(err)) => {
            tracing::warn!(%err, topic = &*read.topic, "history read failed");
            Recovery::unavailable()
        }
        Err(_) => Recovery::unavailable(),
    };
    read.reply.send(recovery);
}

/// How long a join's history read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis channel of a topic.
fn topic_channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{topic}")
}

/// The Redis channel an envelope is published on.
fn channel(subject: &Subject) -> String {
    match subject {
        Subject::Topic(topic) => topic_channel(topic),
        Subject::History(target) => topic_channel(&target.topic),
        Subject::Control => CONTROL_CHANNEL.to_owned(),
    }
}
