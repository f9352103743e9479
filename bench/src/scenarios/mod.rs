//! The scenarios, one module each, and what their reports share.

pub(crate) mod churn;
pub(crate) mod connect;
pub(crate) mod echo;
pub(crate) mod fanout;
pub(crate) mod joins;
pub(crate) mod memory;
pub(crate) mod presence;
pub(crate) mod recovery;
pub(crate) mod rooms;

mod connections;
mod messages;

use std::{io, time::Duration};

use herald_bench::{proc_stats::ProcessSample, report::Report};

use crate::cli::options::Options;

/// The most messages a fan-out run keeps track of at once; a server that
/// falls this far behind has not kept up.
pub(crate) const MAX_IN_FLIGHT: usize = 100_000;

/// Bytes in MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Prints the client's and (with `--server-pid`) the server's CPU time,
/// per delivery, and each core's busy fraction; returns whether the client
/// was the bottleneck (its threads 95 % busy or more).
pub(crate) fn cpu_figures(
    report: &mut Report,
    options: &Options,
    server_before: Option<ProcessSample>,
    client_before: &ProcessSample,
    elapsed: Duration,
    deliveries: u64,
) -> io::Result<bool> {
    let client_now = ProcessSample::read_self()?;
    let mut client_cpu = client_now.cpu_since(client_before);
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
    let busy = client_now.cores.busy_since(&client_before.cores);
    let cores: Vec<String> = busy
        .iter()
        .enumerate()
        .map(|(core, busy)| format!("cpu{core} {:.0}%", busy * 100.0))
        .collect();
    // The load generator's threads each busy 95 % of the run or more: the
    // figure measures the client, not the server.
    let client_load = client_cpu.as_secs_f64() / (elapsed.as_secs_f64() * options.threads as f64);
    report.figure("cores_busy", cores.join(", "), "").note(
        "client_bound",
        client_load >= 0.95,
        "",
        format!("client threads {:.0}% busy", client_load * 100.0),
    );
    if let Some(server_cpu) = server_cpu {
        report
            .figure("server_cpu", server_cpu.as_secs_f64(), "s")
            .figure("server_cpu_per_delivery", per_delivery(server_cpu), "ns");
    }
    Ok(client_load >= 0.95)
}
