//! The state machine against an in-memory sink that can be told to refuse.

use super::*;

/// Records the ids it stored and the size of every write; refuses while `down`.
#[derive(Clone, Default)]
struct MemorySink {
    down: Arc<AtomicBool>,
    stored: Arc<Mutex<Vec<String>>>,
    rows: Arc<Mutex<Vec<UsageRecord>>>,
    writes: Arc<Mutex<Vec<usize>>>,
}

impl MemorySink {
    fn stored(&self) -> Vec<String> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    fn writes(&self) -> Vec<usize> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    fn rows(&self) -> Vec<UsageRecord> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Whether a future is ready at its first poll.
async fn ready_now<F: Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut future = future;
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready())).await
}

impl BatchSink for MemorySink {
    async fn write(&mut self, records: &[UsageRecord]) -> StoreResult<()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner).push(records.len());
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::unavailable("the sink is down"));
        }
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        stored.extend(records.iter().map(|r| r.id.clone()));
        self.rows.lock().unwrap_or_else(PoisonError::into_inner).extend(records.iter().cloned());
        Ok(())
    }
}

fn policy(fail_fast: bool) -> BatchPolicy {
    BatchPolicy {
        database: "memory",
        max_batch: 1_000,
        rows_per_write: usize::MAX,
        attempts: 2,
        retry_pause: Duration::from_millis(200),
        max_retained: 8,
        queue_capacity: 4,
        fail_fast_during_outage: fail_fast,
    }
}

fn record(i: usize) -> UsageRecord {
    UsageRecord { id: format!("r{i}"), ..UsageRecord::default() }
}

#[tokio::test]
async fn flush_covers_every_append_in_both_homes() {
    for home in [WriterHome::Task, WriterHome::Thread("test-ledger")] {
        let sink = MemorySink::default();
        let writer = BatchWriter::start(sink.clone(), policy(true), home).expect("start");
        for i in 0..50 {
            writer.append(record(i));
        }
        writer.flush().await.expect("flush");
        assert_eq!(sink.stored().len(), 50, "{home:?}");
        writer.append(record(50));
        writer.close().await.expect("close");
        assert_eq!(sink.stored().len(), 51, "close writes what is queued ({home:?})");
        assert_eq!(writer.stats().written.load(Ordering::Relaxed), 51);
    }
}

#[tokio::test]
async fn rows_per_write_splits_what_is_queued() {
    let sink = MemorySink::default();
    let writer = BatchWriter::start(sink.clone(), BatchPolicy { rows_per_write: 4, ..policy(true) }, WriterHome::Task)
        .expect("start");
    // Queued while the sink is down, so they are all written together later.
    sink.down.store(true, Ordering::Relaxed);
    for i in 0..6 {
        writer.append(record(i));
    }
    assert!(writer.flush().await.is_err());
    sink.down.store(false, Ordering::Relaxed);
    writer.close().await.expect("close");
    assert_eq!(sink.stored().len(), 6);
    assert!(sink.writes().ends_with(&[4, 2]), "writes: {:?}", sink.writes());
}

/// Fail fast: once a write failed, flushes are answered at once until the pause
/// is over; beyond the bound the oldest records are dropped and counted; after
/// recovery the writer writes by itself.
#[tokio::test]
async fn fail_fast_buffers_bounded_and_recovers_alone() {
    let sink = MemorySink::default();
    let writer = BatchWriter::start(sink.clone(), policy(true), WriterHome::Task).expect("start");
    sink.down.store(true, Ordering::Relaxed);
    for i in 0..5 {
        writer.append(record(i));
    }
    assert!(matches!(writer.flush().await, Err(StoreError::Unavailable { .. })));
    assert_eq!(sink.writes().len(), 2, "two attempts");
    for i in 5..12 {
        writer.append(record(i));
    }
    let started = std::time::Instant::now();
    assert!(writer.flush().await.is_err());
    assert!(started.elapsed() < Duration::from_millis(100), "answered at once");
    assert_eq!(sink.writes().len(), 2, "no write before the pause is over");
    assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 4, "12 records, room for 8");
    assert_eq!(writer.stats().queued.load(Ordering::Relaxed), 8);
    sink.down.store(false, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sink.stored().len() < 8 {
        assert!(std::time::Instant::now() < deadline, "not written after recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.stored(), (4..12).map(|i| format!("r{i}")).collect::<Vec<_>>(), "the oldest were dropped");
    writer.flush().await.expect("flush after recovery");
    writer.close().await.expect("close");
}

/// Without fail fast, every flush tries again and waits for its attempts.
#[tokio::test]
async fn waiting_policy_tries_on_every_flush() {
    let sink = MemorySink::default();
    // No timed retry in between (each flush sleeps between its attempts; under load
    // two flushes outlasted a short pause and the timer added writes of its own).
    let policy = BatchPolicy { retry_pause: Duration::from_secs(3600), ..policy(false) };
    let writer = BatchWriter::start(sink.clone(), policy, WriterHome::Thread("test-ledger")).expect("start");
    sink.down.store(true, Ordering::Relaxed);
    writer.append(record(0));
    assert!(writer.flush().await.is_err());
    assert!(writer.flush().await.is_err());
    assert_eq!(sink.writes().len(), 4, "two attempts per flush");
    sink.down.store(false, Ordering::Relaxed);
    writer.flush().await.expect("flush");
    assert_eq!(sink.stored(), ["r0"]);
    writer.close().await.expect("close");
}

#[tokio::test]
async fn after_close_everything_is_refused() {
    let sink = MemorySink::default();
    let writer = BatchWriter::start(sink.clone(), policy(true), WriterHome::Thread("test-ledger")).expect("start");
    writer.append(record(0));
    writer.close().await.expect("close");
    writer.close().await.expect("a second close is a no-op");
    assert!(writer.is_closed());
    writer.append(record(1));
    assert!(matches!(writer.flush().await, Err(StoreError::Unavailable { .. })));
    assert_eq!(sink.stored(), ["r0"]);
    assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn closing_during_an_outage_drops_and_counts() {
    let sink = MemorySink::default();
    let writer = BatchWriter::start(sink.clone(), policy(true), WriterHome::Task).expect("start");
    sink.down.store(true, Ordering::Relaxed);
    for i in 0..3 {
        writer.append(record(i));
    }
    assert!(writer.close().await.is_err(), "close reports the failed write");
    assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 3);
    assert_eq!(writer.stats().queued.load(Ordering::Relaxed), 0);
}

/// Back-pressure: with `queue_capacity` records unwritten, `room` waits; it
/// resolves once they are written. Nothing is dropped meanwhile.
#[tokio::test]
async fn room_waits_while_the_queue_is_full_and_nothing_is_dropped() {
    let sink = MemorySink::default();
    let writer = BatchWriter::start(sink.clone(), policy(false), WriterHome::Task).expect("start");
    sink.down.store(true, Ordering::Relaxed);
    for i in 0..3 {
        writer.append(record(i));
    }
    assert!(ready_now(std::pin::pin!(writer.room())).await, "3 of 4: room");
    writer.append(record(3));
    assert_eq!(writer.queue().queued, 4);
    assert_eq!(writer.queue().capacity, 4);
    let room = writer.room();
    tokio::pin!(room);
    assert!(!ready_now(room.as_mut()).await, "4 of 4: a new request waits");
    assert!(writer.flush().await.is_err());
    assert!(!ready_now(room.as_mut()).await, "still full while the sink refuses");
    sink.down.store(false, Ordering::Relaxed);
    writer.flush().await.expect("flush after recovery");
    room.await;
    assert_eq!(writer.queue().queued, 0);
    assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 0);
    writer.close().await.expect("close");
}

fn refusal(i: usize, key: &str, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        id: format!("q{i}"),
        ts_ms,
        key_id: key.to_owned(),
        status: 429,
        requests: 1,
        endpoint: "chat.completions".into(),
        ..UsageRecord::default()
    }
}

/// Refusals become one row per key and minute: `flush_refusals` writes the open
/// ones and close those still open. (That the writer takes them by itself when
/// they are due: `refusals::tests`.)
#[tokio::test]
async fn refusals_are_one_row_per_key_and_minute_written_by_flush_and_on_close() {
    for home in [WriterHome::Task, WriterHome::Thread("test-ledger")] {
        let sink = MemorySink::default();
        let writer = BatchWriter::start(sink.clone(), policy(true), home).expect("start");
        for i in 0..1_000 {
            writer.record_refusal(refusal(i, "looping", 60_000 + i as i64));
        }
        writer.flush_refusals().await.expect("flush refusals");
        assert_eq!(sink.stored(), ["refusals_q0"], "{home:?}");
        assert_eq!(sink.rows()[0].requests, 1_000);
        // The current minute: open until close.
        let now = crate::clock::now_ms();
        for i in 0..50 {
            writer.record_refusal(refusal(2_000 + i, "looping", now));
        }
        writer.record_refusal(refusal(3_000, "other", now));
        assert_eq!(writer.queue().open_refusal_rows, 2);
        writer.close().await.expect("close");
        let mut rows: Vec<_> = sink.rows().into_iter().map(|r| (r.id, r.requests)).collect();
        rows.sort();
        assert_eq!(
            rows,
            [("refusals_q0".to_owned(), 1_000), ("refusals_q2000".to_owned(), 50), ("refusals_q3000".to_owned(), 1)]
        );
        assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 0);
    }
}
