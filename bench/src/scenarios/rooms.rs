//! The `rooms` scenario: many topics ("rooms") with a chatty publisher
//! each, deliveries per second and latency across all rooms.

use std::{
    io,
    time::{Duration, Instant},
};

use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Scratch, drive_paced},
    proc_stats::ProcessSample,
    progress::Running,
    report::Report,
    tracker::{ThreadStats, Tracker},
};
use mio::Poll;

use super::{
    connections::{connections_within_fd_limit, open_connections_to},
    cpu_figures,
    messages::{fanout_message, receive},
};
use crate::cli::{options::Options, vs::Headline};

/// What a rooms run does.
pub(crate) struct RoomsPlan {
    /// Rooms (topics); lowered to what the descriptor limit allows.
    pub(crate) rooms: usize,
    /// Subscribers per room (each room also has one publisher).
    pub(crate) size: usize,
    /// Messages in flight per room.
    pub(crate) window: usize,
    /// Payload bytes per message (at least 16).
    pub(crate) payload: usize,
    /// Measured time.
    pub(crate) duration: Duration,
}

/// Many rooms, one publisher each, `window` messages in flight per room.
pub(crate) fn rooms(options: &Options, plan: &RoomsPlan) -> io::Result<Option<Headline>> {
    let RoomsPlan {
        rooms,
        size,
        window,
        payload,
        duration,
    } = *plan;
    let per_room = size + 1;
    let usable = connections_within_fd_limit(options, rooms * per_room);
    let rooms = (usable / per_room).clamp(1, rooms);
    let separator = if options.path.contains('?') { '&' } else { '?' };
    let path_of = |index: usize| {
        let (room, member) = (index / per_room, index % per_room);
        let publisher = if member == size { "&subscribe=0" } else { "" };
        format!("{}{separator}topic=room-{room}{publisher}", options.path)
    };
    let mut poll = Poll::new()?;
    let (mut clients, _) =
        open_connections_to(options, &mut poll, rooms * per_room, 256, &path_of)?;
    let trackers: Vec<Tracker> = (0..rooms).map(|_| Tracker::new(window * 2, size)).collect();
    let mut stats = ThreadStats::new()?;
    let filler = "x".repeat(payload - 16);
    let top_up = |clients: &mut [Client], room: usize| -> io::Result<()> {
        let tracker = &trackers[room];
        let due = tracker.advance() + window as u64;
        while tracker.sent_count() < due {
            let Some(seq) = tracker.sent() else {
                break;
            };
            let message = fanout_message(false, seq, &filler);
            clients[room * per_room + size].send(OpCode::Text, message.as_bytes())?;
        }
        Ok(())
    };
    let server_before = options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let start = Instant::now();
    for room in 0..rooms {
        top_up(&mut clients, room)?;
    }
    let mut failure = None;
    let running = Running::start("rooms", duration, !options.json);
    let mut scratch = Scratch::new();
    drive_paced(
        &mut poll,
        start + duration,
        Duration::from_millis(10),
        |wake| {
            let Some(token) = wake else {
                running.tick();
                return failure.is_none();
            };
            let room = token.0 / per_room;
            let path = path_of(token.0);
            if let Err(err) = receive(
                &mut clients[token.0],
                &path,
                false,
                &trackers[room],
                &mut stats,
                &mut scratch,
            ) {
                failure = Some(err);
            }
            if let Err(err) = top_up(&mut clients, room) {
                failure = Some(err);
            }
            failure.is_none()
        },
    )?;
    running.finish();
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();
    let deliveries = stats.deliveries;
    let completed: u64 = trackers.iter().map(Tracker::completed).sum();
    let mut report = rooms_report(plan, rooms, elapsed, &stats, completed);
    let client_bound = cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        deliveries,
    )?;
    report.print(options.format());
    Ok(Some(if client_bound {
        Headline::ClientBound
    } else {
        Headline::Throughput(deliveries as f64 / elapsed.as_secs_f64())
    }))
}

/// The figures of a run of `rooms` rooms (the plan's, or fewer): deliveries
/// and fully delivered messages per second, and the latency.
fn rooms_report(
    plan: &RoomsPlan,
    rooms: usize,
    elapsed: Duration,
    stats: &ThreadStats,
    completed: u64,
) -> Report {
    let RoomsPlan {
        size,
        window,
        payload,
        ..
    } = *plan;
    let deliveries = stats.deliveries;
    let latency = &stats.delivery_latency;
    let mut report = Report::new("rooms");
    report
        .note(
            "rooms",
            rooms,
            "",
            format!("{size} subscribers and 1 publisher each, window {window}"),
        )
        .figure("payload", payload, "B")
        .figure(
            "deliveries",
            deliveries as f64 / elapsed.as_secs_f64(),
            "/s",
        )
        .note(
            "messages",
            completed as f64 / elapsed.as_secs_f64(),
            "/s",
            "fully delivered",
        )
        .latency("latency", latency);
    report
}
