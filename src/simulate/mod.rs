//! The event simulator (`odl simulate`): a deterministic, drifting stream of the four
//! input streams of JOIN.md with a hidden ground-truth click model.
//!
//! Page views arrive in event time; each shows a few items (one exposure each), most
//! preceded by a feature event (sometimes re-scored, sometimes missing or written just
//! after), clicks follow with long-tailed delays, detail clicks follow clicks. Events
//! are then delayed to their arrival time (mostly within the joiner's lateness, a few
//! beyond it), some are sent twice, and a few malformed lines are mixed in. Everything
//! streams through a small heap ordered by arrival, so millions of events cost no more
//! memory than the events in flight.
//!
//! - [`config`]: the typed configuration (`configs/simulate.toml`);
//! - [`world`]: users, items and the hidden (drifting, logistic) model;
//! - [`auc`]: the oracle AUC in fixed memory;
//! - [`kafka`]: `--kafka`, the lines routed to one topic per stream.

pub mod auc;
pub mod config;
pub mod kafka;
pub mod world;

use auc::BinnedAuc;
pub use config::SimConfig;
use odl_proto::event::StreamKind;
use odl_proto::stream::{RecordSink, StreamError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Zipf};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use world::{sigmoid, Context, World, DEVICES};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Boxed: a TOML error is large and every `Result` here would carry it.
    #[error(transparent)]
    ConfigFile(Box<odl_proto::config::ConfigError>),
    #[error("simulator config: {0}")]
    Config(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<odl_proto::config::ConfigError> for SimError {
    fn from(e: odl_proto::config::ConfigError) -> Self {
        SimError::ConfigFile(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, SimError>;

/// The joiner's default click window; clicks beyond it are the simulated "too late".
pub const CLICK_WINDOW_MS: i64 = 630_000;
/// Arrival delays of on-time events stay below this (the joiner allows 60 s).
const MAX_ON_TIME_DELAY_MS: f64 = 55_000.0;
/// The earliest a page view's events can be in event time, relative to it (re-scored
/// feature events are written up to 120 s before the exposure).
const EARLIEST_EVENT_MS: i64 = 120_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Lines to write (events, their duplicates and the malformed lines).
    pub events: u64,
    /// Lines per second of wall clock; `None` = as fast as possible.
    pub rate: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamCounts {
    pub exposure: u64,
    pub click: u64,
    pub detail_click: u64,
    pub feature: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OracleAuc {
    pub click: Option<f64>,
    pub detail_click: Option<f64>,
}

/// Printed by `odl simulate` (JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub events: u64,
    /// Well-formed lines written per stream (duplicates included).
    pub streams: StreamCounts,
    pub malformed: u64,
    pub duplicates: u64,
    /// Events delayed past the joiner's allowed lateness.
    pub beyond_lateness: u64,
    /// Distinct exposures written (one truth line each).
    pub exposures: u64,
    /// Share of exposures whose drawn click (resp. detail click) falls in the window.
    pub click_rate: f64,
    pub detail_click_rate: f64,
    /// AUC of the true probabilities against the drawn labels: the trainer's bound.
    pub oracle_auc: OracleAuc,
    pub start_ms: i64,
    pub end_ms: i64,
}

struct TruthRec {
    sample_id: String,
    p_click: f64,
    p_detail: f64,
    click: bool,
    detail: bool,
}

struct Pending {
    arrival: i64,
    seq: u64,
    /// None for a malformed line.
    stream: Option<StreamKind>,
    line: String,
    truth: Option<Box<TruthRec>>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.arrival, self.seq) == (o.arrival, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.arrival, self.seq).cmp(&(o.arrival, o.seq))
    }
}

/// Generates `opts.events` lines into `events` (and one truth line per exposure into
/// `truth`), deterministic for a seed.
pub fn generate(
    config: &SimConfig,
    opts: &SimOptions,
    events: &mut dyn RecordSink,
    mut truth: Option<&mut dyn RecordSink>,
) -> Result<Summary> {
    config.validate()?;
    let mut g = Generator::new(config, opts)?;
    let started = Instant::now();
    let mut written = 0u64;
    let mut pv = 0u64;
    'outer: while written < opts.events {
        let t = g.page_view(pv);
        pv += 1;
        let frontier = t - EARLIEST_EVENT_MS - 1;
        while g.heap.peek().is_some_and(|Reverse(p)| p.arrival < frontier) {
            let Some(Reverse(p)) = g.heap.pop() else { break };
            g.write(p, events, &mut truth)?;
            written += 1;
            if let Some(rate) = opts.rate {
                pace(started, written, rate);
            }
            if written >= opts.events {
                break 'outer;
            }
        }
    }
    events.flush()?;
    if let Some(t) = truth {
        t.flush()?;
    }
    Ok(g.summary(opts))
}

/// Sleeps so that `written` lines take `written / rate` seconds of wall clock.
fn pace(started: Instant, written: u64, rate: f64) {
    if !written.is_multiple_of(64) {
        return;
    }
    let due = Duration::from_secs_f64(written as f64 / rate);
    if let Some(ahead) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(ahead);
    }
}

struct Generator<'c> {
    c: &'c SimConfig,
    seed: u64,
    rng: StdRng,
    world: World,
    start_ms: i64,
    pv_gap: Exp<f64>,
    t_ms: f64,
    users: Zipf<f64>,
    items: Option<(u64, Zipf<f64>)>,
    click_delay: LogNormal<f64>,
    detail_delay: LogNormal<f64>,
    arrival_delay: Exp<f64>,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    malformed_kind: u64,
    summary: Summary,
    auc_click: BinnedAuc,
    auc_detail: BinnedAuc,
    clicks: u64,
    details: u64,
}

fn dist<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| SimError::Config(format!("{what}: {e}")))
}

impl<'c> Generator<'c> {
    fn new(c: &'c SimConfig, opts: &SimOptions) -> Result<Self> {
        let mut pv_rate = c.page_views_per_sec;
        let mut start_ms = c.start_ms;
        if let Some(rate) = opts.rate {
            // Event time follows the wall clock (scaled): about 2.2 lines per exposure.
            pv_rate = (rate / (2.2 * c.mean_items_per_page()) / c.paced_time_scale).max(1e-3);
            start_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(c.start_ms);
        }
        Ok(Generator {
            c,
            seed: opts.seed,
            rng: StdRng::seed_from_u64(opts.seed),
            world: World::new(opts.seed, c),
            start_ms,
            pv_gap: dist(Exp::new(pv_rate / 1000.0), "page view rate")?,
            t_ms: 0.0,
            users: dist(Zipf::new(c.users, c.user_zipf), "user_zipf")?,
            items: None,
            click_delay: dist(LogNormal::new(c.click_delay_median_ms.ln(), 1.3), "click delay")?,
            detail_delay: dist(LogNormal::new(c.detail_delay_median_ms.ln(), 1.0), "detail delay")?,
            arrival_delay: dist(Exp::new(1.0 / c.arrival_delay_mean_ms), "arrival delay")?,
            heap: BinaryHeap::new(),
            seq: 0,
            malformed_kind: 0,
            summary: Summary { seed: opts.seed, events: opts.events, start_ms, ..Summary::default() },
            auc_click: BinnedAuc::default(),
            auc_detail: BinnedAuc::default(),
            clicks: 0,
            details: 0,
        })
    }

    fn items_now(&mut self) -> u64 {
        self.c.initial_items + (self.c.new_items_per_hour * self.t_ms / 3_600_000.0) as u64
    }

    fn pick_item(&mut self) -> u64 {
        let n = self.items_now();
        if self.rng.gen::<f64>() < self.c.fresh_item_share {
            let back = (self.rng.gen::<f64>().powi(2) * (self.c.new_items_per_hour / 2.0).max(1.0)) as u64;
            return n - 1 - back.min(n - 1);
        }
        if self.items.as_ref().is_none_or(|(m, _)| *m != n) {
            // Zipf::new only fails for n = 0 or a bad exponent, both refused by validate.
            if let Ok(z) = Zipf::new(n, self.c.item_zipf) {
                self.items = Some((n, z));
            }
        }
        match &self.items {
            Some((_, z)) => (z.sample(&mut self.rng) as u64).clamp(1, n) - 1,
            None => 0,
        }
    }

    /// Generates page view `n`; returns its event time.
    fn page_view(&mut self, n: u64) -> i64 {
        self.t_ms += self.pv_gap.sample(&mut self.rng);
        let t = self.start_ms + self.t_ms as i64;
        let user = self.world.user((self.users.sample(&mut self.rng) as u64).clamp(1, self.c.users) - 1);
        let k = self.rng.gen_range(self.c.items_per_page_min..=self.c.items_per_page_max);
        let mut items: Vec<u64> = Vec::with_capacity(k as usize);
        for _ in 0..4 * k {
            if items.len() == k as usize {
                break;
            }
            let i = self.pick_item();
            if !items.contains(&i) {
                items.push(i);
            }
        }
        let device =
            if self.rng.gen::<f64>() < 0.85 { user.device } else { self.rng.gen_range(0..DEVICES.len()) };
        let hour = ((t.div_euclid(3_600_000)) % 24) as u32;
        let weekday = ((t.div_euclid(86_400_000) + 4) % 7) as u32;
        let pv_id = format!("pv{:x}-{n}", self.seed & 0xffff);
        for (position, &item_id) in items.iter().enumerate() {
            let item = self.world.item(item_id);
            let x = Context { user: &user, item: &item, device, position: position as u32, hour };
            self.exposure(&pv_id, &x, weekday, t);
        }
        t
    }

    fn exposure(&mut self, pv: &str, x: &Context<'_>, weekday: u32, t: i64) {
        let c = self.c;
        let p = sigmoid(self.world.click_logit(x, self.t_ms));
        let pd = self.world.detail_given_click(x);
        let (uid, iid) = (x.user.id, x.item.id);
        // Clicks: does one happen, and does it land inside the window?
        let clicked = self.rng.gen::<f64>() < p;
        let beyond = self.rng.gen::<f64>() < c.late_click_share;
        let click_label = clicked && !beyond;
        let detail_label = click_label && self.rng.gen::<f64>() < pd;
        let in_window = 1.0 - c.late_click_share;
        let rec = TruthRec {
            sample_id: format!("{pv}:i{iid}"),
            p_click: p * in_window,
            p_detail: p * in_window * pd,
            click: click_label,
            detail: detail_label,
        };
        let mut line = String::with_capacity(160);
        let _ = write!(
            line,
            r#"{{"stream":"exposure","pv_id":"{pv}","item_id":"i{iid}","user_id":"u{uid}","ts":{t},"ctx":{{"device":"{}","position":{}}}}}"#,
            DEVICES[x.device], x.position
        );
        self.emit(t, StreamKind::Exposure, line, Some(Box::new(rec)));

        // Feature events.
        let r = self.rng.gen::<f64>();
        let (miss, rescore, after) = (c.missing_feature_share, c.rescore_share, c.feature_after_share);
        if r < miss {
        } else if r < miss + rescore {
            // First scoring at another position, then the final one just before.
            let early = t - self.rng.gen_range(2_000..EARLIEST_EVENT_MS);
            let stale = Context { position: x.position + 1 + self.rng.gen_range(0..3), ..*x };
            self.feature(pv, &stale, weekday, early);
            let late = t - self.rng.gen_range(50..2_000);
            self.feature(pv, x, weekday, late);
        } else if r < miss + rescore + after {
            let ts = t + self.rng.gen_range(10..5_000);
            self.feature(pv, x, weekday, ts);
        } else {
            let ts = t - self.rng.gen_range(50..3_000);
            self.feature(pv, x, weekday, ts);
        }

        if clicked {
            let delay = if beyond {
                self.rng.gen_range(CLICK_WINDOW_MS + 1_000..3_600_000)
            } else {
                (self.click_delay.sample(&mut self.rng) as i64).clamp(200, 620_000)
            };
            let ts = t + delay;
            let line = format!(
                r#"{{"stream":"click","pv_id":"{pv}","item_id":"i{iid}","user_id":"u{uid}","ts":{ts}}}"#
            );
            self.emit(ts, StreamKind::Click, line, None);
            if detail_label {
                let d = (self.detail_delay.sample(&mut self.rng) as i64).max(100);
                let dts = (ts + d).min(t + CLICK_WINDOW_MS);
                let line = format!(
                    r#"{{"stream":"detail_click","pv_id":"{pv}","item_id":"i{iid}","user_id":"u{uid}","ts":{dts}}}"#
                );
                self.emit(dts, StreamKind::DetailClick, line, None);
            }
        }
    }

    fn feature(&mut self, pv: &str, x: &Context<'_>, weekday: u32, ts: i64) {
        let (u, i) = (x.user, x.item);
        let mut line = String::with_capacity(360);
        let _ = write!(
            line,
            r#"{{"stream":"feature","pv_id":"{pv}","item_id":"i{}","ts":{ts},"features":{{"user_id":"u{}","item_id":"i{}","item_cat":"c{}","user_segment":"s{}","user_age_bucket":"a{}","device":"{}","hour":{},"weekday":{weekday},"position":{},"item_price":{:.2},"user_tags":["#,
            i.id,
            u.id,
            i.id,
            i.category,
            u.segment,
            u.age_bucket,
            DEVICES[x.device],
            x.hour,
            x.position,
            i.price
        );
        for (n, tag) in u.tags.iter().enumerate() {
            let _ = write!(line, "{}\"t{tag}\"", if n > 0 { "," } else { "" });
        }
        line.push_str("]}}");
        self.emit(ts, StreamKind::Feature, line, None);
    }

    /// Schedules an event at its arrival time, with its duplicate and a malformed
    /// companion when the dice say so.
    fn emit(&mut self, ts: i64, stream: StreamKind, line: String, truth: Option<Box<TruthRec>>) {
        let c = self.c;
        let delay = if self.rng.gen::<f64>() < c.beyond_lateness_share {
            self.summary.beyond_lateness += 1;
            self.rng.gen_range(61_000..300_000)
        } else {
            self.arrival_delay.sample(&mut self.rng).min(MAX_ON_TIME_DELAY_MS) as i64
        };
        let arrival = ts + delay;
        if self.rng.gen::<f64>() < c.duplicate_share {
            let again = arrival + self.rng.gen_range(0..5_000);
            self.push(again, Some(stream), line.clone(), None);
            self.summary.duplicates += 1;
        }
        if self.rng.gen::<f64>() < c.malformed_share {
            let bad = self.malformed(stream, ts);
            self.push(arrival, None, bad, None);
        }
        self.push(arrival, Some(stream), line, truth);
    }

    fn push(&mut self, arrival: i64, stream: Option<StreamKind>, line: String, truth: Option<Box<TruthRec>>) {
        self.seq += 1;
        self.heap.push(Reverse(Pending { arrival, seq: self.seq, stream, line, truth }));
    }

    /// Every malformed kind of JOIN.md in turn.
    fn malformed(&mut self, stream: StreamKind, ts: i64) -> String {
        self.malformed_kind += 1;
        let s = stream.as_str();
        let k = self.malformed_kind;
        match k % 10 {
            0 => format!(r#"{{"stream":"{s}","pv_id":"bad{k}","item_id":"i0","ts":{ts}"#),
            1 => format!(r#"["{s}","bad{k}",{ts}]"#),
            2 => format!(r#"{{"stream":"impression","pv_id":"bad{k}","item_id":"i0","ts":{ts}}}"#),
            3 => format!(r#"{{"pv_id":"bad{k}","item_id":"i0","ts":{ts}}}"#),
            4 => format!(r#"{{"stream":"{s}","item_id":"i0","user_id":"u0","ts":{ts}}}"#),
            5 => format!(r#"{{"stream":"{s}","pv_id":{k},"item_id":"i0","user_id":"u0","ts":{ts}}}"#),
            6 => format!(r#"{{"stream":"{s}","pv_id":"bad{k}","item_id":"i0","user_id":"u0","ts":"{ts}"}}"#),
            7 => format!(r#"{{"stream":"{s}","pv_id":"bad{k}","item_id":"i0","user_id":"u0","ts":{ts}.5}}"#),
            8 => format!(
                r#"{{"stream":"feature","pv_id":"bad{k}","item_id":"i0","ts":{ts},"features":"none"}}"#
            ),
            _ => format!("garbage line {k}"),
        }
    }

    fn write<'t>(
        &mut self,
        p: Pending,
        events: &mut dyn RecordSink,
        truth: &mut Option<&'t mut (dyn RecordSink + 't)>,
    ) -> Result<()> {
        events.send(None, p.line.as_bytes())?;
        let s = &mut self.summary;
        match p.stream {
            None => s.malformed += 1,
            Some(StreamKind::Exposure) => s.streams.exposure += 1,
            Some(StreamKind::Click) => s.streams.click += 1,
            Some(StreamKind::DetailClick) => s.streams.detail_click += 1,
            Some(StreamKind::Feature) => s.streams.feature += 1,
        }
        if let Some(rec) = p.truth {
            s.exposures += 1;
            self.clicks += rec.click as u64;
            self.details += rec.detail as u64;
            self.auc_click.add(rec.p_click, rec.click);
            self.auc_detail.add(rec.p_detail, rec.detail);
            if let Some(t) = truth.as_mut() {
                let mut line = String::with_capacity(96);
                let _ = write!(line, "{{\"sample_id\":");
                let _ = write!(line, "{:?}", rec.sample_id);
                let _ = write!(line, ",\"click\":{:.6},\"detail_click\":{:.6}}}", rec.p_click, rec.p_detail);
                t.send(Some(rec.sample_id.as_bytes()), line.as_bytes())?;
            }
        }
        s.end_ms = s.end_ms.max(p.arrival);
        Ok(())
    }

    fn summary(&self, _opts: &SimOptions) -> Summary {
        let mut s = self.summary.clone();
        let n = s.exposures.max(1) as f64;
        s.click_rate = self.clicks as f64 / n;
        s.detail_click_rate = self.details as f64 / n;
        s.oracle_auc = OracleAuc { click: self.auc_click.auc(), detail_click: self.auc_detail.auc() };
        s
    }
}

/// Collects records in memory (tests, benchmarks, `odl run` wiring).
#[derive(Default)]
pub struct VecSink {
    pub lines: Vec<Vec<u8>>,
}

impl RecordSink for VecSink {
    fn send(&mut self, _key: Option<&[u8]>, value: &[u8]) -> odl_proto::stream::Result<()> {
        self.lines.push(value.to_vec());
        Ok(())
    }
    fn flush(&mut self) -> odl_proto::stream::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
