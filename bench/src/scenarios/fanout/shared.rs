//! What every thread of a fan-out run shares: the plan, the delivery
//! tracker, the paths, and opening a thread's share of the connections.

use std::{
    io,
    sync::Barrier,
    time::{Duration, Instant},
};

use herald_bench::{
    client::{Client, Scratch, drive_paced},
    tracker::{ThreadStats, Tracker},
};
use indicatif::ProgressBar;
use mio::Poll;

use super::FanoutPlan;

/// How long a run waits, after its measured window, for the messages still
/// in flight to reach every subscriber.
pub(super) const DRAIN: Duration = Duration::from_secs(2);
use crate::{
    cli::options::Options,
    scenarios::{
        connections::open_connections_with,
        messages::{FANOUT_TOPIC, join_all, receive, settle},
    },
};

/// What every thread of a fan-out run shares.
pub(super) struct FanoutShared<'a> {
    /// The command line.
    pub(super) options: &'a Options,
    /// What the run does.
    pub(super) plan: &'a FanoutPlan,
    /// The deliveries on their way.
    pub(super) tracker: &'a Tracker,
    /// The connecting progress bar, shared by every thread.
    pub(super) progress: &'a ProgressBar,
    /// Every thread waits here once its connections are open and joined.
    connected: &'a Barrier,
    /// What pads a message to the payload size.
    pub(super) filler: String,
    /// The path a subscriber connects to.
    subscriber_path: String,
    /// The path the WebSocket publisher connects to.
    pub(super) publisher_path: String,
}

impl<'a> FanoutShared<'a> {
    /// What the threads of a run of `plan` share; the paths follow from
    /// `--path` and the protocol.
    pub(super) fn new(
        options: &'a Options,
        plan: &'a FanoutPlan,
        tracker: &'a Tracker,
        progress: &'a ProgressBar,
        connected: &'a Barrier,
    ) -> Self {
        let path = &options.path;
        let separator = if path.contains('?') { '&' } else { '?' };
        let subscriber_path = if plan.phoenix {
            format!("{path}{separator}vsn=2.0.0")
        } else {
            format!("{path}{separator}topic={FANOUT_TOPIC}")
        };
        let publisher_path = if plan.phoenix {
            subscriber_path.clone()
        } else {
            format!("{subscriber_path}&subscribe=0")
        };
        Self {
            options,
            plan,
            tracker,
            progress,
            connected,
            filler: filler(
                plan.payload
                    .saturating_sub(if plan.phoenix { 40 } else { 16 }),
                options.quotes,
            ),
            subscriber_path,
            publisher_path,
        }
    }

    /// Opens (and, for Phoenix, joins) `count` connections on a poll of
    /// this thread's; the last is the publisher's if `with_publisher`.
    /// Waits for the other threads before returning.
    pub(super) fn connect(
        &self,
        count: usize,
        with_publisher: bool,
    ) -> io::Result<(Poll, Vec<Client>)> {
        let path_of = |index: usize| {
            if with_publisher && index + 1 == count {
                self.publisher_path.clone()
            } else {
                self.subscriber_path.clone()
            }
        };
        let mut poll = Poll::new()?;
        let opened =
            open_connections_with(self.options, &mut poll, count, 256, &path_of, self.progress)
                .and_then(|(mut clients, _)| {
                    if self.plan.phoenix {
                        join_all(&mut poll, &mut clients, &path_of)?;
                        settle(&mut poll, &mut clients, &path_of)?;
                    }
                    Ok(clients)
                });
        if opened.is_err() {
            self.tracker.fail();
        }
        self.connected.wait();
        if self.tracker.has_failed() {
            return Err(opened
                .err()
                .unwrap_or_else(|| io::Error::other("another thread failed")));
        }
        Ok((poll, opened?))
    }

    /// After the measured window: keeps reading until every message sent
    /// has reached every subscriber, or [`DRAIN`] has passed; what arrives
    /// meanwhile counts as drained, not as measured.
    pub(super) fn drain(
        &self,
        poll: &mut Poll,
        clients: &mut [Client],
        stats: &mut ThreadStats,
        scratch: &mut Scratch,
        skip_last: bool,
    ) -> io::Result<()> {
        let measured = stats.deliveries;
        let mut failure = None;
        let receivers = clients.len() - usize::from(skip_last);
        drive_paced(
            poll,
            Instant::now() + DRAIN,
            Duration::from_millis(5),
            |wake| {
                match wake {
                    Some(token) if token.0 < receivers => {
                        if let Err(err) = self.receive(&mut clients[token.0], stats, scratch) {
                            failure = Some(err);
                        }
                    }
                    Some(_) => {}
                    None => return self.tracker.in_flight() > 0 && !self.tracker.has_failed(),
                }
                failure.is_none()
            },
        )?;
        stats.drained = stats.deliveries - measured;
        stats.deliveries = measured;
        failure.map_or(Ok(()), Err)
    }

    /// Reads a subscriber's frames and counts what arrived.
    pub(super) fn receive(
        &self,
        client: &mut Client,
        stats: &mut ThreadStats,
        scratch: &mut Scratch,
    ) -> io::Result<()> {
        receive(
            client,
            &self.subscriber_path,
            self.plan.phoenix,
            self.tracker,
            stats,
            scratch,
        )
    }
}

/// `len` bytes of filler for every message: one letter repeated, or with
/// `quotes`, rows of symbols, prices and sizes from a fixed pseudo-random
/// sequence (text that compresses about as market data JSON does, and
/// needs no escaping inside a JSON string).
pub(super) fn filler(len: usize, quotes: bool) -> String {
    if !quotes {
        return "x".repeat(len);
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut text = String::with_capacity(len + 64);
    while text.len() < len {
        let symbol: String = (0..4).map(|_| char::from(b'A' + next(26) as u8)).collect();
        let bid = 100 + next(900);
        let cents = next(100);
        let size = 100 * (1 + next(50));
        let venue = ["XNAS", "XNYS", "BATS", "ARCX"][next(4) as usize];
        text.push_str(&format!(
            "symbol={symbol} bid={bid}.{cents:02} ask={bid}.{:02} size={size} venue={venue}; ",
            (cents + 1 + next(5)) % 100
        ));
    }
    text.truncate(len);
    text
}
