//! The channels' state machine inside the background task: joins and
//! rejoins, pushes and their replies, timeouts, and inbound dispatch.
//!
//! No I/O: the socket loop feeds it events and writes out what it queues.
//! Rules follow phx-js: a channel message whose `join_ref` is set and is not
//! the channel's current join ref is dropped (as is a `phx_close` /
//! `phx_error` whose `ref` is); each (re)join resets the presence sync so
//! diffs wait for the new snapshot; errored channels rejoin with backoff.

use std::collections::HashMap;
use std::sync::Arc;

use roster_protocol::push::{ClientPush, JoinPayload};
use roster_protocol::{
    decode, decode_user_broadcast, events, Frame, PresenceUpdates, Vsn, PHOENIX_TOPIC,
};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::command::Command;
use crate::shared::SocketShared;
use crate::shared::{ChannelShared, ChannelStatus};
use crate::{BroadcastMessage, Error};

type Reply = oneshot::Sender<Result<(), Error>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// Wants to join; waits for the socket.
    Waiting,
    Joining,
    Joined,
    /// Refused, timed out or errored: rejoin at `retry_at`.
    Errored {
        retry_at: Instant,
    },
    Leaving,
}

struct Buffered {
    push: ClientPush,
    /// See `Command::Push`.
    awaits_reply: bool,
    reply: Option<Reply>,
    deadline: Instant,
}

struct Chan {
    shared: Arc<ChannelShared>,
    state: State,
    join_ref: Option<String>,
    /// Failed joins in a row, for the backoff.
    tries: usize,
    /// `subscribe()` calls waiting for the outcome, and their deadline.
    waiters: Vec<oneshot::Sender<ChannelStatus>>,
    waiters_deadline: Option<Instant>,
    /// Pushes made while not joined, sent on join.
    buffer: Vec<Buffered>,
    /// What to re-track after a rejoin.
    last_tracked: Option<Value>,
}

impl Chan {
    fn new(shared: Arc<ChannelShared>) -> Self {
        Chan {
            shared,
            state: State::Closed,
            join_ref: None,
            tries: 0,
            waiters: Vec::new(),
            waiters_deadline: None,
            buffer: Vec::new(),
            last_tracked: None,
        }
    }

    fn wants_join(&self) -> bool {
        !matches!(self.state, State::Closed | State::Leaving)
    }

    /// Presence and broadcast messages are applied in these states.
    fn is_active(&self) -> bool {
        matches!(self.state, State::Joining | State::Joined)
    }

    fn notify(&mut self, status: ChannelStatus) {
        for w in self.waiters.drain(..) {
            let _ = w.send(status.clone());
        }
        self.waiters_deadline = None;
        self.shared.set_status(status);
    }

    fn fail_buffer(&mut self, error: &Error) {
        for b in self.buffer.drain(..) {
            if let Some(r) = b.reply {
                let _ = r.send(Err(error.clone()));
            }
        }
    }
}

enum Pending {
    Join {
        topic: String,
        join_ref: String,
        deadline: Instant,
    },
    Push {
        topic: String,
        reply: Option<Reply>,
        deadline: Instant,
    },
    Leave {
        topic: String,
        remove: bool,
        reply: Option<Reply>,
        deadline: Instant,
    },
}

impl Pending {
    fn deadline(&self) -> Instant {
        match self {
            Pending::Join { deadline, .. }
            | Pending::Push { deadline, .. }
            | Pending::Leave { deadline, .. } => *deadline,
        }
    }
}

/// Frames to write and refs to hand out.
struct Io {
    vsn: Vsn,
    connected: bool,
    next_ref: u64,
    out: Vec<String>,
}

impl Io {
    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn emit(&mut self, join_ref: Option<&str>, ref_: &str, topic: &str, push: &ClientPush) {
        if !self.connected {
            return;
        }
        self.out
            .push(push.encode(self.vsn, join_ref, Some(ref_), topic));
    }

    /// Send a push now; register it for its reply unless none is expected.
    fn send_push(
        &mut self,
        pending: &mut HashMap<String, Pending>,
        topic: &str,
        join_ref: Option<&str>,
        push: Buffered,
    ) {
        let r = self.take_ref();
        self.emit(join_ref, &r, topic, &push.push);
        if !push.awaits_reply {
            if let Some(reply) = push.reply {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        pending.insert(
            r,
            Pending::Push {
                topic: topic.to_owned(),
                reply: push.reply,
                deadline: push.deadline,
            },
        );
    }
}

/// The reason in an error reply: `response.reason`, else the response itself.
fn reason_of(payload: &Value) -> String {
    let response = payload.get("response");
    match response.and_then(|r| r.get("reason")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => match response {
            Some(r) if r.as_object().is_some_and(|o| !o.is_empty()) => r.to_string(),
            _ => "error".to_owned(),
        },
    }
}

pub(crate) struct Router {
    shared: Arc<SocketShared>,
    io: Io,
    chans: HashMap<String, Chan>,
    pending: HashMap<String, Pending>,
    heartbeat_ref: Option<String>,
    /// `connect()` was called: stay connected even without channels.
    pub(crate) want_connection: bool,
}

impl Router {
    pub(crate) fn new(shared: Arc<SocketShared>) -> Self {
        Router {
            io: Io {
                vsn: shared.options.vsn,
                connected: false,
                next_ref: 0,
                out: Vec::new(),
            },
            shared,
            chans: HashMap::new(),
            pending: HashMap::new(),
            heartbeat_ref: None,
            want_connection: false,
        }
    }

    /// Frames to write, in order.
    pub(crate) fn drain(&mut self) -> Vec<String> {
        std::mem::take(&mut self.io.out)
    }

    pub(crate) fn wants_connection(&self) -> bool {
        self.want_connection || self.chans.values().any(Chan::wants_join)
    }

    fn timeout(&self) -> std::time::Duration {
        self.shared.options.timeout
    }

    // ---- connection events ----------------------------------------------

    pub(crate) fn on_open(&mut self, now: Instant) {
        self.io.connected = true;
        self.heartbeat_ref = None;
        let topics: Vec<String> = self
            .chans
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Waiting | State::Errored { .. }))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in topics {
            self.start_join(&topic, now);
        }
    }

    pub(crate) fn on_close(&mut self, reason: &str) {
        self.io.connected = false;
        self.io.out.clear();
        self.heartbeat_ref = None;
        // Join and leave replies cannot come any more; push replies neither,
        // but those callers wait for their own timeout, as in phx-js.
        let lost: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| !matches!(p, Pending::Push { .. }))
            .map(|(r, _)| r.clone())
            .collect();
        for r in lost {
            if let Some(Pending::Leave {
                topic,
                remove,
                reply,
                ..
            }) = self.pending.remove(&r)
            {
                self.finish_leave(&topic, remove);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        let status = ChannelStatus::ChannelError(format!("connection lost: {reason}"));
        for chan in self.chans.values_mut() {
            if matches!(chan.state, State::Joining | State::Joined) {
                chan.state = State::Waiting;
                chan.notify(status.clone());
            }
        }
    }

    pub(crate) fn on_connect_failed(&mut self, error: &Error) {
        let status = ChannelStatus::ChannelError(error.to_string());
        for chan in self.chans.values_mut() {
            if matches!(chan.state, State::Waiting) {
                chan.notify(status.clone());
            }
        }
    }

    /// Time for a heartbeat: `false` if the previous one is still unanswered.
    pub(crate) fn heartbeat(&mut self) -> bool {
        if self.heartbeat_ref.is_some() {
            return false;
        }
        let r = self.io.take_ref();
        if self.io.connected {
            self.io
                .out
                .push(roster_protocol::push::heartbeat(self.io.vsn, &r));
        }
        self.heartbeat_ref = Some(r);
        true
    }

    /// The task ends: everyone waiting learns it.
    pub(crate) fn shutdown(&mut self) {
        self.io.connected = false;
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Push { reply: Some(r), .. } => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Pending::Leave { reply: Some(r), .. } => {
                    let _ = r.send(Ok(()));
                }
                _ => {}
            }
        }
        for chan in self.chans.values_mut() {
            chan.fail_buffer(&Error::Disconnected);
            chan.state = State::Closed;
            chan.notify(ChannelStatus::Closed);
        }
        self.chans.clear();
    }

    // ---- commands ---------------------------------------------------------

    pub(crate) fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Subscribe(shared, reply) => self.subscribe(shared, reply, now),
            Command::Push {
                topic,
                push,
                awaits_reply,
                reply,
            } => self.push(&topic, *push, awaits_reply, reply, now),
            Command::Leave {
                topic,
                remove,
                reply,
            } => self.leave(&topic, remove, reply, now),
            Command::AccessToken(token) => {
                let push = ClientPush::AccessToken(token);
                for (topic, chan) in &self.chans {
                    if chan.state == State::Joined {
                        let r = self.io.take_ref();
                        let jr = chan.join_ref.as_deref();
                        self.io.emit(jr, &r, topic, &push);
                    }
                }
            }
            // Handled by the socket loop.
            Command::Connect(_) | Command::Disconnect(_) => {}
        }
    }

    fn subscribe(
        &mut self,
        shared: Arc<ChannelShared>,
        reply: oneshot::Sender<ChannelStatus>,
        now: Instant,
    ) {
        let topic = shared.topic.clone();
        let timeout = self.timeout();
        let chan = self
            .chans
            .entry(topic.clone())
            .or_insert_with(|| Chan::new(shared.clone()));
        if !Arc::ptr_eq(&chan.shared, &shared) {
            // The channel was removed and created anew under the same topic.
            chan.shared = shared;
        }
        if chan.state == State::Joined {
            let _ = reply.send(ChannelStatus::Subscribed);
            return;
        }
        chan.waiters.push(reply);
        chan.waiters_deadline.get_or_insert(now + timeout);
        match chan.state {
            State::Joining => {}
            _ if self.io.connected => self.start_join(&topic, now),
            _ => {
                chan.state = State::Waiting;
                chan.shared.set_status(ChannelStatus::Joining);
            }
        }
    }

    fn start_join(&mut self, topic: &str, now: Instant) {
        let r = self.io.take_ref();
        let token = self
            .shared
            .access_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deadline = now + self.timeout();
        let Some(chan) = self.chans.get_mut(topic) else {
            return;
        };
        chan.join_ref = Some(r.clone());
        chan.state = State::Joining;
        chan.shared.rejoined();
        chan.shared.set_status(ChannelStatus::Joining);
        let o = &chan.shared.options;
        let join = ClientPush::Join(JoinPayload {
            broadcast_ack: o.broadcast_ack,
            broadcast_self: o.broadcast_self,
            presence_updates: o.quiet_updates.then_some(PresenceUpdates::Replace),
            private: o.private,
            access_token: Some(token),
            ..JoinPayload::presence(o.presence_key.clone())
        });
        self.io.emit(Some(&r), &r, topic, &join);
        self.pending.insert(
            r.clone(),
            Pending::Join {
                topic: topic.to_owned(),
                join_ref: r,
                deadline,
            },
        );
    }

    fn push(
        &mut self,
        topic: &str,
        push: ClientPush,
        awaits_reply: bool,
        reply: Reply,
        now: Instant,
    ) {
        let deadline = now + self.timeout();
        let Some(chan) = self.chans.get_mut(topic).filter(|c| c.wants_join()) else {
            let _ = reply.send(Err(Error::NotSubscribed));
            return;
        };
        // Remembered for re-tracking after a rejoin.
        match &push {
            ClientPush::Track(state) => chan.last_tracked = Some(state.clone()),
            ClientPush::Untrack => chan.last_tracked = None,
            _ => {}
        }
        let push = Buffered {
            push,
            awaits_reply,
            reply: Some(reply),
            deadline,
        };
        if chan.state == State::Joined {
            let jr = chan.join_ref.clone();
            self.io
                .send_push(&mut self.pending, topic, jr.as_deref(), push);
        } else {
            chan.buffer.push(push);
        }
    }

    fn leave(&mut self, topic: &str, remove: bool, reply: Reply, now: Instant) {
        let deadline = now + self.timeout();
        let Some(chan) = self.chans.get_mut(topic) else {
            let _ = reply.send(Ok(()));
            return;
        };
        chan.last_tracked = None;
        chan.fail_buffer(&Error::ChannelClosed);
        let live = matches!(chan.state, State::Joined | State::Joining) && self.io.connected;
        chan.state = State::Leaving;
        for w in chan.waiters.drain(..) {
            let _ = w.send(ChannelStatus::Closed);
        }
        chan.waiters_deadline = None;
        if live {
            let r = self.io.take_ref();
            let jr = chan.join_ref.clone();
            self.io.emit(jr.as_deref(), &r, topic, &ClientPush::Leave);
            self.pending.insert(
                r,
                Pending::Leave {
                    topic: topic.to_owned(),
                    remove,
                    reply: Some(reply),
                    deadline,
                },
            );
        } else {
            self.finish_leave(topic, remove);
            let _ = reply.send(Ok(()));
        }
    }

    fn finish_leave(&mut self, topic: &str, remove: bool) {
        let Some(chan) = self.chans.get_mut(topic) else {
            return;
        };
        if chan.state == State::Leaving {
            chan.state = State::Closed;
            chan.join_ref = None;
            chan.notify(ChannelStatus::Closed);
            if remove {
                self.chans.remove(topic);
            }
        }
    }

    // ---- inbound ------------------------------------------------------------

    pub(crate) fn on_text(&mut self, text: &str, now: Instant) {
        match decode(self.io.vsn, text) {
            Ok(frame) => self.on_frame(frame, now),
            Err(e) => tracing::debug!(error = %e, "ignoring malformed frame"),
        }
    }

    pub(crate) fn on_binary(&mut self, bytes: &[u8]) {
        match decode_user_broadcast(bytes) {
            Ok(b) => {
                if let Some(chan) = self.chans.get(&b.topic).filter(|c| c.is_active()) {
                    chan.shared
                        .dispatch_broadcast(&BroadcastMessage::from_binary(b.broadcast));
                }
            }
            Err(e) => tracing::debug!(error = %e, "ignoring binary frame"),
        }
    }

    fn on_frame(&mut self, f: Frame, now: Instant) {
        if f.topic == PHOENIX_TOPIC {
            if f.event == events::REPLY && f.ref_.is_some() && f.ref_ == self.heartbeat_ref {
                self.heartbeat_ref = None;
            }
            return;
        }
        let Some(chan) = self.chans.get(&f.topic) else {
            return tracing::debug!(topic = %f.topic, event = %f.event, "message for no channel");
        };
        // phx-js `isMember`: another join's message.
        if f.join_ref.is_some() && f.join_ref != chan.join_ref {
            return tracing::debug!(topic = %f.topic, event = %f.event, "stale join_ref, dropped");
        }
        match f.event.as_str() {
            events::REPLY => {
                if let Some(p) = f.ref_.as_ref().and_then(|r| self.pending.remove(r)) {
                    self.on_reply(p, &f.payload, now);
                }
            }
            events::CLOSE | events::ERROR => {
                // realtime-js `_notThisChannelEvent`.
                if f.ref_.is_some() && f.ref_ != chan.join_ref {
                    return;
                }
                if f.event == events::CLOSE {
                    self.on_server_close(&f.topic);
                } else {
                    self.on_channel_error(&f.topic, &f.payload, now);
                }
            }
            events::PRESENCE_STATE | events::PRESENCE_DIFF if chan.is_active() => {
                let snapshot = f.event == events::PRESENCE_STATE;
                chan.shared.on_presence(&f.payload, snapshot);
            }
            events::BROADCAST if chan.is_active() => {
                if let Some(msg) = BroadcastMessage::from_json(&f.payload) {
                    chan.shared.dispatch_broadcast(&msg);
                }
            }
            events::SYSTEM => {
                tracing::info!(topic = %f.topic, payload = %f.payload, "system message");
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, pending: Pending, payload: &Value, now: Instant) {
        let ok = payload.get("status").and_then(Value::as_str) == Some("ok");
        match pending {
            Pending::Join {
                topic, join_ref, ..
            } => {
                let current = self.chans.get(&topic).is_some_and(|c| {
                    c.state == State::Joining && c.join_ref.as_deref() == Some(join_ref.as_str())
                });
                if !current {
                    return;
                }
                if ok {
                    self.on_joined(&topic, now);
                } else {
                    let reason = reason_of(payload);
                    self.errored(&topic, ChannelStatus::ChannelError(reason), now);
                }
            }
            Pending::Push { topic, reply, .. } => {
                let result = if ok {
                    Ok(())
                } else {
                    Err(Error::Rejected(reason_of(payload)))
                };
                match reply {
                    Some(r) => {
                        let _ = r.send(result);
                    }
                    None => {
                        if let Err(e) = result {
                            tracing::warn!(%topic, error = %e, "re-track failed");
                        }
                    }
                }
            }
            Pending::Leave {
                topic,
                remove,
                reply,
                ..
            } => {
                self.finish_leave(&topic, remove);
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
        }
    }

    fn on_joined(&mut self, topic: &str, now: Instant) {
        let Some(chan) = self.chans.get_mut(topic) else {
            return;
        };
        chan.state = State::Joined;
        chan.tries = 0;
        chan.notify(ChannelStatus::Subscribed);
        let jr = chan.join_ref.clone();
        let buffered = std::mem::take(&mut chan.buffer);
        let presence_buffered = buffered
            .iter()
            .any(|b| matches!(b.push, ClientPush::Track(_) | ClientPush::Untrack));
        let retrack = chan
            .last_tracked
            .clone()
            .filter(|_| chan.shared.options.auto_retrack && !presence_buffered);
        for push in buffered {
            if push.deadline <= now {
                if let Some(r) = push.reply {
                    let _ = r.send(Err(Error::TimedOut));
                }
            } else {
                self.io
                    .send_push(&mut self.pending, topic, jr.as_deref(), push);
            }
        }
        if let Some(state) = retrack {
            tracing::debug!(%topic, "re-tracking after rejoin");
            let push = Buffered {
                push: ClientPush::Track(state),
                awaits_reply: true,
                reply: None,
                deadline: now + self.shared.options.timeout,
            };
            self.io
                .send_push(&mut self.pending, topic, jr.as_deref(), push);
        }
    }

    /// A join failed (`status`): retry after the backoff.
    fn errored(&mut self, topic: &str, status: ChannelStatus, now: Instant) {
        let Some(chan) = self.chans.get_mut(topic) else {
            return;
        };
        let wait = self.shared.options.backoff(chan.tries);
        chan.tries += 1;
        chan.state = State::Errored {
            retry_at: now + wait,
        };
        chan.notify(status);
    }

    fn on_server_close(&mut self, topic: &str) {
        let Some(chan) = self.chans.get_mut(topic) else {
            return;
        };
        if chan.state == State::Closed {
            return;
        }
        chan.state = State::Closed;
        chan.join_ref = None;
        chan.last_tracked = None;
        chan.fail_buffer(&Error::ChannelClosed);
        chan.notify(ChannelStatus::Closed);
    }

    fn on_channel_error(&mut self, topic: &str, payload: &Value, now: Instant) {
        let active = self.chans.get(topic).is_some_and(Chan::is_active);
        if active {
            let reason = payload
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("channel error")
                .to_owned();
            self.errored(topic, ChannelStatus::ChannelError(reason), now);
        }
    }

    // ---- time ---------------------------------------------------------------

    /// Handle everything due by `now`: timeouts and rejoins.
    pub(crate) fn tick(&mut self, now: Instant) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline() <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for r in due {
            match self.pending.remove(&r) {
                Some(Pending::Join {
                    topic, join_ref, ..
                }) => {
                    let current = self.chans.get(&topic).is_some_and(|c| {
                        c.state == State::Joining && c.join_ref.as_deref() == Some(&join_ref)
                    });
                    if current {
                        // phx-js: leave the timed-out join, then rejoin later.
                        let leave_ref = self.io.take_ref();
                        self.io
                            .emit(Some(&join_ref), &leave_ref, &topic, &ClientPush::Leave);
                        self.errored(&topic, ChannelStatus::TimedOut, now);
                    }
                }
                Some(Pending::Push { topic, reply, .. }) => match reply {
                    Some(r) => {
                        let _ = r.send(Err(Error::TimedOut));
                    }
                    None => tracing::warn!(%topic, "re-track timed out"),
                },
                Some(Pending::Leave {
                    topic,
                    remove,
                    reply,
                    ..
                }) => {
                    self.finish_leave(&topic, remove);
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::TimedOut));
                    }
                }
                None => {}
            }
        }
        let mut rejoin = Vec::new();
        for (topic, chan) in &mut self.chans {
            let (expired, kept): (Vec<_>, Vec<_>) =
                chan.buffer.drain(..).partition(|b| b.deadline <= now);
            chan.buffer = kept;
            for b in expired {
                if let Some(r) = b.reply {
                    let _ = r.send(Err(Error::TimedOut));
                }
            }
            if chan.waiters_deadline.is_some_and(|d| d <= now) {
                for w in chan.waiters.drain(..) {
                    let _ = w.send(ChannelStatus::TimedOut);
                }
                chan.waiters_deadline = None;
                if chan.state != State::Joined {
                    chan.shared.set_status(ChannelStatus::TimedOut);
                }
            }
            if let State::Errored { retry_at } = chan.state {
                if retry_at <= now && self.io.connected {
                    rejoin.push(topic.clone());
                }
            }
        }
        for topic in rejoin {
            self.start_join(&topic, now);
        }
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.values().map(Pending::deadline);
        let chans = self.chans.values().flat_map(|c| {
            let retry = match c.state {
                State::Errored { retry_at } if self.io.connected => Some(retry_at),
                _ => None,
            };
            c.buffer
                .iter()
                .map(|b| b.deadline)
                .chain(c.waiters_deadline)
                .chain(retry)
        });
        pending.chain(chans).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelOptions, ClientOptions};
    use serde_json::json;

    const TOPIC: &str = "realtime:a";

    /// A router speaking `vsn`, connected, with channel `realtime:a` joining.
    /// Returns the join frame too.
    fn joining(vsn: Vsn) -> (Router, Arc<ChannelShared>, Value) {
        let options = ClientOptions::default().vsn(vsn);
        let socket = Arc::new(SocketShared::new("ws://h".into(), "sb_k".into(), options));
        let mut router = Router::new(socket);
        router.on_open(Instant::now());
        let ch = Arc::new(ChannelShared::new(
            TOPIC.into(),
            ChannelOptions::default().presence_key("me"),
        ));
        let (tx, _rx) = oneshot::channel();
        router.command(Command::Subscribe(ch.clone(), tx), Instant::now());
        let out = router.drain();
        assert_eq!(out.len(), 1);
        (router, ch, serde_json::from_str(&out[0]).unwrap())
    }

    fn v2(router: &mut Router, frame: Value) {
        router.on_text(&frame.to_string(), Instant::now());
    }

    fn joined_v2() -> (Router, Arc<ChannelShared>, String) {
        let (mut router, ch, join) = joining(Vsn::V2);
        let jr = join[0].as_str().unwrap().to_owned();
        v2(
            &mut router,
            json!([jr, jr, TOPIC, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]),
        );
        (router, ch, jr)
    }

    #[test]
    fn the_join_frame_is_realtime_js_shaped() {
        let (_, ch, join) = joining(Vsn::V2);
        assert_eq!(join[0], join[1]);
        assert_eq!(join[2], TOPIC);
        assert_eq!(join[3], "phx_join");
        assert_eq!(
            join[4],
            json!({"config": {"broadcast": {"ack": false, "self": false},
                "presence": {"key": "me", "enabled": true}, "private": false,
                "postgres_changes": []}, "access_token": "sb_k"})
        );
        assert_eq!(ch.status(), ChannelStatus::Joining);
        let (_, _, v1) = joining(Vsn::V1);
        assert_eq!(v1["event"], "phx_join");
        assert_eq!(v1["join_ref"], v1["ref"]);
    }

    #[test]
    fn messages_of_another_join_are_dropped() {
        let (mut router, ch, jr) = joined_v2();
        assert_eq!(ch.status(), ChannelStatus::Subscribed);
        let state = json!({"x": {"metas": [{"phx_ref": "1"}]}});
        v2(
            &mut router,
            json!(["stale", null, TOPIC, "presence_state", state]),
        );
        assert!(ch.state().is_empty());
        v2(
            &mut router,
            json!(["stale", "stale", TOPIC, "phx_close", {}]),
        );
        v2(&mut router, json!([null, "stale", TOPIC, "phx_close", {}]));
        assert_eq!(ch.status(), ChannelStatus::Subscribed);
        v2(
            &mut router,
            json!([jr, null, TOPIC, "presence_state", state]),
        );
        assert_eq!(ch.state()["x"][0].presence_ref, "1");
        v2(&mut router, json!([jr, jr, TOPIC, "phx_close", {}]));
        assert_eq!(ch.status(), ChannelStatus::Closed);
    }

    #[test]
    fn a_rejoin_waits_for_its_snapshot_and_retracks() {
        let (mut router, ch, jr) = joined_v2();
        let (tx, _rx) = oneshot::channel();
        router.command(
            Command::Push {
                topic: TOPIC.into(),
                push: Box::new(ClientPush::Track(json!({"a": 1}))),
                awaits_reply: true,
                reply: tx,
            },
            Instant::now(),
        );
        let track: Value = serde_json::from_str(&router.drain()[0]).unwrap();
        assert_eq!(track[0], json!(jr));
        v2(&mut router, json!([jr, null, TOPIC, "presence_state", {}]));

        router.on_close("test");
        assert!(matches!(ch.status(), ChannelStatus::ChannelError(r) if r.contains("test")));
        router.on_open(Instant::now());
        let rejoin: Value = serde_json::from_str(&router.drain()[0]).unwrap();
        let jr2 = rejoin[0].as_str().unwrap().to_owned();
        assert_ne!(jr2, jr);
        // A diff before the new snapshot is held back, then applied after it.
        let diff = json!({"joins": {"y": {"metas": [{"phx_ref": "2"}]}}, "leaves": {}});
        v2(
            &mut router,
            json!([null, null, TOPIC, "presence_diff", diff]),
        );
        assert!(ch.state().is_empty());
        v2(
            &mut router,
            json!([jr2, jr2, TOPIC, "phx_reply", {"status": "ok", "response": {}}]),
        );
        let retrack: Value = serde_json::from_str(&router.drain()[0]).unwrap();
        assert_eq!(retrack[0], json!(jr2));
        assert_eq!(retrack[3], "presence");
        assert_eq!(retrack[4]["payload"], json!({"a": 1}));
        v2(&mut router, json!([jr2, null, TOPIC, "presence_state", {}]));
        assert!(ch.state().contains_key("y"));
    }

    #[test]
    fn error_reasons_come_from_the_response() {
        assert_eq!(
            reason_of(&json!({"status": "error", "response": {"reason": "r"}})),
            "r"
        );
        assert_eq!(
            reason_of(&json!({"status": "error", "response": {"x": 1}})),
            r#"{"x":1}"#
        );
        assert_eq!(
            reason_of(&json!({"status": "error", "response": {}})),
            "error"
        );
    }
}
