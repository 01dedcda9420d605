//! Large rooms. Coalesced diffs (`presence_coalesce`): a channel's changes
//! within a window go out as one net diff; views stay exact, a joiner
//! mid-window gets the state before the window, and `track` is answered
//! only after the diff carrying it. Count-only members
//! (`config.presence.count_only`) get `presence_count` instead of the list.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const ROOM: &str = "realtime:coalesce";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_becomes_few_diffs_and_every_view_is_exact() {
    let s = start_with(|c| c.presence_coalesce = Duration::from_millis(300)).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    watcher.join(ROOM, Some("watcher")).await;
    // Every frame the watcher reads, also those until_view consumes.
    watcher.start_log();
    let n = 20;
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(s.addr, 1 + (i % 2) as u8).await;
        let j = c.join(ROOM, Some(&format!("u{i}"))).await;
        clients.push((c, j));
    }
    // Everyone tracks twice (a join, then an update) without waiting for
    // replies: 2n changes, most of them within one window.
    let mut pushed = Vec::new();
    for (i, (c, j)) in clients.iter_mut().enumerate() {
        let mut refs = Vec::new();
        for round in 0..2 {
            let track = json!({"type": "presence", "event": "track",
                "payload": {"i": i, "round": round}});
            refs.push(c.push(j, ROOM, "presence", track).await);
        }
        pushed.push(refs);
    }
    for (i, ((c, _), refs)) in clients.iter_mut().zip(&pushed).enumerate() {
        for r in refs {
            let reply = c.recv_reply(r).await;
            assert_eq!(reply.payload["status"], "ok", "{:?}", reply.raw);
        }
        // The ack follows the diff that carries the change.
        assert_eq!(c.view(ROOM)[&format!("u{i}")][0]["round"], 1);
    }
    watcher
        .until_view(ROOM, |v| {
            (0..n).all(|i| {
                v.get(&format!("u{i}"))
                    .is_some_and(|m| m.len() == 1 && m[0]["round"] == 1)
            })
        })
        .await;
    watcher.expect_nothing_pending().await;
    let log = watcher.take_log();
    let diffs: Vec<&Got> = log.iter().filter(|g| g.event == "presence_diff").collect();
    assert!(
        !diffs.is_empty(),
        "the watcher's log holds no diff: {log:?}"
    );
    assert!(
        diffs.len() < n,
        "{} diffs for {} changes: not coalesced",
        diffs.len(),
        2 * n
    );
    for d in &diffs {
        // A ref never both joins and leaves in one diff: a window sends its
        // net change (a join then an update is one join of the last ref).
        let refs = |side: &str| -> Vec<String> {
            d.payload[side]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|p| p["metas"].as_array().unwrap().clone())
                .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
                .collect()
        };
        let (joins, leaves) = (refs("joins"), refs("leaves"));
        assert!(
            joins.iter().all(|r| !leaves.contains(r)),
            "a ref both joins and leaves: {:?}",
            d.raw
        );
    }
    // Every client's view is the truth.
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.until_view(ROOM, |v| {
            v.len() == n && v.values().all(|m| m.len() == 1 && m[0]["round"] == 1)
        })
        .await;
        let v = c.view(ROOM);
        assert_eq!(v.len(), n, "client {i}: {v:?}");
        assert!(v.values().all(|m| m.len() == 1 && m[0]["round"] == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_mid_window_gets_the_state_before_it_then_the_window() {
    let s = start_with(|c| c.presence_coalesce = Duration::from_millis(1000)).await;
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, Some("a")).await;
    a.track(&ja, ROOM, json!({"v": 1})).await;
    // A window is now open with a's second state in it; b joins meanwhile.
    let ra = a
        .push(
            &ja,
            ROOM,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"v": 2}}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = Client::connect(s.addr, 1).await;
    b.join(ROOM, Some("b")).await;
    assert_eq!(b.view(ROOM)["a"][0]["v"], 1, "state before the window");
    // More joiners in the same window: the state's frame is built once per
    // (vsn, join ref) and shared, so each must still carry its own join ref.
    let mut late = Vec::new();
    for (vsn, heartbeats) in [(1, 0), (1, 1), (2, 0), (2, 2)] {
        let mut c = Client::connect(s.addr, vsn).await;
        for _ in 0..heartbeats {
            c.heartbeat().await;
        }
        let join_ref = c
            .join_raw(
                ROOM,
                json!({"config": {"presence": {"key": format!("late{vsn}-{heartbeats}"), "enabled": true}}}),
            )
            .await;
        let state = c.recv_event("presence_state").await;
        // vsn 1.0.0 has no join_ref field (Phoenix's V1 serializer).
        let own = if vsn == 2 {
            json!(join_ref)
        } else {
            json!(null)
        };
        assert_eq!(state.join_ref, own, "{:?}", state.raw);
        assert_eq!(state.payload["a"]["metas"][0]["v"], 1, "{:?}", state.raw);
        assert_eq!(keys(&state.payload), ["a"], "{:?}", state.raw);
        late.push(c);
    }
    b.until_view(ROOM, |v| {
        v.get("a").is_some_and(|m| m.len() == 1 && m[0]["v"] == 2)
    })
    .await;
    for c in &mut late {
        c.until_view(ROOM, |v| {
            v.get("a").is_some_and(|m| m.len() == 1 && m[0]["v"] == 2)
        })
        .await;
    }
    a.recv_reply(&ra).await;
    assert_eq!(a.view(ROOM)["a"][0]["v"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_only_member_gets_numbers_not_the_list() {
    let s = start().await;
    let mut counter = Client::connect(s.addr, 2).await;
    let payload = json!({"config": {"broadcast": {"ack": false, "self": false},
        "presence": {"key": "", "enabled": true, "count_only": true},
        "private": false, "postgres_changes": []}});
    let jref = counter.join_raw(ROOM, payload).await;
    let reply = counter.recv_reply(&jref).await;
    assert_eq!(reply.payload["status"], "ok");
    let first = counter.recv_event("presence_count").await;
    assert_eq!(first.payload, json!({"keys": 0, "presences": 0}));
    let mut members = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(s.addr, 1).await;
        let j = c.join(ROOM, Some(if i < 4 { "a" } else { "b" })).await;
        c.track(&j, ROOM, json!({"i": i})).await;
        members.push(c);
    }
    // Counts arrive (at most every 250 ms) until they show 2 keys, 5 metas.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = counter.recv().await;
        assert_ne!(
            got.event, "presence_state",
            "no list for a count-only member"
        );
        assert_ne!(
            got.event, "presence_diff",
            "no list for a count-only member"
        );
        if got.event == "presence_count" && got.payload == json!({"keys": 2, "presences": 5}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted 2 keys / 5 metas"
        );
    }
    // The members' list agrees with the counts.
    members[0]
        .until_view(ROOM, |v| {
            v.len() == 2 && v.values().map(Vec::len).sum::<usize>() == 5
        })
        .await;
    members.pop().unwrap().close().await;
    let got = counter.recv_event("presence_count").await;
    assert_eq!(got.payload, json!({"keys": 1, "presences": 4}));
}

/// A snapshot larger than a client can take (realtime-py: 1 MiB) reaches a
/// late joiner as a `presence_state` and `presence_diff`s, each under the
/// frame limit, that add up to the whole room; with default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_frame_limit_reaches_a_strict_client_in_parts() {
    let s = start().await;
    const BIG: &str = "realtime:big-snapshot";
    let mut members = Vec::new();
    // 80 × ~30 KiB: a 2.4 MB state, more than twice realtime-py's limit.
    for i in 0..80 {
        let mut c = Client::connect(s.addr, 2).await;
        let j = c.join(BIG, Some(&format!("m{i}"))).await;
        let state = json!({"i": i, "blob": "z".repeat(30 * 1024)});
        assert_eq!(c.track(&j, BIG, state).await.payload["status"], "ok");
        members.push(c);
    }
    for vsn in [1, 2] {
        let mut late = Client::connect_canary(s.addr, vsn).await;
        late.start_log();
        late.join(BIG, Some("late")).await;
        late.until_view(BIG, |v| (0..80).all(|i| v.contains_key(&format!("m{i}"))))
            .await;
        let log = late.take_log();
        let states = log.iter().filter(|g| g.event == "presence_state").count();
        let diffs = log.iter().filter(|g| g.event == "presence_diff").count();
        assert_eq!(states, 1);
        assert!(
            diffs >= 4,
            "a 2.4 MB snapshot in 512 KiB parts: {diffs} diffs"
        );
        for i in 0..80 {
            let metas = &late.view(BIG)[&format!("m{i}")];
            assert_eq!(metas.len(), 1);
        }
        // The canary's limit held: it is still open and answers.
        late.heartbeat().await;
    }
}
