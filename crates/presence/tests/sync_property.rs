//! The central invariant of Roster: a client that has received every message
//! the server sent it holds exactly the server's state.
//!
//! Random interleavings of join / track / update / untrack / leave /
//! disconnect over several clients, with message delivery to each client
//! delayed arbitrarily (but in order, like a socket). After every step, every
//! client whose inbox is empty must equal the server's truth, and after
//! delivering everything, every client must.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use roster_presence::{ChannelPresence, ClientPresence, MemberId, RefGen, State, View};
use serde_json::{json, Value};

const CLIENTS: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    /// Join (or rejoin) the channel; key from a small set so keys are shared,
    /// or `None` for a unique generated key.
    Join(usize, Option<u8>),
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
        1 => (c.clone(), proptest::option::of(0u8..3)).prop_map(|(c, k)| Op::Join(c, k)),
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
    /// The member id while joined.
    member: Option<(MemberId, String)>,
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
fn publish(
    clients: &mut [Client],
    pending: &mut roster_presence::Diff,
    coalesce: bool,
    diff: Option<roster_presence::Diff>,
) {
    let Some(diff) = diff else { return };
    if !coalesce {
        return send(clients, &diff);
    }
    pending.absorb(diff);
    let both = pending.joins.iter().any(|(k, m)| {
        pending
            .leaves
            .iter()
            .any(|(k2, m2)| k == k2 && m.phx_ref == m2.phx_ref)
    });
    assert!(!both, "a ref in both joins and leaves of one diff");
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
fn run(ops: Vec<Op>, coalesce: bool) {
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
    for op in ops {
        match op {
            Op::Join(i, key) => {
                if let Some((member, _)) = clients[i].member.take() {
                    // A duplicate join closes the old member first.
                    let diff = server.untrack(member);
                    publish(&mut clients, &mut pending, coalesce, diff);
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
                c.member = Some((next_member, key));
                next_member += 1;
                let state = if coalesce {
                    server.state_json_before(&pending)
                } else {
                    server.state_json()
                };
                c.inbox
                    .push_back(Msg::State(serde_json::from_str(&state).unwrap()));
            }
            Op::Track(i, p) => {
                if let Some((member, key)) = clients[i].member.clone() {
                    let state = State::from_value(Some(json!({"status": p, "client": i}))).unwrap();
                    let diff = server.track(member, &key, state, &refs);
                    publish(&mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Untrack(i) => {
                if let Some((member, _)) = clients[i].member.clone() {
                    let diff = server.untrack(member);
                    publish(&mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Leave(i) => {
                if let Some((member, _)) = clients[i].member.take() {
                    clients[i].inbox.clear();
                    let diff = server.untrack(member);
                    publish(&mut clients, &mut pending, coalesce, diff);
                }
            }
            Op::Deliver(i, n) => deliver(&mut clients[i], n as usize),
            Op::Drop(i) => {
                if let Some((member, _)) = clients[i].member.take() {
                    clients[i].inbox.clear();
                    if server.orphan(member) {
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
                    let diff = server.untrack(member);
                    publish(&mut clients, &mut pending, coalesce, diff);
                }
            }
        }
        // What has been published: the truth before the open window.
        let expected = published(&server, &pending);
        for (i, c) in clients.iter().enumerate() {
            if c.member.is_some() && c.inbox.is_empty() {
                assert_eq!(
                    normalise(c.presence.view()),
                    expected,
                    "client {i} received everything but differs"
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
        assert_eq!(normalise(c.presence.view()), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_client_view_equals_server_truth(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, false);
    }

    #[test]
    fn with_coalesced_diffs_every_client_view_equals_server_truth(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, true);
    }
}
