//! The HTTP/1.1 upgrade handshake (RFC 6455 section 4.2), sans I/O.
//!
//! The reactor feeds the bytes it has read; this module finds the end of the
//! request head, parses it with `httparse`, checks it, and builds the
//! response bytes. Nothing here touches a socket, so every status code is
//! tested without one.
//!
//! Checks run in a fixed order, and the first failure decides the status:
//!
//! | check | status |
//! | --- | --- |
//! | head larger than the limit (default 8 KiB), or more than 64 headers | 431 |
//! | not parseable as HTTP/1.x (as soon as the bytes received so far cannot begin a request) | 400 |
//! | method other than `GET` | 405 |
//! | `GET /healthz` | 200 |
//! | path that no endpoint serves | 404 |
//! | not HTTP/1.1, no `Host`, no `Upgrade: websocket` or `Connection: upgrade`, no `Sec-WebSocket-Version`, a missing, repeated or bad `Sec-WebSocket-Key` | 400 |
//! | `Sec-WebSocket-Version` other than 13 | 426, with `Sec-WebSocket-Version: 13` |
//! | connection limit reached | 503 |
//! | connection rate of the source address, or overall, exceeded (checked at accept, before the head is read) | 429, or 503, with `Retry-After` |
//! | refused by the application's `on_connect` | its status |

mod extensions;
mod request;
mod response;

use std::{net::SocketAddr, ops::Range};

use bytes::Bytes;

pub(crate) use extensions::negotiate_deflate;
pub use request::Request;
pub(crate) use response::{error_response, health_response, static_response, switching_protocols};

/// The path that answers `200 OK` for load balancers' health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// The most headers a request may carry; more is answered with 431.
const MAX_HEADERS: usize = 64;

/// Why an upgrade request was refused, and the HTTP status it was answered
/// with ([`status`](Self::status)).
///
/// # Examples
///
/// ```
/// use herald::HandshakeError;
///
/// assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
/// assert_eq!(HandshakeError::HeadTooLarge { limit: 8192 }.status(), 431);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The request head exceeded the limit, or had more than 64 headers.
    /// Status 431.
    #[error("request head exceeds {limit} bytes or 64 headers")]
    HeadTooLarge {
        /// The configured head limit.
        limit: usize,
    },
    /// Not an HTTP/1.x request. Status 400.
    #[error("malformed HTTP request")]
    Malformed,
    /// A method other than `GET`. Status 405, with `Allow: GET`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No endpoint serves the path. Status 404.
    #[error("no WebSocket endpoint at this path")]
    NotFound,
    /// HTTP/1.0: the upgrade needs HTTP/1.1. Status 400.
    #[error("WebSocket upgrades need HTTP/1.1")]
    HttpVersion,
    /// No `Host` header. Status 400.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade: websocket` or `Connection: upgrade` is missing. Status 400.
    #[error("not a WebSocket upgrade request")]
    NotAnUpgrade,
    /// No `Sec-WebSocket-Version` header. Status 400.
    #[error("missing Sec-WebSocket-Version header")]
    MissingVersion,
    /// A `Sec-WebSocket-Version` other than 13. Status 426, with
    /// `Sec-WebSocket-Version: 13` so the client can retry.
    #[error("unsupported WebSocket version")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, sent twice, or not the base64 of 16
    /// bytes. Status 400.
    #[error("missing, repeated or malformed Sec-WebSocket-Key")]
    InvalidKey,
    /// The server is at its connection limit. Status 503.
    #[error("server at its connection limit")]
    Overloaded,
    /// This address opens connections faster than the server allows.
    /// Status 429, with `Retry-After`.
    #[error("too many connections from this address; retry in {retry_after} s")]
    RateLimited {
        /// Seconds until a connection would be taken.
        retry_after: u32,
    },
    /// The server as a whole is taking connections as fast as it allows.
    /// Status 503, with `Retry-After`.
    #[error("server busy with new connections; retry in {retry_after} s")]
    Busy {
        /// Seconds until a connection would be taken.
        retry_after: u32,
    },
    /// The application's `on_connect` refused the connection with this
    /// status and, perhaps, a reason.
    #[error("{}", reason.as_deref().unwrap_or("refused by the application"))]
    Rejected {
        /// The status the application chose.
        status: u16,
        /// Why, as the application said it.
        reason: Option<Box<str>>,
    },
}

impl HandshakeError {
    /// The HTTP status the request is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge { .. } => 431,
            Self::MethodNotAllowed => 405,
            Self::NotFound => 404,
            Self::UnsupportedVersion => 426,
            Self::Overloaded | Self::Busy { .. } => 503,
            Self::RateLimited { .. } => 429,
            Self::Rejected { status, .. } => *status,
            Self::Malformed
            | Self::HttpVersion
            | Self::MissingHost
            | Self::NotAnUpgrade
            | Self::MissingVersion
            | Self::InvalidKey => 400,
        }
    }
}

/// Where the request head ends (just past the blank line), searching from
/// `from` so that a head arriving a byte at a time is scanned once, not
/// once per byte.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// A request head parsed into ranges of the buffer it was read into.
#[derive(Debug)]
pub(crate) struct ParsedHead {
    pub(crate) len: usize,
    /// The `x` of `HTTP/1.x`.
    pub(crate) http_minor: u8,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl ParsedHead {
    pub(crate) fn into_request(self, head: Bytes, peer: SocketAddr) -> Request {
        Request::new(head, self.method, self.target, self.headers, peer)
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete and within `max_len`.
pub(crate) fn parse_head(buf: &[u8], max_len: usize) -> Result<Option<ParsedHead>, HandshakeError> {
    let too_large = HandshakeError::HeadTooLarge { limit: max_len };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_len => len,
        Ok(httparse::Status::Complete(_)) => return Err(too_large),
        Ok(httparse::Status::Partial) if buf.len() < max_len => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large);
        }
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let base = buf.as_ptr() as usize;
    let range_of = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let (Some(method), Some(target), Some(http_minor)) =
        (request.method, request.path, request.version)
    else {
        return Err(HandshakeError::Malformed);
    };
    let headers = request
        .headers
        .iter()
        .map(|header| (range_of(header.name.as_bytes()), range_of(header.value)))
        .collect();
    Ok(Some(ParsedHead {
        len,
        method: range_of(method.as_bytes()),
        target: range_of(target.as_bytes()),
        http_minor,
        headers,
    }))
}

/// What a parsed request asks for, once routing is done.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /healthz`.
    Health,
    /// A plain `GET` of a static file (by index).
    Static(usize),
    /// A WebSocket upgrade on a served path.
    Upgrade,
}

/// Checks the method and the path: `serves` says whether an endpoint is
/// mounted at a path, `static_file` which static file a plain `GET` of a
/// path asks for.
pub(crate) fn route(
    request: &Request,
    serves: impl Fn(&str) -> bool,
    static_file: impl Fn(&str) -> Option<usize>,
) -> Result<Route, HandshakeError> {
    if request.method() != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if request.path() == HEALTH_PATH {
        return Ok(Route::Health);
    }
    let is_upgrade = request
        .header_tokens("upgrade")
        .any(|token| token.eq_ignore_ascii_case("websocket"));
    if !is_upgrade && let Some(index) = static_file(request.path()) {
        return Ok(Route::Static(index));
    }
    if !serves(request.path()) {
        return Err(HandshakeError::NotFound);
    }
    Ok(Route::Upgrade)
}

/// Checks the upgrade headers (RFC 6455 section 4.2.1) and returns the
/// client's `Sec-WebSocket-Key` (24 base64 characters).
pub(crate) fn check_upgrade(request: &Request, http_minor: u8) -> Result<[u8; 24], HandshakeError> {
    if http_minor != 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if request.header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    let has_token = |name, token: &str| {
        request
            .header_tokens(name)
            .any(|value| value.eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotAnUpgrade);
    }
    match request
        .header("sec-websocket-version")
        .map(<[u8]>::trim_ascii)
    {
        None => return Err(HandshakeError::MissingVersion),
        Some(b"13") => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
    }
    // RFC 6455 section 11.3.1: the key MUST NOT appear more than once.
    let mut keys = request
        .headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"));
    let (Some((_, key)), None) = (keys.next(), keys.next()) else {
        return Err(HandshakeError::InvalidKey);
    };
    let key = key.trim_ascii();
    match <[u8; 24]>::try_from(key) {
        Ok(key) if is_base64_of_16_bytes(&key) => Ok(key),
        _ => Err(HandshakeError::InvalidKey),
    }
}

/// 16 bytes in base64 are 22 significant characters and `==`.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

#[cfg(test)]
mod tests;
