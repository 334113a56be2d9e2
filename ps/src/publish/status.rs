//! The version registry: records versions (published or skipped) in the store, tracks
//! subscribed serving nodes and their confirmations, and moves versions from
//! `PUSH_ONLINE` to `FINISHED` (every required node confirmed; `effective_at` set) or
//! `SWITCH_TIMEOUT` (not confirmed within `switch_timeout_time`).
//!
//! Who must confirm a version: the nodes subscribed when it was published, nodes that
//! subscribe later and are sent it, and the configured `confirm_nodes`. A version
//! published while no node is subscribed waits for the first node that confirms it.
//! A confirmation of version `n` covers every version up to `n` (a node applies them
//! in order).

use super::store::{StoredVersion, VersionStore};
use super::{PublishError, Result};
use odl_proto::publish_rpc::Update;
use odl_proto::version::{GateAuc, Version, VersionKind, VersionRecord, VersionStatus};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Payloads of the newest versions kept in memory, so live subscribers do not read
/// them back from sled.
const CACHED_PAYLOADS: usize = 4;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a new version is, before it gets a number.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub kind: VersionKind,
    pub base: Option<Version>,
    pub reason: Option<String>,
    pub rows: u64,
    pub samples_through: u64,
    pub auc: GateAuc,
    pub created_ms: i64,
}

#[derive(Default)]
struct Inner {
    /// `PUSH_ONLINE` versions.
    pending: BTreeMap<Version, StoredVersion>,
    /// Open subscription streams per node.
    connected: HashMap<String, usize>,
    cache: VecDeque<(Version, Arc<Vec<Update>>)>,
}

pub struct Registry {
    store: VersionStore,
    inner: Mutex<Inner>,
    /// Serialises numbering: a number is taken and its record written under it.
    numbering: Mutex<()>,
    latest: watch::Sender<Version>,
    switch_timeout_ms: i64,
    confirm_nodes: Vec<String>,
    keep_full_versions: usize,
}

impl Registry {
    pub fn open(
        dir: &Path,
        switch_timeout_s: u64,
        confirm_nodes: Vec<String>,
        keep_full_versions: usize,
    ) -> Result<Registry> {
        let store = VersionStore::open(dir)?;
        // A version whose payload never became durable (crash while persisting it)
        // cannot be sent to a catching-up node.
        for mut v in store.all()? {
            if v.payload_kept && !store.has_payload(v.version())? {
                v.payload_kept = false;
                store.put(&v)?;
            }
        }
        let all = store.all()?;
        let pending = all
            .iter()
            .filter(|v| v.record.status == VersionStatus::PushOnline)
            .map(|v| (v.version(), v.clone()))
            .collect();
        let latest = all
            .iter()
            .rev()
            .find(|v| v.published())
            .map(|v| v.version())
            .unwrap_or(Version(0));
        let (tx, _) = watch::channel(latest);
        Ok(Registry {
            store,
            inner: Mutex::new(Inner {
                pending,
                ..Default::default()
            }),
            numbering: Mutex::new(()),
            latest: tx,
            switch_timeout_ms: (switch_timeout_s as i64).saturating_mul(1000),
            confirm_nodes,
            keep_full_versions: keep_full_versions.max(1),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Newest published version number (0: none yet); changes wake subscribers.
    pub fn watch_latest(&self) -> watch::Receiver<Version> {
        self.latest.subscribe()
    }

    pub fn latest_published(&self) -> Version {
        *self.latest.borrow()
    }

    /// Whether any version was ever recorded (a restart vs a first start).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.store.next_number()? == Version(1))
    }

    /// The newest published full version.
    pub fn latest_full(&self) -> Result<Option<StoredVersion>> {
        Ok(self
            .store
            .all()?
            .into_iter()
            .rev()
            .find(|v| v.published() && v.is_full()))
    }

    fn record(
        &self,
        new: NewVersion,
        status: VersionStatus,
    ) -> Result<(StoredVersion, MutexGuard<'_, ()>)> {
        let guard = self.numbering.lock().unwrap_or_else(|p| p.into_inner());
        let number = self.store.next_number()?;
        let base = match (new.kind, new.base) {
            (VersionKind::Full, _) => number,
            (_, Some(b)) => b,
            (_, None) => Version(0),
        };
        let sv = StoredVersion {
            record: VersionRecord {
                version: number,
                kind: new.kind,
                base,
                status,
                reason: new.reason,
                created_at: rfc3339(new.created_ms),
                effective_at: None,
                rows: new.rows,
                samples_through: new.samples_through,
                auc: new.auc,
            },
            created_ms: new.created_ms,
            required: BTreeSet::new(),
            confirmed: BTreeSet::new(),
            payload_kept: false,
        };
        Ok((sv, guard))
    }

    /// Record a publish that a gate stopped.
    pub fn record_skipped(&self, new: NewVersion) -> Result<StoredVersion> {
        let (sv, _guard) = self.record(new, VersionStatus::Skipped)?;
        self.store.put(&sv)?;
        self.store.flush()?;
        Ok(sv)
    }

    /// Record and store a published version; `encode` builds its messages once its
    /// number is known. Subscribers are woken once it is durable.
    pub fn record_published(
        &self,
        new: NewVersion,
        encode: impl FnOnce(Version, Version) -> Vec<Update>,
    ) -> Result<StoredVersion> {
        let (mut sv, guard) = self.record(new, VersionStatus::PushOnline)?;
        let updates = Arc::new(encode(sv.version(), sv.record.base));
        sv.payload_kept = true;
        {
            let mut inner = self.inner();
            sv.required = inner
                .connected
                .keys()
                .cloned()
                .chain(self.confirm_nodes.iter().cloned())
                .collect();
            self.store.put(&sv)?;
            inner.pending.insert(sv.version(), sv.clone());
            inner.cache.push_back((sv.version(), updates.clone()));
            while inner.cache.len() > CACHED_PAYLOADS {
                inner.cache.pop_front();
            }
        }
        drop(guard);
        // Subscribers stream from the in-memory copy while the payload goes to disk (a
        // crash before it is durable is repaired on open: see `Registry::open`).
        self.latest.send_replace(sv.version());
        self.store.put_payload(sv.version(), &updates)?;
        self.store.flush()?;
        if sv.is_full() {
            self.retain_after_full(sv.version())?;
        }
        Ok(sv)
    }

    /// Drop payloads nobody can need: increments before the newest full version, and
    /// full versions beyond the newest `keep_full_versions`.
    fn retain_after_full(&self, full: Version) -> Result<()> {
        let all = self.store.all()?;
        let mut fulls_kept = 0usize;
        for mut v in all.into_iter().rev() {
            if !v.payload_kept {
                continue;
            }
            let keep = if v.is_full() {
                fulls_kept += 1;
                fulls_kept <= self.keep_full_versions
            } else {
                v.version() > full
            };
            if !keep {
                self.store.drop_payload(v.version())?;
                v.payload_kept = false;
                let mut inner = self.inner();
                if let Some(p) = inner.pending.get_mut(&v.version()) {
                    p.payload_kept = false;
                }
                inner.cache.retain(|(n, _)| *n != v.version());
                self.store.put(&v)?;
            }
        }
        Ok(())
    }

    /// Every version, newest first.
    pub fn list(&self) -> Result<Vec<VersionRecord>> {
        Ok(self
            .store
            .all()?
            .into_iter()
            .rev()
            .map(|v| v.record)
            .collect())
    }

    pub fn get(&self, v: Version) -> Result<VersionRecord> {
        self.stored(v).map(|s| s.record)
    }

    pub fn stored(&self, v: Version) -> Result<StoredVersion> {
        self.store.get(v)?.ok_or(PublishError::UnknownVersion(v))
    }

    /// The messages of a published version.
    pub fn payload(&self, v: Version) -> Result<Arc<Vec<Update>>> {
        if let Some((_, p)) = self.inner().cache.iter().find(|(n, _)| *n == v) {
            return Ok(p.clone());
        }
        match self.store.payload(v)? {
            Some(p) => Ok(Arc::new(p)),
            None => Err(PublishError::NotRollbackable(
                v,
                "its payload is no longer kept".to_string(),
            )),
        }
    }

    /// The versions a node starting at `from` must apply, in order: every published
    /// version from `from` on if all of them are still kept, else the newest full
    /// version and everything after it. `from == 0`: the newest full version on.
    pub fn chain(&self, from: Version) -> Result<Vec<Version>> {
        let published: Vec<StoredVersion> = self
            .store
            .all()?
            .into_iter()
            .filter(|v| v.published())
            .collect();
        if from.0 > 0 {
            let after: Vec<&StoredVersion> =
                published.iter().filter(|v| v.version() >= from).collect();
            if after.iter().all(|v| v.payload_kept) {
                return Ok(after.iter().map(|v| v.version()).collect());
            }
        }
        let Some(start) = published
            .iter()
            .rposition(|v| v.is_full() && v.payload_kept)
        else {
            return Ok(Vec::new());
        };
        Ok(published[start..]
            .iter()
            .filter(|v| v.payload_kept)
            .map(|v| v.version())
            .collect())
    }

    /// A node opened a subscription stream.
    pub fn subscribe(&self, node: &str) {
        *self.inner().connected.entry(node.to_string()).or_default() += 1;
    }

    /// `node` will be sent `versions`: it must confirm those still pending.
    pub fn require(&self, node: &str, versions: &[Version]) -> Result<()> {
        let mut inner = self.inner();
        for v in versions {
            if let Some(p) = inner.pending.get_mut(v) {
                if p.required.insert(node.to_string()) {
                    self.store.put(p)?;
                }
            }
        }
        Ok(())
    }

    pub fn unsubscribe(&self, node: &str) {
        let mut inner = self.inner();
        if let Some(n) = inner.connected.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                inner.connected.remove(node);
            }
        }
    }

    /// Nodes with an open subscription.
    pub fn subscribers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner().connected.keys().cloned().collect();
        v.sort();
        v
    }

    /// `node` applied every version up to `v`. Returns the versions that became
    /// `FINISHED`.
    pub fn confirm(&self, node: &str, v: Version) -> Result<Vec<Version>> {
        if v.0 == 0 || self.store.get(v)?.is_none() {
            return Err(PublishError::UnknownVersion(v));
        }
        let now = now_ms();
        let mut finished = Vec::new();
        let mut inner = self.inner();
        for (n, p) in inner.pending.range_mut(..=v) {
            if p.required.is_empty() {
                p.required.insert(node.to_string());
            }
            if !p.required.contains(node) {
                continue;
            }
            p.confirmed.insert(node.to_string());
            if p.required.is_subset(&p.confirmed) {
                p.record.status = VersionStatus::Finished;
                p.record.effective_at = Some(rfc3339(now));
                finished.push(*n);
            }
            self.store.put(p)?;
        }
        for n in &finished {
            inner.pending.remove(n);
        }
        drop(inner);
        self.store.flush()?;
        Ok(finished)
    }

    /// Turn versions pending longer than the switch timeout into `SWITCH_TIMEOUT`.
    pub fn expire(&self, now: i64) -> Result<Vec<Version>> {
        let mut inner = self.inner();
        let expired: Vec<Version> = inner
            .pending
            .values()
            .filter(|p| now - p.created_ms >= self.switch_timeout_ms)
            .map(|p| p.version())
            .collect();
        for n in &expired {
            if let Some(mut p) = inner.pending.remove(n) {
                p.record.status = VersionStatus::SwitchTimeout;
                self.store.put(&p)?;
            }
        }
        drop(inner);
        if !expired.is_empty() {
            self.store.flush()?;
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odl_proto::publish_rpc::{update::Body, End};

    fn new(kind: VersionKind, base: Option<Version>, created_ms: i64) -> NewVersion {
        NewVersion {
            kind,
            base,
            reason: None,
            rows: 1,
            samples_through: 2,
            auc: GateAuc::default(),
            created_ms,
        }
    }

    fn end(v: Version, _b: Version) -> Vec<Update> {
        vec![Update {
            version: v.0,
            body: Some(Body::End(End { rows: 1 })),
        }]
    }

    fn open(dir: &Path, timeout: u64) -> Registry {
        Registry::open(dir, timeout, Vec::new(), 2).unwrap()
    }

    #[test]
    fn push_online_becomes_finished_when_every_subscribed_node_confirms() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path(), 100);
        r.subscribe("a");
        r.subscribe("b");
        let v1 = r
            .record_published(new(VersionKind::Full, None, now_ms()), end)
            .unwrap();
        assert_eq!(v1.record.base, Version(1));
        assert_eq!(v1.required.len(), 2);
        let v2 = r
            .record_published(new(VersionKind::Sparse, Some(Version(1)), now_ms()), end)
            .unwrap();
        assert_eq!(v2.record.base, Version(1));
        assert!(r.confirm("a", Version(2)).unwrap().is_empty());
        assert_eq!(r.get(Version(1)).unwrap().status, VersionStatus::PushOnline);
        // b confirms 2, which covers 1 too.
        assert_eq!(
            r.confirm("b", Version(2)).unwrap(),
            vec![Version(1), Version(2)]
        );
        let rec = r.get(Version(2)).unwrap();
        assert_eq!(rec.status, VersionStatus::Finished);
        assert!(rec.effective_at.is_some());
        assert!(matches!(
            r.confirm("a", Version(9)),
            Err(PublishError::UnknownVersion(_))
        ));
        assert_eq!(r.latest_published(), Version(2));
    }

    #[test]
    fn unconfirmed_versions_time_out_and_skipped_ones_keep_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path(), 1);
        r.subscribe("silent");
        let t0 = now_ms();
        r.record_published(new(VersionKind::Full, None, t0), end)
            .unwrap();
        let mut s = new(VersionKind::Dense, Some(Version(1)), t0);
        s.reason = Some("global AUC 0.5000 < threshold 0.6800".into());
        let sk = r.record_skipped(s).unwrap();
        assert_eq!(sk.record.status, VersionStatus::Skipped);
        assert!(r.expire(t0 + 999).unwrap().is_empty());
        assert_eq!(r.expire(t0 + 1000).unwrap(), vec![Version(1)]);
        assert_eq!(
            r.get(Version(1)).unwrap().status,
            VersionStatus::SwitchTimeout
        );
        assert_eq!(
            r.get(Version(2)).unwrap().reason.as_deref(),
            Some("global AUC 0.5000 < threshold 0.6800")
        );
        // A confirmation after the timeout changes nothing.
        assert!(r.confirm("silent", Version(1)).unwrap().is_empty());
        assert_eq!(
            r.get(Version(1)).unwrap().status,
            VersionStatus::SwitchTimeout
        );
        assert_eq!(r.latest_published(), Version(1));
    }

    #[test]
    fn with_no_subscriber_the_first_confirming_node_finishes_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), 100, vec!["fixed".into()], 2).unwrap();
        r.record_published(new(VersionKind::Full, None, now_ms()), end)
            .unwrap();
        // Configured node must confirm.
        assert!(r.confirm("other", Version(1)).unwrap().is_empty());
        assert_eq!(r.confirm("fixed", Version(1)).unwrap(), vec![Version(1)]);
        let dir2 = tempfile::tempdir().unwrap();
        let r = open(dir2.path(), 100);
        r.record_published(new(VersionKind::Full, None, now_ms()), end)
            .unwrap();
        assert_eq!(r.confirm("late", Version(1)).unwrap(), vec![Version(1)]);
    }

    #[test]
    fn chain_starts_at_the_newest_full_version_and_old_payloads_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path(), 100);
        r.record_published(new(VersionKind::Full, None, 0), end)
            .unwrap(); // 1
        r.record_published(new(VersionKind::Dense, Some(Version(1)), 0), end)
            .unwrap(); // 2
        r.record_skipped(new(VersionKind::Sparse, Some(Version(1)), 0))
            .unwrap(); // 3
        r.record_published(new(VersionKind::Sparse, Some(Version(1)), 0), end)
            .unwrap(); // 4
        assert_eq!(
            r.chain(Version(0)).unwrap(),
            vec![Version(1), Version(2), Version(4)]
        );
        assert_eq!(r.chain(Version(3)).unwrap(), vec![Version(4)]);
        assert_eq!(r.chain(Version(5)).unwrap(), Vec::<Version>::new());
        r.record_published(new(VersionKind::Full, None, 0), end)
            .unwrap(); // 5
        r.record_published(new(VersionKind::Full, None, 0), end)
            .unwrap(); // 6
                       // Increments before 6 are dropped, and full 1 (keep 2 full versions).
        assert_eq!(r.chain(Version(2)).unwrap(), vec![Version(6)]);
        assert!(r.payload(Version(5)).is_ok());
        assert!(!r.stored(Version(1)).unwrap().payload_kept);
        assert!(matches!(
            r.payload(Version(2)),
            Err(PublishError::NotRollbackable(..))
        ));
        r.subscribe("n");
        r.require("n", &[Version(6)]).unwrap();
        assert!(r.stored(Version(6)).unwrap().required.contains("n"));
        assert_eq!(r.subscribers(), vec!["n".to_string()]);
        r.unsubscribe("n");
        assert!(r.subscribers().is_empty());
    }

    #[test]
    fn a_payload_lost_in_a_crash_is_not_offered_for_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = open(dir.path(), 100);
            r.record_published(new(VersionKind::Full, None, 0), end)
                .unwrap();
            r.record_published(new(VersionKind::Sparse, Some(Version(1)), 0), end)
                .unwrap();
            r.store.drop_payload(Version(2)).unwrap();
            r.store.flush().unwrap();
        }
        let r = open(dir.path(), 100);
        assert!(!r.stored(Version(2)).unwrap().payload_kept);
        assert_eq!(r.chain(Version(2)).unwrap(), vec![Version(1)]);
    }

    #[test]
    fn history_statuses_and_numbering_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = open(dir.path(), 100);
            r.subscribe("a");
            r.record_published(new(VersionKind::Full, None, now_ms()), end)
                .unwrap();
            r.confirm("a", Version(1)).unwrap();
            r.record_published(new(VersionKind::Dense, Some(Version(1)), now_ms()), end)
                .unwrap();
        }
        let r = open(dir.path(), 100);
        assert!(!r.is_empty().unwrap());
        let list = r.list().unwrap();
        assert_eq!(
            list.iter().map(|v| v.version.0).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(list[1].status, VersionStatus::Finished);
        assert_eq!(list[0].status, VersionStatus::PushOnline);
        assert_eq!(r.latest_published(), Version(2));
        // The pending version still waits for "a" and finishes when it confirms.
        assert_eq!(r.confirm("a", Version(2)).unwrap(), vec![Version(2)]);
        let v3 = r
            .record_published(new(VersionKind::Sparse, Some(Version(1)), now_ms()), end)
            .unwrap();
        assert_eq!(v3.version(), Version(3));
        assert_eq!(r.latest_full().unwrap().unwrap().version(), Version(1));
    }
}
