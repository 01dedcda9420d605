//! wss:// end to end: the Rust client against a TLS roster, with test
//! certificates made here; clear errors for a wrong hostname, an untrusted
//! CA and an unknown host; presence across a certificate reload.

// Test certificates, shared with the server's tests.
#[path = "../../server/tests/certs/mod.rs"]
mod certs;
mod common;

use std::time::Duration;

use certs::{TempDir, TestCa};
use common::*;
use roster_client::{ChannelOptions, ClientOptions, Error, RealtimeClient, TlsReason, Vsn};
use roster_server::settings::TlsSettings;
use roster_server::{Running, Settings};
use serde_json::json;

/// A TLS roster with a `localhost` certificate of `ca`; the files live in `dir`.
async fn tls_server(ca: &TestCa, dir: &TempDir) -> Running {
    abort_on_library_panic();
    let (cert, key) = ca.server_pair(&["localhost"]);
    let mut settings = Settings::for_tests();
    settings.tls = Some(TlsSettings {
        cert: dir.write("cert.pem", &cert),
        key: dir.write("key.pem", &key),
    });
    roster_server::start(settings).await.expect("server starts")
}

fn wss_client(url: &str, options: ClientOptions) -> Result<RealtimeClient, Error> {
    RealtimeClient::with_options(url, KEY, options.timeout(Duration::from_secs(3)))
}

/// A client of `localhost:port` that trusts only the CA in `ca_file`.
fn trusting(port: u16, ca_file: &std::path::Path) -> RealtimeClient {
    let options = options(Vsn::V2).trust_only_ca_file(ca_file);
    wss_client(&format!("https://localhost:{port}"), options).unwrap()
}

async fn join(client: &RealtimeClient, room: &str, key: &str) -> roster_client::RealtimeChannel {
    let channel = client.channel_with(room, ChannelOptions::default().presence_key(key));
    channel.subscribe().await.into_result().expect("subscribed");
    channel
        .track(&json!({ "user": key }))
        .await
        .expect("tracked");
    channel
}

fn keys(channel: &roster_client::RealtimeChannel) -> Vec<String> {
    channel.presence_state().into_keys().collect()
}

#[tokio::test]
async fn presence_over_wss_and_clear_tls_errors() {
    let ca = TestCa::new("Roster test CA");
    let dir = TempDir::new("wss");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let running = tls_server(&ca, &dir).await;
    let port = running.addr.port();

    let alice = trusting(port, &ca_file);
    assert!(alice.endpoint_url().starts_with("wss://localhost:"));
    let bob = trusting(port, &ca_file);
    let a = join(&alice, "tls-room", "alice").await;
    let b = join(&bob, "tls-room", "bob").await;
    eventually("alice sees bob", || keys(&a) == ["alice", "bob"]).await;
    eventually("bob sees alice", || keys(&b) == ["alice", "bob"]).await;

    // The certificate is for localhost, not for 127.0.0.1.
    let wrong_name = wss_client(
        &format!("wss://127.0.0.1:{port}/socket/websocket"),
        options(Vsn::V2).trust_only_ca_file(&ca_file),
    )
    .unwrap();
    match wrong_name.connect().await {
        Err(Error::Tls {
            reason: TlsReason::WrongHostname,
            message,
        }) => assert!(message.contains("127.0.0.1"), "{message}"),
        other => panic!("expected a hostname error, got {other:?}"),
    }

    // The public roots (the default) do not include our test CA.
    let untrusted = wss_client(&format!("https://localhost:{port}"), options(Vsn::V2)).unwrap();
    match untrusted.connect().await {
        Err(Error::Tls {
            reason: TlsReason::UntrustedCertificate,
            message,
        }) => assert!(message.contains("trusted CA"), "{message}"),
        other => panic!("expected an untrusted-CA error, got {other:?}"),
    }

    // Another CA's file: untrusted too.
    let other_ca = TestCa::new("Some other CA");
    let other_file = dir.write("other-ca.pem", &other_ca.pem);
    let c = trusting(port, &other_file);
    assert!(matches!(
        c.connect().await,
        Err(Error::Tls {
            reason: TlsReason::UntrustedCertificate,
            ..
        })
    ));

    // A credential the server refuses: 401 with its reason, over TLS too.
    let refused = RealtimeClient::with_options(
        &format!("https://localhost:{port}"),
        "not-a-key",
        options(Vsn::V2).trust_only_ca_file(&ca_file),
    )
    .unwrap();
    assert_eq!(
        refused.connect().await,
        Err(Error::Refused {
            status: 401,
            message: "The token provided is not a valid JWT".into()
        })
    );

    // A plain client on the TLS port does not get a WebSocket.
    let plain = wss_client(&format!("http://127.0.0.1:{port}"), options(Vsn::V2)).unwrap();
    assert!(plain.connect().await.is_err());

    // An unreadable CA file is an error when the client is made.
    let missing = options(Vsn::V2).trust_only_ca_file(dir.path().join("nope.pem"));
    assert!(matches!(
        wss_client(&format!("wss://localhost:{port}"), missing),
        Err(Error::Tls {
            reason: TlsReason::Config,
            ..
        })
    ));

    for c in [alice, bob, wrong_name, untrusted, c, refused, plain] {
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unknown_host_is_a_dns_error() {
    let c = wss_client("wss://roster-test.invalid", options(Vsn::V2)).unwrap();
    match c.connect().await {
        Err(Error::Dns { host, .. }) => assert_eq!(host, "roster-test.invalid"),
        other => panic!("expected a DNS error, got {other:?}"),
    }
    c.disconnect().await;
}

/// Replace the pair on disk and send SIGHUP: new connections get the new
/// certificate (of a new CA), sockets opened before keep working, and a
/// broken pair later leaves the working one in place.
#[tokio::test]
async fn presence_survives_a_certificate_reload() {
    let old_ca = TestCa::new("Old CA");
    let new_ca = TestCa::new("New CA");
    let dir = TempDir::new("reload");
    let old_file = dir.write("old-ca.pem", &old_ca.pem);
    let new_file = dir.write("new-ca.pem", &new_ca.pem);
    let running = tls_server(&old_ca, &dir).await;
    let port = running.addr.port();

    let alice = trusting(port, &old_file);
    let bob = trusting(port, &old_file);
    let a = join(&alice, "reload-room", "alice").await;
    let b = join(&bob, "reload-room", "bob").await;
    eventually("both see both", || {
        keys(&a).len() == 2 && keys(&b).len() == 2
    })
    .await;

    let (cert, key) = new_ca.server_pair(&["localhost"]);
    dir.write("key.pem", &key);
    dir.write("cert.pem", &cert);
    hangup();

    // New connections see the new certificate (the mtime poll would get
    // there too, within its interval).
    let carol = trusting(port, &new_file);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while carol.connect().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_trust = trusting(port, &old_file);
    assert!(matches!(
        old_trust.connect().await,
        Err(Error::Tls {
            reason: TlsReason::UntrustedCertificate,
            ..
        })
    ));

    // Old sockets are still the same connections, and presence flows.
    assert!(alice.is_connected() && bob.is_connected());
    let c = join(&carol, "reload-room", "carol").await;
    eventually("alice sees carol", || keys(&a).len() == 3).await;
    b.track(&json!({ "user": "bob", "status": "away" }))
        .await
        .unwrap();
    eventually("alice sees bob's update", || {
        a.presence_state()["bob"]
            .iter()
            .any(|p| p.fields.get("status") == Some(&json!("away")))
    })
    .await;
    eventually("carol sees everyone", || keys(&c).len() == 3).await;

    // A broken pair is refused and the working one kept.
    dir.write(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dave = trusting(port, &new_file);
    dave.connect().await.expect("the new pair still serves");

    for c in [alice, bob, carol, old_trust, dave] {
        c.disconnect().await;
    }
    running.shutdown(Duration::from_secs(1)).await;
}

/// SIGHUP to this process: the in-process server's reloader takes it.
fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
