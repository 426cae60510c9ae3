//! The file format: serde structs that mirror the YAML exactly, with no
//! meaning attached yet. Every struct rejects unknown keys so a typo is an
//! error, not a silently ignored setting. `validate` turns these into the
//! trusted model in `model.rs`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// Secrets (`{env: NAME}` / `{file: PATH}`) and durations (`30m`, `60`) are
/// kept as YAML values here and interpreted by `validate`, which can then
/// say precisely what is wrong with them instead of serde's generic
/// "did not match any variant".
pub type RawSecret = serde_yaml_ng::Value;
pub type RawDuration = serde_yaml_ng::Value;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: Option<RawTls>,
    pub hsts: Option<RawHsts>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub sni: Vec<RawSniCertificate>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSniCertificate {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub max_age: Option<RawDuration>,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret")]
    pub token: Option<RawSecret>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: String,
    pub discovery_url: Option<String>,
    pub client_id: String,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret")]
    pub client_secret: Option<RawSecret>,
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub clock_skew: Option<RawDuration>,
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub http_timeout: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub jwks_min_ttl: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub jwks_max_ttl: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub jwks_refetch_interval: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub jwks_max_stale: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMessenger {
    pub authentication: RawAuthentication,
    pub session: Option<RawSessionLifetimes>,
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub assertion: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSessionLifetimes {
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub max_lifetime: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub idle_timeout: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub token_lifetime: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub refresh_reuse_grace: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub id: String,
    pub name: Option<String>,
    pub messenger: String,
    #[schemars(extend("enum" = ["active", "inactive", null]))]
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub connect_timeout: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub read_timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub interval: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub path_prefix: String,
    pub deployment_from: Option<RawDeploymentFrom>,
    pub deployment: Option<String>,
    #[schemars(extend("enum" = ["standard", "guest-api", null]))]
    pub profile: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDeploymentFrom {
    pub query: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    #[schemars(extend("enum" = ["memory", "redis", null]))]
    pub store: Option<String>,
    /// Bytes, or text such as `256MiB`.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::byte_size")]
    pub memory_max_bytes: Option<serde_yaml_ng::Value>,
    pub redis: Option<RawRedis>,
    pub cookie: Option<RawCookie>,
    pub keys: Option<RawKeys>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Plain, or `{env}`/`{file}` when it embeds a password.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::plain_or_secret")]
    pub url: Option<RawSecret>,
    pub sentinel: Option<RawSentinel>,
    pub username: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret")]
    pub password: Option<RawSecret>,
    pub tls: Option<bool>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub connect_timeout: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub command_timeout: Option<RawDuration>,
    pub key_prefix: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub local_cache: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret")]
    pub cookie_key: Option<RawSecret>,
    /// Retired cookie keys: cookies sealed with them still open, so that a
    /// key rotation does not log everybody out. New cookies use `cookie_key`.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret_list")]
    pub previous_cookie_keys: Vec<RawSecret>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret")]
    pub signing_key: Option<RawSecret>,
    /// Retired signing keys, still published in `/.auth/jwks.json` so that
    /// tokens and assertions they signed verify until they expire.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::secret_list")]
    pub previous_signing_keys: Vec<RawSecret>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    #[schemars(extend("enum" = ["text", "json", null]))]
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompat {
    #[serde(default)]
    pub hosted_paths: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Replaces the default list when given (an empty list strips nothing).
    pub strip_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_path_bytes: Option<usize>,
    pub max_query_bytes: Option<usize>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub drain_grace: Option<RawDuration>,
    #[serde(default)]
    #[schemars(schema_with = "super::schema::duration")]
    pub close_window: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub per_client: Option<RawRate>,
    pub per_deployment: Option<RawRate>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_minute: u32,
    pub burst: Option<u32>,
}
