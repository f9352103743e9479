//! The HTTP API, on its own port: publish from any backend, count a topic's
//! subscribers, disconnect a user, and scrape metrics.
//!
//! | Method | Path                 | Key | Does                                   |
//! |--------|----------------------|-----|----------------------------------------|
//! | POST   | `/api/broadcast`     | yes | broadcasts one message, or a batch     |
//! | GET    | `/api/topics`        | yes | the cluster's topics, with subscribers |
//! | GET    | `/api/topics/TOPIC`  | yes | subscribers of a topic, cluster-wide   |
//! | GET    | `/api/presence/TOPIC`| yes | who is present on a topic, and a count |
//! | POST   | `/api/disconnect`    | yes | closes a socket id's connections       |
//! | POST   | `/api/unsubscribe`   | yes | takes a socket id off a topic          |
//! | POST   | `/api/batch`         | yes | broadcasts, disconnects, unsubscribes, in order |
//! | GET    | `/api/info`          | yes | this node and the cluster's nodes      |
//! | GET    | `/api/openapi.json`  | yes | this API, described (OpenAPI 3.1)      |
//! | GET    | `/admin`             | no  | the admin page (it asks for the key)   |
//! | GET    | `/metrics`           | no  | Prometheus text                        |
//! | GET    | `/healthz`           | no  | `ok`                                   |
//!
//! The key travels as `Authorization: Bearer KEY`. Errors are 4xx with a
//! JSON body `{"error": "..."}`. It is served by `tiny_http` on a few
//! threads: requests only encode a frame and post it to the loops, so they
//! never wait on a client.

use std::{
    io::{self, Read},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    thread::JoinHandle,
    time::Duration,
};

use herald::{channels::EngineHandle, cluster::Cluster};
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use tiny_http::{Header, Method, Response};

use crate::{
    Backend,
    metrics::{self, ApiCounters},
};

/// The most broadcasts one batch may carry.
const MAX_BATCH: usize = 1000;

/// The longest topic or event accepted, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// How full a loop's mailbox may be before broadcasts get 503: half, so
/// that what is already accepted still fits.
const BUSY_BACKLOG: f64 = 0.5;

/// A refused API request; each maps to a status and a JSON error body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or wrong API key: send `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("the server is busy delivering earlier broadcasts; retry in a second")]
    Busy,
    #[error("this topic keeps no history (see the channel rules' history_size)")]
    NoHistory,
    #[error("{0}")]
    StoreUnavailable(String),
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge(_) => 413,
            Self::BadRequest(_) => 400,
            Self::Busy | Self::StoreUnavailable(_) => 503,
            Self::NoHistory => 404,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
}

/// A response ready to send.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(value: &serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn text(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            content_type,
            body,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Self {
            status: error.status(),
            content_type: "application/json",
            body: json!({ "error": error.to_string() }).to_string(),
        }
    }
}

/// What the API serves with.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) engine: EngineHandle,
    /// The link to other nodes (for the bus's counters).
    pub(crate) cluster: Cluster,
    pub(crate) key: Option<String>,
    pub(crate) counters: Arc<ApiCounters>,
    /// The hooks and webhooks (for their counters).
    pub(crate) backend: Backend,
    pub(crate) max_body_bytes: usize,
}

/// A topic from a URL path, percent-decoded and checked.
fn decode_topic(encoded: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    let topic = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| ApiError::bad("the topic is not UTF-8"))?;
    check_name("topic", &topic)?;
    Ok(topic)
}

/// One message of `POST /api/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastItem<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// The body of `POST /api/broadcast`: one message, or `{"broadcasts": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    topic: Option<String>,
    event: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    broadcasts: Option<Vec<BroadcastItem<'a>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    socket_id: String,
}

/// The body of `POST /api/unsubscribe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    socket_id: String,
    topic: String,
}

/// The body of `POST /api/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    commands: Vec<Command<'a>>,
}

/// One command of a batch: `{"broadcast": {...}}`, `{"disconnect":
/// {...}}` or `{"unsubscribe": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command<'a> {
    Broadcast(#[serde(borrow)] BroadcastItem<'a>),
    Disconnect(DisconnectBody),
    Unsubscribe(UnsubscribeBody),
}

/// A broadcast's topic and event may be sent.
fn check_broadcast(item: &BroadcastItem<'_>) -> Result<(), ApiError> {
    check_name("topic", &item.topic)?;
    check_name("event", &item.event)?;
    if item.event.starts_with("phx_") {
        return Err(ApiError::bad("events starting with phx_ are reserved"));
    }
    Ok(())
}

/// The admin page: a plain ES module page over this API, no build step.
const ADMIN_PAGE: &str = include_str!("../../../assets/admin.html");

/// The API's description; `engine/tests/standalone.rs` calls every
/// operation it lists with its examples.
const OPENAPI: &str = include_str!("../../../assets/openapi.json");

/// The most topics `GET /api/topics` lists.
const MAX_LISTED_TOPICS: usize = 10_000;

impl Api {
    /// Answers one request.
    fn respond(&self, request: &mut tiny_http::Request) -> Reply {
        let result = self.route(request);
        result.unwrap_or_else(|error| {
            self.counters.bad_requests.fetch_add(1, Relaxed);
            Reply::from(error)
        })
    }

    fn route(&self, request: &mut tiny_http::Request) -> Result<Reply, ApiError> {
        let url = request.url().to_owned();
        let path = url.split('?').next().unwrap_or_default();
        let method = request.method().clone();
        match path {
            "/healthz" => {
                expect_method(&method, &Method::Get)?;
                return Ok(Reply::text("text/plain; charset=utf-8", "ok\n".into()));
            }
            "/admin" => {
                // No data in the page: it calls the API with the key the
                // operator enters.
                expect_method(&method, &Method::Get)?;
                return Ok(Reply::text("text/html; charset=utf-8", ADMIN_PAGE.into()));
            }
            "/metrics" => {
                expect_method(&method, &Method::Get)?;
                let text =
                    metrics::render(&self.engine, &self.cluster, &self.counters, &self.backend);
                return Ok(Reply::text(
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ));
            }
            _ => {}
        }
        if !path.starts_with("/api/") {
            return Err(ApiError::NotFound);
        }
        self.check_key(request)?;
        if let Some(topic) = path.strip_prefix("/api/topics/") {
            expect_method(&method, &Method::Get)?;
            return self.topic(topic);
        }
        if let Some(topic) = path.strip_prefix("/api/presence/") {
            expect_method(&method, &Method::Get)?;
            return self.presence(topic);
        }
        if let Some(topic) = path.strip_prefix("/api/history/") {
            return match method {
                Method::Get => self.history(topic, query_param(&url, "limit")),
                Method::Delete => self.remove_history(topic),
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        match path {
            "/api/topics" => {
                expect_method(&method, &Method::Get)?;
                Ok(self.topics())
            }
            "/api/info" => {
                expect_method(&method, &Method::Get)?;
                Ok(self.info())
            }
            "/api/openapi.json" => {
                expect_method(&method, &Method::Get)?;
                Ok(Reply::text("application/json", OPENAPI.into()))
            }
            "/api/unsubscribe" => {
                expect_method(&method, &Method::Post)?;
                let body = self.read_body(request)?;
                self.unsubscribe(&body)
            }
            "/api/batch" => {
                expect_method(&method, &Method::Post)?;
                let key = idempotency_key(request)?;
                let body = self.read_body(request)?;
                self.batch(&body, key.as_deref())
            }
            "/api/broadcast" => {
                expect_method(&method, &Method::Post)?;
                let key = idempotency_key(request)?;
                let body = self.read_body(request)?;
                self.broadcast(&body, key.as_deref())
            }
            "/api/disconnect" => {
                expect_method(&method, &Method::Post)?;
                let body = self.read_body(request)?;
                self.disconnect(&body)
            }
            _ => Err(ApiError::NotFound),
        }
    }

    fn check_key(&self, request: &tiny_http::Request) -> Result<(), ApiError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let presented = request
            .headers()
            .iter()
            .find(|header| header.field.equiv("Authorization"))
            .and_then(|header| header.value.as_str().strip_prefix("Bearer "));
        match presented {
            Some(presented) if constant_time_eq(presented.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    fn read_body(&self, request: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
        let limit = self.max_body_bytes;
        if request.body_length().is_some_and(|length| length > limit) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let mut body = Vec::new();
        request
            .as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|err| ApiError::bad(format!("cannot read the body: {err}")))?;
        if body.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        Ok(body)
    }

    /// Claims a request's idempotency key: `false` if a request with the
    /// same key was carried out within [`IDEMPOTENCY_TTL`].
    fn first_with_key(&self, key: Option<&str>) -> Result<bool, ApiError> {
        let Some(key) = key else {
            return Ok(true);
        };
        let claimed = self
            .engine
            .history_store()
            .claim_publish_key(key, IDEMPOTENCY_TTL)
            .map_err(|err| ApiError::StoreUnavailable(err.to_string()))?;
        if !claimed {
            self.counters.duplicates.fetch_add(1, Relaxed);
        }
        Ok(claimed)
    }

    /// `GET /api/history/<topic>?limit=N`: the stream's position and its
    /// latest publications (100 by default, 1,000 at most), oldest first.
    fn history(&self, encoded: &str, limit: Option<String>) -> Result<Reply, ApiError> {
        let topic = decode_topic(encoded)?;
        if !self.engine.keeps_history(&topic) {
            return Err(ApiError::NoHistory);
        }
        let limit = match limit {
            None => DEFAULT_HISTORY_LIMIT,
            Some(limit) => limit
                .parse::<usize>()
                .ok()
                .filter(|&limit| limit <= MAX_HISTORY_LIMIT)
                .ok_or_else(|| {
                    ApiError::bad(format!("limit: an integer from 0 to {MAX_HISTORY_LIMIT}"))
                })?,
        };
        let (position, publications) = self
            .engine
            .history_store()
            .latest(&topic, limit)
            .map_err(|err| ApiError::StoreUnavailable(err.to_string()))?;
        Ok(Reply::json(&json!({
            "topic": topic,
            "epoch": position.as_ref().map(|position| &position.epoch),
            "offset": position.as_ref().map_or(0, |position| position.offset),
            "publications": publications,
        })))
    }

    /// `DELETE /api/history/<topic>`: the history and its epoch go;
    /// clients behind get `recovered: false`.
    fn remove_history(&self, encoded: &str) -> Result<Reply, ApiError> {
        let topic = decode_topic(encoded)?;
        if !self.engine.keeps_history(&topic) {
            return Err(ApiError::NoHistory);
        }
        let removed = self
            .engine
            .history_store()
            .remove(&topic)
            .map_err(|err| ApiError::StoreUnavailable(err.to_string()))?;
        Ok(Reply::json(&json!({ "topic": topic, "removed": removed })))
    }

    fn broadcast(&self, body: &[u8], key: Option<&str>) -> Result<Reply, ApiError> {
        let body: BroadcastBody<'_> = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("invalid JSON body: {err}")))?;
        let items = match body {
            BroadcastBody {
                topic: Some(topic),
                event: Some(event),
                payload: Some(payload),
                broadcasts: None,
            } => vec![BroadcastItem {
                topic,
                event,
                payload,
            }],
            BroadcastBody {
                topic: None,
                event: None,
                payload: None,
                broadcasts: Some(items),
            } => items,
            _ => {
                return Err(ApiError::bad(
                    "expected {\"topic\", \"event\", \"payload\"} or {\"broadcasts\": [...]}",
                ));
            }
        };
        if items.len() > MAX_BATCH {
            return Err(ApiError::bad(format!(
                "a batch holds at most {MAX_BATCH} broadcasts"
            )));
        }
        for item in &items {
            check_broadcast(item)?;
        }
        // Refuse the whole request rather than have its broadcasts refused
        // halfway by full loop mailboxes.
        if self.engine.server().backlog() >= BUSY_BACKLOG {
            return Err(ApiError::Busy);
        }
        if !self.first_with_key(key)? {
            return Ok(Reply::json(
                &json!({ "ok": true, "broadcasts": items.len(), "duplicate": true }),
            ));
        }
        for item in &items {
            self.engine
                .broadcast(&item.topic, &item.event, item.payload)
                .map_err(|err| ApiError::bad(format!("payload: {err}")))?;
            self.counters.broadcasts.fetch_add(1, Relaxed);
        }
        Ok(Reply::json(
            &json!({ "ok": true, "broadcasts": items.len() }),
        ))
    }

    fn topic(&self, encoded: &str) -> Result<Reply, ApiError> {
        let topic = decode_topic(encoded)?;
        Ok(Reply::json(&json!({
            "topic": topic,
            "subscribers": self.engine.cluster_subscriber_count(&topic),
            "here": self.engine.subscriber_count(&topic),
            "scope": "cluster",
        })))
    }

    /// The topic's presences as the `presence_state` push has them, and
    /// how many keys: every node's (with a broker, presence is shared).
    fn presence(&self, encoded: &str) -> Result<Reply, ApiError> {
        let topic = decode_topic(encoded)?;
        let presences = self.engine.presence_list(&topic);
        Ok(Reply::json(&json!({
            "topic": topic,
            "count": self.engine.presence_count(&topic),
            "presences": presences,
        })))
    }

    /// Several commands of any kind, checked first (one bad command refuses
    /// the whole batch), then carried out in order.
    fn batch(&self, body: &[u8], key: Option<&str>) -> Result<Reply, ApiError> {
        let body: BatchBody<'_> = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("invalid JSON body: {err}")))?;
        if body.commands.len() > MAX_BATCH {
            return Err(ApiError::bad(format!(
                "a batch holds at most {MAX_BATCH} commands"
            )));
        }
        for command in &body.commands {
            match command {
                Command::Broadcast(item) => check_broadcast(item)?,
                Command::Disconnect(target) => check_name("socket_id", &target.socket_id)?,
                Command::Unsubscribe(target) => {
                    check_name("socket_id", &target.socket_id)?;
                    check_name("topic", &target.topic)?;
                }
            }
        }
        if self.engine.server().backlog() >= BUSY_BACKLOG {
            return Err(ApiError::Busy);
        }
        if !self.first_with_key(key)? {
            return Ok(Reply::json(
                &json!({ "ok": true, "commands": body.commands.len(), "duplicate": true }),
            ));
        }
        for command in &body.commands {
            match command {
                Command::Broadcast(item) => {
                    self.engine
                        .broadcast(&item.topic, &item.event, item.payload)
                        .map_err(|err| ApiError::bad(format!("payload: {err}")))?;
                    self.counters.broadcasts.fetch_add(1, Relaxed);
                }
                Command::Disconnect(target) => {
                    self.engine.disconnect(&target.socket_id);
                }
                Command::Unsubscribe(target) => {
                    self.engine.unsubscribe(&target.socket_id, &target.topic);
                }
            }
        }
        Ok(Reply::json(
            &json!({ "ok": true, "commands": body.commands.len() }),
        ))
    }

    /// The cluster's topics with their subscribers (and this node's), most
    /// subscribed first, at most [`MAX_LISTED_TOPICS`].
    fn topics(&self) -> Reply {
        let mut topics = self.engine.cluster_topics();
        let total = topics.len();
        topics.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        topics.truncate(MAX_LISTED_TOPICS);
        let listed: Vec<_> = topics
            .iter()
            .map(|(topic, subscribers)| {
                let here = self.engine.subscriber_count(topic);
                json!({ "topic": topic, "subscribers": subscribers, "here": here })
            })
            .collect();
        Reply::json(&json!({
            "topics": listed,
            "total": total,
            "truncated": total > MAX_LISTED_TOPICS,
            "scope": "cluster",
        }))
    }

    /// This node: its version, connections, topics and bus.
    fn info(&self) -> Reply {
        let server = self.engine.server();
        let stats = server.stats();
        let bus = self.cluster.stats().map(|bus| {
            json!({
                "broker": self.cluster.broker().name(),
                "connected": bus.connected == 1,
                "publishes": bus.publishes,
                "received": bus.received,
            })
        });
        let nodes: Vec<_> = self
            .engine
            .nodes()
            .into_iter()
            .map(|node| {
                json!({
                    "id": format!("{:016x}", node.id),
                    "this_node": node.this_node,
                    "connections": node.connections,
                    "topics": node.topics,
                    "deliveries_per_second": node.deliveries_per_second,
                    "last_seen_ms": node.last_seen_ms,
                })
            })
            .collect();
        Reply::json(&json!({
            "version": env!("CARGO_PKG_VERSION"),
            "connections": server.connections(),
            "topics": server.topics().len(),
            "deliveries": stats.published_deliveries,
            "bus": bus,
            "nodes": nodes,
        }))
    }

    /// Takes a socket id off a topic: its channel closes on the client
    /// (`phx_close`), on this node.
    fn unsubscribe(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let body: UnsubscribeBody = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("invalid JSON body: {err}")))?;
        check_name("socket_id", &body.socket_id)?;
        check_name("topic", &body.topic)?;
        self.engine.unsubscribe(&body.socket_id, &body.topic);
        Ok(Reply::json(&json!({ "ok": true })))
    }

    fn disconnect(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let body: DisconnectBody = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("invalid JSON body: {err}")))?;
        check_name("socket_id", &body.socket_id)?;
        self.engine.disconnect(&body.socket_id);
        Ok(Reply::json(&json!({ "ok": true })))
    }
}

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// What `GET /api/history/<topic>` returns without `limit`, and at most.
const DEFAULT_HISTORY_LIMIT: usize = 100;
const MAX_HISTORY_LIMIT: usize = 1_000;

/// The request's `Idempotency-Key` header, checked.
fn idempotency_key(request: &tiny_http::Request) -> Result<Option<String>, ApiError> {
    let Some(header) = request
        .headers()
        .iter()
        .find(|header| header.field.equiv("Idempotency-Key"))
    else {
        return Ok(None);
    };
    let key = header.value.as_str();
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|byte| byte.is_ascii_graphic());
    if !valid {
        return Err(ApiError::bad(format!(
            "Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// The value of query parameter `name` in `url`, percent-decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn expect_method(method: &Method, expected: &Method) -> Result<(), ApiError> {
    if method == expected {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad(format!("{what} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad(format!(
            "{what} exceeds {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Compares secrets in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The API's listener and threads.
pub(crate) struct ApiServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("local_addr", &self.local_addr)
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl ApiServer {
    /// Binds `addr` and serves `api` on `threads` threads.
    pub(crate) fn start(addr: SocketAddr, threads: usize, api: Api) -> io::Result<Self> {
        let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
        let local_addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the API listener has no IP address"))?;
        let server = Arc::new(server);
        let api = Arc::new(api);
        let threads = (0..threads.max(1))
            .map(|index| {
                let server = Arc::clone(&server);
                let api = Arc::clone(&api);
                std::thread::Builder::new()
                    .name(format!("herald-api-{index}"))
                    .spawn(move || serve(&server, &api))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            server,
            threads,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting requests and waits for the threads.
    pub(crate) fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, api: &Api) {
    for mut request in server.incoming_requests() {
        let reply = api.respond(&mut request);
        let mut response = Response::from_string(reply.body).with_status_code(reply.status);
        // Our content types are static ASCII, which tiny_http always accepts.
        if let Ok(content_type) = Header::from_bytes("Content-Type", reply.content_type) {
            response = response.with_header(content_type);
        }
        if reply.status == 503
            && let Ok(retry) = Header::from_bytes("Retry-After", "1")
        {
            response = response.with_header(retry);
        }
        if let Err(err) = request.respond(response) {
            tracing::debug!(%err, "API client went away before its response");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_by_content_and_length() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
