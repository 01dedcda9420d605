//! The leave grace period in a cluster: a client that drops and comes back
//! through *another* node or the same one, tracking the same state under
//! the same key, takes its old meta over (same `phx_ref`); nobody sees a
//! leave or a join.

use std::time::Duration;

use crate::cluster_support::{Node, Redis};
use crate::common::Client;
use serde_json::json;

const TOPIC: &str = "realtime:grace-room";

fn refs_of(client: &Client, key: &str) -> Vec<String> {
    client
        .view(TOPIC)
        .get(key)
        .map(|metas| {
            metas
                .iter()
                .map(|m| m["phx_ref"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_through_another_node_takes_the_meta_over() {
    rejoin_takes_the_meta_over("grace_x", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_through_the_same_node_takes_the_meta_over() {
    rejoin_takes_the_meta_over("grace_s", true).await;
}

async fn rejoin_takes_the_meta_over(name: &str, same_node: bool) {
    let redis = Redis::start(name).await;
    let grace = ["--presence-grace-ms", "1500"];
    let a = Node::start(name, &redis.url(), "a", &grace).await;
    let b = Node::start(name, &redis.url(), "b", &grace).await;
    let c = Node::start(name, &redis.url(), "c", &grace).await;

    let mut observer = Client::connect(c.addr, 2).await;
    let oref = observer.join(TOPIC, Some("observer")).await;
    observer
        .track(&oref, TOPIC, json!({"me": "observer"}))
        .await;

    let mut first = Client::connect(a.addr, 2).await;
    let jref = first.join(TOPIC, Some("mobile")).await;
    first.track(&jref, TOPIC, json!({"status": "online"})).await;
    observer
        .until_view(TOPIC, |v| v.contains_key("mobile"))
        .await;
    let original = refs_of(&observer, "mobile");
    assert_eq!(original.len(), 1);

    // A network blip: the socket on node a dies; the client comes back
    // through node b (or a again) with the same key and state.
    first.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let back = if same_node { a.addr } else { b.addr };
    let mut second = Client::connect(back, 1).await;
    let jref = second.join(TOPIC, Some("mobile")).await;
    let reply = second
        .track(&jref, TOPIC, json!({"status": "online"}))
        .await;
    assert_eq!(reply.payload["status"], "ok");
    assert_eq!(
        refs_of(&second, "mobile"),
        original,
        "the returning client sees its old meta, same ref, once"
    );
    // Past the grace period: node a's expiry finds nothing to remove.
    // (Frames set aside while waiting for replies were applied already.)
    observer.clear_stash();
    observer.expect_silence(Duration::from_millis(2500)).await;
    assert_eq!(refs_of(&observer, "mobile"), original);

    // A real leave still goes out, once.
    second.close().await;
    observer
        .until_view(TOPIC, |v| !v.contains_key("mobile"))
        .await;
    observer.expect_silence(Duration::from_millis(500)).await;
    drop((a, b, c, redis));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rejoin_within_grace_means_one_leave_after_it() {
    let redis = Redis::start("grace_y").await;
    let grace = ["--presence-grace-ms", "800"];
    let a = Node::start("grace_y", &redis.url(), "a", &grace).await;
    let c = Node::start("grace_y", &redis.url(), "c", &grace).await;
    let mut observer = Client::connect(c.addr, 2).await;
    observer.join(TOPIC, Some("observer")).await;
    let mut gone = Client::connect(a.addr, 2).await;
    let jref = gone.join(TOPIC, Some("gone")).await;
    gone.track(&jref, TOPIC, json!({"s": 1})).await;
    observer.until_view(TOPIC, |v| v.contains_key("gone")).await;
    let t0 = std::time::Instant::now();
    gone.drop_abruptly();
    observer.clear_stash();
    observer.expect_silence(Duration::from_millis(600)).await;
    observer
        .until_view(TOPIC, |v| !v.contains_key("gone"))
        .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "leave after the grace period, got {waited:?}"
    );
    observer.expect_silence(Duration::from_millis(500)).await;
    drop((a, c, redis));
}
