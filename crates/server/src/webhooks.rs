//! Presence webhooks: key-level `member_join` / `member_leave` per channel,
//! POSTed to a configured URL. Emitting never blocks presence.
//!
//! (Delivery — batching, signing, retries — lives below `emit`.)

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

/// One key-level change of a channel.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// `member_join` (first meta under the key) or `member_leave` (last meta gone).
    pub event: &'static str,
    /// The channel name, without the `realtime:` prefix.
    pub channel: String,
    pub private: bool,
    pub key: String,
    /// Milliseconds since the Unix epoch, when the change was applied.
    pub at_ms: u64,
}

pub struct Webhooks {
    tx: mpsc::Sender<Event>,
}

impl Webhooks {
    /// A sink whose events go to `tx` (the delivery task's queue).
    pub fn with_queue(tx: mpsc::Sender<Event>) -> Arc<Webhooks> {
        Arc::new(Webhooks { tx })
    }

    /// Queue events; when the queue is full they are dropped (and logged),
    /// never waited for.
    pub fn emit(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            if self.tx.try_send(event).is_err() {
                tracing::warn!("webhook queue full: event dropped");
            }
        }
    }
}

/// Events for one applied diff of `topic`, given the state after it.
pub fn events_for(
    topic: &str,
    private: bool,
    diff: &roster_presence::Diff,
    after: &roster_presence::ChannelPresence,
) -> Vec<Event> {
    let (joined, left) = diff.key_changes(after);
    key_events(topic, private, &joined, &left)
}

/// Events for keys that came in (`joined`) and went (`left`) in `topic`.
pub fn key_events<S: AsRef<str>>(
    topic: &str,
    private: bool,
    joined: &[S],
    left: &[S],
) -> Vec<Event> {
    if joined.is_empty() && left.is_empty() {
        return Vec::new();
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let channel = topic
        .strip_prefix(roster_protocol::TOPIC_PREFIX)
        .unwrap_or(topic)
        .to_owned();
    let event = |event, key: &str| Event {
        event,
        channel: channel.clone(),
        private,
        key: key.to_owned(),
        at_ms,
    };
    joined
        .iter()
        .map(|k| event("member_join", k.as_ref()))
        .chain(left.iter().map(|k| event("member_leave", k.as_ref())))
        .collect()
}
