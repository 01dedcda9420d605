//! The session without a socket: text frames in through `handle_text`, and
//! out, decoded, whatever it queued on its `Outbound`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use jsonwebtoken::{encode, EncodingKey, Header};
use roster_protocol::Vsn;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{Access, Session, SessionContext};
use crate::access::admission::Admission;
use crate::access::auth::unix_now;
use crate::channel::outbound::{Frame, Inbox, Outbound};
use crate::channel::Registry;
use crate::metrics::Metrics;
use crate::settings::{Settings, DEV_JWT_SECRET, DEV_PUBLISHABLE_KEY};

const ROOM: &str = "realtime:room";

/// A node's session context from test settings, with a plain registry.
fn context(tweak: impl FnOnce(&mut Settings)) -> Arc<SessionContext> {
    let mut settings = Settings::for_tests();
    tweak(&mut settings);
    let metrics = Arc::new(Metrics::new());
    Arc::new(SessionContext::new(
        &settings,
        Arc::new(Access::from_settings(&settings)),
        Arc::new(Registry::new(
            metrics.clone(),
            crate::store::alone(&settings),
            None,
        )),
        Arc::new(Admission::default()),
        metrics,
        CancellationToken::new(),
    ))
}

/// A frame the session queued, decoded from either vsn's envelope.
#[derive(Debug)]
struct Got {
    join_ref: Value,
    ref_: Value,
    topic: String,
    event: String,
    payload: Value,
}

/// One session and the reading end of its queue: a socket without a socket.
struct Client {
    session: Session,
    inbox: Inbox,
    vsn: Vsn,
    next_ref: u64,
}

impl Client {
    fn new(ctx: &Arc<SessionContext>, vsn: Vsn) -> Client {
        let (out, inbox, _overflow) = Outbound::new(1024, 1 << 20, vsn);
        let credential = ctx
            .access
            .auth
            .verify_socket(Some(DEV_PUBLISHABLE_KEY))
            .unwrap();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Client {
            session: Session::new(ctx.clone(), out, credential, ip),
            inbox,
            vsn,
            next_ref: 0,
        }
    }

    /// Send a push in the client's vsn; its ref.
    fn push(&mut self, join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let ref_ = self.next_ref.to_string();
        let text = match self.vsn {
            Vsn::V2 => json!([join_ref, ref_, topic, event, payload]),
            Vsn::V1 => json!({
                "join_ref": join_ref, "ref": ref_, "topic": topic,
                "event": event, "payload": payload,
            }),
        };
        self.session.handle_text(&text.to_string());
        ref_
    }

    /// Every frame queued so far, in order.
    fn drain(&mut self) -> Vec<Got> {
        let mut got = Vec::new();
        while let Some(frame) = self.inbox.try_recv() {
            let Frame::Text(payload) = &frame else {
                panic!("a session queues text frames, got {frame:?}");
            };
            self.inbox.written(frame.len());
            let v: Value = serde_json::from_slice(payload.bytes()).unwrap();
            got.push(match v {
                Value::Array(a) => Got {
                    join_ref: a[0].clone(),
                    ref_: a[1].clone(),
                    topic: a[2].as_str().unwrap().to_owned(),
                    event: a[3].as_str().unwrap().to_owned(),
                    payload: a[4].clone(),
                },
                v => Got {
                    join_ref: v["join_ref"].clone(),
                    ref_: v["ref"].clone(),
                    topic: v["topic"].as_str().unwrap().to_owned(),
                    event: v["event"].as_str().unwrap().to_owned(),
                    payload: v["payload"].clone(),
                },
            });
        }
        got
    }

    /// Join `topic` with presence under `key`; the join's ref (= join_ref).
    fn join(&mut self, topic: &str, config: Value) -> String {
        let join_ref = (self.next_ref + 1).to_string();
        self.push(
            Some(&join_ref),
            topic,
            "phx_join",
            json!({ "config": config }),
        );
        join_ref
    }

    /// Join with presence under `key` and check the ok and the snapshot.
    fn joined(&mut self, topic: &str, key: &str) -> String {
        let join_ref = self.join(topic, json!({"presence": {"key": key, "enabled": true}}));
        let got = self.drain();
        assert_eq!(events(&got), ["phx_reply", "presence_state"], "{got:?}");
        assert_eq!(got[0].payload["status"], "ok", "{got:?}");
        join_ref
    }

    fn track(&mut self, join_ref: &str, topic: &str, state: Value) -> String {
        let payload = json!({"type": "presence", "event": "track", "payload": state});
        self.push(Some(join_ref), topic, "presence", payload)
    }
}

/// A room with a watcher and a member "me" that tracks `{}`, both drained:
/// (context, watcher, member, the member's join ref).
fn watched_member() -> (Arc<SessionContext>, Client, Client, String) {
    let ctx = context(|_| {});
    let mut watcher = Client::new(&ctx, Vsn::V2);
    watcher.joined(ROOM, "watcher");
    let mut c = Client::new(&ctx, Vsn::V2);
    let j = c.joined(ROOM, "me");
    c.track(&j, ROOM, json!({}));
    c.drain();
    watcher.drain();
    (ctx, watcher, c, j)
}

fn events(got: &[Got]) -> Vec<&str> {
    got.iter().map(|g| g.event.as_str()).collect()
}

fn jwt(claims: Value) -> String {
    let key = EncodingKey::from_secret(DEV_JWT_SECRET.as_bytes());
    encode(&Header::default(), &claims, &key).unwrap()
}

#[test]
fn a_heartbeat_gets_an_ok_reply_in_either_vsn() {
    let ctx = context(|_| {});
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut c = Client::new(&ctx, vsn);
        let r = c.push(None, "phoenix", "heartbeat", json!({}));
        let got = c.drain();
        assert_eq!(events(&got), ["phx_reply"], "{vsn:?}");
        assert_eq!(got[0].topic, "phoenix");
        assert_eq!(got[0].ref_, json!(r));
        assert_eq!(got[0].payload, json!({"status": "ok", "response": {}}));
        assert_eq!(c.session.close_reason(), None);
    }
}

#[test]
fn a_join_replies_ok_then_sends_the_state_before_it() {
    let ctx = context(|_| {});
    let mut alice = Client::new(&ctx, Vsn::V2);
    let a = alice.joined(ROOM, "alice");
    alice.track(&a, ROOM, json!({"name": "Alice"}));
    alice.drain();

    let mut bob = Client::new(&ctx, Vsn::V2);
    let b = bob.join(ROOM, json!({"presence": {"key": "bob", "enabled": true}}));
    let got = bob.drain();
    assert_eq!(events(&got), ["phx_reply", "presence_state"], "{got:?}");
    assert_eq!(got[0].join_ref, json!(b));
    assert_eq!(got[0].ref_, json!(b));
    assert_eq!(
        got[0].payload,
        json!({"status": "ok", "response": {"postgres_changes": []}})
    );
    let metas = got[1].payload["alice"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 1, "{got:?}");
    assert_eq!(metas[0]["name"], "Alice");
    assert!(got[1].payload.get("bob").is_none(), "bob has not tracked");
    assert_eq!(bob.session.channel_count(), 1);
}

#[test]
fn a_track_sends_its_diff_to_everyone_before_its_ok() {
    let ctx = context(|_| {});
    let mut alice = Client::new(&ctx, Vsn::V2);
    let mut bob = Client::new(&ctx, Vsn::V1);
    let a = alice.joined(ROOM, "alice");
    bob.joined(ROOM, "bob");

    let r = alice.track(&a, ROOM, json!({"mood": "fine"}));
    let got = alice.drain();
    assert_eq!(events(&got), ["presence_diff", "phx_reply"], "{got:?}");
    assert_eq!(got[0].payload["joins"]["alice"]["metas"][0]["mood"], "fine");
    assert_eq!(got[0].payload["leaves"], json!({}));
    assert_eq!(got[1].ref_, json!(r));
    assert_eq!(got[1].payload["status"], "ok");

    // The other member, in the other vsn, gets the same diff and no reply.
    let seen = bob.drain();
    assert_eq!(events(&seen), ["presence_diff"], "{seen:?}");
    assert_eq!(seen[0].payload, got[0].payload);
}

#[test]
fn a_join_without_a_key_is_given_a_uuid() {
    let ctx = context(|_| {});
    let mut c = Client::new(&ctx, Vsn::V2);
    let j = c.joined(ROOM, "");
    c.track(&j, ROOM, json!({}));
    let got = c.drain();
    let joins = got[0].payload["joins"].as_object().unwrap();
    let key = joins.keys().next().unwrap();
    let uuid = uuid::Uuid::parse_str(key).unwrap();
    assert_eq!(uuid.get_version_num(), 1, "{key}");
}

#[test]
fn a_bad_frame_gets_an_error_reply_when_it_can_be_addressed_else_closes() {
    let ctx = context(|_| {});
    let mut c = Client::new(&ctx, Vsn::V2);
    // Ref and topic readable, event not a string: an error reply to it.
    c.session
        .handle_text(r#"[null, "7", "realtime:room", 42, {}]"#);
    let got = c.drain();
    assert_eq!(events(&got), ["phx_reply"], "{got:?}");
    assert_eq!(got[0].ref_, json!("7"));
    assert_eq!(got[0].payload["status"], "error");
    let reason = got[0].payload["response"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("MalformedMessage: "), "{reason}");
    assert_eq!(c.session.close_reason(), None);

    // Nothing readable: the socket is to close with 1007, and later
    // frames are not answered.
    c.session.handle_text("this is not json");
    assert!(c.drain().is_empty());
    let (code, why) = c.session.close_reason().expect("closing");
    assert_eq!(code, 1007);
    assert!(why.starts_with("malformed frame"), "{why}");
    c.push(None, "phoenix", "heartbeat", json!({}));
    assert!(c.drain().is_empty(), "a closing socket answers nothing");
}

#[test]
fn an_over_long_topic_is_refused_before_any_channel_exists() {
    let ctx = context(|s| s.limits.max_topic_bytes = 32);
    let mut c = Client::new(&ctx, Vsn::V2);
    let long = format!("realtime:{}", "x".repeat(32 - "realtime:".len() + 1));
    c.join(&long, json!({"presence": {"key": "k"}}));
    let got = c.drain();
    assert_eq!(events(&got), ["phx_reply"], "{got:?}");
    assert_eq!(
        got[0].payload["response"]["reason"],
        "TopicNameTooLong: A topic may be at most 32 bytes"
    );
    assert!(ctx.registry.get(&long, false).is_none());
    assert_eq!(ctx.registry.channel_count(), 0);
    assert_eq!(c.session.channel_count(), 0);

    // At the limit exactly, the join goes through.
    let fits = &long[..32];
    c.join(fits, json!({"presence": {"key": "k"}}));
    assert_eq!(c.drain()[0].payload["status"], "ok");
    assert!(ctx.registry.get(fits, false).is_some());
}

#[test]
fn frames_over_the_rate_close_the_socket_unanswered() {
    let ctx = context(|s| s.limits.max_frames_per_second = 3);
    let mut c = Client::new(&ctx, Vsn::V2);
    for _ in 0..4 {
        c.push(None, "phoenix", "heartbeat", json!({}));
    }
    let got = c.drain();
    assert_eq!(events(&got), ["phx_reply"; 3], "{got:?}");
    assert_eq!(
        c.session.close_reason(),
        Some((1008, "Too many messages per second"))
    );
}

#[test]
fn a_refresh_with_an_invalid_or_expired_token_shuts_the_channel_down() {
    let (_, mut watcher, mut c, j) = watched_member();

    // A token signed with another secret: `system` error, then `phx_close`,
    // never a reply; the presence leaves.
    let forged = encode(
        &Header::default(),
        &json!({"role": "authenticated", "exp": unix_now() + 60}),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    c.push(
        Some(&j),
        ROOM,
        "access_token",
        json!({"access_token": forged}),
    );
    let got = c.drain();
    assert_eq!(events(&got), ["system", "phx_close"], "{got:?}");
    assert_eq!(got[0].payload["status"], "error");
    assert_eq!(got[0].payload["channel"], "room");
    assert_eq!(
        got[0].payload["message"],
        "Failed to validate JWT signature"
    );
    assert_eq!(got[1].join_ref, json!(j));
    assert_eq!(c.session.channel_count(), 0);
    let seen = watcher.drain();
    assert_eq!(events(&seen), ["presence_diff"], "{seen:?}");
    assert!(seen[0].payload["leaves"].get("me").is_some(), "{seen:?}");

    // A well-signed token that expired a minute ago.
    let j = c.joined(ROOM, "me");
    let expired = jwt(json!({"role": "authenticated", "exp": unix_now() - 60}));
    c.push(
        Some(&j),
        ROOM,
        "access_token",
        json!({"access_token": expired}),
    );
    let got = c.drain();
    assert_eq!(events(&got), ["system", "phx_close"], "{got:?}");
    let message = got[0].payload["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired"), "{message}");
    assert_eq!(c.session.channel_count(), 0);
    assert_eq!(c.session.close_reason(), None, "only the channel ends");
}

#[test]
fn a_refresh_with_a_valid_token_is_silent_and_sets_the_expiry() {
    let ctx = context(|_| {});
    let mut c = Client::new(&ctx, Vsn::V2);
    let j = c.joined(ROOM, "me");
    assert_eq!(c.session.next_expiry(), None, "API keys never expire");
    let exp = unix_now() + 3600;
    let token = jwt(json!({"role": "authenticated", "exp": exp}));
    c.push(
        Some(&j),
        ROOM,
        "access_token",
        json!({"access_token": token}),
    );
    assert!(c.drain().is_empty(), "refreshes are never replied to");
    assert_eq!(c.session.next_expiry(), Some(exp));

    // When the clock passes it, the channel ends with `token_expired`.
    c.session.expire(exp);
    let got = c.drain();
    assert_eq!(events(&got), ["system", "phx_close"], "{got:?}");
    assert_eq!(got[0].payload["message"], "Token has expired 0 seconds ago");
}

#[test]
fn a_join_with_an_expired_token_is_refused() {
    let ctx = context(|_| {});
    let mut c = Client::new(&ctx, Vsn::V2);
    let expired = jwt(json!({"role": "authenticated", "exp": unix_now() - 60}));
    c.push(
        Some("1"),
        ROOM,
        "phx_join",
        json!({"config": {}, "access_token": expired}),
    );
    let got = c.drain();
    assert_eq!(events(&got), ["phx_reply"], "{got:?}");
    assert_eq!(got[0].payload["status"], "error");
    let reason = got[0].payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired"),
        "{reason}"
    );
    assert!(ctx.registry.get(ROOM, false).is_none());
}

#[test]
fn leave_replies_ok_closes_and_its_presence_leaves() {
    let (_, mut watcher, mut c, j) = watched_member();

    let r = c.push(Some(&j), ROOM, "phx_leave", json!({}));
    let got = c.drain();
    assert_eq!(events(&got), ["phx_reply", "phx_close"], "{got:?}");
    assert_eq!(got[0].ref_, json!(r));
    assert_eq!(got[0].payload["status"], "ok");
    assert_eq!(got[1].join_ref, json!(j));
    assert_eq!(c.session.channel_count(), 0);
    let seen = watcher.drain();
    assert_eq!(events(&seen), ["presence_diff"], "{seen:?}");
    assert!(seen[0].payload["leaves"].get("me").is_some(), "{seen:?}");

    // The channel is no longer this socket's: pushes to it are unmatched.
    c.track(&j, ROOM, json!({}));
    let got = c.drain();
    assert_eq!(got[0].payload["response"]["reason"], "unmatched topic");
}

#[test]
fn dropping_a_session_without_grace_removes_its_presence_and_empty_channels() {
    let ctx = context(|_| {});
    let mut watcher = Client::new(&ctx, Vsn::V2);
    watcher.joined(ROOM, "watcher");
    let mut c = Client::new(&ctx, Vsn::V2);
    let j = c.joined(ROOM, "me");
    c.joined("realtime:alone", "me");
    c.track(&j, ROOM, json!({}));
    watcher.drain();

    drop(c);
    let seen = watcher.drain();
    assert_eq!(events(&seen), ["presence_diff"], "{seen:?}");
    assert!(seen[0].payload["leaves"].get("me").is_some(), "{seen:?}");
    assert!(ctx.registry.get("realtime:alone", false).is_none());
    assert_eq!(ctx.registry.channel_count(), 1);
}

#[test]
fn private_channels_follow_the_policies_and_private_only_refuses_public_ones() {
    let ctx = context(|s| s.private_only = true);
    let mut c = Client::new(&ctx, Vsn::V2);
    c.join(ROOM, json!({"private": false}));
    let got = c.drain();
    assert_eq!(
        got[0].payload["response"]["reason"],
        "PrivateOnly: This project only allows private channels"
    );
    // No policy grants anything to `anon`.
    c.join(ROOM, json!({"private": true}));
    let got = c.drain();
    assert_eq!(
        got[0].payload["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: room"
    );
    assert_eq!(ctx.registry.channel_count(), 0);
}
