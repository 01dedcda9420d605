//! One socket's protocol logic: what each client message does.
//!
//! Pure dispatch over [`ClientEvent`]s; every frame it produces goes through
//! the socket's [`Outbound`] queue, so replies, snapshots and diffs reach the
//! client in the order they were made. Dropping a session (socket closed,
//! timed out, overflowed, task cancelled or panicked) removes all of its
//! memberships, and with them its presences.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use roster_presence::{MemberId, State};
use roster_protocol::{
    decode, decode_binary, ClientEvent, Frame, JoinConfig, Outgoing, PresenceAction, Reply,
    UserBroadcast, Vsn, TOPIC_PREFIX,
};

use crate::auth::Credential;
use crate::channel::{Channel, Member};
use crate::outbound::Outbound;
use crate::server::Server;

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
}

pub struct Session {
    server: Arc<Server>,
    out: Outbound,
    #[allow(dead_code)] // read by authorization (private channels) later
    credential: Credential,
    joined: HashMap<String, Joined>,
}

impl Session {
    pub fn new(server: Arc<Server>, out: Outbound, credential: Credential) -> Self {
        Session {
            server,
            out,
            credential,
            joined: HashMap::new(),
        }
    }

    fn vsn(&self) -> Vsn {
        self.out.vsn()
    }

    /// Handle one inbound text frame. Malformed frames are logged and
    /// ignored; the socket stays open (checklist item 10).
    pub fn handle_text(&mut self, text: &str) {
        match decode(self.vsn(), text) {
            Ok(frame) => self.handle(frame),
            Err(e) => tracing::debug!(error = %e, "ignoring malformed frame"),
        }
    }

    /// Handle one inbound binary frame: only vsn-2 kind-3 broadcasts exist.
    pub fn handle_binary(&mut self, bytes: &[u8]) {
        if self.vsn() != Vsn::V2 {
            return tracing::debug!("ignoring binary frame on a vsn 1.0.0 socket");
        }
        match decode_binary(bytes) {
            Ok(push) => {
                let envelope = push.envelope();
                self.broadcast(&envelope, Some(push.broadcast));
            }
            Err(e) => tracing::debug!(error = %e, "ignoring binary frame"),
        }
    }

    /// Refuse a join; the reason's code prefix is counted.
    fn refuse_join(&self, frame: &Frame, reason: &str) {
        let code = reason.split_once(':').map_or(reason, |(code, _)| code);
        self.server.metrics.join_refused(code);
        self.reply(frame, Reply::error(reason));
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

    fn handle(&mut self, frame: Frame) {
        match ClientEvent::from_frame(&frame) {
            ClientEvent::Heartbeat => self.reply(&frame, Reply::ok()),
            ClientEvent::Join(config) => self.join(&frame, config),
            ClientEvent::Leave => {
                if let Some(joined) = self.joined.remove(&frame.topic) {
                    self.server.registry.leave(&joined.channel, joined.member);
                    self.reply(&frame, Reply::ok());
                    self.out
                        .send_outgoing(&Outgoing::close(joined.join_ref.as_deref(), &frame.topic));
                } else {
                    self.reply(&frame, Reply::ok());
                }
            }
            ClientEvent::Presence(action) => self.presence(&frame, action),
            // Token refresh: no reply is expected. Verification arrives with auth.
            ClientEvent::AccessToken(_) => {}
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
        // `sb_…` or no token: the socket credential stands. Otherwise the
        // token must verify, as at connect.
        if let Some(token) = config.access_token.as_deref() {
            if !token.starts_with("sb_") {
                if let Err(e) = self.server.auth.verify_jwt(token) {
                    return self.refuse_join(frame, &e.join_reason());
                }
            }
        }
        // A second join of the same topic closes the first.
        if let Some(old) = self.joined.remove(topic) {
            self.server.registry.leave(&old.channel, old.member);
            self.out
                .send_outgoing(&Outgoing::close(old.join_ref.as_deref(), topic));
        }
        let key: Arc<str> = match config.presence_key {
            Some(k) => k.into(),
            None => self.server.generate_key().into(),
        };
        let member = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        let join_ref: Option<Arc<str>> = frame.join_ref.as_deref().map(Arc::from);
        // The reply goes first; the snapshot follows it (queued by the registry).
        self.reply(frame, Reply::ok_with(r#"{"postgres_changes":[]}"#));
        let channel = self.server.registry.join(
            topic,
            member,
            Member {
                out: self.out.clone(),
                join_ref: join_ref.clone(),
            },
            config.presence_enabled,
        );
        self.joined.insert(
            topic.to_owned(),
            Joined {
                channel,
                member,
                join_ref,
                key,
                broadcast_self: config.broadcast_self,
                broadcast_ack: config.broadcast_ack,
            },
        );
    }

    /// `self: false` → everyone but the sender; `ack: true` → an `ok` reply.
    fn broadcast(&mut self, frame: &Frame, msg: Option<UserBroadcast>) {
        let Some(joined) = self.joined.get(&frame.topic) else {
            return self.reply(frame, Reply::error("unmatched topic"));
        };
        let Some(msg) = msg else {
            // No event name: nothing to deliver; tell the client if it asked.
            if joined.broadcast_ack {
                self.reply(frame, Reply::error("broadcast needs a string `event`"));
            }
            return;
        };
        let sender = (!joined.broadcast_self).then_some(joined.member);
        joined.channel.broadcast(&msg, sender);
        if joined.broadcast_ack {
            self.reply(frame, Reply::ok());
        }
    }

    fn presence(&mut self, frame: &Frame, action: PresenceAction) {
        // Matched by topic: a stale, null or missing join_ref is fine (rt's REAL-981).
        let Some(joined) = self.joined.get(&frame.topic) else {
            return self.reply(frame, Reply::error("unmatched topic"));
        };
        match action {
            PresenceAction::Track(payload) => match State::from_value(payload) {
                Ok(state) => {
                    // Diff before reply: when `await track()` resolves, the
                    // client's own state already shows it.
                    joined
                        .channel
                        .track(joined.member, &joined.key, state, &self.server.refs);
                    self.reply(frame, Reply::ok());
                }
                Err(e) => self.reply(frame, Reply::error(&e.to_string())),
            },
            PresenceAction::Untrack => {
                joined.channel.untrack(joined.member);
                self.reply(frame, Reply::ok());
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

impl Drop for Session {
    fn drop(&mut self) {
        for (_, joined) in self.joined.drain() {
            self.server.registry.leave(&joined.channel, joined.member);
        }
    }
}
