//! Backend hooks: the application's own backend, in any language, decides
//! over HTTP who connects, who joins what, and what a client's message
//! publishes (Centrifugo's proxy).
//!
//! Every hook is a `POST` of a JSON body to a URL from the configuration;
//! the answer is JSON with `"allow"` and, depending on the hook, what to
//! attach or change (the contract is in the README and `herald.toml`).
//! The loops never wait for one: they hand the call to the [`CallPool`]
//! and get the answer back through their mailbox
//! ([`ConnectAnswer`], [`JoinLater`], a [`ChannelHandle`] message). A
//! backend that fails (down, slower than the timeout, a non-2xx status, an
//! answer that is not the contract, more calls waiting than the queue
//! holds) gets the configured [`OnFailure`].

mod pool;
mod webhooks;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use herald::{
    Reject, Request,
    channels::{ChannelHandle, ConnectAnswer, JoinLater, Reply, ReplyHandle},
    protocol::phoenix::Status,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(crate) use pool::{CallError, CallPool, CallStats, LATENCY_BUCKETS_MS, PoolConfig};

pub(crate) use webhooks::{WebhookStats, Webhooks};

use herald::channels::TopicPattern;

use crate::{auth::Identity, policy::Client};

/// What a failed hook call does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnFailure {
    /// Refuse: the connection gets 503, the join or message an error
    /// reply `{"reason": "backend unavailable"}`.
    #[default]
    Refuse,
    /// Allow as if there were no hook.
    Allow,
}

/// The three hooks, as indices of their counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Connect = 0,
    Join = 1,
    Message = 2,
}

impl Hook {
    pub(crate) const ALL: [Self; 3] = [Self::Connect, Self::Join, Self::Message];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Join => "join",
            Self::Message => "message",
        }
    }
}

/// Hook calls by how they ended, per hook: `[allowed, refused, failed]`.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    pub(crate) outcomes: [[AtomicU64; 3]; 3],
}

/// How a hook call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed = 0,
    Refused = 1,
    /// No usable answer: the failure policy decided.
    Failed = 2,
}

impl Outcome {
    pub(crate) const ALL: [Self; 3] = [Self::Allowed, Self::Refused, Self::Failed];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// The reason a refusal on failure gives.
const UNAVAILABLE: &str = "backend unavailable";
/// The reason when too many calls wait already (never allowed, whatever
/// `on_failure` says: a flood must not open the door).
const BUSY: &str = "backend busy, retry later";

/// The backend hooks of one server.
pub(crate) struct Hooks {
    pool: CallPool,
    connect_url: Option<Arc<str>>,
    on_failure: OnFailure,
    verdicts: Verdicts,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("connect_url", &self.connect_url)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

// ---- The contract -------------------------------------------------------------

/// `POST connect_url`: an upgrade request.
#[derive(Serialize)]
struct ConnectCall<'a> {
    path: &'a str,
    peer: String,
    params: BTreeMap<String, String>,
    headers: BTreeMap<&'a str, String>,
    /// The token's `sub`, when a JWT was checked already.
    user: Option<&'a str>,
}

/// The backend's answer to a connect call.
#[derive(Deserialize)]
struct ConnectVerdict {
    allow: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    assigns: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST join_hook`: a join of a topic.
#[derive(Serialize)]
struct JoinCall<'a> {
    topic: &'a str,
    payload: &'a RawValue,
    user: Option<&'a str>,
    assigns: Option<&'a RawValue>,
}

/// `POST message_hook`: a client's message.
#[derive(Serialize)]
struct MessageCall<'a> {
    topic: &'a str,
    event: &'a str,
    payload: &'a RawValue,
    user: Option<&'a str>,
    assigns: Option<&'a RawValue>,
}

/// The backend's answer to a join or message call.
#[derive(Deserialize)]
struct Verdict {
    allow: bool,
    /// A message's payload to publish instead of the client's.
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    /// The response of the client's reply.
    #[serde(default)]
    reply: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
}

impl Verdict {
    /// The response of a refusal: the backend's `reply`, else
    /// `{"reason": ...}`.
    fn refusal(&self) -> Reply {
        match &self.reply {
            Some(reply) => Reply::raw(reply),
            None => Reply::reason(self.reason.as_deref().unwrap_or("refused")),
        }
    }
}

// ---- What comes back to the loops ------------------------------------------

/// Who a connection is, once the token or the connect hook said so.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// The user: the token's `sub`, or the connect hook's `user`.
    pub(crate) user: Option<String>,
    /// The topics it may join (`None`: any the rules allow).
    pub(crate) channels: Option<Vec<TopicPattern>>,
    /// The backend's `assigns`, passed along to the join and message hooks.
    pub(crate) assigns: Option<Arc<RawValue>>,
    /// Join and message hook calls of this connection not yet answered.
    pub(crate) waiting: Arc<AtomicUsize>,
}

impl Admitted {
    /// Admitted by a token (or by nothing, when auth is off).
    pub(crate) fn by_token(identity: Option<Identity>) -> Self {
        let (user, channels) = match identity {
            Some(Identity { user, channels }) => (Some(user), channels),
            None => (None, None),
        };
        Self {
            user,
            channels,
            ..Self::default()
        }
    }

    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// The most join and message hook calls one connection may have waiting:
/// past it, its joins and messages are refused at once, so that one client
/// cannot fill the queue every client shares.
pub(crate) const MAX_WAITING_PER_CONNECTION: usize = 16;

/// One call counted in its connection's `waiting`, until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    /// Counts a call, or `None` if the connection has too many waiting.
    fn start(waiting: &Arc<AtomicUsize>) -> Option<Self> {
        let before = waiting.fetch_add(1, Relaxed);
        let counted = Self(Arc::clone(waiting));
        (before < MAX_WAITING_PER_CONNECTION).then_some(counted)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A join hook's decision, for `handle_join_answer`.
#[derive(Debug)]
pub(crate) enum JoinDecision {
    /// Join, with the backend's reply if it gave one.
    Allow { reply: Option<Reply>, name: String },
    /// Refuse with this reply.
    Refuse(Reply),
}

/// A message hook's decision to publish, for `handle_app_info` (sent as
/// an `Arc<Publish>`): what to publish, and the client's reply, sent
/// after it.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) event: String,
    pub(crate) payload: Box<RawValue>,
    reply: Mutex<Option<(ReplyHandle, Reply)>>,
}

impl Publish {
    /// The client's reply, once.
    pub(crate) fn take_reply(&self) -> Option<(ReplyHandle, Reply)> {
        self.reply.lock().ok().and_then(|mut reply| reply.take())
    }
}

/// Where a client's message goes once allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PublishMode {
    /// The client's payload, or the backend's `payload` if it gave one.
    #[default]
    Original,
    /// Only the backend's `payload`; nothing when it gave none.
    Returned,
}

/// What a join or message hook is asked with.
pub(crate) struct Asking<'a> {
    pub(crate) url: &'a Arc<str>,
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a RawValue,
    pub(crate) admitted: &'a Admitted,
}

impl Hooks {
    pub(crate) fn start(
        pool: &PoolConfig,
        connect_url: Option<&str>,
        on_failure: OnFailure,
    ) -> std::io::Result<Self> {
        Ok(Self {
            pool: CallPool::start("hook", pool, Hook::ALL.len())?,
            connect_url: connect_url.map(Arc::from),
            on_failure,
            verdicts: Verdicts::default(),
        })
    }

    /// Calls counted per hook, and what they decided.
    pub(crate) fn stats(&self) -> (&[CallStats], &Verdicts) {
        (self.pool.stats(), &self.verdicts)
    }

    /// Whether connections are decided by the backend.
    pub(crate) fn decides_connections(&self) -> bool {
        self.connect_url.is_some()
    }

    fn count(&self, hook: Hook, outcome: Outcome) {
        self.verdicts.outcomes[hook as usize][outcome as usize].fetch_add(1, Relaxed);
    }

    /// Asks the backend whether `request` (already past the Origin and
    /// token checks, as `admitted`) may connect.
    pub(crate) fn connect(
        self: &Arc<Self>,
        request: &Request,
        admitted: Admitted,
        answer: ConnectAnswer<Client>,
    ) {
        let Some(url) = &self.connect_url else {
            return answer.accept(Client::new(admitted));
        };
        let call = ConnectCall {
            path: request.path(),
            peer: request.peer_addr().to_string(),
            params: request
                .query_params()
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
            headers: request
                .headers()
                .map(|(name, value)| (name, String::from_utf8_lossy(value).into_owned()))
                .collect(),
            user: admitted.user(),
        };
        let body = serde_json::to_vec(&call).unwrap_or_default();
        let hooks = Arc::clone(self);
        self.pool.call(
            url,
            Hook::Connect as usize,
            body,
            Box::new(move |answered| hooks.connect_answered(answered, admitted, answer)),
        );
    }

    fn connect_answered(
        &self,
        answered: Result<Vec<u8>, CallError>,
        by_token: Admitted,
        answer: ConnectAnswer<Client>,
    ) {
        let verdict = answered.and_then(|body| parse::<ConnectVerdict>(&body));
        let admitted = match verdict {
            Ok(verdict) if verdict.allow => {
                self.count(Hook::Connect, Outcome::Allowed);
                let channels = verdict
                    .channels
                    .map(|patterns| patterns.iter().map(|p| TopicPattern::new(p)).collect());
                Admitted {
                    user: verdict.user.or(by_token.user),
                    channels: channels.or(by_token.channels),
                    assigns: verdict.assigns.map(Arc::from),
                    waiting: by_token.waiting,
                }
            }
            Ok(verdict) => {
                self.count(Hook::Connect, Outcome::Refused);
                let reject = Reject::with_status(verdict.status.unwrap_or(403));
                let reject = match &verdict.reason {
                    Some(reason) => reject.with_reason(reason),
                    None => reject,
                };
                return answer.reject(reject);
            }
            Err(err) => {
                self.count(Hook::Connect, Outcome::Failed);
                match self.on_failure(&err, Hook::Connect) {
                    OnFailure::Refuse => {
                        let reason = if matches!(err, CallError::Busy) {
                            BUSY
                        } else {
                            UNAVAILABLE
                        };
                        return answer.reject(Reject::with_status(503).with_reason(reason));
                    }
                    OnFailure::Allow => by_token,
                }
            }
        };
        answer.accept(Client::new(admitted));
    }

    /// What a failed call does: the configured policy, except for a full
    /// queue, which always refuses. Logged (a full queue at debug level:
    /// it may come by the thousand, on a loop).
    fn on_failure(&self, err: &CallError, hook: Hook) -> OnFailure {
        if matches!(err, CallError::Busy) {
            tracing::debug!(%err, hook = hook.name(), "hook refused: too many calls waiting");
            return OnFailure::Refuse;
        }
        tracing::warn!(%err, hook = hook.name(), "hook failed");
        self.on_failure
    }

    /// Asks the backend whether the join may go ahead; `name` is the name
    /// the member will show.
    pub(crate) fn join(self: &Arc<Self>, asking: &Asking<'_>, name: String, later: JoinLater) {
        let Some(waiting) = Waiting::start(&asking.admitted.waiting) else {
            self.count(Hook::Join, Outcome::Failed);
            let _ = later.answer(JoinDecision::Refuse(Reply::reason(BUSY)));
            return;
        };
        let call = JoinCall {
            topic: asking.topic,
            payload: asking.payload,
            user: asking.admitted.user(),
            assigns: asking.admitted.assigns.as_deref(),
        };
        let body = serde_json::to_vec(&call).unwrap_or_default();
        let hooks = Arc::clone(self);
        let on_answer = move |answered: Result<Vec<u8>, CallError>| {
            drop(waiting);
            let decision = hooks.join_decision(answered, name);
            // A connection gone meanwhile drops it.
            let _ = later.answer(decision);
        };
        self.pool
            .call(asking.url, Hook::Join as usize, body, Box::new(on_answer));
    }

    fn join_decision(&self, answered: Result<Vec<u8>, CallError>, name: String) -> JoinDecision {
        let verdict = answered.and_then(|body| parse::<Verdict>(&body));
        self.count(Hook::Join, outcome(&verdict));
        match verdict {
            Ok(verdict) if verdict.allow => JoinDecision::Allow {
                reply: verdict.reply.as_deref().map(Reply::raw),
                name,
            },
            Ok(verdict) => JoinDecision::Refuse(verdict.refusal()),
            Err(err) => match self.on_failure(&err, Hook::Join) {
                OnFailure::Refuse => JoinDecision::Refuse(refusal(&err)),
                OnFailure::Allow => JoinDecision::Allow { reply: None, name },
            },
        }
    }

    /// Asks the backend what a client's message publishes: the channel
    /// gets a [`Publish`] if anything, and the client its reply (an error
    /// one straight from here if refused).
    pub(crate) fn message(
        self: &Arc<Self>,
        asking: &Asking<'_>,
        event: &str,
        mode: PublishMode,
        channel: ChannelHandle,
        reply: Option<ReplyHandle>,
    ) {
        let Some(waiting) = Waiting::start(&asking.admitted.waiting) else {
            self.count(Hook::Message, Outcome::Failed);
            if let Some(reply) = reply {
                let _ = reply.reply(Status::Error, &Reply::reason(BUSY));
            }
            return;
        };
        let call = MessageCall {
            topic: asking.topic,
            event,
            payload: asking.payload,
            user: asking.admitted.user(),
            assigns: asking.admitted.assigns.as_deref(),
        };
        let body = serde_json::to_vec(&call).unwrap_or_default();
        let original: Box<RawValue> = asking.payload.to_owned();
        let event = event.to_owned();
        let hooks = Arc::clone(self);
        let on_answer = move |answered: Result<Vec<u8>, CallError>| {
            drop(waiting);
            let verdict = hooks.message_verdict(answered);
            let (payload, response) = match verdict {
                Ok((payload, response)) => (payload, response),
                Err(refusal) => {
                    if let Some(reply) = reply {
                        let _ = reply.reply(Status::Error, &refusal);
                    }
                    return;
                }
            };
            let payload = match (payload, mode) {
                (Some(payload), _) => payload,
                (None, PublishMode::Original) => original,
                (None, PublishMode::Returned) => {
                    if let Some(reply) = reply {
                        let _ = reply.reply(Status::Ok, &response);
                    }
                    return;
                }
            };
            let publish = Arc::new(Publish {
                event,
                payload,
                reply: Mutex::new(reply.map(|reply| (reply, response))),
            });
            if channel.send(Arc::clone(&publish)).is_err() {
                // The loop's mailbox is full (or the server stopping): say
                // so to a client waiting for its reply.
                if let Some((reply, _)) = publish.take_reply() {
                    let _ = reply.reply(Status::Error, &Reply::reason(BUSY));
                }
            }
        };
        self.pool.call(
            asking.url,
            Hook::Message as usize,
            body,
            Box::new(on_answer),
        );
    }

    /// The payload to publish (`None`: the backend gave none) and the
    /// reply, or the refusal.
    fn message_verdict(
        &self,
        answered: Result<Vec<u8>, CallError>,
    ) -> Result<(Option<Box<RawValue>>, Reply), Reply> {
        let verdict = answered.and_then(|body| parse::<Verdict>(&body));
        self.count(Hook::Message, outcome(&verdict));
        match verdict {
            Ok(verdict) if verdict.allow => {
                let reply = verdict
                    .reply
                    .as_deref()
                    .map_or_else(Reply::empty, Reply::raw);
                Ok((verdict.payload, reply))
            }
            Ok(verdict) => Err(verdict.refusal()),
            Err(err) => match self.on_failure(&err, Hook::Message) {
                OnFailure::Refuse => Err(refusal(&err)),
                OnFailure::Allow => Ok((None, Reply::empty())),
            },
        }
    }
}

/// The refusal of a join or message whose call failed.
fn refusal(err: &CallError) -> Reply {
    match err {
        CallError::Busy => Reply::reason(BUSY),
        _ => Reply::reason(UNAVAILABLE),
    }
}

/// How a join or message call ended.
fn outcome(verdict: &Result<Verdict, CallError>) -> Outcome {
    match verdict {
        Ok(verdict) if verdict.allow => Outcome::Allowed,
        Ok(_) => Outcome::Refused,
        Err(_) => Outcome::Failed,
    }
}

/// Reads a backend's answer as `T`.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|err| CallError::Answer(err.to_string()))
}
