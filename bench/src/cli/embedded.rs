//! `--embedded`: herald's fan-out server started in this process, its
//! loops pinned to `--server-cpus`, for the scenario to run against.

use std::{io, net::SocketAddr};

use super::options::{Options, Scenario};
use crate::{run, servers};

/// The name prefix of an embedded server's loop threads.
pub(crate) const EMBEDDED_THREAD_PREFIX: &str = "herald-loop";

/// Starts the fan-out server in this process, runs the scenario against
/// it, and shuts it down.
pub(crate) fn run_embedded(options: &Options) -> io::Result<()> {
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
