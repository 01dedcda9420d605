//! A node's copy of one channel's presence in Redis, kept in Redis's order.
//!
//! Every change in Redis carries `(epoch, seq)`: `seq` counts the channel's
//! changes, `epoch` names the life of its keys (a Redis that lost its data
//! starts a new one). Updates are applied strictly in `seq` order; one
//! that arrives early waits in `pending`; an old one is dropped. A snapshot
//! (taken after subscribing) resets the replica, so a joiner's state plus
//! the updates after it miss nothing and repeat nothing. No I/O here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use roster_presence::{ChannelPresence, Diff, MemberId};

use super::wire::{decode_entry, Update};

/// Replica member ids live in their own space, above the sockets' ids.
static NEXT_REPLICA_ID: AtomicU64 = AtomicU64::new(1 << 62);

/// A channel's entries at one `(epoch, seq)`, as the snapshot script returns them.
pub struct Snapshot {
    pub epoch: Arc<str>,
    pub seq: u64,
    /// member id → entry text
    pub entries: Vec<(String, String)>,
}

/// What an update did.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Applied (maybe with parked successors); the diff for local clients.
    Applied(Diff),
    /// Already seen: dropped.
    Stale,
    /// Ahead of a missing update, or before the first snapshot: parked.
    Parked,
    /// From another epoch: the replica must be rebuilt from a snapshot.
    Resync,
}

#[derive(Default)]
pub struct Replica {
    /// `None` until the first snapshot.
    epoch: Option<Arc<str>>,
    seq: u64,
    pending: BTreeMap<u64, Update>,
    /// Redis member id → the id its meta has in `presence`.
    ids: HashMap<Arc<str>, MemberId>,
    /// This node's id, to tell its own updates from others'.
    own: Arc<str>,
    /// Park every update until the next snapshot (after Redis may have
    /// lost or rewound data, `(epoch, seq)` no longer names the contents).
    holding: bool,
    /// Key-level changes made by this node, as they were applied: the
    /// events this node (and no other) reports to webhooks.
    pub own_key_changes: Vec<(Vec<String>, Vec<String>)>,
}

impl Replica {
    pub fn is_synced(&self) -> bool {
        self.epoch.is_some()
    }

    pub fn position(&self) -> Option<(&str, u64)> {
        self.epoch.as_deref().map(|e| (e, self.seq))
    }

    /// Whether updates are waiting for a missing predecessor.
    pub fn has_gap(&self) -> bool {
        !self.holding && !self.pending.is_empty()
    }

    /// Apply nothing until the next snapshot, which is then installed
    /// whatever its `(epoch, seq)`: see `holding`.
    pub fn hold(&mut self) {
        self.holding = true;
        self.pending.clear();
    }

    /// Set this node's id (it changes when the node was declared dead).
    pub fn set_own(&mut self, nid: &Arc<str>) {
        if self.own != *nid {
            self.own = nid.clone();
        }
    }

    /// Take in one update (from pub/sub or from our own write's reply).
    pub fn receive(&mut self, update: Update, presence: &mut ChannelPresence) -> Received {
        if self.holding {
            self.pending.insert(update.seq, update);
            return Received::Parked;
        }
        let Some(epoch) = &self.epoch else {
            self.pending.insert(update.seq, update);
            return Received::Parked;
        };
        if update.epoch != *epoch {
            self.pending.insert(update.seq, update);
            return Received::Resync;
        }
        if update.seq <= self.seq {
            return Received::Stale;
        }
        self.pending.insert(update.seq, update);
        let diff = self.drain(presence);
        if diff.is_empty() && self.has_gap() {
            Received::Parked
        } else {
            Received::Applied(diff)
        }
    }

    /// Apply parked updates while they follow on.
    fn drain(&mut self, presence: &mut ChannelPresence) -> Diff {
        let mut diff = Diff::default();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.seq + 1 {
                break;
            }
            let update = entry.remove();
            if update.seq <= self.seq || Some(&update.epoch) != self.epoch.as_ref() {
                continue;
            }
            self.seq = update.seq;
            let mut this = Diff::default();
            for change in update.changes {
                if change.join {
                    let id = self.id_of(&change.mid);
                    this.extend(presence.insert(id, &change.key, change.meta));
                } else if let Some(id) = self.ids.remove(&change.mid) {
                    this.extend(presence.untrack(id).unwrap_or_default());
                }
            }
            let this = this.net();
            if update.origin == self.own {
                let (joined, left) = this.key_changes(presence);
                if !joined.is_empty() || !left.is_empty() {
                    let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
                    self.own_key_changes.push((owned(joined), owned(left)));
                }
            }
            diff.extend(this);
        }
        diff
    }

    fn id_of(&mut self, mid: &Arc<str>) -> MemberId {
        *self
            .ids
            .entry(mid.clone())
            .or_insert_with(|| NEXT_REPLICA_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// Rebuild from a snapshot; returns what changed for clients that
    /// already had the old state (nothing on a first sync, and nothing
    /// when every entry came back with the same ref).
    ///
    /// After a hold (Redis may have come back from an old dump), entries of
    /// nodes without a live lease (`is_live` false) are not taken from the
    /// snapshot: they may be stale, and their owner cannot correct them;
    /// the reaper removes them from Redis, and that leave reaches clients.
    pub fn install(
        &mut self,
        snapshot: Snapshot,
        presence: &mut ChannelPresence,
        is_live: &dyn Fn(&str) -> bool,
    ) -> Diff {
        let forced = std::mem::take(&mut self.holding);
        if !forced && self.epoch.as_ref() == Some(&snapshot.epoch) && snapshot.seq <= self.seq {
            // Updates overtook the snapshot: the replica is already newer.
            return Diff::default();
        }
        let mut diff = Diff::default();
        let mut fresh: HashMap<Arc<str>, (String, roster_presence::Meta)> = HashMap::new();
        for (mid, text) in snapshot.entries {
            match decode_entry(&text) {
                Some(entry) => {
                    fresh.insert(Arc::from(mid), entry);
                }
                None => tracing::warn!(mid, "unreadable presence entry in Redis, skipped"),
            }
        }
        let gone: Vec<Arc<str>> = self
            .ids
            .keys()
            .filter(|mid| !fresh.contains_key(*mid))
            .cloned()
            .collect();
        for mid in gone {
            let id = self.ids.remove(&mid).expect("listed above");
            diff.extend(presence.untrack(id).unwrap_or_default());
        }
        for (mid, (key, meta)) in fresh {
            let owner = mid.split('|').next().unwrap_or_default();
            if forced && !is_live(owner) {
                continue;
            }
            let id = self.id_of(&mid);
            diff.extend(presence.insert(id, &key, meta));
        }
        self.pending
            .retain(|&seq, u| u.epoch == snapshot.epoch && seq > snapshot.seq);
        self.epoch = Some(snapshot.epoch);
        self.seq = snapshot.seq;
        diff.extend(self.drain(presence));
        diff.net()
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{encode_entry, Change};
    use super::*;
    use roster_presence::{Meta, State};

    fn meta(r: &str) -> Meta {
        Meta {
            phx_ref: r.into(),
            phx_ref_prev: None,
            state: State::empty(),
        }
    }

    fn update(epoch: &str, seq: u64, changes: &[(bool, &str, &str)]) -> Update {
        Update {
            epoch: epoch.into(),
            seq,
            origin: "x".into(),
            changes: changes
                .iter()
                .map(|&(join, mid, r)| Change {
                    join,
                    mid: mid.into(),
                    key: "k".into(),
                    meta: meta(r),
                })
                .collect(),
        }
    }

    fn snapshot(epoch: &str, seq: u64, entries: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            epoch: epoch.into(),
            seq,
            entries: entries
                .iter()
                .map(|&(mid, r)| (mid.to_owned(), encode_entry("k", &meta(r))))
                .collect(),
        }
    }

    #[test]
    fn updates_before_the_snapshot_are_dropped_and_after_it_applied_in_order() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        assert_eq!(
            r.receive(update("e", 2, &[(true, "n|2", "b")]), &mut p),
            Received::Parked
        );
        assert_eq!(
            r.receive(update("e", 4, &[(true, "n|4", "d")]), &mut p),
            Received::Parked
        );
        // The snapshot already contains seq 1 and 2.
        let d = r.install(
            snapshot("e", 2, &[("n|1", "a"), ("n|2", "b")]),
            &mut p,
            &|_| true,
        );
        assert_eq!(d.joins.len(), 2, "first sync: everything is new");
        assert_eq!(p.meta_count(), 2);
        assert!(r.has_gap(), "seq 4 waits for 3");
        let Received::Applied(d) = r.receive(update("e", 3, &[(false, "n|1", "a")]), &mut p) else {
            panic!("3 follows 2")
        };
        assert_eq!(
            (d.joins.len(), d.leaves.len()),
            (1, 1),
            "3 then the parked 4"
        );
        assert_eq!(r.receive(update("e", 3, &[]), &mut p), Received::Stale);
        assert_eq!(r.position(), Some(("e", 4)));
        assert!(!r.has_gap());
    }

    #[test]
    fn a_new_epoch_asks_for_a_resync_which_reports_only_real_changes() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        r.install(
            snapshot("e1", 5, &[("a|1", "r1"), ("b|1", "r2")]),
            &mut p,
            &|_| true,
        );
        assert_eq!(
            r.receive(update("e2", 1, &[(true, "a|1", "r1")]), &mut p),
            Received::Resync
        );
        // Redis came back empty; node a re-asserted its entry (same ref),
        // node b did not, node c joined.
        let d = r.install(
            snapshot("e2", 2, &[("a|1", "r1"), ("c|1", "r3")]),
            &mut p,
            &|_| true,
        );
        let refs = |v: &Vec<(String, Meta)>| {
            v.iter()
                .map(|(_, m)| m.phx_ref.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(refs(&d.joins), ["r3"]);
        assert_eq!(refs(&d.leaves), ["r2"]);
        assert_eq!(p.meta_count(), 2);
    }

    #[test]
    fn a_snapshot_older_than_the_replica_is_ignored() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        r.install(snapshot("e", 1, &[("a|1", "r1")]), &mut p, &|_| true);
        r.receive(update("e", 2, &[(true, "a|2", "r2")]), &mut p);
        assert!(r
            .install(snapshot("e", 1, &[("a|1", "r1")]), &mut p, &|_| true)
            .is_empty());
        assert_eq!((p.meta_count(), r.position()), (2, Some(("e", 2))));
    }

    #[test]
    fn after_hold_a_snapshot_with_a_rewound_seq_is_installed_by_contents() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        r.install(
            snapshot("e", 9, &[("a|1", "r1"), ("dead|1", "r2")]),
            &mut p,
            &|_| true,
        );
        r.hold();
        // Redis came back from an old dump; re-asserts and a reap brought
        // its seq back to 9 with other contents. Those updates are parked.
        assert_eq!(
            r.receive(update("e", 9, &[(false, "dead|1", "r2")]), &mut p),
            Received::Parked
        );
        let d = r.install(snapshot("e", 9, &[("a|1", "r1")]), &mut p, &|n| n == "a");
        assert_eq!(d.leaves.len(), 1, "the dead entry leaves: {d:?}");
        assert!(d.joins.is_empty());
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn after_hold_a_dead_owners_stale_entries_are_not_resurrected() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        r.install(
            snapshot("e", 9, &[("a|1", "r1"), ("dead|1", "new")]),
            &mut p,
            &|_| true,
        );
        r.hold();
        // An old dump has the dead node's older meta, and one it had removed.
        let old = snapshot(
            "e",
            9,
            &[("a|1", "r1"), ("dead|1", "old"), ("dead|2", "gone")],
        );
        assert!(r.install(old, &mut p, &|n| n == "a").is_empty());
        // The reaper then removes the stale entry: clients see the meta they had leave.
        let Received::Applied(d) = r.receive(update("e", 10, &[(false, "dead|1", "old")]), &mut p)
        else {
            panic!("10 follows 9")
        };
        assert_eq!(d.leaves[0].1.phx_ref.as_ref(), "new");
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn a_ref_moving_to_a_new_member_id_is_no_change() {
        let mut p = ChannelPresence::new();
        let mut r = Replica::default();
        r.install(snapshot("e", 1, &[("old|1", "r1")]), &mut p, &|_| true);
        let d = r.install(snapshot("e", 3, &[("new|1", "r1")]), &mut p, &|_| true);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p.meta_count(), 1);
    }
}
