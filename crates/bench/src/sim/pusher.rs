//! One simulated Pusher-protocol (7) client, for servers such as Sockudo.
//!
//! Join is a `presence-<room>` subscription signed with the app secret; the
//! view is the member list of `pusher_internal:subscription_succeeded`, then
//! every `member_added` / `member_removed`. Pusher has no presence payload
//! updates, so `update` and `broadcast` both send client events
//! (`client-update` / `client-broadcast`, carrying `{i, seq, t}`) at the rate;
//! every other member must get every one once and in order, and the
//! propagation latency is measured on them. `churn` drops the TCP connection
//! without a close and subscribes again on a new one.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

struct Client {
    shared: Arc<Shared>,
    i: usize,
    ws: Ws,
    channel: String,
    members: std::ops::Range<usize>,
    /// Members by index (`u{k}` user ids).
    view: HashSet<u32>,
    /// Members whose user id is not `u{k}` (always ghosts).
    odd: HashSet<String>,
    /// The client events received, checked for order.
    received: Received,
    /// Between a (re)subscribe and its `subscription_succeeded`.
    subscribing: bool,
}

/// What the loop must do after an inbound frame.
#[derive(PartialEq)]
enum Inbound {
    Nothing,
    /// Our subscription succeeded (the view is the server's member list).
    Subscribed,
    /// The server pinged: answer `pusher:pong`.
    Ping,
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

fn user_id(k: usize) -> String {
    format!("u{k}")
}

fn parse_user_id(id: &str) -> Option<u32> {
    id.strip_prefix('u')?.parse().ok()
}

/// Pusher puts JSON in `data` as a string; client events may carry an object.
fn data_of(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

/// Print the first server error, once: a misconfigured server shows at once.
fn report_error(frame: &Value) {
    static SHOWN: AtomicBool = AtomicBool::new(false);
    if !SHOWN.swap(true, Ordering::Relaxed) {
        eprintln!("\nfirst server error: {frame}");
    }
}

/// Connect and wait for `pusher:connection_established`; returns the socket id.
async fn handshake(shared: &Shared, i: usize) -> anyhow::Result<(Ws, String)> {
    let url = shared.targets[i % shared.targets.len()].1.clone();
    let mut ws = open(shared, i, url).await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(t) = msg? else { continue };
            shared.frames.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
            let frame: Value = serde_json::from_str(&t)?;
            match frame["event"].as_str() {
                Some("pusher:connection_established") => {
                    if let Some(id) = data_of(&frame)["socket_id"].as_str() {
                        return Ok(id.to_owned());
                    }
                    anyhow::bail!("connection_established without socket_id");
                }
                Some("pusher:error") => {
                    report_error(&frame);
                    anyhow::bail!("server error before connection_established");
                }
                _ => {}
            }
        }
        anyhow::bail!("closed before connection_established")
    };
    let socket_id = tokio::time::timeout(Duration::from_secs(30), wait).await??;
    Ok((ws, socket_id))
}

impl Client {
    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(text(v)).await?;
        Ok(())
    }

    /// Subscribe to the presence channel, signed as an auth endpoint would.
    async fn subscribe(&mut self, socket_id: &str) -> anyhow::Result<()> {
        let (key, secret) = self.shared.pusher.clone().expect("pusher mode");
        let channel_data =
            json!({"user_id": user_id(self.i), "user_info": {"i": self.i}}).to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
        mac.update(format!("{socket_id}:{}:{channel_data}", self.channel).as_bytes());
        let signature: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.shared.tracks.fetch_add(1, Ordering::Relaxed);
        let channel = self.channel.clone();
        self.send(json!({"event": "pusher:subscribe", "data": {
            "channel": channel,
            "auth": format!("{key}:{signature}"),
            "channel_data": channel_data,
        }}))
        .await
    }

    /// One client event to the channel: `{i, seq, t}`.
    async fn client_event(&mut self, event: &str) -> anyhow::Result<()> {
        let seq = self.shared.sent[self.i].load(Ordering::Relaxed) + 1;
        let t = self.shared.now_us();
        let channel = self.channel.clone();
        self.send(
            json!({"event": event, "channel": channel, "data": {"i": self.i, "seq": seq, "t": t}}),
        )
        .await?;
        self.shared.sent[self.i].store(seq, Ordering::Relaxed);
        self.shared.tracks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn add(&mut self, id: &str) {
        match parse_user_id(id) {
            Some(k) => self.view.insert(k),
            None => self.odd.insert(id.to_owned()),
        };
    }

    fn remove(&mut self, id: &str) {
        match parse_user_id(id) {
            Some(k) => self.view.remove(&k),
            None => self.odd.remove(id),
        };
    }

    fn handle(&mut self, msg: Message, measure: bool) -> Inbound {
        let Message::Text(t) = msg else {
            return Inbound::Nothing;
        };
        self.shared.frames.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes
            .fetch_add(t.len() as u64, Ordering::Relaxed);
        let Ok(frame) = serde_json::from_str::<Value>(&t) else {
            return Inbound::Nothing;
        };
        let event = frame["event"].as_str().unwrap_or_default();
        match event {
            "pusher_internal:subscription_succeeded" => {
                let data = data_of(&frame);
                self.view.clear();
                self.odd.clear();
                let presence = &data["presence"];
                let ids: Vec<String> = match presence["ids"].as_array() {
                    Some(ids) => ids
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    None => presence["hash"]
                        .as_object()
                        .map(|h| h.keys().cloned().collect())
                        .unwrap_or_default(),
                };
                for id in &ids {
                    self.add(id);
                }
                self.subscribing = false;
                return Inbound::Subscribed;
            }
            "pusher_internal:member_added" => {
                if self.subscribing {
                    // Before our snapshot: the snapshot replaces the view (as pusher-js does).
                    self.shared.early_events.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(id) = data_of(&frame)["user_id"].as_str() {
                    self.add(id);
                }
            }
            "pusher_internal:member_removed" => {
                if let Some(id) = data_of(&frame)["user_id"].as_str() {
                    self.remove(id);
                }
            }
            "pusher:ping" => return Inbound::Ping,
            "pusher:error" | "pusher:subscription_error" | "pusher_internal:subscription_error" => {
                report_error(&frame);
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            e if e.starts_with("client-") => {
                self.received
                    .on_message(&self.shared, &data_of(&frame), measure)
            }
            _ => {}
        }
        Inbound::Nothing
    }

    /// Compare the view with the truth: every connected member's user id, nothing else.
    fn check_view(&self) -> Report {
        let n = self.members.len();
        let missing = self
            .members
            .clone()
            .filter(|&k| !self.view.contains(&(k as u32)))
            .count();
        let present = n - missing;
        let ghosts = self.view.len() + self.odd.len() - present;
        Report {
            exact: missing == 0 && ghosts == 0,
            ghosts,
            missing,
            ..Report::default()
        }
    }
}

impl Sim for Client {
    fn ws(&mut self) -> &mut Ws {
        &mut self.ws
    }

    async fn on_frame(&mut self, msg: Message, phase: Phase) -> anyhow::Result<bool> {
        let measure = matches!(phase, Phase::Update | Phase::Broadcast | Phase::Settle);
        match self.handle(msg, measure) {
            Inbound::Subscribed => Ok(true),
            Inbound::Ping => {
                self.send(json!({"event": "pusher:pong", "data": {}}))
                    .await?;
                Ok(false)
            }
            Inbound::Nothing => Ok(false),
        }
    }

    async fn tick(&mut self, phase: Phase) -> anyhow::Result<()> {
        let event = if phase == Phase::Update {
            "client-update"
        } else {
            "client-broadcast"
        };
        self.client_event(event).await
    }

    async fn rejoin(&mut self) -> anyhow::Result<()> {
        let (fresh, socket_id) = handshake(&self.shared, self.i).await?;
        drop(std::mem::replace(&mut self.ws, fresh));
        self.view.clear();
        self.odd.clear();
        self.subscribing = true;
        self.subscribe(&socket_id).await
    }

    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.send(json!({"event": "pusher:ping", "data": {}})).await
    }

    fn converged(&self) -> bool {
        self.view.len() + self.odd.len() == self.members.len()
    }

    fn check(&self) -> Report {
        let mut report = self.check_view();
        report.exact &= self
            .received
            .complete(&self.shared, self.members.clone(), self.i);
        report
    }
}

/// Run client `i` through every phase; returns its final exactness report.
pub async fn run(shared: Arc<Shared>, i: usize, sem: Arc<Semaphore>) -> Report {
    let started = Instant::now();
    let Some((ws, socket_id)) = connect_retrying(&shared, &sem, || handshake(&shared, i)).await
    else {
        return Report::failed(shared.n);
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut c = Client {
        shared: shared.clone(),
        i,
        ws,
        channel: format!("presence-{}", shared.room_name(i)),
        members: shared.members(i),
        view: HashSet::new(),
        odd: HashSet::new(),
        received: Received::default(),
        subscribing: true,
    };
    if c.subscribe(&socket_id).await.is_err() {
        return Report::failed(shared.n);
    }
    drive(&shared, i, c, started).await
}
