//! Hostile input: each case hurts at most the client that sent it, never the
//! canary member in the same room, and never the server.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const ROOM: &str = "realtime:hostile";

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

/// Garbage gets a reason: a join of the wrong shape an error reply naming
/// the field, a frame that is not JSON (too deep, a number too large) a
/// 1007 close of that socket. The canary's room goes on.
#[tokio::test]
async fn garbage_json_deep_nesting_and_wrong_types_get_a_reason() {
    let s = start().await;
    let (mut canary, j) = canary(s.addr).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = r#"[null,"1","realtime:hostile","phx_join",{"config":{"presence":{"key":1e400}}}]"#;
    for text in [deep.as_str(), huge] {
        let mut bad = Client::connect(s.addr, 2).await;
        bad.send_raw(text).await;
        assert_eq!(bad.expect_closed(WAIT).await, Some(1007));
    }
    let mut bad = Client::connect(s.addr, 2).await;
    let wrong_types = [
        (
            r#"[1,"2","realtime:hostile","phx_join",{"config":[]}]"#,
            "InvalidJoinPayload: config must be an object",
        ),
        (
            r#"[1,"3","realtime:hostile","phx_join",{"config":"{}"}]"#,
            "InvalidJoinPayload: config must be an object",
        ),
        (
            r#"[1,"4","realtime:hostile","phx_join",{"config":{"presence":{"key":{"a":1}}}}]"#,
            "InvalidJoinPayload: config.presence.key must be a string",
        ),
        (
            r#"[null,"5","realtime:hostile","phx_join",{"config":{"presence":{"enabled":[1]},"broadcast":"yes","private":7}}]"#,
            "InvalidJoinPayload: config.broadcast must be an object",
        ),
    ];
    for (text, reason) in wrong_types {
        bad.send_raw(text).await;
        let r = serde_json::from_str::<serde_json::Value>(text).unwrap()[1].clone();
        let reply = bad
            .recv_matching("reply", |g| g.event == "phx_reply" && g.ref_ == r)
            .await;
        assert_eq!(
            reply.payload,
            json!({"status": "error", "response": {"reason": reason}})
        );
    }
    // Still answering, still sane, and in no channel.
    assert_eq!(bad.heartbeat().await.payload["status"], "ok");
    assert_eq!(s.server.registry.get(ROOM, false).unwrap().counts().0, 1);
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

/// The channel cap counts what a snapshot weighs (key and refs included),
/// refuses with a clear reason, and counts only the difference when a
/// member replaces its own state.
#[tokio::test]
async fn a_channel_presence_state_is_capped_with_a_clear_refusal() {
    // The canary weighs 8 + 7 + 96 = 111 bytes; "a" and "b" 3 + 68 + 96 = 167.
    let s = start_with(|c| c.limits.max_state_bytes_per_channel = 480).await;
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
    assert_eq!(b.track(&jb, ROOM, blob(10)).await.payload["status"], "ok");
    still_alive(&mut canary, &j, 4).await;
    canary
        .until_view(ROOM, |v| v.contains_key("a") && v.contains_key("b"))
        .await;
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

// ---------------------------------------------------------------------------
// Issue #14: an attacker holding the publishable key. Each test has a canary
// with realtime-py's 1 MiB message limit in the same room, which must keep
// its presence and its diffs, and a fresh client that must still join and
// track afterwards.

/// A canary that cannot take a message over 1 MiB, as realtime-py.
async fn py_canary(addr: std::net::SocketAddr) -> (Client, String) {
    let mut c = Client::connect_canary(addr, 1).await;
    let j = c.join(ROOM, Some("canary")).await;
    c.track(&j, ROOM, json!({"n": 0})).await;
    (c, j)
}

/// A newcomer still joins, tracks and is seen by the canary.
async fn newcomer_gets_in(addr: std::net::SocketAddr, canary: &mut Client) {
    let mut fresh = Client::connect(addr, 2).await;
    let jf = fresh.join(ROOM, Some("fresh")).await;
    assert_eq!(
        fresh.track(&jf, ROOM, json!({"hi": 1})).await.payload["status"],
        "ok"
    );
    canary
        .until_view(ROOM, |v| v.get("fresh").is_some_and(|m| m[0]["hi"] == 1))
        .await;
}

async fn error_reason(c: &mut Client, r: &str) -> String {
    let reply = c.recv_reply(r).await;
    assert_eq!(reply.payload["status"], "error", "{:?}", reply.raw);
    reply.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Finding 1: a presence key so long that every diff and snapshot would
/// cut realtime-py clients off is refused at the join; so is a broadcast
/// over the payload budget, by WebSocket and by REST.
#[tokio::test]
async fn oversized_keys_and_broadcasts_are_refused_at_the_source() {
    let s = start().await;
    let (mut canary, j) = py_canary(s.addr).await;
    let mut evil = Client::connect(s.addr, 2).await;
    for len in [257, 400_000] {
        let key = "k".repeat(len);
        let r = evil
            .join_raw(
                ROOM,
                json!({"config": {"presence": {"key": key, "enabled": true}}}),
            )
            .await;
        assert_eq!(
            error_reason(&mut evil, &r).await,
            "PresenceKeyTooLong: A presence key may be at most 256 bytes"
        );
    }
    // A key of exactly the budget is fine.
    let jk = evil.join(ROOM, Some(&"k".repeat(256))).await;
    evil.track(&jk, ROOM, json!({})).await;
    // Broadcasts: one byte over the payload budget is refused with a reason.
    let payload = json!({"blob": "x".repeat(256 * 1024)});
    let r = evil
        .push(
            &jk,
            ROOM,
            "broadcast",
            json!({"type": "broadcast", "event": "big", "payload": payload}),
        )
        .await;
    assert!(error_reason(&mut evil, &r)
        .await
        .starts_with("PayloadTooLarge: A broadcast payload may be at most 262144 bytes"));
    let body = serde_json::to_vec(&payload).unwrap();
    let (status, text) = http_post(
        s.addr,
        "/api/broadcast/hostile/events/big",
        &[("apikey", KEY), ("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PayloadTooLarge"), "{text}");
    // An event name over its budget too.
    let r = evil
        .push(
            &jk,
            ROOM,
            "broadcast",
            json!({"type": "broadcast", "event": "e".repeat(256), "payload": {}}),
        )
        .await;
    assert_eq!(
        error_reason(&mut evil, &r).await,
        "EventNameTooLong: An event name may be at most 255 bytes"
    );
    // The canary never saw a frame it could not take, and the room goes on.
    still_alive(&mut canary, &j, 1).await;
    canary
        .until_view(ROOM, |v| v.contains_key(&"k".repeat(256)))
        .await;
    newcomer_gets_in(s.addr, &mut canary).await;
}

/// Finding 2: one REST call cannot carry thousands of messages, and many
/// senders together (REST or WebSocket) are refused once the channel is at
/// its broadcast rate, instead of every member's queue overflowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_floods_are_refused_at_the_channel_not_its_members() {
    // Senders from many addresses: the per-address cap is not what is tested.
    let s = start_with(|c| c.limits.max_broadcasts_per_second_per_ip = 0).await;
    let (mut canary, j) = py_canary(s.addr).await;
    let message = json!({"topic": "hostile", "event": "e", "payload": {"x": 1}});
    let body =
        |n: usize| serde_json::to_vec(&json!({"messages": vec![message.clone(); n]})).unwrap();
    let headers = [("apikey", KEY), ("content-type", "application/json")];
    let (status, text) = http_post(s.addr, "/api/broadcast", &headers, &body(20_000)).await;
    assert_eq!(status, 413, "{text}");
    // Calls of 100 until the channel's second of budget (1,000) is spent.
    let mut accepted = 0;
    let mut throttled = 0;
    for _ in 0..30 {
        match http_post(s.addr, "/api/broadcast", &headers, &body(100)).await {
            (202, _) => accepted += 1,
            (429, text) => {
                assert!(text.contains("broadcast rate"), "{text}");
                throttled += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(accepted >= 10 && throttled > 0, "{accepted} / {throttled}");
    // 150 sockets, each under its own cap of 200 a second, all at once.
    let mut senders = Vec::new();
    for i in 0..150 {
        let mut c = Client::connect(s.addr, 2).await;
        let jc = c.join(ROOM, Some(&format!("s{i}"))).await;
        senders.push((c, jc));
    }
    for (c, jc) in senders.iter_mut() {
        for _ in 0..100 {
            c.push(
                jc,
                ROOM,
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {"x": 1}}),
            )
            .await;
        }
    }
    let mut refused = 0;
    for (c, _) in senders.iter_mut() {
        // Every refused push is answered; stop at a heartbeat sent after them.
        let hb = c.heartbeat().await;
        assert_eq!(hb.payload["status"], "ok");
        refused += c
            .stashed()
            .filter(|g| {
                g.event == "phx_reply"
                    && g.payload["response"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("RateLimited: This channel"))
            })
            .count();
        c.clear_stash();
    }
    assert!(refused > 10_000, "only {refused} of 15,000 pushes refused");
    // No member was dropped: all 151 are still here, and the canary's
    // presence and diffs are fine.
    let channel = s.server.registry.get(ROOM, false).unwrap();
    assert_eq!(channel.counts().0, 151);
    still_alive(&mut canary, &j, 2).await;
    newcomer_gets_in(s.addr, &mut canary).await;
}

/// Finding 9: a few sockets with large states cannot lock everyone else
/// out of a room: large states may fill three quarters of the channel's
/// budget, the rest is kept for ordinary ones.
#[tokio::test]
async fn large_states_cannot_squat_a_room() {
    let s = start_with(|c| c.limits.max_state_bytes_per_channel = 768 * 1024).await;
    let (mut canary, j) = py_canary(s.addr).await;
    let mut squatters = Vec::new();
    let mut refused = 0;
    // 25 × 32 KiB would hold the whole 768 KiB budget.
    for i in 0..25 {
        let mut c = Client::connect(s.addr, 2).await;
        let jc = c.join(ROOM, Some(&format!("squat{i}"))).await;
        let big = json!({"blob": "x".repeat(32 * 1024 - 20)});
        let got = c.track(&jc, ROOM, big).await;
        if got.payload["status"] != "ok" {
            refused += 1;
        }
        squatters.push(c);
    }
    assert!(refused >= 5, "only {refused} large states refused");
    // A hundred ordinary members still get in.
    let mut ordinary = Vec::new();
    for i in 0..100 {
        let mut c = Client::connect(s.addr, 2).await;
        let jc = c.join(ROOM, Some(&format!("user{i}"))).await;
        let state =
            json!({"name": format!("user {i}"), "status": "online", "at": "2026-12-01T00:00:00Z"});
        assert_eq!(c.track(&jc, ROOM, state).await.payload["status"], "ok");
        ordinary.push(c);
    }
    canary.until_view(ROOM, |v| v.contains_key("user99")).await;
    still_alive(&mut canary, &j, 3).await;
}

/// Finding 12 (and a budget beyond the list): a socket sending frames
/// faster than its frame rate is closed, alone.
#[tokio::test]
async fn a_frame_flood_closes_only_that_socket() {
    let s = start().await;
    let (mut canary, j) = py_canary(s.addr).await;
    let mut flood = Client::connect(s.addr, 2).await;
    for i in 0..1500 {
        let heartbeat = format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#);
        if !flood.try_send_raw(&heartbeat).await {
            break;
        }
    }
    // The first second's worth is answered, then the socket is closed.
    assert_eq!(flood.expect_closed(WAIT).await, Some(1008));
    still_alive(&mut canary, &j, 4).await;
    newcomer_gets_in(s.addr, &mut canary).await;
}

/// A `roster` process of its own, so that its memory can be read from /proc.
struct Spawned {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Spawned {
    async fn start(flags: &[&str]) -> Spawned {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--log", "warn"])
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("roster starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = lines.next_line().await.unwrap().expect("a first line");
        let addr = first
            .strip_prefix("roster listening on http://")
            .expect("the listening line")
            .parse()
            .unwrap();
        // Keep reading so that the banner never blocks the server.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Spawned { child, addr }
    }

    /// Peak resident memory so far, in MB (VmHWM).
    fn peak_rss_mb(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb / 1024
    }
}

/// Finding 3: joins with topics far over the budget are refused before
/// anything of them is kept: 400 joins with 400 KB topics leave the node's
/// memory where it was (they cost about 1.6 MB each when topics were kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_topics_are_refused_before_they_are_kept() {
    let node = Spawned::start(&[]).await;
    let (mut canary, j) = py_canary(node.addr).await;
    let before = node.peak_rss_mb();
    let mut attackers = Vec::new();
    for a in 0..4 {
        let addr = node.addr;
        attackers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, 2).await;
            for i in 0..100 {
                let topic = format!("realtime:{a}-{i}-{}", "t".repeat(400_000));
                let r = c.join_raw(&topic, json!({})).await;
                let reason = error_reason(&mut c, &r).await;
                assert_eq!(reason, "TopicNameTooLong: A topic may be at most 255 bytes");
            }
        }));
    }
    for a in attackers {
        a.await.unwrap();
    }
    let after = node.peak_rss_mb();
    assert!(
        after < before + 60,
        "peak RSS went from {before} MB to {after} MB"
    );
    still_alive(&mut canary, &j, 5).await;
    newcomer_gets_in(node.addr, &mut canary).await;
}

/// Finding 8: outbound memory is bounded in bytes. Sockets that never read
/// while asking for snapshot after snapshot of a room of ~360 KB are
/// dropped, at their byte budget or their write timeout, and the node's
/// memory stays near N × budget (before: 500 snapshots each, about 1 GB for six).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_read_cost_at_most_their_byte_budget() {
    let node = Spawned::start(&[]).await;
    let (mut canary, j) = py_canary(node.addr).await;
    // Fill the room's state with large states, as far as the fair share lets.
    let mut fillers = Vec::new();
    for i in 0..11 {
        let mut c = Client::connect(node.addr, 2).await;
        let jc = c.join(ROOM, Some(&format!("fill{i}"))).await;
        let big = json!({"blob": "x".repeat(32 * 1024 - 200)});
        assert_eq!(c.track(&jc, ROOM, big).await.payload["status"], "ok");
        fillers.push(c);
    }
    let before = node.peak_rss_mb();
    let mut readers_that_never_read = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(node.addr, 2).await;
        for _ in 0..500 {
            let join = json!({"config": {"presence": {"enabled": true, "key": ""}}});
            if !c
                .try_send_raw(&json!([null, "1", ROOM, "phx_join", join]).to_string())
                .await
            {
                break;
            }
        }
        readers_that_never_read.push(c);
    }
    // The node drops each of them without their reading a thing: at its
    // byte budget (4 MiB) if their own joins fill it, or once a write has
    // waited the write timeout (a socket reads nothing while its write
    // waits, so a client that does not read cannot push more work in).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(node.addr, "/metrics").await;
        let dropped: u64 = ["overflow", "write_stalled"]
            .iter()
            .filter_map(|reason| {
                let line = format!("roster_disconnects_total{{reason=\"{reason}\"}} ");
                let at = metrics.find(&line)? + line.len();
                metrics[at..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        if dropped == 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in readers_that_never_read.iter_mut() {
        c.expect_closed(WAIT).await;
    }
    let after = node.peak_rss_mb();
    assert!(
        after < before + 6 * 4 + 60,
        "peak RSS went from {before} MB to {after} MB"
    );
    still_alive(&mut canary, &j, 6).await;
    newcomer_gets_in(node.addr, &mut canary).await;
}

/// Last seen is bounded: a client cycling through many distinct keys only
/// pushes the oldest remembered ones out; the cap holds and the canary's
/// presence is untouched.
#[tokio::test]
async fn many_distinct_keys_leaving_stay_within_the_last_seen_cap() {
    const CAP: usize = 50;
    const KEYS: usize = 300;
    let s = start_with(|s| {
        s.presence_features.last_seen_keys = CAP;
        s.limits.presence_calls_per_window = 10_000;
    })
    .await;
    let (mut canary, j) = canary(s.addr).await;
    let mut evil = Client::connect(s.addr, 2).await;
    for i in 0..KEYS {
        let key = format!("evil-{i}");
        let je = evil.join(ROOM, Some(&key)).await;
        evil.track(&je, ROOM, json!({})).await;
        let r = evil.push(&je, ROOM, "phx_leave", json!({})).await;
        evil.recv_reply(&r).await;
    }
    let keys: Vec<String> = (0..KEYS).map(|i| format!("evil-{i}")).collect();
    let body = json!({"keys": keys, "topics": ["hostile"]}).to_string();
    let (status, text) = http_request(
        s.addr,
        "POST",
        "/api/presence/query",
        &[
            ("apikey", roster_server::settings::DEV_SECRET_KEY),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seen = got["last_seen_at"].as_object().unwrap();
    assert_eq!(seen.len(), CAP, "the cap holds");
    assert!(
        seen.contains_key(&format!("evil-{}", KEYS - 1)),
        "the newest stay"
    );
    assert!(!seen.contains_key("evil-0"), "the oldest go");
    assert_eq!(got["online"]["evil-0"], json!([]));
    still_alive(&mut canary, &j, 1).await;
}

/// `permessage-deflate` is no way around the message budget: a small frame
/// that inflates past it closes that socket with 1009 once the limit is
/// passed, and compressed bits from a socket that never negotiated
/// compression are a protocol error (1002). The canary's room goes on.
#[tokio::test]
async fn a_compression_bomb_closes_only_that_socket() {
    use roster_protocol::websocket::{client_frame, deflate};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let s = start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let (mut canary, j) = canary(s.addr).await;
    // 16 MiB of spaces deflate to about 16 KB: far under the budget.
    let bomb = deflate(&vec![b' '; 16 << 20], 9).unwrap();
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let frame = client_frame(OpCode::Data(Data::Text), true, &bomb, [1, 2, 3, 4]);
    let offer = Some("permessage-deflate; client_max_window_bits");
    let (mut bomber, answer) = RawSocket::connect_offering(s.addr, 2, offer).await;
    assert!(answer.is_some());
    bomber.send_wire(&frame).await;
    assert_eq!(bomber.close_code().await, Some(1009));
    let (mut unnegotiated, answer) = RawSocket::connect_offering(s.addr, 2, None).await;
    assert_eq!(answer, None);
    let small = deflate("heartbeat ".repeat(20).as_bytes(), 1).unwrap();
    unnegotiated
        .send_wire(&client_frame(
            OpCode::Data(Data::Text),
            true,
            &small,
            [1, 2, 3, 4],
        ))
        .await;
    assert_eq!(unnegotiated.close_code().await, Some(1002));
    still_alive(&mut canary, &j, 9).await;
    assert_eq!(s.server.registry.get(ROOM, false).unwrap().counts().0, 1);
}
