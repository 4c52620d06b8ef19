//! The dashboard at `/`: the build embedded in the binary (see `build.rs`),
//! so a copied `engine` serves it from any working directory.
//!
//! Paths that name no file get `index.html` (the dashboard routes itself),
//! except under `/assets/`, where a missing file is a plain 404 (a stale
//! page asking for a script of another build must not get HTML).

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What `/` says when the binary was built without the dashboard.
const NOT_BUILT: &str = "<!doctype html><title>Dashboard not built</title>\
<h1>The dashboard is not in this binary</h1>\
<p>It was built without <code>viz/dist</code>. Build the dashboard, then the engine \
(<code>scripts/run</code> does both):</p>\
<pre>sh viz/scripts/ensure-built.sh   # needs Node.js 20+ with npm\n\
cargo build --release --bin engine</pre>\
<p>or serve a built dashboard from a directory: <code>engine serve --web-dir viz/dist</code>. \
The API works meanwhile: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>";

/// Whether the dashboard was embedded at build time.
pub fn embedded() -> bool {
    find("/index.html").is_some()
}

fn find(path: &str) -> Option<&'static [u8]> {
    WEB_ASSETS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| WEB_ASSETS[i].1)
}

/// The `Content-Type` of the file types a Vite build holds.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// The fallback handler serving the embedded files.
pub async fn serve(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if !embedded() {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response();
    }
    let path = match uri.path() {
        "/" => "/index.html",
        path => path,
    };
    let (path, bytes) = match find(path) {
        Some(bytes) => (path, bytes),
        None if path.starts_with("/assets/") => return StatusCode::NOT_FOUND.into_response(),
        None => ("/index.html", find("/index.html").unwrap_or_default()),
    };
    // Vite names assets by content hash: cache them for good; the page
    // itself must be asked for again so a new build is picked up.
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        Body::from(bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_binary_search() {
        assert!(WEB_ASSETS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn content_types_of_a_vite_build() {
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("/assets/index-x.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("/assets/index-x.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("/x"), "application/octet-stream");
    }
}
