//! `GET /metrics`: the engine's counters in the Prometheus text exposition
//! format (version 0.0.4).
//!
//! Everything is read from snapshots the engine already keeps (per-loop
//! counters, the turn-time histogram, the channels layer's counters), so a
//! scrape costs a few hundred relaxed loads and never touches a loop.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use herald::{TURN_BUCKETS_MICROS, channels::EngineHandle};

/// Counters of the HTTP API itself.
#[derive(Debug, Default)]
pub(crate) struct ApiCounters {
    /// Broadcasts accepted through `POST /api/broadcast`.
    pub(crate) broadcasts: AtomicU64,
    /// Requests answered with a 4xx status.
    pub(crate) bad_requests: AtomicU64,
}

/// Writes metric families into a string.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.text,
            "# HELP herald_{name} {help}\n# TYPE herald_{name} {kind}"
        );
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        let _ = writeln!(self.text, "herald_{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.text, "herald_{name} {value}");
    }
}

/// The exposition text for everything `engine` and `api` count.
pub(crate) fn render(engine: &EngineHandle, api: &ApiCounters) -> String {
    let server = engine.server();
    let stats = server.stats();
    let channels = engine.channel_stats();
    let mut out = Exposition {
        text: String::with_capacity(4096),
    };
    out.gauge(
        "connections",
        "Connections held now, handshaking or open.",
        server.connections() as u64,
    );
    out.counter(
        "connections_accepted_total",
        "TCP connections accepted.",
        stats.connections_accepted,
    );
    out.counter(
        "connections_opened_total",
        "Connections that completed the WebSocket handshake.",
        stats.connections_opened,
    );
    out.counter(
        "connections_closed_total",
        "Open connections that have closed.",
        stats.connections_closed,
    );
    out.counter(
        "handshakes_refused_total",
        "Upgrade requests refused with an HTTP error or timed out.",
        stats.handshakes_refused,
    );
    out.counter(
        "channel_joins_total",
        "Channel joins accepted.",
        channels.joins,
    );
    out.counter(
        "channel_joins_refused_total",
        "Channel joins refused.",
        channels.joins_refused,
    );
    out.counter(
        "channel_leaves_total",
        "Channels ended: left, rejoined, crashed or disconnected.",
        channels.leaves,
    );
    out.counter(
        "messages_received_total",
        "WebSocket messages received from clients.",
        stats.messages_received,
    );
    out.counter(
        "channel_messages_total",
        "Channel messages received from clients on joined topics.",
        channels.client_messages,
    );
    out.counter(
        "broadcasts_handled_total",
        "Broadcasts delivered by a loop to its subscribers (one per loop reached).",
        stats.publishes_handled,
    );
    out.counter(
        "deliveries_total",
        "Broadcast frames queued to subscribers (fan-out deliveries).",
        stats.published_deliveries,
    );
    out.counter(
        "bytes_written_total",
        "Bytes written to client sockets.",
        stats.bytes_written,
    );
    out.counter(
        "slow_consumer_closes_total",
        "Connections closed by the slow-consumer policy.",
        stats.slow_consumer_closes,
    );
    out.counter(
        "frames_dropped_total",
        "Frames dropped unsent by the slow-consumer policy.",
        stats.frames_dropped,
    );
    out.counter(
        "protocol_errors_total",
        "Connections closed for breaking RFC 6455.",
        stats.protocol_errors,
    );
    out.counter(
        "idle_timeouts_total",
        "Connections closed for silence.",
        stats.idle_timeouts,
    );
    out.counter(
        "handler_panics_total",
        "Panics caught in channel callbacks.",
        stats.handler_panics,
    );
    out.counter(
        "accept_resource_errors_total",
        "Accepts that failed for lack of descriptors or memory.",
        stats.accept_resource_errors,
    );
    out.counter(
        "api_broadcasts_total",
        "Broadcasts accepted by POST /api/broadcast.",
        api.broadcasts.load(Relaxed),
    );
    out.counter(
        "api_bad_requests_total",
        "HTTP API requests answered with a 4xx status.",
        api.bad_requests.load(Relaxed),
    );
    if let Some(bus) = server.cluster_stats() {
        render_bus(&mut out, &bus);
    }
    render_turn_times(&mut out, engine);
    out.text
}

fn render_bus(out: &mut Exposition, bus: &herald::cluster::ClusterStats) {
    out.gauge(
        "bus_connected",
        "1 while connected to the cluster broker.",
        bus.connected,
    );
    out.counter(
        "bus_reconnects_total",
        "Broker connections re-established after a loss.",
        bus.reconnects,
    );
    out.counter(
        "bus_publishes_total",
        "Broadcasts published to the broker for other nodes.",
        bus.publishes,
    );
    out.counter(
        "bus_publishes_dropped_total",
        "Broadcasts not published: queue full or broker unreachable.",
        bus.publishes_dropped,
    );
    out.counter(
        "bus_received_total",
        "Broadcasts received from other nodes.",
        bus.received,
    );
    out.counter(
        "bus_decode_errors_total",
        "Broker messages that were not valid envelopes.",
        bus.decode_errors,
    );
    out.gauge(
        "bus_subscriptions",
        "Topics subscribed on the broker.",
        bus.subscriptions,
    );
}

fn render_turn_times(out: &mut Exposition, engine: &EngineHandle) {
    let turns = engine.server().turn_times();
    out.family(
        "loop_turn_seconds",
        "histogram",
        "Time an event loop spent per turn, from waking to polling again.",
    );
    let mut cumulative = 0;
    for (bound, count) in TURN_BUCKETS_MICROS.iter().zip(&turns.counts) {
        cumulative += count;
        let seconds = *bound as f64 / 1e6;
        let _ = writeln!(
            out.text,
            "herald_loop_turn_seconds_bucket{{le=\"{seconds}\"}} {cumulative}"
        );
    }
    let total = turns.total();
    let _ = writeln!(
        out.text,
        "herald_loop_turn_seconds_bucket{{le=\"+Inf\"}} {total}"
    );
    let _ = writeln!(
        out.text,
        "herald_loop_turn_seconds_sum {}",
        turns.sum_nanos as f64 / 1e9
    );
    let _ = writeln!(out.text, "herald_loop_turn_seconds_count {total}");
}
