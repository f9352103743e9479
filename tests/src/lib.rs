//! Helpers for herald's integration tests.
//!
//! Every test talks over real loopback sockets, bound to port 0, with read
//! timeouts so that a broken peer fails the test instead of hanging it.

use std::{
    io::{self, Read},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use bytes::BytesMut;
use herald::wire::{Decoder, DecoderConfig, Message, ProtocolError};

/// How long any test read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected pair of loopback TCP streams: `(client, server)`.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// let (mut client, mut server) = herald_tests::tcp_pair().unwrap();
/// client.write_all(b"ping").unwrap();
/// let mut buf = [0; 4];
/// server.read_exact(&mut buf).unwrap();
/// assert_eq!(&buf, b"ping");
/// ```
pub fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for stream in [&client, &server] {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
    }
    Ok((client, server))
}

/// What [`read_messages`] saw before it stopped.
#[derive(Debug)]
pub struct Received {
    /// The messages decoded, in order.
    pub messages: Vec<Message>,
    /// The protocol error that ended decoding, if one did.
    pub error: Option<ProtocolError>,
}

/// Reads from `stream` with herald's decoder until a close message, a
/// protocol error, or the end of the stream.
///
/// Reads land in small chunks (`read_size` bytes at most) so that frames
/// are decoded across many partial reads.
pub fn read_messages(
    stream: &mut TcpStream,
    config: &DecoderConfig,
    read_size: usize,
) -> io::Result<Received> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; read_size.max(1)];
    let mut messages = Vec::new();
    loop {
        loop {
            match decoder.decode(&mut buf, config) {
                Ok(Some(message)) => {
                    let is_close = matches!(message, Message::Close(_));
                    messages.push(message);
                    if is_close {
                        return Ok(Received {
                            messages,
                            error: None,
                        });
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    return Ok(Received {
                        messages,
                        error: Some(err),
                    });
                }
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Received {
                messages,
                error: None,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
