//! Publishing through herald's HTTP API (`POST /api/broadcast`) from a
//! thread of its own, over one keep-alive connection, so that the load
//! generator's event loop never waits on a response.
//!
//! The loop hands the publisher each message to send through a channel;
//! the publisher posts them one after another and records how long each
//! request took.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
    time::Instant,
};

use hdrhistogram::Histogram;

/// What the publisher thread measured.
#[derive(Debug)]
pub struct PublisherReport {
    /// Requests answered with 200.
    pub requests: u64,
    /// Request round trips, in µs.
    pub latency: Histogram<u64>,
}

/// A thread posting broadcasts to the HTTP API.
#[derive(Debug)]
pub struct HttpPublisher {
    queue: Option<Sender<String>>,
    thread: Option<JoinHandle<io::Result<PublisherReport>>>,
}

impl HttpPublisher {
    /// Connects to the API at `addr`; each body sent later goes out as
    /// `POST /api/broadcast` with `key` as the bearer key, if any.
    pub fn start(addr: SocketAddr, key: Option<String>) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let (queue, bodies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("http-publisher".into())
            .spawn(move || post_all(stream, key.as_deref(), &bodies))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues one JSON body.
    pub fn publish(&self, body: String) -> io::Result<()> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(body).ok())
            .ok_or_else(|| io::Error::other("the HTTP publisher has stopped"))
    }

    /// Stops after the queued requests and returns what was measured.
    pub fn finish(mut self) -> io::Result<PublisherReport> {
        self.queue.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            _ => Err(io::Error::other("the HTTP publisher panicked")),
        }
    }
}

fn post_all(
    stream: TcpStream,
    key: Option<&str>,
    bodies: &Receiver<String>,
) -> io::Result<PublisherReport> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut report = PublisherReport {
        requests: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
    };
    let auth = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    for body in bodies {
        let started = Instant::now();
        write!(
            writer,
            "POST /api/broadcast HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
             {auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let status = read_response(&mut reader)?;
        if status != 200 {
            return Err(io::Error::other(format!(
                "POST /api/broadcast answered {status}"
            )));
        }
        let _ = report.latency.record(started.elapsed().as_micros() as u64);
        report.requests += 1;
    }
    Ok(report)
}

/// Reads one response with a `Content-Length` body; returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other("the API closed the connection"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(io::Error::other)?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}
