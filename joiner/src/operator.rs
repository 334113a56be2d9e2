//! The join operator of JOIN.md: events in (`push`), samples and dead letters out
//! (`drain_ready`), no I/O and no clock, so every rule is tested by pushing events and
//! asserting what is ready now.
//!
//! State per key `(pv_id, item_id)`: the held exposure (with the clicks it claimed and
//! its candidate features) and the pending clicks and features no exposure has claimed.
//! A min-heap of deadlines decides everything as the watermark passes:
//! - an exposure's sample is final when the watermark passes `tE + max(waits, grace)`;
//!   samples therefore leave in `(tE, arrival)` order;
//! - a pending click (or detail click) at `c` can only join an exposure with `tE <= c`,
//!   and every on-time exposure to come has `tE >= watermark`: once the watermark
//!   passes `c` it is unjoined;
//! - a pending feature at `f` is unjoined once the watermark passes `f + lookback`.
//!
//! Duplicate exposures: a key is a duplicate while its first exposure is held, i.e.
//! until the watermark passes `tE + max(waits, grace)`. A re-sent exposure (same ts)
//! is late long before then, so every on-time duplicate is caught; memory stays
//! bounded by the windows. An exposure of the same key whose ts lies beyond the held
//! one's emission is a new exposure (and yields a second sample with the same id).
//!
//! Statistics: clicks count as joined when they join an exposure (whether or not that
//! exposure finds a feature); the exposure's own `joined`/`unjoined` and the features'
//! are decided when the sample is emitted.

use crate::config::JoinerConfig;
use crate::parse::{Key, Malformed, ParsedEvent, Parser};
use crate::quality::{Pending, Quality};
use crate::stats::JoinStats;
use bytes::Bytes;
use memchr::memmem::Finder;
use smallvec::SmallVec;
use odl_proto::event::StreamKind;
use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::LazyLock;

/// What the operator hands out.
pub enum Output<'a> {
    /// A sample line; `key` is the sample id.
    Sample { key: &'a [u8], json: &'a [u8], audit: bool },
    /// A dead-letter line: `{"reason", "stream", "line"}`.
    DeadLetter(&'a [u8]),
}

struct Feature {
    ts: i64,
    seq: u64,
    /// The raw feature object: a slice of the event's line, shared, not copied.
    raw: Bytes,
}

/// A byte range of a held line.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(line: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - line.as_ptr() as usize;
        Span { start: start as u32, end: (start + part.len()) as u32 }
    }

    fn get(self, line: &[u8]) -> &[u8] {
        &line[self.start as usize..self.end as usize]
    }
}

/// An exposure waiting for its window to close.
struct Held {
    ts: i64,
    seq: u64,
    /// The exposure's line (shared with the input block, not copied) and the raw
    /// literals of its `pv_id`, `item_id` and `user_id` in it: the sample's prefix is
    /// rendered from them when the sample is emitted.
    line: Bytes,
    pv_id: Span,
    item_id: Span,
    user_id: Option<Span>,
    audit: bool,
    /// Whether the quality report reads this sample's feature object.
    inspect: bool,
    clicks: u32,
    detail_clicks: u32,
    candidates: Features,
}

const PREFIX_ID_START: usize = br#"{"sample_id":""#.len();

#[derive(Default)]
struct KeyState {
    exposure: Option<Held>,
    clicks: Times,
    detail_clicks: Times,
    features: Features,
}

/// Most keys see one feature event (a re-scored exposure sees more): kept inline, a key
/// allocates nothing for it.
type Features = SmallVec<[Feature; 1]>;

/// Pending click times of a key: rarely more than one or two, kept inline.
type Times = SmallVec<[i64; 2]>;

impl KeyState {
    fn is_empty(&self) -> bool {
        self.exposure.is_none()
            && self.clicks.is_empty()
            && self.detail_clicks.is_empty()
            && self.features.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    Exposure = 0,
    Click = 1,
    DetailClick = 2,
    Feature = 3,
}

impl TimerKind {
    const ALL: [TimerKind; 4] = [TimerKind::Exposure, TimerKind::Click, TimerKind::DetailClick, TimerKind::Feature];
}

/// A deadline of one event. Packed into 32 bytes (two per cache line): a timer is
/// written once per event into a bucket far from the last one written, and every
/// byte of it is moved again by the bucket's sort, so its size is what pushing and
/// firing cost (48 bytes with a `u128` key, which aligns the struct to 16, and the
/// kind in a field of its own).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Timer {
    deadline: i64,
    /// The event's sequence number above, the kind in the two low bits: ordering by
    /// `(deadline, seq_kind)` is ordering by `(deadline, seq)` (a sequence number is
    /// one event's; 2^62 events are never reached).
    seq_kind: u64,
    key: [u64; 2],
}

const _: () = assert!(size_of::<Timer>() == 32);

impl Timer {
    fn new(deadline: i64, seq: u64, key: Key, kind: TimerKind) -> Timer {
        Timer { deadline, seq_kind: seq << 2 | kind as u64, key: [key as u64, (key >> 64) as u64] }
    }

    fn seq(&self) -> u64 {
        self.seq_kind >> 2
    }

    fn kind(&self) -> TimerKind {
        TimerKind::ALL[(self.seq_kind & 3) as usize]
    }

    fn key(&self) -> Key {
        self.key[0] as Key | (self.key[1] as Key) << 64
    }

    /// The firing order: by deadline, then by arrival.
    fn order(&self) -> (i64, u64) {
        (self.deadline, self.seq_kind)
    }
}

/// Timers bucketed by deadline (about a second per bucket). Deadlines arrive nearly in
/// order, so a push lands in one of the last buckets and a bucket is sorted once, when
/// it becomes due, which costs far less than a binary heap's cache-missing sift per
/// timer. The watermark moves with almost every event, so the due bucket is consumed a
/// few timers at a time: it is kept apart (`front`), sorted in reverse, and popped from
/// its end; a timer pushed into its range (a click in the current second) is inserted
/// in place.
///
/// The buckets after `front` live in a ring indexed by bucket number, so a push is an
/// index, not a search (events arrive up to the allowed lateness out of order, so pushes
/// spread over the last minute's buckets). A bucket too far from the ring (an event time
/// hours away) goes to an ordered map instead; a due bucket gathers its timers from
/// both. The vectors of consumed buckets are reused rather than grown afresh.
#[derive(Default)]
struct Timers {
    /// The bucket being consumed, by descending `(deadline, seq)`; every other timer is
    /// in a later bucket.
    front: Vec<Timer>,
    /// Which bucket `front` holds (`None` while it is empty).
    front_bucket: Option<i64>,
    /// Buckets `first..first + ring.len()`, unsorted.
    ring: VecDeque<Vec<Timer>>,
    first: i64,
    /// Buckets beyond [`RING_BUCKETS`] of the ring's span, unsorted.
    far: BTreeMap<i64, Vec<Timer>>,
    /// Emptied bucket vectors, kept for their capacity.
    spare: Vec<Vec<Timer>>,
}

const BUCKET_SHIFT: u32 = 10;
/// The most buckets the ring spans (about 70 minutes of deadlines).
const RING_BUCKETS: i64 = 4096;
/// Emptied bucket vectors kept for reuse.
const SPARE_BUCKETS: usize = 64;

impl Timers {
    fn push(&mut self, t: Timer) {
        let bucket = t.deadline >> BUCKET_SHIFT;
        if self.front_bucket.is_some_and(|f| bucket <= f) {
            let at = self.front.partition_point(|x| x.order() > t.order());
            self.front.insert(at, t);
            return;
        }
        match self.ring_slot(bucket) {
            Some(i) => {
                let slot = &mut self.ring[i];
                if slot.capacity() == 0 {
                    *slot = self.spare.pop().unwrap_or_default();
                }
                slot.push(t);
            }
            None => self.far.entry(bucket).or_default().push(t),
        }
    }

    /// The ring index of `bucket`, widening the ring to it unless that would span more
    /// than [`RING_BUCKETS`].
    fn ring_slot(&mut self, bucket: i64) -> Option<usize> {
        if self.ring.is_empty() {
            self.first = bucket;
            self.ring.push_back(Vec::new());
            return Some(0);
        }
        let end = self.first + self.ring.len() as i64;
        if bucket < self.first {
            if end - bucket > RING_BUCKETS {
                return None;
            }
            for _ in bucket..self.first {
                self.ring.push_front(Vec::new());
            }
            self.first = bucket;
        } else if bucket >= end {
            if bucket - self.first >= RING_BUCKETS {
                return None;
            }
            self.ring.resize_with((bucket - self.first + 1) as usize, Vec::new);
        }
        Some((bucket - self.first) as usize)
    }

    /// The earliest bucket holding a timer after `front`, if any.
    fn next_bucket(&mut self) -> Option<i64> {
        while self.ring.front().is_some_and(Vec::is_empty) {
            let empty = self.ring.pop_front();
            self.recycle(empty);
            self.first += 1;
        }
        let ring = (!self.ring.is_empty()).then_some(self.first);
        let far = self.far.first_key_value().map(|(&b, _)| b);
        ring.into_iter().chain(far).min()
    }

    /// Removes and returns every timer of `bucket`, which is the earliest one.
    fn take(&mut self, bucket: i64) -> Vec<Timer> {
        let mut timers = Vec::new();
        if !self.ring.is_empty() && self.first == bucket {
            timers = self.ring.pop_front().unwrap_or_default();
            self.first += 1;
        }
        if let Some(mut far) = self.far.remove(&bucket) {
            timers.append(&mut far);
        }
        timers
    }

    fn recycle(&mut self, v: Option<Vec<Timer>>) {
        if let Some(v) = v.filter(|v| v.capacity() > 0) {
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(v);
            }
        }
    }

    /// Moves every timer with `deadline < limit` (all of them for `None`) into `due`,
    /// in `(deadline, seq)` order.
    fn pop_due(&mut self, limit: Option<i64>, due: &mut Vec<Timer>) {
        loop {
            while let Some(t) = self.front.last() {
                if limit.is_some_and(|l| t.deadline >= l) {
                    // Every later timer is in this bucket or a later one: not due.
                    return;
                }
                due.extend(self.front.pop());
            }
            let Some(bucket) = self.next_bucket() else {
                self.front_bucket = None;
                return;
            };
            if limit.is_some_and(|l| bucket << BUCKET_SHIFT >= l) {
                self.front_bucket = None;
                return;
            }
            let mut timers = self.take(bucket);
            timers.sort_unstable_by_key(|t| Reverse(t.order()));
            let consumed = std::mem::replace(&mut self.front, timers);
            self.recycle(Some(consumed));
            self.front_bucket = Some(bucket);
        }
    }

    /// Every pending timer, in no particular order.
    fn iter(&self) -> impl Iterator<Item = &Timer> {
        self.front.iter().chain(self.ring.iter().flatten()).chain(self.far.values().flatten())
    }
}

struct Ready {
    held: Held,
    feature: Feature,
}

impl Ready {
    /// Starts loading what rendering this sample reads: the exposure's ids and the
    /// feature object were read minutes of event time ago and are long out of cache.
    fn prefetch(&self) {
        let line = self.held.line.as_ptr();
        prefetch(line.wrapping_add(self.held.pv_id.start as usize));
        prefetch(line.wrapping_add(self.held.item_id.end as usize));
        let raw = &self.feature.raw;
        for at in (0..raw.len()).step_by(64) {
            prefetch(raw.as_ptr().wrapping_add(at));
        }
    }
}

/// Asks the CPU to start loading the cache line holding `p`, so that a read of it a
/// little later does not stall.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no memory, whatever
    // the address (nothing is dereferenced); SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many steps (timers in `fire_timers`, records in the Kafka loop) ahead of the
/// current one [`Joiner::look_ahead`] prefetches a key's state; it prefetches the key's
/// index line twice as far ahead. Far enough for the loads to be over when the step
/// comes.
const KEY_LOOK_AHEAD: usize = 4;

/// How many samples ahead of the one being rendered `drain_ready` prefetches.
const PREFETCH_AHEAD: usize = 2;

struct DeadLetter {
    reason: String,
    stream: Option<StreamKind>,
    line: Vec<u8>,
}

/// A share of the samples chosen by their sample id's hash (`xxh3_64(sample_id) <
/// rate * 2^64`), so a replay chooses the same ones, and two shares of the same hash
/// nest: the smaller rate's samples are among the larger's.
#[derive(Clone, Copy, Debug)]
struct HashShare {
    threshold: u64,
    all: bool,
}

impl HashShare {
    fn new(rate: f64) -> Self {
        let rate = rate.clamp(0.0, 1.0);
        HashShare { threshold: (rate * 18_446_744_073_709_551_616.0) as u64, all: rate >= 1.0 }
    }

    fn takes(self, hash: u64) -> bool {
        self.all || hash < self.threshold
    }
}

/// The join operator. See the module docs for the rules it keeps.
pub struct Joiner {
    lateness: i64,
    click_wait: i64,
    detail_click_wait: i64,
    lookback: i64,
    grace: i64,
    emit_delay: i64,
    /// The audited samples (`audit_rate`).
    audit: HashShare,
    /// The samples whose feature object the quality report reads (`quality_feature_rate`).
    inspect: HashShare,

    parser: Parser,
    max_ts: i64,
    watermark: i64,
    seq: u64,
    /// End of input: every timer fires, nothing is kept.
    flushing: bool,
    /// Kafka mode: the caller sets the watermark (the minimum over input partitions,
    /// see [`Joiner::use_external_watermark`]); events do not move it.
    external_watermark: bool,
    keys: KeyTable<KeyState>,
    timers: Timers,
    due: Vec<Timer>,
    ready: VecDeque<Ready>,
    dead: VecDeque<DeadLetter>,
    stats: JoinStats,
    quality: Quality,
    /// Whether `quality` is kept: reading every sample's feature object costs about as
    /// much as the join itself, so a joiner nobody asks for `/v1/quality` skips it.
    observe_quality: bool,
    render: Vec<u8>,
}

impl Joiner {
    pub fn new(config: &JoinerConfig) -> Self {
        Joiner {
            lateness: config.allowed_lateness_ms as i64,
            click_wait: config.click_wait_ms as i64,
            detail_click_wait: config.detail_click_wait_ms as i64,
            lookback: config.feature_lookback_ms as i64,
            grace: config.feature_grace_ms as i64,
            emit_delay: config.emit_delay_ms(),
            audit: HashShare::new(config.audit_rate),
            inspect: HashShare::new(config.quality_feature_rate),
            parser: Parser::default(),
            max_ts: i64::MIN,
            watermark: i64::MIN,
            seq: 0,
            flushing: false,
            external_watermark: false,
            keys: KeyTable::default(),
            timers: Timers::default(),
            due: Vec::new(),
            ready: VecDeque::new(),
            dead: VecDeque::new(),
            stats: JoinStats::default(),
            quality: Quality::default(),
            observe_quality: true,
            render: Vec::with_capacity(4096),
        }
    }

    pub fn stats(&self) -> &JoinStats {
        &self.stats
    }

    /// Label delays, sample delay, positive rates and feature coverage (`/v1/quality`).
    pub fn quality(&self) -> &Quality {
        &self.quality
    }

    /// Keeps [`Joiner::quality`] up to date (the default) or leaves it empty (a replay
    /// that serves no `/v1/quality`).
    pub fn set_observe_quality(&mut self, on: bool) {
        self.observe_quality = on;
    }

    /// Events held in the join state, counted by a scan (called once per stats tick).
    pub fn pending(&self) -> Pending {
        let mut p = Pending::default();
        for k in self.keys.values() {
            p.exposures += k.exposure.is_some() as u64;
            p.clicks += k.clicks.len() as u64;
            p.detail_clicks += k.detail_clicks.len() as u64;
            p.features += k.features.len() as u64;
            p.features += k.exposure.as_ref().map_or(0, |h| h.candidates.len() as u64);
        }
        p
    }

    /// Largest ts seen minus the allowed lateness (`i64::MIN` before the first event).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Keys with buffered state (for memory figures and tests).
    pub fn buffered_keys(&self) -> usize {
        self.keys.len()
    }

    /// Whether the audit sink gets the sample with this sample id (JOIN.md "Audit sink"):
    /// `xxh3_64(sample_id) < audit_rate * 2^64`.
    pub fn audits(&self, sample_id: &str) -> bool {
        self.audit.takes(xxhash_rust::xxh3::xxh3_64(sample_id.as_bytes()))
    }

    /// One replay line (the stream named inside it).
    pub fn push(&mut self, line: &[u8]) {
        self.push_bytes_with(&Bytes::copy_from_slice(line), None)
    }

    /// One message of a known stream (e.g. from that stream's topic).
    pub fn push_with(&mut self, line: &[u8], stream: Option<StreamKind>) {
        self.push_bytes_with(&Bytes::copy_from_slice(line), stream)
    }

    /// One replay line, shared: what the operator keeps of it (feature objects, the
    /// exposure's ids) are slices of `line`, not copies.
    pub fn push_bytes(&mut self, line: &Bytes) {
        self.push_bytes_with(line, None)
    }

    /// One shared message of a known stream.
    pub fn push_bytes_with(&mut self, bytes: &Bytes, stream: Option<StreamKind>) {
        let parsed = self.parser.parse_with(bytes, stream);
        self.push_parsed(bytes, parsed);
    }

    /// One shared message that the caller has already parsed (a Kafka input reads the
    /// event time first, to hold its partition's watermark): `parsed` must come from
    /// `bytes`, so the line is parsed once, not twice.
    pub fn push_parsed(&mut self, bytes: &Bytes, parsed: Result<ParsedEvent<'_>, Malformed>) {
        self.seq += 1;
        let line: &[u8] = bytes;
        let ev = match parsed {
            Ok(ev) => ev,
            Err(m) => return self.malformed(line, m),
        };
        match ev.stream {
            StreamKind::Exposure => self.stats.exposure.received += 1,
            StreamKind::Click => self.stats.click.received += 1,
            StreamKind::DetailClick => self.stats.detail_click.received += 1,
            StreamKind::Feature => self.stats.feature.received += 1,
        }
        if ev.ts < self.watermark {
            match ev.stream {
                StreamKind::Exposure => self.stats.exposure.late += 1,
                StreamKind::Click => self.stats.click.late += 1,
                StreamKind::DetailClick => self.stats.detail_click.late += 1,
                StreamKind::Feature => self.stats.feature.late += 1,
            }
            self.dead.push_back(DeadLetter {
                reason: "late".into(),
                stream: Some(ev.stream),
                line: line.to_vec(),
            });
            return;
        }
        match ev.stream {
            StreamKind::Exposure => self.on_exposure(&ev, bytes),
            StreamKind::Click | StreamKind::DetailClick => self.on_click(&ev),
            StreamKind::Feature => self.on_feature(&ev, bytes),
        }
        if ev.ts > self.max_ts && !self.external_watermark {
            self.max_ts = ev.ts;
            let wm = ev.ts.saturating_sub(self.lateness);
            if wm > self.watermark {
                self.watermark = wm;
                self.fire_timers();
            }
        }
    }

    /// End of input: every pending exposure is emitted, every pending event decided.
    pub fn finish(&mut self) {
        self.flushing = true;
        self.fire_timers();
        debug_assert!(self.keys.is_empty());
        self.keys.clear();
    }

    /// Hands out, in order, every dead letter and sample that is ready now; stops at the
    /// first error `f` returns (what was handed out is gone from the operator).
    pub fn drain_ready<E>(&mut self, mut f: impl FnMut(Output<'_>) -> Result<(), E>) -> Result<(), E> {
        while let Some(d) = self.dead.pop_front() {
            self.render.clear();
            render_dead_letter(&mut self.render, &d);
            f(Output::DeadLetter(&self.render))?;
        }
        while let Some(r) = self.ready.pop_front() {
            if let Some(ahead) = self.ready.get(PREFETCH_AHEAD - 1) {
                ahead.prefetch();
            }
            self.render.clear();
            let id_end = render_sample(&mut self.render, &r);
            let id = &self.render[PREFIX_ID_START..id_end];
            let key: std::borrow::Cow<'_, [u8]> = if id.contains(&b'\\') {
                // The quotes around the id are in the sample too: decode the literal.
                let quoted = &self.render[PREFIX_ID_START - 1..id_end + 1];
                match serde_json::from_slice::<String>(quoted) {
                    Ok(s) => s.into_bytes().into(),
                    Err(_) => id.into(),
                }
            } else {
                id.into()
            };
            f(Output::Sample { key: &key, json: &self.render, audit: r.held.audit })?;
        }
        Ok(())
    }

    fn malformed(&mut self, line: &[u8], m: Malformed) {
        self.stats.malformed += 1;
        self.dead.push_back(DeadLetter { reason: m.reason(), stream: m.stream(), line: line.to_vec() });
    }

    fn on_exposure(&mut self, ev: &ParsedEvent<'_>, line: &Bytes) {
        let state = self.keys.get_or_default(ev.key);
        if state.exposure.is_some() {
            self.stats.exposure.duplicate += 1;
            return;
        }
        let mut held = Held {
            ts: ev.ts,
            seq: self.seq,
            line: line.clone(),
            pv_id: Span::of(line, ev.pv_id),
            item_id: Span::of(line, ev.item_id),
            user_id: ev.user_id.map(|u| Span::of(line, u)),
            audit: self.audit.takes(ev.audit_hash),
            inspect: self.inspect.takes(ev.audit_hash),
            clicks: 0,
            detail_clicks: 0,
            candidates: Features::new(),
        };
        let t = ev.ts;
        let (cw, dw) = (self.click_wait, self.detail_click_wait);
        let mut claimed = 0;
        let quality = &mut self.quality;
        let observe = self.observe_quality;
        state.clicks.retain(|&mut c| {
            let hit = in_window(t, c, 0, cw);
            if hit && observe {
                quality.label_joined(false, c - t);
            }
            claimed += hit as u32;
            !hit
        });
        held.clicks = claimed;
        self.stats.click.joined += claimed as u64;
        claimed = 0;
        state.detail_clicks.retain(|&mut c| {
            let hit = in_window(t, c, 0, dw);
            if hit && observe {
                quality.label_joined(true, c - t);
            }
            claimed += hit as u32;
            !hit
        });
        held.detail_clicks = claimed;
        self.stats.detail_click.joined += claimed as u64;
        let (lb, gr) = (self.lookback, self.grace);
        if state.features.iter().all(|f| in_window(t, f.ts, lb, gr)) {
            // The usual case (the one feature logged before this exposure): hand the
            // vector over instead of moving its items into a new one.
            held.candidates = std::mem::take(&mut state.features);
        }
        let mut i = 0;
        while i < state.features.len() {
            if in_window(t, state.features[i].ts, lb, gr) {
                held.candidates.push(state.features.swap_remove(i));
            } else {
                i += 1;
            }
        }
        state.exposure = Some(held);
        let deadline = t.saturating_add(self.emit_delay);
        self.timers.push(Timer::new(deadline, self.seq, ev.key, TimerKind::Exposure));
    }

    fn on_click(&mut self, ev: &ParsedEvent<'_>) {
        let detail = ev.stream == StreamKind::DetailClick;
        let wait = if detail { self.detail_click_wait } else { self.click_wait };
        let state = self.keys.get_or_default(ev.key);
        if let Some(h) = state.exposure.as_mut() {
            if in_window(h.ts, ev.ts, 0, wait) {
                if self.observe_quality {
                    self.quality.label_joined(detail, ev.ts - h.ts);
                }
                if detail {
                    h.detail_clicks += 1;
                    self.stats.detail_click.joined += 1;
                } else {
                    h.clicks += 1;
                    self.stats.click.joined += 1;
                }
                return;
            }
            if self.observe_quality && ev.ts > h.ts.saturating_add(wait) {
                self.quality.label_past_window(detail);
            }
        }
        let kind = if detail {
            state.detail_clicks.push(ev.ts);
            TimerKind::DetailClick
        } else {
            state.clicks.push(ev.ts);
            TimerKind::Click
        };
        self.timers.push(Timer::new(ev.ts, self.seq, ev.key, kind));
    }

    fn on_feature(&mut self, ev: &ParsedEvent<'_>, line: &Bytes) {
        let raw = match ev.features {
            Some(f) => line.slice_ref(f),
            None => Bytes::from_static(b"{}"),
        };
        let f = Feature { ts: ev.ts, seq: self.seq, raw };
        let state = self.keys.get_or_default(ev.key);
        if let Some(h) = state.exposure.as_mut() {
            if in_window(h.ts, ev.ts, self.lookback, self.grace) {
                h.candidates.push(f);
                return;
            }
        }
        state.features.push(f);
        let deadline = ev.ts.saturating_add(self.lookback);
        self.timers.push(Timer::new(deadline, self.seq, ev.key, TimerKind::Feature));
    }

    /// Fires every timer the watermark has passed (all of them when flushing). Timers
    /// that firing adds are never due in the same pass (their deadline is at or past
    /// the watermark, and a flush adds none).
    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        let limit = if self.flushing { None } else { Some(self.watermark) };
        self.timers.pop_due(limit, &mut due);
        for i in 0..due.len() {
            self.look_ahead(i, |j| due.get(j).map(Timer::key));
            self.fire(due[i]);
        }
        due.clear();
        self.due = due;
    }

    /// The look-ahead of step `i` of a run of timers or records, whose keys `key_at`
    /// gives (`None`: past the end, or no key): the keys' states are spread over tens of
    /// megabytes, so firing a timer or joining an event is mostly waiting for memory.
    /// The key [`KEY_LOOK_AHEAD`] steps ahead has its index line loaded already (it was
    /// asked for twice as far ahead), so its slot is found without waiting and its state
    /// is prefetched ([`KeyTable`]); the loads overlap the work of the steps in between.
    pub(crate) fn look_ahead(&self, i: usize, key_at: impl Fn(usize) -> Option<Key>) {
        if let Some(far) = key_at(i + 2 * KEY_LOOK_AHEAD) {
            self.keys.prefetch_index(far);
        }
        if let Some(near) = key_at(i + KEY_LOOK_AHEAD) {
            self.keys.prefetch(near);
        }
    }

    fn fire(&mut self, t: Timer) {
        let key = t.key();
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        let (wm, flushing, lookback) = (self.watermark, self.flushing, self.lookback);
        let expired = |ts: i64| flushing || ts < wm;
        match t.kind() {
            TimerKind::Exposure => {
                if state.exposure.as_ref().is_some_and(|h| h.seq == t.seq()) {
                    if let Some(held) = state.exposure.take() {
                        self.emit(key, held);
                    }
                }
                if self.keys.get(&key).is_some_and(KeyState::is_empty) {
                    self.keys.remove(&key);
                }
                return;
            }
            TimerKind::Click => {
                let before = state.clicks.len();
                state.clicks.retain(|&mut c| !expired(c));
                self.stats.click.unjoined += (before - state.clicks.len()) as u64;
            }
            TimerKind::DetailClick => {
                let before = state.detail_clicks.len();
                state.detail_clicks.retain(|&mut c| !expired(c));
                self.stats.detail_click.unjoined += (before - state.detail_clicks.len()) as u64;
            }
            TimerKind::Feature => {
                let before = state.features.len();
                state.features.retain(|f| !expired(f.ts.saturating_add(lookback)));
                self.stats.feature.unjoined += (before - state.features.len()) as u64;
            }
        }
        if state.is_empty() {
            self.keys.remove(&key);
        }
    }

    /// The exposure's window has closed: choose its feature, emit or count it unjoined,
    /// and return the features it did not take to the pending set.
    fn emit(&mut self, key: Key, mut held: Held) {
        let chosen = choose_feature(&held.candidates, held.ts).map(|i| held.candidates.swap_remove(i));
        let rest = std::mem::take(&mut held.candidates);
        for f in rest {
            let deadline = f.ts.saturating_add(self.lookback);
            if self.flushing || deadline < self.watermark {
                self.stats.feature.unjoined += 1;
            } else {
                self.timers.push(Timer::new(deadline, f.seq, key, TimerKind::Feature));
                if let Some(s) = self.keys.get_mut(&key) {
                    s.features.push(f);
                }
            }
        }
        match chosen {
            Some(feature) => {
                self.stats.feature.joined += 1;
                self.stats.exposure.joined += 1;
                self.stats.samples.emitted += 1;
                self.stats.samples.audited += held.audit as u64;
                if self.observe_quality {
                    let labels = (held.clicks > 0, held.detail_clicks > 0);
                    let features = held.inspect.then_some(&feature.raw[..]);
                    self.quality.sample(held.ts, self.watermark, labels.0, labels.1, features);
                }
                self.ready.push_back(Ready { held, feature });
            }
            None => self.stats.exposure.unjoined += 1,
        }
    }
}

/// `t - before <= ts <= t + after`, without overflow.
#[inline]
fn in_window(t: i64, ts: i64, before: i64, after: i64) -> bool {
    t.saturating_sub(before) <= ts && ts <= t.saturating_add(after)
}

/// JOIN.md's choice: the greatest ts not after `t`; if none, the smallest ts after it.
/// Equal ts: the first to arrive.
fn choose_feature(c: &[Feature], t: i64) -> Option<usize> {
    let before = (0..c.len()).filter(|&i| c[i].ts <= t).max_by_key(|&i| (c[i].ts, Reverse(c[i].seq)));
    before.or_else(|| (0..c.len()).min_by_key(|&i| (c[i].ts, c[i].seq)))
}

/// `{"sample_id":"<pv>:<item>","ts":T,"user_id":U,"item_id":I,"labels":{"click":`;
/// returns where the sample id's text ends in `out`.
/// Raw string literals concatenate safely: JSON escapes do not span characters.
fn render_prefix(out: &mut Vec<u8>, h: &Held) -> usize {
    let pv_id = h.pv_id.get(&h.line);
    let item_id = h.item_id.get(&h.line);
    let user = h.user_id.map_or(&b"\"\""[..], |u| u.get(&h.line));
    out.extend_from_slice(br#"{"sample_id":""#);
    out.extend_from_slice(&pv_id[1..pv_id.len() - 1]);
    out.push(b':');
    out.extend_from_slice(&item_id[1..item_id.len() - 1]);
    let id_end = out.len();
    out.extend_from_slice(br#"","ts":"#);
    push_decimal(out, h.ts);
    out.extend_from_slice(br#","user_id":"#);
    out.extend_from_slice(user);
    out.extend_from_slice(br#","item_id":"#);
    out.extend_from_slice(item_id);
    out.extend_from_slice(br#","labels":{"click":"#);
    id_end
}

/// `v` in decimal, as `Display` writes it, without the formatting machinery (one call
/// per sample).
fn push_decimal(out: &mut Vec<u8>, v: i64) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

/// Renders the sample; returns where the sample id's text ends in `out`.
fn render_sample(out: &mut Vec<u8>, r: &Ready) -> usize {
    let click = (r.held.clicks > 0) as u8;
    let detail = (r.held.detail_clicks > 0) as u8;
    let id_end = render_prefix(out, &r.held);
    out.push(b'0' + click);
    out.extend_from_slice(br#","detail_click":"#);
    out.push(b'0' + detail);
    out.extend_from_slice(br#"},"features":"#);
    splice_features(out, &r.feature.raw, click, detail);
    out.push(b'}');
    id_end
}

/// The feature object with `click_label` and `detail_click_label` appended. The object
/// is copied as bytes; only if it could already hold a `*_label` key (rare) is it
/// parsed, so the labels replace rather than repeat that key.
fn splice_features(out: &mut Vec<u8>, raw: &[u8], click: u8, detail: u8) {
    static LABEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"_label"));
    // Only a `\u` escape could spell `_label` otherwise (escapes are rare: memchr, not
    // a second substring search).
    let unicode_escape = || memchr::memchr_iter(b'\\', raw).any(|i| raw.get(i + 1) == Some(&b'u'));
    let suspicious = LABEL.find(raw).is_some() || unicode_escape();
    if suspicious {
        if let Ok(mut map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw) {
            map.insert("click_label".into(), click.into());
            map.insert("detail_click_label".into(), detail.into());
            let _ = serde_json::to_writer(&mut *out, &map);
            return;
        }
    }
    let body = raw.trim_ascii_end();
    let body = body.strip_suffix(b"}").unwrap_or(body);
    out.extend_from_slice(body);
    let mut inner = body.trim_ascii_start();
    while let Some(rest) = inner.strip_prefix(b"{") {
        inner = rest;
    }
    if !inner.trim_ascii().is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(br#""click_label":"#);
    out.push(b'0' + click);
    out.extend_from_slice(br#","detail_click_label":"#);
    out.push(b'0' + detail);
    out.push(b'}');
}

fn render_dead_letter(out: &mut Vec<u8>, d: &DeadLetter) {
    out.extend_from_slice(b"{\"reason\":");
    let _ = serde_json::to_writer(&mut *out, &d.reason);
    out.extend_from_slice(b",\"stream\":");
    match d.stream {
        Some(s) => {
            let _ = write!(out, "\"{}\"", s.as_str());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"line\":");
    let line = String::from_utf8_lossy(&d.line);
    let _ = serde_json::to_writer(&mut *out, line.as_ref());
    out.push(b'}');
}

mod key_table;
mod partitioned;
mod snapshot;

use key_table::KeyTable;

pub use snapshot::SnapshotError;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod reference_tests;
