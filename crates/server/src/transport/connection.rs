//! One task per socket: read frames, write the outbound queue, watch the clock.
//!
//! The task owns the socket and its [`Session`]. It ends when the client
//! closes or errs, after the idle timeout, when its queue overflows, when a
//! write stalls, or on shutdown; in every case dropping the session cleans
//! up its channels.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roster_protocol::websocket::Inbound;
use roster_protocol::Vsn;
use tokio::time::{sleep, timeout, Instant};

use crate::access::auth::{unix_now, Credential};
use crate::channel::outbound::{Frame, Inbox, Outbound};
use crate::metrics::Metrics;
use crate::server::Server;
use crate::session::Session;
use crate::transport::frame_writer;
use crate::transport::websocket::{self, ReadFailure, Writer};
use crate::transport::when_woken::WhenWoken;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 256;

/// Why a socket ended, for the log.
#[derive(Debug)]
enum End {
    /// With the code of the client's Close, to echo; `None` when it sent
    /// none or the connection just ended.
    ClientClosed(Option<u16>),
    IdleTimeout,
    Overflow,
    WriteStalled,
    Shutdown,
    /// The node was cut off from its cluster for the island timeout.
    Islanded,
    /// A rule says this socket must go (the join rate, undecodable input):
    /// the close code and reason.
    Policy(u16, String),
    /// The client broke RFC 6455 (an unmasked frame, a message over the
    /// size limit, text that is not UTF-8): the close code and reason.
    ProtocolError(u16, String),
    #[allow(dead_code)] // read through Debug in the log line
    Error(String),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_closed",
            End::IdleTimeout => "idle_timeout",
            End::Overflow => "overflow",
            End::WriteStalled => "write_stalled",
            End::Shutdown => "shutdown",
            End::Islanded => "islanded",
            End::Policy(..) => "policy",
            End::ProtocolError(..) => "protocol_error",
            End::Error(_) => "error",
        }
    }
}

/// Far enough to mean "not scheduled".
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Point the expiry timer at the session's earliest credential expiry.
fn rearm(session: &Session, at: &mut Option<u64>, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
    let next = session.next_expiry();
    if next == *at {
        return;
    }
    *at = next;
    let wait = match next {
        // Exact to the sub-second, so that when it fires `exp <= now` holds.
        Some(exp) => (UNIX_EPOCH + Duration::from_secs(exp))
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => NEVER,
    };
    timer.reset(Instant::now() + wait);
}

/// Write `first` and whatever is queued behind it (up to [`WRITE_BATCH`]
/// frames) in one go: one `writev` when the socket has room. A write that
/// has to wait ends early when `stop` fires: an overflow of the byte budget
/// ends the socket at once, not after the write timeout.
async fn write_queued(
    writer: &mut Writer,
    rx: &mut Inbox,
    first: Frame,
    write_timeout: Duration,
    metrics: &Metrics,
    stop: Pin<&mut impl Future<Output = End>>,
) -> Result<(), End> {
    metrics.outbound_queue_depth.record((rx.len() + 1) as f64);
    let mut batch = Vec::with_capacity((rx.len() + 1).min(WRITE_BATCH));
    batch.push(first);
    while batch.len() < WRITE_BATCH {
        match rx.try_recv() {
            Some(frame) => batch.push(frame),
            None => break,
        }
    }
    let bytes: usize = batch.iter().map(Frame::len).sum();
    let written = {
        let mut write = pin!(writer.write(&batch));
        // Most writes complete at once; only a write that has to wait arms the
        // stall timer (a timer registration per write showed up in profiles).
        match poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(done) => Ok(done),
            Poll::Pending => tokio::select! {
                written = timeout(write_timeout, write) => written,
                end = stop => return Err(end),
            },
        }
    };
    match written {
        Ok(Ok(wire_bytes)) => {
            rx.written(bytes);
            metrics.frames_out.increment(batch.len() as u64);
            metrics.bytes_out.increment(wire_bytes as u64);
            Ok(())
        }
        Ok(Err(e)) => Err(End::Error(e.to_string())),
        Err(_) => Err(End::WriteStalled),
    }
}

/// How a read failure ends the socket: with the close code RFC 6455 §7.4.1
/// gives it when the client is at fault, else (the connection broke) silently.
fn read_failure(failure: ReadFailure) -> End {
    match failure {
        ReadFailure::Refused(e) => End::ProtocolError(e.close_code(), e.to_string()),
        ReadFailure::Io(e) => End::Error(e.to_string()),
    }
}

/// The longest prefix of `text` within `max` bytes, on a char boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub async fn run(
    server: Arc<Server>,
    socket: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    deflate: bool,
    vsn: Vsn,
    credential: Credential,
    peer: SocketAddr,
) {
    let settings = &server.settings;
    let idle_timeout = settings.idle_timeout;
    let write_timeout = settings.write_timeout;
    // At most one write per socket per this long while frames keep coming.
    let coalesce = settings.write_coalesce;
    let (out, mut rx, overflow) =
        Outbound::new(settings.outbound_queue, settings.outbound_buffer_bytes, vsn);
    let compression = settings.compression.filter(|_| deflate);
    let (mut reader, mut writer) = websocket::open(socket, settings.max_message_bytes, compression);
    // Pongs go out through the queue, between whole frames.
    let replies = out.clone();
    let shutdown = server.shutdown.clone();
    let mut session = Session::new(server.sessions.clone(), out, credential, peer.ip());
    let metrics = server.metrics.clone();
    metrics.connections.increment(1);
    metrics.connections_total.increment(1);
    tracing::debug!(%peer, vsn = vsn.as_str(), "connected");

    // Created once, polled every turn: re-creating them per frame showed up in profiles.
    let idle = sleep(idle_timeout);
    // A node cut off from its cluster too long sends its sockets elsewhere.
    let island = server.registry.backend().cut_off();
    // The reasons to stop that come from outside, polled only when one fires.
    let stop = WhenWoken::new(async move {
        tokio::select! {
            biased;
            _ = shutdown.cancelled_owned() => End::Shutdown,
            _ = async {
                match island {
                    Some(island) => island.cancelled_owned().await,
                    None => std::future::pending().await,
                }
            } => End::Islanded,
            _ = overflow.notified() => End::Overflow,
        }
    });
    // Fires when the earliest channel credential expires.
    let expiry = sleep(NEVER);
    let mut expiry_at: Option<u64> = None;
    // When the held frame (if any) and what queued behind it get written.
    let flush_at = sleep(NEVER);
    let mut held: Option<Frame> = None;
    tokio::pin!(idle, stop, expiry, flush_at);
    let mut last_flush = Instant::now() - coalesce;
    let end = loop {
        tokio::select! {
            biased;
            end = &mut stop => break end,
            // Under load a socket writes at most once per coalescing window:
            // a frame that comes too soon after the last write is held, and
            // the window's timer (not every frame) wakes the task to write
            // it with everything queued behind it. One wake-up per write.
            Some(first) = rx.recv(), if held.is_none() => {
                let due = last_flush + coalesce;
                if Instant::now() < due {
                    held = Some(first);
                    flush_at.as_mut().reset(due);
                    continue;
                }
                match Box::pin(write_queued(&mut writer, &mut rx, first, write_timeout, &metrics, stop.as_mut())).await {
                    Ok(()) => last_flush = Instant::now(),
                    Err(end) => break end,
                }
            }
            _ = &mut flush_at, if held.is_some() => {
                let first = held.take().expect("guarded by the branch condition");
                match Box::pin(write_queued(&mut writer, &mut rx, first, write_timeout, &metrics, stop.as_mut())).await {
                    Ok(()) => last_flush = Instant::now(),
                    Err(end) => break end,
                }
            }
            inbound = reader.next() => {
                idle.as_mut().reset(Instant::now() + idle_timeout);
                if let Some(Ok(msg)) = &inbound {
                    metrics.frames_in.increment(1);
                    metrics.bytes_in.increment(msg.len() as u64);
                }
                match inbound {
                    Some(Ok(Inbound::Text(text))) => {
                        session.handle_text(&text);
                        rearm(&session, &mut expiry_at, expiry.as_mut());
                        if let Some((code, reason)) = session.close_reason() {
                            break End::Policy(code, reason.to_owned());
                        }
                    }
                    Some(Ok(Inbound::Binary(bytes))) => {
                        session.handle_binary(&bytes);
                        if let Some((code, reason)) = session.close_reason() {
                            break End::Policy(code, reason.to_owned());
                        }
                    }
                    Some(Ok(Inbound::Ping(data))) => replies.send(frame_writer::pong_frame(&data)),
                    Some(Ok(Inbound::Pong)) => {}
                    Some(Ok(Inbound::Close(code))) => break End::ClientClosed(code),
                    None => break End::ClientClosed(None),
                    Some(Err(failure)) => break read_failure(failure),
                }
            }
            _ = &mut idle => break End::IdleTimeout,
            _ = &mut expiry => {
                session.expire(unix_now());
                rearm(&session, &mut expiry_at, expiry.as_mut());
            }
        }
    };

    // Presence first: the other members hear about the leave at once, even
    // if saying goodbye to this client is slow.
    let channels = session.channel_count();
    drop(session);
    metrics.connections.decrement(1);
    metrics.disconnect(end.label());
    tracing::debug!(%peer, ?end, channels, "disconnected");
    let close = match &end {
        End::Shutdown => Some((1001, "server shutting down")),
        End::Islanded => Some((1012, "node lost its cluster link")),
        End::IdleTimeout => Some((1000, "idle timeout")),
        End::Overflow => Some((1008, "too slow: outbound queue overflow")),
        // A close reason has to fit a control frame (123 bytes).
        End::Policy(code, reason) | End::ProtocolError(code, reason) => {
            Some((*code, truncate(reason, 123)))
        }
        // The client's Close is echoed (RFC 6455 §5.5.1), which gives it a
        // clean close, not 1006: realtime-py reconnects on 1006.
        End::ClientClosed(Some(code)) => Some((*code, "")),
        _ => None,
    };
    // A policy close follows a reply that explains it: send what is queued first.
    let flush_queue = matches!(end, End::Policy(..));
    let goodbye = async {
        let mut last = Vec::new();
        if flush_queue {
            last.extend(held);
            last.extend(std::iter::from_fn(|| rx.try_recv()));
        }
        match (&end, close) {
            (_, Some((code, reason))) => last.push(frame_writer::close_frame(Some((code, reason)))),
            (End::ClientClosed(None), None) => last.push(frame_writer::close_frame(None)),
            _ => {}
        }
        writer.write(&last).await
    };
    // Boxed, like the write: an idle socket's task is only as large as its
    // largest await point, and these two were the largest (memory per connection).
    let _ = Box::pin(timeout(Duration::from_secs(1), goodbye)).await;
}
