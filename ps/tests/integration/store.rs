//! LocalStore behaviour: row creation, optimizers, validation, min_count, TTL, the
//! publisher's change log, dense tensors, shard ownership, concurrency.

use crate::util::{grad, schema, table, ADAGRAD};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{
    init_row, ModelSchema, ParamError, ParamRead, ParamStore, TaskProgress, TrainProgress,
};
use odl_ps::{LocalStore, ShardId, StoreOptions};
use std::time::Duration;

fn keys(r: std::ops::Range<u64>) -> Vec<FeatureId> {
    r.map(FeatureId).collect()
}

fn pull(s: &impl ParamRead, t: &str, ks: &[FeatureId], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; ks.len() * dim];
    s.pull_sparse(t, ks, &mut out).unwrap();
    out
}

fn invalid<T: std::fmt::Debug>(r: Result<T, ParamError>, needle: &str) {
    match r {
        Err(ParamError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

#[test]
fn unknown_key_pulls_init_row_without_storing_it() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    let got = pull(&s, "emb", &[FeatureId(77)], 4);
    let mut want = vec![0.0; 4];
    init_row(FeatureId(77), 0.01, &mut want);
    assert_eq!(got, want);
    assert_eq!(s.table_stats().iter().map(|t| t.rows).sum::<u64>(), 0);
}

#[test]
fn push_applies_adagrad_from_the_init_row() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    let k = [FeatureId(5)];
    let before = pull(&s, "emb", &k, 4);
    let g = [0.2, -0.4, 0.0, 1.0];
    s.push_sparse("emb", &k, &g).unwrap();
    let after = pull(&s, "emb", &k, 4);
    for i in 0..4 {
        let acc = 0.1f32 + g[i] * g[i];
        let want = before[i] - 0.05 * g[i] / acc.sqrt();
        assert!(
            (after[i] - want).abs() < 1e-7,
            "coord {i}: {} vs {want}",
            after[i]
        );
    }
}

#[test]
fn ftrl_rows_pull_weights_and_adam_rows_learn() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    let k = [FeatureId(9)];
    let w0 = pull(&s, "lr", &k, 1)[0];
    for _ in 0..50 {
        s.push_sparse("lr", &k, &[1.0]).unwrap();
        s.push_sparse("adam", &k, &[1.0, -1.0, 0.5]).unwrap();
    }
    let w = pull(&s, "lr", &k, 1)[0];
    assert!(w < w0 && w.is_finite(), "FTRL weight {w0} -> {w}");
    let a = pull(&s, "adam", &k, 3);
    assert!(a[0] < -0.3 && a[1] > 0.3 && a[2] < -0.3, "{a:?}");
}

#[test]
fn bad_requests_are_invalid_and_leave_rows_untouched() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    let k = keys(0..3);
    s.push_sparse("emb", &k, &[0.1; 12]).unwrap();
    let before = pull(&s, "emb", &k, 4);
    invalid(s.push_sparse("nope", &k, &[0.0; 12]), "unknown table");
    invalid(s.push_sparse("emb", &k, &[0.0; 11]), "gradient floats");
    let mut g = vec![0.1; 12];
    g[7] = f32::NAN;
    invalid(s.push_sparse("emb", &k, &g), "not finite");
    g[7] = f32::INFINITY;
    invalid(s.push_sparse("emb", &k, &g), "not finite");
    // Finite but overflowing: refused per row, row unchanged.
    invalid(
        s.push_sparse("emb", &k[..1], &[1e30, 0.0, 0.0, 0.0]),
        "overflow",
    );
    let mut out = vec![0.0; 11];
    invalid(s.pull_sparse("emb", &k, &mut out), "output has");
    invalid(s.pull_sparse("nope", &k, &mut [0.0; 12]), "unknown table");
    assert_eq!(pull(&s, "emb", &k, 4), before);
    // Dense: unknown name, wrong length, non-finite; nothing applied.
    let d0 = s.pull_dense(&["mlp.w".into(), "mlp.b".into()]).unwrap();
    invalid(
        s.push_dense(&[("mlp.x".into(), vec![0.0; 6])]),
        "unknown dense",
    );
    invalid(
        s.push_dense(&[
            ("mlp.w".into(), vec![0.1; 6]),
            ("mlp.b".into(), vec![0.0; 2]),
        ]),
        "gradient has 2",
    );
    invalid(
        s.push_dense(&[("mlp.b".into(), vec![f32::NAN; 3])]),
        "not finite",
    );
    invalid(s.pull_dense(&["mlp.x".into()]), "unknown dense");
    assert_eq!(s.pull_dense(&["mlp.w".into(), "mlp.b".into()]).unwrap(), d0);
}

#[test]
fn declare_validates_and_is_idempotent() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    s.push_sparse("emb", &[FeatureId(1)], &[0.5; 4]).unwrap();
    let row = pull(&s, "emb", &[FeatureId(1)], 4);
    s.declare(&schema()).unwrap();
    assert_eq!(
        pull(&s, "emb", &[FeatureId(1)], 4),
        row,
        "re-declare keeps rows"
    );
    let mut bad = schema();
    bad.tables[0].dim = 8;
    invalid(s.declare(&bad), "exists with dim 4");
    let mut bad = schema();
    bad.dense[0].init.pop();
    invalid(s.declare(&bad), "init has 5");
    let mut bad = schema();
    bad.tables[1].init_std = f32::NAN;
    invalid(s.declare(&bad), "init_std");
    let mut bad = schema();
    bad.tables.push(bad.tables[0].clone());
    invalid(s.declare(&bad), "declared twice");
    let bad = ModelSchema {
        tables: vec![table("z", 0, ADAGRAD)],
        dense: vec![],
    };
    invalid(s.declare(&bad), "dim");
    // A failed declare created nothing.
    assert!(s.schema().tables.iter().all(|t| t.name != "z"));
}

#[test]
fn min_count_delays_row_creation() {
    let s = LocalStore::new(StoreOptions {
        min_count: 3,
        ..StoreOptions::default()
    });
    s.declare(&schema()).unwrap();
    let k = [FeatureId(11)];
    let init = pull(&s, "emb", &k, 4);
    s.push_sparse("emb", &k, &[1.0; 4]).unwrap();
    s.push_sparse("emb", &k, &[1.0; 4]).unwrap();
    assert_eq!(pull(&s, "emb", &k, 4), init, "two sightings: no row yet");
    assert_eq!(
        s.table_stats()[0].rows + s.table_stats()[1].rows + s.table_stats()[2].rows,
        0
    );
    s.push_sparse("emb", &k, &[1.0; 4]).unwrap();
    assert_ne!(
        pull(&s, "emb", &k, 4),
        init,
        "third sighting creates and updates"
    );
}

#[test]
fn ttl_evicts_idle_rows_and_records_deletions() {
    let s = LocalStore::with_manual_clock(StoreOptions {
        ttl: Some(Duration::from_secs(100)),
        ..StoreOptions::default()
    });
    s.declare(&schema()).unwrap();
    s.set_clock(10);
    s.push_sparse("emb", &keys(0..50), &vec![0.1; 200]).unwrap();
    s.set_clock(60);
    s.push_sparse("emb", &keys(50..80), &vec![0.1; 120])
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.tables[0].upserted.len(), 80);
    s.set_clock(109);
    assert_eq!(s.evict_expired(), 0, "age 99 < ttl");
    s.set_clock(110);
    assert_eq!(s.evict_expired(), 50, "rows last updated at t=10 go");
    let survivors = s.read_rows("emb", &keys(0..80)).unwrap();
    assert_eq!(survivors.keys, keys(50..80));
    let c = s.take_changes();
    let mut del = c.tables[0].deleted.clone();
    del.sort();
    assert_eq!(del, keys(0..50));
    assert!(c.tables[0].upserted.is_empty());
    // An evicted key pulls as its init row again.
    let mut want = vec![0.0; 4];
    init_row(FeatureId(3), 0.01, &mut want);
    assert_eq!(pull(&s, "emb", &[FeatureId(3)], 4), want);
}

#[test]
fn skipped_publish_restores_changes() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    s.push_sparse("emb", &keys(0..10), &[0.1; 40]).unwrap();
    let c = s.take_changes();
    assert_eq!(c.len(), 10);
    assert!(s.take_changes().is_empty());
    s.restore_changes(c.clone());
    s.push_sparse("emb", &keys(10..12), &[0.1; 8]).unwrap();
    let again = s.take_changes();
    let mut up = again.tables[0].upserted.clone();
    up.sort();
    assert_eq!(up, keys(0..12));
    let rows = s.read_rows("emb", &up).unwrap();
    assert_eq!(rows.keys.len(), 12);
    assert_eq!(rows.values.len(), 48);
}

#[test]
fn snapshots_cover_every_row_and_tensor() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    s.push_sparse("emb", &keys(0..100), &vec![0.1; 400])
        .unwrap();
    s.push_sparse("lr", &keys(0..7), &[0.5; 7]).unwrap();
    let mut n = 0;
    for b in s.full_snapshot() {
        assert_eq!(b.values.len(), b.keys.len() * b.dim);
        if b.table == "lr" {
            let mut direct = vec![0.0; b.keys.len()];
            s.pull_sparse("lr", &b.keys, &mut direct).unwrap();
            assert_eq!(direct, b.values, "snapshot holds FTRL weights, not z");
        }
        n += b.keys.len();
    }
    assert_eq!(n, 107);
    let d = s.dense_snapshot();
    assert_eq!(d.len(), 2);
    assert_eq!(
        d.iter().find(|(n, _)| n == "mlp.w").unwrap().1,
        vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    );
}

#[test]
fn dense_push_applies_optimizer() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    s.push_dense(&[("mlp.b".into(), vec![1.0, -1.0, 0.0])])
        .unwrap();
    let b = &s.pull_dense(&["mlp.b".into()]).unwrap()[0];
    assert!(
        (b[0] + 0.01).abs() < 1e-5 && (b[1] - 0.01).abs() < 1e-5 && b[2] == 0.0,
        "{b:?}"
    );
}

#[test]
fn progress_merges_across_workers() {
    let s = LocalStore::default();
    let p = |n, auc| TrainProgress {
        samples: n,
        tasks: vec![TaskProgress {
            task: "click".into(),
            samples: n,
            global_auc: auc,
            current_auc: auc,
        }],
    };
    s.report_progress_from("w0", &p(100, 0.7));
    s.report_progress_from("w1", &p(300, 0.8));
    assert_eq!(s.samples_trained(), 400);
    let m = s.merged_progress();
    assert!((m.tasks[0].global_auc - 0.775).abs() < 1e-9);
    s.report_progress(&p(100, 0.5)).unwrap();
    assert_eq!(s.samples_trained(), 500);
}

#[test]
fn a_shard_rejects_keys_and_dense_it_does_not_own() {
    let shard = ShardId::new(1, 2).unwrap();
    let s = LocalStore::new(StoreOptions {
        shard: Some(shard),
        ..StoreOptions::default()
    });
    s.declare(&schema()).unwrap();
    let mine = FeatureId(u64::MAX - 5);
    let theirs = FeatureId(5);
    s.push_sparse("emb", &[mine], &[0.1; 4]).unwrap();
    invalid(
        s.push_sparse("emb", &[mine, theirs], &[0.1; 8]),
        "not owned by shard 1/2",
    );
    let held: Vec<String> = s.schema().dense.into_iter().map(|d| d.name).collect();
    for d in schema().dense {
        assert_eq!(
            held.contains(&d.name),
            shard.owns_dense(&d.name),
            "{}",
            d.name
        );
    }
}

#[test]
fn concurrent_pushes_from_two_threads_all_land() {
    let s = LocalStore::default();
    s.declare(&schema()).unwrap();
    std::thread::scope(|sc| {
        for t in 0..2u64 {
            let s = &s;
            sc.spawn(move || {
                for b in 0..50u64 {
                    let ks: Vec<_> = (0..200)
                        .map(|i| FeatureId(t * 1_000_000 + b * 200 + i))
                        .collect();
                    let g: Vec<f32> = ks.iter().flat_map(|k| grad(k.0, 4)).collect();
                    s.push_sparse("emb", &ks, &g).unwrap();
                }
            });
        }
    });
    let emb = s
        .table_stats()
        .into_iter()
        .find(|t| t.name == "emb")
        .unwrap();
    assert_eq!(emb.rows, 20_000);
}
