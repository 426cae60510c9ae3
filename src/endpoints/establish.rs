//! From a provider's ID token to a stored session: the one path that every
//! login takes (the browser callback, the token API's code exchange and its
//! ID-token variant), so the checks cannot drift apart. The ID token is
//! verified (signature, `iss`, `aud`/`azp`, `exp`), then its `nonce` against
//! the login's, its `auth_time` against `max_age`, and the messenger's
//! `require` rules; the session gets a fresh random id.

use crate::policy::PolicyFailure;
use std::sync::Arc;

use crate::runtime::{DeploymentRt, Runtime, State};
use crate::session::store::StoreError;
use crate::session::{now, Session, SessionId};
use crate::token::{self, TokenError, TokenKind, VerifiedToken};

/// Why a deployment cannot log anyone in (each caller words it its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLogin {
    Unknown,
    Inactive,
    /// Its messenger does not authenticate (or names no provider).
    AuthenticationOff,
}

/// The deployment a login (browser or token API) is for, if it takes logins.
pub fn login_deployment(runtime: &Runtime, id: &str) -> Result<Arc<DeploymentRt>, NoLogin> {
    let deployment = runtime.deployment(id).ok_or(NoLogin::Unknown)?;
    if !deployment.is_active() {
        return Err(NoLogin::Inactive);
    }
    if !deployment.requires_authentication() || deployment.provider.is_none() {
        return Err(NoLogin::AuthenticationOff);
    }
    Ok(deployment.clone())
}

/// What a login proved, before its ID token is checked.
pub struct Proof<'a> {
    pub id_token: &'a str,
    /// The nonce of the authorization request; `None` when the client did
    /// not say (the token API makes it optional, as the hosted product does).
    pub nonce: Option<&'a str>,
    /// `max_age` of the authorization request, in seconds.
    pub max_age: Option<u64>,
    /// The provider's refresh token, kept server-side for re-checks.
    pub refresh_token: Option<String>,
    /// The provider's access-token lifetime (`expires_in`).
    pub access_token_lifetime: Option<u64>,
}

/// Why a login was refused. `code` is the metric label, the log word and
/// the token API's `error`; nothing in it comes from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotAnIdToken,
    Token(TokenError),
    NonceMismatch,
    LoginTooOld,
    Forbidden(PolicyFailure),
    NoRandomness,
    StoreUnavailable,
    /// The session (mostly the provider's tokens and claims) is larger than
    /// a store keeps (`store::MAX_SESSION_BYTES`).
    SessionTooLarge,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Refused::NotAnIdToken => "not_an_id_token",
            Refused::Token(e) => e.code(),
            Refused::NonceMismatch => "nonce_mismatch",
            Refused::LoginTooOld => "login_too_old",
            Refused::Forbidden(why) => why.code(),
            Refused::NoRandomness => "no_randomness",
            Refused::StoreUnavailable => "store_unavailable",
            Refused::SessionTooLarge => "session_too_large",
        }
    }

    /// The HTTP status this refusal answers with.
    pub fn status(self) -> u16 {
        match self {
            Refused::Token(TokenError::ProviderUnavailable) => 503,
            // Final, and no fault of the server's or of the credentials:
            // the same login would be refused again.
            Refused::Forbidden(_) | Refused::SessionTooLarge => 403,
            Refused::NoRandomness | Refused::StoreUnavailable => 503,
            _ => 401,
        }
    }

    pub fn description(self) -> String {
        match self {
            Refused::NotAnIdToken => "the ID token is not meant for this client".into(),
            Refused::Token(e) => format!("the ID token was refused: {}", e.description()),
            Refused::NonceMismatch => "the ID token does not belong to this login".into(),
            Refused::LoginTooOld => "the provider's login is older than requested".into(),
            Refused::Forbidden(why) => format!("not allowed here: {}", why.description()),
            Refused::NoRandomness => "no randomness available".into(),
            Refused::StoreUnavailable => "the session could not be stored".into(),
            Refused::SessionTooLarge => format!(
                "the provider's tokens and claims for this user are larger than a session keeps ({} KiB)",
                crate::session::store::MAX_SESSION_BYTES / 1024
            ),
        }
    }
}

/// Verifies an ID token as the proof of a login for `deployment`.
pub async fn verify_login(
    deployment: &DeploymentRt,
    proof: &Proof<'_>,
) -> Result<VerifiedToken, Refused> {
    let provider = deployment
        .provider
        .as_ref()
        .ok_or(Refused::Token(TokenError::ProviderUnavailable))?;
    let verified = match token::verify(provider, proof.id_token).await {
        Ok(v) if v.kind == TokenKind::Id => v,
        Ok(_) => return Err(Refused::NotAnIdToken),
        Err(e) => return Err(Refused::Token(e)),
    };
    if let Some(nonce) = proof.nonce {
        if verified.claims.str("nonce") != Some(nonce) {
            return Err(Refused::NonceMismatch);
        }
    }
    if let Some(max_age) = proof.max_age {
        let skew = provider.config.clock_skew.as_secs();
        let fresh = verified
            .claims
            .number("auth_time")
            .is_some_and(|t| now() <= t.saturating_add(max_age).saturating_add(skew));
        if !fresh {
            return Err(Refused::LoginTooOld);
        }
    }
    crate::policy::authorize(
        &deployment.messenger.authentication.require,
        &verified.claims,
    )
    .map_err(Refused::Forbidden)?;
    Ok(verified)
}

/// Verifies the login and stores a new session for it. With
/// `ends_with_id_token` the session ends when the ID token does (an ID token
/// presented without a refresh token cannot be renewed), else at the
/// messenger's maximum lifetime.
pub async fn establish(
    state: &State,
    deployment: &DeploymentRt,
    proof: Proof<'_>,
    ends_with_id_token: bool,
) -> Result<Session, Refused> {
    let verified = verify_login(deployment, &proof).await?;
    // A new id for every login: a session id planted before login is worthless.
    let id = SessionId::random().ok_or(Refused::NoRandomness)?;
    let lifetimes = deployment.messenger.session;
    let started = now();
    let max_end = started + lifetimes.max_lifetime.as_secs();
    let session = Session {
        id,
        deployment: deployment.config.id.clone(),
        provider: verified.provider.to_string(),
        subject: verified.claims.str("sub").unwrap_or_default().to_string(),
        claims: verified.claims.to_map(),
        created_at: started,
        last_seen: started,
        expires_at: if ends_with_id_token {
            verified.expires_at.min(max_end)
        } else {
            max_end
        },
        idle_timeout_secs: lifetimes.idle_timeout.as_secs(),
        refresh_token: proof.refresh_token,
        id_token: Some(proof.id_token.to_string()),
        checked_at: started,
        provider_token_lifetime_secs: proof.access_token_lifetime,
    };
    state.sessions.save(&session).await.map_err(|e| match e {
        StoreError::TooLarge { bytes, limit } => {
            tracing::warn!(
                deployment = %deployment.config.id,
                bytes,
                limit,
                "login refused: session too large"
            );
            Refused::SessionTooLarge
        }
        StoreError::Unavailable(_) => Refused::StoreUnavailable,
    })?;
    Ok(session)
}
