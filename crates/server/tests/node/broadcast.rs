//! Broadcast (docs/protocol.md §5, §6.1–§6.2): JSON pushes with `self` and
//! `ack`, kind-3 binary frames with JSON and raw payloads, bad binary frames
//! (1007) and kind 4 as the only binary frame sent, REST batch and single.

use crate::common::*;
use serde_json::{json, Value};

const ROOM: &str = "realtime:room_01";

async fn join_with(c: &mut Client, self_: bool, ack: bool) -> String {
    let r = c
        .join_raw(ROOM, json!({"config": {"broadcast": {"self": self_, "ack": ack}, "presence": {"enabled": false}}}))
        .await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    r
}

/// A kind-3 frame as realtime-js builds it.
fn kind3(
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    encoding: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![
        3,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        encoding,
    ];
    for s in [join_ref, ref_, topic, event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn json_broadcast_reaches_others_or_all_with_self_and_ack_replies() {
    let s = start().await;
    let mut sender = Client::connect(s.addr, 1).await;
    let js = join_with(&mut sender, false, true).await;
    let mut v2 = Client::connect(s.addr, 2).await;
    join_with(&mut v2, false, false).await;
    let mut v1 = Client::connect(s.addr, 1).await;
    join_with(&mut v1, false, false).await;

    let payload = json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}});
    let r = sender.push(&js, ROOM, "broadcast", payload.clone()).await;
    assert_eq!(
        sender.recv_reply(&r).await.payload,
        json!({"status": "ok", "response": {}})
    );
    let got = v2.recv().await;
    assert_eq!(got.raw, json!([null, null, ROOM, "broadcast", payload]));
    let got = v1.recv().await;
    assert_eq!(
        got.raw,
        json!({"topic": ROOM, "event": "broadcast", "payload": payload, "ref": null})
    );
    sender.expect_nothing_pending().await; // self: false

    // self: true, ack: false → the sender gets its own message and no reply.
    let mut echo = Client::connect(s.addr, 2).await;
    let je = join_with(&mut echo, true, false).await;
    echo.push(
        &je,
        ROOM,
        "broadcast",
        json!({"type": "broadcast", "event": "typing", "payload": {}}),
    )
    .await;
    let own = echo.recv().await;
    assert_eq!(
        (own.event.as_str(), own.payload["event"].clone()),
        ("broadcast", json!("typing"))
    );
    echo.expect_nothing_pending().await;
    assert_eq!(v1.recv().await.payload["event"], "typing");
}

#[tokio::test]
async fn item35_kind3_frames_json_and_binary() {
    let s = start().await;
    let mut sender = Client::connect(s.addr, 2).await;
    let js = join_with(&mut sender, false, true).await;
    let mut v1 = Client::connect(s.addr, 1).await;
    join_with(&mut v1, false, false).await;
    let mut v2 = Client::connect(s.addr, 2).await;
    join_with(&mut v2, false, false).await;

    // JSON-encoded kind 3: both vsn receive JSON text; the ref is acked.
    sender
        .send_binary(kind3(&js, "50", ROOM, "cursor", 1, br#"{"x":10,"y":20}"#))
        .await;
    assert_eq!(sender.recv_reply("50").await.payload["status"], "ok");
    let expected = json!({"type": "broadcast", "event": "cursor", "payload": {"x": 10, "y": 20}});
    assert_eq!(v1.recv().await.payload, expected);
    let got = v2.recv().await;
    assert_eq!(got.payload, expected);
    assert!(got.binary.is_none());

    // Raw binary kind 3: vsn 2 gets kind 4 with the same bytes; vsn 1 cannot and gets nothing.
    sender
        .send_binary(kind3(&js, "51", ROOM, "blob", 0, &[0, 1, 2, 255]))
        .await;
    assert_eq!(sender.recv_reply("51").await.payload["status"], "ok");
    let got = v2.recv().await;
    assert_eq!(got.topic, ROOM);
    assert_eq!(got.payload["event"], "blob");
    assert_eq!(got.binary.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    v1.expect_nothing_pending().await;
}

/// A binary frame that is not a well-formed kind 3 cannot be answered (it
/// has no readable ref): that socket is closed with 1007 and a reason, and
/// only that one.
#[tokio::test]
async fn bad_binary_frames_close_that_socket_and_only_kind4_is_sent() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = join_with(&mut c, true, true).await;
    for junk in [
        vec![],
        vec![0, 1, 2],
        vec![1],
        vec![2, 0],
        vec![3, 200, 0, 0, 0, 0, 1],
        vec![3, 0, 0, 0, 0, 0, 9],
    ] {
        let mut bad = Client::connect(s.addr, 2).await;
        bad.send_binary(junk.clone()).await;
        assert_eq!(
            bad.expect_closed(WAIT).await,
            Some(1007),
            "{junk:?} should close with 1007"
        );
    }
    // A vsn-1 socket has no binary frames at all.
    let mut v1 = Client::connect(s.addr, 1).await;
    v1.send_binary(kind3(&j, "9", ROOM, "b", 0, b"ok")).await;
    assert_eq!(v1.expect_closed(WAIT).await, Some(1007));
    // The joined socket still works, and a binary self-broadcast comes back
    // as kind 4 (the harness panics on any other binary kind).
    c.send_binary(kind3(&j, "9", ROOM, "b", 0, b"ok")).await;
    let mut saw_kind4 = false;
    for _ in 0..2 {
        let got = c.recv().await;
        saw_kind4 |= got.binary.as_deref() == Some(&b"ok"[..]);
    }
    assert!(saw_kind4);
}

#[tokio::test]
async fn rest_broadcast_batch_and_single() {
    let s = start().await;
    let mut v1 = Client::connect(s.addr, 1).await;
    join_with(&mut v1, false, false).await;
    let mut v2 = Client::connect(s.addr, 2).await;
    join_with(&mut v2, false, false).await;
    let bearer = format!("Bearer {KEY}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];

    let body = json!({"messages": [{"topic": "room_01", "event": "news", "payload": {"n": 1}, "id": "m1"}]});
    let (status, _) = http_post(
        s.addr,
        "/realtime/v1/api/broadcast?apikey=x&vsn=2.0.0",
        &auth,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let expected =
        json!({"type": "broadcast", "event": "news", "payload": {"n": 1}, "meta": {"id": "m1"}});
    assert_eq!(v1.recv().await.payload, expected);
    assert_eq!(v2.recv().await.payload, expected);

    let (status, _) = http_post(
        s.addr,
        "/api/broadcast/room_01/events/ping?vsn=2.0.0",
        &[("apikey", KEY)],
        br#"{"p":true}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        v1.recv().await.payload,
        json!({"type": "broadcast", "event": "ping", "payload": {"p": true}})
    );
    assert_eq!(v2.recv().await.payload["payload"], json!({"p": true}));

    let octets = [
        ("apikey", KEY),
        ("Content-Type", "application/octet-stream"),
    ];
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast/room_01/events/bin",
        &octets,
        &[9, 8, 7],
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(v2.recv().await.binary.as_deref(), Some(&[9u8, 8, 7][..]));
    v1.expect_nothing_pending().await;

    // Refusals: clear status and a JSON error.
    let (status, body) = http_post(
        s.addr,
        "/api/broadcast",
        &[("Authorization", "Bearer nope")],
        b"{}",
    )
    .await;
    assert_eq!(status, 401);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, body) = http_post(s.addr, "/api/broadcast", &auth, br#"{"messages": 5}"#).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast/room_01/events/x",
        &[("apikey", KEY), ("Content-Type", "text/plain")],
        b"hi",
    )
    .await;
    assert_eq!(status, 415);
}
