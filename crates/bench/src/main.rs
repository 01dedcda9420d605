//! `roster-bench`: many Supabase-protocol clients in one room, each keeping
//! its own view with the presence core's client algorithm, and a check at
//! the end that every view equals the truth.
//!
//! Scenarios: `join` (N clients join and track at once; time to converge),
//! `update` (then re-track at a rate; propagation latency), `broadcast`
//! (every client broadcasts at a rate; each must get every other's messages
//! once and in order), `churn` (a share of clients drop abruptly and rejoin;
//! no ghosts, none missing), `kill` (after the join, one node of a cluster
//! is killed with SIGKILL: how long until no surviving view shows its
//! members, and every survivor must see each of their leaves exactly once).
//!
//! Several generator processes can share a cluster: give each its own
//! `--room` (rooms are `<room>-<k>`), so that each owns its rooms whole
//! and checks them against its own truth.
//!
//! `--protocol pusher` runs the same scenarios over Pusher protocol 7 (for
//! Sockudo and other Pusher-compatible servers): join is a signed
//! `presence-` subscription, and since Pusher has no presence payload
//! updates, `update` and `broadcast` send client events instead (see
//! `sim::pusher`).

mod proc_stats;
mod sim;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use sim::{Phase, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Join,
    Update,
    Broadcast,
    Churn,
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Views {
    Full,
    Compact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Supabase Realtime (Phoenix channels, vsn 1.0.0 / 2.0.0).
    Supabase,
    /// Pusher protocol 7 (Sockudo, Soketi, ...): presence channels and client events.
    Pusher,
}

#[derive(Debug, Parser)]
#[command(
    name = "roster-bench",
    about = "Presence load generator (Supabase protocol, or Pusher protocol 7)"
)]
struct Args {
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "supabase")]
    protocol: Protocol,
    /// WebSocket URL of the server (without query); several nodes: comma-separated, clients spread round-robin.
    /// [default: ws://127.0.0.1:4000/realtime/v1/websocket; pusher: ws://127.0.0.1:6001, `/app/<key>` is appended]
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "sb_publishable_dev")]
    key: String,
    /// Pusher app key.
    #[arg(long, default_value = "app-key")]
    app_key: String,
    /// Pusher app secret, to sign presence subscriptions.
    #[arg(long, default_value = "app-secret")]
    app_secret: String,
    /// Number of clients, all in one room.
    #[arg(long, short = 'n', default_value_t = 1000)]
    clients: usize,
    /// Protocol version: 1 or 2; `mixed` alternates.
    #[arg(long, default_value = "2")]
    vsn: String,
    /// Room name, or the rooms' prefix (`<room>-<k>`) with `--room-size`:
    /// generator processes sharing a cluster each take their own.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Clients per room (the `rooms` layout); default: everyone in one room.
    #[arg(long, default_value_t = 0)]
    room_size: usize,
    /// Re-tracks per second per client (update scenario).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Seconds of updates (update) or of churn (churn).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Share of clients that drop and rejoin (churn).
    #[arg(long, default_value_t = 0.2)]
    churn_share: f64,
    /// PID of the server, for CPU seconds and RSS from /proc; several nodes: comma-separated (summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Local source addresses 127.0.0.1..=127.0.0.K, to pass the ephemeral-port limit.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Give up waiting for convergence after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// `compact`: every client but one in 100 keeps a 16-byte-per-member
    /// view instead of the phx-js one (10,000 full views of 10,000 members
    /// need tens of GB); same checks, see `sim/compact.rs`.
    #[arg(long, value_enum, default_value = "full")]
    views: Views,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Clients offer `permessage-deflate` as browsers do; `mb_on_wire`
    /// then counts the compressed bytes.
    #[arg(long)]
    compression: bool,
    /// PEM file of the CA that signed a `wss://` server's certificate
    /// [default: the webpki roots].
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// After every client has left, wait this many seconds and report the
    /// server's RSS then (memory given back), beside its idle RSS before.
    #[arg(long, default_value_t = 0)]
    after_leave_s: u64,
    /// Kill scenario: the node (index into `--url`) that dies.
    #[arg(long, default_value_t = 0)]
    kill_node: usize,
    /// Kill scenario with several generator processes: once joined, write
    /// `<dir>/ready.<pid>`, then wait for `<dir>/killed` (the kill's time,
    /// ms since the Unix epoch) from whoever kills the node. Without it the
    /// generator kills `--server-pid`'s `--kill-node`th itself.
    #[arg(long)]
    sync_dir: Option<std::path::PathBuf>,
    /// Kill scenario: once every surviving view is exact, wait this long
    /// for late (duplicate) leaves before the final check.
    #[arg(long, default_value_t = 3)]
    after_kill_s: u64,
    /// Put every connect + join latency in the result (`join.latencies_ms`,
    /// one list per node), to merge several generator processes.
    #[arg(long)]
    raw_latencies: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let n = args.clients;
    let pusher = args.protocol == Protocol::Pusher;
    let kill = args.scenario == Scenario::Kill;
    if kill && pusher {
        anyhow::bail!("the kill scenario speaks the Supabase protocol only");
    }
    let url = args.url.clone().unwrap_or_else(|| {
        if pusher {
            "ws://127.0.0.1:6001".to_owned()
        } else {
            "ws://127.0.0.1:4000/realtime/v1/websocket".to_owned()
        }
    });
    let shared = Arc::new(
        Shared::new(
            &url,
            &args.key,
            &args.room,
            n,
            &args.vsn,
            args.sources,
            args.rate,
            pusher.then(|| (args.app_key.clone(), args.app_secret.clone())),
        )?
        .with_room_size(args.room_size)
        .with_compact_views(args.views == Views::Compact)
        .with_compression(args.compression)
        .with_kill_node(kill.then_some(args.kill_node))
        .with_tls(sim::socket::tls_connector(args.ca_file.as_deref())?),
    );
    if kill && (args.kill_node >= shared.nodes() || shared.nodes() < 2) {
        anyhow::bail!("--kill-node must name one of two or more --url nodes");
    }
    let generator = proc_stats::Process::new(vec![std::process::id()]);
    let gen_before = generator.sample();
    let server =
        (!args.server_pid.is_empty()).then(|| proc_stats::Process::new(args.server_pid.clone()));
    let before = server.as_ref().and_then(|p| p.sample());

    // Join phase: everyone at once (bounded connect concurrency).
    let start = Instant::now();
    let start_unix_ms = sim::unix_us() / 1000;
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let shared = shared.clone();
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            if pusher {
                sim::pusher::run(shared, i, sem).await
            } else {
                sim::run(shared, i, sem).await
            }
        }));
    }
    let deadline = start + Duration::from_secs(args.timeout);
    let converged_at = wait_for(
        &shared,
        deadline,
        |s| s.converged.load(Ordering::Relaxed) == n,
        "converged",
    )
    .await;
    let join_secs = start.elapsed().as_secs_f64();
    let converged_unix_ms = sim::unix_us() / 1000;
    let after_join = server.as_ref().and_then(|p| p.sample());
    let gen_after_join = generator.sample();
    let join_frames = shared.frames.load(Ordering::Relaxed);
    let join_bytes = shared.bytes.load(Ordering::Relaxed);
    let join_wire_bytes = shared.wire_bytes.load(Ordering::Relaxed);
    let latencies = shared.join_latencies();

    let mut result = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "clients": n,
        "vsn": if pusher { "7" } else { args.vsn.as_str() },
        "views": format!("{:?}", args.views).to_lowercase(),
        "compression": args.compression,
        "tls": url.starts_with("wss://"),
        "join": {
            "converged": converged_at.is_some(),
            "converge_s": round(join_secs, 3),
            "connect_join_p50_ms": round(percentile(&latencies, 0.50), 2),
            "connect_join_p99_ms": round(percentile(&latencies, 0.99), 2),
            "frames_received": join_frames,
            "bytes_received": join_bytes,
            "bytes_on_wire": join_wire_bytes,
            "connect_errors": shared.errors.load(Ordering::Relaxed),
            "joined": shared.joined.load(Ordering::Relaxed),
            "started_unix_ms": start_unix_ms,
            "converged_unix_ms": converged_at.map(|_| converged_unix_ms),
        },
    });
    if let (Some(b), Some(a)) = (&gen_before, &gen_after_join) {
        result["join"]["generator_cpu_s"] = json!(round(a.cpu_s - b.cpu_s, 3));
    }
    // Per node: its clients' connect + join (all of them with --raw-latencies).
    let per_node: Vec<_> = (0..shared.nodes())
        .map(|node| {
            let lat = shared.join_latencies_of(Some(node));
            let mut d = json!({
                "joined": lat.len(),
                "connect_join_p50_ms": round(percentile(&lat, 0.50), 2),
                "connect_join_p99_ms": round(percentile(&lat, 0.99), 2),
                "connect_join_max_ms": round(percentile(&lat, 1.0), 2),
            });
            if args.raw_latencies {
                d["latencies_ms"] = json!(lat.iter().map(|v| round(*v, 1)).collect::<Vec<_>>());
            }
            d
        })
        .collect();
    if shared.nodes() > 1 {
        result["join"]["by_node"] = json!(per_node);
    }
    if let (Some(b), Some(a)) = (&before, &after_join) {
        let cpu = a.cpu_s - b.cpu_s;
        result["join"]["server_cpu_s"] = json!(round(cpu, 3));
        result["join"]["server_cpu_us_per_frame"] =
            json!(round(cpu * 1e6 / join_frames.max(1) as f64, 3));
        result["join"]["server_rss_mb"] = json!(round(a.rss_kb as f64 / 1024.0, 1));
        result["join"]["server_peak_rss_mb"] = json!(round(a.hwm_kb as f64 / 1024.0, 1));
    }

    let phase_start_frames = shared.frames.load(Ordering::Relaxed);
    let phase_start_bytes = shared.bytes.load(Ordering::Relaxed);
    let phase_start_wire = shared.wire_bytes.load(Ordering::Relaxed);
    let phase_sample = server.as_ref().and_then(|p| p.sample());
    let gen_phase_sample = generator.sample();
    let phase_start = Instant::now();
    // Who should be there at the end: everyone, or the kill's survivors.
    let mut expected = n;
    match args.scenario {
        Scenario::Join => {}
        Scenario::Kill => {
            expected = n - (0..n).filter(|&k| shared.on_kill_node(k)).count();
            result["kill"] = run_kill(&shared, &args, expected).await?;
        }
        Scenario::Update => {
            shared.set_phase(Phase::Update);
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
        Scenario::Broadcast => {
            shared.set_phase(Phase::Broadcast);
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
        Scenario::Churn => {
            shared.set_phase(Phase::Churn(args.churn_share));
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
    }
    if !matches!(args.scenario, Scenario::Join | Scenario::Kill) {
        // Stop changing, then wait until every view shows every client's last state.
        shared.set_phase(Phase::Settle);
        let settle_deadline = Instant::now() + Duration::from_secs(args.timeout);
        wait_for(
            &shared,
            settle_deadline,
            |s| s.settled.load(Ordering::Relaxed) == n,
            "settled",
        )
        .await;
        let secs = phase_start.elapsed().as_secs_f64();
        let frames = shared.frames.load(Ordering::Relaxed) - phase_start_frames;
        let bytes = shared.bytes.load(Ordering::Relaxed) - phase_start_bytes;
        let wire_bytes = shared.wire_bytes.load(Ordering::Relaxed) - phase_start_wire;
        let lat = shared.update_latencies();
        let mut phase = json!({
            "seconds": round(secs, 2),
            "frames_received": frames,
            "bytes_received": bytes,
            "bytes_on_wire": wire_bytes,
            "frames_per_s": round(frames as f64 / secs, 0),
            "propagation_p50_ms": round(percentile(&lat, 0.50), 2),
            "propagation_p99_ms": round(percentile(&lat, 0.99), 2),
            "propagation_max_ms": round(percentile(&lat, 1.0), 2),
            "settled": shared.settled.load(Ordering::Relaxed) == n,
            "broadcast_errors": shared.broadcast_errors.load(Ordering::Relaxed),
            "rejoins": shared.rejoins.load(Ordering::Relaxed),
        });
        if pusher && matches!(args.scenario, Scenario::Update | Scenario::Broadcast) {
            phase["measures"] = json!("Pusher client events ({i, seq, t}) to every other member: Pusher has no presence payload updates");
        }
        if let (Some(b), Some(a)) = (&phase_sample, server.as_ref().and_then(|p| p.sample())) {
            let cpu = a.cpu_s - b.cpu_s;
            phase["server_cpu_s"] = json!(round(cpu, 3));
            phase["server_cpu_us_per_frame"] = json!(round(cpu * 1e6 / frames.max(1) as f64, 3));
            phase["server_peak_rss_mb"] = json!(round(a.hwm_kb as f64 / 1024.0, 1));
        }
        if let (Some(b), Some(a)) = (&gen_phase_sample, generator.sample()) {
            phase["generator_cpu_s"] = json!(round(a.cpu_s - b.cpu_s, 3));
        }
        result[format!("{:?}", args.scenario).to_lowercase()] = phase;
    }

    // Final exactness check: every view equals the truth.
    shared.set_phase(Phase::Verify);
    let verify_deadline = Instant::now() + Duration::from_secs(10);
    wait_for(
        &shared,
        verify_deadline,
        |s| s.verified.load(Ordering::Relaxed) == expected,
        "verified",
    )
    .await;
    if kill {
        // The end of the measured part; the clients' goodbyes follow.
        result["kill"]["verified_unix_ms"] = json!(sim::unix_us() / 1000);
    }
    shared.set_phase(Phase::Stop);
    let mut exact = 0;
    let mut ghosts = 0;
    let mut missing = 0;
    let (mut duplicate, mut spurious, mut missed, mut gone) = (0, 0, 0, 0);
    for h in handles {
        if let Ok(report) = h.await {
            if report.gone {
                gone += 1;
                continue;
            }
            if report.exact {
                exact += 1;
            }
            ghosts += report.ghosts;
            missing += report.missing;
            duplicate += report.duplicate_leaves;
            spurious += report.spurious_leaves;
            missed += report.missed_leaves;
        }
    }
    if kill {
        let k = &mut result["kill"];
        k["gone"] = json!(gone);
        k["duplicate_leaves"] = json!(duplicate);
        k["spurious_leaves"] = json!(spurious);
        k["missed_leaves"] = json!(missed);
    }
    if let (Some(p), Some(b), true) = (&server, &before, args.after_leave_s > 0) {
        tokio::time::sleep(Duration::from_secs(args.after_leave_s)).await;
        if let Some(a) = p.sample() {
            result["server_idle_rss_mb"] = json!(round(b.rss_kb as f64 / 1024.0, 1));
            result["server_rss_after_leave_mb"] = json!(round(a.rss_kb as f64 / 1024.0, 1));
        }
    }
    result["exact_views"] = json!(exact);
    result["ghosts"] = json!(ghosts);
    result["missing"] = json!(missing);
    // A dropped client counts all `n` members as missing.
    result["dropped_connections"] = json!(shared.dropped.load(Ordering::Relaxed));
    let all_exact = exact == expected
        && gone == n - expected
        && shared.broadcast_errors.load(Ordering::Relaxed) == 0;
    result["all_exact"] = json!(all_exact);
    result["tracks_sent"] = json!(shared.tracks.load(Ordering::Relaxed));
    if pusher {
        // A `member_added` before the subscriber's own snapshot is overwritten by
        // it (pusher-js semantics); if the snapshot lacks that member, it is lost.
        result["member_added_before_subscribed"] =
            json!(shared.early_events.load(Ordering::Relaxed));
    }
    eprintln!();
    println!("{result}");
    if !all_exact {
        std::process::exit(1);
    }
    Ok(())
}

/// The kill scenario after the join: the node dies (killed here, or by
/// whoever `--sync-dir` waits for), then every surviving view must lose its
/// members, each leave seen once. Returns what it measured.
async fn run_kill(
    shared: &Shared,
    args: &Args,
    survivors: usize,
) -> anyhow::Result<serde_json::Value> {
    // Count leaves from now on; the dead node's clients may lose their sockets.
    shared.set_phase(Phase::Ghost);
    let killed_unix_us = match &args.sync_dir {
        Some(dir) => {
            std::fs::write(dir.join(format!("ready.{}", std::process::id())), "")?;
            let file = dir.join("killed");
            let deadline = Instant::now() + Duration::from_secs(args.timeout);
            loop {
                if let Ok(ms) = std::fs::read_to_string(&file) {
                    if let Ok(ms) = ms.trim().parse::<u64>() {
                        break ms * 1000;
                    }
                }
                if Instant::now() > deadline {
                    anyhow::bail!("nobody wrote {} within --timeout", file.display());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        None => {
            let Some(pid) = args.server_pid.get(args.kill_node) else {
                anyhow::bail!("the kill scenario needs --server-pid of every node, or --sync-dir");
            };
            let at = sim::unix_us();
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()?;
            at
        }
    };
    shared.kill(killed_unix_us);
    // Announce it: views of rooms without dead members are clean at once.
    shared.set_phase(Phase::Ghost);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let all_clean = wait_for(
        shared,
        deadline,
        |s| s.clean.load(Ordering::Relaxed) == survivors,
        "clean",
    )
    .await
    .is_some();
    let clean = shared.clean_latencies();
    tokio::time::sleep(Duration::from_secs(args.after_kill_s)).await;
    let mut result = json!({
        "node": args.kill_node,
        "killed_unix_ms": killed_unix_us / 1000,
        "survivors": survivors,
        "all_clean": all_clean,
        "clean": clean.len(),
        "clean_p50_ms": round(percentile(&clean, 0.50), 1),
        "clean_p99_ms": round(percentile(&clean, 0.99), 1),
        "clean_max_ms": round(percentile(&clean, 1.0), 1),
    });
    if args.raw_latencies {
        result["clean_ms"] = json!(clean.iter().map(|v| round(*v, 1)).collect::<Vec<_>>());
    }
    Ok(result)
}

/// Print progress every second until `done` or the deadline; returns when it finished.
async fn wait_for(
    shared: &Shared,
    deadline: Instant,
    done: impl Fn(&Shared) -> bool,
    what: &str,
) -> Option<Instant> {
    let mut last_print = Instant::now();
    loop {
        if done(shared) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            eprintln!("\ngave up waiting: not all {what}");
            return None;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprint!(
                "\rconnected {} joined {} converged {} clean {} gone {} settled {} verified {} frames {}   ",
                shared.connected.load(Ordering::Relaxed),
                shared.joined.load(Ordering::Relaxed),
                shared.converged.load(Ordering::Relaxed),
                shared.clean.load(Ordering::Relaxed),
                shared.gone.load(Ordering::Relaxed),
                shared.settled.load(Ordering::Relaxed),
                shared.verified.load(Ordering::Relaxed),
                shared.frames.load(Ordering::Relaxed),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}
