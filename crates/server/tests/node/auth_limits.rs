//! Token refresh and expiry (docs/protocol.md §3.6) and the limits (§7).
//! Every test keeps a canary member in the room and checks that it still
//! gets presence diffs while another client is refused or shut down.

use std::time::Duration;

use crate::common::*;
use roster_server::settings::DEV_JWT_SECRET;
use serde_json::{json, Value};

const ROOM: &str = "realtime:guarded";

fn token(exp_in: i64) -> String {
    let exp = now() as i64 + exp_in;
    jwt(json!({"role": "authenticated", "exp": exp}), DEV_JWT_SECRET)
}

async fn canary(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr, 2).await;
    let j = c.join(ROOM, Some("canary")).await;
    c.track(&j, ROOM, json!({"alive": true})).await;
    c
}

/// Expect the shutdown sequence: `system` error with `message`, then `phx_close`.
async fn expect_shutdown(c: &mut Client, join_ref: &str, message: &str) {
    let system = c.recv_event("system").await;
    assert_eq!(system.ref_, Value::Null);
    assert_eq!(
        system.payload,
        json!({"extension": "system", "status": "error", "message": message, "channel": "guarded"})
    );
    let close = c.recv_event("phx_close").await;
    assert_eq!(close.ref_, json!(join_ref));
}

async fn join_with_token(c: &mut Client, key: &str, token: &str) -> String {
    let r = c
        .join_raw(
            ROOM,
            json!({"config": {"presence": {"enabled": true, "key": key}}, "access_token": token}),
        )
        .await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    r
}

#[tokio::test]
async fn access_token_refresh_keeps_the_channel_and_a_bad_one_ends_it() {
    let s = start().await;
    let mut canary = canary(s.addr).await;
    let first = token(2);
    let mut c = Client::connect(s.addr, 1).await;
    let j = join_with_token(&mut c, "user", &first).await;
    c.track(&j, ROOM, json!({})).await;
    // The marker: a channel on the same token, never refreshed.
    let mut stale = Client::connect(s.addr, 2).await;
    let js = join_with_token(&mut stale, "stale", &first).await;
    canary.until_view(ROOM, |v| v.contains_key("user")).await;
    // Refresh before expiry: no reply at all. sb_ keys and null are ignored too.
    c.push(&j, ROOM, "access_token", json!({"access_token": token(60)}))
        .await;
    c.push(
        &j,
        ROOM,
        "access_token",
        json!({"access_token": "sb_publishable_dev"}),
    )
    .await;
    c.push(&j, ROOM, "access_token", json!({"access_token": null}))
        .await;
    c.clear_stash();
    // The first token's expiry has come: the unrefreshed channel ends...
    let system = stale.recv_event("system").await;
    assert!(
        system.payload["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Token has expired")),
        "{:?}",
        system.raw
    );
    assert_eq!(stale.recv_event("phx_close").await.ref_, json!(js));
    // ...the refreshed one does not (its timer was due at the same instant).
    c.expect_nothing_pending().await;
    // A fresh view: the canary's own update comes after any earlier leave.
    canary.track("1", ROOM, json!({"alive": "later"})).await;
    canary
        .until_view(ROOM, |v| v["canary"][0]["alive"] == "later")
        .await;
    assert!(
        canary.view(ROOM).contains_key("user"),
        "still present after the first token expired"
    );
    // An invalid token ends the channel, and its presence leaves.
    c.push(
        &j,
        ROOM,
        "access_token",
        json!({"access_token": "not-a-jwt"}),
    )
    .await;
    expect_shutdown(&mut c, &j, "The token provided is not a valid JWT").await;
    canary.until_view(ROOM, |v| !v.contains_key("user")).await;
    assert!(canary.view(ROOM).contains_key("canary"));
}

#[tokio::test]
async fn an_expiring_token_shuts_the_channel_down() {
    let s = start().await;
    let mut canary = canary(s.addr).await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = join_with_token(&mut c, "short", &token(1)).await;
    c.track(&j, ROOM, json!({})).await;
    let system = c.recv_event("system").await;
    let message = system.payload["message"].as_str().unwrap();
    assert!(
        message.starts_with("Token has expired ") && message.ends_with(" seconds ago"),
        "{message}"
    );
    assert_eq!(system.payload["channel"], "guarded");
    assert_eq!(system.join_ref, json!(j));
    assert_eq!(c.recv_event("phx_close").await.ref_, json!(j));
    canary.until_view(ROOM, |v| !v.contains_key("short")).await;

    // A socket opened with a JWT: its channels end when that JWT expires.
    let url = url(
        s.addr,
        "/realtime/v1/websocket",
        &format!("apikey={}&vsn=2.0.0", token(1)),
    );
    let mut jwt_socket = Client::connect_url(&url, 2).await.unwrap();
    let j = jwt_socket.join(ROOM, Some("socket-jwt")).await;
    let system = jwt_socket.recv_event("system").await;
    assert!(system.payload["message"]
        .as_str()
        .unwrap()
        .starts_with("Token has expired"));
    assert_eq!(jwt_socket.recv_event("phx_close").await.ref_, json!(j));
}

#[tokio::test]
async fn presence_rate_and_track_size_limits_shut_down_without_reply() {
    let s = start_with(|c| {
        c.limits.presence_calls_per_window = 3;
        c.limits.max_track_bytes = 64;
    })
    .await;
    let mut canary = canary(s.addr).await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("spammy")).await;
    for i in 0..2 {
        c.track(&j, ROOM, json!({"i": i})).await;
    }
    c.clear_stash();
    // Third call is fine, the fourth within the window ends the channel, with no reply.
    c.track(&j, ROOM, json!({"i": 2})).await;
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"i": 3}}),
        )
        .await;
    expect_shutdown(&mut c, &j, "Client presence rate limit exceeded").await;
    // Nothing answers the offending push.
    let offending = json!(r);
    assert!(!c
        .stashed()
        .any(|g| g.event == "phx_reply" && g.ref_ == offending));
    c.clear_stash();
    c.expect_nothing_pending().await;
    canary.until_view(ROOM, |v| !v.contains_key("spammy")).await;

    // A rejoin does not start a new window: still over it.
    let j = c.join(ROOM, Some("spammy")).await;
    c.push(
        &j,
        ROOM,
        "presence",
        json!({"event": "track", "payload": {}}),
    )
    .await;
    expect_shutdown(&mut c, &j, "Client presence rate limit exceeded").await;
    c.clear_stash();

    // Oversized state (a socket with a fresh window): refused the same way;
    // the canary keeps working.
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("big")).await;
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"blob": "x".repeat(100)}}),
        )
        .await;
    expect_shutdown(&mut c, &j, "Track message size exceeded").await;
    let offending = json!(r);
    assert!(!c
        .stashed()
        .any(|g| g.event == "phx_reply" && g.ref_ == offending));
    c.clear_stash();
    c.expect_nothing_pending().await;
    canary.track("1", ROOM, json!({"alive": "still"})).await;
    canary
        .until_view(ROOM, |v| {
            v["canary"][0]["alive"] == "still" && !v.contains_key("big")
        })
        .await;
    // Operators see both shutdowns, by cause.
    let (_, metrics) = http_get(s.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"roster_channel_shutdowns_total{reason="presence_rate"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"roster_channel_shutdowns_total{reason="track_size"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn channel_and_member_caps_refuse_joins_with_coded_reasons() {
    let s = start_with(|c| {
        c.limits.max_channels_per_socket = 2;
        c.limits.max_members_per_channel = 2;
    })
    .await;
    let mut canary = canary(s.addr).await;
    let mut c = Client::connect(s.addr, 1).await;
    c.join("realtime:a", None).await;
    c.join("realtime:b", None).await;
    let r = c.join_raw("realtime:c", json!({})).await;
    assert_eq!(
        c.recv_reply(&r).await.payload,
        json!({"status": "error", "response": {"reason": "ChannelRateLimitReached: Too many channels"}})
    );
    // Rejoining a topic already joined is not a new channel.
    let r = c.join_raw("realtime:a", json!({})).await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");

    let mut second = Client::connect(s.addr, 2).await;
    second.join(ROOM, Some("second")).await;
    let mut third = Client::connect(s.addr, 2).await;
    let r = third.join_raw(ROOM, json!({})).await;
    assert_eq!(
        third.recv_reply(&r).await.payload["response"]["reason"],
        "TooManyMembers: This channel is full"
    );
    third.expect_nothing_pending().await;
    canary.track("1", ROOM, json!({"n": 2})).await;
    canary.until_view(ROOM, |v| v["canary"][0]["n"] == 2).await;
}

#[tokio::test]
async fn connection_caps_refuse_the_upgrade_with_429() {
    let s = start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let mut a = Client::connect(s.addr, 2).await;
    let _b = Client::connect(s.addr, 2).await;
    match Client::connect_attempt(s.addr, 2).await_err().await {
        (429, body) => assert_eq!(
            body,
            json!({"error": "Too many connections from this address"})
        ),
        other => panic!("{other:?}"),
    }
    a.heartbeat().await;
    a.close().await;
    // A place frees up when a socket ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let u = url(
            s.addr,
            "/realtime/v1/websocket",
            &format!("apikey={KEY}&vsn=2.0.0"),
        );
        if Client::connect_url(&u, 2).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let s = start_with(|c| c.limits.max_connections = 1).await;
    let _only = Client::connect(s.addr, 1).await;
    let (status, body) = Client::connect_attempt(s.addr, 1).await_err().await;
    assert_eq!(
        (status, body),
        (429, json!({"error": "Too many connected users"}))
    );
}

#[tokio::test]
async fn join_rate_refuses_then_disconnects_and_event_rate_shuts_the_channel() {
    let s = start_with(|c| {
        c.limits.max_joins_per_second = 2;
        c.limits.max_events_per_second_per_socket = 5;
    })
    .await;
    let mut canary = canary(s.addr).await;
    // Start from a fresh one-second window, then three joins in a burst.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut greedy = Client::connect(s.addr, 2).await;
    let refs: Vec<String> = {
        let mut refs = Vec::new();
        for topic in ["realtime:j1", "realtime:j2", "realtime:j3"] {
            refs.push(greedy.join_raw(topic, json!({})).await);
        }
        refs
    };
    assert_eq!(greedy.recv_reply(&refs[0]).await.payload["status"], "ok");
    assert_eq!(greedy.recv_reply(&refs[1]).await.payload["status"], "ok");
    assert_eq!(
        greedy.recv_reply(&refs[2]).await.payload["response"]["reason"],
        "ClientJoinRateLimitReached: Too many joins per second"
    );
    assert_eq!(
        greedy.expect_closed(Duration::from_secs(2)).await,
        Some(1008)
    );

    // Broadcasts: the sixth within a second ends the sender's channel.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut chatty = Client::connect(s.addr, 1).await;
    let j = chatty.join(ROOM, Some("chatty")).await;
    for i in 0..6 {
        chatty
            .push(
                &j,
                ROOM,
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {"i": i}}),
            )
            .await;
    }
    expect_shutdown(&mut chatty, &j, "Too many messages per second").await;
    // The canary got the five allowed ones, and keeps working.
    for _ in 0..5 {
        assert_eq!(canary.recv_event("broadcast").await.payload["event"], "e");
    }
    canary.track("1", ROOM, json!({"alive": "after"})).await;
    canary
        .until_view(ROOM, |v| v["canary"][0]["alive"] == "after")
        .await;
}

#[tokio::test]
async fn node_wide_presence_event_rate_shuts_the_offending_channel() {
    let s = start_with(|c| c.limits.max_presence_events_per_second = 3).await;
    // Start from a fresh window: the canary's own track counts too.
    let mut canary = canary(s.addr).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut busy = Client::connect(s.addr, 2).await;
    let j = busy.join(ROOM, Some("busy")).await;
    for i in 0..4 {
        busy.push(
            &j,
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"i": i}}),
        )
        .await;
    }
    expect_shutdown(&mut busy, &j, "Too many presence messages per second").await;
    canary.until_view(ROOM, |v| !v.contains_key("busy")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    canary.track("1", ROOM, json!({"alive": "later"})).await;
    canary
        .until_view(ROOM, |v| v["canary"][0]["alive"] == "later")
        .await;
}

// ---- Issue #14: crafted topics, odd token claims, silent connections, logs ----

/// A realtime-py-like canary member of `ROOM` (1 MiB message limit).
async fn py_canary(addr: std::net::SocketAddr) -> (Client, String) {
    let mut c = Client::connect_canary(addr, 2).await;
    let j = c.join(ROOM, Some("canary")).await;
    c.track(&j, ROOM, json!({"n": 0})).await;
    (c, j)
}

/// The canary still answers heartbeats, keeps its presence and sees its own diff.
async fn canary_still_alive(c: &mut Client, j: &str, n: i64) {
    assert_eq!(c.heartbeat().await.payload["status"], "ok");
    c.track(j, ROOM, json!({"n": n})).await;
    c.until_view(ROOM, |v| v.get("canary").is_some_and(|m| m[0]["n"] == n))
        .await;
}

/// A new client can still connect, join and track.
async fn fresh_client_works(addr: std::net::SocketAddr, key: &str) {
    let mut c = Client::connect(addr, 2).await;
    let j = c.join(ROOM, Some(key)).await;
    assert_eq!(c.track(&j, ROOM, json!({})).await.payload["status"], "ok");
    c.until_view(ROOM, |v| v.contains_key(key)).await;
}

/// Finding 4: with a policy of several stars, private joins with long
/// topics of repeated literals used to backtrack for tens of seconds, and
/// the whole node with them.
#[tokio::test]
async fn crafted_private_topics_do_not_stall_the_node() {
    let s = start_with(|c| {
        c.max_message_bytes = 1_000_000;
        // Past the topic budget, so that the topics reach the matcher.
        c.limits.max_topic_bytes = 1_000_000;
        let policies: toml::Table =
            toml::from_str("[[p]]\ntopic = \"org:*:team:*:chat\"\nallow = [\"presence-read\"]\n")
                .unwrap();
        c.policies = policies["p"].clone().try_into().unwrap();
    })
    .await;
    let (mut canary, j) = py_canary(s.addr).await;
    let mut attacker = Client::connect(s.addr, 2).await;
    let crafted = format!("realtime:org:{}", ":team:".repeat(200_000 / 6));
    let started = std::time::Instant::now();
    let refs = [
        attacker
            .join_raw(&crafted, json!({"config": {"private": true}}))
            .await,
        attacker
            .join_raw(&format!("{crafted}x"), json!({"config": {"private": true}}))
            .await,
    ];
    canary_still_alive(&mut canary, &j, 1).await;
    for r in refs {
        let reply = attacker.recv_reply(&r).await.payload;
        assert_eq!(reply["status"], "error");
        assert!(reply["response"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized: "));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A long topic that matches is granted as fast.
    let matching = format!("realtime:org:{}:chat", ":team:".repeat(200_000 / 6));
    let r = attacker
        .join_raw(&matching, json!({"config": {"private": true}}))
        .await;
    assert_eq!(attacker.recv_reply(&r).await.payload["status"], "ok");
    canary_still_alive(&mut canary, &j, 2).await;
    fresh_client_works(s.addr, "fresh").await;
}

/// Findings 5 and 6: odd claims in correctly signed tokens are refused with
/// a clear reason (an `exp` above 2^63 used to panic the socket's task, a
/// fractional one never expired, a future `nbf` was accepted), and
/// `--jwt-audience` / `--jwt-issuer` are enforced.
#[tokio::test]
async fn odd_token_claims_are_refused_cleanly_and_a_fractional_exp_expires() {
    let s = start().await;
    let (mut canary, cj) = py_canary(s.addr).await;
    let mut c = Client::connect(s.addr, 2).await;
    let t = now();
    let refused = [
        (
            json!({"role": "authenticated", "exp": (1u64 << 63) + 1}),
            "InvalidJWTToken: Invalid JWT claim: exp",
        ),
        (
            json!({"role": "authenticated", "exp": u64::MAX}),
            "InvalidJWTToken: Invalid JWT claim: exp",
        ),
        (
            json!({"role": "authenticated", "exp": 1e300}),
            "InvalidJWTToken: Invalid JWT claim: exp",
        ),
        (
            json!({"role": "authenticated", "exp": "soon"}),
            "InvalidJWTToken: Invalid JWT claim: exp",
        ),
        (
            json!({"role": "authenticated", "exp": t + 60, "nbf": t + 30}),
            "InvalidJWTToken: Token is not valid yet",
        ),
        (
            json!({"role": "authenticated", "exp": t + 60, "nbf": "now"}),
            "InvalidJWTToken: Invalid JWT claim: nbf",
        ),
    ];
    for (claims, reason) in refused {
        let r = c
            .join_raw(
                ROOM,
                json!({"access_token": jwt(claims.clone(), DEV_JWT_SECRET)}),
            )
            .await;
        assert_eq!(
            c.recv_reply(&r).await.payload["response"]["reason"],
            reason,
            "{claims}"
        );
    }
    // The same at connect: 401 with the reason.
    let huge = jwt(
        json!({"role": "authenticated", "exp": (1u64 << 63) + 1}),
        DEV_JWT_SECRET,
    );
    let u = url(
        s.addr,
        "/realtime/v1/websocket",
        &format!("apikey={huge}&vsn=2.0.0"),
    );
    match Client::connect_url(&u, 2).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value = serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
            assert_eq!(body, json!({"error": "Invalid JWT claim: exp"}));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A fractional exp is enforced: the channel ends when it passes.
    let soon = jwt(
        json!({"role": "authenticated", "exp": now() as f64 + 1.5}),
        DEV_JWT_SECRET,
    );
    let j = join_with_token(&mut c, "fractional", &soon).await;
    c.track(&j, ROOM, json!({})).await;
    canary
        .until_view(ROOM, |v| v.contains_key("fractional"))
        .await;
    let system = c.recv_event("system").await;
    assert!(system.payload["message"]
        .as_str()
        .unwrap()
        .starts_with("Token has expired"));
    assert_eq!(c.recv_event("phx_close").await.ref_, json!(j));
    canary
        .until_view(ROOM, |v| !v.contains_key("fractional"))
        .await;
    // The latest exp accepted works, and its far-off timer is no trouble.
    let last = jwt(
        json!({"role": "authenticated", "exp": roster_server::MAX_NUMERIC_DATE}),
        DEV_JWT_SECRET,
    );
    let j = join_with_token(&mut c, "long-lived", &last).await;
    c.track(&j, ROOM, json!({})).await;
    assert_eq!(c.heartbeat().await.payload["status"], "ok");
    canary_still_alive(&mut canary, &cj, 1).await;
    fresh_client_works(s.addr, "fresh").await;
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required() {
    let s = start_with(|c| {
        c.jwt.audience = Some("roster".into());
        c.jwt.issuer = Some("https://auth.example".into());
    })
    .await;
    let (mut canary, j) = py_canary(s.addr).await;
    let connect = |claims: Value| {
        let token = jwt(claims, DEV_JWT_SECRET);
        let u = url(
            s.addr,
            "/realtime/v1/websocket",
            &format!("apikey={token}&vsn=2.0.0"),
        );
        async move {
            match Client::connect_url(&u, 2).await {
                Ok(_) => None,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Some((
                    resp.status().as_u16(),
                    serde_json::from_slice::<Value>(resp.body().as_ref().unwrap()).unwrap(),
                )),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let exp = now() + 60;
    let iss = "https://auth.example";
    assert_eq!(
        connect(json!({"role": "authenticated", "exp": exp, "iss": iss, "aud": "roster"})).await,
        None
    );
    assert_eq!(
        connect(json!({"role": "authenticated", "exp": exp, "iss": iss, "aud": ["x", "roster"]}))
            .await,
        None
    );
    assert_eq!(
        connect(json!({"role": "authenticated", "exp": exp, "iss": iss})).await,
        Some((401, json!({"error": "Missing JWT claim: aud"})))
    );
    assert_eq!(
        connect(json!({"role": "authenticated", "exp": exp, "iss": iss, "aud": "other"})).await,
        Some((401, json!({"error": "Invalid JWT claim: aud"})))
    );
    assert_eq!(
        connect(json!({"role": "authenticated", "exp": exp, "aud": "roster"})).await,
        Some((401, json!({"error": "Missing JWT claim: iss"})))
    );
    canary_still_alive(&mut canary, &j, 1).await;
}

/// Read one HTTP/1.1 response (with a Content-Length) from a kept-alive connection.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a full response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Wait until the server closes `stream`; how long that took.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {within:?}"));
    started.elapsed()
}

/// Connect until the server takes a WebSocket again (places free up as
/// connections close).
async fn connects_again(addr: std::net::SocketAddr) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let u = url(
            addr,
            "/realtime/v1/websocket",
            &format!("apikey={KEY}&vsn=2.0.0"),
        );
        if let Ok(c) = Client::connect_url(&u, 2).await {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place freed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 7: a TCP connection that sends nothing used to stay open for
/// minutes, uncounted by the connection caps, until the node ran out of
/// file descriptors. Now every accepted connection counts from accept to
/// close, and one without a request by the handshake timeout is closed.
#[tokio::test]
async fn silent_connections_count_against_the_caps_and_are_cut_at_the_handshake_timeout() {
    let s = start_with(|c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.limits.max_connections_per_ip = 4;
    })
    .await;
    let (mut canary, j) = py_canary(s.addr).await;
    let opened = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    // The canary and three silent connections fill this address's four places.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        Client::connect_attempt(s.addr, 2).await_err().await,
        (
            429,
            json!({"error": "Too many connections from this address"})
        )
    );
    // A silent one over the cap is closed too, not held.
    let mut over = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    closed_by_server(&mut over, Duration::from_secs(3)).await;
    for stream in &mut silent {
        closed_by_server(stream, Duration::from_secs(3)).await;
    }
    let lifetime = opened.elapsed();
    assert!(
        lifetime >= Duration::from_millis(450) && lifetime < Duration::from_secs(2),
        "{lifetime:?}"
    );
    canary_still_alive(&mut canary, &j, 1).await;
    // Their places are free again.
    let mut fresh = connects_again(s.addr).await;
    let fj = fresh.join(ROOM, Some("fresh")).await;
    fresh.track(&fj, ROOM, json!({})).await;
    canary.until_view(ROOM, |v| v.contains_key("fresh")).await;
}

/// Plain HTTP counts too, and a kept-alive REST connection stays usable,
/// counted once.
#[tokio::test]
async fn kept_alive_http_connections_count_once_and_keep_working() {
    use tokio::io::AsyncWriteExt;
    let s = start_with(|c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.limits.max_connections_per_ip = 2;
    })
    .await;
    let (mut canary, j) = py_canary(s.addr).await;
    let mut kept = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    for _ in 0..4 {
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: roster\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut kept).await, (200, "ok".into()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The canary's socket and the kept-alive connection fill both places.
    assert_eq!(
        Client::connect_attempt(s.addr, 2).await_err().await,
        (
            429,
            json!({"error": "Too many connections from this address"})
        )
    );
    // Idle past the header timeout between requests: closed, and its place freed.
    closed_by_server(&mut kept, Duration::from_secs(3)).await;
    let fresh = connects_again(s.addr).await;
    drop(fresh);
    canary_still_alive(&mut canary, &j, 1).await;
}

/// A `roster` process of this build, on a free port; its stderr is collected.
struct Spawned {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Spawned {
    /// `roster serve --listen 127.0.0.1:0 ARGS`, under `ulimit -n` when given.
    fn start(args: &[&str], max_open_files: Option<u32>) -> Spawned {
        use std::io::{BufRead, Read};
        use std::process::{Command, Stdio};
        let bin = env!("CARGO_BIN_EXE_roster");
        let mut cmd = match max_open_files {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("ROSTER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("roster starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("roster listening on http://")
            .unwrap_or_else(|| panic!("unexpected banner {first:?}"))
            .parse()
            .unwrap();
        // Keep both pipes drained so the child never blocks on a write.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Spawned {
            child,
            addr,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finding 7, file descriptors: with the process out of them, the accept
/// loop backs off (no busy loop, no crash), existing sockets keep working,
/// and once the silent connections are cut, new ones (and `/health`) are
/// served again.
#[tokio::test]
async fn out_of_file_descriptors_the_node_backs_off_and_recovers() {
    let node = Spawned::start(
        &["--dev", "--log", "info", "--handshake-timeout-ms", "500"],
        Some(64),
    );
    let (mut canary, j) = py_canary(node.addr).await;
    // Far more silent connections than the process has descriptors for: the
    // kernel queues what the node cannot accept yet.
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    let exhausted = tokio::time::Instant::now() + Duration::from_secs(3);
    while !node.stderr().contains("accept failed") {
        assert!(tokio::time::Instant::now() < exhausted, "{}", node.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the existing socket is served.
    canary_still_alive(&mut canary, &j, 1).await;
    // Every silent connection is cut in turn, and service comes back.
    for stream in &mut silent {
        closed_by_server(stream, Duration::from_secs(10)).await;
    }
    drop(silent);
    assert_eq!(http_get(node.addr, "/health").await, (200, "ok".into()));
    canary_still_alive(&mut canary, &j, 2).await;
    fresh_client_works(node.addr, "fresh").await;
    let log = node.stderr();
    assert!(log.contains("Too many open files"), "{log}");
    // Backing off 50 ms a time, not spinning: a few dozen warnings, not thousands.
    let warnings = log.matches("accept failed").count();
    assert!(warnings < 500, "{warnings} accept warnings");
}

/// Finding 11: `--log trace` wrote whole frames (tungstenite logs them at
/// trace), access tokens included. No credential reaches the log at any
/// level: not the socket's `apikey`, a join's `access_token`, a REST
/// call's `Authorization` or `apikey` header, nor what a webhook URL
/// carries in its user info, path or query (a failed delivery names only
/// the URL's scheme, host and port).
#[tokio::test]
async fn trace_logs_hold_no_credentials() {
    let (publishable, secret, jwt_secret) = (
        "sb_publishable_leak_p1",
        "sb_secret_leak_s2",
        "leak-jwt-secret-j3",
    );
    // A receiver that is not there, so the first delivery fails and is logged.
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook_url =
        format!("http://hook-user:leak-pass-w5@127.0.0.1:{hook_port}/t/leak-path-w6?k=leak-q-w7");
    let node = Spawned::start(
        &[
            "--log",
            "trace",
            "--publishable-key",
            publishable,
            "--secret-key",
            secret,
            "--jwt-secret",
            jwt_secret,
            "--webhook-url",
            &hook_url,
            "--webhook-secret",
            "leak-whsec-w8",
        ],
        None,
    );
    let token = jwt(
        json!({"role": "authenticated", "exp": now() + 600, "sub": "leak-sub-t4"}),
        jwt_secret,
    );
    let u = url(
        node.addr,
        "/realtime/v1/websocket",
        &format!("apikey={publishable}&vsn=2.0.0"),
    );
    let mut c = Client::connect_url(&u, 2).await.unwrap();
    let j = join_with_token(&mut c, "user", &token).await;
    c.track(&j, ROOM, json!({"hello": "world"})).await;
    c.push(&j, ROOM, "access_token", json!({"access_token": token}))
        .await;
    assert_eq!(c.heartbeat().await.payload["status"], "ok");
    // A socket with the JWT as its apikey, and one refused with a near-miss key.
    let u = url(
        node.addr,
        "/realtime/v1/websocket",
        &format!("apikey={token}&vsn=1.0.0"),
    );
    Client::connect_url(&u, 1).await.unwrap().close().await;
    let near_miss = format!("{publishable}x");
    let u = url(
        node.addr,
        "/realtime/v1/websocket",
        &format!("apikey={near_miss}&vsn=2.0.0"),
    );
    assert!(Client::connect_url(&u, 2).await.is_err());
    let body = br#"{"messages":[{"topic":"guarded","event":"e","payload":{}}]}"#;
    let bearer = format!("Bearer {secret}");
    let (status, _) = http_post(
        node.addr,
        "/api/broadcast",
        &[
            ("Authorization", &bearer),
            ("apikey", publishable),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 202);
    c.close().await;
    // The track's `member_join` goes out after the 100 ms batch window and fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.stderr().contains("webhook delivery failed") && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = node.stderr();
    // Trace logging was on (our own debug lines are there)…
    assert!(log.contains("connected"), "{log}");
    let failed = log
        .lines()
        .find(|l| l.contains("webhook delivery failed"))
        .unwrap_or_else(|| panic!("no failed delivery logged: {log}"));
    assert!(
        failed.contains(&format!("http://127.0.0.1:{hook_port}")),
        "{failed}"
    );
    // …and not one credential, nor a telling part of one.
    let signature = token.rsplit('.').next().unwrap();
    let claims_part = token.split('.').nth(1).unwrap();
    for secret in [
        publishable,
        secret,
        jwt_secret,
        &near_miss,
        token.as_str(),
        signature,
        claims_part,
        "leak-sub-t4",
        "leak_",
        "hook-user",
        "leak-pass-w5",
        "leak-path-w6",
        "leak-q-w7",
        "leak-whsec-w8",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}
