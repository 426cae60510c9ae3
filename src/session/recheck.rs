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
        let lifetime = deployment.messenger.session.token_lifetime.as_secs();
        is_due(
            session.refresh_token.is_some(),
            session.checked_at,
            lifetime,
            now,
        )
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
        let retry_at =
            postponed_checked_at(now, deployment.messenger.session.token_lifetime.as_secs());
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
        Err(e) if ends_the_session(&e) => return end(state, &session, EndReason::Revoked).await,
        Err(e) => {
            tracing::warn!(session = %session.id.public_id(), error = %e, "session re-check postponed");
            return postpone(session).await;
        }
    };
    if let Some(id_token) = &tokens.id_token {
        match token::verify(provider, id_token).await {
            Ok(v) if vouches_for(v.kind, v.claims.str("sub"), &session.subject) => {
                session.claims = v.claims.to_map();
                session.id_token = Some(id_token.clone());
            }
            // A token for someone else, or one that does not verify: the
            // provider no longer vouches for this user.
            _ => return end(state, &session, EndReason::Revoked).await,
        }
    }
    let claims = session
        .claims
        .clone()
        .into_iter()
        .collect::<token::Claims>();
    if crate::policy::authorize(&deployment.messenger.authentication.require, &claims).is_err() {
        return end(state, &session, EndReason::Revoked).await;
    }
    let (claims, id_token, rotated) = (
        session.claims.clone(),
        session.id_token.clone(),
        tokens.refresh_token,
    );
    let renew = Box::new(move |s: &mut Session| {
        s.claims = claims.clone();
        s.id_token = id_token.clone();
        if let Some(rotated) = &rotated {
            s.refresh_token = Some(rotated.clone());
        }
        s.checked_at = now;
    });
    match state.sessions.update(&session.id, now, renew).await {
        Ok(Some(_)) => Outcome::Renewed,
        // Ended meanwhile (logout, expiry): nothing to renew.
        Ok(None) => Outcome::Gone,
        // The provider's renewed tokens and claims outgrow the session limit:
        // the session cannot keep vouching for this user (its old refresh
        // token may be spent), so it ends rather than retrying forever.
        Err(e @ crate::session::store::StoreError::TooLarge { .. }) => {
            tracing::warn!(session = %session.id.public_id(), error = %e, "session re-check refused");
            end(state, &session, EndReason::Revoked).await
        }
        Err(_) => Outcome::Postponed,
    }
}

/// Whether a session checked at `checked_at` is due at `now`: only one
/// with a refresh token can be re-checked at all.
fn is_due(has_refresh_token: bool, checked_at: u64, token_lifetime_secs: u64, now: u64) -> bool {
    has_refresh_token && now >= next_check(checked_at, token_lifetime_secs)
}

/// When a session checked at `checked_at` is due again.
fn next_check(checked_at: u64, token_lifetime_secs: u64) -> u64 {
    checked_at.saturating_add(token_lifetime_secs)
}

/// The `checked_at` that makes a session whose provider could not be asked
/// at `now` due again `RETRY_AFTER_OUTAGE_SECS` later, not a whole token
/// lifetime later.
fn postponed_checked_at(now: u64, token_lifetime_secs: u64) -> u64 {
    now.saturating_add(RETRY_AFTER_OUTAGE_SECS)
        .saturating_sub(token_lifetime_secs)
}

/// Whether the provider's answer to the refresh grant ends the session: a
/// refused grant does; a provider that refused for another reason (its
/// client configuration), could not be reached or answered nonsense does
/// not, since the user did nothing.
fn ends_the_session(error: &TokenRequestError) -> bool {
    matches!(error, TokenRequestError::InvalidGrant)
}

/// Whether a refreshed ID token still speaks for the session's user.
fn vouches_for(kind: TokenKind, subject: Option<&str>, session_subject: &str) -> bool {
    kind == TokenKind::Id && subject == Some(session_subject)
}

async fn end(state: &State, session: &Session, reason: EndReason) -> Outcome {
    // The provider refused: ended here whatever the store says (an
    // unreachable store is logged by `end_session`).
    let _ = state
        .end_session(&session.id, reason, "session revoked")
        .await;
    Outcome::Ended(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_due_once_per_token_lifetime_and_only_with_a_refresh_token() {
        assert!(!is_due(true, 1_000, 900, 1_899));
        assert!(is_due(true, 1_000, 900, 1_900));
        assert!(!is_due(false, 1_000, 900, 1_900), "nothing to redeem");
        assert!(!is_due(false, 0, 900, u64::MAX));
        // A check time near the end of the clock never wraps into "due".
        assert!(!is_due(true, u64::MAX - 1, 900, u64::MAX - 1));
    }

    #[test]
    fn after_an_outage_the_provider_is_asked_again_a_minute_later() {
        for lifetime in [5, 60, 900, 86_400] {
            let now = 1_700_000_000;
            let checked_at = postponed_checked_at(now, lifetime);
            assert_eq!(
                next_check(checked_at, lifetime),
                now + RETRY_AFTER_OUTAGE_SECS,
                "token_lifetime {lifetime}"
            );
        }
        // Early clocks do not wrap.
        assert_eq!(postponed_checked_at(10, 86_400), 0);
    }

    #[test]
    fn only_a_refused_grant_ends_the_session() {
        assert!(ends_the_session(&TokenRequestError::InvalidGrant));
        for kept in [
            TokenRequestError::Refused("invalid_client".into()),
            TokenRequestError::Unreachable("timed out".into()),
            TokenRequestError::Failed("not JSON".into()),
        ] {
            assert!(!ends_the_session(&kept), "{kept}");
        }
    }

    #[test]
    fn a_refreshed_id_token_must_be_the_same_users_id_token() {
        assert!(vouches_for(TokenKind::Id, Some("alice"), "alice"));
        assert!(!vouches_for(TokenKind::Id, Some("mallory"), "alice"));
        assert!(!vouches_for(TokenKind::Id, None, "alice"));
        assert!(!vouches_for(TokenKind::Access, Some("alice"), "alice"));
    }
}
