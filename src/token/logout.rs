//! Logout tokens of OpenID Connect Back-Channel Logout 1.0 (§2.4, §2.6):
//! what a provider sends to `/.auth/backchannel-logout` to end its user's
//! sessions here. Verified with the provider's cached keys like any token
//! it signs, then held to the rules that keep a logout token from being
//! anything else (an ID token has no `events` and may carry a `nonce`; a
//! logout token must not) and from being replayed (`jti`, checked by the
//! caller against the shared store).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;

use super::{now_unix, provider_key, Claims, TokenError, DUPLICATE_CLAIM};
use crate::provider::ProviderService;

/// The member of `events` that makes a JWT a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token older than this (by its `iat`, beyond the clock skew) is
/// refused: it bounds how long its `jti` must be remembered.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// The longest `jti` accepted (the store keeps only its hash).
const MAX_JTI_BYTES: usize = 256;

/// What a verified logout token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    /// The provider's `sub`, when given.
    pub subject: Option<String>,
    /// The provider's session id (`sid`), when given.
    pub provider_sid: Option<String>,
    pub jti: String,
    /// Until when a replay could still verify (its `exp`, or `iat` +
    /// `MAX_AGE`, whichever is earlier), unix seconds.
    pub replayable_until: u64,
}

/// Why a logout token was refused. `code` goes into the 400 body and the
/// metric label; nothing from the token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The signature and the claims every provider token must pass.
    Token(TokenError),
    /// A `typ` header other than `logout+jwt` (or the generic `JWT`).
    WrongType,
    /// No `events` claim with the back-channel logout event.
    NotALogoutToken,
    /// A `nonce`, which logout tokens must not carry (§2.4).
    HasNonce,
    /// Neither `sub` nor `sid`.
    NoSubjectOrSession,
    /// No `jti`, or an unusable one.
    NoTokenId,
    /// `iat` missing or older than `MAX_AGE`.
    TooOld,
    /// No configured provider has this issuer and client.
    UnknownIssuer,
    /// This `jti` was seen before.
    Replayed,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Refused::Token(e) => e.code(),
            Refused::WrongType => "wrong_token_type",
            Refused::NotALogoutToken => "not_a_logout_token",
            Refused::HasNonce => "nonce_not_allowed",
            Refused::NoSubjectOrSession => "no_sub_or_sid",
            Refused::NoTokenId => "missing_jti",
            Refused::TooOld => "token_too_old",
            Refused::UnknownIssuer => "unknown_issuer",
            Refused::Replayed => "token_replayed",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Refused::Token(e) => e.description(),
            Refused::WrongType => "the token's typ is not logout+jwt",
            Refused::NotALogoutToken => "the token carries no back-channel logout event",
            Refused::HasNonce => "a logout token must not carry a nonce",
            Refused::NoSubjectOrSession => "the logout token names neither sub nor sid",
            Refused::NoTokenId => "the logout token has no usable jti",
            Refused::TooOld => "the logout token was issued too long ago",
            Refused::UnknownIssuer => "no configured provider has this issuer and client",
            Refused::Replayed => "this logout token was already received",
        }
    }
}

/// The `iss` of a token, unverified: which provider to verify it with.
pub fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Verifies `token` as a logout token from `provider`.
pub async fn verify(provider: &ProviderService, token: &str) -> Result<LogoutToken, Refused> {
    let config = &provider.config;
    let (header, key) = provider_key(provider, token)
        .await
        .map_err(Refused::Token)?;
    // Explicit typing (§2.4 recommends `logout+jwt`); a generic `JWT` or
    // none is allowed, since the claims below already tell the kinds apart.
    if let Some(typ) = header.typ.as_deref() {
        let typ = typ.to_ascii_lowercase();
        if typ != "logout+jwt" && typ != "application/logout+jwt" && typ != "jwt" {
            return Err(Refused::WrongType);
        }
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = config.clock_skew.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|e| {
            Refused::Token(match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
                ErrorKind::Json(inner) if inner.to_string().contains(DUPLICATE_CLAIM) => {
                    TokenError::DuplicateClaim
                }
                _ => TokenError::Malformed,
            })
        })?
        .claims;
    check_claims(&claims, config.clock_skew.as_secs(), now_unix())
}

/// The rules of §2.4 and §2.6 beyond signature, issuer, audience and expiry.
pub fn check_claims(claims: &Claims, skew: u64, now: u64) -> Result<LogoutToken, Refused> {
    let iat = claims.number("iat").ok_or(Refused::TooOld)?;
    if iat > now + skew {
        return Err(Refused::Token(TokenError::IssuedInFuture));
    }
    if iat + MAX_AGE.as_secs() + skew < now {
        return Err(Refused::TooOld);
    }
    let is_logout = claims
        .get("events")
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(serde_json::Value::is_object);
    if !is_logout {
        return Err(Refused::NotALogoutToken);
    }
    if claims.get("nonce").is_some() {
        return Err(Refused::HasNonce);
    }
    let non_empty = |name: &str| {
        claims
            .str(name)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let subject = non_empty("sub");
    let provider_sid = non_empty("sid");
    if subject.is_none() && provider_sid.is_none() {
        return Err(Refused::NoSubjectOrSession);
    }
    let jti = non_empty("jti")
        .filter(|j| j.len() <= MAX_JTI_BYTES)
        .ok_or(Refused::NoTokenId)?;
    let exp = claims.number("exp").unwrap_or(u64::MAX);
    Ok(LogoutToken {
        subject,
        provider_sid,
        jti,
        replayable_until: exp.saturating_add(skew).min(iat + MAX_AGE.as_secs() + skew),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> Claims {
        serde_json::from_value(value).unwrap()
    }

    fn good(now: u64) -> serde_json::Value {
        json!({
            "iss": "https://op", "aud": "rp", "iat": now - 5, "exp": now + 115,
            "jti": "j-1", "sub": "alice", "sid": "op-session",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        })
    }

    #[test]
    fn a_logout_token_names_its_subject_session_and_jti() {
        let now = 1_000_000;
        let token = check_claims(&claims(good(now)), 60, now).unwrap();
        assert_eq!(
            token,
            LogoutToken {
                subject: Some("alice".into()),
                provider_sid: Some("op-session".into()),
                jti: "j-1".into(),
                replayable_until: now + 115 + 60,
            }
        );
        // sid alone, or sub alone, is enough.
        for drop in ["sub", "sid"] {
            let mut c = good(now);
            c.as_object_mut().unwrap().remove(drop);
            assert!(check_claims(&claims(c), 60, now).is_ok(), "without {drop}");
        }
    }

    #[test]
    fn what_makes_a_token_not_a_logout_token_is_refused_by_name() {
        let now = 1_000_000;
        let refused = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good(now);
            change(&mut c);
            check_claims(&claims(c), 60, now).unwrap_err()
        };
        assert_eq!(
            refused(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
            Refused::NotALogoutToken,
            "an ID token has no events"
        );
        assert_eq!(
            refused(&|c| c["events"] = json!({BACKCHANNEL_LOGOUT_EVENT: "yes"})),
            Refused::NotALogoutToken,
            "the event's value is an object"
        );
        assert_eq!(
            refused(&|c| c["events"] = json!({"http://other/event": {}})),
            Refused::NotALogoutToken
        );
        assert_eq!(refused(&|c| c["nonce"] = json!("n")), Refused::HasNonce);
        assert_eq!(
            refused(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sub");
                o.insert("sid".into(), json!(""));
            }),
            Refused::NoSubjectOrSession
        );
        assert_eq!(
            refused(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            Refused::NoTokenId
        );
        assert_eq!(
            refused(&|c| c["jti"] = json!("x".repeat(MAX_JTI_BYTES + 1))),
            Refused::NoTokenId
        );
        assert_eq!(
            refused(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            Refused::TooOld
        );
        assert_eq!(
            refused(&|c| c["iat"] = json!(now - MAX_AGE.as_secs() - 61)),
            Refused::TooOld
        );
        assert_eq!(
            refused(&|c| c["iat"] = json!(now + 61)),
            Refused::Token(TokenError::IssuedInFuture)
        );
    }

    #[test]
    fn the_issuer_is_read_unverified_only_to_pick_a_provider() {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let token = format!("{}.{}.sig", b64(json!({"alg": "RS256"})), b64(good(1000)));
        assert_eq!(unverified_issuer(&token).as_deref(), Some("https://op"));
        assert_eq!(unverified_issuer("junk"), None);
        assert_eq!(unverified_issuer("a.%%%.c"), None);
    }
}
