//! The shared ledger batch writer: the queue, batching, retries, bounded retention,
//! and the flush and close acknowledgements every SQL ledger needs, written once.
//!
//! A backend implements [`BatchSink`] (one idempotent write of a slice of records:
//! its INSERT) and starts a [`BatchWriter`] with a [`BatchPolicy`]. The writer owns
//! the sink and runs on its own: a task on the current runtime for a sink that awaits
//! I/O, or a dedicated thread for a sink that blocks (SQLite), so a blocking write
//! never holds up an async worker ([`WriterHome`]).
//!
//! How it behaves, whatever the sink:
//! - [`BatchWriter::append`] only sends the record down a channel, so the request path
//!   never waits for the database;
//! - the writer takes the first message, drains up to [`BatchPolicy::max_batch`] more
//!   without waiting, and writes everything queued, [`BatchPolicy::rows_per_write`]
//!   records per call to the sink;
//! - a `Flush` is answered after the write that follows it, so it covers everything
//!   appended before it; `Close` is a flush after which the writer stops, and whatever
//!   raced it into the channel is refused (records counted as dropped, flushes told
//!   the ledger is closed);
//! - a failed write is tried [`BatchPolicy::attempts`] times; if it still fails, the
//!   flushers of that batch get the error and the records stay queued, up to
//!   [`BatchPolicy::max_retained`] (the oldest beyond it are dropped, counted in
//!   [`LedgerStats::dropped`] and logged), to be retried with the next batch or after
//!   [`BatchPolicy::retry_pause`] when nothing new arrives. With
//!   [`BatchPolicy::fail_fast_during_outage`], batches arriving before that pause is
//!   over only queue, and their flushers are answered `Unavailable` at once.
//!
//! - the queue is bounded by back-pressure: [`BatchWriter::room`] resolves only while
//!   fewer than [`BatchPolicy::queue_capacity`] records wait, and the pipeline awaits
//!   it before admitting a request, so records of answered requests are never dropped
//!   for lack of room (`max_retained` is the last resort of a long outage);
//! - refused requests are counted into per-key, per-minute aggregates
//!   ([`crate::refusals`]), written when their minute ends, by
//!   [`BatchWriter::flush_refusals`] and on close.
//!
//! Nothing is dropped without an error log.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tollgate_core::UsageRecord;

use crate::refusals::Refusals;
use crate::{LedgerQueue, StoreError, StoreResult};

/// Where a backend's records go: one write of a batch.
pub trait BatchSink: Send + 'static {
    /// Stores `records` durably, ignoring ids already stored (a failed batch is
    /// written again, so this must be idempotent; the id is the primary key).
    ///
    /// With [`WriterHome::Thread`] the returned future may block: it runs on the
    /// writer's own thread.
    fn write(&mut self, records: &[UsageRecord]) -> impl Future<Output = StoreResult<()>> + Send;
}

/// What differs between the backends' writers. Every field is a policy; the state
/// machine is the same.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// The database's name, for log messages ("SQLite", "PostgreSQL").
    pub database: &'static str,
    /// Messages drained into one batch at most.
    pub max_batch: usize,
    /// Records per call to [`BatchSink::write`]; `usize::MAX` hands everything queued
    /// to one call (one SQLite transaction).
    pub rows_per_write: usize,
    /// Attempts per write before the flushers of the batch are told it failed.
    pub attempts: u32,
    /// How long the writer waits after a failed write before trying the records it
    /// left queued again, when no new message arrives first.
    pub retry_pause: Duration,
    /// Records kept in memory while the database refuses writes; beyond this the
    /// oldest are dropped (counted and logged) rather than exhausting memory. Keep it
    /// well above `queue_capacity`: back-pressure should act long before this does.
    pub max_retained: usize,
    /// Records waiting (queued or unwritten) above which [`BatchWriter::room`] makes
    /// new requests wait.
    pub queue_capacity: usize,
    /// While a failed write's retry pause runs, do not write at all: queue new
    /// records and answer flushers `Unavailable` at once (responses that wait on a
    /// flush must not wait on an outage). Without it every batch tries again, and
    /// its flushers wait for those attempts. Closing always tries.
    pub fail_fast_during_outage: bool,
}

/// Where the writer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterHome {
    /// A task on the current tokio runtime (a sink that awaits I/O). Starting one
    /// outside a runtime panics, as `tokio::spawn` does.
    Task,
    /// A dedicated thread of that name, with a single-threaded runtime of its own for
    /// the timers (a sink that blocks).
    Thread(&'static str),
}

/// What the writer has done, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Records written (replays ignored by the database included).
    pub written: AtomicU64,
    /// Records dropped because the database refused writes for longer than the buffer
    /// could hold, or because the ledger closed (or was dropped) while it did, or
    /// because they were appended after close.
    pub dropped: AtomicU64,
    /// Write attempts that failed.
    pub failed_writes: AtomicU64,
    /// Records appended (or refusal aggregates due) and not yet written or dropped.
    pub queued: AtomicU64,
}

/// The error a ledger answers once it is closed.
pub fn closed_error() -> StoreError {
    StoreError::unavailable("the usage ledger is closed")
}

type Ack = oneshot::Sender<StoreResult<()>>;

enum Message {
    Record(Box<UsageRecord>),
    /// Answered once everything queued before it is written.
    Flush(Ack),
    /// Like `Flush`, then the writer stops.
    Close(Ack),
    /// A refusal aggregate was opened: the writer learns when its minute ends.
    Wake,
}

enum Worker {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

/// The front of a batch writer, owned by a ledger: appends, flushes, close.
///
/// Call [`close`](Self::close) before exiting: it writes what is queued and waits for
/// the writer to stop. Dropping the writer without closing it also lets it write what
/// is queued, but in the background, without waiting for it.
pub struct BatchWriter {
    sender: mpsc::UnboundedSender<Message>,
    closed: AtomicBool,
    worker: Mutex<Option<Worker>>,
    stats: Arc<LedgerStats>,
    /// The error when the writer is gone (panicked): names a thread or a task.
    gone: &'static str,
    refusals: Arc<Refusals>,
    /// Notified when records were written (or dropped): waiters for room look again.
    room: Arc<Notify>,
    capacity: u64,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// Starts the writer for `sink` in `home`.
    pub fn start<S: BatchSink>(sink: S, policy: BatchPolicy, home: WriterHome) -> StoreResult<Self> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(LedgerStats::default());
        let policy = BatchPolicy {
            max_batch: policy.max_batch.max(1),
            rows_per_write: policy.rows_per_write.max(1),
            attempts: policy.attempts.max(1),
            max_retained: policy.max_retained.max(1),
            queue_capacity: policy.queue_capacity.max(1),
            ..policy
        };
        let capacity = policy.queue_capacity as u64;
        let refusals = Arc::new(Refusals::default());
        let room = Arc::new(Notify::new());
        let writer = Writer {
            sink,
            policy,
            queued: Vec::new(),
            retry_at: None,
            stats: stats.clone(),
            refusals: refusals.clone(),
            room: room.clone(),
            on_thread: matches!(home, WriterHome::Thread(_)),
            last_batch: 0,
        };
        let (worker, gone) = match home {
            WriterHome::Task => (Worker::Task(tokio::spawn(writer.run(receiver))), "the ledger writer task stopped"),
            WriterHome::Thread(name) => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| {
                    StoreError::internal_with_source(format!("cannot start the ledger writer runtime: {e}"), e)
                })?;
                let handle = std::thread::Builder::new()
                    .name(name.to_owned())
                    .spawn(move || {
                        background_scheduling();
                        runtime.block_on(writer.run(receiver))
                    })
                    .map_err(|e| {
                        StoreError::internal_with_source(format!("cannot start the ledger writer thread: {e}"), e)
                    })?;
                (Worker::Thread(handle), "the ledger writer thread stopped")
            }
        };
        Ok(Self {
            sender,
            closed: AtomicBool::new(false),
            worker: Mutex::new(Some(worker)),
            stats,
            gone,
            refusals,
            room,
            capacity,
        })
    }

    /// Queues a record; never waits. After close (or if the writer is gone) the
    /// record is dropped, counted and logged.
    pub fn append(&self, record: UsageRecord) {
        if self.is_closed() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %record.id, "usage record appended after the ledger closed: dropped");
            return;
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Message::Record(record))) =
            self.sender.send(Message::Record(Box::new(record)))
        {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %record.id, "the ledger writer stopped: usage record dropped");
        }
    }

    /// Counts a refused request into its key's aggregate for the minute (see
    /// [`crate::refusals`]); never waits, never adds a row per refusal.
    pub fn record_refusal(&self, record: UsageRecord) {
        if self.is_closed() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %record.id, "refusal counted after the ledger closed: dropped");
            return;
        }
        if self.refusals.count(record, crate::clock::now_ms()) {
            // The writer may be asleep with no timer for this minute.
            let _ = self.sender.send(Message::Wake);
        }
    }

    /// Writes every open refusal aggregate now, then flushes.
    pub async fn flush_refusals(&self) -> StoreResult<()> {
        for aggregate in self.refusals.take_all() {
            self.append(aggregate);
        }
        self.flush().await
    }

    /// Resolves once fewer than `queue_capacity` records wait (or the ledger closed).
    pub async fn room(&self) {
        let has_room = || self.stats.queued.load(Ordering::Acquire) < self.capacity || self.is_closed();
        // The usual case answers with one atomic load: registering with the `Notify`
        // takes its lock, which every request would otherwise contend on.
        if has_room() {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if has_room() {
                return;
            }
            notified.await;
        }
    }

    /// The queue's depth and the writer's counters.
    pub fn queue(&self) -> LedgerQueue {
        LedgerQueue {
            queued: self.stats.queued.load(Ordering::Relaxed),
            capacity: self.capacity,
            open_refusal_rows: self.refusals.len() as u64,
            written: self.stats.written.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
            failed_writes: self.stats.failed_writes.load(Ordering::Relaxed),
        }
    }

    /// Resolves when every record appended before the call is written, or with the
    /// error of the write that should have covered it.
    pub async fn flush(&self) -> StoreResult<()> {
        if self.is_closed() {
            return Err(closed_error());
        }
        let (ack, done) = oneshot::channel();
        self.sender.send(Message::Flush(ack)).map_err(|_| self.writer_gone())?;
        done.await.map_err(|_| self.writer_gone())?
    }

    /// Flushes and stops the writer, then waits for it to finish. A second close is a
    /// no-op.
    pub async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        let result = match self.sender.send(Message::Close(ack)) {
            Ok(()) => done.await.unwrap_or_else(|_| Err(self.writer_gone())),
            Err(_) => Err(self.writer_gone()),
        };
        let worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner).take();
        let joined = match worker {
            None => true,
            Some(Worker::Task(handle)) => handle.await.is_ok(),
            // The writer has answered Close and is returning; joining is quick, but it
            // is still a blocking call.
            Some(Worker::Thread(handle)) => tokio::task::spawn_blocking(move || handle.join()).await?.is_ok(),
        };
        // The writer took every open aggregate at Close; one counted in that instant
        // is reported, not lost in silence.
        let late = self.refusals.take_all().len();
        if late > 0 {
            self.stats.dropped.fetch_add(late as u64, Ordering::Relaxed);
            tracing::error!(late, "refusal aggregates opened while the ledger closed: dropped");
        }
        self.room.notify_waiters();
        if !joined {
            return Err(self.writer_gone());
        }
        result
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    fn writer_gone(&self) -> StoreError {
        StoreError::internal(self.gone)
    }
}

/// The writer's state, owned by its task or thread.
struct Writer<S> {
    sink: S,
    policy: BatchPolicy,
    queued: Vec<UsageRecord>,
    /// Set while the database refuses writes: when to try again.
    retry_at: Option<Instant>,
    stats: Arc<LedgerStats>,
    refusals: Arc<Refusals>,
    room: Arc<Notify>,
    /// The writer has a thread of its own ([`WriterHome::Thread`]): it yields the
    /// thread, not the task, to gather a batch.
    on_thread: bool,
    /// Records the last batch took: more than one means requests arrive together.
    last_batch: usize,
}

/// Turns the writer gives the request workers to queue more before it commits.
const GATHER_TURNS: usize = 8;

/// Lets other threads (or tasks) run once; true if a message arrived meanwhile.
async fn yield_turn(on_thread: bool, receiver: &mpsc::UnboundedReceiver<Message>) -> bool {
    if on_thread {
        std::thread::yield_now();
    } else {
        tokio::task::yield_now().await;
    }
    !receiver.is_empty()
}

/// Asks the kernel to schedule the calling thread as a batch thread (Linux
/// `SCHED_BATCH`): it gets its share of the CPU, but a wake-up does not preempt the
/// request workers. On a core shared with them (one gateway per core is the way to
/// run it), the writer then wakes to a queue of many records and commits them in one
/// transaction instead of interrupting for each; a durable answer still ends only once
/// its record is committed. Elsewhere, or if refused, nothing changes.
pub fn background_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler with pid 0 changes only the calling thread, and
        // `param` is a valid, initialised struct that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_BATCH refused for the ledger writer");
        }
    }
}

/// The tokio instant at which the wall-clock time `at_ms` is reached.
fn instant_at(at_ms: i64) -> Instant {
    let wait = at_ms.saturating_sub(crate::clock::now_ms()).max(0);
    Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
}

impl<S: BatchSink> Writer<S> {
    /// Moves `aggregates` into the queue.
    fn enqueue(&mut self, aggregates: Vec<UsageRecord>) {
        self.stats.queued.fetch_add(aggregates.len() as u64, Ordering::Relaxed);
        self.queued.extend(aggregates);
    }

    /// Batches messages into writes until closed, or until every sender is gone (the
    /// ledger was dropped).
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Message>) {
        loop {
            // With records left over from a failed write, wake up to retry them even
            // if nothing new arrives; with refusal aggregates open, when the first
            // minute ends.
            let retry_at = (!self.queued.is_empty())
                .then(|| self.retry_at.unwrap_or_else(|| Instant::now() + self.policy.retry_pause));
            let refusals_at = self.refusals.next_due_ms().map(instant_at);
            let wake_at = match (retry_at, refusals_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match wake_at {
                None => receiver.recv().await,
                Some(wake_at) => tokio::select! {
                    message = receiver.recv() => message,
                    () = tokio::time::sleep_until(wake_at) => {
                        let due = self.refusals.take_due(crate::clock::now_ms());
                        self.enqueue(due);
                        // Failures are logged inside; the records stay queued.
                        let _ = self.write_queued().await;
                        continue;
                    }
                },
            };
            let Some(first) = first else {
                // Dropped without close: write what is left, then stop.
                if let Err(error) = self.write_queued().await {
                    let why = format!("the ledger was dropped while {} refused writes: {error}", self.policy.database);
                    self.drop_all(&why);
                }
                return;
            };

            let mut waiters = Vec::new();
            let mut close = None;
            let mut records = 0usize;
            let mut take = |message, queued: &mut Vec<UsageRecord>| match message {
                Message::Record(record) => {
                    records += 1;
                    queued.push(*record)
                }
                Message::Flush(ack) => waiters.push(ack),
                Message::Close(ack) => close = Some(ack),
                Message::Wake => {}
            };
            let mut closing = matches!(first, Message::Close(_));
            take(first, &mut self.queued);
            let mut drained = 1;
            let mut yields = 0;
            while !closing && drained < self.policy.max_batch {
                let Ok(message) = receiver.try_recv() else {
                    // Group commit without a timer: when the last batch showed requests
                    // arriving together, give the request workers a turn and take what
                    // they queued meanwhile, as long as each turn brings more. One
                    // request at a time never waits for a turn; a busy gateway commits
                    // tens of records per transaction instead of a few.
                    if self.last_batch < 2 || yields >= GATHER_TURNS || !yield_turn(self.on_thread, &receiver).await {
                        break;
                    }
                    yields += 1;
                    continue;
                };
                closing = matches!(message, Message::Close(_));
                take(message, &mut self.queued);
                drained += 1;
            }
            self.last_batch = records;
            if close.is_some() {
                // Nothing after Close is part of it; answer stragglers that raced it.
                refuse_after_close(&mut receiver, &self.stats);
                // Every open refusal aggregate is part of it: nothing is lost on a
                // graceful shutdown.
                let open = self.refusals.take_all();
                self.enqueue(open);
            }

            let not_due = self.policy.fail_fast_during_outage
                && close.is_none()
                && self.retry_at.is_some_and(|at| Instant::now() < at);
            let result = if not_due {
                self.bound();
                if waiters.is_empty() {
                    Ok(())
                } else {
                    Err(StoreError::unavailable(format!(
                        "{} refuses writes; {} usage records wait in memory for it",
                        self.policy.database,
                        self.queued.len()
                    )))
                }
            } else {
                self.write_queued().await
            };
            for waiter in waiters {
                // A flusher that stopped waiting is not an error.
                let _ = waiter.send(result.clone());
            }
            if let Some(ack) = close {
                if !self.queued.is_empty() {
                    let why = format!("the ledger closed while {} refused writes", self.policy.database);
                    self.drop_all(&why);
                }
                let _ = ack.send(result);
                return;
            }
        }
    }

    /// Writes everything queued, [`BatchPolicy::rows_per_write`] records per call.
    /// What could not be written stays queued (bounded) and the error is returned for
    /// the flushers.
    async fn write_queued(&mut self) -> StoreResult<()> {
        while !self.queued.is_empty() {
            let n = self.queued.len().min(self.policy.rows_per_write);
            let mut last_error = None;
            for attempt in 1..=self.policy.attempts {
                match self.sink.write(&self.queued[..n]).await {
                    Ok(()) => {
                        last_error = None;
                        if attempt > 1 || self.retry_at.is_some() {
                            tracing::info!(
                                attempt,
                                records = n,
                                "usage batch written after {} failed",
                                self.policy.database
                            );
                        }
                        break;
                    }
                    Err(error) => {
                        self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, attempt, records = n, "usage batch write failed");
                        last_error = Some(error);
                        if attempt < self.policy.attempts {
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                    }
                }
            }
            if let Some(error) = last_error {
                self.retry_at = Some(Instant::now() + self.policy.retry_pause);
                self.bound();
                return Err(error);
            }
            self.queued.drain(..n);
            self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.queued.fetch_sub(n as u64, Ordering::AcqRel);
            self.room.notify_waiters();
        }
        self.retry_at = None;
        Ok(())
    }

    /// Keeps at most `max_retained` records, dropping the oldest (with an error log).
    fn bound(&mut self) {
        let bound = self.policy.max_retained;
        if self.queued.len() > bound {
            let dropped = self.queued.len() - bound;
            self.queued.drain(..dropped);
            self.stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            self.stats.queued.fetch_sub(dropped as u64, Ordering::AcqRel);
            self.room.notify_waiters();
            tracing::error!(
                dropped,
                bound,
                "usage records dropped: {} refused writes longer than the ledger buffer holds",
                self.policy.database
            );
        }
    }

    fn drop_all(&mut self, why: &str) {
        let lost = self.queued.len();
        self.queued.clear();
        self.stats.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        self.stats.queued.fetch_sub(lost as u64, Ordering::AcqRel);
        self.room.notify_waiters();
        tracing::error!(lost, "usage records lost: {why}");
    }
}

/// Answers whatever raced a `Close` into the channel: flushes get an error, records
/// are counted and logged as dropped.
fn refuse_after_close(receiver: &mut mpsc::UnboundedReceiver<Message>, stats: &LedgerStats) {
    let mut dropped = 0u64;
    while let Ok(message) = receiver.try_recv() {
        match message {
            Message::Record(_) => dropped += 1,
            Message::Flush(ack) | Message::Close(ack) => {
                let _ = ack.send(Err(closed_error()));
            }
            Message::Wake => {}
        }
    }
    if dropped > 0 {
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        stats.queued.fetch_sub(dropped, Ordering::AcqRel);
        tracing::error!(dropped, "usage records appended while the ledger closed: dropped");
    }
}

#[cfg(test)]
mod tests;
