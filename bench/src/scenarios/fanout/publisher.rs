//! The publishing thread of a fan-out run: its share of the subscribers,
//! and the publisher (a WebSocket, or the HTTP API) on a window or a
//! schedule.

use std::{
    io,
    time::{Duration, Instant},
};

use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Scratch, drive_paced},
    http_publisher::{HttpPublisher, PublisherReport},
    proc_stats::ProcessSample,
    progress::Running,
    tracker::ThreadStats,
};

use super::shared::FanoutShared;
use crate::scenarios::messages::{api_message, fanout_message};

/// What the publishing thread brings back.
pub(super) struct PublisherOutcome {
    /// What its subscribers received.
    pub(super) stats: ThreadStats,
    /// How long the measured run took.
    pub(super) elapsed: Duration,
    /// The HTTP API's figures, when it published.
    pub(super) api: Option<PublisherReport>,
    /// The server's CPU time and memory when the run started.
    pub(super) server_before: Option<ProcessSample>,
    /// This process's CPU time when the run started.
    pub(super) client_before: ProcessSample,
    /// Messages fully delivered, and still in flight, when the measured
    /// window ended (before the drain).
    pub(super) at_end: (u64, u64),
}

/// The publishing thread: its share of the subscribers, and the publisher
/// (a WebSocket, or the HTTP API).
pub(super) fn fanout_publisher(
    shared: &FanoutShared<'_>,
    share: usize,
) -> io::Result<PublisherOutcome> {
    let plan = shared.plan;
    let websocket_publisher = plan.api.api.is_none();
    let count = share + usize::from(websocket_publisher);
    let (mut poll, mut clients) = shared.connect(count, websocket_publisher)?;
    shared.progress.finish_and_clear();
    let http_publisher = plan
        .api
        .api
        .map(|addr| HttpPublisher::start(addr, plan.api.api_key.clone()))
        .transpose()?;
    let mut stats = ThreadStats::new()?;
    let server_before = shared.options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let start = Instant::now();
    let tracker = shared.tracker;
    let mut failure = None;
    send_due(shared, start, http_publisher.as_ref(), &mut clients)?;
    let running = Running::start(
        if plan.rate.is_some() {
            "latency"
        } else {
            "fanout"
        },
        plan.duration,
        !shared.options.json,
    );
    let mut scratch = Scratch::new();
    drive_paced(
        &mut poll,
        start + plan.duration,
        Duration::from_millis(1),
        |wake| {
            let result = match wake {
                Some(token) if websocket_publisher && token.0 + 1 == clients.len() => {
                    // The publisher's own socket: drain what the server sends it.
                    clients[token.0].on_ready(&shared.publisher_path, |_, _| {})
                }
                Some(token) => shared.receive(&mut clients[token.0], &mut stats, &mut scratch),
                None if tracker.has_failed() => return false,
                None => {
                    running.tick();
                    send_due(shared, start, http_publisher.as_ref(), &mut clients)
                }
            };
            if let Err(err) = result {
                failure = Some(err);
            }
            failure.is_none()
        },
    )?;
    running.finish();
    if let Some(err) = failure {
        tracker.fail();
        return Err(err);
    }
    let elapsed = start.elapsed();
    let at_end = (tracker.completed(), tracker.in_flight());
    shared.drain(
        &mut poll,
        &mut clients,
        &mut stats,
        &mut scratch,
        websocket_publisher,
    )?;
    let api = http_publisher.map(HttpPublisher::finish).transpose()?;
    Ok(PublisherOutcome {
        stats,
        elapsed,
        api,
        server_before,
        client_before,
        at_end,
    })
}

/// Publishes every message that is due, through the HTTP API or the
/// WebSocket publisher (the last of `clients`), for a run that started at
/// `start`.
fn send_due(
    shared: &FanoutShared<'_>,
    start: Instant,
    http_publisher: Option<&HttpPublisher>,
    clients: &mut [Client],
) -> io::Result<()> {
    let (plan, tracker) = (shared.plan, shared.tracker);
    let due = match plan.rate {
        // On a schedule: every message whose time has come.
        Some(rate) => (start.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1,
        // Windowed: as many as keep `window` in flight.
        None => tracker.advance() + plan.window as u64,
    };
    while tracker.sent_count() < due {
        let Some(seq) = tracker.sent() else {
            break;
        };
        match http_publisher {
            Some(api) => api.publish(api_message(seq, &shared.filler))?,
            None => {
                let message = fanout_message(plan.phoenix, seq, &shared.filler);
                let publisher = clients.len() - 1;
                clients[publisher].send(OpCode::Text, message.as_bytes())?;
            }
        }
    }
    Ok(())
}
