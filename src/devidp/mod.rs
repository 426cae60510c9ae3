//! A development OpenID provider, for `portcullis demo` and the tests.
//!
//! **NOT FOR PRODUCTION.** There are no passwords (the login page lists the
//! configured users and anyone may pick any of them), all state is in
//! memory, the issuer is plain `http://`, and the control methods let any
//! caller take the provider down or re-key it.
//!
//! It is a real OpenID Connect provider as far as a relying party can tell:
//! discovery, a JWKS with one RS256 and one ES256 key (kids are RFC 7638
//! thumbprints), the authorization code flow with mandatory PKCE S256 and
//! the RFC 9207 `iss` response parameter, a token endpoint with
//! client_secret_basic and client_secret_post, userinfo and RP-initiated
//! logout. Endpoints, relative to the issuer `http://<listener address>`:
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery |
//! | `GET /jwks` | public keys; `Cache-Control` as set (default `max-age=300`) |
//! | `GET /authorize` | validates the request, shows the account picker |
//! | `POST /authorize/login` | form `request` + `user` (or `cancel`) → 302 with `code`, `state`, `iss` |
//! | `POST /token` | grants `authorization_code`, `refresh_token`, `client_credentials` |
//! | `GET,POST /userinfo` | claims of the user of a bearer access token |
//! | `GET,POST /end_session` | 302 to `post_logout_redirect_uri` (with `state`), else a page |
//!
//! Choices a relying party may trip over, on purpose:
//! - refresh tokens only when the scope includes `offline_access`; they
//!   rotate on every use, and replaying a rotated one (or a spent code)
//!   revokes the whole family of refresh tokens it belongs to;
//! - codes live 60 s and are spent by the first redemption attempt, even a
//!   failed one;
//! - `scope` must include `openid`; `prompt=none` always answers
//!   `login_required` (there is no provider-side login session);
//! - ID and access tokens always carry the profile claims (`email`,
//!   `email_verified`, `name`, `groups`), whatever the scope;
//! - the token endpoint signs with RS256 unless [`DevIdp::set_signing_alg`]
//!   says ES256;
//! - options for the relying party's other paths: a client that may use
//!   only `client_secret_post` (`client_secret_post_only`), no
//!   `end_session_endpoint` in discovery (`end_session_endpoint: false`),
//!   and a careless provider that neither spends codes nor checks PKCE
//!   (`reusable_codes`); [`DevIdp::set_id_token_claims`] changes what later
//!   ID tokens of a user say (another `sub`, other groups);
//! - `redirect_uris` empty accepts any http(s) loopback redirect URI;
//!   `post_logout_redirect_uri` must be a configured redirect URI or share
//!   its origin (loopback when none are configured).
//!
//! The server stops (stops accepting, closes idle connections) when the
//! last [`DevIdp`] clone is dropped.

mod authorize;
mod error;
mod html;
mod keys;
mod params;
mod provider;
mod server;
mod store;
mod token;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use tokio::sync::oneshot;

pub use keys::KeyError;
use keys::{KeyKind, KeyRing};
use provider::{Provider, DEFAULT_SCOPE};

/// One account of the development provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevUser {
    /// The `sub` claim, and the name the login form and the Rust API use.
    pub subject: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub groups: Vec<String>,
}

impl DevUser {
    fn new(subject: &str, email: &str, email_verified: bool, name: &str, groups: &[&str]) -> Self {
        DevUser {
            subject: subject.to_string(),
            email: email.to_string(),
            email_verified,
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// The built-in accounts: `alice` (verified, customers), `bob` (unverified,
/// another domain, no groups), `carol` (verified, customers and staff).
pub fn default_users() -> Vec<DevUser> {
    vec![
        DevUser::new(
            "alice",
            "alice@example.com",
            true,
            "Alice Example",
            &["customers"],
        ),
        DevUser::new("bob", "bob@other.example", false, "Bob Other", &[]),
        DevUser::new(
            "carol",
            "carol@example.com",
            true,
            "Carol Example",
            &["customers", "staff"],
        ),
    ]
}

/// How the development provider is set up. It has exactly one client.
#[derive(Debug, Clone)]
pub struct DevIdpOptions {
    pub client_id: String,
    pub client_secret: String,
    /// Allowed `redirect_uri` values, matched exactly. Empty: any http(s)
    /// URL on a loopback host.
    pub redirect_uris: Vec<String>,
    pub users: Vec<DevUser>,
    /// The `aud` of access tokens.
    pub access_token_audience: String,
    /// Lifetime of access and ID tokens (`exp - iat`, `expires_in`).
    pub token_lifetime: Duration,
    /// Discovery lists only `client_secret_post`, and the token endpoint
    /// refuses `client_secret_basic` (as some providers do).
    pub client_secret_post_only: bool,
    /// Discovery lists `end_session_endpoint` (RP-initiated logout).
    pub end_session_endpoint: bool,
    /// A careless provider: codes are not spent by a redemption and PKCE is
    /// not checked, so a relying party's own replay defences show.
    pub reusable_codes: bool,
}

impl Default for DevIdpOptions {
    fn default() -> Self {
        DevIdpOptions {
            client_id: "portcullis-demo".to_string(),
            client_secret: "demo-secret".to_string(),
            redirect_uris: Vec::new(),
            users: default_users(),
            access_token_audience: "api://messaging".to_string(),
            token_lifetime: Duration::from_secs(300),
            client_secret_post_only: false,
            end_session_endpoint: true,
            reusable_codes: false,
        }
    }
}

/// Stops the server when the last `DevIdp` clone goes: dropping the sender
/// resolves the graceful-shutdown signal.
struct ServerGuard {
    _stop: oneshot::Sender<()>,
}

/// A running development provider. Cheap to clone; the server stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct DevIdp {
    provider: Arc<Provider>,
    _server: Arc<ServerGuard>,
}

impl fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.provider.issuer)
            .finish_non_exhaustive()
    }
}

/// Starts the provider on `listener`, on the current tokio runtime. The
/// issuer is `http://<listener address>`, so bind a concrete address such
/// as `127.0.0.1:0`, not `0.0.0.0`.
pub async fn start(
    listener: tokio::net::TcpListener,
    options: DevIdpOptions,
) -> std::io::Result<DevIdp> {
    let addr = listener.local_addr()?;
    // RSA generation takes a noticeable moment; keep it off the executor.
    let keys = tokio::task::spawn_blocking(KeyRing::generate)
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    let provider = Arc::new(Provider::new(addr, options, keys));
    let app = server::router(provider.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            // Resolves (with an error) when the guard drops the sender.
            let _ = stopped.await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "development provider stopped");
        }
    });
    Ok(DevIdp {
        provider,
        _server: Arc::new(ServerGuard { _stop: stop }),
    })
}

impl DevIdp {
    /// `http://<address>`, without a trailing slash.
    pub fn issuer(&self) -> &str {
        &self.provider.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.provider.addr
    }

    /// The options the provider was started with.
    pub fn options(&self) -> &DevIdpOptions {
        &self.provider.options
    }

    /// Generates a fresh RS256 and ES256 key pair, makes them the signing
    /// keys and returns their kids `(rsa, ec)`. Old keys stay published
    /// until [`DevIdp::retire_old_keys`]. Blocks for the RSA generation.
    ///
    /// # Panics
    /// If the system cannot generate keys (no randomness).
    pub fn rotate_keys(&self) -> (String, String) {
        let (rsa, ec) = keys::generate_pair().expect("generating development keys failed");
        let kids = (rsa.kid.clone(), ec.kid.clone());
        self.provider.keys.write().install(rsa, ec);
        kids
    }

    /// Publishes only the current keys.
    pub fn retire_old_keys(&self) {
        self.provider.keys.write().retire_old();
    }

    /// The kids of the current signing keys, `(rsa, ec)`.
    pub fn current_kids(&self) -> (String, String) {
        let keys = self.provider.keys.read();
        (
            keys.current(KeyKind::Rsa).kid.clone(),
            keys.current(KeyKind::Ec).kid.clone(),
        )
    }

    /// While down, every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.provider.set_down(down);
    }

    /// Every response waits `delay` first (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.provider.set_delay(delay);
    }

    /// The `Cache-Control` of the JWKS response; `None` sends none.
    pub fn set_jwks_cache_control(&self, value: Option<String>) {
        self.provider.set_jwks_cache_control(value);
    }

    /// The algorithm of tokens from the token endpoint (default RS256).
    ///
    /// # Panics
    /// Unless `alg` is RS256 or ES256.
    pub fn set_signing_alg(&self, alg: Algorithm) {
        assert!(
            matches!(alg, Algorithm::RS256 | Algorithm::ES256),
            "the development provider signs with RS256 or ES256, not {alg:?}"
        );
        self.provider.set_signing_alg(alg);
    }

    /// Requests to `/jwks` so far, including refused ones (down).
    pub fn jwks_hits(&self) -> u64 {
        self.provider.hits.jwks.load(Ordering::Relaxed)
    }

    /// Requests to the discovery document so far.
    pub fn discovery_hits(&self) -> u64 {
        self.provider.hits.discovery.load(Ordering::Relaxed)
    }

    /// Requests to `/token` so far.
    pub fn token_hits(&self) -> u64 {
        self.provider.hits.token.load(Ordering::Relaxed)
    }

    /// ID tokens issued for `user` from now on carry `claims` (an object)
    /// in place of their own claims of the same names, `sub` included: a
    /// user whose groups changed, or a provider that answers a refresh for
    /// somebody else.
    ///
    /// # Panics
    /// Unless `claims` is a JSON object.
    pub fn set_id_token_claims(&self, user: &str, claims: serde_json::Value) {
        let serde_json::Value::Object(claims) = claims else {
            panic!("set_id_token_claims takes a JSON object");
        };
        self.provider
            .claim_overrides
            .lock()
            .insert(user.to_string(), claims);
    }

    /// Revokes every refresh token of `user`; returns how many there were.
    pub fn revoke_refresh_tokens(&self, user: &str) -> usize {
        self.provider.store.lock().revoke_subject(user)
    }

    fn known_user(&self, user: &str) -> &DevUser {
        self.provider
            .user(user)
            .unwrap_or_else(|| panic!("the development provider has no user {user:?}"))
    }

    /// An access token for `user` (a subject), as the token endpoint would
    /// issue it, with scope `openid email profile`.
    ///
    /// # Panics
    /// For an unknown user, or an `alg` other than RS256 / ES256.
    pub fn mint_access_token(&self, user: &str, alg: Algorithm) -> String {
        let claims = self
            .provider
            .access_token_claims(self.known_user(user), DEFAULT_SCOPE);
        self.sign(Header::new(Self::user_token_alg(alg)), &claims)
    }

    /// An ID token for `user` (a subject), authenticated now.
    ///
    /// # Panics
    /// For an unknown user, or an `alg` other than RS256 / ES256.
    pub fn mint_id_token(&self, user: &str, alg: Algorithm, nonce: Option<&str>) -> String {
        let claims = self
            .provider
            .id_token_claims(self.known_user(user), nonce, Provider::now());
        self.sign(Header::new(Self::user_token_alg(alg)), &claims)
    }

    fn user_token_alg(alg: Algorithm) -> Algorithm {
        assert!(
            matches!(alg, Algorithm::RS256 | Algorithm::ES256),
            "minted tokens use RS256 or ES256, not {alg:?}; use sign() for others"
        );
        alg
    }

    /// Signs arbitrary `claims` with the current key for `header.alg`
    /// (the RSA key for every RS*/PS* algorithm, the EC key for ES256),
    /// filling in the kid when `header.kid` is `None`. For hostile-token
    /// tests: nothing about the claims is checked.
    ///
    /// # Panics
    /// For an algorithm the provider has no key for (HS*, ES384, EdDSA):
    /// build those tokens with jsonwebtoken directly.
    pub fn sign(&self, header: Header, claims: &serde_json::Value) -> String {
        self.provider
            .sign(header, claims)
            .unwrap_or_else(|e| panic!("development provider cannot sign: {e}"))
    }

    /// Signs `header` and `payload` as given, byte for byte, with the
    /// current key for `alg` (see [`DevIdp::sign`] for which key): for
    /// token shapes serde would not produce, such as a header without a
    /// kid, a repeated claim or a payload that is not JSON. The header's
    /// own `alg` is not checked against `alg`.
    ///
    /// # Panics
    /// For an algorithm the provider has no key for.
    pub fn sign_raw(&self, alg: Algorithm, header: &str, payload: &str) -> String {
        self.provider
            .sign_raw(alg, header, payload)
            .unwrap_or_else(|e| panic!("development provider cannot sign: {e}"))
    }

    /// The published public JWK with this kid.
    pub fn public_jwk(&self, kid: &str) -> Option<serde_json::Value> {
        self.provider
            .keys
            .read()
            .find(kid)
            .map(|key| key.jwk.clone())
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> serde_json::Value {
        self.provider.keys.read().jwks()
    }

    /// Unix time in seconds, the clock of `iat` / `exp`.
    pub fn now(&self) -> u64 {
        Provider::now()
    }
}
