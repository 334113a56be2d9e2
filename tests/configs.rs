//! Every file in `configs/` parses as the config of the service it is for, and the
//! example configs that are the embedded defaults are complete on their own (no key
//! missing, none unknown). A new file in `configs/` must be added here, so an example
//! can never rot unnoticed.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Loads `path` (relative to `configs/`) with its service's loader; `None` when the
/// test does not know the file.
fn load(rel: &str, path: &Path) -> Option<Result<(), String>> {
    let p = Some(path);
    let r = match rel {
        "run.toml" | "local-kafka.toml" => odl::run::RunConfig::load(p).map(drop).map_err(|e| format!("{e:#}")),
        "simulate.toml" | "cluster/simulate.toml" => odl::simulate::SimConfig::load(p).map(drop).map_err(|e| e.to_string()),
        "joiner.toml" | "cluster/joiner.toml" => odl_joiner::JoinerConfig::load(p).map(drop).map_err(|e| e.to_string()),
        "serve.toml" | "cluster/serve-0.toml" | "cluster/serve-1.toml" => odl::serve::ServeConfig::load(p).map(drop).map_err(|e| format!("{e:#}")),
        "dashboard.toml" | "cluster/dashboard.toml" => {
            odl::dashboard::DashboardConfig::load(p).map(drop).map_err(|e| e.to_string())
        }
        r if r == "model.toml" || r.starts_with("models/") => {
            odl_trainer::ModelConfig::load(p).map(drop).map_err(|e| e.to_string())
        }
        r if r == "trainer.toml" || r.starts_with("cluster/worker-") => {
            odl_trainer::worker_config::TrainerConfig::load(p)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        r if r == "ps.toml" || r.starts_with("cluster/ps-") => {
            odl_ps::config::PsConfig::load(p).map(drop).map_err(|e| e.to_string())
        }
        // The Grafana board: JSON here; tests/metrics.rs checks its queries.
        "grafana/odl.json" => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map(drop).map_err(|e| e.to_string())),
        _ => return None,
    };
    Some(r)
}

#[test]
fn every_file_in_configs_parses_as_its_service_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut all = Vec::new();
    files(&root, &mut all);
    all.sort();
    assert!(all.len() >= 8, "configs/ has only {} files", all.len());
    for path in &all {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if !rel.ends_with(".toml") && !rel.ends_with(".json") {
            continue;
        }
        match load(&rel, path) {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("configs/{rel} does not load: {e}"),
            None => panic!("configs/{rel}: unknown config file; add it to tests/configs.rs"),
        }
    }
}

/// The example files are the defaults: each must be complete without any overlay, so
/// it documents every key (a key added to a struct but not to its example fails here).
#[test]
fn example_configs_are_complete_on_their_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let read = |n: &str| std::fs::read_to_string(root.join(n)).unwrap();
    use odl_proto::config::parse_str;
    parse_str::<odl::simulate::SimConfig>(&read("simulate.toml"), "simulate.toml").unwrap();
    parse_str::<odl_joiner::JoinerConfig>(&read("joiner.toml"), "joiner.toml").unwrap();
    parse_str::<odl_trainer::ModelConfig>(&read("model.toml"), "model.toml").unwrap();
    parse_str::<odl_ps::config::PsConfig>(&read("ps.toml"), "ps.toml").unwrap();
    parse_str::<odl::serve::ServeConfig>(&read("serve.toml"), "serve.toml").unwrap();
    parse_str::<odl::dashboard::DashboardConfig>(&read("dashboard.toml"), "dashboard.toml").unwrap();
    parse_str::<odl_trainer::worker_config::TrainerConfig>(&read("trainer.toml"), "trainer.toml")
        .unwrap();
}
