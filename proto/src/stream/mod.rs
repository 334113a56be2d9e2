//! The one record-stream abstraction (ARCHITECTURE.md): every arrow that carries records
//! (events, samples, audit, dead letter, parameter updates) goes through these two
//! traits, implemented by an in-process channel, a file, and Kafka. Services never know
//! which one they hold.
//!
//! The traits are synchronous and batched: the joiner and the trainer are CPU-bound
//! loops on their own threads, and a batch amortises the per-record cost that an
//! async `Stream` of single records would pay a million times a second.

use bytes::Bytes;
use std::time::Duration;

/// Where a record came from, so a consumer can commit what it has processed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// One message: an optional key and a value (one JSON object for every stream of odl).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub position: Position,
}

/// What a poll returned.
#[derive(Debug)]
pub enum Poll {
    /// Some records, in arrival order.
    Records(Vec<Record>),
    /// Nothing arrived within the timeout; the stream goes on (Kafka, channels).
    Idle,
    /// The stream has ended (end of a replay file, a closed channel).
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Displays without its cause, which follows in the error chain (`{:#}`).
    #[error("{what} {name}")]
    Io {
        what: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {name} is closed")]
    Closed { name: String },
    #[error("broker: {0}")]
    Broker(String),
    /// A client librdkafka refused to create from its settings (an unknown property,
    /// a value out of range): waiting cannot fix it, the config must change.
    #[error("kafka client settings: {0}")]
    Config(String),
}

impl StreamError {
    /// Whether waiting and trying again may succeed (a broker outage), as opposed to a
    /// failure that needs an operator (an unreadable file).
    pub fn retryable(&self) -> bool {
        matches!(self, StreamError::Broker(_))
    }
}

pub type Result<T> = std::result::Result<T, StreamError>;

/// A source of records.
pub trait RecordSource: Send {
    /// Up to `max` records, waiting at most `timeout` for the first.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll>;

    /// Everything returned so far has been processed and its effects are durable;
    /// a restarted consumer may start after it. Files and channels ignore it.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A sink of records.
pub trait RecordSink: Send {
    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()>;

    /// Make everything sent so far visible to readers (and durable, where the sink is).
    fn flush(&mut self) -> Result<()>;
}

impl<T: RecordSink + ?Sized> RecordSink for Box<T> {
    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        (**self).send(key, value)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
}

impl<T: RecordSource + ?Sized> RecordSource for Box<T> {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        (**self).poll(max, timeout)
    }
    fn commit(&mut self) -> Result<()> {
        (**self).commit()
    }
}

pub mod channel;
pub mod file;
pub mod kafka;

pub use channel::{channel, ChannelSink, ChannelSource};
pub use file::{FileSink, FileSource};
