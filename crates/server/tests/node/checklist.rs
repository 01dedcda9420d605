//! The core of the wire protocol (docs/protocol.md §1–§4): upgrade paths,
//! vsn and credentials, envelopes and heartbeats, malformed frames, joins and
//! their errors, leaves, and presence (track, untrack, state, diffs, keys,
//! refs), over real WebSockets against an in-process server on a free port.
//! Each test's name says the behaviour it checks.

use std::time::Duration;

use crate::common::*;
use roster_server::settings::{DEV_JWT_SECRET, DEV_SECRET_KEY};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ROOM: &str = "realtime:room_01";

/// Connect and return the HTTP refusal (status, JSON body), or panic if it upgraded.
async fn refused(url: &str) -> (u16, Value) {
    match Client::connect_url(url, 2).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).expect("JSON body"),
            )
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn upgrade_paths_vsn_and_extra_params() {
    let s = start().await;
    for path in ["/realtime/v1/websocket", "/socket/websocket"] {
        let mut v2 = Client::connect_url(
            &url(
                s.addr,
                path,
                &format!("apikey={KEY}&vsn=2.0.0&log_level=info&foo=bar"),
            ),
            2,
        )
        .await
        .unwrap();
        assert!(v2.heartbeat().await.raw.is_array());
        let mut v1 = Client::connect_url(&url(s.addr, path, &format!("apikey={KEY}&vsn=1.0.0")), 1)
            .await
            .unwrap();
        assert!(v1.heartbeat().await.raw.is_object());
    }
    // No vsn means 1.0.0: the reply is an object.
    let mut none = Client::connect_url(
        &url(s.addr, "/realtime/v1/websocket", &format!("apikey={KEY}")),
        1,
    )
    .await
    .unwrap();
    assert!(none.heartbeat().await.raw.is_object());
    let (status, body) = refused(&url(
        s.addr,
        "/realtime/v1/websocket",
        &format!("apikey={KEY}&vsn=3.0.0"),
    ))
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("vsn"));
}

#[tokio::test]
async fn credentials_header_first_then_query() {
    let s = start().await;
    let ws = |q: &str| url(s.addr, "/realtime/v1/websocket", q);
    // Publishable key, secret key and a valid JWT are accepted.
    let token = jwt(
        json!({"role": "authenticated", "exp": now() + 60}),
        DEV_JWT_SECRET,
    );
    for key in [KEY.to_string(), DEV_SECRET_KEY.to_string(), token] {
        let mut c = Client::connect_url(&ws(&format!("apikey={key}&vsn=2.0.0")), 2)
            .await
            .unwrap();
        c.heartbeat().await;
    }
    // The header wins over the query parameter.
    let mut req = ws("apikey=wrong&vsn=2.0.0").into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", KEY.parse().unwrap());
    Client::connect_request(req, 2)
        .await
        .expect("header credential accepted")
        .heartbeat()
        .await;
    let mut req = ws(&format!("apikey={KEY}&vsn=2.0.0"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", "wrong".parse().unwrap());
    assert!(
        Client::connect_request(req, 2).await.is_err(),
        "a bad header is not rescued by the query"
    );
}

#[tokio::test]
async fn rejections_fail_the_upgrade_with_401_json() {
    let s = start().await;
    let ws = |q: String| url(s.addr, "/realtime/v1/websocket", &q);
    let cases = [
        (ws("vsn=2.0.0".into()), "API key is missing"),
        (
            ws("apikey=sb_publishable_nope&vsn=2.0.0".into()),
            "The token provided is not a valid JWT",
        ),
        (
            ws(format!(
                "apikey={}",
                jwt(json!({"role": "anon", "exp": now() - 10}), DEV_JWT_SECRET)
            )),
            "Token has expired",
        ),
        (
            ws(format!(
                "apikey={}",
                jwt(json!({"exp": now() + 60}), DEV_JWT_SECRET)
            )),
            "Fields `role` and `exp` are required in JWT",
        ),
        (
            ws(format!(
                "apikey={}",
                jwt(json!({"role": "anon", "exp": now() + 60}), "another-secret")
            )),
            "Failed to validate JWT signature",
        ),
    ];
    for (u, message) in cases {
        let (status, body) = refused(&u).await;
        assert_eq!(status, 401, "{u}");
        assert_eq!(body, json!({"error": message}), "{u}");
    }
}

#[tokio::test]
async fn heartbeat_echoes_ref_in_the_connection_format() {
    let s = start().await;
    let mut v2 = Client::connect(s.addr, 2).await;
    v2.send_raw(r#"[null,"7","phoenix","heartbeat",{}]"#).await;
    let got = v2.recv().await;
    assert_eq!(
        got.raw,
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // realtime-py sends ref null and expects it echoed.
    let mut v1 = Client::connect(s.addr, 1).await;
    v1.send_raw(
        r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
    )
    .await;
    let got = v1.recv().await;
    assert_eq!(
        got.raw,
        json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": null})
    );
}

#[tokio::test]
async fn idle_socket_is_closed_and_its_presence_leaves() {
    let s = start_with(|c| c.idle_timeout = Duration::from_millis(400)).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    let w_ref = watcher.join(ROOM, Some("watcher")).await;
    let mut idle = Client::connect(s.addr, 1).await;
    let i_ref = idle.join(ROOM, Some("sleepy")).await;
    idle.track(&i_ref, ROOM, json!({"zz": 1})).await;
    watcher.until_view(ROOM, |v| v.contains_key("sleepy")).await;
    // The watcher keeps talking; the idle client goes silent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while watcher.view(ROOM).contains_key("sleepy") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle client's presence never left"
        );
        watcher
            .push(&w_ref, ROOM, "heartbeat_noise", json!({}))
            .await;
        watcher
            .send_raw(r#"[null,"hb","phoenix","heartbeat",{}]"#)
            .await;
        watcher.try_recv(Duration::from_millis(100)).await;
    }
    assert_eq!(idle.expect_closed(Duration::from_secs(2)).await, Some(1000));
}

#[tokio::test]
async fn v1_frames_have_exactly_topic_event_payload_ref() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 1).await;
    let join_ref = c
        .join_raw(ROOM, json!({"config": {"presence": {"enabled": true}}}))
        .await;
    let mut frames = vec![c.recv().await, c.recv().await];
    let r = c
        .push(
            &join_ref,
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"a": 1}}),
        )
        .await;
    frames.push(c.recv_event("presence_diff").await);
    frames.push(c.recv_reply(&r).await);
    let r = c.push(&join_ref, ROOM, "phx_leave", json!({})).await;
    frames.push(c.recv_reply(&r).await);
    frames.push(c.recv_event("phx_close").await);
    for f in &frames {
        let mut k = keys(&f.raw);
        k.sort();
        assert_eq!(k, ["event", "payload", "ref", "topic"], "{:?}", f.raw);
    }
    assert_eq!(frames[1].event, "presence_state");
    assert_eq!(frames[1].ref_, Value::Null);
    assert_eq!(frames[2].ref_, Value::Null);
}

#[tokio::test]
async fn v2_refs_for_replies_pushes_and_fanout() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    c.send_raw(r#"["4","4","realtime:room_01","phx_join",{"config":{"presence":{"enabled":true,"key":"k"}}}]"#).await;
    assert_eq!(
        c.recv().await.raw,
        json!(["4", "4", ROOM, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}])
    );
    assert_eq!(
        c.recv().await.raw,
        json!(["4", null, ROOM, "presence_state", {}])
    );
    c.send_raw(r#"["4","5","realtime:room_01","presence",{"type":"presence","event":"track","payload":{}}]"#).await;
    let diff = c.recv().await;
    assert_eq!(
        (
            diff.join_ref.clone(),
            diff.ref_.clone(),
            diff.event.as_str()
        ),
        (Value::Null, Value::Null, "presence_diff")
    );
    assert_eq!(
        c.recv().await.raw,
        json!(["4", "5", ROOM, "phx_reply", {"status": "ok", "response": {}}])
    );
}

/// Malformed frames (docs/protocol.md §2.6), as issue #14 asks (an earlier
/// reading of the protocol ignored them): a frame whose ref and topic can be read
/// gets an error reply saying what is wrong and the socket stays; one that
/// cannot be answered closes that socket with 1007 and a reason, as
/// Supabase closes a socket whose frame it cannot decode.
#[tokio::test]
async fn malformed_frames_get_a_reason_by_reply_or_by_1007() {
    let s = start().await;
    for vsn in [1, 2] {
        let unanswerable = [
            "not json".to_string(),
            "{\"unterminated\": ".into(),
            "42".into(),
            "[1,2]".into(),
            "\"just a string\"".into(),
            "[null, null, \"realtime:x\", \"phx_join\"]".into(),
            // Wrong shape for this vsn (an object to v2, an array to v1).
            if vsn == 1 {
                r#"[null,"1","phoenix","heartbeat",{}]"#.into()
            } else {
                r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#.into()
            },
        ];
        for junk in unanswerable {
            let mut c = Client::connect(s.addr, vsn).await;
            c.send_raw(&junk).await;
            assert_eq!(c.expect_closed(WAIT).await, Some(1007), "vsn {vsn}: {junk}");
        }
        let mut c = Client::connect(s.addr, vsn).await;
        let (answerable, why) = if vsn == 1 {
            (
                r#"{"topic":"realtime:x","ref":"r1","event":5}"#,
                "MalformedMessage: field `event` must be a string",
            )
        } else {
            (
                r#"["1","r1","realtime:x","phx_join"]"#,
                "MalformedMessage: vsn 2.0.0 frames are arrays of at least 5 elements, got 4",
            )
        };
        c.send_raw(answerable).await;
        let reply = c.recv_reply("r1").await;
        assert_eq!(reply.topic, "realtime:x");
        assert_eq!(
            reply.payload,
            json!({"status": "error", "response": {"reason": why}})
        );
        assert_eq!(c.heartbeat().await.payload["status"], "ok");
    }
}

#[tokio::test]
async fn join_reply_has_empty_postgres_changes() {
    let s = start().await;
    for vsn in [1, 2] {
        let mut c = Client::connect(s.addr, vsn).await;
        let r = c
            .join_raw(ROOM, json!({"config": {"postgres_changes": []}}))
            .await;
        let reply = c.recv_reply(&r).await;
        assert_eq!(
            reply.payload,
            json!({"status": "ok", "response": {"postgres_changes": []}})
        );
    }
}

#[tokio::test]
async fn join_payload_tolerance_and_access_tokens() {
    let s = start().await;
    let good = jwt(
        json!({"role": "authenticated", "exp": now() + 60}),
        DEV_JWT_SECRET,
    );
    let payloads = [
        json!({}),
        json!({"config": null}),
        json!({"config": {"broadcast": null, "presence": null}}),
        json!({"config": {"broadcast": {"ack": "true", "self": "FALSE"}, "presence": {"enabled": "true", "key": ""}}, "version": "realtime-js/2.119.1", "user_token": null}),
        json!({"config": {"presence": {"enabled": true}}, "access_token": "sb_publishable_whatever"}),
        json!({"config": {"presence": {"enabled": true}}, "access_token": good}),
        json!({"config": {"presence": {"enabled": true}}, "access_token": null}),
    ];
    let mut c = Client::connect(s.addr, 2).await;
    for (i, p) in payloads.into_iter().enumerate() {
        let topic = format!("realtime:t{i}");
        let r = c.join_raw(&topic, p.clone()).await;
        assert_eq!(c.recv_reply(&r).await.payload["status"], "ok", "{p}");
    }
    let expired = jwt(json!({"role": "anon", "exp": now() - 5}), DEV_JWT_SECRET);
    let r = c
        .join_raw("realtime:bad", json!({"access_token": expired}))
        .await;
    let reply = c.recv_reply(&r).await;
    assert_eq!(reply.payload["status"], "error");
    assert!(reply.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("InvalidJWTToken: Token has expired"));
}

#[tokio::test]
async fn join_errors_have_a_coded_reason() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 1).await;
    let bad_sig = jwt(json!({"role": "anon", "exp": now() + 60}), "nope");
    for (token, reason) in [
        (
            bad_sig,
            "JwtSignatureError: Failed to validate JWT signature",
        ),
        (
            "garbage".to_string(),
            "MalformedJWT: The token provided is not a valid JWT",
        ),
        (
            jwt(json!({"exp": now() + 60}), DEV_JWT_SECRET),
            "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
        ),
    ] {
        let r = c.join_raw(ROOM, json!({"access_token": token})).await;
        assert_eq!(
            c.recv_reply(&r).await.payload,
            json!({"status": "error", "response": {"reason": reason}})
        );
    }
}

#[tokio::test]
async fn topic_checks() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    let r = c.join_raw("realtime:", json!({})).await;
    assert_eq!(
        c.recv_reply(&r).await.payload,
        json!({"status": "error", "response": {"reason": "TopicNameRequired: You must provide a topic name"}})
    );
    let r = c.join_raw("room_01", json!({})).await;
    assert_eq!(
        c.recv_reply(&r).await.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    // A push to a topic that was never joined is answered the same way.
    let r = c
        .push("1", "realtime:never", "presence", json!({"event": "track"}))
        .await;
    assert_eq!(
        c.recv_reply(&r).await.payload["response"]["reason"],
        "unmatched topic"
    );
}

#[tokio::test]
async fn second_join_of_a_topic_closes_the_first() {
    let s = start().await;
    let mut watcher = Client::connect(s.addr, 2).await;
    watcher.join(ROOM, Some("w")).await;
    let mut c = Client::connect(s.addr, 2).await;
    let first = c.join(ROOM, Some("dup")).await;
    c.track(&first, ROOM, json!({"n": 1})).await;
    watcher.until_view(ROOM, |v| v.contains_key("dup")).await;
    let second = c
        .join_raw(
            ROOM,
            json!({"config": {"presence": {"enabled": true, "key": "dup"}}}),
        )
        .await;
    let close = c.recv_event("phx_close").await;
    assert_eq!((close.join_ref, close.ref_), (json!(first), json!(first)));
    let reply = c.recv_reply(&second).await;
    assert_eq!(reply.payload["status"], "ok");
    // The old membership's presence left; the new one has not tracked yet.
    watcher.until_view(ROOM, |v| !v.contains_key("dup")).await;
    assert_eq!(
        s.server.registry.get(ROOM, false).unwrap().counts(),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn leave_replies_ok_then_closes_with_the_join_ref() {
    let s = start().await;
    for vsn in [1, 2] {
        let mut c = Client::connect(s.addr, vsn).await;
        let join_ref = c.join(ROOM, None).await;
        let r = c.push(&join_ref, ROOM, "phx_leave", json!({})).await;
        let reply = c.recv().await;
        assert_eq!(
            (reply.event.as_str(), reply.ref_.clone()),
            ("phx_reply", json!(r))
        );
        assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
        let close = c.recv().await;
        assert_eq!(close.event, "phx_close");
        assert_eq!(close.payload, json!({}));
        assert_eq!(close.ref_, json!(join_ref));
        // Leaving what is not joined is still ok, with no close.
        let r = c.push(&join_ref, ROOM, "phx_leave", json!({})).await;
        assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
        c.expect_nothing_pending().await;
    }
    assert!(
        s.server.registry.get(ROOM, false).is_none(),
        "empty channel dropped"
    );
}

#[tokio::test]
async fn pushes_with_stale_null_or_missing_join_ref_are_accepted() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 1).await;
    c.join(ROOM, Some("k")).await;
    for (i, join_ref) in [json!("999"), Value::Null].into_iter().enumerate() {
        let r = format!("r{i}");
        c.send_frame(
            join_ref,
            json!(r),
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"i": i}}),
        )
        .await;
        assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    }
    c.send_raw(r#"{"topic":"realtime:room_01","event":"presence","payload":{"event":"track","payload":{"i":9}},"ref":"r9"}"#).await;
    assert_eq!(c.recv_reply("r9").await.payload["status"], "ok");
    c.until_view(ROOM, |v| {
        v.get("k").is_some_and(|m| m.len() == 1 && m[0]["i"] == 9)
    })
    .await;
}

#[tokio::test]
async fn exactly_one_presence_state_after_the_join_reply() {
    let s = start().await;
    let mut a = Client::connect(s.addr, 2).await;
    let a_ref = a.join(ROOM, Some("a")).await;
    a.track(&a_ref, ROOM, json!({"x": 1})).await;
    let mut b = Client::connect(s.addr, 1).await;
    let r = b
        .join_raw(ROOM, json!({"config": {"presence": {"enabled": true}}}))
        .await;
    let reply = b.recv().await;
    assert_eq!(
        (reply.event.as_str(), reply.ref_.clone()),
        ("phx_reply", json!(r))
    );
    let state = b.recv().await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(state.ref_, Value::Null);
    assert_eq!(keys(&state.payload), ["a"]);
    assert_eq!(state.payload["a"]["metas"][0]["x"], 1);
    b.expect_nothing_pending().await;
}

#[tokio::test]
async fn presence_disabled_gets_no_state_but_still_gets_diffs() {
    let s = start().await;
    let mut quiet = Client::connect(s.addr, 2).await;
    let r = quiet
        .join_raw(ROOM, json!({"config": {"presence": {"enabled": false}}}))
        .await;
    quiet.recv_reply(&r).await;
    quiet.expect_nothing_pending().await;
    let mut a = Client::connect(s.addr, 2).await;
    let a_ref = a.join(ROOM, Some("a")).await;
    a.track(&a_ref, ROOM, json!({})).await;
    let diff = quiet.recv().await;
    assert_eq!(diff.event, "presence_diff");
    assert_eq!(keys(&diff.payload["joins"]), ["a"]);
}

#[tokio::test]
async fn presence_event_any_case_and_no_type() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 1).await;
    let j = c.join(ROOM, Some("k")).await;
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"event": "TRACK", "payload": {"v": 1}}),
        )
        .await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    c.until_view(ROOM, |v| v.contains_key("k")).await;
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"event": "UnTrack", "payload": {}}),
        )
        .await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    c.until_view(ROOM, |v| v.is_empty()).await;
    // No event: ok and nothing happens. An unknown event: an error with an empty response.
    let r = c
        .push(&j, ROOM, "presence", json!({"type": "presence"}))
        .await;
    assert_eq!(
        c.recv_reply(&r).await.payload,
        json!({"status": "ok", "response": {}})
    );
    let r = c
        .push(&j, ROOM, "presence", json!({"event": "dance"}))
        .await;
    assert_eq!(
        c.recv_reply(&r).await.payload,
        json!({"status": "error", "response": {}})
    );
}

#[tokio::test]
async fn track_diff_reaches_every_member_including_the_sender() {
    let s = start().await;
    let mut a = Client::connect(s.addr, 2).await;
    let a_ref = a.join(ROOM, Some("alice")).await;
    let mut b = Client::connect(s.addr, 1).await;
    b.join(ROOM, Some("bob")).await;
    let reply = a
        .track(&a_ref, ROOM, json!({"online_at": "2026-05-01T10:00:00Z"}))
        .await;
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    for c in [&mut a, &mut b] {
        let diff = c.recv_event("presence_diff").await;
        assert_eq!(diff.payload["leaves"], json!({}));
        let metas = diff.payload["joins"]["alice"]["metas"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(metas.len(), 1);
        assert_eq!(metas[0]["online_at"], "2026-05-01T10:00:00Z");
        assert!(metas[0]["phx_ref"].is_string());
    }
}

#[tokio::test]
async fn track_payload_missing_means_empty_and_non_object_is_refused() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("k")).await;
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"type": "presence", "event": "track"}),
        )
        .await;
    let diff = c.recv_event("presence_diff").await;
    let meta = &diff.payload["joins"]["k"]["metas"][0];
    assert_eq!(keys(meta), ["phx_ref"]);
    c.recv_reply(&r).await;
    for bad in [json!("str"), json!(5), json!([1])] {
        let r = c
            .push(
                &j,
                ROOM,
                "presence",
                json!({"event": "track", "payload": bad}),
            )
            .await;
        assert_eq!(
            c.recv_reply(&r).await.payload,
            json!({"status": "error", "response": {"reason": "Presence track payload must be a map"}})
        );
    }
    c.expect_nothing_pending().await;
}

#[tokio::test]
async fn identical_retrack_is_silent_and_an_update_is_one_diff() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("u")).await;
    c.track(&j, ROOM, json!({"status": "on", "n": 1})).await;
    let first = c.recv_event("presence_diff").await;
    let old_ref = first.payload["joins"]["u"]["metas"][0]["phx_ref"].clone();
    // Same object, other key order: no diff.
    let r = c
        .push(
            &j,
            ROOM,
            "presence",
            json!({"event": "track", "payload": {"n": 1, "status": "on"}}),
        )
        .await;
    assert_eq!(c.recv().await.ref_, json!(r));
    c.expect_nothing_pending().await;
    c.track(&j, ROOM, json!({"status": "away", "n": 1})).await;
    let diff = c.recv_event("presence_diff").await;
    let joined = &diff.payload["joins"]["u"]["metas"];
    let left = &diff.payload["leaves"]["u"]["metas"];
    assert_eq!(joined.as_array().unwrap().len(), 1);
    assert_eq!(joined[0]["status"], "away");
    assert_eq!(joined[0]["phx_ref_prev"], old_ref);
    assert_ne!(joined[0]["phx_ref"], old_ref);
    assert_eq!(left[0]["phx_ref"], old_ref);
    assert_eq!(c.view(ROOM)["u"].len(), 1);
}

#[tokio::test]
async fn untrack_with_or_without_payload_and_when_not_tracked() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 1).await;
    let j = c.join(ROOM, Some("u")).await;
    let r = c
        .push(&j, ROOM, "presence", json!({"event": "untrack"}))
        .await;
    assert_eq!(
        c.recv().await.ref_,
        json!(r),
        "untrack of nothing: just the reply"
    );
    c.expect_nothing_pending().await;
    for untrack in [
        json!({"type": "presence", "event": "untrack"}),
        json!({"event": "untrack", "payload": {}}),
    ] {
        c.track(&j, ROOM, json!({"a": 1})).await;
        c.recv_event("presence_diff").await;
        let r = c.push(&j, ROOM, "presence", untrack).await;
        let diff = c.recv_event("presence_diff").await;
        assert_eq!(diff.payload["joins"], json!({}));
        assert_eq!(diff.payload["leaves"]["u"]["metas"][0]["a"], 1);
        assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
    }
}

#[tokio::test]
async fn refs_unique_stable_strings_and_diffs_always_have_both_sides() {
    let s = start().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(s.addr, 2).await;
        let j = c.join(ROOM, Some("same")).await;
        c.track(&j, ROOM, json!({"i": i})).await;
        clients.push(c);
    }
    let mut late = Client::connect(s.addr, 1).await;
    late.join(ROOM, None).await;
    let metas = &late.view(ROOM)["same"];
    let refs: std::collections::HashSet<_> = metas
        .iter()
        .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refs.len(), 5);
    // Stable: a second late joiner sees the same refs.
    let mut later = Client::connect(s.addr, 2).await;
    later.join(ROOM, None).await;
    let again: std::collections::HashSet<_> = later.view(ROOM)["same"]
        .iter()
        .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refs, again);
    drop(clients.pop());
    let diff = later.recv_event("presence_diff").await;
    assert!(diff.payload.get("joins").is_some() && diff.payload.get("leaves").is_some());
}

#[tokio::test]
async fn keys_generated_uuid_v1_or_configured_and_shared() {
    let s = start().await;
    let uuid_v1 = |k: &str| {
        let b = k.as_bytes();
        k.len() == 36
            && b[14] == b'1'
            && b"89ab".contains(&b[19])
            && k.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    };
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, None).await;
    a.track(&ja, ROOM, json!({})).await;
    let mut b = Client::connect(s.addr, 1).await;
    let jb = b.join(ROOM, None).await;
    b.track(&jb, ROOM, json!({})).await;
    a.until_view(ROOM, |v| v.len() == 2).await;
    let generated: Vec<_> = a.view(ROOM).keys().cloned().collect();
    assert!(generated.iter().all(|k| uuid_v1(k)), "{generated:?}");
    // A rejoin gets a new generated key.
    b.push(&jb, ROOM, "phx_leave", json!({})).await;
    b.recv_event("phx_close").await;
    let jb2 = b.join(ROOM, None).await;
    b.track(&jb2, ROOM, json!({})).await;
    a.until_view(ROOM, |v| {
        v.len() == 2 && v.keys().any(|k| !generated.contains(k))
    })
    .await;
    // Two channels tracking the same key: one key, two metas.
    let mut c = Client::connect(s.addr, 2).await;
    let jc = c.join(ROOM, Some("shared")).await;
    c.track(&jc, ROOM, json!({"d": "laptop"})).await;
    let mut d = Client::connect(s.addr, 2).await;
    let jd = d.join(ROOM, Some("shared")).await;
    d.track(&jd, ROOM, json!({"d": "phone"})).await;
    a.until_view(ROOM, |v| v.get("shared").is_some_and(|m| m.len() == 2))
        .await;
    // Numeric keys come out as strings.
    let mut e = Client::connect(s.addr, 2).await;
    let je = e
        .join_raw(
            ROOM,
            json!({"config": {"presence": {"enabled": true, "key": 42}}}),
        )
        .await;
    e.recv_reply(&je).await;
    e.track(&je, ROOM, json!({})).await;
    a.until_view(ROOM, |v| v.contains_key("42")).await;
}

#[tokio::test]
async fn leave_close_and_abrupt_drop_each_send_a_leave() {
    let s = start().await;
    let mut watcher = Client::connect(s.addr, 1).await;
    let w = watcher.join(ROOM, Some("watcher")).await;
    watcher.track(&w, ROOM, json!({})).await;
    for how in ["leave", "close", "drop"] {
        let mut c = Client::connect(s.addr, 2).await;
        let j = c.join(ROOM, Some(how)).await;
        c.track(&j, ROOM, json!({"how": how})).await;
        watcher.until_view(ROOM, |v| v.contains_key(how)).await;
        match how {
            "leave" => {
                c.push(&j, ROOM, "phx_leave", json!({})).await;
                c.recv_event("phx_close").await;
            }
            "close" => c.close().await,
            _ => c.drop_abruptly(),
        }
        let diff = watcher
            .recv_matching("leave", |g| {
                g.event == "presence_diff" && g.payload["leaves"] != json!({})
            })
            .await;
        assert_eq!(diff.payload["joins"], json!({}));
        assert_eq!(keys(&diff.payload["leaves"]), [how]);
    }
    assert_eq!(watcher.view(ROOM).keys().collect::<Vec<_>>(), ["watcher"]);
}

#[tokio::test]
async fn rejoin_after_reconnect_gets_fresh_state_without_old_metas() {
    let s = start().await;
    let mut other = Client::connect(s.addr, 2).await;
    let jo = other.join(ROOM, Some("other")).await;
    other.track(&jo, ROOM, json!({})).await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("me")).await;
    c.track(&j, ROOM, json!({"gen": 1})).await;
    other.until_view(ROOM, |v| v.contains_key("me")).await;
    c.drop_abruptly();
    other.until_view(ROOM, |v| !v.contains_key("me")).await;
    let mut c = Client::connect(s.addr, 2).await;
    let r = c
        .join_raw(
            ROOM,
            json!({"config": {"presence": {"enabled": true, "key": "me"}}}),
        )
        .await;
    c.recv_reply(&r).await;
    let state = c.recv_event("presence_state").await;
    assert_eq!(
        keys(&state.payload),
        ["other"],
        "no ghost of the old connection"
    );
    c.track(&r, ROOM, json!({"gen": 2})).await;
    other
        .until_view(ROOM, |v| {
            v.get("me")
                .is_some_and(|m| m.len() == 1 && m[0]["gen"] == 2)
        })
        .await;
}
