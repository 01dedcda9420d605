//! The WebSocket handshake, and the two halves of an upgraded socket.
//!
//! Both halves are ours. Reading is [`roster_protocol::websocket::Decoder`]'s
//! (framing, fragments, control frames between fragments, masking, UTF-8,
//! inflating); writing is [`crate::transport::frame_writer`]'s, so that shared frames
//! are never copied per socket and are compressed once for all of them.
//! Replies the protocol owes (pongs, the echo of a client's Close) go
//! through the socket's outbound queue, between whole frames.

use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use roster_protocol::websocket::{self as ws, Decoder, Inbound, Peer};
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tungstenite::handshake::derive_accept_key;

use crate::settings::Compression;
use crate::transport::frame_writer::FrameWriter;

type Io = TokioIo<Upgraded>;

/// The writing half.
pub type Writer = FrameWriter<WriteHalf<Io>>;

/// A request to upgrade to a WebSocket (RFC 6455 §4.2.1), checked.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The client offered a `permessage-deflate` this node can honour.
    offers_deflate: bool,
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
        let offers_deflate = ws::accepts_deflate_offer(
            headers
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        Ok(Upgrade {
            accept,
            on_upgrade,
            offers_deflate,
        })
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
    /// Answer 101 and run `task` on the upgraded connection, telling it
    /// whether `permessage-deflate` was agreed (`compress` and an
    /// acceptable offer).
    pub fn on_upgrade<F, Fut>(
        self,
        compress: bool,
        on_failed: impl FnOnce(hyper::Error) + Send + 'static,
        task: F,
    ) -> Response
    where
        F: FnOnce(Io, bool) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let deflate = compress && self.offers_deflate;
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => task(TokioIo::new(upgraded), deflate).await,
                Err(e) => on_failed(e),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        if deflate {
            headers.insert(
                SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(ws::DEFLATE_RESPONSE),
            );
        }
        response
    }
}

/// Split an upgraded connection into its reader and writer; `compression`
/// is `Some` when `permessage-deflate` was agreed.
pub fn open(
    io: Io,
    max_message_bytes: usize,
    compression: Option<Compression>,
) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(io);
    let reader = Reader {
        io: read,
        buf: BytesMut::new(),
        decoder: Decoder::new(Peer::Client, max_message_bytes, compression.is_some()),
    };
    (reader, FrameWriter::new(write, compression))
}

/// Bytes read ahead per socket: a larger frame grows the buffer as needed,
/// and it is given back once that frame is read (memory per idle
/// connection matters more than throughput per connection for presence).
const READ_CHUNK: usize = 512;

/// The reading half: whole messages out of the socket's bytes.
pub struct Reader {
    io: ReadHalf<Io>,
    buf: BytesMut,
    decoder: Decoder,
}

/// Why reading ended other than by the client's Close.
#[derive(Debug)]
pub enum ReadFailure {
    /// The client broke the protocol; close with this error's code.
    Refused(ws::ReadError),
    /// The connection broke.
    Io(std::io::Error),
}

impl Reader {
    /// The next message; `None` when the connection ended without a Close.
    /// Cancel-safe: what was read stays in the buffer for the next call.
    pub async fn next(&mut self) -> Option<Result<Inbound, ReadFailure>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(message)) => {
                    if self.buf.is_empty() && self.buf.capacity() > 8 * READ_CHUNK {
                        self.buf = BytesMut::new();
                    }
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(ReadFailure::Refused(e))),
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(READ_CHUNK);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(ReadFailure::Io(e))),
            }
        }
    }
}
