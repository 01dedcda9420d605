//! Poll a rarely-ready future only after it has been woken.
//!
//! `tokio::select!` polls every branch each time its task wakes. A socket
//! task wakes for every write and every inbound frame, while its shutdown,
//! island and overflow signals fire about once in its life, and polling
//! each of them takes a lock. Gated behind their own waker they cost one
//! atomic swap per turn instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct WhenWoken<F> {
    fut: Pin<Box<F>>,
    gate: Arc<Gate>,
    /// `gate` as a waker, made once: the inner future registers this one.
    waker: Waker,
}

struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    pub fn new(fut: F) -> Self {
        let gate = Arc::new(Gate {
            // The first poll must reach the future so that it registers.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        WhenWoken {
            fut: Box::pin(fut),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Register before looking at the flag: a wake in between then
        // wakes this task again rather than being lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn completes_when_the_inner_future_is_woken() {
        let notify = Arc::new(Notify::new());
        let n = notify.clone();
        let mut gated = WhenWoken::new(async move { n.notified().await });
        // Not ready: the gate stays shut however often it is polled.
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::from_millis(5), &mut gated)
                .await
                .is_err());
        }
        let n2 = notify.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            n2.notify_one();
        });
        tokio::time::timeout(Duration::from_secs(2), gated)
            .await
            .expect("woken future completes");
    }
}
