//! A Rust client and a supabase-js client (a node peer from `tests/js`) in one
//! room see each other's presence and broadcasts. Needs `node` and
//! `tests/js/node_modules` (`scripts/test` installs them before cargo test).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use roster_client::{ChannelOptions, RealtimeClient, Vsn};
use roster_server::{Running, Settings};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A node peer printing one JSON line per event; killed on drop.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Peer {
    fn spawn(script: &str, args: &[String]) -> Peer {
        let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
        assert!(
            js.join("node_modules/@supabase/supabase-js").exists(),
            "tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg(js.join("helpers").join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut out = out.lines();
            while let Ok(Some(line)) = out.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Peer { child, lines }
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "peer never printed {what}: {:?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn command(&mut self, cmd: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
    }
}

/// The node helpers use the JS suite's key; serve with it.
const JS_SUITE_KEY: &str = "sb_publishable_test";

async fn js_suite_server() -> Running {
    let mut settings = Settings::for_tests();
    settings.keys.publishable = JS_SUITE_KEY.into();
    roster_server::start(settings).await.expect("server starts")
}

fn js_suite_client(s: &Running, vsn: Vsn) -> RealtimeClient {
    RealtimeClient::with_options(&format!("http://{}", s.addr), JS_SUITE_KEY, options(vsn)).unwrap()
}

#[tokio::test]
async fn rust_and_supabase_js_see_each_other_in_one_room() {
    let s = js_suite_server().await;
    for vsn in VSNS {
        let room = format!("mixed-{vsn:?}");
        let url = format!("http://{}", s.addr);
        let peer = Peer::spawn(
            "presence-peer.js",
            &[url, room.clone(), "js".into(), r#"{"lang":"js"}"#.into()],
        );
        peer.wait_for("tracked ok", |v| {
            v["type"] == "tracked" && v["status"] == "ok"
        })
        .await;

        let client = js_suite_client(&s, vsn);
        let channel = client.channel_with(&room, ChannelOptions::default().presence_key("rust"));
        assert!(channel.subscribe().await.is_subscribed());
        channel.track(&json!({"lang": "rust"})).await.unwrap();
        eventually("the Rust view holds both", || {
            let state = channel.presence_state();
            state.get("js").is_some_and(|p| p[0].fields["lang"] == "js")
                && state.contains_key("rust")
        })
        .await;
        peer.wait_for("a sync with the Rust client", |v| {
            v["type"] == "sync"
                && v["state"]["rust"][0]["lang"] == "rust"
                && v["state"]["js"].is_array()
        })
        .await;
        // The Rust client leaves: supabase-js fires leave.
        channel.untrack().await.unwrap();
        peer.wait_for("a leave of the Rust key", |v| {
            v["type"] == "leave" && v["key"] == "rust"
        })
        .await;
        client.disconnect().await;
    }
}

#[tokio::test]
async fn broadcasts_cross_between_rust_and_supabase_js() {
    let s = js_suite_server().await;
    let url = format!("http://{}", s.addr);
    let mut peer = Peer::spawn("broadcast-peer.js", &[url, "bcast".into()]);
    peer.wait_for("subscribed", |v| v["type"] == "subscribed")
        .await;
    let client = js_suite_client(&s, Vsn::V2);
    let channel = client.channel("bcast");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    channel.on_broadcast("*", move |m| {
        sink.lock()
            .unwrap()
            .push((m.event.clone(), m.payload.clone()))
    });
    assert!(channel.subscribe().await.is_subscribed());

    channel
        .send_broadcast("from-rust", &json!({"n": 1}))
        .await
        .unwrap();
    peer.wait_for("the Rust broadcast", |v| {
        v["type"] == "broadcast"
            && v["message"]["event"] == "from-rust"
            && v["message"]["payload"]["n"] == 1
    })
    .await;

    // supabase-js sends it as a binary kind-3 frame; the Rust client gets JSON.
    peer.command(json!({"op": "send", "id": 1, "event": "from-js", "payload": {"m": 2}}))
        .await;
    eventually("the JS broadcast", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|(e, p)| e == "from-js" && p["m"] == 2)
    })
    .await;
    client.disconnect().await;
}
