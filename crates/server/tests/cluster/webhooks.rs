//! Presence webhooks in a cluster: three `roster` processes on one Redis,
//! all posting to one local receiver (each under its own path, so the
//! receiver can tell who reported what). Each key-level change is reported
//! exactly once in the whole cluster: by the node that wrote it, or, for a
//! node killed with -9, by the node that reaped its presences.
//!
//! Skipped (with a message) if `redis-server` is not on PATH.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster_support::{Cluster, Node, Redis, GHOST_BOUND};
use crate::common::Client;
use crate::webhook_receiver::Receiver;
use serde_json::json;

const SECRET: &str = "whsec_cluster_secret";
const TOPIC: &str = "realtime:hooked-room";
const LABEL: &str = "cluster_webhooks";

/// One event with the node that reported it: `(node, "member_join k0")`.
type Seen = (String, String);

impl Receiver {
    /// Every event received so far, in arrival order, with its reporter.
    fn seen(&self) -> Vec<Seen> {
        self.requests()
            .iter()
            .flat_map(|p| {
                let node = p.path.strip_prefix("/hooks/").unwrap_or(&p.path).to_owned();
                p.events()
                    .iter()
                    .map(|e| {
                        assert_eq!(e["channel"], "hooked-room", "{e}");
                        assert_eq!(e["private"], false, "{e}");
                        assert!(e["at_ms"].as_u64().unwrap() > 1_600_000_000_000, "{e}");
                        let what = format!(
                            "{} {}",
                            e["event"].as_str().unwrap(),
                            e["key"].as_str().unwrap()
                        );
                        (node.clone(), what)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Wait until `n` events in all have come (within `within`); returns them.
    async fn wait_events(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} events within {within:?}, got {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn seen(node: &str, what: &str) -> Seen {
    (node.to_owned(), what.to_owned())
}

/// `c` joins `TOPIC` under `key` and tracks.
async fn join_and_track(addr: SocketAddr, key: &str) -> Client {
    let mut c = Client::connect(addr, 2).await;
    let j = c.join(TOPIC, Some(key)).await;
    let reply = c.track(&j, TOPIC, json!({"key": key})).await;
    assert_eq!(reply.payload["status"], "ok", "track of {key}");
    c
}

/// Nothing more arrives for `dur`: still exactly `expected` (in any order).
async fn quiet(rx: &Receiver, dur: Duration, expected: &[Seen], what: &str) {
    tokio::time::sleep(dur).await;
    let mut got = rx.seen();
    let mut want = expected.to_vec();
    got.sort();
    want.sort();
    if got != want {
        for p in rx.requests() {
            let body = String::from_utf8_lossy(&p.raw);
            eprintln!("POST {} ({}): {body}", p.path, p.delivery);
        }
    }
    assert_eq!(got, want, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_change_is_reported_once_by_the_writer_or_the_reaper() {
    let rx = &Receiver::start(SECRET).await;
    let redis = Redis::start(LABEL).await;
    let mut nodes = Vec::new();
    for name in ["n0", "n1", "n2"] {
        let url = rx.url_for(name);
        let hooks = [
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--webhook-batch-ms",
            "20",
        ];
        nodes.push(Node::start(LABEL, &redis.url(), name, &hooks).await);
    }
    // Prints the nodes' logs if the test fails.
    let mut cluster = Cluster {
        label: LABEL.into(),
        nodes,
        proxies: vec![None, None, None],
        redis,
    };
    let nodes = &mut cluster.nodes;
    let settle = Duration::from_millis(400);

    // One key per client, on different nodes; n2 holds two.
    let mut k0 = join_and_track(nodes[0].addr, "k0").await;
    let k1 = join_and_track(nodes[1].addr, "k1").await;
    let _k2a = join_and_track(nodes[2].addr, "k2a").await;
    let _k2b = join_and_track(nodes[2].addr, "k2b").await;
    let mut expected = vec![
        seen("n0", "member_join k0"),
        seen("n1", "member_join k1"),
        seen("n2", "member_join k2a"),
        seen("n2", "member_join k2b"),
    ];
    rx.wait_events(4, Duration::from_secs(5)).await;
    k0.until_view(TOPIC, |v| {
        ["k0", "k1", "k2a", "k2b"]
            .iter()
            .all(|k| v.get(*k).is_some_and(|m| m.len() == 1))
    })
    .await;
    quiet(
        rx,
        settle,
        &expected,
        "one member_join per key, from the node that wrote it",
    )
    .await;

    // A second socket under k0, on another node: the key is already in, so
    // no event from anyone.
    let mut dup = Client::connect(nodes[1].addr, 2).await;
    let j = dup.join(TOPIC, Some("k0")).await;
    assert!(
        dup.view(TOPIC).contains_key("k0"),
        "n1 knows k0 before the second socket tracks: {:?}",
        dup.view(TOPIC)
    );
    let reply = dup
        .track(&j, TOPIC, json!({"key": "k0", "dup": true}))
        .await;
    assert_eq!(reply.payload["status"], "ok");
    k0.until_view(TOPIC, |v| v.get("k0").is_some_and(|m| m.len() == 2))
        .await;
    quiet(
        rx,
        settle,
        &expected,
        "a second socket under a known key sends nothing",
    )
    .await;

    // A client closes: one member_leave, from its node.
    k1.close().await;
    k0.until_view(TOPIC, |v| !v.contains_key("k1")).await;
    expected.push(seen("n1", "member_leave k1"));
    rx.wait_events(expected.len(), Duration::from_secs(5)).await;
    quiet(
        rx,
        settle,
        &expected,
        "one member_leave for the closed client",
    )
    .await;

    // kill -9 the node holding k2a and k2b: one member_leave per key, from
    // whichever survivor reaped them, within the ghost bound.
    let killed = Instant::now();
    nodes[2].kill9();
    let seen_all = rx.wait_events(expected.len() + 2, GHOST_BOUND).await;
    let took = killed.elapsed();
    eprintln!("kill -9: reaped leaves reported after {took:?}");
    let reaped: Vec<Seen> = seen_all[expected.len()..].to_vec();
    let reaper = reaped[0].0.clone();
    assert!(
        reaper == "n0" || reaper == "n1",
        "the reaped leaves come from a survivor: {reaped:?}"
    );
    expected.push(seen(&reaper, "member_leave k2a"));
    expected.push(seen(&reaper, "member_leave k2b"));
    // Survivors' clients see the ghosts go too (so both survivors applied
    // the reap before the final check).
    k0.until_view(TOPIC, |v| !v.contains_key("k2a") && !v.contains_key("k2b"))
        .await;
    dup.until_view(TOPIC, |v| !v.contains_key("k2a") && !v.contains_key("k2b"))
        .await;
    // The node that reported them is the one whose log says it reaped n2.
    let reaper_node = nodes.iter().find(|n| n.name == reaper).unwrap();
    let log = std::fs::read_to_string(&reaper_node.log).unwrap_or_default();
    assert!(
        log.contains("reaped a dead node"),
        "{reaper} reported the leaves but did not reap"
    );
    quiet(
        rx,
        Duration::from_millis(1000),
        &expected,
        "one member_leave per key of the killed node, from its reaper, nothing else",
    )
    .await;

    // Every request was signed right, to its node's path, each batch once.
    let posts = rx.requests();
    for p in &posts {
        assert!(p.verified, "bad signature: {p:?}");
        assert!(
            ["/hooks/n0", "/hooks/n1", "/hooks/n2"].contains(&p.path.as_str()),
            "unexpected request {p:?}"
        );
        assert!(!p.delivery.is_empty());
    }
    let ids: std::collections::HashSet<_> = posts.iter().map(|p| &p.delivery).collect();
    assert_eq!(ids.len(), posts.len(), "one delivery id per batch");
}
