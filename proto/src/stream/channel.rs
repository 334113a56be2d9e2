//! In-process implementation of the stream traits: a bounded channel whose sink blocks
//! when the consumer falls behind (back-pressure instead of unbounded memory). This is
//! what `odl run` wires the services together with.

use super::{Poll, Position, Record, RecordSink, RecordSource, Result, StreamError};
use bytes::Bytes;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

/// A connected sink/source pair holding at most `capacity` records in flight.
pub fn channel(name: &str, capacity: usize) -> (ChannelSink, ChannelSource) {
    let (tx, rx) = sync_channel(capacity.max(1));
    (ChannelSink { name: name.to_string(), tx, offset: 0 }, ChannelSource { rx, done: false })
}

/// The producing end; dropping it ends the stream for the source.
pub struct ChannelSink {
    name: String,
    tx: SyncSender<Record>,
    offset: i64,
}

impl RecordSink for ChannelSink {
    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let rec = Record {
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            position: Position { partition: 0, offset: self.offset },
        };
        self.offset += 1;
        self.tx.send(rec).map_err(|_| StreamError::Closed { name: self.name.clone() })
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The consuming end: `End` once every sink is dropped and the channel is drained.
pub struct ChannelSource {
    rx: Receiver<Record>,
    done: bool,
}

impl RecordSource for ChannelSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        if self.done {
            return Ok(Poll::End);
        }
        let first = match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return Ok(Poll::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                self.done = true;
                return Ok(Poll::End);
            }
        };
        let mut out = Vec::with_capacity(max.clamp(1, 4096));
        out.push(first);
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.done = true;
                    break;
                }
            }
        }
        Ok(Poll::Records(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_flow_in_order_then_end() {
        let (mut tx, mut rx) = channel("t", 4);
        let h = std::thread::spawn(move || {
            for i in 0..100u32 {
                tx.send(None, i.to_string().as_bytes()).unwrap();
            }
        });
        let mut got = Vec::new();
        loop {
            match rx.poll(7, Duration::from_secs(10)).unwrap() {
                Poll::Records(r) => {
                    got.extend(r.into_iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()))
                }
                Poll::Idle => {}
                Poll::End => break,
            }
        }
        h.join().unwrap();
        assert_eq!(got, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn idle_when_empty_and_closed_when_source_dropped() {
        let (mut tx, mut rx) = channel("t", 1);
        assert!(matches!(rx.poll(1, Duration::from_millis(1)).unwrap(), Poll::Idle));
        drop(rx);
        let e = tx.send(None, b"x").unwrap_err();
        assert!(matches!(e, StreamError::Closed { .. }));
    }
}
