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
