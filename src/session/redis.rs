//! The shared session store (`sessions.store: redis`): sessions, refresh
//! records, single-use marks and ended ID tokens in Redis, so that several
//! instances serve the same sessions; ends travel to every instance on a
//! pub/sub channel. This module owns the key layout, how records are
//! written and read back, the Lua scripts that keep each operation atomic,
//! the instance's short-lived local cache, the event stream, and the
//! connection to Redis (one server, or the primary that Sentinel names).
//!
//! Key layout (every key starts with `key_prefix`, `P` below):
//!
//! | key | type | holds | lives until |
//! |---|---|---|---|
//! | `Ps:{SessionId::encoded}` | hash | `r` the record (JSON), `seen`, `exp`, `idle` | the session's end (`ends_at`) |
//! | `Pp:{public id}` | string | the encoded session id | the session's maximum lifetime |
//! | `Psub:{sha256(sub)}`, `Psid:{sha256(sid)}` | set | encoded session ids | the latest member's maximum lifetime; dead members pruned on read |
//! | `Pr:{sha256(refresh token)}` | hash | `rec` the record (JSON), `rot` when rotated | the record's `expires_at` |
//! | `Pt:{token digest}` | string | the encoded id of the ID token's session | the ID token's `exp` (at most 24 h) |
//! | `Ponce:{kind}:{digest}` | string | `1` | the mark's time |
//! | channel `Pevents` | pub/sub | `{"session","reason","from"}` | — |
//!
//! The session id is the store's name for a session, as in any server-side
//! session store: whoever can read Redis holds every session. Refresh
//! tokens, login states and logout-token ids appear only as SHA-256 digests.
//!
//! Every call runs on the store's own small runtime (Pingora's services
//! each have one; a connection must outlive any of them) and gives up after
//! `command_timeout`, answering `StoreError::Unavailable` with a short
//! message that names no key.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::refresh::RefreshRecord;
use super::store::{
    check_size, EndObserver, SessionChange, SessionQuery, SessionStore, SingleUse, StoreError,
    StoreEvent,
};
use super::{EndReason, Session, SessionId};
use crate::config::{Redis as RedisConfig, RedisTarget};
use crate::metrics::Metrics;

/// The `store` label of this store's metrics.
const STORE: &str = "redis";
/// Ended sessions' ID tokens are remembered at most this long.
const MAX_ENDED_TOKEN_SECS: u64 = 24 * 3600;
/// How often reachability is probed (for `/readyz` and the gauge).
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Optimistic updates retried at most this often against concurrent
/// writers (each retry pauses a little; `command_timeout` bounds them all).
const MAX_UPDATE_TRIES: usize = 32;
/// Public id → session id entries kept locally (they never change).
const PUBLIC_INDEX_CAPACITY: u64 = 100_000;
/// Sessions kept in the local cache at most.
const LOCAL_CACHE_CAPACITY: u64 = 100_000;

/// Key names, from the configured prefix. Pure, so the layout is tested
/// without a server.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn session(&self, id: &SessionId) -> String {
        format!("{}s:{}", self.prefix, id.encoded())
    }
    /// The prefix of session keys, for scripts that name a session by its
    /// encoded id.
    pub fn session_prefix(&self) -> String {
        format!("{}s:", self.prefix)
    }
    pub fn public(&self, public_id: &str) -> String {
        format!("{}p:{public_id}", self.prefix)
    }
    /// Subjects and provider sids are provider-controlled text: hashed, so
    /// a key stays short and free of separators whatever they contain.
    pub fn subject(&self, subject: &str) -> String {
        format!(
            "{}sub:{}",
            self.prefix,
            hex(&crate::token::sha256(subject.as_bytes()))
        )
    }
    pub fn provider_sid(&self, sid: &str) -> String {
        format!(
            "{}sid:{}",
            self.prefix,
            hex(&crate::token::sha256(sid.as_bytes()))
        )
    }
    pub fn refresh(&self, hash: &[u8; 32]) -> String {
        format!("{}r:{}", self.prefix, hex(hash))
    }
    pub fn id_token(&self, digest: &[u8; 32]) -> String {
        format!("{}t:{}", self.prefix, hex(digest))
    }
    pub fn single_use(&self, kind: SingleUse, key: &[u8; 32]) -> String {
        format!("{}once:{}:{}", self.prefix, kind.label(), hex(key))
    }
    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}

/// An end as it travels on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndMessage {
    /// The session's public id.
    pub session: String,
    /// `EndReason::label`.
    pub reason: String,
    /// The publishing instance, so that it can skip its own echo.
    pub from: String,
}

impl EndMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The event in `payload`, unless it is malformed or `own` sent it.
    pub fn decode(payload: &[u8], own: &str) -> Option<StoreEvent> {
        let message: EndMessage = serde_json::from_slice(payload).ok()?;
        if message.from == own || !message.session.starts_with("s-") {
            return None;
        }
        // A reason this instance does not know (sent by a newer version
        // during a rolling upgrade) still ends the session here: dropping
        // the event would keep its sockets open. It closes as a revocation.
        Some(StoreEvent::Ended {
            public_id: message.session,
            reason: EndReason::from_label(&message.reason).unwrap_or(EndReason::Revoked),
        })
    }
}

/// A session record as written: JSON of the whole session. `seen` (the
/// latest activity) lives beside it so that a touch writes one number.
pub fn encode_session(session: &Session) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(session)
        .map_err(|_| StoreError::Unavailable("a session could not be encoded".into()))
}

/// The session stored under `id`'s key: `None` when the record does not
/// decode or names another session (treated as absent: fail closed).
pub fn decode_session(id: &SessionId, record: &[u8], seen: Option<u64>) -> Option<Session> {
    let mut session: Session = serde_json::from_slice(record).ok()?;
    if session.id != *id {
        return None;
    }
    if let Some(seen) = seen {
        session.last_seen = session.last_seen.max(seen);
    }
    Some(session)
}

/// When the ID token of `session` stops verifying (its `exp`, at most 24 h
/// from `now`), if it has one that has not expired.
fn id_token_expiry(session: &Session, now: u64) -> Option<([u8; 32], u64)> {
    let token = session.id_token.as_ref()?;
    let exp = crate::token::recorded_expiry(token)
        .unwrap_or(now + MAX_ENDED_TOKEN_SECS)
        .min(now + MAX_ENDED_TOKEN_SECS);
    (exp > now).then(|| (crate::token::TokenCache::key(&session.provider, token), exp))
}

/// A short description of a Redis failure: its kind, never its text
/// (which may quote a script or an argument).
fn describe(error: &RedisError) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connection_refusal() {
        "connection refused".into()
    } else if error.is_connection_dropped() || error.is_io_error() {
        "connection lost".into()
    } else if let Some(code) = error.code() {
        format!(
            "server answered {}",
            code.chars().take(24).collect::<String>()
        )
    } else {
        format!("{:?}", error.kind())
            .chars()
            .take(40)
            .collect::<String>()
    }
}

/// Whether a failure means the connection's server is the wrong one or
/// gone (so Sentinel should be asked again).
fn needs_new_primary(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_io_error()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
        || error.code() == Some("READONLY")
}

/// Where commands go: one server, or the primary Sentinel names (asked
/// again whenever the current one fails).
enum Target {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// The command connection. `None` until Sentinel has named a primary (or
/// after it failed); a direct connection is always present and reconnects
/// by itself.
struct Link {
    target: Target,
    manager: ArcSwapOption<ConnectionManager>,
    resolving: AtomicBool,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Link {
    fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
    }

    /// A client for the current primary.
    async fn client(&self) -> Result<redis::Client, String> {
        match &self.target {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                tokio::time::timeout(self.connect_timeout, sentinel.async_get_client())
                    .await
                    .map_err(|_| "sentinel did not answer in time".to_string())?
                    .map_err(|e| format!("no primary from sentinel: {}", describe(&e)))
            }
        }
    }

    /// The command connection, or `None` while a new primary is looked up
    /// (in the background: a request never waits for Sentinel).
    fn connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        if let Some(manager) = self.manager.load_full() {
            return Some((*manager).clone());
        }
        self.resolve_in_background();
        None
    }

    /// After a failure: with Sentinel, forget the primary and ask again.
    fn failed(self: &Arc<Self>, error: &RedisError) {
        if matches!(self.target, Target::Sentinel(_)) && needs_new_primary(error) {
            self.manager.store(None);
            self.resolve_in_background();
        }
    }

    fn resolve_in_background(self: &Arc<Self>) {
        if !matches!(self.target, Target::Sentinel(_)) {
            return;
        }
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(50);
            let mut logged = false;
            loop {
                match link.client().await {
                    Ok(client) => {
                        match ConnectionManager::new_lazy_with_config(client, link.manager_config())
                        {
                            Ok(manager) => {
                                link.manager.store(Some(Arc::new(manager)));
                                break;
                            }
                            Err(e) => {
                                if !logged {
                                    tracing::warn!(error = %describe(&e), "session store: cannot use the primary sentinel named");
                                    logged = true;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if !logged {
                            tracing::warn!(error = %e, "session store: no primary yet; asking sentinel again");
                            logged = true;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            link.resolving.store(false, Ordering::Release);
        });
    }
}

/// What the store knows of its own health.
#[derive(Default)]
struct Health {
    /// The last probe or command got an answer.
    answering: AtomicBool,
    /// The event stream is subscribed.
    subscribed: AtomicBool,
    /// How many times the event stream was subscribed.
    subscriptions: std::sync::atomic::AtomicU64,
}

/// Logs the first corrupt record a store meets, and only counts the rest.
#[derive(Default)]
struct CorruptionLog(AtomicBool);

impl CorruptionLog {
    fn note(&self, what: &str) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                what,
                "session store: a record in Redis does not decode; treated as absent (further ones are not logged)"
            );
        }
    }
}

/// Everything the store's tasks share.
struct Inner {
    link: Arc<Link>,
    keys: Keys,
    command_timeout: Duration,
    /// Sessions as last read or written here, each for at most `local_cache`.
    cache: Option<moka::future::Cache<SessionId, Arc<Session>>>,
    /// Public id → session id (never changes), for `load_public` and events.
    by_public: moka::sync::Cache<String, SessionId>,
    events: broadcast::Sender<StoreEvent>,
    /// This instance's name on the channel.
    instance: String,
    on_end: Option<EndObserver>,
    metrics: Arc<Metrics>,
    health: Health,
    corrupt: CorruptionLog,
    scripts: Scripts,
}

/// The Lua scripts; each runs atomically on the server.
struct Scripts {
    save: redis::Script,
    touch: redis::Script,
    end_if_ended: redis::Script,
    update: redis::Script,
    remove: redis::Script,
    rotate: redis::Script,
    token_ended: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            // KEYS: session, public, subject set, sid set, token.
            // ARGV: record, seen, exp, idle, ends_at, encoded id, now,
            //       token exp (0: none), has sid (1/0).
            save: redis::Script::new(
                r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'seen', ARGV[2], 'exp', ARGV[3], 'idle', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], ARGV[6])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
local want = tonumber(ARGV[3]) - tonumber(ARGV[7])
local function index(key)
  redis.call('SADD', key, ARGV[6])
  if redis.call('TTL', key) < want then redis.call('EXPIRE', key, want) end
end
index(KEYS[3])
if ARGV[9] == '1' then index(KEYS[4]) end
if tonumber(ARGV[8]) > tonumber(ARGV[7]) then
  redis.call('SET', KEYS[5], ARGV[6])
  redis.call('EXPIREAT', KEYS[5], ARGV[8])
end
return 1
"#,
            ),
            // Moves `seen` forward (never back) while the session lives,
            // and its expiry with it. KEYS: session. ARGV: now.
            touch: redis::Script::new(
                r#"
local v = redis.call('HMGET', KEYS[1], 'r', 'seen', 'exp', 'idle')
if not v[1] then return false end
local now, seen, exp, idle = tonumber(ARGV[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
if seen and exp and idle and now > seen and now < exp and now < seen + idle then
  redis.call('HSET', KEYS[1], 'seen', ARGV[1])
  redis.call('EXPIREAT', KEYS[1], math.min(exp, now + idle))
  return {v[1], ARGV[1]}
end
return {v[1], v[2] or '0'}
"#,
            ),
            // Deletes a session that has ended by `now` as stored: 1 for
            // the one caller that deleted it (who reports the end).
            // KEYS: session, public. ARGV: now.
            end_if_ended: redis::Script::new(
                r#"
local v = redis.call('HMGET', KEYS[1], 'seen', 'exp', 'idle')
local now, seen, exp, idle = tonumber(ARGV[1]), tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
if not v[1] and not v[2] then return 0 end
if not seen or not exp or not idle or now >= exp or now >= seen + idle then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#,
            ),
            // Compare-and-set of the record: 0 gone (stays gone), -1
            // changed meanwhile (read again), else the stored `seen`.
            // KEYS: session. ARGV: sha1 of the record read, new record,
            // its last_seen, exp, idle.
            update: redis::Script::new(
                r#"
local cur = redis.call('HGET', KEYS[1], 'r')
if not cur then return 0 end
if redis.sha1hex(cur) ~= ARGV[1] then return -1 end
local seen = math.max(tonumber(redis.call('HGET', KEYS[1], 'seen')) or 0, tonumber(ARGV[3]))
local exp, idle = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'r', ARGV[2], 'seen', string.format('%d', seen), 'exp', ARGV[4], 'idle', ARGV[5])
redis.call('EXPIREAT', KEYS[1], string.format('%d', math.min(exp, seen + idle)))
return seen
"#,
            ),
            // KEYS: session, public. ARGV: channel, message.
            remove: redis::Script::new(
                r#"
local v = redis.call('HMGET', KEYS[1], 'r', 'seen')
if not v[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return false
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {v[1], v[2] or '0'}
"#,
            ),
            // KEYS: refresh record. ARGV: now.
            rotate: redis::Script::new(
                r#"
local v = redis.call('HMGET', KEYS[1], 'rec', 'rot')
if not v[1] then return false end
if not v[2] then redis.call('HSET', KEYS[1], 'rot', ARGV[1]) end
return {v[1], v[2] or ''}
"#,
            ),
            // KEYS: token. ARGV: session key prefix.
            token_ended: redis::Script::new(
                r#"
local id = redis.call('GET', KEYS[1])
if not id then return 0 end
if redis.call('EXISTS', ARGV[1] .. id) == 1 then return 0 end
return 1
"#,
            ),
        }
    }
}

/// The hex SHA-1 of `bytes`, as Lua's `redis.sha1hex` writes it: the
/// update script's check that nobody changed the record meanwhile (an
/// identity check, not a security one).
fn sha1_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref())
}

/// A refresh record as written: everything but `rotated_at`, which lives
/// beside it so that rotating is one atomic field write.
fn encode_refresh(record: &RefreshRecord) -> Result<String, StoreError> {
    let mut plain = record.clone();
    plain.rotated_at = None;
    serde_json::to_string(&plain)
        .map_err(|_| StoreError::Unavailable("a refresh record could not be encoded".into()))
}

fn decode_refresh(record: &[u8], rotated: Option<&str>) -> Option<RefreshRecord> {
    let mut decoded: RefreshRecord = serde_json::from_slice(record).ok()?;
    decoded.rotated_at = match rotated {
        None | Some("") => None,
        Some(at) => Some(at.parse().ok()?),
    };
    Some(decoded)
}

fn parse_seen(text: Option<&str>) -> Option<u64> {
    text.and_then(|t| t.parse().ok())
}

/// The shared store. Dropping it stops its background tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
    /// The store's own runtime (see the module comment); shut down without
    /// blocking on drop, which may happen inside another runtime.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A client for the one server `url` names, with the configured
/// credentials and TLS.
fn node_client(config: &RedisConfig) -> Result<redis::Client, String> {
    let RedisTarget::Url(url) = &config.target else {
        return Err("not a URL target".into());
    };
    let mut parsed =
        url::Url::parse(url.expose()).map_err(|_| "sessions.redis.url: not a URL".to_string())?;
    if config.tls && parsed.scheme() == "redis" {
        // `tls: true` beside a redis:// URL.
        let rest = parsed.as_str()["redis".len()..].to_string();
        parsed = url::Url::parse(&format!("rediss{rest}"))
            .map_err(|_| "sessions.redis.url: not a URL".to_string())?;
    }
    let mut info = redis::IntoConnectionInfo::into_connection_info(parsed.as_str())
        .map_err(|e| format!("sessions.redis.url: {}", describe(&e)))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    redis::Client::open(info).map_err(|e| format!("sessions.redis: {}", describe(&e)))
}

fn sentinel_client(config: &RedisConfig) -> Result<redis::sentinel::SentinelClient, String> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    let RedisTarget::Sentinel { master, nodes } = &config.target else {
        return Err("not a sentinel target".into());
    };
    let addrs = nodes
        .iter()
        .filter_map(|node| {
            let (host, port) = node.rsplit_once(':')?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = port.parse().ok()?;
            Some(if config.tls {
                redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host, port)
            })
        })
        .collect::<Vec<_>>();
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| format!("sessions.redis.sentinel: {}", describe(&e)))?;
    if config.tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
    }
    if let Some(user) = &config.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &config.password {
        builder = builder.set_client_to_redis_password(password.expose());
    }
    builder
        .build()
        .map_err(|e| format!("sessions.redis.sentinel: {}", describe(&e)))
}

impl RedisStore {
    /// A store for `config`. Connects lazily: an unreachable Redis makes
    /// calls fail (and `/readyz` unready), never start-up.
    pub fn new(
        config: &RedisConfig,
        metrics: Arc<Metrics>,
        on_end: Option<EndObserver>,
    ) -> Result<Self, String> {
        // redis's TLS asks rustls for the process's provider; ring is in
        // the tree too (through Pingora), so it must be named.
        if config.tls {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("sessions.redis: cannot start its runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let _entered = runtime.enter();
        let target = match &config.target {
            RedisTarget::Url(_) => Target::Direct(node_client(config)?),
            RedisTarget::Sentinel { .. } => {
                Target::Sentinel(tokio::sync::Mutex::new(sentinel_client(config)?))
            }
        };
        let link = Link {
            target,
            manager: ArcSwapOption::empty(),
            resolving: AtomicBool::new(false),
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
        };
        // One server: a connection that reconnects by itself, made on
        // first use. With Sentinel, one is made once a primary is named.
        if let Target::Direct(client) = &link.target {
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), link.manager_config())
                    .map_err(|e| format!("sessions.redis: {}", describe(&e)))?;
            link.manager.store(Some(Arc::new(manager)));
        }
        let link = Arc::new(link);
        let mut instance = [0u8; 8];
        aws_lc_rs::rand::fill(&mut instance)
            .map_err(|_| "sessions.redis: no randomness for the instance name".to_string())?;
        let cache = (!config.local_cache.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(LOCAL_CACHE_CAPACITY)
                .time_to_live(config.local_cache)
                .build()
        });
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            link: link.clone(),
            keys: Keys::new(&config.key_prefix),
            command_timeout: config.command_timeout,
            cache,
            by_public: moka::sync::Cache::builder()
                .max_capacity(PUBLIC_INDEX_CAPACITY)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            events,
            instance: hex(&instance),
            on_end,
            metrics,
            health: Health::default(),
            corrupt: CorruptionLog::default(),
            scripts: Scripts::new(),
        });
        inner.metrics.store_up.with_label_values(&[STORE]).set(0);
        link.resolve_in_background();
        handle.spawn(follow_channel(inner.clone()));
        handle.spawn(probe(inner.clone()));
        drop(_entered);
        Ok(RedisStore {
            inner,
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `work` on the store's runtime, bounded by `command_timeout`,
    /// counted and timed under `operation`.
    async fn run<T, F, Fut>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let started = Instant::now();
        let timeout = inner.command_timeout;
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, work(inner)).await });
        let result = match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("timed out".into())),
            Err(_) => Err(StoreError::Unavailable("the store's task failed".into())),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(StoreError::TooLarge { .. }) => "too_large",
        };
        let metrics = &self.inner.metrics;
        metrics
            .store_operations
            .with_label_values(&[STORE, operation, label])
            .inc();
        metrics
            .store_duration
            .with_label_values(&[STORE, operation])
            .observe(started.elapsed().as_secs_f64());
        if matches!(result, Err(StoreError::Unavailable(_))) {
            self.inner.health.answering.store(false, Ordering::Relaxed);
        }
        result
    }

    /// The instance's name on the event channel.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }
}

impl Inner {
    /// The command connection, or `Unavailable`.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.link
            .connection()
            .ok_or_else(|| StoreError::Unavailable("no primary known yet".into()))
    }

    /// Maps a Redis failure (and tells the link, which may look for a new primary).
    fn failure(&self, error: RedisError) -> StoreError {
        self.link.failed(&error);
        StoreError::Unavailable(describe(&error))
    }

    async fn cached(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.cache.as_ref()?.get(id).await
    }

    async fn remember(&self, session: &Arc<Session>) {
        self.by_public
            .insert(session.id.public_id(), session.id.clone());
        if let Some(cache) = &self.cache {
            cache.insert(session.id.clone(), session.clone()).await;
        }
    }

    async fn forget(&self, id: &SessionId) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id).await;
        }
    }

    /// The session as stored, without judging whether it has ended.
    async fn read(&self, id: &SessionId) -> Result<Option<(Session, Vec<u8>)>, StoreError> {
        let mut con = self.connection()?;
        let (record, seen): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.session(id))
            .arg("r")
            .arg("seen")
            .query_async(&mut con)
            .await
            .map_err(|e| self.failure(e))?;
        let Some(record) = record else {
            return Ok(None);
        };
        match decode_session(id, &record, parse_seen(seen.as_deref())) {
            Some(session) => Ok(Some((session, record))),
            None => {
                self.corrupt.note("session");
                Ok(None)
            }
        }
    }

    /// A session found ended at `now`: deleted if it still is, and
    /// reported by whichever caller deleted it.
    async fn ended(
        &self,
        session: &Session,
        reason: EndReason,
        now: u64,
    ) -> Result<(), StoreError> {
        self.forget(&session.id).await;
        let mut con = self.connection()?;
        let deleted: i64 = self
            .scripts
            .end_if_ended
            .key(self.keys.session(&session.id))
            .key(self.keys.public(&session.id.public_id()))
            .arg(now)
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.failure(e))?;
        if deleted == 1 {
            if let Some(on_end) = &self.on_end {
                on_end(session, reason);
            }
        }
        Ok(())
    }

    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let Some((session, _)) = self.read(id).await? else {
            self.forget(id).await;
            return Ok(None);
        };
        match session.check(now) {
            Ok(()) => {
                let session = Arc::new(session);
                self.remember(&session).await;
                Ok(Some(session))
            }
            Err(reason) => {
                self.ended(&session, reason, now).await?;
                Ok(None)
            }
        }
    }

    async fn save(&self, session: &Session) -> Result<(), StoreError> {
        let now = super::now();
        let record = encode_session(session)?;
        let encoded = session.id.encoded();
        let sid = session.provider_sid();
        let token = id_token_expiry(session, now);
        let token_key = token
            .map(|(digest, _)| self.keys.id_token(&digest))
            .unwrap_or_else(|| self.keys.id_token(&[0; 32]));
        let mut con = self.connection()?;
        let _: i64 = self
            .scripts
            .save
            .key(self.keys.session(&session.id))
            .key(self.keys.public(&session.id.public_id()))
            .key(self.keys.subject(&session.subject))
            .key(self.keys.provider_sid(sid.unwrap_or("")))
            .key(token_key)
            .arg(record)
            .arg(session.last_seen)
            .arg(session.expires_at)
            .arg(session.idle_timeout_secs)
            .arg(session.ends_at())
            .arg(&encoded)
            .arg(now)
            .arg(token.map_or(0, |(_, exp)| exp))
            .arg(if sid.is_some() { "1" } else { "0" })
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.failure(e))?;
        Ok(())
    }
}

/// Probes Redis every `PROBE_EVERY`: the up gauge and `/readyz` follow.
async fn probe(inner: Arc<Inner>) {
    let mut was_up = None;
    // The subscription in place when commands stopped getting answers.
    let mut outage_under: Option<u64> = None;
    loop {
        let answering = match inner.link.connection() {
            Some(mut con) => {
                let ping = tokio::time::timeout(
                    inner.command_timeout,
                    redis::cmd("PING").query_async::<String>(&mut con),
                )
                .await;
                match ping {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        inner.link.failed(&e);
                        false
                    }
                    Err(_) => false,
                }
            }
            None => false,
        };
        inner.health.answering.store(answering, Ordering::Relaxed);
        let subscription = inner.health.subscriptions.load(Ordering::Relaxed);
        match (answering, outage_under) {
            (false, None) => outage_under = Some(subscription),
            // Commands were cut off while the subscription stayed up (a
            // network partition leaves no reset on an idle connection):
            // ends published meanwhile may never have arrived.
            (true, Some(before)) => {
                if before == subscription && inner.health.subscribed.load(Ordering::Relaxed) {
                    resync(&inner, "the session store answers again");
                }
                outage_under = None;
            }
            _ => {}
        }
        let up = answering && inner.health.subscribed.load(Ordering::Relaxed);
        inner
            .metrics
            .store_up
            .with_label_values(&[STORE])
            .set(i64::from(up));
        if was_up != Some(up) {
            if up {
                tracing::info!("session store reachable");
            } else if was_up.is_some() {
                tracing::warn!("session store unreachable: new logins and uncached sessions are refused (503) until it answers");
            }
            was_up = Some(up);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// After a time in which ends may have been missed: the local cache is
/// emptied and every live connection's session is to be looked up again.
fn resync(inner: &Inner, why: &str) {
    if let Some(cache) = &inner.cache {
        cache.invalidate_all();
    }
    inner
        .metrics
        .store_resyncs
        .with_label_values(&[STORE])
        .inc();
    let _ = inner.events.send(StoreEvent::Resync);
    tracing::info!(
        reason = why,
        "session store: live sessions are looked up again"
    );
}

/// Follows the event channel for as long as the store lives: ends from
/// other instances become `StoreEvent::Ended`; a subscription re-made
/// after a loss becomes `StoreEvent::Resync` (ends may have been missed),
/// and the local cache is emptied.
async fn follow_channel(inner: Arc<Inner>) {
    let channel = inner.keys.channel();
    let mut lost = false;
    let mut delay = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let client = inner.link.client().await?;
            let mut pubsub =
                tokio::time::timeout(inner.link.connect_timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| describe(&e))?;
            tokio::time::timeout(inner.command_timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| describe(&e))?;
            Ok::<_, String>(pubsub)
        }
        .await;
        let mut pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(error) => {
                if !lost {
                    tracing::warn!(%error, "session store: cannot subscribe to its event channel; retrying");
                    lost = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        inner.health.subscriptions.fetch_add(1, Ordering::Relaxed);
        inner.health.subscribed.store(true, Ordering::Relaxed);
        if lost {
            // Ends published while nobody here listened are lost.
            resync(&inner, "the event channel is subscribed again");
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(event) = EndMessage::decode(message.get_payload_bytes(), &inner.instance)
            else {
                continue;
            };
            if let StoreEvent::Ended { public_id, .. } = &event {
                if let Some(id) = inner.by_public.get(public_id) {
                    inner.forget(&id).await;
                }
            }
            inner
                .metrics
                .store_events
                .with_label_values(&[STORE, "received"])
                .inc();
            let _ = inner.events.send(event);
        }
        drop(messages);
        inner.health.subscribed.store(false, Ordering::Relaxed);
        tracing::warn!("session store: event channel lost; resubscribing");
        lost = true;
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        if let Some(session) = self.inner.cached(id).await {
            if session.check(now).is_ok() {
                self.inner
                    .metrics
                    .session_cache
                    .with_label_values(&["hit"])
                    .inc();
                return Ok(Some(session));
            }
        }
        self.inner
            .metrics
            .session_cache
            .with_label_values(&["miss"])
            .inc();
        let id = id.clone();
        self.run(
            "load",
            move |inner| async move { inner.load(&id, now).await },
        )
        .await
    }

    async fn save(&self, session: &Session) -> Result<(), StoreError> {
        check_size(session)?;
        let session = Arc::new(session.clone());
        self.run("save", move |inner| async move {
            inner.save(&session).await?;
            inner.remember(&session).await;
            Ok(())
        })
        .await
    }

    async fn remove(
        &self,
        id: &SessionId,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        let id = id.clone();
        let removed = self
            .run("remove", move |inner| async move {
                inner.forget(&id).await;
                let message = EndMessage {
                    session: id.public_id(),
                    reason: reason.label().to_string(),
                    from: inner.instance.clone(),
                };
                let mut con = inner.connection()?;
                let found: Option<(Vec<u8>, String)> = inner
                    .scripts
                    .remove
                    .key(inner.keys.session(&id))
                    .key(inner.keys.public(&id.public_id()))
                    .arg(inner.keys.channel())
                    .arg(message.encode())
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| inner.failure(e))?;
                let Some((record, seen)) = found else {
                    return Ok(None);
                };
                inner
                    .metrics
                    .store_events
                    .with_label_values(&[STORE, "published"])
                    .inc();
                let session = decode_session(&id, &record, parse_seen(Some(&seen)));
                if session.is_none() {
                    inner.corrupt.note("session");
                }
                Ok(session)
            })
            .await?;
        Ok(removed)
    }

    async fn update(
        &self,
        id: &SessionId,
        now: u64,
        change: SessionChange,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        let id = id.clone();
        self.run("update", move |inner| async move {
            for _ in 0..MAX_UPDATE_TRIES {
                let Some((current, record)) = inner.read(&id).await? else {
                    inner.forget(&id).await;
                    return Ok(None);
                };
                if let Err(reason) = current.check(now) {
                    inner.ended(&current, reason, now).await?;
                    return Ok(None);
                }
                let mut updated = current;
                change(&mut updated);
                // A change that outgrows the limit is not applied.
                check_size(&updated)?;
                let written = encode_session(&updated)?;
                let mut con = inner.connection()?;
                let stored: i64 = inner
                    .scripts
                    .update
                    .key(inner.keys.session(&id))
                    .arg(sha1_hex(&record))
                    .arg(written)
                    .arg(updated.last_seen)
                    .arg(updated.expires_at)
                    .arg(updated.idle_timeout_secs)
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| inner.failure(e))?;
                match stored {
                    // Removed meanwhile: it stays removed.
                    0 => {
                        inner.forget(&id).await;
                        return Ok(None);
                    }
                    // Another writer changed the record: apply the change
                    // again, to what it wrote, after a short random pause
                    // so that writers racing in step fall out of it.
                    -1 => {
                        let mut jitter = [0u8; 1];
                        let _ = aws_lc_rs::rand::fill(&mut jitter);
                        tokio::time::sleep(Duration::from_micros(200 + u64::from(jitter[0]) * 8))
                            .await;
                        continue;
                    }
                    seen => {
                        updated.last_seen = updated.last_seen.max(u64::try_from(seen).unwrap_or(0));
                        let updated = Arc::new(updated);
                        inner.remember(&updated).await;
                        return Ok(Some(updated));
                    }
                }
            }
            Err(StoreError::Unavailable(
                "the session kept changing underneath an update".into(),
            ))
        })
        .await
    }

    async fn touch(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let id = id.clone();
        self.run("touch", move |inner| async move {
            let mut con = inner.connection()?;
            let found: Option<(Vec<u8>, String)> = inner
                .scripts
                .touch
                .key(inner.keys.session(&id))
                .arg(now)
                .invoke_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            let Some((record, seen)) = found else {
                inner.forget(&id).await;
                return Ok(None);
            };
            let Some(session) = decode_session(&id, &record, parse_seen(Some(&seen))) else {
                inner.corrupt.note("session");
                inner.forget(&id).await;
                return Ok(None);
            };
            match session.check(now) {
                Ok(()) => {
                    let session = Arc::new(session);
                    inner.remember(&session).await;
                    Ok(Some(session))
                }
                Err(reason) => {
                    inner.ended(&session, reason, now).await?;
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn load_public(
        &self,
        public_id: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        if let Some(id) = self.inner.by_public.get(public_id) {
            return self.load(&id, now).await;
        }
        let public_id = public_id.to_string();
        let id = self
            .run("load_public", move |inner| async move {
                let mut con = inner.connection()?;
                let encoded: Option<String> = con
                    .get(inner.keys.public(&public_id))
                    .await
                    .map_err(|e| inner.failure(e))?;
                let id = encoded.and_then(|e| {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(e)
                        .ok()
                        .and_then(|bytes| SessionId::from_bytes(&bytes))
                });
                // A pointer to another session is corrupt: ignored.
                Ok(id.filter(|id| id.public_id() == public_id))
            })
            .await?;
        match id {
            Some(id) => self.load(&id, now).await,
            None => Ok(None),
        }
    }

    async fn token_ended(&self, digest: &[u8; 32]) -> Result<bool, StoreError> {
        let digest = *digest;
        self.run("token_ended", move |inner| async move {
            let mut con = inner.connection()?;
            let ended: i64 = inner
                .scripts
                .token_ended
                .key(inner.keys.id_token(&digest))
                .arg(inner.keys.session_prefix())
                .invoke_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            Ok(ended == 1)
        })
        .await
    }

    async fn save_refresh(&self, hash: [u8; 32], record: RefreshRecord) -> Result<(), StoreError> {
        self.run("save_refresh", move |inner| async move {
            let key = inner.keys.refresh(&hash);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .del(&key)
                .ignore()
                .hset(&key, "rec", encode_refresh(&record)?)
                .ignore();
            if let Some(at) = record.rotated_at {
                pipe.hset(&key, "rot", at).ignore();
            }
            pipe.cmd("EXPIREAT")
                .arg(&key)
                .arg(record.expires_at)
                .ignore();
            let mut con = inner.connection()?;
            pipe.query_async::<()>(&mut con)
                .await
                .map_err(|e| inner.failure(e))
        })
        .await
    }

    async fn load_refresh(&self, hash: &[u8; 32]) -> Result<Option<RefreshRecord>, StoreError> {
        let hash = *hash;
        self.run("load_refresh", move |inner| async move {
            let mut con = inner.connection()?;
            let (record, rotated): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
                .arg(inner.keys.refresh(&hash))
                .arg("rec")
                .arg("rot")
                .query_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            let Some(record) = record else {
                return Ok(None);
            };
            let decoded = decode_refresh(&record, rotated.as_deref());
            if decoded.is_none() {
                inner.corrupt.note("refresh record");
            }
            Ok(decoded.filter(|r| r.expires_at > super::now()))
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let hash = *hash;
        self.run("rotate_refresh", move |inner| async move {
            let mut con = inner.connection()?;
            let found: Option<(Vec<u8>, String)> = inner
                .scripts
                .rotate
                .key(inner.keys.refresh(&hash))
                .arg(now)
                .invoke_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            let Some((record, rotated)) = found else {
                return Ok(None);
            };
            let decoded = decode_refresh(&record, Some(&rotated));
            if decoded.is_none() {
                inner.corrupt.note("refresh record");
            }
            Ok(decoded.filter(|r| r.expires_at > super::now()))
        })
        .await
    }

    async fn find(
        &self,
        query: &SessionQuery<'_>,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        // The narrower index: a provider sid names one login.
        let index = match (query.provider_sid, query.subject) {
            (Some(sid), _) => self.inner.keys.provider_sid(sid),
            (None, Some(subject)) => self.inner.keys.subject(subject),
            (None, None) => return Ok(Vec::new()),
        };
        let members: Vec<String> = {
            let index = index.clone();
            self.run("find", move |inner| async move {
                let mut con = inner.connection()?;
                con.smembers(&index).await.map_err(|e| inner.failure(e))
            })
            .await?
        };
        let ids: Vec<SessionId> = members
            .iter()
            .filter_map(|encoded| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded)
                    .ok()
                    .and_then(|bytes| SessionId::from_bytes(&bytes))
            })
            .collect();
        let sessions: Vec<(SessionId, Option<Session>)> = self
            .run("find", move |inner| async move {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET")
                        .arg(inner.keys.session(id))
                        .arg("r")
                        .arg("seen");
                }
                let mut con = inner.connection()?;
                let rows: Vec<(Option<Vec<u8>>, Option<String>)> = pipe
                    .query_async(&mut con)
                    .await
                    .map_err(|e| inner.failure(e))?;
                let found: Vec<(SessionId, Option<Session>)> = ids
                    .into_iter()
                    .zip(rows)
                    .map(|(id, (record, seen))| {
                        let session = record
                            .and_then(|r| decode_session(&id, &r, parse_seen(seen.as_deref())));
                        (id, session)
                    })
                    .collect();
                // Members whose session is gone are pruned, lazily.
                let gone: Vec<String> = found
                    .iter()
                    .filter(|(_, s)| s.is_none())
                    .map(|(id, _)| id.encoded())
                    .collect();
                if !gone.is_empty() {
                    let _: Result<i64, _> = con.srem(&index, gone).await;
                }
                Ok(found)
            })
            .await?;
        Ok(sessions
            .into_iter()
            .filter_map(|(_, s)| s)
            .filter(|s| query.matches(s) && s.check(now).is_ok())
            .take(limit)
            .map(Arc::new)
            .collect())
    }

    async fn first_use(
        &self,
        kind: SingleUse,
        key: [u8; 32],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.run("first_use", move |inner| async move {
            let mut con = inner.connection()?;
            let set: Option<String> = redis::cmd("SET")
                .arg(inner.keys.single_use(kind, &key))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            Ok(set.is_some())
        })
        .await
    }

    async fn forget_use(&self, kind: SingleUse, key: [u8; 32]) -> Result<(), StoreError> {
        self.run("forget_use", move |inner| async move {
            let mut con = inner.connection()?;
            let _: i64 = redis::cmd("DEL")
                .arg(inner.keys.single_use(kind, &key))
                .query_async(&mut con)
                .await
                .map_err(|e| inner.failure(e))?;
            Ok(())
        })
        .await
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.inner.events.subscribe())
    }

    fn approximate_count(&self) -> Option<u64> {
        // Counting would mean scanning a shared keyspace: not cheap.
        None
    }

    fn reachable(&self) -> bool {
        self.inner.health.answering.load(Ordering::Relaxed)
            && self.inner.health.subscribed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            id: SessionId::random().unwrap(),
            deployment: "d".into(),
            provider: "p".into(),
            subject: "alice".into(),
            claims: serde_json::Map::new(),
            created_at: 1000,
            last_seen: 1000,
            expires_at: 4600,
            idle_timeout_secs: 600,
            refresh_token: Some("r".into()),
            id_token: None,
            checked_at: 1000,
            provider_token_lifetime_secs: None,
        }
    }

    #[test]
    fn keys_carry_the_prefix_and_hash_what_the_provider_or_client_controls() {
        let keys = Keys::new("pc:");
        let s = session();
        assert_eq!(keys.session(&s.id), format!("pc:s:{}", s.id.encoded()));
        assert_eq!(keys.session_prefix(), "pc:s:");
        assert_eq!(
            keys.public(&s.id.public_id()),
            format!("pc:p:{}", s.id.public_id())
        );
        let subject = keys.subject("alice:with:colons");
        assert!(subject.starts_with("pc:sub:") && subject.len() == "pc:sub:".len() + 64);
        assert!(!subject.contains("alice"));
        assert_ne!(keys.subject("a"), keys.provider_sid("a"), "own namespaces");
        assert_eq!(
            keys.refresh(&[0xab; 32]),
            format!("pc:r:{}", "ab".repeat(32))
        );
        assert_eq!(keys.id_token(&[1; 32]), format!("pc:t:{}", "01".repeat(32)));
        assert_eq!(
            keys.single_use(SingleUse::LogoutTokenId, &[2; 32]),
            format!("pc:once:logout_jti:{}", "02".repeat(32))
        );
        assert_eq!(keys.channel(), "pc:events");
    }

    #[test]
    fn session_records_round_trip_and_take_the_later_activity() {
        let s = session();
        let record = encode_session(&s).unwrap();
        assert_eq!(decode_session(&s.id, &record, None), Some(s.clone()));
        let seen = decode_session(&s.id, &record, Some(1500)).unwrap();
        assert_eq!(seen.last_seen, 1500);
        let older = decode_session(&s.id, &record, Some(10)).unwrap();
        assert_eq!(older.last_seen, 1000, "never back");
        // Garbage, or another session's record under this id: absent.
        assert_eq!(decode_session(&s.id, b"{not json", None), None);
        let other = SessionId::random().unwrap();
        assert_eq!(decode_session(&other, &record, None), None);
    }

    #[test]
    fn refresh_records_keep_their_rotation_beside_them() {
        let record = RefreshRecord {
            session: SessionId::random().unwrap(),
            deployment: "d".into(),
            rotates: true,
            rotated_at: Some(987_654_321),
            expires_at: 5000,
        };
        let written = encode_refresh(&record).unwrap();
        assert!(
            !written.contains("987654321"),
            "rotation is not in the record"
        );
        assert_eq!(
            decode_refresh(written.as_bytes(), Some("987654321")),
            Some(record.clone())
        );
        let fresh = decode_refresh(written.as_bytes(), Some("")).unwrap();
        assert_eq!(fresh.rotated_at, None);
        assert_eq!(decode_refresh(written.as_bytes(), Some("soon")), None);
        assert_eq!(decode_refresh(b"[]", None), None);
    }

    #[test]
    fn end_messages_round_trip_and_an_instance_skips_its_own() {
        let message = EndMessage {
            session: "s-0123456789abcdef01234567".into(),
            reason: EndReason::Logout.label().into(),
            from: "me".into(),
        };
        let payload = message.encode();
        assert_eq!(
            EndMessage::decode(payload.as_bytes(), "other"),
            Some(StoreEvent::Ended {
                public_id: message.session.clone(),
                reason: EndReason::Logout
            })
        );
        assert_eq!(EndMessage::decode(payload.as_bytes(), "me"), None);
        // Every reason travels, back-channel logout's included.
        for reason in EndReason::ALL {
            let payload = EndMessage {
                reason: reason.label().into(),
                ..message.clone()
            }
            .encode();
            assert_eq!(
                EndMessage::decode(payload.as_bytes(), "other"),
                Some(StoreEvent::Ended {
                    public_id: message.session.clone(),
                    reason
                })
            );
        }
        // A reason from a newer version ends the session all the same.
        assert_eq!(
            EndMessage::decode(
                br#"{"session":"s-1","reason":"some_future_reason","from":"x"}"#,
                "me"
            ),
            Some(StoreEvent::Ended {
                public_id: "s-1".into(),
                reason: EndReason::Revoked
            })
        );
        for junk in [
            "",
            "{}",
            r#"{"session":"s-1","from":"x"}"#,
            r#"{"session":"not-a-public-id","reason":"logout","from":"x"}"#,
        ] {
            assert_eq!(EndMessage::decode(junk.as_bytes(), "me"), None, "{junk}");
        }
    }

    #[test]
    fn the_update_check_hashes_like_lua_sha1hex() {
        // redis.sha1hex("") and redis.sha1hex("abc").
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn failures_are_described_by_kind_never_by_their_text() {
        let refused = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "secret-password in a message",
        ));
        let text = describe(&refused);
        assert!(!text.contains("secret"), "{text}");
        assert!(needs_new_primary(&refused));
    }
}
