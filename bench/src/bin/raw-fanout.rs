//! `raw-fanout`: the floor for fan-out on this kernel, on raw epoll, with
//! no framework: what the best hand-written server does, to measure herald
//! against.
//!
//! One thread, edge-triggered epoll. It answers the WebSocket handshake;
//! connections whose request has `subscribe=0` publish, the others
//! subscribe. Every text message read in one `epoll_wait` round is framed
//! once and appended to ONE contiguous batch; after the round, the batch
//! goes to every subscriber with one `send` each. A subscriber whose socket
//! is full is parked with a cursor into a shared log of batches and catches
//! up with one `writev` over everything it missed when it becomes
//! writable. No per-subscriber copy, no allocation per delivery; the log
//! keeps batches only while a parked subscriber still needs them.
//!
//! Usage: `raw-fanout [--port PORT]` (default 9009). Prints `listening on
//! ADDR` when ready.

use std::{
    collections::VecDeque,
    io::{self, ErrorKind, IoSlice, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
};

use bytes::{Bytes, BytesMut};
use herald::wire::{FrameHeader, OpCode, apply_mask, server_header};

/// What a connection is.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Handshaking,
    Subscriber,
    Publisher,
}

/// One connection.
struct Conn {
    stream: TcpStream,
    role: Role,
    input: BytesMut,
    /// The handshake response still to write.
    response: Option<Bytes>,
    /// For a subscriber: the log offset up to which it has been sent
    /// everything.
    cursor: u64,
}

/// The batches sent so far that a parked subscriber may still need, each
/// with its offset in the stream every subscriber reads.
#[derive(Default)]
struct Log {
    batches: VecDeque<(u64, Bytes)>,
    /// The offset just past the last batch.
    end: u64,
}

impl Log {
    fn append(&mut self, batch: Bytes) -> u64 {
        let start = self.end;
        self.end += batch.len() as u64;
        self.batches.push_back((start, batch));
        start
    }

    /// Forgets the batches every subscriber is past.
    fn trim(&mut self, oldest_cursor: u64) {
        while let Some((start, batch)) = self.batches.front() {
            if start + batch.len() as u64 > oldest_cursor {
                break;
            }
            self.batches.pop_front();
        }
    }

    /// Up to 64 slices of what follows `cursor`.
    fn slices_from(&self, cursor: u64) -> Vec<IoSlice<'_>> {
        self.batches
            .iter()
            .filter(|(start, batch)| start + batch.len() as u64 > cursor)
            .take(64)
            .map(|(start, batch)| {
                let skip = cursor.saturating_sub(*start) as usize;
                IoSlice::new(&batch[skip..])
            })
            .collect()
    }
}

/// The epoll instance and what it watches.
struct Floor {
    epoll: RawFd,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    subscribers: Vec<RawFd>,
    /// Subscribers behind the log's end, waiting to be writable.
    parked: Vec<RawFd>,
    log: Log,
    /// This round's messages, framed and joined.
    batch: BytesMut,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 9009u16;
    while let Some(arg) = args.next() {
        if arg == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port);
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 takes no pointers; the result is checked below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut floor = Floor {
        epoll,
        listener,
        conns: Vec::new(),
        subscribers: Vec::new(),
        parked: Vec::new(),
        log: Log::default(),
        batch: BytesMut::new(),
    };
    floor.watch(floor.listener.as_raw_fd(), libc::EPOLLIN as u32)?;
    println!("listening on {}", floor.listener.local_addr()?);
    io::stdout().flush()?;
    floor.run()
}

impl Floor {
    fn watch(&self, fd: RawFd, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the
        // call, and `fd` is an open descriptor owned by this process.
        let result = unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            // SAFETY: `events` has room for `events.len()` entries, which
            // is what epoll_wait is told it may write.
            let ready = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1)
            };
            let Ok(ready) = usize::try_from(ready) else {
                let err = io::Error::last_os_error();
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            };
            let mut writable = Vec::new();
            for event in &events[..ready] {
                let (fd, flags) = (event.u64 as RawFd, event.events);
                if fd == self.listener.as_raw_fd() {
                    self.accept_all()?;
                    continue;
                }
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(fd);
                }
                if flags & libc::EPOLLOUT as u32 != 0 {
                    writable.push(fd);
                }
            }
            for fd in writable {
                self.write_pending(fd);
            }
            self.send_batch();
        }
    }

    fn accept_all(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let fd = stream.as_raw_fd();
                    self.watch(fd, (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32)?;
                    let slot = usize::try_from(fd).unwrap_or_default();
                    if self.conns.len() <= slot {
                        self.conns.resize_with(slot + 1, || None);
                    }
                    self.conns[slot] = Some(Conn {
                        stream,
                        role: Role::Handshaking,
                        input: BytesMut::new(),
                        response: None,
                        cursor: 0,
                    });
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    eprintln!("raw-fanout: accept failed: {err}");
                    return Ok(());
                }
            }
        }
    }

    fn conn(&mut self, fd: RawFd) -> Option<&mut Conn> {
        self.conns.get_mut(usize::try_from(fd).ok()?)?.as_mut()
    }

    fn read(&mut self, fd: RawFd) {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let Some(conn) = self.conn(fd) else {
                return;
            };
            match conn.stream.read(&mut chunk) {
                Ok(0) => return self.close(fd),
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close(fd),
            }
        }
        self.process(fd);
    }

    fn process(&mut self, fd: RawFd) {
        let Some(conn) = self.conn(fd) else {
            return;
        };
        if conn.role == Role::Handshaking {
            if !self.handshake(fd) {
                return;
            }
            // The socket may have reported writable before the request came
            // (edge-triggered): answer now.
            self.write_pending(fd);
        }
        self.frame_messages(fd);
    }

    /// Answers a complete request head; `false` while it is incomplete.
    fn handshake(&mut self, fd: RawFd) -> bool {
        let log_end = self.log.end;
        let Some(conn) = self.conn(fd) else {
            return false;
        };
        let Some(end) = conn.input.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&conn.input[..end + 4]).into_owned();
        let _ = conn.input.split_to(end + 4);
        let Some(key) = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        }) else {
            self.close(fd);
            return false;
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        conn.response = Some(Bytes::from(response));
        let publisher = head
            .lines()
            .next()
            .is_some_and(|line| line.contains("subscribe=0"));
        conn.role = if publisher {
            Role::Publisher
        } else {
            Role::Subscriber
        };
        // A new subscriber starts at the log's end, behind its response.
        conn.cursor = log_end;
        if !publisher {
            self.subscribers.push(fd);
        }
        self.parked.push(fd);
        true
    }

    /// Appends each complete text message of a publisher, framed, to the
    /// round's batch; subscribers' input is discarded.
    fn frame_messages(&mut self, fd: RawFd) {
        loop {
            let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
                return;
            };
            if conn.role != Role::Publisher {
                conn.input.clear();
                return;
            }
            let Ok(Some((header, header_len))) = FrameHeader::parse(&conn.input) else {
                return;
            };
            let len = header.payload_len as usize;
            if conn.input.len() < header_len + len {
                return;
            }
            let mut frame = conn.input.split_to(header_len + len);
            let payload = &mut frame[header_len..];
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            if header.opcode == OpCode::Text {
                let framing = server_header(OpCode::Text, payload.len());
                self.batch.extend_from_slice(framing.as_bytes());
                self.batch.extend_from_slice(payload);
            }
        }
    }

    /// Sends the round's batch to every subscriber that is up to date, one
    /// `send` each; the others catch up when writable.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = self.batch.split().freeze();
        let start = self.log.append(batch.clone());
        let mut failed = Vec::new();
        for &fd in &self.subscribers {
            let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
                continue;
            };
            if conn.cursor != start || conn.response.is_some() {
                continue; // parked: it catches up from the log
            }
            match conn.stream.write(&batch) {
                Ok(n) => {
                    conn.cursor += n as u64;
                    if n < batch.len() {
                        self.parked.push(fd);
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => self.parked.push(fd),
                Err(_) => failed.push(fd),
            }
        }
        for fd in failed {
            self.close(fd);
        }
        self.trim_log();
    }

    /// Writes a parked connection's response and everything it missed.
    fn write_pending(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Some(response) = &mut conn.response {
            match conn.stream.write(response) {
                Ok(n) if n == response.len() => conn.response = None,
                Ok(n) => {
                    let _ = response.split_to(n);
                    return;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.close(fd),
            }
        }
        while conn.role == Role::Subscriber && conn.cursor < self.log.end {
            let slices = self.log.slices_from(conn.cursor);
            match conn.stream.write_vectored(&slices) {
                Ok(0) => return self.close(fd),
                Ok(n) => conn.cursor += n as u64,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close(fd),
            }
        }
        self.parked.retain(|&parked| parked != fd);
    }

    /// Forgets the batches no parked subscriber needs any more.
    fn trim_log(&mut self) {
        let conns = &self.conns;
        let oldest = self
            .parked
            .iter()
            .filter_map(|&fd| conns.get(fd as usize)?.as_ref())
            .filter(|conn| conn.role == Role::Subscriber)
            .map(|conn| conn.cursor)
            .min()
            .unwrap_or(self.log.end);
        self.log.trim(oldest);
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd).ok().and_then(|i| self.conns.get_mut(i)) {
            // Dropping the stream closes the fd, which leaves the epoll set.
            *slot = None;
        }
        self.subscribers.retain(|&s| s != fd);
        self.parked.retain(|&p| p != fd);
    }
}
