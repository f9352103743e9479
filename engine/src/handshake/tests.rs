//! Handshake tests without sockets: each check and the status it maps to.

use std::net::SocketAddr;

use bytes::Bytes;

use super::*;

const GOOD: &str = "GET /ws?room=1 HTTP/1.1\r\n\
    Host: localhost\r\n\
    Upgrade: websocket\r\n\
    Connection: keep-alive, Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5555))
}

/// Runs the whole check sequence that the reactor runs, up to the
/// connection limit and the application.
fn outcome(head: &str) -> Result<Route, HandshakeError> {
    let parsed = parse_head(head.as_bytes(), 8192)?.expect("complete head");
    let http_minor = parsed.http_minor;
    let request = parsed.into_request(Bytes::copy_from_slice(head.as_bytes()), peer());
    let route = route(
        &request,
        |path| path == "/ws",
        |path| (path == "/").then_some(0),
    )?;
    if route == Route::Upgrade {
        check_upgrade(&request, http_minor)?;
    }
    Ok(route)
}

#[test]
fn a_valid_upgrade_is_accepted() {
    assert_eq!(outcome(GOOD), Ok(Route::Upgrade));
}

#[test]
fn accept_key_follows_rfc_6455_example() {
    let response = switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat"), None);
    let text = std::str::from_utf8(&response).unwrap();
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
    assert!(text.ends_with("\r\n\r\n"));
}

#[test]
fn methods_other_than_get_get_405() {
    let head = GOOD.replacen("GET", "POST", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::MethodNotAllowed));
    let response = error_response(&HandshakeError::MethodNotAllowed);
    assert!(response.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(
        std::str::from_utf8(&response)
            .unwrap()
            .contains("Allow: GET\r\n")
    );
}

#[test]
fn health_path_answers_200() {
    assert_eq!(
        outcome("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ok(Route::Health)
    );
    assert!(health_response().starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[test]
fn plain_gets_of_static_files_are_served_and_upgrades_are_not() {
    assert_eq!(
        outcome("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ok(Route::Static(0))
    );
    // An upgrade request to a static path is not a document request.
    assert_eq!(
        outcome(&GOOD.replacen("/ws", "/", 1)),
        Err(HandshakeError::NotFound)
    );
    let response = static_response("text/plain", b"hi");
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(response.ends_with(b"Content-Length: 2\r\n\r\nhi"));
}

#[test]
fn unknown_paths_get_404() {
    let head = GOOD.replacen("/ws", "/nope", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::NotFound));
}

#[test]
fn http_1_0_gets_400() {
    let head = GOOD.replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::HttpVersion));
}

#[test]
fn missing_host_gets_400() {
    let head = GOOD.replacen("Host: localhost\r\n", "", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::MissingHost));
}

#[test]
fn missing_upgrade_or_connection_headers_get_400() {
    let head = GOOD.replacen("Upgrade: websocket\r\n", "", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::NotAnUpgrade));
    let head = GOOD.replacen("keep-alive, Upgrade", "keep-alive", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::NotAnUpgrade));
    // Tokens are case-insensitive.
    let head = GOOD.replacen("Upgrade: websocket", "Upgrade: WebSocket", 1);
    assert_eq!(outcome(&head), Ok(Route::Upgrade));
}

#[test]
fn missing_version_gets_400_and_other_versions_get_426() {
    let head = GOOD.replacen("Sec-WebSocket-Version: 13\r\n", "", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::MissingVersion));
    assert_eq!(HandshakeError::MissingVersion.status(), 400);
    let head = GOOD.replacen("Version: 13", "Version: 8", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::UnsupportedVersion));
    let response = error_response(&HandshakeError::UnsupportedVersion);
    let text = std::str::from_utf8(&response).unwrap();
    assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn missing_or_malformed_keys_get_400() {
    let head = GOOD.replacen("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1);
    assert_eq!(outcome(&head), Err(HandshakeError::InvalidKey));
    for key in [
        "short==",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZ!==",
        "dGhlIHNhbXBsZSBub25jZQ=x",
    ] {
        let head = GOOD.replacen("dGhlIHNhbXBsZSBub25jZQ==", key, 1);
        assert_eq!(outcome(&head), Err(HandshakeError::InvalidKey), "{key}");
    }
}

#[test]
fn a_repeated_key_gets_400() {
    // RFC 6455 section 11.3.1: Sec-WebSocket-Key must not appear twice,
    // even with the same value.
    let head = GOOD.replacen(
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        1,
    );
    assert_eq!(outcome(&head), Err(HandshakeError::InvalidKey));
    assert_eq!(HandshakeError::InvalidKey.status(), 400);
}

#[test]
fn oversized_heads_get_431_without_waiting_for_the_end() {
    let mut head = String::from("GET /ws HTTP/1.1\r\nX-Padding: ");
    head.push_str(&"a".repeat(9000));
    assert_eq!(
        parse_head(head.as_bytes(), 8192).unwrap_err(),
        HandshakeError::HeadTooLarge { limit: 8192 }
    );
    assert_eq!(HandshakeError::HeadTooLarge { limit: 8192 }.status(), 431);
    // A complete head over the limit too.
    head.push_str("\r\n\r\n");
    assert_eq!(
        parse_head(head.as_bytes(), 8192).unwrap_err(),
        HandshakeError::HeadTooLarge { limit: 8192 }
    );
}

#[test]
fn too_many_headers_get_431() {
    let mut head = String::from("GET /ws HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    assert_eq!(
        parse_head(head.as_bytes(), 8192).unwrap_err(),
        HandshakeError::HeadTooLarge { limit: 8192 }
    );
}

#[test]
fn garbage_gets_400() {
    assert_eq!(
        parse_head(b"\x16\x03\x01\x02\x00\r\n\r\n", 8192).unwrap_err(),
        HandshakeError::Malformed
    );
    assert!(
        error_response(&HandshakeError::Malformed).starts_with(b"HTTP/1.1 400 Bad Request\r\n")
    );
}

#[test]
fn partial_heads_wait_for_more() {
    for cut in 0..GOOD.len() {
        assert!(
            parse_head(&GOOD.as_bytes()[..cut], 8192).unwrap().is_none(),
            "cut {cut}"
        );
    }
}

#[test]
fn head_end_is_found_across_reads() {
    let bytes = GOOD.as_bytes();
    for split in 0..bytes.len() {
        // The first read found nothing; the second scan starts where the
        // first stopped.
        if head_end(&bytes[..split], 0).is_none() {
            assert_eq!(head_end(bytes, split), Some(bytes.len()), "split {split}");
        }
    }
}

#[test]
fn request_exposes_path_params_headers_cookies_and_peer() {
    let head = GOOD.replacen(
        "Host: localhost\r\n",
        "Host: localhost\r\nCookie: a=1; user_token=\"x y\"\r\nCookie: b=2\r\nSec-WebSocket-Protocol: phoenix, mqtt\r\n",
        1,
    )
    .replacen("/ws?room=1", "/ws?room=1&name=J%C3%BCrgen+K", 1);
    let parsed = parse_head(head.as_bytes(), 8192).unwrap().unwrap();
    let request = parsed.into_request(Bytes::copy_from_slice(head.as_bytes()), peer());
    assert_eq!(request.method(), "GET");
    assert_eq!(request.path(), "/ws");
    assert_eq!(request.query(), Some("room=1&name=J%C3%BCrgen+K"));
    assert_eq!(request.query_param("name").as_deref(), Some("Jürgen K"));
    assert_eq!(request.query_param("missing"), None);
    assert_eq!(request.header_str("HOST"), Some("localhost"));
    assert_eq!(request.cookie("user_token"), Some("x y"));
    assert_eq!(request.cookie("b"), Some("2"));
    assert_eq!(
        request.subprotocols().collect::<Vec<_>>(),
        ["phoenix", "mqtt"]
    );
    assert_eq!(request.peer_addr(), peer());
}
