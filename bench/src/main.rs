//! `herald-bench`: drives a WebSocket server over loopback and reports what
//! it sustained.
//!
//! Scenarios (run the server in its own process, pinned to its own cores;
//! see the README's Performance section):
//!
//! - `echo`: round trips per second and their latency, each connection
//!   sending its next message when the previous one came back;
//! - `connect`: completed WebSocket handshakes per second;
//! - `idle`: server memory per idle connection (needs `--server-pid`);
//! - `fanout`: deliveries per second from one publisher to N subscribers of
//!   one topic, against the `fanout` example (or any server that publishes
//!   what a `?subscribe=0` connection sends to the `?topic=` subscribers).
//!
//! With `--server-pid`, the server's CPU time and RSS are read from
//! `/proc`, so a run shows whether the server or the client was the
//! bottleneck.

use std::{
    io,
    net::SocketAddr,
    process::ExitCode,
    sync::Barrier,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Stage, drive, drive_paced},
    compare::{self, Contender},
    http_publisher::{HttpPublisher, PublisherReport},
    proc_stats::{ProcessSample, raise_fd_limit},
    progress::{self, Running},
    report::{Format, Report},
    tracker::{ThreadStats, Tracker},
};
use indicatif::ProgressBar;
use mio::{Poll, Token};

#[derive(Debug, Clone, Parser)]
#[command(about = "Load generator for herald and other WebSocket servers")]
struct Options {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9001", global = true)]
    addr: SocketAddr,
    /// WebSocket path.
    #[arg(long, default_value = "/", global = true)]
    path: String,
    /// More server addresses (other nodes of a cluster): connections are
    /// spread round-robin over `--addr` and these; a publisher connection
    /// always goes to `--addr`.
    #[arg(long, global = true, value_delimiter = ',')]
    also: Vec<SocketAddr>,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Start herald's fan-out server in this process (the `fanout`
    /// example's servers, plain or `--phoenix`), its loops pinned to
    /// `--server-cpus`, and run the scenario against it. Connections then
    /// cost two descriptors here, so runs are capped at half the limit.
    #[arg(long, global = true)]
    embedded: bool,
    /// Compare with a baseline (`raw` or `tokio`): start herald's `fanout`
    /// example and the baseline here, alternately, and print the ratios
    /// (fanout and latency scenarios).
    #[arg(long, global = true)]
    vs: Option<String>,
    /// Rounds of the comparison (herald, baseline, herald, baseline, ...).
    #[arg(long, default_value_t = 2, global = true)]
    rounds: usize,
    /// CPUs the compared servers are pinned to (taskset list).
    #[arg(long, default_value = "0", global = true)]
    server_cpus: String,
    /// Load generator threads (fanout and latency): subscribers are
    /// spread over them, each with its own poll; the first also publishes.
    /// One per core the server does not use.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// Print each report as one JSON line instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Where the server binaries are (`target/release` after `cargo build
    /// --release -p herald --example fanout -p herald-bench`).
    #[arg(long, default_value = "target/release", global = true)]
    bin_dir: std::path::PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
enum Scenario {
    /// Round trips per second: each connection sends, waits for the echo,
    /// sends again.
    Echo {
        /// Concurrent connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds (after all connections are open).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Handshakes per second.
    Connect {
        /// Connections to open (kept open until the end).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Deliveries per second from one publisher to many subscribers.
    Fanout {
        /// Subscribers of the topic.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Messages in flight: the publisher sends the next one when the
        /// oldest has reached every subscriber.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Payload bytes per message (at least 16: a sequence number).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2: subscribers join the topic, the
        /// publisher pushes `new_msg`, which the server's channel
        /// broadcasts (the `fanout` example with `--phoenix`).
        #[arg(long)]
        phoenix: bool,
        #[command(flatten)]
        api: ApiPublish,
    },
    /// Many topics ("rooms") with a chatty publisher each: deliveries per
    /// second and latency across all rooms.
    Rooms {
        /// Rooms (topics); lowered to what the descriptor limit allows.
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        /// Subscribers per room (each room also has one publisher).
        #[arg(long, default_value_t = 50)]
        size: usize,
        /// Messages in flight per room.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Payload bytes per message (at least 16).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Connections come and go at a steady rate while a broadcast stream
    /// runs: the stable subscribers must miss nothing, and the server's
    /// memory must come back once the churn stops.
    Churn {
        /// Stable subscribers of the topic.
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Connections opened (and later closed) per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// How long each churning connection lives, in milliseconds.
        #[arg(long, default_value_t = 500)]
        lifetime_ms: u64,
        /// Messages in flight to the stable subscribers.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2: stable subscribers and churners join
        /// the topic; a churner leaves it (`phx_leave`) and then
        /// disconnects (the `fanout` example with `--phoenix`).
        #[arg(long)]
        phoenix: bool,
    },
    /// Publish-to-receive latency at a fixed publish rate (fan-out to N
    /// subscribers of one topic), and whether delivery keeps up.
    Latency {
        /// Subscribers of the topic.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Publishes per second (100 to 10,000 subscribers offers 1 M
        /// deliveries/s).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Payload bytes per message (at least 16).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Speak Phoenix Channels V2 (see `fanout --phoenix`).
        #[arg(long)]
        phoenix: bool,
        #[command(flatten)]
        api: ApiPublish,
    },
    /// Server memory per idle connection.
    Idle {
        /// Idle connections to open.
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
}

/// Publishing through the standalone server's HTTP API instead of a
/// WebSocket publisher (implies `--phoenix`).
#[derive(Debug, Clone, clap::Args)]
struct ApiPublish {
    /// The `herald` server's HTTP API address: publish each message with
    /// `POST /api/broadcast`.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// The API key, if the server has one.
    #[arg(long, requires = "api")]
    api_key: Option<String>,
}

/// The name prefix of an embedded server's loop threads.
const EMBEDDED_THREAD_PREFIX: &str = "herald-loop";

/// The fan-out servers of herald's `fanout` example, run in process by
/// `--embedded`: one implementation in and out of process.
#[path = "../../engine/examples/fanout/servers.rs"]
mod servers;

fn main() -> ExitCode {
    let options = Options::parse();
    let result = match (&options.vs, options.embedded) {
        (Some(_), true) => Err(io::Error::other(
            "--vs starts its servers as processes; leave out --embedded",
        )),
        (Some(baseline), false) => compare(&options, baseline),
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

/// Starts the fan-out server in this process, runs the scenario against
/// it, and shuts it down.
fn run_embedded(options: &Options) -> io::Result<()> {
    let phoenix = matches!(
        options.scenario,
        Scenario::Fanout { phoenix: true, .. } | Scenario::Latency { phoenix: true, .. }
    );
    let cores = parse_cpu_list(&options.server_cpus)?;
    let builder = herald::Server::builder()
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .loops(cores.len())
        .core_ids(cores);
    let server = servers::start(builder, phoenix)?;
    let mut embedded = options.clone();
    embedded.addr = server.local_addr();
    if phoenix {
        embedded.path = "/socket/websocket".into();
    }
    let result = run(&embedded).map(|_| ());
    let handle = server.handle();
    handle.shutdown();
    server.join();
    result
}

/// A taskset-style CPU list: `0`, `0,2`, `0-3`.
fn parse_cpu_list(list: &str) -> io::Result<Vec<usize>> {
    let invalid = || {
        io::Error::other(format!(
            "--server-cpus {list:?}: expected e.g. 0 or 0-3 or 0,2"
        ))
    };
    let mut cpus = Vec::new();
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (
                    first.parse().map_err(|_| invalid())?,
                    last.parse().map_err(|_| invalid())?,
                );
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().map_err(|_| invalid())?),
        }
    }
    if cpus.is_empty() {
        return Err(invalid());
    }
    Ok(cpus)
}

/// The figure a comparison sets side by side.
#[derive(Debug, Clone, Copy)]
enum Headline {
    /// Deliveries per second: higher is better.
    Throughput(f64),
    /// p99 publish-to-receive latency in µs: lower is better.
    P99(u64),
}

/// Runs herald and a baseline alternately and prints the ratios.
fn compare(options: &Options, baseline: &str) -> io::Result<()> {
    let phoenix = matches!(
        options.scenario,
        Scenario::Fanout { phoenix: true, .. } | Scenario::Latency { phoenix: true, .. }
    );
    let herald = Contender::herald(&options.bin_dir, phoenix);
    let baseline = Contender::baseline(baseline, &options.bin_dir)
        .ok_or_else(|| io::Error::other("--vs takes raw or tokio"))?;
    if phoenix {
        return Err(io::Error::other(
            "the baselines speak plain WebSocket: compare without --phoenix",
        ));
    }
    let mut rows = Vec::new();
    for round in 1..=options.rounds.max(1) {
        let mut pair = Vec::new();
        for contender in [&herald, &baseline] {
            let server = compare::start(contender, &options.server_cpus)?;
            let mut run_options = options.clone();
            run_options.addr = server.addr;
            run_options.server_pid = Some(server.pid());
            if !options.json {
                println!("\n== round {round}: {} ==", contender.name);
            }
            let headline = run(&run_options)?.ok_or_else(|| {
                io::Error::other("--vs compares the fanout and latency scenarios")
            })?;
            pair.push(headline);
        }
        rows.push((round, pair[0], pair[1]));
    }
    let (mut heralds, mut baselines, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for (_, herald, base) in rows {
        let (h, b) = match (herald, base) {
            (Headline::Throughput(h), Headline::Throughput(b)) => (h, b),
            (Headline::P99(h), Headline::P99(b)) => (h as f64, b as f64),
            _ => continue,
        };
        heralds.push(h);
        baselines.push(b);
        ratios.push(h / b.max(1.0));
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let (unit, meaning) = if matches!(options.scenario, Scenario::Latency { .. }) {
        (
            "µs",
            "herald's p99 latency over the baseline's (lower is better)",
        )
    } else {
        ("/s", "herald's deliveries per second over the baseline's")
    };
    let rounded = |values: &[f64]| values.iter().map(|v| v.round()).collect::<Vec<_>>();
    let mut report = Report::new(format!("herald vs {}", baseline.name));
    report
        .figure("herald", rounded(&heralds), unit)
        .figure("baseline", rounded(&baselines), unit)
        .figure(
            "ratios",
            ratios
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            "x",
        )
        .note("mean_ratio", (mean * 1000.0).round() / 1000.0, "x", meaning);
    if !options.json {
        println!();
    }
    report.print(options.format());
    Ok(())
}

/// Runs the scenario once; returns its headline figure where it has one.
fn run(options: &Options) -> io::Result<Option<Headline>> {
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
        Scenario::Rooms {
            rooms: room_count,
            size,
            window,
            payload,
            seconds,
        } => rooms(
            options,
            room_count,
            size.max(1),
            window.max(1),
            payload.max(16),
            Duration::from_secs(seconds),
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

/// Clamps a connection count to what this process's descriptor limit
/// allows, saying so.
fn connections_within_fd_limit(options: &Options, wanted: usize) -> usize {
    let limit = raise_fd_limit();
    let mut usable = limit.saturating_sub(32) as usize;
    if options.embedded {
        // Both ends of every connection live in this process.
        usable /= 2;
    }
    if wanted > usable {
        eprintln!(
            "note: the file-descriptor limit here is {limit}; running {usable} connections instead of {wanted}"
        );
        return usable;
    }
    wanted
}

/// Opens `count` connections, at most `concurrency` handshakes at a time.
/// Returns the open clients and how long opening them took.
fn open_connections(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
) -> io::Result<(Vec<Client>, Duration)> {
    open_connections_to(options, poll, count, concurrency, &|_| options.path.clone())
}

/// As [`open_connections`], with a path per connection index.
/// The node connection `index` of `count` goes to: round-robin over
/// `--addr` and `--also`, except the last (a publisher, where a scenario
/// has one), which goes to `--addr`.
fn node_addr(options: &Options, index: usize, count: usize) -> SocketAddr {
    let nodes = 1 + options.also.len();
    if index + 1 == count || index.is_multiple_of(nodes) {
        options.addr
    } else {
        options.also[index % nodes - 1]
    }
}

fn open_connections_to(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
    path_of: &dyn Fn(usize) -> String,
) -> io::Result<(Vec<Client>, Duration)> {
    let progress = progress::connecting(count, !options.json);
    let opened = open_connections_with(options, poll, count, concurrency, path_of, &progress);
    progress.finish_and_clear();
    opened
}

/// As [`open_connections_to`], advancing a progress bar shared with other
/// threads.
fn open_connections_with(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
    path_of: &dyn Fn(usize) -> String,
    progress: &ProgressBar,
) -> io::Result<(Vec<Client>, Duration)> {
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    let (mut open, mut in_flight, mut reported) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while open < count {
        while in_flight < concurrency && clients.len() < count {
            let token = Token(clients.len());
            let addr = node_addr(options, clients.len(), count);
            clients.push(Client::connect(poll.registry(), addr, token)?);
            in_flight += 1;
        }
        let mut failure = None;
        drive(poll, Instant::now() + Duration::from_millis(100), |token| {
            let client = &mut clients[token.0];
            let before = client.stage;
            if let Err(err) = client.on_ready(&path_of(token.0), |_, _| {}) {
                failure = Some(err);
            }
            if before != Stage::Open && client.stage == Stage::Open {
                open += 1;
                in_flight -= 1;
            }
            // Back to the caller to start more once the window has room.
            in_flight == concurrency
        })?;
        progress.inc((open - reported) as u64);
        reported = open;
        if let Some(err) = failure {
            return Err(io::Error::other(format!("connection {open} failed: {err}")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "only {open} of {count} connections opened in 120 s"
            )));
        }
    }
    Ok((clients, start.elapsed()))
}

fn echo(
    options: &Options,
    connections: usize,
    payload: usize,
    duration: Duration,
) -> io::Result<()> {
    let connections = connections_within_fd_limit(options, connections);
    let mut poll = Poll::new()?;
    let (mut clients, _) = open_connections(options, &mut poll, connections, 256)?;
    let message = vec![b'x'; payload];
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    let server_before = options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let start = Instant::now();
    for client in &mut clients {
        client.send(OpCode::Text, &message)?;
    }
    let mut round_trips = 0u64;
    let mut failure = None;
    drive(&mut poll, start + duration, |token| {
        let result = clients[token.0].on_ready(&options.path, |client, frame| {
            if frame.opcode == OpCode::Text {
                if let Some(sent) = client.sent_at {
                    let _ = latency.record(sent.elapsed().as_micros() as u64);
                }
                round_trips += 1;
                if let Err(err) = client.send(OpCode::Text, &message) {
                    failure = Some(err);
                }
            }
        });
        if let Err(err) = result {
            failure = Some(err);
        }
        failure.is_none()
    })?;
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();
    let client_cpu = ProcessSample::read_self()?.cpu_since(&client_before);
    let mut report = Report::new("echo");
    report
        .figure("connections", connections, "")
        .figure("payload", payload, "B")
        .figure(
            "round_trips",
            round_trips as f64 / elapsed.as_secs_f64(),
            "/s",
        )
        .latency("latency", &latency)
        .note(
            "client_cpu",
            client_cpu.as_secs_f64(),
            "s",
            format!("in {:.2} s", elapsed.as_secs_f64()),
        );
    if let (Some(now), Some(before)) = (options.server_sample()?, server_before) {
        let server_cpu = now.cpu_since(&before);
        report
            .figure("server_cpu", server_cpu.as_secs_f64(), "s")
            .figure(
                "server_cpu_per_round_trip",
                server_cpu.as_nanos() as f64 / round_trips.max(1) as f64,
                "ns",
            );
    }
    report.print(options.format());
    Ok(())
}

fn connect(options: &Options, connections: usize, concurrency: usize) -> io::Result<Vec<Client>> {
    let connections = connections_within_fd_limit(options, connections);
    let mut poll = Poll::new()?;
    let server_before = options.server_sample()?;
    let (clients, took) = open_connections(options, &mut poll, connections, concurrency)?;
    let mut report = Report::new("connect");
    report
        .note(
            "connections",
            connections,
            "",
            format!("at most {concurrency} connecting at once"),
        )
        .note(
            "handshakes",
            connections as f64 / took.as_secs_f64(),
            "/s",
            format!("{connections} in {:.2} s", took.as_secs_f64()),
        );
    if let (Some(now), Some(before)) = (options.server_sample()?, server_before) {
        let server_cpu = now.cpu_since(&before);
        report
            .figure("server_cpu", server_cpu.as_secs_f64(), "s")
            .figure(
                "server_cpu_per_connection",
                server_cpu.as_secs_f64() * 1e6 / connections as f64,
                "µs",
            );
    }
    report.print(options.format());
    Ok(clients)
}

fn idle(options: &Options, connections: usize, concurrency: usize) -> io::Result<()> {
    let Some(pid) = options.server_pid else {
        return Err(io::Error::other(
            "idle needs --server-pid to read the server's memory",
        ));
    };
    let before = ProcessSample::read(pid)?;
    let clients = connect(options, connections, concurrency)?;
    // Let the server finish flushing its 101 responses.
    std::thread::sleep(Duration::from_millis(500));
    let after = ProcessSample::read(pid)?;
    let grown = after.rss_bytes.saturating_sub(before.rss_bytes);
    let mut report = Report::new("idle");
    report
        .figure("connections", clients.len(), "")
        .figure("server_rss_before", mib(before.rss_bytes), "MiB")
        .figure("server_rss_after", mib(after.rss_bytes), "MiB")
        .note(
            "rss_per_connection",
            grown as f64 / clients.len() as f64,
            "B",
            "user-space RSS",
        );
    report.print(options.format());
    Ok(())
}

/// What a fan-out run does.
struct FanoutPlan {
    subscribers: usize,
    window: usize,
    /// Publishes per second on a fixed schedule (the `latency` scenario);
    /// `None` publishes as fast as the window allows.
    rate: Option<u32>,
    payload: usize,
    duration: Duration,
    phoenix: bool,
    /// Publish through the HTTP API instead of a WebSocket publisher.
    api: ApiPublish,
}

/// The topic the fan-out scenario uses.
const FANOUT_TOPIC: &str = "herald-bench";

/// The message with sequence number `seq`, as the publisher sends it.
fn fanout_message(phoenix: bool, seq: u64, filler: &str) -> String {
    if phoenix {
        format!(r#"["1",null,"{FANOUT_TOPIC}","new_msg",{{"s":"{seq:016x}","f":"{filler}"}}]"#)
    } else {
        format!("{seq:016x}{filler}")
    }
}

/// The `POST /api/broadcast` body of message `seq`.
fn api_message(seq: u64, filler: &str) -> String {
    format!(
        r#"{{"topic":"{FANOUT_TOPIC}","event":"new_msg","payload":{{"s":"{seq:016x}","f":"{filler}"}}}}"#
    )
}

/// The sequence number in a received frame's leading bytes.
fn fanout_seq(phoenix: bool, prefix: &[u8]) -> Option<u64> {
    let at = if phoenix {
        prefix.windows(5).position(|w| w == br#""s":""#)? + 5
    } else {
        0
    };
    let hex = std::str::from_utf8(prefix.get(at..at + 16)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Sends a Phoenix join for the fan-out topic on every client and waits
/// for all the replies.
fn join_all(
    poll: &mut Poll,
    clients: &mut [Client],
    path_of: &dyn Fn(usize) -> String,
) -> io::Result<()> {
    let join = format!(r#"["1","1","{FANOUT_TOPIC}","phx_join",{{}}]"#);
    for client in clients.iter_mut() {
        client.send(OpCode::Text, join.as_bytes())?;
    }
    let mut joined = 0;
    let mut failure = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined < clients.len() && Instant::now() < deadline {
        drive(poll, Instant::now() + Duration::from_millis(100), |token| {
            let result = clients[token.0].on_ready(&path_of(token.0), |_, frame| {
                if frame.opcode == OpCode::Text
                    && frame.prefix.windows(9).any(|w| w == b"phx_reply")
                {
                    joined += 1;
                }
            });
            if let Err(err) = result {
                failure = Some(err);
            }
            failure.is_none()
        })?;
        if let Some(err) = failure.take() {
            return Err(err);
        }
    }
    if joined < clients.len() {
        return Err(io::Error::other(format!(
            "only {joined} of {} joins answered",
            clients.len()
        )));
    }
    Ok(())
}

fn fanout(options: &Options, plan: &FanoutPlan) -> io::Result<Option<Headline>> {
    let FanoutPlan {
        window,
        payload,
        phoenix,
        ..
    } = *plan;
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
    let PublisherOutcome {
        stats: run,
        elapsed,
        api,
        server_before,
        client_before,
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
        .figure("payload", payload, "B")
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
        .latency("to_last_subscriber", &run.last_latency);
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
        // Keeping up: what is still in flight at the end is about what the
        // latency to the last subscriber accounts for, not a growing pile.
        let expected_backlog = (f64::from(rate)
            * (run.last_latency.value_at_quantile(0.99) as f64 / 1e6))
            .ceil() as u64
            + 1;
        let kept_up = tracker.in_flight() <= expected_backlog.max(2);
        report.note(
            "kept_up",
            kept_up,
            "",
            format!(
                "{} sent, {} fully delivered, {} in flight at the end",
                tracker.sent_count(),
                tracker.completed(),
                tracker.in_flight()
            ),
        );
    }
    cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        run.deliveries,
    )?;
    report.print(options.format());
    Ok(Some(match plan.rate {
        Some(_) => Headline::P99(run.delivery_latency.value_at_quantile(0.99)),
        None => Headline::Throughput(run.deliveries as f64 / elapsed.as_secs_f64()),
    }))
}

/// What every thread of a fan-out run shares.
struct FanoutShared<'a> {
    options: &'a Options,
    plan: &'a FanoutPlan,
    tracker: &'a Tracker,
    progress: &'a ProgressBar,
    /// Every thread waits here once its connections are open and joined.
    connected: &'a Barrier,
    filler: String,
    subscriber_path: String,
    publisher_path: String,
}

impl<'a> FanoutShared<'a> {
    fn new(
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
            filler: "x".repeat(
                plan.payload
                    .saturating_sub(if plan.phoenix { 40 } else { 16 }),
            ),
            subscriber_path,
            publisher_path,
        }
    }

    /// Opens (and, for Phoenix, joins) `count` connections on a poll of
    /// this thread's; the last is the publisher's if `with_publisher`.
    /// Waits for the other threads before returning.
    fn connect(&self, count: usize, with_publisher: bool) -> io::Result<(Poll, Vec<Client>)> {
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

    /// Reads a subscriber's frames and counts what arrived.
    fn receive(&self, client: &mut Client, stats: &mut ThreadStats) -> io::Result<()> {
        receive(
            client,
            &self.subscriber_path,
            self.plan.phoenix,
            self.tracker,
            stats,
        )
    }
}

/// A receiving thread: its share of the subscribers, until the run ends.
fn fanout_receiver(shared: &FanoutShared<'_>, share: usize) -> io::Result<ThreadStats> {
    let (mut poll, mut clients) = shared.connect(share, false)?;
    let mut stats = ThreadStats::new()?;
    let mut failure = None;
    let deadline = Instant::now() + shared.plan.duration;
    drive_paced(&mut poll, deadline, Duration::from_millis(5), |wake| {
        match wake {
            Some(token) => {
                if let Err(err) = shared.receive(&mut clients[token.0], &mut stats) {
                    failure = Some(err);
                }
            }
            None if shared.tracker.has_failed() => return false,
            None => {}
        }
        failure.is_none()
    })?;
    if let Some(err) = failure {
        shared.tracker.fail();
        return Err(err);
    }
    Ok(stats)
}

/// What the publishing thread brings back.
struct PublisherOutcome {
    stats: ThreadStats,
    elapsed: Duration,
    api: Option<PublisherReport>,
    server_before: Option<ProcessSample>,
    client_before: ProcessSample,
}

/// The publishing thread: its share of the subscribers, and the publisher
/// (a WebSocket, or the HTTP API).
fn fanout_publisher(shared: &FanoutShared<'_>, share: usize) -> io::Result<PublisherOutcome> {
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
    let send_due = |clients: &mut [Client]| -> io::Result<()> {
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
            match &http_publisher {
                Some(api) => api.publish(api_message(seq, &shared.filler))?,
                None => {
                    let message = fanout_message(plan.phoenix, seq, &shared.filler);
                    let publisher = clients.len() - 1;
                    clients[publisher].send(OpCode::Text, message.as_bytes())?;
                }
            }
        }
        Ok(())
    };
    let mut failure = None;
    send_due(&mut clients)?;
    let running = Running::start(
        if plan.rate.is_some() {
            "latency"
        } else {
            "fanout"
        },
        plan.duration,
        !shared.options.json,
    );
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
                Some(token) => shared.receive(&mut clients[token.0], &mut stats),
                None if tracker.has_failed() => return false,
                None => {
                    running.tick();
                    send_due(&mut clients)
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
    let api = http_publisher.map(HttpPublisher::finish).transpose()?;
    Ok(PublisherOutcome {
        stats,
        elapsed,
        api,
        server_before,
        client_before,
    })
}

/// Handles a subscriber's readiness: reads its frames and counts each
/// sequence number it received.
fn receive(
    client: &mut Client,
    path: &str,
    phoenix: bool,
    tracker: &Tracker,
    stats: &mut ThreadStats,
) -> io::Result<()> {
    let mut arrived = Vec::new();
    client.on_ready(path, |_, frame| {
        if frame.opcode == OpCode::Text {
            arrived.push(frame.prefix);
        }
    })?;
    for prefix in arrived {
        let seq = fanout_seq(phoenix, &prefix)
            .ok_or_else(|| io::Error::other("a frame without a sequence number"))?;
        tracker.received(seq, stats)?;
    }
    Ok(())
}

/// Bytes in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

impl Options {
    /// The server's CPU time and memory now: its process (`--server-pid`),
    /// or the embedded server's loop threads.
    fn server_sample(&self) -> io::Result<Option<ProcessSample>> {
        if self.embedded {
            return ProcessSample::read_threads(EMBEDDED_THREAD_PREFIX).map(Some);
        }
        self.server_pid.map(ProcessSample::read).transpose()
    }

    /// How reports are printed.
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Table
        }
    }
}

/// Prints the client's and (with `--server-pid`) the server's CPU time,
/// per delivery.
fn cpu_figures(
    report: &mut Report,
    options: &Options,
    server_before: Option<ProcessSample>,
    client_before: &ProcessSample,
    elapsed: Duration,
    deliveries: u64,
) -> io::Result<()> {
    let mut client_cpu = ProcessSample::read_self()?.cpu_since(client_before);
    let server_cpu = match (options.server_sample()?, server_before) {
        (Some(now), Some(before)) => Some(now.cpu_since(&before)),
        _ => None,
    };
    if options.embedded {
        // The process's CPU time includes the embedded server's threads.
        client_cpu = client_cpu.saturating_sub(server_cpu.unwrap_or_default());
    }
    let per_delivery = |cpu: Duration| cpu.as_nanos() as f64 / deliveries.max(1) as f64;
    report
        .note(
            "client_cpu",
            client_cpu.as_secs_f64(),
            "s",
            format!("in {:.2} s", elapsed.as_secs_f64()),
        )
        .figure("client_cpu_per_delivery", per_delivery(client_cpu), "ns");
    if let Some(server_cpu) = server_cpu {
        report
            .figure("server_cpu", server_cpu.as_secs_f64(), "s")
            .figure("server_cpu_per_delivery", per_delivery(server_cpu), "ns");
    }
    Ok(())
}

/// The most messages a fan-out run keeps track of at once; a server that
/// falls this far behind has not kept up.
const MAX_IN_FLIGHT: usize = 100_000;

/// Many rooms, one publisher each, `window` messages in flight per room.
fn rooms(
    options: &Options,
    rooms: usize,
    size: usize,
    window: usize,
    payload: usize,
    duration: Duration,
) -> io::Result<Option<Headline>> {
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
    cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        deliveries,
    )?;
    report.print(options.format());
    Ok(Some(Headline::Throughput(
        deliveries as f64 / elapsed.as_secs_f64(),
    )))
}

/// What a churn run does.
struct ChurnPlan {
    subscribers: usize,
    rate: u32,
    lifetime: Duration,
    window: usize,
    duration: Duration,
    phoenix: bool,
}

/// A churning connection and when it is due to close.
struct Churner {
    client: Client,
    close_at: Instant,
}

fn churn(options: &Options, plan: &ChurnPlan) -> io::Result<Option<Headline>> {
    let Some(pid) = options.server_pid else {
        return Err(io::Error::other(
            "churn needs --server-pid to check the server's memory",
        ));
    };
    let ChurnPlan {
        rate,
        lifetime,
        window,
        duration,
        phoenix,
        ..
    } = *plan;
    // Room for the churners alive at once (rate x lifetime, doubled).
    let churners_alive = (f64::from(rate) * lifetime.as_secs_f64() * 2.0).ceil() as usize + 16;
    let stable = connections_within_fd_limit(options, plan.subscribers + 1 + churners_alive)
        .saturating_sub(1 + churners_alive)
        .max(1);
    let separator = if options.path.contains('?') { '&' } else { '?' };
    let subscriber_path = if phoenix {
        format!("{}{separator}vsn=2.0.0", options.path)
    } else {
        format!("{}{separator}topic={FANOUT_TOPIC}", options.path)
    };
    let publisher_path = if phoenix {
        subscriber_path.clone()
    } else {
        format!("{subscriber_path}&subscribe=0")
    };
    let path_of = |index: usize| {
        if index == stable {
            publisher_path.clone()
        } else {
            subscriber_path.clone()
        }
    };
    let join = format!(r#"["1","1","{FANOUT_TOPIC}","phx_join",{{}}]"#);
    let leave = format!(r#"["1","2","{FANOUT_TOPIC}","phx_leave",{{}}]"#);
    let mut poll = Poll::new()?;
    let (mut clients, _) = open_connections_to(options, &mut poll, stable + 1, 256, &path_of)?;
    if phoenix {
        join_all(&mut poll, &mut clients, &path_of)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = ProcessSample::read(pid)?.rss_bytes;
    let tracker = Tracker::new(MAX_IN_FLIGHT, stable);
    let mut stats = ThreadStats::new()?;
    let filler = "x".repeat(48);
    let publisher = stable;
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
    // Churners use tokens from `first_churn_token` on, in a slab of slots.
    let first_churn_token = stable + 1;
    let mut churners: Vec<Option<Churner>> = Vec::new();
    let (mut opened, mut closed, mut failed) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    top_up(&mut clients)?;
    let mut failure = None;
    let registry = poll.registry().try_clone()?;
    let running = Running::start("churn", duration, !options.json);
    drive_paced(
        &mut poll,
        start + duration,
        Duration::from_millis(5),
        |wake| {
            match wake {
                Some(token) if token.0 < first_churn_token => {
                    let path = path_of(token.0);
                    if let Err(err) =
                        receive(&mut clients[token.0], &path, phoenix, &tracker, &mut stats)
                    {
                        failure = Some(err);
                    }
                    if let Err(err) = top_up(&mut clients) {
                        failure = Some(err);
                    }
                }
                Some(token) => {
                    let slot = &mut churners[token.0 - first_churn_token];
                    if let Some(churner) = slot {
                        let before = churner.client.stage;
                        // What churners receive is not counted.
                        match churner.client.on_ready(&subscriber_path, |_, _| {}) {
                            Ok(())
                                if before != Stage::Open && churner.client.stage == Stage::Open =>
                            {
                                opened += 1;
                                if phoenix
                                    && churner.client.send(OpCode::Text, join.as_bytes()).is_err()
                                {
                                    failed += 1;
                                    *slot = None;
                                }
                            }
                            Ok(()) => {}
                            Err(_) => {
                                failed += 1;
                                *slot = None;
                            }
                        }
                    }
                }
                None => {
                    running.tick();
                    let now = Instant::now();
                    // Close the churners whose time is up.
                    for slot in &mut churners {
                        if let Some(churner) = slot.as_mut().filter(|c| c.close_at <= now) {
                            if phoenix && churner.client.stage == Stage::Open {
                                // Leave, then hang up without waiting.
                                let _ = churner.client.send(OpCode::Text, leave.as_bytes());
                            }
                            *slot = None;
                            closed += 1;
                        }
                    }
                    // Open as many as the schedule says by now.
                    let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                    let started = opened
                        + failed
                        + churners
                            .iter()
                            .filter(|c| c.as_ref().is_some_and(|c| c.client.stage != Stage::Open))
                            .count() as u64;
                    for _ in started..due {
                        let index =
                            churners
                                .iter()
                                .position(Option::is_none)
                                .unwrap_or_else(|| {
                                    churners.push(None);
                                    churners.len() - 1
                                });
                        match Client::connect(
                            &registry,
                            options.addr,
                            Token(first_churn_token + index),
                        ) {
                            Ok(client) => {
                                churners[index] = Some(Churner {
                                    client,
                                    close_at: now + lifetime,
                                });
                            }
                            Err(_) => failed += 1,
                        }
                    }
                }
            }
            failure.is_none()
        },
    )?;
    running.finish();
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();
    // Lost: still missing a subscriber a second after it was sent (a live
    // message takes milliseconds; a lost one would also stall the window).
    let lost = tracker.stale(Duration::from_secs(1));
    let remaining = churners.iter().filter(|c| c.is_some()).count() as u64;
    churners.clear();
    closed += remaining;
    // Give the server a moment to notice the last closes.
    std::thread::sleep(Duration::from_millis(1000));
    let rss_after = ProcessSample::read(pid)?.rss_bytes;
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
    Ok(Some(Headline::Throughput(
        stats.deliveries as f64 / elapsed.as_secs_f64(),
    )))
}
