//! The authorization endpoint: `GET /authorize` validates the request and
//! shows the account picker; `POST /authorize/login` turns the pick into a
//! one-time code (or `access_denied` on Cancel).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use url::Url;

use super::error::ErrorPage;
use super::html;
use super::params::Params;
use super::provider::Provider;
use super::store::{IssuedCode, PendingAuthorization};

/// A 302 to `target` with `pairs` added to its query. RFC 6749 uses 302.
pub(crate) fn redirect_with(mut target: Url, pairs: &[(&str, &str)]) -> Response {
    if !pairs.is_empty() {
        let mut query = target.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(target.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// An authorization error response (RFC 6749 section 4.1.2.1) with the
/// RFC 9207 `iss` parameter.
fn error_redirect(
    provider: &Provider,
    redirect_uri: &Url,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", provider.issuer.as_str()));
    redirect_with(redirect_uri.clone(), &pairs)
}

/// Whether `uri` is an http(s) URL on a loopback host, the rule for
/// redirect URIs when none are configured.
pub(crate) fn is_loopback_url(uri: &Url) -> bool {
    if !matches!(uri.scheme(), "http" | "https") {
        return false;
    }
    match uri.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks `redirect_uri` against the options: exact match with a
/// configured URI (a configured `http` loopback IP URI matches on any port,
/// RFC 8252 §7.3), or any loopback URL when none are configured.
fn checked_redirect_uri(provider: &Provider, raw: Option<&str>) -> Result<Url, ErrorPage> {
    let raw = raw.ok_or_else(|| ErrorPage::new("redirect_uri is required"))?;
    let uri = Url::parse(raw).map_err(|_| ErrorPage::new("redirect_uri is not a URL"))?;
    if uri.fragment().is_some() {
        return Err(ErrorPage::new("redirect_uri must not have a fragment"));
    }
    let allowed = &provider.options.redirect_uris;
    let ok = if allowed.is_empty() {
        is_loopback_url(&uri)
    } else {
        allowed.iter().any(|a| {
            a == raw
                || Url::parse(a).is_ok_and(|mut registered| {
                    let mut presented = uri.clone();
                    uri.scheme() == "http"
                        && is_loopback_url(&registered)
                        && registered.set_port(None).is_ok()
                        && presented.set_port(None).is_ok()
                        && registered == presented
                })
        })
    };
    if ok {
        Ok(uri)
    } else {
        Err(ErrorPage::new(format!(
            "redirect_uri {raw} is not registered for this client"
        )))
    }
}

/// A PKCE S256 challenge is a base64url SHA-256: 43 characters.
fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An authorization error for the client's redirect URI (RFC 6749
/// section 4.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused {
    error: &'static str,
    description: &'static str,
}

const fn refused(error: &'static str, description: &'static str) -> Refused {
    Refused { error, description }
}

/// The client and its redirect URI. Failures here are shown to the user:
/// redirecting to an unverified URI would make the provider an open
/// redirector.
fn trusted_redirect(provider: &Provider, params: &Params) -> Result<Url, ErrorPage> {
    if let Some(name) = params.repeated() {
        return Err(ErrorPage::new(format!("parameter {name} is repeated")));
    }
    let client_id = params
        .get("client_id")
        .ok_or_else(|| ErrorPage::new("client_id is required"))?;
    if client_id != provider.options.client_id {
        return Err(ErrorPage::new(format!("unknown client_id {client_id}")));
    }
    checked_redirect_uri(provider, params.get("redirect_uri"))
}

/// The rest of the request, once the redirect URI is trusted; returns the
/// scope and the PKCE challenge.
fn validate_request(params: &Params) -> Result<(&str, &str), Refused> {
    match params.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err(refused(
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
        None => return Err(refused("invalid_request", "response_type is required")),
    }
    let scope = params.get("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return Err(refused("invalid_scope", "scope must include openid"));
    }
    let challenge = params.get("code_challenge").ok_or(refused(
        "invalid_request",
        "code_challenge (PKCE) is required",
    ))?;
    if params.get("code_challenge_method") != Some("S256") {
        // A missing method means "plain" (RFC 7636 section 4.3), which is
        // not supported.
        return Err(refused(
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    if !valid_challenge(challenge) {
        return Err(refused("invalid_request", "code_challenge is malformed"));
    }
    // There is no provider-side session, so a silent login never succeeds.
    if params
        .get("prompt")
        .is_some_and(|p| p.split(' ').any(|v| v == "none"))
    {
        return Err(refused("login_required", "the user must log in"));
    }
    Ok((scope, challenge))
}

/// `GET /authorize`.
pub(crate) async fn authorize(
    State(provider): State<Arc<Provider>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let redirect_uri = match trusted_redirect(&provider, &params) {
        Ok(uri) => uri,
        Err(page) => return page.into_response(),
    };
    let state = params.get("state");
    let (scope, challenge) = match validate_request(&params) {
        Ok(valid) => valid,
        Err(Refused { error, description }) => {
            return error_redirect(&provider, &redirect_uri, state, error, description)
        }
    };
    let pending = PendingAuthorization {
        client_id: provider.options.client_id.clone(),
        redirect_uri_raw: params.get("redirect_uri").unwrap_or_default().to_string(),
        redirect_uri,
        state: state.map(str::to_string),
        nonce: params.get("nonce").map(str::to_string),
        scope: scope.to_string(),
        code_challenge: challenge.to_string(),
        created: Instant::now(),
    };
    let id = provider.store.lock().add_pending(pending.clone());
    no_store(Html(login_form(&provider, &pending, &id)))
}

fn no_store(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The account picker. Each account is a submit button named `user`;
/// Cancel is a submit button named `cancel`.
fn login_form(provider: &Provider, pending: &PendingAuthorization, request_id: &str) -> String {
    let mut buttons = String::new();
    for user in &provider.options.users {
        let groups = if user.groups.is_empty() {
            "no groups".to_string()
        } else {
            user.groups.join(", ")
        };
        let verified = if user.email_verified {
            "verified"
        } else {
            "unverified"
        };
        buttons.push_str(&format!(
            "<button type=\"submit\" name=\"user\" value=\"{subject}\">{name} <small>({subject}) \
             {email}, {verified}; {groups}</small></button>\n",
            subject = html::escape(&user.subject),
            name = html::escape(&user.name),
            email = html::escape(&user.email),
            groups = html::escape(&groups),
        ));
    }
    let body = format!(
        "<p>Application <code>{client}</code> asks for <code>{scope}</code>. \
         Pick an account:</p>\n\
         <form method=\"post\" action=\"/authorize/login\">\n\
         <input type=\"hidden\" name=\"request\" value=\"{request_id}\">\n\
         {buttons}\
         <button type=\"submit\" name=\"cancel\" value=\"1\" class=\"cancel\">Cancel</button>\n\
         </form>",
        request_id = html::escape(request_id),
        client = html::escape(&pending.client_id),
        scope = html::escape(&pending.scope),
    );
    html::page("Sign in", &body)
}

/// `POST /authorize/login`: form fields `request`, then `user` or `cancel`.
pub(crate) async fn login(State(provider): State<Arc<Provider>>, body: Bytes) -> Response {
    let params = Params::parse(&body);
    let Some(request_id) = params.get("request") else {
        return ErrorPage::new("the login form was not submitted properly").into_response();
    };
    let cancel = params.get("cancel").is_some();
    let user = params
        .get("user")
        .and_then(|subject| provider.user(subject))
        .cloned();
    let mut store = provider.store.lock();
    let Some(pending) = store.pending(request_id).cloned() else {
        return ErrorPage::new("this login request is unknown or has expired; start again")
            .into_response();
    };
    if cancel {
        store.take_pending(request_id);
        drop(store);
        return error_redirect(
            &provider,
            &pending.redirect_uri,
            pending.state.as_deref(),
            "access_denied",
            "the user cancelled the login",
        );
    }
    let Some(user) = user else {
        // Keep the request: the user can go back and pick a listed account.
        return ErrorPage::new("pick one of the listed accounts").into_response();
    };
    store.take_pending(request_id);
    let code = store.add_code(IssuedCode {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri_raw.clone(),
        code_challenge: pending.code_challenge.clone(),
        nonce: pending.nonce.clone(),
        scope: pending.scope.clone(),
        subject: user.subject.clone(),
        auth_time: Provider::now(),
        issued: Instant::now(),
    });
    drop(store);
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = pending.state.as_deref() {
        pairs.push(("state", state));
    }
    pairs.push(("iss", provider.issuer.as_str()));
    redirect_with(pending.redirect_uri, &pairs)
}
