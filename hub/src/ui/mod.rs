//! The status page at `/ui` (and `/` redirecting there): one HTML file, one script and one style sheet,
//! compiled into the binary, with no build step of their own. The page holds no data: everything it shows
//! comes from the `/v1` API, fetched by the browser with the token the operator types in (kept in the
//! tab's `sessionStorage`), so its routes sit outside the API's token checks and reveal nothing.
//!
//! A strict Content-Security-Policy (same origin only, no inline script or style) keeps whatever the API
//! returns — job ids, error messages, all of it written by others — from ever running as code; the script
//! only ever sets text, never markup.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Same origin for everything, nothing inline, no framing, no plugins, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // A new hub version's page is picked up on the next load.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> Response {
        router::<()>().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_under_the_policy_and_the_root_redirects() {
        for (path, kind) in [("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
        let r = get("/").await;
        assert!(r.status().is_redirection());
        assert_eq!(r.headers()[header::LOCATION], "/ui");
    }

    /// The policy forbids inline code: the page must load its script and style from files, and the script
    /// must never parse API text as markup.
    #[test]
    fn the_page_has_no_inline_script_or_style_and_the_script_sets_no_markup() {
        assert!(INDEX.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        assert_eq!(INDEX.matches("<script").count(), 1, "one script, loaded from its file");
        for inline in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
            assert!(!INDEX.contains(inline), "inline `{inline}` in index.html");
        }
        for markup in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!SCRIPT.contains(markup), "`{markup}` in app.js");
        }
    }
}
