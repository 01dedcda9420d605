//! Multi-process cluster harness: a real `redis-server`, several `roster`
//! processes sharing it, a cuttable TCP proxy, and a client that records
//! every presence event it receives (on top of `common::Client`).
//!
//! Process logs go to `$CARGO_TARGET_TMPDIR/cluster-logs/<test>-<name>.log`;
//! when a test fails, the tail of each is printed. `CLUSTER_TEST_LOG`
//! overrides the nodes' log filter.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use roster_presence::View;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{http_get, Client, Got, Next};

/// Fast cluster timings used by every test node.
pub const HEARTBEAT_MS: u64 = 200;
pub const LEASE_MS: u64 = 1200;
pub const REAP_GRACE_MS: u64 = 200;
pub const SETTLE_MS: u64 = 800;
pub const ISLAND_MS: u64 = 5000;

/// A dead node's presences must be gone from every survivor within this.
pub const GHOST_BOUND: Duration = Duration::from_secs(4);

pub const ROOM: &str = "realtime:room";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- processes

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port for a Redis Cluster node: the node also listens on port + 10,000
/// (its cluster bus), so the port must be at most 55,535 and both must be free.
/// Drawn below the kernel's ephemeral range, where port-0 binds rarely land.
pub fn free_cluster_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut draw = (seed ^ (u64::from(std::process::id()) << 20)) | 1;
    loop {
        // xorshift: a cheap spread over the range, no crate needed.
        draw ^= draw << 13;
        draw ^= draw >> 7;
        draw ^= draw << 17;
        let port = 20_000 + (draw % 10_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// Whether `program --version` runs.
fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Panics, with what to do, when `redis-server` is not on PATH: a cluster
/// test without Redis fails loudly rather than passing as skipped.
pub fn require_redis() {
    assert!(
        on_path("redis-server"),
        "the cluster tests need redis-server on PATH \
         (apt-get install redis-server; ./scripts/test installs it)"
    );
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kill -SIG pid` through the `kill` command (no libc dependency).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

fn tail(path: &PathBuf, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Poll a child until it exits, up to `within`.
async fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(ms(20)).await;
    }
}

/// A `redis-server` on a free loopback port, no automatic persistence
/// (`save ""`, no AOF). Its working directory is a fresh per-test folder
/// (`$CARGO_TARGET_TMPDIR/cluster-redis/<test>`), so an explicit [`Redis::save`]
/// writes `dump.rdb` there and [`Redis::restart_from_dump`] loads it.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    /// Redis's `dir`; holds `dump.rdb` after a `SAVE`.
    pub dir: PathBuf,
}

const DUMP: &str = "dump.rdb";

impl Redis {
    pub async fn start(label: &str) -> Redis {
        require_redis();
        let log = log_dir().join(format!("{label}-redis.log"));
        let _ = std::fs::remove_file(&log);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster-redis")
            .join(label);
        // A dump left by an earlier run must not be loaded.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut last = String::new();
        for _ in 0..3 {
            let mut r = Redis {
                port: free_port(),
                child: None,
                log: log.clone(),
                dir: dir.clone(),
            };
            match r.spawn().await {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server would not start: {last}");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let port = self.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--save", "", "--appendonly", "no"])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--dbfilename", DUMP])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}):\n{}",
                    tail(&self.log, 20)
                ));
            }
            if ping(self.port).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server never answered PING".into());
            }
            tokio::time::sleep(ms(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// SIGKILL and reap; everything in it is lost.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn cont(&self) {
        signal(self.pid(), "CONT");
    }

    /// Start again, empty, on the same port (kills a running one first;
    /// a dump written by [`Redis::save`] is deleted, not loaded).
    pub async fn restart(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(self.dump_path());
        self.respawn().await;
    }

    /// Start again on the same port and `dir`, loading the dump the last
    /// [`Redis::save`] wrote (kills a running one first).
    pub async fn restart_from_dump(&mut self) {
        self.kill9();
        assert!(
            self.dump_path().is_file(),
            "no {} to restart from",
            self.dump_path().display()
        );
        self.respawn().await;
    }

    /// The file a `SAVE` writes.
    pub fn dump_path(&self) -> PathBuf {
        self.dir.join(DUMP)
    }

    /// `SAVE`: write the whole dataset to `dump.rdb` now (works although
    /// automatic snapshots are off).
    pub async fn save(&self) {
        let reply = self.cmd(&["SAVE"]).await;
        assert_eq!(reply, Resp::Simple("OK".into()), "SAVE");
        assert!(self.dump_path().is_file(), "SAVE wrote no dump");
    }

    async fn respawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server would not restart on {}: {e}", self.port)
                }
                Err(_) => tokio::time::sleep(ms(50)).await,
            }
        }
    }

    /// One command, raw RESP.
    pub async fn cmd(&self, args: &[&str]) -> Resp {
        tokio::time::timeout(Duration::from_secs(3), resp_command(self.addr(), args))
            .await
            .unwrap_or_else(|_| panic!("redis command {args:?} timed out"))
    }

    /// The `phx_ref` of every entry stored in Redis (all channels), sorted;
    /// a ref stored twice appears twice. Reads the layout of `cluster::wire`:
    /// hashes `rp:{T}:s`, values `"key"\x1fref\x1fprev\x1fstate`.
    pub async fn entry_refs(&self) -> Vec<String> {
        let mut refs = Vec::new();
        for key in self.cmd(&["KEYS", "rp:{*}:s"]).await.strings() {
            for value in self.cmd(&["HVALS", &key]).await.strings() {
                refs.push(value.split('\x1f').nth(1).unwrap_or("?").to_owned());
            }
        }
        refs.sort();
        refs
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    tokio::time::timeout(ms(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A parsed RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The strings of an array reply (empty for anything else).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items
                .iter()
                .filter_map(|i| match i {
                    Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    Resp::Simple(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

async fn resp_command(addr: SocketAddr, args: &[&str]) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect to redis");
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((resp, _)) = parse_resp(&buf) {
            return resp;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "redis closed the connection mid-reply");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parse one reply from the start of `b`: the reply and its length, or
/// `None` if incomplete.
fn parse_resp(b: &[u8]) -> Option<(Resp, usize)> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..line_end]).ok()?;
    let after = line_end + 2;
    match b.first()? {
        b'+' => Some((Resp::Simple(line.into()), after)),
        b'-' => Some((Resp::Error(line.into()), after)),
        b':' => Some((Resp::Int(line.parse().ok()?), after)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Bulk(None), after));
            }
            let end = after + n as usize;
            if b.len() < end + 2 {
                return None;
            }
            Some((Resp::Bulk(Some(b[after..end].to_vec())), end + 2))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Array(None), after));
            }
            let mut at = after;
            let mut items = Vec::new();
            for _ in 0..n {
                let (item, len) = parse_resp(&b[at..])?;
                items.push(item);
                at += len;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("unexpected RESP type byte {other}"),
    }
}

// ---------------------------------------------------------- redis cluster

/// The hash tag Roster gives a public channel (`store::redis::wire::tag`):
/// FNV-1a 64 over `0:` + topic, 16 hex digits.
pub fn channel_tag(topic: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"0:".iter().chain(topic.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One `redis-server --cluster-enabled yes` of a [`RedisCluster`].
pub struct ClusterRedis {
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

impl ClusterRedis {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: it stops answering (and replicating).
    pub fn stop(&self) {
        signal(self.child.as_ref().expect("redis is running").id(), "STOP");
    }

    pub fn cont(&self) {
        signal(self.child.as_ref().expect("redis is running").id(), "CONT");
    }

    pub async fn cmd(&self, args: &[&str]) -> Resp {
        tokio::time::timeout(Duration::from_secs(5), resp_command(self.addr(), args))
            .await
            .unwrap_or_else(|_| panic!("redis {} command {args:?} timed out", self.port))
    }

    /// This node's cluster id (`CLUSTER MYID`).
    pub async fn id(&self) -> String {
        match self.cmd(&["CLUSTER", "MYID"]).await {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("CLUSTER MYID on {}: {other:?}", self.port),
        }
    }
}

impl Drop for ClusterRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of 3 masters and 3 replicas on free loopback ports
/// (`--cluster-node-timeout 1000`, no persistence), made with
/// `redis-cli --cluster create`; every node is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<ClusterRedis>,
    pub dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(label: &str) -> RedisCluster {
        require_redis();
        assert!(
            on_path("redis-cli"),
            "the Redis Cluster tests need redis-cli on PATH (apt-get install redis-tools)"
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster-redis")
            .join(format!("{label}-cluster"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut last = String::new();
        for _ in 0..3 {
            match RedisCluster::try_start(label, &dir).await {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("redis cluster would not start: {last}");
    }

    async fn try_start(label: &str, dir: &std::path::Path) -> Result<RedisCluster, String> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            let log = log_dir().join(format!("{label}-redis-{port}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let p = port.to_string();
            let child = Command::new("redis-server")
                .args(["--port", &p, "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "1000"])
                // Replicas sync at once (not after the default 5 s), and
                // one may always take over, however long it was cut off.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("spawn redis-server: {e}"))?;
            nodes.push(ClusterRedis {
                port,
                child: Some(child),
                log,
            });
        }
        for n in &mut nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ping(n.port).await {
                if let Some(Ok(Some(status))) = n.child.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "redis {} exited ({status}):\n{}",
                        n.port,
                        tail(&n.log, 10)
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "redis {} never answered PING:\n{}",
                        n.port,
                        tail(&n.log, 10)
                    ));
                }
                tokio::time::sleep(ms(20)).await;
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let c = RedisCluster {
            nodes,
            dir: dir.to_owned(),
        };
        c.wait_ok(Duration::from_secs(15)).await?;
        // Every replica in sync with its master, so a failover loses
        // only what a real one would (the last writes in flight).
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in &c.nodes {
            loop {
                let info = match n.cmd(&["INFO", "replication"]).await {
                    Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                    _ => String::new(),
                };
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("replica {} never synced: {info}", n.port));
                }
                tokio::time::sleep(ms(50)).await;
            }
        }
        Ok(c)
    }

    /// `--redis-cluster` seeds: every node's URL.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live(&self) -> impl Iterator<Item = &ClusterRedis> {
        self.nodes.iter().filter(|n| n.alive())
    }

    /// Until every live node says `cluster_state:ok` and agrees on the
    /// slot owners (all 16384 slots served by a live master).
    pub async fn wait_ok(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            let mut owners = None;
            for n in self.live() {
                let info = match n.cmd(&["CLUSTER", "INFO"]).await {
                    Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                    _ => String::new(),
                };
                if !info.contains("cluster_state:ok") {
                    ok = false;
                    break;
                }
                let slots = self.slot_owners_seen_by(n).await;
                let covered: usize = slots.iter().map(|(a, b, _)| (b - a + 1) as usize).sum();
                let all_live = slots
                    .iter()
                    .all(|(_, _, port)| self.nodes.iter().any(|m| m.port == *port && m.alive()));
                if covered != 16384 || !all_live {
                    ok = false;
                    break;
                }
                match &owners {
                    None => owners = Some(slots),
                    Some(o) if *o != slots => {
                        ok = false;
                        break;
                    }
                    Some(_) => {}
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("redis cluster not ok after {within:?}"));
            }
            tokio::time::sleep(ms(100)).await;
        }
    }

    /// `(first slot, last slot, master port)` from `CLUSTER SLOTS` on `n`, sorted.
    async fn slot_owners_seen_by(&self, n: &ClusterRedis) -> Vec<(u16, u16, u16)> {
        let mut out = Vec::new();
        if let Resp::Array(Some(ranges)) = n.cmd(&["CLUSTER", "SLOTS"]).await {
            for r in ranges {
                let Resp::Array(Some(parts)) = r else {
                    continue;
                };
                let (Some(Resp::Int(a)), Some(Resp::Int(b)), Some(Resp::Array(Some(m)))) =
                    (parts.first(), parts.get(1), parts.get(2))
                else {
                    continue;
                };
                if let Some(Resp::Int(port)) = m.get(1) {
                    out.push((*a as u16, *b as u16, *port as u16));
                }
            }
        }
        out.sort();
        out
    }

    fn any(&self) -> &ClusterRedis {
        self.live().next().expect("a live redis node")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot(&self, key: &str) -> u16 {
        match self.any().cmd(&["CLUSTER", "KEYSLOT", key]).await {
            Resp::Int(n) => n as u16,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        }
    }

    /// The slot of channel `topic`'s keys.
    pub async fn slot_of_topic(&self, topic: &str) -> u16 {
        self.slot(&format!("rp:{{{}}}:s", channel_tag(topic))).await
    }

    /// Index (in `nodes`) of the master serving `slot`.
    pub async fn master_of(&self, slot: u16) -> usize {
        let owners = self.slot_owners_seen_by(self.any()).await;
        let port = owners
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, p)| *p)
            .unwrap_or_else(|| panic!("no owner of slot {slot}: {owners:?}"));
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// Index of a replica of master `master` (from its `INFO replication`:
    /// `slave0:ip=...,port=P,...`).
    pub async fn replica_of(&self, master: usize) -> usize {
        let info = match self.nodes[master].cmd(&["INFO", "replication"]).await {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("INFO replication: {other:?}"),
        };
        let port: u16 = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("port=")))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no replica of {master}: {info}"));
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// Indexes of the current masters, sorted.
    pub async fn masters(&self) -> Vec<usize> {
        let owners = self.slot_owners_seen_by(self.any()).await;
        let mut out: Vec<usize> = owners
            .iter()
            .filter_map(|(_, _, p)| self.nodes.iter().position(|n| n.port == *p))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Topics `realtime:<prefix>-<i>`, one on each master, in `masters()` order.
    pub async fn topics_on_each_master(&self, prefix: &str) -> Vec<String> {
        let masters = self.masters().await;
        let mut found: Vec<Option<String>> = vec![None; masters.len()];
        for i in 0..10_000 {
            let topic = format!("realtime:{prefix}-{i}");
            let m = self.master_of(self.slot_of_topic(&topic).await).await;
            let at = masters.iter().position(|x| *x == m).unwrap();
            if found[at].is_none() {
                found[at] = Some(topic);
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        found
            .into_iter()
            .map(|t| t.expect("a topic per master"))
            .collect()
    }

    /// Move `slot` to master `to` (index in `nodes`) the way
    /// `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, `MIGRATE`
    /// its keys, then `SETSLOT NODE` everywhere.
    pub async fn move_slot(&self, slot: u16, to: usize) {
        let from = self.master_of(slot).await;
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (src.id().await, dst.id().await);
        let slot_s = slot.to_string();
        let ok = Resp::Simple("OK".into());
        assert_eq!(
            dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &src_id])
                .await,
            ok
        );
        assert_eq!(
            src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &dst_id])
                .await,
            ok
        );
        loop {
            let keys = src
                .cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"])
                .await
                .strings();
            if keys.is_empty() {
                break;
            }
            let port = dst.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let reply = src.cmd(&args).await;
            assert!(
                matches!(&reply, Resp::Simple(s) if s == "OK" || s == "NOKEY"),
                "MIGRATE: {reply:?}"
            );
        }
        // The importing master first, then the migrating one, then the rest.
        let mut order: Vec<&ClusterRedis> = vec![dst, src];
        order.extend(
            self.live()
                .filter(|n| n.port != dst.port && n.port != src.port),
        );
        for n in order {
            let reply = n
                .cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id])
                .await;
            // A replica answers with an error; masters must agree.
            if self
                .masters()
                .await
                .iter()
                .any(|m| self.nodes[*m].port == n.port)
            {
                assert_eq!(reply, ok, "SETSLOT NODE on {}", n.port);
            }
        }
        self.wait_ok(Duration::from_secs(10)).await.unwrap();
        assert_eq!(self.master_of(slot).await, to, "slot {slot} moved");
    }

    /// Kill -9 the master of `slot` and wait until its replica took over
    /// (cluster ok again, every slot on a live master). Returns the index
    /// of the killed node and how long the failover took.
    pub async fn kill_master_of(&mut self, slot: u16) -> (usize, Duration) {
        let victim = self.master_of(slot).await;
        let t0 = Instant::now();
        self.nodes[victim].kill9();
        self.wait_ok(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no failover after killing redis {}: {e}",
                    self.nodes[victim].port
                )
            });
        (victim, t0.elapsed())
    }

    /// The `phx_ref` of every entry stored on any master (all channels),
    /// sorted (as [`Redis::entry_refs`]).
    pub async fn entry_refs(&self) -> Vec<String> {
        let mut refs = Vec::new();
        for m in self.masters().await {
            let n = &self.nodes[m];
            for key in n.cmd(&["KEYS", "rp:{*}:s"]).await.strings() {
                for value in n.cmd(&["HVALS", &key]).await.strings() {
                    refs.push(value.split('\x1f').nth(1).unwrap_or("?").to_owned());
                }
            }
        }
        refs.sort();
        refs
    }
}

/// A Redis Cluster plus `n` nodes `n0`, `n1`, ... on it (`--redis-cluster`).
pub struct ShardedCluster {
    pub nodes: Vec<Node>,
    pub redis: RedisCluster,
}

impl ShardedCluster {
    pub async fn start(label: &str, n: usize) -> ShardedCluster {
        let redis = RedisCluster::start(label).await;
        let seeds = redis.seeds();
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::start_sharded(label, &seeds, &format!("n{i}"), &[]).await);
        }
        ShardedCluster { nodes, redis }
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }
}

/// The last `lines` of each node's log (a failing test's evidence).
fn print_logs(nodes: &[Node], lines: usize) {
    for node in nodes {
        eprintln!(
            "---- last lines of {} ({}):\n{}",
            node.name,
            node.log.display(),
            tail(&node.log, lines)
        );
    }
}

impl Drop for ShardedCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.nodes, 60);
            for r in &self.redis.nodes {
                eprintln!(
                    "---- last lines of redis {} ({}):\n{}",
                    r.port,
                    r.log.display(),
                    tail(&r.log, 8)
                );
            }
        }
    }
}

/// One `roster serve` process in cluster mode.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Node {
    pub async fn start(label: &str, redis_url: &str, name: &str, extra: &[&str]) -> Node {
        Node::start_on(label, &["--redis", redis_url], name, extra).await
    }

    /// A node on a Redis Cluster (`--redis-cluster <seeds>`).
    pub async fn start_sharded(label: &str, seeds: &str, name: &str, extra: &[&str]) -> Node {
        Node::start_on(label, &["--redis-cluster", seeds], name, extra).await
    }

    /// A node whose Redis is given by `redis` (`--redis URL` or
    /// `--redis-cluster SEEDS`).
    pub async fn start_on(label: &str, redis: &[&str], name: &str, extra: &[&str]) -> Node {
        let log = log_dir().join(format!("{label}-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster"));
        for (k, _) in std::env::vars() {
            if k.starts_with("ROSTER_") {
                cmd.env_remove(k);
            }
        }
        let filter =
            std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "info,roster_server=debug".into());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--dev"])
            .args(redis)
            .args(["--node-name", name])
            .args(["--cluster-heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--cluster-lease-ms", &LEASE_MS.to_string()])
            .args(["--cluster-reap-grace-ms", &REAP_GRACE_MS.to_string()])
            .args(["--cluster-settle-ms", &SETTLE_MS.to_string()])
            .args(["--cluster-island-timeout-ms", &ISLAND_MS.to_string()])
            .args(extra)
            .env("ROSTER_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file);
        let mut child = cmd.spawn().expect("spawn roster");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Keep draining stdout: a closed pipe would make the banner's
        // later `println!`s fail.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let first = tokio::time::timeout(Duration::from_secs(20), rx).await;
        let first = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "node {name} did not start ({other:?}, {status:?}); log:\n{}",
                    tail(&log, 30)
                );
            }
        };
        let addr = first
            .strip_prefix("roster listening on http://")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from {name}: {first:?}"));
        Node {
            name: name.into(),
            addr,
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn sigstop(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn sigcont(&self) {
        signal(self.pid(), "CONT");
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Wait for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = wait_child(self.child.as_mut()?, within).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Status of `GET /ready` (0 if no answer within a second).
    pub async fn ready(&self) -> u16 {
        tokio::time::timeout(Duration::from_secs(1), http_get(self.addr, "/ready"))
            .await
            .map(|(status, _)| status)
            .unwrap_or(0)
    }

    /// Poll `/ready` until it answers `status`; the time it took.
    pub async fn wait_ready(&self, status: u16, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let got = self.ready().await;
            if got == status {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= within {
                return Err(format!(
                    "node {} /ready still {got} (wanted {status}) after {within:?}",
                    self.name
                ));
            }
            tokio::time::sleep(ms(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------- proxy

/// A loopback TCP proxy in front of Redis that can be cut and healed.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: connection tasks watching it drop their sockets.
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let gen_tx = generation.clone();
        let is_cut = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if is_cut.load(Ordering::SeqCst) {
                    drop(inbound); // refused, as far as the node can tell
                    continue;
                }
                let mut gen_rx = gen_tx.subscribe();
                gen_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = gen_rx.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Drop every current connection and refuse new ones until `heal`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

// ---------------------------------------------------------------- cluster

/// Redis plus `n` nodes `n0`, `n1`, ...; nodes listed in `proxied` reach
/// Redis through their own [`Proxy`].
pub struct Cluster {
    pub label: String,
    pub nodes: Vec<Node>,
    pub proxies: Vec<Option<Proxy>>,
    pub redis: Redis,
}

impl Cluster {
    pub async fn start(label: &str, n: usize) -> Cluster {
        Cluster::start_proxied(label, n, &[]).await
    }

    pub async fn start_proxied(label: &str, n: usize, proxied: &[usize]) -> Cluster {
        let redis = Redis::start(label).await;
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..n {
            let proxy = if proxied.contains(&i) {
                Some(Proxy::start(redis.addr()).await)
            } else {
                None
            };
            let url = proxy.as_ref().map_or_else(|| redis.url(), Proxy::url);
            nodes.push(Node::start(label, &url, &format!("n{i}"), &[]).await);
            proxies.push(proxy);
        }
        Cluster {
            label: label.into(),
            nodes,
            proxies,
            redis,
        }
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    pub fn proxy(&self, node: usize) -> &Proxy {
        self.proxies[node].as_ref().expect("node is proxied")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.nodes, 40);
            eprintln!(
                "---- last lines of redis ({}):\n{}",
                self.redis.log.display(),
                tail(&self.redis.log, 10)
            );
        }
    }
}

// ---------------------------------------------------------------- peers

/// `(presence key, phx_ref)`.
pub type Pair = (String, String);

#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    State(Vec<Pair>),
    Diff { joins: Vec<Pair>, leaves: Vec<Pair> },
    Broadcast(Value),
    Other(String, Value),
}

#[derive(Debug, Clone)]
pub struct Rec {
    pub at: Instant,
    pub ev: Ev,
}

/// The `(key, ref)` pairs of a presence payload (`{key: {metas: [...]}}`), sorted.
pub fn pairs(v: &Value) -> Vec<Pair> {
    let mut out = Vec::new();
    for (k, e) in v.as_object().into_iter().flatten() {
        for m in e["metas"].as_array().into_iter().flatten() {
            let r = m["phx_ref"].as_str().unwrap_or("<no phx_ref>");
            out.push((k.clone(), r.to_owned()));
        }
    }
    out.sort();
    out
}

/// A view without refs: key → states (sorted), what the oracle predicts.
pub type Norm = BTreeMap<String, Vec<Value>>;

pub fn norm(view: &View) -> Norm {
    view.iter()
        .filter(|(_, metas)| !metas.is_empty())
        .map(|(k, metas)| {
            let mut states: Vec<Value> = metas
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    m.remove("phx_ref");
                    m.remove("phx_ref_prev");
                    Value::Object(m)
                })
                .collect();
            states.sort_by_key(|s| s.to_string());
            (k.clone(), states)
        })
        .collect()
}

pub fn view_pairs(view: &View) -> BTreeSet<Pair> {
    view.iter()
        .flat_map(|(k, metas)| {
            metas.iter().map(move |m| {
                let r = m["phx_ref"].as_str().unwrap_or("<no phx_ref>");
                (k.clone(), r.to_owned())
            })
        })
        .collect()
}

/// One client socket joined to `ROOM` with presence key `key`, recording
/// everything it receives.
pub struct Peer {
    /// The channel it joined (`ROOM` unless [`Peer::join_topic`]).
    pub topic: String,
    pub key: String,
    pub node: usize,
    pub client: Client,
    pub join_ref: String,
    pub log: Vec<Rec>,
    /// What this peer currently tracks (for the oracle).
    pub tracked: Option<Value>,
    /// Still joined to the room (false after `leave`).
    pub in_room: bool,
}

impl Peer {
    /// Connect to `addr` with `vsn`, join `ROOM` with presence key `key`
    /// (broadcast self: false, ack: false) and record the snapshot.
    pub async fn join(addr: SocketAddr, node: usize, key: &str, vsn: u8) -> Peer {
        Peer::join_topic(addr, node, ROOM, key, vsn).await
    }

    /// [`Peer::join`] to channel `topic` (a full topic, `realtime:...`).
    pub async fn join_topic(
        addr: SocketAddr,
        node: usize,
        topic: &str,
        key: &str,
        vsn: u8,
    ) -> Peer {
        let mut client = Client::connect(addr, vsn).await;
        let payload = json!({"config": {"broadcast": {"ack": false, "self": false},
            "presence": {"key": key, "enabled": true},
            "private": false, "postgres_changes": []}});
        let join_ref = client.join_raw(topic, payload).await;
        let reply = client.recv_reply(&join_ref).await;
        assert_eq!(
            reply.payload["status"], "ok",
            "join of {key} on n{node} refused: {:?}",
            reply.raw
        );
        let state = client.recv_event("presence_state").await;
        let mut peer = Peer {
            topic: topic.into(),
            key: key.into(),
            node,
            client,
            join_ref,
            log: Vec::new(),
            tracked: None,
            in_room: true,
        };
        peer.record(state);
        peer.record_stashed();
        peer
    }

    fn who(&self) -> String {
        format!("{}@n{}", self.key, self.node)
    }

    fn record(&mut self, got: Got) {
        let ev = match got.event.as_str() {
            "presence_state" => Ev::State(pairs(&got.payload)),
            "presence_diff" => Ev::Diff {
                joins: pairs(&got.payload["joins"]),
                leaves: pairs(&got.payload["leaves"]),
            },
            "broadcast" => Ev::Broadcast(got.payload),
            other => Ev::Other(other.to_owned(), got.payload),
        };
        self.log.push(Rec {
            at: Instant::now(),
            ev,
        });
    }

    /// Record the frames `Client` passed over (and already applied to the
    /// view) while waiting for a reply, so the log keeps the view's order.
    fn record_stashed(&mut self) {
        let stashed: Vec<Got> = self.client.stashed().cloned().collect();
        self.client.clear_stash();
        for got in stashed {
            self.record(got);
        }
    }

    async fn ok_reply(&mut self, r: &str, what: &str) {
        let reply = self.client.recv_reply(r).await;
        self.record_stashed();
        assert_eq!(
            reply.payload["status"],
            "ok",
            "{what} by {} refused: {:?}",
            self.who(),
            reply.raw
        );
    }

    pub async fn track(&mut self, state: Value) {
        let r = self
            .client
            .push(
                &self.join_ref,
                &self.topic,
                "presence",
                json!({"type": "presence", "event": "track", "payload": state}),
            )
            .await;
        self.ok_reply(&r, "track").await;
        self.tracked = Some(state);
    }

    pub async fn untrack(&mut self) {
        let r = self
            .client
            .push(
                &self.join_ref,
                &self.topic,
                "presence",
                json!({"type": "presence", "event": "untrack"}),
            )
            .await;
        self.ok_reply(&r, "untrack").await;
        self.tracked = None;
    }

    /// `phx_leave` (the socket stays open).
    pub async fn leave(&mut self) {
        let r = self
            .client
            .push(&self.join_ref, &self.topic, "phx_leave", json!({}))
            .await;
        self.ok_reply(&r, "phx_leave").await;
        self.tracked = None;
        self.in_room = false;
    }

    pub async fn broadcast(&mut self, event: &str, payload: Value) {
        self.client
            .push(
                &self.join_ref,
                &self.topic,
                "broadcast",
                json!({"type": "broadcast", "event": event, "payload": payload}),
            )
            .await;
    }

    pub fn view(&self) -> View {
        self.client.view(&self.topic)
    }

    /// This peer's own `phx_ref`, as it sees it.
    pub fn own_ref(&self) -> Option<String> {
        self.view().get(&self.key)?.first()?["phx_ref"]
            .as_str()
            .map(str::to_owned)
    }

    /// Read and record everything arriving for `dur`; panics if the socket
    /// closes (a peer that must keep its socket is not quiet when dropped).
    pub async fn pump(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.client.next_within(left).await {
                Next::Frame(got) => self.record(got),
                Next::Quiet => return,
                Next::Closed(why) => panic!("{}: socket closed while pumping: {why}", self.who()),
            }
        }
    }

    /// Read until `done(self)`; the moment it became true.
    pub async fn wait(
        &mut self,
        within: Duration,
        done: &dyn Fn(&Peer) -> bool,
    ) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return Ok(Instant::now());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: not there after {within:?}", self.who()));
            }
            match self.client.next_within(left).await {
                Next::Frame(got) => self.record(got),
                Next::Quiet => {}
                Next::Closed(why) => return Err(format!("{}: socket closed: {why}", self.who())),
            }
        }
    }

    pub fn mark(&self) -> usize {
        self.log.len()
    }

    pub fn since(&self, mark: usize) -> &[Rec] {
        &self.log[mark..]
    }

    /// The diffs received since `mark`, in order.
    pub fn diffs_since(&self, mark: usize) -> Vec<(Vec<Pair>, Vec<Pair>)> {
        self.log[mark..]
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Diff { joins, leaves } => Some((joins.clone(), leaves.clone())),
                _ => None,
            })
            .collect()
    }

    /// All joins and all leaves since `mark` (sorted, with repetitions);
    /// an error for anything but presence diffs.
    pub fn changes_since(&self, mark: usize) -> Result<(Vec<Pair>, Vec<Pair>), String> {
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for rec in &self.log[mark..] {
            match &rec.ev {
                Ev::Diff {
                    joins: j,
                    leaves: l,
                } => {
                    joins.extend(j.iter().cloned());
                    leaves.extend(l.iter().cloned());
                }
                other => return Err(format!("{}: unexpected {other:?}", self.who())),
            }
        }
        joins.sort();
        leaves.sort();
        Ok((joins, leaves))
    }

    pub fn broadcasts_since(&self, mark: usize) -> Vec<Value> {
        self.log[mark..]
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Broadcast(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// I4: per ref, joins and leaves alternate starting from the snapshot;
    /// no ref in both halves of one diff.
    pub fn check_exactly_once(&self) -> Result<(), String> {
        let mut present: BTreeSet<Pair> = BTreeSet::new();
        for (i, rec) in self.log.iter().enumerate() {
            match &rec.ev {
                Ev::State(s) => present = s.iter().cloned().collect(),
                Ev::Diff { joins, leaves } => {
                    for j in joins {
                        if leaves.contains(j) {
                            return Err(format!(
                                "{}: event #{i}: {j:?} both joins and leaves",
                                self.who()
                            ));
                        }
                        if !present.insert(j.clone()) {
                            return Err(format!(
                                "{}: event #{i}: duplicate join of {j:?}\nlog: {}",
                                self.who(),
                                describe(&self.log)
                            ));
                        }
                    }
                    for l in leaves {
                        if !present.remove(l) {
                            return Err(format!(
                                "{}: event #{i}: leave of absent {l:?}\nlog: {}",
                                self.who(),
                                describe(&self.log)
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

pub fn describe(recs: &[Rec]) -> String {
    let mut out = String::new();
    let t0 = recs.first().map(|r| r.at);
    for r in recs {
        let t = t0.map(|t0| r.at.duration_since(t0)).unwrap_or_default();
        out.push_str(&format!("\n  +{t:?} {:?}", r.ev));
    }
    out
}

/// The oracle: key → tracked states of peers still in the room.
pub fn oracle<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Norm {
    let mut out: Norm = BTreeMap::new();
    for p in peers {
        if let (true, Some(state)) = (p.in_room, &p.tracked) {
            out.entry(p.key.clone()).or_default().push(state.clone());
        }
    }
    for states in out.values_mut() {
        states.sort_by_key(|s| s.to_string());
    }
    out
}

/// Read all `peers` (those in the room) concurrently until each one's view
/// equals `expected`; panics naming every peer that did not get there.
/// Returns, per peer key, the moment its view got there.
pub async fn converge<'a>(
    peers: impl IntoIterator<Item = &'a mut Peer>,
    expected: &Norm,
    within: Duration,
    what: &str,
) -> BTreeMap<String, Instant> {
    let futs = peers.into_iter().filter(|p| p.in_room).map(|p| async move {
        let res = p.wait(within, &|p| norm(&p.view()) == *expected).await;
        let res = res.map_err(|e| {
            format!(
                "{e}\n    view     {:?}\n    expected {:?}\n    log:{}",
                norm(&p.view()),
                expected,
                describe(&p.log)
            )
        });
        (p.key.clone(), res)
    });
    let mut ok = BTreeMap::new();
    let mut failed = Vec::new();
    for (key, res) in join_all(futs).await {
        match res {
            Ok(at) => {
                ok.insert(key, at);
            }
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{what}: {} client(s) did not converge:\n{}",
        failed.len(),
        failed.join("\n")
    );
    ok
}

/// Read all `peers` concurrently for `dur`.
pub async fn pump_all<'a>(peers: impl IntoIterator<Item = &'a mut Peer>, dur: Duration) {
    join_all(peers.into_iter().map(|p| p.pump(dur))).await;
}

/// I5: every two peers' diff sequences agree on their common suffix.
pub fn check_same_order(peers: &[&Peer]) -> Result<(), String> {
    let seqs: Vec<_> = peers.iter().map(|p| (p.who(), p.diffs_since(0))).collect();
    for (i, (wa, a)) in seqs.iter().enumerate() {
        for (wb, b) in &seqs[i + 1..] {
            let n = a.len().min(b.len());
            let (sa, sb) = (&a[a.len() - n..], &b[b.len() - n..]);
            if let Some(k) = (0..n).find(|&k| sa[k] != sb[k]) {
                return Err(format!(
                    "diff order differs between {wa} ({} diffs) and {wb} ({} diffs) at common-suffix \
                     position {k} of {n}:\n  {wa}: {:?}\n  {wb}: {:?}\n  {wa} all: {a:?}\n  {wb} all: {b:?}",
                    a.len(),
                    b.len(),
                    sa[k],
                    sb[k]
                ));
            }
        }
    }
    Ok(())
}

/// Every peer passes I4; panics with all failures.
pub fn assert_exactly_once<'a>(peers: impl IntoIterator<Item = &'a Peer>) {
    let errors: Vec<String> = peers
        .into_iter()
        .filter_map(|p| p.check_exactly_once().err())
        .collect();
    assert!(errors.is_empty(), "I4 violated:\n{}", errors.join("\n"));
}

/// Each peer saw, since its mark, exactly `joins` and `leaves` (each pair
/// once) and nothing else.
pub fn assert_changes<'a>(
    peers: impl IntoIterator<Item = (&'a Peer, usize)>,
    joins: &[Pair],
    leaves: &[Pair],
    what: &str,
) {
    let mut joins = joins.to_vec();
    let mut leaves = leaves.to_vec();
    joins.sort();
    leaves.sort();
    let mut errors = Vec::new();
    for (p, mark) in peers {
        match p.changes_since(mark) {
            Err(e) => errors.push(e),
            Ok((j, l)) if j != joins || l != leaves => errors.push(format!(
                "{}:\n    joins  {j:?}\n    wanted {joins:?}\n    leaves {l:?}\n    wanted {leaves:?}\n    events:{}",
                p.who(),
                describe(p.since(mark))
            )),
            Ok(_) => {}
        }
    }
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}
