//! The `churn` scenario: connections come and go at a steady rate while a
//! broadcast stream runs; the stable subscribers must miss nothing, and the
//! server's memory must come back once the churn stops.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Scratch, Stage, drive_paced},
    proc_stats::ProcessSample,
    progress::Running,
    report::Report,
    tracker::{ThreadStats, Tracker},
};
use mio::{Poll, Registry, Token};

use super::{
    MAX_IN_FLIGHT,
    connections::{connections_within_fd_limit, open_connections_to},
    messages::{FANOUT_TOPIC, fanout_message, join_all, receive},
    mib,
};
use crate::cli::{options::Options, vs::Headline};

/// What a churn run does.
pub(crate) struct ChurnPlan {
    /// Stable subscribers of the topic (fewer if the descriptor limit says
    /// so).
    pub(crate) subscribers: usize,
    /// Connections opened (and later closed) per second.
    pub(crate) rate: u32,
    /// How long each churning connection lives.
    pub(crate) lifetime: Duration,
    /// Messages in flight to the stable subscribers.
    pub(crate) window: usize,
    /// Measured time.
    pub(crate) duration: Duration,
    /// Speak Phoenix Channels V2: stable subscribers and churners join the
    /// topic; a churner leaves it before it disconnects.
    pub(crate) phoenix: bool,
}

/// A churning connection and when it is due to close.
struct Churner {
    client: Client,
    close_at: Instant,
}

/// The paths a churn run's connections ask for: the stable subscribers'
/// (and the churners'), then the publisher's, connection `stable`.
struct ChurnPaths {
    /// Stable subscribers, connections `0..stable`.
    stable: usize,
    /// The path of a subscriber.
    subscriber: String,
    /// The path of the publisher.
    publisher: String,
}

impl ChurnPaths {
    /// The paths under `--path`, for `stable` subscribers.
    fn new(options: &Options, phoenix: bool, stable: usize) -> Self {
        let separator = if options.path.contains('?') { '&' } else { '?' };
        let subscriber = if phoenix {
            format!("{}{separator}vsn=2.0.0", options.path)
        } else {
            format!("{}{separator}topic={FANOUT_TOPIC}", options.path)
        };
        let publisher = if phoenix {
            subscriber.clone()
        } else {
            format!("{subscriber}&subscribe=0")
        };
        Self {
            stable,
            subscriber,
            publisher,
        }
    }

    /// The path of connection `index`.
    fn path_of(&self, index: usize) -> String {
        if index == self.stable {
            self.publisher.clone()
        } else {
            self.subscriber.clone()
        }
    }
}

/// The churning connections, in a slab of slots (the churner in slot `i`
/// has token `first_token + i`), and what became of them.
struct Churners {
    slots: Vec<Option<Churner>>,
    /// The token of slot 0: the first after the stable connections'.
    first_token: usize,
    /// Churners whose handshake completed.
    opened: u64,
    /// Churners closed.
    closed: u64,
    /// Churners that failed to connect, hand shake or join.
    failed: u64,
}

impl Churners {
    /// No churners yet; their tokens start at `first_token`.
    fn new(first_token: usize) -> Self {
        Self {
            slots: Vec::new(),
            first_token,
            opened: 0,
            closed: 0,
            failed: 0,
        }
    }

    /// Handles a churner's readiness: counts it opened once its handshake
    /// completes (and, for Phoenix, sends it `join`), or failed.
    fn on_ready(&mut self, token: Token, path: &str, phoenix: bool, join: &str) {
        let slot = &mut self.slots[token.0 - self.first_token];
        if let Some(churner) = slot {
            let before = churner.client.stage;
            // What churners receive is not counted.
            match churner.client.on_ready(path, |_, _| {}) {
                Ok(()) if before != Stage::Open && churner.client.stage == Stage::Open => {
                    self.opened += 1;
                    if phoenix && churner.client.send(OpCode::Text, join.as_bytes()).is_err() {
                        self.failed += 1;
                        *slot = None;
                    }
                }
                Ok(()) => {}
                Err(_) => {
                    self.failed += 1;
                    *slot = None;
                }
            }
        }
    }

    /// Closes the churners whose time is up at `now`.
    fn close_due(&mut self, now: Instant, phoenix: bool, leave: &str) {
        for slot in &mut self.slots {
            if let Some(churner) = slot.as_mut().filter(|c| c.close_at <= now) {
                if phoenix && churner.client.stage == Stage::Open {
                    // Leave, then hang up without waiting.
                    let _ = churner.client.send(OpCode::Text, leave.as_bytes());
                }
                *slot = None;
                self.closed += 1;
            }
        }
    }

    /// Starts connecting churners to `addr` until `due` have been started
    /// (opened, failed or connecting), each to live `lifetime` from `now`.
    fn open_due(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        due: u64,
        now: Instant,
        lifetime: Duration,
    ) {
        let started = self.opened
            + self.failed
            + self
                .slots
                .iter()
                .filter(|c| c.as_ref().is_some_and(|c| c.client.stage != Stage::Open))
                .count() as u64;
        for _ in started..due {
            let index = self
                .slots
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
            match Client::connect(registry, addr, Token(self.first_token + index)) {
                Ok(client) => {
                    self.slots[index] = Some(Churner {
                        client,
                        close_at: now + lifetime,
                    });
                }
                Err(_) => self.failed += 1,
            }
        }
    }
}

/// What the churning part of a run measured.
struct ChurnOutcome {
    /// What the stable subscribers received.
    stats: ThreadStats,
    /// How long the churn ran.
    elapsed: Duration,
    /// Messages still missing a subscriber a second after they were sent.
    lost: u64,
    /// Churners whose handshake completed.
    opened: u64,
    /// Churners closed, those still alive at the end included.
    closed: u64,
    /// Churners that failed.
    failed: u64,
}

/// Opens the stable subscribers and the publisher, runs the churn, and
/// reports; needs `--server-pid` to read the server's memory.
pub(crate) fn churn(options: &Options, plan: &ChurnPlan) -> io::Result<Option<Headline>> {
    let Some(pid) = options.server_pid else {
        return Err(io::Error::other(
            "churn needs --server-pid to check the server's memory",
        ));
    };
    // Room for the churners alive at once (rate x lifetime, doubled).
    let churners_alive =
        (f64::from(plan.rate) * plan.lifetime.as_secs_f64() * 2.0).ceil() as usize + 16;
    let stable = connections_within_fd_limit(options, plan.subscribers + 1 + churners_alive)
        .saturating_sub(1 + churners_alive)
        .max(1);
    let paths = ChurnPaths::new(options, plan.phoenix, stable);
    let path_of = |index: usize| paths.path_of(index);
    let mut poll = Poll::new()?;
    let (mut clients, _) = open_connections_to(options, &mut poll, stable + 1, 256, &path_of)?;
    if plan.phoenix {
        join_all(&mut poll, &mut clients, &path_of)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = ProcessSample::read(pid)?.rss_bytes;
    let tracker = Tracker::new(MAX_IN_FLIGHT, stable);
    let outcome = run(options, plan, &paths, &mut poll, &mut clients, &tracker)?;
    // Give the server a moment to notice the last closes.
    std::thread::sleep(Duration::from_millis(1000));
    let rss_after = ProcessSample::read(pid)?.rss_bytes;
    Ok(print_report(
        options, plan, stable, &tracker, outcome, rss_before, rss_after,
    ))
}

/// Streams to the stable subscribers (`clients`, the publisher last) and
/// opens and closes churners on schedule for the plan's duration, then
/// closes the churners still alive.
fn run(
    options: &Options,
    plan: &ChurnPlan,
    paths: &ChurnPaths,
    poll: &mut Poll,
    clients: &mut [Client],
    tracker: &Tracker,
) -> io::Result<ChurnOutcome> {
    let ChurnPlan {
        rate,
        lifetime,
        window,
        duration,
        phoenix,
        ..
    } = *plan;
    let join = format!(r#"["1","1","{FANOUT_TOPIC}","phx_join",{{}}]"#);
    let leave = format!(r#"["1","2","{FANOUT_TOPIC}","phx_leave",{{}}]"#);
    let mut stats = ThreadStats::new()?;
    let filler = "x".repeat(48);
    let publisher = paths.stable;
    let top_up = |clients: &mut [Client]| -> io::Result<()> {
        let due = tracker.advance() + window as u64;
        while tracker.sent_count() < due {
            let Some(seq) = tracker.sent() else {
                break;
            };
            let message = fanout_message(phoenix, seq, &filler);
            clients[publisher].send(OpCode::Text, message.as_bytes())?;
        }
        Ok(())
    };
    // Churners use the tokens after the stable connections'.
    let mut churners = Churners::new(paths.stable + 1);
    let start = Instant::now();
    top_up(clients)?;
    let mut failure = None;
    let registry = poll.registry().try_clone()?;
    let running = Running::start("churn", duration, !options.json);
    let mut scratch = Scratch::new();
    drive_paced(poll, start + duration, Duration::from_millis(5), |wake| {
        match wake {
            Some(token) if token.0 < churners.first_token => {
                let path = paths.path_of(token.0);
                if let Err(err) = receive(
                    &mut clients[token.0],
                    &path,
                    phoenix,
                    tracker,
                    &mut stats,
                    &mut scratch,
                ) {
                    failure = Some(err);
                }
                if let Err(err) = top_up(clients) {
                    failure = Some(err);
                }
            }
            Some(token) => churners.on_ready(token, &paths.subscriber, phoenix, &join),
            None => {
                running.tick();
                let now = Instant::now();
                // Close the churners whose time is up.
                churners.close_due(now, phoenix, &leave);
                // Open as many as the schedule says by now.
                let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                churners.open_due(&registry, options.addr, due, now, lifetime);
            }
        }
        failure.is_none()
    })?;
    running.finish();
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();
    // Lost: still missing a subscriber a second after it was sent (a live
    // message takes milliseconds; a lost one would also stall the window).
    let lost = tracker.stale(Duration::from_secs(1));
    let remaining = churners.slots.iter().filter(|c| c.is_some()).count() as u64;
    churners.slots.clear();
    churners.closed += remaining;
    Ok(ChurnOutcome {
        stats,
        elapsed,
        lost,
        opened: churners.opened,
        closed: churners.closed,
        failed: churners.failed,
    })
}

/// Prints a churn run's report; returns its headline figure.
fn print_report(
    options: &Options,
    plan: &ChurnPlan,
    stable: usize,
    tracker: &Tracker,
    outcome: ChurnOutcome,
    rss_before: u64,
    rss_after: u64,
) -> Option<Headline> {
    let ChurnPlan {
        lifetime,
        window,
        phoenix,
        ..
    } = *plan;
    let ChurnOutcome {
        stats,
        elapsed,
        lost,
        opened,
        closed,
        failed,
    } = outcome;
    let mut report = Report::new("churn");
    report
        .note(
            "stable",
            stable,
            "",
            format!(
                "subscribers, window {window}, {}",
                if phoenix {
                    "Phoenix V2 channels: churners join and leave"
                } else {
                    "plain WebSocket"
                }
            ),
        )
        .note(
            "churn",
            opened as f64 / elapsed.as_secs_f64(),
            "connections/s",
            format!(
                "{opened} opened, {closed} closed, {failed} failed, each living {} ms",
                lifetime.as_millis()
            ),
        )
        .note(
            "deliveries",
            stats.deliveries as f64 / elapsed.as_secs_f64(),
            "/s",
            "to stable subscribers",
        )
        .note(
            "lost",
            lost,
            "messages",
            format!(
                "still undelivered 1 s after sending; {} sent, {} fully delivered, {} in flight at the end",
                tracker.sent_count(),
                tracker.completed(),
                tracker.in_flight()
            ),
        )
        .figure("server_rss_before", mib(rss_before), "MiB")
        .note(
            "server_rss_after",
            mib(rss_after),
            "MiB",
            format!("{:+.1} MiB", mib(rss_after) - mib(rss_before)),
        );
    report.print(options.format());
    Some(Headline::Throughput(
        stats.deliveries as f64 / elapsed.as_secs_f64(),
    ))
}
