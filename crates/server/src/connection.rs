//! One task per socket: read frames, write the outbound queue, watch the clock.
//!
//! The task owns the socket and its [`Session`]. It ends when the client
//! closes or errs, after the idle timeout, when its queue overflows, when a
//! write stalls, or on shutdown; in every case dropping the session cleans
//! up its channels.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use roster_protocol::Vsn;
use tokio::time::{sleep, timeout, Instant};

use crate::auth::{unix_now, Credential};
use crate::metrics::Metrics;
use crate::outbound::{message_len, Inbox, Outbound};
use crate::server::Server;
use crate::session::Session;
use crate::when_woken::WhenWoken;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 256;

/// Why a socket ended, for the log.
#[derive(Debug)]
enum End {
    ClientClosed,
    IdleTimeout,
    Overflow,
    WriteStalled,
    Shutdown,
    /// The node was cut off from its cluster for the island timeout.
    Islanded,
    /// A rule says this socket must go (the join rate, undecodable input):
    /// the close code and reason.
    Policy(u16, String),
    #[allow(dead_code)] // read through Debug in the log line
    Error(String),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::IdleTimeout => "idle_timeout",
            End::Overflow => "overflow",
            End::WriteStalled => "write_stalled",
            End::Shutdown => "shutdown",
            End::Islanded => "islanded",
            End::Policy(..) => "policy",
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
/// frames) as one flush, i.e. one syscall when the socket has room.
async fn write_queued(
    ws: &mut WebSocket,
    rx: &mut Inbox,
    first: Message,
    write_timeout: Duration,
    metrics: &Metrics,
) -> Result<(), End> {
    metrics.outbound_queue_depth.record((rx.len() + 1) as f64);
    let write = async {
        let mut frames = 1;
        let mut bytes = message_len(&first);
        ws.feed(first).await?;
        while frames < WRITE_BATCH {
            match rx.try_recv() {
                Some(msg) => {
                    frames += 1;
                    bytes += message_len(&msg);
                    ws.feed(msg).await?;
                }
                None => break,
            }
        }
        ws.flush().await.map(|()| (frames, bytes))
    };
    let written = {
        let mut write = pin!(write);
        // Most writes complete at once; only a write that has to wait arms the
        // stall timer (a timer registration per write showed up in profiles).
        match poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(done) => Ok(done),
            Poll::Pending => timeout(write_timeout, write).await,
        }
    };
    match written {
        Ok(Ok((frames, bytes))) => {
            rx.written(bytes);
            metrics.frames_out.increment(frames as u64);
            metrics.bytes_out.increment(bytes as u64);
            Ok(())
        }
        Ok(Err(e)) => Err(End::Error(e.to_string())),
        Err(_) => Err(End::WriteStalled),
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
    mut ws: WebSocket,
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
    let shutdown = server.shutdown.clone();
    let mut session = Session::new(server.clone(), out, credential, peer.ip());
    let metrics = server.metrics.clone();
    metrics.connections.increment(1);
    metrics.connections_total.increment(1);
    tracing::debug!(%peer, vsn = vsn.as_str(), "connected");

    // Created once, polled every turn: re-creating them per frame showed up in profiles.
    let idle = sleep(idle_timeout);
    // A node cut off from its cluster too long sends its sockets elsewhere.
    let island = server.registry.cluster().map(|c| c.island.lock().clone());
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
    let mut held: Option<Message> = None;
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
                match Box::pin(write_queued(&mut ws, &mut rx, first, write_timeout, &metrics)).await {
                    Ok(()) => last_flush = Instant::now(),
                    Err(end) => break end,
                }
            }
            _ = &mut flush_at, if held.is_some() => {
                let first = held.take().expect("guarded by the branch condition");
                match Box::pin(write_queued(&mut ws, &mut rx, first, write_timeout, &metrics)).await {
                    Ok(()) => last_flush = Instant::now(),
                    Err(end) => break end,
                }
            }
            inbound = ws.recv() => {
                idle.as_mut().reset(Instant::now() + idle_timeout);
                if let Some(Ok(msg)) = &inbound {
                    metrics.frames_in.increment(1);
                    metrics.bytes_in.increment(message_len(msg) as u64);
                }
                match inbound {
                    Some(Ok(Message::Text(text))) => {
                        session.handle_text(&text);
                        rearm(&session, &mut expiry_at, expiry.as_mut());
                        if let Some((code, reason)) = session.close_reason() {
                            break End::Policy(code, reason.to_owned());
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        session.handle_binary(&bytes);
                        if let Some((code, reason)) = session.close_reason() {
                            break End::Policy(code, reason.to_owned());
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break End::ClientClosed,
                    Some(Err(e)) => break End::Error(e.to_string()),
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
        End::Policy(code, reason) => Some((*code, truncate(reason, 123))),
        _ => None,
    };
    // A policy close follows a reply that explains it: send what is queued first.
    let flush_queue = matches!(end, End::Policy(..));
    let goodbye = async {
        if flush_queue {
            if let Some(msg) = held {
                ws.feed(msg).await?;
            }
            while let Some(msg) = rx.try_recv() {
                ws.feed(msg).await?;
            }
        }
        match close {
            Some((code, reason)) => {
                let frame = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                ws.send(frame).await
            }
            // The client's Close was answered by tungstenite's queued echo;
            // flushing sends it, so the client sees a clean close (RFC 6455
            // §5.5.1), not 1006 — realtime-py reconnects on 1006.
            None => ws.flush().await,
        }
    };
    // Boxed, like the write: an idle socket's task is only as large as its
    // largest await point, and these two were the largest (memory per connection).
    let _ = Box::pin(timeout(Duration::from_secs(1), goodbye)).await;
}
