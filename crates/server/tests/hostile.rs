//! Hostile input: each case hurts at most the client that sent it, never the
//! canary member in the same room, and never the server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ROOM: &str = "realtime:hostile";
const SHORT: Duration = Duration::from_millis(300);

async fn canary(addr: std::net::SocketAddr) -> (Client, String) {
    let mut c = Client::connect(addr, 2).await;
    let j = c.join(ROOM, Some("canary")).await;
    c.track(&j, ROOM, json!({"n": 0})).await;
    (c, j)
}

/// The canary still gets its own diffs: the room works.
async fn still_alive(c: &mut Client, j: &str, n: i64) {
    c.track(j, ROOM, json!({"n": n})).await;
    c.until_view(ROOM, |v| v.get("canary").is_some_and(|m| m[0]["n"] == n))
        .await;
}

#[tokio::test]
async fn garbage_json_deep_nesting_and_huge_numbers_are_dropped() {
    let s = start().await;
    let (mut canary, j) = canary(s.addr).await;
    let mut bad = Client::connect(s.addr, 2).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = r#"[null,"1","realtime:hostile","phx_join",{"config":{"presence":{"key":1e400}}}]"#;
    let wrong_types = [
        r#"[1,2,"realtime:hostile","phx_join",{"config":[]}]"#,
        r#"[null,null,"realtime:hostile","phx_join",{"config":{"presence":{"key":{"a":1},"enabled":[1]},"broadcast":"yes","private":7}}]"#,
        r#"[null,"x","realtime:hostile","presence",{"event":["track"],"payload":{}}]"#,
        r#"[null,"y","realtime:hostile","presence",{"event":"track","payload":null}]"#,
        r#"[{},[],"realtime:hostile","phx_leave",{}]"#,
    ];
    bad.send_raw(&deep).await;
    bad.send_raw(huge).await;
    for w in wrong_types {
        bad.send_raw(w).await;
    }
    // Still answering, still sane.
    assert_eq!(bad.heartbeat().await.payload["status"], "ok");
    still_alive(&mut canary, &j, 1).await;
}

#[tokio::test]
async fn oversized_and_invalid_frames_close_only_that_socket() {
    let s = start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let (mut canary, j) = canary(s.addr).await;

    let mut big = Client::connect(s.addr, 2).await;
    big.join(ROOM, Some("big")).await;
    big.send_raw(&format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(100_000)
    ))
    .await;
    big.expect_closed(Duration::from_secs(2)).await;

    // Invalid UTF-8 in a text frame is a protocol error: that socket is closed.
    let mut raw = Client::connect(s.addr, 2).await;
    raw.join(ROOM, Some("raw")).await;
    raw.send_invalid_utf8_text().await;
    raw.expect_closed(Duration::from_secs(2)).await;

    canary
        .until_view(ROOM, |v| !v.contains_key("big") && !v.contains_key("raw"))
        .await;
    still_alive(&mut canary, &j, 2).await;
}

#[tokio::test]
async fn thousands_of_joins_and_track_floods_are_capped() {
    let s = start().await;
    let (mut canary, j) = canary(s.addr).await;
    let mut greedy = Client::connect(s.addr, 2).await;
    for i in 0..1000 {
        greedy.join_raw(&format!("realtime:t{i}"), json!({})).await;
    }
    let mut ok = 0;
    let mut refused = 0;
    while ok + refused < 1000 {
        let got = greedy.recv_event("phx_reply").await;
        match got.payload["status"].as_str() {
            Some("ok") => ok += 1,
            _ => {
                assert_eq!(
                    got.payload["response"]["reason"],
                    "ChannelRateLimitReached: Too many channels"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (100, 900));

    let mut flood = Client::connect(s.addr, 1).await;
    let jf = flood.join(ROOM, Some("flood")).await;
    for i in 0..500 {
        flood
            .push(
                &jf,
                ROOM,
                "presence",
                json!({"event": "track", "payload": {"i": i}}),
            )
            .await;
    }
    flood.recv_event("phx_close").await;
    canary.until_view(ROOM, |v| !v.contains_key("flood")).await;
    still_alive(&mut canary, &j, 3).await;
}

#[tokio::test]
async fn a_channel_presence_state_is_capped_with_a_clear_refusal() {
    let s = start_with(|c| c.limits.max_state_bytes_per_channel = 100).await;
    let (mut canary, j) = canary(s.addr).await; // {"n":0} = 7 bytes
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, Some("a")).await;
    let blob = |n: usize| json!({"b": "x".repeat(n)});
    assert_eq!(a.track(&ja, ROOM, blob(60)).await.payload["status"], "ok");
    let mut b = Client::connect(s.addr, 2).await;
    let jb = b.join(ROOM, Some("b")).await;
    assert_eq!(
        b.track(&jb, ROOM, blob(60)).await.payload,
        json!({"status": "error", "response": {"reason": "PresenceStateFull: This channel's presence state is at its size limit"}})
    );
    // Replacing one's own state counts only the difference.
    assert_eq!(a.track(&ja, ROOM, blob(10)).await.payload["status"], "ok");
    assert_eq!(b.track(&jb, ROOM, blob(40)).await.payload["status"], "ok");
    b.clear_stash();
    b.expect_silence(SHORT).await;
    still_alive(&mut canary, &j, 4).await;
}

/// Slowloris: a connection that never finishes its request headers is cut
/// off after the handshake timeout, and holds nothing after.
#[tokio::test]
async fn trickled_request_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let (mut canary, j) = canary(s.addr).await;
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /realtime/v1/websocket?apikey=x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 response may come first
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(250));
    still_alive(&mut canary, &j, 5).await;
}
