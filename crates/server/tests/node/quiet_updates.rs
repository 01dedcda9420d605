//! Replace ("quiet") updates over real sockets: the updating member's join
//! config (or the server's default) decides the diff's shape for everyone;
//! classic members in the same room keep Supabase's join + leave.

use std::time::Duration;

use crate::common::*;
use roster_presence::Updates;
use serde_json::{json, Value};

const ROOM: &str = "realtime:quiet";

/// Join with presence, `key`, and `config.presence.updates` when given.
async fn join_with(c: &mut Client, key: &str, updates: Option<&str>) -> String {
    let mut presence = json!({"key": key, "enabled": true});
    if let Some(u) = updates {
        presence["updates"] = json!(u);
    }
    let j = c
        .join_raw(ROOM, json!({"config": {"presence": presence}}))
        .await;
    let reply = c.recv_event("phx_reply").await;
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.raw);
    c.recv_event("presence_state").await;
    j
}

fn metas<'a>(side: &'a Value, key: &str) -> &'a Vec<Value> {
    side[key]["metas"].as_array().expect("metas")
}

#[tokio::test]
async fn a_replace_update_is_one_join_under_the_same_ref_and_classic_stays_classic() {
    let s = start().await;
    let mut watcher = Client::connect(s.addr, 1).await;
    let jw = join_with(&mut watcher, "watcher", None).await;
    watcher.track(&jw, ROOM, json!({})).await;
    let mut quiet = Client::connect(s.addr, 2).await;
    let jq = join_with(&mut quiet, "quiet", Some("replace")).await;
    let mut classic = Client::connect(s.addr, 2).await;
    let jc = join_with(&mut classic, "classic", Some("classic")).await;

    quiet.track(&jq, ROOM, json!({"s": "on"})).await;
    classic.track(&jc, ROOM, json!({"s": "on"})).await;
    let first = watcher
        .recv_matching("quiet's join", |g| {
            g.event == "presence_diff" && g.payload["joins"].get("quiet").is_some()
        })
        .await;
    let quiet_ref = metas(&first.payload["joins"], "quiet")[0]["phx_ref"].clone();
    let first = watcher
        .recv_matching("classic's join", |g| {
            g.event == "presence_diff" && g.payload["joins"].get("classic").is_some()
        })
        .await;
    let classic_ref = metas(&first.payload["joins"], "classic")[0]["phx_ref"].clone();
    // The watcher's own join, passed over above.
    watcher.clear_stash();

    quiet.track(&jq, ROOM, json!({"s": "away"})).await;
    let diff = watcher.recv_event("presence_diff").await;
    assert_eq!(
        diff.payload["leaves"],
        json!({}),
        "no leave: {:?}",
        diff.raw
    );
    let joined = metas(&diff.payload["joins"], "quiet");
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["s"], "away");
    assert_eq!(joined[0]["phx_ref"], quiet_ref, "the same ref");
    assert_eq!(
        joined[0]["phx_ref_prev"], quiet_ref,
        "marked as updated in place"
    );

    classic.track(&jc, ROOM, json!({"s": "away"})).await;
    let diff = watcher.recv_event("presence_diff").await;
    let joined = metas(&diff.payload["joins"], "classic");
    assert_ne!(joined[0]["phx_ref"], classic_ref, "a new ref");
    assert_eq!(
        metas(&diff.payload["leaves"], "classic")[0]["phx_ref"],
        classic_ref
    );
    watcher.expect_nothing_pending().await;

    let view = watcher.view(ROOM);
    assert_eq!(view["quiet"].len(), 1);
    assert_eq!(view["quiet"][0]["s"], "away");
    assert_eq!(view["classic"].len(), 1);
    assert_eq!(view["classic"][0]["s"], "away");
}

#[tokio::test]
async fn the_server_default_applies_unless_the_join_says_classic() {
    let s = start_with(|s| s.presence_features.updates = Updates::Replace).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    join_with(&mut watcher, "watcher", None).await;
    let mut kept = Vec::new();
    for (key, updates, quiet) in [("d", None, true), ("c", Some("classic"), false)] {
        let mut c = Client::connect(s.addr, 2).await;
        let j = join_with(&mut c, key, updates).await;
        c.track(&j, ROOM, json!({"n": 1})).await;
        watcher.recv_event("presence_diff").await;
        c.track(&j, ROOM, json!({"n": 2})).await;
        let diff = watcher.recv_event("presence_diff").await;
        let left = diff.payload["leaves"].get(key).is_some();
        assert_eq!(left, !quiet, "{key}: {:?}", diff.raw);
        kept.push(c);
    }
}

#[tokio::test]
async fn a_bad_updates_value_is_refused_naming_the_field() {
    let s = start().await;
    let mut c = Client::connect(s.addr, 2).await;
    for bad in [json!("REPLACE"), json!(1), json!("x".repeat(10_000))] {
        let j = c
            .join_raw(
                ROOM,
                json!({"config": {"presence": {"key": "k", "updates": bad}}}),
            )
            .await;
        let reply = c.recv_reply(&j).await;
        assert_eq!(reply.payload["status"], "error");
        assert_eq!(
            reply.payload["response"]["reason"],
            r#"InvalidJoinPayload: config.presence.updates must be "classic" or "replace""#
        );
    }
    c.expect_nothing_pending().await;
}

/// The official clients reconcile a snapshot by ref: a client that rejoins
/// after missing a replace update would keep the old state. The server
/// re-sends updated metas right after a joiner's snapshot.
#[tokio::test]
async fn a_rejoining_client_gets_the_updated_meta_after_its_snapshot() {
    let s = start().await;
    let mut quiet = Client::connect(s.addr, 2).await;
    let jq = join_with(&mut quiet, "quiet", Some("replace")).await;
    quiet.track(&jq, ROOM, json!({"v": 1})).await;
    let mut late = Client::connect(s.addr, 2).await;
    join_with(&mut late, "late", None).await;
    assert_eq!(late.view(ROOM)["quiet"][0]["v"], 1);
    late.expect_nothing_pending().await;

    // `late` leaves, misses an update, and joins again on the same socket:
    // its view is kept across the rejoin, as phx-js keeps it.
    let r = late.push("x", ROOM, "phx_leave", json!({})).await;
    late.recv_reply(&r).await;
    late.recv_event("phx_close").await;
    quiet.track(&jq, ROOM, json!({"v": 2})).await;
    join_with(&mut late, "late", None).await;
    let again = late.recv_event("presence_diff").await;
    assert_eq!(again.payload["leaves"], json!({}));
    assert_eq!(metas(&again.payload["joins"], "quiet")[0]["v"], 2);
    assert_eq!(late.view(ROOM)["quiet"].len(), 1);
    assert_eq!(late.view(ROOM)["quiet"][0]["v"], 2);
    late.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_replace_member_back_within_grace_takes_its_meta_over_and_updates_it() {
    let s = start_with(|s| s.presence_grace = Duration::from_secs(30)).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    join_with(&mut watcher, "watcher", None).await;
    let mut phone = Client::connect(s.addr, 2).await;
    let j = join_with(&mut phone, "phone", Some("replace")).await;
    phone.track(&j, ROOM, json!({"cursor": 1})).await;
    let joined = watcher.recv_event("presence_diff").await;
    let r = metas(&joined.payload["joins"], "phone")[0]["phx_ref"].clone();
    phone.drop_abruptly();

    let mut back = Client::connect(s.addr, 2).await;
    let j = join_with(&mut back, "phone", Some("replace")).await;
    back.track(&j, ROOM, json!({"cursor": 2})).await;
    let diff = watcher.recv_event("presence_diff").await;
    assert_eq!(diff.payload["leaves"], json!({}), "{:?}", diff.raw);
    assert_eq!(metas(&diff.payload["joins"], "phone")[0]["phx_ref"], r);
    assert_eq!(watcher.view(ROOM)["phone"].len(), 1);
    watcher.expect_nothing_pending().await;
}

#[tokio::test]
async fn coalesced_replace_updates_net_to_one_join() {
    let s = start_with(|s| s.presence_coalesce = Duration::from_millis(300)).await;
    let mut quiet = Client::connect(s.addr, 2).await;
    let jq = join_with(&mut quiet, "quiet", Some("replace")).await;
    quiet.track(&jq, ROOM, json!({"v": 0})).await;
    quiet.recv_event("presence_diff").await;
    let mut watcher = Client::connect(s.addr, 2).await;
    join_with(&mut watcher, "watcher", None).await;
    // Tracks are acknowledged after the window's diff: send them unawaited.
    for v in 1..=3 {
        quiet
            .push(
                &jq,
                ROOM,
                "presence",
                json!({"event": "track", "payload": {"v": v}}),
            )
            .await;
    }
    let diff = watcher.recv_event("presence_diff").await;
    assert_eq!(diff.payload["leaves"], json!({}));
    let joined = metas(&diff.payload["joins"], "quiet");
    assert_eq!((joined.len(), &joined[0]["v"]), (1, &json!(3)));
    watcher.expect_nothing_pending().await;
}
