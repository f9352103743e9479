//! The command line's options: the flags every scenario shares, the
//! scenarios with their own flags, and what the scenarios read from them.

use std::{io, net::SocketAddr};

use clap::{Parser, Subcommand};
use herald_bench::{proc_stats::ProcessSample, report::Format};

use super::embedded::EMBEDDED_THREAD_PREFIX;

// No doc comments on `Options`, `Scenario` and the `scenario` field: clap
// would print them in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(about = "Load generator for herald and other WebSocket servers")]
pub(crate) struct Options {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9001", global = true)]
    pub(crate) addr: SocketAddr,
    /// WebSocket path.
    #[arg(long, default_value = "/", global = true)]
    pub(crate) path: String,
    /// More server addresses (other nodes of a cluster): connections are
    /// spread round-robin over `--addr` and these; a publisher connection
    /// always goes to `--addr`.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) also: Vec<SocketAddr>,
    /// Offer permessage-deflate on every connection; compressed frames are
    /// inflated only as far as the sequence number.
    #[arg(long, global = true)]
    pub(crate) deflate: bool,
    /// Speak TLS on every connection (any certificate is accepted).
    #[arg(long, global = true)]
    pub(crate) tls: bool,
    /// Fan-out payloads that read like market data (rows of symbols and
    /// prices: JSON that compresses about as real JSON does) instead of
    /// one repeated letter.
    #[arg(long, global = true)]
    pub(crate) quotes: bool,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long, global = true)]
    pub(crate) server_pid: Option<u32>,
    /// Start herald's fan-out server in this process (the `fanout`
    /// example's servers, plain or `--phoenix`), its loops pinned to
    /// `--server-cpus`, and run the scenario against it. Connections then
    /// cost two descriptors here, so runs are capped at half the limit.
    #[arg(long, global = true)]
    pub(crate) embedded: bool,
    /// Compare with a baseline (`raw` or `tokio`): start herald's `fanout`
    /// example and the baseline here, alternately, and print the ratios
    /// (fanout and latency scenarios).
    #[arg(long, global = true)]
    pub(crate) vs: Option<String>,
    /// Rounds of the comparison (herald, baseline, herald, baseline, ...).
    #[arg(long, default_value_t = 2, global = true)]
    pub(crate) rounds: usize,
    /// CPUs the compared servers are pinned to (taskset list).
    #[arg(long, default_value = "0", global = true)]
    pub(crate) server_cpus: String,
    /// Load generator threads (fanout and latency): subscribers are
    /// spread over them, each with its own poll; the first also publishes.
    /// One per core the server does not use.
    #[arg(long, default_value_t = 1, global = true)]
    pub(crate) threads: usize,
    /// Print each report as one JSON line instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Where the server binaries are (`target/release` after `cargo build
    /// --release -p herald --example fanout -p herald-bench`).
    #[arg(long, default_value = "target/release", global = true)]
    pub(crate) bin_dir: std::path::PathBuf,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Scenario {
    /// Round trips per second: each connection sends, waits for the echo,
    /// sends again.
    Echo {
        /// Concurrent connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds (after all connections are open).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Handshakes per second.
    Connect {
        /// Connections to open (kept open until the end).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Deliveries per second from one publisher to many subscribers.
    Fanout {
        /// Subscribers of the topic.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Messages in flight: the publisher sends the next one when the
        /// oldest has reached every subscriber.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Payload bytes per message (at least 16: a sequence number).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2: subscribers join the topic, the
        /// publisher pushes `new_msg`, which the server's channel
        /// broadcasts (the `fanout` example with `--phoenix`).
        #[arg(long)]
        phoenix: bool,
        #[command(flatten)]
        api: ApiPublish,
    },
    /// Many topics ("rooms") with a chatty publisher each: deliveries per
    /// second and latency across all rooms.
    Rooms {
        /// Rooms (topics); lowered to what the descriptor limit allows.
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        /// Subscribers per room (each room also has one publisher).
        #[arg(long, default_value_t = 50)]
        size: usize,
        /// Messages in flight per room.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Payload bytes per message (at least 16).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Connections come and go at a steady rate while a broadcast stream
    /// runs: the stable subscribers must miss nothing, and the server's
    /// memory must come back once the churn stops.
    Churn {
        /// Stable subscribers of the topic.
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Connections opened (and later closed) per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// How long each churning connection lives, in milliseconds.
        #[arg(long, default_value_t = 500)]
        lifetime_ms: u64,
        /// Messages in flight to the stable subscribers.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2: stable subscribers and churners join
        /// the topic; a churner leaves it (`phx_leave`) and then
        /// disconnects (the `fanout` example with `--phoenix`).
        #[arg(long)]
        phoenix: bool,
    },
    /// Phoenix joins per second and the join reply's latency: each client
    /// joins a fresh topic, waits for the reply, leaves, joins the next
    /// (`--path` with `?vsn=2.0.0`).
    Joins {
        /// Clients, one join in flight each.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Topics are `{prefix}{client}-{n}`.
        #[arg(long, default_value = "room:")]
        prefix: String,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Publish-to-receive latency at a fixed publish rate (fan-out to N
    /// subscribers of one topic), and whether delivery keeps up.
    Latency {
        /// Subscribers of the topic.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Publishes per second (100 to 10,000 subscribers offers 1 M
        /// deliveries/s).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Payload bytes per message (at least 16).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2 (see `fanout --phoenix`).
        #[arg(long)]
        phoenix: bool,
        #[command(flatten)]
        api: ApiPublish,
    },
    /// Rounds of connections opened, echoed once and closed (half clean,
    /// half reset), never more than --concurrent at once: the server's RSS
    /// after each round (needs --server-pid; any echo server).
    ChurnRounds {
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Connections per round.
        #[arg(long, default_value_t = 100_000)]
        per_round: usize,
        /// Connections open at once.
        #[arg(long, default_value_t = 2_000)]
        concurrent: usize,
        /// Seconds to wait after each round before reading the RSS.
        #[arg(long, default_value_t = 11)]
        settle_secs: u64,
    },
    /// Half-open handshakes (part of a request head, then nothing): the
    /// server's RSS before, during and after (needs --server-pid).
    Slowloris {
        /// Sockets.
        #[arg(long, default_value_t = 3_000)]
        sockets: usize,
        /// Seconds to hold them (the server's handshake timeout is 10 s).
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
        /// Seconds to watch the RSS after they close.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
    },
    /// A stream to subscribers of which some never read, against the
    /// `fanout` example: the server's RSS before, during and after the stuck
    /// ones are gone (needs --server-pid).
    Stuck {
        /// Subscribers, the stuck ones included.
        #[arg(long, default_value_t = 2_000)]
        subscribers: usize,
        /// Subscribers that never read.
        #[arg(long, default_value_t = 100)]
        stuck: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        /// Seconds of streaming.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds to watch the RSS after the stuck ones close.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
    },
    /// Phoenix clients join one presence topic over a few seconds, each
    /// keeping its list from presence_state and presence_diff: when every
    /// list holds every key, diffs per client, server CPU and peak RSS
    /// (against the standalone herald, --path /socket/websocket).
    PresenceStorm {
        /// Clients, each joining once under its own key.
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        /// Seconds the joins are spread over.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The topic (a presence topic of the server).
        #[arg(long, default_value = "room:presence-storm")]
        topic: String,
    },
    /// Phoenix clients join a topic with history, all drop, messages are
    /// published through the API, and all reconnect at once joining with
    /// their last position: when the last one has recovered every missed
    /// message, server CPU and peak RSS (against the standalone herald
    /// with a history rule for the topic, --path /socket/websocket).
    RecoveryStorm {
        /// Clients reconnecting at once.
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        /// Messages each client misses.
        #[arg(long, default_value_t = 20)]
        behind: u64,
        /// The topic (one the server keeps history for).
        #[arg(long, default_value = "storm:recovery")]
        topic: String,
        /// The server's HTTP API address, to publish the missed messages.
        #[arg(long)]
        api: SocketAddr,
        /// The API key, if the server has one.
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Server memory per idle connection.
    Idle {
        /// Idle connections to open.
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
}

/// Publishing through the standalone server's HTTP API instead of a
/// WebSocket publisher (implies `--phoenix`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiPublish {
    /// The `herald` server's HTTP API address: publish each message with
    /// `POST /api/broadcast`.
    #[arg(long)]
    pub(crate) api: Option<SocketAddr>,
    /// The API key, if the server has one.
    #[arg(long, requires = "api")]
    pub(crate) api_key: Option<String>,
}

impl Options {
    /// The server's CPU time and memory now: its process (`--server-pid`),
    /// or the embedded server's loop threads.
    pub(crate) fn server_sample(&self) -> io::Result<Option<ProcessSample>> {
        if self.embedded {
            return ProcessSample::read_threads(EMBEDDED_THREAD_PREFIX).map(Some);
        }
        self.server_pid.map(ProcessSample::read).transpose()
    }

    /// How reports are printed.
    pub(crate) fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Table
        }
    }
}
