//! Bytes the last-seen memory costs per remembered key: fills it with
//! 100,000 (channel, key) pairs, counting heap bytes with a wrapping
//! allocator. `cargo run --release -p roster-server --example last_seen_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    const N: usize = 100_000;
    let seen = roster_server::LastSeen::new(N, Duration::from_secs(3600)).unwrap();
    let keys: Vec<String> = (0..N).map(|i| format!("user-{i:08}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for (i, key) in keys.iter().enumerate() {
        seen.left("realtime:room-0001", &[key], 1_700_000_000_000 + i as u64);
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{N} keys (channel name 18 B, key 13 B): {used} bytes, {} bytes per remembered key",
        used / N
    );
}
