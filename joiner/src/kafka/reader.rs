//! Each input topic is polled on a thread of its own, which hands its batches to the
//! joiner's loop through a short bounded queue. Taking records out of librdkafka and
//! copying them was a fifth of the loop's thread (perf, `odl bench kafka`); on its own
//! thread it runs while the loop joins the batch before.
//!
//! The loop stays the only one that decides what has been processed: a reader is at
//! most [`QUEUE_BATCHES`] batches ahead, and the positions it checkpoints and the lag
//! it reports are counted from the records the loop took, so records still in the
//! queue count as not read (they hold the join watermark, and a restart reads them
//! again). An input the skew limit holds back is simply not taken from: its reader
//! blocks on the full queue and librdkafka's own queue fills behind it, as before.

use odl_proto::stream::kafka::{KafkaSource, Offsets, PartitionEnds};
use odl_proto::stream::{Poll, Position, Record, RecordSource, Result, StreamError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Batches a reader may be ahead of the loop: enough to cover one join of a batch,
/// few enough that the records in flight stay a few MB per input.
const QUEUE_BATCHES: usize = 4;
/// How long one poll of the reader thread waits; also how soon it notices a stop.
const READ_WAIT: Duration = Duration::from_millis(50);
/// How long a reader pauses after handing over an error, so that a broker outage
/// queues a few errors for the loop's backoff rather than one per poll.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

type Batch = Result<Vec<Record>>;

/// One input topic, read ahead on its own thread.
pub struct InputReader {
    topic: String,
    batches: Receiver<Batch>,
    ends: PartitionEnds,
    /// Next offset per partition after the records the loop has taken.
    taken: Offsets,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl InputReader {
    /// Starts reading `source`, which was assigned from `start` (the positions the
    /// loop resumes from).
    pub fn spawn(source: KafkaSource, start: &Offsets) -> std::io::Result<Self> {
        let topic = source.topic().to_string();
        let ends = source.ends();
        let (tx, batches) = sync_channel(QUEUE_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("odl-read-{topic}"))
            .spawn(move || read(source, &tx, &flag))?;
        Ok(InputReader { topic, batches, ends, taken: start.clone(), stop, thread: Some(thread) })
    }

    /// Next offset per partition after the records taken so far: where a restart
    /// resumes.
    pub fn positions(&self) -> &Offsets {
        &self.taken
    }

    /// The lag after the records taken, from librdkafka's cached watermarks
    /// ([`PartitionEnds::cached_lag`]).
    pub fn cached_lag(&self) -> BTreeMap<i32, Option<i64>> {
        self.ends.cached_lag(&self.taken)
    }

    /// The lag after the records taken, asked of the broker.
    pub fn lag(&self) -> Result<BTreeMap<i32, i64>> {
        self.ends.lag(&self.taken)
    }

    /// One broker round trip: whether it answers now.
    pub fn probe(&self) -> Result<()> {
        self.ends.probe()
    }

    /// Notes the batch's positions: the last record of each run of one partition.
    fn took(&mut self, records: &[Record]) {
        let mut run: Option<Position> = None;
        for r in records {
            if let Some(prev) = run.filter(|prev| prev.partition != r.position.partition) {
                self.taken.insert(prev.partition, prev.offset + 1);
            }
            run = Some(r.position);
        }
        if let Some(last) = run {
            self.taken.insert(last.partition, last.offset + 1);
        }
    }
}

impl RecordSource for InputReader {
    /// The reader's next batch, waiting up to `timeout` for one (`max` is the
    /// reader's batch size, [`crate::kafka`]'s `BATCH`). A reader that is gone (its
    /// thread panicked) is an error that retrying cannot fix.
    fn poll(&mut self, _max: usize, timeout: Duration) -> Result<Poll> {
        let next = if timeout.is_zero() {
            self.batches.try_recv().map_err(|e| e == TryRecvError::Disconnected)
        } else {
            self.batches.recv_timeout(timeout).map_err(|e| e == RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(batch) => {
                let records = batch?;
                self.took(&records);
                Ok(Poll::Records(records))
            }
            Err(false) => Ok(Poll::Idle),
            Err(true) => Err(StreamError::Closed { name: format!("the reader thread of {}", self.topic) }),
        }
    }
}

impl Drop for InputReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblocks a reader waiting on a full queue.
        drop(std::mem::replace(&mut self.batches, sync_channel(0).1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read(mut source: KafkaSource, tx: &SyncSender<Batch>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let batch = match source.poll(super::BATCH, READ_WAIT) {
            Ok(Poll::Records(records)) => Ok(records),
            Ok(Poll::Idle) => continue,
            Ok(Poll::End) => return,
            Err(e) => Err(e),
        };
        let failed = batch.is_err();
        if tx.send(batch).is_err() {
            return;
        }
        if failed {
            std::thread::sleep(ERROR_PAUSE);
        }
    }
}
