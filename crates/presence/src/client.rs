//! The client side: Phoenix's `presence.js` sync algorithm.
//!
//! A client keeps `{key: [meta, ...]}` and updates it from two messages:
//! `presence_state` (a full snapshot, reconciled by `phx_ref`) and
//! `presence_diff` (`{joins, leaves}`). Diffs that arrive before the first
//! snapshot of the current join are buffered and replayed after it, exactly
//! like phx-js, so callbacks only ever see a consistent state.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A meta as a client sees it: the user's fields plus `phx_ref` (and maybe `phx_ref_prev`).
pub type ClientMeta = Map<String, Value>;

/// key → metas; what `presenceState()` is built from.
pub type View = BTreeMap<String, Vec<ClientMeta>>;

/// A callback-worthy change, in the order phx-js would fire them.
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceEvent {
    /// `current` = the key's metas before the join (empty if the key is new).
    Join {
        key: String,
        current: Vec<ClientMeta>,
        joined: Vec<ClientMeta>,
    },
    /// `current` = the key's metas after the leave (empty if the key is gone).
    Leave {
        key: String,
        current: Vec<ClientMeta>,
        left: Vec<ClientMeta>,
    },
    /// A meta replaced in place (a quiet update): a join or snapshot
    /// carried a meta under a `phx_ref` the key already had, with other
    /// fields. `old` and `new` share that `phx_ref`. A re-sent meta with
    /// nothing changed fires nothing; a same-ref meta for a key the view
    /// did not have is a `Join`.
    Update {
        key: String,
        old: ClientMeta,
        new: ClientMeta,
    },
    /// The view changed; fired once after each applied state or diff.
    Sync,
}

#[derive(Debug, Deserialize)]
struct Entry {
    metas: Vec<ClientMeta>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDiff {
    joins: BTreeMap<String, Entry>,
    leaves: BTreeMap<String, Entry>,
}

/// One channel's presence as seen by a client.
#[derive(Debug, Default)]
pub struct ClientPresence {
    view: View,
    /// Whether a snapshot arrived for the current join.
    synced: bool,
    pending: Vec<RawDiff>,
    /// Skip building events (their clones cost more than the sync itself).
    silent: bool,
}

fn phx_ref(meta: &ClientMeta) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

/// The same meta, whether or not `phx_ref_prev` came along (a snapshot's
/// copy and a diff's copy of one meta may differ in it alone).
fn same_meta(a: &ClientMeta, b: &ClientMeta) -> bool {
    let fields = |m: &ClientMeta| m.iter().filter(|(k, _)| *k != "phx_ref_prev").count();
    fields(a) == fields(b)
        && a.iter()
            .filter(|(k, _)| *k != "phx_ref_prev")
            .all(|(k, v)| b.get(k) == Some(v))
}

impl ClientPresence {
    pub fn new() -> Self {
        Self::default()
    }

    /// A view that only keeps state and reports just `Sync`: for load
    /// generators and anyone with no join/leave callbacks.
    pub fn silent() -> Self {
        ClientPresence {
            silent: true,
            ..Self::default()
        }
    }

    /// The channel (re)joined: wait for its snapshot before applying diffs.
    /// The old view stays, so the next snapshot reports only real changes.
    pub fn rejoined(&mut self) {
        self.synced = false;
        self.pending.clear();
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Apply a `presence_state` payload. Returns the events to fire (ending in `Sync`).
    pub fn on_state(&mut self, payload: &Value) -> Result<Vec<PresenceEvent>, serde_json::Error> {
        self.on_state_owned(payload.clone())
    }

    /// [`Self::on_state`], consuming the payload (no copy of its strings).
    pub fn on_state_owned(
        &mut self,
        payload: Value,
    ) -> Result<Vec<PresenceEvent>, serde_json::Error> {
        let new_state: BTreeMap<String, Entry> = serde_json::from_value(payload)?;
        let mut diff = RawDiff::default();
        for (key, current) in &self.view {
            if !new_state.contains_key(key) {
                diff.leaves.insert(
                    key.clone(),
                    Entry {
                        metas: current.clone(),
                    },
                );
            }
        }
        for (key, entry) in new_state {
            match self.view.get(&key) {
                Some(current) => {
                    // New refs, and known refs with other fields (updated
                    // in place while this client was away).
                    let joined: Vec<_> = entry
                        .metas
                        .iter()
                        .filter(|m| {
                            !current
                                .iter()
                                .any(|c| phx_ref(c) == phx_ref(m) && same_meta(c, m))
                        })
                        .cloned()
                        .collect();
                    let left: Vec<_> = current
                        .iter()
                        .filter(|c| !entry.metas.iter().any(|m| phx_ref(m) == phx_ref(c)))
                        .cloned()
                        .collect();
                    if !joined.is_empty() {
                        diff.joins.insert(key.clone(), Entry { metas: joined });
                    }
                    if !left.is_empty() {
                        diff.leaves.insert(key, Entry { metas: left });
                    }
                }
                None => {
                    diff.joins.insert(key, entry);
                }
            }
        }
        let mut events = Vec::new();
        self.apply(diff, &mut events);
        self.synced = true;
        for pending in std::mem::take(&mut self.pending) {
            self.apply(pending, &mut events);
        }
        events.push(PresenceEvent::Sync);
        Ok(events)
    }

    /// Apply a `presence_diff` payload. Before the join's snapshot it is
    /// buffered and no events are returned.
    pub fn on_diff(&mut self, payload: &Value) -> Result<Vec<PresenceEvent>, serde_json::Error> {
        self.on_diff_owned(payload.clone())
    }

    /// [`Self::on_diff`], consuming the payload (no copy of its strings).
    pub fn on_diff_owned(
        &mut self,
        payload: Value,
    ) -> Result<Vec<PresenceEvent>, serde_json::Error> {
        let diff: RawDiff = serde_json::from_value(payload)?;
        if !self.synced {
            self.pending.push(diff);
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        self.apply(diff, &mut events);
        events.push(PresenceEvent::Sync);
        Ok(events)
    }

    /// phx-js `syncDiff`: joins first (keeping other metas in front), then leaves by ref.
    fn apply(&mut self, diff: RawDiff, events: &mut Vec<PresenceEvent>) {
        for (key, entry) in diff.joins {
            let slot = self.view.entry(key.clone()).or_default();
            let before = (!self.silent).then(|| slot.clone());
            slot.retain(|c| !entry.metas.iter().any(|m| phx_ref(m) == phx_ref(c)));
            if self.silent {
                slot.extend(entry.metas);
                continue;
            }
            slot.extend(entry.metas.iter().cloned());
            let before = before.unwrap_or_default();
            // A meta under a ref the key already had is an update of it.
            let mut joined = Vec::new();
            for meta in entry.metas {
                match before.iter().find(|c| phx_ref(c) == phx_ref(&meta)) {
                    Some(old) if same_meta(old, &meta) => {}
                    Some(old) => events.push(PresenceEvent::Update {
                        key: key.clone(),
                        old: old.clone(),
                        new: meta,
                    }),
                    None => joined.push(meta),
                }
            }
            if !joined.is_empty() {
                events.push(PresenceEvent::Join {
                    key,
                    current: before,
                    joined,
                });
            }
        }
        for (key, entry) in diff.leaves {
            let Some(current) = self.view.get_mut(&key) else {
                continue;
            };
            current.retain(|c| !entry.metas.iter().any(|m| phx_ref(m) == phx_ref(c)));
            let remaining = (!self.silent).then(|| current.clone());
            if current.is_empty() {
                self.view.remove(&key);
            }
            if let Some(remaining) = remaining {
                events.push(PresenceEvent::Leave {
                    key,
                    current: remaining,
                    left: entry.metas,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_before_the_snapshot_are_buffered_then_replayed() {
        let mut c = ClientPresence::new();
        let diff = json!({"joins": {"b": {"metas": [{"phx_ref": "2"}]}}, "leaves": {}});
        assert!(c.on_diff(&diff).unwrap().is_empty());
        assert!(c.view().is_empty());
        let events = c
            .on_state(&json!({"a": {"metas": [{"phx_ref": "1"}]}}))
            .unwrap();
        assert_eq!(c.view().len(), 2);
        assert_eq!(events.last(), Some(&PresenceEvent::Sync));
        assert_eq!(events.len(), 3); // join a, join b, sync
    }

    #[test]
    fn update_reports_join_then_leave_and_keeps_one_meta() {
        let mut c = ClientPresence::new();
        c.on_state(&json!({"u": {"metas": [{"s": 1, "phx_ref": "1"}]}}))
            .unwrap();
        let events = c
            .on_diff(&json!({
                "joins": {"u": {"metas": [{"s": 2, "phx_ref": "2", "phx_ref_prev": "1"}]}},
                "leaves": {"u": {"metas": [{"s": 1, "phx_ref": "1"}]}}
            }))
            .unwrap();
        assert!(matches!(&events[0], PresenceEvent::Join { current, .. } if current.len() == 1));
        assert!(matches!(&events[1], PresenceEvent::Leave { current, .. } if current.len() == 1));
        assert_eq!(c.view()["u"].len(), 1);
        assert_eq!(c.view()["u"][0]["s"], json!(2));
    }

    #[test]
    fn a_same_ref_join_is_an_update_and_a_resent_meta_is_nothing() {
        let mut c = ClientPresence::new();
        c.on_state(&json!({"u": {"metas": [{"s": 1, "phx_ref": "1"}, {"s": 9, "phx_ref": "9"}]}}))
            .unwrap();
        let quiet = json!({"joins": {"u": {"metas": [
            {"s": 2, "phx_ref": "1", "phx_ref_prev": "1"},
            {"s": 3, "phx_ref": "3"}
        ]}}, "leaves": {}});
        let events = c.on_diff(&quiet).unwrap();
        assert_eq!(
            events,
            [
                PresenceEvent::Update {
                    key: "u".into(),
                    old: json!({"s": 1, "phx_ref": "1"}).as_object().unwrap().clone(),
                    new: json!({"s": 2, "phx_ref": "1", "phx_ref_prev": "1"})
                        .as_object()
                        .unwrap()
                        .clone(),
                },
                PresenceEvent::Join {
                    key: "u".into(),
                    current: vec![
                        json!({"s": 1, "phx_ref": "1"}).as_object().unwrap().clone(),
                        json!({"s": 9, "phx_ref": "9"}).as_object().unwrap().clone(),
                    ],
                    joined: vec![json!({"s": 3, "phx_ref": "3"}).as_object().unwrap().clone()],
                },
                PresenceEvent::Sync,
            ]
        );
        assert_eq!(c.view()["u"].len(), 3);
        // The server's catch-up diff re-sends it: no event but the sync.
        assert_eq!(c.on_diff(&quiet).unwrap(), [PresenceEvent::Sync]);
        // A same-ref meta for a key not in the view is a join.
        let events = c
            .on_diff(&json!({"joins": {"v": {"metas": [{"phx_ref": "7", "phx_ref_prev": "7"}]}}, "leaves": {}}))
            .unwrap();
        assert!(matches!(&events[0], PresenceEvent::Join { key, .. } if key == "v"));
    }

    #[test]
    fn a_snapshot_after_a_missed_update_reports_it_as_an_update() {
        let mut c = ClientPresence::new();
        c.on_state(&json!({"u": {"metas": [{"s": 1, "phx_ref": "1"}]}}))
            .unwrap();
        c.rejoined();
        let events = c
            .on_state(&json!({"u": {"metas": [{"s": 2, "phx_ref": "1", "phx_ref_prev": "1"}]}}))
            .unwrap();
        assert!(
            matches!(&events[0], PresenceEvent::Update { new, .. } if new["s"] == json!(2)),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
        assert_eq!(c.view()["u"][0]["s"], json!(2));
        // The same snapshot again: nothing changed.
        c.rejoined();
        let again = c
            .on_state(&json!({"u": {"metas": [{"s": 2, "phx_ref": "1"}]}}))
            .unwrap();
        assert_eq!(again, [PresenceEvent::Sync]);
    }

    #[test]
    fn snapshot_after_rejoin_reports_only_real_changes() {
        let mut c = ClientPresence::new();
        c.on_state(
            &json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}}),
        )
        .unwrap();
        c.rejoined();
        let events = c
            .on_state(
                &json!({"a": {"metas": [{"phx_ref": "1"}]}, "c": {"metas": [{"phx_ref": "3"}]}}),
            )
            .unwrap();
        let joins: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                PresenceEvent::Join { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let leaves: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                PresenceEvent::Leave { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(joins, ["c"]);
        assert_eq!(leaves, ["b"]);
        assert_eq!(c.view().keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut c = ClientPresence::new();
        assert!(c.on_state(&json!([1, 2])).is_err());
        assert!(c.on_diff(&json!({"joins": {}})).is_err());
    }
}
