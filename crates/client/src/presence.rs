//! Presences as the application sees them, like realtime-js shows them:
//! each meta with `phx_ref` renamed `presence_ref` and `phx_ref_prev` dropped.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use roster_presence::{PresenceEvent, View};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// One tracked presence: what a client passed to
/// [`track`](crate::RealtimeChannel::track), plus its `presence_ref`.
///
/// ```
/// use roster_client::Presence;
/// use serde_json::json;
///
/// let p: Presence = serde_json::from_value(json!({"presence_ref": "r1", "user": "alice"})).unwrap();
/// assert_eq!(p.presence_ref, "r1");
/// assert_eq!(p.fields["user"], "alice");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The server's opaque, unique reference of this meta (`phx_ref`).
    pub presence_ref: String,
    /// The tracked fields.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Presence {
    /// The tracked fields as a typed value.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct User { user: String }
    ///
    /// let p: roster_client::Presence =
    ///     serde_json::from_value(serde_json::json!({"presence_ref": "r", "user": "bob"})).unwrap();
    /// assert_eq!(p.decode::<User>().unwrap().user, "bob");
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(Value::Object(self.fields.clone()))
    }

    /// A wire meta → a presence.
    pub(crate) fn from_meta(meta: &Map<String, Value>) -> Self {
        let mut fields = meta.clone();
        fields.remove("phx_ref_prev");
        let presence_ref = match fields.remove("phx_ref") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        Presence {
            presence_ref,
            fields,
        }
    }

    fn all(metas: &[Map<String, Value>]) -> Vec<Presence> {
        metas.iter().map(Presence::from_meta).collect()
    }
}

/// A channel's presences: key → one presence per tracking client
/// (what realtime-js's `presenceState()` returns).
///
/// ```
/// let state: roster_client::PresenceState = Default::default();
/// assert!(state.is_empty());
/// ```
pub type PresenceState = BTreeMap<String, Vec<Presence>>;

/// The application view of the sync algorithm's view.
pub(crate) fn state_of(view: &View) -> PresenceState {
    view.iter()
        .map(|(key, metas)| (key.clone(), Presence::all(metas)))
        .collect()
}

/// Decode every presence of a state.
pub(crate) fn decode_state<T: DeserializeOwned>(
    state: &PresenceState,
) -> Result<BTreeMap<String, Vec<T>>, serde_json::Error> {
    state
        .iter()
        .map(|(key, list)| Ok((key.clone(), decode_all(list)?)))
        .collect()
}

fn decode_all<T: DeserializeOwned>(list: &[Presence]) -> Result<Vec<T>, serde_json::Error> {
    list.iter().map(Presence::decode).collect()
}

/// A presence event, as the `sync` / `join` / `leave` callbacks see it.
///
/// ```
/// use roster_client::PresenceChange;
///
/// fn describe(change: &PresenceChange) -> String {
///     match change {
///         PresenceChange::Sync => "sync".into(),
///         PresenceChange::Join { key, new, .. } => format!("{key} joined ({})", new.len()),
///         PresenceChange::Leave { key, left, .. } => format!("{key} left ({})", left.len()),
///         PresenceChange::Update { key, new, .. } => format!("{key} is now {:?}", new.fields),
///     }
/// }
/// assert_eq!(describe(&PresenceChange::Sync), "sync");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceChange {
    /// The state changed; fired after each applied `presence_state` or `presence_diff`.
    Sync,
    /// Presences joined under `key`; `current` is what the key had before.
    Join {
        /// The presence key.
        key: String,
        /// The key's presences before the join (empty for a new key).
        current: Vec<Presence>,
        /// The presences that joined.
        new: Vec<Presence>,
    },
    /// Presences left `key`; `current` is what the key has after.
    Leave {
        /// The presence key.
        key: String,
        /// The key's presences after the leave (empty if the key is gone).
        current: Vec<Presence>,
        /// The presences that left.
        left: Vec<Presence>,
    },
    /// A presence of `key` changed in place (a quiet update, from a member
    /// that joined with `updates: "replace"`): same `presence_ref`, new
    /// fields, and no join or leave. Classic updates stay a `Join` and a
    /// `Leave`.
    Update {
        /// The presence key.
        key: String,
        /// The presence before.
        old: Presence,
        /// The presence now (same `presence_ref`).
        new: Presence,
    },
}

impl PresenceChange {
    pub(crate) fn from_event(event: PresenceEvent) -> Self {
        match event {
            PresenceEvent::Sync => PresenceChange::Sync,
            PresenceEvent::Join {
                key,
                current,
                joined,
            } => PresenceChange::Join {
                key,
                current: Presence::all(&current),
                new: Presence::all(&joined),
            },
            PresenceEvent::Leave { key, current, left } => PresenceChange::Leave {
                key,
                current: Presence::all(&current),
                left: Presence::all(&left),
            },
            PresenceEvent::Update { key, old, new } => PresenceChange::Update {
                key,
                old: Presence::from_meta(&old),
                new: Presence::from_meta(&new),
            },
        }
    }

    /// The key, for a join, a leave or an update.
    ///
    /// ```
    /// assert_eq!(roster_client::PresenceChange::Sync.key(), None);
    /// ```
    pub fn key(&self) -> Option<&str> {
        match self {
            PresenceChange::Sync => None,
            PresenceChange::Join { key, .. }
            | PresenceChange::Leave { key, .. }
            | PresenceChange::Update { key, .. } => Some(key),
        }
    }

    /// The joined presences as `T` (empty unless this is a join).
    ///
    /// ```no_run
    /// # async fn demo(channel: roster_client::RealtimeChannel) {
    /// use futures_util::StreamExt;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct User { user: String }
    ///
    /// let mut changes = channel.presence_changes();
    /// while let Some(change) = changes.next().await {
    ///     for user in change.decode_joins::<User>().unwrap() {
    ///         println!("{} is here", user.user);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn decode_joins<T: DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        match self {
            PresenceChange::Join { new, .. } => decode_all(new),
            _ => Ok(Vec::new()),
        }
    }

    /// The left presences as `T` (empty unless this is a leave).
    ///
    /// ```no_run
    /// # async fn demo(channel: roster_client::RealtimeChannel) {
    /// use futures_util::StreamExt;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct User { user: String }
    ///
    /// let mut changes = channel.presence_changes();
    /// while let Some(change) = changes.next().await {
    ///     for user in change.decode_leaves::<User>().unwrap() {
    ///         println!("{} left", user.user);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn decode_leaves<T: DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        match self {
            PresenceChange::Leave { left, .. } => decode_all(left),
            _ => Ok(Vec::new()),
        }
    }
}

/// A [`Stream`] of a channel's presence changes, from
/// [`RealtimeChannel::presence_changes`](crate::RealtimeChannel::presence_changes).
/// Lossless and in order; it ends when the client's background task ends.
/// Drop it when no longer needed (unread changes are kept in memory).
///
/// ```no_run
/// # async fn demo(channel: roster_client::RealtimeChannel) {
/// use futures_util::StreamExt;
///
/// let mut changes = channel.presence_changes();
/// while let Some(change) = changes.next().await {
///     println!("{change:?}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct PresenceChanges {
    pub(crate) rx: mpsc::UnboundedReceiver<PresenceChange>,
}

impl Stream for PresenceChanges {
    type Item = PresenceChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metas_are_shown_like_realtime_js() {
        let meta = json!({"user": "u", "phx_ref": "2", "phx_ref_prev": "1"});
        let p = Presence::from_meta(meta.as_object().unwrap());
        assert_eq!(p.presence_ref, "2");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"presence_ref": "2", "user": "u"})
        );
    }

    #[test]
    fn changes_decode_only_their_side() {
        let mut c = roster_presence::ClientPresence::new();
        let events = c
            .on_state(&json!({"a": {"metas": [{"n": 1, "phx_ref": "1"}]}}))
            .unwrap();
        let changes: Vec<_> = events.into_iter().map(PresenceChange::from_event).collect();
        #[derive(Deserialize, Debug, PartialEq)]
        struct N {
            n: u32,
        }
        assert_eq!(changes[0].decode_joins::<N>().unwrap(), [N { n: 1 }]);
        assert!(changes[0].decode_leaves::<N>().unwrap().is_empty());
        assert_eq!(changes[0].key(), Some("a"));
        assert_eq!(changes[1], PresenceChange::Sync);
        let state = state_of(c.view());
        assert_eq!(decode_state::<N>(&state).unwrap()["a"], [N { n: 1 }]);
    }
}
