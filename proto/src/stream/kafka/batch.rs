//! An assigned consumer's partitions read a batch at a time
//! (`rd_kafka_consume_batch_queue`, which rust-rdkafka does not wrap).
//!
//! rust-rdkafka's `poll` takes one message per call, and every call reads the clock
//! three or four times (librdkafka's poll bookkeeping and rust-rdkafka's own deadline)
//! and takes the queue's lock: in perf of `odl bench kafka` that was about a quarter of
//! the joiner's reader threads, `clock_gettime` alone 13%. A batch call reads the clock
//! once and hands over every message already queued.
//!
//! The partitions' fetch queues are forwarded to a queue of our own before they are
//! assigned, so it only ever holds their messages (and their per-partition errors).
//! Everything else stays on the consumer's queue, which is still polled the usual way
//! before each batch: a client-wide error (every broker down) comes back as an error
//! from there, where a batch call on the consumer's queue itself would have served it
//! as a line in librdkafka's log. Only for consumers without a group: a group assigns
//! partitions on its own schedule, after any forward made here.

use crate::stream::Position;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

/// One message of a batch, borrowed from librdkafka until the callback returns.
pub(super) struct Message<'a> {
    pub position: Position,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    pub fn of(m: &'a BorrowedMessage<'_>) -> Self {
        let position = Position { partition: m.partition(), offset: m.offset() };
        Message { position, key: m.key(), payload: m.payload().unwrap_or_default() }
    }
}

pub(super) struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The client the queue belongs to, alive for as long as the queue handle is.
    consumer: Arc<BaseConsumer<C>>,
    topic: CString,
    partitions: Vec<i32>,
    /// Room for the message pointers of one call, kept between calls.
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queue handles may be used from any thread (one at a time here:
// every use takes `&mut self`); the pointers in `taken` are only held during a call.
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> {}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// A queue that `partitions` of `topic` forward their messages to; call before
    /// they are assigned (librdkafka keeps an application's forward when it starts
    /// fetching). `None` if librdkafka refuses a partition.
    pub fn new(consumer: &Arc<BaseConsumer<C>>, topic: &str, partitions: impl IntoIterator<Item = i32>) -> Option<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: the client pointer is valid while `consumer` lives; the queue is
        // owned here and destroyed in `drop`, while the client (kept in `consumer`) is.
        let queue = NonNull::new(unsafe { rdsys::rd_kafka_queue_new(rk) })?;
        let mut batch = BatchQueue {
            queue,
            consumer: Arc::clone(consumer),
            topic: CString::new(topic).ok()?,
            partitions: Vec::new(),
            taken: Vec::new(),
        };
        for p in partitions {
            batch.forward(p, batch.queue.as_ptr())?;
            batch.partitions.push(p);
        }
        Some(batch)
    }

    /// Forwards the fetch queue of `partition` to `to` (null: back to none).
    fn forward(&self, partition: i32, to: *mut rdsys::rd_kafka_queue_t) -> Option<()> {
        let rk = self.consumer.client().native_ptr();
        // SAFETY: valid client and NUL-terminated topic; the partition queue handle is
        // released right after the forward, which keeps its own reference to `to`.
        unsafe {
            let q = NonNull::new(rdsys::rd_kafka_queue_get_partition(rk, self.topic.as_ptr(), partition))?;
            rdsys::rd_kafka_queue_forward(q.as_ptr(), to);
            rdsys::rd_kafka_queue_destroy(q.as_ptr());
        }
        Some(())
    }

    /// Hands up to `max` messages to `each`, waiting up to `wait` for the first and
    /// then taking only what is already queued. Returns the first error (the messages
    /// after it are still handed over).
    ///
    /// The consumer's own queue is served first: a client-wide error is taken from
    /// there, and a record that reached it before the forward is older than any in
    /// the partitions' queue.
    pub fn read(&mut self, max: usize, wait: Duration, mut each: impl FnMut(Message<'_>)) -> Option<KafkaError> {
        let mut left = max.max(1);
        let mut error = None;
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                each(Message::of(&m));
                left -= 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => error = Some(e),
        }
        if left == max.max(1) && error.is_none() {
            if self.hand_over(1, wait, &mut each, &mut error) == 0 {
                return error;
            }
            left -= 1;
        }
        if left > 0 {
            self.hand_over(left, Duration::ZERO, &mut each, &mut error);
        }
        error
    }

    /// Up to `room` messages from one batch call to `each` (errors to `error`, the
    /// first one kept), each destroyed after its turn. Returns how many were taken.
    fn hand_over(
        &mut self,
        room: usize,
        timeout: Duration,
        each: &mut impl FnMut(Message<'_>),
        error: &mut Option<KafkaError>,
    ) -> usize {
        let n = self.take(room, timeout);
        for &m in &self.taken {
            // SAFETY: librdkafka returned `m` from this call and it is destroyed right
            // after this use, once; `message` borrows from it only inside.
            unsafe {
                match message(&*m) {
                    Ok(Some(m)) => each(m),
                    Ok(None) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
                rdsys::rd_kafka_message_destroy(m);
            }
        }
        n
    }

    /// One `rd_kafka_consume_batch_queue` call for up to `room` messages into `taken`.
    fn take(&mut self, room: usize, timeout: Duration) -> usize {
        self.taken.clear();
        self.taken.reserve(room);
        let millis = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: `taken` has room for `room` pointers, which librdkafka fills from the
        // start; it returns how many (or -1 for an invalid queue, taken as none).
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), millis, self.taken.as_mut_ptr(), room) };
        let n = usize::try_from(n).unwrap_or(0).min(room);
        // SAFETY: librdkafka wrote the first `n` pointers.
        unsafe { self.taken.set_len(n) };
        n
    }
}

/// A message's contents, `None` for the end-of-partition marker, or its error.
///
/// # Safety
/// `m` must be a message librdkafka returned and has not destroyed yet.
unsafe fn message(m: &rdsys::rd_kafka_message_t) -> Result<Option<Message<'_>>, KafkaError> {
    use rdsys::rd_kafka_resp_err_t::{RD_KAFKA_RESP_ERR_NO_ERROR, RD_KAFKA_RESP_ERR__PARTITION_EOF};
    match m.err {
        RD_KAFKA_RESP_ERR_NO_ERROR => {}
        RD_KAFKA_RESP_ERR__PARTITION_EOF => return Ok(None),
        e => return Err(KafkaError::MessageConsumption(e.into())),
    }
    let bytes = |p: *mut std::ffi::c_void, len: usize| {
        // SAFETY (for the caller's message): librdkafka's key and payload pointers
        // are valid for `len` bytes while the message lives, or null.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    };
    Ok(Some(Message {
        position: Position { partition: m.partition, offset: m.offset },
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len).unwrap_or_default(),
    }))
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        for &p in &self.partitions {
            self.forward(p, std::ptr::null_mut());
        }
        // SAFETY: the queue came from `rd_kafka_queue_new` and is destroyed once,
        // nothing forwarding to it any more, while the client (`consumer`, dropped
        // after this) is still alive.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}
