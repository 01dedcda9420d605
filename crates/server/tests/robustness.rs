//! Failure and load behaviour: concurrent joins stay exact, a client that
//! never reads is cut off without hurting the room, shutdown closes cleanly.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

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
