//! Browser login (SPEC §2): `/.auth/login` starts the authorization-code
//! flow with PKCE, `/.auth/callback` finishes it and creates the session,
//! `/.auth/me` says who is logged in. The pending login travels in a sealed,
//! short-lived cookie named after its `state`, so several tabs can log in at
//! once; at most `MAX_PENDING_LOGINS` such cookies are kept.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};

use super::{establish, query_param, redirect};
use crate::provider::client::{redeem_code, TokenRequestError};
use crate::runtime::{DeploymentRt, Runtime, State};
use crate::session::cookie::cookies;
use crate::session::store::SingleUse;
use crate::session::{now, EndReason, Session, SessionId};

/// Pending logins older than this are refused (and their cookies expire).
pub const LOGIN_TIMEOUT_SECS: u64 = 600;
/// Pending-login cookies kept per browser; the oldest give way.
pub const MAX_PENDING_LOGINS: usize = 4;

pub type Response = (ResponseHeader, Bytes);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_token(len: usize) -> Option<String> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(b64(&bytes))
}

/// What a pending login remembers between the redirect and the callback.
#[derive(Debug, Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    deployment: String,
    rd: String,
    nonce: String,
    verifier: String,
    created: u64,
    max_age: Option<u64>,
}

impl PendingLogin {
    /// Whether this pending login is the one the provider's answer names,
    /// and still in time.
    fn answers(&self, state: &str, now: u64) -> bool {
        self.state == state && now < self.created.saturating_add(LOGIN_TIMEOUT_SECS)
    }
}

/// A login state as `start` makes them: base64url, at least 8 characters
/// (the pending cookie's name takes the first 8 bytes). Anything else is
/// not ours.
fn is_login_state(state: &str) -> bool {
    state.len() >= 8
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `prompt` of the authorization request: the one the page asked for,
/// else `consent` when the scopes ask for a refresh token (OpenID Connect
/// Core §11 grants offline_access only with it, and without a refresh
/// token sessions cannot be re-checked), else none.
fn authorization_prompt(requested: Option<String>, scopes: &[String]) -> Option<String> {
    requested.or_else(|| {
        scopes
            .iter()
            .any(|s| s == "offline_access")
            .then(|| "consent".to_string())
    })
}

/// The pending-login cookies to clear so that, with the one being added,
/// at most `MAX_PENDING_LOGINS` remain: the oldest. `pending` is in header
/// order with each login's start time. Times have whole seconds: within
/// one, the header's order decides, where browsers put older cookies first
/// (RFC 6265 section 5.4).
fn pending_logins_to_clear(mut pending: Vec<(&str, u64)>) -> Vec<&str> {
    // Newest first: reversed, then a stable sort keeps later-in-header first on ties.
    pending.reverse();
    pending.sort_by_key(|(_, created)| std::cmp::Reverse(*created));
    pending
        .into_iter()
        .skip(MAX_PENDING_LOGINS - 1)
        .map(|(name, _)| name)
        .collect()
}

/// Whether a logout request comes from this site: a POST must carry this
/// origin's `Origin`; a GET (a link) is believed only with
/// `Sec-Fetch-Site: same-origin`. Anything else gets a confirmation page.
fn logout_from_this_site(
    method: &http::Method,
    origin: Option<&str>,
    fetch_site: Option<&str>,
    self_origin: &str,
) -> bool {
    if method == http::Method::POST {
        origin.is_some_and(|o| o.eq_ignore_ascii_case(self_origin))
    } else {
        fetch_site == Some("same-origin")
    }
}

/// Where the provider sends the browser after its logout. Providers match
/// `post_logout_redirect_uri` exactly against what is registered: a
/// same-origin `rd` (a path) returns to the site's root (register
/// `public_url` + "/"), another allowed origin's URL as given.
fn post_logout_redirect_uri(rd: &str, self_origin: &str) -> String {
    if rd.starts_with('/') {
        format!("{self_origin}/")
    } else {
        rd.to_string()
    }
}

/// The session the request's cookie names, if it is intact, ours and
/// alive; an error when the store cannot tell (callers answer 503).
pub async fn session_from_cookie(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
) -> Result<Option<Session>, crate::session::store::StoreError> {
    let policy = &runtime.cookie_policy;
    let Some(id) = cookies(req)
        .find(|(k, _)| *k == policy.session_name)
        .and_then(|(_, sealed)| runtime.cookies.open(&policy.session_name, sealed))
        .and_then(|bytes| SessionId::from_bytes(&bytes))
    else {
        return Ok(None);
    };
    let session = state.sessions.load(&id, now()).await?;
    Ok(session.map(Arc::unwrap_or_clone))
}

/// The answer while the session store cannot be reached.
fn store_unavailable() -> Response {
    super::error_retry_after(
        503,
        "session_store_unavailable",
        "the session store cannot be reached; try again shortly",
        1,
    )
}

/// A refusal's description as a sentence.
fn capitalized(description: &str) -> String {
    let mut chars = description.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small uncached HTML document: `title` (escaped here) as title and
/// heading, then `inner_html` as given, with `security_headers` after the
/// common ones.
fn html_response(
    status: u16,
    title: &str,
    inner_html: &str,
    security_headers: &[(&'static str, &'static str)],
) -> Response {
    let body = Bytes::from(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto\">\
         <h1>{t}</h1>{inner_html}</body></html>",
        t = escape_html(title),
    ));
    let mut header =
        ResponseHeader::build(status, Some(3 + security_headers.len())).expect("valid status");
    let _ = header.insert_header("content-type", "text/html; charset=utf-8");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", "no-store");
    for (name, value) in security_headers {
        let _ = header.insert_header(*name, *value);
    }
    (header, body)
}

fn page(status: u16, title: &str, message: &str) -> Response {
    html_response(
        status,
        title,
        &format!("<p>{}</p>", escape_html(message)),
        &[
            ("x-content-type-options", "nosniff"),
            (
                "content-security-policy",
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
    )
}

fn redirect_to(location: &str, cookies: &[String]) -> Response {
    let mut header = ResponseHeader::build(302, Some(4)).expect("valid status");
    let _ = header.insert_header("location", location);
    let _ = header.insert_header("cache-control", "no-store");
    let _ = header.insert_header("content-length", "0");
    for c in cookies {
        let _ = header.append_header("set-cookie", c.as_str());
    }
    (header, Bytes::new())
}

/// The public origin (`scheme://host[:port]`) and callback URL.
fn public_origin(runtime: &Runtime) -> Option<(String, String)> {
    let url = runtime.config.public_url.as_ref()?;
    let origin = url.origin().ascii_serialization();
    let base = url.as_str().trim_end_matches('/');
    Some((origin, format!("{base}/.auth/callback")))
}

/// The deployment a login is for, or why there is none (status, message).
fn login_deployment(
    runtime: &Runtime,
    id: Option<&str>,
) -> Result<Arc<DeploymentRt>, (u16, &'static str)> {
    let id = id.ok_or((400, "The login link names no deployment."))?;
    establish::login_deployment(runtime, id).map_err(|why| match why {
        establish::NoLogin::Unknown => (404, "No deployment has this id."),
        establish::NoLogin::Inactive => (403, "This deployment is inactive."),
        establish::NoLogin::AuthenticationOff => (400, "This deployment does not use login."),
    })
}

fn allowed_origins(deployment: &DeploymentRt) -> Vec<String> {
    match &deployment.config.origins {
        crate::config::OriginPolicy::List(list) => list.clone(),
        crate::config::OriginPolicy::Any => Vec::new(),
    }
}

/// `GET /.auth/login?deployment=ID&rd=URL[&prompt=&max_age=&login_hint=]`
pub async fn start(runtime: &Runtime, req: &RequestHeader) -> Response {
    let deployment = match login_deployment(runtime, query_param(req, "deployment").as_deref()) {
        Ok(d) => d,
        Err((status, message)) => return page(status, "Cannot log in", message),
    };
    let Some((self_origin, callback)) = public_origin(runtime) else {
        return page(
            503,
            "Login unavailable",
            "Login needs `public_url` in the configuration.",
        );
    };
    let provider = deployment
        .provider
        .as_ref()
        .expect("checked by login_deployment");
    let Ok(metadata) = provider.ensure_metadata().await else {
        return page(
            503,
            "Login unavailable",
            "The identity provider cannot be reached; try again shortly.",
        );
    };
    let Some(authorization_endpoint) = metadata.authorization_endpoint.as_deref() else {
        return page(
            503,
            "Login unavailable",
            "The identity provider has no authorization endpoint.",
        );
    };
    let rd = redirect::safe_redirect(
        query_param(req, "rd").as_deref(),
        &self_origin,
        &allowed_origins(&deployment),
    );
    let (Some(state), Some(nonce), Some(verifier)) =
        (random_token(24), random_token(24), random_token(32))
    else {
        return page(503, "Login unavailable", "No randomness available.");
    };
    let max_age = query_param(req, "max_age").and_then(|v| v.parse::<u64>().ok());
    let pending = PendingLogin {
        state: state.clone(),
        deployment: deployment.config.id.clone(),
        rd,
        nonce: nonce.clone(),
        verifier: verifier.clone(),
        created: now(),
        max_age,
    };
    let policy = &runtime.cookie_policy;
    let cookie_name = format!("{}{}", policy.pending_prefix, &state[..8]);
    let Some(sealed) = serde_json::to_vec(&pending)
        .ok()
        .and_then(|json| runtime.cookies.seal(&cookie_name, &json))
    else {
        return page(
            503,
            "Login unavailable",
            "The login state could not be sealed.",
        );
    };
    let challenge =
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    let Ok(mut location) = url::Url::parse(authorization_endpoint) else {
        return page(
            503,
            "Login unavailable",
            "The identity provider's authorization endpoint is not a URL.",
        );
    };
    {
        let mut q = location.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &provider.config.client_id)
            .append_pair("redirect_uri", &callback)
            .append_pair("scope", &provider.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(prompt) =
            authorization_prompt(query_param(req, "prompt"), &provider.config.scopes)
        {
            q.append_pair("prompt", &prompt);
        }
        if let Some(hint) = query_param(req, "login_hint") {
            q.append_pair("login_hint", &hint);
        }
        if let Some(age) = max_age {
            q.append_pair("max_age", &age.to_string());
        }
    }
    let mut set_cookies = vec![policy.set_cookie(&cookie_name, &sealed, Some(LOGIN_TIMEOUT_SECS))];
    // Cap the pending logins: the oldest ones make room.
    let pending_cookies: Vec<(&str, u64)> = cookies(req)
        .filter(|(k, _)| k.starts_with(&policy.pending_prefix))
        .map(|(k, v)| {
            let created = runtime
                .cookies
                .open(k, v)
                .and_then(|json| serde_json::from_slice::<PendingLogin>(&json).ok())
                .map_or(0, |p| p.created);
            (k, created)
        })
        .collect();
    for name in pending_logins_to_clear(pending_cookies) {
        set_cookies.push(policy.clear_cookie(name));
    }
    redirect_to(location.as_str(), &set_cookies)
}

/// A callback refused before its login is known (or before anything was
/// sent to the provider): counted, one log line, and a 400 page.
fn refused_early(state: &State, deployment: &str, result: &str, message: &str) -> Response {
    state
        .metrics
        .logins
        .with_label_values(&[deployment, result])
        .inc();
    tracing::warn!(deployment, result, status = 400, "login refused");
    page(400, "Login failed", message)
}

/// `GET /.auth/callback?code=&state=[&iss=]` or `?error=&state=`
pub async fn callback(state: &State, runtime: &Runtime, req: &RequestHeader) -> Response {
    let policy = &runtime.cookie_policy;
    // States are base64url (see `start`): anything else is not ours, and
    // the cookie name below slices it by bytes.
    let Some(login_state) = query_param(req, "state").filter(|s| is_login_state(s)) else {
        return refused_early(
            state,
            "-",
            "bad_state",
            "The provider's answer carries no state.",
        );
    };
    let cookie_name = format!("{}{}", policy.pending_prefix, &login_state[..8]);
    let clear = policy.clear_cookie(&cookie_name);
    let pending = cookies(req)
        .find(|(k, _)| *k == cookie_name)
        .and_then(|(k, v)| runtime.cookies.open(k, v))
        .and_then(|json| serde_json::from_slice::<PendingLogin>(&json).ok())
        .filter(|p| p.answers(&login_state, now()));
    let Some(pending) = pending else {
        return refused_early(
            state,
            "-",
            "bad_state",
            "This login was not started here, has expired, or was already used. Start again.",
        );
    };
    // One use per login: the first callback claims the state, atomically
    // (in a shared store, on every instance).
    let first = state
        .sessions
        .first_use(
            SingleUse::LoginState,
            crate::token::sha256(pending.state.as_bytes()),
            std::time::Duration::from_secs(LOGIN_TIMEOUT_SECS),
        )
        .await;
    match first {
        Ok(true) => {}
        Ok(false) => {
            return refused_early(
                state,
                &pending.deployment,
                "state_reused",
                "This login was already used. Start again.",
            );
        }
        Err(error) => {
            state
                .metrics
                .logins
                .with_label_values(&[&pending.deployment, "store_unavailable"])
                .inc();
            tracing::warn!(deployment = %pending.deployment, error = %error, status = 503, "login refused: session store unavailable");
            return page(
                503,
                "Login failed",
                "Sign-in is unavailable for a moment. Start again shortly.",
            );
        }
    }
    let fail = |status: u16, message: &str| {
        let (mut header, body) = page(status, "Login failed", message);
        let _ = header.append_header("set-cookie", clear.as_str());
        (header, body)
    };
    // A refused login: counted by result, one log line, and the page.
    let refuse = |result: &str, status: u16, message: &str| {
        state
            .metrics
            .logins
            .with_label_values(&[&pending.deployment, result])
            .inc();
        tracing::warn!(deployment = %pending.deployment, result, status, "login refused");
        fail(status, message)
    };
    if let Some(error) = query_param(req, "error") {
        let description = query_param(req, "error_description").unwrap_or_default();
        return refuse(
            "provider_error",
            401,
            &format!("The identity provider refused the login: {error}. {description}"),
        );
    }
    let Ok(deployment) = login_deployment(runtime, Some(&pending.deployment)) else {
        return refuse(
            "deployment_gone",
            400,
            "The deployment of this login is no longer available.",
        );
    };
    let provider = deployment
        .provider
        .as_ref()
        .expect("checked by login_deployment");
    let Ok(metadata) = provider.ensure_metadata().await else {
        return refuse(
            "provider_unreachable",
            503,
            "The identity provider cannot be reached; try again shortly.",
        );
    };
    // RFC 9207: the answer names its issuer when the provider says it will.
    match query_param(req, "iss") {
        Some(iss) if iss != provider.config.issuer => {
            return refuse("bad_issuer", 400, "The answer comes from another issuer.");
        }
        None if metadata.authorization_response_iss_parameter_supported => {
            return refuse("bad_issuer", 400, "The answer does not name its issuer.");
        }
        _ => {}
    }
    let Some(code) = query_param(req, "code") else {
        return refuse("no_code", 400, "The provider's answer carries no code.");
    };
    let Some((_, callback_url)) = public_origin(runtime) else {
        return refuse(
            "no_public_url",
            503,
            "Login needs `public_url` in the configuration.",
        );
    };
    let redeemed = redeem_code(
        provider,
        &metadata,
        &code,
        &callback_url,
        Some(&pending.verifier),
    )
    .await;
    let tokens = match redeemed {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(deployment = %pending.deployment, %error, "code redemption failed");
            // A provider that cannot be reached has not refused anything:
            // the user may retry, so it is a 503, not a failed login.
            return if matches!(error, TokenRequestError::Unreachable(_)) {
                // The code and this login state are spent: a retry starts
                // the login again.
                refuse(
                    "provider_unreachable",
                    503,
                    "The identity provider cannot be reached. Start the login again shortly.",
                )
            } else {
                refuse(
                    "code_refused",
                    401,
                    "The identity provider did not accept the login. Start again.",
                )
            };
        }
    };
    let Some(id_token) = tokens.id_token else {
        return refuse(
            "no_id_token",
            401,
            "The identity provider returned no ID token.",
        );
    };
    let proof = establish::Proof {
        id_token: &id_token,
        nonce: Some(&pending.nonce),
        max_age: pending.max_age,
        refresh_token: tokens.refresh_token,
        access_token_lifetime: tokens.expires_in,
    };
    let session = match establish::establish(state, &deployment, proof, false).await {
        Ok(session) => session,
        Err(refused) => {
            let message = match refused {
                establish::Refused::Forbidden(_) => {
                    format!("You are logged in, but {}.", refused.description())
                }
                _ => capitalized(&refused.description()),
            };
            return refuse(refused.code(), refused.status(), &message);
        }
    };
    let id = session.id;
    let Some(sealed) = runtime.cookies.seal(&policy.session_name, id.as_bytes()) else {
        return refuse(
            "cookie_unsealable",
            503,
            "The session cookie could not be sealed.",
        );
    };
    state
        .metrics
        .logins
        .with_label_values(&[&pending.deployment, "ok"])
        .inc();
    tracing::info!(deployment = %pending.deployment, session = %id.public_id(), "login");
    redirect_to(
        &pending.rd,
        &[
            policy.set_cookie(&policy.session_name, &sealed, None),
            clear,
        ],
    )
}

/// `GET /.auth/me`
pub async fn me(state: &State, runtime: &Runtime, req: &RequestHeader) -> Response {
    let session = match session_from_cookie(state, runtime, req).await {
        Ok(session) => session,
        Err(_) => return store_unavailable(),
    };
    let Some(session) = session else {
        let body = Bytes::from(r#"{"error":"unauthorized","error_description":"no session"}"#);
        let mut header = ResponseHeader::build(401, Some(4)).expect("valid status");
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len().to_string());
        let _ = header.insert_header("cache-control", "no-store");
        let _ = header.insert_header("www-authenticate", r#"Bearer realm="portcullis""#);
        return (header, body);
    };
    let mut chosen: serde_json::Map<String, serde_json::Value> =
        ["email", "name", "groups", "preferred_username"]
            .iter()
            .filter_map(|k| session.claims.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
    // As the backend gets it in `X-Auth-Email-Verified`: portcullis's
    // reading (a boolean; a missing claim or "false" is false), and only
    // beside an email.
    if chosen.contains_key("email") {
        chosen.insert(
            "email_verified".into(),
            crate::policy::email_verified(session.claims.get("email_verified")).into(),
        );
    }
    let body = serde_json::json!({
        "subject": session.subject,
        "claims": chosen,
        "deployment": session.deployment,
        "session": session.id.public_id(),
        "expires_at": session.expires_at,
        "idle_expires_at": session.last_seen + session.idle_timeout_secs,
    });
    let body = Bytes::from(body.to_string());
    let mut header = ResponseHeader::build(200, Some(4)).expect("valid status");
    let _ = header.insert_header("content-type", "application/json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", "no-store");
    (header, body)
}

/// `GET|POST /.auth/logout?rd=`: ends the session everywhere (store, cookie,
/// live connections), then RP-initiated logout at the provider when it has
/// an `end_session_endpoint`. A cross-site request cannot log anyone out: a
/// POST must come from this origin, and a GET that is not a same-origin
/// navigation gets a confirmation page instead.
pub async fn logout(state: &State, runtime: &Runtime, req: &RequestHeader) -> Response {
    let Some((self_origin, _)) = public_origin(runtime) else {
        return page(
            503,
            "Logout unavailable",
            "Logout needs `public_url` in the configuration.",
        );
    };
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let same_origin = logout_from_this_site(
        &req.method,
        header("origin"),
        header("sec-fetch-site"),
        &self_origin,
    );
    let rd_param = query_param(req, "rd");
    if !same_origin {
        if req.method == http::Method::POST {
            return page(403, "Logout refused", "A logout must come from this site.");
        }
        return confirm_logout(rd_param.as_deref());
    }
    let policy = &runtime.cookie_policy;
    // Logging out means ending the session in the store: while it cannot
    // be reached, say so (and keep the cookie) rather than pretend.
    let Ok(session) = session_from_cookie(state, runtime, req).await else {
        return page(
            503,
            "Logout failed",
            "Logout is unavailable for a moment. Try again shortly.",
        );
    };
    let mut allowed = Vec::new();
    if let Some(s) = &session {
        if let Some(d) = runtime.deployment(&s.deployment) {
            allowed = allowed_origins(d);
        }
    }
    let rd = redirect::safe_redirect(rd_param.as_deref(), &self_origin, &allowed);
    let clear = policy.clear_cookie(&policy.session_name);
    let Some(session) = session else {
        return redirect_to(&rd, &[clear]);
    };
    if state
        .end_session(&session.id, EndReason::Logout, "logged out")
        .await
        .is_err()
    {
        return page(
            503,
            "Logout failed",
            "Logout is unavailable for a moment. Try again shortly.",
        );
    }
    // RP-initiated logout at the provider, returning to `rd` (absolute).
    let provider = runtime.providers.get(&session.provider);
    let end_session = provider
        .and_then(|p| p.metadata())
        .and_then(|m| m.end_session_endpoint.clone());
    let location = match (end_session, provider) {
        (Some(endpoint), Some(provider)) => {
            let absolute_rd = post_logout_redirect_uri(&rd, &self_origin);
            match url::Url::parse(&endpoint) {
                Ok(mut url) => {
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(hint) = &session.id_token {
                            q.append_pair("id_token_hint", hint);
                        }
                        q.append_pair("client_id", &provider.config.client_id);
                        q.append_pair("post_logout_redirect_uri", &absolute_rd);
                    }
                    url.to_string()
                }
                Err(_) => rd,
            }
        }
        _ => rd,
    };
    redirect_to(&location, &[clear])
}

fn confirm_logout(rd: Option<&str>) -> Response {
    let action = match rd {
        Some(rd) => format!(
            "/.auth/logout?rd={}",
            url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        ),
        None => "/.auth/logout".to_string(),
    };
    html_response(
        200,
        "Log out?",
        &format!(
            "<form method=\"post\" action=\"{}\"><button type=\"submit\">Log out</button></form>",
            escape_html(&action)
        ),
        &[
            ("x-frame-options", "DENY"),
            (
                "content-security-policy",
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(state: &str, created: u64) -> PendingLogin {
        PendingLogin {
            state: state.into(),
            deployment: "d".into(),
            rd: "/".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            created,
            max_age: None,
        }
    }

    #[test]
    fn only_states_shaped_as_ours_are_read() {
        assert!(is_login_state("abcdEFGH-_12"));
        assert!(is_login_state("abcdefgh"));
        for foreign in [
            "",
            "abcdefg",
            "abcd efgh",
            "abcdefg=",
            "abcdéfgh",
            "abc/defgh",
            "ab%2Fcdefg",
        ] {
            assert!(!is_login_state(foreign), "{foreign:?}");
        }
    }

    #[test]
    fn a_pending_login_answers_its_own_state_until_it_times_out() {
        let p = pending("state-one", 1_000);
        assert!(p.answers("state-one", 1_000));
        assert!(p.answers("state-one", 1_000 + LOGIN_TIMEOUT_SECS - 1));
        assert!(!p.answers("state-one", 1_000 + LOGIN_TIMEOUT_SECS));
        assert!(!p.answers("state-two", 1_000));
        // A state that shares the cookie name's first 8 bytes is still another login.
        assert!(!p.answers("state-oneX", 1_000));
        assert!(!pending("s", u64::MAX).answers("s", u64::MAX));
    }

    #[test]
    fn consent_is_asked_only_for_a_refresh_token_and_never_over_the_pages_choice() {
        let scopes = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let offline = scopes(&["openid", "offline_access"]);
        assert_eq!(
            authorization_prompt(None, &offline).as_deref(),
            Some("consent")
        );
        assert_eq!(
            authorization_prompt(None, &scopes(&["openid", "email"])),
            None
        );
        assert_eq!(
            authorization_prompt(Some("login".into()), &offline).as_deref(),
            Some("login")
        );
        assert_eq!(
            authorization_prompt(Some("none".into()), &scopes(&["openid"])).as_deref(),
            Some("none")
        );
    }

    #[test]
    fn the_oldest_pending_logins_make_room() {
        // Five in the header, oldest first (as browsers send them): four
        // stay with the new one, so the two oldest go.
        let header = vec![
            ("p-a", 10),
            ("p-b", 20),
            ("p-c", 30),
            ("p-d", 40),
            ("p-e", 50),
        ];
        assert_eq!(pending_logins_to_clear(header), ["p-b", "p-a"]);
        // Below the cap, nothing goes.
        assert!(pending_logins_to_clear(vec![("p-a", 10), ("p-b", 20), ("p-c", 30)]).is_empty());
        // Logins of the same second: the header's order decides, the first is the oldest.
        let same_second = vec![("p-a", 7), ("p-b", 7), ("p-c", 7), ("p-d", 7)];
        assert_eq!(pending_logins_to_clear(same_second), ["p-a"]);
        // An unreadable cookie (time 0) goes first, wherever it is.
        let unreadable = vec![("p-a", 10), ("p-x", 0), ("p-b", 20), ("p-c", 30)];
        assert_eq!(pending_logins_to_clear(unreadable), ["p-x"]);
    }

    #[test]
    fn logouts_are_believed_from_this_site_only() {
        let site = "https://chat.example.com";
        let post = http::Method::POST;
        let get = http::Method::GET;
        assert!(logout_from_this_site(&post, Some(site), None, site));
        assert!(logout_from_this_site(
            &post,
            Some("HTTPS://CHAT.example.com"),
            None,
            site
        ));
        assert!(!logout_from_this_site(
            &post,
            Some("https://evil.example"),
            None,
            site
        ));
        assert!(!logout_from_this_site(
            &post,
            None,
            Some("same-origin"),
            site
        ));
        assert!(!logout_from_this_site(&post, Some("null"), None, site));
        assert!(logout_from_this_site(&get, None, Some("same-origin"), site));
        assert!(!logout_from_this_site(&get, Some(site), None, site));
        assert!(!logout_from_this_site(&get, None, Some("cross-site"), site));
        assert!(!logout_from_this_site(&get, None, None, site));
    }

    #[test]
    fn after_the_providers_logout_a_path_returns_to_the_sites_root() {
        let site = "https://chat.example.com";
        assert_eq!(
            post_logout_redirect_uri("/", site),
            "https://chat.example.com/"
        );
        assert_eq!(
            post_logout_redirect_uri("/bye?x=1", site),
            "https://chat.example.com/"
        );
        assert_eq!(
            post_logout_redirect_uri("https://shop.example.com/bye", site),
            "https://shop.example.com/bye"
        );
    }

    #[test]
    fn page_text_is_escaped_and_descriptions_become_sentences() {
        assert_eq!(
            escape_html(r#"<a href="x">&</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(capitalized("the code was refused"), "The code was refused.");
        assert_eq!(capitalized(""), "");
    }
}

/// Property tests (issue 13 item 10): login state from the provider's answer.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn pending(state: &str, created: u64) -> PendingLogin {
        PendingLogin {
            state: state.into(),
            deployment: "d".into(),
            rd: "/".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            created,
            max_age: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every state `start` makes is read; anything accepted can be
        /// sliced for the cookie name and puts nothing but base64url in it.
        #[test]
        fn states_as_made_are_read(bytes in prop::collection::vec(any::<u8>(), 6..48)) {
            let state = b64(&bytes);
            prop_assert!(is_login_state(&state));
        }

        #[test]
        fn accepted_states_are_safe_to_slice(state in "\\PC{0,24}") {
            if is_login_state(&state) {
                let head = &state[..8];
                prop_assert!(head.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                prop_assert!(!state.contains(['=', ';', ',', ' ', '/', '%']));
            }
        }

        /// A pending login answers its own state only, only before its
        /// timeout, and never overflows on hostile `created` values.
        #[test]
        fn a_pending_login_answers_only_its_state_in_time(
            own in "[A-Za-z0-9_-]{8,16}", other in "\\PC{0,16}", created: u64, now: u64,
        ) {
            let p = pending(&own, created);
            prop_assert!(!(other != own && p.answers(&other, now)));
            let answers = p.answers(&own, now);
            prop_assert_eq!(answers, (now as u128) < created as u128 + LOGIN_TIMEOUT_SECS as u128 || created > u64::MAX - LOGIN_TIMEOUT_SECS && now < u64::MAX);
            if created <= u64::MAX - LOGIN_TIMEOUT_SECS {
                prop_assert!(!p.answers(&own, created + LOGIN_TIMEOUT_SECS));
            }
        }

        /// A sealed pending login survives the cookie round trip, and a
        /// cookie of another state opens to nothing.
        #[test]
        fn pending_logins_round_trip_only_under_their_cookie(
            state in "[A-Za-z0-9_-]{8,16}", other in "[A-Za-z0-9_-]{8,16}", created in 0u64..1 << 40,
        ) {
            let codec = crate::session::cookie::CookieCodec::new([3u8; 32], &[]).unwrap();
            let name = format!("p-login-{}", &state[..8]);
            let sealed = codec.seal(&name, &serde_json::to_vec(&pending(&state, created)).unwrap()).unwrap();
            let opened: PendingLogin = serde_json::from_slice(&codec.open(&name, &sealed).unwrap()).unwrap();
            prop_assert!(opened.answers(&state, created));
            let other_name = format!("p-login-{}", &other[..8]);
            if other_name != name {
                prop_assert_eq!(codec.open(&other_name, &sealed), None);
            }
        }
    }
}
