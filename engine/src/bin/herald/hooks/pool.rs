//! The threads that call the backend: a fixed number of calls in flight,
//! a bounded queue in front of them, one keep-alive connection pool.
//!
//! The event loops only enqueue (a `try_send`, never a wait): a full queue
//! is a failure at once, to which the configured policy applies, so a slow
//! or dead backend costs the loops nothing and memory stays bounded.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// The largest answer read from the backend.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Upper bounds of the latency histogram, in milliseconds.
pub(crate) const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Why a call gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    #[error("too many calls waiting for the backend")]
    Busy,
    #[error("backend unreachable or too slow: {0}")]
    Transport(String),
    #[error("backend answered HTTP {0}")]
    Status(u16),
    #[error("backend answer unreadable: {0}")]
    Answer(String),
}

/// What a caller does with the answer: runs on a pool thread (or on the
/// caller's, when the queue is full).
pub(crate) type OnAnswer = Box<dyn FnOnce(Result<Vec<u8>, CallError>) + Send>;

struct Call {
    /// When it was queued: a call that waited past the timeout is not made.
    queued_at: Instant,
    url: Arc<str>,
    body: Vec<u8>,
    /// A header of this call only (a signature).
    header: Option<(&'static str, String)>,
    kind: usize,
    on_answer: OnAnswer,
}

/// One kind of call's counters.
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) calls: AtomicU64,
    /// Calls by latency bucket (the last slot: above every bound).
    pub(crate) latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    pub(crate) latency_sum_micros: AtomicU64,
}

impl CallStats {
    fn record(&self, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        let millis = took.as_millis() as u64;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| millis < *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// Threads calling the backend over HTTP.
pub(crate) struct CallPool {
    calls: Option<Sender<Call>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<[CallStats]>,
}

/// How the pool calls.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// Calls in flight at most (one thread each).
    pub(crate) concurrency: usize,
    /// Calls waiting for a thread at most.
    pub(crate) queue: usize,
    /// The longest each phase of a call may take: connecting, sending,
    /// waiting for the answer, reading it.
    pub(crate) timeout: Duration,
    /// Headers sent with every call (an `Authorization` for the backend).
    pub(crate) headers: Vec<(String, String)>,
    /// The longest a call may wait for a free thread before it fails
    /// without being made (`None`: it waits its turn).
    pub(crate) queue_timeout: Option<Duration>,
}

impl CallPool {
    /// Starts `config.concurrency` threads; `kinds` counters are kept, one
    /// per kind of call.
    pub(crate) fn start(name: &str, config: &PoolConfig, kinds: usize) -> std::io::Result<Self> {
        // Per phase, not global: with a global (or per-call) timeout ureq
        // resolves the host on a thread of its own, one per call.
        let timeout = Some(config.timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(timeout)
            .timeout_send_request(timeout)
            .timeout_send_body(timeout)
            .timeout_recv_response(timeout)
            .timeout_recv_body(timeout)
            .http_status_as_error(false)
            .max_idle_connections(config.concurrency)
            .max_idle_connections_per_host(config.concurrency)
            .build()
            .into();
        let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
        let stats: Arc<[CallStats]> = (0..kinds).map(|_| CallStats::default()).collect();
        let headers: Arc<[(String, String)]> = config.headers.clone().into();
        let threads = (0..config.concurrency.max(1))
            .map(|i| {
                let worker = Worker {
                    agent: agent.clone(),
                    queue_timeout: config.queue_timeout,
                    calls: rx.clone(),
                    stats: Arc::clone(&stats),
                    headers: Arc::clone(&headers),
                };
                std::thread::Builder::new()
                    .name(format!("herald-{name}-{i}"))
                    .spawn(move || worker.run())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            calls: Some(tx),
            threads,
            stats,
        })
    }

    /// Posts `body` to `url` and hands the answer to `on_answer`; a full
    /// queue answers [`CallError::Busy`] at once, on this thread.
    pub(crate) fn call(&self, url: &Arc<str>, kind: usize, body: Vec<u8>, on_answer: OnAnswer) {
        self.call_with(url, kind, body, None, on_answer);
    }

    /// [`call`](Self::call), with one more header.
    pub(crate) fn call_with(
        &self,
        url: &Arc<str>,
        kind: usize,
        body: Vec<u8>,
        header: Option<(&'static str, String)>,
        on_answer: OnAnswer,
    ) {
        let Some(calls) = &self.calls else {
            return on_answer(Err(CallError::Busy));
        };
        let call = Call {
            queued_at: Instant::now(),
            url: Arc::clone(url),
            body,
            header,
            kind,
            on_answer,
        };
        if let Err(TrySendError::Full(call) | TrySendError::Disconnected(call)) =
            calls.try_send(call)
        {
            self.stats[kind].calls.fetch_add(1, Relaxed);
            (call.on_answer)(Err(CallError::Busy));
        }
    }

    /// The counters of each kind of call.
    pub(crate) fn stats(&self) -> &[CallStats] {
        &self.stats
    }
}

impl Drop for CallPool {
    /// Lets the threads finish the calls queued, then stop. Dropped on one
    /// of its own threads (a queued call held the last reference), it
    /// leaves them to end by themselves.
    fn drop(&mut self) {
        self.calls = None;
        let me = std::thread::current().id();
        if self.threads.iter().any(|thread| thread.thread().id() == me) {
            return;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Worker {
    agent: ureq::Agent,
    queue_timeout: Option<Duration>,
    calls: Receiver<Call>,
    stats: Arc<[CallStats]>,
    headers: Arc<[(String, String)]>,
}

impl Worker {
    fn run(self) {
        while let Ok(call) = self.calls.recv() {
            if self
                .queue_timeout
                .is_some_and(|limit| call.queued_at.elapsed() >= limit)
            {
                let waited =
                    CallError::Transport("waited past the timeout for a free thread".into());
                (call.on_answer)(Err(waited));
                continue;
            }
            let started = Instant::now();
            let answer = self.post(&call.url, &call.body, call.header.as_ref());
            self.stats[call.kind].record(started.elapsed());
            (call.on_answer)(answer);
        }
    }

    fn post(
        &self,
        url: &str,
        body: &[u8],
        header: Option<&(&'static str, String)>,
    ) -> Result<Vec<u8>, CallError> {
        let mut request = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        for (name, value) in self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v))
            .chain(header.map(|(n, v)| (*n, v)))
        {
            request = request.header(name, value);
        }
        let mut response = request
            .send(body)
            .map_err(|err| CallError::Transport(err.to_string()))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(CallError::Status(status));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|err| CallError::Answer(err.to_string()))
    }
}
