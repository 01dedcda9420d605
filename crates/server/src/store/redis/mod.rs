//! Several nodes sharing presence and broadcasts through Redis.
//!
//! Redis holds the truth of each channel (one hash field per member, owned
//! by the node holding its socket); each node holds the truth about its own
//! sockets (`owned` in each channel) and re-asserts it whenever Redis may
//! have lost it. Design: `shared/distributed-design.md`; departures are
//! listed in ARCHITECTURE.md.
//!
//! * `wire` — key names, entry and message texts.
//! * `scripts` — the Lua scripts: every change is one atomic script that
//!   also publishes the numbered diff.
//! * `replica` — a node's copy of one channel, applied in Redis's order.
//! * `channel_store` — a channel's store on Redis (the `ChannelStore` of
//!   `store`): its owned entries, write queue and writer task, acks.
//! * `link` — one Redis or a Redis Cluster behind one connection and one
//!   pub/sub feed (`SUBSCRIBE` or sharded `SSUBSCRIBE`).
//! * this file — the node: its lease (heartbeat), reaping dead nodes,
//!   the pub/sub feed, recovery after Redis (or a shard) comes back.

mod channel_store;
mod link;
mod replica;
mod scripts;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::AsyncCommands;
use roster_protocol::UserBroadcast;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use channel_store::RedisBackend;
use link::{Event, Feed, Link};
pub use replica::{Received, Replica, Snapshot};
use scripts::Scripts;

use crate::settings::ClusterSettings;

/// What to do with one owned entry (by member number).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Set the entry (an encoded `wire` entry).
    Put(String),
    Delete,
    /// Its socket is gone: another node may take it over (leave grace).
    Orphan,
    /// A first track: take over a departed socket's entry with the same key
    /// and state if one is marked orphan (on any node), else put `fallback`.
    TakeOver {
        fallback: String,
        key: String,
        state: String,
    },
}

pub type Op = (u64, Write);

/// Where a write landed: `(epoch, seq)`, and the update it published.
pub struct Applied {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub update: Option<wire::Update>,
}

/// A broadcast on its way to other nodes: pub/sub channel, message.
type Relayed = (String, Vec<u8>);

enum SubCommand {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// What this store needs of a channel it replicates (the channel layer's
/// `Channel` is one): it is told of snapshots and numbered updates, and
/// asked to hold them or to write its entries again after Redis lost them.
pub trait Replicated: Send + Sync + 'static {
    /// The channel's hash tag: its keys and pub/sub channel.
    fn tag(&self) -> &str;
    fn topic(&self) -> &str;
    fn is_private(&self) -> bool;
    fn is_closed(&self) -> bool;
    /// False when another resync was asked for meanwhile.
    fn install(self: Arc<Self>, snapshot: Snapshot) -> bool;
    fn receive(self: Arc<Self>, update: wire::Update);
    /// Park updates until the next snapshot.
    fn hold(&self);
    /// Queue every entry this node owns again.
    fn reassert(self: Arc<Self>);
    /// Whether the replica is behind `(epoch, seq)`.
    fn lags(&self, epoch: &str, seq: u64) -> bool;
    /// Fan a broadcast from another node out to this node's members.
    fn deliver_broadcast(&self, msg: &roster_protocol::UserBroadcast) -> usize;
}

pub struct Cluster {
    pub settings: ClusterSettings,
    /// This incarnation's id: `<name>-<random>`; replaced when fenced.
    nid: RwLock<Arc<str>>,
    /// Commands: one Redis or a Redis Cluster.
    link: Link,
    /// The heartbeat's, the fence check's and the claim's own connection.
    lease: Link,
    /// Pub/sub, taken by `start`.
    feed: Mutex<Option<Feed>>,
    /// The lease keys' names (one Redis or a cluster).
    globals: wire::Globals,
    scripts: Scripts,
    /// An id a channel's fence refused (a reaper swept it, though the lease
    /// keys may not say so after a failover): the lease task starts a new
    /// incarnation if it is still ours.
    fenced: Mutex<Option<Arc<str>>>,
    /// No claiming before this: after a shard was lost, leases may read
    /// stale until every node has renewed its own.
    no_claim_before: Mutex<Instant>,
    /// Bumped by each recovery; an older one's probe gives way.
    recoveries: std::sync::atomic::AtomicU64,
    /// Entries this node removed lately (its writes and reaps), to remove
    /// again if a failover or an old dump brings them back.
    removed: Mutex<Removed>,
    /// Replicated channels by tag.
    channels: Mutex<HashMap<String, Weak<dyn Replicated>>>,
    subscribe_tx: mpsc::UnboundedSender<SubCommand>,
    subscribe_rx: Mutex<Option<mpsc::UnboundedReceiver<SubCommand>>>,
    /// Broadcasts for the other nodes, in the order they were sent.
    broadcast_tx: mpsc::UnboundedSender<Relayed>,
    broadcast_rx: Mutex<Option<mpsc::UnboundedReceiver<Relayed>>>,
    /// True while our lease is surely valid: joins and writes go ahead.
    healthy: watch::Sender<bool>,
    /// Until then, resyncs wait: nodes are re-asserting after Redis came back.
    settle_until: Mutex<Instant>,
    /// Cancelled when the node has been cut off for the island timeout.
    pub island: Mutex<CancellationToken>,
    pub metrics: ClusterMetrics,
    /// Channel writer tasks running.
    writers: std::sync::atomic::AtomicUsize,
    webhooks: Mutex<Option<Arc<crate::webhooks::Webhooks>>>,
    /// Nodes with a live lease, as of the last heartbeat.
    live: RwLock<std::collections::HashSet<String>>,
    /// Last seen in Redis: most keys per channel (0 = off) and age limit, ms.
    last_seen_cap: std::sync::atomic::AtomicU64,
    last_seen_max_age_ms: std::sync::atomic::AtomicU64,
}

/// How long a removal is remembered ([`Removed`]): far longer than
/// replication lags, the window an asynchronous failover can lose.
const REMEMBER_REMOVALS: Duration = Duration::from_secs(10);

/// Entries this node removed lately: `(when, tag, member id, ref)`. While
/// a recovery waits for Redis, none is forgotten.
#[derive(Default)]
struct Removed {
    recent: std::collections::VecDeque<(Instant, String, String, Arc<str>)>,
    recovering: bool,
}

impl Removed {
    /// Note the entries `update` removed outright (not replaced).
    fn note(&mut self, tag: &str, update: &wire::Update) {
        let now = Instant::now();
        for change in update.changes.iter().filter(|c| !c.join) {
            let replaced = update.changes.iter().any(|c| c.join && c.mid == change.mid);
            if !replaced {
                self.recent.push_back((
                    now,
                    tag.to_owned(),
                    change.mid.to_string(),
                    change.meta.phx_ref.clone(),
                ));
            }
        }
        if !self.recovering {
            while self
                .recent
                .front()
                .is_some_and(|(at, ..)| now.duration_since(*at) > REMEMBER_REMOVALS)
            {
                self.recent.pop_front();
            }
        }
    }
}

/// Counters for `/metrics` and the closing numbers.
#[derive(Default)]
pub struct ClusterMetrics {
    pub redis_calls: std::sync::atomic::AtomicU64,
    pub resyncs: std::sync::atomic::AtomicU64,
    pub reaped: std::sync::atomic::AtomicU64,
}

fn new_nid(name: &str) -> Arc<str> {
    let random = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(format!("{name}-{}", &random[..12]))
}

/// A fresh epoch, in case a script has to create a channel's meta.
fn fresh_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

impl Cluster {
    /// Connect to Redis (fails when it cannot be reached).
    pub async fn connect(settings: ClusterSettings) -> anyhow::Result<Arc<Cluster>> {
        // A reply slower than a heartbeat is as good as none: the lease
        // logic must see failures in time.
        let timeout = settings.heartbeat.max(Duration::from_millis(100));
        let link::Links {
            commands: link,
            lease,
            feed,
        } = link::connect(&settings.redis, timeout).await?;
        let sharded = link.sharded();
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        let (broadcast_tx, broadcast_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Cluster {
            nid: RwLock::new(new_nid(&settings.node_name)),
            settings,
            link,
            lease,
            feed: Mutex::new(Some(feed)),
            globals: if sharded { wire::SHARDED } else { wire::SINGLE },
            scripts: Scripts::new(sharded),
            fenced: Mutex::default(),
            no_claim_before: Mutex::new(Instant::now()),
            recoveries: Default::default(),
            removed: Mutex::default(),
            channels: Mutex::default(),
            subscribe_tx,
            subscribe_rx: Mutex::new(Some(subscribe_rx)),
            broadcast_tx,
            broadcast_rx: Mutex::new(Some(broadcast_rx)),
            healthy: watch::channel(false).0,
            settle_until: Mutex::new(Instant::now()),
            island: Mutex::new(CancellationToken::new()),
            metrics: ClusterMetrics::default(),
            writers: Default::default(),
            webhooks: Mutex::default(),
            live: RwLock::default(),
            last_seen_cap: Default::default(),
            last_seen_max_age_ms: Default::default(),
        }))
    }

    pub fn nid(&self) -> Arc<str> {
        self.nid.read().clone()
    }

    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// Wait until the node may write again.
    pub async fn until_healthy(&self) {
        let mut rx = self.healthy.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Until when resyncs should wait (re-asserting after a Redis loss).
    pub fn settle_until(&self) -> Instant {
        *self.settle_until.lock()
    }

    fn count(&self, calls: u64) {
        self.metrics
            .redis_calls
            .fetch_add(calls, std::sync::atomic::Ordering::Relaxed);
    }

    /// Take this node's lease, so it is healthy (ready, accepting joins)
    /// from its first request on.
    pub async fn register(&self) -> anyhow::Result<()> {
        self.heartbeat()
            .await
            .map_err(|e| anyhow::anyhow!("redis {}: {e}", self.settings.redis))?;
        self.healthy.send_replace(true);
        Ok(())
    }

    /// Start the node's background tasks: lease, reaping, pub/sub.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let rx = self
            .subscribe_rx
            .lock()
            .take()
            .expect("Cluster::start runs once");
        let feed = self.feed.lock().take().expect("Cluster::start runs once");
        tokio::spawn(self.clone().pubsub_loop(feed, rx, shutdown.clone()));
        let broadcasts = self
            .broadcast_rx
            .lock()
            .take()
            .expect("Cluster::start runs once");
        tokio::spawn(self.clone().publish_loop(broadcasts));
        tokio::spawn(self.clone().lease_loop(shutdown));
    }

    // ---- channels ------------------------------------------------------

    /// Replicate `channel` here: subscribe, then snapshot (in that order,
    /// so no change falls between the two), then install. Called as the
    /// channel is created; the subscribing happens in the background.
    pub fn open(self: &Arc<Self>, channel: &Arc<dyn Replicated>) {
        let tag = channel.tag().to_owned();
        self.channels
            .lock()
            .insert(tag.clone(), Arc::downgrade(channel));
        let (done_tx, done_rx) = oneshot::channel();
        let _ = self.subscribe_tx.send(SubCommand::Subscribe(tag, done_tx));
        let (me, channel) = (self.clone(), channel.clone());
        tokio::spawn(async move {
            if done_rx.await.is_ok() {
                me.resync(channel).await;
            }
        });
    }

    /// Stop replicating a closed channel (unless a newer one took its tag).
    pub fn close(&self, channel: &Arc<dyn Replicated>) {
        let tag = channel.tag();
        let mut channels = self.channels.lock();
        let ours = channels
            .get(tag)
            .is_some_and(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(channel)));
        if ours {
            channels.remove(tag);
            let _ = self
                .subscribe_tx
                .send(SubCommand::Unsubscribe(tag.to_owned()));
        }
    }

    /// Rebuild a channel's replica from a snapshot, retrying until Redis
    /// answers or the channel is closed.
    pub async fn resync(self: Arc<Self>, channel: Arc<dyn Replicated>) {
        loop {
            // A recovery may push the end of the settle window further.
            let until = self.settle_until();
            if Instant::now() < until {
                tokio::time::sleep_until(until.min(Instant::now() + self.settings.heartbeat)).await;
                continue;
            }
            if channel.is_closed() {
                return;
            }
            match self
                .snapshot(channel.tag(), channel.topic(), channel.is_private())
                .await
            {
                Ok(snapshot) => {
                    self.metrics
                        .resyncs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if channel.clone().install(snapshot) {
                        return;
                    }
                    // Asked again meanwhile (another epoch seen): go round.
                }
                Err(e) => {
                    tracing::debug!(error = %e, topic = channel.topic(), "snapshot failed; retrying");
                    tokio::time::sleep(self.settings.heartbeat).await;
                }
            }
        }
    }

    async fn snapshot(
        &self,
        tag: &str,
        topic: &str,
        private: bool,
    ) -> redis::RedisResult<Snapshot> {
        let mut conn = self.link.clone();
        self.count(1);
        let (epoch, seq, flat): (String, u64, Vec<String>) = self
            .scripts
            .snapshot
            .key(wire::data_key(tag))
            .key(wire::meta_key(tag))
            .arg(fresh_epoch())
            .arg(topic_label(topic, private))
            .invoke_async(&mut conn)
            .await?;
        let mut entries = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(mid), Some(entry)) = (it.next(), it.next()) {
            entries.push((mid, entry));
        }
        Ok(Snapshot {
            epoch: Arc::from(epoch),
            seq,
            entries,
        })
    }

    /// A channel's presence read straight from Redis (for the presence API
    /// on a node with no clients in that channel).
    pub async fn read_presence(
        &self,
        topic: &str,
        private: bool,
    ) -> redis::RedisResult<roster_presence::ChannelPresence> {
        let snapshot = self
            .snapshot(&wire::tag(topic, private), topic, private)
            .await?;
        let mut presence = roster_presence::ChannelPresence::new();
        Replica::default().install(snapshot, &mut presence, &|_| true);
        Ok(presence)
    }

    /// Remember in Redis when keys left (last seen): at most `cap` keys per
    /// channel (0 = off), for `max_age`.
    pub fn set_last_seen(&self, cap: usize, max_age: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_seen_cap
            .store(u64::try_from(cap).unwrap_or(u64::MAX), Relaxed);
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        // Lua numbers are doubles: keep the limit exact and PEXPIRE-able.
        self.last_seen_max_age_ms
            .store(max_age_ms.clamp(1, 1 << 52), Relaxed);
    }

    /// `(age limit ms, cap)` for the scripts.
    fn last_seen_limits(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.last_seen_max_age_ms.load(Relaxed),
            self.last_seen_cap.load(Relaxed),
        )
    }

    pub fn last_seen_enabled(&self) -> bool {
        self.last_seen_limits().1 > 0
    }

    /// When each of `keys` last lost an entry in any of `topics`, within the
    /// age limit (Redis's clock): the latest over the topics. One round trip.
    pub async fn last_seen(
        &self,
        topics: &[String],
        private: bool,
        keys: &[&str],
    ) -> redis::RedisResult<HashMap<String, u64>> {
        let mut found = HashMap::new();
        if keys.is_empty() || topics.is_empty() || !self.last_seen_enabled() {
            return Ok(found);
        }
        let members: Vec<String> = keys.iter().map(|k| wire::last_seen_member(k)).collect();
        let mut cmds = vec![(String::new(), redis::cmd("TIME"))];
        for topic in topics {
            let tag = wire::tag(topic, private);
            let mut cmd = redis::cmd("ZMSCORE");
            cmd.arg(wire::last_seen_key(&tag)).arg(&members);
            cmds.push((tag, cmd));
        }
        self.count(1);
        let mut replies = self.link.grouped(cmds).await?.into_iter();
        let time: (u64, u64) =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil))?;
        let scores = replies
            .map(redis::from_redis_value::<Vec<Option<f64>>>)
            .collect::<Result<Vec<_>, _>>()?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let oldest = now_ms.saturating_sub(self.last_seen_limits().0);
        for per_topic in scores {
            for (key, score) in keys.iter().zip(per_topic) {
                // Scores are whole milliseconds, well within f64's exact range.
                let Some(at) = score.map(|s| s as u64).filter(|at| *at >= oldest) else {
                    continue;
                };
                let latest = found.entry((*key).to_owned()).or_insert(at);
                *latest = (*latest).max(at);
            }
        }
        Ok(found)
    }

    /// Every channel Redis knows (public or private ones), by topic: a scan
    /// of the channels' meta hashes, for the presence API's key queries.
    pub async fn channel_topics(&self, private: bool) -> redis::RedisResult<Vec<String>> {
        self.count(1);
        let metas = self.link.scan("rp:{*}:m").await?;
        if metas.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = metas
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(key).arg("t");
                (wire::tag_of_key(key).unwrap_or_default().to_owned(), cmd)
            })
            .collect();
        self.count(1);
        let labels = self
            .link
            .grouped(cmds)
            .await?
            .into_iter()
            .map(redis::from_redis_value::<Option<String>>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(labels
            .into_iter()
            .flatten()
            .filter_map(|label| match label.strip_prefix("private:") {
                Some(topic) => private.then(|| topic.to_owned()),
                None => (!private).then_some(label),
            })
            .collect())
    }

    /// Write one batch of a channel's owned entries. `register` first adds
    /// the channel to this node's set (so a reaper finds it).
    pub async fn apply(
        &self,
        tag: &str,
        topic: &str,
        private: bool,
        ops: &[Op],
        register: bool,
    ) -> redis::RedisResult<Applied> {
        let nid = self.nid();
        let mut conn = self.link.clone();
        if register {
            self.count(1);
            let registered: redis::RedisResult<()> = self
                .scripts
                .register
                .key(wire::node_channels_key(&nid))
                .key(wire::node_fenced_key(&nid))
                .arg(tag)
                .invoke_async(&mut conn)
                .await;
            self.note_fenced(&nid, registered)?;
        }
        let mut invocation = self.scripts.apply.key(wire::data_key(tag));
        invocation
            .key(wire::meta_key(tag))
            .key(wire::orphans_key(tag))
            .key(wire::last_seen_key(tag))
            .key(wire::fence_key(tag));
        if !self.link.sharded() {
            // One Redis: the lease set shares the script, which checks the
            // lease itself (on a cluster it lives on another shard).
            invocation.key(self.globals.nodes);
        }
        invocation
            .arg(&*nid)
            .arg(wire::pubsub_channel(tag))
            .arg(topic_label(topic, private))
            .arg(fresh_epoch());
        let (max_age_ms, cap) = self.last_seen_limits();
        invocation.arg(max_age_ms).arg(cap);
        for (member, write) in ops {
            let mid = format!("{nid}|{member}");
            match write {
                Write::Put(entry) => invocation.arg("P").arg(mid).arg(entry),
                Write::Delete => invocation.arg("D").arg(mid),
                Write::Orphan => invocation.arg("O").arg(mid),
                Write::TakeOver {
                    fallback,
                    key,
                    state,
                } => invocation
                    .arg("T")
                    .arg(mid)
                    .arg(fallback)
                    .arg(wire::entry_prefix(key))
                    .arg(format!("\x1f{state}")),
            };
        }
        self.count(1);
        let (epoch, seq, message): (String, u64, Option<String>) =
            self.note_fenced(&nid, invocation.invoke_async(&mut conn).await)?;
        let update = message.as_deref().and_then(wire::decode_update);
        if let Some(update) = &update {
            self.removed.lock().note(tag, update);
        }
        Ok(Applied {
            epoch: Arc::from(epoch),
            seq,
            update,
        })
    }

    /// A script refused `nid` as fenced by a reaper: have the lease task
    /// start a new incarnation (unless it already has).
    fn note_fenced<T>(
        &self,
        nid: &Arc<str>,
        result: redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            let reaped =
                e.code() == Some("FENCED") && e.detail().is_some_and(|d| d.starts_with("reaped"));
            if reaped && *self.nid() == **nid {
                *self.fenced.lock() = Some(nid.clone());
            }
        }
        result
    }

    /// Relay a broadcast to the other nodes (they skip their own). Queued
    /// to one publisher task, so one sender's broadcasts keep their order.
    pub fn publish_broadcast(&self, tag: &str, msg: &UserBroadcast) {
        let bytes = wire::encode_broadcast(&self.nid(), msg);
        let _ = self.broadcast_tx.send((wire::pubsub_channel(tag), bytes));
    }

    /// Publish queued broadcasts in order, many per round trip.
    async fn publish_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Relayed>) {
        // Sharded pub/sub on a cluster: a broadcast reaches its channel's
        // shard only.
        let publish = if self.link.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        while let Some(first) = rx.recv().await {
            let mut cmds = Vec::new();
            let mut add = |(channel, bytes): Relayed| {
                let tag = wire::tag_of_channel(&channel)
                    .unwrap_or_default()
                    .to_owned();
                let mut cmd = redis::cmd(publish);
                cmd.arg(channel).arg(bytes);
                cmds.push((tag, cmd));
            };
            add(first);
            for _ in 0..255 {
                match rx.try_recv() {
                    Ok(relayed) => add(relayed),
                    Err(_) => break,
                }
            }
            self.count(1);
            let sent = self.link.grouped(cmds).await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "broadcasts not relayed to other nodes");
            }
        }
    }

    fn channel(&self, tag: &str) -> Option<Arc<dyn Replicated>> {
        self.channels.lock().get(tag).and_then(Weak::upgrade)
    }

    fn all_channels(&self) -> Vec<Arc<dyn Replicated>> {
        self.channels
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    // ---- pub/sub ---------------------------------------------------------

    async fn pubsub_loop(
        self: Arc<Self>,
        mut feed: Feed,
        commands: mpsc::UnboundedReceiver<SubCommand>,
        shutdown: CancellationToken,
    ) {
        // On a cluster, subscriptions go over the shared cluster connection,
        // one at a time and retried, in a task of their own (a shard that
        // is away must not hold up messages from the others).
        let mut commands = if self.link.sharded() {
            tokio::spawn(self.clone().sharded_subscriptions(commands));
            None
        } else {
            Some(commands)
        };
        let mut first = true;
        // Subscribes asked for while disconnected, answered after the next connect.
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let channels: Vec<String> = self
                .channels
                .lock()
                .keys()
                .map(|t| wire::pubsub_channel(t))
                .collect();
            let Some(mut session) = feed.open(&channels).await else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            };
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if !first {
                tracing::info!("redis pub/sub reconnected: re-asserting and resyncing");
                self.recover();
            }
            first = false;
            loop {
                let command = async {
                    match commands.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = session.next() => match event {
                        Some(Event::Message { channel, payload }) => self.route(&channel, &payload),
                        Some(Event::Lost) => {
                            // A cluster node's connection dropped: its shard may
                            // fail over, losing its last writes and messages.
                            tracing::warn!("a redis cluster node connection dropped: re-asserting and resyncing");
                            *self.no_claim_before.lock() = Instant::now() + self.settings.lease;
                            self.recover();
                        }
                        Some(Event::Dropped(channel)) => self.subscription_dropped(&channel),
                        None => break,
                    },
                    cmd = command => match cmd {
                        Some(SubCommand::Subscribe(tag, done)) => {
                            if session.subscribe(&wire::pubsub_channel(&tag)).await.is_ok() {
                                let _ = done.send(());
                            } else {
                                waiting.push(done);
                                break;
                            }
                        }
                        Some(SubCommand::Unsubscribe(tag)) => {
                            // A newer channel may have taken the tag meanwhile.
                            if !self.channels.lock().contains_key(&tag)
                                && session.unsubscribe(&wire::pubsub_channel(&tag)).await.is_err()
                            {
                                break;
                            }
                        }
                        None => return,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
            tracing::warn!("redis pub/sub connection lost");
        }
    }

    /// Cluster subscriptions, in the order asked: a subscribe is retried
    /// until its shard answers (or its channel closed).
    async fn sharded_subscriptions(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<SubCommand>,
    ) {
        while let Some(cmd) = commands.recv().await {
            match cmd {
                SubCommand::Subscribe(tag, done) => loop {
                    if !self.channels.lock().contains_key(&tag) {
                        break;
                    }
                    match self.link.subscribe(&wire::pubsub_channel(&tag)).await {
                        Ok(()) => {
                            let _ = done.send(());
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "sharded subscribe failed; retrying");
                            tokio::time::sleep(self.settings.heartbeat).await;
                        }
                    }
                },
                SubCommand::Unsubscribe(tag) => {
                    if !self.channels.lock().contains_key(&tag) {
                        let _ = self.link.unsubscribe(&wire::pubsub_channel(&tag)).await;
                    }
                }
            }
        }
    }

    /// The server ended a subscription we still want (its slot moved to
    /// another master): subscribe again, then resync the channel (messages
    /// published meanwhile went to the new master). Nothing was lost in
    /// Redis, so `(epoch, seq)` still names the contents: no hold.
    fn subscription_dropped(self: &Arc<Self>, channel_name: &str) {
        let Some(tag) = wire::tag_of_channel(channel_name) else {
            return;
        };
        let Some(channel) = self.channel(tag) else {
            return;
        };
        tracing::info!(
            topic = channel.topic(),
            "sharded subscription moved: subscribing again and resyncing"
        );
        let me = self.clone();
        let name = channel_name.to_owned();
        tokio::spawn(async move {
            while !channel.is_closed() {
                match me.link.subscribe(&name).await {
                    Ok(()) => break,
                    Err(_) => tokio::time::sleep(me.settings.heartbeat).await,
                }
            }
            me.resync(channel).await;
        });
    }

    fn route(&self, channel_name: &str, payload: &[u8]) {
        let Some(tag) = wire::tag_of_channel(channel_name) else {
            return;
        };
        let Some(channel) = self.channel(tag) else {
            return;
        };
        match payload.first() {
            Some(b'P') => match std::str::from_utf8(payload)
                .ok()
                .and_then(wire::decode_update)
            {
                Some(update) => channel.receive(update),
                None => tracing::warn!(channel_name, "unreadable presence update ignored"),
            },
            Some(b'B') => match wire::decode_broadcast(payload) {
                Some((origin, msg)) if *origin != *self.nid() => {
                    channel.deliver_broadcast(&msg);
                }
                Some(_) => {}
                None => tracing::warn!(channel_name, "unreadable broadcast ignored"),
            },
            _ => {}
        }
    }

    /// Redis may have lost data or messages: re-assert every owned entry,
    /// let the other nodes do the same for `settle`, then resync each
    /// channel and tell clients only what really changed.
    ///
    /// The settle window starts once Redis answers for every channel: on
    /// one Redis at once (it has come back when this is called); on a
    /// cluster once every channel's shard takes our subscription again (a
    /// master that died is only replaced after the cluster's node timeout).
    /// Recovery is global — every channel, whichever shard it is on: the
    /// simplest that is surely right, and a snapshot by contents costs
    /// clients nothing when nothing changed.
    fn recover(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        let generation = self.recoveries.fetch_add(1, SeqCst) + 1;
        self.removed.lock().recovering = true;
        // Resyncs wait until the probe below opens the settle window.
        *self.settle_until.lock() = Instant::now() + Duration::from_secs(3600);
        let channels = self.all_channels();
        for channel in &channels {
            // Park updates until the snapshot after `settle`: until then
            // the channel's numbers in Redis may not name its contents.
            channel.hold();
            channel.clone().reassert();
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if me.recoveries.load(SeqCst) != generation {
                    return;
                }
                let names: Vec<String> = channels
                    .iter()
                    .filter(|c| !c.is_closed())
                    .map(|c| wire::pubsub_channel(c.tag()))
                    .collect();
                match me.link.resubscribe(&names).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "recovery: waiting for every shard");
                        tokio::time::sleep(me.settings.heartbeat).await;
                    }
                }
            }
            if me.recoveries.load(SeqCst) != generation {
                return;
            }
            me.remove_again().await;
            *me.settle_until.lock() = Instant::now() + me.settings.settle;
            for channel in channels {
                tokio::spawn(me.clone().resync(channel));
            }
        });
    }

    /// After Redis may have lost writes: remove again the entries this node
    /// removed lately, where they are back with the same ref (a failover's
    /// replica, or an old dump, still had them). Clients see none of it:
    /// the channels are holding until their snapshot by contents.
    async fn remove_again(&self) {
        let mut by_tag: HashMap<String, Vec<(String, Arc<str>)>> = HashMap::new();
        {
            let mut removed = self.removed.lock();
            removed.recovering = false;
            for (_, tag, mid, phx_ref) in &removed.recent {
                by_tag
                    .entry(tag.clone())
                    .or_default()
                    .push((mid.clone(), phx_ref.clone()));
            }
        }
        let origin = format!("{}/reap", self.nid());
        let runs = by_tag.into_iter().map(|(tag, gone)| {
            let mut conn = self.link.clone();
            let origin = origin.clone();
            async move {
                let mut invocation = self.scripts.unwrite.key(wire::data_key(&tag));
                invocation
                    .key(wire::meta_key(&tag))
                    .key(wire::orphans_key(&tag))
                    .arg(wire::pubsub_channel(&tag))
                    .arg(origin)
                    .arg(fresh_epoch());
                for (mid, phx_ref) in &gone {
                    invocation.arg(mid).arg(&**phx_ref);
                }
                self.count(1);
                let back: redis::RedisResult<u64> = invocation.invoke_async(&mut conn).await;
                match back {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(n, "recovery: removed again entries Redis had brought back")
                    }
                    Err(e) => tracing::debug!(error = %e, "recovery: removing again failed"),
                }
            }
        });
        futures_util::future::join_all(runs).await;
    }

    // ---- lease and reaping ----------------------------------------------

    async fn lease_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let s = &self.settings;
        // Stop writing a little before the lease could run out.
        let margin = (s.lease / 3).min(Duration::from_secs(2));
        let mut last_ok = Instant::now();
        let mut no_claim_until = Instant::now() + s.lease;
        let mut first = true;
        let mut islanded = false;
        let mut next_audit = Instant::now() + s.audit;
        let mut every = tokio::time::interval(s.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let fenced = self.fenced.lock().take();
            if fenced.is_some_and(|f| f == self.nid()) {
                // A channel's fence refused us: a reaper swept this id,
                // though the lease keys (on another shard, maybe failed
                // over) did not say so.
                let nid = new_nid(&s.node_name);
                tracing::warn!(%nid, "this node was fenced off by a reaper; rejoining as a new incarnation");
                *self.nid.write() = nid;
                no_claim_until = Instant::now() + s.lease;
                if self.heartbeat().await.is_ok() {
                    self.recover();
                }
            }
            let beat = self.heartbeat().await;
            let now = Instant::now();
            match beat.as_deref() {
                Ok(status) => {
                    let was_healthy = self.is_healthy();
                    last_ok = now;
                    match status {
                        "ok" => {}
                        "late" => {
                            no_claim_until = now + s.lease;
                            // Our lease ran out: a reaper may have swept us
                            // although the lease keys do not say so (their
                            // shard failed over and lost the claim). Its
                            // mark on our own keys tells.
                            if self.was_reaped().await {
                                *self.fenced.lock() = Some(self.nid());
                            }
                        }
                        "registered" => {
                            no_claim_until = now + s.lease;
                            if !first {
                                tracing::warn!(
                                    "redis lost this node's lease (restarted empty?): re-asserting"
                                );
                                self.recover();
                            }
                        }
                        _ => {
                            // Reaped while we were away: a new incarnation,
                            // whose entries go in under new member ids.
                            let nid = new_nid(&s.node_name);
                            tracing::warn!(%nid, "this node was declared dead; rejoining as a new incarnation");
                            *self.nid.write() = nid;
                            no_claim_until = now + s.lease;
                            if self.heartbeat().await.is_ok() {
                                self.recover();
                            }
                        }
                    }
                    first = false;
                    islanded = false;
                    if !was_healthy {
                        tracing::info!(nid = %self.nid(), "cluster lease held");
                        self.healthy.send_replace(true);
                        if status == "ok" || status == "late" {
                            // Writes may have failed meanwhile; nothing was lost in Redis.
                            for channel in self.all_channels() {
                                channel.reassert();
                            }
                        }
                    }
                    if now >= no_claim_until && now >= *self.no_claim_before.lock() {
                        self.claim_and_reap().await;
                    }
                    if !s.audit.is_zero() && now >= next_audit {
                        next_audit = now + s.audit;
                        if let Err(e) = self.audit().await {
                            tracing::debug!(error = %e, "audit failed");
                        }
                    }
                }
                Err(e) => {
                    let silent = now - last_ok;
                    if silent + margin >= s.lease && self.is_healthy() {
                        tracing::warn!(error = %e, "cluster lease at risk: refusing joins until redis answers");
                        self.healthy.send_replace(false);
                    }
                    if silent >= s.island_timeout && !islanded {
                        islanded = true;
                        tracing::warn!("cut off from redis too long: closing sockets so clients move to other nodes");
                        let token = std::mem::take(&mut *self.island.lock());
                        token.cancel();
                    }
                }
            }
        }
    }

    /// Anti-entropy: read every replicated channel's `(epoch, seq)` in one
    /// pipeline; a channel whose replica is settled yet differs missed a
    /// message (there is no later one to reveal the hole): resync it.
    async fn audit(self: &Arc<Self>) -> redis::RedisResult<()> {
        let channels = self.all_channels();
        if channels.is_empty() {
            return Ok(());
        }
        let cmds = channels
            .iter()
            .map(|c| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(wire::meta_key(c.tag())).arg("e").arg("s");
                (c.tag().to_owned(), cmd)
            })
            .collect();
        self.count(1);
        let positions = self
            .link
            .grouped(cmds)
            .await?
            .into_iter()
            .map(redis::from_redis_value::<(Option<String>, Option<u64>)>)
            .collect::<Result<Vec<_>, _>>()?;
        for (channel, (epoch, seq)) in channels.into_iter().zip(positions) {
            if let (Some(epoch), Some(seq)) = (epoch, seq) {
                if channel.lags(&epoch, seq) {
                    tracing::info!(
                        topic = channel.topic(),
                        "audit: replica behind Redis; resyncing"
                    );
                    channel.hold();
                    tokio::spawn(self.clone().resync(channel));
                }
            }
        }
        Ok(())
    }

    async fn heartbeat(&self) -> redis::RedisResult<String> {
        let mut conn = self.lease.clone();
        self.count(1);
        let mut reply: Vec<String> = self
            .scripts
            .heartbeat
            .key(self.globals.nodes)
            .key(self.globals.dead)
            .arg(&*self.nid())
            .arg(self.settings.lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if reply.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "empty heartbeat reply",
            )));
        }
        let status = reply.remove(0);
        *self.live.write() = reply.into_iter().collect();
        Ok(status)
    }

    /// Whether a reaper has begun sweeping this incarnation (its fenced
    /// mark, next to its channel set). False when Redis does not answer.
    async fn was_reaped(&self) -> bool {
        let mut conn = self.lease.clone();
        self.count(1);
        let marked: redis::RedisResult<bool> =
            conn.exists(wire::node_fenced_key(&self.nid())).await;
        marked.unwrap_or(false)
    }

    /// Whether node `nid` held a live lease at the last heartbeat.
    pub fn is_live(&self, nid: &str) -> bool {
        self.live.read().contains(nid)
    }

    async fn claim_and_reap(self: &Arc<Self>) {
        let mut conn = self.lease.clone();
        let s = &self.settings;
        self.count(1);
        let claimed: redis::RedisResult<Vec<String>> = self
            .scripts
            .claim
            .key(self.globals.nodes)
            .key(self.globals.reaping)
            .key(self.globals.dead)
            .arg(&*self.nid())
            .arg(s.reap_grace.as_millis() as u64)
            .arg((s.lease * 2).as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        for dead in claimed.unwrap_or_default() {
            let me = self.clone();
            tokio::spawn(async move {
                match me.reap(&dead).await {
                    Ok(n) => tracing::info!(node = %dead, presences = n, "reaped a dead node"),
                    Err(e) => {
                        tracing::warn!(node = %dead, error = %e, "reaping failed; another node will retry")
                    }
                }
            });
        }
    }

    /// Remove every entry of dead node `dead`, channel by channel; each
    /// removal publishes its leave once. First the node is fenced off
    /// registering more channels, then each channel's sweep fences it off
    /// that channel: nothing it may still send lands after its sweep (on a
    /// cluster, where its lease is on another shard, this is what keeps a
    /// zombie's writes out).
    async fn reap(&self, dead: &str) -> redis::RedisResult<u64> {
        let mut conn = self.link.clone();
        let set = wire::node_channels_key(dead);
        self.count(1);
        let tags: Vec<String> = self
            .scripts
            .reap_begin
            .key(&set)
            .key(wire::node_fenced_key(dead))
            .invoke_async(&mut conn)
            .await?;
        let mut removed = 0;
        for tag in tags {
            let mut left_keys: std::collections::BTreeSet<String> = Default::default();
            let mut cursor = "0".to_owned();
            loop {
                self.count(1);
                let (max_age, cap) = self.last_seen_limits();
                let mut reply: Vec<String> = self
                    .scripts
                    .reap
                    .key(wire::data_key(&tag))
                    .key(wire::meta_key(&tag))
                    .key(wire::orphans_key(&tag))
                    .key(wire::last_seen_key(&tag))
                    .key(wire::fence_key(&tag))
                    .arg(wire::pubsub_channel(&tag))
                    .arg(&*self.nid())
                    .arg(fresh_epoch())
                    .arg(max_age)
                    .arg(cap)
                    .arg(dead)
                    .arg(&cursor)
                    .invoke_async(&mut conn)
                    .await?;
                if reply.is_empty() {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "empty reap reply",
                    )));
                }
                cursor = reply.remove(0);
                let mut changes = Vec::new();
                for pair in reply.chunks_exact(2) {
                    if let Some((key, meta)) = wire::decode_entry(&pair[1]) {
                        left_keys.insert(key.clone());
                        changes.push(wire::Change {
                            join: false,
                            mid: Arc::from(pair[0].as_str()),
                            key,
                            meta,
                        });
                    }
                }
                removed += (reply.len() / 2) as u64;
                self.removed.lock().note(
                    &tag,
                    &wire::Update {
                        epoch: Arc::from(""),
                        seq: 0,
                        origin: Arc::from(""),
                        changes,
                    },
                );
                if cursor == "0" {
                    break;
                }
            }
            if !left_keys.is_empty() {
                self.report_reaped(&mut conn, &tag, left_keys).await?;
            }
        }
        self.count(2);
        let _: () = conn.del(&set).await?;
        let _: () = conn.hdel(self.globals.reaping, dead).await?;
        self.metrics
            .reaped
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(removed)
    }

    /// Webhook events for keys whose last meta this node reaped (the node
    /// that removed an entry reports it; the dead node cannot).
    async fn report_reaped(
        &self,
        conn: &mut Link,
        tag: &str,
        mut keys: std::collections::BTreeSet<String>,
    ) -> redis::RedisResult<()> {
        let Some(webhooks) = self.webhooks.lock().clone() else {
            return Ok(());
        };
        self.count(2);
        let label: Option<String> = conn.hget(wire::meta_key(tag), "t").await?;
        let remaining: Vec<String> = conn.hvals(wire::data_key(tag)).await?;
        for entry in &remaining {
            if let Some((key, _)) = wire::decode_entry(entry) {
                keys.remove(&key);
            }
        }
        let label = label.unwrap_or_default();
        let (topic, private) = match label.strip_prefix("private:") {
            Some(t) => (t, true),
            None => (label.as_str(), false),
        };
        let left: Vec<String> = keys.into_iter().collect();
        webhooks.emit(crate::webhooks::key_events(
            topic,
            private,
            &[] as &[String],
            &left,
        ));
        Ok(())
    }

    /// Where this node's webhook events go, if anywhere.
    pub fn set_webhooks(&self, webhooks: Option<Arc<crate::webhooks::Webhooks>>) {
        *self.webhooks.lock() = webhooks;
    }

    /// Graceful exit, once the sockets have closed: wait (up to `grace`)
    /// for the channels' writers to delete our entries, then let our lease
    /// lapse at once, so any entry left behind is reaped within a sweep
    /// instead of after a whole lease.
    pub async fn leave(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self.writers.load(std::sync::atomic::Ordering::Acquire) > 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut conn = self.link.clone();
        let nid = self.nid();
        let _: redis::RedisResult<()> = conn.zadd(self.globals.nodes, &*nid, 0).await;
    }

    /// Prometheus lines for the cluster link.
    pub fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        format!(
            "# TYPE roster_cluster_healthy gauge\nroster_cluster_healthy {}\n\
             # TYPE roster_cluster_redis_calls_total counter\nroster_cluster_redis_calls_total {}\n\
             # TYPE roster_cluster_resyncs_total counter\nroster_cluster_resyncs_total {}\n\
             # TYPE roster_cluster_reaped_presences_total counter\nroster_cluster_reaped_presences_total {}\n",
            u8::from(self.is_healthy()),
            m.redis_calls.load(Relaxed),
            m.resyncs.load(Relaxed),
            m.reaped.load(Relaxed),
        )
    }

    /// A channel's writer task starts or ends (see [`Self::leave`]).
    pub fn writer_running(&self, running: bool) {
        use std::sync::atomic::Ordering::AcqRel;
        if running {
            self.writers.fetch_add(1, AcqRel);
        } else {
            self.writers.fetch_sub(1, AcqRel);
        }
    }
}

/// What a channel's meta records as its name (for debugging).
fn topic_label(topic: &str, private: bool) -> String {
    if private {
        format!("private:{topic}")
    } else {
        topic.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(join: bool, mid: &str, phx_ref: &str) -> wire::Change {
        wire::Change {
            join,
            mid: Arc::from(mid),
            key: "k".into(),
            meta: roster_presence::Meta {
                phx_ref: Arc::from(phx_ref),
                phx_ref_prev: None,
                state: roster_presence::State::empty(),
            },
        }
    }

    /// Only entries removed outright are remembered, not replaced ones.
    #[test]
    fn removals_are_remembered_and_replacements_are_not() {
        let mut removed = Removed::default();
        let update = wire::Update {
            epoch: Arc::from("e"),
            seq: 1,
            origin: Arc::from("n"),
            changes: vec![
                change(false, "n|1", "r1"),
                change(true, "n|1", "r2"),
                change(false, "n|2", "r3"),
                change(true, "n|3", "r4"),
            ],
        };
        removed.note("t", &update);
        let seen: Vec<(&str, &str, &str)> = removed
            .recent
            .iter()
            .map(|(_, tag, mid, r)| (tag.as_str(), mid.as_str(), &**r))
            .collect();
        assert_eq!(seen, [("t", "n|2", "r3")]);
    }
}
