//! A fan-out server for `herald-bench fanout` (the servers themselves are
//! in `servers.rs`, which `herald-bench --embedded` runs in process too).
//!
//! Plain WebSocket (default): every connection subscribes to a topic
//! (`?topic=`, default `all`; `?subscribe=0` to only publish), and every text
//! message a connection sends is published to its topic, encoded once for
//! all subscribers.
//!
//! `--phoenix`: a Phoenix V2 channels endpoint at `/socket/websocket` where
//! any topic can be joined and every push is broadcast to the topic's other
//! subscribers (`broadcast_from`).
//!
//! ```sh
//! cargo run --release -p herald --example fanout -- --port 9002 --loops 1
//! cargo run --release -p herald --example fanout -- --port 9003 --loops 1 --phoenix
//! ```

mod servers;

use clap::Parser;
use herald::Server;

/// Fan-out server options.
#[derive(Debug, Parser)]
#[command(about = "herald fan-out server: messages are published to the sender's topic")]
struct Options {
    /// Port to listen on.
    #[arg(long, default_value_t = 9002)]
    port: u16,
    /// Event loops (default: the available cores).
    #[arg(long)]
    loops: Option<usize>,
    /// Do not pin loops to cores.
    #[arg(long)]
    no_pin: bool,
    /// Serve Phoenix V2 channels instead of plain WebSocket pub/sub.
    #[arg(long)]
    phoenix: bool,
    /// Offer permessage-deflate to the clients that ask (level 6, frames of
    /// 256 bytes or more).
    #[arg(long)]
    compression: bool,
    /// Serve TLS with this certificate chain (PEM), and --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let mut builder = Server::builder()
        .bind(([127, 0, 0, 1], options.port).into())
        .pin_cores(!options.no_pin);
    if let Some(loops) = options.loops {
        builder = builder.loops(loops);
    }
    if options.compression {
        builder = builder.compression(herald::Compression::new());
    }
    if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
        let tls = herald::TlsConfig::from_pem_files(cert, key).map_err(std::io::Error::other)?;
        builder = builder.tls(tls);
    }
    let running = servers::start(builder, options.phoenix)?;
    let kind = if options.phoenix {
        "Phoenix channels, /socket/websocket"
    } else {
        "plain WebSocket"
    };
    println!(
        "herald fan-out server ({kind}) listening on ws://{}",
        running.local_addr()
    );
    running.join();
    Ok(())
}
