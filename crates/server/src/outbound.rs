//! The sending half of a socket: a bounded queue of ready-made frames.
//!
//! Fan-out never waits on a socket: it `try_send`s a frame whose bytes are
//! shared with every other recipient (`Utf8Bytes` clones are reference
//! counts). A socket whose queue is full is too slow to keep up; it is told to
//! go away, and its presence is removed when it does.

use std::sync::Arc;

use axum::extract::ws::Message;
use roster_protocol::{Encoded, Outgoing, Vsn};
use tokio::sync::{mpsc, Notify};

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
    /// Text and binary messages clone by reference count, so one encoded
    /// frame can be queued to every recipient.
    pub fn send(&self, frame: Message) {
        match self.tx.try_send(frame) {
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
        self.send(Message::Text(out.encode(self.vsn).into()));
    }
}

/// Encodes one message at most once per vsn, for fan-out. `None` means
/// "not deliverable in this vsn" (a binary broadcast to a vsn-1 client).
pub struct SharedFrame<F> {
    encode: F,
    v1: Option<Option<Message>>,
    v2: Option<Option<Message>>,
}

impl<F: FnMut(Vsn) -> Option<Encoded>> SharedFrame<F> {
    pub fn new(encode: F) -> Self {
        SharedFrame {
            encode,
            v1: None,
            v2: None,
        }
    }

    pub fn for_vsn(&mut self, vsn: Vsn) -> Option<Message> {
        let slot = match vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        slot.get_or_insert_with(|| {
            (self.encode)(vsn).map(|e| match e {
                Encoded::Text(t) => Message::Text(t.into()),
                Encoded::Binary(b) => Message::Binary(b.into()),
            })
        })
        .clone()
    }
}
