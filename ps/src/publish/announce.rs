//! The Kafka wire format of versions, shared by the publisher and serving nodes.
//!
//! A version is the same [`Update`] messages gRPC subscribers get: its dense tensors
//! and row chunks are records of the param-update topic (row chunks of partition p on
//! Kafka partition p, dense tensors on partition 0, every record keyed by the version
//! as 8 big-endian bytes), and its header travels in an [`rpc::Announce`] on the
//! control topic, written only after every record was acknowledged, with the offset
//! range of the version's records on each partition. The end marker is implied.
//!
//! [`Assembler`] is the serving side's rule: a version is handed out only when its
//! announce is in and every record it lists, on every partition the node reads, has
//! arrived, and versions come out in announce order. [`plan`] is where a node that
//! starts (or restarts) begins: the newest full version and the increments after it.

use odl_proto::publish_rpc::{self as rpc, update::Body, Update};
use odl_proto::version::Version;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Partition of the param-update topic that carries every dense tensor (every node
/// reads it, whatever partitions it owns).
pub const DENSE_PARTITION: i32 = 0;

pub fn record_key(v: Version) -> [u8; 8] {
    v.0.to_be_bytes()
}

pub fn key_version(key: &[u8]) -> Option<Version> {
    Some(Version(u64::from_be_bytes(key.try_into().ok()?)))
}

/// The Kafka partition an update record goes to; `None` for the header and the end
/// marker, which are not records (the header is in the announce).
pub fn route(u: &Update) -> Option<i32> {
    match u.body.as_ref()? {
        Body::Rows(r) => Some(r.partition as i32),
        Body::Dense(_) => Some(DENSE_PARTITION),
        Body::Header(_) | Body::End(_) => None,
    }
}

/// The header of an announce, checked to be a header of the announced version.
pub fn header(a: &rpc::Announce) -> Option<&rpc::Header> {
    match a.header.as_ref() {
        Some(Update {
            version,
            body: Some(Body::Header(h)),
        }) if *version == a.version => Some(h),
        _ => None,
    }
}

pub fn is_full(a: &rpc::Announce) -> bool {
    header(a).is_some_and(|h| h.kind == "full")
}

/// Parse and check a control-topic record.
pub fn decode_announce(bytes: &[u8]) -> Result<rpc::Announce, String> {
    let a = rpc::Announce::decode(bytes).map_err(|e| format!("not an announce: {e}"))?;
    if a.version == 0 {
        return Err("announce of version 0".into());
    }
    if header(&a).is_none() {
        return Err(format!(
            "announce of version {} without its header",
            a.version
        ));
    }
    for p in &a.parts {
        let span = p
            .last_offset
            .saturating_sub(p.first_offset)
            .saturating_add(1);
        if p.partition < 0
            || p.first_offset < 0
            || span < 1
            || p.records < 1
            || p.records as i64 > span
        {
            return Err(format!("announce of version {}: bad part {p:?}", a.version));
        }
    }
    Ok(a)
}

/// Which announces a starting node applies and where it reads each partition from.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Index in the announces of the first version to apply (`len`: none yet).
    pub start: usize,
    /// Next offset per partition read (-1: the beginning of the partition).
    pub offsets: BTreeMap<i32, i64>,
}

/// From the newest full version on, or after `held` if the node already holds a
/// version at or after it. Offsets: the first record of the versions to apply on
/// each partition, else just after the last record of the older ones (everything of
/// a later version lies after those: it is cut after their announce).
pub fn plan(announces: &[rpc::Announce], held: Option<Version>, reading: &BTreeSet<i32>) -> Plan {
    let full = announces.iter().rposition(is_full);
    let after_held = |h: Version| {
        announces
            .iter()
            .position(|a| a.version > h.0)
            .unwrap_or(announces.len())
    };
    let start = match (held, full) {
        (Some(h), Some(f)) if announces[f].version <= h.0 => after_held(h),
        (Some(h), None) => after_held(h),
        (_, Some(f)) => f,
        (None, None) => announces.len(),
    };
    let mut offsets = BTreeMap::new();
    for &p in reading {
        let on_p = |a: &rpc::Announce| {
            a.parts
                .iter()
                .filter(move |r| r.partition == p)
                .cloned()
                .collect::<Vec<_>>()
        };
        let first = announces[start..]
            .iter()
            .flat_map(on_p)
            .map(|r| r.first_offset)
            .min();
        let after = announces[..start]
            .iter()
            .flat_map(on_p)
            .map(|r| r.last_offset + 1)
            .max();
        offsets.insert(p, first.or(after).unwrap_or(-1));
    }
    Plan { start, offsets }
}

/// Records and announces as they arrive; complete versions out, in order.
pub struct Assembler {
    /// Partitions the node reads.
    reading: BTreeSet<i32>,
    /// Row partitions the node applies; `None`: all.
    owned: Option<BTreeSet<u32>>,
    announced: VecDeque<rpc::Announce>,
    /// Records per version and partition, with their offsets.
    arrived: BTreeMap<u64, BTreeMap<i32, Vec<(i64, Update)>>>,
    /// Versions up to this one are done (applied or passed over).
    done: Version,
}

impl Assembler {
    /// A node reading `reading`, applying rows of `owned` (`None`: every partition),
    /// for which every version up to `done` is behind it.
    pub fn new(reading: BTreeSet<i32>, owned: Option<BTreeSet<u32>>, done: Version) -> Assembler {
        Assembler {
            reading,
            owned,
            announced: VecDeque::new(),
            arrived: BTreeMap::new(),
            done,
        }
    }

    pub fn done(&self) -> Version {
        self.done
    }

    /// Newest announced version (for lag).
    pub fn latest_announced(&self) -> Option<&rpc::Announce> {
        self.announced.back()
    }

    /// Versions announced but not yet complete.
    pub fn waiting(&self) -> usize {
        self.announced.len()
    }

    pub fn announce(&mut self, a: rpc::Announce) {
        let newest = self.announced.back().map_or(self.done.0, |b| b.version);
        if a.version > newest {
            self.announced.push_back(a);
        }
    }

    /// One record of the param-update topic. A record that is not an update of a
    /// version still to come is an error for the caller to log; it is dropped.
    pub fn record(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), String> {
        let v = key
            .and_then(key_version)
            .ok_or_else(|| format!("record {partition}@{offset}: key is not a version"))?;
        if v <= self.done {
            return Ok(());
        }
        let u = Update::decode(value).map_err(|e| format!("record {partition}@{offset}: {e}"))?;
        if u.version != v.0 || route(&u).is_none() {
            return Err(format!(
                "record {partition}@{offset}: not a part of version {v}"
            ));
        }
        self.arrived
            .entry(v.0)
            .or_default()
            .entry(partition)
            .or_default()
            .push((offset, u));
        Ok(())
    }

    fn complete(&self, a: &rpc::Announce) -> bool {
        a.parts
            .iter()
            .filter(|p| self.reading.contains(&p.partition))
            .all(|p| {
                let got = self
                    .arrived
                    .get(&a.version)
                    .and_then(|m| m.get(&p.partition));
                let n = got.map_or(0, |rs| {
                    rs.iter()
                        .filter(|(o, _)| (p.first_offset..=p.last_offset).contains(o))
                        .count()
                });
                n as u64 >= p.records
            })
    }

    /// The next version if it is complete: header, dense tensors, the owned row
    /// chunks, end marker (the messages a gRPC subscriber gets).
    pub fn next_ready(&mut self) -> Option<Vec<Update>> {
        let a = self.announced.front()?;
        if !self.complete(a) {
            return None;
        }
        let a = self.announced.pop_front()?;
        let mut parts = self.arrived.remove(&a.version).unwrap_or_default();
        let stale: Vec<u64> = self.arrived.range(..=a.version).map(|(v, _)| *v).collect();
        for v in stale {
            self.arrived.remove(&v);
        }
        self.done = Version(a.version);
        let mut out = vec![a.header.clone().unwrap_or_default()];
        let mut rows = Vec::new();
        for p in &a.parts {
            let Some(mut recs) = parts.remove(&p.partition) else {
                continue;
            };
            recs.retain(|(o, _)| (p.first_offset..=p.last_offset).contains(o));
            recs.sort_by_key(|(o, _)| *o);
            recs.dedup_by_key(|(o, _)| *o);
            for (_, u) in recs {
                match &u.body {
                    Some(Body::Dense(_)) => out.push(u),
                    Some(Body::Rows(r))
                        if self.owned.as_ref().is_none_or(|o| o.contains(&r.partition)) =>
                    {
                        rows.push(u)
                    }
                    _ => {}
                }
            }
        }
        out.extend(rows);
        out.push(Update {
            version: a.version,
            body: Some(Body::End(rpc::End { rows: a.rows })),
        });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_update(v: u64, kind: &str) -> Update {
        Update {
            version: v,
            body: Some(Body::Header(rpc::Header {
                kind: kind.into(),
                base: 1,
                partition_count: 4,
                ..Default::default()
            })),
        }
    }

    fn announce(v: u64, kind: &str, parts: &[(i32, i64, i64, u64)]) -> rpc::Announce {
        rpc::Announce {
            version: v,
            header: Some(header_update(v, kind)),
            parts: parts
                .iter()
                .map(
                    |&(partition, first_offset, last_offset, records)| rpc::PartRange {
                        partition,
                        first_offset,
                        last_offset,
                        records,
                    },
                )
                .collect(),
            rows: 3,
        }
    }

    fn rows(v: u64, partition: u32) -> Vec<u8> {
        Update {
            version: v,
            body: Some(Body::Rows(rpc::RowChunk {
                table: "t".into(),
                partition,
                dim: 1,
                keys: 7u64.to_le_bytes().to_vec(),
                values: 1f32.to_le_bytes().to_vec(),
                deleted: vec![],
            })),
        }
        .encode_to_vec()
    }

    fn dense(v: u64) -> Vec<u8> {
        Update {
            version: v,
            body: Some(Body::Dense(rpc::DenseTensor {
                name: "w".into(),
                values: vec![0; 4],
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn announces_round_trip_and_malformed_ones_are_refused() {
        let a = announce(5, "sparse", &[(1, 10, 12, 3)]);
        assert_eq!(decode_announce(&a.encode_to_vec()).unwrap(), a);
        assert!(decode_announce(b"\xff\xff").is_err());
        let mut no_header = a.clone();
        no_header.header = None;
        assert!(decode_announce(&no_header.encode_to_vec()).is_err());
        let mut wrong = a.clone();
        wrong.header = Some(header_update(4, "sparse"));
        assert!(decode_announce(&wrong.encode_to_vec()).is_err());
        for bad in [(1, 12, 10, 1), (1, 10, 11, 3), (-1, 0, 0, 1), (1, 0, 0, 0)] {
            let b = announce(5, "sparse", &[bad]);
            assert!(decode_announce(&b.encode_to_vec()).is_err(), "{bad:?}");
        }
        assert_eq!(key_version(&record_key(Version(9))), Some(Version(9)));
        assert_eq!(key_version(b"9"), None);
    }

    #[test]
    fn a_version_is_handed_out_only_when_every_listed_record_arrived() {
        let reading: BTreeSet<i32> = [0, 1].into();
        let mut asm = Assembler::new(reading, None, Version(0));
        // Version 1 (full): dense on 0 at offset 0, rows on 0 at 1, rows on 1 at 0..=1,
        // rows on 2 (a partition this node does not read) ignored.
        asm.announce(announce(
            1,
            "full",
            &[(0, 0, 1, 2), (1, 0, 1, 2), (2, 0, 0, 1)],
        ));
        assert!(asm.next_ready().is_none(), "nothing arrived");
        asm.record(0, 0, Some(&record_key(Version(1))), &dense(1))
            .unwrap();
        asm.record(0, 1, Some(&record_key(Version(1))), &rows(1, 0))
            .unwrap();
        asm.record(1, 0, Some(&record_key(Version(1))), &rows(1, 1))
            .unwrap();
        assert!(
            asm.next_ready().is_none(),
            "one record of partition 1 missing"
        );
        // Version 2's records may come before version 1 is complete.
        asm.record(1, 2, Some(&record_key(Version(2))), &rows(2, 1))
            .unwrap();
        asm.record(1, 1, Some(&record_key(Version(1))), &rows(1, 1))
            .unwrap();
        let v1 = asm.next_ready().expect("complete");
        assert!(matches!(v1[0].body, Some(Body::Header(_))));
        assert!(matches!(v1[1].body, Some(Body::Dense(_))));
        assert_eq!(v1.len(), 1 + 1 + 3 + 1);
        assert!(matches!(
            v1.last().unwrap().body,
            Some(Body::End(rpc::End { rows: 3 }))
        ));
        assert_eq!(asm.done(), Version(1));
        // Version 2 is not announced yet: nothing, whatever arrived.
        assert!(asm.next_ready().is_none());
        asm.announce(announce(2, "sparse", &[(1, 2, 2, 1)]));
        let v2 = asm.next_ready().expect("complete");
        assert_eq!(v2.len(), 3);
        // Late duplicates and old versions are dropped; a bad record is an error.
        asm.record(1, 1, Some(&record_key(Version(1))), &rows(1, 1))
            .unwrap();
        assert!(asm.arrived.is_empty());
        assert!(asm.record(1, 5, Some(b"x"), &rows(3, 1)).is_err());
        assert!(asm
            .record(1, 5, Some(&record_key(Version(3))), b"\xff")
            .is_err());
        assert!(asm
            .record(1, 5, Some(&record_key(Version(4))), &rows(3, 1))
            .is_err());
    }

    #[test]
    fn records_outside_the_announced_range_do_not_count_and_owned_rows_are_kept() {
        let mut asm = Assembler::new([0, 1].into(), Some([1].into()), Version(0));
        asm.announce(announce(1, "full", &[(0, 5, 6, 2), (1, 3, 3, 1)]));
        let k = record_key(Version(1));
        // A first attempt's records (offsets 0..=1) are not the announced ones.
        asm.record(0, 0, Some(&k), &dense(1)).unwrap();
        asm.record(0, 1, Some(&k), &rows(1, 0)).unwrap();
        asm.record(1, 3, Some(&k), &rows(1, 1)).unwrap();
        assert!(asm.next_ready().is_none());
        asm.record(0, 5, Some(&k), &dense(1)).unwrap();
        asm.record(0, 6, Some(&k), &rows(1, 0)).unwrap();
        let v = asm.next_ready().unwrap();
        // Header, the dense tensor, partition 1's rows (partition 0's rows not owned), end.
        assert_eq!(v.len(), 4);
        assert!(v
            .iter()
            .all(|u| !matches!(&u.body, Some(Body::Rows(r)) if r.partition == 0)));
    }

    #[test]
    fn a_starting_node_begins_at_the_newest_full_version() {
        let all = vec![
            announce(1, "full", &[(0, 0, 4, 5), (1, 0, 9, 10)]),
            announce(2, "sparse", &[(1, 10, 11, 2)]),
            announce(3, "full", &[(0, 5, 8, 4), (1, 12, 20, 9)]),
            announce(4, "dense", &[(0, 9, 9, 1)]),
            announce(5, "sparse", &[(1, 21, 22, 2)]),
        ];
        let reading: BTreeSet<i32> = [0, 1, 2].into();
        let p = plan(&all, None, &reading);
        assert_eq!(p.start, 2);
        assert_eq!(p.offsets, [(0, 5), (1, 12), (2, -1)].into());
        // Holding version 4: only 5 is missing.
        let p = plan(&all, Some(Version(4)), &reading);
        assert_eq!(p.start, 4);
        assert_eq!(p.offsets, [(0, 10), (1, 21), (2, -1)].into());
        // Holding version 2 (before the newest full): back to the full version.
        assert_eq!(plan(&all, Some(Version(2)), &reading).start, 2);
        // Holding the newest: nothing to apply; read after everything known.
        let p = plan(&all, Some(Version(5)), &reading);
        assert_eq!((p.start, p.offsets[&1]), (5, 23));
        // No full version yet: nothing to apply, read from the beginning.
        let p = plan(&all[1..2], None, &reading);
        assert_eq!((p.start, p.offsets[&1]), (1, 12));
        assert_eq!(plan(&[], None, &reading).offsets[&0], -1);
    }
}
