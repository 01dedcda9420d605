//! The `roster` binary's memory allocator (the library leaves it to its user).
//!
//! A join or leave storm in a big room queues many frames at once; once they
//! are written and the clients gone, the memory should go back to the system.
//! Three builds, chosen by cargo feature (at most one):
//!
//! * `jemalloc`, the default: a background thread purges freed pages about
//!   a second after they were freed (`JEMALLOC_CONF`); after a 3,000-member
//!   join and leave storm RSS is back within ~8 MB of idle;
//! * `--no-default-features`: the system allocator (glibc). It keeps freed
//!   memory in its arenas, so a low-frequency task calls `malloc_trim` once
//!   the node has shed many connections (`spawn_trim`;
//!   `ROSTER_MALLOC_TRIM=0` turns it off, for comparisons);
//! * `--no-default-features --features mimalloc`: mimalloc with its default
//!   settings (`MIMALLOC_PURGE_DELAY` tunes its purging). It kept the most
//!   after a storm, so it is there for comparison.
//!
//! BENCHMARKS.md ("Allocators") has the measurements behind the default.

use std::sync::Arc;

#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!(
    "features `jemalloc` (the default) and `mimalloc` are mutually exclusive: \
     build mimalloc with --no-default-features --features mimalloc"
);

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread returns
/// dirty and muzzy pages about a second after they were freed (the
/// defaults, 10 s and no background thread, purge only on later
/// allocations, so an idle node after a storm would keep them).
/// `_RJEM_MALLOC_CONF` in the environment still overrides these.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: Option<&'static libc::c_char> = Some(unsafe {
    CStr {
        bytes: &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0"[0],
    }
    .c_char
});

#[cfg(feature = "jemalloc")]
union CStr {
    bytes: &'static u8,
    c_char: &'static libc::c_char,
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With glibc's malloc: give freed memory back once the node has shed many
/// connections. Checks the count of open connections every second; when it
/// is at least a quarter (and at least 256) below its highest since the last
/// trim, calls `malloc_trim(0)` on a blocking thread: it returns the free
/// pages of every arena, not just the top of the heap. A steady node never
/// trims; a leave storm trims a few times, a few milliseconds each.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "jemalloc"),
    not(feature = "mimalloc")
))]
pub fn spawn_trim(server: Arc<roster_server::Server>) {
    if std::env::var_os("ROSTER_MALLOC_TRIM").is_some_and(|v| v == "0") {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut high = 0;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = server.shutdown.cancelled() => break,
            }
            let open = server.admission.open_connections();
            high = high.max(open);
            if should_trim(high, open) {
                // SAFETY: malloc_trim only walks and releases free memory.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
                high = open;
            }
        }
    });
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "jemalloc"),
    not(feature = "mimalloc")
)))]
pub fn spawn_trim(_server: Arc<roster_server::Server>) {}

/// Trim when `open` is at least a quarter, and at least 256, below `high`.
#[allow(dead_code)]
fn should_trim(high: usize, open: usize) -> bool {
    let shed = high.saturating_sub(open);
    shed >= 256 && shed * 4 >= high
}

#[cfg(test)]
mod tests {
    use super::should_trim;

    #[test]
    fn trims_only_after_shedding_many() {
        assert!(!should_trim(0, 0));
        assert!(!should_trim(200, 0), "a small node never trims");
        assert!(should_trim(3000, 0));
        assert!(should_trim(3000, 2250));
        assert!(!should_trim(3000, 2300));
        assert!(!should_trim(100_000, 99_000), "a small share of a big node");
    }
}
