//! The provider's shared state and the logic that is not HTTP: users,
//! claims, signing and verifying tokens, test controls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header, Validation};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Map, Value};

use super::keys::{KeyKind, KeyRing};
use super::store::{random_token, Store};
use super::{DevIdpOptions, DevUser};

/// Why a token was not signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    #[error("the development provider has no key for {0:?}")]
    NoKey(Algorithm),
    #[error("signing failed: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Why a token presented back to the provider was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("malformed token header")]
    Header,
    #[error("token has no kid")]
    NoKid,
    #[error("unknown kid")]
    UnknownKid,
    #[error("token invalid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

/// Request counters the tests read.
#[derive(Default)]
pub(crate) struct Hits {
    pub(crate) jwks: AtomicU64,
    pub(crate) discovery: AtomicU64,
    pub(crate) token: AtomicU64,
}

/// Everything the HTTP handlers and the `DevIdp` handle share.
pub(crate) struct Provider {
    pub(crate) issuer: String,
    pub(crate) addr: SocketAddr,
    pub(crate) options: DevIdpOptions,
    pub(crate) keys: RwLock<KeyRing>,
    pub(crate) store: Mutex<Store>,
    pub(crate) hits: Hits,
    /// Claims that replace an ID token's own, by user (`set_id_token_claims`).
    pub(crate) claim_overrides: Mutex<HashMap<String, Map<String, Value>>>,
    down: AtomicBool,
    delay: Mutex<Duration>,
    jwks_cache_control: RwLock<Option<String>>,
    signing_alg: RwLock<Algorithm>,
}

/// The scope minted tokens carry when no request chose one.
pub(crate) const DEFAULT_SCOPE: &str = "openid email profile";

impl Provider {
    pub(crate) fn new(addr: SocketAddr, options: DevIdpOptions, keys: KeyRing) -> Provider {
        Provider {
            issuer: format!("http://{addr}"),
            addr,
            options,
            keys: RwLock::new(keys),
            store: Mutex::new(Store::default()),
            hits: Hits::default(),
            claim_overrides: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            jwks_cache_control: RwLock::new(Some("max-age=300".to_string())),
            signing_alg: RwLock::new(Algorithm::RS256),
        }
    }

    pub(crate) fn user(&self, subject: &str) -> Option<&DevUser> {
        self.options.users.iter().find(|u| u.subject == subject)
    }

    pub(crate) fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    // --- test controls -------------------------------------------------

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock() = delay;
    }

    pub(crate) fn delay(&self) -> Duration {
        *self.delay.lock()
    }

    pub(crate) fn set_jwks_cache_control(&self, value: Option<String>) {
        *self.jwks_cache_control.write() = value;
    }

    pub(crate) fn jwks_cache_control(&self) -> Option<String> {
        self.jwks_cache_control.read().clone()
    }

    pub(crate) fn set_signing_alg(&self, alg: Algorithm) {
        *self.signing_alg.write() = alg;
    }

    /// The algorithm of tokens issued by the token endpoint.
    pub(crate) fn signing_alg(&self) -> Algorithm {
        *self.signing_alg.read()
    }

    /// Counts a request by path, before any delay or outage, so tests see
    /// every attempt a client made.
    pub(crate) fn count_hit(&self, path: &str) {
        let counter = match path {
            "/jwks" => &self.hits.jwks,
            "/.well-known/openid-configuration" => &self.hits.discovery,
            "/token" => &self.hits.token,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    // --- signing and verifying -----------------------------------------

    /// Signs `claims` with the current key for `header.alg`, filling in
    /// the kid unless the caller chose one.
    pub(crate) fn sign(&self, mut header: Header, claims: &Value) -> Result<String, SignError> {
        let kind = KeyKind::for_algorithm(header.alg).ok_or(SignError::NoKey(header.alg))?;
        let key = self.keys.read().current(kind).clone();
        if header.kid.is_none() {
            header.kid = Some(key.kid.clone());
        }
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Signs `header` and `payload` text exactly as given (base64url of
    /// each, then the signature) with the current key for `alg`.
    pub(crate) fn sign_raw(
        &self,
        alg: Algorithm,
        header: &str,
        payload: &str,
    ) -> Result<String, SignError> {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let kind = KeyKind::for_algorithm(alg).ok_or(SignError::NoKey(alg))?;
        let key = self.keys.read().current(kind).clone();
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, alg)?;
        Ok(format!("{message}.{signature}"))
    }

    /// Verifies a token this provider issued: a published key by kid, that
    /// key's algorithm only, our issuer, and `audience` when given. With
    /// `check_exp` false an expired token still passes (an id_token_hint
    /// may be expired, OIDC RP-Initiated Logout section 2).
    pub(crate) fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
        check_exp: bool,
    ) -> Result<Value, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Header)?;
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let key = self
            .keys
            .read()
            .find(&kid)
            .cloned()
            .ok_or(VerifyError::UnknownKid)?;
        let mut validation = Validation::new(key.kind.algorithm());
        validation.set_issuer(&[&self.issuer]);
        validation.validate_exp = check_exp;
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let required: &[&str] = if check_exp {
            &["exp", "iss", "sub"]
        } else {
            &["iss", "sub"]
        };
        validation.set_required_spec_claims(required);
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(VerifyError::Invalid)
    }

    // --- claims ----------------------------------------------------------

    fn lifetime_secs(&self) -> u64 {
        self.options.token_lifetime.as_secs()
    }

    /// The claims of an access token for `user` (RFC 9068 shape plus the
    /// profile claims a messaging backend wants).
    pub(crate) fn access_token_claims(&self, user: &DevUser, scope: &str) -> Value {
        let now = Self::now();
        json!({
            "iss": self.issuer,
            "sub": user.subject,
            "aud": self.options.access_token_audience,
            "exp": now + self.lifetime_secs(),
            "iat": now,
            "nbf": now,
            "jti": random_token(),
            "scope": scope,
            "client_id": self.options.client_id,
            "email": user.email,
            "email_verified": user.email_verified,
            "name": user.name,
            "groups": user.groups,
        })
    }

    /// The claims of an access token a client obtained for itself.
    pub(crate) fn client_token_claims(&self, scope: &str) -> Value {
        let now = Self::now();
        json!({
            "iss": self.issuer,
            "sub": self.options.client_id,
            "aud": self.options.access_token_audience,
            "exp": now + self.lifetime_secs(),
            "iat": now,
            "nbf": now,
            "jti": random_token(),
            "scope": scope,
            "client_id": self.options.client_id,
        })
    }

    /// The claims of an ID token for `user` (OIDC Core section 2).
    pub(crate) fn id_token_claims(
        &self,
        user: &DevUser,
        nonce: Option<&str>,
        auth_time: u64,
    ) -> Value {
        let now = Self::now();
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user.subject,
            "aud": self.options.client_id,
            "azp": self.options.client_id,
            "exp": now + self.lifetime_secs(),
            "iat": now,
            "auth_time": auth_time,
            "email": user.email,
            "email_verified": user.email_verified,
            "name": user.name,
            "groups": user.groups,
        });
        if let Some(map) = claims.as_object_mut() {
            if let Some(nonce) = nonce {
                map.insert("nonce".into(), nonce.into());
            }
            if let Some(overrides) = self.claim_overrides.lock().get(&user.subject) {
                map.extend(overrides.clone());
            }
        }
        claims
    }

    /// What the userinfo endpoint says about `user`.
    pub(crate) fn userinfo(user: &DevUser) -> Value {
        json!({
            "sub": user.subject,
            "preferred_username": user.subject,
            "email": user.email,
            "email_verified": user.email_verified,
            "name": user.name,
            "groups": user.groups,
        })
    }

    // --- discovery -------------------------------------------------------

    pub(crate) fn discovery(&self) -> Value {
        let issuer = &self.issuer;
        let mut document = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": if self.options.client_secret_post_only {
                json!(["client_secret_post"])
            } else {
                json!(["client_secret_basic", "client_secret_post"])
            },
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp", "at_hash",
                "email", "email_verified", "name", "preferred_username", "groups",
            ],
            "prompt_values_supported": ["none", "login"],
            "authorization_response_iss_parameter_supported": true,
        });
        if self.options.end_session_endpoint {
            document["end_session_endpoint"] = json!(format!("{issuer}/end_session"));
        }
        document
    }
}
