//! Test harness: an in-process Roster server, client options with short
//! timeouts, bounded waits, a pausable TCP proxy that can cut connections,
//! and a fake WebSocket server that answers only what it is told to.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roster_client::{ChannelStatus, ClientOptions, RealtimeChannel, RealtimeClient, Vsn};
use roster_server::{Running, Settings};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub const KEY: &str = roster_server::settings::DEV_PUBLISHABLE_KEY;
/// The longest any single wait may take.
pub const WAIT: Duration = Duration::from_secs(5);
pub const VSNS: [Vsn; 2] = [Vsn::V1, Vsn::V2];

/// A panic outside the test code itself (in the client, the server, or a
/// library they call) aborts the whole test binary, so none can pass
/// unseen: tokio would otherwise just end that one task.
pub fn abort_on_library_panic() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let in_tests = info.location().is_some_and(|l| l.file().contains("tests/"));
            if !in_tests {
                eprintln!("a panic outside the tests: aborting the test run");
                std::process::abort();
            }
        }));
    });
}

pub async fn server() -> Running {
    abort_on_library_panic();
    roster_server::start(Settings::for_tests())
        .await
        .expect("server starts")
}

/// Short timeouts and quick reconnection, so failures show fast.
pub fn options(vsn: Vsn) -> ClientOptions {
    ClientOptions::default()
        .vsn(vsn)
        .timeout(Duration::from_secs(2))
        .reconnect_intervals([Duration::from_millis(50), Duration::from_millis(200)])
}

pub fn client(addr: SocketAddr, vsn: Vsn) -> RealtimeClient {
    RealtimeClient::with_options(&format!("http://{addr}"), KEY, options(vsn)).unwrap()
}

/// Poll `cond` until it holds, or panic after `WAIT`.
/// The next item of `stream`, or panic after `WAIT`.
pub async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an item in time")
        .expect("stream open")
}

pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the channel's status satisfies `pred`.
pub async fn status_becomes(
    channel: &RealtimeChannel,
    what: &str,
    pred: impl Fn(&ChannelStatus) -> bool,
) {
    let mut rx = channel.status_changes();
    let ok = matches!(
        tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s))).await,
        Ok(Ok(_))
    );
    assert!(
        ok,
        "status never became {what}; it is {:?}",
        channel.status()
    );
}

/// A shared log of callback invocations.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A field of each presence, for compact log lines.
pub fn users(list: &[roster_client::Presence]) -> String {
    let names: Vec<String> = list
        .iter()
        .map(|p| {
            p.fields
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    format!("[{}]", names.join(","))
}

/// Log every presence callback of `channel` as `sync`, `join KEY [cur] [new]`,
/// `leave KEY [cur] [left]`.
pub fn log_presence(channel: &RealtimeChannel) -> Log {
    let log = Log::default();
    let (a, b, c) = (log.clone(), log.clone(), log.clone());
    channel
        .on_presence_sync(move || a.push("sync".into()))
        .on_presence_join(move |key, current, new| {
            b.push(format!("join {key} {} {}", users(current), users(new)))
        })
        .on_presence_leave(move |key, current, left| {
            c.push(format!("leave {key} {} {}", users(current), users(left)))
        });
    log
}

// ---- a TCP proxy between client and server ---------------------------------

/// Forwards TCP to `upstream`; can cut every connection or pause forwarding.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    paused: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn unpaused(paused: &mut watch::Receiver<bool>) {
    let _ = paused.wait_for(|p| !p).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        unpaused(&mut paused).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        unpaused(&mut paused).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (paused, _) = watch::channel(false);
        let acceptor = {
            let (conns, accepted, paused) = (conns.clone(), accepted.clone(), paused.clone());
            tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let rx = paused.subscribe();
                    let task = tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        // Either direction ending ends both: a dropped connection.
                        tokio::select! {
                            _ = pump(dr, uw, rx.clone()) => {}
                            _ = pump(ur, dw, rx) => {}
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            addr,
            conns,
            accepted,
            paused,
            acceptor,
        }
    }

    /// Drop every proxied connection, both sides, without a WebSocket close.
    pub fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Stop (or resume) forwarding bytes, keeping connections open.
    pub fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

// ---- a fake WebSocket server ------------------------------------------------

/// A vsn-2 WebSocket server that answers joins and/or heartbeats only if told to.
pub struct Fake {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start(reply_join: bool, reply_heartbeat: bool) -> Fake {
        abort_on_library_panic();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(text) = msg else { continue };
                        let v: Value = serde_json::from_str(&text).unwrap();
                        let (jr, r, topic, event) = (&v[0], &v[1], &v[2], &v[3]);
                        let ok = json!({"status": "ok", "response": {}});
                        let answer = match event.as_str() {
                            Some("phx_join") if reply_join => vec![
                                json!([jr, r, topic, "phx_reply",
                                    {"status": "ok", "response": {"postgres_changes": []}}]),
                                json!([jr, null, topic, "presence_state", {}]),
                            ],
                            Some("heartbeat") if reply_heartbeat => {
                                vec![json!([null, r, "phoenix", "phx_reply", ok])]
                            }
                            _ => vec![],
                        };
                        for a in answer {
                            if ws.send(Message::Text(a.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Fake {
            addr,
            connections,
            task,
        }
    }

    pub fn client(&self, options: ClientOptions) -> RealtimeClient {
        RealtimeClient::with_options(
            &format!("ws://{}/realtime/v1/websocket", self.addr),
            KEY,
            options,
        )
        .unwrap()
    }
}

/// A minimal HTTP/1.1 POST; returns the status.
pub async fn http_post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.unwrap();
    String::from_utf8_lossy(&resp)[9..12].parse().unwrap()
}
