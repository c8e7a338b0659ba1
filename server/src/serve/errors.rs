//! Error responses in text-embeddings-inference's shape, so TEI clients parse them as they
//! parse TEI's: `{"error": "...", "error_type": "Validation"}`. `/v1/embeddings` answers in
//! TEI's OpenAI-compatible shape instead: `{"message": "...", "code": 413, "type": "..."}`.
//!
//! Status codes follow TEI where TEI has the case: 413 for inputs over a limit (too many
//! inputs, too many tokens, body too large), 400 for empty inputs, 424 for backend failures;
//! 422 for well-formed JSON of the wrong shape (axum's convention), 400 for malformed JSON or
//! bad UTF-8. Overload answers 503 by default (429 like TEI if configured), with Retry-After.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// TEI's `error_type` values, plus the ones TEI has no endpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// The request is well-formed but breaks a rule (types, limits, token counts).
    Validation,
    /// No inputs at all.
    Empty,
    /// The queue is full: try again after `Retry-After`.
    Overloaded,
    /// The model failed on a valid request.
    Backend,
    /// The server is shutting down.
    Unhealthy,
    NotFound,
    MethodNotAllowed,
    /// No API key, or one the server does not know.
    Unauthorized,
    /// A bug: a handler panicked. The process keeps serving.
    Internal,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for the Retry-After header (overload and shutdown).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), retry_after: None }
    }

    /// 422: valid JSON of the wrong shape, or a value outside what the field allows.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorKind::Validation, message)
    }

    /// 400: the body is not JSON (or not UTF-8) at all.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::Validation, message)
    }

    /// 413: over a size limit (body bytes, number of inputs, tokens of one input).
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::Validation, message)
    }

    pub fn empty(field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::Empty, format!("`{field}` cannot be empty"))
    }

    pub fn overloaded(status: StatusCode, retry_after: u64, message: impl Into<String>) -> Self {
        ApiError { retry_after: Some(retry_after), ..Self::new(status, ErrorKind::Overloaded, message) }
    }

    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FAILED_DEPENDENCY, ErrorKind::Backend, message)
    }

    pub fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unhealthy, "the server is shutting down")
        }
    }

    fn with_headers(&self, mut response: Response) -> Response {
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// The OpenAI-compatible shape TEI uses on `/v1/embeddings`.
    pub fn into_openai_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            message: &'a str,
            code: u16,
            #[serde(rename = "type")]
            kind: ErrorKind,
        }
        let body = Json(Body { message: &self.message, code: self.status.as_u16(), kind: self.kind });
        self.with_headers((self.status, body).into_response())
    }
}

impl ApiError {
    /// OpenAI's error shape, `{"error": {"message", "type", "code"}}`, which its clients
    /// read (the chat and completion routes).
    pub fn into_openai_error(self) -> Response {
        let body = Json(serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": null, "code": self.status.as_u16()}
        }));
        self.with_headers((self.status, body).into_response())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_type: ErrorKind,
        }
        let body = Json(Body { error: &self.message, error_type: self.kind });
        self.with_headers((self.status, body).into_response())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}): {}", self.status.as_u16(), self.kind, self.message)
    }
}
