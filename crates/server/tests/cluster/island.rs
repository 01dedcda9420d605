//! A node cut off from Redis longer than the island timeout closes its
//! sockets (1012), so clients reconnect to healthy nodes; until then it
//! refuses new joins (`NodeUnavailable`) and says not-ready.

use std::time::{Duration, Instant};

use crate::cluster_support::{Node, Proxy, Redis};
use crate::common::Client;
use serde_json::json;

const TOPIC: &str = "realtime:island";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_island_refuses_joins_then_closes_its_sockets() {
    let redis = Redis::start("island").await;
    let proxy = Proxy::start(redis.addr()).await;
    // The harness gives every node a 5 s island timeout.
    let node = Node::start("island", &proxy.url(), "isle", &[]).await;
    let mut client = Client::connect(node.addr, 2).await;
    let j = client.join(TOPIC, Some("c")).await;
    client.track(&j, TOPIC, json!({})).await;

    let cut = Instant::now();
    proxy.cut();
    node.wait_ready(503, Duration::from_secs(3))
        .await
        .expect("not ready once the lease is at risk");
    let mut late = Client::connect(node.addr, 2).await;
    let r = late
        .join_raw(TOPIC, json!({"config": {"presence": {"key": "late"}}}))
        .await;
    let reply = late.recv_reply(&r).await;
    assert_eq!(reply.payload["status"], "error");
    assert!(reply.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("NodeUnavailable"));

    let code = client.expect_closed(Duration::from_secs(8)).await;
    assert_eq!(code, Some(1012), "service restart: reconnect elsewhere");
    let after = cut.elapsed();
    assert!(
        after >= Duration::from_millis(4500) && after < Duration::from_secs(8),
        "closed {after:?} after the cut"
    );
    drop((node, proxy, redis));
}
