//! A compact presence view for very large rooms (`--views compact`).
//!
//! A full view (the phx-js algorithm over `serde_json` maps) costs a few
//! hundred bytes per member, so 10,000 clients each viewing 10,000 members
//! would need tens of GB. This view keeps 16 bytes per member: the latest
//! meta's `phx_ref` (hashed) and `seq`, and how many other metas the member
//! has. That is all the exactness check reads (one meta per member, at its
//! latest seq, no key from outside the room), and it applies the same
//! semantics: a snapshot replaces the view, a diff's joins go before its
//! leaves, a join of a known ref replaces it, diffs before the join's
//! snapshot wait for it. Frames are parsed without building `Value`s.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Hash of the latest meta's `phx_ref`; 0 when that meta is unknown.
    ref_hash: u64,
    seq: u32,
    /// Metas beyond one: 0 for a member that is present once; `u32::MAX` when absent.
    extra: u32,
}

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
    /// Slots present, and present but not exactly one known meta: convergence in O(1).
    present: usize,
    doubtful: usize,
    /// Metas under keys that are not members of the room.
    foreign: usize,
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
            foreign: 0,
            synced: false,
            pending: Vec::new(),
        }
    }

    pub fn rejoined(&mut self) {
        self.synced = false;
        self.pending.clear();
    }

    pub fn converged(&self) -> bool {
        self.present == self.slots.len() && self.doubtful == 0 && self.foreign == 0
    }

    /// (missing, ghosts) against each member's latest seq.
    pub fn check(&self, want_seq: impl Fn(usize) -> u64) -> (usize, usize) {
        let mut missing = 0;
        let mut ghosts = self.foreign;
        for (k, slot) in self.slots.iter().enumerate() {
            if !slot.present() {
                missing += 1;
                continue;
            }
            ghosts += slot.extra as usize;
            if slot.ref_hash == 0 || u64::from(slot.seq) != want_seq(self.first + k) {
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
        let doubtful = |s: Slot| (s.present() && (s.extra > 0 || s.ref_hash == 0)) as usize;
        self.doubtful = self.doubtful + doubtful(new) - doubtful(old);
        self.slots[k] = new;
    }

    fn join(&mut self, key: &str, metas: &[Meta]) {
        let Some(k) = self.index(key) else {
            self.foreign += metas.len();
            return;
        };
        let mut slot = self.slots[k];
        for m in metas {
            let h = hash_ref(m.phx_ref);
            if !slot.present() {
                slot.extra = 0;
            } else if slot.ref_hash != h {
                // Another meta under the same key: the old latest becomes an extra.
                slot.extra += 1;
            }
            slot.ref_hash = h;
            slot.seq = m.seq as u32;
        }
        self.set(k, slot);
    }

    fn leave(&mut self, key: &str, metas: &[Meta]) {
        let Some(k) = self.index(key) else {
            self.foreign = self.foreign.saturating_sub(metas.len());
            return;
        };
        let mut slot = self.slots[k];
        for m in metas {
            if !slot.present() {
                break;
            }
            if slot.ref_hash == hash_ref(m.phx_ref) {
                if slot.extra == 0 {
                    slot = Slot::absent();
                } else {
                    // The latest left; which other remains is not kept.
                    slot.extra -= 1;
                    slot.ref_hash = 0;
                }
            } else if slot.extra > 0 {
                slot.extra -= 1;
            }
        }
        self.set(k, slot);
    }

    /// Apply a `presence_state`: it replaces the view.
    pub fn on_state(&mut self, payload: &RawValue) -> serde_json::Result<()> {
        for k in 0..self.slots.len() {
            self.set(k, Slot::absent());
        }
        self.foreign = 0;
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
        assert!(v.converged());
        assert_eq!(v.check(|_| 1), (0, 0));
        // A re-track: the new ref joins, the old leaves.
        v.on_diff(
            &raw(r#"{"joins":{"u11":{"metas":[{"phx_ref":"b2","seq":2}]}},"leaves":{"u11":{"metas":[{"phx_ref":"b","seq":1}]}}}"#),
            None,
        )
        .unwrap();
        assert_eq!(v.check(|i| if i == 11 { 2 } else { 1 }), (0, 0));
        assert_eq!(v.check(|_| 1), (1, 0), "a stale seq counts as missing");
    }

    #[test]
    fn ghosts_foreign_keys_and_leaves_are_counted() {
        let mut v = CompactView::new(0..2);
        v.on_state(&raw(r#"{"u0":{"metas":[{"phx_ref":"a","seq":1},{"phx_ref":"x","seq":1}]},"zz":{"metas":[{"phx_ref":"z"}]}}"#))
            .unwrap();
        assert!(!v.converged());
        // u0 has a second meta (ghost), zz is foreign, u1 is missing.
        assert_eq!(v.check(|_| 1), (1, 2));
        v.on_diff(
            &raw(r#"{"joins":{"u1":{"metas":[{"phx_ref":"b","seq":1}]}},"leaves":{"u0":{"metas":[{"phx_ref":"x"}]},"zz":{"metas":[{"phx_ref":"z"}]}}}"#),
            None,
        )
        .unwrap();
        // u0's latest left: its remaining meta is not known, so u0 counts as missing.
        assert_eq!(v.check(|_| 1), (1, 0));
        assert!(!v.converged());
        v.on_diff(
            &raw(r#"{"joins":{"u0":{"metas":[{"phx_ref":"a2","seq":1}]}},"leaves":{"u0":{"metas":[{"phx_ref":"a"}]}}}"#),
            None,
        )
        .unwrap();
        assert!(v.converged());
        assert_eq!(v.check(|_| 1), (0, 0));
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
}
