//! `POST /.auth/backchannel-logout` (OpenID Connect Back-Channel Logout
//! 1.0, SPEC §5): a provider tells portcullis that its user logged out.
//! The `logout_token` is verified with the provider's cached keys
//! (`token::logout`), its `jti` is claimed once in the shared store (a
//! replay is refused on every instance), and every matching session ends
//! through the one end path: its connections close with 4002 here, and on
//! every other instance through the store's events.
//!
//! The provider is the only client of this endpoint: answers are 200 or
//! 400 with `{error, error_description}` (§2.8), 503 when portcullis itself
//! cannot act now (keys or store unreachable) so the provider may retry;
//! always `Cache-Control: no-store`. Nothing from the token is echoed.

use super::{error, json, Request, Response};
use crate::runtime::{Runtime, State};
use crate::session::store::{SessionQuery, SingleUse};
use crate::session::{now, EndReason};
use crate::token::logout::{self, Refused};
use crate::token::TokenError;

/// Why a delivery was refused or could not be acted on.
enum Failure {
    /// The request is not a logout request at all.
    BadRequest(&'static str),
    Refused(Refused),
    /// Keys or store unreachable: not a verdict on the token.
    Unavailable(&'static str),
}

pub async fn logout(state: &State, runtime: &Runtime, req: &Request<'_>) -> Response {
    match act(state, runtime, req).await {
        Ok((provider, ended, closed)) => {
            count(state, &provider, "ok");
            tracing::info!(
                provider = %provider,
                sessions_ended = ended,
                closed_connections = closed,
                "back-channel logout"
            );
            json(200, &serde_json::json!({}), "no-store")
        }
        Err((provider, failure)) => {
            let provider = provider.as_deref().unwrap_or("-");
            let (status, code, description) = match failure {
                Failure::BadRequest(why) => (400, "invalid_request", why),
                Failure::Refused(refused) => (400, refused.code(), refused.description()),
                Failure::Unavailable(why) => (503, "temporarily_unavailable", why),
            };
            count(state, provider, code);
            tracing::warn!(
                provider,
                result = code,
                status,
                "back-channel logout refused"
            );
            error(status, code, description)
        }
    }
}

fn count(state: &State, provider: &str, result: &str) {
    state
        .metrics
        .backchannel_logouts
        .with_label_values(&[provider, result])
        .inc();
}

type Outcome = Result<(String, usize, usize), (Option<String>, Failure)>;

async fn act(state: &State, runtime: &Runtime, req: &Request<'_>) -> Outcome {
    let token = logout_token(req).map_err(|f| (None, f))?;
    let issuer = logout::unverified_issuer(&token).ok_or((
        None,
        Failure::Refused(Refused::Token(TokenError::Malformed)),
    ))?;
    // Every provider entry with this issuer is a candidate; the token's
    // `aud` (the client id) picks one. Sorted, so the choice is stable.
    let mut candidates: Vec<_> = runtime
        .providers
        .values()
        .filter(|p| p.config.issuer == issuer)
        .collect();
    candidates.sort_by(|a, b| a.name().cmp(b.name()));
    let mut last = Failure::Refused(Refused::UnknownIssuer);
    let mut verified = None;
    for provider in candidates {
        match logout::verify(provider, &token).await {
            Ok(token) => {
                verified = Some((provider, token));
                break;
            }
            Err(Refused::Token(TokenError::WrongAudience)) => {
                last = Failure::Refused(Refused::UnknownIssuer);
            }
            Err(Refused::Token(TokenError::ProviderUnavailable)) => {
                return Err((
                    Some(provider.name().to_string()),
                    Failure::Unavailable("the provider's keys are unavailable; retry later"),
                ));
            }
            Err(refused) => {
                return Err((Some(provider.name().to_string()), Failure::Refused(refused)));
            }
        }
    }
    let Some((provider, token)) = verified else {
        return Err((None, last));
    };
    let name = provider.name().to_string();
    let fail = |f: Failure| (Some(name.clone()), f);

    // One delivery per token, on every instance that shares the store.
    let replay_key = crate::token::sha256(format!("{issuer}\0{}", token.jti).as_bytes());
    let ttl = std::time::Duration::from_secs(token.replayable_until.saturating_sub(now()).max(1));
    match state
        .sessions
        .first_use(SingleUse::LogoutTokenId, replay_key, ttl)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(fail(Failure::Refused(Refused::Replayed))),
        Err(_) => {
            return Err(fail(Failure::Unavailable(
                "the session store is unavailable; retry later",
            )))
        }
    }
    let query = SessionQuery {
        provider: Some(&name),
        subject: token.subject.as_deref(),
        provider_sid: token.provider_sid.as_deref(),
    };
    match state
        .end_matching(
            &query,
            EndReason::ProviderLogout,
            "logged out at the provider",
        )
        .await
    {
        Ok((ended, closed)) => Ok((name, ended, closed)),
        Err(_) => {
            // Not every matching session ended: the provider's retry of
            // this very token must not be refused as a replay.
            let _ = state
                .sessions
                .forget_use(SingleUse::LogoutTokenId, replay_key)
                .await;
            Err(fail(Failure::Unavailable(
                "the session store is unavailable; retry later",
            )))
        }
    }
}

/// The one `logout_token` of a form-encoded body.
fn logout_token(req: &Request<'_>) -> Result<String, Failure> {
    let form = req
        .header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(Failure::BadRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut tokens = url::form_urlencoded::parse(&req.body)
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned());
    match (tokens.next(), tokens.next()) {
        (Some(token), None) if !token.is_empty() => Ok(token),
        (Some(_), Some(_)) => Err(Failure::BadRequest("logout_token is given more than once")),
        _ => Err(Failure::BadRequest("the body has no logout_token")),
    }
}
