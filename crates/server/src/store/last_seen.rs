//! "Last seen": when a presence key's last meta left a channel, per node.
//!
//! Bounded twice: at most `cap` remembered (channel, key) pairs, the oldest
//! forgotten first, and nothing older than `max_age`. A client joining with
//! millions of distinct keys only ever pushes the oldest entries out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub struct LastSeen {
    cap: usize,
    max_age_ms: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `<channel name>\0<presence key>` → (order, left at, ms).
    by_key: HashMap<Arc<str>, (u64, u64)>,
    /// Order of the last leave → the same name: the oldest comes first.
    by_order: BTreeMap<u64, Arc<str>>,
    next: u64,
}

fn name(channel: &str, key: &str) -> String {
    format!("{channel}\u{0}{key}")
}

impl LastSeen {
    /// `None` when `cap` is 0 (off).
    pub fn new(cap: usize, max_age: Duration) -> Option<Arc<Self>> {
        (cap > 0).then(|| {
            Arc::new(LastSeen {
                cap,
                max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
                inner: Mutex::default(),
            })
        })
    }

    /// `keys` of `channel` (its topic, marked when private) lost their last meta at `at_ms`.
    pub fn left<S: AsRef<str>>(&self, channel: &str, keys: &[S], at_ms: u64) {
        let mut inner = self.inner.lock();
        for key in keys {
            let name = name(channel, key.as_ref());
            if let Some((order, _)) = inner.by_key.remove(name.as_str()) {
                inner.by_order.remove(&order);
            }
            // Room first: the cap holds before anything new is kept.
            while inner.by_key.len() >= self.cap {
                let Some((_, oldest)) = inner.by_order.pop_first() else {
                    break;
                };
                inner.by_key.remove(&oldest);
            }
            let order = inner.next;
            inner.next += 1;
            let name: Arc<str> = Arc::from(name);
            inner.by_order.insert(order, name.clone());
            inner.by_key.insert(name, (order, at_ms));
        }
        self.expire(&mut inner, at_ms);
    }

    /// Forget what is older than the age limit (leaves come in time order,
    /// so the oldest are first).
    fn expire(&self, inner: &mut Inner, now_ms: u64) {
        while let Some((&order, oldest)) = inner.by_order.first_key_value() {
            let at = inner.by_key.get(oldest).map_or(0, |e| e.1);
            if now_ms.saturating_sub(at) <= self.max_age_ms {
                break;
            }
            let oldest = oldest.clone();
            inner.by_order.remove(&order);
            inner.by_key.remove(&oldest);
        }
    }

    /// When `key` last left `channel` (its topic, marked when private), within the age limit.
    pub fn get(&self, channel: &str, key: &str, now_ms: u64) -> Option<u64> {
        let inner = self.inner.lock();
        let (_, at) = *inner.by_key.get(name(channel, key).as_str())?;
        (now_ms.saturating_sub(at) <= self.max_age_ms).then_some(at)
    }

    /// How many pairs are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_forgets_the_oldest_and_the_age_limit_forgets_the_old() {
        let seen = LastSeen::new(3, Duration::from_millis(1000)).unwrap();
        seen.left("room", &["a", "b", "c"], 10);
        seen.left("room", &["a"], 20); // a is now the newest
        seen.left("room", &["d"], 30); // pushes out b, the oldest
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.get("room", "b", 30), None);
        assert_eq!(seen.get("room", "a", 30), Some(20));
        assert_eq!(seen.get("other", "a", 30), None, "per channel");
        assert_eq!(seen.get("room", "c", 1011), None, "too old to answer");
        seen.left("room", &["e"], 1025); // c (10) and a (20) expire
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.get("room", "d", 1025), Some(30));
        assert!(LastSeen::new(0, Duration::ZERO).is_none(), "0 = off");
    }
}
