//! The sending half of a socket: a bounded queue of ready-made frames.
//!
//! Fan-out never waits on a socket: it queues a frame whose bytes are
//! shared with every other recipient (a [`Payload`] clone is a reference count),
//! and the socket task writes those same bytes behind a header of its own
//! ([`crate::transport::frame_writer`]); no socket ever holds a copy. A socket whose
//! queue is full is too slow to keep up; it is told to go away, and its
//! presence is removed when it does.
//!
//! The budget is in frames and in bytes: a frame's bytes count from the
//! moment it is queued until the socket task has written it, so N slow
//! readers hold at most N × the byte budget, whatever the frames are (and
//! less, since what they hold is mostly the same shared frames).
//!
//! The queue is a `VecDeque` that grows with use, not a tokio channel: an
//! mpsc channel allocates a 32-slot block (1.6 KB) per socket up front, the
//! largest single cost of an idle connection.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use roster_protocol::{Encoded, Outgoing, Vsn};
use tokio::sync::Notify;

/// A queue that held more than this many frames is given back its memory
/// once drained (a join storm should not leave every socket large).
const SHRINK_ABOVE: usize = 64;

struct Queue {
    pending: Mutex<Pending>,
    capacity: usize,
    max_bytes: usize,
    /// The socket task, when it waits for a frame.
    waker: AtomicWaker,
    /// The socket task is gone: frames would never be read.
    closed: AtomicBool,
}

/// One WebSocket frame to write. Text and binary payloads are shared
/// between every socket that receives them.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A text message's payload (valid UTF-8, as the encoders make it).
    Text(Payload),
    Binary(Payload),
    /// Bytes already framed: pong replies and close frames.
    Framed(Bytes),
}

impl Frame {
    pub fn text(text: impl Into<Vec<u8>>) -> Frame {
        Frame::Text(Payload::new(text.into()))
    }

    pub fn binary(bytes: impl Into<Vec<u8>>) -> Frame {
        Frame::Binary(Payload::new(bytes.into()))
    }

    /// The bytes written after the frame's header (all of a framed one),
    /// uncompressed.
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Text(p) | Frame::Binary(p) => p.bytes(),
            Frame::Framed(b) => b,
        }
    }

    /// What a frame weighs in the byte budget: its payload, uncompressed.
    pub fn len(&self) -> usize {
        self.payload().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message's bytes, shared by every recipient (clones are reference
/// counts), with its `permessage-deflate` form made at most once: by the
/// first socket that negotiated compression and writes it.
#[derive(Clone)]
pub struct Payload(Arc<PayloadInner>);

struct PayloadInner {
    bytes: Vec<u8>,
    /// `None` inside: compressing did not make it smaller.
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl Payload {
    pub fn new(bytes: Vec<u8>) -> Payload {
        Payload(Arc::new(PayloadInner {
            bytes,
            deflated: OnceLock::new(),
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// The compressed bytes (sent with RSV1), compressed on first use.
    pub fn deflated(&self, level: u32) -> Option<&[u8]> {
        self.0
            .deflated
            .get_or_init(|| {
                roster_protocol::websocket::deflate(&self.0.bytes, level).map(Vec::into_boxed_slice)
            })
            .as_deref()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.bytes() == other.bytes()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.bytes();
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
        write!(f, "Payload({} bytes: {head:?})", bytes.len())
    }
}

#[derive(Clone)]
pub struct Outbound {
    queue: Arc<Queue>,
    vsn: Vsn,
    /// Signalled when the queue overflowed; the socket task then closes.
    overflow: Arc<Notify>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("vsn", &self.vsn).finish()
    }
}

#[derive(Default)]
struct Pending {
    frames: VecDeque<Frame>,
    /// Bytes of the queued frames plus those taken but not yet written.
    bytes: usize,
}

/// The socket task's end of the queue.
pub struct Inbox {
    queue: Arc<Queue>,
}

impl Inbox {
    /// The next frame; waits while the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Frame> {
        poll_fn(|cx| {
            if let Some(frame) = self.try_recv() {
                return Poll::Ready(Some(frame));
            }
            // Register, then look again: a frame queued in between wakes us.
            self.queue.waker.register(cx.waker());
            match self.try_recv() {
                Some(frame) => Poll::Ready(Some(frame)),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next frame, if one is queued. Its bytes still count against the
    /// budget until [`Inbox::written`] says they are out.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let mut pending = self.queue.pending.lock();
        let frame = pending.frames.pop_front();
        if pending.frames.is_empty() && pending.frames.capacity() > SHRINK_ABOVE {
            pending.frames.shrink_to_fit();
        }
        frame
    }

    /// `bytes` of taken frames have been written to the socket.
    pub fn written(&mut self, bytes: usize) {
        let mut pending = self.queue.pending.lock();
        pending.bytes = pending.bytes.saturating_sub(bytes);
    }

    pub fn len(&self) -> usize {
        self.queue.pending.lock().frames.len()
    }

    /// Bytes queued or being written.
    pub fn bytes(&self) -> usize {
        self.queue.pending.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        let mut pending = self.queue.pending.lock();
        pending.frames.clear();
        pending.bytes = 0;
    }
}

impl Outbound {
    /// A queue of at most `capacity` frames and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize, vsn: Vsn) -> (Outbound, Inbox, Arc<Notify>) {
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            capacity,
            max_bytes,
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        });
        let overflow = Arc::new(Notify::new());
        (
            Outbound {
                queue: queue.clone(),
                vsn,
                overflow: overflow.clone(),
            },
            Inbox { queue },
            overflow,
        )
    }

    pub fn vsn(&self) -> Vsn {
        self.vsn
    }

    /// Queue a frame. Never blocks; on overflow the socket is condemned.
    /// Frames clone by reference count, so one encoded frame can be queued
    /// to every recipient.
    pub fn send(&self, frame: Frame) {
        // The socket task is gone; its cleanup is already under way.
        if self.queue.closed.load(Ordering::Acquire) {
            return;
        }
        {
            let len = frame.len();
            let mut pending = self.queue.pending.lock();
            if pending.frames.len() >= self.queue.capacity
                || pending.bytes + len > self.queue.max_bytes
            {
                drop(pending);
                // notify_one stores a permit, so the socket task sees it even if not waiting yet.
                self.overflow.notify_one();
                return;
            }
            pending.bytes += len;
            pending.frames.push_back(frame);
        }
        self.queue.waker.wake();
    }

    /// Encode for this socket's vsn and queue.
    pub fn send_outgoing(&self, out: &Outgoing<'_>) {
        self.send(Frame::text(out.encode(self.vsn)));
    }
}

/// Encodes one message at most once per vsn, for fan-out. `None` means
/// "not deliverable in this vsn" (a binary broadcast to a vsn-1 client).
pub struct SharedFrame<F> {
    encode: F,
    v1: Option<Option<Frame>>,
    v2: Option<Option<Frame>>,
}

impl<F: FnMut(Vsn) -> Option<Encoded>> SharedFrame<F> {
    pub fn new(encode: F) -> Self {
        SharedFrame {
            encode,
            v1: None,
            v2: None,
        }
    }

    pub fn for_vsn(&mut self, vsn: Vsn) -> Option<Frame> {
        let slot = match vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        slot.get_or_insert_with(|| {
            (self.encode)(vsn).map(|e| match e {
                Encoded::Text(t) => Frame::text(t),
                Encoded::Binary(b) => Frame::binary(b),
            })
        })
        .clone()
    }
}
