//! Channel timers: `send_after`, as Phoenix's `Process.send_after(self(),
//! ...)`. One thread per engine keeps every pending timer in a heap and,
//! when one is due, posts its message to the connection's loop like any
//! message from another thread: the loops never keep timers of arbitrary
//! length, and a timer of a connection that has gone is dropped there
//! (counted as a command for a closed connection).

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::reactor::{AppMessage, ConnHandle};

/// One pending timer.
struct Due {
    at: Instant,
    /// Keeps timers with the same instant in the order they were set.
    seq: u64,
    conn: ConnHandle,
    message: AppMessage,
    /// For an answer: posted only if this is still unset, and never
    /// refused for a full mailbox.
    unless: Option<Arc<AtomicBool>>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Pending {
    heap: BinaryHeap<Reverse<Due>>,
    next_seq: u64,
    stopped: bool,
}

/// The engine's channel timers.
#[derive(Default)]
pub(crate) struct Timers {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers")
            .field("pending", &self.lock().heap.len())
            .finish()
    }
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Posts `message` to `conn` after `delay`.
    pub(crate) fn send_after(&self, delay: Duration, conn: ConnHandle, message: AppMessage) {
        self.schedule(delay, conn, message, None);
    }

    /// Posts the answer `message` to `conn` after `delay`, never refused
    /// for a full mailbox, unless `answered` is set by then.
    pub(crate) fn answer_after(
        &self,
        delay: Duration,
        conn: ConnHandle,
        message: AppMessage,
        answered: Arc<AtomicBool>,
    ) {
        self.schedule(delay, conn, message, Some(answered));
    }

    fn schedule(
        &self,
        delay: Duration,
        conn: ConnHandle,
        message: AppMessage,
        unless: Option<Arc<AtomicBool>>,
    ) {
        let mut pending = self.lock();
        pending.next_seq += 1;
        let due = Due {
            at: Instant::now() + delay,
            seq: pending.next_seq,
            conn,
            message,
            unless,
        };
        pending.heap.push(Reverse(due));
        drop(pending);
        self.changed.notify_one();
    }

    /// Starts the thread that posts due timers; it ends on [`stop`](Self::stop).
    pub(crate) fn spawn(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let timers = Arc::clone(self);
        std::thread::Builder::new()
            .name("herald-timers".into())
            .spawn(move || timers.run())
    }

    fn run(&self) {
        let mut pending = self.lock();
        loop {
            if pending.stopped {
                return;
            }
            let now = Instant::now();
            let next = pending.heap.peek().map(|Reverse(due)| due.at);
            match next {
                Some(at) if at <= now => {
                    if let Some(Reverse(due)) = pending.heap.pop() {
                        drop(pending);
                        // A connection gone, or a loop too busy: dropped.
                        match &due.unless {
                            None => {
                                let _ = due.conn.send_info(due.message);
                            }
                            Some(answered) if !answered.swap(true, Ordering::AcqRel) => {
                                let _ = due.conn.send_answer(due.message);
                            }
                            Some(_) => {}
                        }
                        pending = self.lock();
                    }
                }
                Some(at) => {
                    pending = self
                        .changed
                        .wait_timeout(pending, at - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                None => {
                    pending = self
                        .changed
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    /// Ends the thread; pending timers are dropped.
    pub(crate) fn stop(&self) {
        let mut pending = self.lock();
        pending.stopped = true;
        pending.heap.clear();
        drop(pending);
        self.changed.notify_all();
    }
}
