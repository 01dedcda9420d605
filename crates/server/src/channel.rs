//! Channels: who is joined to a topic, their presence, and fan-out.
//!
//! Each channel has its own lock, held while its state changes and the
//! resulting diff is queued to every member. Holding it across the fan-out
//! is what gives all members the same order of diffs, and a joiner its
//! snapshot with no diff missed or repeated. Fan-out only queues shared
//! bytes (no I/O, no per-recipient encoding), so the lock is held briefly.
//! Unrelated channels never contend.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use parking_lot::Mutex;
use roster_presence::{ChannelPresence, Diff, MemberId, RefGen, State};
use roster_protocol::{events, Encoded, Outgoing, UserBroadcast};

use crate::metrics::Metrics;
use crate::outbound::{Outbound, SharedFrame};

/// One socket's membership of a channel.
pub struct Member {
    pub out: Outbound,
    /// Its join ref, carried by pushes addressed to it alone (`presence_state`).
    pub join_ref: Option<Arc<str>>,
    /// May receive presence diffs / broadcasts (always, on public channels).
    pub presence_read: bool,
    pub broadcast_read: bool,
}

pub struct Channel {
    topic: Arc<str>,
    /// Its key in the registry (the topic, marked when private).
    key: Arc<str>,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    presence: ChannelPresence,
    members: IndexMap<MemberId, Member>,
    /// Set once the last member left and the channel was dropped from the registry.
    closed: bool,
}

impl Channel {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Track `state` for `member` under `key`, fanning out the diff (if any).
    /// Refused when the channel's states would weigh more than `max_state_bytes`.
    pub fn track(
        &self,
        member: MemberId,
        key: &str,
        state: State,
        refs: &RefGen,
        max_state_bytes: usize,
    ) -> Result<(), StateFull> {
        let mut inner = self.inner.lock();
        if !inner.members.contains_key(&member) {
            return Ok(());
        }
        let old = inner
            .presence
            .meta_of(member)
            .map_or(0, |m| m.state.as_json().len());
        if inner.presence.state_bytes() - old + state.as_json().len() > max_state_bytes {
            return Err(StateFull);
        }
        self.change(&mut inner, |p| p.track(member, key, state, refs));
        Ok(())
    }

    pub fn untrack(&self, member: MemberId) {
        let mut inner = self.inner.lock();
        self.change(&mut inner, |p| p.untrack(member));
    }

    /// Apply one presence change and queue its `presence_diff` (if any) to
    /// every member; the one place presence changes, so gauges stay right.
    fn change(&self, inner: &mut Inner, apply: impl FnOnce(&mut ChannelPresence) -> Option<Diff>) {
        let keys_before = inner.presence.key_count();
        if let Some(diff) = apply(&mut inner.presence) {
            self.fan_out(inner, diff, keys_before);
        }
    }

    /// Queue a `presence_diff` to every member, encoded once per vsn.
    fn fan_out(&self, inner: &Inner, diff: Diff, keys_before: usize) {
        let m = &self.metrics;
        m.presence_diffs.increment(1);
        m.presences.increment(diff.joins.len() as f64);
        m.presences.decrement(diff.leaves.len() as f64);
        m.presence_keys.increment(inner.presence.key_count() as f64);
        m.presence_keys.decrement(keys_before as f64);
        let payload = diff.to_json();
        let mut frame = SharedFrame::new(|vsn| {
            Some(Encoded::Text(
                Outgoing::fanout(&self.topic, events::PRESENCE_DIFF, &payload).encode(vsn),
            ))
        });
        for member in inner.members.values().filter(|m| m.presence_read) {
            if let Some(msg) = frame.for_vsn(member.out.vsn()) {
                member.out.send(msg);
            }
        }
    }

    /// Deliver a broadcast to every member but `sender` (when given), each in
    /// the form its vsn can receive. Returns how many got it.
    pub fn broadcast(&self, msg: &UserBroadcast, sender: Option<MemberId>) -> usize {
        let inner = self.inner.lock();
        self.metrics.broadcasts.increment(1);
        let mut frame = SharedFrame::new(|vsn| msg.encode(vsn, &self.topic));
        let mut delivered = 0;
        for (id, member) in &inner.members {
            if Some(*id) == sender || !member.broadcast_read {
                continue;
            }
            if let Some(m) = frame.for_vsn(member.out.vsn()) {
                member.out.send(m);
                delivered += 1;
            }
        }
        delivered
    }

    /// Update what a member may receive (after a token refresh on a private channel).
    pub fn set_read_rights(&self, member: MemberId, presence_read: bool, broadcast_read: bool) {
        if let Some(m) = self.inner.lock().members.get_mut(&member) {
            m.presence_read = presence_read;
            m.broadcast_read = broadcast_read;
        }
    }

    /// A page of the presence state: `(key, metas as JSON values)` after `after`.
    pub fn presence_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Vec<serde_json::Value>)> {
        let inner = self.inner.lock();
        inner
            .presence
            .page(after, limit)
            .into_iter()
            .map(|(key, metas)| (key.to_owned(), metas.iter().map(|m| m.to_value()).collect()))
            .collect()
    }

    /// Which of `keys` are tracked here.
    pub fn keys_present<'k>(&self, keys: &'k [String]) -> Vec<&'k str> {
        let inner = self.inner.lock();
        keys.iter()
            .filter(|k| inner.presence.has_key(k))
            .map(String::as_str)
            .collect()
    }

    /// Whether this is a private channel.
    pub fn is_private(&self) -> bool {
        *self.key != *self.topic
    }

    /// Numbers for tests and metrics: (members, distinct keys, metas).
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.inner.lock();
        (
            inner.members.len(),
            inner.presence.key_count(),
            inner.presence.meta_count(),
        )
    }
}

/// Public and private channels of one topic are separate, as in rt.
fn registry_key(topic: &str, private: bool) -> Arc<str> {
    if private {
        Arc::from(format!("private\u{0}{topic}"))
    } else {
        Arc::from(topic)
    }
}

/// A track refused because the channel's presence state is full.
#[derive(Debug)]
pub struct StateFull;

/// A join refused because the channel holds its maximum of members.
#[derive(Debug)]
pub struct ChannelFull;

/// All channels of this node, by topic.
pub struct Registry {
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Registry {
            channels: Mutex::default(),
            metrics,
        }
    }

    /// Add a member to `topic`, creating the channel if needed. Under the
    /// channel lock it queues `reply` (the join's `ok`) and, with
    /// `send_state`, the `presence_state`, which is then exactly the state
    /// before every diff the member will receive. Refused when the channel
    /// already has `max_members` (0 = no cap).
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        topic: &str,
        private: bool,
        id: MemberId,
        member: Member,
        reply: &Outgoing<'_>,
        send_state: bool,
        max_members: usize,
    ) -> Result<Arc<Channel>, ChannelFull> {
        loop {
            let channel = self
                .channels
                .lock()
                .entry(registry_key(topic, private))
                .or_insert_with(|| {
                    self.metrics.channels.increment(1);
                    Arc::new(Channel {
                        topic: Arc::from(topic),
                        key: registry_key(topic, private),
                        inner: Mutex::new(Inner::default()),
                        metrics: self.metrics.clone(),
                    })
                })
                .clone();
            let mut inner = channel.inner.lock();
            if inner.closed {
                // Lost a race with the last member leaving; the registry has
                // dropped this one, so look again.
                continue;
            }
            if max_members > 0 && inner.members.len() >= max_members {
                return Err(ChannelFull);
            }
            member.out.send_outgoing(reply);
            if send_state && member.presence_read {
                let payload = inner.presence.state_json();
                member.out.send_outgoing(&Outgoing::push(
                    member.join_ref.as_deref(),
                    topic,
                    events::PRESENCE_STATE,
                    &payload,
                ));
            }
            inner.members.insert(id, member);
            drop(inner);
            self.metrics.channel_joins.increment(1);
            return Ok(channel);
        }
    }

    /// Remove a member: its presence leaves (diff to the others), and an
    /// empty channel is dropped.
    pub fn leave(&self, channel: &Arc<Channel>, member: MemberId) {
        let mut inner = channel.inner.lock();
        if inner.members.swap_remove(&member).is_none() {
            return;
        }
        self.metrics.channel_leaves.increment(1);
        channel.change(&mut inner, |p| p.untrack(member));
        self.close_if_empty(channel, &mut inner);
    }

    /// A member whose socket went away (no `phx_leave`): with a grace
    /// period its meta stays, and no diff goes out, until [`Self::expire`]
    /// or until a rejoin tracking the same state adopts it. Returns whether
    /// a meta was kept (and so whether `expire` must be scheduled).
    pub fn depart(&self, channel: &Arc<Channel>, member: MemberId, grace: bool) -> bool {
        if !grace {
            self.leave(channel, member);
            return false;
        }
        let mut inner = channel.inner.lock();
        if inner.members.swap_remove(&member).is_none() {
            return false;
        }
        self.metrics.channel_leaves.increment(1);
        let kept = inner.presence.orphan(member);
        self.close_if_empty(channel, &mut inner);
        kept
    }

    /// The grace period of `member`'s kept meta is over: it leaves, unless
    /// it was adopted meanwhile (then there is nothing left to remove).
    pub fn expire(&self, channel: &Arc<Channel>, member: MemberId) {
        let mut inner = channel.inner.lock();
        if !inner.presence.is_orphan(member) {
            return;
        }
        channel.change(&mut inner, |p| p.untrack(member));
        self.close_if_empty(channel, &mut inner);
    }

    /// Drop a channel with no members and no kept metas from the registry.
    fn close_if_empty(&self, channel: &Arc<Channel>, inner: &mut Inner) {
        if !inner.members.is_empty() || !inner.presence.is_empty() {
            return;
        }
        // Lock order: channel, then registry. `join` never holds the
        // registry lock while taking a channel lock, so this cannot deadlock.
        inner.closed = true;
        let mut channels = self.channels.lock();
        if channels
            .get(&channel.key)
            .is_some_and(|c| Arc::ptr_eq(c, channel))
        {
            channels.remove(&channel.key);
            self.metrics.channels.decrement(1);
        }
    }

    /// The channel of `topic`; private and public channels of one name are distinct.
    pub fn get(&self, topic: &str, private: bool) -> Option<Arc<Channel>> {
        self.channels
            .lock()
            .get(&registry_key(topic, private))
            .cloned()
    }

    /// Every channel, at this moment.
    pub fn all(&self) -> Vec<Arc<Channel>> {
        self.channels.lock().values().cloned().collect()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }
}
