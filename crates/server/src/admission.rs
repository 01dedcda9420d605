//! Who may open a connection: caps on open connections, in all and per IP.
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
    /// Over-cap connections being answered with a 429.
    refusals: Arc<AtomicUsize>,
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
}

/// Held by a connection; frees its place when dropped.
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// One more presence call on this node, under `max` per second?
    pub fn allow_presence_event(&self, max: u32) -> bool {
        // No cap (the default): no shared lock on the track path.
        max == 0
            || self
                .presence_events
                .lock()
                .allow(max, std::time::Duration::from_secs(1))
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
