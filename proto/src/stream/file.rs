//! File implementations of the stream traits: JSON Lines replay files in, JSON Lines
//! files out. `-` names standard input (source) or standard output (sink), so a replay
//! can be piped through `odl join`.
//!
//! The source reads in large blocks and hands out lines as slices of the shared block
//! (`Bytes`), so a record costs a reference count, not an allocation and a copy.

use super::{Poll, Position, Record, RecordSink, RecordSource, Result, StreamError};
use bytes::BytesMut;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::time::Duration;

/// Bytes asked of the reader per read; big enough that a read is rare per record.
const READ_BLOCK: usize = 1 << 20;
/// Buffered bytes before a sink writes to its file.
const WRITE_BUFFER: usize = 1 << 20;

/// A JSON Lines file (or stdin): one record per non-blank line, in file order.
pub struct FileSource {
    name: String,
    reader: Box<dyn Read + Send>,
    buf: BytesMut,
    eof: bool,
    line: i64,
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
        FileSource { name: name.to_string(), reader, buf: BytesMut::new(), eof: false, line: 0 }
    }

    /// Reads one more block; false at end of file.
    fn fill(&mut self) -> Result<bool> {
        let len = self.buf.len();
        self.buf.reserve(READ_BLOCK);
        self.buf.resize(len + READ_BLOCK, 0);
        loop {
            match self.reader.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.buf.truncate(len);
                    return Err(StreamError::Io {
                        what: "cannot read input",
                        name: self.name.clone(),
                        source,
                    });
                }
            }
        }
    }

    fn push_line(&mut self, mut line: bytes::Bytes, out: &mut Vec<Record>) {
        self.line += 1;
        while let Some(&last) = line.last() {
            if last == b'\n' || last == b'\r' {
                line.truncate(line.len() - 1);
            } else {
                break;
            }
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        out.push(Record { key: None, value: line, position: Position { partition: 0, offset: self.line } });
    }
}

impl RecordSource for FileSource {
    fn poll(&mut self, max: usize, _timeout: Duration) -> Result<Poll> {
        let max = max.max(1);
        let mut out = Vec::with_capacity(max.min(8192));
        while out.len() < max {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(pos + 1).freeze();
                self.push_line(line, &mut out);
                continue;
            }
            if self.eof {
                if self.buf.is_empty() {
                    break;
                }
                let rest = self.buf.split().freeze();
                self.push_line(rest, &mut out);
                continue;
            }
            if !out.is_empty() {
                // Hand out what is complete rather than block on a live pipe.
                break;
            }
            if !self.fill()? {
                self.eof = true;
            }
        }
        if out.is_empty() && self.eof && self.buf.is_empty() {
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
            match src.poll(max, Duration::ZERO).unwrap() {
                Poll::Records(r) => {
                    v.extend(r.into_iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()))
                }
                Poll::End => return v,
                Poll::Idle => panic!("files never idle"),
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
    fn reading_a_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = FileSource::open(name).unwrap();
        let e = s.poll(10, Duration::ZERO).err().unwrap().to_string();
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
