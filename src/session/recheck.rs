//! Re-checking sessions with their provider. While a session lives,
//! portcullis redeems its refresh token at most once per `token_lifetime`,
//! one request at a time per session: a refused grant or a user who no
//! longer meets the messenger's rules ends the session (and closes its
//! connections); an unreachable provider does not, and is asked again a
//! minute later.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{EndReason, Session, SessionId};
use crate::provider::client::{token_request, TokenRequestError};
use crate::runtime::{DeploymentRt, State};
use crate::token::{self, TokenKind};

/// After a provider outage, the next re-check waits this long.
const RETRY_AFTER_OUTAGE_SECS: u64 = 60;

#[derive(Default)]
pub struct Rechecker {
    in_flight: Mutex<HashSet<SessionId>>,
}

/// What a re-check decided.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Renewed,
    Ended(EndReason),
    /// The provider could not be asked; the session stays as it is.
    Postponed,
    /// The session ended by other means while the provider was asked.
    Gone,
}

impl Rechecker {
    /// Whether the session is due for a re-check.
    pub fn due(session: &Session, deployment: &DeploymentRt, now: u64) -> bool {
        session.refresh_token.is_some()
            && now >= session.checked_at + deployment.messenger.session.token_lifetime.as_secs()
    }

    /// Starts a re-check in the background unless one runs for this session.
    pub fn spawn(&self, state: Arc<State>, session: Session, deployment: Arc<DeploymentRt>) {
        if !self.in_flight.lock().insert(session.id.clone()) {
            return;
        }
        tokio::spawn(async move {
            let id = session.id.clone();
            let outcome = recheck(&state, session, &deployment).await;
            tracing::debug!(?outcome, "session re-checked");
            state.rechecks.in_flight.lock().remove(&id);
        });
    }
}

/// Redeems the refresh token and applies the result.
pub async fn recheck(state: &State, mut session: Session, deployment: &DeploymentRt) -> Outcome {
    let now = super::now();
    let (Some(provider), Some(refresh)) = (&deployment.provider, session.refresh_token.clone())
    else {
        return Outcome::Postponed;
    };
    // The stored session may have changed while the provider was asked
    // (activity, a logout): only the re-check's own fields are written, and
    // only into a session that still exists.
    let postpone = |session: Session| async move {
        let retry_at = now.saturating_sub(deployment.messenger.session.token_lifetime.as_secs())
            + RETRY_AFTER_OUTAGE_SECS;
        let _ = state
            .sessions
            .update(
                &session.id,
                now,
                Box::new(move |s: &mut Session| s.checked_at = retry_at),
            )
            .await;
        Outcome::Postponed
    };
    let Ok(metadata) = provider.ensure_metadata().await else {
        return postpone(session).await;
    };
    let grant = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let tokens = match token_request(provider, &metadata, &grant).await {
        Ok(t) => t,
        Err(TokenRequestError::InvalidGrant) => {
            return end(state, &session, EndReason::Revoked).await
        }
        Err(
            TokenRequestError::Refused(e)
            | TokenRequestError::Unreachable(e)
            | TokenRequestError::Failed(e),
        ) => {
            tracing::warn!(session = %session.id.public_id(), error = %e, "session re-check postponed");
            return postpone(session).await;
        }
    };
    if let Some(id_token) = &tokens.id_token {
        match token::verify(provider, id_token).await {
            Ok(v)
                if v.kind == TokenKind::Id
                    && v.claims.str("sub") == Some(session.subject.as_str()) =>
            {
                session.claims = v.claims.0.clone().into_iter().collect();
                session.id_token = Some(id_token.clone());
            }
            // A token for someone else, or one that does not verify: the
            // provider no longer vouches for this user.
            _ => return end(state, &session, EndReason::Revoked).await,
        }
    }
    let claims = token::Claims(session.claims.clone().into_iter().collect());
    if crate::policy::authorize(&deployment.messenger.authentication.require, &claims).is_err() {
        return end(state, &session, EndReason::Revoked).await;
    }
    let (claims, id_token, rotated) = (session.claims, session.id_token, tokens.refresh_token);
    let renew = Box::new(move |s: &mut Session| {
        s.claims = claims;
        s.id_token = id_token;
        if let Some(rotated) = rotated {
            s.refresh_token = Some(rotated);
        }
        s.checked_at = now;
    });
    match state.sessions.update(&session.id, now, renew).await {
        Ok(Some(_)) => Outcome::Renewed,
        // Ended meanwhile (logout, expiry): nothing to renew.
        Ok(None) => Outcome::Gone,
        Err(_) => Outcome::Postponed,
    }
}

async fn end(state: &State, session: &Session, reason: EndReason) -> Outcome {
    state
        .end_session(&session.id, reason, "session revoked")
        .await;
    Outcome::Ended(reason)
}
