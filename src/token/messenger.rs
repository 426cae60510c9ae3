//! Messenger tokens: the short-lived `jwt` the token API hands a client
//! (SPEC §3), which then authenticates its messaging connection. An RFC 9068
//! access token (`typ: at+jwt`) signed with portcullis's own key, for one
//! deployment (`aud`), naming its session by public id (`sid`).
//!
//! Nothing else portcullis signs can pass for one: the assertion it hands
//! backends has its own `typ`, so it is refused as a credential; a token of
//! one deployment is refused on another. The token proves only who the
//! session belongs to: every use also finds the session still live.

use serde::{Deserialize, Serialize};

use super::signing::KeyRing;
use super::TokenError;

/// RFC 9068 §2.1: the header `typ` of a JWT access token.
pub const TYP: &str = "at+jwt";
/// Messenger tokens longer than this are refused before any parsing.
pub const MAX_BYTES: usize = 4096;
/// Clock skew tolerated between portcullis instances.
const LEEWAY_SECS: u64 = 5;

/// The claims of a messenger token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessengerClaims {
    pub iss: String,
    pub sub: String,
    /// The deployment id.
    pub aud: String,
    /// RFC 9068 requires it; the deployment is the client here.
    pub client_id: String,
    /// The session's public id.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Whose a bearer token is, judged from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Signed by a key portcullis does not hold: a provider's, or junk.
    Foreign,
    /// A messenger token of portcullis.
    Messenger,
    /// Signed by portcullis, but something else (an assertion): never a credential.
    OtherOfOurs,
}

/// Tells portcullis's own tokens from everything else by the header's key
/// id. Malformed headers are `Foreign`: the provider path refuses them.
pub fn origin(token: &str, keys: &KeyRing) -> Origin {
    // Most bearer tokens are a provider's: a look at the header's `kid`
    // alone (no allocation) settles those. Only a header this cannot read,
    // or one naming a key of ours, is parsed in full below, so the verdict
    // is the full parse's in every case.
    if kid_is_foreign(token, keys) {
        return Origin::Foreign;
    }
    origin_by_full_header(token, keys)
}

/// [`origin`] for a token whose header [`kid_is_foreign`] did not settle.
pub fn origin_by_full_header(token: &str, keys: &KeyRing) -> Origin {
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return Origin::Foreign;
    };
    let ours = header
        .kid
        .as_deref()
        .is_some_and(|k| keys.by_kid(k).is_some());
    match (ours, header.typ.as_deref()) {
        (false, _) => Origin::Foreign,
        (true, Some(typ)) if is_access_token_typ(typ) => Origin::Messenger,
        (true, _) => Origin::OtherOfOurs,
    }
}

/// Whether the header of `token` (the part before the second-to-last
/// dot, as jsonwebtoken reads it) is base64url JSON whose one `kid`, a
/// string or absent, names no key of `keys`. False when it cannot tell.
/// True settles that the token is not ours ([`origin`] says `Foreign`).
pub fn kid_is_foreign(token: &str, keys: &KeyRing) -> bool {
    use base64::Engine;
    #[derive(Deserialize)]
    struct KidOnly<'a> {
        #[serde(borrow)]
        kid: Option<std::borrow::Cow<'a, str>>,
    }
    let Some((header, _)) = token
        .rsplit_once('.')
        .and_then(|(message, _)| message.rsplit_once('.'))
    else {
        return false;
    };
    let mut buf = [0u8; 512];
    let Ok(len) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(header, &mut buf)
    else {
        return false;
    };
    match serde_json::from_slice::<KidOnly>(&buf[..len]) {
        Ok(header) => header.kid.is_none_or(|kid| keys.by_kid(&kid).is_none()),
        Err(_) => false,
    }
}

/// `at+jwt`, or its full media type, compared case-insensitively (RFC 9068 §4).
fn is_access_token_typ(typ: &str) -> bool {
    typ.eq_ignore_ascii_case(TYP) || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// Signs a messenger token for `sid` at `deployment`, living `lifetime` seconds.
pub fn issue(
    keys: &KeyRing,
    issuer: &str,
    subject: &str,
    deployment: &str,
    sid: &str,
    now: u64,
    lifetime: u64,
) -> Result<(String, MessengerClaims), String> {
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness available".to_string())?;
    let claims = MessengerClaims {
        iss: issuer.to_string(),
        sub: subject.to_string(),
        aud: deployment.to_string(),
        client_id: deployment.to_string(),
        sid: sid.to_string(),
        iat: now,
        exp: now + lifetime,
        jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let token = keys.current.sign(TYP, &claims)?;
    Ok((token, claims))
}

/// Verifies a messenger token: its `typ`, a key of ours by `kid`, the
/// signature, `iss`, `exp` and, when `deployment` is given, `aud`.
pub fn verify(
    token: &str,
    keys: &KeyRing,
    issuer: &str,
    deployment: Option<&str>,
) -> Result<MessengerClaims, TokenError> {
    if token.len() > MAX_BYTES {
        return Err(TokenError::TooLarge);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if !header.typ.as_deref().is_some_and(is_access_token_typ) {
        return Err(TokenError::WrongTokenType);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.by_kid(kid))
        .ok_or(TokenError::UnknownKey)?;
    if header.alg != key.alg {
        return Err(TokenError::KeyMismatch);
    }
    let mut validation = jsonwebtoken::Validation::new(key.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_aud = false;
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data = jsonwebtoken::decode::<MessengerClaims>(token, &key.decoding, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
            _ => TokenError::Malformed,
        },
    )?;
    let claims = data.claims;
    if deployment.is_some_and(|d| d != claims.aud) {
        return Err(TokenError::WrongAudience);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::signing::{SigningKey, ASSERTION_TYP};

    fn ring() -> KeyRing {
        KeyRing::from_config(None, &[], None).unwrap()
    }

    fn now() -> u64 {
        crate::session::now()
    }

    #[test]
    fn issued_tokens_verify_for_their_deployment_only() {
        let keys = ring();
        let (token, claims) =
            issue(&keys, "https://p", "alice", "dep-a", "s-1", now(), 300).unwrap();
        assert_eq!(origin(&token, &keys), Origin::Messenger);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(
            verify(&token, &keys, "https://p", Some("dep-a")),
            Ok(claims.clone())
        );
        assert_eq!(verify(&token, &keys, "https://p", None), Ok(claims));
        assert_eq!(
            verify(&token, &keys, "https://p", Some("dep-b")),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(&token, &keys, "https://other", Some("dep-a")),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn an_assertion_is_never_a_messenger_token() {
        let keys = ring();
        let claims = serde_json::json!({
            "iss": "https://p", "sub": "alice", "aud": "dep-a", "client_id": "dep-a",
            "sid": "s-1", "iat": now(), "exp": now() + 60, "jti": "x",
        });
        let assertion = keys.current.sign(ASSERTION_TYP, &claims).unwrap();
        assert_eq!(origin(&assertion, &keys), Origin::OtherOfOurs);
        assert_eq!(
            verify(&assertion, &keys, "https://p", Some("dep-a")),
            Err(TokenError::WrongTokenType)
        );
    }

    #[test]
    fn tokens_of_other_keys_expired_or_tampered_are_refused() {
        let keys = ring();
        let stranger = KeyRing {
            current: SigningKey::generate().unwrap(),
            previous: Vec::new(),
            generated: true,
        };
        let (foreign, _) = issue(&stranger, "https://p", "alice", "d", "s", now(), 300).unwrap();
        assert_eq!(origin(&foreign, &keys), Origin::Foreign);
        assert_eq!(
            verify(&foreign, &keys, "https://p", Some("d")),
            Err(TokenError::UnknownKey)
        );
        let (old, _) = issue(&keys, "https://p", "alice", "d", "s", now() - 400, 300).unwrap();
        assert_eq!(
            verify(&old, &keys, "https://p", Some("d")),
            Err(TokenError::Expired)
        );
        let (token, _) = issue(&keys, "https://p", "alice", "d", "s", now(), 300).unwrap();
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let (forged, _) = issue(&keys, "https://p", "mallory", "d", "s", now(), 300).unwrap();
        parts[1] = forged.split('.').nth(1).unwrap().to_string();
        assert_eq!(
            verify(&parts.join("."), &keys, "https://p", Some("d")),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&"a".repeat(MAX_BYTES + 1), &keys, "https://p", None),
            Err(TokenError::TooLarge)
        );
        assert_eq!(origin("junk", &keys), Origin::Foreign);
    }

    #[test]
    fn tokens_signed_by_a_retired_key_still_verify() {
        let old = ring();
        let (token, _) = issue(&old, "i", "alice", "d", "s", now(), 300).unwrap();
        let rotated = KeyRing {
            current: SigningKey::generate().unwrap(),
            previous: vec![old.current],
            generated: false,
        };
        assert!(verify(&token, &rotated, "i", Some("d")).is_ok());
    }
}
