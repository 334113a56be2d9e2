//! Version records and payloads in sled, so history, statuses and the catch-up chain
//! survive a PS restart and numbering continues. Records are JSON (the
//! [`VersionRecord`] of PUBLISH.md plus who must confirm it); payloads are the
//! encoded [`Update`] messages of the version, keyed by (version, sequence).

use super::{PublishError, Result};
use odl_proto::publish_rpc::Update;
use odl_proto::version::{Version, VersionKind, VersionRecord, VersionStatus};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// A version record with the bookkeeping the status tracker needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub record: VersionRecord,
    /// Milliseconds since the epoch, for the switch timeout and lag.
    pub created_ms: i64,
    /// Nodes whose confirmation this version waits for.
    pub required: BTreeSet<String>,
    /// Nodes that confirmed it (or a later version).
    pub confirmed: BTreeSet<String>,
    /// Whether the payload is still stored (increments before the newest full version
    /// and old full versions are dropped).
    pub payload_kept: bool,
}

impl StoredVersion {
    pub fn version(&self) -> Version {
        self.record.version
    }

    /// Sent to serving (not skipped).
    pub fn published(&self) -> bool {
        self.record.status != VersionStatus::Skipped
    }

    pub fn is_full(&self) -> bool {
        self.record.kind == VersionKind::Full
    }
}

pub struct VersionStore {
    db: sled::Db,
    records: sled::Tree,
    payloads: sled::Tree,
}

fn payload_key(v: Version, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&v.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(key: &[u8], message: impl ToString) -> PublishError {
    PublishError::Corrupt {
        key: format!("{key:?}"),
        message: message.to_string(),
    }
}

impl VersionStore {
    pub fn open(dir: &Path) -> Result<VersionStore> {
        let db = sled::Config::new().path(dir).open()?;
        let records = db.open_tree("records")?;
        let payloads = db.open_tree("payloads")?;
        Ok(VersionStore {
            db,
            records,
            payloads,
        })
    }

    /// The number the next version gets: one past the newest ever stored.
    pub fn next_number(&self) -> Result<Version> {
        Ok(match self.records.last()? {
            Some((k, _)) => Version(decode_version(&k)?.0 + 1),
            None => Version(1),
        })
    }

    pub fn put(&self, v: &StoredVersion) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(|e| PublishError::Invalid(e.to_string()))?;
        self.records.insert(v.version().0.to_be_bytes(), bytes)?;
        Ok(())
    }

    pub fn get(&self, v: Version) -> Result<Option<StoredVersion>> {
        match self.records.get(v.0.to_be_bytes())? {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt(&v.0.to_be_bytes(), e))?,
            )),
            None => Ok(None),
        }
    }

    /// Every version, oldest first.
    pub fn all(&self) -> Result<Vec<StoredVersion>> {
        self.records
            .iter()
            .map(|kv| {
                let (k, b) = kv?;
                serde_json::from_slice(&b).map_err(|e| corrupt(&k, e))
            })
            .collect()
    }

    pub fn put_payload(&self, v: Version, updates: &[Update]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (i, u) in updates.iter().enumerate() {
            batch.insert(&payload_key(v, i as u32)[..], u.encode_to_vec());
        }
        self.payloads.apply_batch(batch)?;
        Ok(())
    }

    /// The messages of `v`, or `None` if its payload is not kept.
    pub fn payload(&self, v: Version) -> Result<Option<Vec<Update>>> {
        let mut out = Vec::new();
        for kv in self.payloads.scan_prefix(v.0.to_be_bytes()) {
            let (k, b) = kv?;
            out.push(Update::decode(&b[..]).map_err(|e| corrupt(&k, e))?);
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    pub fn has_payload(&self, v: Version) -> Result<bool> {
        Ok(self
            .payloads
            .scan_prefix(v.0.to_be_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    pub fn drop_payload(&self, v: Version) -> Result<()> {
        let keys: Vec<sled::IVec> = self
            .payloads
            .scan_prefix(v.0.to_be_bytes())
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        for k in keys {
            self.payloads.remove(k)?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode_version(k: &[u8]) -> Result<Version> {
    let arr: [u8; 8] = k
        .try_into()
        .map_err(|_| corrupt(k, "record key is not 8 bytes"))?;
    Ok(Version(u64::from_be_bytes(arr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use odl_proto::publish_rpc::{update::Body, End};
    use odl_proto::version::GateAuc;

    pub(crate) fn stored(v: u64, kind: VersionKind, status: VersionStatus) -> StoredVersion {
        StoredVersion {
            record: VersionRecord {
                version: Version(v),
                kind,
                base: Version(1),
                status,
                reason: None,
                created_at: "2026-01-01T00:00:00Z".into(),
                effective_at: None,
                rows: 0,
                samples_through: 0,
                auc: GateAuc::default(),
            },
            created_ms: 0,
            required: BTreeSet::new(),
            confirmed: BTreeSet::new(),
            payload_kept: true,
        }
    }

    #[test]
    fn records_and_payloads_survive_reopen_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = VersionStore::open(dir.path()).unwrap();
            assert_eq!(s.next_number().unwrap(), Version(1));
            s.put(&stored(1, VersionKind::Full, VersionStatus::Finished))
                .unwrap();
            s.put(&stored(2, VersionKind::Sparse, VersionStatus::Skipped))
                .unwrap();
            let ups = vec![
                Update {
                    version: 1,
                    body: Some(Body::End(End { rows: 3 }))
                };
                3
            ];
            s.put_payload(Version(1), &ups).unwrap();
            s.flush().unwrap();
        }
        let s = VersionStore::open(dir.path()).unwrap();
        assert_eq!(s.next_number().unwrap(), Version(3));
        let all = s.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].record.status, VersionStatus::Skipped);
        assert_eq!(s.payload(Version(1)).unwrap().unwrap().len(), 3);
        assert!(s.payload(Version(2)).unwrap().is_none());
        assert!(s.has_payload(Version(1)).unwrap());
        s.drop_payload(Version(1)).unwrap();
        assert!(!s.has_payload(Version(1)).unwrap());
        assert!(s.payload(Version(1)).unwrap().is_none());
        assert!(s.get(Version(9)).unwrap().is_none());
    }
}
