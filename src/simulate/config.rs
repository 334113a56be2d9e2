//! The simulator's typed configuration; `configs/simulate.toml` is the embedded default
//! and documents every key.

use super::{Result, SimError};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_TOML: &str = include_str!("../../configs/simulate.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub start_ms: i64,
    pub page_views_per_sec: f64,
    pub paced_time_scale: f64,
    pub items_per_page_min: u32,
    pub items_per_page_max: u32,
    pub users: u64,
    pub user_zipf: f64,
    pub initial_items: u64,
    pub new_items_per_hour: f64,
    pub item_zipf: f64,
    pub fresh_item_share: f64,
    pub categories: u32,
    pub segments: u32,
    pub user_tags: u32,
    pub base_logit: f64,
    pub latent_dim: usize,
    pub drift_period_hours: f64,
    pub detail_base_logit: f64,
    pub missing_feature_share: f64,
    pub rescore_share: f64,
    pub feature_after_share: f64,
    pub late_click_share: f64,
    pub click_delay_median_ms: f64,
    pub detail_delay_median_ms: f64,
    pub arrival_delay_mean_ms: f64,
    pub beyond_lateness_share: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
}

impl SimConfig {
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let c: Self = odl_proto::config::load(DEFAULT_TOML, path)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SimError::Config(m));
        let shares = [
            ("fresh_item_share", self.fresh_item_share),
            ("missing_feature_share", self.missing_feature_share),
            ("rescore_share", self.rescore_share),
            ("feature_after_share", self.feature_after_share),
            ("late_click_share", self.late_click_share),
            ("beyond_lateness_share", self.beyond_lateness_share),
            ("duplicate_share", self.duplicate_share),
            ("malformed_share", self.malformed_share),
        ];
        for (name, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} = {v} is not within [0, 1]"));
            }
        }
        if self.missing_feature_share + self.rescore_share + self.feature_after_share > 1.0 {
            return bad("missing_feature_share + rescore_share + feature_after_share exceeds 1".into());
        }
        let positive = [
            ("page_views_per_sec", self.page_views_per_sec),
            ("paced_time_scale", self.paced_time_scale),
            ("user_zipf", self.user_zipf),
            ("item_zipf", self.item_zipf),
            ("drift_period_hours", self.drift_period_hours),
            ("click_delay_median_ms", self.click_delay_median_ms),
            ("detail_delay_median_ms", self.detail_delay_median_ms),
            ("arrival_delay_mean_ms", self.arrival_delay_mean_ms),
        ];
        for (name, v) in positive {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!("{name} = {v} must be positive"));
            }
        }
        if self.new_items_per_hour < 0.0 || !self.new_items_per_hour.is_finite() {
            return bad("new_items_per_hour must not be negative".into());
        }
        if self.items_per_page_min == 0 || self.items_per_page_max < self.items_per_page_min {
            return bad("need 1 <= items_per_page_min <= items_per_page_max".into());
        }
        if self.users == 0 || self.initial_items == 0 || self.categories == 0 || self.segments == 0 {
            return bad("users, initial_items, categories and segments must be positive".into());
        }
        if self.user_tags == 0 || self.latent_dim == 0 {
            return bad("user_tags and latent_dim must be positive".into());
        }
        Ok(())
    }

    /// Mean items per page view.
    pub fn mean_items_per_page(&self) -> f64 {
        (self.items_per_page_min + self.items_per_page_max) as f64 / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_strictly_and_is_valid() {
        let c: SimConfig = odl_proto::config::parse_str(DEFAULT_TOML, "configs/simulate.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(SimConfig::load(None).unwrap(), c);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = SimConfig::load(None).unwrap();
        c.rescore_share = 1.5;
        assert!(c.validate().is_err());
        let mut c = SimConfig::load(None).unwrap();
        c.items_per_page_max = 0;
        assert!(c.validate().is_err());
    }
}
