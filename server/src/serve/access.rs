//! Who may call: API keys and CORS.
//!
//! With keys configured (`server.api_keys`, `--api-key`, `TANDEM_API_KEY`), every API route
//! but `/health` needs `Authorization: Bearer KEY`; anything else gets 401 with a JSON error.
//! The demo page's files (not API routes) stay public. Keys are compared as SHA-256 digests,
//! byte by byte without an early exit and against every key, so the time taken says nothing
//! about how close a guess was or which key matched. CORS is off unless origins are listed.

use super::errors::{ApiError, ErrorKind};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The environment variable that holds API keys, comma-separated.
pub const API_KEY_ENV: &str = "TANDEM_API_KEY";

/// The accepted keys, as digests.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> ApiKeys {
        ApiKeys { digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect() }
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every key, every byte: no early exit.
        self.digests.iter().fold(false, |found, key| {
            let diff = key.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (diff == 0)
        })
    }
}

/// The routes that need a key when keys are configured: the API, `/health` excepted (load
/// balancers probe it without credentials).
const PROTECTED: &[&str] = &["/embed", "/v1/embeddings", "/rerank", "/relevance", "/info", "/metrics"];

pub async fn authorize(State(keys): State<Arc<ApiKeys>>, req: Request, next: Next) -> Response {
    if keys.digests.is_empty() || !PROTECTED.contains(&req.uri().path()) || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match presented {
        Some(key) if keys.accepts(key) => next.run(req).await,
        _ => {
            let message = "missing or unknown API key: send `Authorization: Bearer <key>`";
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, message).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// A CORS layer for `origins` (`"*"` for any), or `None` when the list is empty (CORS off:
/// browsers on other origins cannot read the answers).
pub fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("server.cors_origins: {o:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::RETRY_AFTER]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = ApiKeys::new(&["first-key".into(), "second".into()]);
        assert!(keys.accepts(b"first-key") && keys.accepts(b"second"));
        assert!(!keys.accepts(b"first-ke") && !keys.accepts(b"first-key ") && !keys.accepts(b""));
        assert!(!ApiKeys::new(&[]).accepts(b""));
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(cors(&[]).unwrap().is_none());
        assert!(cors(&["https://shop.example".into()]).unwrap().is_some());
        assert!(cors(&["*".into()]).unwrap().is_some());
        assert!(cors(&["bad\norigin".into()]).is_err());
    }
}
