//! Bytes per sparse row at scale: `cargo run -p odl-ps --example memory -- 10000000`
//! (optionally followed by a directory: also time a checkpoint save and load there)
//! creates that many dim-16 Adagrad rows through `push_sparse` and reports the store's
//! own heap accounting and the process RSS growth per row, against the raw 136 bytes
//! (8-byte key + 16 weights + 16 accumulators). Kept out of the test run: it needs
//! ~1.5 GB and half a minute.

use odl_proto::hashing::FeatureId;
use odl_proto::params::{ModelSchema, Optimizer, ParamStore, TableSpec};
use odl_ps::LocalStore;
use std::time::Instant;

fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident ... in pages.
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let rows: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let dim = 16;
    let store = LocalStore::default();
    let schema = ModelSchema {
        tables: vec![TableSpec {
            name: "emb".into(),
            dim,
            optimizer: Optimizer::Adagrad {
                lr: 0.05,
                initial_accumulator: 0.1,
            },
            init_std: 0.01,
        }],
        dense: vec![],
    };
    if let Err(e) = store.declare(&schema) {
        eprintln!("declare failed: {e}");
        std::process::exit(1);
    }
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let batch = 4096u64;
    let grads = vec![0.01f32; batch as usize * dim];
    let mut keys = Vec::with_capacity(batch as usize);
    let mut next = 0u64;
    while next < rows {
        keys.clear();
        let n = batch.min(rows - next);
        // Uniform 64-bit keys, as feature hashes are.
        keys.extend(
            (next..next + n).map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555)),
        );
        if let Err(e) = store.push_sparse("emb", &keys, &grads[..n as usize * dim]) {
            eprintln!("push failed: {e}");
            std::process::exit(1);
        }
        next += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0);
    let heap = store.heap_bytes();
    println!(
        "rows={rows} dim={dim} adagrad: heap {:.1} bytes/row ({:.3}x of 136), rss growth {:.1} bytes/row ({:.3}x), insert {:.0} rows/s",
        heap as f64 / rows as f64,
        heap as f64 / rows as f64 / 136.0,
        rss as f64 / rows as f64,
        rss as f64 / rows as f64 / 136.0,
        rows as f64 / secs
    );
    if let Some(dir) = std::env::args().nth(2) {
        let dir = std::path::PathBuf::from(dir);
        let t = Instant::now();
        if let Err(e) = store.save_checkpoint(&dir) {
            eprintln!("checkpoint failed: {e}");
            std::process::exit(1);
        }
        let save = t.elapsed().as_secs_f64();
        drop(store);
        let t = Instant::now();
        match LocalStore::load_checkpoint(&dir, Some((0, 2))) {
            Ok(half) => println!(
                "checkpoint: save {save:.1}s ({:.0} rows/s); load into shard 0/2 {:.1}s ({} rows kept)",
                rows as f64 / save,
                t.elapsed().as_secs_f64(),
                half.table_stats().iter().map(|t| t.rows).sum::<u64>()
            ),
            Err(e) => {
                eprintln!("load failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
