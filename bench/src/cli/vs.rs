//! `--vs`: herald and a baseline server started alternately, the same
//! scenario run against each, and the ratios of their headline figures.

use std::io;

use herald_bench::{
    compare::{self, Contender},
    report::Report,
};

use super::options::{Options, Scenario};
use crate::run;

/// The figure a comparison sets side by side.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Headline {
    /// Deliveries per second: higher is better.
    Throughput(f64),
    /// p99 publish-to-receive latency in µs: lower is better.
    P99(u64),
    /// The load generator was the bottleneck: the run says nothing about
    /// the server, and is left out of the ratios.
    ClientBound,
}

/// Runs herald and a baseline alternately and prints the ratios.
pub(crate) fn compare(options: &Options, baseline: &str) -> io::Result<()> {
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
    print_ratios(options, baseline.name, rows);
    Ok(())
}

/// Prints each round's figures for herald and the baseline (`rows`:
/// round, herald's, the baseline's) and their ratios.
fn print_ratios(options: &Options, baseline: &str, rows: Vec<(usize, Headline, Headline)>) {
    let (mut heralds, mut baselines, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut client_bound = Vec::new();
    for (round, herald, base) in rows {
        let (h, b) = match (herald, base) {
            (Headline::Throughput(h), Headline::Throughput(b)) => (h, b),
            (Headline::P99(h), Headline::P99(b)) => (h as f64, b as f64),
            _ => {
                client_bound.push(round);
                continue;
            }
        };
        heralds.push(h);
        baselines.push(b);
        ratios.push(h / b.max(1.0));
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let mean = if ratios.is_empty() {
        serde_json::Value::from("none: every round was client-bound")
    } else {
        serde_json::Value::from((mean * 1000.0).round() / 1000.0)
    };
    let (unit, meaning) = if matches!(options.scenario, Scenario::Latency { .. }) {
        (
            "µs",
            "herald's p99 latency over the baseline's (lower is better)",
        )
    } else {
        ("/s", "herald's deliveries per second over the baseline's")
    };
    let rounded = |values: &[f64]| values.iter().map(|v| v.round()).collect::<Vec<_>>();
    let mut report = Report::new(format!("herald vs {baseline}"));
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
        .note("mean_ratio", mean, "x", meaning)
        .note(
            "client_bound_rounds",
            format!("{client_bound:?}"),
            "",
            "left out: the load generator's threads were 95% busy or more",
        );
    if !options.json {
        println!();
    }
    report.print(options.format());
}
