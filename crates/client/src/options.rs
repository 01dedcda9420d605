//! Client and channel options, as builders.

use std::time::Duration;

use roster_protocol::Vsn;

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

    /// The wait before retry number `tries` (0-based).
    pub(crate) fn backoff(&self, tries: usize) -> Duration {
        let intervals = &self.reconnect_intervals;
        intervals
            .get(tries)
            .or(intervals.last())
            .copied()
            .unwrap_or(Duration::from_secs(10))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_list_then_stays_at_the_last() {
        let o = ClientOptions::default();
        let secs: Vec<u64> = (0..6).map(|t| o.backoff(t).as_secs()).collect();
        assert_eq!(secs, [1, 2, 5, 10, 10, 10]);
        let empty = o.reconnect_intervals([]);
        assert_eq!(empty.backoff(3), Duration::from_secs(10));
    }
}
