//! The token endpoint (`POST /token`): client authentication and the
//! authorization_code, refresh_token and client_credentials grants.
//!
//! Refresh tokens are issued only when the granted scope includes
//! `offline_access`, as Okta and Auth0 do, so that relying parties get
//! tested both with and without one.

use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::Header;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::error::{OAuthError, OAuthErrorCode};
use super::params::Params;
use super::provider::Provider;
use super::store::{random_token, RefreshGrant, Refusal};
use super::DevUser;

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// `POST /token`.
pub(crate) async fn token(
    State(provider): State<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&provider, &headers, &body) {
        Ok(answer) => {
            let mut response = Json(answer).into_response();
            // RFC 6749 section 5.1: token responses must not be cached.
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(error) => error.into_response(),
    }
}

fn handle(
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<TokenResponse, OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(body);
    if let Some(name) = params.repeated() {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        )));
    }
    let client_id = authenticate_client(provider, headers, &params)?;
    match params.get("grant_type") {
        Some("authorization_code") => code_grant(provider, &client_id, &params),
        Some("refresh_token") => refresh_grant(provider, &client_id, &params),
        Some("client_credentials") => client_credentials_grant(provider, &params),
        Some(other) => Err(OAuthError::new(
            OAuthErrorCode::UnsupportedGrantType,
            format!("grant_type {other} is not supported"),
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

// --- client authentication ----------------------------------------------

/// Decodes one `application/x-www-form-urlencoded` component, as RFC 6749
/// section 2.3.1 has clients encode the id and secret before Basic.
fn form_decode(component: &str) -> String {
    let escaped = format!("v={}", component.replace('&', "%26"));
    url::form_urlencoded::parse(escaped.as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// The id and secret of an `Authorization: Basic` header, if there is one.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client("malformed Basic authorization header");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "client authentication must use the Basic scheme",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

/// Authenticates the client by client_secret_basic or client_secret_post
/// (exactly one of them) and returns its id.
fn authenticate_client(
    provider: &Provider,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let basic = basic_credentials(headers)?;
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    let (id, secret) = match (basic, body_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not Basic and client_secret both",
            ))
        }
        (Some(_), None) if provider.options.client_secret_post_only => {
            return Err(OAuthError::invalid_client(
                "this client must authenticate with client_secret_post",
            ))
        }
        (Some((id, secret)), None) => {
            if body_id.is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::invalid_client(
                    "client_id differs from the authenticated client",
                ));
            }
            (id, secret)
        }
        (None, Some(secret)) => {
            let id = body_id.ok_or_else(|| {
                OAuthError::invalid_client("client_secret_post needs client_id too")
            })?;
            (id.to_string(), secret.to_string())
        }
        (None, None) => return Err(OAuthError::invalid_client("client authentication required")),
    };
    let options = &provider.options;
    let id_ok = id.as_bytes().ct_eq(options.client_id.as_bytes());
    let secret_ok = secret.as_bytes().ct_eq(options.client_secret.as_bytes());
    if bool::from(id_ok & secret_ok) {
        Ok(id)
    } else {
        Err(OAuthError::invalid_client("client authentication failed"))
    }
}

// --- grants ----------------------------------------------------------------

fn has_scope(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|s| s == wanted)
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// RFC 7636 section 4.6, S256.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

fn refusal_text(refusal: Refusal, what: &str) -> String {
    match refusal {
        Refusal::Unknown => format!("unknown or revoked {what}"),
        Refusal::Expired => format!("expired {what}"),
        Refusal::Replayed => format!("{what} already used; the tokens it produced are revoked"),
    }
}

fn code_grant(
    provider: &Provider,
    client_id: &str,
    params: &Params,
) -> Result<TokenResponse, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier (PKCE) is required"))?;
    if !valid_verifier(verifier) {
        return Err(OAuthError::invalid_request("code_verifier is malformed"));
    }
    let careless = provider.options.reusable_codes;
    let mut store = provider.store.lock();
    let issued = if careless {
        store.peek_code(code)
    } else {
        store.redeem_code(code)
    }
    .map_err(|r| OAuthError::invalid_grant(refusal_text(r, "authorization code")))?;
    if issued.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "code was issued to another client",
        ));
    }
    if issued.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the authorization request",
        ));
    }
    if !careless && !pkce_matches(verifier, &issued.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let user = provider
        .user(&issued.subject)
        .ok_or_else(|| OAuthError::invalid_grant("the user no longer exists"))?;
    let refresh_token = has_scope(&issued.scope, "offline_access").then(|| {
        let family = random_token();
        store.link_code_family(code, &family);
        store.add_refresh(RefreshGrant {
            client_id: client_id.to_string(),
            subject: user.subject.clone(),
            scope: issued.scope.clone(),
            auth_time: issued.auth_time,
            family,
        })
    });
    drop(store);
    let session = Session {
        user,
        scope: &issued.scope,
        nonce: issued.nonce.as_deref(),
        auth_time: issued.auth_time,
    };
    issue_user_tokens(provider, &session, refresh_token)
}

fn refresh_grant(
    provider: &Provider,
    client_id: &str,
    params: &Params,
) -> Result<TokenResponse, OAuthError> {
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let mut store = provider.store.lock();
    let grant = store
        .take_refresh(token)
        .map_err(|r| OAuthError::invalid_grant(refusal_text(r, "refresh token")))?;
    if grant.client_id != client_id {
        store.restore_refresh(token, grant);
        return Err(OAuthError::invalid_grant(
            "refresh token was issued to another client",
        ));
    }
    // A narrower scope may be asked for (RFC 6749 section 6); the new
    // refresh token keeps the original one.
    let scope = match params.get("scope") {
        None => grant.scope.clone(),
        Some(asked) if asked.split(' ').all(|s| has_scope(&grant.scope, s)) => asked.to_string(),
        Some(_) => {
            store.restore_refresh(token, grant);
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidScope,
                "scope exceeds the original grant",
            ));
        }
    };
    let Some(user) = provider.user(&grant.subject) else {
        return Err(OAuthError::invalid_grant("the user no longer exists"));
    };
    let auth_time = grant.auth_time;
    let refresh_token = store.add_refresh(grant);
    drop(store);
    // OIDC Core 12.2: a refreshed ID token keeps auth_time and should not
    // carry the nonce.
    let session = Session {
        user,
        scope: &scope,
        nonce: None,
        auth_time,
    };
    issue_user_tokens(provider, &session, Some(refresh_token))
}

fn client_credentials_grant(
    provider: &Provider,
    params: &Params,
) -> Result<TokenResponse, OAuthError> {
    let scope = params.get("scope").unwrap_or_default();
    let claims = provider.client_token_claims(scope);
    let access_token = sign(provider, &claims)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: provider.options.token_lifetime.as_secs(),
        scope: scope.to_string(),
        id_token: None,
        refresh_token: None,
    })
}

// --- issuing -------------------------------------------------------------

/// What the tokens of a user grant are about.
struct Session<'a> {
    user: &'a DevUser,
    scope: &'a str,
    nonce: Option<&'a str>,
    auth_time: u64,
}

fn sign(provider: &Provider, claims: &serde_json::Value) -> Result<String, OAuthError> {
    provider
        .sign(Header::new(provider.signing_alg()), claims)
        .map_err(|e| OAuthError::new(OAuthErrorCode::ServerError, e.to_string()))
}

/// OIDC Core 3.1.3.6: the left half of the SHA-256 of the access token
/// (both supported algorithms hash with SHA-256).
fn at_hash(access_token: &str) -> String {
    let hash = digest(&SHA256, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16])
}

fn issue_user_tokens(
    provider: &Provider,
    session: &Session<'_>,
    refresh_token: Option<String>,
) -> Result<TokenResponse, OAuthError> {
    let access_claims = provider.access_token_claims(session.user, session.scope);
    let access_token = sign(provider, &access_claims)?;
    let mut id_claims = provider.id_token_claims(session.user, session.nonce, session.auth_time);
    if let Some(map) = id_claims.as_object_mut() {
        map.insert("at_hash".into(), at_hash(&access_token).into());
    }
    let id_token = sign(provider, &id_claims)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: provider.options.token_lifetime.as_secs(),
        scope: session.scope.to_string(),
        id_token: Some(id_token),
        refresh_token,
    })
}
