//! Quiet updates across nodes: a `replace` member on node a updates its
//! state; a watcher on node b sees one join under the same `phx_ref` and
//! no leave, then the new state.

use crate::cluster_support::{Node, Redis};
use crate::common::Client;
use serde_json::json;

const TOPIC: &str = "realtime:quiet-room";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_update_on_one_node_is_one_join_and_no_leave_on_another() {
    let redis = Redis::start("cluster_quiet").await;
    let a = Node::start("cluster_quiet", &redis.url(), "a", &[]).await;
    let b = Node::start("cluster_quiet", &redis.url(), "b", &[]).await;

    let mut watcher = Client::connect(b.addr, 2).await;
    watcher.join(TOPIC, Some("watcher")).await;

    let mut quiet = Client::connect(a.addr, 2).await;
    let qref = quiet
        .join_raw(
            TOPIC,
            json!({"config": {"presence": {"key": "quiet", "enabled": true, "updates": "replace"}}}),
        )
        .await;
    assert_eq!(quiet.recv_event("phx_reply").await.payload["status"], "ok");
    quiet.track(&qref, TOPIC, json!({"s": 1})).await;
    watcher.until_view(TOPIC, |v| v.contains_key("quiet")).await;
    let first_ref = watcher.view(TOPIC)["quiet"][0]["phx_ref"].clone();

    quiet.track(&qref, TOPIC, json!({"s": 2})).await;
    let diff = watcher.recv_event("presence_diff").await;
    assert_eq!(
        diff.payload["leaves"],
        json!({}),
        "no leave: {:?}",
        diff.raw
    );
    let metas = &diff.payload["joins"]["quiet"]["metas"];
    assert_eq!(metas.as_array().map(Vec::len), Some(1), "{:?}", diff.raw);
    assert_eq!(metas[0]["phx_ref"], first_ref, "same ref");
    assert_eq!(metas[0]["s"], 2);

    // A marker: the next diff the watcher gets is this join, so no leave
    // of the old state came after the update.
    let mut marker = Client::connect(a.addr, 2).await;
    let mref = marker.join(TOPIC, Some("marker")).await;
    marker.track(&mref, TOPIC, json!({})).await;
    let next = watcher.recv_event("presence_diff").await;
    assert_eq!(next.payload["leaves"], json!({}), "{:?}", next.raw);
    assert!(
        next.payload["joins"].get("marker").is_some(),
        "{:?}",
        next.raw
    );
    let view = watcher.view(TOPIC);
    assert_eq!(view["quiet"].len(), 1);
    assert_eq!(view["quiet"][0]["s"], 2);
    drop((a, b, redis));
}
