//! OpenID providers as portcullis uses them: the discovery document (whose
//! `issuer` must equal the configured one) and the signing-key cache. Both
//! are fetched in the background with timeouts and backoff, so a dead
//! provider never blocks startup; `/readyz` and `portcullis_provider_ready`
//! say when a provider is usable.

pub mod client;
pub mod jwks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::config::Provider;
use crate::metrics::Metrics;

use jwks::{JwksCache, KeyError, VerifyingKey};

/// Largest discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;
/// Largest token-endpoint answer accepted: three tokens of at most 64 KiB
/// (the largest `max_token_bytes`) and a little JSON around them.
pub(crate) const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The parts of the discovery document portcullis uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// Why a provider cannot be used right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("the discovery document names issuer {found:?}, not the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("waiting to retry discovery after a failure")]
    BackingOff,
}

/// Retry spacing after failed fetches: 2 s, 4 s, … up to a minute.
#[derive(Default)]
pub(crate) struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// Whether a retry must still wait.
    pub(crate) fn waiting(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// Records a failure; returns how long until the next attempt.
    pub(crate) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_secs(1u64 << self.failures.min(6)).min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + delay);
        delay
    }
}

/// One configured provider, kept across reloads while its config is unchanged.
pub struct ProviderService {
    pub config: Provider,
    /// `config.name`, shared by every token this provider's keys verified.
    shared_name: Arc<str>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    metadata: ArcSwapOption<Metadata>,
    discovering: tokio::sync::Mutex<()>,
    backoff: Mutex<Backoff>,
    /// Set while `maintain` runs, so supervisor ticks never pile up.
    maintaining: std::sync::atomic::AtomicBool,
    pub jwks: JwksCache,
}

impl ProviderService {
    pub fn new(config: Provider, metrics: Arc<Metrics>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            // Building a client fails only when the TLS backend cannot start.
            .unwrap_or_else(|_| reqwest::Client::new());
        let jwks = JwksCache::new(&config.name, config.jwks, http.clone(), metrics.clone());
        Arc::new(ProviderService {
            shared_name: Arc::from(config.name.as_str()),
            config,
            http,
            metrics,
            metadata: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(()),
            backoff: Mutex::new(Backoff::default()),
            maintaining: std::sync::atomic::AtomicBool::new(false),
            jwks,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The name as the records of its verified tokens share it.
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.shared_name)
    }

    /// The HTTP client for this provider (timeouts as configured).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.load_full()
    }

    /// Usable: discovered, with keys that are fresh or within `max_stale`.
    pub fn is_ready(&self) -> bool {
        self.metadata.load().is_some() && self.jwks.is_usable()
    }

    /// The metadata, discovering it now if it is missing.
    pub async fn ensure_metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        if let Some(m) = self.metadata() {
            return Ok(m);
        }
        self.discover().await
    }

    /// Fetches the discovery document; one task at a time, with backoff.
    pub async fn discover(&self) -> Result<Arc<Metadata>, ProviderError> {
        let _only_one = self.discovering.lock().await;
        if let Some(m) = self.metadata() {
            return Ok(m);
        }
        if self.backoff.lock().waiting() {
            return Err(ProviderError::BackingOff);
        }
        let result = self.fetch_metadata().await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .discovery_fetches
            .with_label_values(&[self.name(), label])
            .inc();
        let mut backoff = self.backoff.lock();
        match result {
            Ok(metadata) => {
                *backoff = Backoff::default();
                let metadata = Arc::new(metadata);
                self.metadata.store(Some(metadata.clone()));
                tracing::info!(provider = self.name(), "provider discovered");
                Ok(metadata)
            }
            Err(e) => {
                let delay = backoff.failed();
                tracing::warn!(provider = self.name(), error = %e, retry_in_s = delay.as_secs(), "provider discovery failed");
                Err(e)
            }
        }
    }

    async fn fetch_metadata(&self) -> Result<Metadata, ProviderError> {
        let fail = |what: String| ProviderError::Discovery(what);
        let response = self
            .http
            .get(self.config.discovery_url.as_str())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(format!("request failed: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(fail(format!("answered {}", response.status())));
        }
        let body = read_capped(response, MAX_DISCOVERY_BYTES)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let metadata: Metadata = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("not a discovery document: {e}")))?;
        check_metadata(&self.config, &metadata)?;
        Ok(metadata)
    }

    /// The key for a token's `kid` and `alg`, discovering the provider first if needed.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, KeyError> {
        let metadata = self
            .ensure_metadata()
            .await
            .map_err(|_| KeyError::Unavailable)?;
        self.jwks.key_for(&metadata.jwks_uri, kid, alg).await
    }

    /// Background upkeep, called by the supervisor: discover if needed,
    /// refresh keys ahead of expiry, publish readiness.
    pub async fn maintain(&self) {
        use std::sync::atomic::Ordering;
        if self.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(metadata) = self.ensure_metadata().await {
            if self.jwks.refresh_due() {
                self.jwks.refresh(&metadata.jwks_uri).await;
            }
        }
        self.jwks.report();
        self.metrics
            .provider_ready
            .with_label_values(&[self.name()])
            .set(i64::from(self.is_ready()));
        self.maintaining.store(false, Ordering::Release);
    }
}

/// Why a provider's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading failed: {0}")]
    Read(reqwest::Error),
}

/// Reads a provider's answer, refusing it as soon as it passes `limit`
/// bytes: before reading when `Content-Length` says so, else while it
/// streams in. `Response::bytes` would first gather a chunked answer
/// whole, so a provider (or whoever answers in its name) sending an
/// endless body would fill memory until the HTTP timeout.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let too_large = BodyError::TooLarge { limit };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks a discovery document against the configuration (OpenID Connect
/// Discovery §4.3: the issuer must be identical).
pub fn check_metadata(config: &Provider, metadata: &Metadata) -> Result<(), ProviderError> {
    if metadata.issuer != config.issuer {
        return Err(ProviderError::IssuerMismatch {
            expected: config.issuer.clone(),
            found: metadata.issuer.clone(),
        });
    }
    let jwks_ok = url::Url::parse(&metadata.jwks_uri)
        .map(|u| u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u)))
        .unwrap_or(false);
    if !jwks_ok {
        return Err(ProviderError::Discovery(
            "jwks_uri must be an https URL (http only on loopback)".into(),
        ));
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(issuer: &str) -> Provider {
        let text = format!(
            "listen: [{{address: \"127.0.0.1:1\"}}]\nproviders: {{p: {{issuer: \"{issuer}\", client_id: c}}}}\n"
        );
        crate::config::parse(&text, std::path::Path::new("."), &|_: &str| None)
            .unwrap()
            .providers
            .remove("p")
            .unwrap()
    }

    fn metadata(issuer: &str, jwks_uri: &str) -> Metadata {
        serde_json::from_value(serde_json::json!({"issuer": issuer, "jwks_uri": jwks_uri})).unwrap()
    }

    #[test]
    fn the_discovered_issuer_must_be_identical() {
        let p = provider("https://idp.example.com");
        assert_eq!(
            check_metadata(
                &p,
                &metadata("https://idp.example.com", "https://idp.example.com/jwks")
            ),
            Ok(())
        );
        for other in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "https://evil.example.com",
        ] {
            assert!(matches!(
                check_metadata(&p, &metadata(other, "https://idp.example.com/jwks")),
                Err(ProviderError::IssuerMismatch { .. })
            ));
        }
        assert!(check_metadata(
            &p,
            &metadata("https://idp.example.com", "http://idp.example.com/jwks")
        )
        .is_err());
        let local = provider("http://127.0.0.1:9000");
        assert_eq!(
            check_metadata(
                &local,
                &metadata("http://127.0.0.1:9000", "http://127.0.0.1:9000/jwks")
            ),
            Ok(())
        );
    }
}
