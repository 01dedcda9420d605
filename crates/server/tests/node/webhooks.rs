//! Presence webhooks against a local receiver: key-level join/leave only,
//! batching, signatures, and a receiver that is down for a while (refusing
//! connections, then answering 500) while presence goes on undelayed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::webhook_receiver::{verify, Receiver};
use roster_server::settings::WebhookSettings;
use roster_server::Settings;
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_secret";
const ROOM: &str = "realtime:hooks";

impl Receiver {
    /// Wait until `n` events have been delivered; returns them.
    async fn wait_events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} events, got {}",
                summary(&got).join(", ")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn hooks(url: String, batch_ms: u64, max_batch: usize) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.webhooks = Some(WebhookSettings {
            url,
            ca_file: None,
            secret: SECRET.into(),
            batch: Duration::from_millis(batch_ms),
            max_batch,
            queue: 1000,
            max_retry: Duration::from_secs(60),
        })
    }
}

/// "member_join hooks alice", … (and every event is of a public channel).
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e["private"], false);
            assert!(e["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
            format!(
                "{} {} {}",
                e["event"].as_str().unwrap(),
                e["channel"].as_str().unwrap(),
                e["key"].as_str().unwrap()
            )
        })
        .collect()
}

/// A counter's value in `/metrics` (`name{labels}` exactly as rendered).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn untrack(c: &mut Client, join_ref: &str, topic: &str) {
    let r = c
        .push(
            join_ref,
            topic,
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    assert_eq!(c.recv_reply(&r).await.payload["status"], "ok");
}

#[tokio::test]
async fn one_join_per_key_in_and_one_leave_per_key_out() {
    let rx = Receiver::start(SECRET).await;
    let s = start_with(hooks(rx.url(), 20, 100)).await;
    let quiet = || tokio::time::sleep(Duration::from_millis(200));

    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(ROOM, Some("alice")).await;
    a.track(&ja, ROOM, json!({"n": 1})).await;
    rx.wait_events(1).await;
    let mut b = Client::connect(s.addr, 1).await;
    let jb = b.join(ROOM, Some("bob")).await;
    b.track(&jb, ROOM, json!({})).await;
    rx.wait_events(2).await;

    // A second socket under alice's key, a state update, and the untrack of
    // one of alice's two metas: the key stays, so no event.
    let mut a2 = Client::connect(s.addr, 2).await;
    let ja2 = a2.join(ROOM, Some("alice")).await;
    a2.track(&ja2, ROOM, json!({"n": 1})).await;
    a.track(&ja, ROOM, json!({"n": 2})).await;
    untrack(&mut a2, &ja2, ROOM).await;
    quiet().await;
    assert_eq!(rx.delivered().len(), 2);

    // Last metas out, three ways: a dropped socket, an untrack, a phx_leave.
    a.drop_abruptly();
    rx.wait_events(3).await;
    untrack(&mut b, &jb, ROOM).await;
    rx.wait_events(4).await;
    let mut c = Client::connect(s.addr, 2).await;
    let jc = c.join(ROOM, Some("carol")).await;
    c.track(&jc, ROOM, json!({})).await;
    rx.wait_events(5).await;
    let r = c.push(&jc, ROOM, "phx_leave", json!({})).await;
    c.recv_reply(&r).await;
    rx.wait_events(6).await;
    quiet().await;

    assert_eq!(
        summary(&rx.delivered()),
        [
            "member_join hooks alice",
            "member_join hooks bob",
            "member_leave hooks alice",
            "member_leave hooks bob",
            "member_join hooks carol",
            "member_leave hooks carol",
        ]
    );
    for r in rx.requests() {
        assert!(r.verified, "bad signature: {r:?}");
        assert_eq!(r.status, 200);
        assert_eq!(r.path, "/hooks");
        assert_eq!(r.content_type, "application/json");
        assert!(!r.delivery.is_empty());
    }
    assert_eq!(metric(s.addr, "roster_webhook_events_total").await, 6.0);
    assert_eq!(
        metric(s.addr, "roster_webhook_events_delivered_total").await,
        6.0
    );
}

#[tokio::test]
async fn quick_changes_go_in_batches() {
    let rx = Receiver::start(SECRET).await;
    let s = start_with(hooks(rx.url(), 300, 8)).await;
    let mut c = Client::connect(s.addr, 2).await;
    let mut expected = Vec::new();
    for i in 0..20 {
        let topic = format!("realtime:batch-{i}");
        let j = c.join(&topic, Some(&format!("k{i}"))).await;
        c.track(&j, &topic, json!({})).await;
        expected.push(format!("member_join batch-{i} k{i}"));
    }
    let events = rx.wait_events(20).await;
    assert_eq!(summary(&events), expected, "in order");
    let posts = rx.requests();
    assert!(
        (3..20).contains(&posts.len()),
        "20 events in {} POSTs of at most 8",
        posts.len()
    );
    assert!(posts.iter().all(|p| p.events().len() <= 8));
    let ids: std::collections::HashSet<_> = posts.iter().map(|p| &p.delivery).collect();
    assert_eq!(ids.len(), posts.len(), "one delivery id per batch");
}

/// `c` joins and tracks under `key`; presence goes on at once: the track's
/// reply and the watcher's diff come promptly.
async fn track_promptly(watcher: &mut Client, mut c: Client, key: &str) -> Client {
    let j = c.join(ROOM, Some(key)).await;
    let started = Instant::now();
    c.track(&j, ROOM, json!({"key": key})).await;
    let diff = tokio::time::timeout(
        Duration::from_millis(300),
        watcher.recv_event("presence_diff"),
    )
    .await
    .unwrap_or_else(|_| panic!("the diff for {key} was late"));
    assert_eq!(keys(&diff.payload["joins"]), [key]);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "track of {key} took {:?}",
        started.elapsed()
    );
    c
}

#[tokio::test]
async fn a_receiver_down_then_back_gets_everything_in_order_and_presence_never_waits() {
    let mut rx = Receiver::start(SECRET).await;
    let s = start_with(hooks(rx.url(), 20, 100)).await;
    let mut watcher = Client::connect(s.addr, 2).await;
    watcher.join(ROOM, Some("watcher")).await;
    let mut clients = Vec::new();

    // Down: connections refused.
    rx.down().await;
    for key in ["down0", "down1", "down2"] {
        let c = Client::connect(s.addr, 2).await;
        clients.push(track_promptly(&mut watcher, c, key).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        metric(
            s.addr,
            r#"roster_webhook_deliveries_total{outcome="retry"}"#
        )
        .await
            >= 2.0,
        "refused attempts are retried"
    );
    // Back, but answering 500, until one retry has been seen.
    rx.set_status(500);
    rx.up().await;
    let c = Client::connect(s.addr, 1).await;
    clients.push(track_promptly(&mut watcher, c, "err0").await);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !rx.requests().iter().any(|r| r.status == 500) {
        assert!(Instant::now() < deadline, "no retry reached the receiver");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rx.delivered().is_empty());
    rx.set_status(200);

    let events = rx.wait_events(4).await;
    assert_eq!(
        summary(&events),
        [
            "member_join hooks down0",
            "member_join hooks down1",
            "member_join hooks down2",
            "member_join hooks err0",
        ],
        "everything, in order, once"
    );
    let requests = rx.requests();
    assert!(requests.iter().all(|r| r.verified));
    for failed in requests.iter().filter(|r| r.status == 500) {
        let retried = requests
            .iter()
            .find(|r| r.status == 200 && r.delivery == failed.delivery)
            .expect("a failed batch is retried under the same delivery id");
        assert_eq!(retried.raw, failed.raw, "the same batch");
    }
    let ok: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
    let ids: std::collections::HashSet<_> = ok.iter().map(|r| &r.delivery).collect();
    assert_eq!(ids.len(), ok.len(), "each batch delivered once");
    assert_eq!(
        metric(s.addr, "roster_webhook_events_delivered_total").await,
        4.0
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_the_receivers_check() {
    let rx = Receiver::start("not-the-secret").await;
    let s = start_with(|settings| {
        hooks(rx.url(), 20, 100)(settings);
        // One attempt only: give up at the first failure.
        settings.webhooks.as_mut().unwrap().max_retry = Duration::ZERO;
    })
    .await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("mallory")).await;
    c.track(&j, ROOM, json!({})).await;
    let deadline = Instant::now() + WAIT;
    while rx.requests().is_empty() {
        assert!(Instant::now() < deadline, "no request came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = &rx.requests()[0];
    assert!(!r.verified, "signed with another secret, yet it verified");
    assert_eq!(r.status, 401);
    // The signature is right for the server's secret, and only for this body and timestamp.
    assert!(verify(SECRET, &r.timestamp, &r.raw, &r.signature));
    let mut tampered = r.raw.to_vec();
    tampered.push(b' ');
    assert!(!verify(SECRET, &r.timestamp, &tampered, &r.signature));
    let earlier = (r.timestamp.parse::<u64>().unwrap() - 1).to_string();
    assert!(!verify(SECRET, &earlier, &r.raw, &r.signature));
    // Given up: counted, not retried.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.requests().len(), 1);
    assert_eq!(
        metric(
            s.addr,
            r#"roster_webhook_deliveries_total{outcome="dropped"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            s.addr,
            r#"roster_webhook_events_dropped_total{reason="expired"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let mut rx = Receiver::start(SECRET).await;
    let s = start_with(|settings| {
        hooks(rx.url(), 0, 1)(settings);
        settings.webhooks.as_mut().unwrap().queue = 2;
    })
    .await;
    rx.down().await;
    let mut c = Client::connect(s.addr, 2).await;
    let started = Instant::now();
    for i in 0..6 {
        let topic = format!("realtime:full-{i}");
        let j = c.join(&topic, Some("k")).await;
        c.track(&j, &topic, json!({})).await;
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(metric(s.addr, "roster_webhook_events_total").await, 6.0);
    // One batch in flight, two queued: the rest dropped.
    let dropped = metric(
        s.addr,
        r#"roster_webhook_events_dropped_total{reason="queue_full"}"#,
    )
    .await;
    assert!((3.0..=4.0).contains(&dropped), "dropped {dropped}");
}

#[tokio::test]
async fn shutdown_flushes_pending_events() {
    let rx = Receiver::start(SECRET).await;
    // A batch window longer than the test: only the flush can send it.
    let s = start_with(hooks(rx.url(), 10_000, 100)).await;
    let mut c = Client::connect(s.addr, 2).await;
    let j = c.join(ROOM, Some("last")).await;
    c.track(&j, ROOM, json!({})).await;
    let started = Instant::now();
    s.shutdown(Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        summary(&rx.delivered()),
        ["member_join hooks last", "member_leave hooks last"],
        "the join, and the leave of the socket closed by the shutdown"
    );
}
