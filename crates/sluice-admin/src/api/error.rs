//! Errors of the REST API: JSON `{"error": "...", "code": "..."}` with the
//! right status, plus optional details (the line of a policy error).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`bad_request`, `forbidden`, …).
    pub code: &'static str,
    /// What went wrong, for a person. Never contains a token or password.
    pub message: String,
    /// More fields for the body (`line`, `column`, …).
    pub extra: Vec<(&'static str, Value)>,
    /// `WWW-Authenticate` value for 401 answers.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            challenge: None,
        }
    }

    /// Any status with its own code (409 `not_pending`, 403 `self_approval`, …).
    pub fn with_status(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        Self::new(status, code, message)
    }

    /// 400: a parameter or body is not acceptable.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no credential, or one that is not valid.
    pub fn unauthenticated(message: impl Into<String>, invalid_token: bool) -> ApiError {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message);
        e.challenge = Some(if invalid_token {
            "Bearer realm=\"sluice\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"sluice\""
        });
        e
    }

    /// 403: a valid credential without the role.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405.
    pub fn method_not_allowed() -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path; see /api/openapi.json",
        )
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 422: the request was understood but what it carries or asks for
    /// cannot be done (an invalid policy, a config that does not load).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 503: something Sluice depends on is not available right now.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500: a fault of Sluice itself.
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Add a field to the body.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }

    /// A field added with [`with`](Self::with) (`Null` when absent).
    pub fn field(&self, key: &str) -> Value {
        self.extra
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(Value::Null, |(_, v)| v.clone())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message));
        body.insert("code".into(), Value::String(self.code.to_owned()));
        body.extend(self.extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let mut response = json_response(self.status, &Value::Object(body));
        if let Some(c) = self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an admin API answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                r#"{"error":"cannot encode the answer","code":"internal"}"#,
            )
                .into_response()
        }
    }
}
