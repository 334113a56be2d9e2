//! A bounded, columnar history of one service's series: one time column and one column
//! per series, all the same length, so the page hands them to the charts as they are.
//! The oldest point goes when the capacity is reached: memory is bounded by
//! capacity × series.

use super::series::Point;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

pub struct History {
    capacity: usize,
    t: VecDeque<u64>,
    series: BTreeMap<String, VecDeque<Option<f64>>>,
}

/// The points after a given time, as sent in `/api/state`.
#[derive(Serialize, Debug, PartialEq)]
pub struct HistorySlice {
    pub t: Vec<u64>,
    pub series: BTreeMap<String, Vec<Option<f64>>>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            t: VecDeque::new(),
            series: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, t_ms: u64, point: Point) {
        if self.t.len() == self.capacity {
            self.t.pop_front();
            for col in self.series.values_mut() {
                col.pop_front();
            }
            self.series.retain(|_, col| col.iter().any(Option::is_some));
        }
        let len = self.t.len();
        self.t.push_back(t_ms);
        for col in self.series.values_mut() {
            col.push_back(None);
        }
        for (name, v) in point {
            let col = self.series.entry(name).or_insert_with(|| {
                let mut c = VecDeque::with_capacity(len + 1);
                c.resize(len + 1, None);
                c
            });
            *col.back_mut().expect("one slot per time") = Some(v);
        }
    }

    /// Points with time > `since_ms` (all of them for 0).
    pub fn since(&self, since_ms: u64) -> HistorySlice {
        let skip = self.t.partition_point(|&t| t <= since_ms);
        HistorySlice {
            t: self.t.iter().skip(skip).copied().collect(),
            series: self
                .series
                .iter()
                .map(|(k, col)| (k.clone(), col.iter().skip(skip).copied().collect()))
                .collect(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.t.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(pairs: &[(&str, f64)]) -> Point {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn columns_stay_aligned_when_series_come_and_go() {
        let mut h = History::new(10);
        h.push(1, pt(&[("a", 1.0)]));
        h.push(2, pt(&[("b", 2.0)]));
        h.push(3, pt(&[("a", 3.0), ("b", 4.0)]));
        let s = h.since(0);
        assert_eq!(s.t, vec![1, 2, 3]);
        assert_eq!(s.series["a"], vec![Some(1.0), None, Some(3.0)]);
        assert_eq!(s.series["b"], vec![None, Some(2.0), Some(4.0)]);
        let tail = h.since(2);
        assert_eq!(tail.t, vec![3]);
        assert_eq!(tail.series["a"], vec![Some(3.0)]);
    }

    #[test]
    fn capacity_bounds_memory_and_drops_dead_series() {
        let mut h = History::new(3);
        h.push(1, pt(&[("gone", 1.0)]));
        for t in 2..100 {
            h.push(t, pt(&[("x", t as f64)]));
        }
        assert_eq!(h.len(), 3);
        let s = h.since(0);
        assert_eq!(s.t, vec![97, 98, 99]);
        assert!(!s.series.contains_key("gone"));
        assert_eq!(s.series["x"], vec![Some(97.0), Some(98.0), Some(99.0)]);
    }
}
