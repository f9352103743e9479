//! `raw-fanout`: the physical floor for fan-out, on raw epoll, with no
//! framework.
//!
//! One thread, edge-triggered epoll. It answers the WebSocket handshake;
//! connections whose request has `subscribe=0` publish, the others
//! subscribe. For every text frame a publisher sends, it builds the server
//! frame once and queues a refcounted copy to every subscriber; after each
//! batch of events, it writes what is pending for each socket with one
//! `writev`. What herald adds on top of this (loops, topics, channels,
//! limits) is what `herald-bench fanout` measures against it.
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
use herald::wire::{FrameHeader, OpCode, apply_mask, server_frame};

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
    output: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    written: usize,
    dirty: bool,
}

/// The epoll instance and what it watches.
struct Floor {
    epoll: RawFd,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    subscribers: Vec<RawFd>,
    dirty: Vec<RawFd>,
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
        dirty: Vec::new(),
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
            for event in &events[..ready] {
                let (fd, flags) = (event.u64 as RawFd, event.events);
                if fd == self.listener.as_raw_fd() {
                    self.accept_all()?;
                    continue;
                }
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.mark_dirty(fd);
                }
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(fd);
                }
            }
            self.flush();
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
                        output: VecDeque::new(),
                        written: 0,
                        dirty: false,
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

    fn mark_dirty(&mut self, fd: RawFd) {
        if let Some(conn) = self.conn(fd)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(fd);
        }
    }

    fn read(&mut self, fd: RawFd) {
        let mut chunk = [0u8; 16 * 1024];
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
            let Some(end) = conn.input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&conn.input[..end + 4]).into_owned();
            let _ = conn.input.split_to(end + 4);
            let Some(key) = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            }) else {
                return self.close(fd);
            };
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            conn.output.push_back(Bytes::from(response));
            let publisher = head
                .lines()
                .next()
                .is_some_and(|line| line.contains("subscribe=0"));
            conn.role = if publisher {
                Role::Publisher
            } else {
                Role::Subscriber
            };
            if !publisher {
                self.subscribers.push(fd);
            }
            self.mark_dirty(fd);
        }
        self.publish_frames(fd);
    }

    /// Turns each complete text frame of a publisher into one server frame
    /// queued to every subscriber; subscribers' input is discarded.
    fn publish_frames(&mut self, fd: RawFd) {
        loop {
            let Some(conn) = self.conn(fd) else {
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
            if header.opcode != OpCode::Text {
                continue;
            }
            let out = server_frame(OpCode::Text, payload);
            for index in 0..self.subscribers.len() {
                let subscriber = self.subscribers[index];
                if let Some(conn) = self.conn(subscriber) {
                    conn.output.push_back(out.clone());
                }
                self.mark_dirty(subscriber);
            }
        }
    }

    /// One `writev` per dirty socket (more only if it took everything and
    /// more than 64 frames wait), until done or `EAGAIN`.
    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &fd in &dirty {
            let Some(conn) = self.conn(fd) else {
                continue;
            };
            conn.dirty = false;
            if write_pending(conn).is_err() {
                self.close(fd);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd).ok().and_then(|i| self.conns.get_mut(i)) {
            // Dropping the stream closes the fd, which leaves the epoll set.
            *slot = None;
        }
        self.subscribers.retain(|&s| s != fd);
        self.dirty.retain(|&d| d != fd);
    }
}

fn write_pending(conn: &mut Conn) -> io::Result<()> {
    while !conn.output.is_empty() {
        let slices: Vec<IoSlice<'_>> = conn
            .output
            .iter()
            .take(64)
            .enumerate()
            .map(|(i, frame)| {
                IoSlice::new(if i == 0 {
                    &frame[conn.written..]
                } else {
                    frame
                })
            })
            .collect();
        let mut written = match conn.stream.write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        while written > 0 {
            let Some(front) = conn.output.front() else {
                break;
            };
            let left = front.len() - conn.written;
            if written < left {
                conn.written += written;
                break;
            }
            written -= left;
            conn.written = 0;
            conn.output.pop_front();
        }
    }
    Ok(())
}
