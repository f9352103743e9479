//! Server configuration: every limit and timeout, with its default and the
//! reason for it.

use std::{net::SocketAddr, time::Duration};

use crate::wire::{CloseCode, DecoderConfig};

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

/// A document served at a path with a plain `GET`.
#[derive(Debug, Clone)]
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
/// Built through [`ServerBuilder`](crate::ServerBuilder); the defaults are
/// chosen for a fan-out server holding many mostly idle connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen. Default `127.0.0.1:9001`.
    pub addr: SocketAddr,
    /// Event loops, one thread each. Default: the available cores.
    pub loops: usize,
    /// Pin each loop thread to its own core. Default `true`: a loop that
    /// keeps its core keeps its caches, which is most of fan-out speed.
    pub pin_cores: bool,
    /// Paths that accept WebSocket upgrades; empty means every path.
    pub endpoints: Vec<String>,
    /// Small documents answered with `200` to a plain `GET` (a demo page,
    /// a client script), so an example needs no other web server.
    pub static_files: Vec<StaticFile>,
    /// Connections (open or handshaking) past which new ones get 503.
    /// Default 1,000,000; the process's file-descriptor limit usually binds
    /// first.
    pub max_connections: usize,
    /// The largest request head. Default 8 KiB, as most HTTP servers;
    /// longer heads get 431.
    pub max_head_bytes: usize,
    /// How long a client may take to send its request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// How often the server pings an open connection. Default 30 s, the
    /// interval phoenix.js and amber.js use for their own heartbeats.
    pub ping_interval: Duration,
    /// How long a connection may stay silent (nothing received, pongs
    /// included) before the server closes it with 1001. Default 60 s.
    pub idle_timeout: Duration,
    /// How long the server waits for the peer's close frame, or for its
    /// FIN after a refused handshake, before dropping the TCP connection.
    /// Default 5 s.
    pub close_timeout: Duration,
    /// Frame and message limits for client messages. Default: 1 MiB each,
    /// ample for channel pushes; the echo example raises it to 16 MiB.
    pub decoder: DecoderConfig,
    /// Bytes a connection may have queued for sending before the
    /// [`slow_consumer`](Self::slow_consumer) policy applies. Default
    /// 4 MiB: thousands of typical broadcasts, and a bound on the memory one
    /// stuck client can hold.
    pub max_queued_bytes: usize,
    /// What happens past `max_queued_bytes`. Default: close with 1013.
    pub slow_consumer: SlowConsumerPolicy,
    /// How long a graceful shutdown waits for clients to answer its 1001
    /// close frames. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Bytes read from a socket per `recv`. Default 16 KiB. Read buffers
    /// come from a per-loop pool and go back to it when a connection has
    /// no partial message, so idle connections hold none.
    pub read_chunk: usize,
    /// The cores the loops are pinned to, in loop order (with
    /// `pin_cores`); empty, the default, means the first cores the system
    /// lists, one per loop.
    pub core_ids: Vec<usize>,
    /// The broker joining this node to others. Default
    /// [`Broker::Memory`](crate::cluster::Broker::Memory): a single node,
    /// no bus.
    pub broker: crate::cluster::Broker,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            loops: std::thread::available_parallelism().map_or(1, usize::from),
            pin_cores: true,
            endpoints: Vec::new(),
            static_files: Vec::new(),
            core_ids: Vec::new(),
            broker: crate::cluster::Broker::Memory,
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
            shutdown_timeout: Duration::from_secs(5),
            read_chunk: 16 * 1024,
        }
    }
}
