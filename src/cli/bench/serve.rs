//! `odl bench serve`: concurrent prediction load on one `odl serve` process holding the
//! default mmoe model (published by an in-process publisher). Prints instances/s (wall,
//! and per CPU-second the serving process used, i.e. per core), p50/p99 request
//! latency and the node's RSS. Targets (issue 6): ≥ 20,000 instances/s per core, p99
//! ≤ 10 ms, at 100 instances per request.

use crate::serve::client::HttpClient;
use crate::serve::harness::{wait_for, LocalPublisher, ServeProcess};
use anyhow::Context;
use odl_proto::hashing::FeatureId;
use odl_ps::publish::publisher::FullCause;
use odl_ps::publish::source::MemorySource;
use odl_ps::publish::PublishConfig;
use odl_trainer::config::{FieldConfig, FieldKind};
use odl_trainer::{Model, ModelConfig};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {
    /// Concurrent client connections.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Instances per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

const USERS: usize = 20_000;
const ITEMS: usize = 20_000;
const CATS: usize = 200;
const TAGS: usize = 500;

/// The fields of the benchmark's instances, as the trainer would have resolved them.
pub fn bench_fields() -> Vec<FieldConfig> {
    let f = |name: &str, kind| FieldConfig {
        name: name.into(),
        kind,
        pooling: None,
        boundaries: vec![],
    };
    vec![
        f("user_id", FieldKind::Sparse),
        f("item_id", FieldKind::Sparse),
        f("item_cat", FieldKind::Sparse),
        f("hour", FieldKind::Sparse),
        f("tags", FieldKind::Sparse),
        f("price", FieldKind::Dense),
        f("ctr_7d", FieldKind::Dense),
    ]
}

/// One random instance of the benchmark's feature space.
pub fn bench_instance(rng: &mut impl Rng) -> serde_json::Value {
    serde_json::json!({
        "user_id": format!("u{}", rng.gen_range(0..USERS)),
        "item_id": format!("i{}", rng.gen_range(0..ITEMS)),
        "item_cat": format!("c{}", rng.gen_range(0..CATS)),
        "hour": rng.gen_range(0..24).to_string(),
        "tags": [format!("t{}", rng.gen_range(0..TAGS)), format!("t{}", rng.gen_range(0..TAGS))],
        "price": rng.gen_range(1.0..500.0f64),
        "ctr_7d": rng.gen_range(0.0..0.2f64),
    })
}

/// Every sparse key the benchmark's instances can hit.
fn bench_keys() -> Vec<u64> {
    let mut keys = Vec::new();
    let id = |f: &str, v: String| odl_proto::hashing::feature_id(f, &v).0;
    keys.extend((0..USERS).map(|i| id("user_id", format!("u{i}"))));
    keys.extend((0..ITEMS).map(|i| id("item_id", format!("i{i}"))));
    keys.extend((0..CATS).map(|i| id("item_cat", format!("c{i}"))));
    keys.extend((0..24).map(|i| id("hour", i.to_string())));
    keys.extend((0..TAGS).map(|i| id("tags", format!("t{i}"))));
    keys
}

/// A model config (JSON) with the benchmark's fields, and the model it builds.
pub fn bench_model() -> anyhow::Result<(String, Model)> {
    let mut cfg = ModelConfig::load(None)?;
    cfg.fields = bench_fields();
    let model = Model::from_config(&cfg)?;
    Ok((serde_json::to_string(&cfg)?, model))
}

/// A source holding the model's dense tensors and a row for every benchmark key.
pub fn bench_source(model: &Model) -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::new(model.schema().clone()));
    let keys = bench_keys();
    for t in &model.schema().tables {
        let mut values = vec![0f32; keys.len() * t.dim];
        for (k, row) in keys.iter().zip(values.chunks_exact_mut(t.dim)) {
            odl_proto::params::init_row(FeatureId(*k), 0.05, row);
        }
        source.set_rows(&t.name, &keys, &values);
    }
    source
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients >= 1 && args.batch >= 1 && args.seconds > 0.0,
        "clients, batch and seconds must be positive"
    );
    let exe = std::env::current_exe().context("locating the odl binary")?;
    let dir = std::env::temp_dir().join(format!("odl-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (model_json, model) = bench_model()?;
    let model_path = dir.join("model.json");
    std::fs::write(&model_path, &model_json)?;
    let source = bench_source(&model);
    let rows: usize = model
        .schema()
        .tables
        .iter()
        .map(|_| bench_keys().len())
        .sum();
    let mut cfg = PublishConfig {
        global_auc_threshold: 0.0,
        current_auc_threshold: 0.0,
        ..Default::default()
    };
    cfg.extensions.model_config = model_path.display().to_string();
    let local = LocalPublisher::start(cfg, &dir.join("versions"), source, false)?;
    local.publisher.cut_full(FullCause::WarmStart)?;
    let node = ServeProcess::spawn(
        &exe,
        &["--ps-grpc", &local.grpc_url(), "--node-id", "bench-serve"],
    )?;
    let addr = node.rest_addr.clone();
    let path = "/v1/models/rank_mmoe_odl:predict";
    wait_for(
        "the node to serve version 1",
        Duration::from_secs(60),
        || {
            let mut c = HttpClient::connect(&addr).ok()?;
            let (s, b) = c.get("/v1/models/rank_mmoe_odl").ok()?;
            (s == 200 && String::from_utf8_lossy(&b).contains("\"AVAILABLE\"")).then_some(())
        },
    )?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..32)
            .map(|_| {
                let inst: Vec<_> = (0..args.batch).map(|_| bench_instance(&mut rng)).collect();
                serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap_or_default()
            })
            .collect(),
    );
    // Warm up, and check the answer's shape once.
    let mut c = HttpClient::connect(&addr)?;
    let (s, b) = c.post(path, &bodies[0])?;
    anyhow::ensure!(
        s == 200,
        "warm-up predict failed: {s} {}",
        String::from_utf8_lossy(&b)
    );

    let cpu0 = node.cpu_seconds();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.seconds);
    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let (addr, bodies) = (addr.clone(), bodies.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut c = HttpClient::connect(&addr)?;
                let mut lat = Vec::new();
                let mut j = i;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (s, b) = c.post(path, &bodies[j % bodies.len()])?;
                    anyhow::ensure!(
                        s == 200,
                        "predict failed: {s} {}",
                        String::from_utf8_lossy(&b)
                    );
                    lat.push(t.elapsed());
                    j += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, node.cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    lat.sort();
    let instances = (lat.len() * args.batch) as f64;
    let rss = node.rss_bytes().unwrap_or(0);
    let report = serde_json::json!({
        "clients": args.clients,
        "instances_per_request": args.batch,
        "requests": lat.len(),
        "seconds": wall,
        "instances_per_second": instances / wall,
        "server_cpu_seconds": cpu,
        "instances_per_second_per_core": if cpu > 0.0 { instances / cpu } else { 0.0 },
        "p50_ms": percentile(&lat, 0.5),
        "p99_ms": percentile(&lat, 0.99),
        "node_rows": rows,
        "node_rss_mb": rss as f64 / 1e6,
        "targets": {"instances_per_second_per_core": 20000, "p99_ms": 10},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(node);
    drop(local);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
