//! Reconnection for real: a TCP proxy between client and server is cut or
//! paused; a fake server ignores heartbeats.

mod common;

use std::time::Duration;

use common::*;
use roster_client::{ChannelOptions, ChannelStatus, RealtimeChannel, RealtimeClient, Vsn};
use serde_json::json;

/// A negative check's positive marker: `from` broadcasts, and this waits
/// until `to` has it. The server handles a socket's pushes in order and
/// fans each out before the next, so whatever `from` sent before (a track,
/// a second join) reached `to` first.
async fn marker(from: &RealtimeChannel, to: &RealtimeChannel) {
    let got = Log::default();
    let g = got.clone();
    to.on_broadcast("marker", move |_| g.push("marker".into()));
    from.send_broadcast("marker", &json!({})).await.unwrap();
    eventually("the marker", || got.has("marker")).await;
}

fn through(proxy: &Proxy, vsn: Vsn) -> RealtimeClient {
    RealtimeClient::with_options(&format!("http://{}", proxy.addr), KEY, options(vsn)).unwrap()
}

#[tokio::test]
async fn after_the_socket_drops_it_reconnects_rejoins_and_retracks() {
    let running = server().await;
    for vsn in VSNS {
        let room = format!("drop_{}", vsn.as_str());
        let proxy = Proxy::start(running.addr).await;
        let roamer = through(&proxy, vsn);
        let ch = roamer.channel_with(&room, ChannelOptions::default().presence_key("roamer"));
        ch.subscribe().await.into_result().unwrap();
        ch.track(&json!({"user": "roaming"})).await.unwrap();

        let observer = client(running.addr, vsn);
        let watch = observer.channel(&room);
        watch.subscribe().await.into_result().unwrap();
        eventually("observer sees the roamer", || {
            watch
                .presence_state()
                .get("roamer")
                .is_some_and(|m| m.len() == 1)
        })
        .await;
        let first_ref = watch.presence_state()["roamer"][0].presence_ref.clone();

        let mut status = ch.status_changes();
        status.mark_unchanged();
        proxy.cut();
        // The drop is seen, then the channel is joined again.
        // (A watch `Ref` holds a lock: keep none alive across awaits.)
        let seen = tokio::time::timeout(WAIT, status.wait_for(|s| !s.is_subscribed()))
            .await
            .is_ok();
        assert!(seen, "drop not noticed");
        status_becomes(&ch, "subscribed again", ChannelStatus::is_subscribed).await;
        assert!(proxy.accepted() >= 2);
        assert!(roamer.is_connected());

        // Re-tracked: the observer has exactly one, new, meta for the key.
        eventually("re-tracked meta", || {
            watch.presence_state().get("roamer").is_some_and(|m| {
                m.len() == 1 && m[0].presence_ref != first_ref && m[0].fields["user"] == "roaming"
            })
        })
        .await;
        // Anything else the roamer sent on rejoining reaches the observer
        // before its marker.
        marker(&ch, &watch).await;
        let metas = &watch.presence_state()["roamer"];
        assert_eq!(metas.len(), 1, "no ghost, no duplicate: {metas:?}");
        // The roamer's own view agrees.
        eventually("own view", || {
            ch.presence_state()
                .get("roamer")
                .is_some_and(|m| m.len() == 1)
        })
        .await;
        roamer.disconnect().await;
        observer.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn auto_retrack_can_be_switched_off() {
    let running = server().await;
    let proxy = Proxy::start(running.addr).await;
    let roamer = through(&proxy, Vsn::V2);
    let ch = roamer.channel_with(
        "no_retrack",
        ChannelOptions::default()
            .presence_key("roamer")
            .auto_retrack(false),
    );
    ch.subscribe().await.into_result().unwrap();
    ch.track(&json!({"user": "r"})).await.unwrap();
    let observer = client(running.addr, Vsn::V2);
    let watch = observer.channel("no_retrack");
    watch.subscribe().await.into_result().unwrap();
    eventually("roamer seen", || {
        watch.presence_state().contains_key("roamer")
    })
    .await;

    proxy.cut();
    eventually("roamer gone", || {
        !watch.presence_state().contains_key("roamer")
    })
    .await;
    status_becomes(&ch, "subscribed again", ChannelStatus::is_subscribed).await;
    // A re-track on rejoining would reach the observer before the marker.
    marker(&ch, &watch).await;
    assert!(!watch.presence_state().contains_key("roamer"));
    // The application tracks again itself.
    ch.track(&json!({"user": "r"})).await.unwrap();
    eventually("roamer back", || {
        watch.presence_state().contains_key("roamer")
    })
    .await;
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unanswered_heartbeat_closes_and_reconnects() {
    let fake = Fake::start(true, false).await;
    let opts = options(Vsn::V2).heartbeat_interval(Duration::from_millis(100));
    let c = fake.client(opts);
    let ch = c.channel("hb");
    ch.subscribe().await.into_result().unwrap();
    let mut status = ch.status_changes();
    status.mark_unchanged();
    let lost = tokio::time::timeout(WAIT, status.wait_for(|s| !s.is_subscribed())).await;
    match lost.expect("heartbeat timeout noticed").map(|s| s.clone()) {
        Ok(ChannelStatus::ChannelError(reason)) => assert!(reason.contains("heartbeat timeout")),
        other => panic!("{other:?}"),
    }
    status_becomes(&ch, "subscribed again", ChannelStatus::is_subscribed).await;
    assert!(fake.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    c.disconnect().await;
}

#[tokio::test]
async fn a_paused_connection_times_the_track_out_then_recovers() {
    let running = server().await;
    let proxy = Proxy::start(running.addr).await;
    let opts = options(Vsn::V2)
        .timeout(Duration::from_millis(400))
        .heartbeat_interval(Duration::from_millis(150));
    let c = RealtimeClient::with_options(&format!("http://{}", proxy.addr), KEY, opts).unwrap();
    let ch = c.channel_with("paused", ChannelOptions::default().presence_key("p"));
    ch.subscribe().await.into_result().unwrap();

    proxy.pause(true);
    let started = tokio::time::Instant::now();
    assert_eq!(
        ch.track(&json!({"user": "p"})).await,
        Err(roster_client::Error::TimedOut)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.pause(false);

    // The heartbeat timeout dropped the stalled socket; the rejoin re-tracks.
    let observer = client(running.addr, Vsn::V1);
    let watch = observer.channel("paused");
    watch.subscribe().await.into_result().unwrap();
    eventually("tracked after recovery", || {
        watch
            .presence_state()
            .get("p")
            .is_some_and(|m| m.len() == 1)
    })
    .await;
    marker(&ch, &watch).await;
    assert_eq!(watch.presence_state()["p"].len(), 1);
    running.shutdown(Duration::from_secs(1)).await;
}
