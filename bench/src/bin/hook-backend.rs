//! `hook-backend`: a stand-in for an application's backend behind herald's
//! hooks, for `bench/hooks.sh`: answers every hook call with
//! `{"allow": true}` after `--delay-ms`, on enough threads that the delay,
//! not a queue, is what herald waits for.
//!
//! ```text
//! hook-backend --listen 127.0.0.1:8700 --delay-ms 1
//! ```

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Answers herald's hook calls with {\"allow\": true} after a delay")]
struct Options {
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Milliseconds each answer waits.
    #[arg(long, default_value_t = 1)]
    delay_ms: u64,
    /// Requests answered at once.
    #[arg(long, default_value_t = 256)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let server = Arc::new(tiny_http::Server::http(options.listen).map_err(std::io::Error::other)?);
    eprintln!(
        "hook-backend on http://{} ({} ms)",
        options.listen, options.delay_ms
    );
    let delay = Duration::from_millis(options.delay_ms);
    let threads: Vec<_> = (0..options.threads.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    std::thread::sleep(delay);
                    let answer = tiny_http::Response::from_string(r#"{"allow": true}"#);
                    let _ = request.respond(answer);
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}
