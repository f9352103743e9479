//! The upgrade request as the application sees it.
//!
//! The request head stays in the `Bytes` it was read into; the request keeps
//! ranges into it, so looking at a path, header or cookie copies nothing and
//! the whole request costs one small vector of ranges.

use std::{borrow::Cow, fmt, net::SocketAddr, ops::Range};

use bytes::Bytes;

/// An HTTP/1.1 WebSocket upgrade request, as passed to
/// [`Handler::on_connect`](crate::Handler::on_connect).
///
/// # Examples
///
/// ```
/// use herald::Request;
///
/// let request = Request::parse_for_test(
///     "GET /socket/websocket?token=abc&vsn=2.0.0 HTTP/1.1\r\n\
///      Host: example\r\n\
///      Cookie: session=s1; theme=dark\r\n\
///      Sec-WebSocket-Protocol: phoenix, chat\r\n\r\n",
/// );
/// assert_eq!(request.path(), "/socket/websocket");
/// assert_eq!(request.query_param("vsn").as_deref(), Some("2.0.0"));
/// assert_eq!(request.header("host"), Some(&b"example"[..]));
/// assert_eq!(request.cookie("theme"), Some("dark"));
/// assert_eq!(request.subprotocols().collect::<Vec<_>>(), ["phoenix", "chat"]);
/// ```
#[derive(Clone)]
pub struct Request {
    head: Bytes,
    method: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    peer: SocketAddr,
}

impl Request {
    pub(crate) fn new(
        head: Bytes,
        method: Range<usize>,
        target: Range<usize>,
        headers: Vec<(Range<usize>, Range<usize>)>,
        peer: SocketAddr,
    ) -> Self {
        let (path, query) = match head[target.clone()].iter().position(|&b| b == b'?') {
            Some(at) => (
                target.start..target.start + at,
                Some(target.start + at + 1..target.end),
            ),
            None => (target, None),
        };
        Self {
            head,
            method,
            path,
            query,
            headers,
            peer,
        }
    }

    /// Parses a complete request head, for examples and tests. The peer
    /// address is `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// If `head` is not a complete, well-formed HTTP/1.x request head.
    #[doc(hidden)]
    pub fn parse_for_test(head: &str) -> Self {
        let bytes = Bytes::copy_from_slice(head.as_bytes());
        match super::parse_head(&bytes, usize::MAX) {
            Ok(Some(parsed)) => parsed.into_request(bytes, SocketAddr::from(([127, 0, 0, 1], 0))),
            other => panic!("not a complete request head: {other:?}"),
        }
    }

    fn text(&self, range: &Range<usize>) -> &str {
        // Method, path and header names were checked by httparse to be
        // tokens or visible ASCII, so this never falls back in practice.
        std::str::from_utf8(&self.head[range.clone()]).unwrap_or("")
    }

    /// The request method (`GET` for every request that reaches the
    /// application).
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The path, without the query string, as sent (not percent-decoded).
    pub fn path(&self) -> &str {
        self.text(&self.path)
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|range| self.text(range))
    }

    /// The query parameters, percent-decoded, in order.
    pub fn query_params(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(self.query().unwrap_or("").as_bytes())
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.query_params()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Every header, names as sent, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (self.text(name), &self.head[value.clone()]))
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The value of the first header called `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every value of the headers called `name`, split on commas and
    /// trimmed (for list headers such as `Connection`).
    pub fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|token| !token.is_empty())
    }

    /// The cookies of every `Cookie` header, as `(name, value)` pairs.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers()
            .filter(|(key, _)| key.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                Some((name.trim(), value.trim().trim_matches('"')))
            })
    }

    /// The value of the cookie called `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The subprotocols the client offers in `Sec-WebSocket-Protocol`, in
    /// its order of preference.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        self.header_tokens("sec-websocket-protocol")
    }

    /// The address of the peer (the proxy's, behind a reverse proxy: see
    /// its `X-Forwarded-For` header).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("peer", &self.peer)
            .field("headers", &self.headers.len())
            .finish()
    }
}
