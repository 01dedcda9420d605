//! Private channels: rights from policies in the config (presence-read/write,
//! broadcast-read/write), PrivateOnly, and separation from public channels.

use crate::common::*;
use roster_server::settings::{DEV_JWT_SECRET, DEV_SECRET_KEY};
use roster_server::Settings;
use serde_json::{json, Value};

fn user_jwt(sub: &str) -> String {
    jwt(
        json!({"role": "authenticated", "sub": sub, "exp": now() + 600}),
        DEV_JWT_SECRET,
    )
}

fn with_policies(c: &mut Settings) {
    let file: toml::Table = toml::from_str(
        r#"
        [[policies]]
        topic = "room:{sub}"
        role = "authenticated"
        allow = ["presence-read", "presence-write", "broadcast-read", "broadcast-write"]
        [[policies]]
        topic = "stage"
        role = "authenticated"
        allow = ["presence-read", "broadcast-read"]
        "#,
    )
    .unwrap();
    c.policies = file["policies"].clone().try_into().unwrap();
}

async fn join_private(c: &mut Client, topic: &str, token: Option<&str>, key: &str) -> Value {
    let mut payload = json!({"config": {"private": true, "presence": {"enabled": true, "key": key},
        "broadcast": {"ack": true, "self": false}}});
    if let Some(t) = token {
        payload["access_token"] = json!(t);
    }
    let r = c.join_raw(topic, payload).await;
    let reply = c.recv_reply(&r).await.payload;
    if reply["status"] == "ok" {
        // Every test policy that lets one join grants presence-read.
        c.recv_event("presence_state").await;
    }
    reply
}

#[tokio::test]
async fn policies_decide_who_joins_and_what_they_may_do() {
    let s = start_with(with_policies).await;
    // No claims (publishable key): no policy matches.
    let mut anon = Client::connect(s.addr, 2).await;
    assert_eq!(
        join_private(&mut anon, "realtime:room:alice", None, "x").await,
        json!({"status": "error", "response": {"reason": "Unauthorized: You do not have permissions to read from this Channel topic: room:alice"}})
    );
    // Alice's own room: every right.
    let mut alice = Client::connect(s.addr, 2).await;
    let token = user_jwt("alice");
    assert_eq!(
        join_private(&mut alice, "realtime:room:alice", Some(&token), "alice").await["status"],
        "ok"
    );
    let tracked = alice
        .track("1", "realtime:room:alice", json!({"here": true}))
        .await;
    assert_eq!(tracked.payload["status"], "ok", "{:?}", tracked.raw);
    alice
        .until_view("realtime:room:alice", |v| v.contains_key("alice"))
        .await;
    // Bob is refused Alice's room.
    let mut bob = Client::connect(s.addr, 1).await;
    let bob_token = user_jwt("bob");
    let refused = join_private(&mut bob, "realtime:room:alice", Some(&bob_token), "bob").await;
    assert_eq!(refused["status"], "error");

    // On the stage both may read, nobody may write.
    let j = alice.join_raw("realtime:stage", json!({"config": {"private": true, "presence": {"enabled": true, "key": "alice"}, "broadcast": {"ack": true}}, "access_token": token})).await;
    assert_eq!(alice.recv_reply(&j).await.payload["status"], "ok");
    alice.recv_event("presence_state").await;
    assert_eq!(
        join_private(&mut bob, "realtime:stage", Some(&bob_token), "bob").await["status"],
        "ok"
    );
    let r = alice
        .push(
            &j,
            "realtime:stage",
            "presence",
            json!({"event": "track", "payload": {}}),
        )
        .await;
    assert_eq!(
        alice.recv_reply(&r).await.payload,
        json!({"status": "error", "response": {}})
    );
    let r = alice
        .push(
            &j,
            "realtime:stage",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {}}),
        )
        .await;
    assert_eq!(
        alice.recv_reply(&r).await.payload["response"]["reason"],
        "Unauthorized: You do not have permissions to write to this Channel topic: stage"
    );
    // Refused, so nothing reached bob.
    bob.expect_nothing_pending().await;

    // The secret key (service_role) may do anything, anywhere.
    let u = url(
        s.addr,
        "/realtime/v1/websocket",
        &format!("apikey={DEV_SECRET_KEY}&vsn=2.0.0"),
    );
    let mut admin = Client::connect_url(&u, 2).await.unwrap();
    assert_eq!(
        join_private(&mut admin, "realtime:stage", None, "admin").await["status"],
        "ok"
    );
    let r = admin
        .push(
            "1",
            "realtime:stage",
            "broadcast",
            json!({"type": "broadcast", "event": "hello", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(admin.recv_reply(&r).await.payload["status"], "ok");
    assert_eq!(bob.recv_event("broadcast").await.payload["event"], "hello");
}

#[tokio::test]
async fn public_and_private_channels_of_one_name_are_separate() {
    let s = start_with(with_policies).await;
    let topic = "realtime:room:alice";
    let token = user_jwt("alice");
    let mut private = Client::connect(s.addr, 2).await;
    let joined = join_private(&mut private, topic, Some(&token), "secret").await;
    assert_eq!(joined["status"], "ok", "{joined}");
    let tracked = private.track("1", topic, json!({})).await;
    assert_eq!(tracked.payload["status"], "ok", "{:?}", tracked.raw);
    let own = private.recv_event("presence_diff").await;
    assert_eq!(keys(&own.payload["joins"]), ["secret"], "{:?}", own.raw);
    let mut public = Client::connect(s.addr, 2).await;
    let j = public.join(topic, Some("public")).await;
    assert!(
        public.view(topic).is_empty(),
        "private presence leaked: {:?}",
        public.view(topic)
    );
    let tracked = public.track(&j, topic, json!({})).await;
    assert_eq!(tracked.payload["status"], "ok", "{:?}", tracked.raw);
    public
        .until_view(topic, |v| v.len() == 1 && v.contains_key("public"))
        .await;
    // The public track was fanned out before its ack: had it leaked, it
    // would be queued for the private member by now.
    private.expect_nothing_pending().await;
    let view = private.view(topic);
    assert!(view.len() == 1 && view.contains_key("secret"), "{view:?}");
}

#[tokio::test]
async fn private_only_refuses_public_joins() {
    let s = start_with(|c| {
        with_policies(c);
        c.private_only = true;
    })
    .await;
    let mut c = Client::connect(s.addr, 1).await;
    let r = c
        .join_raw("realtime:anything", json!({"config": {"private": false}}))
        .await;
    assert_eq!(
        c.recv_reply(&r).await.payload["response"]["reason"],
        "PrivateOnly: This project only allows private channels"
    );
}

#[tokio::test]
async fn rest_private_broadcast_needs_write_rights() {
    let s = start_with(with_policies).await;
    let token = user_jwt("alice");
    let mut alice = Client::connect(s.addr, 2).await;
    let joined = join_private(&mut alice, "realtime:room:alice", Some(&token), "alice").await;
    assert_eq!(joined["status"], "ok", "{joined}");
    let body = |private: bool, tag: &str| {
        json!({"messages": [{"topic": "room:alice", "event": "e", "payload": {"tag": tag}, "private": private}]}).to_string()
    };
    let bearer = format!("Bearer {token}");
    let as_alice = [("Authorization", bearer.as_str())];
    // The publishable key has no right on the private channel: accepted (202) but skipped.
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast",
        &[("apikey", KEY)],
        body(true, "anon").as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    // Alice's own token may write there; hers is the first message alice gets.
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast",
        &as_alice,
        body(true, "alice").as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let got = alice.recv().await;
    assert_eq!(
        got.payload["payload"],
        json!({"tag": "alice"}),
        "{:?}",
        got.raw
    );
    // A public message with the same topic does not reach the private
    // channel: the next private message is the next thing alice gets.
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast",
        &[("apikey", KEY)],
        body(false, "public").as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = http_post(
        s.addr,
        "/api/broadcast",
        &as_alice,
        body(true, "marker").as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let got = alice.recv().await;
    assert_eq!(
        got.payload["payload"],
        json!({"tag": "marker"}),
        "{:?}",
        got.raw
    );
    alice.expect_nothing_pending().await;
}
