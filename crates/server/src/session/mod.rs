//! One socket's protocol logic: what each client message does.
//!
//! Pure dispatch over [`ClientEvent`]s; every frame it produces goes through
//! the socket's [`Outbound`] queue, so replies, snapshots and diffs reach the
//! client in the order they were made. Dropping a session (socket closed,
//! timed out, overflowed, task cancelled or panicked) removes all of its
//! memberships, and with them its presences.
//!
//! A session knows its node only through a [`SessionContext`] (`context.rs`):
//! limits, access, shared rates, the registry, refs and keys, metrics and
//! the shutdown signal. It speaks `roster_protocol` frames in and the
//! queue's own frames out, so the tests (`tests.rs`) drive it with text
//! and read what it queued, without a socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use roster_presence::{MemberId, State, Updates};
use roster_protocol::{
    decode, decode_binary, events, reply_address, ClientEvent, Frame, JoinConfig, Outgoing,
    PresenceAction, PresenceUpdates, Reply, UserBroadcast, Vsn, TOPIC_PREFIX,
};

use crate::access::admission::RateWindow;
use crate::access::auth::{unix_now, AuthError, Credential};
use crate::access::authz::Rights;
use crate::channel::outbound::Outbound;
use crate::channel::{Channel, Member};
use crate::settings::Limits;

mod context;
#[cfg(test)]
mod tests;

pub use context::{Access, SessionContext};

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// One joined channel of this socket.
struct Joined {
    channel: Arc<Channel>,
    member: MemberId,
    join_ref: Option<Arc<str>>,
    key: Arc<str>,
    /// `config.broadcast.self`: receive own broadcasts.
    broadcast_self: bool,
    /// `config.broadcast.ack`: reply `ok` to each broadcast.
    broadcast_ack: bool,
    /// The JWT this channel runs under, when the join or a refresh gave one.
    token: Option<String>,
    /// When the channel's credential expires (Unix seconds); API keys never do.
    expires_at: Option<u64>,
    /// Private channels are authorized by policy; public ones allow all.
    private: bool,
    rights: Rights,
}

pub struct Session {
    ctx: Arc<SessionContext>,
    out: Outbound,
    credential: Credential,
    /// The client's address: some rates are counted per address, so that
    /// reconnecting does not reset them.
    ip: IpAddr,
    joined: HashMap<String, Joined>,
    /// Presence calls per topic in the current window. Kept by topic, not
    /// by join, so that leaving and rejoining does not start a new window.
    presence_calls: HashMap<String, RateWindow>,
    /// Broadcasts sent by this socket in the current second.
    events: RateWindow,
    /// Inbound frames of any kind in the current second.
    frames: RateWindow,
    /// Set when the socket must be closed: the close code and reason.
    close: Option<(u16, String)>,
}

impl Session {
    pub fn new(
        ctx: Arc<SessionContext>,
        out: Outbound,
        credential: Credential,
        ip: IpAddr,
    ) -> Self {
        Session {
            ctx,
            out,
            credential,
            ip,
            joined: HashMap::new(),
            presence_calls: HashMap::new(),
            events: RateWindow::default(),
            frames: RateWindow::default(),
            close: None,
        }
    }

    /// Why the socket must now be closed, if it must: a close code and reason.
    pub fn close_reason(&self) -> Option<(u16, &str)> {
        self.close.as_ref().map(|(code, why)| (*code, why.as_str()))
    }

    /// Close this socket after what is queued (1008: policy, 1007: bad data).
    fn close_socket(&mut self, code: u16, reason: impl Into<String>) {
        if self.close.is_none() {
            self.close = Some((code, reason.into()));
        }
    }

    /// Count one inbound frame against the socket's frame rate; over it,
    /// the socket is closed.
    fn frame_allowed(&mut self) -> bool {
        if self.close.is_some() {
            return false;
        }
        let max = self.ctx.limits.max_frames_per_second;
        if self.frames.allow(max, std::time::Duration::from_secs(1)) {
            return true;
        }
        self.ctx.metrics.refused("frame_rate");
        self.close_socket(1008, "Too many messages per second");
        false
    }

    fn vsn(&self) -> Vsn {
        self.out.vsn()
    }

    /// Handle one inbound text frame. A frame that does not decode gets an
    /// error reply when its ref and topic can be read, else the socket is
    /// closed with 1007 and the reason (the client would wait forever on a
    /// reply that never comes).
    pub fn handle_text(&mut self, text: &str) {
        if !self.frame_allowed() {
            return;
        }
        match decode(self.vsn(), text) {
            Ok(frame) => self.handle(frame),
            Err(e) => {
                tracing::debug!(error = %e, "malformed frame");
                self.ctx.metrics.refused("malformed");
                match reply_address(self.vsn(), text) {
                    Some(at) => self.reply(&at, Reply::error(&format!("MalformedMessage: {e}"))),
                    None => self.close_socket(1007, format!("malformed frame: {e}")),
                }
            }
        }
    }

    /// Handle one inbound binary frame: only vsn-2 kind-3 broadcasts exist.
    /// Anything else cannot be answered (no readable ref): 1007.
    pub fn handle_binary(&mut self, bytes: &[u8]) {
        if !self.frame_allowed() {
            return;
        }
        if self.vsn() != Vsn::V2 {
            self.ctx.metrics.refused("malformed");
            return self.close_socket(1007, "binary frames need vsn 2.0.0");
        }
        match decode_binary(bytes) {
            Ok(push) => {
                let envelope = push.envelope();
                self.broadcast(&envelope, Some(push.broadcast));
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed binary frame");
                self.ctx.metrics.refused("malformed");
                self.close_socket(1007, format!("malformed binary frame: {e}"));
            }
        }
    }

    /// The earliest moment a channel's credential expires, if any does.
    pub fn next_expiry(&self) -> Option<u64> {
        self.joined.values().filter_map(|j| j.expires_at).min()
    }

    /// Shut down every channel whose credential has expired by `now` (Unix seconds).
    pub fn expire(&mut self, now: u64) {
        let expired: Vec<(String, u64)> = self
            .joined
            .iter()
            .filter_map(|(t, j)| j.expires_at.filter(|&e| e <= now).map(|e| (t.clone(), e)))
            .collect();
        for (topic, exp) in expired {
            let e = AuthError::Expired {
                seconds_ago: now - exp,
            };
            self.shut_down(&topic, "token_expired", &e.system_message());
        }
    }

    /// Refuse a join; the reason's code prefix is counted.
    fn refuse_join(&self, frame: &Frame, reason: &str) {
        let code = reason.split_once(':').map_or(reason, |(code, _)| code);
        self.ctx.metrics.join_refused(code);
        self.reply(frame, Reply::error(reason));
    }

    /// A reply to send later (when a track's diff is out).
    fn reply_later(&self, frame: &Frame, reply: Reply) -> crate::channel::Ack {
        let payload = reply.payload();
        let text = Outgoing::reply(
            frame.join_ref.as_deref(),
            frame.ref_.as_deref(),
            &frame.topic,
            &payload,
        )
        .encode(self.vsn());
        let out = self.out.clone();
        Box::new(move || out.send(crate::channel::outbound::Frame::text(text)))
    }

    fn reply(&self, frame: &Frame, reply: Reply) {
        let payload = reply.payload();
        self.out.send_outgoing(&Outgoing::reply(
            frame.join_ref.as_deref(),
            frame.ref_.as_deref(),
            &frame.topic,
            &payload,
        ));
    }

    /// The server ends a channel (token expired, limit hit): a `system`
    /// error, then `phx_close`, as rt does; its presence leaves.
    /// `label` names the cause in metrics.
    fn shut_down(&mut self, topic: &str, label: &'static str, message: &str) {
        let payload = serde_json::json!({
            "extension": "system",
            "status": "error",
            "message": message,
            "channel": topic.strip_prefix(TOPIC_PREFIX).unwrap_or(topic),
        })
        .to_string();
        if self.close_channel(topic, Some(&payload)) {
            tracing::debug!(topic, message, "channel shut down");
            self.ctx.metrics.channel_shutdown(label);
        }
    }

    /// End this socket's membership of `topic` now (its presence leaves at
    /// once) and tell the client with `phx_close`, after an optional
    /// `system` payload. False when the topic was not joined.
    fn close_channel(&mut self, topic: &str, system: Option<&str>) -> bool {
        let Some(joined) = self.joined.remove(topic) else {
            return false;
        };
        self.ctx.registry.leave(&joined.channel, joined.member);
        let join_ref = joined.join_ref.as_deref();
        if let Some(payload) = system {
            self.out
                .send_outgoing(&Outgoing::push(join_ref, topic, events::SYSTEM, payload));
        }
        self.out.send_outgoing(&Outgoing::close(join_ref, topic));
        true
    }

    fn handle(&mut self, frame: Frame) {
        match ClientEvent::from_frame(&frame) {
            ClientEvent::Heartbeat => self.reply(&frame, Reply::ok()),
            ClientEvent::Join(config) => self.join(&frame, config),
            ClientEvent::Leave => {
                self.reply(&frame, Reply::ok());
                self.close_channel(&frame.topic, None);
            }
            ClientEvent::Presence(action) => self.presence(&frame, action),
            ClientEvent::AccessToken(token) => self.access_token(&frame, token),
            ClientEvent::Broadcast(msg) => self.broadcast(&frame, msg),
            ClientEvent::Other => {
                if !self.joined.contains_key(&frame.topic) {
                    self.reply(&frame, Reply::error("unmatched topic"));
                }
                // Unknown events in a joined channel are ignored without a reply, as rt does.
            }
        }
    }

    fn join(&mut self, frame: &Frame, config: JoinConfig) {
        let topic = frame.topic.as_str();
        let limits = &self.ctx.limits;
        // Budgets first: nothing of the join is kept before they pass.
        if topic.len() > limits.max_topic_bytes {
            let max = limits.max_topic_bytes;
            return self.refuse_join(
                frame,
                &format!("TopicNameTooLong: A topic may be at most {max} bytes"),
            );
        }
        if let Err(field) = JoinConfig::check(&frame.payload) {
            return self.refuse_join(frame, &format!("InvalidJoinPayload: {field}"));
        }
        if config
            .presence_key
            .as_ref()
            .is_some_and(|k| k.len() > limits.max_presence_key_bytes)
        {
            let max = limits.max_presence_key_bytes;
            return self.refuse_join(
                frame,
                &format!("PresenceKeyTooLong: A presence key may be at most {max} bytes"),
            );
        }
        let Some(name) = topic.strip_prefix(TOPIC_PREFIX) else {
            return self.refuse_join(frame, "unmatched topic");
        };
        if name.is_empty() {
            return self.refuse_join(frame, "TopicNameRequired: You must provide a topic name");
        }
        if !config.postgres_changes.is_empty() {
            // Replying `[]` would make the client error out anyway, and
            // pretending to subscribe would fail silently.
            return self.refuse_join(
                frame,
                "Unsupported: postgres_changes are not available on this server",
            );
        }
        let ctx = Arc::clone(&self.ctx);
        let limits = &ctx.limits;
        if !self.joined.contains_key(topic) && self.joined.len() >= limits.max_channels_per_socket {
            return self.refuse_join(frame, "ChannelRateLimitReached: Too many channels");
        }
        if !ctx.admission.allow_join(limits.max_joins_per_second) {
            // rt refuses the join and then disconnects the whole socket.
            self.close_socket(1008, "join rate limit");
            return self.refuse_join(
                frame,
                "ClientJoinRateLimitReached: Too many joins per second",
            );
        }
        if !ctx.registry.backend().is_healthy() {
            // realtime-js retries a refused join with backoff; meanwhile a
            // load balancer sees /ready fail and moves new sockets away.
            return self.refuse_join(
                frame,
                "NodeUnavailable: This node lost its cluster link; try again",
            );
        }
        let private = config.private;
        if ctx.access.private_only && !private {
            return self.refuse_join(
                frame,
                "PrivateOnly: This project only allows private channels",
            );
        }
        // `sb_…` or no token: the socket credential stands. Otherwise the
        // token must verify, as at connect.
        let (token, cred) = match config.access_token.as_deref() {
            Some(t) if !t.starts_with("sb_") => match self.ctx.access.verify_jwt(t) {
                Ok(cred) => (Some(t.to_owned()), cred),
                Err(e) => return self.refuse_join(frame, &e.join_reason()),
            },
            _ => (None, self.credential.clone()),
        };
        let expires_at = cred.expires_at();
        let rights = if private {
            ctx.access.rights(name, &cred)
        } else {
            Rights::ALL
        };
        if !rights.can_join() {
            return self.refuse_join(
                frame,
                &format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}"),
            );
        }
        // The socket's own JWT may have expired since it connected.
        let now = unix_now();
        if let Some(exp) = expires_at.filter(|&e| e <= now) {
            let e = AuthError::Expired {
                seconds_ago: now - exp,
            };
            return self.refuse_join(frame, &e.join_reason());
        }
        // A second join of the same topic closes the first.
        self.close_channel(topic, None);
        let key: Arc<str> = match config.presence_key {
            Some(k) => k.into(),
            None => self.ctx.keys.next().into(),
        };
        let member = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        let join_ref: Option<Arc<str>> = frame.join_ref.as_deref().map(Arc::from);
        let ok = Reply::ok_with(r#"{"postgres_changes":[]}"#).payload();
        let reply = Outgoing::reply(frame.join_ref.as_deref(), frame.ref_.as_deref(), topic, &ok);
        let joined = self.ctx.registry.join(
            topic,
            private,
            member,
            Member {
                out: self.out.clone(),
                join_ref: join_ref.clone(),
                presence_read: rights.presence_read,
                count_only: config.presence_count_only,
                broadcast_read: rights.broadcast_read,
                updates: match config.presence_updates {
                    Some(PresenceUpdates::Classic) => Updates::Classic,
                    Some(PresenceUpdates::Replace) => Updates::Replace,
                    None => ctx.presence.updates,
                },
            },
            &reply,
            config.presence_enabled,
            limits.max_members_per_channel,
        );
        let Ok(channel) = joined else {
            return self.refuse_join(frame, "TooManyMembers: This channel is full");
        };
        self.joined.insert(
            topic.to_owned(),
            Joined {
                channel,
                member,
                join_ref,
                key,
                broadcast_self: config.broadcast_self,
                broadcast_ack: config.broadcast_ack,
                token,
                expires_at,
                private,
                rights,
            },
        );
    }

    /// Token refresh (docs/protocol.md §3.6): never replied to. `sb_…`, null and
    /// the current token are ignored; a valid JWT replaces the channel's
    /// credential; an invalid one shuts the channel down.
    fn access_token(&mut self, frame: &Frame, token: Option<String>) {
        let Some(joined) = self.joined.get_mut(&frame.topic) else {
            return self.reply(frame, Reply::error("unmatched topic"));
        };
        let Some(token) = token.filter(|t| !t.starts_with("sb_")) else {
            return;
        };
        if joined.token.as_deref() == Some(token.as_str()) {
            return;
        }
        let cred = match self.ctx.access.verify_jwt(&token) {
            Ok(cred) => cred,
            Err(e) => return self.shut_down(&frame.topic, e.label(), &e.system_message()),
        };
        joined.expires_at = cred.expires_at();
        joined.token = Some(token);
        if joined.private {
            // The new claims may grant other rights, or none.
            let name = frame
                .topic
                .strip_prefix(TOPIC_PREFIX)
                .unwrap_or(&frame.topic);
            let rights = self.ctx.access.rights(name, &cred);
            if !rights.can_join() {
                let message = format!(
                    "You no longer have permission to read from this Channel topic: {name}"
                );
                return self.shut_down(&frame.topic, "unauthorized", &message);
            }
            joined.rights = rights;
            joined.channel.set_read_rights(
                joined.member,
                rights.presence_read,
                rights.broadcast_read,
            );
        }
    }

    /// `self: false` → everyone but the sender; `ack: true` → an `ok` reply.
    fn broadcast(&mut self, frame: &Frame, msg: Option<UserBroadcast>) {
        if !self.joined.contains_key(&frame.topic) {
            return self.reply(frame, Reply::error("unmatched topic"));
        }
        // Every broadcast push counts against the socket's rate, as in rt.
        let max = self.ctx.limits.max_events_per_second_per_socket;
        if !self.events.allow(max, std::time::Duration::from_secs(1)) {
            return self.shut_down(&frame.topic, "event_rate", "Too many messages per second");
        }
        let joined = &self.joined[&frame.topic];
        let Some(msg) = msg else {
            // No event name: nothing to deliver; tell the client if it asked.
            if joined.broadcast_ack {
                self.reply(frame, Reply::error("broadcast needs a string `event`"));
            }
            return;
        };
        if !joined.rights.broadcast_write {
            if joined.broadcast_ack {
                let name = frame
                    .topic
                    .strip_prefix(TOPIC_PREFIX)
                    .unwrap_or(&frame.topic);
                let reason = format!("Unauthorized: You do not have permissions to write to this Channel topic: {name}");
                self.reply(frame, Reply::error(&reason));
            }
            return;
        }
        let limits = &self.ctx.limits;
        if let Err(reason) = check_broadcast(&msg, limits) {
            self.ctx.metrics.refused(reason.budget);
            return self.reply(frame, Reply::error(&reason.message));
        }
        let max_per_ip = limits.max_broadcasts_per_second_per_ip;
        if !self.ctx.admission.allow_broadcast_from(self.ip, max_per_ip) {
            self.ctx.metrics.refused("ip_broadcast_rate");
            return self.reply(
                frame,
                Reply::error("RateLimited: Too many broadcasts from this address"),
            );
        }
        let sender = (!joined.broadcast_self).then_some(joined.member);
        match joined.channel.broadcast(&msg, sender) {
            Ok(_) if joined.broadcast_ack => self.reply(frame, Reply::ok()),
            Ok(_) => {}
            Err(_) => self.reply(frame, Reply::error(CHANNEL_BUSY)),
        }
    }

    fn presence(&mut self, frame: &Frame, action: PresenceAction) {
        let limits = &self.ctx.limits;
        // Matched by topic: a stale, null or missing join_ref is fine (rt's REAL-981).
        if !self.joined.contains_key(&frame.topic) {
            return self.reply(frame, Reply::error("unmatched topic"));
        }
        // Every presence push counts against the channel's window, which a
        // rejoin does not reset; expired windows of other topics are let go.
        let window = limits.presence_window;
        if self.presence_calls.len() > limits.max_channels_per_socket {
            self.presence_calls
                .retain(|topic, w| w.is_current(window) || self.joined.contains_key(topic));
        }
        if !self
            .presence_calls
            .entry(frame.topic.clone())
            .or_default()
            .allow(limits.presence_calls_per_window, window)
        {
            return self.shut_down(
                &frame.topic,
                "presence_rate",
                "Client presence rate limit exceeded",
            );
        }
        let writes = matches!(action, PresenceAction::Track(_) | PresenceAction::Untrack);
        if writes
            && !self
                .ctx
                .admission
                .allow_presence_event(limits.max_presence_events_per_second)
        {
            return self.shut_down(
                &frame.topic,
                "presence_events",
                "Too many presence messages per second",
            );
        }
        let max_per_ip = limits.max_presence_calls_per_second_per_ip;
        if writes
            && !self
                .ctx
                .admission
                .allow_presence_call_from(self.ip, max_per_ip)
        {
            self.ctx.metrics.refused("ip_presence_rate");
            return self.reply(
                frame,
                Reply::error("RateLimited: Too many presence calls from this address"),
            );
        }
        let joined = self
            .joined
            .get_mut(&frame.topic)
            .expect("joined: checked above");
        if writes && !joined.rights.presence_write {
            // rt answers an RLS-denied presence write with an empty error.
            return self.reply(frame, Reply::error_empty());
        }
        match action {
            PresenceAction::Track(payload) => match State::from_value(payload) {
                Ok(state) if state.as_json().len() > limits.max_track_bytes => {
                    self.shut_down(&frame.topic, "track_size", "Track message size exceeded");
                }
                Ok(state) => {
                    // Diff before reply: when `await track()` resolves, the
                    // client's own state already shows it.
                    let ack = self.reply_later(frame, Reply::ok());
                    let joined = &self.joined[&frame.topic];
                    let tracked = joined.channel.track(
                        joined.member,
                        &joined.key,
                        state,
                        &self.ctx.refs,
                        limits.max_state_bytes_per_channel,
                        ack,
                    );
                    match tracked {
                        Ok(()) => {}
                        Err(_) => self.reply(
                            frame,
                            Reply::error("PresenceStateFull: This channel's presence state is at its size limit"),
                        ),
                    }
                }
                Err(e) => self.reply(frame, Reply::error(&e.to_string())),
            },
            PresenceAction::Untrack => {
                let ack = self.reply_later(frame, Reply::ok());
                let joined = &self.joined[&frame.topic];
                joined.channel.untrack(joined.member, ack);
            }
            PresenceAction::Missing => self.reply(frame, Reply::ok()),
            PresenceAction::Unknown => self.reply(frame, Reply::error_empty()),
        }
    }

    /// Number of channels this socket has joined.
    pub fn channel_count(&self) -> usize {
        self.joined.len()
    }
}

/// The error reply of a broadcast refused by its channel's budget.
pub const CHANNEL_BUSY: &str =
    "RateLimited: This channel is at its broadcast rate; try again shortly";

/// A broadcast refused by a byte budget: which one (for metrics) and why.
pub struct Refused {
    pub budget: &'static str,
    pub message: String,
}

/// The byte budgets of a broadcast, whether it came by WebSocket or REST:
/// an event name binary frames can carry, a payload well under the
/// official clients' frame limit.
pub fn check_broadcast(msg: &UserBroadcast, limits: &Limits) -> Result<(), Refused> {
    if msg.event.len() > limits.max_event_bytes {
        return Err(Refused {
            budget: "event_bytes",
            message: format!(
                "EventNameTooLong: An event name may be at most {} bytes",
                limits.max_event_bytes
            ),
        });
    }
    let size = msg.body.len() + msg.meta.as_ref().map_or(0, String::len);
    if size > limits.max_broadcast_bytes {
        return Err(Refused {
            budget: "broadcast_bytes",
            message: format!(
                "PayloadTooLarge: A broadcast payload may be at most {} bytes, this one is {size}",
                limits.max_broadcast_bytes
            ),
        });
    }
    Ok(())
}

impl Drop for Session {
    /// The socket is gone without a `phx_leave`: with a leave grace period
    /// the presences stay a while (a quick reconnect takes them over with no
    /// churn); without one they leave now.
    fn drop(&mut self) {
        let grace = self.ctx.presence.grace;
        let shutting_down = self.ctx.shutdown.is_cancelled();
        for (_, joined) in self.joined.drain() {
            let keep = !grace.is_zero() && !shutting_down;
            let registry = &self.ctx.registry;
            if registry.depart(&joined.channel, joined.member, keep) {
                let registry = registry.clone();
                let expire = async move {
                    tokio::time::sleep(grace).await;
                    registry.expire(&joined.channel, joined.member);
                };
                // Without a runtime the process is ending: nobody to tell.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(expire);
                }
            }
        }
    }
}
