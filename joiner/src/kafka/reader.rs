//! Each input topic is polled and parsed on a thread of its own, which hands its
//! batches to the joiner's loop through a short bounded queue. Taking records out of
//! librdkafka and copying them was a fifth of the loop's thread and parsing them a
//! seventh (perf, `odl bench kafka`); on their own threads they run while the loop
//! joins the batch before.
//!
//! The loop stays the only one that decides what has been processed: a reader is at
//! most [`QUEUE_BATCHES`] batches ahead, and the positions it checkpoints and the lag
//! it reports are counted from the records the loop took, so records still in the
//! queue count as not read (they hold the join watermark, and a restart reads them
//! again). An input the skew limit holds back is simply not taken from: its reader
//! blocks on the full queue and librdkafka's own queue fills behind it, as before.

use crate::parse::{DetachedEvent, Malformed, Parser};
use odl_proto::event::StreamKind;
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

type Batch = Result<Vec<Read>>;

/// One record and what its reader made of it.
pub struct Read {
    pub record: Record,
    pub class: Class,
}

pub enum Class {
    Event(DetachedEvent),
    Malformed(Malformed),
    /// Larger than `max_message_bytes`: not parsed.
    Oversized,
    /// Parsed, but the parse could not be handed over (a field outside the line,
    /// which the parser never returns): the loop parses it again.
    Unparsed,
}

/// What a reader needs to know to parse its topic's records.
#[derive(Clone, Copy)]
pub struct Parsing {
    /// The topic's stream, unless a record names its own.
    pub stream: StreamKind,
    pub max_message_bytes: usize,
}

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
    pub fn spawn(source: KafkaSource, start: &Offsets, parsing: Parsing) -> std::io::Result<Self> {
        let topic = source.topic().to_string();
        let ends = source.ends();
        let (tx, batches) = sync_channel(QUEUE_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("odl-read-{topic}"))
            .spawn(move || read(source, parsing, &tx, &flag))?;
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
    fn took(&mut self, batch: &[Read]) {
        let mut run: Option<Position> = None;
        for r in batch {
            let position = r.record.position;
            if let Some(prev) = run.filter(|prev| prev.partition != position.partition) {
                self.taken.insert(prev.partition, prev.offset + 1);
            }
            run = Some(position);
        }
        if let Some(last) = run {
            self.taken.insert(last.partition, last.offset + 1);
        }
    }

    /// The reader's next batch, waiting up to `wait` for one; `None`: nothing within
    /// the wait. A reader that is gone (its thread panicked) is an error that retrying
    /// cannot fix.
    pub fn next_batch(&mut self, wait: Duration) -> Result<Option<Vec<Read>>> {
        let next = if wait.is_zero() {
            self.batches.try_recv().map_err(|e| e == TryRecvError::Disconnected)
        } else {
            self.batches.recv_timeout(wait).map_err(|e| e == RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(batch) => {
                let batch = batch?;
                self.took(&batch);
                Ok(Some(batch))
            }
            Err(false) => Ok(None),
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

fn read(mut source: KafkaSource, parsing: Parsing, tx: &SyncSender<Batch>, stop: &AtomicBool) {
    let mut parser = Parser::default();
    while !stop.load(Ordering::Relaxed) {
        let batch = match source.poll(super::BATCH, READ_WAIT) {
            Ok(Poll::Records(records)) => Ok(records.into_iter().map(|r| parse(&mut parser, parsing, r)).collect()),
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

fn parse(parser: &mut Parser, parsing: Parsing, record: Record) -> Read {
    let line = &record.value[..];
    let class = if line.len() > parsing.max_message_bytes {
        Class::Oversized
    } else {
        match super::classify(parser, line, parsing.stream) {
            Ok(ev) => ev.detach(line).map_or(Class::Unparsed, Class::Event),
            Err(m) => Class::Malformed(m),
        }
    };
    Read { record, class }
}
