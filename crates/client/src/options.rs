//! Client and channel options, as builders.

use std::time::Duration;

use roster_protocol::Vsn;

use crate::TlsRoots;

/// How the client connects: serializer, heartbeat, timeouts, reconnection.
/// Defaults are realtime-js's.
///
/// ```
/// use std::time::Duration;
/// use roster_client::{ClientOptions, Vsn};
///
/// let options = ClientOptions::default()
///     .vsn(Vsn::V1)
///     .heartbeat_interval(Duration::from_secs(15))
///     .timeout(Duration::from_secs(5))
///     .reconnect_intervals([Duration::from_millis(500), Duration::from_secs(3)]);
/// assert_eq!(options.get_vsn(), Vsn::V1);
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub(crate) vsn: Vsn,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) reconnect_intervals: Vec<Duration>,
    pub(crate) tls_roots: TlsRoots,
}

impl Default for ClientOptions {
    /// vsn 2.0.0, a heartbeat every 25 s, 10 s timeouts, reconnect after 1, 2, 5, then 10 s.
    ///
    /// ```
    /// let o = roster_client::ClientOptions::default();
    /// assert_eq!(o.get_vsn(), roster_client::Vsn::V2);
    /// ```
    fn default() -> Self {
        ClientOptions {
            vsn: Vsn::V2,
            heartbeat_interval: Duration::from_secs(25),
            timeout: Duration::from_secs(10),
            reconnect_intervals: [1, 2, 5, 10].map(Duration::from_secs).to_vec(),
            tls_roots: TlsRoots::WebPki,
        }
    }
}

impl ClientOptions {
    /// The serializer: [`Vsn::V2`] (default, JSON arrays) or [`Vsn::V1`] (JSON objects).
    ///
    /// ```
    /// let o = roster_client::ClientOptions::default().vsn(roster_client::Vsn::V1);
    /// ```
    pub fn vsn(mut self, vsn: Vsn) -> Self {
        self.vsn = vsn;
        self
    }

    /// The serializer chosen.
    ///
    /// ```
    /// assert_eq!(roster_client::ClientOptions::default().get_vsn().as_str(), "2.0.0");
    /// ```
    pub fn get_vsn(&self) -> Vsn {
        self.vsn
    }

    /// How often to send a heartbeat (default 25 s). A heartbeat still
    /// unanswered when the next is due closes the socket and reconnects.
    ///
    /// ```
    /// let o = roster_client::ClientOptions::default()
    ///     .heartbeat_interval(std::time::Duration::from_secs(10));
    /// ```
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every.max(Duration::from_millis(10));
        self
    }

    /// How long to wait for the connection, a join reply or a push reply (default 10 s).
    ///
    /// ```
    /// let o = roster_client::ClientOptions::default().timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits before each reconnection (and each rejoin of an errored channel):
    /// the n-th retry waits the n-th interval, later ones the last
    /// (default 1, 2, 5, 10 s). An empty list means 10 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = roster_client::ClientOptions::default()
    ///     .reconnect_intervals([Duration::from_millis(100), Duration::from_secs(1)]);
    /// ```
    pub fn reconnect_intervals(mut self, intervals: impl IntoIterator<Item = Duration>) -> Self {
        self.reconnect_intervals = intervals.into_iter().collect();
        self
    }

    /// Which CAs a `wss://` server's certificate may chain to (default
    /// [`TlsRoots::WebPki`]). Certificates and host names are always checked.
    ///
    /// ```
    /// use roster_client::{ClientOptions, TlsRoots};
    /// let o = ClientOptions::default().tls_roots(TlsRoots::Native);
    /// ```
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls_roots = roots;
        self
    }

    /// Trust only the CA certificates in this PEM file, and no public root:
    /// for a server with a certificate of a private (or test) CA. Same as
    /// `tls_roots(TlsRoots::OnlyCaFile(path))`; the file is read when the
    /// client is made.
    ///
    /// ```
    /// let o = roster_client::ClientOptions::default().trust_only_ca_file("/etc/roster/ca.pem");
    /// ```
    pub fn trust_only_ca_file(self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_roots(TlsRoots::OnlyCaFile(path.into()))
    }

    /// The wait before retry number `tries` (0-based): the interval less a
    /// random 0–25 %, so that clients dropped together do not all come back
    /// in the same instant.
    pub(crate) fn backoff(&self, tries: usize) -> Duration {
        let intervals = &self.reconnect_intervals;
        let base = intervals
            .get(tries)
            .or(intervals.last())
            .copied()
            .unwrap_or(Duration::from_secs(10));
        base.mul_f64(1.0 - 0.25 * random_fraction())
    }
}

/// What a channel asks for when it joins: presence key, broadcast flags,
/// private, and whether to re-track after a rejoin.
///
/// ```
/// use roster_client::ChannelOptions;
///
/// let options = ChannelOptions::default()
///     .presence_key("user-1")
///     .broadcast_self(true)
///     .broadcast_ack(true);
/// ```
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    pub(crate) presence_key: String,
    pub(crate) broadcast_self: bool,
    pub(crate) broadcast_ack: bool,
    pub(crate) private: bool,
    pub(crate) auto_retrack: bool,
    pub(crate) quiet_updates: bool,
}

impl Default for ChannelOptions {
    /// A server-generated key, no self/ack, public, auto re-track on.
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default();
    /// ```
    fn default() -> Self {
        ChannelOptions {
            presence_key: String::new(),
            broadcast_self: false,
            broadcast_ack: false,
            private: false,
            auto_retrack: true,
            quiet_updates: false,
        }
    }
}

impl ChannelOptions {
    /// The presence key of this client (default: the server generates a UUID per join).
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().presence_key("alice");
    /// ```
    pub fn presence_key(mut self, key: impl Into<String>) -> Self {
        self.presence_key = key.into();
        self
    }

    /// Receive this client's own broadcasts (default false).
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().broadcast_self(true);
    /// ```
    pub fn broadcast_self(mut self, on: bool) -> Self {
        self.broadcast_self = on;
        self
    }

    /// Have the server acknowledge each broadcast, so
    /// [`send_broadcast`](crate::RealtimeChannel::send_broadcast) waits for it (default false).
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().broadcast_ack(true);
    /// ```
    pub fn broadcast_ack(mut self, on: bool) -> Self {
        self.broadcast_ack = on;
        self
    }

    /// Join as a private channel (default false).
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().private(true);
    /// ```
    pub fn private(mut self, on: bool) -> Self {
        self.private = on;
        self
    }

    /// After the channel rejoins (reconnection, channel error), track the
    /// last tracked payload again (default true). The official clients leave
    /// that to the application.
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().auto_retrack(false);
    /// ```
    pub fn auto_retrack(mut self, on: bool) -> Self {
        self.auto_retrack = on;
        self
    }

    /// Join with `config.presence.updates: "replace"` (a Roster extension):
    /// this client's second and later `track` calls reach everyone as one
    /// quiet update (same `presence_ref`, no leave; a
    /// [`PresenceChange::Update`](crate::PresenceChange::Update) for Rust
    /// clients, a lone `join` for supabase-js). Default false: the server's
    /// `--presence-updates` decides.
    ///
    /// ```
    /// let o = roster_client::ChannelOptions::default().quiet_updates(true);
    /// ```
    pub fn quiet_updates(mut self, on: bool) -> Self {
        self.quiet_updates = on;
        self
    }
}

/// A number in [0, 1), from the standard library's per-process random
/// hash keys (jitter needs no cryptographic randomness).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_list_then_stays_at_the_last_with_jitter() {
        let o = ClientOptions::default();
        let within = |d: Duration, secs: u64| {
            let full = Duration::from_secs(secs);
            d <= full && d >= full.mul_f64(0.75)
        };
        for (t, secs) in [1, 2, 5, 10, 10, 10].into_iter().enumerate() {
            assert!(within(o.backoff(t), secs), "{t}: {:?}", o.backoff(t));
        }
        let empty = o.clone().reconnect_intervals([]);
        assert!(within(empty.backoff(3), 10));
        let waits: std::collections::HashSet<_> = (0..20).map(|_| o.backoff(0)).collect();
        assert!(waits.len() > 1, "the waits vary");
    }
}
