//! The validated configuration: every reference resolved, every value parsed
//! and within bounds. The rest of the program trusts this model and never
//! sees raw YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A resolved secret. Its `Debug` output never shows the value, so a config
/// dump or a panic message cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub public_url: Option<url::Url>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    pub admin: Option<Admin>,
    pub providers: BTreeMap<String, Provider>,
    pub messengers: BTreeMap<String, Messenger>,
    pub deployments: Vec<Deployment>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    pub sessions: Sessions,
    pub logging: Logging,
    pub compat: Compat,
    pub forwarding: Forwarding,
    /// Incoming headers starting with this prefix (case-insensitive, `_` read
    /// as `-`) are removed before anything goes upstream.
    pub identity_header_prefix: String,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub shutdown: Shutdown,
}

/// How SIGTERM drains the instance (SIGINT stops at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// After SIGTERM, `/readyz` answers 503 and new WebSocket upgrades are
    /// refused (503, `Retry-After`), while everything else is still
    /// served, for this long: the load balancer's time to notice.
    pub drain_grace: std::time::Duration,
    /// Then listeners stop accepting and live WebSockets are closed with
    /// 1001, spread evenly over this window, so their clients do not all
    /// reconnect to the next instance in the same instant.
    pub close_window: std::time::Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_grace: std::time::Duration::from_secs(5),
            close_window: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// `Strict-Transport-Security` on every response of this (TLS) listener.
    pub hsts: Option<Hsts>,
}

/// The certificates a TLS listener serves: `cert`/`key` to a client whose
/// SNI name matches no entry of `sni` (or that sends none), the entry
/// naming it otherwise. Reloaded with the config (see `crate::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniCertificate>,
}

/// A certificate served to the clients asking for one of `names` (exact
/// host names, lowercase, each covered by the certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCertificate {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An HTTP Strict Transport Security policy for a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The `Strict-Transport-Security` header value.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    /// Required unless the admin address is loopback.
    pub token: Option<Secret>,
    /// The admin listener's certificates, as a proxy listener's.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    /// Exactly as configured: discovery's `issuer` and tokens' `iss` must equal it.
    pub issuer: String,
    pub discovery_url: url::Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub clock_skew: Duration,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Timeout of each request to the provider (discovery, JWKS).
    pub http_timeout: Duration,
    pub jwks: JwksSettings,
}

/// How a provider's keys are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Bounds for the lifetime taken from the JWKS response's
    /// `Cache-Control: max-age` or `Expires` (used as-is within them).
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Tokens with unknown `kid`s refetch the keys at most
    /// `provider::jwks::REFETCHES_PER_INTERVAL` (6) times per interval, at
    /// least interval / 6 apart.
    pub refetch_interval: Duration,
    /// How long past their lifetime the last good keys keep verifying while
    /// the provider cannot be reached.
    pub max_stale: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            refetch_interval: Duration::from_secs(60),
            max_stale: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Messenger {
    pub name: String,
    pub authentication: Authentication,
    pub session: SessionLifetimes,
    /// Upstream header name → claim name.
    pub identity_headers: BTreeMap<String, String>,
    pub assertion: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Authentication {
    pub enabled: bool,
    pub provider: Option<String>,
    /// Always false: `check` refuses true until session upgrade (with the
    /// guest-api profile) is built. Reported to the SDK as `allowSessionUpgrade`.
    pub allow_session_upgrade: bool,
    /// Provider ID tokens as bearer credentials (off by default: an ID
    /// token outlives the session it came from, and travels in URLs).
    pub accept_id_tokens: bool,
    /// When a WebSocket opened with a provider's bearer token closes (a
    /// messenger token's connections live with its session instead).
    pub bearer_connections: BearerConnections,
    pub require: Require,
}

/// The end of a live connection that a provider's bearer token opened:
/// such a token has no session that logout or expiry could end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BearerConnections {
    /// Closed with 4001 when the token expires (its `exp`): the client
    /// reconnects with a fresh token.
    #[default]
    CloseAtExp,
    /// Outlives the token, closed with 4001 once the client has sent no
    /// data frame for the messenger's `session.idle_timeout` (for clients
    /// that cannot reconnect mid-chat; the token was valid at the handshake).
    UntilIdle,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Require {
    pub claims: BTreeMap<String, serde_json::Value>,
    pub groups_any: Vec<String>,
    pub groups_all: Vec<String>,
    pub email_domains: Vec<String>,
    /// Whether `email_domains` admits an address whose `email_verified` is
    /// not true (default false; only set beside `email_domains`).
    pub allow_unverified_email: bool,
}

/// The identity headers portcullis sends itself, after the identity prefix
/// (compared like `normalize_header_name`): a messenger's
/// `identity_headers` may not name one, or it would replace what
/// portcullis vouches for with a raw claim.
pub const BUILT_IN_IDENTITY_HEADERS: &[&str] = &[
    "subject",
    "email",
    "email-verified",
    "name",
    "groups",
    "issuer",
    "deployment",
    "session",
    "assertion",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLifetimes {
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub token_lifetime: Duration,
    /// How long a rotated refresh token still answers with its successor
    /// (two tabs refreshing at once) before a reuse ends the session.
    pub refresh_reuse_grace: Duration,
}

impl Default for SessionLifetimes {
    fn default() -> Self {
        SessionLifetimes {
            max_lifetime: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(30 * 60),
            token_lifetime: Duration::from_secs(15 * 60),
            refresh_reuse_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentStatus {
    Active,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    Any,
    /// Serialized origins (`scheme://host[:port]`, lowercase, default port elided).
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: String,
    pub name: Option<String>,
    pub messenger: String,
    pub status: DeploymentStatus,
    pub origins: OriginPolicy,
    /// Whether a WebSocket upgrade without an `Origin` header (native apps) may pass.
    pub allow_missing_origin: bool,
    pub upstream: String,
    pub access_token_query: bool,
    pub forward_token: bool,
    pub redirect_uris: Vec<url::Url>,
    /// Live WebSockets (and handshakes in flight) this deployment admits,
    /// within the process-wide ceiling; `None`: only that ceiling.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// `host:port` strings; literal IPs or names resolved when the upstream is built.
    pub servers: Vec<String>,
    pub tls: bool,
    /// The name sent as SNI and the one the server's certificate must be
    /// issued for (rustls verifies the name it sends).
    pub sni: String,
    /// Whether the file set `sni` (else it is derived from the servers).
    pub sni_configured: bool,
    /// The roots an upstream's certificate is verified against instead of
    /// the system's: DER certificates read from `ca_file` (so a reload that
    /// changes the file's content rebuilds the upstream).
    pub ca: Option<UpstreamCa>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    /// How long a server may stay silent while portcullis waits for its
    /// answer (the response head, a WebSocket's 101 included) or for the
    /// next piece of an HTTP response body. Not applied to an upgraded
    /// WebSocket, whose quiet spells are the session's business.
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCa {
    pub file: PathBuf,
    pub certificates: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentSource {
    Query(String),
    Fixed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteProfile {
    /// Plain messaging traffic: the handshake is authenticated, frames pass.
    /// The only profile so far: `guest-api` (the proxy also reading client
    /// frames) is refused by `check` until it is built.
    Standard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub deployment: DeploymentSource,
    pub profile: RouteProfile,
}

#[derive(Debug, Clone)]
pub struct Sessions {
    pub store: SessionStore,
    /// The memory store's budget for session records, in bytes.
    pub memory_max_bytes: u64,
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
    pub cookie_key: Option<Secret>,
    pub previous_cookie_keys: Vec<Secret>,
    pub signing_key: Option<Secret>,
    pub previous_signing_keys: Vec<Secret>,
}

/// `sessions.memory_max_bytes` when unset: 256 MiB, room for about 65,000
/// sessions of 4 KiB (a typical ID token, its claims and a refresh token),
/// or 16,000 at the default `max_token_bytes` limit.
pub const DEFAULT_MEMORY_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// The smallest budget `check` accepts: sixteen sessions of the largest size.
pub const MIN_MEMORY_MAX_BYTES: u64 = 1024 * 1024;
/// The largest budget `check` accepts.
pub const MAX_MEMORY_MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum SessionStore {
    Memory,
    Redis(Redis),
}

/// `sessions.redis`: where the shared store is and how long to wait for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    pub target: RedisTarget,
    /// ACL user (Redis 6+); `None`: the default user.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the data nodes (set by a `rediss://` URL, or `tls: true`).
    pub tls: bool,
    pub connect_timeout: Duration,
    /// Every store call gives up after this (the caller answers 503).
    pub command_timeout: Duration,
    /// Every key and the event channel start with it.
    pub key_prefix: String,
    /// How long an instance serves a session from memory without asking
    /// Redis, and so how long cached sessions keep working while Redis is
    /// unreachable. Zero: every lookup asks Redis.
    pub local_cache: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// `redis://`, `rediss://` or `redis+unix://`; a secret because it may
    /// embed a password.
    Url(Secret),
    /// Ask these sentinels (`host:port`) which node is `master`'s primary.
    Sentinel { master: String, nodes: Vec<String> },
}

pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "portcullis:";
pub const DEFAULT_REDIS_LOCAL_CACHE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `portcullis=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Compat {
    pub hosted_paths: bool,
}

#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Peers whose own `X-Forwarded-*` headers are believed and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// Request headers removed before proxying (lowercase, `_` as `-`;
    /// matched like identity headers, since CGI and some servers fold `_`
    /// into `-`): ones that some
    /// backend framework trusts to pick the path, host or method.
    pub strip_headers: Vec<String>,
}

/// `forwarding.strip_headers` by default. Every one is honoured for
/// routing by some backend stack, and none has a reason to come from a
/// client: `X-Original-URL`/`X-Rewrite-URL` (IIS URL Rewrite, Zend/Laminas,
/// older Symfony: the path the application routes on), `X-Forwarded-Prefix`
/// (Spring's ForwardedHeaderFilter, ASP.NET Core, Werkzeug's ProxyFix: the
/// path base), `X-Forwarded-Path`/`X-Forwarded-Uri` (set by Kong and Traefik;
/// forward-auth services such as Authelia decide on `X-Forwarded-Uri`),
/// `X-Forwarded-Port`/`X-Forwarded-Server` (Spring, Tomcat's RemoteIpValve),
/// `X-Original-Host`/`X-Host`/`X-HTTP-Host-Override` (host overrides read by
/// applications behind Azure front ends and others), and the method
/// overrides `X-HTTP-Method-Override`/`X-HTTP-Method`/`X-Method-Override`
/// (Rack, Symfony, Express's method-override, Jersey, OData).
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-original-host",
    "x-host",
    "x-http-host-override",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            trusted_proxies: Vec::new(),
            strip_headers: DEFAULT_STRIP_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_path_bytes: usize,
    pub max_query_bytes: usize,
    /// Live WebSockets (and handshakes in flight) the process admits; `None`:
    /// derived from the descriptor limit (`capacity`).
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_path_bytes: 2048,
            max_query_bytes: 4096,
            max_connections: None,
        }
    }
}

/// A token bucket: `per_minute` requests replenished evenly, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// Limits on the endpoints that cost a call to the provider or a new
/// session: the token API, `/.auth/login` and `/.auth/callback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per client address (from `X-Forwarded-For` only behind a trusted proxy).
    pub per_client: Rate,
    /// Per deployment, all clients together.
    pub per_deployment: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_client: Rate {
                per_minute: 60,
                burst: 20,
            },
            per_deployment: Rate {
                per_minute: 6000,
                burst: 600,
            },
        }
    }
}
