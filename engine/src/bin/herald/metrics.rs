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

use herald::{
    Metric, MetricKind, TURN_BUCKETS_MICROS, TurnTimes, channels::EngineHandle, cluster::Cluster,
};

use crate::{
    Backend,
    hooks::{Hook, Hooks, LATENCY_BUCKETS_MS, Outcome, WebhookStats},
};

/// Counters of the HTTP API itself.
#[derive(Debug, Default)]
pub(crate) struct ApiCounters {
    /// Broadcasts accepted through `POST /api/broadcast`.
    pub(crate) broadcasts: AtomicU64,
    /// Requests answered with a 4xx status.
    pub(crate) bad_requests: AtomicU64,
    /// Requests not carried out again: their idempotency key was claimed.
    pub(crate) duplicates: AtomicU64,
}

impl ApiCounters {
    /// The API's counters as metrics, each with its help text.
    fn metrics(&self) -> [Metric; 3] {
        [
            Metric::new(
                "api_broadcasts_total",
                "Broadcasts accepted by POST /api/broadcast.",
                MetricKind::Counter,
                self.broadcasts.load(Relaxed),
            ),
            Metric::new(
                "api_bad_requests_total",
                "HTTP API requests answered with a 4xx status.",
                MetricKind::Counter,
                self.bad_requests.load(Relaxed),
            ),
            Metric::new(
                "api_duplicates_total",
                "Requests not carried out again: their Idempotency-Key was already used.",
                MetricKind::Counter,
                self.duplicates.load(Relaxed),
            ),
        ]
    }
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

    fn metric(&mut self, metric: &Metric) {
        let kind = match metric.kind {
            MetricKind::Gauge => "gauge",
            _ => "counter",
        };
        self.family(metric.name, kind, metric.help);
        let _ = writeln!(self.text, "herald_{} {}", metric.name, metric.value);
    }
}

/// The exposition text for everything the engine, its cluster bus and the
/// API count.
pub(crate) fn render(
    engine: &EngineHandle,
    cluster: &Cluster,
    api: &ApiCounters,
    backend: &Backend,
) -> String {
    let server = engine.server();
    let mut out = Exposition {
        text: String::with_capacity(4096),
    };
    let connections = Metric::new(
        "connections",
        "Connections held now, handshaking or open.",
        MetricKind::Gauge,
        server.connections() as u64,
    );
    let refused = Metric::new(
        "commands_refused_total",
        "Broadcasts, sends and closes refused because a loop's mailbox was full.",
        MetricKind::Counter,
        server.commands_refused(),
    );
    let bus = cluster
        .stats()
        .into_iter()
        .flat_map(|stats| stats.metrics());
    [connections, refused]
        .into_iter()
        .chain(server.stats().metrics())
        .chain(engine.channel_stats().metrics())
        .chain(api.metrics())
        .chain(bus)
        .for_each(|metric| out.metric(&metric));
    render_turn_times(&mut out, &server.turn_times());
    if let Some(hooks) = &backend.hooks {
        render_hooks(&mut out, hooks);
    }
    if let Some(webhooks) = &backend.webhooks {
        render_webhooks(&mut out, webhooks.stats());
    }
    out.text
}

fn render_hooks(out: &mut Exposition, hooks: &Hooks) {
    let (calls, verdicts) = hooks.stats();
    out.family(
        "hook_calls_total",
        "counter",
        "Backend hook calls, by hook and outcome (failed: error, timeout, bad answer, queue full).",
    );
    for hook in Hook::ALL {
        let name = hook.name();
        for outcome in Outcome::ALL {
            let value = verdicts.outcomes[hook as usize][outcome as usize].load(Relaxed);
            let outcome = outcome.name();
            let _ = writeln!(
                out.text,
                "herald_hook_calls_total{{hook=\"{name}\",outcome=\"{outcome}\"}} {value}"
            );
        }
    }
    out.family(
        "hook_duration_seconds",
        "histogram",
        "Time a backend hook call took, by hook.",
    );
    for hook in Hook::ALL {
        let stats = &calls[hook as usize];
        let name = hook.name();
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_MS.iter().zip(&stats.latency) {
            cumulative += count.load(Relaxed);
            let seconds = *bound as f64 / 1e3;
            let _ = writeln!(
                out.text,
                "herald_hook_duration_seconds_bucket{{hook=\"{name}\",le=\"{seconds}\"}} {cumulative}"
            );
        }
        let total: u64 = stats.latency.iter().map(|count| count.load(Relaxed)).sum();
        let sum = stats.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out.text,
            "herald_hook_duration_seconds_bucket{{hook=\"{name}\",le=\"+Inf\"}} {total}\n\
             herald_hook_duration_seconds_sum{{hook=\"{name}\"}} {sum}\n\
             herald_hook_duration_seconds_count{{hook=\"{name}\"}} {total}"
        );
    }
}

fn render_webhooks(out: &mut Exposition, stats: &WebhookStats) {
    let counters = [
        (
            "webhook_events_total",
            "Topic and presence events queued for the webhook.",
            &stats.events,
        ),
        (
            "webhook_deliveries_total",
            "Webhook events the backend took (2xx).",
            &stats.delivered,
        ),
        (
            "webhook_retries_total",
            "Webhook deliveries tried again after a failure.",
            &stats.retries,
        ),
        (
            "webhook_dropped_total",
            "Webhook events dropped: retries spent or queue full.",
            &stats.dropped,
        ),
    ];
    for (name, help, counter) in counters {
        out.metric(&Metric::new(
            name,
            help,
            MetricKind::Counter,
            counter.load(Relaxed),
        ));
    }
}

fn render_turn_times(out: &mut Exposition, turns: &TurnTimes) {
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
