//! Channels: who is joined to a topic, their presence, and fan-out.
//!
//! Each channel has its own lock, held while its state changes and the
//! resulting diff is queued to every member. Holding it across the fan-out
//! is what gives all members the same order of diffs, and a joiner its
//! snapshot with no diff missed or repeated. Fan-out only queues shared
//! bytes (no I/O, no per-recipient encoding), so the lock is held briefly.
//! Unrelated channels never contend.
//!
//! Every change to a channel's presence goes through its store
//! (`crate::store`): at once on one node, through Redis in a cluster. The
//! store reports what it did as `Effects`, and [`Channel::commit`] is the
//! one place they become frames, webhook events and gauge moves, whoever
//! made the change and wherever it was applied.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use parking_lot::Mutex;
use roster_presence::{
    meta_weight, ChannelPresence, Diff, MemberId, RefGen, SnapshotParts, State, Updates,
};
use roster_protocol::{events, Encoded, Outgoing, UserBroadcast};

use crate::access::admission::TokenBucket;
use crate::store::{channel_key, Backend, ChannelStore, Ctx, Effects, Host, Track};
pub mod outbound;

use crate::channel::outbound::{Frame, Outbound, SharedFrame};
use crate::metrics::Metrics;
use crate::webhooks::{self, Webhooks};
use roster_protocol::Vsn;

/// One socket's membership of a channel.
pub struct Member {
    pub out: Outbound,
    /// Its join ref, carried by pushes addressed to it alone (`presence_state`).
    pub join_ref: Option<Arc<str>>,
    /// May receive presence diffs / broadcasts (always, on public channels).
    pub presence_read: bool,
    /// Wants only the numbers (`presence_count`), not the member list.
    pub count_only: bool,
    pub broadcast_read: bool,
    /// How this member's state changes reach the others.
    pub updates: Updates,
}

pub use crate::store::Ack;

pub struct Channel {
    topic: Arc<str>,
    /// Its key in the registry (the topic, marked when private).
    key: Arc<str>,
    private: bool,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    /// Relays broadcasts to the other nodes (none on a single node).
    backend: Arc<dyn Backend>,
    webhooks: Option<Arc<Webhooks>>,
    /// Window over which diffs are coalesced; zero = off.
    coalesce: std::time::Duration,
    /// The most a snapshot frame may weigh; larger snapshots are split.
    frame_limit: usize,
    /// What broadcasts this channel takes per second, all senders together.
    budget: Mutex<BroadcastBudget>,
    /// Itself, for timers started from `&self`.
    me: std::sync::Weak<Channel>,
}

struct Inner {
    presence: ChannelPresence,
    /// Where changes to `presence` are applied.
    store: Box<dyn ChannelStore>,
    members: IndexMap<MemberId, Member>,
    /// Set once the last member left and the channel was dropped from the registry.
    closed: bool,
    /// With coalescing: the open window's net diff and the acks behind it.
    window: Option<Window>,
    /// A `presence_count` send is scheduled.
    counting: std::sync::atomic::AtomicBool,
    /// How many members are `count_only` (most channels: none).
    count_only: usize,
}

/// A channel's broadcast budget: messages and payload bytes per second,
/// all senders together. Every member receives each broadcast, so this is
/// what each member must absorb; kept under the per-socket outbound budget,
/// it means many senders together are refused before any member overflows.
#[derive(Debug, Clone, Copy, Default)]
pub struct BroadcastRates {
    /// 0 = no cap.
    pub per_second: u32,
    /// 0 = no cap.
    pub bytes_per_second: u64,
}

#[derive(Debug)]
struct BroadcastBudget {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl BroadcastBudget {
    fn new(rates: BroadcastRates) -> Self {
        let bucket = |rate: u64| (rate > 0).then(|| TokenBucket::new(rate as f64));
        BroadcastBudget {
            messages: bucket(u64::from(rates.per_second)),
            bytes: bucket(rates.bytes_per_second),
        }
    }

    /// Room for `count` more broadcasts of `bytes` in all? Takes it if so.
    fn take(&mut self, count: u32, bytes: usize) -> bool {
        let (count, bytes) = (f64::from(count), bytes as f64);
        match (&mut self.messages, &mut self.bytes) {
            (None, None) => true,
            (Some(m), None) => m.take(count),
            (None, Some(b)) => b.take(bytes),
            (Some(m), Some(b)) => m.take_both(count, b, bytes),
        }
    }

    fn refund(&mut self, count: u32, bytes: usize) {
        if let Some(m) = &mut self.messages {
            m.refund(f64::from(count));
        }
        if let Some(b) = &mut self.bytes {
            b.refund(bytes as f64);
        }
    }
}

/// A broadcast refused: the channel is at its broadcast rate.
#[derive(Debug)]
pub struct Throttled;

/// Diffs of the current coalescing window, sent as one when it closes.
#[derive(Default)]
struct Window {
    diff: Diff,
    /// Sum of the [`meta_weight`]s of the diffs absorbed: a bound on the
    /// window's diff frame.
    weight: usize,
    acks: Vec<Ack>,
    /// Every joiner of the window gets the same state (the one before it).
    state: StateFrames,
}

/// `presence_state` frames for members joining while the state stands still:
/// the state is serialised once, and each frame built once per (vsn,
/// join_ref). In a join storm most joiners share a join ref, so they share
/// the frame's bytes too instead of each holding a copy. A snapshot over
/// the frame limit is several frames: the state, then diffs that join the rest.
#[derive(Default)]
struct StateFrames {
    parts: Option<SnapshotParts>,
    frames: Vec<(Vsn, Option<Arc<str>>, SnapshotFrames)>,
}

/// A snapshot's frames for one (vsn, join_ref), shared by its joiners.
type SnapshotFrames = Arc<[Frame]>;

/// Snapshot frames stay under this unless configured (realtime-py takes 1 MiB).
pub const DEFAULT_FRAME_LIMIT: usize = 512 * 1024;

/// Most distinct (vsn, join_ref) frames kept.
const STATE_FRAMES_KEPT: usize = 8;

impl StateFrames {
    fn frames(
        &mut self,
        topic: &str,
        vsn: Vsn,
        join_ref: Option<&Arc<str>>,
        parts: impl FnOnce() -> SnapshotParts,
    ) -> Arc<[Frame]> {
        let cached = self
            .frames
            .iter()
            .find(|(v, r, _)| *v == vsn && r.as_ref() == join_ref);
        if let Some((_, _, frames)) = cached {
            return frames.clone();
        }
        let parts = self.parts.get_or_insert_with(parts);
        let push = |event, payload: &str| {
            let push = Outgoing::push(join_ref.map(|r| &**r), topic, event, payload);
            Frame::text(push.encode(vsn))
        };
        let frames: Arc<[Frame]> = std::iter::once(push(events::PRESENCE_STATE, &parts.state))
            .chain(parts.diffs.iter().map(|d| push(events::PRESENCE_DIFF, d)))
            .collect();
        if self.frames.len() < STATE_FRAMES_KEPT {
            self.frames.push((vsn, join_ref.cloned(), frames.clone()));
        }
        frames
    }
}

impl Channel {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Track `state` for `member` under `key`, fanning out the diff (if
    /// any), then `ack`. Refused when the channel's states would weigh
    /// more than `max_state_bytes`.
    pub fn track(
        self: &Arc<Self>,
        member: MemberId,
        key: &str,
        state: State,
        refs: &RefGen,
        max_state_bytes: usize,
        ack: Ack,
    ) -> Result<(), StateFull> {
        let mut inner = self.inner.lock();
        let Some(updates) = inner.members.get(&member).map(|m| m.updates) else {
            ack();
            return Ok(());
        };
        let old = inner.store.weight_of(&inner.presence, member, key);
        let others = inner.presence.state_bytes().saturating_sub(old);
        if !fair_share(others, meta_weight(key, &state), max_state_bytes) {
            return Err(StateFull);
        }
        let track = Track {
            member,
            key,
            state,
            refs,
            updates,
        };
        self.apply(&mut inner, |store, cx| store.track(cx, track, ack));
        Ok(())
    }

    pub fn untrack(self: &Arc<Self>, member: MemberId, ack: Ack) {
        let mut inner = self.inner.lock();
        self.apply(&mut inner, |store, cx| store.untrack(cx, member, Some(ack)));
    }

    /// Run one store operation under the lock, then tell everyone what it did.
    fn apply<R>(
        self: &Arc<Self>,
        inner: &mut Inner,
        op: impl FnOnce(&mut dyn ChannelStore, &mut Ctx<'_>) -> R,
    ) -> R {
        let keys_before = inner.presence.key_count();
        let mut effects = Effects::default();
        let mut cx = Ctx {
            presence: &mut inner.presence,
            effects: &mut effects,
        };
        let out = op(&mut *inner.store, &mut cx);
        self.commit(inner, keys_before, effects);
        out
    }

    /// The one path from a change of presence to the outside world, for
    /// local and Redis changes alike: the gauges, the diff to every member
    /// (or into the coalescing window), the acks behind it, webhook events
    /// for this node's own changes, owed snapshots. (Last seen is the
    /// store's: it notes the keys that leave as it applies the change.)
    fn commit(self: &Arc<Self>, inner: &mut Inner, keys_before: usize, effects: Effects) {
        let Effects {
            diff,
            silent,
            key_changes,
            acks,
            owed_states,
        } = effects;
        if !diff.is_empty() {
            // Keys only come and go with a diff: nothing to count without one.
            self.count(inner, &diff, keys_before);
        }
        if silent {
            // The state changed without a diff: frames built before are stale.
            if let Some(window) = inner.window.as_mut() {
                window.state = StateFrames::default();
            }
            self.counts_changed(inner);
        } else if !diff.is_empty() {
            self.send_diff(inner, &diff);
        }
        for ack in acks {
            self.deliver_ack(inner, ack);
        }
        if let Some(w) = &self.webhooks {
            for (joined, left) in key_changes {
                w.emit(webhooks::key_events(
                    &self.topic,
                    self.private,
                    &joined,
                    &left,
                ));
            }
        }
        if owed_states.is_empty() {
            return;
        }
        // Without a window, these frames serve every owed member.
        let mut scratch = StateFrames::default();
        for id in owed_states {
            if let Some(m) = inner.members.get(&id) {
                let (out, join_ref) = (m.out.clone(), m.join_ref.clone());
                self.send_state(inner, &mut scratch, &out, join_ref.as_ref());
            }
        }
    }

    /// Keep the presence gauges in step with a change.
    fn count(&self, inner: &Inner, diff: &Diff, keys_before: usize) {
        if inner.closed {
            // A closed cluster channel took its presences off the gauges.
            return;
        }
        let m = &self.metrics;
        m.presences.increment(diff.joins.len() as f64);
        m.presences.decrement(diff.leaves.len() as f64);
        m.presence_keys.increment(inner.presence.key_count() as f64);
        m.presence_keys.decrement(keys_before as f64);
    }

    /// Send a diff now, or fold it into the open coalescing window (opening
    /// one, and its timer, if none is open).
    fn send_diff(self: &Arc<Self>, inner: &mut Inner, diff: &Diff) {
        if self.coalesce.is_zero() {
            return self.fan_out_now(inner, diff);
        }
        let weight: usize = diff
            .joins
            .iter()
            .chain(&diff.leaves)
            .map(|(key, meta)| meta_weight(key, &meta.state))
            .sum();
        // A window whose diff would outgrow what every client can take is
        // sent now, and a new one opened: no diff frame over the budget.
        if inner
            .window
            .as_ref()
            .is_some_and(|w| !w.diff.is_empty() && w.weight + weight > self.frame_limit)
        {
            let window = inner.window.take().expect("checked above");
            self.fan_out_now(inner, &window.diff);
            for ack in window.acks {
                ack();
            }
        }
        if inner.window.is_none() {
            inner.window = Some(Window::default());
            let channel = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(channel.coalesce).await;
                let mut inner = channel.inner.lock();
                if let Some(window) = inner.window.take() {
                    if !window.diff.is_empty() {
                        channel.fan_out_now(&inner, &window.diff);
                    }
                    for ack in window.acks {
                        ack();
                    }
                }
            });
        }
        let window = inner.window.as_mut().expect("opened above");
        window.weight += weight;
        window.diff.absorb(diff.clone());
    }

    /// Send an ack now, or after the open window's diff (so the client's
    /// own state shows its change when the ack arrives).
    fn deliver_ack(&self, inner: &mut Inner, ack: Ack) {
        match inner.window.as_mut() {
            Some(window) => window.acks.push(ack),
            None => ack(),
        }
    }

    /// Queue the `presence_state` for a member joining now: the state
    /// before the open window (whose diff will reach it like everyone
    /// else's), built with the window's frames, or else with `scratch`.
    fn send_state(
        &self,
        inner: &mut Inner,
        scratch: &mut StateFrames,
        out: &Outbound,
        join_ref: Option<&Arc<str>>,
    ) {
        let Inner {
            presence, window, ..
        } = inner;
        let limit = self.frame_limit;
        // The window's diff will follow, so a joiner gets the state before it.
        // Metas updated in place come again as joins after the state: a
        // rejoining client reconciles a snapshot by ref, and would keep
        // their old states.
        let frames = match window {
            Some(w) => w.state.frames(&self.topic, out.vsn(), join_ref, || {
                presence.snapshot_parts(&w.diff, limit)
            }),
            None => scratch.frames(&self.topic, out.vsn(), join_ref, || {
                presence.snapshot_parts(&Diff::default(), limit)
            }),
        };
        for frame in frames.iter() {
            out.send(frame.clone());
        }
    }

    /// Queue a `presence_diff` to every member, encoded once per vsn.
    fn fan_out_now(&self, inner: &Inner, diff: &Diff) {
        self.metrics.presence_diffs.increment(1);
        let payload = diff.to_json();
        let mut frame = SharedFrame::new(|vsn| {
            Some(Encoded::Text(
                Outgoing::fanout(&self.topic, events::PRESENCE_DIFF, &payload).encode(vsn),
            ))
        });
        for member in inner
            .members
            .values()
            .filter(|m| m.presence_read && !m.count_only)
        {
            if let Some(msg) = frame.for_vsn(member.out.vsn()) {
                member.out.send(msg);
            }
        }
        self.counts_changed(inner);
    }

    /// Tell `count_only` members the new numbers, at most every
    /// `COUNT_INTERVAL` (the latest numbers win).
    fn counts_changed(&self, inner: &Inner) {
        if inner.count_only == 0 || inner.counting.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        inner
            .counting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(channel) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(COUNT_INTERVAL).await;
            let inner = channel.inner.lock();
            inner
                .counting
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let payload = count_payload(&inner.presence);
            for member in inner
                .members
                .values()
                .filter(|m| m.count_only && m.presence_read)
            {
                channel.send_count(member, &payload);
            }
        });
    }

    fn send_count(&self, member: &Member, payload: &str) {
        member.out.send_outgoing(&Outgoing::push(
            member.join_ref.as_deref(),
            &self.topic,
            events::PRESENCE_COUNT,
            payload,
        ));
    }

    /// Deliver a broadcast here and, with a cluster, on the other nodes,
    /// if the channel's broadcast budget has room for it; else the sender
    /// is refused and no member sees it.
    pub fn broadcast(
        &self,
        msg: &UserBroadcast,
        sender: Option<MemberId>,
    ) -> Result<usize, Throttled> {
        self.take_budget(1, msg.body.len())?;
        Ok(self.broadcast_prepaid(msg, sender))
    }

    /// Take `count` broadcasts of `bytes` in all from the budget, all or none.
    pub fn take_budget(&self, count: u32, bytes: usize) -> Result<(), Throttled> {
        if self.budget.lock().take(count, bytes) {
            Ok(())
        } else {
            self.metrics.refused("channel_rate");
            Err(Throttled)
        }
    }

    /// Give back what [`Self::take_budget`] took for broadcasts not sent.
    pub fn refund_budget(&self, count: u32, bytes: usize) {
        self.budget.lock().refund(count, bytes);
    }

    /// [`Self::broadcast`] for a message whose budget was taken already.
    pub fn broadcast_prepaid(&self, msg: &UserBroadcast, sender: Option<MemberId>) -> usize {
        self.backend.relay_broadcast(&self.topic, self.private, msg);
        self.deliver(msg, sender)
    }

    /// Deliver a broadcast from another node. It counts against this node's
    /// budget of the channel too; over it, the message is dropped here
    /// (its sender is elsewhere, and the members must not overflow).
    pub fn deliver_broadcast(&self, msg: &UserBroadcast) -> usize {
        if !self.budget.lock().take(1, msg.body.len()) {
            self.metrics.refused("channel_rate_remote");
            return 0;
        }
        self.deliver(msg, None)
    }

    /// Deliver a broadcast to this node's members but `sender` (when given),
    /// each in the form its vsn can receive. Returns how many got it.
    fn deliver(&self, msg: &UserBroadcast, sender: Option<MemberId>) -> usize {
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
        page_values(&self.inner.lock().presence, after, limit)
    }

    /// The metas under each of `keys` (an empty list for an absent key).
    pub fn presence_of_keys(&self, keys: &[String]) -> Vec<(String, Vec<serde_json::Value>)> {
        key_values(&self.inner.lock().presence, keys)
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
        self.private
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

/// How often, at most, `count_only` members hear of a change.
const COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// `{"keys": distinct keys, "presences": metas}`.
fn count_payload(presence: &ChannelPresence) -> String {
    format!(
        r#"{{"keys":{},"presences":{}}}"#,
        presence.key_count(),
        presence.meta_count()
    )
}

/// A page of a presence state as `(key, metas as JSON values)`.
pub fn page_values(
    presence: &ChannelPresence,
    after: Option<&str>,
    limit: usize,
) -> Vec<(String, Vec<serde_json::Value>)> {
    presence
        .page(after, limit)
        .into_iter()
        .map(|(key, metas)| (key.to_owned(), metas.iter().map(|m| m.to_value()).collect()))
        .collect()
}

/// Each of `keys` with its metas as JSON (empty when absent), in order.
pub fn key_values(
    presence: &ChannelPresence,
    keys: &[String],
) -> Vec<(String, Vec<serde_json::Value>)> {
    keys.iter()
        .map(|key| {
            let metas = presence.metas_of_key(key);
            (key.clone(), metas.iter().map(|m| m.to_value()).collect())
        })
        .collect()
}

/// Whether a meta of `weight` fits a channel whose other metas weigh
/// `others`, under a budget of `max`. A large meta (over 1/256 of the
/// budget: 3 KiB by default) must leave the last quarter free: that quarter
/// is kept for ordinary states, so a few sockets with large states cannot
/// lock everyone else out of the room.
pub fn fair_share(others: usize, weight: usize, max: usize) -> bool {
    let after = others.saturating_add(weight);
    let large = weight > max / 256;
    after <= max && !(large && after > max - max / 4)
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
    /// Where channels' presence lives: this node, or Redis.
    backend: Arc<dyn Backend>,
    webhooks: Option<Arc<Webhooks>>,
    coalesce: std::time::Duration,
    frame_limit: usize,
    broadcast_rates: BroadcastRates,
}

impl Registry {
    /// Coalesce each channel's diffs over `window` (zero = off).
    pub fn with_coalesce(mut self, window: std::time::Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Split snapshots into frames of at most `bytes`.
    pub fn with_frame_limit(mut self, bytes: usize) -> Self {
        self.frame_limit = bytes;
        self
    }

    /// Give each channel this broadcast budget.
    pub fn with_broadcast_rates(mut self, rates: BroadcastRates) -> Self {
        self.broadcast_rates = rates;
        self
    }

    /// Channels whose presence lives in `backend` (made by
    /// `store::connect`: this node alone, or Redis).
    pub fn new(
        metrics: Arc<Metrics>,
        backend: Arc<dyn Backend>,
        webhooks: Option<Arc<Webhooks>>,
    ) -> Self {
        Registry {
            channels: Mutex::default(),
            metrics,
            backend,
            webhooks,
            coalesce: std::time::Duration::ZERO,
            frame_limit: DEFAULT_FRAME_LIMIT,
            broadcast_rates: BroadcastRates::default(),
        }
    }

    /// Where presence lives, for what no open channel of this node holds
    /// (the presence API's reads, last seen, the node's health).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// A broadcast for a channel with no member on this node: the other
    /// nodes may have some (on a single node, nobody gets it).
    pub fn relay_to_other_nodes(&self, topic: &str, private: bool, msg: &UserBroadcast) {
        self.backend.relay_broadcast(topic, private, msg);
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
            let mut created = false;
            let channel = self
                .channels
                .lock()
                .entry(channel_key(topic, private))
                .or_insert_with(|| {
                    self.metrics.channels.increment(1);
                    created = true;
                    Arc::new_cyclic(|me| Channel {
                        me: me.clone(),
                        topic: Arc::from(topic),
                        key: channel_key(topic, private),
                        private,
                        inner: Mutex::new(Inner {
                            presence: ChannelPresence::default(),
                            store: self.backend.channel_store(
                                topic,
                                private,
                                me.clone() as std::sync::Weak<dyn Host>,
                            ),
                            members: IndexMap::new(),
                            closed: false,
                            window: None,
                            counting: std::sync::atomic::AtomicBool::new(false),
                            count_only: 0,
                        }),
                        metrics: self.metrics.clone(),
                        backend: self.backend.clone(),
                        webhooks: self.webhooks.clone(),
                        coalesce: self.coalesce,
                        frame_limit: self.frame_limit,
                        budget: Mutex::new(BroadcastBudget::new(self.broadcast_rates)),
                    })
                })
                .clone();
            let mut inner = channel.inner.lock();
            if created {
                inner.store.opened();
            }
            if inner.closed {
                // Lost a race with the last member leaving; the registry has
                // dropped this one, so look again.
                continue;
            }
            if max_members > 0 && inner.members.len() >= max_members {
                return Err(ChannelFull);
            }
            member.out.send_outgoing(reply);
            if member.count_only && member.presence_read {
                channel.send_count(&member, &count_payload(&inner.presence));
            }
            let owed_state = send_state && member.presence_read && !member.count_only;
            if owed_state && !inner.store.defer_state(id) {
                let scratch = &mut StateFrames::default();
                channel.send_state(&mut inner, scratch, &member.out, member.join_ref.as_ref());
            }
            inner.count_only += usize::from(member.count_only);
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
        let Some(gone) = inner.members.swap_remove(&member) else {
            return;
        };
        inner.count_only -= usize::from(gone.count_only);
        self.metrics.channel_leaves.increment(1);
        channel.apply(&mut inner, |store, cx| store.untrack(cx, member, None));
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
        let Some(gone) = inner.members.swap_remove(&member) else {
            return false;
        };
        inner.count_only -= usize::from(gone.count_only);
        self.metrics.channel_leaves.increment(1);
        let kept = channel.apply(&mut inner, |store, cx| store.orphan(cx, member));
        self.close_if_empty(channel, &mut inner);
        kept
    }

    /// The grace period of `member`'s kept meta is over: it leaves, unless
    /// it was adopted meanwhile (then there is nothing left to remove).
    pub fn expire(&self, channel: &Arc<Channel>, member: MemberId) {
        let mut inner = channel.inner.lock();
        if !inner.store.is_orphan(&inner.presence, member) {
            return;
        }
        channel.apply(&mut inner, |store, cx| store.untrack(cx, member, None));
        self.close_if_empty(channel, &mut inner);
    }

    /// Drop a channel with no members and no kept metas from the registry.
    fn close_if_empty(&self, channel: &Arc<Channel>, inner: &mut Inner) {
        if !inner.members.is_empty() || inner.store.holds(&inner.presence) {
            return;
        }
        // What is left are other nodes' presences (in a cluster): off the
        // gauges with the channel.
        let m = &self.metrics;
        m.presences.decrement(inner.presence.meta_count() as f64);
        m.presence_keys.decrement(inner.presence.key_count() as f64);
        inner.store.closed();
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
            .get(&channel_key(topic, private))
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

/// What a store's own tasks (Redis: the writer, pub/sub, resyncs) may do
/// with the channel: run under its lock, with their effects committed.
impl Host for Channel {
    fn is_closed(&self) -> bool {
        Channel::is_closed(self)
    }

    fn with_store(&self, f: &mut dyn FnMut(&mut dyn ChannelStore, &mut Ctx<'_>)) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut inner = self.inner.lock();
        me.apply(&mut inner, |store, cx| f(store, cx));
    }

    fn deliver_broadcast(&self, msg: &UserBroadcast) -> usize {
        Channel::deliver_broadcast(self, msg)
    }
}
