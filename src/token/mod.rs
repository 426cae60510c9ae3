//! Tokens: verifying a provider's access and ID tokens (and caching the
//! result), and signing portcullis's own (`signing`).
//!
//! Verification order, cheapest and most hostile-input-proof first: size,
//! header (one parse), algorithm allow-list (`none` and HMAC never), key by
//! `kid` from the JWKS cache, the key's own type and `alg` against the
//! token's, signature, then claims (`iss` exact, `exp` required, `nbf`/`iat`
//! within the clock skew, `aud` against the provider's audiences or client id).
//! With a key prepared at fetch time, signature and claims are checked in
//! one pass over the token (`check_prepared`), by jsonwebtoken's rules.

pub mod logout;
pub mod messenger;
pub mod prepared;
pub mod signing;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::provider::jwks::KeyError;
use crate::provider::ProviderService;

/// A verified token's claims, sorted by name. Duplicate claim names are
/// refused while parsing: two `sub` values would let different readers see
/// different users.
///
/// A sorted slice rather than a map: a token's dozen or so claims are
/// parsed once, read by name a few times and kept for the token's life in
/// the token cache, where one allocation beats a tree's three nodes of
/// eleven slots each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(Box<[(String, Value)]>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(claim, _)| claim.as_str().cmp(name))
            .ok()
            .map(|at| &self.0[at].1)
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
    pub fn number(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(Value::as_u64)
    }
    /// `aud` as a list, whether the token has a string or an array.
    pub fn audiences(&self) -> Vec<&str> {
        match self.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    /// Every claim, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }
    /// Every claim as a JSON object (a session record keeps them so).
    pub fn to_map(&self) -> serde_json::Map<String, Value> {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.clone()))
            .collect()
    }
}

/// Claims from name–value pairs; of two with one name, the later stands
/// (as collecting into a map would have it).
impl FromIterator<(String, Value)> for Claims {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, Value)> = pairs.into_iter().collect();
        // Reversed, then a stable sort: of one name's run, the last given
        // comes first, and `dedup_by` keeps the first.
        pairs.reverse();
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        pairs.dedup_by(|later, kept| later.0 == kept.0);
        Claims(pairs.into_boxed_slice())
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut claims = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
                while let Some(claim) = map.next_entry::<String, Value>()? {
                    claims.push(claim);
                }
                claims.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
                if claims.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                    return Err(serde::de::Error::custom(DUPLICATE_CLAIM));
                }
                Ok(Claims(claims.into_boxed_slice()))
            }
        }
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

const DUPLICATE_CLAIM: &str = "duplicate claim";

/// What a bearer token turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `aud` names one of the provider's configured `audiences`.
    Access,
    /// `aud` names the provider's `client_id`.
    Id,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: Arc<Claims>,
    /// An opaque id derived from the token's hash (`t-` + 24 hex digits):
    /// the session id of a bearer-authenticated request, stable per token.
    pub session_id: String,
    pub kind: TokenKind,
    pub expires_at: u64,
    pub provider: Arc<str>,
}

/// Why a token was refused. The `code` goes into the 401 body, the log line
/// and the metric label; nothing about the token itself does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    /// `none`, HMAC, or an algorithm the provider is not configured to allow.
    AlgorithmNotAllowed,
    UnknownKey,
    /// The key cannot verify this algorithm (type, curve or its own `alg`).
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    DuplicateClaim,
    /// Signed by portcullis, but not a credential (an assertion).
    WrongTokenType,
    /// A provider ID token, where the messenger does not accept them.
    IdTokenNotAccepted,
    /// The token belongs to a session that has ended.
    SessionEnded,
    /// The provider's keys cannot be had: not a verdict on the token.
    ProviderUnavailable,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed => "token_malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeyMismatch => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::IssuedInFuture => "token_issued_in_future",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::DuplicateClaim => "duplicate_claim",
            TokenError::WrongTokenType => "wrong_token_type",
            TokenError::IdTokenNotAccepted => "id_token_not_accepted",
            TokenError::SessionEnded => "session_ended",
            TokenError::ProviderUnavailable => "provider_unavailable",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            TokenError::TooLarge => "the token is larger than allowed",
            TokenError::Malformed => "the token is not a well-formed JWT",
            TokenError::AlgorithmNotAllowed => "the token's signing algorithm is not allowed",
            TokenError::UnknownKey => {
                "the token was signed with a key the provider does not publish"
            }
            TokenError::KeyMismatch => "the provider's key does not fit the token's algorithm",
            TokenError::BadSignature => "the token's signature is invalid",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::IssuedInFuture => "the token claims to be issued in the future",
            TokenError::WrongIssuer => "the token was issued by another issuer",
            TokenError::WrongAudience => "the token is meant for another audience",
            TokenError::MissingClaim => "the token lacks a required claim",
            TokenError::DuplicateClaim => "the token repeats a claim",
            TokenError::WrongTokenType => "the token is not an access token",
            TokenError::IdTokenNotAccepted => "ID tokens are not accepted here",
            TokenError::SessionEnded => "the token's session has ended",
            TokenError::ProviderUnavailable => "the identity provider's keys are unavailable",
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `alg` of a token's header, read before anything else is trusted so
/// that `none` and HMAC are refused by name, whatever else the header says.
fn header_algorithm(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    header
        .get("alg")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(TokenError::Malformed)
}

/// `jsonwebtoken::decode_header`, with the same result, faster for the
/// usual header (`alg`, and `kid` and `typ` if any, nothing else): that one
/// is read into a small struct, without jsonwebtoken's buffering of every
/// member for its `extras`. Any other header (another member, a
/// repetition, a `null`…) is read by jsonwebtoken itself.
fn decode_header(token: &str) -> jsonwebtoken::errors::Result<jsonwebtoken::Header> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Usual {
        alg: Algorithm,
        kid: Option<String>,
        typ: Option<String>,
    }
    // Where jsonwebtoken finds the header: before the second-to-last dot.
    let part = token
        .rsplit_once('.')
        .and_then(|(message, _)| message.rsplit_once('.'))
        .map(|(header, _)| header);
    let mut buf = [0u8; 256];
    let usual = part.and_then(|part| {
        let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(part, &mut buf)
            .ok()?;
        let json = &buf[..len];
        // A derived struct would also read a JSON array (`["RS256","k1"]`),
        // which jsonwebtoken refuses: only an object is a usual header.
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice::<Usual>(json).ok()
    });
    match usual {
        // `null` reads as absent in both; a header without those members
        // is what jsonwebtoken would make of it too.
        Some(Usual { alg, kid, typ }) => {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid;
            header.typ = typ;
            Ok(header)
        }
        None => jsonwebtoken::decode_header(token),
    }
}

/// SHA-256 of `data`, as a fixed-size key (cache keys, stored hashes).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    digest_bytes(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// SHA-256 of two fields with a zero byte between them (`scope` a name:
/// a provider's, a key's id), as a fixed-size key.
pub fn sha256_scoped(scope: &[u8], data: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(scope);
    ctx.update(&[0]);
    ctx.update(data);
    digest_bytes(ctx.finish())
}

fn digest_bytes(digest: aws_lc_rs::digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `exp` of a token this program verified earlier (and kept), read
/// without verifying again.
pub fn recorded_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// The header of a token the provider signed, and the provider's key for
/// it: size, algorithm allow-list (never `none` or HMAC) and key lookup,
/// before anything in the token is trusted.
pub(crate) async fn provider_key(
    provider: &ProviderService,
    token: &str,
) -> Result<
    (
        jsonwebtoken::Header,
        Arc<crate::provider::jwks::VerifyingKey>,
    ),
    TokenError,
> {
    let config = &provider.config;
    if token.len() > config.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    // One parse of the header on the way in (jsonwebtoken's). A header it
    // cannot read is read again by name only, so that `none` (which
    // jsonwebtoken does not know) and HMAC in any spelling are refused as
    // algorithms, never taken for mere malformation.
    let header = match decode_header(token) {
        Ok(header) => header,
        Err(_) => {
            let alg_name = header_algorithm(token)?;
            let refused = alg_name.eq_ignore_ascii_case("none")
                || alg_name.to_ascii_uppercase().starts_with("HS")
                || !config.algorithms.contains(&alg_name);
            return Err(if refused {
                TokenError::AlgorithmNotAllowed
            } else {
                TokenError::Malformed
            });
        }
    };
    let hmac = matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let allowed = config
        .algorithms
        .iter()
        .any(|name| name.parse::<Algorithm>().is_ok_and(|a| a == header.alg));
    if hmac || !allowed {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let key = provider
        .key_for(header.kid.as_deref(), header.alg)
        .await
        .map_err(|e| match e {
            KeyError::Unavailable => TokenError::ProviderUnavailable,
            KeyError::UnknownKid => TokenError::UnknownKey,
            KeyError::Mismatch | KeyError::Ambiguous => TokenError::KeyMismatch,
        })?;
    Ok((header, key))
}

/// Verifies a provider-issued token.
///
/// The header is parsed once (`provider_key`) and, when the key
/// was parsed at fetch time, the signature and claims are checked in one
/// pass over the token ([`check_prepared`]) instead of through
/// `jsonwebtoken::decode`, which parses the header again and the claims
/// twice. The rules are jsonwebtoken's, in its order; a token whose
/// registered claims have an unusual type takes jsonwebtoken's own path,
/// so its verdict stays exactly what it was.
pub async fn verify(provider: &ProviderService, token: &str) -> Result<VerifiedToken, TokenError> {
    let config = &provider.config;
    let (header, key) = provider_key(provider, token).await?;
    let issuer = config.issuer.as_str();
    let skew = config.clock_skew;
    let fast = match key.prepared(header.alg) {
        Some(prepared) => check_prepared(token, &header, prepared, issuer, skew)?,
        None => None,
    };
    let (claims, token_sha256) = match fast {
        Some(Checked {
            claims,
            token_sha256,
        }) => (claims, token_sha256),
        None => {
            let claims = prepared::with_verifier(&key.key, key.prepared(header.alg), || {
                check_signature_and_time(token, &key.key, header.alg, issuer, skew)
            })?;
            (claims, sha256(token.as_bytes()))
        }
    };
    let kind = audience_kind(&claims, &config.audiences, &config.client_id)?;
    let expires_at = claims.number("exp").ok_or(TokenError::MissingClaim)?;
    Ok(VerifiedToken {
        claims: Arc::new(claims),
        session_id: bearer_session_id(&token_sha256),
        kind,
        expires_at,
        provider: provider.shared_name(),
    })
}

/// What every bearer session id starts with (a login session's starts
/// with `s-`).
pub const BEARER_SESSION_PREFIX: &str = "t-";

/// `t-` and the first 24 hex digits of the token's SHA-256: opaque, stable
/// per token (backends have seen these ids; the cache key, which also
/// hashes the provider's name, cannot stand in for it).
#[cfg(test)]
fn token_session_id(token: &str) -> String {
    bearer_session_id(&sha256(token.as_bytes()))
}

/// [`token_session_id`] from the token's SHA-256 (`token_sha256`), which
/// the signature check may have computed on its way.
fn bearer_session_id(token_sha256: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(2 + 24);
    id.push_str(BEARER_SESSION_PREFIX);
    for byte in &token_sha256[..12] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

/// `check_signature_and_time` for a token whose header `provider_key`
/// parsed and whose key was parsed when its set was fetched, in one pass:
/// the same checks as `jsonwebtoken::decode` with the same `Validation`,
/// in the same order, with the same outcome, but the header not parsed
/// again and the claims parsed once (into the map portcullis keeps).
///
/// `Ok(None)` when a registered claim jsonwebtoken reads (`exp`, `nbf`,
/// `sub`, `iss`) is there with a type other than the usual one (a number
/// that is not a `u64`, a `sub` that is not a string, a `null`…): how
/// jsonwebtoken treats those depends on its parser's details, so the
/// caller hands such a token to jsonwebtoken itself.
pub(crate) fn check_prepared(
    token: &str,
    header: &jsonwebtoken::Header,
    verifier: &prepared::PreparedVerifier,
    issuer: &str,
    skew: Duration,
) -> Result<Option<Checked>, TokenError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // As jsonwebtoken splits: the signature after the last dot, the
    // payload after the one before. `provider_key` read a header without
    // a dot (base64url has none), so these are the token's three parts.
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (_, payload) = message.rsplit_once('.').ok_or(TokenError::Malformed)?;
    // jsonwebtoken's `Header::from_encoded` checks (RFC 7515 `b64` and
    // `crit`), which `decode_header` leaves out.
    header_extensions_supported(header)?;
    // `verify_signature_body`: the algorithm is the verifier's (the caller
    // found the key by it); the signature's base64, then the signature.
    if verifier.algorithm() != header.alg {
        return Err(TokenError::KeyMismatch);
    }
    let signature_bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let token_sha256 = if verifier.hashes_with_sha256() {
        // The token's own SHA-256 (its session id) begins with the signing
        // input's: hash that once, check the signature over it, go on.
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        hash.update(message.as_bytes());
        if !verifier.verifies_digest(&hash.clone().finish(), &signature_bytes) {
            return Err(TokenError::BadSignature);
        }
        hash.update(b".");
        hash.update(signature.as_bytes());
        digest_bytes(hash.finish())
    } else {
        if !verifier.verifies(message.as_bytes(), &signature_bytes) {
            return Err(TokenError::BadSignature);
        }
        sha256(token.as_bytes())
    };
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|e| {
        if e.to_string().contains(DUPLICATE_CLAIM) {
            TokenError::DuplicateClaim
        } else {
            TokenError::Malformed
        }
    })?;
    // jsonwebtoken's `validate`, for the registered claims it reads, when
    // each is absent or of its usual type.
    let exp = match numeric_claim(&claims, "exp") {
        Spec::Absent => None,
        Spec::Usual(exp) => Some(exp),
        Spec::Unusual => return Ok(None),
    };
    let nbf = match numeric_claim(&claims, "nbf") {
        Spec::Absent => None,
        Spec::Usual(nbf) => Some(nbf),
        Spec::Unusual => return Ok(None),
    };
    let (sub, iss) = match (string_claim(&claims, "sub"), string_claim(&claims, "iss")) {
        (Spec::Unusual, _) | (_, Spec::Unusual) => return Ok(None),
        (sub, iss) => (sub, iss),
    };
    // Required: `exp`, `iss`, `sub`.
    let (Some(exp), Spec::Usual(iss), Spec::Usual(sub)) = (exp, iss, sub) else {
        return Err(TokenError::MissingClaim);
    };
    let now = jsonwebtoken::get_current_timestamp();
    let leeway = skew.as_secs();
    if exp < now.saturating_sub(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if iss != issuer {
        return Err(TokenError::WrongIssuer);
    }
    // portcullis's own rules on top, as `check_signature_and_time` has them.
    if sub.is_empty() {
        return Err(TokenError::MissingClaim);
    }
    if claims
        .number("iat")
        .is_some_and(|iat| iat > now_unix() + leeway)
    {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(Some(Checked {
        claims,
        token_sha256,
    }))
}

/// What [`check_prepared`] found in a token that passed.
pub(crate) struct Checked {
    pub claims: Claims,
    /// The whole token's SHA-256, hashed on the way.
    pub token_sha256: [u8; 32],
}

/// A registered claim as jsonwebtoken reads it: absent, of its usual type
/// (with the value), or anything else.
enum Spec<T> {
    Absent,
    Usual(T),
    Unusual,
}

fn numeric_claim(claims: &Claims, name: &str) -> Spec<u64> {
    match claims.get(name) {
        None => Spec::Absent,
        Some(value) => value.as_u64().map_or(Spec::Unusual, Spec::Usual),
    }
}

fn string_claim<'a>(claims: &'a Claims, name: &str) -> Spec<&'a str> {
    match claims.get(name) {
        None => Spec::Absent,
        Some(Value::String(s)) => Spec::Usual(s.as_str()),
        Some(_) => Spec::Unusual,
    }
}

/// The header checks `jsonwebtoken::decode` makes besides the algorithm:
/// `b64`, if present, must be `true`, and `crit` may only be `["b64"]`
/// with `b64` present (RFC 7515 §4.1.11, RFC 7797). Malformed otherwise,
/// as jsonwebtoken's `InvalidToken` is.
fn header_extensions_supported(header: &jsonwebtoken::Header) -> Result<(), TokenError> {
    let b64 = header
        .extras
        .get::<bool>("b64")
        .map_err(|_| TokenError::Malformed)?;
    if b64 == Some(false) {
        return Err(TokenError::Malformed);
    }
    if let Some(crit) = &header.crit {
        if crit.len() != 1 || crit[0] != "b64" || b64.is_none() {
            return Err(TokenError::Malformed);
        }
    }
    Ok(())
}

/// Signature, `iss`, `exp`, `nbf` and `iat`; shared with portcullis's own tokens.
pub fn check_signature_and_time(
    token: &str,
    key: &jsonwebtoken::DecodingKey,
    alg: Algorithm,
    issuer: &str,
    skew: Duration,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(alg);
    validation.leeway = skew.as_secs();
    validation.validate_nbf = true;
    // Audiences are checked by the caller, which knows what each one means.
    validation.validate_aud = false;
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
            ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
            ErrorKind::Json(inner) if inner.to_string().contains(DUPLICATE_CLAIM) => {
                TokenError::DuplicateClaim
            }
            _ => TokenError::Malformed,
        })?;
    let claims = data.claims;
    // jsonwebtoken also passes an `iss` array holding the issuer; SPEC §4
    // wants the issuer itself (and the identity reads it as a string).
    if claims.str("iss") != Some(issuer) {
        return Err(TokenError::WrongIssuer);
    }
    if claims.str("sub").is_none_or(str::is_empty) {
        return Err(TokenError::MissingClaim);
    }
    if claims
        .number("iat")
        .is_some_and(|iat| iat > now_unix() + skew.as_secs())
    {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(claims)
}

/// Access token when `aud` names a configured audience; ID token when it
/// names the client id (and, with several audiences, `azp` is the client).
pub fn audience_kind(
    claims: &Claims,
    audiences: &[String],
    client_id: &str,
) -> Result<TokenKind, TokenError> {
    let aud = claims.audiences();
    if aud.iter().any(|a| audiences.iter().any(|c| c == a)) {
        return Ok(TokenKind::Access);
    }
    if aud.contains(&client_id) {
        let azp_ok = match claims.str("azp") {
            Some(azp) => azp == client_id,
            None => aud.len() == 1,
        };
        if azp_ok {
            return Ok(TokenKind::Id);
        }
    }
    Err(TokenError::WrongAudience)
}

/// Verified tokens, keyed by the token itself and kept no longer than the
/// token lives, so a repeated request costs one lookup: moka hashes the
/// token with a randomly keyed hasher and compares keys by equality, so a
/// hit is the very token verified, whatever the hash.
///
/// One cache serves every provider: an entry is a hit only for the
/// provider that verified it (a token names its issuer, so in practice it
/// verifies under one provider; two providers sharing an issuer and keys
/// would take turns with such a token's entry, never share it).
///
/// Each entry has room for one thing the caller derives from the token for
/// one deployment (`R`: the proxy keeps the identity it rendered there,
/// once the deployment's policy allowed the token; see
/// [`CachedToken::kept_for`]).
pub struct TokenCache<R = ()> {
    cache: moka::sync::Cache<Arc<str>, Arc<CachedToken<R>>, ahash::RandomState>,
    metrics: Arc<Metrics>,
    /// `portcullis_token_cache_total{result}`, resolved on first use (a
    /// series appears only once it counts something) and then kept: the
    /// label lookup would be on every bearer request.
    hits: OnceLock<prometheus::IntCounter>,
    misses: OnceLock<prometheus::IntCounter>,
}

/// A verification as the token cache keeps it (it reads as the
/// [`VerifiedToken`]), with the token it is of and its slot for one
/// deployment.
pub struct CachedToken<R> {
    pub verified: VerifiedToken,
    /// The token, shared with the cache's key.
    token: Arc<str>,
    /// SHA-256 of provider and token, once asked for ([`Self::digest`]).
    digest: OnceLock<[u8; 32]>,
    /// The first deployment that asked to keep something, and that thing.
    kept: OnceLock<(Arc<str>, Arc<R>)>,
}

impl<R> std::ops::Deref for CachedToken<R> {
    type Target = VerifiedToken;
    fn deref(&self) -> &VerifiedToken {
        &self.verified
    }
}

impl<R> CachedToken<R> {
    pub fn new(token: Arc<str>, verified: VerifiedToken) -> Self {
        CachedToken {
            verified,
            token,
            digest: OnceLock::new(),
            kept: OnceLock::new(),
        }
    }

    /// SHA-256 of provider and token (`TokenCache::key`): the key of the
    /// per-token records (ended ID tokens in the session stores, identities
    /// kept per token and deployment). Hashed on first use, since an access
    /// token presented to one deployment needs neither.
    pub fn digest(&self) -> [u8; 32] {
        *self
            .digest
            .get_or_init(|| TokenCache::key(&self.verified.provider, &self.token))
    }

    /// What was kept for `deployment` (by its label), if anything.
    pub fn kept_for(&self, deployment: &str) -> Option<&Arc<R>> {
        self.kept
            .get()
            .filter(|(label, _)| **label == *deployment)
            .map(|(_, value)| value)
    }

    /// Whether some deployment's value is kept.
    pub fn is_kept(&self) -> bool {
        self.kept.get().is_some()
    }

    /// Keeps `value` for `deployment` if nothing is kept yet (the slot is
    /// set once: a token used on several deployments keeps the first's),
    /// and returns what is now kept for `deployment`: `value`, or what a
    /// concurrent request kept for it first; `None` when the slot holds
    /// another deployment's.
    pub fn keep_for(&self, deployment: Arc<str>, value: Arc<R>) -> Option<&Arc<R>> {
        let label = Arc::clone(&deployment);
        let _ = self.kept.set((deployment, value));
        self.kept_for(&label)
    }
}

struct UntilExpiry;

impl<R> moka::Expiry<Arc<str>, Arc<CachedToken<R>>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<CachedToken<R>>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            Duration::from_secs(value.expires_at.saturating_sub(now_unix()))
                .min(MAX_CACHE_LIFETIME),
        )
    }
}

/// A cached verification is repeated at least this often, so a key removed
/// from the provider's set stops working within this time.
const MAX_CACHE_LIFETIME: Duration = Duration::from_secs(300);

/// What an entry of the token cache is weighed at, in bytes: six times
/// the token's length and 1 KiB. Measured for tokens of 1.3 to 12 KB: the
/// token (the key) once, its claims parsed about 2 to 3 times its length,
/// the identity kept in its slot about 1.5 times before its assertion
/// (which carries the claims again), and under 1 KiB of fixed parts (the
/// session id, the provider's name, moka's entry).
pub(crate) fn entry_weight(token: &str) -> u32 {
    let bytes = token
        .len()
        .saturating_mul(WEIGHT_PER_TOKEN_BYTE)
        .saturating_add(ENTRY_FIXED_BYTES);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

const WEIGHT_PER_TOKEN_BYTE: usize = 6;
const ENTRY_FIXED_BYTES: usize = 1024;

impl TokenCache {
    /// SHA-256 of provider and token: the token's `digest`, the key of the
    /// per-token records (ended ID tokens in the session stores, rendered
    /// identities). Computed at most once per verification, never per
    /// request ([`CachedToken::digest`]).
    pub fn key(provider: &str, token: &str) -> [u8; 32] {
        sha256_scoped(provider.as_bytes(), token.as_bytes())
    }
}

impl<R: Send + Sync + 'static> TokenCache<R> {
    /// A cache of at most `max_bytes` of entries, as [`entry_weight`]
    /// weighs them.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        TokenCache {
            cache: moka::sync::Cache::<Arc<str>, Arc<CachedToken<R>>>::builder()
                .weigher(|token, _| entry_weight(token))
                .max_capacity(max_bytes)
                .expire_after(UntilExpiry)
                // Keyed at random per cache (HashDoS), and quicker than
                // std's SipHash on keys this long.
                .build_with_hasher(ahash::RandomState::new()),
            metrics,
            hits: OnceLock::new(),
            misses: OnceLock::new(),
        }
    }

    fn count(&self, slot: &OnceLock<prometheus::IntCounter>, result: &str) {
        slot.get_or_init(|| self.metrics.token_cache.with_label_values(&[result]))
            .inc();
    }

    /// A cached verification of `token`, or a fresh one (cached on success).
    pub async fn verify(
        &self,
        provider: &ProviderService,
        token: &str,
    ) -> Result<Arc<CachedToken<R>>, TokenError> {
        match self.cached(provider, token) {
            Some(hit) => Ok(hit),
            None => self.verify_uncached(provider, token).await,
        }
    }

    /// The cached verification of `token` by `provider`, without verifying
    /// on a miss (a hit is counted; `verify_uncached` counts the miss if it
    /// follows). Oversize tokens are not even looked up.
    pub fn cached(&self, provider: &ProviderService, token: &str) -> Option<Arc<CachedToken<R>>> {
        if token.len() > provider.config.max_token_bytes {
            return None;
        }
        let hit = self.cache.get(token)?;
        if *hit.provider != *provider.name() {
            return None;
        }
        // An entry lives until its token's exp; the skew is not extended here.
        if hit.expires_at <= now_unix() {
            return None;
        }
        self.count(&self.hits, "hit");
        Some(hit)
    }

    /// Verifies `token` afresh (after `cached` missed) and caches a success.
    pub async fn verify_uncached(
        &self,
        provider: &ProviderService,
        token: &str,
    ) -> Result<Arc<CachedToken<R>>, TokenError> {
        if token.len() > provider.config.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        self.count(&self.misses, "miss");
        let verified = verify(provider, token).await?;
        let token: Arc<str> = Arc::from(token);
        let verified = Arc::new(CachedToken::new(token.clone(), verified));
        self.cache.insert(token, verified.clone());
        Ok(verified)
    }

    /// Entries held, once pending inserts and removals are applied.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Drops every entry now (moka would otherwise free them only as the
    /// cache is used).
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
