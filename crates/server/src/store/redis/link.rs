//! One Redis or a Redis Cluster, behind one connection ([`Link`]) and one
//! pub/sub feed ([`Feed`]), so the rest of the store has no branches.
//!
//! * [`Link`]: commands and scripts. One Redis: a `ConnectionManager`; a
//!   cluster: redis-rs's async cluster connection (routes each command by
//!   its key's slot, follows `MOVED` / `ASK`, refreshes the slot map). Both
//!   are `ConnectionLike`, so scripts and commands run on either. What may
//!   span slots (the audit, last seen, broadcasts) goes through
//!   [`Link::grouped`]: one pipeline on one Redis, one pipeline per hash
//!   tag on a cluster.
//! * [`Feed`]: `SUBSCRIBE` on its own connection (one Redis; the feed ends
//!   when the connection drops, and is opened again), or `SSUBSCRIBE` on
//!   the cluster connection with RESP3 pushes (redis-rs subscribes again by
//!   itself after a reconnect or a slot move; the feed reports a lost node
//!   connection as [`Event::Lost`] and a subscription the server dropped,
//!   as when a slot migrates, as [`Event::Dropped`]).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, PushKind, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

use crate::settings::RedisTarget;

use super::wire;

/// Commands to one Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum Link {
    One(ConnectionManager),
    Sharded(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Sharded(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Sharded(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Sharded(c) => c.get_db(),
        }
    }
}

/// Connect to `target`: the command link, the lease link and the pub/sub
/// feed. `timeout` bounds each reply (a reply slower than a heartbeat is as
/// good as none). The lease has a connection of its own so that a heartbeat
/// never waits behind a join storm's scripts on the command link: a node
/// that is busy is not a node that is dead.
pub async fn connect(target: &RedisTarget, timeout: Duration) -> anyhow::Result<Links> {
    match target {
        RedisTarget::One(url) => {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| anyhow::anyhow!("redis URL {url:?}: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout))
                .set_max_delay(Duration::from_millis(500))
                .set_number_of_retries(2);
            let manager = || {
                let manager = ConnectionManager::new_with_config(client.clone(), config.clone());
                async {
                    tokio::time::timeout(Duration::from_secs(5), manager)
                        .await
                        .map_err(|_| anyhow::anyhow!("redis {target}: connection timed out"))?
                        .map_err(|e| anyhow::anyhow!("redis {target}: {e}"))
                }
            };
            Ok(Links {
                commands: Link::One(manager().await?),
                lease: Link::One(manager().await?),
                feed: Feed::One(client),
            })
        }
        RedisTarget::Cluster(seeds) => {
            let (tx, rx) = mpsc::unbounded_channel();
            // Few, quick retries: a command must fail within about a
            // heartbeat for the lease logic, and the writers retry anyway.
            let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .overall_response_timeout(Some(timeout * 2))
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(|e| anyhow::anyhow!("redis cluster {target}: {e}"))?;
            let connection = || async {
                tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
                    .await
                    .map_err(|_| anyhow::anyhow!("redis cluster {target}: connection timed out"))?
                    .map_err(|e| anyhow::anyhow!("redis cluster {target}: {e}"))
            };
            let conn = connection().await?;
            Ok(Links {
                commands: Link::Sharded(conn.clone()),
                // The pushes of sharded pub/sub arrive through the first
                // connection's sender; this one only carries the lease.
                lease: Link::Sharded(connection().await?),
                feed: Feed::Sharded {
                    conn,
                    pushes: Some(rx),
                },
            })
        }
    }
}

/// What [`connect`] opens.
pub struct Links {
    pub commands: Link,
    pub lease: Link,
    pub feed: Feed,
}

impl Link {
    pub fn sharded(&self) -> bool {
        matches!(self, Link::Sharded(_))
    }

    /// Run `cmds`, each named by the hash tag of its key (`""` for none):
    /// one pipeline on one Redis; on a cluster one pipeline per tag (one
    /// slot each), all at once. Replies in the order of `cmds`; commands of
    /// one tag keep their order.
    pub async fn grouped(&self, cmds: Vec<(String, Cmd)>) -> RedisResult<Vec<Value>> {
        match self {
            Link::One(conn) => {
                let mut pipe = redis::pipe();
                for (_, cmd) in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut conn.clone()).await
            }
            Link::Sharded(conn) => {
                let n = cmds.len();
                let mut groups: HashMap<String, (Vec<usize>, Pipeline)> = HashMap::new();
                for (i, (tag, cmd)) in cmds.into_iter().enumerate() {
                    let (at, pipe) = groups
                        .entry(tag)
                        .or_insert_with(|| (Vec::new(), redis::pipe()));
                    at.push(i);
                    pipe.add_command(cmd);
                }
                let runs = groups.into_values().map(|(at, pipe)| {
                    let mut conn = conn.clone();
                    async move {
                        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                        RedisResult::Ok(at.into_iter().zip(replies).collect::<Vec<_>>())
                    }
                });
                let mut out = vec![Value::Nil; n];
                for run in futures_util::future::join_all(runs).await {
                    for (i, v) in run? {
                        out[i] = v;
                    }
                }
                Ok(out)
            }
        }
    }

    /// Cluster only: subscribe to a sharded channel (on the master of its
    /// slot; redis-rs keeps it across reconnects and slot moves).
    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::One(_) => Ok(()),
            Link::Sharded(conn) => conn.clone().ssubscribe(channel).await,
        }
    }

    /// Cluster only: the opposite of [`Link::subscribe`].
    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Link::One(_) => Ok(()),
            Link::Sharded(conn) => conn.clone().sunsubscribe(channel).await,
        }
    }

    /// Ok once Redis serves every one of `channels`, our subscription
    /// included. One Redis: at once (the caller has just heard from it).
    /// A cluster: each sharded channel subscribed again on its slot's
    /// current master, which fails while that shard has none.
    pub async fn resubscribe(&self, channels: &[String]) -> RedisResult<()> {
        match self {
            Link::One(_) => Ok(()),
            Link::Sharded(conn) => {
                let runs = channels.iter().map(|c| async move {
                    // First a write (always routed to the slot's master,
                    // never answered from redis-rs's state): the shard has
                    // a master again, and this node's slot map knows it.
                    // No key is named like a channel: it changes nothing.
                    let _: i64 = redis::cmd("PEXPIRE")
                        .arg(c)
                        .arg(1)
                        .query_async(&mut conn.clone())
                        .await?;
                    self.subscribe(c).await
                });
                futures_util::future::join_all(runs)
                    .await
                    .into_iter()
                    .collect::<RedisResult<Vec<()>>>()?;
                Ok(())
            }
        }
    }

    /// Every key matching `pattern`: `SCAN` over the Redis, or over each
    /// master of the cluster.
    pub async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Link::One(conn) => {
                let mut conn = conn.clone();
                let mut cursor = 0u64;
                loop {
                    let (next, page): (u64, Vec<String>) =
                        scan_cmd(cursor, pattern).query_async(&mut conn).await?;
                    keys.extend(page);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Link::Sharded(conn) => {
                let mut conn = conn.clone();
                for (host, port) in masters(&mut conn).await? {
                    let mut cursor = 0u64;
                    loop {
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = conn.route_command(scan_cmd(cursor, pattern), route).await?;
                        let (next, page): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(page);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(keys)
    }
}

fn scan_cmd(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000);
    cmd
}

/// The cluster's masters, `(host, port)`, from `CLUSTER SLOTS`.
async fn masters(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let mut out: Vec<(String, u16)> = Vec::new();
    if let Value::Array(ranges) = reply {
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(master)) = parts.get(2) else {
                continue;
            };
            let host: Option<String> = master
                .first()
                .and_then(|v| redis::from_redis_value(v.clone()).ok());
            let port: Option<u16> = master
                .get(1)
                .and_then(|v| redis::from_redis_value(v.clone()).ok());
            if let (Some(host), Some(port)) = (host, port) {
                if !out.contains(&(host.clone(), port)) {
                    out.push((host, port));
                }
            }
        }
    }
    Ok(out)
}

/// What a feed hands the store.
#[derive(Debug)]
pub enum Event {
    /// A message on one of our pub/sub channels.
    Message { channel: String, payload: Vec<u8> },
    /// A connection to a Redis node dropped: messages may be lost, and on a
    /// cluster its shard may have failed over (losing its last writes).
    Lost,
    /// The server ended our subscription to this channel (its slot moved
    /// to another master): subscribe again, and resync the channel.
    Dropped(String),
}

/// Where pub/sub messages come from.
pub enum Feed {
    One(redis::Client),
    Sharded {
        conn: ClusterConnection,
        /// Taken by the first [`Feed::open`]: the cluster feed never ends.
        pushes: Option<mpsc::UnboundedReceiver<redis::PushInfo>>,
    },
}

impl Feed {
    /// Open a feed session subscribed to `channels`. `None` (after a pause)
    /// when Redis cannot be reached.
    pub async fn open(&mut self, channels: &[String]) -> Option<FeedSession> {
        match self {
            Feed::One(client) => {
                let pubsub = match client.get_async_pubsub().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "redis pub/sub connect failed");
                        return None;
                    }
                };
                let (mut sink, stream) = pubsub.split();
                if !channels.is_empty() && sink.subscribe(channels).await.is_err() {
                    return None;
                }
                Some(FeedSession::One { sink, stream })
            }
            Feed::Sharded { conn, pushes } => {
                let pushes = pushes.take()?;
                let mut session = FeedSession::Sharded {
                    conn: conn.clone(),
                    pushes,
                };
                for channel in channels {
                    // Best effort: a channel whose shard is away is
                    // subscribed again by the recovery.
                    let _ = session.subscribe(channel).await;
                }
                Some(session)
            }
        }
    }
}

/// An open feed.
pub enum FeedSession {
    One {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    Sharded {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

impl FeedSession {
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            FeedSession::One { sink, .. } => sink.subscribe(channel).await,
            FeedSession::Sharded { conn, .. } => conn.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            FeedSession::One { sink, .. } => sink.unsubscribe(channel).await,
            FeedSession::Sharded { conn, .. } => conn.sunsubscribe(channel).await,
        }
    }

    /// The next event; `None` when the session ended (one Redis: the
    /// connection dropped; open a new one).
    pub async fn next(&mut self) -> Option<Event> {
        match self {
            FeedSession::One { stream, .. } => {
                let msg = stream.next().await?;
                Some(Event::Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                })
            }
            FeedSession::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                let text = |v: Option<&Value>| -> Option<Vec<u8>> {
                    match v? {
                        Value::BulkString(b) => Some(b.clone()),
                        Value::SimpleString(s) => Some(s.clone().into_bytes()),
                        _ => None,
                    }
                };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let (Some(channel), Some(payload)) =
                            (text(push.data.first()), text(push.data.get(1)))
                        else {
                            continue;
                        };
                        return Some(Event::Message {
                            channel: String::from_utf8_lossy(&channel).into_owned(),
                            payload,
                        });
                    }
                    PushKind::Disconnection => return Some(Event::Lost),
                    PushKind::SUnsubscribe => {
                        if let Some(channel) = text(push.data.first()) {
                            let channel = String::from_utf8_lossy(&channel).into_owned();
                            if wire::tag_of_channel(&channel).is_some() {
                                return Some(Event::Dropped(channel));
                            }
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}
