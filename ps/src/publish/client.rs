//! Client side of the publisher's operator calls (`odl ps rebase`).

use odl_proto::publish_rpc::publisher_client::PublisherClient;
use odl_proto::publish_rpc::{RebaseRequest, VersionInfo};
use std::path::Path;

/// Ask the PS at `url` (e.g. `http://127.0.0.1:8601`) to load the batch checkpoint
/// `checkpoint` (a path the PS can read) and cut it as a new full version.
pub async fn rebase(url: &str, checkpoint: &Path) -> std::result::Result<VersionInfo, String> {
    let mut client = PublisherClient::connect(url.to_string())
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let dir = std::fs::canonicalize(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    client
        .rebase(RebaseRequest {
            checkpoint: dir.display().to_string(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("rebase refused: {}", s.message()))
}
