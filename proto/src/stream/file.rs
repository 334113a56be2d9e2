//! File implementations of the stream traits: JSON Lines replay files in, JSON Lines
//! files out. `-` names standard input (source) or standard output (sink), so a replay
//! can be piped through `odl join`.
//!
//! The source reads in large blocks and hands out lines as slices of the shared block
//! (`Bytes`), so a record costs a reference count, not an allocation and a copy. A block
//! goes back to the reader once the last line sliced from it is dropped, so a long
//! replay re-reads into warm memory instead of zeroing and faulting in fresh pages.

use super::{Poll, Position, Record, RecordSink, RecordSource, Result, StreamError};
use bytes::{Buf, Bytes};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes asked of the reader per read; big enough that a read is rare per record.
const READ_BLOCK: usize = 1 << 20;
/// Buffered bytes before a sink writes to its file.
const WRITE_BUFFER: usize = 1 << 20;

/// A JSON Lines file (or stdin): one record per non-blank line, in file order.
///
/// A reader thread reads ahead and hands over blocks that end at a line boundary, so
/// reading overlaps parsing and `poll` honours its timeout on a live pipe (returning
/// `Idle`) instead of blocking in `read`.
pub struct FileSource {
    name: String,
    blocks: Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    ended: bool,
    line: i64,
    #[cfg_attr(not(test), allow(dead_code))]
    pool: Arc<Pool>,
}

/// Blocks read ahead of the consumer.
const READ_AHEAD: usize = 4;
/// Returned buffers kept for reuse; more are freed (the consumer released a burst).
const SPARE_BUFFERS: usize = 8;

/// Read buffers whose blocks were released, ready to be read into again. Every buffer
/// in it is initialised memory of at least [`READ_BLOCK`] bytes.
#[derive(Default)]
struct Pool {
    spare: Mutex<Vec<Vec<u8>>>,
    /// Buffers ever allocated (a test checks that they are reused).
    allocated: AtomicUsize,
}

impl Pool {
    /// A buffer of at least `len` bytes (a spare one if any).
    fn take(&self, len: usize) -> Vec<u8> {
        let spare = self.spare.lock().map(|mut s| s.pop()).unwrap_or(None);
        let mut buf = spare.unwrap_or_else(|| {
            self.allocated.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut s) = self.spare.lock() {
            if s.len() < SPARE_BUFFERS {
                s.push(buf);
            }
        }
    }
}

/// The owner of a block's bytes: the first `len` bytes of `buf`, returned to the pool
/// when the last `Bytes` slicing it is dropped.
struct Block {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl FileSource {
    /// Opens `path`, or standard input for `-`.
    pub fn open(path: &str) -> Result<Self> {
        let reader: Box<dyn Read + Send> = if path == "-" {
            Box::new(std::io::stdin())
        } else {
            let f = File::open(path).map_err(|source| StreamError::Io {
                what: "cannot open input",
                name: path.to_string(),
                source,
            })?;
            Box::new(f)
        };
        Ok(Self::from_reader(path, reader))
    }

    /// Any reader, named `name` in errors (tests, pipes).
    pub fn from_reader(name: &str, reader: Box<dyn Read + Send>) -> Self {
        let (tx, rx) = sync_channel(READ_AHEAD);
        let pool = Arc::new(Pool::default());
        let reader_pool = pool.clone();
        let spawned = std::thread::Builder::new()
            .name("file-source".into())
            .spawn(move || read_blocks(reader, tx, &reader_pool));
        let (blocks, ended) = match spawned {
            Ok(_) => (rx, false),
            Err(e) => {
                // No thread: report the failure as a read error on the first poll.
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(e));
                (rx, false)
            }
        };
        FileSource { name: name.to_string(), blocks, current: Bytes::new(), ended, line: 0, pool }
    }

    fn take_line(&mut self, out: &mut Vec<Record>) {
        let end = memchr::memchr(b'\n', &self.current).unwrap_or(self.current.len());
        let mut line = self.current.split_to(end);
        if !self.current.is_empty() {
            self.current.advance(1);
        }
        self.line += 1;
        while line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        out.push(Record { key: None, value: line, position: Position { partition: 0, offset: self.line } });
    }

    fn accept(&mut self, block: std::io::Result<Bytes>) -> Result<()> {
        match block {
            Ok(b) => {
                self.current = b;
                Ok(())
            }
            Err(source) => {
                self.ended = true;
                Err(StreamError::Io { what: "cannot read input", name: self.name.clone(), source })
            }
        }
    }
}

/// The reader thread: blocks of whole lines (the tail of the file may lack its newline).
/// `buf[..filled]` holds what was read and not yet sent: the start of a line.
fn read_blocks(mut reader: Box<dyn Read + Send>, tx: SyncSender<std::io::Result<Bytes>>, pool: &Arc<Pool>) {
    let block = |buf: Vec<u8>, len: usize| Bytes::from_owner(Block { buf, len, pool: pool.clone() });
    let mut buf = pool.take(READ_BLOCK);
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // One line fills the buffer: grow it.
            buf.resize(2 * buf.len(), 0);
        }
        let n = match reader.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if n == 0 {
            if filled > 0 {
                let _ = tx.send(Ok(block(buf, filled)));
            }
            return;
        }
        let start = filled;
        filled += n;
        if let Some(last) = memchr::memrchr(b'\n', &buf[start..filled]) {
            let end = start + last + 1;
            let tail = filled - end;
            let mut next = pool.take(READ_BLOCK.max(2 * tail));
            next[..tail].copy_from_slice(&buf[end..filled]);
            if tx.send(Ok(block(buf, end))).is_err() {
                return;
            }
            (buf, filled) = (next, tail);
        }
    }
}

impl RecordSource for FileSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        let max = max.max(1);
        let mut out = Vec::with_capacity(max.min(8192));
        while out.len() < max {
            if !self.current.is_empty() {
                self.take_line(&mut out);
                continue;
            }
            if self.ended {
                break;
            }
            let next = if out.is_empty() {
                match self.blocks.recv_timeout(timeout) {
                    Ok(b) => b,
                    Err(RecvTimeoutError::Timeout) => return Ok(Poll::Idle),
                    Err(RecvTimeoutError::Disconnected) => {
                        self.ended = true;
                        break;
                    }
                }
            } else {
                // Never wait once there is something to hand out.
                match self.blocks.try_recv() {
                    Ok(b) => b,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.ended = true;
                        break;
                    }
                }
            };
            self.accept(next)?;
        }
        if out.is_empty() && self.ended && self.current.is_empty() {
            return Ok(Poll::End);
        }
        Ok(Poll::Records(out))
    }
}

/// A JSON Lines file (or stdout): each record's value, then a newline. Keys are not
/// written (a replay file has none; the sample id is inside the sample).
pub struct FileSink {
    name: String,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl FileSink {
    /// Creates (truncates) `path`, or writes to standard output for `-`.
    pub fn create(path: &str) -> Result<Self> {
        let w: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = File::create(path).map_err(|source| StreamError::Io {
                what: "cannot create output",
                name: path.to_string(),
                source,
            })?;
            Box::new(f)
        };
        Ok(Self::from_writer(path, w))
    }

    /// Any writer, named `name` in errors.
    pub fn from_writer(name: &str, w: Box<dyn Write + Send>) -> Self {
        FileSink { name: name.to_string(), out: BufWriter::with_capacity(WRITE_BUFFER, w) }
    }

    fn err(&self, source: std::io::Error) -> StreamError {
        StreamError::Io { what: "cannot write output", name: self.name.clone(), source }
    }
}

impl RecordSink for FileSink {
    fn send(&mut self, _key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let r = self.out.write_all(value).and_then(|_| self.out.write_all(b"\n"));
        r.map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn all(src: &mut FileSource, max: usize) -> Vec<String> {
        let mut v = Vec::new();
        loop {
            match src.poll(max, Duration::from_secs(5)).unwrap() {
                Poll::Records(r) => {
                    v.extend(r.into_iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()))
                }
                Poll::End => return v,
                Poll::Idle => {}
            }
        }
    }

    #[test]
    fn lines_blank_lines_crlf_and_missing_final_newline() {
        let text = "a\n\n  \r\nb\r\n{\"x\":1}";
        for max in [1, 2, 100] {
            let mut s = FileSource::from_reader("t", Box::new(Cursor::new(text.as_bytes().to_vec())));
            assert_eq!(all(&mut s, max), vec!["a", "b", "{\"x\":1}"]);
        }
    }

    #[test]
    fn lines_across_read_blocks() {
        let lines: Vec<String> = (0..50_000).map(|i| format!("{{\"i\":{i}}}")).collect();
        let text = lines.join("\n") + "\n";
        let mut s = FileSource::from_reader("t", Box::new(Cursor::new(text.into_bytes())));
        assert_eq!(all(&mut s, 4096), lines);
    }

    #[test]
    fn a_line_longer_than_a_read_block_arrives_whole() {
        let long = "x".repeat(READ_BLOCK * 5 / 2);
        let text = format!("a\n{long}\nb\n{long}");
        for max in [1, 3] {
            let mut s = FileSource::from_reader("t", Box::new(Cursor::new(text.clone().into_bytes())));
            assert_eq!(all(&mut s, max), vec!["a", &long, "b", &long]);
        }
    }

    #[test]
    fn released_blocks_are_read_into_again() {
        let line = format!("{}\n", "y".repeat(999));
        let blocks = 40;
        let text = line.repeat(blocks * READ_BLOCK / line.len());
        let mut s = FileSource::from_reader("t", Box::new(Cursor::new(text.into_bytes())));
        let mut n = 0;
        loop {
            match s.poll(64, Duration::from_secs(30)).unwrap() {
                Poll::Records(r) => n += r.len(),
                Poll::End => break,
                Poll::Idle => {}
            }
        }
        assert_eq!(n, blocks * READ_BLOCK / line.len());
        let allocated = s.pool.allocated.load(Ordering::Relaxed);
        assert!(allocated <= READ_AHEAD + 4, "{allocated} buffers for {blocks} blocks");
    }

    #[test]
    fn missing_file_and_unwritable_path_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.jsonl");
        let e = FileSource::open(p.to_str().unwrap()).err().unwrap().to_string();
        assert!(e.contains("nope.jsonl"), "{e}");
        let q = dir.path().join("no-dir").join("out.jsonl");
        let e = FileSink::create(q.to_str().unwrap()).err().unwrap().to_string();
        assert!(e.contains("out.jsonl"), "{e}");
    }

    #[test]
    fn live_pipe_is_idle_then_delivers_then_ends() {
        let (r, mut w) = std::io::pipe().unwrap();
        let mut s = FileSource::from_reader("pipe", Box::new(r));
        assert!(matches!(s.poll(10, Duration::from_millis(10)).unwrap(), Poll::Idle));
        w.write_all(b"one\ntw").unwrap();
        match s.poll(10, Duration::from_secs(30)).unwrap() {
            Poll::Records(r) => assert_eq!(r.len(), 1),
            other => panic!("{other:?}"),
        }
        w.write_all(b"o\n").unwrap();
        drop(w);
        assert_eq!(all(&mut s, 10), vec!["two"]);
    }

    #[test]
    fn reading_a_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = FileSource::open(name).unwrap();
        let e = s.poll(10, Duration::from_secs(30)).err().unwrap().to_string();
        assert!(e.contains(name), "{e}");
    }

    #[test]
    fn sink_writes_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        let mut k = FileSink::create(p.to_str().unwrap()).unwrap();
        k.send(None, b"{}").unwrap();
        k.send(Some(b"k"), b"[1]").unwrap();
        k.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{}\n[1]\n");
    }
}
