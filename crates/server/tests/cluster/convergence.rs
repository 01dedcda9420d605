//! Several `roster` processes sharing presence through a real Redis:
//! convergence, order, join snapshots, node death (one, two at once, a
//! restart under the same name), pauses, Redis restarts (empty, from a
//! stale dump), killed pub/sub connections, a cut link, graceful
//! shutdown, broadcasts (design §4).
//!
//! Invariants checked (design §4): I1 every client's view equals the
//! oracle; I2 no ghost after the bound; I3 no leave for a live presence
//! (except leave-then-rejoin with the same ref for a cut-off node);
//! I4 per client and ref joins and leaves alternate; I5 one diff order.
//!
//! Each test starts its own redis-server and 3 nodes with fast timings
//! (heartbeat 200 ms, lease 1.2 s, reap grace 200 ms, settle 800 ms).
//! They fail if `redis-server` is not on PATH.

use std::time::{Duration, Instant};

use crate::cluster_support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

/// The survivors see node n2's presences back with the same refs; then
/// everyone (n2's own clients too) converges to `with` and stays there.
async fn same_refs_then_settle(
    survivors: &mut [Peer],
    victims: &mut [Peer],
    victim_pairs: &[Pair],
    with: &Norm,
) {
    for s in survivors.iter() {
        let back: Vec<Pair> = view_pairs(&s.view())
            .into_iter()
            .filter(|(k, _)| k.starts_with("n2-"))
            .collect();
        assert_eq!(back, victim_pairs, "{} sees the same refs again", s.key);
    }
    converge(
        survivors.iter_mut().chain(victims.iter_mut()),
        with,
        WAIT,
        "final convergence",
    )
    .await;
    pump_all(survivors.iter_mut().chain(victims.iter_mut()), ms(1000)).await;
}

/// `per_node` tracking peers on each node (`n<node>-p<j>`), converged.
async fn populate(c: &Cluster, per_node: usize) -> Vec<Peer> {
    let mut peers = Vec::new();
    for j in 0..per_node {
        for node in 0..c.nodes.len() {
            let key = format!("n{node}-p{j}");
            let vsn = 1 + ((node + j) % 2) as u8;
            let mut p = Peer::join(c.addr(node), node, &key, vsn).await;
            p.track(json!({"node": node, "j": j})).await;
            peers.push(p);
        }
    }
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "initial tracks").await;
    peers
}

/// The `(key, ref)` pairs of `victims` as `observer` sees them (and as each
/// victim sees itself).
fn pairs_of(observer: &Peer, victims: &[Peer]) -> Vec<Pair> {
    let seen = view_pairs(&observer.view());
    let mut out: Vec<Pair> = seen
        .into_iter()
        .filter(|(k, _)| victims.iter().any(|v| &v.key == k))
        .collect();
    out.sort();
    assert_eq!(out.len(), victims.len(), "every victim has one meta");
    for v in victims {
        let own = v.own_ref().expect("victim sees itself");
        assert!(
            out.contains(&(v.key.clone(), own.clone())),
            "{} sees its own ref {own}, others {out:?}",
            v.key
        );
    }
    out
}

fn refs_sorted(view_pairs: impl IntoIterator<Item = Pair>) -> Vec<String> {
    let mut refs: Vec<String> = view_pairs.into_iter().map(|(_, r)| r).collect();
    refs.sort();
    refs
}

/// Redis holds exactly the entries `peer` sees: no ghost left there either.
async fn assert_redis_holds_view(c: &Cluster, peer: &Peer, what: &str) {
    assert_eq!(
        c.redis.entry_refs().await,
        refs_sorted(view_pairs(&peer.view())),
        "{what}"
    );
}

fn marks(peers: &[Peer]) -> Vec<usize> {
    peers.iter().map(Peer::mark).collect()
}

fn with_marks<'a>(peers: &'a [Peer], marks: &[usize]) -> Vec<(&'a Peer, usize)> {
    peers.iter().zip(marks.iter().copied()).collect()
}

fn split_node(peers: Vec<Peer>, node: usize) -> (Vec<Peer>, Vec<Peer>) {
    peers.into_iter().partition(|p| p.node == node)
}

fn since(t0: Instant, at: &std::collections::BTreeMap<String, Instant>) -> Vec<Duration> {
    at.values().map(|t| t.duration_since(t0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_over_three_nodes_converges() {
    let c = Cluster::start("spread", 3).await;
    let mut peers = Vec::new();
    // Join and track one by one, round robin over the nodes: each client
    // joins a room that already has presences (warm and cold nodes).
    for i in 0..12usize {
        let node = i % 3;
        let vsn = 1 + (i % 2) as u8;
        let mut p = Peer::join(c.addr(node), node, &format!("u{i}"), vsn).await;
        let color = ["red", "green", "blue", "gold"][i % 4];
        p.track(json!({"i": i, "color": color})).await;
        peers.push(p);
    }
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "after 12 tracks").await;

    peers[0]
        .track(json!({"i": 0, "color": "black", "v": 2}))
        .await; // update
    peers[4].untrack().await;
    peers[7].leave().await;
    let closed = peers.remove(10);
    closed.client.close().await;
    let expected = oracle(&peers);
    converge(
        &mut peers,
        &expected,
        WAIT,
        "after update/untrack/leave/close",
    )
    .await;
    pump_all(&mut peers, ms(400)).await;
    for p in peers.iter().filter(|p| p.in_room) {
        assert_eq!(norm(&p.view()), expected, "{} drifted", p.key);
    }
    // Everyone in the room sees the same refs, not just the same states.
    let reference = view_pairs(&peers[0].view());
    for p in peers.iter().filter(|p| p.in_room) {
        assert_eq!(view_pairs(&p.view()), reference, "refs seen by {}", p.key);
    }

    assert_exactly_once(&peers);
    let in_room: Vec<&Peer> = peers.iter().filter(|p| p.in_room).collect();
    check_same_order(&in_room).unwrap();
    // The first client saw every diff: 11 later tracks (its own comes in
    // the snapshot or as a diff) + update + untrack + leave + close.
    let first = peers[0].diffs_since(0).len();
    assert!(
        first >= 15,
        "u0 saw only {first} diffs:{}",
        describe(&peers[0].log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_on_each_node_gets_exact_state() {
    let c = Cluster::start("late_joiner", 3).await;
    // Presences only on n0; n1 has a watcher (warm); n2 has nobody (cold).
    let mut peers = Vec::new();
    for j in 0..3 {
        let mut p = Peer::join(c.addr(0), 0, &format!("t{j}"), 2).await;
        p.track(json!({"j": j})).await;
        peers.push(p);
    }
    peers.push(Peer::join(c.addr(1), 1, "watcher", 1).await);
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "trackers").await;
    let reference = peers[0].view();

    // Cold node, warm remote node, the writers' own node: the snapshot
    // alone is the exact state (same refs too).
    for (node, name) in [(2, "cold"), (1, "warm"), (0, "home"), (2, "now-warm")] {
        let p = Peer::join(c.addr(node), node, name, 2).await;
        assert_eq!(
            p.view(),
            reference,
            "{name} joiner on n{node}: presence_state differs from the room"
        );
        assert!(matches!(
            p.log[..],
            [Rec {
                ev: Ev::State(_),
                ..
            }]
        ));
        peers.push(p);
    }

    // Race: joins on n1 and n2 while n0 keeps updating; every joiner must
    // end on the oracle with no duplicate join or leave of an unknown ref.
    let trackers = &mut peers[..3];
    let mut joiners = Vec::new();
    tokio::join!(
        async {
            for k in 0..12usize {
                trackers[k % 3].track(json!({"j": k % 3, "v": k})).await;
                tokio::time::sleep(ms(15)).await;
            }
        },
        async {
            for k in 0..8usize {
                let node = 1 + k % 2;
                joiners.push(Peer::join(c.addr(node), node, &format!("racer{k}"), 1).await);
                tokio::time::sleep(ms(10)).await;
            }
        }
    );
    peers.extend(joiners);
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "after the race").await;
    pump_all(&mut peers, ms(300)).await;
    let reference = peers[0].view();
    for p in &peers {
        assert_eq!(p.view(), reference, "{} differs from t0", p.key);
    }
    assert_exactly_once(&peers);
    check_same_order(&peers.iter().collect::<Vec<_>>()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_node_leaves_exactly_once_within_bound() {
    let mut c = Cluster::start("kill9", 3).await;
    let peers = populate(&c, 2).await;
    let (victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[2].kill9();
    drop(victims);
    let expected = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &expected,
        GHOST_BOUND,
        "ghosts after kill -9",
    )
    .await;
    let took = since(t0, &at);
    eprintln!(
        "kill -9: ghost removal took {:?} (max {:?})",
        took,
        took.iter().max()
    );

    pump_all(&mut survivors, ms(1500)).await;
    assert_changes(
        with_marks(&survivors, &m),
        &[],
        &victim_pairs,
        "each survivor: one leave per dead presence, nothing else",
    );
    assert_exactly_once(&survivors);
    // No ghost left in Redis either (entries of the dead node reaped).
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_shorter_than_lease_is_silent() {
    let c = Cluster::start("sigstop_short", 3).await;
    let mut peers = populate(&c, 2).await;
    let m = marks(&peers);

    c.nodes[2].sigstop();
    tokio::time::sleep(ms(500)).await;
    c.nodes[2].sigcont();
    pump_all(&mut peers, ms(LEASE_MS + REAP_GRACE_MS + 1500)).await;
    assert_changes(
        with_marks(&peers, &m),
        &[],
        &[],
        "a 500 ms SIGSTOP (< lease) must cause no event anywhere",
    );

    // Still a working cluster: a change on the paused node reaches everyone.
    let i = peers.iter().position(|p| p.node == 2).unwrap();
    peers[i].track(json!({"after": "pause"})).await;
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "track after the pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_longer_than_lease_then_resume_same_refs() {
    let c = Cluster::start("sigstop_long", 3).await;
    let peers = populate(&c, 2).await;
    let (mut victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[2].sigstop();
    let without = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &without,
        GHOST_BOUND,
        "survivors drop the paused node's presences",
    )
    .await;
    eprintln!("SIGSTOP past the lease: leaves after {:?}", since(t0, &at));
    // Make sure the pause really outlived lease + grace before resuming.
    let min_pause = ms(LEASE_MS + REAP_GRACE_MS + HEARTBEAT_MS);
    if t0.elapsed() < min_pause {
        tokio::time::sleep(min_pause - t0.elapsed()).await;
    }
    let t1 = Instant::now();
    c.nodes[2].sigcont();

    let with = oracle(survivors.iter().chain(victims.iter()));
    let at = converge(
        &mut survivors,
        &with,
        WAIT,
        "the resumed node's open clients reappear",
    )
    .await;
    eprintln!("after SIGCONT: back after {:?}", since(t1, &at));
    // The paused node's own clients: only final convergence is required.
    same_refs_then_settle(&mut survivors, &mut victims, &victim_pairs, &with).await;
    for p in survivors.iter().chain(victims.iter()) {
        assert_eq!(norm(&p.view()), with, "{} drifted", p.key);
    }
    assert_changes(
        with_marks(&survivors, &m),
        &victim_pairs,
        &victim_pairs,
        "survivors: each paused presence leaves once and rejoins once, nothing else",
    );
    assert_exactly_once(&survivors);
    // No entry of the old incarnation left behind.
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_empty_no_churn() {
    let mut c = Cluster::start("redis_restart", 3).await;
    let mut peers = populate(&c, 2).await;
    let mut late = Peer::join(c.addr(0), 0, "late", 2).await;
    let mut m = marks(&peers);
    let late_mark = late.mark();

    let t0 = Instant::now();
    c.redis.kill9();
    let redis = &mut c.redis;
    tokio::join!(
        async {
            tokio::time::sleep(ms(150)).await;
            late.track(json!({"during": "outage"})).await;
        },
        async {
            tokio::time::sleep(ms(500)).await;
            redis.restart().await;
            eprintln!("redis restarted empty after {:?}", t0.elapsed());
        }
    );
    eprintln!("outage-time track acknowledged after {:?}", t0.elapsed());
    peers.push(late);
    m.push(late_mark);
    let expected = oracle(&peers);
    let at = converge(
        &mut peers,
        &expected,
        ms(SETTLE_MS) + WAIT,
        "after the Redis restart",
    )
    .await;
    eprintln!("redis restart: converged after {:?}", since(t0, &at));
    // Past the settle window: late leaves would show now.
    pump_all(&mut peers, ms(SETTLE_MS + 1200)).await;
    let late_pair = (
        "late".to_string(),
        peers.last().unwrap().own_ref().expect("late sees itself"),
    );
    let others = peers.len() - 1;
    assert_changes(
        with_marks(&peers[..others], &m[..others]),
        &[late_pair],
        &[],
        "Redis restart: only the outage-time track, no churn of stable presences",
    );
    let (j, l) = peers[others].changes_since(m[others]).unwrap();
    assert!(l.is_empty(), "late saw leaves {l:?}");
    assert!(j.len() <= 1, "late saw joins {j:?}");
    assert_exactly_once(&peers);

    for node in &c.nodes {
        node.wait_ready(200, WAIT).await.unwrap();
    }
    assert_redis_holds_view(&c, &peers[0], "entries re-asserted into the empty Redis").await;
    // And the cluster works afterwards.
    peers[1].track(json!({"after": "restart"})).await;
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "a track after recovery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_briefly_is_silent() {
    let c = Cluster::start("redis_pause", 3).await;
    let mut peers = populate(&c, 2).await;
    let m = marks(&peers);

    c.redis.stop();
    tokio::time::sleep(ms(500)).await;
    c.redis.cont();
    pump_all(&mut peers, ms(2500)).await;
    assert_changes(
        with_marks(&peers, &m),
        &[],
        &[],
        "a 500 ms Redis pause must cause no event anywhere",
    );
    for node in &c.nodes {
        assert_eq!(node.ready().await, 200, "{} ready", node.name);
    }
    peers[2].track(json!({"after": "redis pause"})).await;
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "a track after the pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_then_heal() {
    let c = Cluster::start_proxied("cut_link", 3, &[2]).await;
    let peers = populate(&c, 2).await;
    let (mut victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    assert_eq!(c.nodes[2].ready().await, 200, "n2 ready before the cut");
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.proxy(2).cut();
    let without = oracle(&survivors);
    let (at, not_ready) = tokio::join!(
        converge(
            &mut survivors,
            &without,
            GHOST_BOUND,
            "survivors drop the cut-off node's presences"
        ),
        c.nodes[2].wait_ready(503, GHOST_BOUND)
    );
    let not_ready = not_ready.expect("/ready of the cut-off node turns 503");
    eprintln!(
        "cut: leaves after {:?}; /ready 503 after {not_ready:?}",
        since(t0, &at)
    );
    assert_eq!(c.nodes[0].ready().await, 200, "n0 unaffected");

    let t1 = Instant::now();
    c.proxy(2).heal();
    let with = oracle(survivors.iter().chain(victims.iter()));
    let (at, ready) = tokio::join!(
        converge(
            &mut survivors,
            &with,
            WAIT,
            "the healed node's presences reappear"
        ),
        c.nodes[2].wait_ready(200, WAIT)
    );
    let ready = ready.expect("/ready back to 200 after heal");
    eprintln!(
        "heal: back after {:?}; /ready 200 after {ready:?}",
        since(t1, &at)
    );
    same_refs_then_settle(&mut survivors, &mut victims, &victim_pairs, &with).await;
    assert_changes(
        with_marks(&survivors, &m),
        &victim_pairs,
        &victim_pairs,
        "survivors: each cut-off presence leaves once and rejoins once, nothing else",
    );
    assert_exactly_once(survivors.iter().chain(victims.iter()));
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_sigterm_leaves_fast() {
    let mut c = Cluster::start("sigterm", 3).await;
    let peers = populate(&c, 2).await;
    let (victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[2].sigterm();
    let expected = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &expected,
        Duration::from_secs(1),
        "graceful leaves within 1 s",
    )
    .await;
    eprintln!("SIGTERM: leaves after {:?}", since(t0, &at));
    let status = c.nodes[2]
        .wait_exit(Duration::from_secs(7))
        .await
        .expect("the node exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    drop(victims);
    pump_all(&mut survivors, ms(500)).await;
    assert_changes(
        with_marks(&survivors, &m),
        &[],
        &victim_pairs,
        "each survivor: one leave per presence of the stopped node",
    );
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_crosses_nodes() {
    let c = Cluster::start("broadcast", 3).await;
    let mut peers = Vec::new();
    for (i, node) in [0, 0, 1, 2, 1].into_iter().enumerate() {
        peers.push(Peer::join(c.addr(node), node, &format!("b{i}"), 1 + (i % 2) as u8).await);
    }
    for sender in [0usize, 3] {
        let m = marks(&peers);
        let body = json!({"x": sender, "from": peers[sender].key});
        peers[sender].broadcast("cursor", body.clone()).await;
        let n = peers.len();
        let waits = peers.iter_mut().enumerate().map(|(i, p)| {
            let mark = m[i];
            async move {
                if i == sender {
                    p.pump(ms(600)).await;
                    return None;
                }
                let res = p
                    .wait(ms(2000), &|p| !p.broadcasts_since(mark).is_empty())
                    .await;
                p.pump(ms(500)).await;
                res.err()
            }
        });
        let errors: Vec<String> = futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert!(
            errors.is_empty(),
            "broadcast from {}: {errors:?}",
            peers[sender].key
        );
        for i in 0..n {
            let got = peers[i].broadcasts_since(m[i]);
            if i == sender {
                assert!(got.is_empty(), "self: false, yet the sender got {got:?}");
                continue;
            }
            assert_eq!(
                got.len(),
                1,
                "{} (n{}) got the broadcast {} times: {got:?}",
                peers[i].key,
                peers[i].node,
                got.len()
            );
            assert_eq!(got[0]["event"], "cursor");
            assert_eq!(got[0]["payload"], body, "{}", peers[i].key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_while_cut_off_is_accepted_and_lands_after_heal() {
    let c = Cluster::start_proxied("cut_track", 3, &[2]).await;
    let peers = populate(&c, 1).await;
    let (mut victims, mut survivors) = split_node(peers, 2);
    c.proxy(2).cut();
    c.nodes[2]
        .wait_ready(503, GHOST_BOUND)
        .await
        .expect("cut-off node turns not-ready");
    // The track is answered (accepted), though Redis cannot be reached.
    victims[0]
        .track(json!({"node": 2, "j": 0, "during": "cut"}))
        .await;
    c.proxy(2).heal();
    let with = oracle(survivors.iter().chain(victims.iter()));
    converge(
        survivors.iter_mut().chain(victims.iter_mut()),
        &with,
        WAIT,
        "the state tracked during the cut shows everywhere after heal",
    )
    .await;
    assert_exactly_once(survivors.iter().chain(victims.iter()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_api_on_a_node_without_clients_reads_redis() {
    let c = Cluster::start("presence_api", 3).await;
    // Everyone on n0; n1 and n2 have no client in the room.
    let mut peers = Vec::new();
    for j in 0..3 {
        let mut p = Peer::join(c.addr(0), 0, &format!("api-{j}"), 2).await;
        p.track(json!({"j": j})).await;
        peers.push(p);
    }
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "tracks").await;
    let topic = ROOM.strip_prefix("realtime:").expect("room topic");
    let auth = [("Authorization", "Bearer sb_secret_dev")];
    for node in [0, 1] {
        let (status, body) = crate::common::http_request(
            c.addr(node),
            "GET",
            &format!("/api/presence/{topic}/members"),
            &auth,
            b"",
        )
        .await;
        assert_eq!(status, 200, "n{node}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["api-0", "api-1", "api-2"], "n{node} members");
        let (status, body) = crate::common::http_request(
            c.addr(node),
            "GET",
            &format!("/api/presence/{topic}/count"),
            &auth,
            b"",
        )
        .await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["keys"].as_u64(), v["presences"].as_u64()),
            (Some(3), Some(3)),
            "n{node}: {body}"
        );
        for query in [
            json!({"keys": ["api-1", "nobody"], "topics": [topic]}),
            json!({"keys": ["api-1", "nobody"]}),
        ] {
            let (status, body) = crate::common::http_request(
                c.addr(node),
                "POST",
                "/api/presence/query",
                &[auth[0], ("Content-Type", "application/json")],
                query.to_string().as_bytes(),
            )
            .await;
            assert_eq!(status, 200, "n{node}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                v["online"],
                json!({"api-1": [topic], "nobody": []}),
                "n{node} {query}"
            );
        }
    }
}

/// The node ids in `rp:nodes` (live leases), sorted.
async fn leases(redis: &Redis) -> Vec<String> {
    let mut nids = redis
        .cmd(&["ZRANGE", "rp:nodes", "0", "-1"])
        .await
        .strings();
    nids.sort();
    nids
}

/// The per-node channel sets `rp:nch:{nid}` in Redis, sorted.
async fn channel_sets(redis: &Redis) -> Vec<String> {
    let mut keys = redis.cmd(&["KEYS", "rp:nch:*"]).await.strings();
    keys.sort();
    keys
}

/// The `s` (last sequence number) of the one presence channel in Redis.
async fn channel_seq(redis: &Redis) -> String {
    let metas = redis.cmd(&["KEYS", "rp:{*}:m"]).await.strings();
    assert_eq!(metas.len(), 1, "one channel meta: {metas:?}");
    match redis.cmd(&["HGET", &metas[0], "s"]).await {
        Resp::Bulk(Some(s)) => String::from_utf8_lossy(&s).into_owned(),
        other => panic!("seq of {}: {other:?}", metas[0]),
    }
}

/// Each of `nids` is one of nodes `names` (`<name>-<random>`), one each.
fn assert_incarnations(nids: &[String], names: &[&str], what: &str) {
    let mut got: Vec<&str> = nids
        .iter()
        .map(|nid| nid.rsplit_once('-').map_or(nid.as_str(), |(name, _)| name))
        .collect();
    got.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(got, want, "{what}: {nids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connections_killed_is_silent_and_recovers() {
    let c = Cluster::start("pubsub_kill", 3).await;
    let mut peers = populate(&c, 2).await;
    let m = marks(&peers);

    let t0 = Instant::now();
    let killed = c.redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        matches!(killed, Resp::Int(n) if n >= 3),
        "CLIENT KILL TYPE pubsub: {killed:?} (one subscriber per node expected)"
    );
    // Longer than the settle window: the resync after it would show here.
    pump_all(&mut peers, ms(SETTLE_MS + 700)).await;
    assert_changes(
        with_marks(&peers, &m),
        &[],
        &[],
        "killing the pub/sub connections must cause no event anywhere",
    );
    let channels = c.redis.cmd(&["PUBSUB", "CHANNELS", "rp:*"]).await.strings();
    assert_eq!(channels.len(), 1, "one presence channel: {channels:?}");
    let subscribers = match c.redis.cmd(&["PUBSUB", "NUMSUB", &channels[0]]).await {
        Resp::Array(Some(r)) if r.len() == 2 => r[1].clone(),
        other => panic!("PUBSUB NUMSUB: {other:?}"),
    };
    eprintln!(
        "pub/sub killed ({killed:?}) {:?} ago; now {subscribers:?} subscribers",
        t0.elapsed()
    );
    assert_eq!(subscribers, Resp::Int(3), "every node subscribed again");

    // The pub/sub connections are back: a change on n1 reaches every
    // client, once.
    let m = marks(&peers);
    let i = peers.iter().position(|p| p.node == 1).unwrap();
    let old = (peers[i].key.clone(), peers[i].own_ref().unwrap());
    let t1 = Instant::now();
    peers[i]
        .track(json!({"node": 1, "after": "pubsub kill"}))
        .await;
    let expected = oracle(&peers);
    let at = converge(&mut peers, &expected, WAIT, "a track after the kill").await;
    eprintln!(
        "track after the pub/sub kill: seen after {:?}",
        since(t1, &at)
    );
    let new = (peers[i].key.clone(), peers[i].own_ref().unwrap());
    assert_ne!(old, new, "an update gets a new ref");
    pump_all(&mut peers, ms(500)).await;
    assert_changes(
        with_marks(&peers, &m),
        &[new],
        &[old],
        "each client: the update once (join of the new ref, leave of the old)",
    );
    assert_exactly_once(&peers);
    check_same_order(&peers.iter().collect::<Vec<_>>()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_killed_at_once_survivor_reaps_both() {
    let mut c = Cluster::start("kill9_two", 3).await;
    let peers = populate(&c, 2).await;
    let (mut survivors, victims): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| p.node == 0);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    assert_eq!(victim_pairs.len(), 4);
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    drop(victims);
    let expected = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &expected,
        GHOST_BOUND,
        "ghosts after kill -9 of two nodes",
    )
    .await;
    let took = since(t0, &at);
    eprintln!(
        "kill -9 of two nodes: ghost removal took {took:?} (max {:?})",
        took.iter().max()
    );

    pump_all(&mut survivors, ms(1500)).await;
    assert_changes(
        with_marks(&survivors, &m),
        &[],
        &victim_pairs,
        "each survivor: one leave per presence of either dead node, nothing else",
    );
    assert_exactly_once(&survivors);
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis: only the survivor's").await;
    assert_incarnations(&leases(&c.redis).await, &["n0"], "leases in Redis");
    let sets = channel_sets(&c.redis).await;
    assert!(
        sets.len() == 1 && sets[0].starts_with("rp:nch:{n0-"),
        "channel sets of the dead nodes deleted: {sets:?}"
    );
    let reaping = c.redis.cmd(&["HGETALL", "rp:reaping"]).await;
    assert_eq!(reaping, Resp::Array(Some(vec![])), "no claim left open");
}

/// Populate, `SAVE` a dump, kill -9 node n2, kill -9 Redis, restart it
/// `outage` later from the stale dump (which still holds n2's lease,
/// entries and channel set); the survivors must end on exactly the live
/// presences, with one leave per dead presence and nothing else.
async fn stale_dump_case(label: &str, outage: Duration) {
    let mut c = Cluster::start(label, 3).await;
    let peers = populate(&c, 2).await;
    let (victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    let live_before = view_pairs(&survivors[0].view());
    let m = marks(&survivors);

    c.redis.save().await;
    // What the dump holds: everything, the doomed node included.
    assert_eq!(
        c.redis.entry_refs().await,
        refs_sorted(live_before.iter().cloned()),
        "entries in the dump"
    );
    assert_incarnations(
        &leases(&c.redis).await,
        &["n0", "n1", "n2"],
        "leases in the dump",
    );
    assert_eq!(
        channel_sets(&c.redis).await.len(),
        3,
        "channel sets in the dump"
    );

    let t0 = Instant::now();
    c.nodes[2].kill9();
    drop(victims);
    tokio::time::sleep(ms(100)).await;
    c.redis.kill9();
    tokio::time::sleep(outage).await;
    c.redis.restart_from_dump().await;
    let t1 = Instant::now();
    eprintln!("{label}: redis back from the dump after {:?}", t0.elapsed());

    let expected = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &expected,
        ms(LEASE_MS + SETTLE_MS) + GHOST_BOUND,
        "after the restart from a stale dump",
    )
    .await;
    eprintln!(
        "{label}: dead presences gone {:?} after the kill, {:?} after the restart",
        since(t0, &at),
        since(t1, &at)
    );
    // Past the settle window and a lease: late leaves or churn would show.
    pump_all(&mut survivors, ms(SETTLE_MS + LEASE_MS)).await;
    for s in &survivors {
        let live: Vec<Pair> = view_pairs(&s.view()).into_iter().collect();
        let want: Vec<Pair> = live_before
            .iter()
            .filter(|p| !victim_pairs.contains(p))
            .cloned()
            .collect();
        assert_eq!(live, want, "{}: live presences keep their refs", s.key);
    }
    assert_changes(
        with_marks(&survivors, &m),
        &[],
        &victim_pairs,
        "each survivor: one leave per presence of the dead node, no churn of live ones",
    );
    assert_exactly_once(&survivors);

    for node in &c.nodes[..2] {
        node.wait_ready(200, WAIT).await.unwrap();
    }
    assert_redis_holds_view(&c, &survivors[0], "entries in Redis: only the live ones").await;
    assert_incarnations(&leases(&c.redis).await, &["n0", "n1"], "leases in Redis");
    let sets = channel_sets(&c.redis).await;
    assert!(
        sets.iter().all(|k| !k.starts_with("rp:nch:{n2-")),
        "the dead node's channel set deleted: {sets:?}"
    );
    // And the cluster works afterwards.
    survivors[1].track(json!({"after": "stale dump"})).await;
    let expected = oracle(&survivors);
    converge(&mut survivors, &expected, WAIT, "a track after recovery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_stale_data_reaps_the_dead() {
    // Short outage: every lease in the dump still runs when Redis is back.
    stale_dump_case("redis_stale_dump", ms(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_late_with_stale_data_reaps_only_the_dead() {
    // Outage past the lease: every lease in the dump has run out, the
    // live nodes' too; only the dead node may be reaped (stall guard).
    stale_dump_case("redis_stale_dump_late", ms(2 * LEASE_MS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_node_restart_same_name() {
    let mut c = Cluster::start("rejoin_same_name", 3).await;
    let peers = populate(&c, 2).await;
    let (victims, mut others) = split_node(peers, 1);
    let old_pairs = pairs_of(&others[0], &victims);
    let old_nids = leases(&c.redis).await;
    let m = marks(&others);

    let t0 = Instant::now();
    c.nodes[1].kill9();
    // A new process, same node name, same Redis (its own log file).
    let label = format!("{}-again", c.label);
    c.nodes[1] = Node::start(&label, &c.redis.url(), "n1", &[]).await;
    c.nodes[1]
        .wait_ready(200, WAIT)
        .await
        .expect("the restarted node gets ready");
    eprintln!("n1 restarted and ready after {:?}", t0.elapsed());

    // The dead node's clients reconnect to the new one and track again.
    let mut back = Vec::new();
    for v in &victims {
        let vsn = if back.len() % 2 == 0 { 2 } else { 1 };
        let mut p = Peer::join(c.addr(1), 1, &v.key, vsn).await;
        // A state of its own, so the old incarnation's entry (same key)
        // is told apart from the new one.
        let mut state = v.tracked.clone().unwrap();
        state["incarnation"] = json!(2);
        p.track(state).await;
        back.push(p);
    }
    drop(victims);
    let all = others.len() + back.len();
    others.extend(back);
    let expected = oracle(&others);
    let at = converge(
        &mut others,
        &expected,
        GHOST_BOUND,
        "rejoined once, old incarnation gone",
    )
    .await;
    eprintln!("rejoin: converged {:?} after the kill", since(t0, &at));
    pump_all(&mut others, ms(1500)).await;

    let new_pairs: Vec<Pair> = others[m.len()..]
        .iter()
        .map(|p| (p.key.clone(), p.own_ref().expect("rejoined sees itself")))
        .collect();
    for n in &new_pairs {
        assert!(!old_pairs.contains(n), "a new ref for {n:?}");
    }
    assert_changes(
        with_marks(&others[..m.len()], &m),
        &new_pairs,
        &old_pairs,
        "clients of the other nodes: one join per rejoined presence, one leave per old one",
    );
    assert_exactly_once(&others);
    for p in &others {
        assert_eq!(
            view_pairs(&p.view()),
            view_pairs(&others[0].view()),
            "{}: same refs everywhere",
            p.key
        );
        assert_eq!(p.view().len(), all, "{}: one meta per key", p.key);
    }
    assert_redis_holds_view(
        &c,
        &others[0],
        "entries in Redis: no entry of the old incarnation",
    )
    .await;
    let nids = leases(&c.redis).await;
    assert_incarnations(&nids, &["n0", "n1", "n2"], "leases in Redis");
    let old_n1 = old_nids.iter().find(|n| n.starts_with("n1-")).unwrap();
    assert!(
        !nids.contains(old_n1),
        "old n1 {old_n1} has no lease: {nids:?}"
    );
    assert!(
        !channel_sets(&c.redis)
            .await
            .contains(&format!("rp:nch:{{{old_n1}}}")),
        "the old incarnation's channel set deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_dump_older_than_replicas() {
    // The dump misses the last changes: its channel seq is behind every
    // replica's. Then n2 dies and Redis comes back from that dump.
    let mut c = Cluster::start("redis_older_dump", 3).await;
    let mut peers = populate(&c, 2).await;
    c.redis.save().await;
    let seq_in_dump = channel_seq(&c.redis).await;
    // After the dump: an update on n2 (its ref in the dump is now stale),
    // an update on n0, a new presence on n1.
    let i2 = peers.iter().position(|p| p.key == "n2-p0").unwrap();
    peers[i2].track(json!({"node": 2, "after": "dump"})).await;
    let i0 = peers.iter().position(|p| p.key == "n0-p0").unwrap();
    peers[i0].track(json!({"node": 0, "after": "dump"})).await;
    let mut fresh = Peer::join(c.addr(1), 1, "n1-fresh", 2).await;
    fresh.track(json!({"node": 1, "after": "dump"})).await;
    peers.push(fresh);
    let expected = oracle(&peers);
    converge(&mut peers, &expected, WAIT, "changes after the dump").await;

    let seq_before = channel_seq(&c.redis).await;
    let (victims, mut survivors) = split_node(peers, 2);
    let victim_pairs = pairs_of(&survivors[0], &victims);
    let live: Vec<Pair> = view_pairs(&survivors[0].view())
        .into_iter()
        .filter(|p| !victim_pairs.contains(p))
        .collect();
    let m = marks(&survivors);

    let t0 = Instant::now();
    c.nodes[2].kill9();
    drop(victims);
    tokio::time::sleep(ms(100)).await;
    c.redis.kill9();
    tokio::time::sleep(ms(300)).await;
    c.redis.restart_from_dump().await;
    let t1 = Instant::now();
    let expected = oracle(&survivors);
    let at = converge(
        &mut survivors,
        &expected,
        ms(LEASE_MS + SETTLE_MS) + GHOST_BOUND,
        "after the restart from a dump older than the replicas",
    )
    .await;
    eprintln!(
        "older dump (seq {seq_in_dump}, {seq_before} before the restart): converged {:?} after \
         the kill, {:?} after the restart",
        since(t0, &at),
        since(t1, &at)
    );
    pump_all(&mut survivors, ms(SETTLE_MS + LEASE_MS)).await;
    for s in &survivors {
        let now: Vec<Pair> = view_pairs(&s.view()).into_iter().collect();
        assert_eq!(now, live, "{}: live presences keep their refs", s.key);
    }
    assert_changes(
        with_marks(&survivors, &m),
        &[],
        &victim_pairs,
        "each survivor: one leave per presence of the dead node, no churn of live ones",
    );
    assert_exactly_once(&survivors);
    assert_eq!(
        c.redis.entry_refs().await,
        refs_sorted(live.iter().cloned()),
        "entries in Redis: the live ones, as they are now"
    );
}
