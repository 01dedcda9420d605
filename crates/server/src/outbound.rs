//! The sending half of a socket: a bounded queue of ready-made frames.
//!
//! Fan-out never waits on a socket: it `try_send`s a frame whose bytes are
//! shared with every other recipient (`Utf8Bytes` clones are reference
//! counts). A socket whose queue is full is too slow to keep up; it is told to
//! go away, and its presence is removed when it does.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use roster_protocol::{Outgoing, Vsn};
use tokio::sync::{mpsc, Notify};

/// A frame, encoded for one vsn, cheap to clone.
pub type Frame = Utf8Bytes;

#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Message>,
    vsn: Vsn,
    /// Signalled when the queue overflowed; the socket task then closes.
    overflow: Arc<Notify>,
}

impl Outbound {
    pub fn new(capacity: usize, vsn: Vsn) -> (Outbound, mpsc::Receiver<Message>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity);
        let overflow = Arc::new(Notify::new());
        (
            Outbound {
                tx,
                vsn,
                overflow: overflow.clone(),
            },
            rx,
            overflow,
        )
    }

    pub fn vsn(&self) -> Vsn {
        self.vsn
    }

    /// Queue a frame. Never blocks; on overflow the socket is condemned.
    pub fn send(&self, frame: Frame) {
        match self.tx.try_send(Message::Text(frame)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // notify_one stores a permit, so the socket task sees it even if not waiting yet.
                self.overflow.notify_one();
            }
            // The socket task is gone; its cleanup is already under way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Encode for this socket's vsn and queue.
    pub fn send_outgoing(&self, out: &Outgoing<'_>) {
        self.send(out.encode(self.vsn).into());
    }
}

/// Encodes one message at most once per vsn, for fan-out.
pub struct SharedFrame<'a> {
    out: Outgoing<'a>,
    v1: Option<Frame>,
    v2: Option<Frame>,
}

impl<'a> SharedFrame<'a> {
    pub fn new(out: Outgoing<'a>) -> Self {
        SharedFrame {
            out,
            v1: None,
            v2: None,
        }
    }

    pub fn for_vsn(&mut self, vsn: Vsn) -> Frame {
        let slot = match vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        slot.get_or_insert_with(|| self.out.encode(vsn).into())
            .clone()
    }
}
