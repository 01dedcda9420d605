//! Anti-entropy: a change that reached Redis but whose message was lost
//! (nothing later reveals the hole) is found by the periodic audit of
//! `(epoch, seq)`, and clients get it.

use crate::cluster_support::{Node, Redis};
use crate::common::Client;
use serde_json::json;

const TOPIC: &str = "realtime:audit-room";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_message_is_found_by_the_audit() {
    let redis = Redis::start("audit").await;
    let args = ["--cluster-audit-ms", "500"];
    let a = Node::start("audit", &redis.url(), "a", &args).await;
    let b = Node::start("audit", &redis.url(), "b", &args).await;
    let mut writer = Client::connect(a.addr, 2).await;
    let j = writer.join(TOPIC, Some("writer")).await;
    writer.track(&j, TOPIC, json!({})).await;
    let mut watcher = Client::connect(b.addr, 2).await;
    watcher.join(TOPIC, Some("watcher")).await;
    watcher
        .until_view(TOPIC, |v| v.contains_key("writer"))
        .await;

    // Change Redis behind everyone's back, as a lost message would: an
    // entry of node a (alive) and the seq bumped, nothing published.
    let data = redis.cmd(&["KEYS", "rp:*:s"]).await.strings();
    assert_eq!(data.len(), 1, "one channel: {data:?}");
    let meta = data[0].replace(":s", ":m");
    let nodes = redis
        .cmd(&["ZRANGE", "rp:nodes", "0", "-1"])
        .await
        .strings();
    let nid = nodes
        .iter()
        .find(|n| n.starts_with("a-"))
        .expect("node a's id");
    let entry = "\"sneaked\"\x1fSNEAKEDREF000001\x1f\x1f{\"via\":\"redis\"}";
    redis
        .cmd(&["HSET", &data[0], &format!("{nid}|999999"), entry])
        .await;
    redis.cmd(&["HINCRBY", &meta, "s", "1"]).await;

    watcher
        .until_view(TOPIC, |v| {
            v.get("sneaked")
                .is_some_and(|m| m[0]["phx_ref"] == "SNEAKEDREF000001" && m[0]["via"] == "redis")
        })
        .await;
    writer
        .until_view(TOPIC, |v| v.contains_key("sneaked"))
        .await;
    drop((a, b, redis));
}
