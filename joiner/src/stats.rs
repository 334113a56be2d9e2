//! Join statistics (JOIN.md "Join statistics"): one typed struct that the operator
//! updates and that the stats file, `/stats` and `/metrics` render, so every consumer
//! sees the same numbers.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureStats {
    pub received: u64,
    pub late: u64,
    pub duplicate: u64,
    pub joined: u64,
    pub unjoined: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub received: u64,
    pub late: u64,
    pub joined: u64,
    pub unjoined: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleStats {
    pub emitted: u64,
    pub audited: u64,
}

/// Field order is JOIN.md's, so the rendered JSON reads like the spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinStats {
    pub exposure: ExposureStats,
    pub click: StreamStats,
    pub detail_click: StreamStats,
    pub feature: StreamStats,
    pub malformed: u64,
    pub samples: SampleStats,
}

impl JoinStats {
    /// Whether every received event has been accounted for (true at the end of a
    /// replay; while it runs, pending events are received but not yet decided).
    pub fn balanced(&self) -> bool {
        let e = &self.exposure;
        let streams = [&self.click, &self.detail_click, &self.feature];
        e.received == e.late + e.duplicate + e.joined + e.unjoined
            && streams.iter().all(|s| s.received == s.late + s.joined + s.unjoined)
            && e.joined == self.samples.emitted
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes `stats` to `path` atomically (a temporary file in the same directory, then a
/// rename), so a dashboard following the file never reads half of it.
pub fn write_atomic(path: &Path, stats: &JoinStats) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    let body = serde_json::to_vec_pretty(stats).map_err(std::io::Error::other)?;
    f.write_all(&body)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exactly_the_spec_shape() {
        let v: serde_json::Value = serde_json::from_str(&JoinStats::default().to_json()).unwrap();
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"exposure":     {"received": 0, "late": 0, "duplicate": 0, "joined": 0, "unjoined": 0},
                "click":        {"received": 0, "late": 0, "joined": 0, "unjoined": 0},
                "detail_click": {"received": 0, "late": 0, "joined": 0, "unjoined": 0},
                "feature":      {"received": 0, "late": 0, "joined": 0, "unjoined": 0},
                "malformed": 0,
                "samples": {"emitted": 0, "audited": 0}}"#,
        )
        .unwrap();
        assert_eq!(v, expected);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats.json");
        let mut s = JoinStats::default();
        write_atomic(&p, &s).unwrap();
        s.malformed = 3;
        write_atomic(&p, &s).unwrap();
        let back: JoinStats = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("no/such/dir/s.json"), &s).is_err());
    }
}
