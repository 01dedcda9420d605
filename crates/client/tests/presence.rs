//! The Presence guide's flows against an in-process Roster, in both vsns.

mod common;

use std::time::Duration;

use common::*;
use roster_client::{ChannelOptions, ChannelStatus, PresenceChange, Vsn};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserStatus {
    user: String,
    online_at: String,
}

fn status(user: &str) -> UserStatus {
    UserStatus {
        user: user.into(),
        online_at: "2026-05-01T10:00:00.000Z".into(),
    }
}

fn keyed(key: &str) -> ChannelOptions {
    ChannelOptions::default().presence_key(key)
}

#[tokio::test]
async fn sync_join_leave_callbacks_get_their_arguments() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("guide_{}", vsn.as_str());
        let a = client(running.addr, vsn);
        let ch_a = a.channel_with(&room, keyed("alice"));
        let log = log_presence(&ch_a);
        assert_eq!(ch_a.subscribe().await, ChannelStatus::Subscribed);
        // The join's snapshot (empty) fires a sync.
        eventually("first sync", || log.has("sync")).await;
        assert!(ch_a.presence_state().is_empty());

        ch_a.track(&status("user-1")).await.unwrap();
        eventually("own join", || log.has("join alice [] [user-1]")).await;
        let state = ch_a.presence_state();
        assert_eq!(state.len(), 1);
        let me = &state["alice"][0];
        assert!(!me.presence_ref.is_empty());
        assert_eq!(me.fields["user"], "user-1");
        assert!(!me.fields.contains_key("phx_ref") && !me.fields.contains_key("phx_ref_prev"));

        // Another client, another key: join, then leave on untrack.
        let b = client(running.addr, vsn);
        let ch_b = b.channel_with(&room, keyed("bob"));
        ch_b.subscribe().await.into_result().unwrap();
        ch_b.track(&status("user-2")).await.unwrap();
        eventually("bob joins", || log.has("join bob [] [user-2]")).await;
        ch_b.untrack().await.unwrap();
        eventually("bob leaves", || log.has("leave bob [] [user-2]")).await;
        assert_eq!(ch_a.presence_state().keys().collect::<Vec<_>>(), ["alice"]);

        // Same key from a second connection (another tab): `current` holds the first.
        let c = client(running.addr, vsn);
        let ch_c = c.channel_with(&room, keyed("alice"));
        ch_c.subscribe().await.into_result().unwrap();
        ch_c.track(&status("user-1b")).await.unwrap();
        eventually("second alice", || log.has("join alice [user-1] [user-1b]")).await;
        assert_eq!(ch_a.presence_state()["alice"].len(), 2);
        c.disconnect().await;
        eventually("tab closed", || log.has("leave alice [user-1] [user-1b]")).await;
        assert_eq!(ch_a.presence_state()["alice"].len(), 1);
        a.disconnect().await;
        b.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_late_joiner_syncs_to_the_current_state() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("late_{}", vsn.as_str());
        let early = client(running.addr, vsn);
        let ch = early.channel_with(&room, keyed("early"));
        ch.subscribe().await.into_result().unwrap();
        ch.track(&status("user-1")).await.unwrap();

        let late = client(running.addr, vsn);
        let ch_late = late.channel(&room);
        let log = log_presence(&ch_late);
        ch_late.subscribe().await.into_result().unwrap();
        eventually("late sync", || log.has("sync")).await;
        assert!(log.has("join early [] [user-1]"), "{:?}", log.lines());
        assert_eq!(
            ch_late.presence_state()["early"][0].fields["user"],
            "user-1"
        );
        early.disconnect().await;
        eventually("early leaves", || log.has("leave early [] [user-1]")).await;
        assert!(ch_late.presence_state().is_empty());
        late.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn without_a_key_the_server_generates_one() {
    let running = server().await;
    let c = client(running.addr, Vsn::V2);
    let ch = c.channel("anon");
    ch.subscribe().await.into_result().unwrap();
    ch.track(&json!({"user": "x"})).await.unwrap();
    eventually("own presence", || !ch.presence_state().is_empty()).await;
    let state = ch.presence_state();
    let key = state.keys().next().unwrap();
    assert_eq!(key.len(), 36, "a UUID: {key}");
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn retracking_updates_the_one_meta() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("update_{}", vsn.as_str());
        let c = client(running.addr, vsn);
        let ch = c.channel_with(&room, keyed("u"));
        let log = log_presence(&ch);
        ch.subscribe().await.into_result().unwrap();
        ch.track(&status("v1")).await.unwrap();
        eventually("first", || log.has("join u [] [v1]")).await;
        ch.track(&status("v2")).await.unwrap();
        // An update is a join and a leave of the same key (the guide's warning).
        eventually("update", || {
            log.has("join u [v1] [v2]") && log.has("leave u [v2] [v1]")
        })
        .await;
        let state = ch.presence_state_as::<UserStatus>().unwrap();
        assert_eq!(state["u"], [status("v2")]);
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn typed_decoding_and_the_change_stream() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("typed_{}", vsn.as_str());
        let observer = client(running.addr, vsn);
        let ch = observer.channel(&room);
        let mut changes = ch.presence_changes();
        ch.subscribe().await.into_result().unwrap();

        let other = client(running.addr, vsn);
        let ch_o = other.channel_with(&room, keyed("k1"));
        ch_o.subscribe().await.into_result().unwrap();
        ch_o.track(&status("typed")).await.unwrap();

        // The join's empty snapshot: just a sync.
        assert_eq!(next(&mut changes).await, PresenceChange::Sync);
        let join = next(&mut changes).await;
        assert_eq!(join.key(), Some("k1"));
        assert_eq!(
            join.decode_joins::<UserStatus>().unwrap(),
            [status("typed")]
        );
        assert!(join.decode_leaves::<UserStatus>().unwrap().is_empty());
        assert_eq!(next(&mut changes).await, PresenceChange::Sync);
        assert_eq!(
            ch.presence_state_as::<UserStatus>().unwrap()["k1"],
            [status("typed")]
        );

        ch_o.untrack().await.unwrap();
        let leave = next(&mut changes).await;
        assert!(matches!(&leave, PresenceChange::Leave { current, .. } if current.is_empty()));
        assert_eq!(
            leave.decode_leaves::<UserStatus>().unwrap(),
            [status("typed")]
        );
        assert!(leave.decode_joins::<UserStatus>().unwrap().is_empty());
        assert_eq!(next(&mut changes).await, PresenceChange::Sync);
        // Decoding into the wrong type is an error value.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrong {
            missing: u32,
        }
        assert!(leave.decode_leaves::<Wrong>().is_err());
        observer.disconnect().await;
        other.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unsubscribe_and_remove_channel_end_the_presence() {
    let running = server().await;
    let watcher = client(running.addr, Vsn::V2);
    let ch_w = watcher.channel("bye");
    let log = log_presence(&ch_w);
    ch_w.subscribe().await.into_result().unwrap();

    let c = client(running.addr, Vsn::V1);
    let ch = c.channel_with("bye", keyed("leaver"));
    ch.subscribe().await.into_result().unwrap();
    ch.track(&status("l")).await.unwrap();
    eventually("join", || log.has("join leaver [] [l]")).await;
    ch.unsubscribe().await.unwrap();
    assert_eq!(ch.status(), ChannelStatus::Closed);
    eventually("leave", || log.has("leave leaver [] [l]")).await;
    // A closed channel refuses pushes; it can be subscribed again.
    assert_eq!(
        ch.track(&status("l")).await,
        Err(roster_client::Error::NotSubscribed)
    );
    ch.subscribe().await.into_result().unwrap();
    ch.track(&status("l2")).await.unwrap();
    eventually("join again", || log.has("join leaver [] [l2]")).await;

    c.remove_channel(&ch).await.unwrap();
    assert_eq!(ch.status(), ChannelStatus::Closed);
    assert!(c.channels().is_empty());
    eventually("leave again", || log.has("leave leaver [] [l2]")).await;
    running.shutdown(Duration::from_secs(1)).await;
}

/// Changes of `key` from the stream until the next `Sync`.
async fn changes_until_sync(
    changes: &mut roster_client::PresenceChanges,
    key: &str,
) -> Vec<PresenceChange> {
    let mut got = Vec::new();
    loop {
        match next(changes).await {
            PresenceChange::Sync => return got,
            change if change.key() == Some(key) => got.push(change),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_quiet_update_is_one_update_event_and_a_classic_one_stays_join_and_leave() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("quiet_{}", vsn.as_str());
        let watcher = client(running.addr, vsn);
        let ch_w = watcher.channel(&room);
        let mut changes = ch_w.presence_changes();
        let updates = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = updates.clone();
        ch_w.on_presence_update(move |key, old, new| {
            seen.lock()
                .unwrap()
                .push((key.to_owned(), old.clone(), new.clone()));
        });
        ch_w.subscribe().await.into_result().unwrap();
        assert_eq!(next(&mut changes).await, PresenceChange::Sync);

        let quiet = client(running.addr, vsn);
        let ch_q = quiet.channel_with(&room, keyed("quiet").quiet_updates(true));
        ch_q.subscribe().await.into_result().unwrap();
        ch_q.track(&status("first")).await.unwrap();
        let joined = changes_until_sync(&mut changes, "quiet").await;
        assert!(
            matches!(&joined[..], [PresenceChange::Join { .. }]),
            "{joined:?}"
        );
        let first_ref = ch_w.presence_state()["quiet"][0].presence_ref.clone();

        ch_q.track(&status("second")).await.unwrap();
        let updated = changes_until_sync(&mut changes, "quiet").await;
        let [PresenceChange::Update { key, old, new }] = &updated[..] else {
            panic!("one update, no join or leave: {updated:?}");
        };
        assert_eq!(key, "quiet");
        assert_eq!(old.decode::<UserStatus>().unwrap(), status("first"));
        assert_eq!(new.decode::<UserStatus>().unwrap(), status("second"));
        assert_eq!(
            (&old.presence_ref, &new.presence_ref),
            (&first_ref, &first_ref)
        );
        let state = ch_w.presence_state_as::<UserStatus>().unwrap();
        assert_eq!(state["quiet"], [status("second")]);
        eventually("the update callback ran", || {
            updates.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(updates.lock().unwrap()[0].2, *new);

        // A classic member in the same room: join + leave, as on Supabase.
        let classic = client(running.addr, vsn);
        let ch_c = classic.channel_with(&room, keyed("classic"));
        ch_c.subscribe().await.into_result().unwrap();
        ch_c.track(&status("first")).await.unwrap();
        changes_until_sync(&mut changes, "classic").await;
        ch_c.track(&status("second")).await.unwrap();
        let classic_update = changes_until_sync(&mut changes, "classic").await;
        assert!(
            matches!(
                &classic_update[..],
                [PresenceChange::Join { .. }, PresenceChange::Leave { .. }]
            ),
            "{classic_update:?}"
        );
        assert_eq!(updates.lock().unwrap().len(), 1, "no update event for it");

        // A late joiner sees the updated state, and no update event for it.
        let late = client(running.addr, vsn);
        let ch_l = late.channel(&room);
        let mut late_changes = ch_l.presence_changes();
        ch_l.subscribe().await.into_result().unwrap();
        let mut first_view = Vec::new();
        loop {
            match next(&mut late_changes).await {
                PresenceChange::Sync if ch_l.presence_state().len() == 2 => break,
                PresenceChange::Sync => {}
                change => first_view.push(change),
            }
        }
        // The server re-sends the updated meta after the snapshot (for
        // clients that reconcile by ref alone): nothing changed, just a sync.
        assert_eq!(next(&mut late_changes).await, PresenceChange::Sync);
        assert_eq!(
            ch_l.presence_state_as::<UserStatus>().unwrap()["quiet"],
            [status("second")]
        );
        assert!(
            first_view
                .iter()
                .all(|c| matches!(c, PresenceChange::Join { .. })),
            "{first_view:?}"
        );
        for c in [watcher, quiet, classic, late] {
            c.disconnect().await;
        }
    }
    running.shutdown(Duration::from_secs(1)).await;
}
