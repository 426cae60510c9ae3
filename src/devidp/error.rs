//! Error responses: OAuth token-endpoint errors (RFC 6749 section 5.2),
//! bearer-token errors (RFC 6750 section 3) and plain HTML error pages for
//! what must not be redirected back to a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::html;

/// The error codes of RFC 6749 section 5.2 the token endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnsupportedGrantType,
    InvalidScope,
    /// Not in section 5.2, but the conventional code for "our fault".
    ServerError,
}

impl OAuthErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::ServerError => "server_error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer of the token endpoint.
#[derive(Debug, Clone)]
pub(crate) struct OAuthError {
    pub(crate) code: OAuthErrorCode,
    pub(crate) description: String,
}

impl OAuthError {
    pub(crate) fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    pub(crate) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, description)
    }

    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        });
        let mut response = (self.code.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code == OAuthErrorCode::InvalidClient {
            // RFC 6749 section 5.2: a 401 carries the scheme the client
            // should have used.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"devidp\""),
            );
        }
        response
    }
}

/// A refused bearer token at the userinfo endpoint (RFC 6750 section 3).
#[derive(Debug, Clone)]
pub(crate) enum BearerError {
    /// No `Authorization: Bearer` header at all.
    Missing,
    /// A token that does not verify; the text says why.
    InvalidToken(String),
}

impl IntoResponse for BearerError {
    fn into_response(self) -> Response {
        let (challenge, body) = match &self {
            BearerError::Missing => (
                "Bearer realm=\"devidp\"".to_string(),
                json!({"error": "invalid_request", "error_description": "no bearer token"}),
            ),
            BearerError::InvalidToken(why) => (
                // The description is ours and contains no quotes.
                format!(
                    "Bearer realm=\"devidp\", error=\"invalid_token\", error_description=\"{why}\""
                ),
                json!({"error": "invalid_token", "error_description": why}),
            ),
        };
        let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// An error shown to the user instead of redirecting: used when the
/// redirect target itself cannot be trusted (RFC 6749 section 4.1.2.1).
#[derive(Debug, Clone)]
pub(crate) struct ErrorPage {
    pub(crate) message: String,
}

impl ErrorPage {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ErrorPage {
            message: message.into(),
        }
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let body = html::page(
            "Request refused",
            &format!("<p class=\"error\">{}</p>", html::escape(&self.message)),
        );
        (StatusCode::BAD_REQUEST, Html(body)).into_response()
    }
}
