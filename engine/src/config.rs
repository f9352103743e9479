//! Server configuration: every limit and timeout, with its default, the
//! reason for it, and the range the server accepts.
//!
//! A [`ServerConfig`] is built through
//! [`ServerBuilder`](crate::ServerBuilder) and checked once, when the server
//! starts: a value out of range is a [`ConfigError`] naming the setting,
//! never silently clamped.

use std::{net::SocketAddr, time::Duration};

use crate::{
    admission::RateLimit,
    conflation::Conflation,
    wire::{CloseCode, DecoderConfig},
};

/// The most event loops a server runs: the topic index tracks loops as the
/// bits of a `u64`.
pub const MAX_LOOPS: usize = 64;

/// What to do with a client whose outbound queue grows past
/// [`ServerConfig::max_queued_bytes`] because it reads slower than it is
/// sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Drop what is still queued and close the connection with this code
    /// (default 1013 "try again later": clients reconnect, and resubscribe
    /// where the protocol has them do so). Counted in
    /// [`ServerStats::slow_consumer_closes`](crate::ServerStats).
    Close(CloseCode),
    /// Keep the connection and drop the oldest whole frames until the queue
    /// fits again (uWebSockets' default). Each dropped frame is counted in
    /// [`ServerStats::frames_dropped`](crate::ServerStats); the client is not
    /// told, so use it only for streams where the latest value supersedes
    /// the older ones (prices, positions).
    DropOldest,
}

/// A document served at a path with a plain `GET` (see
/// [`ServerBuilder::static_file`](crate::ServerBuilder::static_file)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StaticFile {
    /// The exact path, such as `/`.
    pub path: String,
    /// The `Content-Type`, such as `text/html; charset=utf-8`.
    pub content_type: String,
    /// The body.
    pub body: bytes::Bytes,
}

/// Everything a [`Server`](crate::Server) can be configured with.
///
/// Built through [`ServerBuilder`](crate::ServerBuilder), read through the
/// methods of the same names; the defaults are chosen for a fan-out server
/// holding many mostly idle connections.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use herald::{ConfigError, Server};
///
/// let builder = Server::builder().ping_interval(Duration::from_secs(25));
/// assert_eq!(builder.config().ping_interval(), Duration::from_secs(25));
/// assert_eq!(builder.config().idle_timeout(), Duration::from_secs(60));
///
/// let too_many = Server::builder().loops(1000);
/// assert!(matches!(
///     too_many.config().validate(),
///     Err(ConfigError::OutOfRange { setting: "loops", .. })
/// ));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen. Default `127.0.0.1:9001`.
    pub(crate) addr: SocketAddr,
    /// Event loops, one thread each. Default: the available cores (at most
    /// 64). Range 1 to 64.
    pub(crate) loops: usize,
    /// Pin each loop thread to its own core. Default `true`: a loop that
    /// keeps its core keeps its caches, which is most of fan-out speed.
    pub(crate) pin_cores: bool,
    /// Paths that accept WebSocket upgrades; empty means every path.
    pub(crate) endpoints: Vec<String>,
    /// Small documents answered with `200` to a plain `GET` (a demo page,
    /// a client script), so an example needs no other web server.
    pub(crate) static_files: Vec<StaticFile>,
    /// Connections (open or handshaking) past which new ones get 503.
    /// Default 1,000,000; the process's file-descriptor limit usually binds
    /// first.
    pub(crate) max_connections: usize,
    /// The largest request head. Default 8 KiB, as most HTTP servers;
    /// longer heads get 431.
    pub(crate) max_head_bytes: usize,
    /// How long a client may take to send its request head. Default 10 s.
    pub(crate) handshake_timeout: Duration,
    /// How often the server pings an open connection. Default 30 s, the
    /// interval phoenix.js and amber.js use for their own heartbeats.
    pub(crate) ping_interval: Duration,
    /// How long a connection may stay silent (nothing received, pongs
    /// included) before the server closes it with 1001. Default 60 s.
    pub(crate) idle_timeout: Duration,
    /// How long the server waits for the peer's close frame, or for its
    /// FIN after a refused handshake, before dropping the TCP connection.
    /// Default 5 s.
    pub(crate) close_timeout: Duration,
    /// Frame and message limits for client messages. Default: 1 MiB each,
    /// ample for channel pushes; the echo example raises it to 16 MiB.
    pub(crate) decoder: DecoderConfig,
    /// Bytes a connection may have queued for sending before the
    /// [`slow_consumer`](Self::slow_consumer) policy applies. Default
    /// 4 MiB: thousands of typical broadcasts, and a bound on the memory one
    /// stuck client can hold.
    pub(crate) max_queued_bytes: usize,
    /// What happens past `max_queued_bytes`. Default: close with 1013.
    pub(crate) slow_consumer: SlowConsumerPolicy,
    /// Topics whose messages supersede one another for a subscriber that
    /// falls behind (see [`Conflation`]): the first rule matching a topic
    /// applies. Default: none.
    pub(crate) conflation: Vec<Conflation>,
    /// Outbound bytes all connections together may hold queued, split
    /// evenly between the loops. After each turn's writes a loop over its
    /// share applies the [`slow_consumer`](Self::slow_consumer) policy to
    /// its largest queues first (closing them, or dropping their oldest
    /// messages) until it is back under, and counts each in
    /// [`ServerStats::queue_budget_sheds`](crate::ServerStats). It bounds
    /// what slow consumers can hold together, where `max_queued_bytes`
    /// bounds each: size it as the memory you give herald for backlogs
    /// (clients that keep up hold next to nothing between turns). Default
    /// 1 GiB; range 1 MiB to 1 TiB.
    pub(crate) queue_budget: usize,
    /// How long a graceful shutdown waits for clients to answer its 1001
    /// close frames. Default 5 s.
    pub(crate) shutdown_timeout: Duration,
    /// Over how long a drain ([`ServerHandle::drain`](crate::ServerHandle::drain))
    /// spreads its 1012 closes, a batch every 100 ms tick, so that clients
    /// reconnect to other nodes a few at a time rather than all at once (a
    /// reconnect storm). Default 10 s; Phoenix drains 10,000 sockets every
    /// 2 s by default.
    pub(crate) drain_period: Duration,
    /// Connections a source address may open (a second, in bursts of);
    /// more get 429 with `Retry-After`, before their request is read.
    /// Default: no limit (a load test from one address would trip any).
    pub(crate) connect_rate_per_address: Option<RateLimit>,
    /// Connections the server takes overall; more get 503 with
    /// `Retry-After`. Default: no limit.
    pub(crate) connect_rate: Option<RateLimit>,
    /// Messages (text and binary) one connection may send; past it, the
    /// handler's `on_rate_limited` decides (by default: close 1008), and
    /// more than a burst's worth past it in a row closes with 1008. Default:
    /// no limit.
    pub(crate) message_rate: Option<RateLimit>,
    /// Broadcasts, sends and closes from other threads that may wait for a
    /// loop; past it they are refused with `SendError::Busy` and counted
    /// (`commands_refused`), so a publisher faster than the loops cannot
    /// grow memory without end. Default 65,536 (a few MiB per loop at
    /// most); range 16 to 16 M.
    pub(crate) mailbox_capacity: usize,
    /// Bytes read from a socket per `recv`. Default 16 KiB. Read buffers
    /// come from a per-loop pool and go back to it when a connection has
    /// no partial message, so idle connections hold none.
    pub(crate) read_chunk: usize,
    /// The cores the loops are pinned to, in loop order (with
    /// `pin_cores`); empty, the default, means the first cores the system
    /// lists, one per loop.
    pub(crate) core_ids: Vec<usize>,
    /// permessage-deflate (RFC 7692), for clients that offer it. Default:
    /// off, as in Phoenix, Centrifugo and uWebSockets: it trades server CPU
    /// (a compression per broadcast and per large reply, an inflate per
    /// compressed client message) for bandwidth, which pays for JSON and
    /// not for small or already compressed payloads.
    pub(crate) compression: Option<Compression>,
    /// TLS (`wss://`), set with
    /// [`ServerBuilder::tls`](crate::ServerBuilder::tls). Default: none
    /// (cleartext, or TLS terminated by a proxy in front).
    pub(crate) tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// How herald compresses, when permessage-deflate is on
/// ([`ServerBuilder::compression`](crate::ServerBuilder::compression)).
///
/// Every message is compressed on its own, without context takeover either
/// way: a broadcast is compressed once per wire protocol, only if some
/// subscriber negotiated the extension, and the same bytes go to all of
/// them; a reply or push to one client is compressed for it; a connection
/// keeps no compression state between messages, so an idle one costs
/// nothing more. Frames with less payload than
/// [`min_size`](Self::min_size) go uncompressed (the extension allows
/// both).
///
/// # Examples
///
/// ```
/// use herald::{Compression, Server};
///
/// let builder = Server::builder().compression(Compression::new().level(4).min_size(512));
/// assert_eq!(builder.config().compression(), Some(Compression::new().level(4).min_size(512)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    level: u32,
    min_size: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Self::new()
    }
}

impl Compression {
    /// Level 6 (zlib's balance of speed and size), frames of 256 bytes or
    /// more.
    pub const fn new() -> Self {
        Self {
            level: 6,
            min_size: 256,
        }
    }

    /// The DEFLATE level, 1 (fastest) to 9 (smallest).
    pub const fn level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }

    /// The smallest payload compressed, in bytes.
    pub const fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }

    /// The level.
    pub const fn get_level(&self) -> u32 {
        self.level
    }

    /// The smallest payload compressed.
    pub const fn get_min_size(&self) -> usize {
        self.min_size
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            loops: std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(MAX_LOOPS),
            pin_cores: true,
            endpoints: Vec::new(),
            static_files: Vec::new(),
            core_ids: Vec::new(),
            max_connections: 1_000_000,
            max_head_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            decoder: DecoderConfig::default()
                .max_frame_size(1 << 20)
                .max_message_size(1 << 20),
            max_queued_bytes: 4 << 20,
            slow_consumer: SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER),
            conflation: Vec::new(),
            queue_budget: 1 << 30,
            shutdown_timeout: Duration::from_secs(5),
            drain_period: Duration::from_secs(10),
            connect_rate_per_address: None,
            connect_rate: None,
            message_rate: None,
            compression: None,
            tls: None,
            mailbox_capacity: 65_536,
            read_chunk: 16 * 1024,
        }
    }
}

/// A setting the server cannot run with, found when it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count or size outside the range the server supports: set it
    /// within `min..=max`.
    #[error("{setting} = {value} is out of range: it must be between {min} and {max}")]
    OutOfRange {
        /// The setting's name (the [`ServerBuilder`](crate::ServerBuilder)
        /// method).
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A duration outside the range the server supports: set it within
    /// `min..=max` (timers tick every 100 ms).
    #[error("{setting} = {value:?} is out of range: it must be between {min:?} and {max:?}")]
    DurationOutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest value accepted.
        min: Duration,
        /// The longest value accepted.
        max: Duration,
    },
    /// Two settings that cannot go together; the error says which.
    #[error("{0}")]
    Conflict(&'static str),
}

/// The shortest timeout or interval: one timer tick.
const MIN_TIMER: Duration = Duration::from_millis(100);
/// The longest timeout or interval.
const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

fn check_count(setting: &'static str, value: usize, min: u64, max: u64) -> Result<(), ConfigError> {
    let value = u64::try_from(value).unwrap_or(u64::MAX);
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            value,
            min,
            max,
        })
    }
}

fn check_duration(
    setting: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::DurationOutOfRange {
            setting,
            value,
            min,
            max,
        })
    }
}

macro_rules! getters {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty ),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> $ty {
                self.$name
            }
        )*
    };
}

impl ServerConfig {
    getters! {
        /// Where the server listens.
        addr: SocketAddr,
        /// How many event loops run.
        loops: usize,
        /// Whether loops are pinned to cores.
        pin_cores: bool,
        /// Connections past which new ones get 503.
        max_connections: usize,
        /// The largest request head.
        max_head_bytes: usize,
        /// Time allowed for the request head.
        handshake_timeout: Duration,
        /// How often each connection is pinged.
        ping_interval: Duration,
        /// Silence after which a connection is closed.
        idle_timeout: Duration,
        /// How long the server waits for the peer's side of a close.
        close_timeout: Duration,
        /// Limits on client frames and messages.
        decoder: DecoderConfig,
        /// Outbound bytes a connection may have queued.
        max_queued_bytes: usize,
        /// What happens past that limit.
        slow_consumer: SlowConsumerPolicy,
        /// Outbound bytes all connections may hold queued together.
        queue_budget: usize,
        /// How long a graceful shutdown waits for clients.
        shutdown_timeout: Duration,
        /// Over how long a drain spreads its closes.
        drain_period: Duration,
        /// The connection rate allowed per source address, if limited.
        connect_rate_per_address: Option<RateLimit>,
        /// The connection rate allowed overall, if limited.
        connect_rate: Option<RateLimit>,
        /// The message rate allowed per connection, if limited.
        message_rate: Option<RateLimit>,
        /// Commands a loop's mailbox holds.
        mailbox_capacity: usize,
        /// Bytes per `recv`.
        read_chunk: usize,
    }

    /// The paths that accept upgrades (empty: every path).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The documents served to a plain `GET`.
    pub fn static_files(&self) -> &[StaticFile] {
        &self.static_files
    }

    /// The cores the loops are pinned to (empty: the first ones listed).
    pub fn core_ids(&self) -> &[usize] {
        &self.core_ids
    }

    /// The conflation rules, in the order they are tried.
    pub fn conflation(&self) -> &[Conflation] {
        &self.conflation
    }

    /// permessage-deflate, if on.
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// One loop's share of [`queue_budget`](Self::queue_budget).
    pub(crate) fn loop_queue_budget(&self) -> usize {
        self.queue_budget / self.loops.max(1)
    }

    /// Checks every setting against the range the server supports; the
    /// server does this when it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_count("loops", self.loops, 1, MAX_LOOPS as u64)?;
        if let Some(compression) = &self.compression {
            check_count("compression level", compression.level as usize, 1, 9)?;
        }
        check_count("max_connections", self.max_connections, 1, 1 << 31)?;
        check_count("max_head_bytes", self.max_head_bytes, 512, 1 << 20)?;
        check_count("max_queued_bytes", self.max_queued_bytes, 1024, 1 << 30)?;
        check_count("queue_budget", self.queue_budget, 1 << 20, 1 << 40)?;
        check_count("read_chunk", self.read_chunk, 512, 16 << 20)?;
        check_count("mailbox_capacity", self.mailbox_capacity, 16, 16 << 20)?;
        if let Some(limit) = self.message_rate {
            // The message bucket refills once per 100 ms tick: a burst
            // smaller than a tick's worth would refuse an even sender.
            let tick_worth = u64::from(limit.per_second()).div_ceil(10);
            check_count(
                "message_rate burst",
                limit.burst() as usize,
                tick_worth,
                u64::from(u32::MAX),
            )?;
        }
        check_duration(
            "handshake_timeout",
            self.handshake_timeout,
            MIN_TIMER,
            MAX_TIMER,
        )?;
        check_duration("ping_interval", self.ping_interval, MIN_TIMER, MAX_TIMER)?;
        check_duration("idle_timeout", self.idle_timeout, MIN_TIMER, MAX_TIMER)?;
        check_duration("close_timeout", self.close_timeout, MIN_TIMER, MAX_TIMER)?;
        check_duration(
            "shutdown_timeout",
            self.shutdown_timeout,
            Duration::ZERO,
            MAX_TIMER,
        )?;
        check_duration("drain_period", self.drain_period, Duration::ZERO, MAX_TIMER)?;
        Ok(())
    }
}
