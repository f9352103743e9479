//! Channel policy by configuration: who may connect (token, Origin, the
//! connect hook), which topics may be joined (the token's patterns, the
//! join hook), and what a client's message does (the rule, the message
//! hook), with no code.

use std::{any::Any, sync::Arc};

use herald::{
    Reject, Request,
    channels::{
        Channel, ChannelContext, ConnectAnswer, Endpoint, JoinResult, LeaveReason, Reply, Socket,
    },
    protocol::phoenix::Status,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::{
    auth::TokenVerifier,
    config::{ChannelRule, MessagePolicy},
    hooks::{Admitted, Asking, Hooks, JoinDecision, Publish, PublishMode},
};

/// The longest display name a join may give, in characters.
const MAX_NAME_CHARS: usize = 64;

/// Authorizes connections: the Origin allow-list, then the token if auth
/// is on.
#[derive(Debug)]
pub(crate) struct ServerSocket {
    verifier: Option<Arc<TokenVerifier>>,
    allowed_origins: Arc<[String]>,
    hooks: Option<Arc<Hooks>>,
}

impl ServerSocket {
    pub(crate) fn new(
        verifier: Option<Arc<TokenVerifier>>,
        allowed_origins: Arc<[String]>,
        hooks: Option<Arc<Hooks>>,
    ) -> Self {
        Self {
            verifier,
            allowed_origins,
            hooks,
        }
    }

    /// The checks made on the loop: Origin, then the token if auth is on.
    fn admit(&self, request: &Request) -> Result<Admitted, Reject> {
        self.check_origin(request)?;
        let identity = match &self.verifier {
            Some(verifier) => Some(verifier.authenticate(request)?),
            None => None,
        };
        Ok(Admitted::by_token(identity))
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
    admitted: Admitted,
    names: Vec<(Box<str>, Box<str>)>,
}

impl Client {
    pub(crate) fn new(admitted: Admitted) -> Self {
        Self {
            admitted,
            names: Vec::new(),
        }
    }

    fn may_join(&self, topic: &str) -> bool {
        match &self.admitted.channels {
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
        self.admit(request).map(Client::new)
    }

    /// With a connect hook, past the Origin and token checks, the backend
    /// decides; a request that fails those checks is refused by `connect`.
    fn connect_later(
        &self,
        request: &Request,
        answer: ConnectAnswer<Client>,
    ) -> Result<(), ConnectAnswer<Client>> {
        let Some(hooks) = self
            .hooks
            .as_ref()
            .filter(|hooks| hooks.decides_connections())
        else {
            return Err(answer);
        };
        match self.admit(request) {
            Ok(admitted) => {
                hooks.connect(request, admitted, answer);
                Ok(())
            }
            Err(_) => Err(answer),
        }
    }

    fn id(&self, assigns: &Client) -> Option<String> {
        assigns.admitted.user.clone()
    }
}

/// The channel of one rule.
#[derive(Debug)]
pub(crate) struct RuleChannel {
    messages: MessagePolicy,
    presence: bool,
    notices: bool,
    hooks: Option<Arc<Hooks>>,
    join_hook: Option<Arc<str>>,
    message_hook: Option<Arc<str>>,
    publish: PublishMode,
}

impl RuleChannel {
    /// Lets the member in: presence, the notice, the name it joined under.
    fn admit(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        name: String,
        reply: Option<Reply>,
    ) -> JoinResult {
        let topic = ctx.topic().to_owned();
        let reply = reply.unwrap_or_else(|| {
            Reply::json(&json!({ "user": name })).unwrap_or_else(|_| Reply::empty())
        });
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

    /// Publishes a client's message as the rule says.
    fn publish(&self, ctx: &mut ChannelContext<'_, '_, Client>, event: &str, payload: &RawValue) {
        match self.messages {
            MessagePolicy::Rebroadcast => ctx.rebroadcast(event, payload),
            MessagePolicy::BroadcastFrom => ctx.broadcast_from(event, payload),
            MessagePolicy::Refuse => {}
        }
    }
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
        if let (Some(hooks), Some(url)) = (&self.hooks, &self.join_hook)
            && let Some(later) = ctx.join_later()
        {
            let asking = Asking {
                url,
                topic: &topic,
                payload,
                admitted: &ctx.assigns().admitted,
            };
            hooks.join(&asking, name, later);
            // What `handle_join_answer` returns decides.
            return Ok(Reply::empty());
        }
        self.admit(ctx, name, None)
    }

    fn handle_join_answer(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        message: &(dyn Any + Send + Sync),
    ) -> JoinResult {
        match message.downcast_ref::<JoinDecision>() {
            Some(JoinDecision::Allow { reply, name }) => {
                self.admit(ctx, name.clone(), reply.clone())
            }
            Some(JoinDecision::Refuse(refusal)) => Err(refusal.clone()),
            None => Err(Reply::reason("join not answered")),
        }
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        event: &str,
        payload: &RawValue,
    ) {
        if self.messages == MessagePolicy::Refuse {
            let refusal = Reply::reason("client messages are not accepted on this topic");
            return ctx.reply(Status::Error, &refusal);
        }
        let (Some(hooks), Some(url)) = (&self.hooks, &self.message_hook) else {
            return self.publish(ctx, event, payload);
        };
        let reply = ctx.reply_later();
        let channel = ctx.handle();
        let topic = ctx.topic().to_owned();
        let asking = Asking {
            url,
            topic: &topic,
            payload,
            admitted: &ctx.assigns().admitted,
        };
        hooks.message(&asking, event, self.publish, channel, reply);
    }

    /// What the message hook allowed to publish.
    fn handle_app_info(
        &self,
        ctx: &mut ChannelContext<'_, '_, Client>,
        message: &(dyn Any + Send + Sync),
    ) {
        let Some(publish) = message.downcast_ref::<Arc<Publish>>() else {
            return;
        };
        self.publish(ctx, &publish.event, &publish.payload);
        if let Some((handle, response)) = publish.take_reply() {
            let _ = handle.reply(Status::Ok, &response);
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
    if let Some(user) = &client.admitted.user {
        return user.clone();
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
pub(crate) fn endpoint(
    socket: ServerSocket,
    rules: &[ChannelRule],
    hooks: Option<&Arc<Hooks>>,
) -> Endpoint<ServerSocket> {
    rules.iter().fold(Endpoint::new(socket), |endpoint, rule| {
        endpoint.channel(
            &rule.pattern,
            RuleChannel {
                messages: rule.messages,
                presence: rule.presence,
                notices: rule.notices,
                hooks: hooks.cloned(),
                join_hook: rule.join_hook.as_deref().map(Arc::from),
                message_hook: rule.message_hook.as_deref().map(Arc::from),
                publish: rule.message_hook_publish,
            },
        )
    })
}
