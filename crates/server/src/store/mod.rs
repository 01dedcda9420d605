//! Where a channel's presence changes are applied: the seam between the
//! channel (members, fan-out, webhooks, gauges) and the truth of its
//! presence.
//!
//! A channel owns one [`ChannelStore`], made by the node's [`Backend`]:
//! * [`local`]: one node; the pure tracker, applied at once;
//! * [`redis`]: several nodes; changes are written to Redis and come back
//!   numbered, in Redis's order, from the write's reply or from pub/sub.
//!
//! Either way a store never fans anything out itself: every operation
//! reports what happened in [`Effects`] (the diff it applied to the
//! channel's presence, the key changes this node reports to webhooks, the
//! acks now due, the joiners whose snapshot is now due), and the channel
//! turns them into frames through its one path (`Channel::commit`). So
//! a single node is a cluster of one: the same channel code serves both,
//! and [`Backend`] (chosen once, in `channel::Registry::new`) is the only
//! place that knows which.

pub mod local;
pub mod redis;

use std::any::Any;
use std::sync::Weak;

use roster_presence::{ChannelPresence, Diff, MemberId, RefGen, State, Updates};
use roster_protocol::UserBroadcast;

/// Sends a deferred reply (a track's `ok` once its diff is out).
pub type Ack = Box<dyn FnOnce() + Send>;

/// Makes each channel's store, and relays broadcasts of channels this node
/// does not hold.
pub trait Backend: Send + Sync + 'static {
    /// The store of a channel being created; `host` is the channel (not
    /// yet usable: it is called on once [`ChannelStore::opened`] runs).
    fn channel_store(
        &self,
        topic: &str,
        private: bool,
        host: Weak<dyn Host>,
    ) -> Box<dyn ChannelStore>;

    /// A broadcast for a channel with no member on this node: the other
    /// nodes may have some.
    fn relay_broadcast(&self, topic: &str, private: bool, msg: &UserBroadcast);
}

/// What a store may ask of its channel (the channel layer implements it),
/// from its own tasks: run `f` under the channel's lock with the store and
/// the presence, then commit the effects.
pub trait Host: Send + Sync + 'static {
    fn is_closed(&self) -> bool;
    fn with_store(&self, f: &mut dyn FnMut(&mut dyn ChannelStore, &mut Ctx<'_>));
    /// Fan a broadcast from another node out to this node's members.
    fn deliver_broadcast(&self, msg: &UserBroadcast) -> usize;
}

/// What a store operation works on: the channel's presence (the view its
/// members see) and the effects it reports.
pub struct Ctx<'a> {
    pub presence: &'a mut ChannelPresence,
    pub effects: &'a mut Effects,
}

/// What a store operation did, for the channel to tell its members.
#[derive(Default)]
pub struct Effects {
    /// The change applied to the presence, to fan out.
    pub diff: Diff,
    /// The presence changed without telling members (a first snapshot):
    /// `diff` is only for the gauges, and cached snapshot frames are stale.
    pub silent: bool,
    /// Keys that joined and left through this node's own changes: what
    /// this node (and no other) reports to webhooks.
    pub key_changes: Vec<(Vec<String>, Vec<String>)>,
    /// Replies now due, sent after the diff.
    pub acks: Vec<Ack>,
    /// Members whose first `presence_state` is now due.
    pub owed_states: Vec<MemberId>,
}

impl Effects {
    /// Note a diff already applied to the presence, after those noted
    /// before (folded into one net diff).
    pub fn add_diff(&mut self, diff: Diff) {
        if self.diff.is_empty() {
            self.diff = diff;
        } else {
            self.diff.absorb(diff);
        }
    }

    /// Note a diff already applied to `presence`, and its key changes as
    /// this node's own.
    pub fn own_change(&mut self, diff: Diff, presence: &ChannelPresence) {
        let (joined, left) = diff.key_changes(presence);
        if !joined.is_empty() || !left.is_empty() {
            let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
            self.key_changes.push((owned(joined), owned(left)));
        }
        self.add_diff(diff);
    }
}

/// A track as the session asked for it.
pub struct Track<'a> {
    pub member: MemberId,
    pub key: &'a str,
    pub state: State,
    pub refs: &'a RefGen,
    pub updates: Updates,
}

/// One channel's presence store; called under the channel's lock.
pub trait ChannelStore: Send + Any {
    /// Runs once the channel exists (Redis: subscribe, then snapshot).
    fn opened(&mut self);

    /// What `member`'s own state weighs now, under `key` (for the state
    /// budget, before it tracks under `key`).
    fn weight_of(&self, presence: &ChannelPresence, member: MemberId, key: &str) -> usize;

    /// Track; `ack` goes into the effects once the change is visible.
    fn track(&mut self, cx: &mut Ctx<'_>, track: Track<'_>, ack: Ack);

    /// Untrack (a `phx_leave`, an `untrack`, a grace period over); `ack`,
    /// if any, once the change is visible.
    fn untrack(&mut self, cx: &mut Ctx<'_>, member: MemberId, ack: Option<Ack>);

    /// Keep `member`'s meta for the leave grace period, no diff now;
    /// whether there was one to keep.
    fn orphan(&mut self, cx: &mut Ctx<'_>, member: MemberId) -> bool;

    /// Whether `member`'s meta is kept for a grace period.
    fn is_orphan(&self, presence: &ChannelPresence, member: MemberId) -> bool;

    /// Whether a joiner's snapshot must wait (Redis: for the channel's
    /// first snapshot); it is then owed, and reported in
    /// [`Effects::owed_states`] once it can be sent.
    fn defer_state(&mut self, member: MemberId) -> bool;

    /// Whether the channel must stay open with no member (it still holds
    /// this node's presence, kept or still being written).
    fn holds(&self, presence: &ChannelPresence) -> bool;

    /// The channel closed: stop following it.
    fn closed(&mut self);

    fn as_any(&mut self) -> &mut dyn Any;
}

/// Run `f` on a host's store of type `S` (how a backend's tasks reach their
/// own stores); `None` when the channel holds another kind of store.
pub fn with_store<S: ChannelStore, R>(
    host: &dyn Host,
    f: impl FnOnce(&mut S, &mut Ctx<'_>) -> R,
) -> Option<R> {
    let mut f = Some(f);
    let mut out = None;
    host.with_store(&mut |store, cx| {
        if let (Some(store), Some(f)) = (store.as_any().downcast_mut::<S>(), f.take()) {
            out = Some(f(store, cx));
        }
    });
    out
}
