//! Response bytes for the handshake: `101 Switching Protocols`, the error
//! statuses, and the health check.

use bytes::{BufMut, Bytes, BytesMut};

use super::HandshakeError;

/// The `101 Switching Protocols` response for a client key, echoing the
/// subprotocol the application chose, if any, and naming the extensions
/// negotiated, if any.
pub(crate) fn switching_protocols(
    key: &[u8],
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> Bytes {
    let accept = tungstenite::handshake::derive_accept_key(key);
    let mut response = BytesMut::with_capacity(160);
    response.put_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    response.put_slice(accept.as_bytes());
    if let Some(protocol) = subprotocol {
        response.put_slice(b"\r\nSec-WebSocket-Protocol: ");
        response.put_slice(protocol.as_bytes());
    }
    if let Some(extensions) = extensions {
        response.put_slice(b"\r\nSec-WebSocket-Extensions: ");
        response.put_slice(extensions.as_bytes());
    }
    response.put_slice(b"\r\n\r\n");
    response.freeze()
}

/// The response to a refused request: its status, a one-line text body
/// saying why, and `Connection: close`.
pub(crate) fn error_response(error: &HandshakeError) -> Bytes {
    let status = error.status();
    let body = format!("{error}\n");
    let mut extra = String::new();
    match error {
        HandshakeError::UnsupportedVersion => extra.push_str("Sec-WebSocket-Version: 13\r\n"),
        HandshakeError::MethodNotAllowed => extra.push_str("Allow: GET\r\n"),
        HandshakeError::RateLimited { retry_after } | HandshakeError::Busy { retry_after } => {
            extra.push_str(&format!("Retry-After: {retry_after}\r\n"));
        }
        _ => {}
    }
    Bytes::from(format!(
        "HTTP/1.1 {status} {}\r\n\
         Connection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         {extra}\r\n\
         {body}",
        reason_phrase(status),
        body.len(),
    ))
}

/// `200 OK` for `GET /healthz`.
pub(crate) fn health_response() -> Bytes {
    Bytes::from_static(
        b"HTTP/1.1 200 OK\r\n\
          Connection: close\r\n\
          Content-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 3\r\n\r\n\
          ok\n",
    )
}

/// `200 OK` with a static document.
pub(crate) fn static_response(content_type: &str, body: &[u8]) -> Bytes {
    let mut response = BytesMut::with_capacity(128 + body.len());
    response.put_slice(
        format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    response.put_slice(body);
    response.freeze()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Refused",
    }
}
