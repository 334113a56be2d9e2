//! The operator's buffered state as bytes, and back: what the Kafka joiner checkpoints
//! together with its input offsets, so a restarted joiner resumes the windows it held
//! instead of re-reading the input they came from.
//!
//! The encoding is a flat little-endian record (`bytes`' `BufMut`/`Buf`) of exactly
//! the state the rules depend on: held exposures with the lines their samples are
//! rendered from, pending clicks and features, the timers, watermark, sequence number
//! and statistics. Sample quality (`/v1/quality`) is monitoring, not state: it starts
//! afresh after a restore. A snapshot is taken between batches, when nothing is
//! waiting to be drained. Integrity (a torn or corrupt blob) is the checkpoint
//! store's concern; here a truncated or inconsistent input is an error, never a panic.

use super::{Feature, Features, Held, Joiner, KeyState, Span, Timer, TimerKind, Times};
use crate::config::JoinerConfig;
use crate::stats::JoinStats;
use bytes::{Buf, BufMut, Bytes};

/// Bumped whenever the layout changes; an older snapshot is refused, not misread.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("operator snapshot: outputs are waiting to be drained")]
    NotDrained,
    #[error("operator snapshot is format {0}, this joiner reads format {FORMAT}")]
    Format(u32),
    #[error("operator snapshot is truncated or inconsistent ({0})")]
    Corrupt(&'static str),
}

impl Joiner {
    /// The buffered state; call it after draining every output.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        if !self.ready.is_empty() || !self.dead.is_empty() {
            return Err(SnapshotError::NotDrained);
        }
        let mut b = Vec::with_capacity(64 + self.keys.len() * 256);
        b.put_u32_le(FORMAT);
        b.put_i64_le(self.max_ts);
        b.put_i64_le(self.watermark);
        b.put_u64_le(self.seq);
        b.put_u8(self.flushing as u8);
        put_bytes(&mut b, &serde_json::to_vec(&self.stats).unwrap_or_default());
        b.put_u64_le(self.keys.len() as u64);
        for (key, state) in self.keys.iter() {
            b.put_u128_le(key);
            put_key_state(&mut b, state);
        }
        let timers: Vec<&Timer> = self.timers.iter().collect();
        b.put_u64_le(timers.len() as u64);
        for t in timers {
            b.put_i64_le(t.deadline);
            b.put_u64_le(t.seq());
            b.put_u128_le(t.key());
            b.put_u8(t.kind() as u8);
        }
        Ok(b)
    }

    /// A joiner with `config`'s windows and the state of `snapshot`.
    pub fn restore(config: &JoinerConfig, snapshot: &[u8]) -> Result<Joiner, SnapshotError> {
        let mut r = Reader(snapshot);
        let format = r.u32()?;
        if format != FORMAT {
            return Err(SnapshotError::Format(format));
        }
        let mut j = Joiner::new(config);
        j.max_ts = r.i64()?;
        j.watermark = r.i64()?;
        j.seq = r.u64()?;
        j.flushing = r.u8()? != 0;
        j.stats = serde_json::from_slice::<JoinStats>(&r.bytes()?).map_err(|_| SnapshotError::Corrupt("stats"))?;
        let keys = r.count()?;
        j.keys.reserve(keys);
        for _ in 0..keys {
            let key = r.u128()?;
            j.keys.insert(key, r.key_state()?);
        }
        for _ in 0..r.count()? {
            let (deadline, seq, key) = (r.i64()?, r.u64()?, r.u128()?);
            let kind = TimerKind::ALL.get(r.u8()? as usize).ok_or(SnapshotError::Corrupt("timer kind"))?;
            j.timers.push(Timer::new(deadline, seq, key, *kind));
        }
        if !r.0.is_empty() {
            return Err(SnapshotError::Corrupt("trailing bytes"));
        }
        Ok(j)
    }
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.put_u64_le(v.len() as u64);
    b.put_slice(v);
}

fn put_features(b: &mut Vec<u8>, fs: &[Feature]) {
    b.put_u64_le(fs.len() as u64);
    for f in fs {
        b.put_i64_le(f.ts);
        b.put_u64_le(f.seq);
        put_bytes(b, &f.raw);
    }
}

fn put_times(b: &mut Vec<u8>, ts: &[i64]) {
    b.put_u64_le(ts.len() as u64);
    ts.iter().for_each(|&t| b.put_i64_le(t));
}

fn put_span(b: &mut Vec<u8>, s: Span) {
    b.put_u32_le(s.start);
    b.put_u32_le(s.end);
}

fn put_key_state(b: &mut Vec<u8>, s: &KeyState) {
    match &s.exposure {
        None => b.put_u8(0),
        Some(h) => {
            b.put_u8(1);
            b.put_i64_le(h.ts);
            b.put_u64_le(h.seq);
            put_bytes(b, &h.line);
            put_span(b, h.pv_id);
            put_span(b, h.item_id);
            match h.user_id {
                None => b.put_u8(0),
                Some(u) => {
                    b.put_u8(1);
                    put_span(b, u);
                }
            }
            b.put_u8(h.audit as u8 | (h.inspect as u8) << 1);
            b.put_u32_le(h.clicks);
            b.put_u32_le(h.detail_clicks);
            put_features(b, &h.candidates);
        }
    }
    put_times(b, &s.clicks);
    put_times(b, &s.detail_clicks);
    put_features(b, &s.features);
}

/// Bounds-checked reads: `Buf`'s getters panic on a short buffer.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), SnapshotError> {
        if self.0.remaining() < n {
            return Err(SnapshotError::Corrupt(what));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        self.need(1, "u8")?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.need(4, "u32")?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.need(8, "u64")?;
        Ok(self.0.get_u64_le())
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        self.need(8, "i64")?;
        Ok(self.0.get_i64_le())
    }
    fn u128(&mut self) -> Result<u128, SnapshotError> {
        self.need(16, "u128")?;
        Ok(self.0.get_u128_le())
    }
    /// A length that must fit in what is left (each item takes at least one byte), so
    /// a corrupt count cannot make `reserve` allocate without bound.
    fn count(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(SnapshotError::Corrupt("count"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<Bytes, SnapshotError> {
        let n = self.count()?;
        let v = Bytes::copy_from_slice(&self.0[..n]);
        self.0.advance(n);
        Ok(v)
    }
    fn span(&mut self, line: &[u8]) -> Result<Span, SnapshotError> {
        let s = Span { start: self.u32()?, end: self.u32()? };
        if s.start > s.end || s.end as usize > line.len() || s.end - s.start < 2 {
            return Err(SnapshotError::Corrupt("span"));
        }
        Ok(s)
    }
    fn times(&mut self) -> Result<Times, SnapshotError> {
        (0..self.count()?).map(|_| self.i64()).collect()
    }
    fn features(&mut self) -> Result<Features, SnapshotError> {
        (0..self.count()?).map(|_| Ok(Feature { ts: self.i64()?, seq: self.u64()?, raw: self.bytes()? })).collect()
    }
    fn key_state(&mut self) -> Result<KeyState, SnapshotError> {
        let exposure = match self.u8()? {
            0 => None,
            _ => {
                let (ts, seq, line) = (self.i64()?, self.u64()?, self.bytes()?);
                let (pv_id, item_id) = (self.span(&line)?, self.span(&line)?);
                let user_id = match self.u8()? {
                    0 => None,
                    _ => Some(self.span(&line)?),
                };
                // Bit 0: audited; bit 1: read by the quality report (0 in checkpoints
                // written before that bit existed).
                let flags = self.u8()?;
                let (audit, inspect) = (flags & 1 != 0, flags & 2 != 0);
                let (clicks, detail_clicks) = (self.u32()?, self.u32()?);
                let candidates = self.features()?;
                Some(Held { ts, seq, line, pv_id, item_id, user_id, audit, inspect, clicks, detail_clicks, candidates })
            }
        };
        Ok(KeyState { exposure, clicks: self.times()?, detail_clicks: self.times()?, features: self.features()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Output;
    use serde_json::json;

    /// A small stream with every kind of state: exposures waiting, clicks before their
    /// exposure, re-scored features, an exposure without a feature, a duplicate.
    /// In arrival order (by ts, the clicks of one exposure after it), none late.
    fn lines(from: i64, to: i64) -> Vec<String> {
        let mut out = Vec::new();
        for n in from..to {
            let t = n * 7_000;
            let (pv, item) = (format!("p{}", n / 3), format!("i{}", n % 3));
            if n % 5 != 0 {
                out.push((t - 900, json!({"stream":"feature","pv_id":pv,"item_id":item,"ts":t-900,"features":{"n":n}})));
            }
            if n % 4 == 0 {
                out.push((t - 50, json!({"stream":"feature","pv_id":pv,"item_id":item,"ts":t-50,"features":{"n":-n}})));
            }
            if n % 6 == 0 {
                out.push((t - 1, json!({"stream":"click","pv_id":pv,"item_id":item,"ts":t+10})));
            }
            out.push((t, json!({"stream":"exposure","pv_id":pv,"item_id":item,"user_id":"u\"q","ts":t})));
            if n % 7 == 0 {
                out.push((t + 5, json!({"stream":"exposure","pv_id":pv,"item_id":item,"user_id":"u","ts":t})));
            }
            if n % 2 == 0 {
                out.push((t + 40_000, json!({"stream":"click","pv_id":pv,"item_id":item,"ts":t+40_000})));
                out.push((t + 90_000, json!({"stream":"detail_click","pv_id":pv,"item_id":item,"ts":t+90_000})));
            }
        }
        out.sort_by_key(|(arrival, _)| *arrival);
        out.into_iter().map(|(_, v)| v.to_string()).collect()
    }

    fn drain(j: &mut Joiner) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        j.drain_ready(|o| -> Result<(), ()> {
            match o {
                Output::Sample { json, .. } => out.push(json.to_vec()),
                Output::DeadLetter(l) => out.push(l.to_vec()),
            }
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_restored_operator_continues_exactly_like_the_original() {
        let cfg = JoinerConfig { click_wait_ms: 300_000, detail_click_wait_ms: 200_000, ..JoinerConfig::default() };
        let mut a = Joiner::new(&cfg);
        let mut before = Vec::new();
        for l in lines(0, 400) {
            a.push(l.as_bytes());
            before.extend(drain(&mut a));
        }
        assert!(a.buffered_keys() > 40, "the snapshot must hold state: {} {:?}", a.buffered_keys(), a.stats());
        let snap = a.snapshot().unwrap();
        let mut b = Joiner::restore(&cfg, &snap).unwrap();
        assert_eq!(b.stats(), a.stats());
        assert_eq!(b.watermark(), a.watermark());
        // Same content (key order may differ: the map is a hash map).
        assert!(b.snapshot().unwrap().len() == snap.len(), "restore then snapshot keeps everything");
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for l in lines(400, 800) {
            a.push(l.as_bytes());
            b.push(l.as_bytes());
            out_a.extend(drain(&mut a));
            out_b.extend(drain(&mut b));
        }
        a.finish();
        b.finish();
        out_a.extend(drain(&mut a));
        out_b.extend(drain(&mut b));
        assert!(!out_a.is_empty() && !before.is_empty());
        assert_eq!(out_a, out_b);
        assert_eq!(a.stats(), b.stats());
        assert!(b.stats().balanced());
    }

    #[test]
    fn an_undrained_operator_is_not_snapshot() {
        let mut j = Joiner::new(&JoinerConfig::default());
        j.push(b"not json");
        assert!(matches!(j.snapshot(), Err(SnapshotError::NotDrained)));
        drain(&mut j);
        assert!(j.snapshot().is_ok());
    }

    #[test]
    fn truncated_corrupt_or_foreign_snapshots_are_errors_not_panics() {
        let cfg = JoinerConfig::default();
        let mut j = Joiner::new(&cfg);
        for l in lines(0, 60) {
            j.push(l.as_bytes());
        }
        drain(&mut j);
        let snap = j.snapshot().unwrap();
        for cut in [0, 3, 4, 20, snap.len() / 2, snap.len() - 1] {
            assert!(Joiner::restore(&cfg, &snap[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = snap.clone();
        longer.push(0);
        assert!(Joiner::restore(&cfg, &longer).is_err());
        let mut future = snap.clone();
        future[0] = 99;
        assert!(matches!(Joiner::restore(&cfg, &future), Err(SnapshotError::Format(99))));
        // Random damage anywhere: an error or a joiner, never a panic.
        for i in (0..snap.len()).step_by(7) {
            let mut bad = snap.clone();
            bad[i] ^= 0xA5;
            let _ = Joiner::restore(&cfg, &bad);
        }
    }
}
