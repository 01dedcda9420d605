//! Test harness: an in-process server on a free port and a raw WebSocket
//! client that speaks either vsn and records every frame it gets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roster_presence::ClientPresence;
use roster_protocol::push::{self, ClientPush, JoinPayload};
use roster_protocol::Vsn;
use roster_server::settings::DEV_PUBLISHABLE_KEY;
use roster_server::{Running, Settings};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = DEV_PUBLISHABLE_KEY;
pub const WAIT: Duration = Duration::from_secs(5);
/// realtime-py's WebSocket library (`websockets`) closes on any message
/// larger than this (1009): the frame limit of the strictest official client.
pub const PY_MAX_MESSAGE: usize = 1 << 20;

pub async fn start() -> Running {
    start_with(|_| {}).await
}

/// A panic outside the test code itself (in the server, or a library it
/// calls) aborts the whole test binary, so no server panic can pass unseen:
/// tokio would otherwise just end that one task.
fn abort_on_server_panic() {
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

pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Running {
    abort_on_server_panic();
    let mut settings = Settings::for_tests();
    tweak(&mut settings);
    roster_server::start(settings).await.expect("server starts")
}

/// A frame as received, in both raw and normalised form.
#[derive(Debug, Clone)]
pub struct Got {
    pub raw: Value,
    pub join_ref: Value,
    pub ref_: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
    /// The user payload of a binary kind-4 broadcast.
    pub binary: Option<Vec<u8>>,
}

pub struct Client {
    pub vsn: u8,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Presence as a real client would see it, per topic (fed by `recv`).
    pub presence: std::collections::HashMap<String, ClientPresence>,
    /// Frames passed over by `recv_event` / `recv_reply`, returned first by `recv`.
    stash: std::collections::VecDeque<Got>,
    /// Every frame read since `start_log`, however it was consumed.
    log: Option<Vec<Got>>,
}

/// What reading the socket found.
#[derive(Debug)]
pub enum Next {
    Frame(Got),
    /// Nothing within the time given; the socket is still open.
    Quiet,
    /// The socket closed or broke (why).
    Closed(String),
}

pub fn url(addr: SocketAddr, path: &str, query: &str) -> String {
    format!("ws://{addr}{path}?{query}")
}

/// A connection attempt expected to be refused at the HTTP upgrade.
pub struct Attempt {
    url: String,
}

impl Attempt {
    /// The refusal's status and JSON body; panics if it was accepted.
    pub async fn await_err(self) -> (u16, Value) {
        match Client::connect_url(&self.url, 2).await {
            Ok(_) => panic!("{} was accepted", self.url),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                (
                    resp.status().as_u16(),
                    serde_json::from_slice(&body).expect("JSON body"),
                )
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

impl Client {
    /// A connection with the dev key, to be refused: `Client::connect_attempt(..).await_err()`.
    pub fn connect_attempt(addr: SocketAddr, vsn: u8) -> Attempt {
        Attempt {
            url: url(
                addr,
                "/realtime/v1/websocket",
                &format!("apikey={KEY}&vsn={vsn}.0.0"),
            ),
        }
    }

    pub async fn connect(addr: SocketAddr, vsn: u8) -> Client {
        let query = match vsn {
            1 => format!("apikey={KEY}&vsn=1.0.0"),
            _ => format!("apikey={KEY}&vsn=2.0.0"),
        };
        Client::connect_url(&url(addr, "/realtime/v1/websocket", &query), vsn)
            .await
            .expect("connects")
    }

    /// A client that, like realtime-py, cannot take a message over
    /// [`PY_MAX_MESSAGE`]: the canary of hostile tests. A server frame over
    /// the limit ends its socket (and a later `recv` panics).
    pub async fn connect_canary(addr: SocketAddr, vsn: u8) -> Client {
        let query = format!("apikey={KEY}&vsn={vsn}.0.0");
        let req = url(addr, "/realtime/v1/websocket", &query)
            .into_client_request()
            .unwrap();
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(PY_MAX_MESSAGE))
            .max_frame_size(Some(PY_MAX_MESSAGE));
        Client::connect_request_with(req, vsn, Some(config))
            .await
            .expect("connects")
    }

    pub async fn connect_url(
        url: &str,
        vsn: u8,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        Client::connect_request(url.into_client_request().unwrap(), vsn).await
    }

    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        vsn: u8,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        Client::connect_request_with(req, vsn, None).await
    }

    pub async fn connect_request_with(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        vsn: u8,
        config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, config, false).await?;
        Ok(Client {
            vsn,
            ws,
            next_ref: 1,
            presence: Default::default(),
            stash: Default::default(),
            log: None,
        })
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Send, or false once the server has closed the socket.
    pub async fn try_send_raw(&mut self, text: &str) -> bool {
        self.ws.send(Message::Text(text.into())).await.is_ok()
    }

    /// A text frame whose bytes are not UTF-8 (a protocol violation).
    pub async fn send_invalid_utf8_text(&mut self) {
        use tokio_tungstenite::tungstenite::protocol::frame::{
            coding::Data, coding::OpCode, Frame,
        };
        let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Send with explicit refs, in this client's vsn.
    pub async fn send_frame(
        &mut self,
        join_ref: Value,
        ref_: Value,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = if self.vsn == 1 {
            json!({"topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": join_ref})
        } else {
            json!([join_ref, ref_, topic, event, payload])
        };
        self.send_raw(&text.to_string()).await;
    }

    fn protocol_vsn(&self) -> Vsn {
        if self.vsn == 1 {
            Vsn::V1
        } else {
            Vsn::V2
        }
    }

    fn take_ref(&mut self) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        r
    }

    /// Push an event on a channel whose join ref is `join_ref`; returns the ref used.
    pub async fn push(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.take_ref();
        let text = push::encode(
            self.protocol_vsn(),
            Some(join_ref),
            Some(&r),
            topic,
            event,
            &payload,
        );
        self.send_raw(&text).await;
        r
    }

    /// Send a typed push on a channel whose join ref is `join_ref`; returns the ref used.
    pub async fn send_push(&mut self, join_ref: &str, topic: &str, push: &ClientPush) -> String {
        let r = self.take_ref();
        let text = push.encode(self.protocol_vsn(), Some(join_ref), Some(&r), topic);
        self.send_raw(&text).await;
        r
    }

    /// Send `phx_join`; returns its ref (which is also the join ref).
    pub async fn join_raw(&mut self, topic: &str, payload: Value) -> String {
        let r = self.take_ref();
        let text = push::encode(
            self.protocol_vsn(),
            Some(&r),
            Some(&r),
            topic,
            roster_protocol::events::JOIN,
            &payload,
        );
        self.send_raw(&text).await;
        r
    }

    /// Join with presence enabled and an optional key; waits for the ok reply
    /// and the snapshot. Returns the join ref.
    pub async fn join(&mut self, topic: &str, key: Option<&str>) -> String {
        let payload = JoinPayload::presence(key.unwrap_or("")).to_json();
        let join_ref = self.join_raw(topic, payload).await;
        let reply = self.recv_event("phx_reply").await;
        assert_eq!(
            reply.payload["status"], "ok",
            "join failed: {:?}",
            reply.raw
        );
        self.recv_event("presence_state").await;
        join_ref
    }

    pub async fn track(&mut self, join_ref: &str, topic: &str, state: Value) -> Got {
        let r = self
            .send_push(join_ref, topic, &ClientPush::Track(state))
            .await;
        self.recv_reply(&r).await
    }

    /// Next frame, or panic after `WAIT` or if the socket closes.
    pub async fn recv(&mut self) -> Got {
        match self.stash.pop_front() {
            Some(got) => got,
            None => match self.read(WAIT).await {
                Next::Frame(got) => got,
                Next::Quiet => panic!("expected a frame, none within {WAIT:?}"),
                Next::Closed(why) => panic!("expected a frame, the socket closed: {why}"),
            },
        }
    }

    /// Next frame within `dur`, or `None` if none came; panics if the
    /// socket closes (a close is never silence).
    pub async fn try_recv(&mut self, dur: Duration) -> Option<Got> {
        match self.next_within(dur).await {
            Next::Frame(got) => Some(got),
            Next::Quiet => None,
            Next::Closed(why) => panic!("the socket closed: {why}"),
        }
    }

    /// Next frame within `dur` (stashed first), silence, or the close.
    pub async fn next_within(&mut self, dur: Duration) -> Next {
        match self.stash.pop_front() {
            Some(got) => Next::Frame(got),
            None => self.read(dur).await,
        }
    }

    /// From now on, keep a copy of every frame read (see `take_log`).
    pub fn start_log(&mut self) {
        self.log = Some(Vec::new());
    }

    /// The frames read since `start_log`, in arrival order (also those
    /// `until_view` consumed); logging goes on.
    pub fn take_log(&mut self) -> Vec<Got> {
        self.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn log(&mut self, got: Got) -> Got {
        if let Some(log) = self.log.as_mut() {
            log.push(got.clone());
        }
        got
    }

    /// Read the socket for up to `dur`. Presence frames update `self.presence`.
    async fn read(&mut self, dur: Duration) -> Next {
        loop {
            let msg = match tokio::time::timeout(dur, self.ws.next()).await {
                Err(_) => return Next::Quiet,
                Ok(None) => return Next::Closed("the stream ended".into()),
                Ok(Some(Err(e))) => return Next::Closed(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Close(frame) => return Next::Closed(format!("close frame {frame:?}")),
                // The only binary frame a client may get is kind 4 (docs/protocol.md §2.3).
                Message::Binary(b) => return Next::Frame(self.log(decode_kind4(&b))),
                _ => continue,
            };
            let raw: Value = serde_json::from_str(&text).expect("server sends JSON");
            let got = if self.vsn == 1 {
                Got {
                    join_ref: raw.get("join_ref").cloned().unwrap_or(Value::Null),
                    ref_: raw["ref"].clone(),
                    topic: raw["topic"].as_str().unwrap().to_owned(),
                    event: raw["event"].as_str().unwrap().to_owned(),
                    payload: raw["payload"].clone(),
                    raw,
                    binary: None,
                }
            } else {
                let a = raw.as_array().expect("vsn 2 frames are arrays");
                assert_eq!(a.len(), 5, "vsn 2 frames have 5 elements: {raw}");
                Got {
                    join_ref: a[0].clone(),
                    ref_: a[1].clone(),
                    topic: a[2].as_str().unwrap().to_owned(),
                    event: a[3].as_str().unwrap().to_owned(),
                    payload: a[4].clone(),
                    raw: raw.clone(),
                    binary: None,
                }
            };
            let view = self.presence.entry(got.topic.clone()).or_default();
            match got.event.as_str() {
                "presence_state" => {
                    view.rejoined();
                    view.on_state(&got.payload).expect("valid presence_state");
                }
                "presence_diff" => {
                    view.on_diff(&got.payload).expect("valid presence_diff");
                }
                _ => {}
            }
            return Next::Frame(self.log(got));
        }
    }

    /// The first frame (stashed or new) that matches; others stay stashed, in order.
    pub async fn recv_matching(&mut self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        loop {
            let got = match self.read(WAIT).await {
                Next::Frame(got) => got,
                Next::Quiet => panic!(
                    "expected {what}, none within {WAIT:?}; stash {:?}",
                    self.stash
                ),
                Next::Closed(why) => panic!(
                    "expected {what}, the socket closed ({why}); stash {:?}",
                    self.stash
                ),
            };
            if pred(&got) {
                return got;
            }
            self.stash.push_back(got);
        }
    }

    pub async fn recv_event(&mut self, event: &str) -> Got {
        self.recv_matching(event, |g| g.event == event).await
    }

    pub async fn recv_reply(&mut self, ref_: &str) -> Got {
        let r = json!(ref_);
        self.recv_matching("reply", |g| g.event == "phx_reply" && g.ref_ == r)
            .await
    }

    /// Frames passed over so far and not yet consumed.
    pub fn stashed(&self) -> impl Iterator<Item = &Got> {
        self.stash.iter()
    }

    /// Forget frames passed over so far.
    pub fn clear_stash(&mut self) {
        self.stash.clear();
    }

    /// Negative check: nothing is queued for this socket (and nothing was
    /// left unread). The marker is a heartbeat's reply: the server handles a
    /// socket's frames in order and fans a change out before acknowledging
    /// it, so whatever an acknowledged change (this socket's or another's on
    /// this node) sent here arrives first. A close fails.
    pub async fn expect_nothing_pending(&mut self) {
        assert!(
            self.stash.is_empty(),
            "expected nothing, left unread: {:?}",
            self.stash
        );
        let r = self.take_ref();
        self.send_raw(&push::heartbeat(self.protocol_vsn(), &r))
            .await;
        let got = self.recv().await;
        assert!(
            got.event == "phx_reply" && got.ref_ == json!(r),
            "expected nothing before the heartbeat's reply, got {:?}",
            got.raw
        );
        assert_eq!(got.payload["status"], "ok", "{:?}", got.raw);
    }

    /// Assert nothing arrives for `dur` (for checks on timers: something
    /// must not happen within a period), then that the socket still
    /// answers with nothing pending. A close fails.
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.next_within(dur).await {
            Next::Quiet => {}
            Next::Frame(got) => panic!("expected silence, got {:?}", got.raw),
            Next::Closed(why) => panic!("expected silence, the socket closed: {why}"),
        }
        self.expect_nothing_pending().await;
    }

    pub async fn heartbeat(&mut self) -> Got {
        let r = self.take_ref();
        self.send_raw(&push::heartbeat(self.protocol_vsn(), &r))
            .await;
        self.recv_reply(&r).await
    }

    /// Receive until this client's view of `topic` satisfies `done`.
    pub async fn until_view(&mut self, topic: &str, done: impl Fn(&roster_presence::View) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.presence.get(topic).is_some_and(|p| done(p.view())) {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let why = match self.read(left).await {
                Next::Frame(_) => continue,
                Next::Quiet => format!("not within {WAIT:?}"),
                Next::Closed(why) => format!("the socket closed: {why}"),
            };
            panic!(
                "view of {topic} never got there ({why}): {:?}",
                self.presence.get(topic).map(|p| p.view())
            );
        }
    }

    pub fn view(&self, topic: &str) -> roster_presence::View {
        self.presence
            .get(topic)
            .map(|p| p.view().clone())
            .unwrap_or_default()
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Send a Close frame and return the server's answering Close code, if any.
    pub async fn close_handshake(mut self) -> Option<u16> {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        };
        self.ws.send(Message::Close(Some(frame))).await.ok()?;
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Drop the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }

    /// Wait for the server to close this socket.
    pub async fn expect_closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("socket still open after {within:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Keys of a presence payload object.
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Parse a kind-4 user broadcast as realtime-js does; panics on any other kind.
pub fn decode_kind4(b: &[u8]) -> Got {
    assert_eq!(b[0], 4, "binary frame of kind {} sent to a client", b[0]);
    let (tl, el, ml, enc) = (b[1] as usize, b[2] as usize, b[3] as usize, b[4]);
    let mut o = 5;
    let topic = String::from_utf8(b[o..o + tl].to_vec()).unwrap();
    o += tl;
    let event = String::from_utf8(b[o..o + el].to_vec()).unwrap();
    o += el;
    let meta = &b[o..o + ml];
    o += ml;
    let body = b[o..].to_vec();
    let mut payload = json!({"type": "broadcast", "event": event});
    if enc == 1 {
        payload["payload"] = serde_json::from_slice(&body).unwrap();
    }
    if !meta.is_empty() {
        payload["meta"] = serde_json::from_slice(meta).unwrap();
    }
    Got {
        raw: Value::Null,
        join_ref: Value::Null,
        ref_: Value::Null,
        topic,
        event: "broadcast".into(),
        payload,
        binary: (enc == 0).then_some(body),
    }
}

/// A minimal HTTP/1.1 POST over loopback: (status, body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    http_request(addr, "POST", path, headers, body).await
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], b"").await
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
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
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT with these claims, signed with `secret`.
pub fn jwt(claims: Value, secret: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A WebSocket spoken by hand over TCP, to send frames no library would
/// (fragments with a ping between them, unmasked frames) and to see the
/// server's frames byte for byte.
pub struct RawSocket {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// One frame as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    pub opcode: tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode,
    /// The message's bytes (inflated when the frame was compressed).
    pub payload: Vec<u8>,
    /// RSV1: sent compressed (`permessage-deflate`).
    pub compressed: bool,
    /// Header and payload, exactly as read.
    pub wire: Vec<u8>,
}

impl RawSocket {
    pub async fn connect(addr: SocketAddr, vsn: u8) -> RawSocket {
        Self::connect_offering(addr, vsn, None).await.0
    }

    /// Connect with `Sec-WebSocket-Extensions: <extensions>`; also returns
    /// the server's answer to it, if any.
    pub async fn connect_offering(
        addr: SocketAddr,
        vsn: u8,
        extensions: Option<&str>,
    ) -> (RawSocket, Option<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let offer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /realtime/v1/websocket?apikey={KEY}&vsn={vsn}.0.0 HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The RFC 6455 §1.3 example key and its answer.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let answer = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        let raw = RawSocket {
            tcp,
            buf: buf.split_off(end),
        };
        (raw, answer)
    }

    /// Send a text message compressed (`permessage-deflate`, RSV1 set).
    pub async fn send_compressed(&mut self, text: &str) {
        use roster_protocol::websocket::{client_frame, deflate};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let packed = deflate(text.as_bytes(), 6).expect("compressible");
        self.send_wire(&client_frame(
            OpCode::Data(Data::Text),
            true,
            &packed,
            [9, 8, 7, 6],
        ))
        .await;
    }

    /// Send bytes as they are (a frame made by the caller).
    pub async fn send_wire(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Send one frame; `mask: false` breaks RFC 6455 §5.1 on purpose.
    pub async fn send(
        &mut self,
        opcode: tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode,
        is_final: bool,
        payload: &[u8],
        mask: bool,
    ) {
        use tokio::io::AsyncWriteExt;
        use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
        let header = FrameHeader {
            is_final,
            opcode,
            mask: mask.then_some([7, 1, 3, 9]),
            ..FrameHeader::default()
        };
        let mut bytes = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut bytes)
            .unwrap();
        // A closed socket shows in what the test reads next.
        let _ = self.tcp.write_all(&bytes).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        self.send(OpCode::Data(Data::Text), true, text.as_bytes(), true)
            .await;
    }

    /// The next frame, or `None` when the socket closed first.
    pub async fn next(&mut self) -> Option<RawFrame> {
        use std::io::Cursor;
        use tokio::io::AsyncReadExt;
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            if let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
                assert!(header.mask.is_none(), "server frames are unmasked");
                let start = cursor.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let wire: Vec<u8> = self.buf.drain(..end).collect();
                    let payload = if header.rsv1 {
                        // Inflated by the same decoder the bench's clients use.
                        use roster_protocol::websocket::{Decoder, Inbound, Peer};
                        let mut decoder = Decoder::new(Peer::Server, 64 << 20, true);
                        match decoder.decode(&mut wire[..].into()).unwrap() {
                            Some(Inbound::Text(t)) => t.into_bytes(),
                            Some(Inbound::Binary(b)) => b,
                            other => panic!("a compressed {other:?}"),
                        }
                    } else {
                        wire[start..].to_vec()
                    };
                    return Some(RawFrame {
                        opcode: header.opcode,
                        payload,
                        compressed: header.rsv1,
                        wire,
                    });
                }
            }
            let mut chunk = vec![0; 64 * 1024];
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no frame within {WAIT:?}"),
            }
        }
    }

    /// The next text frame whose JSON has `event` (vsn 2 array or vsn 1 object).
    pub async fn next_event(&mut self, event: &str) -> RawFrame {
        loop {
            let frame = self.next().await.expect("socket open");
            let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) else {
                continue;
            };
            if v[3] == event || v["event"] == event {
                return frame;
            }
        }
    }

    /// The code of the Close frame the server ends with, skipping what comes before.
    pub async fn close_code(&mut self) -> Option<u16> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};
        while let Some(frame) = self.next().await {
            if frame.opcode == OpCode::Control(Control::Close) {
                return frame
                    .payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
        None
    }
}
