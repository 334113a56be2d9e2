//! The gRPC shard service with the RemoteStore client, in-process on port 0: routing
//! over 2 shards agrees with one LocalStore, bad requests are InvalidArgument with a
//! message and leave rows unchanged, a dead shard fails after the retry deadline.

use crate::util::{grad, schema};
use odl_proto::hashing::FeatureId;
use odl_proto::params::{ParamError, ParamRead, ParamStore, TaskProgress, TrainProgress};
use odl_ps::server::{serve, Listeners};
use odl_ps::{LocalStore, RemoteOptions, RemoteStore, ShardId, StoreOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Cluster {
    rt: tokio::runtime::Runtime,
    stop: CancellationToken,
    grpc: Vec<String>,
    stores: Vec<Arc<LocalStore>>,
}

impl Cluster {
    fn start(n: u32) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let mut grpc = Vec::new();
        let mut stores = Vec::new();
        for i in 0..n {
            let l = rt
                .block_on(Listeners::bind("127.0.0.1:0", "127.0.0.1:0"))
                .unwrap();
            grpc.push(l.addrs().unwrap().0.to_string());
            let id = ShardId::new(i, n).unwrap();
            let store = Arc::new(LocalStore::new(StoreOptions {
                shard: Some(id),
                ..StoreOptions::default()
            }));
            stores.push(store.clone());
            rt.spawn(serve(store, id, l, stop.clone()));
        }
        Cluster {
            rt,
            stop,
            grpc,
            stores,
        }
    }

    fn client(&self) -> RemoteStore {
        RemoteStore::connect(RemoteOptions::new(self.grpc.clone(), "test-worker")).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn spread(n: u64) -> Vec<FeatureId> {
    (0..n)
        .map(|i| FeatureId(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD))
        .collect()
}

fn invalid<T: std::fmt::Debug>(r: Result<T, ParamError>, needle: &str) {
    match r {
        Err(ParamError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

#[test]
fn two_shards_behave_like_one_local_store() {
    let c = Cluster::start(2);
    let remote = c.client();
    let local = LocalStore::default();
    remote.declare(&schema()).unwrap();
    local.declare(&schema()).unwrap();
    let ks = spread(1000);
    for round in 0..3 {
        for (t, d) in [("emb", 4), ("adam", 3), ("lr", 1)] {
            let g: Vec<f32> = ks.iter().flat_map(|k| grad(k.0 + round, d)).collect();
            remote.push_sparse(t, &ks, &g).unwrap();
            local.push_sparse(t, &ks, &g).unwrap();
        }
        let dg = vec![
            ("mlp.w".to_string(), vec![0.1 * round as f32; 6]),
            ("mlp.b".to_string(), vec![0.3; 3]),
        ];
        remote.push_dense(&dg).unwrap();
        local.push_dense(&dg).unwrap();
    }
    for (t, d) in [("emb", 4), ("adam", 3), ("lr", 1)] {
        let mut a = vec![0.0; ks.len() * d];
        let mut b = vec![0.0; ks.len() * d];
        remote.pull_sparse(t, &ks, &mut a).unwrap();
        local.pull_sparse(t, &ks, &mut b).unwrap();
        assert_eq!(a, b, "table {t}");
    }
    let names = vec!["mlp.b".to_string(), "mlp.w".to_string()];
    assert_eq!(
        remote.pull_dense(&names).unwrap(),
        local.pull_dense(&names).unwrap()
    );
    // Rows are split disjointly by key range; each dense tensor lives on one shard.
    let rows: Vec<u64> = (0..2)
        .map(|i| {
            remote
                .shard_info(i)
                .unwrap()
                .tables
                .iter()
                .find(|t| t.name == "emb")
                .unwrap()
                .rows
        })
        .collect();
    assert_eq!(rows.iter().sum::<u64>(), 1000);
    assert!(rows.iter().all(|&r| r > 300), "{rows:?}");
    let dense: usize = (0..2)
        .map(|i| remote.shard_info(i).unwrap().dense.len())
        .sum();
    assert_eq!(dense, 2);
    let h = remote.health(1).unwrap();
    assert!(h.ready && h.shard == 1 && h.shards == 2);
    // Progress reaches every shard.
    remote
        .report_progress(&TrainProgress {
            samples: 42,
            tasks: vec![TaskProgress {
                task: "click".into(),
                samples: 42,
                global_auc: 0.7,
                current_auc: 0.72,
            }],
        })
        .unwrap();
    for s in &c.stores {
        assert_eq!(s.samples_trained(), 42);
    }
    assert_eq!(remote.reconnects(), 0);
}

#[test]
fn bad_requests_get_invalid_argument_and_rows_stay_intact() {
    let c = Cluster::start(2);
    let remote = c.client();
    remote.declare(&schema()).unwrap();
    let ks = spread(10);
    remote.push_sparse("emb", &ks, &[0.1; 40]).unwrap();
    let mut before = vec![0.0; 40];
    remote.pull_sparse("emb", &ks, &mut before).unwrap();
    invalid(remote.push_sparse("nope", &ks, &[0.0; 40]), "unknown table");
    invalid(
        remote.push_sparse("emb", &ks, &[0.0; 30]),
        "gradient floats",
    );
    let mut g = vec![0.1; 40];
    g[13] = f32::NAN;
    invalid(remote.push_sparse("emb", &ks, &g), "not finite");
    invalid(
        remote.push_sparse("emb", &ks, &[0.0; 41]),
        "41 gradient floats",
    );
    invalid(
        remote.pull_sparse("emb", &ks, &mut [0.0; 30]),
        "table dim is not 3",
    );
    invalid(
        remote.push_dense(&[("mlp.w".into(), vec![0.0; 5])]),
        "gradient has 5",
    );
    invalid(
        remote.push_dense(&[("ghost".into(), vec![0.0; 5])]),
        "unknown dense",
    );
    let mut bad = schema();
    bad.tables[0].dim = 5;
    invalid(remote.declare(&bad), "exists with dim 4");
    let mut after = vec![0.0; 40];
    remote.pull_sparse("emb", &ks, &mut after).unwrap();
    assert_eq!(before, after);
    // A client routing over the wrong shard count is refused on declare, and a key
    // sent to the wrong shard is refused by that shard.
    let wrong = RemoteStore::connect(RemoteOptions::new(vec![c.grpc[0].clone()], "w")).unwrap();
    invalid(wrong.declare(&schema()), "client routes over 1 shards");
    invalid(
        wrong.push_sparse("emb", &ks, &[0.1; 40]),
        "not owned by shard 0/2",
    );
    remote.pull_sparse("emb", &ks, &mut after).unwrap();
    assert_eq!(before, after);
}

#[test]
fn an_unreachable_shard_fails_as_unavailable_after_the_deadline() {
    // Bind and drop a listener: nobody listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = RemoteOptions::new(vec![format!("127.0.0.1:{port}")], "w");
    o.retry_deadline = Duration::from_millis(300);
    o.initial_backoff = Duration::from_millis(20);
    let r = RemoteStore::connect(o).unwrap();
    let t0 = std::time::Instant::now();
    match r.declare(&schema()) {
        Err(e @ ParamError::Unavailable(_)) => assert!(e.retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(r.retries() >= 2, "retried {} times", r.retries());
}

#[test]
fn remote_store_refuses_to_block_inside_async_code() {
    let c = Cluster::start(1);
    let remote = c.client();
    let r = c.rt.block_on(async { remote.declare(&schema()) });
    assert!(matches!(r, Err(ParamError::Internal(m)) if m.contains("blocking")));
    // Dropping a runtime-owning client inside async code would panic; do it outside.
    drop(remote);
}

#[test]
fn the_server_itself_validates_every_call() {
    use odl_proto::ps_rpc as rpc;
    use odl_proto::ps_rpc::parameter_server_client::ParameterServerClient;
    use odl_proto::wire;
    use tonic::Code;
    let c = Cluster::start(1);
    let remote = c.client();
    remote.declare(&schema()).unwrap();
    let ks = spread(4);
    remote.push_sparse("emb", &ks, &[0.2; 16]).unwrap();
    let mut before = vec![0.0; 16];
    remote.pull_sparse("emb", &ks, &mut before).unwrap();
    let addr = format!("http://{}", c.grpc[0]);
    let keys = wire::u64s_to_bytes(ks.iter().map(|k| k.0));
    let codes: Vec<(Code, String)> = c.rt.block_on(async move {
        let mut cl = ParameterServerClient::connect(addr).await.unwrap();
        let push = |table: &str, grads: Vec<f32>| rpc::PushSparseRequest {
            table: table.into(),
            keys: keys.clone(),
            grads: wire::f32s_to_bytes(&grads),
        };
        // Byte strings that hold no whole number of values: a torn gradient, a torn key.
        let torn_grads = rpc::PushSparseRequest {
            grads: wire::f32s_to_bytes(&[0.1; 16]).slice(..63),
            ..push("emb", vec![])
        };
        let torn_keys = rpc::PushSparseRequest {
            keys: keys.slice(..12),
            ..push("emb", vec![0.1; 16])
        };
        let mut nan = vec![0.1; 16];
        nan[5] = f32::NAN;
        let mut out = Vec::new();
        for req in [
            push("emb", nan),
            push("emb", vec![0.1; 15]),
            push("zzz", vec![0.1; 16]),
            torn_grads,
            torn_keys,
        ] {
            out.push(cl.push_sparse(req).await.unwrap_err());
        }
        out.push(
            cl.pull_sparse(rpc::PullSparseRequest {
                table: "zzz".into(),
                keys: keys.clone(),
            })
            .await
            .unwrap_err(),
        );
        out.push(
            cl.declare(rpc::DeclareRequest {
                schema_json: bytes::Bytes::from_static(b"{nope"),
                shards: 1,
                attributes: Default::default(),
            })
            .await
            .unwrap_err(),
        );
        out.push(
            cl.push_dense(rpc::PushDenseRequest {
                grads: vec![rpc::DenseTensor {
                    name: "mlp.b".into(),
                    values: wire::f32s_to_bytes(&[f32::INFINITY; 3]),
                }],
            })
            .await
            .unwrap_err(),
        );
        out.push(
            cl.report_progress(rpc::ReportProgressRequest {
                worker: String::new(),
                samples: 1,
                tasks: vec![],
            })
            .await
            .unwrap_err(),
        );
        out.into_iter()
            .map(|s| (s.code(), s.message().to_string()))
            .collect()
    });
    let want = [
        "not finite",
        "gradient floats",
        "unknown table",
        "grads: 63 bytes is not a whole number of 4-byte values",
        "keys: 12 bytes is not a whole number of 8-byte values",
        "unknown table",
        "schema_json",
        "not finite",
        "worker",
    ];
    assert_eq!(codes.len(), want.len());
    for ((code, msg), w) in codes.iter().zip(want) {
        assert_eq!(*code, Code::InvalidArgument, "{msg}");
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    let mut after = vec![0.0; 16];
    remote.pull_sparse("emb", &ks, &mut after).unwrap();
    assert_eq!(before, after);
}

#[test]
fn a_shard_with_a_ttl_evicts_idle_rows_and_resumes_from_its_shutdown_checkpoint() {
    use odl_ps::config::PsConfig;
    use odl_ps::shard::{Origin, Shard};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PsConfig::load(None).unwrap();
    cfg.ttl_secs = 1;
    cfg.checkpoint_dir = dir.path().join("ck");
    cfg.odl_model_update.open = false;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shard = Shard::open(cfg.clone()).unwrap();
    assert_eq!(shard.origin(), &Origin::Empty);
    let store = shard.store();
    let l = rt
        .block_on(Listeners::bind("127.0.0.1:0", "127.0.0.1:0"))
        .unwrap();
    let addr = l.addrs().unwrap().0.to_string();
    let stop = CancellationToken::new();
    let running = rt.spawn(shard.run(l, stop.clone()));
    let remote = RemoteStore::connect(RemoteOptions::new(vec![addr], "w")).unwrap();
    remote.declare(&schema()).unwrap();
    remote.push_sparse("emb", &spread(50), &[0.1; 200]).unwrap();
    assert_eq!(store.table_stats().iter().map(|t| t.rows).sum::<u64>(), 50);
    // The sweeper runs every second; rows idle for >= 1 s go, as deletions.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.table_stats().iter().map(|t| t.rows).sum::<u64>() > 0 {
        assert!(std::time::Instant::now() < deadline, "rows never expired");
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(store.take_changes().tables[0].deleted.len(), 50);
    remote.push_sparse("emb", &spread(3), &[0.1; 12]).unwrap();
    stop.cancel();
    rt.block_on(running).unwrap().unwrap();
    let again = Shard::open(cfg).unwrap();
    assert!(matches!(again.origin(), Origin::Resumed(_)));
    assert_eq!(again.store().schema().tables.len(), 3);
}

#[test]
fn a_shard_restarted_empty_gets_the_schema_again_from_the_client() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let id = ShardId::new(0, 1).unwrap();
    let serve_on = |addr: &str, stop: &CancellationToken| {
        let l = rt.block_on(Listeners::bind(addr, "127.0.0.1:0")).unwrap();
        let a = l.addrs().unwrap().0.to_string();
        let store = Arc::new(LocalStore::new(StoreOptions {
            shard: Some(id),
            ..StoreOptions::default()
        }));
        (a, rt.spawn(serve(store, id, l, stop.clone())))
    };
    let stop1 = CancellationToken::new();
    let (addr, first) = serve_on("127.0.0.1:0", &stop1);
    let remote = RemoteStore::connect(RemoteOptions::new(vec![addr.clone()], "w")).unwrap();
    remote.declare(&schema()).unwrap();
    remote.push_sparse("emb", &spread(5), &[0.1; 20]).unwrap();
    stop1.cancel();
    rt.block_on(first).unwrap().unwrap();
    // A new, empty shard on the same address: it knows no tables until the client
    // declares again, which the client does on its own.
    let stop2 = CancellationToken::new();
    let (_, _second) = serve_on(&addr, &stop2);
    let mut out = vec![0.0; 20];
    remote.pull_sparse("emb", &spread(5), &mut out).unwrap();
    remote.push_sparse("emb", &spread(5), &[0.1; 20]).unwrap();
    assert!(remote.pull_dense(&["mlp.w".into()]).is_ok());
    // An unknown name is still an error after the one re-declare, and not counted as
    // a reconnect.
    let before = remote.reconnects();
    assert!(matches!(
        remote.pull_dense(&["ghost".into()]),
        Err(ParamError::Invalid(_))
    ));
    remote.pull_sparse("emb", &spread(5), &mut out).unwrap();
    assert_eq!(remote.reconnects(), before);
    stop2.cancel();
}

/// Attributes declared with the schema reach every shard (so each shard's checkpoint
/// and full versions carry the model config); oversized ones are refused.
#[test]
fn declared_attributes_reach_every_shard_and_are_bounded() {
    let c = Cluster::start(2);
    let mut opts = RemoteOptions::new(c.grpc.clone(), "test-worker");
    opts.attributes
        .insert("model_config".into(), "{\"model\":\"mmoe\"}".into());
    let s = RemoteStore::connect(opts).unwrap();
    s.declare(&schema()).unwrap();
    for store in &c.stores {
        assert_eq!(
            store.attribute("model_config").as_deref(),
            Some("{\"model\":\"mmoe\"}")
        );
    }

    let mut opts = RemoteOptions::new(c.grpc.clone(), "test-worker");
    opts.attributes
        .insert("model_config".into(), "x".repeat(2 << 20));
    opts.retry_deadline = Duration::from_millis(200);
    let s = RemoteStore::connect(opts).unwrap();
    match s.declare(&schema()) {
        Err(ParamError::Invalid(m)) => assert!(m.contains("bytes"), "{m}"),
        other => panic!("an oversized attribute must be refused: {other:?}"),
    }
    assert_eq!(
        c.stores[0].attribute("model_config").as_deref(),
        Some("{\"model\":\"mmoe\"}")
    );
}
