//! Where presence lives: the seam between the channel (members, fan-out,
//! webhooks, gauges) and the truth of its presence.
//!
//! A node has one [`Backend`], and each channel owns one [`ChannelStore`]
//! made by it:
//! * [`local`]: one node; the pure tracker, applied at once, and last seen
//!   in this node's memory ([`last_seen`]);
//! * [`redis`]: several nodes; changes are written to Redis and come back
//!   numbered, in Redis's order, from the write's reply or from pub/sub.
//!
//! Either way a store never fans anything out itself: every operation
//! reports what happened in [`Effects`] (the diff it applied to the
//! channel's presence, the key changes this node reports to webhooks, the
//! acks now due, the joiners whose snapshot is now due), and the channel
//! turns them into frames through its one path (`Channel::commit`). So
//! a single node is a cluster of one: the same channel code, the same
//! presence API and the same socket code serve both, and [`connect`] is the
//! only place that knows which backend a node has.

pub mod last_seen;
pub mod local;
pub mod redis;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use roster_presence::{ChannelPresence, Diff, MemberId, RefGen, State, Updates};
use roster_protocol::UserBroadcast;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::webhooks::Webhooks;
use last_seen::LastSeen;
use local::Local;
use redis::{Cluster, RedisBackend};

/// The node's backend, as its settings ask: on its own, or sharing presence
/// with other nodes through Redis (or a Redis Cluster), which must answer.
/// The one place that decides between one node and several.
pub async fn connect(settings: &Settings) -> anyhow::Result<Arc<dyn Backend>> {
    let Some(cluster) = &settings.cluster else {
        return Ok(alone(settings));
    };
    let features = &settings.presence_features;
    let cluster = Cluster::connect(cluster.clone()).await?;
    cluster.register().await?;
    // In a cluster last seen lives in Redis, so every node answers the same.
    cluster.set_last_seen(features.last_seen_keys, features.last_seen_max_age);
    Ok(Arc::new(RedisBackend(cluster)))
}

/// The backend of a node on its own, with last seen as the settings ask.
pub fn alone(settings: &Settings) -> Arc<dyn Backend> {
    let features = &settings.presence_features;
    Arc::new(Local::new(LastSeen::new(
        features.last_seen_keys,
        features.last_seen_max_age,
    )))
}

/// A channel's name on this node (the channel registry, last seen):
/// public and private channels of one topic are separate, as in rt.
pub fn channel_key(topic: &str, private: bool) -> Arc<str> {
    if private {
        Arc::from(format!("private\u{0}{topic}"))
    } else {
        Arc::from(topic)
    }
}

/// A read the store could not answer (Redis unreachable): the presence
/// API replies 503 with it.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sends a deferred reply (a track's `ok` once its diff is out).
pub type Ack = Box<dyn FnOnce() + Send>;

/// Where a node's presence lives: it makes each channel's store, and
/// answers for what no open channel of this node holds. What one node
/// answers alone, a cluster answers from Redis.
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

    /// Start the backend's own tasks (Redis: lease, reaping, pub/sub).
    fn start(&self, shutdown: CancellationToken);

    /// Where changes the backend makes itself (Redis: a dead node's
    /// presences reaped) report their webhook events.
    fn report_to(&self, webhooks: Option<Arc<Webhooks>>);

    /// Whether this node may take joins now (Redis: it holds its lease).
    fn is_healthy(&self) -> bool;

    /// Cancelled once this node has been cut off from the others so long
    /// that its sockets had better move to another node; `None` when that
    /// cannot happen.
    fn cut_off(&self) -> Option<CancellationToken>;

    /// The presence of a channel not open on this node: empty on one
    /// node, every node's presences in a cluster.
    fn read_presence(
        &self,
        topic: &str,
        private: bool,
    ) -> BoxFuture<'_, Result<ChannelPresence, StoreError>>;

    /// The topics of channels with presence on other nodes (those open
    /// here may be among them).
    fn channel_topics(&self, private: bool) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// When each of `keys` last left any of `topics` (full names), in ms
    /// since the epoch, where remembered: the latest over the topics.
    fn last_seen<'a>(
        &'a self,
        topics: &'a [String],
        private: bool,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<HashMap<String, u64>, StoreError>>;

    /// Prometheus lines of the backend's own, if any.
    fn render_metrics(&self) -> String;

    /// Leave once the sockets have closed, waiting up to `grace` (Redis:
    /// for this node's entries to be deleted, then the lease lapses).
    fn leave(&self, grace: Duration) -> BoxFuture<'_, ()>;
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
    /// this node's own; returns the keys it took the last meta of.
    pub fn own_change(&mut self, diff: Diff, presence: &ChannelPresence) -> &[String] {
        let (joined, left) = diff.key_changes(presence);
        let change = (!joined.is_empty() || !left.is_empty()).then(|| {
            let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
            (owned(joined), owned(left))
        });
        self.add_diff(diff);
        match change {
            Some(change) => {
                self.key_changes.push(change);
                &self.key_changes[self.key_changes.len() - 1].1
            }
            None => &[],
        }
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
