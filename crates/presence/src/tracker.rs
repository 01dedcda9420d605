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

/// How a member's change of state reaches the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Updates {
    /// Supabase's: the new meta joins under a new ref and the old one
    /// leaves, so clients fire a `join` and a `leave`.
    #[default]
    Classic,
    /// The new meta replaces the old one under the same ref, sent as a join
    /// alone: the official clients fire one `join` (the old meta in its
    /// `current`) and no `leave`, and keep only the new meta.
    Replace,
}

/// A published meta whose state changed in place (same key, same ref).
///
/// The new meta's `phx_ref_prev` is its own `phx_ref` ([`Meta::is_replaced`]):
/// the official clients reconcile a `presence_state` by ref only, so a
/// client that missed the update (it was reconnecting) would keep the old
/// state; such metas are sent again after a joiner's snapshot
/// ([`ChannelPresence::replaced_json_before`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaUpdate {
    pub key: String,
    /// The meta as clients last saw it.
    pub old: Meta,
    /// The meta now: `old`'s refs, a new state.
    pub new: Meta,
}

/// What changed, to send to every member as one `presence_diff`.
///
/// A ref appears at most once across `joins`, `leaves` and `updates`. A
/// classic update carries the new meta in `joins` and the old one in
/// `leaves`, under the same key; a replace update is one entry of
/// `updates`, which goes out in the payload's `joins`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub joins: Vec<(String, Meta)>,
    pub leaves: Vec<(String, Meta)>,
    pub updates: Vec<MetaUpdate>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.updates.is_empty()
    }

    /// Append `other` (a later change) to this diff.
    pub fn extend(&mut self, other: Diff) {
        self.joins.extend(other.joins);
        self.leaves.extend(other.leaves);
        self.updates.extend(other.updates);
    }

    /// Fold a later diff into this one (coalescing a window of changes into
    /// one diff): the net effect per ref. A ref that joined in this window
    /// and leaves again was never published, so it just goes; a published
    /// ref that left and comes back (same key) is no change at all, or an
    /// update if its state changed meanwhile; an updated ref that leaves
    /// leaves as clients last saw it. A ref is in at most one list of the
    /// result.
    pub fn absorb(&mut self, later: Diff) {
        let find = |list: &[(String, Meta)], key: &str, r: &str| {
            list.iter().position(|(k, m)| k == key && *m.phx_ref == *r)
        };
        let find_update = |list: &[MetaUpdate], key: &str, r: &str| {
            list.iter()
                .position(|u| u.key == key && *u.new.phx_ref == *r)
        };
        for (key, meta) in later.leaves {
            if let Some(i) = find(&self.joins, &key, &meta.phx_ref) {
                self.joins.remove(i);
            } else if let Some(i) = find_update(&self.updates, &key, &meta.phx_ref) {
                let update = self.updates.remove(i);
                self.leaves.push((key, update.old));
            } else {
                self.leaves.push((key, meta));
            }
        }
        for (key, meta) in later.joins {
            if let Some(i) = find(&self.leaves, &key, &meta.phx_ref) {
                let (_, old) = self.leaves.remove(i);
                self.push_update(key, old, meta);
            } else {
                self.replace_or_push(key, meta);
            }
        }
        for MetaUpdate { key, old, new } in later.updates {
            if let Some(i) = find(&self.leaves, &key, &new.phx_ref) {
                let (_, published) = self.leaves.remove(i);
                self.push_update(key, published, new);
            } else if find(&self.joins, &key, &new.phx_ref).is_some()
                || find_update(&self.updates, &key, &new.phx_ref).is_some()
            {
                self.replace_or_push(key, new);
            } else {
                self.push_update(key, old, new);
            }
        }
    }

    /// A published meta `old` is now `new` (same ref): an update, unless
    /// nothing changed.
    fn push_update(&mut self, key: String, old: Meta, new: Meta) {
        if old != new {
            self.updates.push(MetaUpdate { key, old, new });
        }
    }

    /// `meta` replaces a pending join or update of its ref, or joins.
    fn replace_or_push(&mut self, key: String, meta: Meta) {
        let same = |k: &str, m: &Meta| k == key && m.phx_ref == meta.phx_ref;
        if let Some(j) = self.joins.iter_mut().find(|(k, m)| same(k, m)) {
            j.1 = meta;
        } else if let Some(i) = self.updates.iter().position(|u| same(&u.key, &u.new)) {
            if self.updates[i].old == meta {
                self.updates.remove(i);
            } else {
                self.updates[i].new = meta;
            }
        } else {
            self.joins.push((key, meta));
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
            let left_here = self.leaves.iter().any(|(k, _)| k == key)
                || self.updates.iter().any(|u| u.key == *key);
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
    /// change at all, or an update when its state changed on the way (a
    /// replace update as Redis reports it: the entry out, then in). Sending
    /// both would be wrong, not just wasteful: phx-js applies joins before
    /// leaves, so the meta would vanish.
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
            let is_moved =
                |(k, m): &(String, Meta)| moved.contains(&(k.clone(), m.phx_ref.clone()));
            let (gone, leaves) = std::mem::take(&mut self.leaves)
                .into_iter()
                .partition::<Vec<_>, _>(is_moved);
            let (came, joins) = std::mem::take(&mut self.joins)
                .into_iter()
                .partition::<Vec<_>, _>(is_moved);
            self.leaves = leaves;
            self.joins = joins;
            for (key, new) in came {
                let old = gone
                    .iter()
                    .find(|(k, m)| *k == key && m.phx_ref == new.phx_ref)
                    .map(|(_, m)| m.clone())
                    .expect("a moved ref left");
                self.push_update(key, old, new);
            }
        }
        self
    }

    /// The `presence_diff` payload: `{"joins":{key:{"metas":[..]}},"leaves":{..}}`.
    /// Both sides are always present (realtime-py requires it); updates go
    /// in `joins`, under the ref they replace.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"joins\":");
        let updated = self.updates.iter().map(|u| (u.key.as_str(), &u.new));
        write_grouped(&mut out, group(pairs(&self.joins).chain(updated)));
        out.push_str(",\"leaves\":");
        write_grouped(&mut out, group(pairs(&self.leaves)));
        out.push('}');
        out
    }
}

fn pairs(entries: &[(String, Meta)]) -> impl Iterator<Item = (&str, &Meta)> {
    entries.iter().map(|(k, m)| (k.as_str(), m))
}

fn group<'a>(
    entries: impl Iterator<Item = (&'a str, &'a Meta)>,
) -> BTreeMap<&'a str, Vec<&'a Meta>> {
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

/// A joiner's snapshot, split to fit a frame limit
/// ([`ChannelPresence::snapshot_parts`]).
#[derive(Debug, PartialEq)]
pub struct SnapshotParts {
    /// The `presence_state` payload.
    pub state: String,
    /// `presence_diff` payloads to send after it, in order.
    pub diffs: Vec<String>,
}

/// What [`joins_diff`] adds around its joins.
const DIFF_WRAPPER: &str = "{\"joins\":,\"leaves\":{}}";

/// A `presence_diff` payload that only joins `joins` (a grouped object).
fn joins_diff(joins: &str) -> String {
    let mut out = String::with_capacity(joins.len() + DIFF_WRAPPER.len());
    out.push_str("{\"joins\":");
    out.push_str(joins);
    out.push_str(",\"leaves\":{}}");
    out
}

/// [`write_grouped`] into objects of at most `max_bytes` each, cut between
/// metas (a key's metas may span two objects; joining them back is what a
/// client's diff does). Always at least one object, `{}` when empty.
fn write_grouped_chunks<'a, K, M>(
    entries: impl IntoIterator<Item = (K, M)>,
    max_bytes: usize,
) -> Vec<String>
where
    K: AsRef<str>,
    M: IntoIterator<Item = &'a Meta>,
{
    /// What closing a chunk adds: `]}` for the key, `}` for the object.
    const CLOSING: usize = 3;
    let mut chunks = Vec::new();
    let mut out = String::from("{");
    let mut metas_in_chunk = 0;
    for (key, metas) in entries {
        let key = serde_json::to_string(key.as_ref()).expect("strings serialise");
        let mut key_open = false;
        for meta in metas {
            let mark = out.len();
            let open_key = |out: &mut String, first_in_chunk: bool| {
                if !first_in_chunk {
                    out.push(',');
                }
                out.push_str(&key);
                out.push_str(":{\"metas\":[");
            };
            if key_open {
                out.push(',');
            } else {
                open_key(&mut out, metas_in_chunk == 0);
            }
            meta.write_json(&mut out);
            if out.len() + CLOSING > max_bytes && metas_in_chunk > 0 {
                // This meta starts the next chunk.
                out.truncate(mark);
                if key_open {
                    out.push_str("]}");
                }
                out.push('}');
                chunks.push(std::mem::replace(&mut out, String::from("{")));
                open_key(&mut out, true);
                meta.write_json(&mut out);
                metas_in_chunk = 0;
            }
            key_open = true;
            metas_in_chunk += 1;
        }
        if key_open {
            out.push_str("]}");
        }
    }
    out.push('}');
    chunks.push(out);
    chunks
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
    /// How many metas were updated in place ([`Meta::is_replaced`]): when
    /// none, a joiner needs nothing after its snapshot.
    replaced: usize,
}

impl ChannelPresence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Track `state` for `member` under `key`.
    ///
    /// * first track: a join (or the silent adoption of an orphan, below);
    /// * same state again: nothing (returns `None`);
    /// * other state, [`Updates::Classic`]: the new meta joins with a new
    ///   ref and `phx_ref_prev` = old ref, the old meta leaves;
    /// * other state, [`Updates::Replace`]: the meta keeps its refs and
    ///   takes the new state (one [`MetaUpdate`]).
    ///
    /// A member's key is fixed by its first track; tracking under another key
    /// first untracks the old one (the diff then carries both).
    pub fn track(
        &mut self,
        member: MemberId,
        key: &str,
        state: State,
        refs: &RefGen,
        updates: Updates,
    ) -> Option<Diff> {
        if !self.key_of.contains_key(&member) {
            if let Some(adopted) = self.adopt(member, key, &state, updates) {
                return adopted;
            }
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
                if updates == Updates::Replace {
                    return Some(self.replace_state(member, key, state));
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

    /// Give `member`'s meta under `key` a new state, refs kept.
    fn replace_state(&mut self, member: MemberId, key: &str, state: State) -> Diff {
        let tracked = self
            .by_key
            .get_mut(key)
            .and_then(|metas| metas.iter_mut().find(|t| t.member == member))
            .expect("member tracks under key");
        self.state_bytes -= meta_weight(key, &tracked.meta.state);
        self.state_bytes += meta_weight(key, &state);
        self.replaced += usize::from(!tracked.meta.is_replaced());
        let new = Meta {
            phx_ref: tracked.meta.phx_ref.clone(),
            phx_ref_prev: Some(tracked.meta.phx_ref.clone()),
            state,
        };
        let old = std::mem::replace(&mut tracked.meta, new.clone());
        Diff {
            updates: vec![MetaUpdate {
                key: key.to_owned(),
                old,
                new,
            }],
            ..Diff::default()
        }
    }

    /// Add `meta` under `key` for `member` (which holds none now), noting the join.
    fn add(&mut self, member: MemberId, key: &str, meta: Meta, diff: &mut Diff) {
        self.state_bytes += meta_weight(key, &meta.state);
        self.replaced += usize::from(meta.is_replaced());
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
    /// the orphan's meta over, `phx_ref` and all: nobody sees a leave or a
    /// join (`Some(None)`). With [`Updates::Replace`], when no orphan of the
    /// key has that state, the orphan that joined first (lowest member id)
    /// is taken over and updated in place (`Some(Some(update))`). `None`:
    /// nothing to adopt.
    fn adopt(
        &mut self,
        member: MemberId,
        key: &str,
        state: &State,
        updates: Updates,
    ) -> Option<Option<Diff>> {
        let metas = self.by_key.get(key)?;
        let orphans = || metas.iter().filter(|t| self.orphans.contains(&t.member));
        let same = orphans().find(|t| t.meta.state == *state).map(|t| t.member);
        let first = || orphans().map(|t| t.member).min();
        let old = match (same, updates) {
            (Some(o), _) => o,
            (None, Updates::Replace) => first()?,
            (None, Updates::Classic) => return None,
        };
        let entry = self
            .by_key
            .get_mut(key)
            .and_then(|metas| metas.iter_mut().find(|t| t.member == old))
            .expect("the orphan tracks under key");
        entry.member = member;
        self.orphans.remove(&old);
        self.key_of.remove(&old);
        self.key_of.insert(member, key.to_owned());
        if same.is_some() {
            return Some(None);
        }
        Some(Some(self.replace_state(member, key, state.clone())))
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
        self.replaced -= usize::from(removed.meta.is_replaced());
        if metas.is_empty() {
            self.by_key.remove(&key);
        }
        Some(Diff {
            leaves: vec![(key, removed.meta)],
            ..Diff::default()
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
        let mut out = String::with_capacity(64 + 96 * self.meta_count());
        write_grouped(&mut out, self.metas_before(pending));
        out
    }

    /// The metas of [`Self::state_json_before`], key by key.
    fn metas_before<'a>(&'a self, pending: &'a Diff) -> BTreeMap<&'a str, Vec<&'a Meta>> {
        let joined: HashSet<(&str, &str)> = pending
            .joins
            .iter()
            .map(|(k, m)| (k.as_str(), &*m.phx_ref))
            .chain(
                pending
                    .updates
                    .iter()
                    .map(|u| (u.key.as_str(), &*u.new.phx_ref)),
            )
            .collect();
        let mut by_key: BTreeMap<&str, Vec<&Meta>> = BTreeMap::new();
        for (key, metas) in &self.by_key {
            for t in metas {
                if !joined.contains(&(key.as_str(), &*t.meta.phx_ref)) {
                    by_key.entry(key).or_default().push(&t.meta);
                }
            }
        }
        let published = pending.updates.iter().map(|u| (&u.key, &u.old));
        for (key, meta) in pending.leaves.iter().map(|(k, m)| (k, m)).chain(published) {
            by_key.entry(key).or_default().push(meta);
        }
        by_key
    }

    /// For a client joining now, after [`Self::state_json_before`]: a
    /// `presence_diff` payload re-sending, as joins, the metas of that state
    /// that were updated in place, or `None` when there are none. A client
    /// that held such a meta before it rejoined keeps the old state from a
    /// snapshot (same ref); this replaces it. A fresh client only sees one
    /// more `join` of a meta it has.
    pub fn replaced_json_before(&self, pending: &Diff) -> Option<String> {
        let replaced = self.replaced_before(pending)?;
        let mut out = String::new();
        write_grouped(&mut out, replaced);
        Some(joins_diff(&out))
    }

    /// The metas of the state before `pending` that were updated in place.
    fn replaced_before<'a>(
        &'a self,
        pending: &'a Diff,
    ) -> Option<BTreeMap<&'a str, Vec<&'a Meta>>> {
        let pending_replaced = pending.leaves.iter().any(|(_, m)| m.is_replaced())
            || pending.updates.iter().any(|u| u.old.is_replaced());
        if self.replaced == 0 && !pending_replaced {
            return None;
        }
        let mut replaced = self.metas_before(pending);
        replaced.retain(|_, metas| {
            metas.retain(|m| m.is_replaced());
            !metas.is_empty()
        });
        (!replaced.is_empty()).then_some(replaced)
    }

    /// What a client joining now is sent, in payloads of at most
    /// `max_bytes` each (a single meta larger than that goes alone): the
    /// state before `pending` as one `presence_state` and, past the first
    /// `max_bytes`, `presence_diff`s that join the rest; then the re-sent
    /// metas of [`Self::replaced_json_before`], split the same way.
    ///
    /// Both official JS and Python clients apply diffs that follow the
    /// state of their join, so the split state adds up to the whole; and no
    /// frame outgrows the smallest client frame limit (realtime-py: 1 MiB).
    pub fn snapshot_parts(&self, pending: &Diff, max_bytes: usize) -> SnapshotParts {
        let joins_budget = max_bytes.saturating_sub(DIFF_WRAPPER.len());
        // Cut to the diffs' budget: the state part is a little smaller than
        // it could be, and every later part fits once wrapped as a diff.
        let mut parts = if pending.is_empty() {
            write_grouped_chunks(self.snapshot(), joins_budget)
        } else {
            write_grouped_chunks(self.metas_before(pending), joins_budget)
        };
        let state = parts.remove(0);
        let mut diffs: Vec<String> = parts.iter().map(|c| joins_diff(c)).collect();
        if let Some(replaced) = self.replaced_before(pending) {
            diffs.extend(
                write_grouped_chunks(replaced, joins_budget)
                    .iter()
                    .map(|c| joins_diff(c)),
            );
        }
        SnapshotParts { state, diffs }
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

    /// The metas tracked under `key` (empty if none).
    pub fn metas_of_key(&self, key: &str) -> Vec<&Meta> {
        self.by_key
            .get(key)
            .map(|metas| metas.iter().map(|t| &t.meta).collect())
            .unwrap_or_default()
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

    /// A snapshot split to a frame limit adds back up to the whole state,
    /// through the same client code that applies states and diffs.
    #[test]
    fn a_split_snapshot_adds_up_to_the_state_and_each_part_fits() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let mut member = 0;
        for key in 0..40 {
            // Some keys with several metas, so that cuts fall inside a key.
            for _ in 0..(1 + key % 3) {
                member += 1;
                let s = state(json!({"n": member, "pad": "p".repeat(key * 3)}));
                p.track(member, &format!("k{key}"), s, &refs, Updates::Classic);
            }
        }
        let whole = p.state_json();
        for max in [400, 512, 1_000, 4_096, whole.len() + 22, 1 << 20] {
            let parts = p.snapshot_parts(&Diff::default(), max);
            assert_eq!(parts.diffs.is_empty(), whole.len() + 22 <= max, "max {max}");
            let mut view = crate::ClientPresence::new();
            view.on_state(&serde_json::from_str(&parts.state).unwrap())
                .unwrap();
            assert!(parts.state.len() <= max);
            for d in &parts.diffs {
                assert!(d.len() <= max, "{} > {max}", d.len());
                view.on_diff(&serde_json::from_str(d).unwrap()).unwrap();
            }
            let mut full = crate::ClientPresence::new();
            full.on_state(&serde_json::from_str(&whole).unwrap())
                .unwrap();
            assert_eq!(view.view(), full.view(), "max {max}");
        }
        // A meta larger than the limit still goes, alone.
        let parts = p.snapshot_parts(&Diff::default(), 10);
        assert_eq!(parts.diffs.len() + 1, p.meta_count());
        assert_eq!(
            p.snapshot_parts(&Diff::default(), 1 << 20),
            SnapshotParts {
                state: whole,
                diffs: vec![]
            }
        );
    }

    #[test]
    fn first_track_joins_identical_retrack_is_noop() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let d = p
            .track(1, "alice", state(json!({"a": 1})), &refs, Updates::Classic)
            .unwrap();
        assert_eq!(d.joins.len(), 1);
        assert!(d.leaves.is_empty());
        assert_eq!(d.joins[0].0, "alice");
        assert!(d.joins[0].1.phx_ref_prev.is_none());
        assert!(p
            .track(1, "alice", state(json!({"a": 1})), &refs, Updates::Classic)
            .is_none());
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn update_carries_new_join_and_old_leave_with_prev_ref() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let first = p
            .track(
                1,
                "alice",
                state(json!({"s": "on"})),
                &refs,
                Updates::Classic,
            )
            .unwrap();
        let old = first.joins[0].1.clone();
        let d = p
            .track(
                1,
                "alice",
                state(json!({"s": "away"})),
                &refs,
                Updates::Classic,
            )
            .unwrap();
        assert_eq!(d.leaves, vec![("alice".to_string(), old.clone())]);
        let new = &d.joins[0].1;
        assert_ne!(new.phx_ref, old.phx_ref);
        assert_eq!(new.phx_ref_prev.as_deref(), Some(&*old.phx_ref));
        assert_eq!(p.meta_count(), 1);
    }

    #[test]
    fn a_replace_update_keeps_the_ref_and_goes_out_as_a_join_alone() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let first = p.track(
            1,
            "alice",
            state(json!({"s": "on"})),
            &refs,
            Updates::Replace,
        );
        let old = first.unwrap().joins[0].1.clone();
        let d = p
            .track(
                1,
                "alice",
                state(json!({"s": "away"})),
                &refs,
                Updates::Replace,
            )
            .unwrap();
        assert!(d.joins.is_empty() && d.leaves.is_empty());
        let update = &d.updates[0];
        assert_eq!((update.key.as_str(), &update.old), ("alice", &old));
        assert_eq!(update.new.phx_ref, old.phx_ref);
        assert_eq!(update.new.state, state(json!({"s": "away"})));
        assert_eq!(p.meta_of(1), Some(&update.new));
        let payload: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(
            payload,
            json!({"joins": {"alice": {"metas": [
                       {"s": "away", "phx_ref": &*old.phx_ref, "phx_ref_prev": &*old.phx_ref}]}},
                   "leaves": {}})
        );
        assert_eq!(d.key_changes(&p), (vec![], vec![]), "an update is neither");
        let weight = meta_weight("alice", &state(json!({"s": "away"})));
        assert_eq!(p.state_bytes(), weight, "the weight follows the new state");
        // A joiner gets the updated meta again after its snapshot.
        let again: serde_json::Value =
            serde_json::from_str(&p.replaced_json_before(&Diff::default()).unwrap()).unwrap();
        assert_eq!(again, payload);
        let mut q = ChannelPresence::new();
        q.track(1, "bob", state(json!({"s": 1})), &refs, Updates::Classic);
        q.track(1, "bob", state(json!({"s": 2})), &refs, Updates::Classic);
        assert_eq!(
            q.replaced_json_before(&Diff::default()),
            None,
            "classic: new refs"
        );
    }

    #[test]
    fn coalescing_a_replace_update_nets_per_ref() {
        let refs = RefGen::new(7);
        let s = |n: u8| state(json!({ "n": n }));
        let mut p = ChannelPresence::new();
        let joined = p.track(1, "u", s(0), &refs, Updates::Replace).unwrap();
        let published = joined.joins[0].1.clone();
        // A join then updates within one window: one join of the last state.
        let mut w = joined.clone();
        w.absorb(p.track(1, "u", s(1), &refs, Updates::Replace).unwrap());
        assert_eq!((w.joins.len(), w.updates.len()), (1, 0));
        assert_eq!(w.joins[0].1.state, s(1));
        // Published, then updated twice: one update from what clients saw.
        let mut w = p.track(1, "u", s(2), &refs, Updates::Replace).unwrap();
        let before = p.state_json_before(&w);
        assert!(
            before.contains(r#""n":1"#) && !before.contains(r#""n":2"#),
            "{before}"
        );
        w.absorb(p.track(1, "u", s(3), &refs, Updates::Replace).unwrap());
        assert_eq!(w.updates.len(), 1);
        assert_eq!(
            (&w.updates[0].old.state, &w.updates[0].new.state),
            (&s(1), &s(3))
        );
        // ...and back to what clients saw: nothing at all.
        w.absorb(p.track(1, "u", s(1), &refs, Updates::Replace).unwrap());
        assert!(w.is_empty(), "{w:?}");
        // Updated, then gone: it leaves as clients saw it.
        let mut w = p.track(1, "u", s(4), &refs, Updates::Replace).unwrap();
        w.absorb(p.untrack(1).unwrap());
        assert_eq!(w.leaves.len(), 1);
        assert_eq!(w.leaves[0].1.state, s(1));
        assert_eq!(w.leaves[0].1.phx_ref, published.phx_ref);
        assert!(w.joins.is_empty() && w.updates.is_empty());
    }

    #[test]
    fn a_ref_that_comes_back_with_another_state_nets_to_an_update() {
        let meta = |st: u8| Meta {
            phx_ref: "r".into(),
            phx_ref_prev: None,
            state: state(json!({ "n": st })),
        };
        let d = Diff {
            joins: vec![("k".into(), meta(2))],
            leaves: vec![("k".into(), meta(1))],
            ..Diff::default()
        }
        .net();
        assert!(d.joins.is_empty() && d.leaves.is_empty());
        assert_eq!((&d.updates[0].old, &d.updates[0].new), (&meta(1), &meta(2)));
    }

    #[test]
    fn a_replace_member_adopts_an_orphan_of_its_key_and_updates_it() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let a = p.track(1, "u", state(json!({"at": 1})), &refs, Updates::Replace);
        let original = a.unwrap().joins[0].1.clone();
        p.track(2, "u", state(json!({"at": 2})), &refs, Updates::Replace);
        assert!(p.orphan(2) && p.orphan(1));
        // A classic member with another state does not adopt.
        let c = p.track(3, "u", state(json!({"at": 9})), &refs, Updates::Classic);
        assert_eq!(c.unwrap().joins.len(), 1);
        // A replace member takes over the first orphan, ref kept.
        let d = p
            .track(4, "u", state(json!({"at": 3})), &refs, Updates::Replace)
            .unwrap();
        assert!(d.joins.is_empty() && d.leaves.is_empty());
        assert_eq!(d.updates[0].old, original);
        assert_eq!(p.meta_of(4).unwrap().phx_ref, original.phx_ref);
        assert!(!p.is_orphan(1) && p.is_orphan(2));
        assert_eq!(p.meta_count(), 3);
    }

    #[test]
    fn an_orphan_is_adopted_by_the_same_state_under_the_same_key() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let joined = p
            .track(1, "u", state(json!({"s": 1})), &refs, Updates::Classic)
            .unwrap();
        let original = joined.joins[0].1.clone();
        assert!(p.orphan(1));
        assert!(
            !p.orphan(9),
            "nothing to keep for a member that tracked nothing"
        );
        // Another state, or another key: no adoption, a normal join.
        assert!(p
            .track(2, "u", state(json!({"s": 2})), &refs, Updates::Classic)
            .is_some());
        assert!(p
            .track(3, "v", state(json!({"s": 1})), &refs, Updates::Classic)
            .is_some());
        // The same state under the same key: adopted silently, ref kept.
        assert!(p
            .track(4, "u", state(json!({"s": 1})), &refs, Updates::Classic)
            .is_none());
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
        p.track(1, "u", state(json!({})), &refs, Updates::Classic);
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
        d.extend(
            p.track(2, "u", State::empty(), &refs, Updates::Classic)
                .unwrap_or_default(),
        );
        assert_eq!(d.net().joins.len(), 1);
        assert_eq!(p.meta_count(), 2);
    }

    #[test]
    fn key_changes_are_first_meta_in_and_last_meta_out() {
        let refs = RefGen::new(7);
        let mut p = ChannelPresence::new();
        let d = p
            .track(1, "u", state(json!({"d": 1})), &refs, Updates::Classic)
            .unwrap();
        assert_eq!(d.key_changes(&p), (vec!["u"], vec![]));
        let d = p
            .track(2, "u", state(json!({"d": 2})), &refs, Updates::Classic)
            .unwrap();
        assert_eq!(
            d.key_changes(&p),
            (vec![], vec![]),
            "second meta: key already in"
        );
        let d = p
            .track(2, "u", state(json!({"d": 3})), &refs, Updates::Classic)
            .unwrap();
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
            p.track(m as u64, key, state.clone(), &refs, Updates::Classic);
            // A second meta under the same key, and an update with a prev ref.
            p.track(100 + m as u64, key, State::empty(), &refs, Updates::Classic);
            let other = State::from_value(Some(serde_json::json!({"m": m + 1}))).unwrap();
            p.track(m as u64, key, other, &refs, Updates::Classic);
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
            p.track(m, k, State::empty(), &refs, Updates::Classic);
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
        p.track(
            1,
            "u",
            state(json!({"d": "laptop"})),
            &refs,
            Updates::Classic,
        );
        p.track(
            2,
            "u",
            state(json!({"d": "phone"})),
            &refs,
            Updates::Classic,
        );
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
