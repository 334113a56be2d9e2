//! The page and its static assets, compiled into the binary. They are built from `web/`
//! (`cd web && npm ci && npm run build`) and committed, so `cargo build` needs no
//! Node.js; the tests below fail when the committed files and `web/` disagree.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// (file name, content type, bytes).
const FILES: [(&str, &str, &[u8]); 5] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/uPlot.min.css"),
    ),
];

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, bytes)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no asset {name:?}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::FILES;
    use std::path::Path;

    fn embedded(name: &str) -> &'static [u8] {
        FILES.iter().find(|(n, _, _)| *n == name).unwrap().2
    }

    /// The page sources in web/src are what the binary serves: editing one without
    /// `npm run build` fails here.
    #[test]
    fn committed_page_assets_match_web_sources() {
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/src");
        for name in ["index.html", "dashboard.js", "dashboard.css"] {
            let src = std::fs::read(web.join(name)).unwrap();
            assert!(src == embedded(name), "src/dashboard/assets/{name} differs from web/src/{name}: run `npm run build` in web/");
        }
    }

    /// The bundled uPlot is the version web/package-lock.json pins.
    #[test]
    fn bundled_uplot_matches_the_lockfile() {
        let lock = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("web/package-lock.json"),
        )
        .unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        let version = lock["packages"]["node_modules/uplot"]["version"]
            .as_str()
            .unwrap();
        let js = std::str::from_utf8(&embedded("uPlot.iife.min.js")[..80]).unwrap_or("");
        assert!(
            js.contains(&format!("(v{version})")),
            "bundled uPlot is not v{version}: {js}"
        );
        assert!(!embedded("uPlot.min.css").is_empty());
    }
}
