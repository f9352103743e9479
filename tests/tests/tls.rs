//! TLS in the event loops, with a rustls client: Phoenix channels over
//! `wss://` (join, broadcast, push and reply), the health check over
//! `https://`, and bytes that are not TLS closing only their connection.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use herald::{TlsConfig, channels::Engine};
use herald_tests::echo_room;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost`: the server's config and the
/// client's trust in it.
fn certificate() -> (TlsConfig, Arc<ClientConfig>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let server = TlsConfig::from_der(vec![cert.clone()], key).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

fn start(tls: TlsConfig) -> Engine {
    echo_room::start(echo_room::builder().tls(tls))
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

fn tls_stream(addr: SocketAddr, client: &Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(Arc::clone(client), name).unwrap();
    StreamOwned::new(session, tcp)
}

fn wss(addr: SocketAddr, client: &Arc<ClientConfig>) -> WebSocket<TlsStream> {
    let url = "wss://localhost/socket/websocket?vsn=2.0.0";
    let (ws, response) = tungstenite::client(url, tls_stream(addr, client)).expect("wss handshake");
    assert_eq!(response.status(), 101);
    ws
}

fn recv(ws: &mut WebSocket<TlsStream>) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut WebSocket<TlsStream>, message: Value) {
    ws.send(Message::text(message.to_string())).unwrap();
}

#[test]
fn phoenix_channels_work_over_wss_and_the_health_check_over_https() {
    let (tls, client) = certificate();
    let engine = start(tls);
    let addr = engine.local_addr();
    let mut ada = wss(addr, &client);
    let mut bob = wss(addr, &client);
    for ws in [&mut ada, &mut bob] {
        send(ws, json!(["1", "1", "room:1", "phx_join", {}]));
        assert_eq!(recv(ws)[4]["status"], "ok");
    }
    // A broadcast larger than a TLS record, to both.
    let body = "x".repeat(40_000);
    engine
        .handle()
        .broadcast("room:1", "big", &json!({ "body": body }))
        .unwrap();
    for ws in [&mut ada, &mut bob] {
        let message = recv(ws);
        assert_eq!(message[3], "big");
        assert_eq!(message[4]["body"].as_str().unwrap().len(), 40_000);
    }
    send(&mut ada, json!(["1", "2", "room:1", "echo", {"n": 7}]));
    assert_eq!(
        recv(&mut ada)[4],
        json!({"status": "ok", "response": {"n": 7}})
    );

    let mut https = tls_stream(addr, &client);
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = https.read_to_end(&mut response);
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    engine.shutdown();
}

#[test]
fn bytes_that_are_not_tls_close_only_their_connection() {
    let (tls, client) = certificate();
    let engine = start(tls);
    let addr = engine.local_addr();
    let mut ada = wss(addr, &client);
    send(&mut ada, json!(["1", "1", "room:2", "phx_join", {}]));
    assert_eq!(recv(&mut ada)[4]["status"], "ok");

    // Cleartext HTTP on the TLS port: an alert, then the end.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET /socket/websocket HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record: {answer:?}"
    );

    engine
        .handle()
        .broadcast("room:2", "still", &json!({}))
        .unwrap();
    assert_eq!(recv(&mut ada)[3], "still");
    engine.shutdown();
}

#[test]
fn a_tls_handshake_that_never_finishes_is_dropped_at_the_handshake_timeout() {
    let (tls, _) = certificate();
    let builder = echo_room::builder()
        .loops(1)
        .handshake_timeout(Duration::from_millis(500))
        .tls(tls);
    let engine = echo_room::start(builder);
    // The first bytes of a ClientHello, then silence.
    let mut stalled = TcpStream::connect(engine.local_addr()).unwrap();
    stalled.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    engine.shutdown();
}

#[test]
fn messages_in_one_burst_are_all_read_without_waiting_for_more_input() {
    let (tls, client) = certificate();
    let engine = start(tls);
    let mut ada = wss(engine.local_addr(), &client);
    send(&mut ada, json!(["1", "1", "room:3", "phx_join", {}]));
    assert_eq!(recv(&mut ada)[4]["status"], "ok");
    // Ten pushes in one write, a TLS record each: more than the session
    // reads from the socket at once; then the client only listens.
    let body = "y".repeat(3000);
    for n in 2..12 {
        let push = json!(["1", n.to_string(), "room:3", "echo", {"n": n, "body": body}]);
        ada.write(Message::text(push.to_string())).unwrap();
    }
    ada.flush().unwrap();
    for n in 2..12 {
        assert_eq!(recv(&mut ada)[4]["response"]["n"], n);
    }
    engine.shutdown();
}

#[test]
fn a_client_refused_at_accept_reads_its_429_inside_tls() {
    let (tls, client) = certificate();
    let builder = echo_room::builder()
        .loops(1)
        .connect_rate_per_address(herald::RateLimit::new(1, 1))
        .tls(tls);
    let engine = echo_room::start(builder);
    let _first = wss(engine.local_addr(), &client);
    let mut second = tls_stream(engine.local_addr(), &client);
    second
        .write_all(b"GET /socket/websocket HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = second.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    engine.shutdown();
}
