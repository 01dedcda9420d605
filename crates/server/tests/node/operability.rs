//! Health, readiness and Prometheus metrics reflect what happens on the sockets.

use crate::common::*;
use serde_json::json;

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_demo_page_is_served_with_its_config() {
    let s = start().await;
    let (status, html) = http_get(s.addr, "/demo").await;
    assert_eq!(status, 200);
    assert!(html.contains("/demo/app.js") && html.contains("/demo/config.js"));
    let (status, config) = http_get(s.addr, "/demo/config.js").await;
    assert_eq!(status, 200);
    assert!(config.contains(&format!("\"{KEY}\"")), "{config}");
    assert_eq!(http_get(s.addr, "/demo/app.js").await.0, 200);
    assert_eq!(http_get(s.addr, "/demo/style.css").await.0, 200);
    assert_eq!(http_get(s.addr, "/").await.0, 307);
}

#[tokio::test]
async fn health_ready_and_metrics_follow_connections_and_presence() {
    let s = start().await;
    assert_eq!(http_get(s.addr, "/health").await, (200, "ok".to_string()));
    assert_eq!(http_get(s.addr, "/ready").await, (200, "ready".to_string()));

    let room = "realtime:metrics";
    let mut a = Client::connect(s.addr, 2).await;
    let ja = a.join(room, Some("same")).await;
    a.track(&ja, room, json!({"d": 1})).await;
    let mut b = Client::connect(s.addr, 1).await;
    let jb = b.join(room, Some("same")).await;
    b.track(&jb, room, json!({"d": 2})).await;
    a.until_view(room, |v| v.get("same").is_some_and(|m| m.len() == 2))
        .await;
    // A refused connection is counted by reason.
    assert!(
        Client::connect_url(&url(s.addr, "/realtime/v1/websocket", "apikey=nope"), 2)
            .await
            .is_err()
    );

    let (status, text) = http_get(s.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "roster_connections"), 2.0);
    assert_eq!(metric(&text, "roster_channels"), 1.0);
    assert_eq!(metric(&text, "roster_presences"), 2.0);
    assert_eq!(metric(&text, "roster_presence_keys"), 1.0);
    assert_eq!(metric(&text, "roster_channel_joins_total"), 2.0);
    assert!(metric(&text, "roster_frames_out_total") >= 8.0);
    assert!(
        text.contains(r#"roster_auth_failures_total{reason="malformed"} 1"#),
        "{text}"
    );
    assert!(text.contains("roster_outbound_queue_depth_count"), "{text}");

    b.close().await;
    a.until_view(room, |v| v.get("same").is_some_and(|m| m.len() == 1))
        .await;
    let (_, text) = http_get(s.addr, "/metrics").await;
    assert_eq!(metric(&text, "roster_presences"), 1.0);
    assert_eq!(metric(&text, "roster_presence_keys"), 1.0);
    assert_eq!(metric(&text, "roster_connections"), 1.0);
    assert!(
        text.contains(r#"roster_disconnects_total{reason="client_closed"} 1"#),
        "{text}"
    );
}
