//! The token API (SPEC §3): how a site with its own login page, a
//! cross-origin chat widget or a mobile app gets a messenger token.
//!
//! - `POST /.auth/token`: the client hands over the authorization code it
//!   got from the deployment's provider; portcullis redeems it with its own
//!   client credentials, verifies the ID token, creates a session and
//!   answers `{"jwt", "refreshToken", "expiresIn"}`. With `{"idToken",
//!   "nonce"}` instead of a code, the ID token is verified directly and no
//!   refresh token is issued.
//! - `POST /.auth/token/refresh`: a new `jwt` and a new refresh token
//!   (rotation with reuse detection, `session::refresh`).
//! - `DELETE /.auth/token` with the `jwt` as bearer: the session ends
//!   everywhere, its live connections close with 4002.
//!
//! The hosted product's paths (`compat.hosted_paths`) take and give its
//! exact shapes; there, refresh answers `{"jwt"}` and the refresh token does
//! not rotate, since the hosted mobile SDK keeps its first one.
//!
//! Every refusal is a JSON `{"error", "error_description"}` (never a 500
//! for bad input, never an echo of a token or code), counted in
//! `portcullis_token_api_requests_total` and logged once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::establish::{self, Proof};
use super::{cors, error, error_retry_after, json, Flavor, Request, Response};
use crate::metrics::NO_DEPLOYMENT;
use crate::provider::client::{redeem_code, TokenRequestError};
use crate::runtime::{DeploymentRt, Runtime, State};
use crate::session::recheck::{self, Outcome, Rechecker};
use crate::session::refresh::{self, Presented, RefreshRecord};
use crate::session::{now, EndReason, Session};
use crate::token::messenger;

/// Bounds on the fields of a request body, before anything is looked up.
const MAX_CODE_BYTES: usize = 2048;
const MAX_URI_BYTES: usize = 2048;
const MAX_NONCE_BYTES: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExchangeBody {
    deployment_id: String,
    oauth: OAuth,
    /// The hosted product's journey tracking: accepted, not used.
    #[serde(default)]
    #[allow(dead_code)]
    journey_context: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OAuth {
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    nonce: Option<String>,
    max_age: Option<u64>,
    iss: Option<String>,
    id_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
    /// Required on portcullis's path; the hosted mobile SDK sends only the token.
    deployment_id: Option<String>,
}

/// A refused call: status, `error`, `error_description`.
struct Failure {
    status: u16,
    code: &'static str,
    description: String,
    /// `Retry-After` seconds (a rate limit says when; a 503 says 5).
    retry_after: Option<u64>,
}

fn fail(status: u16, code: &'static str, description: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        description: description.into(),
        retry_after: (status == 503).then_some(5),
    }
}

impl From<establish::Refused> for Failure {
    fn from(r: establish::Refused) -> Self {
        let code = match r {
            establish::Refused::Forbidden(_) => "access_denied",
            establish::Refused::SessionTooLarge => "session_too_large",
            establish::Refused::NoRandomness | establish::Refused::StoreUnavailable => {
                "temporarily_unavailable"
            }
            establish::Refused::Token(crate::token::TokenError::ProviderUnavailable) => {
                "provider_unavailable"
            }
            _ => "invalid_grant",
        };
        fail(r.status(), code, r.description())
    }
}

/// Parses a JSON body into `T`. Errors name the field, never its value
/// (a misplaced code must not come back in an error body).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    if body.is_empty() {
        return Err(fail(
            400,
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let description = match e.inner().classify() {
            serde_json::error::Category::Data if path != "." => {
                format!("`{path}` is missing, unknown or of the wrong type")
            }
            serde_json::error::Category::Data => {
                "the body lacks a required field or has one of the wrong type".to_string()
            }
            _ => "the body is not valid JSON".to_string(),
        };
        fail(400, "invalid_request", description)
    })?;
    de.end()
        .map_err(|_| fail(400, "invalid_request", "the body has trailing data"))?;
    Ok(parsed)
}

/// What every operation records when it ends.
struct Call<'a> {
    state: &'a State,
    operation: &'static str,
    started: Instant,
    /// Time spent waiting for the provider, left out of the duration metric.
    provider_time: Duration,
    /// The deployment, once the call has named a known one.
    deployment: Option<Arc<DeploymentRt>>,
}

impl<'a> Call<'a> {
    fn new(state: &'a State, operation: &'static str) -> Self {
        Call {
            state,
            operation,
            started: Instant::now(),
            provider_time: Duration::ZERO,
            deployment: None,
        }
    }

    fn label(&self) -> &str {
        self.deployment
            .as_ref()
            .map_or(NO_DEPLOYMENT, |d| d.label.as_ref())
    }

    /// Counts, times and logs the call, and renders its answer.
    fn finish(self, req: &Request<'_>, result: Result<Response, Failure>) -> Response {
        let metrics = &self.state.metrics;
        let (mut response, result) = match result {
            Ok(response) => (response, "ok"),
            Err(f) => {
                tracing::warn!(
                    operation = self.operation,
                    deployment = self.label(),
                    result = f.code,
                    status = f.status,
                    "token request refused"
                );
                let response = match f.retry_after {
                    Some(secs) => error_retry_after(f.status, f.code, &f.description, secs),
                    None => error(f.status, f.code, &f.description),
                };
                (response, f.code)
            }
        };
        metrics
            .token_api
            .with_label_values(&[self.label(), self.operation, result])
            .inc();
        metrics
            .token_api_duration
            .with_label_values(&[self.operation])
            .observe(
                self.started
                    .elapsed()
                    .saturating_sub(self.provider_time)
                    .as_secs_f64(),
            );
        if let Some(d) = &self.deployment {
            cors::decorate(&mut response.0, req.header, d);
        }
        response
    }
}

/// The deployment a call names, if it may use the token API from here.
/// Recorded on the call as soon as it is known, so that every later
/// answer (a 429 too) is labelled with it and readable by its pages.
fn api_deployment(
    state: &State,
    runtime: &Runtime,
    req: &Request<'_>,
    id: &str,
    call: &mut Call<'_>,
) -> Result<Arc<DeploymentRt>, Failure> {
    let deployment = establish::login_deployment(runtime, id).map_err(|why| match why {
        establish::NoLogin::Unknown => fail(404, "unknown_deployment", "no deployment has this id"),
        establish::NoLogin::Inactive => {
            fail(403, "deployment_inactive", "this deployment is inactive")
        }
        establish::NoLogin::AuthenticationOff => fail(
            400,
            "authentication_disabled",
            "this deployment does not use authentication",
        ),
    })?;
    call.deployment = Some(deployment.clone());
    if !cors::permits(&deployment, req.header) {
        return Err(fail(
            403,
            "origin_not_allowed",
            "this Origin is not allowed for the deployment",
        ));
    }
    if let Err(limited) = runtime.limiters.check_deployment(&deployment.config.id) {
        // Counted here by scope; `Call::finish` logs the refusal.
        state
            .metrics
            .rate_limited
            .with_label_values(&["token_api", limited.scope.label()])
            .inc();
        return Err(Failure {
            retry_after: Some(limited.retry_after),
            ..fail(429, "rate_limited", limited.description())
        });
    }
    Ok(deployment)
}

/// The lifetime of a messenger token issued now for `session`: the
/// messenger's `token_lifetime`, never past the provider's access token's
/// lifetime nor the session's end.
fn token_lifetime(deployment: &DeploymentRt, session: &Session, now: u64) -> u64 {
    let mut lifetime = deployment.messenger.session.token_lifetime.as_secs();
    if let Some(provider) = session.provider_token_lifetime_secs {
        lifetime = lifetime.min(provider);
    }
    lifetime.min(session.expires_at.saturating_sub(now))
}

/// Signs a messenger token for `session`: `(jwt, expiresIn)`.
fn issue(
    runtime: &Runtime,
    deployment: &DeploymentRt,
    session: &Session,
) -> Result<(String, u64), Failure> {
    let now = now();
    let lifetime = token_lifetime(deployment, session, now);
    if lifetime == 0 {
        return Err(fail(401, "invalid_grant", "the session has ended"));
    }
    let (jwt, _) = messenger::issue(
        &runtime.keys,
        &runtime.issuer,
        &session.subject,
        &deployment.config.id,
        &session.id.public_id(),
        now,
        lifetime,
    )
    .map_err(|_| {
        fail(
            503,
            "temporarily_unavailable",
            "the token could not be signed",
        )
    })?;
    Ok((jwt, lifetime))
}

/// `POST /.auth/token` (and the hosted exchange path).
pub async fn exchange(
    state: &Arc<State>,
    runtime: &Runtime,
    req: &Request<'_>,
    flavor: Flavor,
) -> Response {
    let mut call = Call::new(state, "exchange");
    let result = exchange_inner(state, runtime, req, flavor, &mut call).await;
    call.finish(req, result)
}

async fn exchange_inner(
    state: &State,
    runtime: &Runtime,
    req: &Request<'_>,
    flavor: Flavor,
    call: &mut Call<'_>,
) -> Result<Response, Failure> {
    let body: ExchangeBody = parse(&req.body)?;
    let deployment = api_deployment(state, runtime, req, &body.deployment_id, call)?;
    let provider = deployment.provider.clone().ok_or_else(|| {
        fail(
            503,
            "provider_unavailable",
            "the deployment has no provider",
        )
    })?;
    let oauth = body.oauth;
    let too_long = |v: &Option<String>, max: usize| v.as_ref().is_some_and(|s| s.len() > max);
    if too_long(&oauth.code, MAX_CODE_BYTES)
        || too_long(&oauth.redirect_uri, MAX_URI_BYTES)
        || too_long(&oauth.nonce, MAX_NONCE_BYTES)
        || too_long(&oauth.iss, MAX_URI_BYTES)
        || too_long(&oauth.id_token, provider.config.max_token_bytes)
    {
        return Err(fail(
            400,
            "invalid_request",
            "a field of `oauth` is too long",
        ));
    }
    let session = match (&oauth.code, &oauth.id_token) {
        (Some(code), None) => {
            let redirect_uri = oauth.redirect_uri.as_deref().ok_or_else(|| {
                fail(
                    400,
                    "invalid_request",
                    "`oauth.redirectUri` is required with a code",
                )
            })?;
            if !registered(&deployment, redirect_uri) {
                return Err(fail(
                    400,
                    "invalid_redirect_uri",
                    "`oauth.redirectUri` is not one of the deployment's redirect_uris",
                ));
            }
            if let Some(verifier) = &oauth.code_verifier {
                if !valid_verifier(verifier) {
                    return Err(fail(
                        400,
                        "invalid_request",
                        "`oauth.codeVerifier` must be 43 to 128 unreserved characters (RFC 7636)",
                    ));
                }
            }
            let provider_started = Instant::now();
            let metadata = provider.ensure_metadata().await.map_err(|_| {
                fail(
                    503,
                    "provider_unavailable",
                    "the identity provider cannot be reached",
                )
            })?;
            // RFC 9207: the authorization response names its issuer when the
            // provider says it does; a code from another issuer is refused
            // before it is sent anywhere.
            match &oauth.iss {
                Some(iss) if *iss != provider.config.issuer => {
                    return Err(fail(400, "invalid_issuer", "`oauth.iss` names another issuer"))
                }
                None if metadata.authorization_response_iss_parameter_supported => {
                    return Err(fail(
                        400,
                        "invalid_issuer",
                        "`oauth.iss` is required: the provider names its issuer in authorization responses (RFC 9207)",
                    ))
                }
                _ => {}
            }
            let redeemed = redeem_code(
                &provider,
                &metadata,
                code,
                redirect_uri,
                oauth.code_verifier.as_deref(),
            )
            .await;
            call.provider_time += provider_started.elapsed();
            let tokens = redeemed.map_err(|e| match e {
                TokenRequestError::InvalidGrant | TokenRequestError::Refused(_) => {
                    tracing::warn!(deployment = %deployment.label, error = %e, "code redemption refused");
                    fail(401, "invalid_grant", "the identity provider did not accept the code")
                }
                TokenRequestError::Unreachable(_) | TokenRequestError::Failed(_) => {
                    tracing::warn!(deployment = %deployment.label, error = %e, "code redemption failed");
                    fail(502, "provider_error", "the identity provider could not redeem the code")
                }
            })?;
            let id_token = tokens.id_token.ok_or_else(|| {
                fail(
                    401,
                    "invalid_grant",
                    "the identity provider returned no ID token",
                )
            })?;
            let proof = Proof {
                id_token: &id_token,
                nonce: oauth.nonce.as_deref(),
                max_age: oauth.max_age,
                refresh_token: tokens.refresh_token,
                access_token_lifetime: tokens.expires_in,
            };
            establish::establish(state, &deployment, proof, false).await?
        }
        (None, Some(id_token)) => {
            let nonce = oauth.nonce.as_deref().ok_or_else(|| {
                fail(
                    400,
                    "invalid_request",
                    "`oauth.nonce` is required with an ID token",
                )
            })?;
            if oauth.redirect_uri.is_some() || oauth.code_verifier.is_some() {
                return Err(fail(
                    400,
                    "invalid_request",
                    "an ID token comes without `redirectUri` or `codeVerifier`",
                ));
            }
            let proof = Proof {
                id_token,
                nonce: Some(nonce),
                max_age: oauth.max_age,
                refresh_token: None,
                access_token_lifetime: None,
            };
            establish::establish(state, &deployment, proof, true).await?
        }
        _ => {
            return Err(fail(
                400,
                "invalid_request",
                "`oauth` needs either `code` (with `redirectUri`) or `idToken` (with `nonce`)",
            ))
        }
    };
    let (jwt, expires_in) = issue(runtime, &deployment, &session)?;
    let refresh_token = if oauth.id_token.is_none() {
        let token = refresh::generate()
            .ok_or_else(|| fail(503, "temporarily_unavailable", "no randomness available"))?;
        let record = RefreshRecord {
            session: session.id.clone(),
            deployment: deployment.config.id.clone(),
            rotates: flavor == Flavor::Own,
            rotated_at: None,
            expires_at: session.expires_at,
        };
        state
            .sessions
            .save_refresh(refresh::hash(&token), record)
            .await
            .map_err(|_| {
                fail(
                    503,
                    "temporarily_unavailable",
                    "the session store cannot be reached",
                )
            })?;
        Some(token)
    } else {
        None
    };
    tracing::info!(deployment = %deployment.label, session = %session.id.public_id(), "token exchange");
    let mut answer = serde_json::json!({ "jwt": jwt });
    if let Some(token) = refresh_token {
        answer["refreshToken"] = token.into();
    }
    if flavor == Flavor::Own {
        answer["expiresIn"] = expires_in.into();
    }
    Ok(json(200, &answer, "no-store"))
}

/// Whether `uri` is one of the deployment's registered redirect URIs,
/// compared as parsed URLs (so `HTTPS://Host/` equals `https://host/`). A
/// registered `http` loopback IP literal matches on any port (RFC 8252
/// §7.3: a native app listens on a port the system gives it).
fn registered(deployment: &DeploymentRt, uri: &str) -> bool {
    let Ok(uri) = url::Url::parse(uri) else {
        return false;
    };
    deployment.config.redirect_uris.iter().any(|r| {
        if *r == uri {
            return true;
        }
        let loopback = |u: &url::Url| {
            u.scheme() == "http"
                && matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                    | matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        };
        if !(loopback(r) && loopback(&uri)) {
            return false;
        }
        let (mut a, mut b) = (r.clone(), uri.clone());
        a.set_port(None).is_ok() && b.set_port(None).is_ok() && a == b
    })
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `POST /.auth/token/refresh` (and the hosted refresh path).
pub async fn refresh(
    state: &Arc<State>,
    runtime: &Runtime,
    req: &Request<'_>,
    flavor: Flavor,
) -> Response {
    let mut call = Call::new(state, "refresh");
    let result = refresh_inner(state, runtime, req, flavor, &mut call).await;
    call.finish(req, result)
}

async fn refresh_inner(
    state: &Arc<State>,
    runtime: &Runtime,
    req: &Request<'_>,
    flavor: Flavor,
    call: &mut Call<'_>,
) -> Result<Response, Failure> {
    let body: RefreshBody = parse(&req.body)?;
    let refused = || fail(401, "invalid_grant", "the refresh token is not valid");
    if flavor == Flavor::Own && body.deployment_id.is_none() {
        return Err(fail(400, "invalid_request", "`deploymentId` is required"));
    }
    if !refresh::well_formed(&body.refresh_token) {
        return Err(refused());
    }
    let hash = refresh::hash(&body.refresh_token);
    let unavailable = |_| {
        fail(
            503,
            "temporarily_unavailable",
            "the session store cannot be reached",
        )
    };
    let record = state
        .sessions
        .load_refresh(&hash)
        .await
        .map_err(unavailable)?
        .ok_or_else(refused)?;
    if body
        .deployment_id
        .as_ref()
        .is_some_and(|d| *d != record.deployment)
    {
        return Err(refused());
    }
    let deployment = api_deployment(state, runtime, req, &record.deployment, call)?;
    let now = now();
    let mut session = state
        .sessions
        .load(&record.session, now)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| fail(401, "invalid_grant", "the session has ended"))?;
    if session.deployment != record.deployment {
        return Err(refused());
    }
    // Rotation first: whatever else happens, a token is presented once.
    let successor = if flavor == Flavor::Own && record.rotates {
        let before = state
            .sessions
            .rotate_refresh(&hash, now)
            .await
            .map_err(unavailable)?
            .ok_or_else(refused)?;
        let grace = deployment.messenger.session.refresh_reuse_grace.as_secs();
        match before.presented(now, grace) {
            Presented::Current => {
                let next = refresh::successor(&runtime.refresh_key, &body.refresh_token);
                let record = RefreshRecord {
                    rotated_at: None,
                    expires_at: session.expires_at,
                    ..record.clone()
                };
                state
                    .sessions
                    .save_refresh(refresh::hash(&next), record)
                    .await
                    .map_err(unavailable)?;
                Some(next)
            }
            Presented::WithinGrace => {
                let sessions = state.sessions.clone();
                let next = refresh::newest_successor(&runtime.refresh_key, &body.refresh_token, |h| {
                    let sessions = sessions.clone();
                    async move {
                        matches!(sessions.load_refresh(&h).await, Ok(Some(r)) if r.rotated_at.is_some())
                    }
                })
                .await;
                Some(next)
            }
            Presented::Reused => {
                // Only a copy can present a token rotated this long ago: the
                // session is no longer the user's alone.
                // Refused either way; a store that cannot record the end
                // leaves it to the session's own expiry (logged there).
                let _ = state
                    .end_session(&session.id, EndReason::Revoked, "session revoked")
                    .await;
                return Err(fail(
                    401,
                    "refresh_token_reused",
                    "the refresh token was already used; the session has ended",
                ));
            }
        }
    } else {
        None
    };
    // The provider is asked again once per token lifetime, as for browser
    // sessions; a refusal ends the session here, before a token is issued.
    if Rechecker::due(&session, &deployment, now) {
        let provider_started = Instant::now();
        let outcome = recheck::recheck(state, (*session).clone(), &deployment).await;
        call.provider_time += provider_started.elapsed();
        match outcome {
            Outcome::Ended(_) | Outcome::Gone => {
                return Err(fail(
                    401,
                    "invalid_grant",
                    "the identity provider ended the session",
                ))
            }
            Outcome::Renewed | Outcome::Postponed => {}
        }
        session = state
            .sessions
            .load(&record.session, now)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| fail(401, "invalid_grant", "the session has ended"))?;
    }
    // A refresh is activity: the session's idle clock starts again.
    if let Ok(Some(touched)) = state.sessions.touch(&session.id, now).await {
        session = touched;
    }
    let (jwt, expires_in) = issue(runtime, &deployment, &session)?;
    let answer = match flavor {
        Flavor::Hosted => serde_json::json!({ "jwt": jwt }),
        Flavor::Own => serde_json::json!({
            "jwt": jwt,
            "refreshToken": successor.unwrap_or(body.refresh_token),
            "expiresIn": expires_in,
        }),
    };
    Ok(json(200, &answer, "no-store"))
}

/// `DELETE /.auth/token` with `Authorization: Bearer <jwt>` (and the
/// hosted revoke path): the session ends everywhere.
pub async fn revoke(state: &Arc<State>, runtime: &Runtime, req: &Request<'_>) -> Response {
    let mut call = Call::new(state, "revoke");
    let result = revoke_inner(state, runtime, req, &mut call).await;
    call.finish(req, result)
}

async fn revoke_inner(
    state: &State,
    runtime: &Runtime,
    req: &Request<'_>,
    call: &mut Call<'_>,
) -> Result<Response, Failure> {
    let unauthorized = || fail(401, "invalid_token", "the token is not valid");
    let token = match crate::proxy::credential::extract(req.header, false) {
        Ok(Some(c)) if c.carrier == crate::proxy::credential::Carrier::AuthorizationHeader => {
            c.token
        }
        _ => {
            return Err(fail(
                401,
                "invalid_request",
                "`Authorization: Bearer <jwt>` is required",
            ))
        }
    };
    let claims = messenger::verify(&token, &runtime.keys, &runtime.issuer, None)
        .map_err(|_| unauthorized())?;
    let deployment = runtime.deployment(&claims.aud).ok_or_else(unauthorized)?;
    call.deployment = Some(deployment.clone());
    if !cors::permits(deployment, req.header) {
        return Err(fail(
            403,
            "origin_not_allowed",
            "this Origin is not allowed for the deployment",
        ));
    }
    let session = state
        .sessions
        .load_public(&claims.sid, now())
        .await
        .map_err(|_| {
            fail(
                503,
                "temporarily_unavailable",
                "the session store cannot be reached",
            )
        })?
        .filter(|s| s.deployment == claims.aud)
        .ok_or_else(unauthorized)?;
    state
        .end_session(&session.id, EndReason::Logout, "logged out")
        .await
        .map_err(|_| {
            fail(
                503,
                "temporarily_unavailable",
                "the session store cannot be reached",
            )
        })?;
    let mut header = pingora::http::ResponseHeader::build(204, Some(2)).expect("valid status");
    let _ = header.insert_header("cache-control", "no-store");
    let _ = header.insert_header("content-length", "0");
    Ok((header, bytes::Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_follow_rfc_7636() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"A-._~9".repeat(22)[..128]));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!valid_verifier(&format!("{}é", "a".repeat(43))));
    }

    #[test]
    fn redirect_uris_match_exactly_except_the_port_of_loopback_ips() {
        let config = crate::config::parse(
            r#"
listen: [{address: "127.0.0.1:8080"}]
providers:
  p: {issuer: "https://idp.example.com", client_id: c}
messengers:
  m: {authentication: {enabled: true, provider: p}}
upstreams:
  u: {servers: ["127.0.0.1:9"]}
deployments:
  - id: d
    messenger: m
    upstream: u
    allow_all_origins: true
    redirect_uris: ["https://www.example.com/cb", "http://127.0.0.1/callback", "http://[::1]/callback"]
routes: [{path_prefix: /v1}]
"#,
            std::path::Path::new("."),
            &crate::config::ProcessEnv,
        )
        .unwrap();
        let runtime =
            Runtime::build(config, None, &Arc::new(crate::metrics::Metrics::new())).unwrap();
        let d = runtime.deployment("d").unwrap();
        for good in [
            "https://www.example.com/cb",
            "HTTPS://WWW.EXAMPLE.COM/cb",
            "http://127.0.0.1:53123/callback",
            "http://127.0.0.1/callback",
            "http://[::1]:4000/callback",
        ] {
            assert!(registered(d, good), "{good}");
        }
        for bad in [
            "https://www.example.com/cb/",
            "https://www.example.com:8443/cb",
            "http://www.example.com/cb",
            "https://www.example.com/cb?x=1",
            "http://127.0.0.1:53123/other",
            "http://localhost:53123/callback",
            "https://127.0.0.1:53123/callback",
            "http://127.0.0.2:53123/callback",
            "not a url",
        ] {
            assert!(!registered(d, bad), "{bad}");
        }
    }

    #[test]
    fn body_errors_name_the_field_never_its_value() {
        let secret = "SECRET-CODE-VALUE";
        for body in [
            format!(r#"{{"deploymentId":"d","oauth":{{"maxAge":"{secret}"}}}}"#),
            format!(r#"{{"deploymentId":"d","oauth":{{"code":"{secret}","bogus":1}}}}"#),
            format!(r#"{{"deploymentId":"d","oauth":{{"code":"{secret}"}}}}xx"#),
            format!(r#"{{"deploymentId":["{secret}"],"oauth":{{}}}}"#),
            format!(r#"{{"oauth":{{"code":"{secret}"}}}}"#),
            format!(r#"not json {secret}"#),
            String::new(),
        ] {
            let Err(f) = parse::<ExchangeBody>(body.as_bytes()) else {
                panic!("accepted: {body}");
            };
            assert_eq!((f.status, f.code), (400, "invalid_request"), "{body}");
            assert!(!f.description.contains(secret), "{}", f.description);
        }
        let ok: ExchangeBody = parse(
            br#"{"deploymentId":"d","journeyContext":{"customer":{"id":"x"}},"oauth":{"code":"c","redirectUri":"https://a/cb","maxAge":30}}"#,
        )
        .unwrap_or_else(|f| panic!("{}", f.description));
        assert_eq!(ok.oauth.max_age, Some(30));
    }
}
