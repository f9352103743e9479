//! An echo server: every text and binary message comes back unchanged, on
//! any path. This is the shape WebSocket conformance suites drive.
//!
//! ```sh
//! cargo run --release -p herald --example echo -- --port 9001
//! ```

use bytes::Bytes;
use clap::Parser;
use herald::{
    Accept, Conn, Handler, Reject, Request, Server,
    wire::{DecoderConfig, Utf8Bytes},
};

/// Echo server options.
#[derive(Debug, Parser)]
#[command(about = "herald echo server: sends every message back")]
struct Options {
    /// Port to listen on.
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Event loops (default: the available cores).
    #[arg(long)]
    loops: Option<usize>,
    /// Largest message (and frame) accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_size: usize,
    /// Do not pin loops to cores.
    #[arg(long)]
    no_pin: bool,
    /// Offer permessage-deflate (RFC 7692) to clients that ask, as
    /// Autobahn's 12.* and 13.* cases do.
    #[arg(long)]
    compression: bool,
}

struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_connect(&self, _request: &Request) -> Result<Accept<()>, Reject> {
        Ok(Accept::new(()))
    }

    fn on_message(&self, conn: &mut Conn<'_, ()>, text: Utf8Bytes) {
        // A refused send means the connection is closing: nothing to do.
        let _ = conn.send_text(&text);
    }

    fn on_binary(&self, conn: &mut Conn<'_, ()>, data: Bytes) {
        let _ = conn.send_binary(&data);
    }
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let mut builder = Server::builder()
        .bind((options.host, options.port).into())
        .pin_cores(!options.no_pin)
        .decoder(
            DecoderConfig::default()
                .max_frame_size(options.max_message_size)
                .max_message_size(options.max_message_size),
        )
        // Conformance suites send messages as large as the limit; let the
        // echo queue hold a few of them.
        .max_queued_bytes(options.max_message_size.saturating_mul(4).max(4 << 20));
    if let Some(loops) = options.loops {
        builder = builder.loops(loops);
    }
    if options.compression {
        builder = builder.compression(herald::Compression::new());
    }
    let server = builder.start(Echo)?;
    println!(
        "herald echo server listening on ws://{}",
        server.local_addr()
    );
    server.join();
    Ok(())
}
