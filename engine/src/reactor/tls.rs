//! TLS in the event loop, with rustls: a connection's bytes go through its
//! TLS session on the loop that owns it, with the same turn structure as
//! cleartext.
//!
//! Reading decrypts into the connection's read buffer, so the handshake
//! and frame code above see plaintext as from a plain socket. Writing hands
//! the whole queue to the session in one vectored write (rustls packs it
//! into records of up to 16 KiB) and sends the records with vectored
//! writes until the socket would block; at most [`BUFFERED`] bytes of
//! records wait inside the session, so the outbox keeps the rest and the
//! slow-consumer rules apply as in cleartext. The TLS handshake runs while
//! the connection waits for its request head, so the handshake timeout
//! bounds both; a peer that sends what is not TLS gets an alert and loses
//! its connection, and no other.

use std::{
    io::{self, ErrorKind, IoSlice, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::BytesMut;
use mio::net::TcpStream;
use rustls::{
    ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The most bytes of encrypted records a session holds for the socket.
const BUFFERED: usize = 64 * 1024;

/// A certificate chain and key to serve `wss://` with
/// ([`ServerBuilder::tls`](crate::ServerBuilder::tls)).
///
/// # Examples
///
/// ```no_run
/// use herald::{Server, TlsConfig};
///
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let server = Server::builder().tls(tls);
/// # Ok::<(), herald::TlsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub(crate) config: Arc<rustls::ServerConfig>,
}

/// Why a [`TlsConfig`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate or key (a key that does not match, an
    /// unsupported key type).
    #[error("certificate or key refused: {0}")]
    Refused(#[from] rustls::Error),
}

impl TlsConfig {
    /// The certificate chain (leaf first) and private key in PEM files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let pem_error = |path: &Path, err: &dyn std::fmt::Display| TlsError::Pem {
            path: path.to_owned(),
            reason: err.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|err| pem_error(cert, &err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| pem_error(cert, &err))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert.to_owned()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|err| pem_error(key, &err))?;
        Self::from_der(chain, key)
    }

    /// A certificate chain (leaf first) and private key, DER-encoded.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// A rustls configuration built by the application (client
    /// certificates, resumption, ALPN...). HTTP/1.1 is what it must serve.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        Self { config }
    }
}

/// One connection's TLS session.
#[derive(Debug)]
pub(crate) struct TlsSession {
    session: Box<ServerConnection>,
    /// The close_notify is queued and the FIN waits for it to be sent.
    pending_fin: bool,
}

impl TlsSession {
    pub(crate) fn new(config: &Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let mut session = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        session.set_buffer_limit(Some(BUFFERED));
        Ok(Self {
            session: Box::new(session),
            pending_fin: false,
        })
    }

    /// Whether the TLS handshake is still under way (plaintext written now
    /// waits for it).
    pub(crate) fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Ends the TLS stream: queues close_notify and sends it. `true` if it
    /// went out, so the FIN may follow now; otherwise the FIN waits
    /// ([`take_pending_fin`](Self::take_pending_fin)).
    pub(crate) fn end(&mut self, socket: &TcpStream) -> bool {
        self.session.send_close_notify();
        let sent = matches!(self.send(socket), Ok(true));
        self.pending_fin = !sent;
        sent
    }

    /// Whether a FIN was waiting for the session's last records (now
    /// sent); clears it.
    pub(crate) fn take_pending_fin(&mut self) -> bool {
        std::mem::take(&mut self.pending_fin)
    }

    /// Reads from `socket` and decrypts, appending at most `max` bytes of
    /// plaintext to `buf`: how many (0: the peer closed, by `close_notify`
    /// or TCP). `WouldBlock` when nothing more can be read for now (the
    /// handshake may then have records to send: see
    /// [`wants_write`](Self::wants_write)).
    pub(crate) fn recv_into(
        &mut self,
        socket: &TcpStream,
        buf: &mut BytesMut,
        max: usize,
    ) -> io::Result<usize> {
        loop {
            let start = buf.len();
            buf.resize(start + max, 0);
            let read = self.session.reader().read(&mut buf[start..]);
            buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            if self.session.read_tls(&mut SocketIo(socket))? == 0 {
                return Ok(0);
            }
            if let Err(err) = self.session.process_new_packets() {
                // Tell the peer why (an alert), then drop the connection.
                let _ = self.send(socket);
                return Err(io::Error::new(ErrorKind::InvalidData, err));
            }
        }
    }

    /// Whether encrypted records wait to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Sends waiting records until none is left (`Ok(true)`) or the socket
    /// would block (`Ok(false)`).
    pub(crate) fn send(&mut self, socket: &TcpStream) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut SocketIo(socket)) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// A writer of plaintext into this session, sending records to
    /// `socket` as it goes.
    pub(crate) fn writer<'a>(&'a mut self, socket: &'a TcpStream) -> TlsWriter<'a> {
        TlsWriter {
            session: self,
            socket,
        }
    }
}

/// Plaintext in, records out (see the module docs).
pub(crate) struct TlsWriter<'a> {
    session: &'a mut TlsSession,
    socket: &'a TcpStream,
}

impl Write for TlsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let offered: usize = bufs.iter().map(|buf| buf.len()).sum();
        let mut taken = self.session.session.writer().write_vectored(bufs)?;
        if taken == 0 && offered > 0 {
            // The session is full: make room by sending, then try again.
            if !self.session.send(self.socket)? {
                return Err(ErrorKind::WouldBlock.into());
            }
            taken = self.session.session.writer().write_vectored(bufs)?;
        }
        // Records go out now; those the socket does not take wait in the
        // session (within its limit) for the next writable event.
        self.session.send(self.socket)?;
        if taken == 0 && offered > 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.send(self.socket).map(|_| ())
    }
}

/// The socket as `Read` and `Write` for rustls, by shared reference (mio's
/// `TcpStream` implements both for `&TcpStream`).
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&mut &*self.0).read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&mut &*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
