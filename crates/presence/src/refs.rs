//! `phx_ref` generation.
//!
//! Clients only need refs to be unique and opaque. We make them unique across
//! nodes and restarts with a random per-process salt, and unique within the
//! process with a counter. The 12 bytes are URL-safe base64 encoded, giving 16
//! characters like Phoenix's refs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Hands out unique `phx_ref` strings. Shared by every channel of a process.
#[derive(Debug)]
pub struct RefGen {
    salt: u32,
    counter: AtomicU64,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl RefGen {
    /// `salt` must differ between processes that share channels (pick it at random).
    pub fn new(salt: u32) -> Self {
        RefGen {
            salt,
            counter: AtomicU64::new(1),
        }
    }

    /// The next ref; never repeats within this generator.
    pub fn next_ref(&self) -> Arc<str> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.salt.to_be_bytes());
        bytes[4..].copy_from_slice(&n.to_be_bytes());
        let mut out = String::with_capacity(16);
        for chunk in bytes.chunks(3) {
            let v = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
            for shift in [18, 12, 6, 0] {
                out.push(ALPHABET[((v >> shift) & 63) as usize] as char);
            }
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn refs_are_unique_16_char_url_safe() {
        let gen = RefGen::new(0xdead_beef);
        let refs: HashSet<_> = (0..10_000).map(|_| gen.next_ref()).collect();
        assert_eq!(refs.len(), 10_000);
        for r in &refs {
            assert_eq!(r.len(), 16);
            assert!(r.bytes().all(|b| ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn different_salts_never_collide() {
        // Salts one bit or one byte apart, and the extremes; every counter
        // value of one generator meets every counter value of the others.
        let salts = [0, 1, 2, 0x100, 0x0100_0000, u32::MAX];
        let mut all = HashSet::new();
        for salt in salts {
            let gen = RefGen::new(salt);
            all.extend((0..2_000).map(|_| gen.next_ref()));
        }
        assert_eq!(all.len(), salts.len() * 2_000);
    }
}
