//! The `echo` scenario: round trips per second and their latency, each
//! connection sending its next message when the previous one came back.

use std::{
    io,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use herald::wire::OpCode;
use herald_bench::{client::drive, proc_stats::ProcessSample, report::Report};
use mio::Poll;

use super::connections::{connections_within_fd_limit, open_connections};
use crate::cli::options::Options;

/// Round trips per second over `connections` connections, each echoing
/// `payload` bytes, for `duration`.
pub(crate) fn echo(
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
