//! The HTTP surface: routes, the test-control middleware (counting, delay,
//! outage), and the small endpoints (discovery, JWKS, userinfo, logout).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use url::Url;

use super::authorize::{self, is_loopback_url, redirect_with};
use super::error::{BearerError, ErrorPage};
use super::html;
use super::params::Params;
use super::provider::Provider;
use super::token;

pub(crate) fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize::authorize))
        .route("/authorize/login", post(authorize::login))
        .route("/token", post(token::token))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/end_session", get(end_session).post(end_session))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            provider.clone(),
            test_controls,
        ))
        .with_state(provider)
}

/// Applies the test controls to every request: counts it, waits the set
/// delay, then answers 503 while the provider is down.
async fn test_controls(
    State(provider): State<Arc<Provider>>,
    request: Request,
    next: Next,
) -> Response {
    provider.count_hit(request.uri().path());
    let delay = provider.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if provider.is_down() {
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": "the development provider is down (set_down)",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    next.run(request).await
}

async fn not_found() -> Response {
    let body = json!({"error": "not_found", "error_description": "no such endpoint"});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn discovery(State(provider): State<Arc<Provider>>) -> Response {
    Json(provider.discovery()).into_response()
}

async fn jwks(State(provider): State<Arc<Provider>>) -> Response {
    let document = provider.keys.read().jwks();
    let mut response = Json(document).into_response();
    if let Some(value) = provider
        .jwks_cache_control()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// `GET|POST /userinfo` with `Authorization: Bearer <access token>`.
async fn userinfo(State(provider): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    match userinfo_claims(&provider, &headers) {
        Ok(claims) => Json(claims).into_response(),
        Err(error) => error.into_response(),
    }
}

fn userinfo_claims(
    provider: &Provider,
    headers: &HeaderMap,
) -> Result<serde_json::Value, BearerError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(BearerError::Missing)?;
    let audience = provider.options.access_token_audience.as_str();
    let claims = provider
        .verify(token, Some(audience), true)
        .map_err(|e| BearerError::InvalidToken(e.to_string()))?;
    let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
    let user = provider
        .user(subject)
        .ok_or_else(|| BearerError::InvalidToken("the token is not about a user".into()))?;
    Ok(Provider::userinfo(user))
}

/// Whether RP-initiated logout may send the browser to `uri`: a
/// configured redirect URI or its origin, or any loopback URL when none
/// are configured.
fn post_logout_allowed(provider: &Provider, raw: &str, uri: &Url) -> bool {
    let allowed = &provider.options.redirect_uris;
    if allowed.is_empty() {
        return is_loopback_url(uri);
    }
    allowed.iter().any(|a| {
        a == raw
            || Url::parse(a)
                .map(|a| a.origin() == uri.origin())
                .unwrap_or(false)
    })
}

/// `GET|POST /end_session` (OIDC RP-Initiated Logout). The provider keeps
/// no login session, so this only validates and redirects.
async fn end_session(
    State(provider): State<Arc<Provider>>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = if method == Method::POST {
        Params::parse(&body)
    } else {
        Params::parse(query.unwrap_or_default().as_bytes())
    };
    match logout_target(&provider, &params) {
        Ok(Some(target)) => {
            let state = params.get("state");
            let pairs: Vec<(&str, &str)> = state.map(|s| ("state", s)).into_iter().collect();
            redirect_with(target, &pairs)
        }
        Ok(None) => Html(html::page(
            "Logged out",
            "<p>You are logged out of the development provider.</p>",
        ))
        .into_response(),
        Err(page) => page.into_response(),
    }
}

/// Validates a logout request; the redirect target if one was asked for.
fn logout_target(provider: &Provider, params: &Params) -> Result<Option<Url>, ErrorPage> {
    if let Some(hint) = params.get("id_token_hint") {
        let client_id = provider.options.client_id.as_str();
        provider
            .verify(hint, Some(client_id), false)
            .map_err(|e| ErrorPage::new(format!("id_token_hint refused: {e}")))?;
    }
    if let Some(client_id) = params.get("client_id") {
        if client_id != provider.options.client_id {
            return Err(ErrorPage::new(format!("unknown client_id {client_id}")));
        }
    }
    let Some(raw) = params.get("post_logout_redirect_uri") else {
        return Ok(None);
    };
    let uri =
        Url::parse(raw).map_err(|_| ErrorPage::new("post_logout_redirect_uri is not a URL"))?;
    if post_logout_allowed(provider, raw, &uri) {
        Ok(Some(uri))
    } else {
        Err(ErrorPage::new(format!(
            "post_logout_redirect_uri {raw} is not registered for this client"
        )))
    }
}
