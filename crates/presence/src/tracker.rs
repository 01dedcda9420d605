//! The server's presence state for one channel, and the diffs its changes make.
//!
//! Semantics follow Phoenix.Tracker as Supabase Realtime uses it: each member
//! (one socket's join of the channel) owns at most one meta, under the
//! presence key fixed at its join. Several members may share a key; the key
//! then lists several metas.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{Meta, RefGen, State};

/// Identifies one member: a single join of a channel by a single socket.
/// A rejoin is a new member.
pub type MemberId = u64;

/// Bytes a meta's refs and the wrapping around it add to a `presence_state`
/// at most: `"phx_ref":"…","phx_ref_prev":"…"` (16-character refs) and
/// `"key":{"metas":[…]},`, with room to spare.
pub const META_OVERHEAD: usize = 96;

/// What one meta adds to a `presence_state` at most: its state, its key as
/// JSON (counted for every meta, as if each had its own key) and
/// [`META_OVERHEAD`]. Summed over a channel it bounds the snapshot, so a
/// cap on it is a cap on the frame every joiner gets.
pub fn meta_weight(key: &str, state: &State) -> usize {
    json_string_len(key) + state.as_json().len() + META_OVERHEAD
}

/// The length of `s` written as a JSON string, quotes included.
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// What changed, to send to every member as one `presence_diff`.
///
/// A ref never appears in both `joins` and `leaves`. An update carries the new
/// meta in `joins` and the old one in `leaves`, under the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub joins: Vec<(String, Meta)>,
    pub leaves: Vec<(String, Meta)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Append `other` (a later change) to this diff.
    pub fn extend(&mut self, other: Diff) {
        self.joins.extend(other.joins);
        self.leaves.extend(other.leaves);
    }

    /// Fold a later diff into this one (coalescing a window of changes into
    /// one diff): the net effect per ref. A ref that joined in this window
    /// and leaves again was never published, so it just goes; a published
    /// ref that left and comes back (same key) is no change at all. A ref is
    /// never in both `joins` and `leaves` of the result.
    pub fn absorb(&mut self, later: Diff) {
        for entry in later.leaves {
            cancel_or_push(&mut self.joins, &mut self.leaves, entry);
        }
        for entry in later.joins {
            cancel_or_push(&mut self.leaves, &mut self.joins, entry);
        }
    }

    /// Key-level changes, given the state right after this diff: keys that
    /// were absent before and are present now (first meta in), and keys
    /// present before and absent now (last meta out). An update of a meta
    /// under a key that stays is neither.
    pub fn key_changes(&self, after: &ChannelPresence) -> (Vec<&str>, Vec<&str>) {
        let mut joined: Vec<&str> = Vec::new();
        for (key, _) in &self.joins {
            let joined_here = self.joins.iter().filter(|(k, _)| k == key).count();
            let left_here = self.leaves.iter().any(|(k, _)| k == key);
            let now = after.by_key.get(key).map_or(0, Vec::len);
            if !left_here && now == joined_here && !joined.contains(&key.as_str()) {
                joined.push(key);
            }
        }
        let mut left: Vec<&str> = Vec::new();
        for (key, _) in &self.leaves {
            if !after.has_key(key) && !left.contains(&key.as_str()) {
                left.push(key);
            }
        }
        (joined, left)
    }

    /// The net effect: a ref that both leaves and joins under the same key
    /// (a meta moved between owners, e.g. adopted or re-asserted) is no
    /// change at all. Sending both would be wrong, not just wasteful:
    /// phx-js applies joins before leaves, so the meta would vanish.
    pub fn net(mut self) -> Diff {
        let moved: HashSet<(String, std::sync::Arc<str>)> = self
            .joins
            .iter()
            .map(|(k, m)| (k.clone(), m.phx_ref.clone()))
            .filter(|jk| {
                self.leaves
                    .iter()
                    .any(|(k, m)| k == &jk.0 && m.phx_ref == jk.1)
            })
            .collect();
        if !moved.is_empty() {
            let keep = |(k, m): &(String, Meta)| !moved.contains(&(k.clone(), m.phx_ref.clone()));
            self.joins.retain(keep);
            self.leaves.retain(keep);
        }
        self
    }

    /// The `presence_diff` payload: `{"joins":{key:{"metas":[..]}},"leaves":{..}}`.
    /// Both sides are always present (realtime-py requires it).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"joins\":");
        write_grouped(&mut out, group(&self.joins));
        out.push_str(",\"leaves\":");
        write_grouped(&mut out, group(&self.leaves));
        out.push('}');
        out
    }
}

/// `entry` cancels its opposite in `opposite` (same key and ref), or is
/// added to `same_side`.
fn cancel_or_push(
    opposite: &mut Vec<(String, Meta)>,
    same_side: &mut Vec<(String, Meta)>,
    entry: (String, Meta),
) {
    let matches = |(k, m): &(String, Meta)| *k == entry.0 && m.phx_ref == entry.1.phx_ref;
    match opposite.iter().position(matches) {
        Some(i) => {
            opposite.remove(i);
        }
        None => same_side.push(entry),
    }
}

fn group(entries: &[(String, Meta)]) -> BTreeMap<&str, Vec<&Meta>> {
    let mut by_key: BTreeMap<&str, Vec<&Meta>> = BTreeMap::new();
    for (key, meta) in entries {
        by_key.entry(key).or_default().push(meta);
    }
    by_key
}

/// Writes `{key:{"metas":[meta,..]},..}`.
fn write_grouped<'a, K, M>(out: &mut String, entries: impl IntoIterator<Item = (K, M)>)
where
    K: AsRef<str>,
    M: IntoIterator<Item = &'a Meta>,
{
    out.push('{');
    for (i, (key, metas)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key.as_ref()).expect("strings serialise"));
        out.push_str(":{\"metas\":[");
        for (j, meta) in metas.into_iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            meta.write_json(out);
        }
        out.push_str("]}");
    }
    out.push('}');
}

#[derive(Clone, Debug)]
struct Tracked {
    member: MemberId,
    meta: Meta,
}

/// All presences of one channel.
#[derive(Debug, Default)]
pub struct ChannelPresence {
    /// key → metas, in the order they were tracked.
    by_key: BTreeMap<String, Vec<Tracked>>,
    /// member → the key it tracks under, for untrack and disconnect.
    key_of: HashMap<MemberId, String>,
    /// Sum of [`meta_weight`]s: a bound on what a snapshot weighs.
    state_bytes: usize,
    /// Members whose socket went away but whose meta is kept for a grace
    /// period, to be adopted by a rejoin tracking the same state.
    orphans: HashSet<MemberId>,
}

impl ChannelPresence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Track `state` for `member` under `key`.
    ///
    /// * first track: a join;
    /// * same state again: nothing (returns `None`);
    /// * other state: an update, with a new ref and `phx_ref_prev` = old ref.
    ///
    /// A member's key is fixed by its first track; tracking under another key
    /// first untracks the old one (the diff then carries both).
    pub fn track(
        &mut self,
        member: MemberId,
        key: &str,
        state: State,
        refs: &RefGen,
    ) -> Option<Diff> {
        if !self.key_of.contains_key(&member) && self.adopt(member, key, &state) {
            return None;
        }
        let mut diff = Diff::default();
        let mut prev_ref = None;
        if let Some(old_key) = self.key_of.get(&member) {
            if old_key == key {
                let tracked = self.by_key[key]
                    .iter()
                    .find(|t| t.member == member)
                    .expect("key_of and by_key agree");
                if tracked.meta.state == state {
                    return None;
                }
                prev_ref = Some(tracked.meta.phx_ref.clone());
            }
            diff = self.untrack(member).expect("member was tracked");
        }
        let meta = Meta {
            phx_ref: refs.next_ref(),
            phx_ref_prev: prev_ref,
            state,
        };
        self.add(member, key, meta, &mut diff);
        Some(diff)
    }

    /// Add `meta` under `key` for `member` (which holds none now), noting the join.
    fn add(&mut self, member: MemberId, key: &str, meta: Meta, diff: &mut Diff) {
        self.state_bytes += meta_weight(key, &meta.state);
        self.by_key
            .entry(key.to_owned())
            .or_default()
            .push(Tracked {
                member,
                meta: meta.clone(),
            });
        self.key_of.insert(member, key.to_owned());
        diff.joins.push((key.to_owned(), meta));
    }

    /// Put a meta made elsewhere (another node) under `member`, replacing
    /// what `member` had. The diff says what changed, nothing if the same
    /// meta was there already.
    pub fn insert(&mut self, member: MemberId, key: &str, meta: Meta) -> Diff {
        if self.meta_of(member) == Some(&meta)
            && self.key_of.get(&member).map(String::as_str) == Some(key)
        {
            return Diff::default();
        }
        let mut diff = self.untrack(member).unwrap_or_default();
        self.add(member, key, meta, &mut diff);
        diff
    }

    /// Keep `member`'s meta although its socket is gone (the leave grace
    /// period): no diff now. It leaves later by [`Self::untrack`], unless a
    /// member tracking the same state under the same key adopts it first.
    /// Returns whether there was a meta to keep.
    pub fn orphan(&mut self, member: MemberId) -> bool {
        self.key_of.contains_key(&member) && self.orphans.insert(member)
    }

    /// A new member tracking exactly an orphan's state under its key takes
    /// the orphan's meta over, `phx_ref` and all: nobody sees a leave or a join.
    fn adopt(&mut self, member: MemberId, key: &str, state: &State) -> bool {
        let Some(metas) = self.by_key.get_mut(key) else {
            return false;
        };
        let Some(entry) = metas
            .iter_mut()
            .find(|t| self.orphans.contains(&t.member) && t.meta.state == *state)
        else {
            return false;
        };
        let old = std::mem::replace(&mut entry.member, member);
        self.orphans.remove(&old);
        self.key_of.remove(&old);
        self.key_of.insert(member, key.to_owned());
        true
    }

    /// Is `member`'s meta kept for a grace period?
    pub fn is_orphan(&self, member: MemberId) -> bool {
        self.orphans.contains(&member)
    }

    /// Remove `member`'s meta. `None` when it tracked nothing.
    /// Also the right call when a member leaves or its socket goes away.
    pub fn untrack(&mut self, member: MemberId) -> Option<Diff> {
        let key = self.key_of.remove(&member)?;
        self.orphans.remove(&member);
        let metas = self.by_key.get_mut(&key).expect("key_of and by_key agree");
        let pos = metas
            .iter()
            .position(|t| t.member == member)
            .expect("key_of and by_key agree");
        let removed = metas.remove(pos);
        self.state_bytes -= meta_weight(&key, &removed.meta.state);
        if metas.is_empty() {
            self.by_key.remove(&key);
        }
        Some(Diff {
            joins: Vec::new(),
            leaves: vec![(key, removed.meta)],
        })
    }

    /// The full state, key by key (keys sorted, metas in tracking order).
    pub fn snapshot(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Meta>)> {
        self.by_key
            .iter()
            .map(|(key, metas)| (key.as_str(), metas.iter().map(|t| &t.meta)))
    }

    /// The `presence_state` as it was before `pending` (changes of the
    /// current coalescing window, not yet sent): what a client joining
    /// mid-window must get, since the window's diff will follow.
    pub fn state_json_before(&self, pending: &Diff) -> String {
        if pending.is_empty() {
            return self.state_json();
        }
        let joined: HashSet<(&str, &str)> = pending
            .joins
            .iter()
            .map(|(k, m)| (k.as_str(), &*m.phx_ref))
            .collect();
        let mut by_key: BTreeMap<&str, Vec<&Meta>> = BTreeMap::new();
        for (key, metas) in &self.by_key {
            for t in metas {
                if !joined.contains(&(key.as_str(), &*t.meta.phx_ref)) {
                    by_key.entry(key).or_default().push(&t.meta);
                }
            }
        }
        for (key, meta) in &pending.leaves {
            by_key.entry(key).or_default().push(meta);
        }
        let mut out = String::with_capacity(64 + 96 * self.meta_count());
        write_grouped(&mut out, by_key);
        out
    }

    /// The `presence_state` payload: `{key:{"metas":[..]},..}`, `{}` when empty.
    pub fn state_json(&self) -> String {
        let mut out = String::with_capacity(64 + 96 * self.meta_count());
        write_grouped(&mut out, self.snapshot());
        out
    }

    /// Up to `limit` keys after `after` (in key order) with their metas:
    /// a stable page for listing a large channel.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<(&str, Vec<&Meta>)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, Excluded);
        self.by_key
            .range::<str, _>((start, Unbounded))
            .take(limit)
            .map(|(key, metas)| (key.as_str(), metas.iter().map(|t| &t.meta).collect()))
            .collect()
    }

    /// Does anyone track under `key`?
    pub fn has_key(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The meta `member` tracks, if any.
    pub fn meta_of(&self, member: MemberId) -> Option<&Meta> {
        let key = self.key_of.get(&member)?;
        self.by_key[key]
            .iter()
            .find(|t| t.member == member)
            .map(|t| &t.meta)
    }

    /// A bound on the bytes of this channel's `presence_state` payload: the
    /// sum of every meta's [`meta_weight`].
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// Number of distinct keys.
    pub fn key_count(&self) -> usize {
        self.by_key.len()
    }

    /// Number of metas (tracking members).
    pub fn meta_count(&self) -> usize {
        self.key_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(v: serde_json::Value) -> State {
        State::from_value(Some(v)).unwrap()
    }

    #[test]
    fn first_track_joins_identical_retrack_is_noop() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let d = p.track(1, "alice", state(json!({"a": 1})), &refs).unwrap();
        assert_eq!(d.joins.len(), 1);
        assert!(d.leaves.is_empty());
        assert_eq!(d.joins[0].0, "alice");
        assert!(d.joins[0].1.phx_ref_prev.is_none());
        assert!(p.track(1, "alice", state(json!({"a": 1})), &refs).is_none());
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn update_carries_new_join_and_old_leave_with_prev_ref() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let first = p
            .track(1, "alice", state(json!({"s": "on"})), &refs)
            .unwrap();
        let old = first.joins[0].1.clone();
        let d = p
            .track(1, "alice", state(json!({"s": "away"})), &refs)
            .unwrap();
        assert_eq!(d.leaves, vec![("alice".to_string(), old.clone())]);
        let new = &d.joins[0].1;
        assert_ne!(new.phx_ref, old.phx_ref);
        assert_eq!(new.phx_ref_prev.as_deref(), Some(&*old.phx_ref));
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn an_orphan_is_adopted_by_the_same_state_under_the_same_key() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let joined = p.track(1, "u", state(json!({"s": 1})), &refs).unwrap();
        let original = joined.joins[0].1.clone();
        assert!(p.orphan(1));
        assert!(
            !p.orphan(9),
            "nothing to keep for a member that tracked nothing"
        );
        // Another state, or another key: no adoption, a normal join.
        assert!(p.track(2, "u", state(json!({"s": 2})), &refs).is_some());
        assert!(p.track(3, "v", state(json!({"s": 1})), &refs).is_some());
        // The same state under the same key: adopted silently, ref kept.
        assert!(p.track(4, "u", state(json!({"s": 1})), &refs).is_none());
        assert_eq!(p.meta_of(4), Some(&original));
        assert!(!p.is_orphan(1) && p.meta_of(1).is_none());
        assert!(
            p.untrack(1).is_none(),
            "the orphan's own expiry finds nothing"
        );
        assert_eq!(p.meta_count(), 3);
    }

    #[test]
    fn an_orphan_not_adopted_leaves_on_untrack() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        p.track(1, "u", state(json!({})), &refs);
        p.orphan(1);
        let d = p.untrack(1).unwrap();
        assert_eq!(d.leaves.len(), 1);
        assert!(p.is_empty() && !p.is_orphan(1));
    }

    #[test]
    fn insert_replaces_and_net_cancels_a_moved_ref() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let meta = |r: &str| Meta {
            phx_ref: r.into(),
            phx_ref_prev: None,
            state: State::empty(),
        };
        let d = p.insert(1, "u", meta("a"));
        assert_eq!(d.joins.len(), 1);
        assert!(
            p.insert(1, "u", meta("a")).is_empty(),
            "same meta: no change"
        );
        let d = p.insert(1, "u", meta("b"));
        assert_eq!((d.joins.len(), d.leaves.len()), (1, 1));
        // Ref "b" moves from member 1 to member 2: leave + join of one ref.
        let mut moved = p.untrack(1).unwrap();
        moved.extend(p.insert(2, "u", meta("b")));
        assert!(moved.net().is_empty());
        // A real change survives `net`.
        let mut d = p.insert(3, "v", meta("c"));
        d.extend(p.track(2, "u", State::empty(), &refs).unwrap_or_default());
        assert_eq!(d.net().joins.len(), 1);
        assert_eq!(p.meta_count(), 2);
    }

    #[test]
    fn key_changes_are_first_meta_in_and_last_meta_out() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let d = p.track(1, "u", state(json!({"d": 1})), &refs).unwrap();
        assert_eq!(d.key_changes(&p), (vec!["u"], vec![]));
        let d = p.track(2, "u", state(json!({"d": 2})), &refs).unwrap();
        assert_eq!(
            d.key_changes(&p),
            (vec![], vec![]),
            "second meta: key already in"
        );
        let d = p.track(2, "u", state(json!({"d": 3})), &refs).unwrap();
        assert_eq!(d.key_changes(&p), (vec![], vec![]), "an update is neither");
        let d = p.untrack(1).unwrap();
        assert_eq!(d.key_changes(&p), (vec![], vec![]), "one meta left");
        let d = p.untrack(2).unwrap();
        assert_eq!(d.key_changes(&p), (vec![], vec!["u"]));
    }

    #[test]
    fn the_weight_bounds_the_rendered_snapshot() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let keys = [
            "plain",
            "quote\"back\\slash",
            "ctl\u{1}\n\u{1f}",
            "é ü 😀",
            "",
        ];
        for (m, key) in keys.iter().enumerate() {
            let state = State::from_value(Some(serde_json::json!({"s": key, "m": m}))).unwrap();
            p.track(m as u64, key, state.clone(), &refs);
            // A second meta under the same key, and an update with a prev ref.
            p.track(100 + m as u64, key, State::empty(), &refs);
            let other = State::from_value(Some(serde_json::json!({"m": m + 1}))).unwrap();
            p.track(m as u64, key, other, &refs);
            let rendered = p.state_json().len();
            assert!(
                rendered <= p.state_bytes(),
                "{rendered} > {}",
                p.state_bytes()
            );
        }
        for m in 0..keys.len() as u64 {
            p.untrack(m);
            p.untrack(100 + m);
        }
        assert_eq!(p.state_bytes(), 0);
    }

    #[test]
    fn pages_walk_the_keys_in_order() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        for (m, k) in [(1, "c"), (2, "a"), (3, "b"), (4, "a")] {
            p.track(m, k, State::empty(), &refs);
        }
        let first = p.page(None, 2);
        assert_eq!(
            first.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(first[0].1.len(), 2);
        let rest = p.page(Some("b"), 2);
        assert_eq!(rest.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["c"]);
        assert!(p.page(Some("c"), 2).is_empty());
        assert!(p.has_key("a") && !p.has_key("z"));
    }

    #[test]
    fn two_members_share_a_key_and_leave_one_by_one() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        p.track(1, "u", state(json!({"d": "laptop"})), &refs);
        p.track(2, "u", state(json!({"d": "phone"})), &refs);
        assert_eq!(p.key_count(), 1);
        assert_eq!(p.meta_count(), 2);
        let d = p.untrack(2).unwrap();
        assert_eq!(d.leaves[0].1.state, state(json!({"d": "phone"})));
        assert_eq!(p.key_count(), 1);
        p.untrack(1).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.key_count(), 0);
        assert_eq!(p.state_bytes(), 0);
        assert!(p.untrack(1).is_none());
    }
}
