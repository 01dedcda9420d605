//! The handles' link to the background task: [`ClientShared`] holds the
//! command sender (starting the task on first use) and the channels, and
//! is what every client and channel handle keeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::shared::{lock, ChannelShared, ChannelStatus, SocketShared};
use crate::socket;
use crate::{ClientOptions, Error};

/// What the handles share. The background task holds only [`SocketShared`]
/// and the channels it was given, so dropping every handle ends it.
pub(crate) struct ClientShared {
    pub(crate) socket: Arc<SocketShared>,
    pub(crate) cmd: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    pub(crate) channels: Mutex<HashMap<String, Arc<ChannelShared>>>,
}

impl ClientShared {
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.socket.options
    }

    /// Send to the background task, starting it if it is not running.
    pub(crate) fn send(&self, cmd: Command) {
        let mut tx = lock(&self.cmd);
        let cmd = match tx.as_ref() {
            Some(t) => match t.send(cmd) {
                Ok(()) => return,
                Err(mpsc::error::SendError(cmd)) => cmd,
            },
            None => cmd,
        };
        let (new_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(socket::run(self.socket.clone(), rx));
        let _ = new_tx.send(cmd);
        *tx = Some(new_tx);
    }

    /// Send only if the task runs; otherwise give the command back.
    pub(crate) fn send_running(&self, cmd: Command) -> Result<(), Command> {
        match lock(&self.cmd).as_ref() {
            Some(tx) => tx.send(cmd).map_err(|e| e.0),
            None => Err(cmd),
        }
    }

    /// Leave `topic` (and forget it when `remove`).
    pub(crate) async fn leave(&self, topic: &str, remove: bool) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Leave {
            topic: topic.to_owned(),
            remove,
            reply: tx,
        };
        if self.send_running(cmd).is_err() {
            if let Some(ch) = lock(&self.channels).get(topic) {
                ch.set_status(ChannelStatus::Closed);
            }
            return Ok(());
        }
        let grace = self.options().timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(Error::TimedOut),
        }
    }
}
