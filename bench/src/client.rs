//! A minimal, single-threaded WebSocket client for load generation: many
//! connections on one `mio` poll, each a small state machine.
//!
//! It speaks just enough of the protocol to drive a server hard and cheaply:
//! the upgrade request, masked client frames, and unmasked server frames
//! (compressed ones too, with `--deflate`, inflated only as far as it needs).

use std::{
    cell::RefCell,
    collections::HashMap,
    io::{self, ErrorKind, Read, Write},
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress};
use herald::wire::{FrameHeader, OpCode, client_frame};
use mio::{Events, Interest, Poll, Registry, Token, net::TcpStream};
use rustls::ClientConnection;

/// Where a client connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for `101`.
    Upgrading,
    /// Open.
    Open,
    /// Failed or closed.
    Dead,
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    /// Its TLS session, with `--tls`.
    tls: Option<Box<ClientConnection>>,
    /// Its stage.
    pub stage: Stage,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// When the last message was sent (for round-trip timing).
    pub sent_at: Option<Instant>,
}

/// Whether connections offer permessage-deflate (`--deflate`): set once,
/// before any connects.
static OFFER_DEFLATE: AtomicBool = AtomicBool::new(false);

/// Makes every connection from now on offer permessage-deflate in its
/// upgrade request; frames the server compresses (RSV1) are then inflated
/// up to [`PREFIX`] bytes, enough to find a sequence number, and no
/// further.
pub fn offer_deflate(offer: bool) {
    OFFER_DEFLATE.store(offer, Ordering::Relaxed);
}

/// Compressed payloads remembered per thread, by hash: a broadcast reaches
/// every subscriber as the same bytes (no context takeover), so the load
/// generator inflates each message once, not once per subscriber (which
/// would make it, not the server, the bottleneck: reading a message's
/// Huffman tables costs microseconds).
const REMEMBERED: usize = 4096;

/// A thread's inflater for compressed frames' first bytes, and the first
/// bytes of the payloads it inflated lately (by hash).
struct PrefixInflater {
    decompress: Decompress,
    remembered: HashMap<u64, ([u8; PREFIX], usize)>,
}

thread_local! {
    static INFLATER: RefCell<PrefixInflater> = RefCell::new(PrefixInflater {
        decompress: Decompress::new(false),
        remembered: HashMap::new(),
    });
}

/// The first bytes of a compressed message's payload, inflated into `out`
/// (no context takeover: each message on its own); how many.
fn inflate_prefix(compressed: &[u8], out: &mut [u8; PREFIX]) -> usize {
    let key = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(compressed);
    INFLATER.with_borrow_mut(
        |PrefixInflater {
             decompress: inflater,
             remembered,
         }| {
            if let Some((prefix, len)) = remembered.get(&key) {
                *out = *prefix;
                return *len;
            }
            inflater.reset(false);
            // The removed `00 00 ff ff` tail only ends the stream: the first
            // bytes come out without it.
            let len = match inflater.decompress(compressed, out, FlushDecompress::None) {
                Ok(_) => inflater.total_out() as usize,
                Err(_) => 0,
            };
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(key, (*out, len));
            len
        },
    )
}

/// RSV1 in a parsed header: the frame is compressed.
const COMPRESSED: u8 = 0b100;

/// How many leading payload bytes a [`Received`] carries.
pub const PREFIX: usize = 96;

/// A server frame as the client saw it.
#[derive(Debug)]
pub struct Received {
    /// The opcode.
    pub opcode: OpCode,
    /// The payload length.
    pub len: usize,
    /// The first bytes of the payload (zero-padded), where the load
    /// generator finds its sequence numbers.
    pub prefix: [u8; PREFIX],
}

impl Client {
    /// Starts a non-blocking connect and registers the socket.
    pub fn connect(registry: &Registry, addr: SocketAddr, token: Token) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Self {
            stream,
            tls: crate::tls::session(),
            stage: Stage::Connecting,
            read_buf: BytesMut::with_capacity(4096),
            write_buf: BytesMut::new(),
            sent_at: None,
        })
    }

    /// Queues a masked frame and tries to write it.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        client_frame(
            &mut self.write_buf,
            true,
            opcode,
            [0x12, 0x34, 0x56, 0x78],
            payload,
        );
        self.sent_at = Some(Instant::now());
        self.flush()
    }

    /// Writes what is queued until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            if !self.write_buf.is_empty() && self.stage != Stage::Connecting {
                tls.writer().write_all(&self.write_buf)?;
                self.write_buf.clear();
            }
            return send_tls(tls, &mut self.stream);
        }
        while !self.write_buf.is_empty() {
            match self.stream.write(&self.write_buf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.write_buf.advance(n),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Handles a readiness event: finishes the connect, sends the upgrade,
    /// reads the response or frames. Calls `on_frame` for every complete
    /// server frame.
    pub fn on_ready(
        &mut self,
        path: &str,
        mut on_frame: impl FnMut(&mut Self, Received),
    ) -> io::Result<()> {
        if self.stage == Stage::Connecting {
            if let Some(err) = self.stream.take_error()? {
                return Err(err);
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(err) => return Err(err),
            }
            self.stage = Stage::Upgrading;
            self.write_buf.extend_from_slice(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}\r\n",
                    if OFFER_DEFLATE.load(Ordering::Relaxed) {
                        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                    } else {
                        ""
                    }
                )
                .as_bytes(),
            );
        }
        self.flush()?;
        self.read_available()?;
        if self.stage == Stage::Upgrading {
            let Some(end) = find_head_end(&self.read_buf) else {
                return Ok(());
            };
            if !self.read_buf.starts_with(b"HTTP/1.1 101") {
                return Err(io::Error::other(
                    String::from_utf8_lossy(&self.read_buf[..end]).into_owned(),
                ));
            }
            self.read_buf.advance(end);
            self.stage = Stage::Open;
            on_frame(
                self,
                Received {
                    opcode: OpCode::Continuation,
                    len: 0,
                    prefix: [0; PREFIX],
                },
            );
        }
        while self.stage == Stage::Open {
            let Some((header, header_len)) = FrameHeader::parse(&self.read_buf)
                .map_err(|err| io::Error::new(ErrorKind::InvalidData, err))?
            else {
                break;
            };
            let len = header.payload_len as usize;
            if self.read_buf.len() < header_len + len {
                break;
            }
            let mut prefix = [0u8; PREFIX];
            let payload = &self.read_buf[header_len..header_len + len];
            let len = if header.rsv & COMPRESSED != 0 {
                inflate_prefix(payload, &mut prefix)
            } else {
                let shown = len.min(PREFIX);
                prefix[..shown].copy_from_slice(&payload[..shown]);
                len
            };
            self.read_buf
                .advance(header_len + header.payload_len as usize);
            if header.opcode == OpCode::Ping {
                self.send(OpCode::Pong, &[])?;
                continue;
            }
            on_frame(
                self,
                Received {
                    opcode: header.opcode,
                    len,
                    prefix,
                },
            );
        }
        Ok(())
    }

    fn read_available(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        if self.tls.is_some() {
            return self.read_tls(&mut chunk);
        }
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.stage = Stage::Dead;
                    return Ok(());
                }
                Ok(n) => {
                    self.read_buf.extend_from_slice(&chunk[..n]);
                    // A short read emptied the socket; the next arrival
                    // raises a new edge (a FIN too: its read returns 0).
                    if n < chunk.len() {
                        return Ok(());
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

impl Client {
    /// Reads and decrypts what arrived into the read buffer.
    fn read_tls(&mut self, chunk: &mut [u8]) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    self.stage = Stage::Dead;
                    return Ok(());
                }
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
            tls.process_new_packets()
                .map_err(|err| io::Error::new(ErrorKind::InvalidData, err))?;
            loop {
                match tls.reader().read(chunk) {
                    Ok(0) => {
                        self.stage = Stage::Dead;
                        return Ok(());
                    }
                    Ok(n) => self.read_buf.extend_from_slice(&chunk[..n]),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => return Err(err),
                }
            }
        }
        // The handshake (and the request queued behind it) may have
        // records to send now.
        send_tls(tls, &mut self.stream)
    }
}

/// Sends a session's records until done or `WouldBlock`.
fn send_tls(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A thread's read buffer, shared by all its receiving connections: a
/// receiver reads straight into it and parses frames in place, so a
/// delivery costs no copy, no allocation and no per-connection buffer.
#[derive(Debug)]
pub struct Scratch {
    buf: Box<[u8]>,
}

impl Scratch {
    /// The size of one read.
    const SIZE: usize = 256 * 1024;

    /// A zeroed buffer (once, not per read).
    pub fn new() -> Self {
        Self {
            buf: vec![0; Self::SIZE].into_boxed_slice(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// Handles a readiness event of a connection that only receives, the
    /// cheap way once it is open: one `read` into `scratch` (after the bytes
    /// of a frame left incomplete last time), every complete frame's
    /// opcode and payload handed to `on_frame` as borrowed slices, pings
    /// answered; only an incomplete frame's bytes are kept. Before it is
    /// open, as [`on_ready`](Self::on_ready).
    pub fn receive_into(
        &mut self,
        path: &str,
        scratch: &mut Scratch,
        mut on_frame: impl FnMut(OpCode, &[u8]),
    ) -> io::Result<()> {
        if self.stage != Stage::Open
            || self.tls.is_some()
            || self.read_buf.len() > Scratch::SIZE / 2
        {
            return self.on_ready(path, |_, frame| {
                on_frame(frame.opcode, &frame.prefix[..frame.len.min(PREFIX)]);
            });
        }
        self.flush()?;
        let kept = self.read_buf.len();
        scratch.buf[..kept].copy_from_slice(&self.read_buf);
        self.read_buf.clear();
        let read = loop {
            match self.stream.read(&mut scratch.buf[kept..]) {
                Ok(0) => {
                    self.stage = Stage::Dead;
                    return Ok(());
                }
                Ok(n) => break n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break 0,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        };
        let filled = kept + read;
        let mut at = 0;
        let mut pings = 0;
        while let Some((header, header_len)) = FrameHeader::parse(&scratch.buf[at..filled])
            .map_err(|err| io::Error::new(ErrorKind::InvalidData, err))?
        {
            let end = at + header_len + header.payload_len as usize;
            if end > filled {
                break;
            }
            let payload = &scratch.buf[at + header_len..end];
            match header.opcode {
                OpCode::Ping => pings += 1,
                opcode if header.rsv & COMPRESSED != 0 => {
                    let mut prefix = [0u8; PREFIX];
                    let shown = inflate_prefix(payload, &mut prefix);
                    on_frame(opcode, &prefix[..shown]);
                }
                opcode => on_frame(opcode, payload),
            }
            at = end;
        }
        self.read_buf.extend_from_slice(&scratch.buf[at..filled]);
        for _ in 0..pings {
            self.send(OpCode::Pong, &[])?;
        }
        // A full buffer may have left more in the socket, and edge-triggered
        // readiness will not say so again.
        if read == scratch.buf.len() - kept {
            return self.receive_into(path, scratch, on_frame);
        }
        Ok(())
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Runs `poll` until `deadline`, handing every event to `on_event`, and
/// returns early after a batch of events when `on_event` has asked to stop
/// (every event of the batch is still handled: readiness is edge-triggered
/// and would not be reported again).
pub fn drive(
    poll: &mut Poll,
    deadline: Instant,
    mut on_event: impl FnMut(Token) -> bool,
) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(left.min(Duration::from_millis(50)))) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        let mut keep_going = true;
        for event in events.iter() {
            keep_going &= on_event(event.token());
        }
        if !keep_going {
            return Ok(());
        }
    }
    Ok(())
}

/// As [`drive`], waking at least every `tick`: `on_wake` gets each event's
/// token, then `None` after every batch and every timeout, for senders on
/// a fixed schedule. Stops early when it returns `false`.
pub fn drive_paced(
    poll: &mut Poll,
    deadline: Instant,
    tick: Duration,
    mut on_wake: impl FnMut(Option<Token>) -> bool,
) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(left.min(tick))) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        let mut keep_going = true;
        for event in events.iter() {
            keep_going &= on_wake(Some(event.token()));
        }
        if !keep_going || !on_wake(None) {
            return Ok(());
        }
    }
    Ok(())
}
