//! Broadcast between Rust clients, across vsns; binary broadcasts from REST.

mod common;

use std::time::Duration;

use common::*;
use roster_client::{BroadcastMessage, ChannelOptions, Vsn};
use serde::Deserialize;
use serde_json::json;

fn record(log: &Log) -> impl Fn(&BroadcastMessage) + Send + Sync + 'static {
    let log = log.clone();
    move |m| log.push(format!("{} {}", m.event, m.payload))
}

#[tokio::test]
async fn two_clients_exchange_broadcasts_in_every_vsn_pairing() {
    let running = server().await;
    for (from, to) in [
        (Vsn::V1, Vsn::V1),
        (Vsn::V1, Vsn::V2),
        (Vsn::V2, Vsn::V1),
        (Vsn::V2, Vsn::V2),
    ] {
        let room = format!("bc_{}_{}", from.as_str(), to.as_str());
        let sender = client(running.addr, from);
        let receiver = client(running.addr, to);
        let tx = sender.channel(&room);
        let rx = receiver.channel(&room);
        let (cursor, all, own) = (Log::default(), Log::default(), Log::default());
        rx.on_broadcast("cursor", record(&cursor))
            .on_broadcast("*", record(&all));
        tx.on_broadcast("*", record(&own));
        tx.subscribe().await.into_result().unwrap();
        rx.subscribe().await.into_result().unwrap();

        tx.send_broadcast("cursor", &json!({"x": 10, "y": 20}))
            .await
            .unwrap();
        tx.send_broadcast("other", &json!({"n": 1})).await.unwrap();
        eventually("both arrive", || all.lines().len() == 2).await;
        assert_eq!(
            all.lines(),
            [r#"cursor {"x":10,"y":20}"#, r#"other {"n":1}"#]
        );
        assert_eq!(cursor.lines(), [r#"cursor {"x":10,"y":20}"#]);
        // `self` is off by default. The marker: the receiver answers only
        // once both arrived, so an echo of either would reach the sender first.
        rx.send_broadcast("marker", &json!({})).await.unwrap();
        eventually("the marker", || !own.lines().is_empty()).await;
        assert_eq!(own.lines(), ["marker {}"]);
        sender.disconnect().await;
        receiver.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn self_and_ack() {
    let running = server().await;
    for vsn in VSNS {
        let c = client(running.addr, vsn);
        let ch = c.channel_with(
            &format!("selfack_{}", vsn.as_str()),
            ChannelOptions::default()
                .broadcast_self(true)
                .broadcast_ack(true),
        );
        let got = Log::default();
        let typed = Log::default();
        let t = typed.clone();
        ch.on_broadcast("ping", record(&got))
            .on_broadcast("ping", move |m| {
                #[derive(Deserialize)]
                struct Ping {
                    n: u32,
                }
                t.push(m.decode::<Ping>().unwrap().n.to_string());
            });
        ch.subscribe().await.into_result().unwrap();
        // With ack, Ok means the server acknowledged it.
        ch.send_broadcast("ping", &json!({"n": 7})).await.unwrap();
        eventually("own broadcast", || got.has(r#"ping {"n":7}"#)).await;
        assert_eq!(typed.lines(), ["7"]);
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn binary_broadcasts_arrive_as_bytes_on_vsn_2() {
    let running = server().await;
    let c = client(running.addr, Vsn::V2);
    let ch = c.channel("blobs");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    ch.on_broadcast("blob", move |m| sink.lock().unwrap().push(m.clone()));
    ch.subscribe().await.into_result().unwrap();
    let status = http_post(
        running.addr,
        "/api/broadcast/blobs/events/blob",
        &[
            ("apikey", KEY),
            ("Content-Type", "application/octet-stream"),
        ],
        &[0, 1, 2, 255],
    )
    .await;
    assert_eq!(status, 202);
    eventually("binary broadcast", || !got.lock().unwrap().is_empty()).await;
    let m = got.lock().unwrap()[0].clone();
    assert_eq!(m.event, "blob");
    assert_eq!(m.binary.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert!(m.payload.is_null());
    running.shutdown(Duration::from_secs(1)).await;
}
