//! Who may open a connection: caps on open connections, in all and per IP;
//! and the rate counters that outlive a socket (per client IP), so that
//! reconnecting does not reset them.
//!
//! A [`Permit`] is taken when a TCP connection is accepted (plain HTTP and
//! WebSocket alike) and released when the connection closes, or, for an
//! upgraded one, when its socket task ends too; so the counts are exact
//! whatever ends the connection, and silent connections count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
pub struct Admission {
    counts: Mutex<Counts>,
    joins: Mutex<RateWindow>,
    presence_events: Mutex<RateWindow>,
    /// Per client IP, all its sockets and REST calls together.
    broadcasts_by_ip: Mutex<PerIp>,
    presence_calls_by_ip: Mutex<PerIp>,
    /// Over-cap connections being answered with a 429.
    refusals: Arc<AtomicUsize>,
}

/// One-second windows per IP address. Windows that have ended are swept
/// out every few seconds, so the map holds only addresses active lately.
#[derive(Default)]
struct PerIp {
    windows: HashMap<IpAddr, RateWindow>,
    swept: Option<std::time::Instant>,
}

impl PerIp {
    fn allow(&mut self, ip: IpAddr, max: u32) -> bool {
        let now = std::time::Instant::now();
        let second = std::time::Duration::from_secs(1);
        if self
            .swept
            .is_none_or(|t| now.duration_since(t) > 5 * second)
        {
            self.windows.retain(|_, w| w.is_current(second));
            self.swept = Some(now);
        }
        self.windows.entry(ip).or_default().allow(max, second)
    }
}

/// A token bucket: `rate` tokens a second, holding at most one second's
/// worth, so a burst is allowed up to what the rate would give in a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    pub fn new(rate: f64) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            last: std::time::Instant::now(),
        }
    }

    /// Refill for the time passed; whether `n` tokens are there now.
    fn has(&mut self, n: f64) -> bool {
        let now = std::time::Instant::now();
        let passed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + passed * self.rate).min(self.rate);
        self.last = now;
        self.tokens >= n
    }

    /// Take `n` tokens if they are all there.
    pub fn take(&mut self, n: f64) -> bool {
        let ok = self.has(n);
        if ok {
            self.tokens -= n;
        }
        ok
    }

    /// Give back tokens taken for work not done.
    pub fn refund(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.rate);
    }

    /// Take `a` from `self` and `b` from `other`, both or neither.
    pub fn take_both(&mut self, a: f64, other: &mut TokenBucket, b: f64) -> bool {
        let ok = self.has(a) && other.has(b);
        if ok {
            self.tokens -= a;
            other.tokens -= b;
        }
        ok
    }
}

/// Over-cap connections answered with a 429 at once; beyond that they are
/// closed without a reply, so a flood of them cannot hold descriptors.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// One of the [`MAX_REFUSALS_IN_FLIGHT`] places; freed when dropped.
pub struct RefusalSlot(Arc<AtomicUsize>);

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused; the text is the HTTP 429 body's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            // rt's text for its concurrent-users cap.
            Refusal::TooManyConnections => "Too many connected users",
            Refusal::TooManyFromAddress => "Too many connections from this address",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::TooManyFromAddress => "too_many_from_address",
        }
    }
}

/// A fixed one-second window counter: `allow` says whether one more event
/// fits under `max` per second (0 = no cap).
#[derive(Debug, Default)]
pub struct RateWindow {
    window: Option<(std::time::Instant, u32)>,
}

impl RateWindow {
    pub fn allow(&mut self, max: u32, period: std::time::Duration) -> bool {
        if max == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        match &mut self.window {
            Some((start, count)) if now.duration_since(*start) < period => {
                *count += 1;
                *count <= max
            }
            window => {
                *window = Some((now, 1));
                true
            }
        }
    }

    /// Whether the window started less than `period` ago.
    pub fn is_current(&self, period: std::time::Duration) -> bool {
        self.window
            .is_some_and(|(start, _)| start.elapsed() < period)
    }
}

/// Held by a connection; frees its place when dropped.
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// Connections open now (WebSocket and plain HTTP).
    pub fn open_connections(&self) -> usize {
        self.counts.lock().total
    }

    /// One more presence call on this node, under `max` per second?
    pub fn allow_presence_event(&self, max: u32) -> bool {
        // No cap (the default): no shared lock on the track path.
        max == 0
            || self
                .presence_events
                .lock()
                .allow(max, std::time::Duration::from_secs(1))
    }

    /// One more broadcast from `ip`, under `max` per second (0 = no cap)?
    pub fn allow_broadcast_from(&self, ip: IpAddr, max: u32) -> bool {
        max == 0 || self.broadcasts_by_ip.lock().allow(ip, max)
    }

    /// One more presence call from `ip`, under `max` per second (0 = no cap)?
    pub fn allow_presence_call_from(&self, ip: IpAddr, max: u32) -> bool {
        max == 0 || self.presence_calls_by_ip.lock().allow(ip, max)
    }

    /// One more channel join on this node, under `max` per second?
    pub fn allow_join(&self, max: u32) -> bool {
        max == 0
            || self
                .joins
                .lock()
                .allow(max, std::time::Duration::from_secs(1))
    }

    /// A place to answer an over-cap connection with a 429, if one is free.
    pub fn refusal_slot(&self) -> Option<RefusalSlot> {
        let taken = self.refusals.fetch_add(1, Ordering::Relaxed);
        let slot = RefusalSlot(self.refusals.clone());
        (taken < MAX_REFUSALS_IN_FLIGHT).then_some(slot)
    }

    /// Take a place for `ip` under the caps (0 = no cap).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock();
        if max_total > 0 && c.total >= max_total {
            return Err(Refusal::TooManyConnections);
        }
        let here = c.per_ip.get(&ip).copied().unwrap_or(0);
        if max_per_ip > 0 && here >= max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        c.total += 1;
        c.per_ip.insert(ip, here + 1);
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let a = Arc::new(Admission::default());
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = a.admit(ip1, 3, 1).unwrap();
        assert_eq!(a.admit(ip1, 3, 1).err(), Some(Refusal::TooManyFromAddress));
        let _p2 = a.admit(ip2, 3, 2).unwrap();
        let _p3 = a.admit(ip2, 3, 2).unwrap();
        assert_eq!(a.admit(ip2, 3, 5).err(), Some(Refusal::TooManyConnections));
        drop(p1);
        assert!(a.admit(ip1, 3, 1).is_ok());
        assert!(a.counts.lock().per_ip.contains_key(&ip2));
    }

    #[test]
    fn per_ip_rates_are_separate_and_capped() {
        let a = Admission::default();
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| a.allow_broadcast_from(ip1, 3)));
        assert!(!a.allow_broadcast_from(ip1, 3));
        assert!(a.allow_broadcast_from(ip2, 3));
        assert!(a.allow_presence_call_from(ip1, 3), "a separate counter");
        assert!(
            (0..10).all(|_| a.allow_broadcast_from(ip1, 0)),
            "0 = no cap"
        );
    }

    #[test]
    fn token_bucket_allows_a_second_of_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0);
        assert!((0..10).all(|_| b.take(1.0)));
        assert!(!b.take(1.0));
        let mut bytes = TokenBucket::new(100.0);
        assert!(!b.take_both(1.0, &mut bytes, 50.0));
        assert!(bytes.take(100.0), "nothing was taken by the refused pair");
    }

    #[test]
    fn refusals_in_flight_are_bounded() {
        let a = Admission::default();
        let slots: Vec<_> = (0..MAX_REFUSALS_IN_FLIGHT)
            .map(|_| a.refusal_slot().expect("a free slot"))
            .collect();
        assert!(a.refusal_slot().is_none());
        drop(slots);
        assert!(a.refusal_slot().is_some());
        assert_eq!(a.refusals.load(Ordering::Relaxed), 0);
    }
}
