//! Who may call what. Mutations need the admin token (and, when configured, an allowed client address);
//! reads need the read token or the admin token when a read token is configured, and are open otherwise,
//! but then an anonymous caller never sees presigned URLs (they grant access to the outputs themselves).
//! Tokens are compared in constant time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::ApiConfig;

pub const ADMIN_TOKEN_ENV: &str = "AINERN2D_HUB_ADMIN_TOKEN";
pub const READ_TOKEN_ENV: &str = "AINERN2D_HUB_READ_TOKEN";

/// The tokens the API checks.
#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("admin", &self.admin.is_some()).field("read", &self.read.is_some()).finish()
    }
}

impl Tokens {
    /// Reads the token files (`api.admin_token_file`, `api.read_token_file`), else the environment
    /// variables. A named file that cannot be read, or holds no token, is an error that names its key:
    /// falling back to another token silently would run the hub with credentials nobody chose.
    pub fn load(api: &ApiConfig) -> Result<Tokens, TokenError> {
        Ok(Tokens {
            admin: token("api.admin_token_file", &api.admin_token_file, ADMIN_TOKEN_ENV)?,
            read: token("api.read_token_file", &api.read_token_file, READ_TOKEN_ENV)?,
        })
    }

    /// What a request's `Authorization: Bearer` header grants.
    pub fn access(&self, headers: &axum::http::HeaderMap) -> Access {
        let presented =
            headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(given) = presented else { return Access::Anonymous };
        let matches = |t: &Option<String>| t.as_ref().is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())));
        if matches(&self.admin) {
            Access::Admin
        } else if matches(&self.read) {
            Access::Read
        } else {
            Access::Anonymous
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("config key `{key}`: cannot read the token file {path}: {source}")]
    Unreadable {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config key `{key}`: the token file {path} is empty; write a token into it or unset the key")]
    Empty { key: &'static str, path: String },
}

fn token(key: &'static str, path: &str, env: &str) -> Result<Option<String>, TokenError> {
    if path.is_empty() {
        return Ok(std::env::var(env).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
        key,
        path: path.to_string(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { key, path: path.to_string() });
    }
    Ok(Some(token.to_string()))
}

/// What the caller of a read may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No valid token: reads are open (no read token configured) but presigned URLs are withheld.
    Anonymous,
    Read,
    Admin,
}

impl Access {
    pub fn sees_presigned_urls(self) -> bool {
        self != Access::Anonymous
    }
}

/// Middleware of the mutating endpoints.
pub async fn admin(tokens: Arc<Tokens>, allowed: Arc<Vec<IpAddr>>, req: Request, next: Next) -> Response {
    if !allowed.is_empty() {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if !peer.is_some_and(|ip| allowed.contains(&ip)) {
            return ApiError(StatusCode::FORBIDDEN, "client address not in api.allowed_ips".into()).into_response();
        }
    }
    if tokens.access(req.headers()) != Access::Admin {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <token>)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Middleware of the reads: refuses callers without a token when a read token is configured, and tells
/// the handler what the caller may see.
pub async fn read(tokens: Arc<Tokens>, mut req: Request, next: Next) -> Response {
    let access = tokens.access(req.headers());
    if tokens.read.is_some() && access == Access::Anonymous {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong read token (Authorization: Bearer <read or admin token>)".into(),
        )
        .into_response();
    }
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// Removes the presigned URLs of a job's outputs (a job row's `outputs`, or an event body's).
pub fn redact_outputs(outputs: &mut serde_json::Value) {
    if let Some(list) = outputs.as_array_mut() {
        for output in list {
            if let Some(o) = output.as_object_mut() {
                o.remove("presigned_url");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(t: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    }

    #[test]
    fn the_admin_token_also_reads_and_a_wrong_token_is_anonymous() {
        let tokens = Tokens { admin: Some("a".into()), read: Some("r".into()) };
        assert_eq!(tokens.access(&bearer("a")), Access::Admin);
        assert_eq!(tokens.access(&bearer("r")), Access::Read);
        assert_eq!(tokens.access(&bearer("x")), Access::Anonymous);
        assert_eq!(tokens.access(&axum::http::HeaderMap::new()), Access::Anonymous);
        assert_eq!(Tokens::default().access(&bearer("")), Access::Anonymous);
    }

    #[test]
    fn an_unreadable_or_empty_token_file_is_an_error_naming_the_key() {
        let api = ApiConfig { admin_token_file: "/nonexistent/admin-token".into(), ..Default::default() };
        let err = Tokens::load(&api).unwrap_err().to_string();
        assert!(err.contains("`api.admin_token_file`") && err.contains("/nonexistent/admin-token"), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let api = ApiConfig { read_token_file: empty.path().display().to_string(), ..Default::default() };
        let err = Tokens::load(&api).unwrap_err().to_string();
        assert!(err.contains("`api.read_token_file`") && err.contains("empty"), "{err}");
    }

    #[test]
    fn presigned_urls_are_removed_from_outputs() {
        let mut outputs = serde_json::json!([{"key": "p/j/out.wav", "presigned_url": "https://s3/p/j/out.wav?sig"}]);
        redact_outputs(&mut outputs);
        assert_eq!(outputs, serde_json::json!([{"key": "p/j/out.wav"}]));
    }
}
