//! Loading a service's typed configuration: the embedded defaults (the example file in
//! `configs/`, compiled in), overlaid by the operator's TOML file, then deserialized
//! into the service's struct, which denies unknown keys so a typo fails loudly.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin} is not valid TOML: {source}")]
    Syntax {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config {origin}: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
}

/// `defaults` (TOML text, usually `include_str!` of the example config) overlaid with
/// the file at `path`, if any. Tables merge key by key; any other value replaces.
pub fn load<T: DeserializeOwned>(defaults: &str, path: Option<&Path>) -> Result<T, ConfigError> {
    let mut merged = parse(defaults, "defaults")?;
    let origin = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            let origin = p.display().to_string();
            let top = if p.extension().is_some_and(|e| e == "json") {
                parse_json(&text, &origin)?
            } else {
                parse(&text, &origin)?
            };
            overlay(&mut merged, top);
            origin
        }
        None => "defaults".to_string(),
    };
    toml::Value::Table(merged)
        .try_into()
        .map_err(|source| ConfigError::Invalid { origin, source })
}

/// Parse `text` as one typed config without defaults (for tests of example files).
pub fn parse_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Invalid {
        origin: origin.to_string(),
        source,
    })
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|source| ConfigError::Syntax {
        origin: origin.to_string(),
        source,
    })
}

/// JSON configs are accepted too, because the production setup this project follows
/// writes blocks such as `"odl_model_update": {...}` in JSON (PUBLISH.md).
fn parse_json(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    let syntax = |e: String| ConfigError::Syntax {
        origin: origin.to_string(),
        source: <toml::de::Error as serde::de::Error>::custom(e),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
    toml::Table::try_from(value).map_err(|e| syntax(e.to_string()))
}

/// Lay `top` over `base`: tables merge key by key, any other value replaces.
pub fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        a: u32,
        inner: Inner,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        x: String,
        y: f64,
    }

    const DEFAULTS: &str = "a = 1\n[inner]\nx = \"d\"\ny = 2.0\n";

    #[test]
    fn file_overrides_defaults_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[inner]\ny = 3.5\n").unwrap();
        let c: Cfg = load(DEFAULTS, Some(&p)).unwrap();
        assert_eq!(c, Cfg { a: 1, inner: Inner { x: "d".into(), y: 3.5 } });
    }

    #[test]
    fn json_file_overrides_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"a": 7, "inner": {"x": "j"}}"#).unwrap();
        let c: Cfg = load(DEFAULTS, Some(&p)).unwrap();
        assert_eq!(c, Cfg { a: 7, inner: Inner { x: "j".into(), y: 2.0 } });
    }

    #[test]
    fn unknown_key_and_missing_file_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[inner]\nz = 1\n").unwrap();
        let e = load::<Cfg>(DEFAULTS, Some(&p)).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains('z'), "{e}");
        let e = load::<Cfg>(DEFAULTS, Some(&dir.path().join("none.toml"))).unwrap_err();
        assert!(e.to_string().contains("none.toml"));
    }
}
