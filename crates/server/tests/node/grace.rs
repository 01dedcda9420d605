//! Leave grace period: a socket that drops without leaving keeps its
//! presence for a while; a rejoin tracking the same state takes it over with
//! the same `phx_ref`, and nobody sees a leave or a join. Otherwise exactly
//! one leave goes out when the period ends.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const ROOM: &str = "realtime:grace";

#[tokio::test]
async fn a_quick_reconnect_with_the_same_state_causes_no_churn() {
    let s = start_with(|c| c.presence_grace = Duration::from_millis(1500)).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    let jw = watcher.join(ROOM, Some("watcher")).await;
    watcher.track(&jw, ROOM, json!({})).await;
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, Some("alice")).await;
    a.track(&ja, ROOM, json!({"status": "online"})).await;
    watcher.until_view(ROOM, |v| v.contains_key("alice")).await;
    let original = watcher.view(ROOM)["alice"][0]["phx_ref"].clone();
    watcher.clear_stash();

    a.drop_abruptly();
    watcher.expect_silence(Duration::from_millis(400)).await;
    // Back within the grace period, same key, same state.
    let mut again = Client::connect(s.addr, 1).await;
    let j = again.join(ROOM, Some("alice")).await;
    assert_eq!(
        again.view(ROOM)["alice"][0]["phx_ref"],
        original,
        "the snapshot still holds the kept meta"
    );
    again.track(&j, ROOM, json!({"status": "online"})).await;
    // Past the end of the grace period: still no leave, no join, same ref.
    watcher.expect_silence(Duration::from_millis(1800)).await;
    assert_eq!(watcher.view(ROOM)["alice"].len(), 1);
    assert_eq!(watcher.view(ROOM)["alice"][0]["phx_ref"], original);
    // And it is a live presence again: leaving now is immediate.
    again.push(&j, ROOM, "phx_leave", json!({})).await;
    watcher.until_view(ROOM, |v| !v.contains_key("alice")).await;
}

#[tokio::test]
async fn without_a_reconnect_exactly_one_leave_goes_out_at_the_end() {
    let s = start_with(|c| c.presence_grace = Duration::from_millis(600)).await;
    let mut watcher = Client::connect(s.addr, 1).await;
    let jw = watcher.join(ROOM, Some("watcher")).await;
    watcher.track(&jw, ROOM, json!({})).await;
    let mut b = Client::connect(s.addr, 2).await;
    let jb = b.join(ROOM, Some("bob")).await;
    b.track(&jb, ROOM, json!({"n": 1})).await;
    watcher.until_view(ROOM, |v| v.contains_key("bob")).await;
    watcher.clear_stash();
    let dropped = std::time::Instant::now();
    b.close().await;
    let leave = watcher.recv_event("presence_diff").await;
    assert!(
        dropped.elapsed() >= Duration::from_millis(500),
        "the leave waited for the grace period"
    );
    assert_eq!(leave.payload["joins"], json!({}));
    assert_eq!(keys(&leave.payload["leaves"]), ["bob"]);
    watcher.expect_silence(Duration::from_millis(300)).await;

    // A rejoin with another state is a normal join; the old meta still leaves at the end.
    let mut c = Client::connect(s.addr, 2).await;
    let jc = c.join(ROOM, Some("carol")).await;
    c.track(&jc, ROOM, json!({"v": 1})).await;
    watcher.until_view(ROOM, |v| v.contains_key("carol")).await;
    c.drop_abruptly();
    let mut c2 = Client::connect(s.addr, 2).await;
    let jc2 = c2.join(ROOM, Some("carol")).await;
    c2.track(&jc2, ROOM, json!({"v": 2})).await;
    watcher
        .until_view(ROOM, |v| v.get("carol").is_some_and(|m| m.len() == 2))
        .await;
    watcher
        .until_view(ROOM, |v| {
            v.get("carol")
                .is_some_and(|m| m.len() == 1 && m[0]["v"] == 2)
        })
        .await;
    // Empty channels are still dropped once the last kept meta is gone.
    drop(c2);
    watcher.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while s.server.registry.get(ROOM, false).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
