//! A compact presence view for very large rooms (`--views compact`).
//!
//! A full view (the phx-js algorithm over `serde_json` maps) costs a few
//! hundred bytes per member, so 10,000 clients each viewing 10,000 members
//! would need tens of GB. This view keeps 16 bytes per member: the latest
//! meta's `phx_ref` (hashed) and `seq`, and how many other metas the member
//! has; the other metas themselves, and keys from outside the room, go to
//! side maps that stay empty while the server is right. That is all the
//! exactness check reads (one meta per member, at its latest seq, no key
//! from outside the room), and it applies the same semantics: a snapshot
//! replaces the view, a diff's joins go before its leaves, a join of a known
//! ref replaces it, a leave of an unknown ref does nothing, diffs before the
//! join's snapshot wait for it. A property test checks it against
//! `ClientPresence`. Frames are parsed without building `Value`s.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Hash of the latest meta's `phx_ref`.
    ref_hash: u64,
    seq: u32,
    /// Metas beyond one (kept in `CompactView::others`): 0 for a member
    /// that is present once; `u32::MAX` when absent.
    extra: u32,
}

/// A meta as kept: its hashed `phx_ref` and its `seq`.
type Kept = (u64, u32);

const ABSENT: u32 = u32::MAX;

impl Slot {
    fn absent() -> Slot {
        Slot {
            extra: ABSENT,
            ..Slot::default()
        }
    }

    fn present(&self) -> bool {
        self.extra != ABSENT
    }
}

pub struct CompactView {
    /// Member `first + k` is slot `k`.
    first: usize,
    slots: Vec<Slot>,
    /// Slots present, and present with more than one meta: convergence in O(1).
    present: usize,
    doubtful: usize,
    /// The metas before the latest, oldest first, of slots with `extra > 0`.
    others: HashMap<usize, Vec<Kept>>,
    /// Metas under keys that are not members of the room.
    foreign: HashMap<String, Vec<Kept>>,
    synced: bool,
    pending: Vec<String>,
}

/// One meta, with only the fields the check reads.
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    phx_ref: &'a str,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    t: Option<u64>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    metas: Vec<Meta<'a>>,
}

/// A frame's event and raw payload, in either vsn.
pub struct Frame<'a> {
    pub event: &'a str,
    pub payload: &'a RawValue,
}

#[derive(Deserialize)]
struct V2<'a>(
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    &'a str,
    #[serde(borrow)] &'a RawValue,
);

#[derive(Deserialize)]
struct V1<'a> {
    event: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

pub fn parse_frame(text: &str) -> Option<Frame<'_>> {
    if text.starts_with('[') {
        let V2(_, _, _, event, payload) = serde_json::from_str(text).ok()?;
        Some(Frame { event, payload })
    } else {
        let V1 { event, payload } = serde_json::from_str(text).ok()?;
        Some(Frame { event, payload })
    }
}

/// The keys a `presence_diff` payload's `leaves` name.
pub fn leave_keys(payload: &RawValue) -> serde_json::Result<Vec<&str>> {
    #[derive(Deserialize)]
    struct Leaves<'a> {
        #[serde(borrow, default)]
        leaves: HashMap<&'a str, IgnoredAny>,
    }
    let diff: Leaves = serde_json::from_str(payload.get())?;
    Ok(diff.leaves.into_keys().collect())
}

fn hash_ref(phx_ref: &str) -> u64 {
    let mut h = DefaultHasher::new();
    phx_ref.hash(&mut h);
    h.finish() | 1 // never 0, which means "unknown"
}

/// Calls `f(key, entry)` for each entry of a JSON object, without a map.
struct EachEntry<F>(F);

impl<'de, F: FnMut(&'de str, Entry<'de>)> Visitor<'de> for EachEntry<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a presence map")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de str>()? {
            let entry: Entry<'de> = map.next_value()?;
            (self.0)(key, entry);
        }
        Ok(())
    }
}

impl<'de, F: FnMut(&'de str, Entry<'de>)> DeserializeSeed<'de> for EachEntry<F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// A diff's two maps, each walked by `EachEntry`.
struct DiffVisitor<'v> {
    view: &'v mut CompactView,
    latencies: Option<(u64, &'v mut Vec<f64>)>,
}

impl<'de> Visitor<'de> for DiffVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a presence diff")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let DiffVisitor {
            view,
            mut latencies,
        } = self;
        // Applied as read: Roster sends joins before leaves, the order in
        // which phx-js applies them.
        while let Some(field) = map.next_key::<&'de str>()? {
            match field {
                "joins" => map.next_value_seed(EachEntry(|key, entry: Entry<'de>| {
                    if let Some((now, out)) = latencies.as_mut() {
                        out.extend(
                            entry
                                .metas
                                .iter()
                                .filter_map(|m| m.t)
                                .map(|t| now.saturating_sub(t) as f64 / 1000.0),
                        );
                    }
                    view.join(key, &entry.metas);
                }))?,
                "leaves" => map.next_value_seed(EachEntry(|key, entry: Entry<'de>| {
                    view.leave(key, &entry.metas)
                }))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl CompactView {
    pub fn new(members: std::ops::Range<usize>) -> Self {
        CompactView {
            first: members.start,
            slots: vec![Slot::absent(); members.len()],
            present: 0,
            doubtful: 0,
            others: HashMap::new(),
            foreign: HashMap::new(),
            synced: false,
            pending: Vec::new(),
        }
    }

    pub fn rejoined(&mut self) {
        self.synced = false;
        self.pending.clear();
    }

    /// `members` members present, each with one meta, and nothing else.
    pub fn converged(&self, members: usize) -> bool {
        self.present == members && self.doubtful == 0 && self.foreign.is_empty()
    }

    /// (missing, ghosts) against each member's latest seq; a member whose
    /// `want_seq` is `None` must be absent (all its metas are ghosts).
    pub fn check(&self, want_seq: impl Fn(usize) -> Option<u64>) -> (usize, usize) {
        let mut missing = 0;
        let mut ghosts: usize = self.foreign.values().map(Vec::len).sum();
        for (k, slot) in self.slots.iter().enumerate() {
            let want = match (slot.present(), want_seq(self.first + k)) {
                (false, None) => continue,
                (false, Some(_)) => {
                    missing += 1;
                    continue;
                }
                (true, None) => {
                    ghosts += 1 + slot.extra as usize;
                    continue;
                }
                (true, Some(want)) => want,
            };
            ghosts += slot.extra as usize;
            // As the full view counts: missing unless some meta has the seq.
            let others = self.others.get(&k).map_or(&[][..], Vec::as_slice);
            if u64::from(slot.seq) != want && !others.iter().any(|m| u64::from(m.1) == want) {
                missing += 1;
            }
        }
        (missing, ghosts)
    }

    fn index(&self, key: &str) -> Option<usize> {
        let i: usize = key.strip_prefix('u')?.parse().ok()?;
        let k = i.checked_sub(self.first)?;
        (k < self.slots.len()).then_some(k)
    }

    fn set(&mut self, k: usize, new: Slot) {
        let old = self.slots[k];
        self.present = self.present + new.present() as usize - old.present() as usize;
        let doubtful = |s: Slot| (s.present() && s.extra > 0) as usize;
        self.doubtful = self.doubtful + doubtful(new) - doubtful(old);
        self.slots[k] = new;
    }

    /// Slot `k`'s metas, oldest first (taken out; `put` puts them back).
    fn take(&mut self, k: usize) -> Vec<Kept> {
        let slot = self.slots[k];
        if !slot.present() {
            return Vec::new();
        }
        let mut metas = self.others.remove(&k).unwrap_or_default();
        metas.push((slot.ref_hash, slot.seq));
        metas
    }

    fn put(&mut self, k: usize, mut metas: Vec<Kept>) {
        let slot = match metas.pop() {
            None => Slot::absent(),
            Some((ref_hash, seq)) => Slot {
                ref_hash,
                seq,
                extra: metas.len() as u32,
            },
        };
        if !metas.is_empty() {
            self.others.insert(k, metas);
        }
        self.set(k, slot);
    }

    /// phx-js: a joined ref replaces the key's meta of that ref, and the
    /// joined metas go last (the latest).
    fn join(&mut self, key: &str, metas: &[Meta]) {
        let joined = metas.iter().map(|m| (hash_ref(m.phx_ref), m.seq as u32));
        let Some(k) = self.index(key) else {
            let kept = self.foreign.entry(key.to_owned()).or_default();
            for m in joined {
                kept.retain(|o| o.0 != m.0);
                kept.push(m);
            }
            return;
        };
        // The common cases, one meta joining a member absent or present
        // under the same ref, without a Vec.
        let slot = self.slots[k];
        if let [m] = metas {
            let h = hash_ref(m.phx_ref);
            if !slot.present() || (slot.extra == 0 && slot.ref_hash == h) {
                let new = Slot {
                    ref_hash: h,
                    seq: m.seq as u32,
                    extra: 0,
                };
                return self.set(k, new);
            }
        }
        let mut kept = self.take(k);
        for m in joined {
            kept.retain(|o| o.0 != m.0);
            kept.push(m);
        }
        self.put(k, kept);
    }

    /// phx-js: the leaving refs go; refs the key does not have change nothing.
    fn leave(&mut self, key: &str, metas: &[Meta]) {
        let leaving = |h: u64| metas.iter().any(|m| hash_ref(m.phx_ref) == h);
        let Some(k) = self.index(key) else {
            if let Some(kept) = self.foreign.get_mut(key) {
                kept.retain(|o| !leaving(o.0));
                if kept.is_empty() {
                    self.foreign.remove(key);
                }
            }
            return;
        };
        let slot = self.slots[k];
        if !slot.present() {
            return;
        }
        if slot.extra == 0 {
            // The common case, a member with one meta, without a Vec.
            if leaving(slot.ref_hash) {
                self.set(k, Slot::absent());
            }
            return;
        }
        let mut kept = self.take(k);
        kept.retain(|o| !leaving(o.0));
        self.put(k, kept);
    }

    #[cfg(test)]
    fn members(&self) -> std::collections::BTreeMap<String, (usize, Vec<Kept>)> {
        let mut out = std::collections::BTreeMap::new();
        let mut add = |key: String, mut metas: Vec<Kept>| {
            metas.sort_unstable();
            out.insert(key, (metas.len(), metas));
        };
        for (key, metas) in &self.foreign {
            add(key.clone(), metas.clone());
        }
        for (k, slot) in self.slots.iter().enumerate() {
            if slot.present() {
                let mut metas = self.others.get(&k).cloned().unwrap_or_default();
                metas.push((slot.ref_hash, slot.seq));
                add(format!("u{}", self.first + k), metas);
            }
        }
        out
    }

    /// Apply a `presence_state`: it replaces the view.
    pub fn on_state(&mut self, payload: &RawValue) -> serde_json::Result<()> {
        for k in 0..self.slots.len() {
            self.set(k, Slot::absent());
        }
        self.others.clear();
        self.foreign.clear();
        let mut d = serde_json::Deserializer::from_str(payload.get());
        EachEntry(|key, entry: Entry| self.join(key, &entry.metas)).deserialize(&mut d)?;
        self.synced = true;
        for diff in std::mem::take(&mut self.pending) {
            self.apply_diff(&diff, None)?;
        }
        Ok(())
    }

    /// Apply a `presence_diff`, or keep it until the join's snapshot. With
    /// `latencies`, the join metas' `t` (µs) are turned into ms before `now`.
    pub fn on_diff(
        &mut self,
        payload: &RawValue,
        latencies: Option<(u64, &mut Vec<f64>)>,
    ) -> serde_json::Result<()> {
        if !self.synced {
            self.pending.push(payload.get().to_owned());
            return Ok(());
        }
        self.apply_diff(payload.get(), latencies)
    }

    fn apply_diff(
        &mut self,
        json: &str,
        latencies: Option<(u64, &mut Vec<f64>)>,
    ) -> serde_json::Result<()> {
        let mut d = serde_json::Deserializer::from_str(json);
        d.deserialize_map(DiffVisitor {
            view: self,
            latencies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn snapshot_then_diffs_match_the_truth() {
        let mut v = CompactView::new(10..13);
        v.rejoined();
        // A diff before the snapshot waits for it.
        v.on_diff(
            &raw(r#"{"joins":{"u12":{"metas":[{"phx_ref":"c","seq":1}]}},"leaves":{}}"#),
            None,
        )
        .unwrap();
        v.on_state(&raw(
            r#"{"u10":{"metas":[{"phx_ref":"a","seq":1}]},"u11":{"metas":[{"phx_ref":"b","seq":1}]}}"#,
        ))
        .unwrap();
        assert!(v.converged(3));
        assert_eq!(v.check(|_| Some(1)), (0, 0));
        // A re-track: the new ref joins, the old leaves.
        v.on_diff(
            &raw(r#"{"joins":{"u11":{"metas":[{"phx_ref":"b2","seq":2}]}},"leaves":{"u11":{"metas":[{"phx_ref":"b","seq":1}]}}}"#),
            None,
        )
        .unwrap();
        assert_eq!(v.check(|i| Some(if i == 11 { 2 } else { 1 })), (0, 0));
        assert_eq!(
            v.check(|_| Some(1)),
            (1, 0),
            "a stale seq counts as missing"
        );
    }

    #[test]
    fn ghosts_foreign_keys_and_leaves_are_counted() {
        let mut v = CompactView::new(0..2);
        v.on_state(&raw(r#"{"u0":{"metas":[{"phx_ref":"a","seq":1},{"phx_ref":"x","seq":1}]},"zz":{"metas":[{"phx_ref":"z"}]}}"#))
            .unwrap();
        assert!(!v.converged(2));
        // u0 has a second meta (ghost), zz is foreign, u1 is missing.
        assert_eq!(v.check(|_| Some(1)), (1, 2));
        v.on_diff(
            &raw(r#"{"joins":{"u1":{"metas":[{"phx_ref":"b","seq":1}]}},"leaves":{"u0":{"metas":[{"phx_ref":"x"}]},"zz":{"metas":[{"phx_ref":"z"}]}}}"#),
            None,
        )
        .unwrap();
        // u0's latest left: the meta before it is the latest again.
        assert_eq!(v.check(|_| Some(1)), (0, 0));
        assert!(v.converged(2));
        // Leaves of refs u0 does not have change nothing.
        v.on_diff(
            &raw(r#"{"joins":{},"leaves":{"u0":{"metas":[{"phx_ref":"x"}]},"zz":{"metas":[{"phx_ref":"z"}]}}}"#),
            None,
        )
        .unwrap();
        assert!(v.converged(2));
        v.on_diff(
            &raw(r#"{"joins":{"u0":{"metas":[{"phx_ref":"a2","seq":1}]}},"leaves":{"u0":{"metas":[{"phx_ref":"a"}]}}}"#),
            None,
        )
        .unwrap();
        assert!(v.converged(2));
        assert_eq!(v.check(|_| Some(1)), (0, 0));
    }

    #[test]
    fn members_that_must_be_gone_count_as_ghosts_until_they_leave() {
        let mut v = CompactView::new(0..3);
        v.on_state(&raw(
            r#"{"u0":{"metas":[{"phx_ref":"a","seq":1}]},"u1":{"metas":[{"phx_ref":"b","seq":1}]},"u2":{"metas":[{"phx_ref":"c","seq":1}]}}"#,
        ))
        .unwrap();
        // u1's node died: it must go, the others stay.
        let alive = |k: usize| (k != 1).then_some(1);
        assert_eq!(v.check(alive), (0, 1));
        assert!(!v.converged(2));
        let diff = raw(r#"{"joins":{},"leaves":{"u1":{"metas":[{"phx_ref":"b","seq":1}]}}}"#);
        assert_eq!(leave_keys(&diff).unwrap(), ["u1"]);
        v.on_diff(&diff, None).unwrap();
        assert!(v.converged(2));
        assert_eq!(v.check(alive), (0, 0));
    }

    #[test]
    fn parses_both_vsns() {
        let f = parse_frame(r#"[null,null,"realtime:r","presence_diff",{"joins":{},"leaves":{}}]"#)
            .unwrap();
        assert_eq!(f.event, "presence_diff");
        let f = parse_frame(
            r#"{"topic":"realtime:r","event":"presence_state","payload":{},"ref":null}"#,
        )
        .unwrap();
        assert_eq!((f.event, f.payload.get()), ("presence_state", "{}"));
    }

    /// The compact view against the phx-js algorithm (`ClientPresence`),
    /// fed the same random snapshots and diffs.
    mod against_client_presence {
        use super::*;
        use proptest::prelude::*;
        use roster_presence::ClientPresence;
        use serde_json::{json, Value};
        use std::collections::BTreeMap;

        /// Members are u1..=u3; u0, u4 and zz are keys from outside the room.
        const KEYS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "zz"];
        fn members() -> std::ops::Range<usize> {
            1..4
        }

        #[derive(Clone, Debug)]
        enum Op {
            State(Value),
            Diff(Value),
            Rejoined,
        }

        /// `{key: {metas: [{phx_ref, seq}]}}` with distinct refs per key
        /// and no empty lists (the server sends neither).
        fn presences() -> impl Strategy<Value = Value> {
            let metas = prop::collection::vec((0..6usize, 0..3u64), 1..4);
            prop::collection::btree_map(0..KEYS.len(), metas, 0..4).prop_map(|m| {
                let mut out = serde_json::Map::new();
                for (k, metas) in m {
                    let mut seen = Vec::new();
                    let metas: Vec<Value> = metas
                        .into_iter()
                        .filter(|(r, _)| {
                            let new = !seen.contains(r);
                            seen.push(*r);
                            new
                        })
                        .map(|(r, seq)| json!({"phx_ref": format!("r{r}"), "seq": seq}))
                        .collect();
                    out.insert(KEYS[k].to_owned(), json!({ "metas": metas }));
                }
                Value::Object(out)
            })
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                1 => presences().prop_map(Op::State),
                6 => (presences(), presences())
                    .prop_map(|(joins, leaves)| Op::Diff(json!({"joins": joins, "leaves": leaves}))),
                1 => Just(Op::Rejoined),
            ]
        }

        /// key → (metas, seqs of the metas) in the full view.
        fn full_members(p: &ClientPresence) -> BTreeMap<String, (usize, Vec<(u64, u32)>)> {
            p.view()
                .iter()
                .map(|(key, metas)| {
                    let mut all: Vec<(u64, u32)> = metas
                        .iter()
                        .map(|m| {
                            let r = m["phx_ref"].as_str().unwrap();
                            (hash_ref(r), m["seq"].as_u64().unwrap() as u32)
                        })
                        .collect();
                    all.sort_unstable();
                    (key.clone(), (metas.len(), all))
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn agrees_on_members_after_each_step(ops in prop::collection::vec(op(), 1..12)) {
                let mut compact = CompactView::new(members());
                let mut full = ClientPresence::silent();
                for op in &ops {
                    match op {
                        Op::State(p) => {
                            full.on_state(p).unwrap();
                            compact.on_state(&raw(&p.to_string())).unwrap();
                        }
                        Op::Diff(p) => {
                            full.on_diff(p).unwrap();
                            compact.on_diff(&raw(&p.to_string()), None).unwrap();
                        }
                        Op::Rejoined => {
                            full.rejoined();
                            compact.rejoined();
                        }
                    }
                    prop_assert_eq!(compact.members(), full_members(&full), "after {:?}", op);
                    let n = members().len();
                    // Every member once and nothing else (`View::converged` counts
                    // keys only, so a foreign key can stand in for a missing member).
                    let converged = full.view().len() == n
                        && members().all(|k| full.view().get(&format!("u{k}")).is_some_and(|m| m.len() == 1));
                    prop_assert_eq!(compact.converged(n), converged, "after {:?}", op);
                    for want in 0..3 {
                        // The exactness check's rule: a member counts as missing
                        // unless one of its metas has the seq wanted.
                        let missing = members()
                            .filter(|k| {
                                full.view().get(&format!("u{k}")).is_none_or(|metas| {
                                    !metas.iter().any(|m| m["seq"].as_u64() == Some(want))
                                })
                            })
                            .count();
                        let ghosts = full.view().values().map(|m| m.len()).sum::<usize>()
                            - (n - members()
                                .filter(|k| !full.view().contains_key(&format!("u{k}")))
                                .count());
                        prop_assert_eq!(compact.check(|_| Some(want)), (missing, ghosts), "after {:?}", op);
                    }
                }
            }
        }
    }
}
