//! Configuration: built-in defaults, then a TOML file, then environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Every key is documented in `herald.toml` at the repository root; clap
//! reads a flag's environment variable itself when the flag is absent, so
//! flags win over the environment without code of ours.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use herald::{Conflation, RateLimit, channels::History};
use serde::Deserialize;

use crate::hooks::{OnFailure, PoolConfig, PublishMode};

/// The whole configuration, as the file spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) server: ServerSection,
    pub(crate) api: ApiSection,
    pub(crate) auth: AuthSection,
    pub(crate) log: LogSection,
    pub(crate) broker: BrokerSection,
    pub(crate) hooks: HooksSection,
    pub(crate) webhooks: WebhooksSection,
    /// Which topics clients may join and what their messages do; the first
    /// rule whose pattern matches a topic applies.
    pub(crate) channels: Vec<ChannelRule>,
}

/// The WebSocket side.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub(crate) listen: SocketAddr,
    /// Event loops; 0 means one per core.
    pub(crate) loops: usize,
    pub(crate) pin_cores: bool,
    /// Phoenix V2 endpoint path; empty turns it off.
    pub(crate) phoenix_path: String,
    /// Amber endpoint path; empty turns it off.
    pub(crate) amber_path: String,
    /// Serve the demo chat page at `/`.
    pub(crate) demo: bool,
    /// Origins allowed to connect; empty allows any.
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) max_connections: usize,
    /// Channels one connection may join.
    pub(crate) max_channels: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    /// Outbound bytes all connections may hold queued together.
    pub(crate) queue_budget_bytes: usize,
    pub(crate) ping_interval_secs: u64,
    pub(crate) idle_timeout_secs: u64,
    pub(crate) shutdown_timeout_secs: u64,
    pub(crate) drain_secs: u64,
    pub(crate) connect_rate_per_address: u32,
    pub(crate) connect_burst_per_address: u32,
    pub(crate) connect_rate: u32,
    pub(crate) connect_burst: u32,
    pub(crate) message_rate: u32,
    pub(crate) message_burst: u32,
    /// TLS: the certificate chain and key, PEM files; both or neither.
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    /// permessage-deflate for the clients that offer it.
    pub(crate) compression: bool,
    pub(crate) compression_level: u32,
    pub(crate) compression_min_bytes: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            loops: 0,
            pin_cores: true,
            phoenix_path: "/socket/websocket".into(),
            amber_path: "/amber".into(),
            demo: true,
            allowed_origins: Vec::new(),
            max_connections: 1_000_000,
            max_channels: 100,
            max_message_bytes: 1 << 20,
            max_queued_bytes: 4 << 20,
            slow_consumer: SlowConsumer::Close,
            queue_budget_bytes: 1 << 30,
            ping_interval_secs: 30,
            idle_timeout_secs: 60,
            shutdown_timeout_secs: 5,
            drain_secs: 10,
            connect_rate_per_address: 0,
            connect_burst_per_address: 0,
            connect_rate: 0,
            connect_burst: 0,
            message_rate: 0,
            message_burst: 0,
            tls_cert: None,
            tls_key: None,
            compression: false,
            compression_level: 6,
            compression_min_bytes: 256,
        }
    }
}

impl ServerSection {
    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub(crate) fn drain_period(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    /// The per-address connection rate limit, if set (a burst of 0 means
    /// the rate).
    pub(crate) fn connect_limit_per_address(&self) -> Option<RateLimit> {
        limit(
            self.connect_rate_per_address,
            self.connect_burst_per_address,
        )
    }

    /// The overall connection rate limit, if set.
    pub(crate) fn connect_limit(&self) -> Option<RateLimit> {
        limit(self.connect_rate, self.connect_burst)
    }

    /// The per-connection message rate limit, if set.
    /// The compression asked for, if on.
    pub(crate) fn compression(&self) -> Option<herald::Compression> {
        self.compression.then(|| {
            herald::Compression::new()
                .level(self.compression_level)
                .min_size(self.compression_min_bytes)
        })
    }

    pub(crate) fn message_limit(&self) -> Option<RateLimit> {
        limit(self.message_rate, self.message_burst)
    }
}

fn limit(rate: u32, burst: u32) -> Option<RateLimit> {
    (rate > 0).then(|| RateLimit::new(rate, if burst == 0 { rate } else { burst }))
}

/// What to do with a client that cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SlowConsumer {
    /// Close it with 1013.
    Close,
    /// Drop its oldest unsent frames.
    DropOldest,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApiSection {
    pub(crate) enabled: bool,
    pub(crate) listen: SocketAddr,
    /// Bearer key every `/api/` request must carry. Without one the API is
    /// open, which is allowed only on a loopback address.
    pub(crate) key: Option<String>,
    pub(crate) threads: usize,
    pub(crate) max_body_bytes: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4001)),
            key: None,
            threads: 2,
            max_body_bytes: 1 << 20,
        }
    }
}

/// Connect-time tokens.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// HMAC secret of HS256 JWTs; set, every connection needs a token.
    pub(crate) jwt_secret: Option<String>,
    /// Seconds a token is still accepted past its `exp` (and before its
    /// `nbf`), for clocks that disagree. Default 0.
    pub(crate) leeway_seconds: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSection {
    pub(crate) level: LogLevel,
    pub(crate) format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::ERROR,
            LogLevel::Warn => Self::WARN,
            LogLevel::Info => Self::INFO,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Trace => Self::TRACE,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

/// The cluster broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BrokerSection {
    pub(crate) kind: BrokerKind,
    /// The broker's URL; default `redis://127.0.0.1:6379/` or
    /// `nats://127.0.0.1:4222`.
    pub(crate) url: Option<String>,
    /// Seconds a node may stay silent before the others drop its
    /// presences; default 30.
    #[serde(default)]
    pub(crate) presence_down_secs: Option<u64>,
    /// Milliseconds between two counts of this node's topics, sent to the
    /// other nodes (cluster-wide counts, topic webhooks); default 1000.
    #[serde(default)]
    pub(crate) topic_counts_ms: Option<u64>,
}

impl BrokerSection {
    /// How long a silent node keeps its presences on the others.
    pub(crate) fn presence_down_after(&self) -> Duration {
        Duration::from_secs(self.presence_down_secs.unwrap_or(30).max(1))
    }

    /// How often this node counts its topics for the others.
    pub(crate) fn census_every(&self) -> Duration {
        Duration::from_millis(self.topic_counts_ms.unwrap_or(1000).max(10))
    }
}

/// Backend hooks: the application's backend decides connections, joins
/// and client messages over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HooksSection {
    /// Asked on every connection, after the Origin and token checks.
    pub(crate) connect_url: Option<String>,
    /// Sent as `Authorization: Bearer KEY` with every hook call.
    pub(crate) key: Option<String>,
    pub(crate) timeout_ms: u64,
    /// Hook calls in flight at most.
    pub(crate) concurrency: usize,
    /// Hook calls waiting at most; past it, a call fails at once.
    pub(crate) queue: usize,
    pub(crate) on_failure: OnFailure,
}

impl Default for HooksSection {
    fn default() -> Self {
        Self {
            connect_url: None,
            key: None,
            timeout_ms: 1000,
            concurrency: 32,
            queue: 4096,
            on_failure: OnFailure::Refuse,
        }
    }
}

impl HooksSection {
    /// How the hook threads call.
    pub(crate) fn pool(&self) -> PoolConfig {
        PoolConfig {
            concurrency: self.concurrency.max(1),
            queue: self.queue.max(1),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            headers: self
                .key
                .iter()
                .map(|key| ("authorization".to_owned(), format!("Bearer {key}")))
                .collect(),
            // A decision that waited past the timeout for a thread is late
            // already: it fails (on_failure) without calling the backend.
            queue_timeout: Some(Duration::from_millis(self.timeout_ms.max(1))),
        }
    }
}

/// Webhooks: topic and presence events sent to the backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhooksSection {
    pub(crate) url: Option<String>,
    /// HMAC-SHA256 key of the `X-Herald-Signature` header.
    pub(crate) secret: Option<String>,
    pub(crate) retries: u32,
    pub(crate) timeout_ms: u64,
    pub(crate) concurrency: usize,
    pub(crate) queue: usize,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            retries: 3,
            timeout_ms: 2000,
            concurrency: 1,
            queue: 10_000,
        }
    }
}

impl WebhooksSection {
    /// How the webhook threads call.
    pub(crate) fn pool(&self) -> PoolConfig {
        PoolConfig {
            concurrency: self.concurrency.max(1),
            queue: self.queue.max(1),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            headers: Vec::new(),
            // An event waits its turn: order matters more than age.
            queue_timeout: None,
        }
    }
}

impl BrokerSection {
    /// The engine's broker setting.
    pub(crate) fn broker(&self) -> herald::cluster::Broker {
        let url = |default: &str| self.url.clone().unwrap_or_else(|| default.to_owned());
        match self.kind {
            BrokerKind::Memory => herald::cluster::Broker::Memory,
            BrokerKind::Redis => herald::cluster::Broker::Redis {
                url: url("redis://127.0.0.1:6379/"),
            },
            BrokerKind::Nats => herald::cluster::Broker::Nats {
                url: url("nats://127.0.0.1:4222"),
            },
        }
    }
}

/// Which broker joins the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BrokerKind {
    /// None: a single node.
    #[default]
    Memory,
    /// Redis pub/sub.
    Redis,
    /// Core NATS.
    Nats,
}

/// A channel rule: topics matching `pattern` may be joined, and client
/// messages on them are handled as `messages` says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelRule {
    pub(crate) pattern: String,
    #[serde(default)]
    pub(crate) messages: MessagePolicy,
    /// Track each member with Phoenix Presence (`presence_state` /
    /// `presence_diff`), keyed by the token's `sub`, else the join's name.
    #[serde(default)]
    pub(crate) presence: bool,
    /// Broadcast `user_joined` / `user_left` notices to the topic.
    #[serde(default)]
    pub(crate) notices: bool,
    /// Subscribers that fall behind get the latest message per topic
    /// instead of every message.
    #[serde(default)]
    pub(crate) conflate: bool,
    /// With `conflate`: the latest per value of this payload field.
    #[serde(default)]
    pub(crate) conflate_key: Option<String>,
    /// The backend decides joins: `POST` here (see `[hooks]`).
    #[serde(default)]
    pub(crate) join_hook: Option<String>,
    /// The backend decides client messages: `POST` here.
    #[serde(default)]
    pub(crate) message_hook: Option<String>,
    /// With `message_hook`: publish the client's payload unless the backend
    /// returns one (`original`), or only what it returns (`returned`).
    #[serde(default)]
    pub(crate) message_hook_publish: PublishMode,
    /// Keep this many publications per topic for recovery after a
    /// reconnect (0: no history).
    #[serde(default)]
    pub(crate) history_size: usize,
    /// How long a topic's history is kept after its last publication.
    #[serde(default = "default_history_ttl_ms")]
    pub(crate) history_ttl_ms: u64,
}

fn default_history_ttl_ms() -> u64 {
    300_000
}

impl ChannelRule {
    /// The history this rule keeps, if any.
    pub(crate) fn history(&self) -> Option<History> {
        (self.history_size > 0).then(|| {
            History::new()
                .size(self.history_size)
                .ttl(Duration::from_millis(self.history_ttl_ms))
        })
    }

    /// The conflation this rule asks for, if any.
    pub(crate) fn conflation(&self) -> Option<Conflation> {
        match (&self.conflate_key, self.conflate) {
            (Some(field), _) => Some(Conflation::by_key(&self.pattern, field)),
            (None, true) => Some(Conflation::topic(&self.pattern)),
            (None, false) => None,
        }
    }
}

/// What a client's message on a joined topic does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MessagePolicy {
    /// Refused with an error reply: only the server publishes.
    #[default]
    Refuse,
    /// Broadcast to every subscriber, the sender included.
    Rebroadcast,
    /// Broadcast to every subscriber but the sender.
    BroadcastFrom,
}

impl Config {
    /// The rules in force: the file's, or the defaults (rooms where clients
    /// chat, every other topic read-only).
    pub(crate) fn channel_rules(&self) -> Vec<ChannelRule> {
        if !self.channels.is_empty() {
            return self.channels.clone();
        }
        // Rooms keep their last 100 messages for 5 minutes, on a broker
        // that can keep history (NATS cannot).
        let room_history = if self.broker.kind == BrokerKind::Nats {
            0
        } else {
            DEFAULT_ROOM_HISTORY
        };
        vec![
            ChannelRule {
                pattern: "room:*".into(),
                messages: MessagePolicy::Rebroadcast,
                presence: true,
                notices: true,
                conflate: false,
                conflate_key: None,
                join_hook: None,
                message_hook: None,
                message_hook_publish: PublishMode::Original,
                history_size: room_history,
                history_ttl_ms: default_history_ttl_ms(),
            },
            ChannelRule {
                pattern: "*".into(),
                messages: MessagePolicy::Refuse,
                presence: false,
                notices: false,
                conflate: false,
                conflate_key: None,
                join_hook: None,
                message_hook: None,
                message_hook_publish: PublishMode::Original,
                history_size: 0,
                history_ttl_ms: default_history_ttl_ms(),
            },
        ]
    }
}

/// herald: a WebSocket channels server for the Phoenix and Amber
/// JavaScript clients, with an HTTP API to publish from any backend.
///
/// Settings come from the defaults, then `--config FILE`, then `HERALD_*`
/// environment variables, then these flags. `herald.toml` in the
/// repository documents every key.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
pub(crate) struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// WebSocket address [default: 127.0.0.1:4000].
    #[arg(long, env = "HERALD_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Event loops, 0 for one per core [default: 0].
    #[arg(long, env = "HERALD_LOOPS")]
    pub(crate) loops: Option<usize>,
    /// Do not pin event loops to cores.
    #[arg(long, env = "HERALD_NO_PIN")]
    pub(crate) no_pin: bool,
    /// Do not serve the demo page at `/`.
    #[arg(long, env = "HERALD_NO_DEMO")]
    pub(crate) no_demo: bool,
    /// Comma-separated origins allowed to connect [default: any].
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Connections past which new ones get 503 [default: 1000000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// HTTP API address [default: 127.0.0.1:4001].
    #[arg(long, env = "HERALD_API_LISTEN")]
    pub(crate) api_listen: Option<SocketAddr>,
    /// Key the HTTP API requires as `Authorization: Bearer KEY`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Turn the HTTP API off.
    #[arg(long, env = "HERALD_NO_API")]
    pub(crate) no_api: bool,
    /// Turn permessage-deflate on (server.compression).
    #[arg(long, env = "HERALD_COMPRESSION")]
    pub(crate) compression: bool,
    /// Serve TLS with this certificate chain, PEM (server.tls_cert).
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The TLS private key, PEM (server.tls_key).
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// HMAC secret for HS256 connect tokens; set, tokens are required.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// Which broker joins the nodes [default: memory].
    #[arg(long, env = "HERALD_BROKER")]
    pub(crate) broker: Option<BrokerKind>,
    /// The broker's URL [default: redis://127.0.0.1:6379/ or nats://127.0.0.1:4222].
    #[arg(long, env = "HERALD_BROKER_URL")]
    pub(crate) broker_url: Option<String>,
    /// Log level [default: info].
    #[arg(long, env = "HERALD_LOG_LEVEL")]
    pub(crate) log_level: Option<LogLevel>,
    /// Log format [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file named by `cli` (if any) and applies the flags and
    /// environment variables over it.
    pub(crate) fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(cli);
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn apply(&mut self, cli: &Cli) {
        let server = &mut self.server;
        set(&mut server.listen, cli.listen);
        set(&mut server.loops, cli.loops);
        set(&mut server.max_connections, cli.max_connections);
        set(&mut server.allowed_origins, cli.allowed_origins.clone());
        server.compression |= cli.compression;
        if cli.tls_cert.is_some() {
            server.tls_cert.clone_from(&cli.tls_cert);
        }
        if cli.tls_key.is_some() {
            server.tls_key.clone_from(&cli.tls_key);
        }
        server.pin_cores &= !cli.no_pin;
        server.demo &= !cli.no_demo;
        set(&mut self.api.listen, cli.api_listen);
        if cli.api_key.is_some() {
            self.api.key.clone_from(&cli.api_key);
        }
        self.api.enabled &= !cli.no_api;
        if cli.jwt_secret.is_some() {
            self.auth.jwt_secret.clone_from(&cli.jwt_secret);
        }
        set(&mut self.broker.kind, cli.broker);
        if cli.broker_url.is_some() {
            self.broker.url.clone_from(&cli.broker_url);
        }
        set(&mut self.log.level, cli.log_level);
        set(&mut self.log.format, cli.log_format);
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.server.phoenix_path.is_empty() && self.server.amber_path.is_empty() {
            return invalid("server: phoenix_path and amber_path are both empty".into());
        }
        for path in [&self.server.phoenix_path, &self.server.amber_path] {
            if !path.is_empty() && !path.starts_with('/') {
                return invalid(format!(
                    "server: endpoint path {path:?} must start with '/'"
                ));
            }
        }
        if self.server.phoenix_path == self.server.amber_path {
            return invalid("server: phoenix_path and amber_path must differ".into());
        }
        if self.api.enabled && self.api.key.is_none() && !self.api.listen.ip().is_loopback() {
            return invalid(format!(
                "api: listening on {} needs a key (api.key, HERALD_API_KEY or --api-key); \
                 an open API is allowed on loopback only",
                self.api.listen
            ));
        }
        if self.api.key.as_deref().is_some_and(str::is_empty) {
            return invalid("api: the key is empty".into());
        }
        if self.auth.jwt_secret.as_deref().is_some_and(str::is_empty) {
            return invalid("auth: jwt_secret is empty".into());
        }
        for rule in &self.channels {
            if rule.pattern.is_empty() {
                return invalid("channels: a rule has an empty pattern".into());
            }
            for url in [&rule.join_hook, &rule.message_hook].into_iter().flatten() {
                check_url("channels", url)?;
            }
            if rule.history_size > 0 && self.broker.kind == BrokerKind::Nats {
                return invalid(format!(
                    "channels: {:?} keeps history, which needs broker memory or redis \
                     (NATS stores nothing; see the README's \"History and recovery\")",
                    rule.pattern
                ));
            }
            if rule.history_size > MAX_HISTORY_SIZE {
                return invalid(format!(
                    "channels: history_size is at most {MAX_HISTORY_SIZE}"
                ));
            }
            if rule.history_size > 0 && !(1..=MAX_HISTORY_TTL_MS).contains(&rule.history_ttl_ms) {
                return invalid(format!(
                    "channels: history_ttl_ms is from 1 to {MAX_HISTORY_TTL_MS} (a year)"
                ));
            }
        }
        for url in [&self.hooks.connect_url, &self.webhooks.url]
            .into_iter()
            .flatten()
        {
            check_url("hooks", url)?;
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid("server: tls_cert and tls_key go together".into());
        }
        if self.webhooks.retries > MAX_WEBHOOK_RETRIES {
            return invalid(format!(
                "webhooks: retries is at most {MAX_WEBHOOK_RETRIES} (the last waits 100 ms x 2^(retries-1))"
            ));
        }
        Ok(())
    }
}

/// The most publications a rule keeps per topic.
const MAX_HISTORY_SIZE: usize = 10_000;

/// The longest history a rule keeps: a year.
const MAX_HISTORY_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// What the default `room:*` rule keeps.
const DEFAULT_ROOM_HISTORY: usize = 100;

/// The most retries of a webhook delivery: the tenth waits 51 s.
const MAX_WEBHOOK_RETRIES: u32 = 10;

/// Hooks call plain HTTP (the backend sits beside the server).
fn check_url(section: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{section}: hook URL {url:?} must start with http://"
        )))
    }
}

impl Config {
    /// Whether any rule or the connect hook calls the backend.
    pub(crate) fn has_hooks(&self) -> bool {
        self.hooks.connect_url.is_some()
            || self
                .channels
                .iter()
                .any(|rule| rule.join_hook.is_some() || rule.message_hook.is_some())
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn defaults_serve_phoenix_and_amber_on_loopback() {
        let config = Config::load(&cli(&[])).expect("defaults are valid");
        assert_eq!(config.server.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.server.phoenix_path, "/socket/websocket");
        assert_eq!(config.api.listen, "127.0.0.1:4001".parse().unwrap());
        assert!(config.server.demo);
        assert_eq!(config.broker.kind, BrokerKind::Memory);
        assert_eq!(config.channel_rules().len(), 2);
    }

    #[test]
    fn file_then_flags_override_in_order() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(
            &path,
            r#"
            [server]
            listen = "127.0.0.1:5000"
            loops = 3
            [api]
            key = "from-file"
            [[channels]]
            pattern = "feed:*"
            messages = "broadcast_from"
            [[channels]]
            pattern = "ticker:*"
            conflate = true
            [[channels]]
            pattern = "quotes"
            conflate_key = "symbol"
            "#,
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let config = Config::load(&cli(&["--config", path_arg, "--loops", "2"])).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(config.server.loops, 2, "the flag wins over the file");
        assert_eq!(config.api.key.as_deref(), Some("from-file"));
        let rules = config.channel_rules();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].messages, MessagePolicy::BroadcastFrom);
        assert_eq!(rules[0].conflation(), None);
        assert_eq!(rules[1].conflation(), Some(Conflation::topic("ticker:*")));
        let quotes = Conflation::by_key("quotes", "symbol");
        assert_eq!(rules[2].conflation(), Some(quotes));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_sample_file_parses_to_the_defaults() {
        let sample = include_str!("../../../../herald.toml");
        let config: Config = toml::from_str(sample).expect("herald.toml parses");
        let defaults = Config::default();
        assert_eq!(
            format!("{:?}", config.server),
            format!("{:?}", defaults.server)
        );
        assert_eq!(format!("{:?}", config.api), format!("{:?}", defaults.api));
        assert_eq!(
            format!("{:?}", config.channel_rules()),
            format!("{:?}", defaults.channel_rules())
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error = toml::from_str::<Config>("[server]\nlisten_on = 1\n").unwrap_err();
        assert!(error.to_string().contains("listen_on"), "{error}");
    }

    #[test]
    fn an_open_api_off_loopback_is_refused() {
        let error = Config::load(&cli(&["--api-listen", "0.0.0.0:4001"])).unwrap_err();
        assert!(error.to_string().contains("needs a key"), "{error}");
        Config::load(&cli(&["--api-listen", "0.0.0.0:4001", "--api-key", "k"]))
            .expect("a key makes it valid");
    }
}
