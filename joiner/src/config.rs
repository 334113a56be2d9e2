//! The joiner's typed configuration. `configs/joiner.toml` is compiled in as the
//! defaults, so the documented example and the behaviour cannot drift apart.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The embedded defaults (the example file in `configs/`).
pub const DEFAULT_TOML: &str = include_str!("../../configs/joiner.toml");

/// Windows, lateness and rates of JOIN.md; every field is documented in
/// `configs/joiner.toml` with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinerConfig {
    pub allowed_lateness_ms: u64,
    pub click_wait_ms: u64,
    pub detail_click_wait_ms: u64,
    pub feature_lookback_ms: u64,
    pub feature_grace_ms: u64,
    pub audit_rate: f64,
    pub stats_interval_ms: u64,
}

/// Windows beyond this (about 292 years) cannot be meant and would overflow event time.
const MAX_WINDOW_MS: u64 = 1 << 53;

impl JoinerConfig {
    /// Defaults overlaid with the file at `path` (TOML, or JSON by extension), checked.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let c: Self = odl_proto::config::load(DEFAULT_TOML, path)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let windows = [
            ("allowed_lateness_ms", self.allowed_lateness_ms),
            ("click_wait_ms", self.click_wait_ms),
            ("detail_click_wait_ms", self.detail_click_wait_ms),
            ("feature_lookback_ms", self.feature_lookback_ms),
            ("feature_grace_ms", self.feature_grace_ms),
        ];
        for (name, v) in windows {
            if v > MAX_WINDOW_MS {
                return Err(Error::Config(format!("{name} = {v} is beyond {MAX_WINDOW_MS}")));
            }
        }
        if !(0.0..=1.0).contains(&self.audit_rate) {
            return Err(Error::Config(format!("audit_rate = {} is not within [0, 1]", self.audit_rate)));
        }
        if self.stats_interval_ms == 0 {
            return Err(Error::Config("stats_interval_ms must be positive".into()));
        }
        Ok(())
    }

    /// How long after tE an exposure waits before its sample is final.
    pub fn emit_delay_ms(&self) -> i64 {
        self.click_wait_ms.max(self.detail_click_wait_ms).max(self.feature_grace_ms) as i64
    }
}

impl Default for JoinerConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 60_000,
            click_wait_ms: 630_000,
            detail_click_wait_ms: 630_000,
            feature_lookback_ms: 630_000,
            feature_grace_ms: 60_000,
            audit_rate: 0.1,
            stats_interval_ms: 2_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_default_and_parses_strictly() {
        let c: JoinerConfig = odl_proto::config::parse_str(DEFAULT_TOML, "configs/joiner.toml").unwrap();
        assert_eq!(c, JoinerConfig::default());
        assert_eq!(JoinerConfig::load(None).unwrap(), JoinerConfig::default());
    }

    #[test]
    fn overrides_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.toml");
        std::fs::write(&p, "click_wait_ms = 5\n").unwrap();
        let c = JoinerConfig::load(Some(&p)).unwrap();
        assert_eq!(c.click_wait_ms, 5);
        assert_eq!(c.feature_lookback_ms, 630_000);
        std::fs::write(&p, "click_wait = 5\n").unwrap();
        let e = JoinerConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("j.toml"), "{e}");
        std::fs::write(&p, "audit_rate = 1.5\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).unwrap_err().to_string().contains("audit_rate"));
        std::fs::write(&p, "stats_interval_ms = 0\n").unwrap();
        assert!(JoinerConfig::load(Some(&p)).is_err());
    }
}
