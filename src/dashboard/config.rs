//! The dashboard's typed configuration; `configs/dashboard.toml` is the embedded default
//! and documents every key.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_DASHBOARD_TOML: &str = include_str!("../../configs/dashboard.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub listen_addr: String,
    pub poll_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub history_secs: u64,
    pub joiners: Vec<ServiceAddr>,
    pub ps: Vec<ServiceAddr>,
    pub workers: Vec<ServiceAddr>,
    pub serving: Vec<ServiceAddr>,
}

/// One polled service: the name the page shows and the base URL of its HTTP port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddr {
    pub name: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DashboardConfigError {
    #[error(transparent)]
    Load(#[from] odl_proto::config::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

/// What the poller asks a service for, by role (the contract in each service's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Joiner,
    Ps,
    Worker,
    Serving,
}

impl ServiceKind {
    pub fn endpoints(self) -> &'static [&'static str] {
        match self {
            ServiceKind::Joiner => &["/stats", "/v1/quality", "/readyz"],
            ServiceKind::Ps => &["/v1/shard", "/v1/progress", "/v1/versions", "/readyz"],
            ServiceKind::Worker => &["/v1/progress", "/readyz"],
            ServiceKind::Serving => &["/v1/node", "/readyz"],
        }
    }
}

impl DashboardConfig {
    /// The embedded defaults overlaid with `path`, validated.
    pub fn load(path: Option<&Path>) -> Result<DashboardConfig, DashboardConfigError> {
        let cfg: DashboardConfig = odl_proto::config::load(DEFAULT_DASHBOARD_TOML, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), DashboardConfigError> {
        let invalid = |m: String| Err(DashboardConfigError::Invalid(m));
        if self.poll_interval_ms < 100 {
            return invalid(format!(
                "poll_interval_ms must be at least 100, got {}",
                self.poll_interval_ms
            ));
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be at least 1".into());
        }
        if self.history_secs == 0 {
            return invalid("history_secs must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for (_, s) in self.services() {
            if s.name.is_empty() {
                return invalid(format!("a service with url {:?} has an empty name", s.url));
            }
            if !names.insert(s.name.as_str()) {
                return invalid(format!("two services are named {:?}", s.name));
            }
            if let Err(e) = base_uri(&s.url) {
                return invalid(format!("service {:?}: {e}", s.name));
            }
        }
        Ok(())
    }

    /// Every service with its role, in the order the page lists them.
    pub fn services(&self) -> impl Iterator<Item = (ServiceKind, &ServiceAddr)> {
        [
            (ServiceKind::Joiner, &self.joiners),
            (ServiceKind::Ps, &self.ps),
            (ServiceKind::Worker, &self.workers),
            (ServiceKind::Serving, &self.serving),
        ]
        .into_iter()
        .flat_map(|(k, v)| v.iter().map(move |s| (k, s)))
    }

    /// Points of history kept per series: `history_secs` at `poll_interval_ms`.
    pub fn history_points(&self) -> usize {
        ((self.history_secs * 1000).div_ceil(self.poll_interval_ms)).max(2) as usize
    }
}

/// `url` as an `http://host:port` base the poller appends paths to (no TLS: the
/// services speak plain HTTP on their ports).
pub fn base_uri(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("url {url:?} must start with http://"));
    }
    if uri.authority().is_none() {
        return Err(format!("url {url:?} has no host"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<DashboardConfig, DashboardConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        std::fs::write(&p, text).unwrap();
        DashboardConfig::load(Some(&p))
    }

    #[test]
    fn the_example_file_is_the_default_and_polls_odl_run() {
        let c = DashboardConfig::load(None).unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        assert_eq!(c.joiners[0].url, "http://127.0.0.1:8700");
        assert_eq!(c.ps[0].url, "http://127.0.0.1:8600");
        assert_eq!(c.serving[0].url, "http://127.0.0.1:8501");
        assert!(c.workers.is_empty());
        assert_eq!(c.history_points(), 1800);
    }

    #[test]
    fn a_file_replaces_a_service_list_and_keeps_other_defaults() {
        let c = load_text("[[ps]]\nname = \"a\"\nurl = \"http://h:1\"\n[[ps]]\nname = \"b\"\nurl = \"http://h:2/\"\n").unwrap();
        assert_eq!(c.ps.len(), 2);
        assert_eq!(c.poll_interval_ms, 2000);
        assert_eq!(base_uri(&c.ps[1].url).unwrap(), "http://h:2");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let err = |t: &str| load_text(t).unwrap_err().to_string();
        assert!(err("no_such_key = 1\n").contains("no_such_key"));
        assert!(err("poll_interval_ms = 5\n").contains("poll_interval_ms"));
        assert!(err("[[ps]]\nname = \"p\"\nurl = \"https://h:1\"\n").contains("http://"));
        assert!(err("[[ps]]\nname = \"p\"\nurl = \"not a url\"\n").contains("not a URL"));
        let dup = "[[ps]]\nname = \"x\"\nurl = \"http://h:1\"\n[[serving]]\nname = \"x\"\nurl = \"http://h:2\"\n";
        assert!(err(dup).contains("two services"));
        assert!(err("[[ps]]\nurl = \"http://h:1\"\n").contains("name"));
    }
}
