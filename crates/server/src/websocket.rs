//! The WebSocket handshake, and the two halves of an upgraded socket.
//!
//! Reading is tungstenite's: framing, fragments, control frames between
//! fragments, masking, UTF-8 and the close handshake. Writing is ours
//! ([`crate::frame_writer`]), so that shared frames are never copied per
//! socket. What tungstenite writes of its own accord (pong replies, the echo
//! of a client's Close) goes through the socket's outbound queue
//! ([`ReplyTap`]), between whole frames.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::frame_writer::FrameWriter;
use crate::outbound::{Frame, Outbound};

type Io = TokioIo<Upgraded>;

/// The reading half: tungstenite's stream of messages.
pub type Reader = WebSocketStream<ReplyTap<ReadHalf<Io>>>;
/// The writing half.
pub type Writer = FrameWriter<WriteHalf<Io>>;

/// A request to upgrade to a WebSocket (RFC 6455 §4.2.1), checked.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let refuse = |status: StatusCode, why: &'static str| (status, why).into_response();
        if parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        let headers = &parts.headers;
        if !has_token(headers, CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(headers, UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade header did not include 'websocket'",
            ));
        }
        if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Upgrade { accept, on_upgrade })
    }
}

/// Whether a comma-separated header holds `token`, in any case.
fn has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Upgrade {
    /// Answer 101 and run `task` on the upgraded connection.
    pub fn on_upgrade<F, Fut>(
        self,
        on_failed: impl FnOnce(hyper::Error) + Send + 'static,
        task: F,
    ) -> Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => task(TokioIo::new(upgraded)).await,
                Err(e) => on_failed(e),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// Split an upgraded connection into tungstenite's reader, whose own
/// replies are queued on `replies`, and our writer.
pub async fn open(io: Io, max_message_bytes: usize, replies: Outbound) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(io);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message_bytes);
    config.max_frame_size = Some(max_message_bytes);
    // Small buffers: memory per idle connection matters more than
    // throughput per connection for presence (a larger frame grows the read
    // buffer as needed; 512 against 1,024 saved 0.45 KB a socket).
    config.read_buffer_size = 512;
    // Its writes are only pongs and a close echo: hand each on at once.
    config.write_buffer_size = 0;
    let tap = ReplyTap { read, replies };
    let reader = WebSocketStream::from_raw_socket(tap, Role::Server, Some(config)).await;
    (reader, FrameWriter::new(write))
}

/// The read half as tungstenite sees it: what it writes (always whole
/// frames, its write buffer being off) is queued for the writer.
pub struct ReplyTap<R> {
    read: R,
    replies: Outbound,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReplyTap<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReplyTap<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.replies
            .send(Frame::Framed(Bytes::copy_from_slice(buf)));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
