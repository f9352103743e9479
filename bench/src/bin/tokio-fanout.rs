//! `tokio-fanout`: the fan-out server a typical Rust developer would write,
//! as the baseline herald is compared with: tokio, tokio-tungstenite, and a
//! `tokio::sync::broadcast` channel. Same protocol as `raw-fanout`:
//! connections whose request has `subscribe=0` publish, the others
//! subscribe; every text message published goes to every subscriber.
//!
//! Usage: `tokio-fanout [--port PORT] [--threads N]` (defaults 9010, and
//! tokio's default worker count). Prints `listening on ADDR` when ready.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
};

/// A handshake callback that records whether the request publishes.
// tungstenite's callback signature fixes the (large) error type.
#[allow(clippy::result_large_err)]
fn note_publisher(
    flag: Arc<AtomicBool>,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> {
    move |request, response| {
        let query = request.uri().query().unwrap_or("");
        flag.store(
            query.split('&').any(|pair| pair == "subscribe=0"),
            Ordering::Relaxed,
        );
        Ok(response)
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut port, mut threads) = (9010u16, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port),
            "--threads" => threads = args.next().and_then(|t| t.parse().ok()),
            _ => {}
        }
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(serve(port))
}

async fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    // Capacity in messages: a subscriber more than this far behind skips
    // ahead (broadcast's `Lagged`), like a drop-oldest policy.
    let (sender, _) = broadcast::channel::<Message>(4096);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, sender.clone()));
    }
}

async fn connection(stream: TcpStream, sender: broadcast::Sender<Message>) {
    let publisher = Arc::new(AtomicBool::new(false));
    let callback = note_publisher(Arc::clone(&publisher));
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    if publisher.load(Ordering::Relaxed) {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_text() {
                let _ = sender.send(message);
            }
        }
        return;
    }
    let mut receiver = sender.subscribe();
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(message) => {
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
