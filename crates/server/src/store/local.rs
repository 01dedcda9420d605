//! One node: the channel's presence is the truth, and every change is the
//! pure tracker's (`roster_presence::ChannelPresence`), applied at once.

use std::any::Any;
use std::sync::Weak;

use roster_presence::{meta_weight, ChannelPresence, MemberId};
use roster_protocol::UserBroadcast;

use super::{Ack, Backend, ChannelStore, Ctx, Host, Track};

/// The backend of a node on its own.
pub struct Local;

impl Backend for Local {
    fn channel_store(&self, _: &str, _: bool, _: Weak<dyn Host>) -> Box<dyn ChannelStore> {
        Box::new(LocalStore)
    }

    /// No other node to tell.
    fn relay_broadcast(&self, _: &str, _: bool, _: &UserBroadcast) {}
}

/// A channel's presence on one node.
pub struct LocalStore;

impl ChannelStore for LocalStore {
    fn opened(&mut self) {}

    fn weight_of(&self, presence: &ChannelPresence, member: MemberId, key: &str) -> usize {
        presence
            .meta_of(member)
            .map_or(0, |m| meta_weight(key, &m.state))
    }

    fn track(&mut self, cx: &mut Ctx<'_>, t: Track<'_>, ack: Ack) {
        let diff = cx
            .presence
            .track(t.member, t.key, t.state, t.refs, t.updates);
        if let Some(diff) = diff {
            cx.effects.own_change(diff, cx.presence);
        }
        cx.effects.acks.push(ack);
    }

    fn untrack(&mut self, cx: &mut Ctx<'_>, member: MemberId, ack: Option<Ack>) {
        if let Some(diff) = cx.presence.untrack(member) {
            cx.effects.own_change(diff, cx.presence);
        }
        cx.effects.acks.extend(ack);
    }

    fn orphan(&mut self, cx: &mut Ctx<'_>, member: MemberId) -> bool {
        cx.presence.orphan(member)
    }

    fn is_orphan(&self, presence: &ChannelPresence, member: MemberId) -> bool {
        presence.is_orphan(member)
    }

    fn defer_state(&mut self, _: MemberId) -> bool {
        false
    }

    fn holds(&self, presence: &ChannelPresence) -> bool {
        !presence.is_empty()
    }

    fn closed(&mut self) {}

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use roster_presence::{RefGen, State, Updates};
    use serde_json::json;

    use super::*;
    use crate::store::Effects;

    fn state(v: serde_json::Value) -> State {
        State::from_value(Some(v)).unwrap()
    }

    /// Runs one operation as the channel does, returning its effects.
    fn run(
        store: &mut LocalStore,
        presence: &mut ChannelPresence,
        op: impl FnOnce(&mut LocalStore, &mut Ctx<'_>),
    ) -> Effects {
        let mut effects = Effects::default();
        op(
            store,
            &mut Ctx {
                presence,
                effects: &mut effects,
            },
        );
        effects
    }

    fn counting_ack(acked: &Arc<AtomicUsize>) -> Ack {
        let acked = acked.clone();
        Box::new(move || {
            acked.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn a_track_reports_its_diff_its_key_change_and_its_ack() {
        let (mut store, mut presence, refs) = (LocalStore, ChannelPresence::new(), RefGen::new(1));
        let acked = Arc::new(AtomicUsize::new(0));
        let track = |s: State| Track {
            member: 7,
            key: "alice",
            state: s,
            refs: &refs,
            updates: Updates::Classic,
        };
        let fx = run(&mut store, &mut presence, |st, cx| {
            st.track(cx, track(state(json!({"a": 1}))), counting_ack(&acked))
        });
        assert_eq!(fx.diff.joins.len(), 1);
        assert!(fx.diff.leaves.is_empty());
        assert_eq!(fx.key_changes, vec![(vec!["alice".to_owned()], vec![])]);
        assert_eq!(fx.acks.len(), 1);
        assert!(!fx.silent && fx.owed_states.is_empty());
        assert_eq!(presence.key_count(), 1);

        // The same state again: no diff, no key change, but still an ack.
        let fx = run(&mut store, &mut presence, |st, cx| {
            st.track(cx, track(state(json!({"a": 1}))), counting_ack(&acked))
        });
        assert!(fx.diff.is_empty() && fx.key_changes.is_empty());
        assert_eq!(fx.acks.len(), 1);
        for ack in fx.acks {
            ack();
        }
        assert_eq!(acked.load(Ordering::SeqCst), 1);

        // A new state: the key stays, so no key change.
        let fx = run(&mut store, &mut presence, |st, cx| {
            st.track(cx, track(state(json!({"a": 2}))), counting_ack(&acked))
        });
        assert_eq!((fx.diff.joins.len(), fx.diff.leaves.len()), (1, 1));
        assert!(fx.key_changes.is_empty());
    }

    #[test]
    fn an_orphan_is_silent_until_it_is_untracked() {
        let (mut store, mut presence, refs) = (LocalStore, ChannelPresence::new(), RefGen::new(1));
        run(&mut store, &mut presence, |st, cx| {
            let track = Track {
                member: 1,
                key: "bob",
                state: state(json!({})),
                refs: &refs,
                updates: Updates::Classic,
            };
            st.track(cx, track, Box::new(|| {}))
        });
        let mut kept = false;
        let fx = run(&mut store, &mut presence, |st, cx| kept = st.orphan(cx, 1));
        assert!(kept && fx.diff.is_empty() && fx.key_changes.is_empty());
        assert!(store.is_orphan(&presence, 1) && store.holds(&presence));

        let fx = run(&mut store, &mut presence, |st, cx| st.untrack(cx, 1, None));
        assert_eq!(fx.diff.leaves.len(), 1);
        assert_eq!(fx.key_changes, vec![(vec![], vec!["bob".to_owned()])]);
        assert!(fx.acks.is_empty());
        assert!(!store.holds(&presence));
    }
}
