//! One simulated client, and what all clients share. The Supabase client
//! is here; the Pusher one is in `pusher`.

pub mod compact;
pub mod pusher;
pub mod socket;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact::CompactView;
use roster_presence::ClientPresence;
use roster_protocol::push::{ClientPush, JoinPayload};
use roster_protocol::{decode, Vsn};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Join,
    Update,
    /// Every client sends broadcasts at the rate.
    Broadcast,
    /// Share of clients that drop abruptly and rejoin, over and over.
    Churn(f64),
    /// A node is about to be (or was) killed: count the leaves each view
    /// sees, and time how long its ghosts stay (see `Shared::kill`).
    Ghost,
    Settle,
    Verify,
    Stop,
}

pub struct Shared {
    /// `(host:port, URL with key)` per node; client `i` uses node `i % len`.
    targets: Vec<(String, String)>,
    room: String,
    pub n: usize,
    /// Clients per room; `n` puts everyone in one room.
    room_size: usize,
    vsn: String,
    sources: u8,
    rate: f64,
    epoch: Instant,
    phase: watch::Sender<Phase>,
    /// Pusher mode: the app's key and secret, to sign presence subscriptions.
    pusher: Option<(String, String)>,
    /// Keep compact views (16 bytes a member), except every `FULL_VIEW_EVERY`th client.
    compact_views: bool,
    /// Each client's last tracked sequence number: the truth to converge to.
    final_seq: Vec<AtomicU64>,
    /// Broadcasts each client has sent.
    sent: Vec<AtomicU64>,
    /// Broadcasts received out of order, twice, or from nowhere.
    pub broadcast_errors: AtomicUsize,
    pub connected: AtomicUsize,
    pub joined: AtomicUsize,
    pub converged: AtomicUsize,
    pub settled: AtomicUsize,
    pub verified: AtomicUsize,
    pub errors: AtomicUsize,
    pub rejoins: AtomicUsize,
    /// Connections the server closed (or that broke) under a client.
    pub dropped: AtomicUsize,
    /// Pusher: `member_added` frames that came before the client's own `subscription_succeeded`.
    pub early_events: AtomicUsize,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes read off the sockets: `bytes` as compressed, plus frame headers.
    pub wire_bytes: Arc<AtomicU64>,
    /// Offer `permessage-deflate`, as browsers do.
    pub compression: bool,
    /// For `wss://` URLs.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Tracks sent, all clients and phases together.
    pub tracks: AtomicU64,
    /// The node (index into the URLs) the kill scenario kills; its clients'
    /// connections are expected to break in the ghost phase.
    kill_node: Option<usize>,
    /// When it was killed, in µs since `epoch` (`u64::MAX`: not yet). From
    /// then on the truth is the members on the other nodes.
    kill_at_us: AtomicU64,
    /// `epoch` in µs since the Unix epoch, to place a kill timed by another process.
    epoch_unix_us: u64,
    /// Surviving views that no longer show any member of the killed node.
    pub clean: AtomicUsize,
    /// Clients whose node was killed.
    pub gone: AtomicUsize,
    /// (node, ms) of each client's connect + join.
    join_ms: Mutex<Vec<(usize, f64)>>,
    update_ms: Mutex<Vec<f64>>,
    /// ms from the kill until each surviving view was exact again.
    clean_ms: Mutex<Vec<f64>>,
}

#[derive(Default)]
pub struct Report {
    pub exact: bool,
    pub ghosts: usize,
    pub missing: usize,
    /// Kill scenario: leaves of a dead member seen more than once (the extra ones),
    pub duplicate_leaves: usize,
    /// leaves of a live member (or of a key from outside the room),
    pub spurious_leaves: usize,
    /// and dead members whose leave never came.
    pub missed_leaves: usize,
    /// This client's node was killed: not a view to check.
    pub gone: bool,
}

type Ws = socket::Ws;

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        key: &str,
        room: &str,
        n: usize,
        vsn: &str,
        sources: u8,
        rate: f64,
        pusher: Option<(String, String)>,
    ) -> anyhow::Result<Self> {
        // Several nodes: comma-separated URLs, clients spread round-robin.
        let targets = url
            .split(',')
            .map(|url| {
                let server = url
                    .strip_prefix("ws://")
                    .or_else(|| url.strip_prefix("wss://"))
                    .ok_or_else(|| anyhow::anyhow!("only ws:// and wss:// URLs are supported"))?
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let url = match &pusher {
                    None => format!("{url}?apikey={key}"),
                    Some((app_key, _)) => format!(
                        "{}/app/{app_key}?protocol=7&client=roster-bench&version=1",
                        url.trim_end_matches('/')
                    ),
                };
                Ok((server, url))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Shared {
            targets,
            room: room.to_owned(),
            n,
            room_size: n.max(1),
            vsn: vsn.to_owned(),
            sources: sources.max(1),
            rate,
            pusher,
            compact_views: false,
            epoch: Instant::now(),
            phase: watch::channel(Phase::Join).0,
            final_seq: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            broadcast_errors: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            converged: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            verified: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            rejoins: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            early_events: AtomicUsize::new(0),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            wire_bytes: Arc::default(),
            compression: false,
            tls: None,
            tracks: AtomicU64::new(0),
            kill_node: None,
            kill_at_us: AtomicU64::new(u64::MAX),
            epoch_unix_us: unix_us(),
            clean: AtomicUsize::new(0),
            gone: AtomicUsize::new(0),
            join_ms: Mutex::new(Vec::new()),
            update_ms: Mutex::new(Vec::new()),
            clean_ms: Mutex::new(Vec::new()),
        })
    }

    /// Rooms of `size` clients each (client i is in room i / size).
    pub fn with_room_size(mut self, size: usize) -> Self {
        if size > 0 {
            self.room_size = size;
        }
        self
    }

    /// Trust this connector's roots for `wss://` URLs.
    pub fn with_tls(mut self, tls: tokio_rustls::TlsConnector) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Clients offer `permessage-deflate` (see `socket`).
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// The kill scenario will kill node `node` (an index into the URLs).
    pub fn with_kill_node(mut self, node: Option<usize>) -> Self {
        self.kill_node = node;
        self
    }

    /// The node was killed at `unix_us` (µs since the Unix epoch): from now
    /// on the truth is the members on the other nodes.
    pub fn kill(&self, unix_us: u64) {
        let at = unix_us.saturating_sub(self.epoch_unix_us);
        self.kill_at_us.store(at, Ordering::Relaxed);
    }

    fn killed(&self) -> bool {
        self.kill_at_us.load(Ordering::Relaxed) != u64::MAX
    }

    /// The node client `k` connects to.
    pub fn node_of(&self, k: usize) -> usize {
        k % self.targets.len()
    }

    /// Client `k`'s node is the one the kill scenario kills.
    pub fn on_kill_node(&self, k: usize) -> bool {
        self.kill_node == Some(self.node_of(k))
    }

    /// Client `k`'s node has been killed: it must not be in any view.
    fn dead(&self, k: usize) -> bool {
        self.killed() && self.on_kill_node(k)
    }

    /// How many of `members` are not dead (in O(1): this runs per frame).
    fn alive_in(&self, members: std::ops::Range<usize>) -> usize {
        let (Some(j), true) = (self.kill_node, self.killed()) else {
            return members.len();
        };
        let m = self.targets.len();
        // Clients k < x with k % m == j.
        let on_j = |x: usize| if x <= j { 0 } else { (x - j - 1) / m + 1 };
        members.len() - (on_j(members.end) - on_j(members.start))
    }

    /// Compact views for very large rooms (see `compact`).
    pub fn with_compact_views(mut self, compact: bool) -> Self {
        self.compact_views = compact;
        self
    }

    fn view_for(&self, i: usize) -> View {
        if self.compact_views && !i.is_multiple_of(FULL_VIEW_EVERY) {
            View::Compact(CompactView::new(self.members(i)))
        } else {
            View::Full(ClientPresence::silent())
        }
    }

    /// The clients sharing client i's room.
    fn members(&self, i: usize) -> std::ops::Range<usize> {
        let start = i / self.room_size * self.room_size;
        start..(start + self.room_size).min(self.n)
    }

    /// Client i's room: the `--room` name, or `<room>-<k>` in the rooms layout.
    fn room_name(&self, i: usize) -> String {
        if self.room_size >= self.n {
            self.room.clone()
        } else {
            format!("{}-{}", self.room, i / self.room_size)
        }
    }

    fn topic(&self, i: usize) -> String {
        format!("realtime:{}", self.room_name(i))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    pub fn join_latencies(&self) -> Vec<f64> {
        self.join_latencies_of(None)
    }

    /// Connect + join latencies of one node's clients (all with `None`).
    pub fn join_latencies_of(&self, node: Option<usize>) -> Vec<f64> {
        let all = self.join_ms.lock().unwrap();
        let mut v: Vec<f64> = all
            .iter()
            .filter(|(n, _)| node.is_none_or(|node| *n == node))
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn nodes(&self) -> usize {
        self.targets.len()
    }

    /// ms from the kill until each surviving view was exact, sorted.
    pub fn clean_latencies(&self) -> Vec<f64> {
        sorted(&self.clean_ms)
    }

    pub fn update_latencies(&self) -> Vec<f64> {
        sorted(&self.update_ms)
    }

    fn vsn_for(&self, i: usize) -> Vsn {
        match self.vsn.as_str() {
            "1" => Vsn::V1,
            "mixed" if i % 2 == 1 => Vsn::V1,
            _ => Vsn::V2,
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A surviving view is exact again: how long after the kill.
    fn mark_clean(&self) {
        let since = self
            .now_us()
            .saturating_sub(self.kill_at_us.load(Ordering::Relaxed));
        self.clean_ms.lock().unwrap().push(since as f64 / 1000.0);
        self.clean.fetch_add(1, Ordering::Relaxed);
    }
}

/// Now, in µs since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn sorted(v: &Mutex<Vec<f64>>) -> Vec<f64> {
    let mut v = v.lock().unwrap().clone();
    v.sort_by(f64::total_cmp);
    v
}

fn frame(vsn: Vsn, join_ref: &str, ref_: u64, topic: &str, push: &ClientPush) -> Message {
    let text = push.encode(vsn, Some(join_ref), Some(&ref_.to_string()), topic);
    Message::Text(text.into())
}

/// Messages `{i, seq, t}` (broadcasts, or Pusher client events) from the
/// other members: each sender's must come once and in order.
#[derive(Default)]
struct Received {
    /// Last sequence number seen from each sender (allocated on first use).
    last_seen: Vec<u64>,
}

impl Received {
    fn on_message(&mut self, shared: &Shared, data: &Value, measure: bool) {
        let (Some(from), Some(seq)) = (data["i"].as_u64(), data["seq"].as_u64()) else {
            shared.broadcast_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.last_seen.is_empty() {
            self.last_seen = vec![0; shared.n];
        }
        match self.last_seen.get_mut(from as usize) {
            Some(last) if *last + 1 == seq => *last = seq,
            _ => {
                shared.broadcast_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if measure {
            if let Some(t) = data["t"].as_u64() {
                let ms = shared.now_us().saturating_sub(t) as f64 / 1000.0;
                shared.update_ms.lock().unwrap().push(ms);
            }
        }
    }

    /// Has every other member's every message arrived?
    fn complete(&self, shared: &Shared, members: std::ops::Range<usize>, me: usize) -> bool {
        members.filter(|&k| k != me).all(|k| {
            let sent = shared.sent[k].load(Ordering::Relaxed);
            sent == 0 || self.last_seen.get(k).copied() == Some(sent)
        })
    }
}

/// With compact views, one client in this many still keeps a full phx-js view.
const FULL_VIEW_EVERY: usize = 100;

/// A client's presence view: the phx-js algorithm, or the compact one.
enum View {
    Full(ClientPresence),
    Compact(CompactView),
}

impl View {
    fn rejoined(&mut self) {
        match self {
            View::Full(p) => p.rejoined(),
            View::Compact(p) => p.rejoined(),
        }
    }

    /// `members` members, each once, with one meta (a cheap test, run per frame).
    fn converged(&self, members: usize) -> bool {
        match self {
            View::Full(p) => {
                let view = p.view();
                view.len() == members && view.values().all(|m| m.len() == 1)
            }
            View::Compact(p) => p.converged(members),
        }
    }

    /// Compare with the truth: every member's key, one meta, its last seq
    /// (`want`); a member `want` says `None` of must not be there.
    fn check(
        &self,
        members: std::ops::Range<usize>,
        want: impl Fn(usize) -> Option<u64>,
    ) -> Report {
        let view = match self {
            View::Full(p) => p.view(),
            View::Compact(p) => {
                let (missing, ghosts) = p.check(want);
                return Report {
                    exact: missing == 0 && ghosts == 0,
                    ghosts,
                    missing,
                    ..Report::default()
                };
            }
        };
        let mut missing = 0;
        let mut ghosts = 0;
        let mut expected = 0;
        let mut found = 0;
        for k in members {
            let want = want(k);
            expected += want.is_some() as usize;
            match (view.get(&format!("u{k}")), want) {
                (None, None) => {}
                (None, Some(_)) => missing += 1,
                (Some(metas), None) => {
                    found += 1;
                    ghosts += metas.len();
                }
                (Some(metas), Some(want)) => {
                    found += 1;
                    ghosts += metas.len().saturating_sub(1);
                    if !metas.iter().any(|m| m["seq"].as_u64() == Some(want)) {
                        missing += 1;
                    }
                }
            }
        }
        // Keys from outside the room.
        ghosts += view.len() - found;
        Report {
            exact: missing == 0 && ghosts == 0 && view.len() == expected,
            ghosts,
            missing,
            ..Report::default()
        }
    }
}

struct Client {
    shared: Arc<Shared>,
    i: usize,
    vsn: Vsn,
    ws: Ws,
    topic: String,
    members: std::ops::Range<usize>,
    next_ref: u64,
    join_ref: String,
    presence: View,
    seq: u64,
    /// The broadcasts received, checked for order.
    received: Received,
    /// Ghost phase: the leaves seen.
    leaves: Leaves,
}

/// Leaves seen per member (slot `k - members.start`), and leaves of keys
/// from outside the room.
#[derive(Default)]
struct Leaves {
    seen: Vec<u32>,
    foreign: usize,
}

impl Leaves {
    /// Count a diff's leaves, by key.
    fn count<'a>(&mut self, members: std::ops::Range<usize>, keys: impl Iterator<Item = &'a str>) {
        if self.seen.is_empty() {
            self.seen = vec![0; members.len()];
        }
        for key in keys {
            let k = key.strip_prefix('u').and_then(|k| k.parse::<usize>().ok());
            match k.filter(|k| members.contains(k)) {
                Some(k) => self.seen[k - members.start] += 1,
                None => self.foreign += 1,
            }
        }
    }
}

async fn connect(shared: &Shared, i: usize) -> anyhow::Result<Ws> {
    let vsn = shared.vsn_for(i);
    let base_url = &shared.targets[i % shared.targets.len()].1;
    open(shared, i, format!("{base_url}&vsn={}", vsn.as_str())).await
}

/// Open client i's WebSocket to its node at `url`.
async fn open(shared: &Shared, i: usize, url: String) -> anyhow::Result<Ws> {
    let server = &shared.targets[i % shared.targets.len()].0;
    let addr: SocketAddr = tokio::net::lookup_host(server)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {server}"))?;
    let socket = TcpSocket::new_v4()?;
    let src = Ipv4Addr::new(127, 0, 0, 1 + (i % shared.sources as usize) as u8);
    if addr.ip().is_loopback() && shared.sources > 1 {
        socket.bind(SocketAddr::new(src.into(), 0))?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(addr).await?;
    Ws::connect(
        stream,
        &url,
        shared.tls.as_ref(),
        shared.compression,
        shared.wire_bytes.clone(),
    )
    .await
}

impl Client {
    async fn send(&mut self, push: &ClientPush) -> anyhow::Result<u64> {
        let r = self.next_ref;
        self.next_ref += 1;
        let msg = frame(self.vsn, &self.join_ref, r, &self.topic, push);
        self.ws.send(msg).await?;
        Ok(r)
    }

    async fn join_and_track(&mut self) -> anyhow::Result<()> {
        self.join_ref = self.next_ref.to_string();
        let key = format!("u{}", self.i);
        self.send(&ClientPush::Join(JoinPayload::presence(key)))
            .await?;
        self.presence.rejoined();
        self.track().await
    }

    async fn track(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        self.shared.final_seq[self.i].store(self.seq, Ordering::Relaxed);
        let t = self.shared.now_us();
        self.shared.tracks.fetch_add(1, Ordering::Relaxed);
        let state = json!({"i": self.i, "seq": self.seq, "t": t});
        self.send(&ClientPush::Track(state)).await?;
        Ok(())
    }

    async fn broadcast(&mut self) -> anyhow::Result<()> {
        let seq = self.shared.sent[self.i].load(Ordering::Relaxed) + 1;
        let t = self.shared.now_us();
        let push = ClientPush::Broadcast {
            event: "tick".into(),
            payload: json!({"i": self.i, "seq": seq, "t": t}),
        };
        self.send(&push).await?;
        self.shared.sent[self.i].store(seq, Ordering::Relaxed);
        Ok(())
    }

    /// Apply one inbound frame; returns true for our join's `ok` reply.
    fn handle(&mut self, msg: Message, phase: Phase) -> bool {
        let measure = matches!(phase, Phase::Update | Phase::Settle);
        let ghost = phase == Phase::Ghost;
        let Message::Text(text) = msg else {
            return false;
        };
        self.shared.frames.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        if let View::Compact(view) = &mut self.presence {
            // Presence frames are read without building `Value`s; the rest
            // (replies, broadcasts) take the common path below.
            match compact::parse_frame(&text) {
                Some(f) if f.event == "presence_state" => {
                    let _ = view.on_state(f.payload);
                    return false;
                }
                Some(f) if f.event == "presence_diff" => {
                    if ghost {
                        if let Ok(keys) = compact::leave_keys(f.payload) {
                            self.leaves.count(self.members.clone(), keys.into_iter());
                        }
                    }
                    if measure {
                        let now = self.shared.now_us();
                        let mut lat = Vec::new();
                        let _ = view.on_diff(f.payload, Some((now, &mut lat)));
                        self.shared.update_ms.lock().unwrap().extend(lat);
                    } else {
                        let _ = view.on_diff(f.payload, None);
                    }
                    return false;
                }
                _ => {}
            }
        }
        let Ok(f) = decode(self.vsn, &text) else {
            return false;
        };
        match f.event.as_str() {
            "phx_reply" => {
                return f.ref_.as_deref() == Some(self.join_ref.as_str())
                    && f.payload["status"] == "ok"
            }
            "broadcast" => self
                .received
                .on_message(&self.shared, &f.payload["payload"], measure),
            "presence_state" => {
                if let View::Full(p) = &mut self.presence {
                    let _ = p.on_state_owned(f.payload);
                }
            }
            "presence_diff" => {
                if ghost {
                    let leaves = f.payload["leaves"].as_object();
                    let keys = leaves.into_iter().flatten().map(|(k, _)| k.as_str());
                    self.leaves.count(self.members.clone(), keys);
                }
                if measure {
                    let now = self.shared.now_us();
                    if let Some(joins) = f.payload["joins"].as_object() {
                        let mut lat = Vec::new();
                        for entry in joins.values() {
                            for meta in entry["metas"].as_array().into_iter().flatten() {
                                if let Some(t) = meta["t"].as_u64() {
                                    lat.push(now.saturating_sub(t) as f64 / 1000.0);
                                }
                            }
                        }
                        self.shared.update_ms.lock().unwrap().extend(lat);
                    }
                }
                if let View::Full(p) = &mut self.presence {
                    let _ = p.on_diff_owned(f.payload);
                }
            }
            _ => {}
        }
        false
    }
}

/// What one protocol's client does. [`drive`] runs every client, of
/// either protocol, through the phases: ticks, churn, heartbeats and the
/// checks at quiet moments.
trait Sim {
    fn ws(&mut self) -> &mut Ws;
    /// Apply one inbound frame (answering it if the protocol asks to);
    /// `Ok(true)` when it completed our join.
    async fn on_frame(&mut self, msg: Message, phase: Phase) -> anyhow::Result<bool>;
    /// One update or broadcast tick.
    async fn tick(&mut self, phase: Phase) -> anyhow::Result<()>;
    /// Connect again (the old connection is dropped without a close) and rejoin.
    async fn rejoin(&mut self) -> anyhow::Result<()>;
    async fn heartbeat(&mut self) -> anyhow::Result<()>;
    /// A cheap test, run after every frame.
    fn converged(&self) -> bool;
    /// The view against the truth; not exact while messages are missing.
    fn check(&self) -> Report;
}

impl Report {
    /// A client that could not finish: every member counts as missing.
    fn failed(n: usize) -> Report {
        Report {
            missing: n,
            ..Report::default()
        }
    }
}

/// How long one connection attempt (TCP, WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Open client `i`'s connection under the connect semaphore, retrying a few
/// times (counted in `errors`); `None` when it never succeeds.
async fn connect_retrying<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    shared: &Shared,
    sem: &Semaphore,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let _permit = sem.acquire().await.expect("semaphore open");
    let mut tries = 0;
    loop {
        // A server out of file descriptors leaves a connection in its
        // backlog unanswered: give up on an attempt after a while.
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, attempt());
        match attempt
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            Ok(ok) => break Some(ok),
            Err(_) if tries < 5 => {
                tries += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            Err(_) => break None,
        }
    }
}

impl Sim for Client {
    fn ws(&mut self) -> &mut Ws {
        &mut self.ws
    }

    async fn on_frame(&mut self, msg: Message, phase: Phase) -> anyhow::Result<bool> {
        Ok(self.handle(msg, phase))
    }

    async fn tick(&mut self, phase: Phase) -> anyhow::Result<()> {
        if phase == Phase::Update {
            self.track().await
        } else {
            self.broadcast().await
        }
    }

    async fn rejoin(&mut self) -> anyhow::Result<()> {
        let fresh = connect(&self.shared, self.i).await?;
        drop(std::mem::replace(&mut self.ws, fresh));
        self.join_and_track().await
    }

    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        let r = self.next_ref;
        self.next_ref += 1;
        let text = roster_protocol::push::heartbeat(self.vsn, &r.to_string());
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    fn converged(&self) -> bool {
        self.presence
            .converged(self.shared.alive_in(self.members.clone()))
    }

    fn check(&self) -> Report {
        let s = &self.shared;
        let want = |k: usize| (!s.dead(k)).then(|| s.final_seq[k].load(Ordering::Relaxed));
        let mut report = self.presence.check(self.members.clone(), want);
        report.exact &= self
            .received
            .complete(&self.shared, self.members.clone(), self.i);
        if s.killed() {
            // Each dead member's leave once; no leave of anyone else.
            report.spurious_leaves = self.leaves.foreign;
            for k in self.members.clone() {
                let seen = self.leaves.seen.get(k - self.members.start).copied();
                let seen = seen.unwrap_or(0) as usize;
                match (s.dead(k), seen) {
                    (true, 0) => report.missed_leaves += 1,
                    (true, seen) => report.duplicate_leaves += seen - 1,
                    (false, seen) => report.spurious_leaves += seen,
                }
            }
            report.exact &= report.missed_leaves == 0
                && report.duplicate_leaves == 0
                && report.spurious_leaves == 0;
        }
        report
    }
}

/// Run client `i` through every phase; returns its final exactness report.
pub async fn run(shared: Arc<Shared>, i: usize, sem: Arc<Semaphore>) -> Report {
    let started = Instant::now();
    let Some(ws) = connect_retrying(&shared, &sem, || connect(&shared, i)).await else {
        return Report::failed(shared.n);
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut c = Client {
        vsn: shared.vsn_for(i),
        shared: shared.clone(),
        i,
        ws,
        topic: shared.topic(i),
        members: shared.members(i),
        next_ref: 1,
        join_ref: String::new(),
        presence: shared.view_for(i),
        seq: 0,
        received: Received::default(),
        leaves: Leaves::default(),
    };
    if c.join_and_track().await.is_err() {
        return Report::failed(shared.n);
    }
    drive(&shared, i, c, started).await
}

/// The phases, for a connected client that has sent its join.
async fn drive(shared: &Shared, i: usize, mut c: impl Sim, started: Instant) -> Report {
    let failed = Report::failed(shared.n);
    let mut phase_rx = shared.phase.subscribe();
    let mut phase = *phase_rx.borrow();
    let mut joined = false;
    let mut converged = false;
    let mut settled = false;
    let mut verified = false;
    let mut clean = false;
    let mut report = None;
    let period = Duration::from_secs_f64(1.0 / shared.rate.max(0.001));
    // Spread the clients' ticks over the period.
    let offset = period.mul_f64((i as f64 * 0.618_034) % 1.0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    let churns =
        |p: Phase| matches!(p, Phase::Churn(share) if (i as f64) < share * shared.n as f64);
    let mut next_churn = tokio::time::Instant::now() + Duration::from_millis(500) + offset;
    // Heartbeats like the official clients (every 25 s; Pusher's activity
    // timeout is 120 s), or long runs are cut by the server's idle timeout.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(20),
        Duration::from_secs(20),
    );
    loop {
        let idle = tokio::time::sleep(Duration::from_millis(25));
        let mut quiet = false;
        tokio::select! {
            msg = c.ws().next() => {
                let Some(Ok(m)) = msg else {
                    if phase == Phase::Ghost && shared.on_kill_node(i) {
                        // Its node was killed, as planned.
                        shared.gone.fetch_add(1, Ordering::Relaxed);
                        return Report { gone: true, ..Report::default() };
                    }
                    // Closed by the server (or broken): this view is lost.
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return failed;
                };
                match c.on_frame(m, phase).await {
                    Ok(true) if !joined => {
                        joined = true;
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        let ms = started.elapsed().as_secs_f64() * 1000.0;
                        shared.join_ms.lock().unwrap().push((shared.node_of(i), ms));
                    }
                    Ok(_) => {}
                    Err(_) => return failed,
                }
                if !converged && c.converged() {
                    converged = true;
                    shared.converged.fetch_add(1, Ordering::Relaxed);
                }
                if phase == Phase::Ghost && !clean && shared.killed() && c.converged() && c.check().exact {
                    clean = true;
                    shared.mark_clean();
                }
            }
            changed = phase_rx.changed() => {
                if changed.is_err() { return failed; }
                phase = *phase_rx.borrow();
                quiet = true;
                if matches!(phase, Phase::Update | Phase::Broadcast) {
                    // Start ticking now: no burst of the ticks missed while joining.
                    ticker.reset_at(tokio::time::Instant::now() + offset);
                }
                if phase == Phase::Stop {
                    let _ = c.ws().close().await;
                    return report.unwrap_or(failed);
                }
            }
            _ = ticker.tick(), if matches!(phase, Phase::Update | Phase::Broadcast) => {
                if c.tick(phase).await.is_err() { return failed; }
            }
            _ = tokio::time::sleep_until(next_churn), if churns(phase) => {
                // Drop abruptly (no close frame), reconnect, rejoin.
                shared.rejoins.fetch_add(1, Ordering::Relaxed);
                if c.rejoin().await.is_err() { return failed; }
                next_churn = tokio::time::Instant::now() + Duration::from_millis(1000) + offset;
            }
            _ = heartbeat.tick() => {
                if c.heartbeat().await.is_err() { return failed; }
            }
            _ = idle, if matches!(phase, Phase::Settle | Phase::Verify) => quiet = true,
        }
        // Quiet moments are when to run the O(n) checks.
        if !quiet {
            continue;
        }
        // At the kill (`main` announces it as a phase change): a room without
        // members on the killed node is clean at once.
        if phase == Phase::Ghost && !clean && shared.killed() && c.converged() && c.check().exact {
            clean = true;
            shared.mark_clean();
        }
        let settling = matches!(phase, Phase::Settle | Phase::Verify);
        if !settled && settling && c.check().exact {
            settled = true;
            shared.settled.fetch_add(1, Ordering::Relaxed);
        }
        if !verified && phase == Phase::Verify {
            let r = c.check();
            if r.exact {
                verified = true;
                shared.verified.fetch_add(1, Ordering::Relaxed);
            }
            report = Some(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_kill_the_truth_is_the_members_on_the_other_nodes() {
        let urls = "ws://127.0.0.1:1/w,ws://127.0.0.1:2/w,ws://127.0.0.1:3/w";
        let shared = Shared::new(urls, "k", "r", 40, "2", 1, 1.0, None)
            .unwrap()
            .with_kill_node(Some(1));
        assert!(shared.on_kill_node(4) && !shared.on_kill_node(5));
        assert_eq!(shared.alive_in(0..10), 10, "nobody is dead before the kill");
        shared.kill(unix_us());
        for start in 0..12 {
            for end in start..25 {
                let brute = (start..end).filter(|&k| !shared.dead(k)).count();
                assert_eq!(shared.alive_in(start..end), brute, "{start}..{end}");
            }
        }
    }
}
