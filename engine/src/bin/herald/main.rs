//! The `herald` standalone server.
//!
//! Starts the channels engine with Phoenix V2 and Amber endpoints, channel
//! rules and token auth from configuration, the HTTP API on its own port,
//! and the demo chat page at `/`; runs until SIGTERM (drain: close 1012 in
//! batches over `drain_secs`) or SIGINT (close 1001 at once), then exits 0.
//!
//! ```text
//! herald                              # defaults: ws 127.0.0.1:4000, API 127.0.0.1:4001
//! herald --config herald.toml --log-level debug
//! HERALD_API_KEY=secret herald --listen 0.0.0.0:4000
//! ```

mod api;
mod auth;
mod config;
mod hooks;
mod metrics;
mod policy;

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::Parser;
use herald::{
    Server, SlowConsumerPolicy, TlsConfig,
    channels::{Channels, Engine},
    cluster::Cluster,
    wire::{CloseCode, DecoderConfig},
};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    api::{Api, ApiServer},
    auth::TokenVerifier,
    config::{Cli, Config, LogFormat, SlowConsumer},
    hooks::{Hooks, Webhooks},
    metrics::ApiCounters,
    policy::ServerSocket,
};

/// The demo chat page, served at `/`.
const DEMO_PAGE: &str = include_str!("../../../assets/demo.html");
/// The unmodified phoenix JavaScript client (MIT), served at `/phoenix.mjs`
/// for the demo page.
const PHOENIX_CLIENT: &str = include_str!("../../../assets/phoenix.mjs");

/// The history helper the demo page uses (`engine/assets/history.mjs`):
/// keeps a channel's position and recovers it on every rejoin.
const HISTORY_HELPER: &str = include_str!("../../../assets/history.mjs");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "herald stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let level = tracing::Level::from(config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: &Config) -> std::io::Result<()> {
    // Register the handlers before anything starts, so that a signal that
    // arrives early still shuts down gracefully.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let cluster = Cluster::new(config.broker.broker());
    let backend = Backend::start(config)?;
    let engine = start_engine(config, &cluster, &backend)?;
    let counters = Arc::new(ApiCounters::default());
    let api = if config.api.enabled {
        let api = Api {
            engine: engine.handle(),
            cluster,
            key: config.api.key.clone(),
            counters,
            backend: backend.clone(),
            max_body_bytes: config.api.max_body_bytes,
        };
        let server = ApiServer::start(config.api.listen, config.api.threads, api)?;
        if config.api.key.is_none() {
            tracing::warn!(addr = %server.local_addr(), "HTTP API has no key: open to anyone who can reach it");
        }
        tracing::info!(addr = %server.local_addr(), "HTTP API listening");
        Some(server)
    } else {
        None
    };
    announce(config, &engine);
    let signal = signals.forever().next();
    if let Some(api) = api {
        api.stop();
    }
    if signal == Some(SIGTERM) {
        tracing::info!(
            drain = ?config.server.drain_period(),
            "draining: closing clients with 1012 in batches (a second signal stops at once)"
        );
        // A second SIGTERM or SIGINT during the drain closes everyone left
        // with 1001 now.
        let server = engine.handle().server().clone();
        let stop_listening = signals.handle();
        let impatient = std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                tracing::info!("shutting down now: closing the rest with 1001");
                server.shutdown();
            }
        });
        engine.drain();
        stop_listening.close();
        let _ = impatient.join();
    } else {
        tracing::info!(signal, "shutting down: closing clients with 1001");
        engine.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The backend's side: hooks it answers, webhooks it is sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backend {
    pub(crate) hooks: Option<Arc<Hooks>>,
    pub(crate) webhooks: Option<Arc<Webhooks>>,
}

impl Backend {
    fn start(config: &Config) -> std::io::Result<Self> {
        let hooks = if config.has_hooks() {
            let connect_url = config.hooks.connect_url.as_deref();
            let hooks = Hooks::start(&config.hooks.pool(), connect_url, config.hooks.on_failure)?;
            Some(Arc::new(hooks))
        } else {
            None
        };
        let webhooks = match &config.webhooks.url {
            Some(url) => {
                let section = &config.webhooks;
                let secret = section.secret.as_deref();
                Some(Webhooks::start(
                    url,
                    secret,
                    section.retries,
                    &section.pool(),
                )?)
            }
            None => None,
        };
        Ok(Self { hooks, webhooks })
    }
}

fn start_engine(config: &Config, cluster: &Cluster, backend: &Backend) -> std::io::Result<Engine> {
    let server = &config.server;
    let verifier = config
        .auth
        .jwt_secret
        .as_deref()
        .map(|secret| Arc::new(TokenVerifier::new(secret, config.auth.leeway_seconds)));
    let origins: Arc<[String]> = server.allowed_origins.clone().into();
    let rules = config.channel_rules();
    let hooks = backend.hooks.as_ref();
    let endpoint = || {
        let socket = ServerSocket::new(verifier.clone(), Arc::clone(&origins), hooks.cloned());
        policy::endpoint(socket, &rules, hooks)
    };
    let mut channels = Channels::new()
        .max_channels(server.max_channels)
        .presence_down_after(config.broker.presence_down_after())
        .census_every(config.broker.census_every());
    if let Some(webhooks) = &backend.webhooks {
        let webhooks = Arc::clone(webhooks);
        channels = channels.on_topic_event(move |event| webhooks.send(event));
    }
    // Every rule, with or without history: the first that matches decides.
    for rule in &rules {
        channels = match rule.history() {
            Some(history) => channels.history(&rule.pattern, history),
            None => channels.no_history(&rule.pattern),
        };
    }
    if let Some(store) = cluster.history_store() {
        channels = channels.history_store(store);
    }
    if !server.phoenix_path.is_empty() {
        channels = channels.phoenix(&server.phoenix_path, endpoint());
    }
    if !server.amber_path.is_empty() {
        channels = channels.amber(&server.amber_path, endpoint());
    }
    let loops = match server.loops {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        loops => loops,
    };
    let decoder = DecoderConfig::default()
        .max_frame_size(server.max_message_bytes)
        .max_message_size(server.max_message_bytes);
    let mut builder = Server::builder()
        .bind(server.listen)
        .loops(loops)
        .pin_cores(server.pin_cores)
        .max_connections(server.max_connections)
        .max_queued_bytes(server.max_queued_bytes)
        .slow_consumer(match server.slow_consumer {
            SlowConsumer::Close => SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER),
            SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
        })
        .ping_interval(server.ping_interval())
        .idle_timeout(server.idle_timeout())
        .shutdown_timeout(server.shutdown_timeout())
        .drain_period(server.drain_period())
        .queue_budget(server.queue_budget_bytes)
        .decoder(decoder);
    for conflation in config
        .channel_rules()
        .iter()
        .filter_map(|rule| rule.conflation())
    {
        builder = builder.conflate(conflation);
    }
    if let Some(limit) = server.connect_limit_per_address() {
        builder = builder.connect_rate_per_address(limit);
    }
    if let Some(limit) = server.connect_limit() {
        builder = builder.connect_rate(limit);
    }
    if let Some(limit) = server.message_limit() {
        builder = builder.message_rate(limit);
    }
    if let Some(compression) = server.compression() {
        builder = builder.compression(compression);
    }
    if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) {
        let tls = TlsConfig::from_pem_files(cert, key).map_err(std::io::Error::other)?;
        builder = builder.tls(tls);
    }
    if server.demo {
        builder = builder
            .static_file("/", "text/html; charset=utf-8", DEMO_PAGE)
            .static_file(
                "/phoenix.mjs",
                "text/javascript; charset=utf-8",
                PHOENIX_CLIENT,
            )
            .static_file(
                "/history.mjs",
                "text/javascript; charset=utf-8",
                HISTORY_HELPER,
            );
    }
    Ok(channels.start(cluster.attach(builder))?)
}

fn announce(config: &Config, engine: &Engine) {
    let addr = engine.local_addr();
    let server = &config.server;
    tracing::info!(
        %addr,
        phoenix = %server.phoenix_path,
        amber = %server.amber_path,
        auth = config.auth.jwt_secret.is_some(),
        tls = server.tls_cert.is_some(),
        broker = config.broker.broker().name(),
        "herald {} listening",
        env!("CARGO_PKG_VERSION"),
    );
    let scheme = if server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    if server.demo {
        tracing::info!("demo chat: open {scheme}://{addr}/ in two browser tabs");
    }
}
