//! Pull and push throughput over loopback gRPC: `cargo run -p odl-ps --example
//! grpc_throughput -- [shards] [batch] [seconds]` serves `shards` shards in-process
//! (their own runtime) and drives them with one `RemoteStore` from `threads` trainer
//! threads (2), dim-16 Adagrad rows, batches of `batch` unique keys drawn from 1M.
//! `shards = 0` measures the in-process `LocalStore` instead (file mode's store).

use odl_proto::hashing::FeatureId;
use odl_proto::params::{ModelSchema, Optimizer, ParamStore, TableSpec};
use odl_ps::server::{serve, Listeners};
use odl_ps::{LocalStore, RemoteOptions, RemoteStore, ShardId, StoreOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (shards, batch, secs) = (arg(1, 2) as u32, arg(2, 4096) as usize, arg(3, 5));
    let dim = 16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let mut addrs = Vec::new();
    for i in 0..shards {
        let l = rt
            .block_on(Listeners::bind("127.0.0.1:0", "127.0.0.1:0"))
            .expect("bind");
        addrs.push(l.addrs().expect("addr").0.to_string());
        let id = ShardId::new(i, shards).expect("shard");
        let store = Arc::new(LocalStore::new(StoreOptions {
            shard: Some(id),
            ..Default::default()
        }));
        rt.spawn(serve(store, id, l, stop.clone()));
    }
    let store: Box<dyn ParamStore> = if shards == 0 {
        Box::new(LocalStore::default())
    } else {
        Box::new(RemoteStore::connect(RemoteOptions::new(addrs, "bench")).expect("client"))
    };
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
    store.declare(&schema).expect("declare");
    let pulled = AtomicU64::new(0);
    let pushed = AtomicU64::new(0);
    let pull_ns = AtomicU64::new(0);
    let push_ns = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (store, pulled, pushed, pull_ns, push_ns) =
                (&store, &pulled, &pushed, &pull_ns, &push_ns);
            s.spawn(move || {
                let mut out = vec![0f32; batch * dim];
                let grads = vec![0.01f32; batch * dim];
                let mut b = t;
                while t0.elapsed() < Duration::from_secs(secs) {
                    let keys: Vec<FeatureId> = (0..batch as u64)
                        .map(|i| {
                            FeatureId(
                                ((b * batch as u64 + i) % 1_000_000)
                                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                            )
                        })
                        .collect();
                    let a = Instant::now();
                    store.pull_sparse("emb", &keys, &mut out).expect("pull");
                    let m = Instant::now();
                    store.push_sparse("emb", &keys, &grads).expect("push");
                    pull_ns.fetch_add((m - a).as_nanos() as u64, Ordering::Relaxed);
                    push_ns.fetch_add(m.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    pulled.fetch_add(batch as u64, Ordering::Relaxed);
                    pushed.fetch_add(batch as u64, Ordering::Relaxed);
                    b += 2;
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let (pl, ps) = (
        pulled.load(Ordering::Relaxed),
        pushed.load(Ordering::Relaxed),
    );
    println!(
        "shards={shards} batch={batch} dim={dim} threads=2 wall={wall:.1}s: pull+push {:.0} rows/s each way; \
         pull alone {:.0} rows/s, push alone {:.0} rows/s (per-call time, summed over threads)",
        pl as f64 / wall,
        pl as f64 / (pull_ns.load(Ordering::Relaxed) as f64 / 1e9 / 2.0),
        ps as f64 / (push_ns.load(Ordering::Relaxed) as f64 / 1e9 / 2.0),
    );
    stop.cancel();
}
