//! Failure and load behaviour: concurrent joins stay exact, a client that
//! never reads is cut off without hurting the room, shutdown closes cleanly;
//! and the WebSocket itself, frame by frame: fragments, control frames
//! between them, masking, and shared frames written byte-identical.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

const ROOM: &str = "realtime:storm";

/// Sockudo loses members when many subscribe at once. Here every client,
/// joining and tracking concurrently, ends with exactly all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_join_storm_converges_exactly() {
    const N: usize = 200;
    let s = start().await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, if i % 2 == 0 { 2 } else { 1 }).await;
            let key = format!("user-{i}");
            let j = c.join(ROOM, Some(&key)).await;
            c.track(&j, ROOM, json!({"i": i})).await;
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let (members, keys, metas) = s.server.registry.get(ROOM, false).unwrap().counts();
    assert_eq!((members, keys, metas), (N, N, N));
    for c in clients.iter_mut() {
        c.until_view(ROOM, |v| v.len() == N && v.values().all(|m| m.len() == 1))
            .await;
    }
    // Half leave at once, abruptly or politely: the rest see exactly the survivors.
    let survivors = clients.split_off(N / 2);
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.drop_abruptly();
        } else {
            c.close().await;
        }
    }
    let mut survivors = survivors;
    for c in survivors.iter_mut() {
        c.until_view(ROOM, |v| v.len() == N / 2).await;
        let view = c.view(ROOM);
        assert!((N / 2..N).all(|i| view.contains_key(&format!("user-{i}"))));
    }
}

/// A client that never reads fills its queue; it is disconnected and its
/// presence removed, and a reading member keeps receiving everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_the_room_is_unaffected() {
    let s = start_with(|c| {
        c.outbound_queue = 16;
        c.write_timeout = Duration::from_millis(500);
        c.limits.presence_calls_per_window = 10_000;
        c.limits.max_track_bytes = 1 << 20;
    })
    .await;
    let room = "realtime:slow";
    let mut reader = Client::connect(s.addr, 2).await;
    let jr = reader.join(room, Some("reader")).await;
    reader.track(&jr, room, json!({})).await;
    let mut stuck = Client::connect(s.addr, 2).await;
    let js = stuck.join(room, Some("stuck")).await;
    stuck.track(&js, room, json!({})).await;
    reader.until_view(room, |v| v.contains_key("stuck")).await;

    // A noisy member updates its state with big payloads; `stuck` reads nothing.
    let mut noisy = Client::connect(s.addr, 1).await;
    let jn = noisy.join(room, Some("noisy")).await;
    let blob = "x".repeat(64 * 1024);
    for n in 0..300 {
        noisy
            .push(
                &jn,
                room,
                "presence",
                json!({"event": "track", "payload": {"n": n, "blob": blob}}),
            )
            .await;
        // Everyone but `stuck` drains as it goes, like healthy clients.
        while reader.try_recv(Duration::from_millis(1)).await.is_some() {}
        while noisy.try_recv(Duration::from_millis(1)).await.is_some() {}
        if !reader.view(room).contains_key("stuck") {
            break;
        }
    }
    reader.until_view(room, |v| !v.contains_key("stuck")).await;
    // The room still works for everyone else, up to the latest update.
    noisy
        .push(
            &jn,
            room,
            "presence",
            json!({"event": "track", "payload": {"n": "last"}}),
        )
        .await;
    reader
        .until_view(room, |v| {
            v.get("noisy")
                .is_some_and(|m| m.len() == 1 && m[0]["n"] == "last")
        })
        .await;
    assert!(reader.view(room).contains_key("reader"));
    assert_eq!(s.server.registry.get(room, false).unwrap().counts().0, 2);
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_going_away() {
    let s = start().await;
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, Some("a")).await;
    a.track(&ja, ROOM, json!({})).await;
    let mut b = Client::connect(s.addr, 1).await;
    b.heartbeat().await;
    let server = s.server.clone();
    s.shutdown(Duration::from_secs(2)).await;
    assert_eq!(a.expect_closed(Duration::from_secs(2)).await, Some(1001));
    assert_eq!(b.expect_closed(Duration::from_secs(2)).await, Some(1001));
    assert_eq!(
        server.registry.channel_count(),
        0,
        "every membership cleaned up"
    );
}

/// A client's Close frame is answered with a Close (RFC 6455 §5.5.1), not a
/// dropped connection: realtime-py treats the latter as an error and reconnects.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let s = start().await;
    for vsn in [1, 2] {
        let mut c = Client::connect(s.addr, vsn).await;
        c.join(ROOM, Some("closer")).await;
        assert_eq!(c.close_handshake().await, Some(1000));
    }
}

/// RFC 6455 §5.4: a message may come in fragments, with control frames
/// between them. The ping is answered at once, the message read whole.
#[tokio::test]
async fn fragments_with_a_ping_between_them_make_one_message() {
    let s = start().await;
    let mut watcher = Client::connect(s.addr, 2).await;
    let wj = watcher.join(ROOM, Some("watcher")).await;
    let mut raw = RawSocket::connect(s.addr, 2).await;
    let join = json!(["1", "1", ROOM, "phx_join", {"config": {"presence": {"key": "fragmented"}}}])
        .to_string();
    let (a, rest) = join.as_bytes().split_at(10);
    let (b, c) = rest.split_at(10);
    raw.send(OpCode::Data(Data::Text), false, a, true).await;
    raw.send(OpCode::Control(Control::Ping), true, b"are you there", true)
        .await;
    raw.send(OpCode::Data(Data::Continue), false, b, true).await;
    raw.send(OpCode::Data(Data::Continue), true, c, true).await;
    let pong = raw.next().await.expect("a pong");
    assert_eq!(pong.opcode, OpCode::Control(Control::Pong));
    assert_eq!(pong.payload, b"are you there");
    let reply: serde_json::Value =
        serde_json::from_slice(&raw.next_event("phx_reply").await.payload).unwrap();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    raw.send_text(&json!(["1", "2", ROOM, "presence", {"type": "presence", "event": "track", "payload": {"n": 1}}]).to_string())
        .await;
    watcher
        .until_view(ROOM, |v| v.contains_key("fragmented"))
        .await;
    let _ = wj;
}

/// RFC 6455 §5.1: a client frame must be masked. One that is not closes
/// that socket with 1002; the room sees its member leave and goes on.
#[tokio::test]
async fn an_unmasked_frame_closes_that_socket_with_a_protocol_error() {
    let s = start().await;
    let mut canary = Client::connect_canary(s.addr, 2).await;
    let cj = canary.join(ROOM, Some("canary")).await;
    canary.track(&cj, ROOM, json!({"ok": true})).await;
    let mut raw = RawSocket::connect(s.addr, 2).await;
    raw.send_text(
        &json!(["1", "1", ROOM, "phx_join", {"config": {"presence": {"key": "unmasked"}}}])
            .to_string(),
    )
    .await;
    raw.next_event("phx_reply").await;
    raw.send_text(
        &json!(["1", "2", ROOM, "presence", {"type": "presence", "event": "track", "payload": {}}])
            .to_string(),
    )
    .await;
    canary
        .until_view(ROOM, |v| v.contains_key("unmasked"))
        .await;
    raw.send(
        OpCode::Data(Data::Text),
        true,
        b"[null,null,\"phoenix\",\"heartbeat\",{}]",
        false,
    )
    .await;
    let close = loop {
        match raw.next().await {
            Some(f) if f.opcode == OpCode::Control(Control::Close) => break f,
            Some(_) => continue,
            None => panic!("closed without a Close frame"),
        }
    };
    assert_eq!(close.payload[..2], 1002u16.to_be_bytes());
    canary
        .until_view(ROOM, |v| !v.contains_key("unmasked"))
        .await;
    assert!(canary.view(ROOM).contains_key("canary"));
}

/// Every socket gets the same bytes for a shared frame, header and all:
/// one encoding, written behind each socket's own header without a copy.
#[tokio::test]
async fn a_shared_frame_arrives_byte_identical_at_every_socket() {
    let s = start_with(|s| s.limits.max_track_bytes = 128 * 1024).await;
    let mut raws = Vec::new();
    for i in 0..5 {
        let mut raw = RawSocket::connect(s.addr, 2).await;
        raw.send_text(&json!([format!("{i}"), "1", ROOM, "phx_join", {"config": {"presence": {"enabled": true, "key": format!("raw{i}")}}}]).to_string())
            .await;
        raw.next_event("presence_state").await;
        raws.push(raw);
    }
    let mut tracker = Client::connect(s.addr, 2).await;
    let tj = tracker.join(ROOM, Some("tracker")).await;
    // Large enough for a 64-bit length in the header.
    let state = json!({"blob": "y".repeat(70_000)});
    let reply = tracker.track(&tj, ROOM, state.clone()).await;
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.payload);
    let mut seen = Vec::new();
    for raw in &mut raws {
        seen.push(raw.next_event("presence_diff").await);
    }
    let diff: serde_json::Value = serde_json::from_slice(&seen[0].payload).unwrap();
    assert_eq!(
        diff[4]["joins"]["tracker"]["metas"][0]["blob"],
        state["blob"]
    );
    assert!(seen[0].wire.len() > 70_000 + 10);
    for other in &seen[1..] {
        assert_eq!(other.wire, seen[0].wire);
    }
}

/// What browsers, Node's `ws` and Python's `websockets` offer.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

async fn raw_member(
    addr: std::net::SocketAddr,
    offer: Option<&str>,
    key: &str,
) -> (RawSocket, Option<String>) {
    let (mut raw, answer) = RawSocket::connect_offering(addr, 2, offer).await;
    raw.send_text(&json!(["1", "1", ROOM, "phx_join", {"config": {"presence": {"enabled": true, "key": key}}}]).to_string())
        .await;
    raw.next_event("presence_state").await;
    (raw, answer)
}

/// Sockets that negotiated `permessage-deflate` and sockets that did not,
/// in one room: each gets every diff. A large diff is compressed once: the
/// same bytes at every compressing socket, inflating to what the plain
/// socket got; a small one goes uncompressed to all.
#[tokio::test]
async fn compressed_and_plain_sockets_in_one_room_get_the_same_diffs() {
    let s = start().await;
    let mut zipped = Vec::new();
    for i in 0..3 {
        let (raw, answer) = raw_member(s.addr, Some(DEFLATE_OFFER), &format!("z{i}")).await;
        assert_eq!(
            answer.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        zipped.push(raw);
    }
    let (mut plain, answer) = raw_member(s.addr, None, "plain").await;
    assert_eq!(answer, None);
    // A window the node cannot share frames under is declined, not failed.
    let (mut narrow, answer) = raw_member(
        s.addr,
        Some("permessage-deflate; server_max_window_bits=10"),
        "narrow",
    )
    .await;
    assert_eq!(answer, None);

    let mut tracker = Client::connect(s.addr, 2).await;
    let tj = tracker.join(ROOM, Some("tracker")).await;
    let state = json!({"bio": "presence is repetitive JSON; ".repeat(100)});
    tracker.track(&tj, ROOM, state.clone()).await;
    let big: Vec<RawFrame> = {
        let mut got = Vec::new();
        for raw in &mut zipped {
            got.push(raw.next_event("presence_diff").await);
        }
        got
    };
    let plain_big = plain.next_event("presence_diff").await;
    let narrow_big = narrow.next_event("presence_diff").await;
    assert!(big[0].compressed && !plain_big.compressed && !narrow_big.compressed);
    for other in &big[1..] {
        assert_eq!(other.wire, big[0].wire, "compressed once, written as is");
    }
    assert_eq!(big[0].payload, plain_big.payload);
    assert_eq!(narrow_big.wire, plain_big.wire);
    let diff: serde_json::Value = serde_json::from_slice(&big[0].payload).unwrap();
    assert_eq!(diff[4]["joins"]["tracker"]["metas"][0]["bio"], state["bio"]);
    assert!(
        big[0].wire.len() * 5 < plain_big.wire.len(),
        "{} vs {} bytes",
        big[0].wire.len(),
        plain_big.wire.len()
    );

    let mut small = Client::connect(s.addr, 2).await;
    let sj = small.join(ROOM, Some("small")).await;
    small.track(&sj, ROOM, json!({"n": 1})).await;
    for raw in zipped.iter_mut().chain([&mut plain, &mut narrow]) {
        let diff = raw.next_event("presence_diff").await;
        assert!(!diff.compressed, "under the 1,024-byte threshold");
        let diff: serde_json::Value = serde_json::from_slice(&diff.payload).unwrap();
        assert_eq!(diff[4]["joins"]["small"]["metas"][0]["n"], 1);
    }
}

/// With `--compression-min-bytes 0` nothing is negotiated.
#[tokio::test]
async fn compression_can_be_switched_off() {
    let s = start_with(|c| c.compression = None).await;
    let (_raw, answer) = raw_member(s.addr, Some(DEFLATE_OFFER), "z").await;
    assert_eq!(answer, None);
}

/// A client that negotiated compression may send compressed messages (what
/// browsers do for every message): joins and tracks work as plain ones.
#[tokio::test]
async fn a_client_may_send_compressed_messages() {
    let s = start().await;
    let mut watcher = Client::connect(s.addr, 2).await;
    watcher.join(ROOM, Some("watcher")).await;
    let (mut raw, answer) = RawSocket::connect_offering(s.addr, 2, Some(DEFLATE_OFFER)).await;
    assert!(answer.is_some());
    raw.send_compressed(&json!(["1", "1", ROOM, "phx_join", {"config": {"presence": {"enabled": true, "key": "zipped"}}}]).to_string())
        .await;
    let reply: serde_json::Value =
        serde_json::from_slice(&raw.next_event("phx_reply").await.payload).unwrap();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let state = json!({"note": "compressed on the way in ".repeat(40)});
    raw.send_compressed(&json!(["1", "2", ROOM, "presence", {"type": "presence", "event": "track", "payload": state}]).to_string())
        .await;
    watcher
        .until_view(ROOM, |v| {
            v.get("zipped")
                .is_some_and(|m| m[0]["note"] == state["note"])
        })
        .await;
}
