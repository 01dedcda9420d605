//! What Roster stores in Redis and publishes on its pub/sub channels.
//!
//! Per channel `T` (a hash tag, so that all of a channel's keys and its
//! pub/sub channel live in one Redis Cluster slot):
//!
//! * `rp:{T}:s` — hash, member id → entry (one field per channel join);
//! * `rp:{T}:m` — hash, `e` epoch, `s` last sequence number, `t` topic;
//! * `rp:{T}:o` — hash, member ids kept for a leave grace period;
//! * `rp:{T}:l` — sorted set, JSON-quoted presence key → when (Redis ms)
//!   an entry of it was last deleted ("last seen"); trimmed to the age
//!   limit and the cap on each write, and expiring with the age limit;
//! * `rp:{T}:f` — hash, node id → when (Redis ms) a reaper fenced it off
//!   this channel: the `apply` script refuses writes of a fenced node, so
//!   nothing it sends lands after the reaper swept the channel;
//! * `rp:{T}` — pub/sub: every change, with its sequence number (`PUBLISH`
//!   on one Redis, sharded `SPUBLISH` on a Redis Cluster).
//!
//! Per node `N`: `rp:nch:{N}` (set, the tags of the channels it may own
//! entries in) and `rp:fenced:{N}` (set by the reaper before it reads that
//! set: later registrations are refused). The node-wide lease keys
//! ([`Globals`]) share one slot on a Redis Cluster (tag `{rp}`); on one
//! Redis they keep their historical names. No script touches keys of two
//! slots: a channel's scripts touch its tag only, the lease scripts the
//! lease keys only, registration the node's keys only.
//!
//! A member id is `<node id>|<member number>`, so "all entries of node X"
//! is a prefix. Texts are built by the Lua scripts with plain string
//! concatenation; the separators (`\n`, `\x1e`, `\x1f`) never occur inside
//! their parts: keys are JSON-quoted, states are canonical JSON (control
//! characters escaped), refs are URL-safe base64, node ids are checked.

use std::sync::Arc;

use roster_presence::{Meta, State};
use roster_protocol::{BroadcastBody, UserBroadcast};

/// The hash tag of a channel: 16 hex digits of FNV-1a over its registry key.
/// Fixed forever: every node of every version must compute the same tag.
pub fn tag(topic: &str, private: bool) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = [
        if private { b"1:" } else { b"0:" }.as_slice(),
        topic.as_bytes(),
    ];
    for b in bytes.into_iter().flatten() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn data_key(tag: &str) -> String {
    format!("rp:{{{tag}}}:s")
}

pub fn meta_key(tag: &str) -> String {
    format!("rp:{{{tag}}}:m")
}

/// Member ids whose socket is gone but whose entry is kept (leave grace).
pub fn orphans_key(tag: &str) -> String {
    format!("rp:{{{tag}}}:o")
}

/// Last seen: when each presence key last lost an entry (sorted set).
pub fn last_seen_key(tag: &str) -> String {
    format!("rp:{{{tag}}}:l")
}

/// A presence key as a member of the last-seen set (as entries begin).
pub fn last_seen_member(key: &str) -> String {
    serde_json::to_string(key).expect("strings serialise")
}

/// How every entry under presence key `key` begins.
pub fn entry_prefix(key: &str) -> String {
    format!(
        "{}\x1f",
        serde_json::to_string(key).expect("strings serialise")
    )
}

pub fn pubsub_channel(tag: &str) -> String {
    format!("rp:{{{tag}}}")
}

/// The tag inside a pub/sub channel name.
pub fn tag_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("rp:{")?.strip_suffix('}')
}

/// Node-wide keys: leases, reaping claims, dead incarnations. All in one
/// slot on a Redis Cluster, as the heartbeat and claim scripts use them
/// together.
#[derive(Debug, Clone, Copy)]
pub struct Globals {
    /// Sorted set: node id → lease deadline (Redis ms).
    pub nodes: &'static str,
    /// Hash: dead node id → `<reaper>:<claim deadline>`.
    pub reaping: &'static str,
    /// Sorted set: dead node id → when it was declared dead.
    pub dead: &'static str,
}

/// One Redis: the names every version so far used.
pub const SINGLE: Globals = Globals {
    nodes: "rp:nodes",
    reaping: "rp:reaping",
    dead: "rp:dead",
};

/// A Redis Cluster: the same keys, hash-tagged into one slot.
pub const SHARDED: Globals = Globals {
    nodes: "rp:{rp}:nodes",
    reaping: "rp:{rp}:reaping",
    dead: "rp:{rp}:dead",
};

/// The channels in which node `nid` may own entries (a superset).
pub fn node_channels_key(nid: &str) -> String {
    format!("rp:nch:{{{nid}}}")
}

/// Set once a reaper has begun sweeping node `nid` (same slot as
/// [`node_channels_key`]): the node may register no more channels.
pub fn node_fenced_key(nid: &str) -> String {
    format!("rp:fenced:{{{nid}}}")
}

/// Nodes fenced off channel `tag` by a reaper (see the module doc).
pub fn fence_key(tag: &str) -> String {
    format!("rp:{{{tag}}}:f")
}

/// The hash tag of a key (what is between its first `{` and the next `}`).
pub fn tag_of_key(key: &str) -> Option<&str> {
    let (_, rest) = key.split_once('{')?;
    rest.split_once('}').map(|(t, _)| t)
}

/// A hash field value: `"key"\x1fref\x1fprev\x1fstate`.
pub fn encode_entry(key: &str, meta: &Meta) -> String {
    let key = serde_json::to_string(key).expect("strings serialise");
    format!(
        "{key}\x1f{}\x1f{}\x1f{}",
        meta.phx_ref,
        meta.phx_ref_prev.as_deref().unwrap_or(""),
        meta.state.as_json()
    )
}

pub fn decode_entry(text: &str) -> Option<(String, Meta)> {
    let mut parts = text.splitn(4, '\x1f');
    let key: String = serde_json::from_str(parts.next()?).ok()?;
    let phx_ref: Arc<str> = Arc::from(parts.next()?);
    let prev = parts.next()?;
    let state = serde_json::from_str(parts.next()?).ok()?;
    let state = State::from_value(Some(state)).ok()?;
    Some((
        key,
        Meta {
            phx_ref,
            phx_ref_prev: (!prev.is_empty()).then(|| Arc::from(prev)),
            state,
        },
    ))
}

/// One entry added (`join`) or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub join: bool,
    pub mid: Arc<str>,
    pub key: String,
    pub meta: Meta,
}

/// A numbered change of one channel's presence, as the scripts publish it:
/// `P\n<epoch>\n<seq>\n<origin>\n` then `+mid\x1eentry` / `-mid\x1eentry` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub epoch: Arc<str>,
    pub seq: u64,
    /// The node that made the change: the writer's id, or `<reaper>/reap`.
    pub origin: Arc<str>,
    pub changes: Vec<Change>,
}

pub fn decode_update(text: &str) -> Option<Update> {
    let mut lines = text.split('\n');
    if lines.next()? != "P" {
        return None;
    }
    let epoch = Arc::from(lines.next()?);
    let seq = lines.next()?.parse().ok()?;
    let origin = Arc::from(lines.next()?);
    let changes = lines
        .map(|line| {
            let join = match line.as_bytes().first()? {
                b'+' => true,
                b'-' => false,
                _ => return None,
            };
            let (mid, entry) = line[1..].split_once('\x1e')?;
            let (key, meta) = decode_entry(entry)?;
            Some(Change {
                join,
                mid: Arc::from(mid),
                key,
                meta,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Update {
        epoch,
        seq,
        origin,
        changes,
    })
}

/// A broadcast relayed to other nodes:
/// `B\n<origin>\n<"event">\n<meta or ->\n<j|b>\n<body>`.
pub fn encode_broadcast(origin: &str, msg: &UserBroadcast) -> Vec<u8> {
    let event = serde_json::to_string(&msg.event).expect("strings serialise");
    // Metadata is JSON text; newlines in it are only ever whitespace, so
    // re-serialising it compactly keeps it on one line.
    let meta = msg
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .map_or_else(|| "-".to_owned(), |v| v.to_string());
    let (kind, body): (&str, &[u8]) = match &msg.body {
        BroadcastBody::Json(text) => ("j", text.as_bytes()),
        BroadcastBody::Binary(bytes) => ("b", bytes),
    };
    let mut out = format!("B\n{origin}\n{event}\n{meta}\n{kind}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// The origin node and the broadcast.
pub fn decode_broadcast(bytes: &[u8]) -> Option<(String, UserBroadcast)> {
    let mut parts = bytes.splitn(6, |b| *b == b'\n');
    if parts.next()? != b"B" {
        return None;
    }
    let text = |p: &[u8]| std::str::from_utf8(p).ok().map(str::to_owned);
    let origin = text(parts.next()?)?;
    let event: String = serde_json::from_slice(parts.next()?).ok()?;
    let meta = parts.next()?;
    let meta = (meta != b"-").then(|| text(meta)).flatten();
    let kind = parts.next()?;
    let body = parts.next().unwrap_or_default();
    let body = match kind {
        b"j" => BroadcastBody::Json(text(body)?),
        b"b" => BroadcastBody::Binary(body.to_vec()),
        _ => return None,
    };
    Some((origin, UserBroadcast { event, body, meta }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(r: &str, prev: Option<&str>, state: &str) -> Meta {
        Meta {
            phx_ref: r.into(),
            phx_ref_prev: prev.map(Arc::from),
            state: State::from_value(Some(serde_json::from_str(state).unwrap())).unwrap(),
        }
    }

    #[test]
    fn entries_round_trip_with_awkward_keys() {
        for key in ["alice", "", "a\x1fb\nc\x1e", "ünï \"q\""] {
            let m = meta("F-x_1", Some("F-x_0"), r#"{"s":"line\nbreak\u001f"}"#);
            let text = encode_entry(key, &m);
            assert_eq!(text.matches('\x1f').count(), 3);
            assert!(!text.contains('\n') && !text.contains('\x1e'));
            assert_eq!(decode_entry(&text), Some((key.to_owned(), m)));
        }
        assert_eq!(decode_entry("nonsense"), None);
    }

    #[test]
    fn an_update_as_the_scripts_write_it_decodes() {
        let a = encode_entry("u", &meta("r1", None, "{}"));
        let b = encode_entry("u", &meta("r2", Some("r1"), r#"{"x":1}"#));
        let text = format!("P\nep\n7\nn1-ab\n-n1-ab|3\x1e{a}\n+n1-ab|3\x1e{b}");
        let u = decode_update(&text).unwrap();
        assert_eq!((&*u.epoch, u.seq, u.changes.len()), ("ep", 7, 2));
        assert!(!u.changes[0].join && u.changes[1].join);
        assert_eq!(&*u.changes[1].mid, "n1-ab|3");
        assert_eq!(u.changes[1].meta.phx_ref_prev.as_deref(), Some("r1"));
        assert_eq!(decode_update("P\nep\nnot-a-number\nn\n"), None);
        assert_eq!(decode_update("B\nwhatever"), None);
    }

    #[test]
    fn broadcasts_round_trip() {
        for msg in [
            UserBroadcast {
                event: "ev\nent".into(),
                body: BroadcastBody::Json("{\n\"a\": 1}".into()),
                meta: Some("{\"id\":\n 1}".into()),
            },
            UserBroadcast {
                event: "bin".into(),
                body: BroadcastBody::Binary(vec![0, 10, 255, 10]),
                meta: None,
            },
        ] {
            let bytes = encode_broadcast("n1-ab", &msg);
            let (origin, back) = decode_broadcast(&bytes).unwrap();
            assert_eq!(origin, "n1-ab");
            assert_eq!(back.event, msg.event);
            assert_eq!(back.body, msg.body);
            assert_eq!(back.meta.is_some(), msg.meta.is_some());
        }
    }

    #[test]
    fn tags_are_stable_and_separate_private_from_public() {
        // Golden values (FNV-1a 64 of "0:" or "1:" + topic, computed outside
        // this code): every node of every version must name a channel alike.
        assert_eq!(tag("realtime:room", false), "2c3386f040e5d51b");
        assert_eq!(tag("realtime:room", true), "8057b011cca7c09c");
        assert_eq!(tag("", false), "07fc0e07b4bd112f");
        assert_eq!(tag_of_channel(&pubsub_channel("abc")), Some("abc"));
        assert_eq!(data_key("abc"), "rp:{abc}:s");
        assert_eq!(tag_of_key(&fence_key("abc")), Some("abc"));
        assert_eq!(tag_of_key(SHARDED.nodes), tag_of_key(SHARDED.dead));
        assert_eq!(tag_of_key(SHARDED.nodes), tag_of_key(SHARDED.reaping));
        assert_eq!(
            tag_of_key(&node_channels_key("n-1")),
            tag_of_key(&node_fenced_key("n-1"))
        );
    }
}
