//! Configuration: clap flags, each with a `ROSTER_*` env var, over an
//! optional TOML file, over defaults. Each setting is declared once, in
//! `settings!` below, so its flag, env var, TOML key, `--help` line,
//! default and README row cannot drift apart.

#[macro_use]
mod declare;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "roster",
    version,
    about = "A Supabase-compatible Realtime Presence server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

// To add a setting: add its entry here (doc, type, default, env var; the
// forms are in `declare.rs`), read it from `Merged` in `resolve`, and add
// its row to README.md's table; a test fails until the row agrees.
settings! {
    /// TOML file with any of the settings below (snake_case names).
    config: PathBuf, env "ROSTER_CONFIG", unset "none", [serde(skip)];

    /// Address to listen on, host:port (port 0 picks a free one).
    listen: String = "127.0.0.1:4000".into(), env "ROSTER_LISTEN";

    /// PEM certificate chain: serve HTTPS and wss:// on the listener (with `tls_key`). Reloaded on SIGHUP and when the file changes. Unset = plain HTTP.
    tls_cert: PathBuf, env "ROSTER_TLS_CERT", unset "none";

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    tls_key: PathBuf, env "ROSTER_TLS_KEY", unset "none";

    /// Publishable key (role anon); generated at start when unset.
    publishable_key: String, env "ROSTER_PUBLISHABLE_KEY", unset "generated",
        [arg(hide_env_values = true)];

    /// Secret key (role service_role); generated at start when unset.
    secret_key: String, env "ROSTER_SECRET_KEY", unset "generated",
        [arg(hide_env_values = true)];

    /// HS256/384/512 secret for JWTs; generated at start when unset.
    jwt_secret: String, env "ROSTER_JWT_SECRET", unset "generated",
        [arg(hide_env_values = true)];

    /// JWKS file (JSON) with public keys for RS256/ES256/EdDSA tokens, chosen by `kid`.
    jwks_file: PathBuf, env "ROSTER_JWKS_FILE", unset "none";

    /// Require this `iss` claim in JWTs.
    jwt_issuer: String, env "ROSTER_JWT_ISSUER", unset "none";

    /// Require this `aud` claim in JWTs.
    jwt_audience: String, env "ROSTER_JWT_AUDIENCE", unset "none";

    /// Log filter, e.g. `info` or `roster_server=debug`.
    log: String = "info".into(), env "ROSTER_LOG";

    /// Log format.
    log_format: LogFormat = LogFormat::Text, env "ROSTER_LOG_FORMAT";

    /// Close a socket after this long without any inbound frame.
    idle_timeout_ms: u64 = 60_000, env "ROSTER_IDLE_TIMEOUT_MS";

    /// Time a client has to send its HTTP request headers.
    handshake_timeout_ms: u64 = 10_000, env "ROSTER_HANDSHAKE_TIMEOUT_MS";

    /// Keep a dropped socket's presences this long; a rejoin tracking the same state takes them over with no leave or join (0 = off, as Supabase).
    presence_grace_ms: u64 = 0, env "ROSTER_PRESENCE_GRACE_MS";

    /// Coalesce each channel's presence diffs over this many ms into one net diff per window (large rooms); 0 = send each at once, as Supabase.
    presence_coalesce_ms: u64 = 0, env "ROSTER_PRESENCE_COALESCE_MS";

    /// A joiner's snapshot larger than this many bytes goes out as a `presence_state` and `presence_diff`s, each at most this large, so that every client can take it (realtime-py refuses frames over 1 MiB; at least 1024).
    presence_frame_bytes: usize = 512 * 1024, env "ROSTER_PRESENCE_FRAME_BYTES";

    /// WebSocket compression (`permessage-deflate`, negotiated with clients that offer it): messages of at least this many bytes are compressed, once for all their recipients; 0 = off.
    compression_min_bytes: usize = 1024, env "ROSTER_COMPRESSION_MIN_BYTES";

    /// Frames queued per socket before it is dropped as too slow (at least 16).
    outbound_queue: usize = 8192, env "ROSTER_OUTBOUND_QUEUE";

    /// Coalesce a busy socket's frames into one write per this many ms; 0 = write at once.
    write_coalesce_ms: u64 = 10, env "ROSTER_WRITE_COALESCE_MS";

    /// Drop a socket whose pending writes make no progress for this long.
    write_timeout_ms: u64 = 10_000, env "ROSTER_WRITE_TIMEOUT_MS";

    /// Largest inbound WebSocket message in bytes; a larger one closes that socket (1009).
    max_message_bytes: usize = 512 * 1024, env "ROSTER_MAX_MESSAGE_BYTES";

    /// Longest topic, `realtime:` included, in bytes (binary broadcast frames carry it with a one-byte length).
    max_topic_bytes: usize = 255, env "ROSTER_MAX_TOPIC_BYTES";

    /// Longest presence key (`config.presence.key`) in bytes.
    max_presence_key_bytes: usize = 256, env "ROSTER_MAX_PRESENCE_KEY_BYTES";

    /// Longest broadcast event name in bytes (binary frames carry it with a one-byte length).
    max_event_bytes: usize = 255, env "ROSTER_MAX_EVENT_BYTES";

    /// Largest broadcast payload in bytes, WebSocket or REST; kept well under realtime-py's 1 MiB message limit.
    max_broadcast_bytes: usize = 256 * 1024, env "ROSTER_MAX_BROADCAST_BYTES";

    /// Inbound frames (of any kind) one socket may send per second; more closes it (1008); 0 = no cap.
    max_frames_per_second: u32 = 1000, env "ROSTER_MAX_FRAMES_PER_SECOND";

    /// Bytes queued for one socket (frames waiting plus those being written) before it is dropped as too slow (at least 65536).
    outbound_buffer_bytes: usize = 4 << 20, env "ROSTER_OUTBOUND_BUFFER_BYTES";

    /// Broadcasts one channel takes per second from all senders together (WebSocket and REST; a burst of one second's worth); over it senders are refused; 0 = no cap.
    channel_broadcasts_per_second: u32 = 1000, env "ROSTER_CHANNEL_BROADCASTS_PER_SECOND";

    /// Broadcast payload bytes one channel takes per second from all senders together (a burst of one second's worth); 0 = no cap.
    channel_broadcast_bytes_per_second: u64 = 2 << 20,
        env "ROSTER_CHANNEL_BROADCAST_BYTES_PER_SECOND";

    /// Broadcasts per second from one client IP address, all its sockets and REST calls together; 0 = no cap.
    max_broadcasts_per_second_per_ip: u32 = 2000, env "ROSTER_MAX_BROADCASTS_PER_SECOND_PER_IP";

    /// Presence calls (track, untrack) per second from one client IP address, all its sockets together; 0 = no cap.
    max_presence_calls_per_second_per_ip: u32 = 1000,
        env "ROSTER_MAX_PRESENCE_CALLS_PER_SECOND_PER_IP";

    /// Largest REST request body in bytes.
    max_rest_body_bytes: usize = 1 << 20, env "ROSTER_MAX_REST_BODY_BYTES";

    /// Most messages in one REST broadcast call.
    max_rest_messages: usize = 100, env "ROSTER_MAX_REST_MESSAGES";

    /// Channels one socket may join at once (as Supabase).
    max_channels_per_socket: usize = 100, env "ROSTER_MAX_CHANNELS_PER_SOCKET";

    /// Largest tracked presence state, in bytes of JSON.
    max_track_bytes: usize = 32 * 1024, env "ROSTER_MAX_TRACK_BYTES";

    /// Total presence state one channel may hold, counted as it weighs in a `presence_state` (states, keys and refs): a bound on the room's memory (snapshots over the frame limit are split); the default holds about 35,000 members of 100-byte states.
    max_state_bytes_per_channel: usize = 8 * 1024 * 1024, env "ROSTER_MAX_STATE_BYTES_PER_CHANNEL";

    /// Presence calls (track, untrack) allowed per channel per window.
    presence_calls_per_window: u32 = 100, env "ROSTER_PRESENCE_CALLS_PER_WINDOW";

    /// The window of `presence_calls_per_window`.
    presence_window_ms: u64 = 10_000, env "ROSTER_PRESENCE_WINDOW_MS";

    /// Channel joins per second on this node, all sockets together; 0 = no cap.
    max_joins_per_second: u32 = 0, env "ROSTER_MAX_JOINS_PER_SECOND";

    /// Presence calls (track, untrack) per second on this node, all channels together; 0 = no cap.
    max_presence_events_per_second: u32 = 0, env "ROSTER_MAX_PRESENCE_EVENTS_PER_SECOND";

    /// Broadcasts one socket may send per second; 0 = no cap.
    max_events_per_second_per_socket: u32 = 200, env "ROSTER_MAX_EVENTS_PER_SECOND_PER_SOCKET";

    /// Members one channel may hold; 0 = no cap.
    max_members_per_channel: usize = 0, env "ROSTER_MAX_MEMBERS_PER_CHANNEL";

    /// Open connections in all; 0 = no cap.
    max_connections: usize = 0, env "ROSTER_MAX_CONNECTIONS";

    /// Open connections per client IP address; 0 = no cap.
    max_connections_per_ip: usize = 0, env "ROSTER_MAX_CONNECTIONS_PER_IP";

    /// Redis URL (`redis://host:port`): nodes sharing it share presence and broadcasts. Unset = one node, no Redis.
    redis: String, env "ROSTER_REDIS", unset "none";

    /// Redis Cluster seed nodes, comma-separated (`redis://host:port,redis://host:port`): nodes sharing the cluster share presence and broadcasts, each channel on its slot's shard. Not with `--redis`.
    redis_cluster: String, env "ROSTER_REDIS_CLUSTER", unset "none";

    /// This node's name in a cluster (letters, digits, `-`, `_`, `.`).
    node_name: String = "roster".into(), env "ROSTER_NODE_NAME";

    /// How often a node renews its lease in Redis.
    cluster_heartbeat_ms: u64 = 1000, env "ROSTER_CLUSTER_HEARTBEAT_MS";

    /// A node silent this long is dead: its presences leave.
    cluster_lease_ms: u64 = 6000, env "ROSTER_CLUSTER_LEASE_MS";

    /// Extra wait past an expired lease before reaping.
    cluster_reap_grace_ms: u64 = 1000, env "ROSTER_CLUSTER_REAP_GRACE_MS";

    /// After Redis comes back, wait this long for every node to re-assert its presences before reporting leaves.
    cluster_settle_ms: u64 = 2000, env "ROSTER_CLUSTER_SETTLE_MS";

    /// A node cut off from Redis this long closes its sockets so clients move to healthy nodes.
    cluster_island_timeout_ms: u64 = 60_000, env "ROSTER_CLUSTER_ISLAND_TIMEOUT_MS";

    /// Every this long, compare each replicated channel's `(epoch, seq)` with Redis and resync on a mismatch (a lost message); 0 = never.
    cluster_audit_ms: u64 = 30_000, env "ROSTER_CLUSTER_AUDIT_MS";

    /// Presence webhooks: POST member_join / member_leave events here
    /// (`https://` or `http://`), batched and signed. Unset = no webhooks.
    webhook_url: String, env "ROSTER_WEBHOOK_URL", unset "none";

    /// PEM file of CA certificates that https webhook receivers are verified against, instead of the built-in (webpki) roots.
    webhook_ca_file: PathBuf, env "ROSTER_WEBHOOK_CA_FILE", unset "none";

    /// Key of the HMAC-SHA256 signature of each webhook request; required with `webhook_url`.
    webhook_secret: String, env "ROSTER_WEBHOOK_SECRET", unset "none",
        [arg(hide_env_values = true)];

    /// Collect webhook events this long before a POST (or until `webhook_max_batch`).
    webhook_batch_ms: u64 = 100, env "ROSTER_WEBHOOK_BATCH_MS";

    /// Most events in one webhook POST (at least 1).
    webhook_max_batch: usize = 100, env "ROSTER_WEBHOOK_MAX_BATCH";

    /// Webhook events held while the receiver is slow or down; beyond that, new events are dropped and counted (at least 1).
    webhook_queue: usize = 10_000, env "ROSTER_WEBHOOK_QUEUE";

    /// Give up on a webhook batch still failing this long after its first attempt.
    webhook_max_retry_ms: u64 = 600_000, env "ROSTER_WEBHOOK_MAX_RETRY_MS";

    /// Refuse joins of public channels (`PrivateOnly: …`).
    private_only: bool, env "ROSTER_PRIVATE_ONLY", switch;

    /// Authorization policies for private channels (config file only).
    policies: Vec<Policy>, file_only;

    /// How a member's state change reaches the others when its join does not say (`config.presence.updates`): `classic` = a join under a new ref plus a leave, as Supabase; `replace` = a join under the same ref and no leave.
    presence_updates: UpdatesSetting = UpdatesSetting::Classic, env "ROSTER_PRESENCE_UPDATES";

    /// Last seen: most presence keys this node remembers the leaving time of (the oldest are forgotten first); 0 = off.
    last_seen_keys: usize = 100_000, env "ROSTER_LAST_SEEN_KEYS";

    /// Last seen: forget a key's leaving time after this long (a day).
    last_seen_max_age_ms: u64 = 86_400_000, env "ROSTER_LAST_SEEN_MAX_AGE_MS";

    /// Development mode: fixed, publicly known keys (`sb_publishable_dev`,
    /// `sb_secret_dev`, and a fixed JWT secret) for any key not given
    /// explicitly. Never use it on a reachable address.
    dev: bool, env "ROSTER_DEV", switch, [serde(skip)];
}

/// `--presence-updates`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdatesSetting {
    #[default]
    Classic,
    Replace,
}

/// As clap spells it, for `--help`'s `[default: …]`.
impl std::fmt::Display for UpdatesSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        show_value_enum(self, f)
    }
}

fn show_value_enum(v: &impl ValueEnum, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match v.to_possible_value() {
        Some(p) => f.write_str(p.get_name()),
        None => Ok(()),
    }
}

impl From<UpdatesSetting> for roster_presence::Updates {
    fn from(s: UpdatesSetting) -> Self {
        match s {
            UpdatesSetting::Classic => roster_presence::Updates::Classic,
            UpdatesSetting::Replace => roster_presence::Updates::Replace,
        }
    }
}

/// Quiet updates and last seen.
#[derive(Debug, Clone)]
pub struct PresenceFeatures {
    /// For joins without `config.presence.updates`.
    pub updates: roster_presence::Updates,
    /// Most keys whose leaving time this node remembers; 0 = off.
    pub last_seen_keys: usize,
    /// How long a leaving time is remembered.
    pub last_seen_max_age: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        show_value_enum(self, f)
    }
}

/// The credentials the server accepts.
#[derive(Clone)]
pub struct Keys {
    pub publishable: String,
    pub secret: String,
    pub jwt_secret: String,
}

/// The publishable key is public; the other two never reach a log.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("publishable", &self.publishable)
            .field("secret", &"[redacted]")
            .field("jwt_secret", &"[redacted]")
            .finish()
    }
}

/// Where the keys came from, so the banner can say what to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Generated,
    Dev,
}

/// Limits that protect the server and the official clients. 0 = no cap
/// where noted.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_channels_per_socket: usize,
    pub max_track_bytes: usize,
    pub max_state_bytes_per_channel: usize,
    pub presence_calls_per_window: u32,
    pub presence_window: Duration,
    pub max_members_per_channel: usize,
    pub max_joins_per_second: u32,
    pub max_presence_events_per_second: u32,
    pub max_events_per_second_per_socket: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Byte budgets of client input, checked before anything is kept.
    pub max_topic_bytes: usize,
    pub max_presence_key_bytes: usize,
    pub max_event_bytes: usize,
    pub max_broadcast_bytes: usize,
    pub max_frames_per_second: u32,
    /// A channel's broadcast budget, all senders together (0 = no cap).
    pub channel_broadcasts_per_second: u32,
    pub channel_broadcast_bytes_per_second: u64,
    /// Per client IP, all its sockets and calls together (0 = no cap).
    pub max_broadcasts_per_second_per_ip: u32,
    pub max_presence_calls_per_second_per_ip: u32,
    pub max_rest_body_bytes: usize,
    pub max_rest_messages: usize,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    /// Serve TLS on the listener; `None` = plain HTTP.
    pub tls: Option<TlsSettings>,
    pub keys: Keys,
    pub key_source: KeySource,
    pub jwt: JwtOptions,
    pub log: String,
    pub log_format: LogFormat,
    pub idle_timeout: Duration,
    pub presence_grace: Duration,
    /// Window over which a channel's diffs are coalesced; zero = off.
    pub presence_coalesce: Duration,
    /// The most one snapshot frame may weigh; larger ones are split.
    pub presence_frame_bytes: usize,
    pub handshake_timeout: Duration,
    pub outbound_queue: usize,
    /// Bytes queued or being written for one socket before it is dropped.
    pub outbound_buffer_bytes: usize,
    pub write_timeout: Duration,
    pub write_coalesce: Duration,
    /// `permessage-deflate` for the sockets that offer it; `None` = off.
    pub compression: Option<Compression>,
    pub max_message_bytes: usize,
    pub limits: Limits,
    pub private_only: bool,
    pub policies: Vec<Policy>,
    /// Several nodes on Redis; `None` = a single node.
    pub cluster: Option<ClusterSettings>,
    /// Presence webhooks; `None` = off.
    pub webhooks: Option<WebhookSettings>,
    /// Which keys were not given and so are dev mode's or random: the
    /// banner shows only these, never a key the operator configured.
    pub defaulted_keys: DefaultedKeys,
    pub presence_features: PresenceFeatures,
}

/// Per key: `true` when it was not given (flag, env or file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultedKeys {
    pub publishable: bool,
    pub secret: bool,
    pub jwt_secret: bool,
}

/// The listener's certificate pair (see `tls`).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Presence webhooks' settings (see `webhooks`).
#[derive(Clone)]
pub struct WebhookSettings {
    /// An `http://` or `https://` URL (checked at startup).
    pub url: String,
    /// CA certificates for an https receiver; `None` = webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The HMAC-SHA256 key; never logged.
    pub secret: String,
    /// How long a batch collects events before it is sent.
    pub batch: Duration,
    /// Most events in one POST (at least 1).
    pub max_batch: usize,
    /// Events queued before new ones are dropped (at least 1).
    pub queue: usize,
    /// A batch still failing this long after its first attempt is given up.
    pub max_retry: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("secret", &"<redacted>")
            .field("batch", &self.batch)
            .field("max_batch", &self.max_batch)
            .field("queue", &self.queue)
            .field("max_retry", &self.max_retry)
            .finish()
    }
}

/// Where the nodes of a cluster meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis (`--redis`).
    One(String),
    /// A Redis Cluster, by its seed nodes (`--redis-cluster`).
    Cluster(Vec<String>),
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::One(url) => f.write_str(url),
            RedisTarget::Cluster(seeds) => write!(f, "cluster {}", seeds.join(",")),
        }
    }
}

/// The Redis backplane's settings (see `store/redis/`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis: RedisTarget,
    pub node_name: String,
    pub heartbeat: Duration,
    pub lease: Duration,
    pub reap_grace: Duration,
    pub settle: Duration,
    pub island_timeout: Duration,
    pub audit: Duration,
}

/// zlib's fastest level: presence JSON is repetitive enough that level 1
/// already takes most of the gain (see BENCHMARKS.md, compression).
const COMPRESSION_LEVEL: u32 = 1;

pub const DEV_PUBLISHABLE_KEY: &str = "sb_publishable_dev";
pub const DEV_SECRET_KEY: &str = "sb_secret_dev";
pub const DEV_JWT_SECRET: &str = "roster-dev-jwt-secret-do-not-use-in-production";

impl ServeArgs {
    /// Flags and env win over the file, the file over defaults.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| anyhow::anyhow!("in {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let m = self.merged(file);
        let (publishable, secret, jwt_secret) = (m.publishable_key, m.secret_key, m.jwt_secret);
        // Each key: the one given (flag, env or file), else dev mode's fixed
        // one, else a random one. An explicit key replaces only itself.
        let defaulted_keys = DefaultedKeys {
            publishable: publishable.is_none(),
            secret: secret.is_none(),
            jwt_secret: jwt_secret.is_none(),
        };
        let all_given = publishable.is_some() && secret.is_some() && jwt_secret.is_some();
        let dev = m.dev;
        let or_default = |given: Option<String>, fixed: &str, random: fn() -> String| {
            given.unwrap_or_else(|| if dev { fixed.into() } else { random() })
        };
        let keys = Keys {
            publishable: or_default(publishable, DEV_PUBLISHABLE_KEY, || {
                format!("sb_publishable_{}", random_token())
            }),
            secret: or_default(secret, DEV_SECRET_KEY, || {
                format!("sb_secret_{}", random_token())
            }),
            jwt_secret: or_default(jwt_secret, DEV_JWT_SECRET, || {
                format!("{}{}", random_token(), random_token())
            }),
        };
        let key_source = match (all_given, dev) {
            (true, _) => KeySource::Configured,
            (false, true) => KeySource::Dev,
            (false, false) => KeySource::Generated,
        };
        if keys.publishable == keys.secret {
            anyhow::bail!("the publishable and secret keys must differ");
        }
        let jwks = match m.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("JWKS {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let jwt = JwtOptions {
            jwks,
            issuer: m.jwt_issuer,
            audience: m.jwt_audience,
        };
        let ms = Duration::from_millis;
        let target = match (m.redis, m.redis_cluster) {
            (Some(_), Some(_)) => anyhow::bail!(
                "--redis and --redis-cluster (ROSTER_REDIS, ROSTER_REDIS_CLUSTER) exclude each other: \
                 give one Redis or one Redis Cluster"
            ),
            (Some(url), None) => Some(RedisTarget::One(url)),
            (None, Some(seeds)) => {
                let seeds: Vec<String> = seeds
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if seeds.is_empty() {
                    anyhow::bail!("--redis-cluster needs at least one seed node URL");
                }
                if let Some(bad) = seeds
                    .iter()
                    .find(|s| !s.starts_with("redis://") && !s.starts_with("rediss://"))
                {
                    anyhow::bail!("--redis-cluster seed {bad:?}: use redis://host:port");
                }
                Some(RedisTarget::Cluster(seeds))
            }
            (None, None) => None,
        };
        let cluster = match target {
            None => None,
            Some(redis) => {
                let node_name = m.node_name;
                let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                if node_name.is_empty() || node_name.len() > 64 || !node_name.chars().all(valid) {
                    anyhow::bail!(
                        "node name {node_name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                    );
                }
                let lease = ms(m.cluster_lease_ms);
                let heartbeat = ms(m.cluster_heartbeat_ms);
                if heartbeat * 2 > lease {
                    anyhow::bail!("the cluster lease must be at least twice the heartbeat");
                }
                Some(ClusterSettings {
                    redis,
                    node_name,
                    heartbeat,
                    lease,
                    reap_grace: ms(m.cluster_reap_grace_ms),
                    settle: ms(m.cluster_settle_ms),
                    audit: ms(m.cluster_audit_ms),
                    island_timeout: ms(m.cluster_island_timeout_ms),
                })
            }
        };
        let webhooks = match m.webhook_url {
            None => None,
            Some(url) => {
                check_webhook_url(&url)?;
                let secret = m.webhook_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "a webhook URL needs a signing secret: set --webhook-secret (ROSTER_WEBHOOK_SECRET)"
                    )
                })?;
                let ca_file = m.webhook_ca_file;
                if let Some(path) = &ca_file {
                    trusted_roots(Some(path)).map_err(|e| anyhow::anyhow!("webhook {e}"))?;
                }
                Some(WebhookSettings {
                    url,
                    ca_file,
                    secret,
                    batch: ms(m.webhook_batch_ms),
                    max_batch: m.webhook_max_batch.max(1),
                    queue: m.webhook_queue.max(1),
                    max_retry: ms(m.webhook_max_retry_ms),
                })
            }
        };
        let tls = match (m.tls_cert, m.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings { cert, key }),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
        };
        Ok(Settings {
            tls,
            cluster,
            webhooks,
            listen: m.listen,
            keys,
            key_source,
            jwt,
            log: m.log,
            log_format: m.log_format,
            idle_timeout: ms(m.idle_timeout_ms),
            presence_grace: ms(m.presence_grace_ms),
            presence_coalesce: ms(m.presence_coalesce_ms),
            presence_frame_bytes: m.presence_frame_bytes.max(1024),
            handshake_timeout: ms(m.handshake_timeout_ms),
            outbound_queue: m.outbound_queue.max(16),
            write_coalesce: ms(m.write_coalesce_ms),
            write_timeout: ms(m.write_timeout_ms),
            compression: match m.compression_min_bytes {
                0 => None,
                min_bytes => Some(Compression {
                    min_bytes,
                    level: COMPRESSION_LEVEL,
                }),
            },
            max_message_bytes: m.max_message_bytes,
            outbound_buffer_bytes: m.outbound_buffer_bytes.max(64 * 1024),
            private_only: m.private_only,
            policies: m.policies,
            limits: Limits {
                max_channels_per_socket: m.max_channels_per_socket,
                max_track_bytes: m.max_track_bytes,
                max_state_bytes_per_channel: m.max_state_bytes_per_channel,
                presence_calls_per_window: m.presence_calls_per_window,
                presence_window: ms(m.presence_window_ms),
                max_members_per_channel: m.max_members_per_channel,
                max_joins_per_second: m.max_joins_per_second,
                max_presence_events_per_second: m.max_presence_events_per_second,
                max_events_per_second_per_socket: m.max_events_per_second_per_socket,
                max_connections: m.max_connections,
                max_connections_per_ip: m.max_connections_per_ip,
                max_topic_bytes: m.max_topic_bytes,
                max_presence_key_bytes: m.max_presence_key_bytes,
                max_event_bytes: m.max_event_bytes,
                max_broadcast_bytes: m.max_broadcast_bytes,
                max_frames_per_second: m.max_frames_per_second,
                channel_broadcasts_per_second: m.channel_broadcasts_per_second,
                channel_broadcast_bytes_per_second: m.channel_broadcast_bytes_per_second,
                max_broadcasts_per_second_per_ip: m.max_broadcasts_per_second_per_ip,
                max_presence_calls_per_second_per_ip: m.max_presence_calls_per_second_per_ip,
                max_rest_body_bytes: m.max_rest_body_bytes,
                max_rest_messages: m.max_rest_messages,
            },
            defaulted_keys,
            presence_features: PresenceFeatures {
                updates: m.presence_updates.into(),
                last_seen_keys: m.last_seen_keys,
                last_seen_max_age: ms(m.last_seen_max_age_ms),
            },
        })
    }
}

impl Settings {
    /// Settings for tests and embedding: fixed dev keys, an ephemeral port.
    pub fn for_tests() -> Settings {
        ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            dev: true,
            ..ServeArgs::default()
        }
        .resolve()
        .expect("default settings are valid")
    }
}

/// Refuse a URL we could never deliver to at startup rather than fail
/// every delivery later.
fn check_webhook_url(url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("webhook URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => anyhow::bail!("webhook URL {url:?}: must start with https:// or http://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        anyhow::bail!("webhook URL {url:?}: no host");
    }
    Ok(())
}

/// 32 hex characters from the OS RNG (122 random bits).
fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {

    #[test]
    fn debug_output_of_settings_never_shows_the_secrets() {
        let keys = Keys {
            publishable: "sb_publishable_x".into(),
            secret: "sb_secret_hush".into(),
            jwt_secret: "jwt-hush".into(),
        };
        let shown = format!("{keys:?}");
        assert!(shown.contains("sb_publishable_x"), "{shown}");
        assert!(!shown.contains("hush"), "{shown}");
    }

    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("roster-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roster.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\nidle_timeout_ms = 1234\npublishable_key = \"sb_publishable_file\"\n",
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path.clone()),
            idle_timeout_ms: Some(99),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:5000");
        assert_eq!(s.idle_timeout, Duration::from_millis(99));
        assert_eq!(s.keys.publishable, "sb_publishable_file");
        assert!(s.keys.secret.starts_with("sb_secret_"));
        assert_eq!(s.key_source, KeySource::Generated);
        std::fs::write(&path, "nonsense_setting = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("nonsense_setting"), "{err}");
    }

    #[test]
    fn redis_cluster_seeds_parse_and_exclude_redis() {
        let s = ServeArgs {
            redis_cluster: Some(" redis://127.0.0.1:7000, redis://127.0.0.1:7001 ,".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.cluster.unwrap().redis,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        let both = ServeArgs {
            redis: Some("redis://127.0.0.1:6379".into()),
            redis_cluster: Some("redis://127.0.0.1:7000".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(both.to_string().contains("exclude each other"), "{both}");
        for bad in [",", "127.0.0.1:7000"] {
            let err = ServeArgs {
                redis_cluster: Some(bad.into()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("--redis-cluster"), "{bad}: {err}");
        }
    }

    #[test]
    fn jwks_file_and_policies_load_from_files() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let dir = std::env::temp_dir().join(format!("roster-pol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roster.toml");
        std::fs::write(
            &path,
            "private_only = true\n[[policies]]\ntopic = \"room:*\"\nallow = [\"presence-read\"]\n",
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path),
            jwks_file: Some(fixtures.join("jwks.json")),
            jwt_issuer: Some("me".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.jwt.jwks.unwrap().keys.len(), 3);
        assert_eq!(s.jwt.issuer.as_deref(), Some("me"));
        assert!(s.private_only);
        assert_eq!(s.policies.len(), 1);
        let bad = ServeArgs {
            jwks_file: Some(fixtures.join("rsa.pem")),
            ..Default::default()
        }
        .resolve();
        assert!(bad.unwrap_err().to_string().contains("JWKS"));
    }

    #[test]
    fn webhooks_need_an_http_url_and_a_secret() {
        let args = |url: &str, secret: Option<&str>| ServeArgs {
            webhook_url: Some(url.into()),
            webhook_secret: secret.map(Into::into),
            ..Default::default()
        };
        assert!(ServeArgs::default().resolve().unwrap().webhooks.is_none());
        let w = args("http://127.0.0.1:9000/hook", Some("s3cret"))
            .resolve()
            .unwrap()
            .webhooks
            .unwrap();
        assert_eq!(w.url, "http://127.0.0.1:9000/hook");
        assert_eq!(w.batch, Duration::from_millis(100));
        assert_eq!((w.max_batch, w.queue), (100, 10_000));
        assert_eq!(w.max_retry, Duration::from_secs(600));
        assert!(
            !format!("{w:?}").contains("s3cret"),
            "the secret is never shown"
        );
        let err = |a: ServeArgs| a.resolve().unwrap_err().to_string();
        assert!(args("https://example.com/hook", Some("s"))
            .resolve()
            .is_ok());
        assert!(err(args("ftp://example.com/", Some("s"))).contains("http://"));
        assert!(err(args("http://example.com/", None)).contains("--webhook-secret"));
        assert!(err(args("http://example.com/", Some(""))).contains("--webhook-secret"));
        assert!(err(args("not a url", Some("s"))).contains("webhook URL"));
    }

    #[test]
    fn tls_needs_both_files() {
        let s = ServeArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.tls.unwrap().key, PathBuf::from("k.pem"));
        assert!(ServeArgs::default().resolve().unwrap().tls.is_none());
        let half = ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(half
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("--tls-key"));
    }

    #[test]
    fn generated_keys_are_random_and_dev_keys_are_fixed() {
        let a = ServeArgs::default().resolve().unwrap();
        let b = ServeArgs::default().resolve().unwrap();
        assert_ne!(a.keys.publishable, b.keys.publishable);
        assert!(a.keys.publishable.starts_with("sb_publishable_"));
        let dev = Settings::for_tests();
        assert_eq!(dev.keys.publishable, DEV_PUBLISHABLE_KEY);
        assert_eq!(dev.key_source, KeySource::Dev);
    }

    /// Finding #14.13: `--dev` with `--jwt-secret` generated random keys, so
    /// `sb_publishable_dev` was refused. An explicit key overrides only itself.
    #[test]
    fn dev_fixes_every_key_an_explicit_one_replaces_only_itself() {
        let dev = |publishable: Option<&str>, secret: Option<&str>, jwt_secret: Option<&str>| {
            ServeArgs {
                dev: true,
                publishable_key: publishable.map(Into::into),
                secret_key: secret.map(Into::into),
                jwt_secret: jwt_secret.map(Into::into),
                ..Default::default()
            }
            .resolve()
            .unwrap()
        };
        let s = dev(None, None, Some("my-jwt-secret"));
        assert_eq!(
            (
                s.keys.publishable.as_str(),
                s.keys.secret.as_str(),
                s.keys.jwt_secret.as_str()
            ),
            (DEV_PUBLISHABLE_KEY, DEV_SECRET_KEY, "my-jwt-secret")
        );
        assert_eq!(s.key_source, KeySource::Dev);
        assert_eq!(
            s.defaulted_keys,
            DefaultedKeys {
                publishable: true,
                secret: true,
                jwt_secret: false
            }
        );
        let s = dev(Some("sb_publishable_mine"), None, None);
        assert_eq!(
            (
                s.keys.publishable.as_str(),
                s.keys.secret.as_str(),
                s.keys.jwt_secret.as_str()
            ),
            ("sb_publishable_mine", DEV_SECRET_KEY, DEV_JWT_SECRET)
        );
        let s = dev(None, Some("sb_secret_mine"), None);
        assert_eq!(
            (s.keys.publishable.as_str(), s.keys.secret.as_str()),
            (DEV_PUBLISHABLE_KEY, "sb_secret_mine")
        );
        // All three given: nothing of dev mode's is left.
        let s = dev(Some("sb_publishable_a"), Some("sb_secret_b"), Some("c"));
        assert_eq!(s.key_source, KeySource::Configured);
        // The file's keys count as explicit too.
        let dir = std::env::temp_dir().join(format!("roster-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roster.toml");
        std::fs::write(&path, "jwt_secret = \"from-file\"\n").unwrap();
        let s = ServeArgs {
            dev: true,
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (s.keys.publishable.as_str(), s.keys.jwt_secret.as_str()),
            (DEV_PUBLISHABLE_KEY, "from-file")
        );
        // Without --dev, unset keys are still generated.
        let s = ServeArgs {
            jwt_secret: Some("x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(
            s.keys.publishable.starts_with("sb_publishable_")
                && s.keys.publishable != DEV_PUBLISHABLE_KEY
        );
        assert_eq!(s.key_source, KeySource::Generated);
    }
}

/// The roots a TLS client trusts: the certificates of `ca_file` (PEM) as
/// the only ones, else webpki's. An unreadable file, or one without a
/// usable certificate, is an error (at startup, where it is first read).
pub fn trusted_roots(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!("CA file {}: no usable certificate", path.display());
            }
        }
    }
    Ok(roots)
}

/// `permessage-deflate` as this node sends it, for a socket that agreed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Smaller messages go uncompressed: deflating them costs more CPU
    /// than the bytes it saves.
    pub min_bytes: usize,
    /// zlib's level, 1 (fastest) to 9.
    pub level: u32,
}

/// Extra JWT checks and asymmetric keys.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// Keys for RS*/PS*/ES*/EdDSA tokens, looked up by `kid`.
    pub jwks: Option<jsonwebtoken::jwk::JwkSet>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of), when set.
    pub audience: Option<String>,
}

/// A right a policy grants on private channels (`allow = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Right {
    PresenceRead,
    PresenceWrite,
    BroadcastRead,
    BroadcastWrite,
}

/// One `[[policies]]` entry; what it matches is `access::authz`'s to say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Pattern over the topic name (without `realtime:`).
    pub topic: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub allow: Vec<Right>,
}
