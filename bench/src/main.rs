//! `herald-bench`: drives a WebSocket server over loopback and reports what
//! it sustained.
//!
//! Scenarios (run the server in its own process, pinned to its own cores;
//! see bench/README.md):
//!
//! - `echo`: round trips per second and their latency, each connection
//!   sending its next message when the previous one came back;
//! - `connect`: completed WebSocket handshakes per second;
//! - `idle`: server memory per idle connection (needs `--server-pid`);
//! - `churn-rounds`, `slowloris`, `stuck`: whether the memory an abusive
//!   or unlucky load takes comes back (needs `--server-pid`);
//! - `joins`: Phoenix joins per second and the join reply's latency (with
//!   and without a backend join hook, `bench/hooks.sh`);
//! - `fanout`: deliveries per second from one publisher to N subscribers of
//!   one topic, against the `fanout` example (or any server that publishes
//!   what a `?subscribe=0` connection sends to the `?topic=` subscribers).
//!
//! With `--server-pid`, the server's CPU time and RSS are read from
//! `/proc`, so a run shows whether the server or the client was the
//! bottleneck.

mod cli;
mod scenarios;

/// The fan-out servers of herald's `fanout` example, run in process by
/// `--embedded`: one implementation in and out of process.
#[path = "../../engine/examples/fanout/servers.rs"]
mod servers;

use std::{io, process::ExitCode, time::Duration};

use clap::Parser;

use crate::{
    cli::{
        embedded::run_embedded,
        options::{Options, Scenario},
        vs::{self, Headline},
    },
    scenarios::{
        churn::{ChurnPlan, churn},
        connect::{connect, idle},
        echo::echo,
        fanout::{FanoutPlan, fanout},
        joins::{JoinsPlan, joins},
        memory::{self, ChurnRounds, Slowloris, Stuck},
        presence::{PresenceStorm, presence_storm},
        recovery::{RecoveryStorm, recovery_storm},
        rooms::{RoomsPlan, rooms},
    },
};

fn main() -> ExitCode {
    let options = Options::parse();
    herald_bench::client::offer_deflate(options.deflate);
    if options.tls {
        herald_bench::tls::enable();
    }
    let result = match (&options.vs, options.embedded) {
        (Some(_), true) => Err(io::Error::other(
            "--vs starts its servers as processes; leave out --embedded",
        )),
        (Some(baseline), false) => vs::compare(&options, baseline),
        (None, true) => run_embedded(&options),
        (None, false) => run(&options).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario once; returns its headline figure where it has one.
pub(crate) fn run(options: &Options) -> io::Result<Option<Headline>> {
    match options.scenario.clone() {
        Scenario::Echo {
            connections,
            payload,
            seconds,
        } => echo(options, connections, payload, Duration::from_secs(seconds)).map(|()| None),
        Scenario::Connect {
            connections,
            concurrency,
        } => connect(options, connections, concurrency).map(|_| None),
        Scenario::Idle {
            connections,
            concurrency,
        } => idle(options, connections, concurrency).map(|()| None),
        Scenario::ChurnRounds {
            rounds,
            per_round,
            concurrent,
            settle_secs,
        } => memory::churn_rounds(
            options,
            &ChurnRounds {
                rounds,
                per_round,
                concurrent,
                settle: Duration::from_secs(settle_secs),
            },
        )
        .map(|()| None),
        Scenario::Slowloris {
            sockets,
            hold_secs,
            settle_secs,
        } => memory::slowloris(
            options,
            &Slowloris {
                sockets,
                hold: Duration::from_secs(hold_secs),
                settle: Duration::from_secs(settle_secs),
            },
        )
        .map(|()| None),
        Scenario::Stuck {
            subscribers,
            stuck,
            payload,
            rate,
            seconds,
            settle_secs,
        } => memory::stuck(
            options,
            &Stuck {
                subscribers,
                stuck,
                payload,
                rate,
                duration: Duration::from_secs(seconds),
                settle: Duration::from_secs(settle_secs),
            },
        )
        .map(|()| None),
        Scenario::PresenceStorm {
            clients,
            seconds,
            topic,
        } => presence_storm(
            options,
            &PresenceStorm {
                clients,
                spread: Duration::from_secs(seconds),
                topic,
            },
        )
        .map(|()| None),
        Scenario::RecoveryStorm {
            clients,
            behind,
            topic,
            api,
            api_key,
        } => recovery_storm(
            options,
            &RecoveryStorm {
                clients,
                behind,
                topic,
                api,
                api_key,
            },
        )
        .map(|()| None),
        Scenario::Rooms {
            rooms: room_count,
            size,
            window,
            payload,
            seconds,
        } => rooms(
            options,
            &RoomsPlan {
                rooms: room_count,
                size: size.max(1),
                window: window.max(1),
                payload: payload.max(16),
                duration: Duration::from_secs(seconds),
            },
        ),
        Scenario::Churn {
            subscribers,
            rate,
            lifetime_ms,
            window,
            seconds,
            phoenix,
        } => churn(
            options,
            &ChurnPlan {
                subscribers,
                rate: rate.max(1),
                lifetime: Duration::from_millis(lifetime_ms),
                window: window.max(1),
                duration: Duration::from_secs(seconds),
                phoenix,
            },
        ),
        Scenario::Joins {
            clients,
            prefix,
            seconds,
        } => joins(
            options,
            &JoinsPlan {
                clients: clients.max(1),
                prefix,
                duration: Duration::from_secs(seconds),
            },
        )
        .map(|()| None),
        Scenario::Latency {
            subscribers,
            rate,
            payload,
            seconds,
            phoenix,
            api,
        } => fanout(
            options,
            &FanoutPlan {
                subscribers,
                window: 1,
                rate: Some(rate.max(1)),
                payload: payload.max(16),
                duration: Duration::from_secs(seconds),
                phoenix: phoenix || api.api.is_some(),
                api,
            },
        ),
        Scenario::Fanout {
            subscribers,
            window,
            payload,
            seconds,
            phoenix,
            api,
        } => fanout(
            options,
            &FanoutPlan {
                subscribers,
                window: window.max(1),
                rate: None,
                payload: payload.max(16),
                duration: Duration::from_secs(seconds),
                phoenix: phoenix || api.api.is_some(),
                api,
            },
        ),
    }
}
