//! The PS versions summary of `odl run`'s progress line. (The joiner's HTTP routes
//! live in the joiner crate, `odl_joiner::http`, so every joiner mode serves them.)

use std::net::SocketAddr;

/// "N (k FINISHED, newest #v STATUS)" from the PS's `GET /v1/versions`.
pub async fn version_summary(ps_http: SocketAddr) -> String {
    let fetched = tokio::task::spawn_blocking(move || -> Option<Vec<serde_json::Value>> {
        let mut c = crate::serve::client::HttpClient::connect(&ps_http.to_string()).ok()?;
        let (status, body) = c.get("/v1/versions").ok()?;
        (status == 200).then_some(())?;
        serde_json::from_slice(&body).ok()
    })
    .await
    .ok()
    .flatten();
    let Some(versions) = fetched else {
        return "unavailable".into();
    };
    let finished = versions.iter().filter(|v| v["status"] == "FINISHED").count();
    match versions.first() {
        Some(v) => format!(
            "{} ({finished} FINISHED, newest #{} {} {})",
            versions.len(),
            v["version"],
            v["kind"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        ),
        None => "none yet".into(),
    }
}
