//! The live-connection registry: every proxied WebSocket, from its 101 to its
//! end, and the means to close any of them on demand.
//!
//! Pingora's upgraded-tunnel loop runs inside the request's task, out of reach
//! of the code that decides a session ended. The vendored `pingora-proxy`
//! carries a small patch for this (`ProxyHttp::upgraded_tunnel_close`, see
//! `vendor/pingora-proxy/PATCHED.md`): the tunnel loop also waits on a close
//! signal that portcullis hands it before the tunnel starts. A forced close
//! therefore works like this:
//!
//! 1. `LiveConnection::request_close` records the close code and reason once
//!    and fires the connection's `TunnelCloser`.
//! 2. The tunnel loop stops forwarding the client's bytes (abandoning a write
//!    the upstream does not take) and shuts down the write side of the
//!    upstream connection. A WebSocket server finishes the
//!    frame it was sending and ends its side; one that does not is cut off
//!    after `UPSTREAM_END_GRACE`. Either way the response body filter is
//!    called with end of stream, and the proxy appends a WebSocket close
//!    frame with the recorded code, provided the upstream→client byte stream
//!    is at a frame boundary (`proxy::frames` tracks this). Pingora then
//!    finishes the downstream side and drops the upstream connection.
//! 3. A client that stops reading could keep the proxy task blocked on a
//!    write forever (the tunnel loop is then not polling its close signal
//!    either); the sweeper (`sweep_overdue`) hard-closes the client socket of
//!    any connection still registered `HARD_CLOSE_AFTER` after its close was
//!    requested, which fails that write and ends the task.
//!
//! Nothing here holds a descriptor: a live WebSocket costs exactly two (client
//! and upstream), which is what sets how many one process can hold under its
//! descriptor limit (`capacity`). For the hard close the registry keeps the
//! client socket's number and its socket cookie (a kernel id never reused
//! while the machine runs), and acts on it only while holding the entry's
//! shard lock with the entry still present. Pingora drops the client socket
//! only after the `logging` phase, where the guard deregisters under that
//! same lock, so a present entry means an open socket; the cookie check
//! guards the remaining paths (a task cancelled at shutdown drops its parts
//! in no particular order).
//!
//! The entry is removed when the request's `logging` phase drops its guard.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::session::SessionId;

/// WebSocket close codes portcullis sends (SPEC §5).
pub mod close_code {
    /// The session reached its maximum lifetime or idle timeout.
    pub const SESSION_EXPIRED: u16 = 4001;
    /// The session was ended: logout, revocation, admin action, policy change.
    pub const SESSION_REVOKED: u16 = 4002;
    /// The proxy is shutting down (RFC 6455 "going away").
    pub const GOING_AWAY: u16 = 1001;
}

/// How long a requested close may take before the client socket is cut.
pub const HARD_CLOSE_AFTER: Duration = Duration::from_millis(750);

/// How long the upstream gets to end its side after a close was requested
/// (finishing the frame it was sending), before the tunnel ends without it.
/// Shorter than `HARD_CLOSE_AFTER`, so that the close frame still has time
/// to reach a client that reads.
pub const UPSTREAM_END_GRACE: Duration = Duration::from_millis(500);

/// Ends one upgraded tunnel from outside its task: Pingora's tunnel loop
/// waits on `signal` (the vendored `upgraded_tunnel_close` patch) and
/// `close` fires it. Cloning shares the same signal.
#[derive(Clone, Default)]
pub struct TunnelCloser(CancellationToken);

impl TunnelCloser {
    pub fn close(&self) {
        self.0.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }

    /// What the tunnel loop waits on: completes once `close` was called,
    /// with how long the upstream may take to end its side.
    pub fn signal(&self) -> BoxFuture<'static, Duration> {
        let token = self.0.clone();
        Box::pin(async move {
            token.cancelled().await;
            UPSTREAM_END_GRACE
        })
    }
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, Arc<LiveConnection>>>;

/// Why a connection was closed, for metrics and the close frame.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
    /// Metric label: `admin`, `expired`, `logout`, `shutdown`, ...
    pub label: &'static str,
    pub requested_at: Instant,
}

/// One proxied WebSocket.
pub struct LiveConnection {
    pub id: u64,
    pub deployment: Arc<str>,
    pub route: Arc<str>,
    /// The portcullis session this connection belongs to, once sessions exist.
    pub session: Option<Arc<str>>,
    /// Unix time at which its credential ends for good (its session's
    /// maximum lifetime, or its bearer token's `exp`): the connection is
    /// closed with 4001 then.
    pub expires_at: Option<u64>,
    /// For a bearer connection allowed to outlive its token: closed with
    /// 4001 after this long without a client data frame.
    pub idle_close: Option<IdleClose>,
    /// The session's idle clock, for connections authenticated by a session.
    pub activity: Option<SessionActivity>,
    /// The claims the connection was authenticated with (`None`:
    /// anonymous), so a reload can re-apply a deployment's rules to it.
    pub claims: Option<Arc<crate::token::Claims>>,
    pub started: SystemTime,
    pub started_at: Instant,
    tunnel: TunnelCloser,
    client: Option<ClientSocket>,
    close: OnceLock<CloseRequest>,
    hard_closed: OnceLock<()>,
}

impl LiveConnection {
    /// Asks for the connection to close with `code`. The first request wins;
    /// later ones return false and change nothing.
    pub fn request_close(&self, code: u16, reason: &str, label: &'static str) -> bool {
        let request = CloseRequest {
            code,
            reason: reason.to_string(),
            label,
            requested_at: Instant::now(),
        };
        if self.close.set(request).is_err() {
            return false;
        }
        // The tunnel loop ends the upstream side, then the stream; the close
        // frame is appended in the response body filter.
        self.tunnel.close();
        true
    }

    /// The pending close, if one was requested.
    pub fn close_request(&self) -> Option<&CloseRequest> {
        self.close.get()
    }

    /// Cuts the client socket. Only called with the shard lock held and the
    /// entry registered (see the module doc).
    fn hard_close(&self) {
        if self.hard_closed.set(()).is_err() {
            return;
        }
        let Some(client) = &self.client else {
            return;
        };
        if pingora::protocols::l4::ext::get_socket_cookie(client.fd).ok() != Some(client.cookie) {
            return;
        }
        // SAFETY: the descriptor is open and still the client's socket: the
        // entry is registered (so Pingora has not dropped the socket) and
        // the cookie matches. It is only borrowed for the shutdown call.
        let fd = unsafe { BorrowedFd::borrow_raw(client.fd) };
        let _ = socket2::SockRef::from(&fd).shutdown(Shutdown::Both);
    }
}

/// A session's idle clock as one of its live connections keeps it. The
/// client's data frames are activity; the store hears of it at most every
/// `touch_every` seconds, and only when the idle deadline computed here
/// passes does the store get asked whether the session really ended (another
/// tab's requests, or another instance, may have kept it alive).
pub struct SessionActivity {
    /// The session's id itself (not its public name): the store is keyed by it.
    pub id: SessionId,
    pub idle_timeout_secs: u64,
    /// The latest `last_seen` the store is known to hold (unix seconds).
    stored_last_seen: AtomicU64,
    /// The client's latest data frame on this connection (unix seconds).
    last_frame: AtomicU64,
}

/// Activity not yet recorded is written this long before the store would
/// otherwise judge the session idle, however recent the last write.
const RECORD_BEFORE_DEADLINE_SECS: u64 = 5;

impl SessionActivity {
    /// `opened_at`: the handshake, itself activity the store may not have seen.
    pub fn new(
        id: SessionId,
        idle_timeout_secs: u64,
        stored_last_seen: u64,
        opened_at: u64,
    ) -> Self {
        SessionActivity {
            id,
            idle_timeout_secs,
            stored_last_seen: AtomicU64::new(stored_last_seen),
            last_frame: AtomicU64::new(opened_at),
        }
    }

    /// Records a client data frame at `now` (unix seconds).
    pub fn note_frame(&self, now: u64) {
        self.last_frame.fetch_max(now, Ordering::Relaxed);
    }

    fn last_frame(&self) -> u64 {
        self.last_frame.load(Ordering::Relaxed)
    }

    fn stored_last_seen(&self) -> u64 {
        self.stored_last_seen.load(Ordering::Relaxed)
    }
}

/// The idle clock of a connection that has no session to keep one.
#[derive(Debug)]
pub struct IdleClose {
    pub timeout_secs: u64,
    /// The handshake, then the client's latest data frame (unix seconds).
    last_frame: AtomicU64,
}

impl IdleClose {
    pub fn new(timeout_secs: u64, opened_at: u64) -> Self {
        IdleClose {
            timeout_secs,
            last_frame: AtomicU64::new(opened_at),
        }
    }

    pub fn note_frame(&self, now: u64) {
        self.last_frame.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_at(&self, now: u64) -> bool {
        self.last_frame
            .load(Ordering::Relaxed)
            .saturating_add(self.timeout_secs)
            <= now
    }
}

/// What the store must hear about one session with live connections.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDue {
    pub id: SessionId,
    pub public_id: Arc<str>,
    /// The latest client data frame on any of its connections, when the store
    /// has not seen it yet (unix seconds): record it as activity.
    pub unrecorded_activity: Option<u64>,
    /// The idle deadline computed from what is known here has passed: ask
    /// the store whether the session still lives.
    pub idle_deadline_passed: bool,
}

/// The client side of a connection: its descriptor number and socket cookie.
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket {
    pub fd: RawFd,
    pub cookie: u64,
}

impl ClientSocket {
    /// Identifies the socket behind `fd`; `None` when the kernel cannot say.
    pub fn identify(fd: RawFd) -> Option<Self> {
        let cookie = pingora::protocols::l4::ext::get_socket_cookie(fd).ok()?;
        Some(ClientSocket { fd, cookie })
    }
}

/// What the admin API shows of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub deployment: String,
    pub route: String,
    pub session: Option<String>,
    pub started_unix: u64,
    pub age_seconds: f64,
    pub closing: bool,
}

/// Everything needed to register a connection.
pub struct NewConnection {
    pub deployment: Arc<str>,
    pub route: Arc<str>,
    /// The public id of the portcullis session this connection belongs to.
    pub session: Option<Arc<str>>,
    /// When its credential ends for good (unix seconds).
    pub expires_at: Option<u64>,
    /// A bearer connection's own idle clock (`bearer_connections: until_idle`).
    pub idle_close: Option<IdleClose>,
    /// The session's idle clock, when a session authenticated the connection.
    pub activity: Option<SessionActivity>,
    /// The claims it was authenticated with; `None` when anonymous.
    pub claims: Option<Arc<crate::token::Claims>>,
    /// Ends the connection's tunnel; the proxy handed its signal to Pingora.
    pub tunnel: TunnelCloser,
    /// The client socket, for the hard-close fallback.
    pub client: Option<ClientSocket>,
}

pub struct Registry {
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            metrics,
        })
    }

    fn shard(&self, id: u64) -> &Shard {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Registers a connection; it stays registered while the guard lives.
    pub fn register(self: &Arc<Self>, new: NewConnection) -> LiveGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(LiveConnection {
            id,
            deployment: new.deployment,
            route: new.route,
            session: new.session,
            expires_at: new.expires_at,
            idle_close: new.idle_close,
            activity: new.activity,
            claims: new.claims,
            started: SystemTime::now(),
            started_at: Instant::now(),
            tunnel: new.tunnel,
            client: new.client,
            close: OnceLock::new(),
            hard_closed: OnceLock::new(),
        });
        self.metrics
            .active_connections
            .with_label_values(&[&conn.deployment])
            .inc();
        self.shard(id).lock().insert(id, conn.clone());
        LiveGuard {
            registry: self.clone(),
            conn,
        }
    }

    fn deregister(&self, conn: &LiveConnection) {
        if self.shard(conn.id).lock().remove(&conn.id).is_some() {
            self.metrics
                .active_connections
                .with_label_values(&[&conn.deployment])
                .dec();
            self.metrics
                .connection_duration
                .with_label_values(&[&conn.deployment])
                .observe(conn.started_at.elapsed().as_secs_f64());
        }
    }

    /// Closes one connection. False when it is unknown or already closing.
    pub fn close(&self, id: u64, code: u16, reason: &str, label: &'static str) -> bool {
        let conn = self.shard(id).lock().get(&id).cloned();
        conn.is_some_and(|c| self.close_one(&c, code, reason, label))
    }

    /// Closes every connection the predicate selects; returns how many began closing.
    pub fn close_where(
        &self,
        select: impl Fn(&LiveConnection) -> bool,
        code: u16,
        reason: &str,
        label: &'static str,
    ) -> usize {
        let chosen: Vec<Arc<LiveConnection>> = self.collect(|c| select(c));
        chosen
            .iter()
            .filter(|c| self.close_one(c, code, reason, label))
            .count()
    }

    /// Closes every connection for which `reason_to_close` gives a reason,
    /// with that reason; returns how many began closing.
    pub fn close_each(
        &self,
        reason_to_close: impl Fn(&LiveConnection) -> Option<&'static str>,
        code: u16,
        label: &'static str,
    ) -> usize {
        let chosen: Vec<(Arc<LiveConnection>, &'static str)> = self
            .collect(|c| reason_to_close(c).is_some())
            .into_iter()
            .filter_map(|c| reason_to_close(&c).map(|reason| (c, reason)))
            .collect();
        chosen
            .iter()
            .filter(|(c, reason)| self.close_one(c, code, reason, label))
            .count()
    }

    fn close_one(
        &self,
        conn: &LiveConnection,
        code: u16,
        reason: &str,
        label: &'static str,
    ) -> bool {
        let started = conn.request_close(code, reason, label);
        if started {
            self.metrics
                .forced_closes
                .with_label_values(&[&conn.deployment, label])
                .inc();
            tracing::info!(
                connection = conn.id,
                deployment = %conn.deployment,
                code,
                reason = label,
                "closing live connection"
            );
        }
        started
    }

    fn collect(&self, select: impl Fn(&LiveConnection) -> bool) -> Vec<Arc<LiveConnection>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().values().filter(|c| select(c)).cloned());
        }
        out
    }

    /// The ids of every live connection, oldest first.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .shards
            .iter()
            .flat_map(|shard| shard.lock().keys().copied().collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open connections per deployment.
    pub fn counts_by_deployment(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for shard in self.shards.iter() {
            for c in shard.lock().values() {
                *counts.entry(c.deployment.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn list(&self, deployment: Option<&str>) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self
            .collect(|c| deployment.is_none_or(|d| &*c.deployment == d))
            .iter()
            .map(|c| ConnectionInfo {
                id: c.id,
                deployment: c.deployment.to_string(),
                route: c.route.to_string(),
                session: c.session.as_deref().map(str::to_string),
                started_unix: c
                    .started
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                age_seconds: c.started_at.elapsed().as_secs_f64(),
                closing: c.close_request().is_some(),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// Closes, with 4001, connections whose credential ended by `now` (unix
    /// seconds): a session's maximum lifetime, a bearer token's `exp`, or a
    /// bearer connection's idle timeout. Returns how many began closing.
    pub fn close_expired(&self, now: u64) -> usize {
        self.close_each(
            |c| {
                c.expires_at.filter(|&t| t <= now).map(|_| match c.session {
                    Some(_) => "session expired",
                    None => "token expired",
                })
            },
            close_code::SESSION_EXPIRED,
            "expired",
        ) + self.close_where(
            |c| c.idle_close.as_ref().is_some_and(|i| i.idle_at(now)),
            close_code::SESSION_EXPIRED,
            "connection idle",
            "idle",
        )
    }

    /// The sessions of live connections that the store must hear about at
    /// `now`: activity not recorded for `touch_every` seconds, or an idle
    /// deadline passed. One entry per session.
    pub fn sessions_due(&self, now: u64, touch_every: u64) -> Vec<SessionDue> {
        // Per session: (id, idle timeout, latest frame, latest stored activity).
        let mut clocks: HashMap<Arc<str>, (SessionId, u64, u64, u64)> = HashMap::new();
        for shard in self.shards.iter() {
            for c in shard.lock().values() {
                let (Some(activity), Some(public_id)) = (&c.activity, &c.session) else {
                    continue;
                };
                if c.close_request().is_some() {
                    continue;
                }
                let clock = clocks
                    .entry(public_id.clone())
                    .or_insert_with(|| (activity.id.clone(), activity.idle_timeout_secs, 0, 0));
                clock.2 = clock.2.max(activity.last_frame());
                clock.3 = clock.3.max(activity.stored_last_seen());
            }
        }
        clocks
            .into_iter()
            .filter_map(|(public_id, (id, idle, frame, stored))| {
                let store_deadline = stored.saturating_add(idle);
                let unrecorded = (frame > stored
                    && (frame >= stored.saturating_add(touch_every)
                        || now.saturating_add(RECORD_BEFORE_DEADLINE_SECS) >= store_deadline))
                    .then_some(frame);
                let passed = frame.max(stored).saturating_add(idle) <= now;
                (unrecorded.is_some() || passed).then_some(SessionDue {
                    id,
                    public_id,
                    unrecorded_activity: unrecorded,
                    idle_deadline_passed: passed,
                })
            })
            .collect()
    }

    /// Tells every connection of a session what the store now holds as its
    /// last activity.
    pub fn session_seen(&self, public_id: &str, last_seen: u64) {
        for c in self.collect(|c| c.session.as_deref() == Some(public_id)) {
            if let Some(activity) = &c.activity {
                activity
                    .stored_last_seen
                    .fetch_max(last_seen, Ordering::Relaxed);
            }
        }
    }

    /// Closes, with 4001, every connection of a session that went idle.
    pub fn close_idle_session(&self, public_id: &str) -> usize {
        self.close_where(
            |c| c.session.as_deref() == Some(public_id),
            close_code::SESSION_EXPIRED,
            "session idle",
            "idle",
        )
    }

    /// Closes, with 4002, every connection of a session (logout, revocation).
    pub fn close_session(&self, public_id: &str, reason: &str, label: &'static str) -> usize {
        self.close_where(
            |c| c.session.as_deref() == Some(public_id),
            close_code::SESSION_REVOKED,
            reason,
            label,
        )
    }

    /// Hard-closes the client side of connections whose close has been
    /// pending longer than `HARD_CLOSE_AFTER`. Returns how many it cut.
    pub fn sweep_overdue(&self) -> usize {
        let mut cut = 0;
        for shard in self.shards.iter() {
            // The lock stays held across the cut: see the module doc.
            let entries = shard.lock();
            for c in entries.values() {
                let overdue = c
                    .close_request()
                    .is_some_and(|r| r.requested_at.elapsed() >= HARD_CLOSE_AFTER);
                if overdue && c.hard_closed.get().is_none() {
                    tracing::warn!(
                        connection = c.id,
                        "close frame not delivered in time; cutting the client socket"
                    );
                    c.hard_close();
                    cut += 1;
                }
            }
        }
        cut
    }
}

/// Keeps a connection registered; dropping it deregisters the connection.
pub struct LiveGuard {
    registry: Arc<Registry>,
    conn: Arc<LiveConnection>,
}

impl LiveGuard {
    pub fn connection(&self) -> &LiveConnection {
        &self.conn
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.deregister(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn register(registry: &Arc<Registry>, deployment: &str) -> LiveGuard {
        registry.register(NewConnection {
            deployment: deployment.into(),
            route: "/v1".into(),
            session: None,
            expires_at: None,
            idle_close: None,
            activity: None,
            claims: None,
            tunnel: TunnelCloser::default(),
            client: None,
        })
    }

    #[tokio::test]
    async fn close_signals_the_tunnel_and_records_the_reason_once() {
        let registry = Registry::new(Arc::new(Metrics::new()));
        let tunnel = TunnelCloser::default();
        let signal = tunnel.signal();
        let guard = registry.register(NewConnection {
            deployment: "d1".into(),
            route: "/v1".into(),
            session: None,
            expires_at: None,
            idle_close: None,
            activity: None,
            claims: None,
            tunnel: tunnel.clone(),
            client: None,
        });
        let id = guard.connection().id;
        assert!(!tunnel.is_closed());

        assert!(registry.close(id, close_code::SESSION_REVOKED, "session revoked", "admin"));
        assert!(!registry.close(
            id,
            close_code::SESSION_EXPIRED,
            "session expired",
            "expired"
        ));
        let pending = guard.connection().close_request().unwrap();
        assert_eq!(pending.code, close_code::SESSION_REVOKED);

        // The signal handed to the tunnel loop before the close completes,
        // with the upstream's grace period.
        assert!(tunnel.is_closed());
        let grace = tokio::time::timeout(Duration::from_secs(5), signal).await;
        assert_eq!(grace.ok(), Some(UPSTREAM_END_GRACE));
    }

    #[test]
    fn dropping_the_guard_deregisters_and_updates_the_gauge() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(metrics.clone());
        let g1 = register(&registry, "d1");
        let g2 = register(&registry, "d2");
        assert_eq!(registry.len(), 2);
        assert_eq!(
            metrics.active_connections.with_label_values(&["d1"]).get(),
            1
        );
        drop(g1);
        assert_eq!(registry.len(), 1);
        assert_eq!(
            metrics.active_connections.with_label_values(&["d1"]).get(),
            0
        );
        assert!(!registry.close(g2.connection().id + 100, 4002, "x", "admin"));
        assert_eq!(registry.list(Some("d2")).len(), 1);
        assert!(registry.list(Some("d1")).is_empty());
    }

    #[test]
    fn close_where_selects_by_deployment_and_counts_forced_closes() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(metrics.clone());
        let guards: Vec<_> = (0..5)
            .map(|i| register(&registry, if i < 3 { "a" } else { "b" }))
            .collect();
        let closed =
            registry.close_where(|c| &*c.deployment == "a", 4002, "session revoked", "admin");
        assert_eq!(closed, 3);
        assert_eq!(
            metrics
                .forced_closes
                .with_label_values(&["a", "admin"])
                .get(),
            3
        );
        assert_eq!(
            metrics
                .forced_closes
                .with_label_values(&["b", "admin"])
                .get(),
            0
        );
        let closing: Vec<bool> = guards
            .iter()
            .map(|g| g.connection().close_request().is_some())
            .collect();
        assert_eq!(closing, vec![true, true, true, false, false]);
    }

    #[test]
    fn idle_clocks_say_which_sessions_the_store_must_hear_about() {
        let registry = Registry::new(Arc::new(Metrics::new()));
        let session = SessionId::random().unwrap();
        let other = SessionId::random().unwrap();
        // Two connections of one session (last seen at 1000, idle after 60 s)
        // and one of another session (last seen at 1040).
        let sessions = [(&session, 1000), (&session, 1000), (&other, 1040)];
        let guards: Vec<_> = sessions
            .into_iter()
            .map(|(id, last_seen)| {
                registry.register(NewConnection {
                    deployment: "d".into(),
                    route: "/v1".into(),
                    session: Some(Arc::from(id.public_id().as_str())),
                    expires_at: Some(100_000),
                    idle_close: None,
                    activity: Some(SessionActivity::new(id.clone(), 60, last_seen, last_seen)),
                    claims: None,
                    tunnel: TunnelCloser::default(),
                    client: None,
                })
            })
            .collect();
        assert_eq!(registry.sessions_due(1059, 30), vec![], "nothing yet");
        let due = registry.sessions_due(1060, 30);
        assert_eq!(due.len(), 1, "one entry for both connections: {due:?}");
        assert_eq!(due[0].id, session);
        assert!(due[0].idle_deadline_passed);
        assert_eq!(due[0].unrecorded_activity, None);

        // A data frame on the second connection: the deadline computed here
        // moves; the store, still at 1000, must hear of it before its own
        // deadline (1060) comes close, even though it is not 30 s behind.
        guards[1]
            .connection()
            .activity
            .as_ref()
            .unwrap()
            .note_frame(1020);
        assert_eq!(registry.sessions_due(1054, 30), vec![]);
        let due = registry.sessions_due(1055, 30);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].unrecorded_activity, Some(1020));
        assert!(!due[0].idle_deadline_passed);
        registry.session_seen(&session.public_id(), 1020);
        assert_eq!(registry.sessions_due(1079, 30), vec![]);
        guards[1]
            .connection()
            .activity
            .as_ref()
            .unwrap()
            .note_frame(1050);
        let due = registry.sessions_due(1051, 30);
        assert_eq!(due.len(), 1, "30 s past what the store holds: {due:?}");
        assert_eq!(due[0].unrecorded_activity, Some(1050));
        assert!(!due[0].idle_deadline_passed);
        // Recorded: every connection of the session learns it.
        registry.session_seen(&session.public_id(), 1050);
        assert_eq!(registry.sessions_due(1099, 30), vec![]);
        let due = registry.sessions_due(1100, 30);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, other);
        let due = registry.sessions_due(1110, 30);
        assert_eq!(due.len(), 2, "both sessions' deadlines passed: {due:?}");

        // Closing for idleness uses 4001 and skips the other session.
        assert_eq!(registry.close_idle_session(&session.public_id()), 2);
        assert_eq!(
            guards[0].connection().close_request().unwrap().reason,
            "session idle"
        );
        assert!(guards[2].connection().close_request().is_none());
        let due = registry.sessions_due(1110, 30);
        assert_eq!(due.len(), 1, "closing connections are not due: {due:?}");
        assert_eq!(due[0].id, other);
    }

    #[test]
    fn sessions_close_at_expiry_and_by_id() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(metrics.clone());
        let guards: Vec<_> = (0..3)
            .map(|i| {
                registry.register(NewConnection {
                    deployment: "d".into(),
                    route: "/v1".into(),
                    session: Some(Arc::from(format!("s-{i}").as_str())),
                    expires_at: Some(1000 + i as u64 * 100),
                    idle_close: None,
                    activity: None,
                    claims: None,
                    tunnel: TunnelCloser::default(),
                    client: None,
                })
            })
            .collect();
        assert_eq!(registry.close_expired(999), 0);
        assert_eq!(registry.close_expired(1100), 2);
        assert_eq!(
            guards[0].connection().close_request().unwrap().code,
            close_code::SESSION_EXPIRED
        );
        assert_eq!(registry.close_session("s-2", "logged out", "logout"), 1);
        assert_eq!(
            guards[2].connection().close_request().unwrap().code,
            close_code::SESSION_REVOKED
        );
        assert_eq!(
            metrics
                .forced_closes
                .with_label_values(&["d", "expired"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .forced_closes
                .with_label_values(&["d", "logout"])
                .get(),
            1
        );
    }

    #[test]
    fn bearer_connections_close_at_their_tokens_exp_or_when_idle() {
        let registry = Registry::new(Arc::new(Metrics::new()));
        let bearer = |expires_at, idle_close| {
            registry.register(NewConnection {
                deployment: "d".into(),
                route: "/v1".into(),
                session: None,
                expires_at,
                idle_close,
                activity: None,
                claims: None,
                tunnel: TunnelCloser::default(),
                client: None,
            })
        };
        let at_exp = bearer(Some(1000), None);
        let until_idle = bearer(None, Some(IdleClose::new(60, 980)));
        assert_eq!(registry.close_expired(999), 0);
        assert_eq!(registry.close_expired(1000), 1, "the token's exp");
        let request = at_exp.connection().close_request().unwrap();
        assert_eq!(
            (request.code, request.reason.as_str()),
            (close_code::SESSION_EXPIRED, "token expired")
        );
        // Frames keep an idle clock going; silence for its timeout ends it.
        until_idle
            .connection()
            .idle_close
            .as_ref()
            .unwrap()
            .note_frame(1000);
        assert_eq!(registry.close_expired(1059), 0);
        assert!(until_idle.connection().close_request().is_none());
        assert_eq!(registry.close_expired(1060), 1);
        let request = until_idle.connection().close_request().unwrap();
        assert_eq!(
            (request.code, request.reason.as_str(), request.label),
            (close_code::SESSION_EXPIRED, "connection idle", "idle")
        );
    }

    #[test]
    fn sweeper_cuts_the_client_socket_only_after_the_grace_period() {
        let registry = Registry::new(Arc::new(Metrics::new()));
        let (down, down_peer) = socket_pair();
        let guard = registry.register(NewConnection {
            deployment: "d".into(),
            route: "/".into(),
            session: None,
            expires_at: None,
            idle_close: None,
            activity: None,
            claims: None,
            tunnel: TunnelCloser::default(),
            client: ClientSocket::identify(std::os::fd::AsRawFd::as_raw_fd(&down)),
        });
        assert!(registry.close(guard.connection().id, 4002, "session revoked", "admin"));
        assert_eq!(registry.sweep_overdue(), 0, "nothing is overdue yet");
        std::thread::sleep(HARD_CLOSE_AFTER + Duration::from_millis(50));
        assert_eq!(registry.sweep_overdue(), 1);
        assert_eq!(registry.sweep_overdue(), 0, "a connection is cut once");
        let mut buf = [0u8; 4];
        let mut down_peer = down_peer;
        assert_eq!(down_peer.read(&mut buf).unwrap(), 0);
    }
}
