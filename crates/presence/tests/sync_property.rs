//! The central invariant of Roster: a client that has received every message
//! the server sent it holds exactly the server's state, and that state is
//! what its members tracked.
//!
//! Random interleavings of join / track / update / untrack / leave /
//! disconnect over several clients, with message delivery to each client
//! delayed arbitrarily (but in order, like a socket). The truth is a
//! [`Model`], a plain map of who tracks what written without the tracker.
//! After every step the tracker's state must equal the model's, and every
//! client whose inbox is empty must equal what has been published (the model,
//! or with coalescing the model as of the last window) and the server's
//! snapshot of it, refs included; after delivering everything, every client
//! must equal the model.
//!
//! Members join as classic or replace members (mixed in one room). The
//! model says when a track is an update, and which meta a rejoin takes
//! over; the harness then checks the diff's shape: a replace update keeps
//! the ref and sends no leave, a classic one moves to a new ref, and no
//! diff ever carries a leave of a ref the server still holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use roster_presence::{ChannelPresence, ClientPresence, MemberId, RefGen, State, Updates, View};
use serde_json::{json, Value};

const CLIENTS: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    /// Join (or rejoin) the channel; key from a small set so keys are shared,
    /// or `None` for a unique generated key; `true`: a replace member.
    Join(usize, Option<u8>, bool),
    Track(usize, u8),
    Untrack(usize),
    /// Leave or socket close: both end the member.
    Leave(usize),
    /// Deliver up to n queued messages to a client.
    Deliver(usize, u8),
    /// The socket drops with a leave grace period: the meta is kept.
    Drop(usize),
    /// The grace period of one kept meta ends.
    Expire(u8),
    /// With coalescing: the window ends, its net diff goes out.
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        1 => (c.clone(), proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(c, k, replace)| Op::Join(c, k, replace)),
        3 => (c.clone(), 0u8..4).prop_map(|(c, p)| Op::Track(c, p)),
        1 => (c.clone()).prop_map(Op::Untrack),
        1 => (c.clone()).prop_map(Op::Leave),
        3 => (c.clone(), 1u8..6).prop_map(|(c, n)| Op::Deliver(c, n)),
        1 => c.prop_map(Op::Drop),
        1 => any::<u8>().prop_map(Op::Expire),
        2 => Just(Op::Flush),
    ]
}

enum Msg {
    State(Value),
    Diff(Value),
}

#[derive(Default)]
struct Client {
    /// The member id while joined, its key and how its updates go out.
    member: Option<(MemberId, String, Updates)>,
    presence: ClientPresence,
    inbox: VecDeque<Msg>,
}

/// key → set of metas as canonical JSON text (order within a key is not part of the contract).
fn normalise(view: &View) -> BTreeMap<String, BTreeSet<String>> {
    view.iter()
        .map(|(k, metas)| {
            let set = metas
                .iter()
                .map(|m| serde_json::to_string(m).unwrap())
                .collect();
            (k.clone(), set)
        })
        .collect()
}

/// The truth, without the tracker: each member's one meta, and the members
/// whose socket dropped with a grace period (their meta kept, to be adopted
/// by a new member tracking the same state under the same key, or by a new
/// replace member under the same key: then the orphan that joined first).
#[derive(Clone, Default)]
struct Model {
    metas: BTreeMap<MemberId, (String, Value)>,
    orphans: BTreeSet<MemberId>,
}

/// key → states (metas without refs), sorted: what clients and server must hold.
type Contents = BTreeMap<String, Vec<String>>;

/// What a track is, as the model sees it.
#[derive(Debug, PartialEq)]
enum Tracked {
    /// A new meta, or a no-op.
    Other,
    /// The member's own meta changes state.
    Update,
    /// An orphan's meta is taken over silently (same state).
    Adopted(MemberId),
    /// An orphan's meta is taken over and updated (a replace member).
    AdoptedAndUpdated(MemberId),
}

impl Model {
    fn track(&mut self, member: MemberId, key: &str, state: Value, updates: Updates) -> Tracked {
        let entry = (key.to_owned(), state);
        let mut what = Tracked::Other;
        match self.metas.get(&member) {
            Some(had) if had.0 == entry.0 && *had != entry => what = Tracked::Update,
            Some(_) => {}
            None => {
                let same = self
                    .orphans
                    .iter()
                    .copied()
                    .find(|o| self.metas[o] == entry);
                // Orphans iterate in member order: the first is the oldest join.
                let of_key = self
                    .orphans
                    .iter()
                    .copied()
                    .find(|o| self.metas[o].0 == entry.0);
                let adopted = match (same, of_key, updates) {
                    (Some(o), _, _) => Some(Tracked::Adopted(o)),
                    (None, Some(o), Updates::Replace) => Some(Tracked::AdoptedAndUpdated(o)),
                    _ => None,
                };
                if let Some(Tracked::Adopted(o) | Tracked::AdoptedAndUpdated(o)) = adopted {
                    self.orphans.remove(&o);
                    self.metas.remove(&o);
                }
                what = adopted.unwrap_or(Tracked::Other);
            }
        }
        self.metas.insert(member, entry);
        what
    }

    /// Untrack, leave, close, or the end of a grace period.
    fn untrack(&mut self, member: MemberId) {
        self.metas.remove(&member);
        self.orphans.remove(&member);
    }

    /// Whether there was a meta to keep.
    fn drop_socket(&mut self, member: MemberId) -> bool {
        self.metas.contains_key(&member) && self.orphans.insert(member)
    }

    fn contents(&self) -> Contents {
        let mut out: Contents = BTreeMap::new();
        for (key, state) in self.metas.values() {
            out.entry(key.clone()).or_default().push(state.to_string());
        }
        out.into_iter().map(|(k, v)| (k, sorted(v))).collect()
    }
}

/// A meta's state: the meta without its refs, as text.
fn state_of(meta: &serde_json::Map<String, Value>) -> String {
    let mut meta = meta.clone();
    meta.remove("phx_ref");
    meta.remove("phx_ref_prev");
    Value::Object(meta).to_string()
}

fn sorted(mut states: Vec<String>) -> Vec<String> {
    states.sort();
    states
}

/// A client view's contents.
fn contents(view: &View) -> Contents {
    view.iter()
        .filter(|(_, metas)| !metas.is_empty())
        .map(|(key, metas)| (key.clone(), sorted(metas.iter().map(state_of).collect())))
        .collect()
}

/// The tracker's contents, read straight from its snapshot JSON.
fn server_contents(server: &ChannelPresence) -> Contents {
    let state: serde_json::Map<String, Value> = serde_json::from_str(&server.state_json()).unwrap();
    state
        .iter()
        .map(|(key, entry)| {
            let metas = entry["metas"].as_array().expect("metas");
            let states = metas.iter().map(|m| state_of(m.as_object().unwrap()));
            (key.clone(), sorted(states.collect()))
        })
        .collect()
}

fn truth(server: &ChannelPresence) -> BTreeMap<String, BTreeSet<String>> {
    let mut view = ClientPresence::new();
    view.on_state(&serde_json::from_str(&server.state_json()).unwrap())
        .unwrap();
    normalise(view.view())
}

fn send(clients: &mut [Client], diff: &roster_presence::Diff) {
    let payload: Value = serde_json::from_str(&diff.to_json()).unwrap();
    for c in clients.iter_mut().filter(|c| c.member.is_some()) {
        c.inbox.push_back(Msg::Diff(payload.clone()));
    }
}

/// A change goes out at once, or into the open window when coalescing.
/// No ref is in two lists of one diff, and no leave names a ref the server
/// still holds (an update never looks like a leave).
fn publish(
    server: &ChannelPresence,
    clients: &mut [Client],
    pending: &mut roster_presence::Diff,
    coalesce: bool,
    diff: Option<roster_presence::Diff>,
) {
    let Some(diff) = diff else { return };
    let out = if coalesce {
        pending.absorb(diff.clone());
        &*pending
    } else {
        &diff
    };
    let mut refs: Vec<(&str, &str)> = out
        .joins
        .iter()
        .chain(&out.leaves)
        .map(|(k, m)| (k.as_str(), &*m.phx_ref))
        .chain(
            out.updates
                .iter()
                .map(|u| (u.key.as_str(), &*u.new.phx_ref)),
        )
        .collect();
    let all = refs.len();
    refs.sort();
    refs.dedup();
    assert_eq!(refs.len(), all, "a ref in two lists of one diff: {out:?}");
    let held: BTreeSet<(&str, &str)> = server
        .snapshot()
        .flat_map(|(k, metas)| metas.map(move |m| (k, &*m.phx_ref)))
        .collect();
    for (k, m) in &out.leaves {
        assert!(
            !held.contains(&(k.as_str(), &*m.phx_ref)),
            "a leave of a held ref: {out:?}"
        );
    }
    if !coalesce {
        send(clients, &diff);
    }
}

/// The diff of a track has the shape the model predicts: `before` is the
/// meta the model says is changed or taken over (the member's own, or the
/// orphan's), as the server held it before the track.
fn check_shape(
    what: &Tracked,
    updates: Updates,
    before: Option<roster_presence::Meta>,
    diff: Option<&roster_presence::Diff>,
) {
    match (what, updates) {
        (Tracked::Update, Updates::Replace) | (Tracked::AdoptedAndUpdated(_), _) => {
            let (before, diff) = (before.expect("a meta to update"), diff.expect("a change"));
            assert!(diff.joins.is_empty() && diff.leaves.is_empty(), "{diff:?}");
            assert_eq!(diff.updates.len(), 1, "{diff:?}");
            assert_eq!(diff.updates[0].old, before);
            assert_eq!(diff.updates[0].new.phx_ref, before.phx_ref, "the ref stays");
        }
        (Tracked::Update, Updates::Classic) => {
            let (before, diff) = (before.expect("a meta to update"), diff.expect("a change"));
            assert!(diff.updates.is_empty(), "{diff:?}");
            assert_eq!(diff.leaves.len(), 1, "{diff:?}");
            assert_eq!(diff.leaves[0].1, before);
            assert_eq!(diff.joins.len(), 1, "{diff:?}");
            assert_ne!(diff.joins[0].1.phx_ref, before.phx_ref, "a new ref");
        }
        (Tracked::Adopted(_), _) => assert!(diff.is_none(), "a silent adoption: {diff:?}"),
        (Tracked::Other, _) => {
            if let Some(diff) = diff {
                assert!(diff.updates.is_empty(), "not an update: {diff:?}");
            }
        }
    }
}

fn published(
    server: &ChannelPresence,
    pending: &roster_presence::Diff,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut view = ClientPresence::new();
    view.on_state(&serde_json::from_str(&server.state_json_before(pending)).unwrap())
        .unwrap();
    normalise(view.view())
}

fn deliver(client: &mut Client, n: usize) {
    for _ in 0..n {
        let Some(msg) = client.inbox.pop_front() else {
            return;
        };
        match msg {
            Msg::State(v) => client.presence.on_state(&v).unwrap(),
            Msg::Diff(v) => client.presence.on_diff(&v).unwrap(),
        };
    }
}

/// `coalesce`: diffs are folded into one per window (`Op::Flush` ends it),
/// and a client joining mid-window gets the state before the window.
/// `frame_limit`: snapshots are split into a state and diffs of at most
/// that many bytes each, as the server sends them.
fn run(ops: Vec<Op>, coalesce: bool, frame_limit: usize) {
    let refs = RefGen::new(42);
    let mut server = ChannelPresence::new();
    // Half the clients build events, half are silent: both must track the truth.
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client {
            presence: if i % 2 == 0 {
                ClientPresence::new()
            } else {
                ClientPresence::silent()
            },
            ..Client::default()
        })
        .collect();
    let mut next_member: MemberId = 1;
    // Members dropped with a grace period, whose meta may still be kept.
    let mut orphans: Vec<MemberId> = Vec::new();
    let mut fresh_key = 0;

    // The current window's changes, not yet sent (coalescing only).
    let mut pending = roster_presence::Diff::default();
    let mut model = Model::default();
    // The model as of the last diff sent: what clients may know.
    let mut model_published = Model::default();
    for op in ops {
        let flush = matches!(op, Op::Flush);
        match op {
            Op::Join(i, key, replace) => {
                if let Some((member, _, _)) = clients[i].member.take() {
                    // A duplicate join closes the old member first.
                    model.untrack(member);
                    let diff = server.untrack(member);
                    publish(&server, &mut clients, &mut pending, coalesce, diff);
                }
                let key = match key {
                    Some(k) => format!("shared-{k}"),
                    None => {
                        fresh_key += 1;
                        format!("generated-{fresh_key}")
                    }
                };
                let c = &mut clients[i];
                // Messages of the old join still in flight are dropped by the
                // client (they carry the old join ref); the view stays and the
                // new snapshot is reconciled against it.
                c.inbox.clear();
                c.presence.rejoined();
                let updates = if replace {
                    Updates::Replace
                } else {
                    Updates::Classic
                };
                c.member = Some((next_member, key, updates));
                next_member += 1;
                let empty = roster_presence::Diff::default();
                let before = if coalesce { &pending } else { &empty };
                let parts = server.snapshot_parts(before, frame_limit);
                c.inbox
                    .push_back(Msg::State(serde_json::from_str(&parts.state).unwrap()));
                for diff in &parts.diffs {
                    c.inbox
                        .push_back(Msg::Diff(serde_json::from_str(diff).unwrap()));
                }
            }
            Op::Track(i, p) => {
                if let Some((member, key, updates)) = clients[i].member.clone() {
                    let tracked = json!({"status": p, "client": i});
                    let what = model.track(member, &key, tracked.clone(), updates);
                    let changed = match what {
                        Tracked::Adopted(o) | Tracked::AdoptedAndUpdated(o) => o,
                        _ => member,
                    };
                    let before = server.meta_of(changed).cloned();
                    let state = State::from_value(Some(tracked)).unwrap();
                    let diff = server.track(member, &key, state, &refs, updates);
                    check_shape(&what, updates, before, diff.as_ref());
                    publish(&server, &mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Untrack(i) => {
                if let Some((member, _, _)) = clients[i].member.clone() {
                    model.untrack(member);
                    let diff = server.untrack(member);
                    publish(&server, &mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Leave(i) => {
                if let Some((member, _, _)) = clients[i].member.take() {
                    clients[i].inbox.clear();
                    model.untrack(member);
                    let diff = server.untrack(member);
                    publish(&server, &mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Deliver(i, n) => deliver(&mut clients[i], n as usize),
            Op::Drop(i) => {
                if let Some((member, _, _)) = clients[i].member.take() {
                    clients[i].inbox.clear();
                    let kept = model.drop_socket(member);
                    assert_eq!(server.orphan(member), kept, "meta kept on drop");
                    if kept {
                        orphans.push(member);
                    }
                }
            }
            Op::Flush => {
                if !pending.is_empty() {
                    send(&mut clients, &std::mem::take(&mut pending));
                }
            }
            Op::Expire(k) => {
                if !orphans.is_empty() {
                    let member = orphans.remove(k as usize % orphans.len());
                    // Adopted in the meantime: nothing left to expire, no diff.
                    model.untrack(member);
                    let diff = server.untrack(member);
                    publish(&server, &mut clients, &mut pending, coalesce, diff);
                }
            }
        }
        if !coalesce || flush {
            model_published = model.clone();
        }
        assert_eq!(
            server_contents(&server),
            model.contents(),
            "the tracker differs from what was tracked"
        );
        // What has been published: the truth before the open window.
        let expected = published(&server, &pending);
        let expected_contents = model_published.contents();
        for (i, c) in clients.iter().enumerate() {
            if c.member.is_some() && c.inbox.is_empty() {
                assert_eq!(
                    contents(c.presence.view()),
                    expected_contents,
                    "client {i} received everything but differs from what was tracked"
                );
                assert_eq!(
                    normalise(c.presence.view()),
                    expected,
                    "client {i} received everything but differs from the server"
                );
            }
        }
    }
    if !pending.is_empty() {
        send(&mut clients, &std::mem::take(&mut pending));
    }
    let expected = truth(&server);
    for c in clients.iter_mut().filter(|c| c.member.is_some()) {
        deliver(c, usize::MAX);
        assert_eq!(contents(c.presence.view()), model.contents());
        assert_eq!(normalise(c.presence.view()), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_client_view_equals_server_truth(
        ops in proptest::collection::vec(op(), 1..120),
        frame_limit in prop_oneof![Just(1 << 20), 1usize..400],
    ) {
        run(ops, false, frame_limit);
    }

    #[test]
    fn with_coalesced_diffs_every_client_view_equals_server_truth(
        ops in proptest::collection::vec(op(), 1..120),
        frame_limit in prop_oneof![Just(1 << 20), 1usize..400],
    ) {
        run(ops, true, frame_limit);
    }
}
