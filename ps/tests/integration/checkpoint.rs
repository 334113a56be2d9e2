//! Checkpoints: save → load gives identical pulls and identical optimizer behaviour;
//! loading into shards partitions rows disjointly and completely.

use crate::util::{grad, schema};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{ParamRead, ParamStore};
use odl_ps::checkpoint;
use odl_ps::{LocalStore, ShardId};

fn trained() -> (LocalStore, Vec<FeatureId>) {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    // Spread keys over the whole u64 space so both halves of a 2-shard split get rows.
    let ks: Vec<FeatureId> = (0..2000u64)
        .map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    for t in [("emb", 4), ("adam", 3), ("lr", 1)] {
        for _ in 0..3 {
            let g: Vec<f32> = ks.iter().flat_map(|k| grad(k.0, t.1)).collect();
            s.push_sparse(t.0, &ks, &g).unwrap();
        }
    }
    s.push_dense(&[
        ("mlp.w".into(), vec![0.3; 6]),
        ("mlp.b".into(), vec![-0.2; 3]),
    ])
    .unwrap();
    s.set_attribute("model", "mmoe");
    (s, ks)
}

fn all(s: &LocalStore, ks: &[FeatureId]) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    for (t, d) in [("emb", 4), ("adam", 3), ("lr", 1)] {
        let mut out = vec![0.0; ks.len() * d];
        s.pull_sparse(t, ks, &mut out).unwrap();
        v.push(out);
    }
    v.extend(s.pull_dense(&["mlp.w".into(), "mlp.b".into()]).unwrap());
    v
}

fn push_once(s: &LocalStore, ks: &[FeatureId]) {
    for (t, d) in [("emb", 4), ("adam", 3), ("lr", 1)] {
        let g: Vec<f32> = ks.iter().flat_map(|k| grad(k.0 ^ 1, d)).collect();
        s.push_sparse(t, ks, &g).unwrap();
    }
    s.push_dense(&[
        ("mlp.w".into(), vec![0.1; 6]),
        ("mlp.b".into(), vec![0.4; 3]),
    ])
    .unwrap();
}

#[test]
fn save_load_round_trip_keeps_values_and_optimizer_state() {
    let (s, ks) = trained();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    let m = s.save_checkpoint(&ck).unwrap();
    assert_eq!(m.rows["emb"], 2000);
    // Saving again over an existing checkpoint replaces it.
    s.save_checkpoint(&ck).unwrap();
    let l = LocalStore::load_checkpoint(&ck, None).unwrap();
    assert_eq!(all(&l, &ks), all(&s, &ks));
    assert_eq!(l.schema(), s.schema());
    assert_eq!(l.attribute("model").as_deref(), Some("mmoe"));
    // Same optimizer state: the next push moves both identically.
    push_once(&s, &ks);
    push_once(&l, &ks);
    assert_eq!(all(&l, &ks), all(&s, &ks));
    // Loaded rows are the base version, not changes to publish.
    assert!(LocalStore::load_checkpoint(&ck, None)
        .unwrap()
        .take_changes()
        .is_empty());
}

#[test]
fn loading_into_two_shards_partitions_rows() {
    let (s, ks) = trained();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    s.save_checkpoint(&ck).unwrap();
    let shards: Vec<LocalStore> = (0..2)
        .map(|i| LocalStore::load_checkpoint(&ck, Some((i, 2))).unwrap())
        .collect();
    let mut total = 0;
    for (i, sh) in shards.iter().enumerate() {
        let id = ShardId::new(i as u32, 2).unwrap();
        let mut n = 0;
        for b in sh.full_snapshot().filter(|b| b.table == "emb") {
            assert!(
                b.keys.iter().all(|k| id.owns_key(*k)),
                "shard {i} holds only its keys"
            );
            n += b.keys.len();
        }
        assert!(n > 500, "shard {i} got {n} rows");
        total += n;
        let mine: Vec<FeatureId> = ks.iter().copied().filter(|k| id.owns_key(*k)).collect();
        let mut a = vec![0.0; mine.len() * 4];
        let mut b = vec![0.0; mine.len() * 4];
        sh.pull_sparse("emb", &mine, &mut a).unwrap();
        s.pull_sparse("emb", &mine, &mut b).unwrap();
        assert_eq!(a, b);
    }
    assert_eq!(total, 2000, "disjoint and complete");
    let dense: usize = shards.iter().map(|s| s.dense_snapshot().len()).sum();
    assert_eq!(dense, 2, "each dense tensor on exactly one shard");
    // The shards' checkpoints merge back into one whole store.
    let dirs: Vec<_> = (0..2)
        .map(|i| {
            let d = dir.path().join(format!("shard-{i}"));
            shards[i].save_checkpoint(&d).unwrap();
            d
        })
        .collect();
    let whole = LocalStore::load_checkpoints(&dirs, Default::default()).unwrap();
    assert_eq!(all(&whole, &ks), all(&s, &ks));
}

#[test]
fn missing_or_corrupt_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = LocalStore::load_checkpoint(&dir.path().join("none"), None).unwrap_err();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    let ck = dir.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("manifest.json"), "{not json").unwrap();
    let e = LocalStore::load_checkpoint(&ck, None).unwrap_err();
    assert!(e.to_string().contains("manifest"), "{e}");
    assert!(LocalStore::load_checkpoint(&ck, Some((2, 2))).is_err());
    assert!(!checkpoint::exists(&dir.path().join("none")));
}

#[test]
fn interrupted_swap_falls_back_to_old() {
    let (s, ks) = trained();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    s.save_checkpoint(&ck).unwrap();
    // Simulate a crash between "move current aside" and "move new in".
    let old = dir.path().join("ckpt.old");
    std::fs::rename(&ck, &old).unwrap();
    assert!(checkpoint::exists(&ck));
    let l = LocalStore::load_checkpoint(&ck, None).unwrap();
    assert_eq!(all(&l, &ks), all(&s, &ks));
}

#[test]
fn concurrent_saves_to_one_directory_do_not_collide() {
    let (s, ks) = trained();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| sc.spawn(|| s.save_checkpoint(&ck)))
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    let l = LocalStore::load_checkpoint(&ck, None).unwrap();
    assert_eq!(all(&l, &ks), all(&s, &ks));
}

/// A rebase replaces the model: rows only the old model had are gone (they read as
/// their initial value again), rows and dense tensors of the checkpoint are exact.
#[test]
fn replace_from_drops_rows_the_checkpoint_does_not_have() {
    let (batch, ks) = trained();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("batch");
    batch.save_checkpoint(&ck).unwrap();

    let live = LocalStore::default();
    live.declare(&schema()).unwrap();
    let stale = [FeatureId(42), FeatureId(4242)];
    let g: Vec<f32> = stale.iter().flat_map(|k| grad(k.0, 4)).collect();
    live.push_sparse("emb", &stale, &g).unwrap();
    let mut before = vec![0.0; 8];
    live.pull_sparse("emb", &stale, &mut before).unwrap();

    live.replace_from(&ck).unwrap();
    assert_eq!(all(&live, &ks), all(&batch, &ks));
    let fresh = LocalStore::default();
    fresh.declare(&schema()).unwrap();
    let (mut after, mut init) = (vec![0.0; 8], vec![0.0; 8]);
    live.pull_sparse("emb", &stale, &mut after).unwrap();
    fresh.pull_sparse("emb", &stale, &mut init).unwrap();
    assert_ne!(after, before, "a row of the old model survived the rebase");
    assert_eq!(after, init);
    assert_eq!(live.attribute("model").as_deref(), Some("mmoe"));
}

/// `min_count` sightings survive a checkpoint: a key pushed twice of three times
/// before a restart becomes a row on its next push, not after three more.
#[test]
fn pending_sightings_survive_a_checkpoint() {
    let opts = || odl_ps::StoreOptions {
        min_count: 3,
        ..Default::default()
    };
    let rows = |s: &LocalStore| -> u64 {
        s.table_stats()
            .iter()
            .filter(|t| t.name == "emb")
            .map(|t| t.rows)
            .sum()
    };
    let ks: Vec<FeatureId> = (1..=100u64)
        .map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    let g: Vec<f32> = ks.iter().flat_map(|k| grad(k.0, 4)).collect();
    let s = LocalStore::new(opts());
    s.declare(&schema()).unwrap();
    for _ in 0..2 {
        s.push_sparse("emb", &ks, &g).unwrap();
    }
    assert_eq!(rows(&s), 0, "two sightings of three: no rows yet");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    s.save_checkpoint(&ck).unwrap();

    let restored = LocalStore::load_checkpoints(&[ck.clone()], opts()).unwrap();
    restored.push_sparse("emb", &ks, &g).unwrap();
    assert_eq!(
        rows(&restored),
        100,
        "the third sighting, counted across the restart"
    );

    // Each shard of a re-sharded cluster keeps the sightings of the keys it owns.
    let mut total = 0;
    for i in 0..2 {
        let shard = LocalStore::new(odl_ps::StoreOptions {
            shard: ShardId::new(i, 2),
            ..opts()
        });
        shard.load_from(&ck).unwrap();
        let owned: Vec<FeatureId> = ks
            .iter()
            .copied()
            .filter(|k| ShardId::new(i, 2).unwrap().owns_key(*k))
            .collect();
        let g: Vec<f32> = owned.iter().flat_map(|k| grad(k.0, 4)).collect();
        shard.push_sparse("emb", &owned, &g).unwrap();
        total += rows(&shard);
    }
    assert_eq!(total, 100);
}
