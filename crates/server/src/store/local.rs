//! One node: the channel's presence is the truth, and every change is the
//! pure tracker's (`roster_presence::ChannelPresence`), applied at once.
//! What the node is asked of channels it does not hold has one answer:
//! nobody is there. Last seen is this node's memory ([`LastSeen`]).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use roster_presence::{meta_weight, ChannelPresence, Diff, MemberId};
use roster_protocol::UserBroadcast;
use tokio_util::sync::CancellationToken;

use super::last_seen::{self, LastSeen};
use super::{channel_key, Ack, Backend, ChannelStore, Ctx, Host, StoreError, Track};
use crate::webhooks::Webhooks;

/// The backend of a node on its own.
pub struct Local {
    /// When keys last left, if remembered (`None` = off).
    last_seen: Option<Arc<LastSeen>>,
}

impl Local {
    pub fn new(last_seen: Option<Arc<LastSeen>>) -> Self {
        Local { last_seen }
    }
}

impl Backend for Local {
    fn channel_store(
        &self,
        topic: &str,
        private: bool,
        _: Weak<dyn Host>,
    ) -> Box<dyn ChannelStore> {
        let last_seen = self
            .last_seen
            .as_ref()
            .map(|seen| (seen.clone(), channel_key(topic, private)));
        Box::new(LocalStore { last_seen })
    }

    /// No other node to tell.
    fn relay_broadcast(&self, _: &str, _: bool, _: &UserBroadcast) {}

    fn start(&self, _: CancellationToken) {}

    /// Every change is a channel's, and the channel reports it.
    fn report_to(&self, _: Option<Arc<Webhooks>>) {}

    fn is_healthy(&self) -> bool {
        true
    }

    fn cut_off(&self) -> Option<CancellationToken> {
        None
    }

    /// A channel not open here has nobody in it.
    fn read_presence(
        &self,
        _: &str,
        _: bool,
    ) -> BoxFuture<'_, Result<ChannelPresence, StoreError>> {
        Box::pin(async { Ok(ChannelPresence::new()) })
    }

    fn channel_topics(&self, _: bool) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn last_seen<'a>(
        &'a self,
        topics: &'a [String],
        private: bool,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<HashMap<String, u64>, StoreError>> {
        let now = last_seen::now_ms();
        let found = self.last_seen.as_ref().map_or_else(HashMap::new, |seen| {
            let names: Vec<_> = topics.iter().map(|t| channel_key(t, private)).collect();
            keys.iter()
                .filter_map(|key| {
                    let latest = names.iter().filter_map(|n| seen.get(n, key, now)).max()?;
                    Some(((*key).to_owned(), latest))
                })
                .collect()
        });
        Box::pin(async move { Ok(found) })
    }

    fn render_metrics(&self) -> String {
        String::new()
    }

    fn leave(&self, _: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A channel's presence on one node.
#[derive(Default)]
pub struct LocalStore {
    /// Where to note keys whose last meta left, and this channel's name there.
    last_seen: Option<(Arc<LastSeen>, Arc<str>)>,
}

impl LocalStore {
    /// Report a change the tracker applied, and note the keys it took the
    /// last meta of (last seen).
    fn changed(&self, cx: &mut Ctx<'_>, diff: Diff) {
        let left = cx.effects.own_change(diff, cx.presence);
        if let (Some((seen, name)), false) = (&self.last_seen, left.is_empty()) {
            seen.left(name, left, last_seen::now_ms());
        }
    }
}

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
            self.changed(cx, diff);
        }
        cx.effects.acks.push(ack);
    }

    fn untrack(&mut self, cx: &mut Ctx<'_>, member: MemberId, ack: Option<Ack>) {
        if let Some(diff) = cx.presence.untrack(member) {
            self.changed(cx, diff);
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
        let (mut store, mut presence, refs) = (
            LocalStore::default(),
            ChannelPresence::new(),
            RefGen::new(1),
        );
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
        let (mut store, mut presence, refs) = (
            LocalStore::default(),
            ChannelPresence::new(),
            RefGen::new(1),
        );
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
