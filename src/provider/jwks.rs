//! One provider's signing keys. Fetched from its `jwks_uri`; cached for the
//! lifetime the response allows (`Cache-Control: max-age` or `Expires`,
//! clamped to configured bounds); refreshed ahead of expiry by the
//! supervisor; fetched by one task at a time however many requests wait
//! (single-flight); refetched for an unknown `kid` at most
//! [`REFETCHES_PER_INTERVAL`] times per `refetch_interval`, evenly spaced,
//! with kids a refetch did not find remembered for one spacing (negative
//! cache); served past their lifetime, up to `max_stale`, while the provider
//! is down.
//!
//! The refetch budget and a key rotation: whoever claims a refetch (a real
//! token or junk), the fetch brings whatever the provider publishes, and an
//! unknown-kid fetch never reuses a fetch that began before it was asked
//! for. So however many made-up kids arrive, the provider sees at most
//! `REFETCHES_PER_INTERVAL` unknown-kid fetches per `refetch_interval`, and a
//! key it has published is accepted at most one spacing
//! (`refetch_interval / REFETCHES_PER_INTERVAL`) plus one fetch later.
//! A bad signature on a known `kid` never causes a fetch: that is decided
//! by the caller, which only asks for a `kid` it has not been given.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;

use super::Backoff;
use crate::config::JwksSettings;
use crate::metrics::Metrics;
use crate::token::prepared::{self, PreparedVerifier};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Lifetime when the response says nothing about caching.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Refresh this far into a key set's lifetime, so requests never wait.
const REFRESH_AHEAD: f64 = 0.8;
/// Unknown-kid refetches allowed per `refetch_interval`, at least
/// `refetch_interval / REFETCHES_PER_INTERVAL` apart: the flood bound, and
/// (its spacing) how late a rotated key can be accepted during a flood.
pub const REFETCHES_PER_INTERVAL: u32 = 6;

/// A key ready to verify signatures.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub jwk: Jwk,
    pub key: DecodingKey,
    /// The key parsed for each algorithm it may verify, once, when its set
    /// was fetched (see `token::prepared`), so a token costs a signature
    /// check and not a key construction too.
    prepared: Vec<PreparedVerifier>,
}

impl VerifyingKey {
    /// A signing key from the provider's set, parsed for every algorithm
    /// it fits. A key aws-lc-rs refuses (an RSA modulus under 2048 bits, a
    /// point not on its curve) is an error: it could never verify a token.
    pub fn from_jwk(jwk: Jwk) -> Result<Self, String> {
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let prepared = SIGNATURE_ALGORITHMS
            .iter()
            .filter(|&&alg| fits(&jwk, alg))
            .map(|&alg| prepared::verifier_for(&jwk, alg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            jwk,
            key,
            prepared,
        })
    }

    /// The key parsed for `alg`, if it fits `alg`.
    pub fn prepared(&self, alg: Algorithm) -> Option<&PreparedVerifier> {
        self.prepared.iter().find(|p| p.algorithm() == alg)
    }
}

/// Every asymmetric algorithm a provider's key may be for.
const SIGNATURE_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    /// Kids of signing keys in the set that cannot verify (skipped while
    /// parsing): a token naming one is refused as a key mismatch, without
    /// an unknown-kid refetch (the provider does publish that kid).
    unusable: HashSet<String>,
    fetched_at: Instant,
    fetched_wall: SystemTime,
    ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No usable keys: never fetched, or stale beyond `max_stale`.
    Unavailable,
    /// No key has this `kid`, even after a refetch (or one was not allowed yet).
    UnknownKid,
    /// The key named (or the only key) cannot verify this algorithm.
    Mismatch,
    /// The token names no `kid` and several keys could verify it.
    Ambiguous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchReason {
    Initial,
    Refresh,
    UnknownKid,
}

impl FetchReason {
    fn label(self) -> &'static str {
        match self {
            FetchReason::Initial => "initial",
            FetchReason::Refresh => "refresh",
            FetchReason::UnknownKid => "unknown_kid",
        }
    }
}

pub struct JwksCache {
    provider: Arc<str>,
    settings: JwksSettings,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    keys: ArcSwapOption<KeySet>,
    /// Held by the one task fetching; others wait and reuse its result.
    fetching: tokio::sync::Mutex<()>,
    /// Counts completed fetch attempts, so a waiter can tell one happened.
    attempts: AtomicU64,
    /// When the last completed fetch attempt began.
    last_attempt_began: Mutex<Option<Instant>>,
    backoff: Mutex<Backoff>,
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    unknown_kids: moka::sync::Cache<String, ()>,
}

impl JwksCache {
    pub fn new(
        provider: &str,
        settings: JwksSettings,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        JwksCache {
            provider: Arc::from(provider),
            settings,
            http,
            metrics,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_attempt_began: Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            last_unknown_kid_fetch: Mutex::new(None),
            unknown_kids: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(refetch_spacing(&settings).max(Duration::from_millis(100)))
                .build(),
        }
    }

    /// The key that should verify a token with this `kid` and `alg`.
    pub async fn key_for(
        &self,
        jwks_uri: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, KeyError> {
        if self.usable_set().is_none() {
            // Nothing to verify with: fetch now (single-flight, honouring backoff).
            self.fetch(jwks_uri, FetchReason::Initial).await;
        }
        let set = self.usable_set().ok_or(KeyError::Unavailable)?;
        let Some(kid) = kid else {
            return select_without_kid(&set, alg);
        };
        if let Some(key) = set.by_kid.get(kid) {
            return check_compatible(key, alg).map(|()| key.clone());
        }
        if set.unusable.contains(kid) {
            return Err(KeyError::Mismatch);
        }
        if self.unknown_kids.contains_key(kid) {
            self.count_kid_miss("negative_cached");
            return Err(KeyError::UnknownKid);
        }
        if !self.claim_unknown_kid_fetch() {
            self.count_kid_miss("rate_limited");
            return Err(KeyError::UnknownKid);
        }
        self.count_kid_miss("refetched");
        self.fetch(jwks_uri, FetchReason::UnknownKid).await;
        let set = self.usable_set().ok_or(KeyError::Unavailable)?;
        match set.by_kid.get(kid) {
            Some(key) => check_compatible(key, alg).map(|()| key.clone()),
            None if set.unusable.contains(kid) => Err(KeyError::Mismatch),
            None => {
                self.unknown_kids.insert(kid.to_string(), ());
                Err(KeyError::UnknownKid)
            }
        }
    }

    /// Takes an unknown-kid fetch if one spacing has passed since the last.
    fn claim_unknown_kid_fetch(&self) -> bool {
        let spacing = refetch_spacing(&self.settings);
        let mut last = self.last_unknown_kid_fetch.lock();
        let allowed = last.is_none_or(|t| t.elapsed() >= spacing);
        if allowed {
            *last = Some(Instant::now());
        }
        allowed
    }

    fn count_kid_miss(&self, result: &str) {
        self.metrics
            .jwks_kid_misses
            .with_label_values(&[&self.provider, result])
            .inc();
    }

    fn usable_set(&self) -> Option<Arc<KeySet>> {
        self.keys
            .load_full()
            .filter(|set| set.fetched_at.elapsed() <= set.ttl + self.settings.max_stale)
    }

    /// Whether keys exist that have not outlived their lifetime plus `max_stale`.
    pub fn is_usable(&self) -> bool {
        self.usable_set().is_some()
    }

    /// Whether the supervisor should fetch now: no keys yet, or the set is
    /// far enough into its lifetime; never while backing off.
    pub fn refresh_due(&self) -> bool {
        if self.backoff.lock().waiting() {
            return false;
        }
        match self.keys.load().as_ref() {
            None => true,
            Some(set) => {
                set.fetched_at.elapsed().as_secs_f64() >= set.ttl.as_secs_f64() * REFRESH_AHEAD
            }
        }
    }

    /// Background refresh, ahead of expiry.
    pub async fn refresh(&self, jwks_uri: &str) {
        let reason = if self.keys.load().is_some() {
            FetchReason::Refresh
        } else {
            FetchReason::Initial
        };
        self.fetch(jwks_uri, reason).await;
    }

    /// When the cached set was fetched and its key ids (`None` before the
    /// first successful fetch), for the status page.
    pub fn key_ids(&self) -> Option<(SystemTime, Vec<String>)> {
        self.keys.load().as_ref().map(|set| {
            let ids = set
                .all
                .iter()
                .map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into()))
                .collect();
            (set.fetched_wall, ids)
        })
    }

    /// Publishes the age and size of the cached set.
    pub fn report(&self) {
        let (age, count) = match self.keys.load().as_ref() {
            Some(set) => (
                SystemTime::now()
                    .duration_since(set.fetched_wall)
                    .unwrap_or_default()
                    .as_secs() as i64,
                set.all.len() as i64,
            ),
            None => (-1, 0),
        };
        self.metrics
            .jwks_age
            .with_label_values(&[&self.provider])
            .set(age);
        self.metrics
            .jwks_keys
            .with_label_values(&[&self.provider])
            .set(count);
    }

    /// Fetches unless another task is fetching (then waits for its result)
    /// or a recent failure asks to back off.
    async fn fetch(&self, jwks_uri: &str, reason: FetchReason) {
        let asked = Instant::now();
        let seen = self.attempts.load(Ordering::Acquire);
        let _only_fetcher = self.fetching.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            // Someone fetched while we waited; use their result, unless we
            // look for an unknown kid and their fetch began before we asked
            // (it may predate the key we look for).
            let began = *self.last_attempt_began.lock();
            if reason != FetchReason::UnknownKid || began.is_some_and(|b| b >= asked) {
                return;
            }
        }
        let backing_off = self.backoff.lock().waiting();
        if backing_off && reason != FetchReason::UnknownKid {
            return;
        }
        let began = Instant::now();
        let result = self.fetch_once(jwks_uri).await;
        *self.last_attempt_began.lock() = Some(began);
        self.attempts.fetch_add(1, Ordering::Release);
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .jwks_fetches
            .with_label_values(&[&self.provider, reason.label(), label])
            .inc();
        let mut backoff = self.backoff.lock();
        match result {
            Ok(set) => {
                tracing::info!(provider = %self.provider, keys = set.all.len(), ttl_s = set.ttl.as_secs(), "fetched provider keys");
                self.keys.store(Some(Arc::new(set)));
                *backoff = Backoff::default();
            }
            Err(e) => {
                let delay = backoff.failed();
                tracing::warn!(provider = %self.provider, error = %e, retry_in_s = delay.as_secs(), "fetching provider keys failed; the last good keys keep serving within max_stale");
            }
        }
        drop(backoff);
        self.report();
    }

    async fn fetch_once(&self, jwks_uri: &str) -> Result<KeySet, String> {
        let response = self
            .http
            .get(jwks_uri)
            .header("accept", "application/json, application/jwk-set+json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let ttl = ttl_from_headers(response.headers(), SystemTime::now())
            .unwrap_or(DEFAULT_TTL)
            .clamp(self.settings.min_ttl, self.settings.max_ttl);
        let body = super::read_capped(response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let ParsedSet {
            keys: set,
            unusable,
        } = parse_key_set_reporting(&body)?;
        if !unusable.is_empty() {
            tracing::warn!(provider = %self.provider, kids = ?unusable, "the provider's key set has keys that cannot verify; tokens naming them are refused as key_mismatch");
        }
        Ok(KeySet {
            by_kid: set
                .iter()
                .filter_map(|k| k.kid.clone().map(|kid| (kid, k.clone())))
                .collect(),
            all: set,
            unusable: unusable.into_iter().collect(),
            fetched_at: Instant::now(),
            fetched_wall: SystemTime::now(),
            ttl,
        })
    }
}

/// The least time between two unknown-kid refetches.
pub fn refetch_spacing(settings: &JwksSettings) -> Duration {
    settings.refetch_interval / REFETCHES_PER_INTERVAL
}

/// Parses a JWK set, keeping every signing key that can verify and skipping
/// (with a log line) the ones that cannot, so one odd key does not hide the rest.
pub fn parse_key_set(body: &[u8]) -> Result<Vec<Arc<VerifyingKey>>, String> {
    parse_key_set_reporting(body).map(|set| set.keys)
}

/// A parsed key set: the keys that verify, and the kids of signing keys
/// that were skipped because their key cannot verify (a skipped key
/// without a kid is only logged: no token can name it).
pub struct ParsedSet {
    pub keys: Vec<Arc<VerifyingKey>>,
    pub unusable: Vec<String>,
}

/// As [`parse_key_set`], also naming the skipped signing keys.
pub fn parse_key_set_reporting(body: &[u8]) -> Result<ParsedSet, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    let mut unusable = Vec::new();
    for value in raw.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a JWK that does not parse");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            // A symmetric key has no place in a public key set.
            continue;
        }
        let kid = jwk.common.key_id.clone();
        match VerifyingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Arc::new(key)),
            Err(e) => {
                let named = kid.as_deref().unwrap_or("(no kid)");
                tracing::warn!(kid = %named, error = %e, "skipping a JWK that cannot verify");
                unusable.extend(kid);
            }
        }
    }
    if keys.is_empty() {
        return Err("the key set has no usable signing key".into());
    }
    Ok(ParsedSet { keys, unusable })
}

/// Whether this key may verify a token signed with `alg`: its type (and
/// curve) must fit the algorithm, and its own `alg`, when given, must equal it.
pub fn check_compatible(key: &VerifyingKey, alg: Algorithm) -> Result<(), KeyError> {
    if fits(&key.jwk, alg) {
        Ok(())
    } else {
        Err(KeyError::Mismatch)
    }
}

fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(key_alg) = jwk.common.key_algorithm {
        if key_algorithm_name(key_alg) != Some(alg) {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

fn key_algorithm_name(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A token without `kid` is accepted only when exactly one cached key fits
/// its algorithm; guessing among several would let an attacker pick.
fn select_without_kid(set: &KeySet, alg: Algorithm) -> Result<Arc<VerifyingKey>, KeyError> {
    let mut fitting = set.all.iter().filter(|k| check_compatible(k, alg).is_ok());
    match (fitting.next(), fitting.next()) {
        (Some(key), None) => Ok(key.clone()),
        (None, _) => Err(KeyError::Mismatch),
        (Some(_), Some(_)) => Err(KeyError::Ambiguous),
    }
}

/// The lifetime a JWKS response allows: `Cache-Control: max-age` (or
/// `no-store`/`no-cache`: zero, which the caller raises to its minimum),
/// else `Expires`.
pub fn ttl_from_headers(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let cache_control = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase());
    let mut max_age = None;
    for directive in cache_control {
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = directive.strip_prefix("max-age=") {
            max_age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    if max_age.is_some() {
        return max_age;
    }
    let expires = headers.get(http::header::EXPIRES)?.to_str().ok()?;
    let at = httpdate::parse_http_date(expires).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;
