//! The simulated world: users, items and the hidden ground-truth model.
//!
//! Attributes are pure functions of `(seed, id)` (a SplitMix64 hash), so millions of ids
//! cost no memory and every run with the same seed sees the same world. The model puts
//! most of its signal in coarse effects a trainer can learn from a few hundred
//! thousand samples (category, segment, a segment x category interaction through small
//! latent vectors, device, position, hour, price, tag match); per-item and per-user
//! effects are modest and concentrated on the frequent (low) ids. The user side of the
//! interaction rotates with event time: tastes drift, so a frozen model decays.

use super::config::SimConfig;

pub const DEVICES: [&str; 3] = ["android", "ios", "web"];
const DEVICE_EFFECT: [f64; 3] = [0.0, 0.15, -0.25];
pub const AGE_BUCKETS: u64 = 6;
const AGE_EFFECT: [f64; 6] = [0.1, 0.15, 0.05, 0.0, -0.1, -0.2];

/// SplitMix64: a fast, well-mixed hash of `(seed, salt, id)`.
pub fn mix(seed: u64, salt: u64, id: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal from a hash (Box-Muller).
pub fn normal(seed: u64, salt: u64, id: u64) -> f64 {
    let u1 = unit(mix(seed, salt, id)).max(1e-12);
    let u2 = unit(mix(seed, salt ^ 0x5555, id));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub segment: u32,
    pub age_bucket: u32,
    pub device: usize,
    pub tags: Vec<u32>,
    pub bias: f64,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub id: u64,
    pub category: u32,
    pub price: f64,
    pub bias: f64,
}

/// What the model sees of one exposure (exactly the fields of its feature event).
pub struct Context<'a> {
    pub user: &'a User,
    pub item: &'a Item,
    pub device: usize,
    pub position: u32,
    pub hour: u32,
}

/// Salts: one per attribute, so attributes are independent.
mod salt {
    pub const SEGMENT: u64 = 1;
    pub const AGE: u64 = 2;
    pub const DEVICE: u64 = 3;
    pub const TAGS: u64 = 4;
    pub const USER_BIAS: u64 = 5;
    pub const CATEGORY: u64 = 6;
    pub const PRICE: u64 = 7;
    pub const ITEM_BIAS: u64 = 8;
    pub const CAT_BIAS: u64 = 9;
    pub const SEG_BIAS: u64 = 10;
    pub const LATENT_A: u64 = 11;
    pub const LATENT_B: u64 = 12;
    pub const LATENT_V: u64 = 13;
    pub const CAT_TAG: u64 = 14;
    pub const DETAIL_CAT: u64 = 15;
}

/// The hidden world of one seed.
pub struct World {
    seed: u64,
    segments: u32,
    categories: u32,
    tags: u32,
    dim: usize,
    base: f64,
    detail_base: f64,
    period_ms: f64,
    cat_bias: Vec<f64>,
    seg_bias: Vec<f64>,
    cat_tag: Vec<u32>,
    detail_cat: Vec<f64>,
    /// Per segment: the two latent vectors the user side rotates between.
    seg_a: Vec<f64>,
    seg_b: Vec<f64>,
    cat_v: Vec<f64>,
}

/// Latent coordinates' scale: the interaction's logit std is about dim * scale^2 ^ 0.5.
const LATENT_SCALE: f64 = 0.6;
/// Ids below these are the frequent ones that carry stronger individual effects.
const HEAVY_USERS: u64 = 300;
const HEAVY_ITEMS: u64 = 500;

impl World {
    pub fn new(seed: u64, c: &SimConfig) -> Self {
        let n = |salt, i| normal(seed, salt, i);
        let dim = c.latent_dim;
        let latent = |salt, count: u32| -> Vec<f64> {
            (0..count as u64 * dim as u64).map(|i| LATENT_SCALE * n(salt, i)).collect()
        };
        World {
            seed,
            segments: c.segments,
            categories: c.categories,
            tags: c.user_tags,
            dim,
            base: c.base_logit,
            detail_base: c.detail_base_logit,
            period_ms: c.drift_period_hours * 3_600_000.0,
            cat_bias: (0..c.categories as u64).map(|i| 0.4 * n(salt::CAT_BIAS, i)).collect(),
            seg_bias: (0..c.segments as u64).map(|i| 0.3 * n(salt::SEG_BIAS, i)).collect(),
            cat_tag: (0..c.categories as u64)
                .map(|i| (mix(seed, salt::CAT_TAG, i) % c.user_tags as u64) as u32)
                .collect(),
            detail_cat: (0..c.categories as u64).map(|i| 0.5 * n(salt::DETAIL_CAT, i)).collect(),
            seg_a: latent(salt::LATENT_A, c.segments),
            seg_b: latent(salt::LATENT_B, c.segments),
            cat_v: latent(salt::LATENT_V, c.categories),
        }
    }

    pub fn user(&self, id: u64) -> User {
        let h = |salt| mix(self.seed, salt, id);
        let d = unit(h(salt::DEVICE));
        let device = if d < 0.5 {
            0
        } else if d < 0.85 {
            1
        } else {
            2
        };
        let ntags = 1 + h(salt::TAGS) % 3;
        let tags = (0..ntags)
            .map(|k| (mix(self.seed, salt::TAGS + 100 + k, id) % self.tags as u64) as u32)
            .collect();
        let sigma = if id < HEAVY_USERS { 0.3 } else { 0.03 };
        User {
            id,
            segment: (h(salt::SEGMENT) % self.segments as u64) as u32,
            age_bucket: (h(salt::AGE) % AGE_BUCKETS) as u32,
            device,
            tags,
            bias: sigma * normal(self.seed, salt::USER_BIAS, id),
        }
    }

    pub fn item(&self, id: u64) -> Item {
        // Categories skewed towards the low ones (some categories are much bigger).
        let u = unit(mix(self.seed, salt::CATEGORY, id));
        let category = ((u * u) * self.categories as f64) as u32 % self.categories;
        let price = (3.0 + 0.8 * normal(self.seed, salt::PRICE, id)).exp();
        let sigma = if id < HEAVY_ITEMS { 0.3 } else { 0.05 };
        Item {
            id,
            category,
            price: (price * 100.0).round() / 100.0,
            bias: sigma * normal(self.seed, salt::ITEM_BIAS, id),
        }
    }

    /// The true click probability of an exposure at event time `t_ms` (ms since start).
    pub fn click_logit(&self, x: &Context<'_>, t_ms: f64) -> f64 {
        let (s, c) = (x.user.segment as usize, x.item.category as usize);
        let theta = std::f64::consts::TAU * t_ms / self.period_ms;
        let (sin, cos) = theta.sin_cos();
        let d = self.dim;
        let mut dot = 0.0;
        for k in 0..d {
            let u = cos * self.seg_a[s * d + k] + sin * self.seg_b[s * d + k];
            dot += u * self.cat_v[c * d + k];
        }
        let tag_match = x.user.tags.contains(&self.cat_tag[c]);
        let hour = std::f64::consts::TAU * (x.hour as f64 - 6.0) / 24.0;
        self.base
            + self.cat_bias[c]
            + self.seg_bias[s]
            + dot
            + DEVICE_EFFECT[x.device]
            + AGE_EFFECT[x.user.age_bucket as usize % AGE_EFFECT.len()]
            - 0.15 * x.position as f64
            + 0.25 * hour.sin()
            - 0.2 * (x.item.price.max(0.01).ln() - 3.0)
            + if tag_match { 0.5 } else { 0.0 }
            + x.item.bias
            + x.user.bias
    }

    /// P(detail click | click).
    pub fn detail_given_click(&self, x: &Context<'_>) -> f64 {
        let c = x.item.category as usize;
        sigmoid(self.detail_base + self.detail_cat[c] + 0.3 * (x.item.price.max(0.01).ln() - 3.0))
    }

    pub fn category_tag(&self, category: u32) -> u32 {
        self.cat_tag[category as usize % self.cat_tag.len()]
    }

    pub fn categories(&self) -> u32 {
        self.categories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_pure_functions_of_seed_and_id() {
        let c = SimConfig::load(None).unwrap();
        let (a, b) = (World::new(7, &c), World::new(7, &c));
        assert_eq!(a.user(123).tags, b.user(123).tags);
        assert_eq!(a.item(9).price, b.item(9).price);
        let other = World::new(8, &c);
        assert!((0..50).any(|i| other.item(i).category != a.item(i).category));
    }

    #[test]
    fn normal_hash_has_unit_moments() {
        let xs: Vec<f64> = (0..100_000).map(|i| normal(1, 2, i)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "{mean} {var}");
    }
}
