//! The `fanout` and `latency` scenarios: one publisher (a WebSocket, or
//! the HTTP API) and N subscribers of one topic, spread over threads.

mod publisher;
mod receiver;
mod shared;

use std::{io, sync::Barrier, time::Duration};

use hdrhistogram::Histogram;
use herald_bench::{progress, report::Report, tracker::Tracker};

use self::{
    publisher::{PublisherOutcome, fanout_publisher},
    receiver::fanout_receiver,
    shared::FanoutShared,
};
use super::{MAX_IN_FLIGHT, connections::connections_within_fd_limit, cpu_figures};
use crate::cli::{
    options::{ApiPublish, Options},
    vs::Headline,
};

/// What a fan-out run does.
pub(crate) struct FanoutPlan {
    /// Subscribers of the topic (fewer if the descriptor limit says so).
    pub(crate) subscribers: usize,
    /// Messages in flight (windowed runs).
    pub(crate) window: usize,
    /// Publishes per second on a fixed schedule (the `latency` scenario);
    /// `None` publishes as fast as the window allows.
    pub(crate) rate: Option<u32>,
    /// Payload bytes per message.
    pub(crate) payload: usize,
    /// Measured time.
    pub(crate) duration: Duration,
    /// Speak Phoenix Channels V2.
    pub(crate) phoenix: bool,
    /// Publish through the HTTP API instead of a WebSocket publisher.
    pub(crate) api: ApiPublish,
}

/// Deliveries per second (or, with a rate, latency) from one publisher to
/// the subscribers of one topic, spread over `--threads` threads.
pub(crate) fn fanout(options: &Options, plan: &FanoutPlan) -> io::Result<Option<Headline>> {
    let threads = options.threads.max(1);
    let subscribers = connections_within_fd_limit(options, plan.subscribers + 1)
        .saturating_sub(1)
        .max(threads);
    // Through the API, every WebSocket is a subscriber.
    let websocket_publisher = plan.api.api.is_none();
    let tracker = Tracker::new(MAX_IN_FLIGHT, subscribers);
    let progress = progress::connecting(
        subscribers + usize::from(websocket_publisher),
        !options.json,
    );
    let connected = Barrier::new(threads);
    let shared = FanoutShared::new(options, plan, &tracker, &progress, &connected);
    // Thread t serves the subscribers whose index is t modulo the thread
    // count; thread 0, this one, also publishes.
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads)
            .map(|t| {
                let share = subscribers / threads + usize::from(t < subscribers % threads);
                let shared = &shared;
                scope.spawn(move || fanout_receiver(shared, share))
            })
            .collect();
        let share = subscribers / threads + usize::from(!subscribers.is_multiple_of(threads));
        let publisher = fanout_publisher(&shared, share);
        if publisher.is_err() {
            tracker.fail();
        }
        let mut stats = Vec::new();
        for worker in workers {
            match worker.join() {
                Ok(result) => stats.push(result),
                Err(_) => stats.push(Err(io::Error::other("a load generator thread panicked"))),
            }
        }
        (publisher, stats)
    });
    progress.finish_and_clear();
    let (publisher, others) = outcome;
    let mut published = publisher?;
    for stats in others {
        published.stats.merge(&stats?)?;
    }
    print_report(options, plan, &tracker, subscribers, threads, published)
}

/// Prints a fan-out run's report from what the publishing thread brought
/// back (with every thread's figures merged in); returns its headline
/// figure.
fn print_report(
    options: &Options,
    plan: &FanoutPlan,
    tracker: &Tracker,
    subscribers: usize,
    threads: usize,
    published: PublisherOutcome,
) -> io::Result<Option<Headline>> {
    let FanoutPlan {
        window,
        payload,
        phoenix,
        ..
    } = *plan;
    let PublisherOutcome {
        stats: run,
        elapsed,
        api,
        server_before,
        client_before,
        at_end,
    } = published;
    let protocol = match (phoenix, &api) {
        (_, Some(_)) => "Phoenix V2 channels, published with POST /api/broadcast",
        (true, None) => "Phoenix V2 channels",
        (false, None) => "plain WebSocket",
    };
    let pacing = match plan.rate {
        Some(rate) => format!("{rate} publishes/s"),
        None => format!("window {window}"),
    };
    let mut report = Report::new(if plan.rate.is_some() {
        "latency"
    } else {
        "fanout"
    });
    report
        .note(
            "subscribers",
            subscribers,
            "",
            format!("one topic, {protocol}"),
        )
        .figure("client_threads", threads, "")
        .figure("pacing", pacing, "")
        .figure("payload", payload, "B");
    note_frame_bytes(&mut report, options, plan);
    report
        .figure(
            "deliveries",
            run.deliveries as f64 / elapsed.as_secs_f64(),
            "/s",
        )
        .note(
            "messages",
            tracker.completed() as f64 / elapsed.as_secs_f64(),
            "/s",
            "fully delivered",
        )
        .latency("latency", &run.delivery_latency)
        .latency("to_last_subscriber", &run.last_latency)
        .note(
            "missing_after_drain",
            tracker.in_flight(),
            "",
            format!(
                "of {} messages sent, not yet at every subscriber {} s after the run",
                tracker.sent_count(),
                shared::DRAIN.as_secs()
            ),
        );
    if let Some(api) = api {
        report
            .note(
                "api_requests",
                api.requests as f64 / elapsed.as_secs_f64(),
                "/s",
                "answered 200",
            )
            .latency("api_round_trip", &api.latency);
    }
    if let Some(rate) = plan.rate {
        note_kept_up(&mut report, rate, tracker, at_end, &run.last_latency);
    }
    let client_bound = cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        // The CPU samples include the drain: count its deliveries too.
        run.deliveries + run.drained,
    )?;
    report.print(options.format());
    Ok(Some(match plan.rate {
        _ if client_bound => Headline::ClientBound,
        Some(_) => Headline::P99(run.delivery_latency.value_at_quantile(0.99)),
        None => Headline::Throughput(run.deliveries as f64 / elapsed.as_secs_f64()),
    }))
}

/// What one message weighs on the wire: its text, and with `--deflate`
/// what it compresses to (herald's compressor at its default level, no
/// context takeover: the bytes every compressed subscriber gets).
fn note_frame_bytes(report: &mut Report, options: &Options, plan: &FanoutPlan) {
    let filler = shared::filler(
        plan.payload
            .saturating_sub(if plan.phoenix { 40 } else { 16 }),
        options.quotes,
    );
    let message = super::messages::fanout_message(plan.phoenix, 0, &filler);
    report.figure("message_bytes", message.len(), "B");
    if options.deflate {
        let mut deflater = herald::wire::Deflater::new(herald::Compression::new().get_level());
        let frame = deflater.frame(herald::wire::OpCode::Text, message.as_bytes());
        report.note(
            "message_bytes_deflated",
            frame.len(),
            "B",
            format!(
                "{:.1}x smaller, frame header included",
                message.len() as f64 / frame.len() as f64
            ),
        );
    }
}

/// Notes whether a run on a schedule kept up: what is still in flight at
/// the end is about what the latency to the last subscriber accounts for,
/// not a growing pile.
fn note_kept_up(
    report: &mut Report,
    rate: u32,
    tracker: &Tracker,
    (completed, in_flight): (u64, u64),
    last_latency: &Histogram<u64>,
) {
    let expected_backlog =
        (f64::from(rate) * (last_latency.value_at_quantile(0.99) as f64 / 1e6)).ceil() as u64 + 1;
    let kept_up = in_flight <= expected_backlog.max(2);
    report.note(
        "kept_up",
        kept_up,
        "",
        format!(
            "{} sent, {completed} fully delivered, {in_flight} in flight at the end",
            tracker.sent_count(),
        ),
    );
}
