//! Errors are values: refused credentials, refused joins, timeouts.

mod common;

use std::time::Duration;

use common::*;
use roster_client::{ChannelStatus, Error, RealtimeClient, Vsn};
use serde_json::json;

#[tokio::test]
async fn a_bad_key_fails_connect_and_subscribe_with_the_servers_message() {
    let running = server().await;
    for vsn in VSNS {
        let opts = options(vsn);
        let url = format!("http://{}", running.addr);
        let c = RealtimeClient::with_options(&url, "not-a-key", opts).unwrap();
        assert_eq!(
            c.connect().await,
            Err(Error::Refused {
                status: 401,
                message: "The token provided is not a valid JWT".into()
            })
        );
        assert!(!c.is_connected());
        match c.channel("room").subscribe().await {
            ChannelStatus::ChannelError(reason) => {
                assert!(
                    reason.contains("401") && reason.contains("not a valid JWT"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn refused_joins_carry_the_reason() {
    let running = server().await;
    for vsn in VSNS {
        let c = client(running.addr, vsn);
        assert_eq!(
            c.channel("").subscribe().await,
            ChannelStatus::ChannelError("TopicNameRequired: You must provide a topic name".into())
        );
        // The same failure through `?`.
        assert_eq!(
            c.channel("").subscribe().await.into_result(),
            Err(Error::Rejected(
                "TopicNameRequired: You must provide a topic name".into()
            ))
        );

        let bad_token = client(running.addr, vsn);
        bad_token.set_auth("not-a-jwt");
        match bad_token.channel("room").subscribe().await {
            ChannelStatus::ChannelError(reason) => {
                assert!(reason.starts_with("MalformedJWT: "), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        c.disconnect().await;
        bad_token.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn set_auth_reaches_joined_channels() {
    let running = server().await;
    for vsn in VSNS {
        let c = client(running.addr, vsn);
        let ch = c.channel("auth");
        ch.subscribe().await.into_result().unwrap();
        // An invalid token pushed to a joined channel makes the server close it.
        c.set_auth("not-a-jwt");
        status_becomes(&ch, "closed", |s| *s == ChannelStatus::Closed).await;
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_pushes_are_errors() {
    let running = server().await;
    let c = client(running.addr, Vsn::V2);
    let ch = c.channel("pushes");
    assert_eq!(ch.track(&json!({})).await, Err(Error::NotSubscribed));
    assert_eq!(
        ch.send_broadcast("e", &json!({})).await,
        Err(Error::NotSubscribed)
    );
    ch.subscribe().await.into_result().unwrap();
    assert_eq!(
        ch.track(&5).await,
        Err(Error::Rejected(
            "Presence track payload must be a map".into()
        ))
    );
    let unserializable = std::collections::HashMap::from([((1, 2), 3)]);
    assert!(matches!(
        ch.track(&unserializable).await,
        Err(Error::Serialize(_))
    ));
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_server_that_never_replies_times_out_join_and_track() {
    let silent = Fake::start(false, true).await;
    let opts = options(Vsn::V2).timeout(Duration::from_millis(300));
    let c = silent.client(opts.clone());
    let started = tokio::time::Instant::now();
    assert_eq!(c.channel("x").subscribe().await, ChannelStatus::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(2));
    c.disconnect().await;

    let joins_only = Fake::start(true, true).await;
    let c = joins_only.client(opts);
    let ch = c.channel("x");
    ch.subscribe().await.into_result().unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(ch.track(&json!({"a": 1})).await, Err(Error::TimedOut));
    assert_eq!(ch.untrack().await, Err(Error::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(2));
    c.disconnect().await;
}

#[tokio::test]
async fn connection_failures_and_bad_urls() {
    // Nothing listens on a port just released.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = client(addr, Vsn::V2);
    assert!(matches!(c.connect().await, Err(Error::Connection(_))));
    c.disconnect().await;
    assert!(matches!(
        RealtimeClient::new("localhost:4000", KEY),
        Err(Error::InvalidUrl(_))
    ));
    assert!(matches!(
        RealtimeClient::new("ftp://localhost", KEY),
        Err(Error::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn disconnect_closes_channels_and_a_later_subscribe_starts_afresh() {
    let running = server().await;
    let c = client(running.addr, Vsn::V1);
    let ch = c.channel("again");
    ch.subscribe().await.into_result().unwrap();
    assert!(c.is_connected());
    c.disconnect().await;
    assert_eq!(ch.status(), ChannelStatus::Closed);
    assert!(!c.is_connected());
    assert_eq!(ch.track(&json!({})).await, Err(Error::NotSubscribed));
    ch.subscribe().await.into_result().unwrap();
    ch.track(&json!({"back": true})).await.unwrap();
    c.disconnect().await;
    running.shutdown(Duration::from_secs(1)).await;
}
