//! Per-partition watermarks (JOIN.md "Time", Kafka mode): each input partition's
//! largest on-time event time, and the join watermark as their minimum minus the
//! allowed lateness, so a partition that is behind (a slow producer, a consumer
//! catching up) holds the join back instead of seeing its events called late.
//!
//! Which partitions count:
//! - every partition counts from the first lag check that sees it, even before its
//!   first record arrives (its maximum is then "nothing yet", which holds the
//!   watermark): otherwise, when a burst reaches every topic at once, the first topic
//!   read would race ahead and make every other topic's records late;
//! - a partition that is caught up (nothing left to read at the last lag check) and
//!   has had no message for `idle_after` stops counting until its next message, so an
//!   empty or quiet partition holds the join for `idle_after` at most. Being caught up
//!   is required: a partition that is merely slow to fetch still has records waiting,
//!   and skipping it would make them late;
//! - the caller re-reads the lag whenever a record arrives on a partition that did
//!   not count ([`Watermarks::counts`]): the quiet partitions of the other topics may
//!   have a backlog again, and must hold the watermark before the new records move it.
//!
//! When no partition counts (everything idle), the watermark stays where it is.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An input partition: the index of its topic among the inputs, and the partition.
pub type PartitionId = (usize, i32);

#[derive(Debug)]
struct Partition {
    max_ts: i64,
    last_message: Instant,
    caught_up: bool,
}

#[derive(Debug)]
pub struct Watermarks {
    lateness: i64,
    idle_after: Duration,
    parts: BTreeMap<PartitionId, Partition>,
}

impl Watermarks {
    pub fn new(lateness_ms: u64, idle_after: Duration) -> Self {
        Watermarks { lateness: lateness_ms as i64, idle_after, parts: BTreeMap::new() }
    }

    /// Restores the largest event times of a checkpoint; each partition counts (as
    /// if it had just had a message) until the next lag check finds it idle.
    pub fn restore(&mut self, max_ts: impl IntoIterator<Item = (PartitionId, i64)>, now: Instant) {
        for (id, ts) in max_ts {
            self.parts.insert(id, Partition { max_ts: ts, last_message: now, caught_up: false });
        }
    }

    /// An on-time event of partition `id` with event time `ts`.
    pub fn observe(&mut self, id: PartitionId, ts: i64, now: Instant) {
        let p = self.parts.entry(id).or_insert(Partition { max_ts: ts, last_message: now, caught_up: false });
        p.max_ts = p.max_ts.max(ts);
        p.last_message = now;
    }

    /// A message of partition `id` that carried no usable event time (malformed): the
    /// partition is alive, its watermark unchanged.
    pub fn touch(&mut self, id: PartitionId, now: Instant) {
        if let Some(p) = self.parts.get_mut(&id) {
            p.last_message = now;
        }
    }

    /// The consumer's lag of partition `id` (records waiting) at a check. A partition
    /// seen for the first time counts from now, with nothing read yet.
    pub fn set_lag(&mut self, id: PartitionId, lag: i64, now: Instant) {
        let p = self.parts.entry(id).or_insert(Partition { max_ts: i64::MIN, last_message: now, caught_up: false });
        p.caught_up = lag <= 0;
    }

    /// Whether partition `id` takes part in the watermark now.
    pub fn counts(&self, id: PartitionId, now: Instant) -> bool {
        self.parts.get(&id).is_some_and(|p| self.counting(p, now))
    }

    fn counting(&self, p: &Partition, now: Instant) -> bool {
        !(p.caught_up && now.saturating_duration_since(p.last_message) >= self.idle_after)
    }

    /// The join watermark over the partitions that count, `None` if none does.
    pub fn current(&self, now: Instant) -> Option<i64> {
        self.parts
            .values()
            .filter(|p| self.counting(p, now))
            .map(|p| p.max_ts)
            .min()
            .map(|ts| ts.saturating_sub(self.lateness))
    }

    /// Whether every counting partition of input `input` is more than `skew` ms of
    /// event time ahead of the slowest counting partition: reading it further would only
    /// buffer its events until the others catch up. An input with a partition that
    /// counts but has nothing read yet is never ahead.
    pub fn ahead(&self, input: usize, skew: i64, now: Instant) -> bool {
        let counting = || self.parts.iter().filter(|(_, p)| self.counting(p, now));
        let Some(slowest) = counting().map(|(_, p)| p.max_ts).min() else { return false };
        let own = counting().filter(|((i, _), _)| *i == input).map(|(_, p)| p.max_ts).min();
        own.is_some_and(|own| own > slowest.saturating_add(skew))
    }

    /// Largest event time per partition that had data, for the checkpoint.
    pub fn max_ts(&self) -> impl Iterator<Item = (PartitionId, i64)> + '_ {
        self.parts.iter().filter(|(_, p)| p.max_ts > i64::MIN).map(|(id, p)| (*id, p.max_ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn the_slowest_partition_sets_the_watermark() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(60_000, IDLE);
        assert_eq!(w.current(t0), None, "no data yet");
        w.observe((0, 0), 1_000_000, t0);
        assert_eq!(w.current(t0), Some(940_000));
        w.observe((1, 3), 500_000, t0);
        w.observe((0, 0), 2_000_000, t0);
        assert_eq!(w.current(t0), Some(440_000), "the minimum over partitions");
        w.observe((1, 3), 400_000, t0);
        assert_eq!(w.current(t0), Some(440_000), "a partition's own maximum never goes back");
    }

    #[test]
    fn a_caught_up_silent_partition_stops_counting_until_its_next_message() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, IDLE);
        w.observe((0, 0), 100, t0);
        w.observe((1, 0), 900, t0);
        let later = t0 + IDLE + Duration::from_millis(1);
        assert_eq!(w.current(later), Some(100), "silent but not known to be caught up: still counts");
        w.set_lag((0, 0), 0, t0);
        assert_eq!(w.current(t0 + Duration::from_secs(1)), Some(100), "caught up but not silent long enough");
        assert_eq!(w.current(later), Some(900), "caught up and silent: skipped");
        w.observe((0, 0), 150, later);
        assert_eq!(w.current(later), Some(150), "a message makes it count again");
        w.set_lag((1, 0), 0, t0);
        w.set_lag((0, 0), 0, t0);
        assert_eq!(w.current(later + IDLE + IDLE), None, "all idle: the watermark stays");
    }

    #[test]
    fn a_partition_holds_the_watermark_before_its_first_record() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, IDLE);
        w.set_lag((1, 0), 0, t0);
        w.observe((0, 0), 5_000, t0);
        assert_eq!(w.current(t0), Some(i64::MIN), "an empty partition holds the join for a while");
        assert!(w.counts((1, 0), t0));
        let later = t0 + IDLE;
        assert_eq!(w.current(later), Some(5_000), "but not once it has been empty for idle_after");
        assert!(!w.counts((1, 0), later) && !w.counts((3, 0), later), "idle, resp. never seen");
        w.observe((0, 0), 6_000, later);
        assert_eq!(w.current(later), Some(6_000));
        w.set_lag((1, 2), 30, later);
        assert_eq!(w.current(later), Some(i64::MIN), "a backlog not read yet holds the join");
        w.observe((1, 2), 4_000, later);
        assert_eq!(w.current(later), Some(4_000));
        assert_eq!(w.max_ts().count(), 2, "only partitions that had data are checkpointed");
    }

    #[test]
    fn a_quiet_partition_with_a_new_backlog_counts_again_at_the_next_lag_check() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, IDLE);
        w.observe((0, 0), 1_000, t0);
        w.observe((1, 0), 1_000, t0);
        w.set_lag((0, 0), 0, t0);
        w.set_lag((1, 0), 0, t0);
        let later = t0 + IDLE;
        assert!(!w.counts((0, 0), later) && !w.counts((1, 0), later));
        w.set_lag((1, 0), 500, later);
        w.observe((0, 0), 90_000, later);
        assert_eq!(w.current(later), Some(1_000), "the backlog of (1, 0) holds the join at its last time");
    }

    #[test]
    fn an_input_far_ahead_of_the_slowest_partition_waits() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, IDLE);
        w.observe((0, 0), 1_000, t0);
        w.observe((0, 1), 100_000, t0);
        w.observe((1, 0), 70_000, t0);
        assert!(!w.ahead(0, 60_000, t0), "the slowest input never waits");
        assert!(w.ahead(1, 60_000, t0), "every partition of input 1 is past 1 000 + 60 000");
        assert!(!w.ahead(1, 70_000, t0), "within the skew");
        assert!(!w.ahead(2, 60_000, t0), "an input with nothing read");
        w.set_lag((1, 1), 5, t0);
        assert!(!w.ahead(1, 60_000, t0), "a partition of input 1 with nothing read yet");
        w.observe((1, 1), 90_000, t0);
        w.observe((0, 0), 40_000, t0);
        assert!(!w.ahead(1, 60_000, t0), "the slowest caught up");
    }

    #[test]
    fn restored_maxima_count_until_found_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(10, IDLE);
        w.restore([((0, 1), 500), ((2, 0), 300)], t0);
        assert_eq!(w.current(t0 + IDLE + IDLE), Some(290));
        assert_eq!(w.max_ts().collect::<Vec<_>>(), vec![((0, 1), 500), ((2, 0), 300)]);
    }
}
