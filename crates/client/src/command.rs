//! Messages from the handles to the background task.

use std::sync::Arc;

use roster_protocol::push::ClientPush;
use tokio::sync::oneshot;

use crate::shared::{ChannelShared, ChannelStatus};
use crate::Error;

pub(crate) enum Command {
    /// Open the socket (and keep it open); answer with the first outcome.
    Connect(oneshot::Sender<Result<(), Error>>),
    /// Join (and keep rejoining) a channel; answer with the join's outcome.
    Subscribe(Arc<ChannelShared>, oneshot::Sender<ChannelStatus>),
    Push {
        topic: String,
        /// Boxed: a join-sized push would make every command large.
        push: Box<ClientPush>,
        /// Resolve on the server's reply; `false` (a broadcast without
        /// `ack`): once written.
        awaits_reply: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Leave a channel; `remove` also forgets it.
    Leave {
        topic: String,
        remove: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// The access token changed: push it to every joined channel.
    AccessToken(String),
    /// Close the socket and end the task.
    Disconnect(oneshot::Sender<()>),
}
