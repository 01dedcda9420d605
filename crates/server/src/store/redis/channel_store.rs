//! A channel's presence on Redis: what this node owns, the write queue,
//! the replica, and the acks waiting for their diffs.
//!
//! A track or untrack becomes an op in the channel's write queue, written
//! by one writer task per channel in batches; its diff comes back numbered
//! (from the write's reply or from pub/sub) and is applied to the replica
//! in Redis's order, like everyone else's, and reported to the channel as
//! [`Effects`]. Acks wait for that, so when `await track()` resolves the
//! client's own state shows it, as on one node.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use roster_presence::{meta_weight, ChannelPresence, MemberId, Meta, Updates};
use roster_protocol::UserBroadcast;
use tokio_util::sync::CancellationToken;

use super::{wire, Cluster, Op, Received, Replica, Replicated, Snapshot, Write};
use crate::store::{self, Ack, Backend, ChannelStore, Ctx, Effects, Host, StoreError, Track};
use crate::webhooks::Webhooks;

/// The backend of a node in a cluster.
pub struct RedisBackend(pub Arc<Cluster>);

impl Backend for RedisBackend {
    fn channel_store(
        &self,
        topic: &str,
        private: bool,
        host: Weak<dyn Host>,
    ) -> Box<dyn ChannelStore> {
        let handle = Arc::new(ChannelHandle {
            cluster: self.0.clone(),
            tag: wire::tag(topic, private),
            topic: Arc::from(topic),
            private,
            host,
        });
        Box::new(RedisChannel {
            cluster: self.0.clone(),
            handle,
            sync: Sync::default(),
        })
    }

    fn relay_broadcast(&self, topic: &str, private: bool, msg: &UserBroadcast) {
        self.0.publish_broadcast(&wire::tag(topic, private), msg);
    }

    fn start(&self, shutdown: CancellationToken) {
        self.0.start(shutdown);
    }

    /// The reaper reports the leaves of the nodes it reaps.
    fn report_to(&self, webhooks: Option<Arc<Webhooks>>) {
        self.0.set_webhooks(webhooks);
    }

    fn is_healthy(&self) -> bool {
        self.0.is_healthy()
    }

    fn cut_off(&self) -> Option<CancellationToken> {
        Some(self.0.island.lock().clone())
    }

    fn read_presence(
        &self,
        topic: &str,
        private: bool,
    ) -> BoxFuture<'_, Result<ChannelPresence, StoreError>> {
        let topic = topic.to_owned();
        Box::pin(async move {
            self.0
                .read_presence(&topic, private)
                .await
                .map_err(unreachable)
        })
    }

    fn channel_topics(&self, private: bool) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { self.0.channel_topics(private).await.map_err(unreachable) })
    }

    fn last_seen<'a>(
        &'a self,
        topics: &'a [String],
        private: bool,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<HashMap<String, u64>, StoreError>> {
        Box::pin(async move {
            self.0
                .last_seen(topics, private, keys)
                .await
                .map_err(unreachable)
        })
    }

    fn render_metrics(&self) -> String {
        self.0.render_metrics()
    }

    fn leave(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.0.leave(grace))
    }
}

/// A read Redis did not answer.
fn unreachable(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

/// What the cluster holds of a channel: it reaches the channel's store
/// through this, never the channel itself.
struct ChannelHandle {
    cluster: Arc<Cluster>,
    tag: String,
    topic: Arc<str>,
    private: bool,
    host: Weak<dyn Host>,
}

impl ChannelHandle {
    fn with<R>(&self, f: impl FnOnce(&mut RedisChannel, &mut Ctx<'_>) -> R) -> Option<R> {
        store::with_store(&*self.host.upgrade()?, f)
    }
}

impl Replicated for ChannelHandle {
    fn tag(&self) -> &str {
        &self.tag
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn is_private(&self) -> bool {
        self.private
    }

    fn is_closed(&self) -> bool {
        self.host.upgrade().is_none_or(|h| h.is_closed())
    }

    fn install(self: Arc<Self>, snapshot: Snapshot) -> bool {
        self.with(|rc, cx| rc.install(cx, snapshot)).unwrap_or(true)
    }

    fn receive(self: Arc<Self>, update: wire::Update) {
        self.with(|rc, cx| rc.receive(cx, update));
    }

    fn hold(&self) {
        self.with(|rc, _| {
            rc.sync.replica.hold();
            rc.sync.resyncing = true;
        });
    }

    fn reassert(self: Arc<Self>) {
        self.with(|rc, _| rc.reassert());
    }

    fn lags(&self, epoch: &str, seq: u64) -> bool {
        self.with(|rc, _| rc.lags(epoch, seq)).unwrap_or(false)
    }

    fn deliver_broadcast(&self, msg: &UserBroadcast) -> usize {
        self.host.upgrade().map_or(0, |h| h.deliver_broadcast(msg))
    }
}

/// One channel's store on Redis.
pub struct RedisChannel {
    cluster: Arc<Cluster>,
    handle: Arc<ChannelHandle>,
    sync: Sync,
}

#[derive(Default)]
struct Sync {
    replica: Replica,
    /// This node's entries: the truth it re-asserts when Redis lost it.
    owned: HashMap<MemberId, Owned>,
    /// Owned entries of departed sockets, kept for the grace period.
    orphans: HashSet<MemberId>,
    /// Ops not yet sent, and whether the writer task is running.
    queue: Vec<Op>,
    writing: bool,
    /// Id of the batch that `queue` will become.
    next_batch: u64,
    /// Where sent batches landed (`None`: failed, retried later).
    landed: BTreeMap<u64, Option<(Arc<str>, u64)>>,
    acks: VecDeque<(u64, Ack)>,
    /// Members that joined before the first snapshot: their state is owed.
    waiting: Vec<MemberId>,
    /// The node id under which this channel is in the node's channel set.
    registered_as: Option<Arc<str>>,
    resyncing: bool,
    /// Another resync was asked for while one ran.
    resync_again: bool,
    hole_timer: bool,
}

struct Owned {
    key: Arc<str>,
    meta: Meta,
    entry: String,
}

impl Sync {
    /// The batch an ack must wait for: the queued one, else the one in
    /// flight, else the last ack's; `None` = nothing pending, ack now.
    fn ack_batch(&self) -> Option<u64> {
        if !self.queue.is_empty() {
            Some(self.next_batch)
        } else if self.writing {
            Some(self.next_batch - 1)
        } else {
            self.acks.back().map(|a| a.0)
        }
    }

    fn add_ack(&mut self, ack: Ack, effects: &mut Effects) {
        match self.ack_batch() {
            Some(batch) => self.acks.push_back((batch, ack)),
            None => effects.acks.push(ack),
        }
    }

    /// The acks whose writes are visible in the replica are due.
    fn release_acks(&mut self, effects: &mut Effects) {
        while let Some((batch, _)) = self.acks.front() {
            let ready = match self.landed.get(batch) {
                None => false,
                Some(None) => true,
                Some(Some((epoch, seq))) => match self.replica.position() {
                    Some((e, s)) if e == &**epoch => s >= *seq,
                    // Another epoch: that write's life is over unless a resync is coming.
                    Some(_) => !self.resyncing,
                    None => false,
                },
            };
            if !ready {
                break;
            }
            let (_, ack) = self.acks.pop_front().expect("front exists");
            effects.acks.push(ack);
        }
        let keep_from = self.acks.front().map_or(self.next_batch, |a| a.0);
        self.landed.retain(|b, _| *b >= keep_from);
    }

    fn put(&mut self, member: MemberId, key: Arc<str>, meta: Meta) {
        let entry = wire::encode_entry(&key, &meta);
        self.queue.push((member, Write::Put(entry.clone())));
        self.owned.insert(member, Owned { key, meta, entry });
    }

    /// A first track: Redis decides whether it takes over an orphan (of
    /// any node) or puts `meta`; `owned` is corrected from the reply.
    fn take_over(&mut self, member: MemberId, key: Arc<str>, meta: Meta) {
        let entry = wire::encode_entry(&key, &meta);
        self.queue.push((
            member,
            Write::TakeOver {
                fallback: entry.clone(),
                key: key.to_string(),
                state: meta.state.as_json().to_owned(),
            },
        ));
        self.owned.insert(member, Owned { key, meta, entry });
    }

    fn delete(&mut self, member: MemberId) {
        self.orphans.remove(&member);
        if self.owned.remove(&member).is_some() {
            self.queue.push((member, Write::Delete));
        }
    }

    /// After our write landed: where a take-over found an orphan, our entry
    /// is the orphan's meta, not the one we proposed.
    fn adopt_results(&mut self, ops: &[Op], update: &wire::Update, nid: &str) {
        for (member, write) in ops {
            let Write::TakeOver { fallback, .. } = write else {
                continue;
            };
            let mid = format!("{nid}|{member}");
            let landed = update.changes.iter().find(|c| c.join && *c.mid == *mid);
            let (Some(landed), Some(owned)) = (landed, self.owned.get_mut(member)) else {
                continue;
            };
            if owned.entry == *fallback && landed.meta != owned.meta {
                owned.meta = landed.meta.clone();
                owned.entry = wire::encode_entry(&owned.key, &owned.meta);
            }
        }
    }

    /// A track (here or on another node) took over one of our orphans: it
    /// is no longer ours. (Our own deletes leave `orphans` as they are queued.)
    fn forget_adopted(&mut self, update: &wire::Update, nid: &str) {
        if self.orphans.is_empty() {
            return;
        }
        for change in update.changes.iter().filter(|c| !c.join) {
            let member = change
                .mid
                .strip_prefix(nid)
                .and_then(|m| m.strip_prefix('|'))
                .and_then(|m| m.parse().ok());
            if let Some(member) = member {
                if self.orphans.remove(&member) {
                    self.owned.remove(&member);
                }
            }
        }
    }

    /// Puts and deletes are absolute: of a member's run of them, the last
    /// one wins. Other ops keep their place.
    fn take_batch(&mut self) -> Vec<Op> {
        let absolute = |w: &Write| matches!(w, Write::Put(_) | Write::Delete);
        let mut ops: Vec<Op> = Vec::with_capacity(self.queue.len());
        for op in self.queue.drain(..).rev() {
            let superseded = absolute(&op.1) && ops.iter().any(|o| o.0 == op.0 && absolute(&o.1));
            if !superseded {
                ops.push(op);
            }
        }
        ops.reverse();
        ops
    }
}

impl ChannelStore for RedisChannel {
    fn opened(&mut self) {
        self.cluster
            .open(&(self.handle.clone() as Arc<dyn Replicated>));
    }

    fn weight_of(&self, _: &ChannelPresence, member: MemberId, _: &str) -> usize {
        self.sync
            .owned
            .get(&member)
            .map_or(0, |o| meta_weight(&o.key, &o.meta.state))
    }

    fn track(&mut self, cx: &mut Ctx<'_>, t: Track<'_>, ack: Ack) {
        let sync = &mut self.sync;
        let (member, key, state) = (t.member, t.key, t.state);
        match sync.owned.get(&member) {
            Some(o) if &*o.key == key && o.meta.state == state => {}
            Some(o) if &*o.key == key && t.updates == Updates::Replace => {
                let meta = Meta {
                    phx_ref: o.meta.phx_ref.clone(),
                    phx_ref_prev: Some(o.meta.phx_ref.clone()),
                    state,
                };
                sync.put(member, Arc::from(key), meta);
            }
            Some(o) => {
                let meta = Meta {
                    phx_ref: t.refs.next_ref(),
                    phx_ref_prev: (&*o.key == key).then(|| o.meta.phx_ref.clone()),
                    state,
                };
                sync.put(member, Arc::from(key), meta);
            }
            // A first track: within the grace period, the same state under
            // the same key takes a departed socket's meta over, ref and
            // all, whichever node it was on. Redis decides (the `T` op: the
            // tracker's rule, in Lua), so the rule lives in one place per
            // store; `owned` is corrected from the reply.
            None => {
                let meta = Meta {
                    phx_ref: t.refs.next_ref(),
                    phx_ref_prev: None,
                    state,
                };
                sync.take_over(member, Arc::from(key), meta);
            }
        }
        sync.add_ack(ack, cx.effects);
        self.write();
    }

    fn untrack(&mut self, cx: &mut Ctx<'_>, member: MemberId, ack: Option<Ack>) {
        self.sync.delete(member);
        if let Some(ack) = ack {
            self.sync.add_ack(ack, cx.effects);
        }
        self.write();
    }

    fn orphan(&mut self, _: &mut Ctx<'_>, member: MemberId) -> bool {
        let sync = &mut self.sync;
        let kept = sync.owned.contains_key(&member) && sync.orphans.insert(member);
        if kept {
            // Visible in Redis, so a rejoin on another node can adopt it.
            sync.queue.push((member, Write::Orphan));
            self.write();
        }
        kept
    }

    fn is_orphan(&self, _: &ChannelPresence, member: MemberId) -> bool {
        self.sync.orphans.contains(&member)
    }

    fn defer_state(&mut self, member: MemberId) -> bool {
        if self.sync.replica.is_synced() {
            return false;
        }
        self.sync.waiting.push(member);
        true
    }

    /// Other nodes' entries do not keep a channel here; the writer task
    /// still flushes this node's last deletes.
    fn holds(&self, _: &ChannelPresence) -> bool {
        !self.sync.owned.is_empty()
    }

    fn closed(&mut self) {
        self.cluster
            .close(&(self.handle.clone() as Arc<dyn Replicated>));
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

impl RedisChannel {
    /// Start the writer task if there is something to write.
    fn write(&mut self) {
        let sync = &mut self.sync;
        if sync.writing || sync.queue.is_empty() {
            return;
        }
        // The task keeps the channel alive until its last op is written.
        let Some(host) = self.handle.host.upgrade() else {
            return;
        };
        sync.writing = true;
        self.cluster.writer_running(true);
        tokio::spawn(write_loop(self.handle.clone(), host));
    }

    /// A numbered update from Redis (pub/sub, or our own write's reply).
    fn receive(&mut self, cx: &mut Ctx<'_>, update: wire::Update) {
        let nid = self.cluster.nid();
        let sync = &mut self.sync;
        sync.replica.set_own(&nid);
        sync.forget_adopted(&update, &nid);
        match sync.replica.receive(update, cx.presence) {
            Received::Applied(diff) => cx.effects.add_diff(diff.net()),
            Received::Stale => {}
            Received::Parked => self.watch_hole(),
            Received::Resync => self.request_resync(),
        }
        self.sync.release_acks(cx.effects);
        self.report_own_changes(cx.effects);
    }

    /// Webhook events for the changes this node made (each node reports
    /// only its own, so each event is sent once in the cluster).
    fn report_own_changes(&mut self, effects: &mut Effects) {
        let changes = std::mem::take(&mut self.sync.replica.own_key_changes);
        effects.key_changes.extend(changes);
    }

    /// An update is missing: if it has not come within a second, resync.
    fn watch_hole(&mut self) {
        let sync = &mut self.sync;
        if !sync.replica.is_synced() || sync.hole_timer {
            return;
        }
        sync.hole_timer = true;
        let seen = sync.replica.position().map(|(_, s)| s);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            handle.with(|rc, _| {
                rc.sync.hole_timer = false;
                let replica = &rc.sync.replica;
                if replica.has_gap() && replica.position().map(|(_, s)| s) == seen {
                    tracing::debug!(topic = %rc.handle.topic, "presence update missing; resyncing");
                    rc.request_resync();
                } else if replica.has_gap() {
                    rc.watch_hole();
                }
            });
        });
    }

    fn request_resync(&mut self) {
        let sync = &mut self.sync;
        if sync.resyncing {
            sync.resync_again = true;
            return;
        }
        sync.resyncing = true;
        let handle = self.handle.clone() as Arc<dyn Replicated>;
        tokio::spawn(self.cluster.clone().resync(handle));
    }

    /// Install a snapshot: members waiting for their first state get it;
    /// members that had a state get the difference. False when another
    /// resync was asked for meanwhile (the caller goes round again).
    fn install(&mut self, cx: &mut Ctx<'_>, snapshot: Snapshot) -> bool {
        let sync = &mut self.sync;
        if std::mem::take(&mut sync.resync_again) {
            return false;
        }
        sync.resyncing = false;
        let first = !sync.replica.is_synced();
        sync.replica.set_own(&self.cluster.nid());
        let cluster = &self.cluster;
        let is_live = |nid: &str| cluster.is_live(nid);
        let diff = sync.replica.install(snapshot, cx.presence, &is_live);
        // A first snapshot is the state joiners get, not a change.
        cx.effects.silent = first;
        cx.effects.add_diff(diff);
        cx.effects.owed_states = std::mem::take(&mut sync.waiting);
        sync.release_acks(cx.effects);
        self.report_own_changes(cx.effects);
        true
    }

    /// Whether a settled replica (no gap, no resync under way) is not at
    /// Redis's `(epoch, seq)`: it missed a message.
    fn lags(&self, epoch: &str, seq: u64) -> bool {
        let sync = &self.sync;
        if sync.resyncing || sync.replica.has_gap() || sync.writing {
            return false;
        }
        sync.replica
            .position()
            .is_some_and(|(e, s)| e != epoch || s != seq)
    }

    /// Queue every owned entry again (Redis may have lost them); entries
    /// Redis still has are left alone by the script.
    fn reassert(&mut self) {
        let sync = &mut self.sync;
        let mut ops: Vec<Op> = sync
            .owned
            .iter()
            .map(|(m, o)| (*m, Write::Put(o.entry.clone())))
            .collect();
        ops.extend(sync.orphans.iter().map(|m| (*m, Write::Orphan)));
        // Ahead of newer ops, which must win.
        let newer = std::mem::replace(&mut sync.queue, ops);
        sync.queue.extend(newer);
        sync.registered_as = None;
        self.write();
    }

    /// The next batch to write, or `None` (the writer stops) when the
    /// queue is empty.
    fn next_batch(&mut self, nid: &Arc<str>) -> Option<(u64, Vec<Op>, bool)> {
        let sync = &mut self.sync;
        if sync.queue.is_empty() {
            sync.writing = false;
            self.cluster.writer_running(false);
            return None;
        }
        let batch = sync.next_batch;
        sync.next_batch += 1;
        let register = sync.registered_as.as_deref() != Some(&**nid);
        Some((batch, sync.take_batch(), register))
    }

    /// A batch was written (or failed: then its ops go back ahead of newer
    /// ones, being idempotent, and its acks go now: the change is accepted
    /// and lands when the node is back in touch with Redis). True on failure.
    fn landed(
        &mut self,
        cx: &mut Ctx<'_>,
        (batch, ops, register): (u64, Vec<Op>, bool),
        nid: &Arc<str>,
        result: redis::RedisResult<super::Applied>,
    ) -> bool {
        let sync = &mut self.sync;
        match result {
            Ok(applied) => {
                if register {
                    sync.registered_as = Some(nid.clone());
                }
                sync.landed
                    .insert(batch, Some((applied.epoch, applied.seq)));
                match applied.update {
                    Some(update) => {
                        sync.adopt_results(&ops, &update, nid);
                        self.receive(cx, update);
                    }
                    None => sync.release_acks(cx.effects),
                }
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, topic = %self.handle.topic, "presence write failed; will retry");
                let newer = std::mem::replace(&mut sync.queue, ops);
                sync.queue.extend(newer);
                sync.landed.insert(batch, None);
                sync.release_acks(cx.effects);
                true
            }
        }
    }
}

/// Write the queue in batches, one in flight at a time, so this node's
/// changes to the channel land in the order they were made.
async fn write_loop(handle: Arc<ChannelHandle>, host: Arc<dyn Host>) {
    let cluster = handle.cluster.clone();
    loop {
        let nid = cluster.nid();
        let Some(Some(batch)) =
            store::with_store(&*host, |rc: &mut RedisChannel, _| rc.next_batch(&nid))
        else {
            return;
        };
        let result = cluster
            .apply(
                &handle.tag,
                &handle.topic,
                handle.private,
                &batch.1,
                batch.2,
            )
            .await;
        let failed = store::with_store(&*host, |rc: &mut RedisChannel, cx| {
            rc.landed(cx, batch, &nid, result)
        });
        if failed == Some(true) {
            tokio::time::sleep(cluster.settings.heartbeat / 2).await;
            cluster.until_healthy().await;
        }
    }
}
