//! The validated config compiled into lookup-ready form (`Runtime`), and the
//! long-lived shared state that holds it (`State`).
//!
//! A `Runtime` is immutable. Each request takes one snapshot, so a reload
//! never changes a request halfway; a reload builds a new `Runtime` and swaps
//! it in atomically. Upstream balancers whose config did not change are
//! carried over, keeping their health-check state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;

use crate::config::{self, Config, Deployment, DeploymentStatus, Messenger, Route, Upstream};
use crate::connections::{close_code, Registry};
use crate::identity::Rendered;
use crate::metrics::{Metrics, AUTH_METHODS};
use crate::provider::ProviderService;
use crate::ratelimit::Limiters;
use crate::session::cookie::CookieCodec;
use crate::session::recheck::Rechecker;
use crate::session::store::{MemoryStore, SessionStore};
use crate::token::messenger::MessengerClaims;
use crate::token::signing::KeyRing;
use crate::token::TokenCache;

/// Bytes of verified provider tokens kept at most, as
/// `token::entry_weight` weighs them: about, since the weight is an
/// estimate from the token's length (the token, its parsed claims and the
/// identity kept with it, not counting that identity's assertion). A
/// usual 1.3 KB access token weighs 8.7 KiB, so some 60 000 of those fit;
/// a count bound would let tokens near the 64 KiB `max_token_bytes` allows
/// take several GiB.
const TOKEN_CACHE_BYTES: u64 = 512 << 20;

/// Entries kept at most in `identities`: rendered identities (of login
/// sessions, and of tokens on a deployment other than the one kept with
/// the token; 2 to 4 KiB each with their assertion).
const PER_TOKEN_CACHE_ENTRIES: u64 = 100_000;

/// The cookie codec: the configured key, or a random one (cookies then do
/// not survive a restart, which a warning says).
fn cookie_codec(config: &Config) -> Result<CookieCodec, String> {
    use base64::Engine;
    let decode = |key: &crate::config::Secret| {
        base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .map_err(|_| "sessions.keys: a cookie key is not valid base64".to_string())
    };
    match &config.sessions.cookie_key {
        Some(key) => {
            let previous = config
                .sessions
                .previous_cookie_keys
                .iter()
                .map(decode)
                .collect::<Result<Vec<_>, _>>()?;
            CookieCodec::new(decode(key)?, &previous).map_err(|e| format!("sessions.keys: {e}"))
        }
        None => {
            tracing::warn!("no sessions.keys.cookie_key configured: generated one for this process; sessions end at every restart");
            CookieCodec::random().map_err(|e| e.to_string())
        }
    }
}

/// Counts and logs the sessions the store finds ended by time (the ends
/// nobody asked for: maximum lifetime, idle timeout).
fn session_end_observer(metrics: Arc<Metrics>) -> crate::session::store::EndObserver {
    Arc::new(move |session, reason| {
        metrics
            .session_ends
            .with_label_values(&[reason.label()])
            .inc();
        tracing::info!(
            session = %session.id.public_id(),
            deployment = %session.deployment,
            reason = reason.label(),
            "session ended"
        );
    })
}

/// A deployment with everything a request needs resolved.
pub struct DeploymentRt {
    pub config: Deployment,
    pub messenger: Messenger,
    pub upstream: Arc<UpstreamRt>,
    /// The messenger's provider, when it has one.
    pub provider: Option<Arc<ProviderService>>,
    /// The id as a shared string, for metric labels and the registry.
    pub label: Arc<str>,
    /// The identity headers' names, parsed once: every identity rendered
    /// for this deployment shares them.
    pub identity_names: crate::identity::HeaderNames<crate::identity::WireName>,
    /// `X-Auth-Deployment` (under the configured prefix) as it goes
    /// upstream on every request, rendered once.
    pub deployment_header: pingora::http::PrewrittenHeaders,
    /// `portcullis_auth_decisions_total{deployment, method, outcome="allowed"}`
    /// per credential carrier, resolved on first use (a series appears only
    /// once it counts something) and then kept: the label lookup would be
    /// on every authenticated request.
    allowed: [OnceLock<prometheus::IntCounter>; AUTH_METHODS],
}

impl DeploymentRt {
    pub fn is_active(&self) -> bool {
        self.config.status == DeploymentStatus::Active
    }
    pub fn requires_authentication(&self) -> bool {
        self.messenger.authentication.enabled
    }

    /// The counter of requests to this deployment allowed with the method
    /// in `slot` (below `AUTH_METHODS`; each slot always names the same
    /// method). `metrics` is the process's: it is read on first use only.
    pub fn allowed_counter(
        &self,
        slot: usize,
        method: &str,
        metrics: &Metrics,
    ) -> &prometheus::IntCounter {
        self.allowed[slot].get_or_init(|| {
            metrics
                .auth_decisions
                .with_label_values(&[&self.label, method, "allowed"])
        })
    }

    /// Whether a live connection opened with `claims` (`None`: anonymous)
    /// may stay open under this deployment's current rules: after a reload
    /// that turned authentication on, changed the provider, or tightened
    /// `require`, it may not.
    pub fn still_admits(&self, claims: Option<&crate::token::Claims>) -> bool {
        if !self.is_active() {
            return false;
        }
        if !self.requires_authentication() {
            return true;
        }
        let Some(claims) = claims else {
            return false;
        };
        let same_issuer = self
            .provider
            .as_ref()
            .is_some_and(|p| claims.str("iss") == Some(p.config.issuer.as_str()));
        same_issuer
            && crate::policy::authorize(&self.messenger.authentication.require, claims).is_ok()
    }
}

pub struct RouteRt {
    pub config: Route,
    pub label: Arc<str>,
}

/// An upstream's servers behind a round-robin balancer with optional active
/// health checks.
pub struct UpstreamRt {
    pub config: Upstream,
    pub balancer: LoadBalancer<RoundRobin>,
    /// `ca_file`'s roots, in the form Pingora verifies a peer against.
    pub roots: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Which roots verified a pooled connection (0: the system's), for
    /// `HttpPeer::group_key`: Pingora's pool key leaves the roots out, so
    /// without it an upstream could reuse a connection to the same server
    /// and name that was verified against another upstream's `ca_file` (or
    /// an earlier version of its own).
    pub roots_key: u64,
    next_health_check: Mutex<Instant>,
}

impl UpstreamRt {
    fn build(config: &Upstream) -> Result<Self, String> {
        let roots = config
            .ca
            .as_ref()
            .map(|ca| crate::tls::pingora_roots(&ca.certificates))
            .transpose()
            .map_err(|e| format!("upstreams.{}.ca_file: {e}", config.name))?;
        let mut balancer =
            LoadBalancer::<RoundRobin>::try_from_iter(config.servers.iter().map(String::as_str))
                .map_err(|e| format!("upstreams.{}.servers: cannot resolve: {e}", config.name))?;
        if let Some(hc) = &config.health_check {
            let host = config
                .servers
                .first()
                .map(String::as_str)
                .unwrap_or("localhost");
            let mut check = HttpHealthCheck::new(host, config.tls);
            check.req.set_uri(
                hc.path.parse().map_err(|_| {
                    format!("upstreams.{}.health_check.path: not a path", config.name)
                })?,
            );
            if config.tls && !config.sni.is_empty() {
                check.peer_template.sni = config.sni.clone();
            }
            check.peer_template.options.ca = roots.clone();
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            balancer.set_health_check(Box::new(check));
            balancer.health_check_frequency = Some(hc.interval);
        }
        let roots_key = config
            .ca
            .as_ref()
            .map_or(0, |ca| roots_key(&ca.certificates));
        Ok(UpstreamRt {
            config: config.clone(),
            balancer,
            roots,
            roots_key,
            next_health_check: Mutex::new(Instant::now()),
        })
    }

    /// Runs the active health check if it is due; returns whether it ran.
    pub async fn health_check_if_due(&self, metrics: &Metrics) -> bool {
        let Some(hc) = &self.config.health_check else {
            return false;
        };
        {
            let mut next = self.next_health_check.lock();
            if Instant::now() < *next {
                return false;
            }
            *next = Instant::now() + hc.interval;
        }
        let backends = self.balancer.backends();
        backends.run_health_check(true).await;
        for backend in backends.get_backend().iter() {
            let healthy = backends.ready(backend);
            metrics
                .upstream_healthy
                .with_label_values(&[&self.config.name, &backend.addr.to_string()])
                .set(i64::from(healthy));
        }
        true
    }
}

/// A key for a set of roots: the first 8 bytes of the SHA-256 of their DER
/// certificates, never 0 (the system roots' key).
fn roots_key(certificates: &[Vec<u8>]) -> u64 {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for der in certificates {
        digest.update(&(der.len() as u64).to_be_bytes());
        digest.update(der);
    }
    let hash = digest.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first).max(1)
}

/// Identity-header stripping rules, shared by every request. Validation
/// makes every configured identity header start with the prefix, so the
/// prefix alone covers them all.
pub struct StripRules {
    /// Normalized (lowercase, `_` as `-`) prefix.
    pub prefix: String,
    /// Normalized names removed in every spelling
    /// (`headers::strip_listed_headers`): `forwarding.strip_headers`, and
    /// the headers portcullis sets under fixed names.
    pub listed: Vec<String>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    deployments: HashMap<String, Arc<DeploymentRt>>,
    /// Longest prefix first, so the most specific route wins.
    routes: Vec<Arc<RouteRt>>,
    pub upstreams: HashMap<String, Arc<UpstreamRt>>,
    pub providers: HashMap<String, Arc<ProviderService>>,
    pub strip: StripRules,
    /// portcullis's own signing keys (assertions, `/.auth/jwks.json`).
    pub keys: Arc<KeyRing>,
    /// Seals and opens portcullis's cookies.
    pub cookies: Arc<CookieCodec>,
    /// Names and attributes of portcullis's cookies.
    pub cookie_policy: crate::session::cookie::CookiePolicy,
    /// Verified provider tokens, each with the identity rendered for the
    /// first deployment whose policy allowed it. Rebuilt with the runtime,
    /// so a reload that changes a provider's audiences or keys, or a
    /// deployment's policy or headers, never serves an old verdict.
    pub tokens: TokenCache<Rendered>,
    /// Identities rendered per token (or session) and deployment, where
    /// the token's own slot holds another deployment's (see
    /// `identity::Rendered`).
    pub identities: moka::sync::Cache<(IdentityKey, Arc<str>), Arc<Rendered>, ahash::RandomState>,
    /// When this runtime was built (config loads and reloads).
    pub loaded_at: std::time::SystemTime,
    /// `iss` of what portcullis signs: `public_url` (without a trailing
    /// slash), or `portcullis` without one.
    pub issuer: String,
    /// Verified messenger tokens by the token itself, until their `exp` (at
    /// most 5 minutes): a repeated request costs a look at the header's key
    /// id, a lookup and the session's. Keyed by the text, as the token cache
    /// is, not by a SHA-256 of it, which took more than the rest of the
    /// lookup; only tokens that verified get in, and they weigh their bytes.
    pub messenger_tokens: moka::sync::Cache<Arc<str>, Arc<MessengerClaims>, ahash::RandomState>,
    /// Derives a rotated refresh token's successor (see `session::refresh`).
    pub refresh_key: Arc<aws_lc_rs::hmac::Key>,
    /// Rate limits of the token API, login and callback; kept across
    /// reloads that do not change them.
    pub limiters: Arc<Limiters>,
    /// How many WebSockets this process admits (`limits.max_connections`,
    /// or derived from the descriptor limit).
    pub connection_ceiling: crate::capacity::Ceiling,
}

/// Whose identity an `identities` entry is, beside the deployment's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    /// A provider token's, by `CachedToken::digest`.
    Token([u8; 32]),
    /// A login session's, by its id and `checked_at`, which moves whenever
    /// a re-check may have changed the claims.
    Session([u8; 16], u64),
}

/// How much a cached messenger token weighs: its text, its claims' and a
/// share for the entry around them.
fn messenger_token_weight(token: &Arc<str>, claims: &Arc<MessengerClaims>) -> u32 {
    let claims_bytes = [
        &claims.iss,
        &claims.sub,
        &claims.aud,
        &claims.client_id,
        &claims.sid,
        &claims.jti,
    ]
    .iter()
    .map(|s| s.len())
    .sum::<usize>();
    u32::try_from(token.len() + claims_bytes + 256).unwrap_or(u32::MAX)
}

/// The most the messenger-token cache holds, as `messenger_token_weight`
/// weighs its entries: some 65 000 of the usual (a 530-byte token, about
/// 1 KiB with its claims and entry).
const MESSENGER_TOKEN_CACHE_BYTES: u64 = 64 << 20;

struct UntilMessengerTokenExpires;

impl moka::Expiry<Arc<str>, Arc<MessengerClaims>> for UntilMessengerTokenExpires {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        claims: &Arc<MessengerClaims>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(
            Duration::from_secs(claims.exp.saturating_sub(crate::session::now()))
                .min(Duration::from_secs(300)),
        )
    }
}

impl Runtime {
    /// The identity `claims` present to `deployment`, rendered as the headers
    /// its messenger sends upstream; `session` is the id the backend sees in
    /// `X-Auth-Session`. An error when a value cannot make a header.
    pub fn render_identity(
        &self,
        deployment: &DeploymentRt,
        claims: &Arc<crate::token::Claims>,
        session: Arc<str>,
    ) -> Result<Rendered, String> {
        let identity =
            crate::identity::Identity::from_claims(claims, deployment.label.clone(), session);
        // Both callers refuse the request; this says why (names only, no values).
        Rendered::new(identity, &deployment.identity_names).inspect_err(|e| {
            tracing::error!(deployment = %deployment.label, error = %e, "identity headers could not be rendered");
        })
    }

    /// Empties the caches of verified tokens and rendered identities. A
    /// replaced runtime lives on while any request made under it does (a
    /// tunnel keeps its runtime for its whole life), but no new request
    /// looks anything up in it, and moka frees entries only as a cache is
    /// used: its caches would otherwise hold up to the token cache's bound
    /// for as long as the oldest such tunnel.
    pub fn release_caches(&self) {
        self.tokens.clear();
        self.identities.invalidate_all();
        self.identities.run_pending_tasks();
        self.messenger_tokens.invalidate_all();
        self.messenger_tokens.run_pending_tasks();
    }

    /// Compiles a validated config, reusing unchanged upstreams and
    /// providers (with their health state and key caches) of `previous`.
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            let reused = previous
                .and_then(|old| old.providers.get(name))
                .filter(|old| old.config == *p)
                .cloned();
            providers.insert(
                name.clone(),
                reused.unwrap_or_else(|| ProviderService::new(p.clone(), metrics.clone())),
            );
        }
        let keys = match previous {
            Some(old)
                if old.config.sessions.signing_key == config.sessions.signing_key
                    && old.config.sessions.previous_signing_keys
                        == config.sessions.previous_signing_keys =>
            {
                old.keys.clone()
            }
            _ => Arc::new(KeyRing::from_config(
                config.sessions.signing_key.as_ref(),
                &config.sessions.previous_signing_keys,
                previous.map(|old| old.keys.as_ref()),
            )?),
        };
        let cookies = match previous {
            Some(old)
                if old.config.sessions.cookie_key == config.sessions.cookie_key
                    && old.config.sessions.previous_cookie_keys
                        == config.sessions.previous_cookie_keys =>
            {
                old.cookies.clone()
            }
            _ => Arc::new(cookie_codec(&config)?),
        };
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config == *u)
                .cloned();
            let rt = match reused {
                Some(rt) => rt,
                None => Arc::new(UpstreamRt::build(u)?),
            };
            upstreams.insert(name.clone(), rt);
        }
        let mut deployments = HashMap::new();
        for d in &config.deployments {
            // Validation guarantees both references resolve.
            let (Some(messenger), Some(upstream)) = (
                config.messengers.get(&d.messenger),
                upstreams.get(&d.upstream),
            ) else {
                return Err(format!("deployment {}: unresolved reference", d.id));
            };
            let identity_names =
                crate::identity::HeaderNames::spelled(messenger, &config.identity_header_prefix)
                    .parsed()
                    .map_err(|e| format!("deployment {}: identity header {e}", d.id))?;
            deployments.insert(
                d.id.clone(),
                Arc::new(DeploymentRt {
                    config: d.clone(),
                    messenger: messenger.clone(),
                    upstream: upstream.clone(),
                    provider: messenger
                        .authentication
                        .provider
                        .as_ref()
                        .and_then(|p| providers.get(p))
                        .cloned(),
                    label: Arc::from(d.id.as_str()),
                    deployment_header: crate::identity::deployment_header(&d.id, &identity_names)?,
                    identity_names,
                    allowed: Default::default(),
                }),
            );
        }
        let mut routes: Vec<Arc<RouteRt>> = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(RouteRt {
                    config: r.clone(),
                    label: Arc::from(r.name.as_str()),
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.path_prefix.len()));
        let mut listed = config.forwarding.strip_headers.clone();
        for name in crate::proxy::headers::set_by_portcullis() {
            if !listed.iter().any(|n| n == name) {
                listed.push(name.to_string());
            }
        }
        let strip = StripRules {
            prefix: config::normalize_header_name(&config.identity_header_prefix),
            listed,
        };
        let cookie_policy = crate::session::cookie::CookiePolicy::from_config(&config);
        let issuer = config.public_url.as_ref().map_or_else(
            || "portcullis".to_string(),
            |u| u.as_str().trim_end_matches('/').to_string(),
        );
        let refresh_key = Arc::new(cookies.derived_key("refresh-token rotation"));
        let limiters = match previous {
            Some(old) if old.limiters.config() == config.rate_limits => old.limiters.clone(),
            _ => Arc::new(Limiters::new(config.rate_limits)),
        };
        let connection_ceiling = crate::capacity::Ceiling::current(config.limits.max_connections);
        Ok(Runtime {
            config: Arc::new(config),
            deployments,
            routes,
            upstreams,
            providers,
            strip,
            keys,
            cookies,
            cookie_policy,
            tokens: TokenCache::new(TOKEN_CACHE_BYTES, metrics.clone()),
            identities: moka::sync::Cache::builder()
                .max_capacity(PER_TOKEN_CACHE_ENTRIES)
                .time_to_live(std::time::Duration::from_secs(300))
                .build_with_hasher(ahash::RandomState::new()),
            loaded_at: std::time::SystemTime::now(),
            issuer,
            messenger_tokens: moka::sync::Cache::builder()
                .weigher(messenger_token_weight)
                .max_capacity(MESSENGER_TOKEN_CACHE_BYTES)
                .expire_after(UntilMessengerTokenExpires)
                .build_with_hasher(ahash::RandomState::new()),
            refresh_key,
            limiters,
            connection_ceiling,
        })
    }

    pub fn deployment(&self, id: &str) -> Option<&Arc<DeploymentRt>> {
        self.deployments.get(id)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Arc<DeploymentRt>> {
        self.deployments.values()
    }

    pub fn routes(&self) -> &[Arc<RouteRt>] {
        &self.routes
    }

    /// Why this runtime's rules would no longer keep a live connection open
    /// (its close reason), or `None` when they still would.
    pub fn no_longer_admits(
        &self,
        conn: &crate::connections::LiveConnection,
    ) -> Option<&'static str> {
        match self.deployment(&conn.deployment) {
            Some(d) if d.is_active() => {
                (!d.still_admits(conn.claims.as_deref())).then_some("policy changed")
            }
            _ => Some("deployment deactivated"),
        }
    }
}

/// Whether a reload may bring this admin section: the listener stays bound
/// where it started, and its rules (a token off loopback, the Host check on
/// loopback) are the configured address's, so a new address would judge the
/// old socket by the wrong rules, and a dropped token would leave it open.
/// Rotating the token is fine.
/// Whether a config path is in a listener's or the admin's `tls` block.
fn is_tls_path(path: &str) -> bool {
    path.starts_with("admin.tls") || (path.starts_with("listen[") && path.contains("].tls"))
}

fn note_certificates_rejected(metrics: &Metrics) {
    metrics
        .tls_certificate_reloads
        .with_label_values(&["rejected"])
        .inc();
    tracing::error!(
        "TLS certificates not reloaded: the listeners keep serving their previous certificates"
    );
}

fn admin_reload_allowed(
    old: Option<&config::Admin>,
    new: Option<&config::Admin>,
) -> Result<(), String> {
    match (old, new) {
        (None, None) => Ok(()),
        (Some(o), Some(n)) if o.address != n.address => Err(format!(
            "admin.address changed ({} to {}): restart to move the admin listener",
            o.address, n.address
        )),
        (Some(o), Some(n)) if o.token.is_some() && n.token.is_none() => Err(
            "admin.token removed: the running admin listener would be left without one; restart to drop it".to_string(),
        ),
        (Some(_), Some(_)) => Ok(()),
        (Some(_), None) | (None, Some(_)) => {
            Err("the admin section was added or removed: restart to change the admin listener".to_string())
        }
    }
}

/// How many session ends `State::end_matching` has in flight at once: a
/// subject's thousands of sessions end in a fraction of the round trips.
const ENDS_IN_FLIGHT: usize = 32;

/// How long an ended session is remembered for handshakes in flight: far
/// longer than any handshake takes (an upstream's 101 is bounded by its
/// read timeout).
const ENDED_LATELY_FOR: std::time::Duration = std::time::Duration::from_secs(120);
/// At most this many remembered ends (a mass logout beyond it forgets the
/// oldest, whose handshakes have long completed).
const ENDED_LATELY_CAPACITY: u64 = 100_000;

/// What outlives a reload: the current runtime, the live connections and the metrics.
pub struct State {
    runtime: ArcSwap<Runtime>,
    pub connections: Arc<Registry>,
    /// Admission slots under the connection ceilings; kept across reloads.
    pub slots: Arc<crate::capacity::Slots>,
    /// Browser sessions; kept across reloads.
    pub sessions: Arc<dyn SessionStore>,
    /// Sessions being re-checked with their provider.
    pub rechecks: Rechecker,
    /// Sessions that ended lately (public id → why), here or on another
    /// instance: a handshake that was in flight when its session ended is
    /// closed as soon as it registers (`closes_if_ended`).
    ended_lately: moka::sync::Cache<Arc<str>, crate::session::EndReason>,
    pub metrics: Arc<Metrics>,
    /// The file reloads read again; `None` for configs built in memory.
    pub config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    /// The last reload's time and result, for the status page.
    pub last_reload: parking_lot::Mutex<Option<ReloadRecord>>,
    /// Set by SIGTERM: `/readyz` answers 503 and new WebSocket upgrades are
    /// refused while the load balancer catches up (see `server::Drain`).
    pub draining: std::sync::atomic::AtomicBool,
    /// Set when the shutdown close pass starts: a WebSocket whose 101
    /// arrives after it is closed with 1001 as soon as it registers.
    pub closing_for_shutdown: std::sync::atomic::AtomicBool,
    /// Set while a pass of `keep_live_sessions` runs, so passes never overlap.
    keeping_sessions: std::sync::atomic::AtomicBool,
    /// The certificates TLS listeners serve, by address; reloads refill them.
    pub certificates: crate::tls::Resolvers,
}

/// When the last reload happened and how it ended (the summary, or why the
/// new file was rejected).
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: std::time::SystemTime,
    pub result: Result<String, String>,
}

/// What a successful reload changed.
#[derive(Debug, serde::Serialize)]
pub struct ReloadSummary {
    pub deployments: usize,
    pub routes: usize,
    /// Live connections closed because their deployment was removed or deactivated.
    pub closed_connections: usize,
    /// TLS listeners (the admin one included) given their certificates anew.
    pub tls_listeners_reloaded: usize,
    /// Settings that only take effect after a restart.
    pub restart_required_for: Vec<&'static str>,
}

impl ReloadSummary {
    /// One line for people (the status page).
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} deployments, {} routes, {} live connections closed",
            self.deployments, self.routes, self.closed_connections
        );
        if !self.restart_required_for.is_empty() {
            text.push_str("; takes effect at restart: ");
            text.push_str(&self.restart_required_for.join(", "));
        }
        text
    }
}

impl State {
    /// A state whose session store is the one `sessions.store` names.
    pub fn new(
        runtime: Runtime,
        config_path: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let observer = Some(session_end_observer(metrics.clone()));
        let sessions: Arc<dyn SessionStore> =
            match &runtime.config.sessions.store {
                config::SessionStore::Memory => Arc::new(MemoryStore::with_end_observer(
                    runtime.config.sessions.memory_max_bytes,
                    observer,
                )),
                config::SessionStore::Redis(redis) => Arc::new(
                    crate::session::redis::RedisStore::new(redis, metrics.clone(), observer)?,
                ),
            };
        Ok(Self::with_store(runtime, config_path, metrics, sessions))
    }

    /// A state whose sessions live in `sessions`.
    pub fn with_store(
        runtime: Runtime,
        config_path: Option<PathBuf>,
        metrics: Arc<Metrics>,
        sessions: Arc<dyn SessionStore>,
    ) -> Arc<Self> {
        Arc::new(State {
            runtime: ArcSwap::from_pointee(runtime),
            connections: Registry::new(metrics.clone()),
            slots: crate::capacity::Slots::new(),
            sessions,
            rechecks: Rechecker::default(),
            ended_lately: moka::sync::Cache::builder()
                .max_capacity(ENDED_LATELY_CAPACITY)
                .time_to_live(ENDED_LATELY_FOR)
                .build(),
            metrics,
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload: parking_lot::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            closing_for_shutdown: std::sync::atomic::AtomicBool::new(false),
            keeping_sessions: std::sync::atomic::AtomicBool::new(false),
            certificates: crate::tls::Resolvers::default(),
        })
    }

    /// Ends a session on purpose (logout, revocation): removes it from the
    /// store, closes its live connections with 4002 and `close_reason`, and
    /// counts and logs the end. Returns how many connections began closing.
    ///
    /// An error means the store could not be told: the connections here
    /// close all the same, but the session may live on in the store (and on
    /// other instances), so a caller that promised an end (logout, revoke)
    /// answers 503 and the client tries again.
    pub async fn end_session(
        &self,
        id: &crate::session::SessionId,
        reason: crate::session::EndReason,
        close_reason: &str,
    ) -> Result<usize, crate::session::store::StoreError> {
        let removed = self.sessions.remove(id, reason).await;
        // A store hiccup must not keep the connections open.
        let public_id = id.public_id();
        let closed = self.close_ended_session(&public_id, reason, close_reason);
        self.note_end(&public_id, reason, Some(closed), &removed);
        removed.map(|_| closed)
    }

    /// Counts and logs a session's end as the store took it (or not).
    fn note_end<T>(
        &self,
        public_id: &str,
        reason: crate::session::EndReason,
        closed_connections: Option<usize>,
        removed: &Result<T, crate::session::store::StoreError>,
    ) {
        match removed {
            Ok(_) => {
                self.metrics
                    .session_ends
                    .with_label_values(&[reason.label()])
                    .inc();
                tracing::info!(session = %public_id, closed_connections, reason = reason.label(), "session ended");
            }
            Err(error) => {
                tracing::warn!(session = %public_id, closed_connections, reason = reason.label(), %error, "session end not stored: the session store is unreachable");
            }
        }
    }

    /// Follows a shared store's events for as long as the process runs:
    /// ends decided on other instances close the connections here, and a
    /// resync looks every live connection's session up again.
    pub async fn follow_store_events(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<crate::session::store::StoreEvent>,
    ) {
        use crate::session::store::StoreEvent;
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        /// Ends closed in one pass over the live connections at most.
        const ENDS_PER_PASS: usize = 4096;
        loop {
            let first = events.recv().await;
            // Ends that arrived together (a subject's or a provider's sessions
            // revoked elsewhere) are closed in one pass over the live
            // connections rather than one pass each: with thousands of both,
            // passes per end kept the last sockets open for seconds.
            let mut ended: Vec<(String, crate::session::EndReason)> = Vec::new();
            let mut resync = false;
            let mut next = first.map_err(|e| match e {
                RecvError::Closed => TryRecvError::Closed,
                RecvError::Lagged(n) => TryRecvError::Lagged(n),
            });
            loop {
                match next {
                    Ok(StoreEvent::Ended { public_id, reason }) => ended.push((public_id, reason)),
                    // Fell behind: some ends were dropped, so look everything up.
                    Ok(StoreEvent::Resync) | Err(TryRecvError::Lagged(_)) => resync = true,
                    Err(TryRecvError::Closed) => {
                        self.close_ends_from_elsewhere(&ended);
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
                if ended.len() >= ENDS_PER_PASS {
                    break;
                }
                next = events.try_recv();
            }
            self.close_ends_from_elsewhere(&ended);
            if resync {
                self.resync_live_sessions(crate::session::now()).await;
            }
        }
    }

    /// Closes the connections here of sessions that ended on other
    /// instances: one pass over the live connections per end reason.
    fn close_ends_from_elsewhere(&self, ended: &[(String, crate::session::EndReason)]) {
        for reason in crate::session::EndReason::ALL {
            let ids: Vec<&str> = ended
                .iter()
                .filter(|(_, r)| *r == reason)
                .map(|(id, _)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let closed = self.close_ended_sessions(&ids, reason, "session ended");
            if closed > 0 {
                tracing::info!(
                    sessions = ids.len(),
                    closed_connections = closed,
                    reason = reason.label(),
                    "sessions ended on another instance"
                );
            }
        }
    }

    /// Looks up the session of every live connection and closes, with
    /// 4002, those whose session is gone (ended while this instance missed
    /// the store's events). A store that does not answer closes nothing.
    pub async fn resync_live_sessions(&self, now: u64) -> usize {
        let mut sessions: Vec<String> = self
            .connections
            .list(None)
            .into_iter()
            .filter(|c| !c.closing)
            .filter_map(|c| c.session)
            .collect();
        sessions.sort();
        sessions.dedup();
        let mut closed = 0;
        for public_id in sessions {
            match self.sessions.load_public(&public_id, now).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    closed += self.close_ended_session(
                        &public_id,
                        crate::session::EndReason::Revoked,
                        "session ended",
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "session store unreachable during a resync: live connections kept until it answers");
                    break;
                }
            }
        }
        if closed > 0 {
            tracing::info!(
                closed_connections = closed,
                "resync: connections of sessions ended elsewhere closed"
            );
        }
        closed
    }

    /// Ends every live session matching `query` (as `end_session` does, one
    /// by one), in rounds of `SESSIONS_PER_ROUND` until none is left or
    /// `MAX_ROUNDS` passed. Returns how many sessions ended and how many
    /// connections began closing here; an error when the store failed for
    /// any of them (what ended stays ended; the caller reports a failure, so
    /// that the end is asked for again).
    pub async fn end_matching(
        &self,
        query: &crate::session::store::SessionQuery<'_>,
        reason: crate::session::EndReason,
        close_reason: &str,
    ) -> Result<(usize, usize), crate::session::store::StoreError> {
        const SESSIONS_PER_ROUND: usize = 1000;
        const MAX_ROUNDS: usize = 1000;
        let (mut ended, mut closed) = (0usize, 0usize);
        for _ in 0..MAX_ROUNDS {
            let found = match self
                .sessions
                .find(query, crate::session::now(), SESSIONS_PER_ROUND)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    if ended > 0 {
                        tracing::warn!(ended, error = %e, "ending sessions stopped: session store unavailable");
                    }
                    return Err(e);
                }
            };
            if found.is_empty() {
                break;
            }
            // Connections here close first, all at once and in one pass over
            // them: they must not wait for the store's round trips (SPEC §5:
            // within a second).
            let public_ids: Vec<String> = found.iter().map(|s| s.id.public_id()).collect();
            closed += self.close_ended_sessions(&public_ids, reason, close_reason);
            // Then the store (and through it the other instances), several
            // ends in flight at a time.
            use futures_util::StreamExt;
            let results: Vec<_> = futures_util::stream::iter(found.into_iter().zip(public_ids))
                .map(|(session, public_id)| async move {
                    let removed = self.sessions.remove(&session.id, reason).await;
                    self.note_end(&public_id, reason, None, &removed);
                    removed
                })
                .buffer_unordered(ENDS_IN_FLIGHT)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(_) => ended += 1,
                    // A session the store could not end lives on elsewhere:
                    // the caller must not report success.
                    Err(e) => {
                        tracing::warn!(ended, error = %e, "ending sessions stopped: session store unavailable");
                        return Err(e);
                    }
                }
            }
        }
        Ok((ended, closed))
    }

    /// Closes the live connections of a session that ended (here, or on
    /// another instance that told the shared store), and remembers the end
    /// for `ENDED_LATELY_FOR` so that a handshake still in flight is closed
    /// when it registers. 4001 when the session ran out of time, 4002
    /// otherwise. Returns how many connections began closing.
    pub fn close_ended_session(
        &self,
        public_id: &str,
        reason: crate::session::EndReason,
        close_reason: &str,
    ) -> usize {
        self.close_ended_sessions(&[public_id], reason, close_reason)
    }

    /// `close_ended_session` for several sessions that ended for the same
    /// reason, in one pass over the live connections.
    pub fn close_ended_sessions<S: AsRef<str>>(
        &self,
        public_ids: &[S],
        reason: crate::session::EndReason,
        close_reason: &str,
    ) -> usize {
        // Recorded before the pass over live connections: a connection that
        // registers after this line finds the record, one that registered
        // before it is found by the pass.
        for public_id in public_ids {
            self.ended_lately
                .insert(Arc::from(public_id.as_ref()), reason);
        }
        let ended: std::collections::HashSet<&str> = public_ids.iter().map(AsRef::as_ref).collect();
        self.connections.close_where(
            |c| c.session.as_deref().is_some_and(|s| ended.contains(s)),
            reason.close_code(),
            close_reason,
            reason.label(),
        )
    }

    /// Closes `conn` if its session ended lately (see `close_ended_session`):
    /// called right after a connection registers. True if it began closing.
    pub fn closes_if_ended(&self, conn: &crate::connections::LiveConnection) -> bool {
        let Some(public_id) = conn.session.as_deref() else {
            return false;
        };
        let Some(reason) = self.ended_lately.get(public_id) else {
            return false;
        };
        let text = match reason.close_code() {
            crate::connections::close_code::SESSION_EXPIRED => "session expired",
            _ => "session ended",
        };
        self.connections
            .close(conn.id, reason.close_code(), text, reason.label())
    }

    /// Keeps the store in step with live connections at `now`: records the
    /// activity their client frames show, and closes with 4001 the
    /// connections of sessions that went idle. A store that cannot be
    /// reached closes nothing: a chat is not cut for an outage of the store.
    pub async fn keep_live_sessions(&self, now: u64) {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Clears the flag however the pass ends, a panic included.
        struct Pass<'a>(&'a AtomicBool);
        impl Drop for Pass<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.keeping_sessions.swap(true, Ordering::AcqRel) {
            return;
        }
        let _pass = Pass(&self.keeping_sessions);
        let mut unreachable = None;
        for due in self
            .connections
            .sessions_due(now, crate::proxy::TOUCH_EVERY_SECS)
        {
            let stored = match due.unrecorded_activity {
                Some(at) => self.sessions.touch(&due.id, at).await,
                None => self.sessions.load(&due.id, now).await,
            };
            match stored {
                Ok(Some(session)) if session.check(now).is_ok() => {
                    self.connections
                        .session_seen(&due.public_id, session.last_seen);
                }
                Ok(_) => {
                    let closed = self.connections.close_idle_session(&due.public_id);
                    tracing::info!(session = %due.public_id, closed_connections = closed, "session idle: its connections close");
                }
                Err(e) => match &mut unreachable {
                    Some((sessions, _)) => *sessions += 1,
                    None => unreachable = Some((1usize, e)),
                },
            }
        }
        // One line per pass, not one per session, while the store is down.
        if let Some((sessions, error)) = unreachable {
            tracing::warn!(sessions, error = %error, "session store unreachable: live sessions' activity not kept");
        }
        self.sessions.maintain().await;
    }

    /// Whether SIGTERM has started draining this instance.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current runtime; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Reads the config file again and swaps it in. An invalid file changes
    /// nothing: the old config keeps serving.
    pub async fn reload(&self) -> Result<ReloadSummary, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.reload_inner().await;
        let label = if result.is_ok() { "ok" } else { "rejected" };
        *self.last_reload.lock() = Some(ReloadRecord {
            at: std::time::SystemTime::now(),
            result: match &result {
                Ok(s) => Ok(s.describe()),
                Err(e) => Err(e.clone()),
            },
        });
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(s) => tracing::info!(
                deployments = s.deployments,
                routes = s.routes,
                "configuration reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "configuration reload rejected; the previous configuration keeps serving")
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<ReloadSummary, String> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| "this instance was not started from a file".to_string())?;
        let old = self.runtime();
        let previous = old.clone();
        let metrics = self.metrics.clone();
        // Loading reads files and building may resolve server names: both block.
        let (new, certificates) = tokio::task::spawn_blocking(move || {
            let config = config::load(&path).map_err(|e| {
                if e.0.iter().any(|e| is_tls_path(&e.path)) {
                    note_certificates_rejected(&metrics);
                }
                e.to_string()
            })?;
            // Loaded again here (validation checked them and let them go):
            // these are the sets the listeners will serve.
            let certificates = crate::tls::load_all(&config, crate::config::certificates::now())
                .inspect_err(|_| note_certificates_rejected(&metrics))?;
            Runtime::build(config, Some(&previous), &metrics).map(|r| (r, certificates))
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))??;
        if let Some(warning) = new.connection_ceiling.warning() {
            tracing::warn!("{warning}");
        }
        for warning in config::warnings(&new.config) {
            tracing::warn!(path = %warning.path, "configuration setting has no effect: {}", warning.message);
        }
        admin_reload_allowed(old.config.admin.as_ref(), new.config.admin.as_ref())?;
        let mut restart_required_for = Vec::new();
        // Certificates and HSTS change live; addresses and TLS on or off
        // need new sockets.
        let sockets = |c: &Config| -> Vec<(std::net::SocketAddr, bool)> {
            c.listeners
                .iter()
                .map(|l| (l.address, l.tls.is_some()))
                .collect()
        };
        if sockets(&new.config) != sockets(&old.config) {
            restart_required_for.push("listen");
        }
        let admin_tls = |c: &Config| c.admin.as_ref().map(|a| a.tls.is_some());
        if admin_tls(&new.config) != admin_tls(&old.config) {
            restart_required_for.push("admin.tls");
        }
        if new.config.threads != old.config.threads {
            restart_required_for.push("threads");
        }
        let logging_changed = new.config.logging.format != old.config.logging.format
            || new.config.logging.level != old.config.logging.level;
        if logging_changed {
            restart_required_for.push("logging");
        }
        if new.config.shutdown != old.config.shutdown {
            restart_required_for.push("shutdown");
        }
        if new.config.sessions.memory_max_bytes != old.config.sessions.memory_max_bytes {
            restart_required_for.push("sessions.memory_max_bytes");
        }
        // The store is built once, at start: its connections and cache
        // outlive every reload.
        match (&new.config.sessions.store, &old.config.sessions.store) {
            (config::SessionStore::Redis(_), config::SessionStore::Memory)
            | (config::SessionStore::Memory, config::SessionStore::Redis(_)) => {
                restart_required_for.push("sessions.store");
            }
            (config::SessionStore::Redis(a), config::SessionStore::Redis(b)) if a != b => {
                restart_required_for.push("sessions.redis");
            }
            _ => {}
        }
        let new = Arc::new(new);
        self.runtime.store(new.clone());
        old.release_caches();
        let tls_listeners_reloaded = self.replace_certificates(certificates);
        // Connections of deployments that are gone or inactive end now, as
        // a revocation would end them; so do those the new rules would refuse.
        let closed = self.connections.close_each(
            |c| new.no_longer_admits(c),
            close_code::SESSION_REVOKED,
            "reload",
        );
        Ok(ReloadSummary {
            deployments: new.deployments.len(),
            routes: new.routes.len(),
            closed_connections: closed,
            tls_listeners_reloaded,
            restart_required_for,
        })
    }

    /// Gives each running TLS listener its newly loaded certificates (new
    /// handshakes only; live connections keep theirs). A listener the
    /// running process does not have (a new address) waits for a restart.
    fn replace_certificates(
        &self,
        certificates: Vec<(
            std::net::SocketAddr,
            crate::config::certificates::CertificateSet,
        )>,
    ) -> usize {
        let mut replaced = 0;
        for (address, set) in certificates {
            if let Some(resolver) = self.certificates.get(&address) {
                resolver.replace(set);
                replaced += 1;
            }
        }
        if replaced > 0 {
            self.metrics
                .tls_certificate_reloads
                .with_label_values(&["ok"])
                .inc();
            self.metrics
                .note_certificate_sets(&self.certificates.current());
            tracing::info!(
                listeners = replaced,
                "TLS certificates reloaded: new handshakes get them, live connections keep theirs"
            );
        }
        replaced
    }

    /// Runs due health checks of every upstream of the current runtime.
    pub async fn run_due_health_checks(&self) {
        let runtime = self.runtime();
        for upstream in runtime.upstreams.values() {
            upstream.health_check_if_due(&self.metrics).await;
        }
    }

    /// Discovery and key refreshes for every provider, each on its own task
    /// so one slow provider does not hold up the others.
    pub fn maintain_providers(&self) {
        for provider in self.runtime().providers.values() {
            let provider = provider.clone();
            tokio::spawn(async move { provider.maintain().await });
        }
    }
}

/// How often the supervisor looks for due health checks and overdue closes.
pub const SUPERVISOR_TICK: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Session, SessionId};
    use crate::token::Claims;

    fn runtime() -> Runtime {
        let text = r#"
listen: [{address: "127.0.0.1:8080"}]
providers:
  idp: {issuer: "https://idp.example.com", client_id: portcullis}
messengers:
  open: {authentication: {enabled: false}}
  secured: {authentication: {enabled: true, provider: idp}}
  staff: {authentication: {enabled: true, provider: idp, require: {groups_any: [staff]}}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: open, messenger: open, upstream: chat, allow_all_origins: true}
  - {id: secured, messenger: secured, upstream: chat, allow_all_origins: true}
  - {id: staff, messenger: staff, upstream: chat, allow_all_origins: true}
  - {id: paused, messenger: open, upstream: chat, allow_all_origins: true, status: inactive}
routes: [{path_prefix: /v1}]
"#;
        let config = crate::config::parse(text, std::path::Path::new("."), &|_: &str| None)
            .unwrap_or_else(|e| panic!("{e}"));
        Runtime::build(config, None, &Arc::new(Metrics::new())).unwrap()
    }

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_reload_may_rotate_the_admin_token_but_not_move_or_open_the_listener() {
        use crate::config::Admin;
        let admin = |address: &str, token: Option<&str>| Admin {
            address: address.parse().unwrap(),
            token: token.map(|t| crate::config::Secret::new(t.to_string())),
            tls: None,
        };
        let public = admin("0.0.0.0:9090", Some("a"));
        assert!(
            admin_reload_allowed(Some(&public), Some(&admin("0.0.0.0:9090", Some("b")))).is_ok()
        );
        assert!(admin_reload_allowed(None, None).is_ok());
        for (new, why) in [
            (
                Some(admin("127.0.0.1:9090", None)),
                "moved to loopback without a token",
            ),
            (Some(admin("0.0.0.0:9091", Some("a"))), "another port"),
            (Some(admin("0.0.0.0:9090", None)), "token dropped"),
            (None, "section removed"),
        ] {
            assert!(
                admin_reload_allowed(Some(&public), new.as_ref()).is_err(),
                "{why}"
            );
        }
        assert!(admin_reload_allowed(None, Some(&public)).is_err());
    }

    /// A store that cannot be reached.
    struct DownStore;

    #[async_trait::async_trait]
    impl SessionStore for DownStore {
        async fn load(
            &self,
            _: &SessionId,
            _: u64,
        ) -> Result<Option<Arc<Session>>, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn save(&self, _: &Session) -> Result<(), crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn remove(
            &self,
            _: &SessionId,
            _: crate::session::EndReason,
        ) -> Result<Option<Session>, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn update(
            &self,
            _: &SessionId,
            _: u64,
            _: crate::session::store::SessionChange,
        ) -> Result<Option<Arc<Session>>, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn load_public(
            &self,
            _: &str,
            _: u64,
        ) -> Result<Option<Arc<Session>>, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn token_ended(
            &self,
            _: &[u8; 32],
        ) -> Result<bool, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn save_refresh(
            &self,
            _: [u8; 32],
            _: crate::session::refresh::RefreshRecord,
        ) -> Result<(), crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn load_refresh(
            &self,
            _: &[u8; 32],
        ) -> Result<Option<crate::session::refresh::RefreshRecord>, crate::session::store::StoreError>
        {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn rotate_refresh(
            &self,
            _: &[u8; 32],
            _: u64,
        ) -> Result<Option<crate::session::refresh::RefreshRecord>, crate::session::store::StoreError>
        {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn find(
            &self,
            _: &crate::session::store::SessionQuery<'_>,
            _: u64,
            _: usize,
        ) -> Result<Vec<Arc<Session>>, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn first_use(
            &self,
            _: crate::session::store::SingleUse,
            _: [u8; 32],
            _: std::time::Duration,
        ) -> Result<bool, crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        async fn forget_use(
            &self,
            _: crate::session::store::SingleUse,
            _: [u8; 32],
        ) -> Result<(), crate::session::store::StoreError> {
            Err(crate::session::store::StoreError::Unavailable(
                "down".into(),
            ))
        }
        fn approximate_count(&self) -> Option<u64> {
            None
        }
    }

    fn session(id: &SessionId, last_seen: u64) -> Session {
        Session {
            id: id.clone(),
            deployment: "secured".into(),
            provider: "idp".into(),
            subject: "alice".into(),
            claims: serde_json::Map::new(),
            created_at: last_seen,
            last_seen,
            expires_at: last_seen + 3600,
            idle_timeout_secs: 60,
            refresh_token: None,
            id_token: None,
            checked_at: last_seen,
            provider_token_lifetime_secs: None,
        }
    }

    /// A live connection of session `id`, last seen by the store at `last_seen`.
    fn live(state: &State, id: &SessionId, last_seen: u64) -> crate::connections::LiveGuard {
        state
            .connections
            .register(crate::connections::NewConnection {
                deployment: "secured".into(),
                route: "/v1".into(),
                session: Some(Arc::from(id.public_id().as_str())),
                expires_at: Some(last_seen + 3600),
                idle_close: None,
                activity: Some(crate::connections::SessionActivity::new(
                    id.clone(),
                    60,
                    last_seen,
                    last_seen,
                )),
                claims: None,
                tunnel: crate::connections::TunnelCloser::default(),
                client: None,
            })
    }

    #[tokio::test]
    async fn the_keeper_closes_idle_sessions_spares_revived_ones_and_survives_a_store_outage() {
        use crate::session::store::MemoryStore;
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(MemoryStore::new(1 << 20));
        let state = State::with_store(runtime(), None, metrics.clone(), store.clone());
        let (gone, revived) = (SessionId::random().unwrap(), SessionId::random().unwrap());
        // The memory store's entries lapse by the wall clock: real times.
        let t0 = crate::session::now() - 55;
        // Both sessions were last seen at t0 as far as their connections
        // know; another tab has since kept `revived` alive in the store.
        store.save(&session(&revived, t0)).await.unwrap();
        store.touch(&revived, t0 + 50).await.unwrap();
        let gone_conn = live(&state, &gone, t0);
        let revived_conn = live(&state, &revived, t0);

        state.keep_live_sessions(t0 + 61).await;
        let closed = gone_conn
            .connection()
            .close_request()
            .expect("idle session closed");
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4001, "session idle")
        );
        assert!(revived_conn.connection().close_request().is_none());
        assert_eq!(
            state.connections.sessions_due(t0 + 61, 30),
            vec![],
            "the revived session's connection learnt its new deadline"
        );

        // The store goes away: nothing is closed for it.
        let down = State::with_store(runtime(), None, metrics, Arc::new(DownStore));
        let conn = live(&down, &gone, t0);
        down.keep_live_sessions(t0 + 61).await;
        assert!(conn.connection().close_request().is_none());
    }

    #[test]
    fn live_connections_are_judged_by_the_deployments_current_rules() {
        let rt = runtime();
        let deployment = |id: &str| rt.deployment(id).unwrap();
        let customer = claims(
            serde_json::json!({"iss": "https://idp.example.com", "sub": "a", "groups": ["customers"]}),
        );
        let staff = claims(
            serde_json::json!({"iss": "https://idp.example.com", "sub": "c", "groups": ["staff"]}),
        );
        let foreign = claims(
            serde_json::json!({"iss": "https://other.example.com", "sub": "c", "groups": ["staff"]}),
        );

        assert!(
            deployment("open").still_admits(None),
            "anonymous, no auth needed"
        );
        assert!(deployment("open").still_admits(Some(&customer)));
        assert!(!deployment("paused").still_admits(Some(&staff)), "inactive");
        assert!(
            !deployment("secured").still_admits(None),
            "authentication now required"
        );
        assert!(deployment("secured").still_admits(Some(&customer)));
        assert!(
            !deployment("secured").still_admits(Some(&foreign)),
            "another provider's identity"
        );
        assert!(
            !deployment("staff").still_admits(Some(&customer)),
            "tightened require"
        );
        assert!(deployment("staff").still_admits(Some(&staff)));
    }
}
