//! What can go wrong, as values.

/// An error from the client. Every failure is reported as one of these;
/// nothing in this crate panics on bad input from the server or the network.
///
/// ```
/// use roster_client::Error;
///
/// let e = Error::Refused { status: 401, message: "API key is missing".into() };
/// assert_eq!(e.to_string(), "connection refused (HTTP 401): API key is missing");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL given to [`RealtimeClient::new`](crate::RealtimeClient::new) cannot be used.
    ///
    /// ```
    /// let e = roster_client::RealtimeClient::new("ftp://x", "key").unwrap_err();
    /// assert!(matches!(e, roster_client::Error::InvalidUrl(_)));
    /// ```
    #[error("invalid URL: {0}")]
    InvalidUrl(String),

    /// The server refused the WebSocket upgrade; `message` is the `error` of
    /// its JSON body (e.g. `The token provided is not a valid JWT`).
    ///
    /// ```
    /// # async fn demo() {
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "bad").unwrap();
    /// if let Err(roster_client::Error::Refused { status, message }) = client.connect().await {
    ///     eprintln!("refused with {status}: {message}");
    /// }
    /// # }
    /// ```
    #[error("connection refused (HTTP {status}): {message}")]
    Refused {
        /// The HTTP status (401 for a bad credential).
        status: u16,
        /// The server's explanation.
        message: String,
    },

    /// The server's host name could not be resolved.
    ///
    /// ```
    /// let e = roster_client::Error::Dns { host: "nope.invalid".into(), message: "not found".into() };
    /// assert!(e.to_string().starts_with("cannot resolve nope.invalid"));
    /// ```
    #[error("cannot resolve {host}: {message}")]
    Dns {
        /// The host name of the URL.
        host: String,
        /// The resolver's explanation.
        message: String,
    },

    /// The TLS handshake of a `wss://` connection failed, or the TLS
    /// settings cannot be used; `reason` says which case it is.
    ///
    /// ```
    /// use roster_client::{Error, TlsReason};
    /// let e = Error::Tls { reason: TlsReason::WrongHostname, message: "not valid for 127.0.0.1".into() };
    /// assert!(e.to_string().starts_with("TLS error"));
    /// ```
    #[error("TLS error: {message}")]
    Tls {
        /// What went wrong, to match on.
        reason: TlsReason,
        /// The details, for people.
        message: String,
    },

    /// The server answered with something that is not the WebSocket
    /// handshake (or not the Realtime protocol).
    ///
    /// ```
    /// let e = roster_client::Error::Protocol("no Sec-WebSocket-Accept".into());
    /// assert!(e.to_string().starts_with("protocol error"));
    /// ```
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The connection could not be made or was lost (TCP, I/O).
    ///
    /// ```
    /// let e = roster_client::Error::Connection("connection reset".into());
    /// assert!(e.to_string().contains("reset"));
    /// ```
    #[error("connection failed: {0}")]
    Connection(String),

    /// No answer within the configured timeout.
    ///
    /// ```
    /// assert_eq!(roster_client::Error::TimedOut.to_string(), "timed out");
    /// ```
    #[error("timed out")]
    TimedOut,

    /// The server answered a push with an error; the reason as it sent it.
    ///
    /// ```
    /// let e = roster_client::Error::Rejected("Presence track payload must be a map".into());
    /// assert!(e.to_string().contains("must be a map"));
    /// ```
    #[error("rejected by the server: {0}")]
    Rejected(String),

    /// The channel is not subscribed: call
    /// [`subscribe`](crate::RealtimeChannel::subscribe) first.
    ///
    /// ```
    /// assert!(roster_client::Error::NotSubscribed.to_string().contains("subscribe"));
    /// ```
    #[error("the channel is not subscribed (call subscribe first)")]
    NotSubscribed,

    /// The channel was closed (left, removed, or closed by the server)
    /// before the operation completed.
    ///
    /// ```
    /// assert_eq!(roster_client::Error::ChannelClosed.to_string(), "the channel was closed");
    /// ```
    #[error("the channel was closed")]
    ChannelClosed,

    /// The client was disconnected with
    /// [`disconnect`](crate::RealtimeClient::disconnect) (or dropped).
    ///
    /// ```
    /// assert!(roster_client::Error::Disconnected.to_string().contains("disconnected"));
    /// ```
    #[error("the client is disconnected")]
    Disconnected,

    /// A value could not be turned into JSON.
    ///
    /// ```
    /// let e = roster_client::Error::Serialize("key must be a string".into());
    /// assert!(e.to_string().starts_with("cannot serialize"));
    /// ```
    #[error("cannot serialize to JSON: {0}")]
    Serialize(String),
}

impl Error {
    /// The error for a failed WebSocket handshake or connection.
    pub(crate) fn from_ws(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            WsError::Http(resp) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .or_else(|| {
                        let text = String::from_utf8_lossy(body).trim().to_owned();
                        (!text.is_empty()).then_some(text)
                    })
                    .unwrap_or_else(|| {
                        resp.status()
                            .canonical_reason()
                            .unwrap_or("no reason given")
                            .to_owned()
                    });
                Error::Refused { status, message }
            }
            WsError::Io(e) => Error::Connection(e.to_string()),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                Error::Connection("connection closed".into())
            }
            WsError::Url(e) => Error::InvalidUrl(e.to_string()),
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// Why a TLS connection failed ([`Error::Tls`]).
///
/// ```
/// assert_ne!(roster_client::TlsReason::WrongHostname, roster_client::TlsReason::UntrustedCertificate);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsReason {
    /// The certificate is valid, but not for the host name of the URL.
    WrongHostname,
    /// The certificate does not chain to a trusted root (see
    /// [`TlsRoots`](crate::TlsRoots)).
    UntrustedCertificate,
    /// The certificate has expired.
    Expired,
    /// The certificate is unusable for another reason.
    InvalidCertificate,
    /// The handshake failed for a reason other than the certificate.
    Handshake,
    /// The trust settings could not be loaded (e.g. an unreadable CA file).
    Config,
}
