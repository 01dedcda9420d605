//! Last seen in a cluster: a key's leave on one node is stored in Redis
//! (a per-channel sorted set, capped and expiring), so every node's
//! presence API answers the same `last_seen_at`, even one with no client.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cluster_support::{Node, Redis, Resp};
use crate::common::Client;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:seen-room";
const NAME: &str = "seen-room";
const AUTH: (&str, &str) = ("Authorization", "Bearer sb_secret_dev");

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn query(node: &Node, body: Value) -> Value {
    let (status, text) = crate::common::http_request(
        node.addr,
        "POST",
        "/api/presence/query",
        &[AUTH, ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn members_of(node: &Node, keys: &[&str]) -> Value {
    let asked: Vec<String> = keys.iter().map(|k| format!("keys={k}")).collect();
    let path = format!("/api/presence/{NAME}/members?{}", asked.join("&"));
    let (status, text) = crate::common::http_request(node.addr, "GET", &path, &[AUTH], b"").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn int(reply: Resp) -> i64 {
    match reply {
        Resp::Int(n) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// One client per key joins through `a`, tracks, then leaves; returns when
/// the watcher (on another node) has seen it go, with the time around it.
async fn visit(a: &Node, watcher: &mut Client, key: &str) -> (u64, u64) {
    let mut visitor = Client::connect(a.addr, 2).await;
    let jref = visitor.join(TOPIC, Some(key)).await;
    visitor.track(&jref, TOPIC, json!({"k": key})).await;
    watcher.until_view(TOPIC, |v| v.contains_key(key)).await;
    let before = now_ms();
    visitor.close().await;
    watcher.until_view(TOPIC, |v| !v.contains_key(key)).await;
    (before, now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_on_one_node_is_last_seen_on_every_node() {
    let redis = Redis::start("last_seen").await;
    // At most 2 keys per channel in Redis, for a minute.
    let limits = ["--last-seen-keys", "2", "--last-seen-max-age-ms", "60000"];
    let a = Node::start("last_seen", &redis.url(), "a", &limits).await;
    let b = Node::start("last_seen", &redis.url(), "b", &limits).await;
    let c = Node::start("last_seen", &redis.url(), "c", &limits).await;

    let mut watcher = Client::connect(b.addr, 2).await;
    let wref = watcher.join(TOPIC, Some("watcher")).await;
    watcher.track(&wref, TOPIC, json!({"me": "watcher"})).await;

    visit(&a, &mut watcher, "alice").await;
    let (bob_from, bob_to) = visit(&a, &mut watcher, "bob").await;
    let (carol_from, carol_to) = visit(&a, &mut watcher, "carol").await;

    // b holds the channel, c has no client in it: both read Redis.
    let mut answers = Vec::new();
    for node in [&b, &c] {
        let asked = json!({"keys": ["alice", "bob", "carol", "watcher", "nobody"]});
        for body in [asked.clone(), {
            let mut named = asked.clone();
            named["topics"] = json!([NAME]);
            named
        }] {
            let v = query(node, body).await;
            assert_eq!(v["online"]["watcher"], json!([NAME]), "{v}");
            assert_eq!(v["online"]["bob"], json!([]), "{v}");
            let seen = &v["last_seen_at"];
            let bob = seen["bob"].as_u64().unwrap_or_else(|| panic!("bob: {v}"));
            let carol = seen["carol"].as_u64().unwrap();
            // Redis's clock; on this machine it is ours.
            assert!((bob_from..=bob_to).contains(&bob), "bob {bob}: {v}");
            assert!((carol_from..=carol_to).contains(&carol), "carol: {v}");
            assert!(seen.get("alice").is_none(), "over the cap of 2: {v}");
            assert!(seen.get("watcher").is_none() && seen.get("nobody").is_none());
            answers.push(seen.clone());
        }

        let m = members_of(node, &["carol", "watcher", "nobody", "carol"]).await;
        let members = m["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "asked once each, in order: {m}");
        assert_eq!(members[0]["key"], "carol");
        assert_eq!(members[0]["online"], false);
        assert_eq!(members[0]["metas"], json!([]));
        assert_eq!(members[0]["last_seen_at"], answers[0]["carol"]);
        assert_eq!(members[1]["key"], "watcher");
        assert_eq!(members[1]["online"], true);
        assert_eq!(members[1]["metas"][0]["me"], "watcher");
        assert!(members[1].get("last_seen_at").is_none(), "{m}");
        assert_eq!(members[2]["online"], false);
        assert!(members[2].get("last_seen_at").is_none(), "{m}");
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every node, with or without topics, answers the same: {answers:?}"
    );

    // In Redis: one sorted set for the channel, capped, with an expiry.
    let sets = redis.cmd(&["KEYS", "rp:{*}:l"]).await.strings();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(int(redis.cmd(&["ZCARD", &sets[0]]).await), 2);
    let ttl = int(redis.cmd(&["PTTL", &sets[0]]).await);
    assert!(
        ttl > 0 && ttl <= 60_000,
        "expires with the age limit: {ttl}"
    );

    // Back online: online again, and no last_seen_at for it.
    let mut again = Client::connect(c.addr, 2).await;
    let jref = again.join(TOPIC, Some("bob")).await;
    again.track(&jref, TOPIC, json!({"k": "bob"})).await;
    watcher.until_view(TOPIC, |v| v.contains_key("bob")).await;
    let v = query(&a, json!({"keys": ["bob"], "topics": [NAME]})).await;
    assert_eq!(v["online"]["bob"], json!([NAME]));
    assert_eq!(v["last_seen_at"], json!({}), "{v}");
    drop((a, b, c, redis));
}
