//! Three `roster` processes on a real Redis Cluster (3 masters, 3
//! replicas, started per test on free ports) with `--redis-cluster`:
//! channels spread over the shards by their hash tag, each converging with
//! one diff order; a killed node reaped on every shard, each leave once; a
//! master killed and its replica promoted with nothing lost, no ghost and
//! no churn; a tracked channel's slot moved to another master.
//!
//! They fail if `redis-server` / `redis-cli` are not on PATH.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster_support::*;

const WAIT: Duration = Duration::from_secs(8);

/// `per_node` tracking peers per node in each of `topics`
/// (`t<topic>-n<node>-p<j>`), converged.
async fn populate(c: &ShardedCluster, topics: &[String], per_node: usize) -> Vec<Peer> {
    let mut peers = Vec::new();
    for (t, topic) in topics.iter().enumerate() {
        for j in 0..per_node {
            for node in 0..c.nodes.len() {
                let key = format!("t{t}-n{node}-p{j}");
                let vsn = 1 + ((node + j) % 2) as u8;
                let mut p = Peer::join_topic(c.addr(node), node, topic, &key, vsn).await;
                p.track(json!({"topic": t, "node": node, "j": j})).await;
                peers.push(p);
            }
        }
    }
    converge_topics(&mut peers, WAIT, "initial tracks").await;
    peers
}

/// Every peer's view equals the oracle of its own topic.
async fn converge_topics(peers: &mut [Peer], within: Duration, what: &str) {
    let topics: BTreeSet<String> = peers.iter().map(|p| p.topic.clone()).collect();
    for topic in topics {
        let expected = oracle(peers.iter().filter(|p| p.topic == topic));
        converge(
            peers.iter_mut().filter(|p| p.topic == topic),
            &expected,
            within,
            &format!("{what} ({topic})"),
        )
        .await;
    }
}

/// Per topic: every peer in the room sees the same `(key, ref)` pairs, and
/// one diff order.
fn assert_same_refs_and_order(peers: &[Peer]) {
    let topics: BTreeSet<&str> = peers.iter().map(|p| p.topic.as_str()).collect();
    for topic in topics {
        let room: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.topic == topic && p.in_room)
            .collect();
        let reference = view_pairs(&room[0].view());
        for p in &room {
            assert_eq!(
                view_pairs(&p.view()),
                reference,
                "{topic}: refs seen by {}",
                p.key
            );
        }
        check_same_order(&room).unwrap();
    }
}

/// The refs of every peer's view (one peer per topic), sorted: what Redis
/// must hold, all shards together.
fn refs_of_views(peers: &[Peer]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut refs = Vec::new();
    for p in peers.iter().filter(|p| p.in_room) {
        if seen.insert(p.topic.clone()) {
            refs.extend(view_pairs(&p.view()).into_iter().map(|(_, r)| r));
        }
    }
    refs.sort();
    refs
}

fn marks(peers: &[Peer]) -> Vec<usize> {
    peers.iter().map(Peer::mark).collect()
}

/// Three topics, one on each master.
async fn three_shards(c: &ShardedCluster, prefix: &str) -> Vec<String> {
    let topics = c.redis.topics_on_each_master(prefix).await;
    let mut masters = Vec::new();
    for t in &topics {
        masters.push(c.redis.master_of(c.redis.slot_of_topic(t).await).await);
    }
    masters.sort();
    masters.dedup();
    assert_eq!(
        masters.len(),
        3,
        "three topics on three masters: {topics:?}"
    );
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_three_shards_converge_in_one_order_each() {
    let c = ShardedCluster::start("rc_spread", 3).await;
    let topics = three_shards(&c, "spread").await;
    let mut peers = populate(&c, &topics, 2).await;

    // Each channel's keys are on its own master, and only there.
    for topic in &topics {
        let key = format!("rp:{{{}}}:s", channel_tag(topic));
        let slot = c.redis.slot_of_topic(topic).await.to_string();
        let owner = c.redis.master_of(c.redis.slot_of_topic(topic).await).await;
        assert_eq!(
            c.redis.nodes[owner].cmd(&["EXISTS", &key]).await,
            Resp::Int(1),
            "{key}"
        );
        for m in c.redis.masters().await.into_iter().filter(|m| *m != owner) {
            let n = c.redis.nodes[m]
                .cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot])
                .await;
            assert_eq!(
                n,
                Resp::Int(0),
                "{key}'s slot on master {m} (owner {owner})"
            );
        }
    }

    // In each topic: an update, an untrack, a leave, a closed socket.
    for t in 0..topics.len() {
        let at = |k: &str, peers: &[Peer]| peers.iter().position(|p| p.key == k).unwrap();
        let i = at(&format!("t{t}-n0-p0"), &peers);
        peers[i].track(json!({"topic": t, "v": 2})).await;
        let i = at(&format!("t{t}-n1-p0"), &peers);
        peers[i].untrack().await;
        let i = at(&format!("t{t}-n2-p1"), &peers);
        peers[i].leave().await;
        let i = at(&format!("t{t}-n1-p1"), &peers);
        let closed = peers.remove(i);
        closed.client.close().await;
    }
    converge_topics(&mut peers, WAIT, "after update/untrack/leave/close").await;
    pump_all(&mut peers, ms(500)).await;
    for p in peers.iter().filter(|p| p.in_room) {
        let own_topic = format!("t{}-", topics.iter().position(|t| *t == p.topic).unwrap());
        for (k, _) in view_pairs(&p.view()) {
            assert!(
                k.starts_with(&own_topic),
                "{} sees {k} from another channel",
                p.key
            );
        }
    }
    assert_exactly_once(&peers);
    assert_same_refs_and_order(&peers);
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&peers),
        "entries on the shards"
    );

    // A broadcast reaches the other nodes' members of its channel only.
    for (t, topic) in topics.iter().enumerate() {
        let sender = peers
            .iter()
            .position(|p| p.topic == *topic && p.in_room && p.node == t % 3)
            .unwrap();
        let m = marks(&peers);
        let body = json!({"t": t});
        peers[sender].broadcast("cursor", body.clone()).await;
        let waits = peers.iter_mut().enumerate().map(|(i, p)| {
            let (mark, topic) = (m[i], topic.clone());
            async move {
                if i != sender && p.in_room && p.topic == topic {
                    let res = p
                        .wait(ms(3000), &|p| !p.broadcasts_since(mark).is_empty())
                        .await;
                    p.pump(ms(300)).await;
                    res.err()
                } else {
                    p.pump(ms(600)).await;
                    None
                }
            }
        });
        let errors: Vec<String> = futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert!(errors.is_empty(), "broadcast in {topic}: {errors:?}");
        for (i, p) in peers.iter().enumerate() {
            let got = p.broadcasts_since(m[i]);
            let want = usize::from(i != sender && p.in_room && p.topic == *topic);
            assert_eq!(got.len(), want, "{} got {got:?}", p.key);
            if want == 1 {
                assert_eq!(got[0]["payload"], body, "{}", p.key);
            }
        }
    }

    // The presence API's key query finds every channel, on every master.
    let keys: Vec<String> = (0..topics.len()).map(|t| format!("t{t}-n0-p0")).collect();
    let query = json!({"keys": keys});
    let (status, body) = crate::common::http_request(
        c.addr(2),
        "POST",
        "/api/presence/query",
        &[
            ("Authorization", "Bearer sb_secret_dev"),
            ("Content-Type", "application/json"),
        ],
        query.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (t, key) in keys.iter().enumerate() {
        let topic = topics[t].strip_prefix("realtime:").unwrap();
        assert_eq!(v["online"][key], json!([topic]), "{key}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_node_is_reaped_on_every_shard_each_leave_once() {
    let mut c = ShardedCluster::start("rc_kill9", 3).await;
    let topics = three_shards(&c, "kill").await;
    let peers = populate(&c, &topics, 2).await;
    let (victims, mut survivors): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| p.node == 2);
    let victim_pairs: Vec<(String, Pair)> = victims
        .iter()
        .map(|v| (v.topic.clone(), (v.key.clone(), v.own_ref().unwrap())))
        .collect();
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[2].kill9();
    drop(victims);
    converge_topics(&mut survivors, GHOST_BOUND, "ghosts after kill -9").await;
    eprintln!(
        "kill -9 on a Redis Cluster: ghosts gone after {:?}",
        t0.elapsed()
    );
    pump_all(&mut survivors, ms(1500)).await;
    for (i, s) in survivors.iter().enumerate() {
        let leaves: Vec<Pair> = victim_pairs
            .iter()
            .filter(|(t, _)| *t == s.topic)
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(leaves.len(), 2, "two victims in {}", s.topic);
        assert_changes(
            [(s, m[i])],
            &[],
            &leaves,
            "one leave per dead presence, nothing else",
        );
    }
    assert_exactly_once(&survivors);
    assert_same_refs_and_order(&survivors);
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&survivors),
        "the dead node's entries reaped on every shard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_and_replica_promoted_loses_nothing_and_churns_nothing() {
    let mut c = ShardedCluster::start("rc_failover", 3).await;
    let topics = three_shards(&c, "failover").await;
    // The hardest master to lose: the one with the leases, and a channel.
    let lease_slot = c.redis.slot("rp:{rp}:nodes").await;
    let lease_master = c.redis.master_of(lease_slot).await;
    let mut on_victim = None;
    for (i, t) in topics.iter().enumerate() {
        if c.redis.master_of(c.redis.slot_of_topic(t).await).await == lease_master {
            on_victim = Some(i);
        }
    }
    let on_victim = on_victim.expect("a topic on every master");
    let mut peers = populate(&c, &topics, 2).await;
    // Joined before, tracks during the failover (on the failed shard's channel).
    let mut late = Peer::join_topic(c.addr(1), 1, &topics[on_victim], "late", 2).await;
    pump_all(&mut peers, ms(300)).await;
    let m = marks(&peers);
    let late_mark = late.mark();

    let t0 = Instant::now();
    let redis = &mut c.redis;
    let ((victim, took), ()) = tokio::join!(redis.kill_master_of(lease_slot), async {
        tokio::time::sleep(ms(150)).await;
        late.track(json!({"during": "failover"})).await;
    });
    eprintln!(
        "redis master {} killed: replica promoted after {took:?}; outage-time track acked after {:?}",
        c.redis.nodes[victim].port,
        t0.elapsed()
    );
    peers.push(late);
    let mut m = m;
    m.push(late_mark);
    converge_topics(
        &mut peers,
        ms(SETTLE_MS + LEASE_MS) + WAIT,
        "after the failover",
    )
    .await;
    eprintln!("failover: every view exact after {:?}", t0.elapsed());
    // Past the settle window and a lease: late leaves or reaps would show.
    pump_all(&mut peers, ms(SETTLE_MS + LEASE_MS + 1000)).await;
    let late_pair = (
        "late".to_owned(),
        peers.last().unwrap().own_ref().expect("late sees itself"),
    );
    let n = peers.len() - 1;
    for (i, p) in peers[..n].iter().enumerate() {
        let joins = if p.topic == topics[on_victim] {
            vec![late_pair.clone()]
        } else {
            vec![]
        };
        assert_changes(
            [(p, m[i])],
            &joins,
            &[],
            "failover: only the outage-time track, no leave or join of a stable presence",
        );
    }
    let (j, l) = peers[n].changes_since(m[n]).unwrap();
    assert!(l.is_empty(), "late saw leaves {l:?}");
    assert!(j.len() <= 1, "late saw joins {j:?}");
    assert_exactly_once(&peers);
    assert_same_refs_and_order(&peers);
    for node in &c.nodes {
        node.wait_ready(200, WAIT).await.unwrap();
    }
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&peers),
        "entries on the shards after the failover: none lost, no ghost"
    );

    // And the cluster works afterwards, on the promoted shard too.
    let i = peers
        .iter()
        .position(|p| p.topic == topics[on_victim] && p.node == 2)
        .unwrap();
    peers[i].track(json!({"after": "failover"})).await;
    converge_topics(&mut peers, WAIT, "a track after the failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_of_a_tracked_channel_moved_to_another_master_stays_exact() {
    let c = ShardedCluster::start("rc_reshard", 3).await;
    let topics = three_shards(&c, "reshard").await;
    let topic = topics[0].clone();
    let slot = c.redis.slot_of_topic(&topic).await;
    let from = c.redis.master_of(slot).await;
    let to = c
        .redis
        .masters()
        .await
        .into_iter()
        .find(|m| *m != from)
        .unwrap();
    let mut peers = populate(&c, std::slice::from_ref(&topic), 2).await;
    let m = marks(&peers);

    // One member updates its state over and over while the slot moves.
    let u = peers.iter().position(|p| p.node == 0).unwrap();
    let mut updater = peers.remove(u);
    let redis = &c.redis;
    tokio::join!(redis.move_slot(slot, to), async {
        for v in 0..20 {
            updater.track(json!({"v": v})).await;
            tokio::time::sleep(ms(25)).await;
        }
    });
    let updater_key = updater.key.clone();
    peers.insert(u, updater);
    eprintln!("slot {slot} of {topic} moved from redis {from} to {to}");
    converge_topics(&mut peers, WAIT, "after the slot moved").await;
    pump_all(&mut peers, ms(1500)).await;
    // Nobody saw anything but the updater's metas come and go.
    for (i, p) in peers.iter().enumerate() {
        let (j, l) = p.changes_since(m[i]).unwrap();
        let others: Vec<&Pair> = j
            .iter()
            .chain(&l)
            .filter(|(k, _)| *k != updater_key)
            .collect();
        assert!(
            others.is_empty(),
            "{}: churn of stable presences {others:?}",
            p.key
        );
    }
    assert_exactly_once(&peers);
    assert_same_refs_and_order(&peers);
    let key = format!("rp:{{{}}}:s", channel_tag(&topic));
    assert_eq!(
        c.redis.nodes[to].cmd(&["EXISTS", &key]).await,
        Resp::Int(1),
        "moved"
    );
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&peers),
        "entries after the move"
    );

    // Diffs still cross nodes (everyone's subscription followed the slot).
    let m = marks(&peers);
    let i = peers.iter().position(|p| p.node == 1).unwrap();
    peers[i].track(json!({"after": "move"})).await;
    let t0 = Instant::now();
    converge_topics(&mut peers, ms(2500), "a track after the move").await;
    eprintln!(
        "after the move: a track reached every node in {:?}",
        t0.elapsed()
    );
    for (i, p) in peers.iter().enumerate() {
        assert_eq!(p.diffs_since(m[i]).len(), 1, "{}: one diff", p.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_node_whose_claim_was_lost_rejoins_through_its_fence() {
    // n2 is paused past its lease and reaped. Then the lease keys lose the
    // claim (as when their shard fails over to a replica that missed it):
    // n2 looks merely late, not dead. The fence the reaper left on n2's own
    // keys must still make it rejoin as a new incarnation.
    let c = ShardedCluster::start("rc_lost_claim", 3).await;
    let topics = three_shards(&c, "claim").await;
    let peers = populate(&c, &topics, 1).await;
    let (victims, mut survivors): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| p.node == 2);
    let victim_refs: Vec<String> = victims.iter().map(|v| v.own_ref().unwrap()).collect();

    let t0 = Instant::now();
    c.nodes[2].sigstop();
    converge_topics(
        &mut survivors,
        GHOST_BOUND,
        "the paused node's presences reaped",
    )
    .await;
    let min_pause = ms(LEASE_MS + REAP_GRACE_MS + HEARTBEAT_MS);
    if t0.elapsed() < min_pause {
        tokio::time::sleep(min_pause - t0.elapsed()).await;
    }
    let lease_master = &c.redis.nodes[c.redis.master_of(c.redis.slot("rp:{rp}:nodes").await).await];
    let dead = lease_master
        .cmd(&["ZRANGE", "rp:{rp}:dead", "0", "-1"])
        .await
        .strings();
    let old: Vec<&String> = dead.iter().filter(|n| n.starts_with("n2-")).collect();
    assert_eq!(old.len(), 1, "n2 declared dead: {dead:?}");
    let old = old[0].clone();

    // Nobody may claim meanwhile: pause the survivors (shorter than a lease).
    c.nodes[0].sigstop();
    c.nodes[1].sigstop();
    lease_master.cmd(&["ZREM", "rp:{rp}:dead", &old]).await;
    lease_master.cmd(&["HDEL", "rp:{rp}:reaping", &old]).await;
    lease_master
        .cmd(&["ZADD", "rp:{rp}:nodes", "1", &old])
        .await;
    c.nodes[2].sigcont();
    // n2: 'late' → its fence mark → a new incarnation → re-assert.
    let deadline = Instant::now() + ms(700);
    let mut back = false;
    while Instant::now() < deadline {
        let refs = c.redis.entry_refs().await;
        if victim_refs.iter().all(|r| refs.contains(r)) {
            back = true;
            break;
        }
        tokio::time::sleep(ms(25)).await;
    }
    c.nodes[0].sigcont();
    c.nodes[1].sigcont();
    assert!(
        back,
        "n2 re-asserted its presences while nobody could reap it again"
    );
    let nodes = lease_master
        .cmd(&["ZRANGE", "rp:{rp}:nodes", "0", "-1"])
        .await
        .strings();
    assert!(
        nodes.iter().any(|n| n.starts_with("n2-") && *n != old),
        "n2 holds a lease under a new id: {nodes:?}"
    );

    let mut all: Vec<Peer> = survivors.into_iter().chain(victims).collect();
    converge_topics(&mut all, WAIT, "the rejoined node's presences back").await;
    pump_all(&mut all, ms(LEASE_MS + 1000)).await;
    converge_topics(&mut all, ms(100), "and staying").await;
    assert_exactly_once(all.iter().filter(|p| p.node != 2));
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&all),
        "no entry of the old incarnation left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_the_last_writes_gets_them_back_without_ghosts() {
    // The replica is paused and its link cut, so the last writes reach its
    // master only; then the master dies and the replica takes over without them:
    // a removal comes back from the dead (a would-be ghost), a new track
    // and an update are gone. Clients saw all three already, and must see
    // nothing more: the writers re-assert, the removal is removed again.
    let mut c = ShardedCluster::start("rc_lost_writes", 3).await;
    let topics = three_shards(&c, "lost").await;
    let topic = topics[0].clone();
    let master = c.redis.master_of(c.redis.slot_of_topic(&topic).await).await;
    let replica = c.redis.replica_of(master).await;
    let mut peers = populate(&c, &topics[..2], 1).await;
    let mut fresh = Peer::join_topic(c.addr(2), 2, &topic, "fresh", 1).await;
    pump_all(&mut peers, ms(300)).await;

    c.redis.nodes[replica].stop();
    // Paused, it cannot reconnect: what the master writes now, it never gets.
    let killed = c.redis.nodes[master]
        .cmd(&["CLIENT", "KILL", "TYPE", "replica"])
        .await;
    assert_eq!(killed, Resp::Int(1), "the replication link cut");
    let at = |k: &str, peers: &[Peer]| peers.iter().position(|p| p.key == k).unwrap();
    let gone = at("t0-n0-p0", &peers);
    peers[gone].untrack().await;
    let updated = at("t0-n1-p0", &peers);
    peers[updated].track(json!({"v": 2})).await;
    fresh.track(json!({"fresh": true})).await;
    peers.push(fresh);
    converge_topics(&mut peers, WAIT, "the last writes, seen by every client").await;
    let before: Vec<_> = peers.iter().map(|p| view_pairs(&p.view())).collect();
    let m = marks(&peers);

    let t0 = Instant::now();
    c.redis.nodes[master].kill9();
    c.redis.nodes[replica].cont();
    c.redis
        .wait_ok(Duration::from_secs(20))
        .await
        .expect("the paused replica takes over");
    eprintln!("lost writes: replica promoted after {:?}", t0.elapsed());
    pump_all(&mut peers, ms(SETTLE_MS + LEASE_MS + 2000)).await;
    for (i, p) in peers.iter().enumerate() {
        assert_eq!(view_pairs(&p.view()), before[i], "{}: view changed", p.key);
    }
    assert_changes(
        peers.iter().zip(m.iter().copied()),
        &[],
        &[],
        "a failover that lost writes: no event at any client",
    );
    assert_exactly_once(&peers);
    for node in &c.nodes {
        node.wait_ready(200, WAIT).await.unwrap();
    }
    assert_eq!(
        c.redis.entry_refs().await,
        refs_of_views(&peers),
        "Redis after the failover: the lost writes back, the removed entry gone"
    );
    // A late joiner on any node sees exactly that.
    let mut late = Peer::join_topic(c.addr(0), 0, &topic, "late-joiner", 2).await;
    late.pump(ms(300)).await;
    let mut want = before[peers.iter().position(|p| p.topic == topic).unwrap()].clone();
    want.retain(|(k, _)| k != "late-joiner");
    assert_eq!(view_pairs(&late.view()), want, "a late joiner's snapshot");
}
