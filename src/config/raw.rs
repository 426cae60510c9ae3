//! The file format: serde structs that mirror the YAML exactly, with no
//! meaning attached yet. Every struct rejects unknown keys so a typo is an
//! error, not a silently ignored setting. `validate` turns these into the
//! trusted model in `model.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Secrets (`{env: NAME}` / `{file: PATH}`) and durations (`30m`, `60`) are
/// kept as YAML values here and interpreted by `validate`, which can then
/// say precisely what is wrong with them instead of serde's generic
/// "did not match any variant".
pub type RawSecret = serde_yaml_ng::Value;
pub type RawDuration = serde_yaml_ng::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    pub token: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: String,
    pub discovery_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<RawSecret>,
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub clock_skew: Option<RawDuration>,
    pub max_token_bytes: Option<usize>,
    pub http_timeout: Option<RawDuration>,
    pub jwks_min_ttl: Option<RawDuration>,
    pub jwks_max_ttl: Option<RawDuration>,
    pub jwks_refetch_interval: Option<RawDuration>,
    pub jwks_max_stale: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessenger {
    pub authentication: RawAuthentication,
    pub session: Option<RawSessionLifetimes>,
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub assertion: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthentication {
    pub enabled: bool,
    pub provider: Option<String>,
    #[serde(default)]
    pub allow_session_upgrade: bool,
    /// Whether a provider ID token is accepted as a bearer credential.
    #[serde(default)]
    pub accept_id_tokens: bool,
    /// How long a WebSocket opened with a provider's bearer token may live.
    pub bearer_connections: Option<super::model::BearerConnections>,
    pub require: Option<RawRequire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub groups_any: Vec<String>,
    #[serde(default)]
    pub groups_all: Vec<String>,
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Lets `email_domains` admit addresses the provider did not verify.
    #[serde(default)]
    pub allow_unverified_email: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessionLifetimes {
    pub max_lifetime: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub token_lifetime: Option<RawDuration>,
    pub refresh_reuse_grace: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub id: String,
    pub name: Option<String>,
    pub messenger: String,
    pub status: Option<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allow_all_origins: bool,
    #[serde(default)]
    pub allow_missing_origin: bool,
    pub upstream: String,
    #[serde(default)]
    pub access_token_query: bool,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub connect_timeout: Option<RawDuration>,
    pub read_timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub path_prefix: String,
    pub deployment_from: Option<RawDeploymentFrom>,
    pub deployment: Option<String>,
    pub profile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploymentFrom {
    pub query: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    pub store: Option<String>,
    /// Bytes, or text such as `256MiB`.
    pub memory_max_bytes: Option<serde_yaml_ng::Value>,
    pub redis: Option<RawRedis>,
    pub cookie: Option<RawCookie>,
    pub keys: Option<RawKeys>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Plain, or `{env}`/`{file}` when it embeds a password.
    pub url: Option<RawSecret>,
    pub sentinel: Option<RawSentinel>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub tls: Option<bool>,
    pub connect_timeout: Option<RawDuration>,
    pub command_timeout: Option<RawDuration>,
    pub key_prefix: Option<String>,
    pub local_cache: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub cookie_key: Option<RawSecret>,
    /// Retired cookie keys: cookies sealed with them still open, so that a
    /// key rotation does not log everybody out. New cookies use `cookie_key`.
    #[serde(default)]
    pub previous_cookie_keys: Vec<RawSecret>,
    pub signing_key: Option<RawSecret>,
    /// Retired signing keys, still published in `/.auth/jwks.json` so that
    /// tokens and assertions they signed verify until they expire.
    #[serde(default)]
    pub previous_signing_keys: Vec<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompat {
    #[serde(default)]
    pub hosted_paths: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Replaces the default list when given (an empty list strips nothing).
    pub strip_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_path_bytes: Option<usize>,
    pub max_query_bytes: Option<usize>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_grace: Option<RawDuration>,
    pub close_window: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub per_client: Option<RawRate>,
    pub per_deployment: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_minute: u32,
    pub burst: Option<u32>,
}
