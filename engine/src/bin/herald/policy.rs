//! Channel policy by configuration: who may connect (token, Origin), which
//! topics may be joined, and what a client's message does, with no code.

use std::sync::Arc;

use herald::{
    Reject, Request,
    channels::{Channel, ChannelContext, Endpoint, JoinResult, LeaveReason, Reply, Socket},
    protocol::phoenix::Status,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::{
    auth::{Identity, TokenVerifier},
    config::{ChannelRule, MessagePolicy},
};

/// The longest display name a join may give, in characters.
const MAX_NAME_CHARS: usize = 64;

/// Authorizes connections: the Origin allow-list, then the token if auth
/// is on.
#[derive(Debug)]
pub(crate) struct ServerSocket {
    verifier: Option<Arc<TokenVerifier>>,
    allowed_origins: Arc<[String]>,
}

impl ServerSocket {
    pub(crate) fn new(
        verifier: Option<Arc<TokenVerifier>>,
        allowed_origins: Arc<[String]>,
    ) -> Self {
        Self {
            verifier,
            allowed_origins,
        }
    }

    fn check_origin(&self, request: &Request) -> Result<(), Reject> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let origin = request.header_str("origin").unwrap_or_default();
        if self.allowed_origins.iter().any(|allowed| allowed == origin) {
            Ok(())
        } else {
            Err(Reject::forbidden().with_reason("origin not allowed"))
        }
    }
}

/// A connection's assigns: who it is, what it may join, and the names it
/// joined topics under (for the leave notice).
#[derive(Debug, Default)]
pub(crate) struct Client {
    identity: Option<Identity>,
    names: Vec<(Box<str>, Box<str>)>,
}

impl Client {
    fn may_join(&self, topic: &str) -> bool {
        match self.identity.as_ref().and_then(|id| id.channels.as_ref()) {
            Some(patterns) => patterns.iter().any(|pattern| pattern.matches(topic)),
            None => true,
        }
    }

    fn name_in(&self, topic: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(joined, _)| &**joined == topic)
            .map(|(_, name)| &**name)
    }
}

impl Socket for ServerSocket {
    type Assigns = Client;

    fn connect(&self, request: &Request) -> Result<Client, Reject> {
        self.check_origin(request)?;
        let identity = match &self.verifier {
            Some(verifier) => Some(verifier.authenticate(request)?),
            None => None,
        };
        Ok(Client {
            identity,
            names: Vec::new(),
        })
    }

    fn id(&self, assigns: &Client) -> Option<String> {
        assigns
            .identity
            .as_ref()
            .map(|identity| identity.user.clone())
    }
}

/// The channel of one rule.
#[derive(Debug)]
pub(crate) struct RuleChannel {
    messages: MessagePolicy,
    presence: bool,
    notices: bool,
}

/// What a join may carry.
#[derive(Debug, Default, Deserialize)]
struct JoinParams {
    #[serde(default)]
    name: Option<String>,
}

impl Channel<Client> for RuleChannel {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        payload: &RawValue,
    ) -> JoinResult {
        let topic = ctx.topic().to_owned();
        if !ctx.assigns().may_join(&topic) {
            return Err(Reply::reason("unauthorized"));
        }
        let name = display_name(ctx.assigns(), payload);
        let reply = Reply::json(&json!({ "user": name })).unwrap_or_else(|_| Reply::empty());
        if self.presence {
            let meta = json!({ "online_at": unix_millis() });
            if let Err(err) = ctx.track(&name, &meta) {
                tracing::warn!(%err, "presence not tracked");
            }
        }
        if self.notices {
            ctx.broadcast_from("user_joined", &json!({ "user": name }));
        }
        let names = &mut ctx.assigns().names;
        names.retain(|(joined, _)| **joined != *topic);
        names.push((topic.into(), name.into()));
        Ok(reply)
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        event: &str,
        payload: &RawValue,
    ) {
        match self.messages {
            MessagePolicy::Rebroadcast => ctx.rebroadcast(event, payload),
            MessagePolicy::BroadcastFrom => ctx.broadcast_from(event, payload),
            MessagePolicy::Refuse => ctx.reply(
                Status::Error,
                &Reply::reason("client messages are not accepted on this topic"),
            ),
        }
    }

    fn handle_leave(&self, ctx: &mut ChannelContext<'_, '_, Client>, _reason: LeaveReason) {
        let topic = ctx.topic().to_owned();
        let name = ctx.assigns().name_in(&topic).map(str::to_owned);
        ctx.assigns().names.retain(|(joined, _)| **joined != *topic);
        if let (true, Some(name)) = (self.notices, name) {
            ctx.broadcast_from("user_left", &json!({ "user": name }));
        }
    }
}

/// The name a member shows: the token's user, else the join's `name`
/// (trimmed, at most 64 characters), else "anonymous".
fn display_name(client: &Client, payload: &RawValue) -> String {
    if let Some(identity) = &client.identity {
        return identity.user.clone();
    }
    let params: JoinParams = serde_json::from_str(payload.get()).unwrap_or_default();
    let name: String = params
        .name
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    if name.is_empty() {
        "anonymous".to_owned()
    } else {
        name
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// An endpoint with one route per rule, in order.
pub(crate) fn endpoint(socket: ServerSocket, rules: &[ChannelRule]) -> Endpoint<ServerSocket> {
    rules.iter().fold(Endpoint::new(socket), |endpoint, rule| {
        endpoint.channel(
            &rule.pattern,
            RuleChannel {
                messages: rule.messages,
                presence: rule.presence,
                notices: rule.notices,
            },
        )
    })
}
