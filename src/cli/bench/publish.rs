//! `odl bench publish`: one sparse version of `--rows` changed rows (dim `--dim`) from
//! an in-process publisher over the PS's own store (`LocalStore`, rows created by
//! pushed gradients as training does) to `--nodes` `odl serve` processes on loopback. Prints the
//! seconds from the publish call to `FINISHED` (every node applied and confirmed it),
//! split into cutting (read + encode + persist) and delivery, and the serving nodes'
//! RSS per million rows. Target (issue 6): 1M rows of dim 16 to two nodes in ≤ 2 s.

use crate::serve::harness::{wait_for, LocalPublisher, ServeProcess};
use anyhow::Context;
use odl_proto::hashing::FeatureId;
use odl_proto::params::ParamStore;
use odl_proto::params::{ModelSchema, Optimizer, TableSpec};
use odl_proto::version::{Version, VersionStatus};
use odl_ps::publish::publisher::FullCause;
use odl_ps::publish::PublishConfig;
use odl_ps::LocalStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchPublishArgs {
    /// Changed rows in the sparse version.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 16)]
    pub dim: usize,
    /// Serving nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
}

pub fn run(args: BenchPublishArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the odl binary")?;
    let dir = std::env::temp_dir().join(format!("odl-bench-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let schema = ModelSchema {
        tables: vec![TableSpec {
            name: "emb".into(),
            dim: args.dim,
            optimizer: Optimizer::Adagrad {
                lr: 0.05,
                initial_accumulator: 0.0,
            },
            init_std: 0.01,
        }],
        dense: vec![],
    };
    let source = Arc::new(LocalStore::default());
    source
        .declare(&schema)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = PublishConfig {
        global_auc_threshold: 0.0,
        current_auc_threshold: 0.0,
        ..Default::default()
    };
    let partitions = cfg.update_partition_count;
    let local = LocalPublisher::start(cfg, &dir.join("versions"), source.clone(), false)?;
    let p = local.publisher.clone();
    p.cut_full(FullCause::WarmStart)?;
    let url = local.grpc_url();
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let id = format!("bench-node-{i}");
        nodes.push(ServeProcess::spawn(
            &exe,
            &["--ps-grpc", &url, "--node-id", &id],
        )?);
    }
    let reg = p.registry().clone();
    wait_for("every node to subscribe", Duration::from_secs(30), || {
        (reg.subscribers().len() == args.nodes).then_some(())
    })?;
    wait_for("version 1 to finish", Duration::from_secs(30), || {
        (reg.get(Version(1)).ok()?.status == VersionStatus::Finished).then_some(())
    })?;
    let rss_before: Vec<u64> = nodes.iter().map(|n| n.rss_bytes().unwrap_or(0)).collect();

    // Changed rows: hashed keys (as feature ids are), created by one gradient each.
    let keys: Vec<FeatureId> = (0..args.rows as u64)
        .map(|i| odl_proto::hashing::feature_id("bench", &i.to_string()))
        .collect();
    for batch in keys.chunks(10_000) {
        let grads: Vec<f32> = (0..batch.len() * args.dim)
            .map(|i| (i % 100) as f32 * 1e-3)
            .collect();
        source
            .push_sparse("emb", batch, &grads)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(keys);

    let t0 = Instant::now();
    let v = p.publish_sparse()?.context("no sparse version was cut")?;
    let cut = t0.elapsed();
    wait_for(
        "the sparse version to finish",
        Duration::from_secs(120),
        || (reg.get(v.version()).ok()?.status == VersionStatus::Finished).then_some(()),
    )?;
    let total = t0.elapsed();
    let rss_after: Vec<u64> = nodes.iter().map(|n| n.rss_bytes().unwrap_or(0)).collect();
    let per_million: Vec<f64> = rss_after
        .iter()
        .map(|&a| a as f64 / 1e6 / (args.rows as f64 / 1e6))
        .collect();
    let growth: Vec<f64> = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(&a, &b)| a.saturating_sub(b) as f64 / 1e6 / (args.rows as f64 / 1e6))
        .collect();
    let report = serde_json::json!({
        "rows": args.rows,
        "dim": args.dim,
        "nodes": args.nodes,
        "partitions": partitions,
        "version": v.version().0,
        "seconds_to_finished": total.as_secs_f64(),
        "seconds_cut": cut.as_secs_f64(),
        "seconds_delivery_and_confirm": (total - cut).as_secs_f64(),
        "target_seconds": 2.0,
        "node_rss_mb_per_million_rows": per_million,
        "node_rss_growth_mb_per_million_rows": growth,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(nodes);
    drop(local);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
