//! Every Prometheus metric portcullis exports, registered in one registry
//! that the admin listener renders. Label values are always bounded sets
//! (configured deployment ids, fixed outcome names), never client input,
//! so a scanner cannot blow up the series count.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// How many values the `method` label of the auth metrics takes: the
/// credential carriers and "none".
pub const AUTH_METHODS: usize = 5;

/// The label used when a request names no known deployment.
pub const NO_DEPLOYMENT: &str = "-";

pub struct Metrics {
    registry: Registry,
    /// Every request on the proxy listeners, by deployment, route, outcome and status.
    pub requests: IntCounterVec,
    /// WebSocket upgrade attempts, by deployment and outcome.
    pub handshakes: IntCounterVec,
    /// Live proxied WebSockets, by deployment.
    pub active_connections: IntGaugeVec,
    /// Connections closed by portcullis, by deployment and reason.
    pub forced_closes: IntCounterVec,
    /// WebSocket handshakes refused at a connection ceiling, by deployment
    /// and reason (process_limit, deployment_limit).
    pub connections_refused: IntCounterVec,
    /// Failures to reach or talk to an upstream, by upstream and kind.
    pub upstream_errors: IntCounterVec,
    /// Time from a request's arrival to its response header (the handshake, for WebSockets).
    pub request_duration: HistogramVec,
    /// How long proxied WebSockets lived.
    pub connection_duration: HistogramVec,
    /// Config reload attempts, by result.
    pub config_reloads: IntCounterVec,
    /// 1 when an upstream server passes its health check, 0 when not.
    pub upstream_healthy: IntGaugeVec,
    /// Authentication decisions on messaging requests, by deployment, credential carrier and outcome.
    pub auth_decisions: IntCounterVec,
    /// Time spent authenticating a request (token verification, key lookups).
    pub auth_duration: HistogramVec,
    /// `auth_duration` by method (a credential carrier's slot, "none"
    /// last), resolved on first use: `auth_duration_of` is on every
    /// authenticated request.
    auth_duration_by_method: [OnceLock<Histogram>; AUTH_METHODS],
    /// Verified-token cache lookups, by result (hit, miss).
    pub token_cache: IntCounterVec,
    /// Discovery document fetches, by provider and result.
    pub discovery_fetches: IntCounterVec,
    /// JWKS fetches, by provider, reason (initial, refresh, unknown_kid) and result.
    pub jwks_fetches: IntCounterVec,
    /// Seconds since a provider's keys were last fetched successfully.
    pub jwks_age: IntGaugeVec,
    /// Keys currently cached per provider.
    pub jwks_keys: IntGaugeVec,
    /// Tokens naming a `kid` the cached keys lack, by provider and what followed
    /// (refetched, rate_limited, negative_cached).
    pub jwks_kid_misses: IntCounterVec,
    /// 1 when a provider's metadata and keys are usable, else 0.
    pub provider_ready: IntGaugeVec,
    /// Browser logins, by deployment and result (ok, provider_error, nonce_mismatch, …).
    pub logins: IntCounterVec,
    /// Sessions ended, by reason (logout, expired, idle, revoked).
    pub session_ends: IntCounterVec,
    /// Live browser sessions in the store (approximate).
    pub sessions_live: prometheus::IntGauge,
    /// Token API calls, by deployment, operation (exchange, refresh, revoke) and result.
    pub token_api: IntCounterVec,
    /// Time portcullis spent answering a token API call, by operation; the
    /// provider's share (code redemption, re-checks) is left out.
    pub token_api_duration: HistogramVec,
    /// Requests refused by a rate limit, by endpoint and scope (client, deployment).
    pub rate_limited: IntCounterVec,
    /// Admin actions that change something, by action and result.
    pub admin_actions: IntCounterVec,
    /// Back-channel logout deliveries, by provider and result.
    pub backchannel_logouts: IntCounterVec,
    /// Shared session store calls, by store, operation and result (ok, unavailable).
    pub store_operations: IntCounterVec,
    /// Time a shared session store call took, by store and operation.
    pub store_duration: HistogramVec,
    /// 1 while the shared session store answers and its event stream is
    /// subscribed, else 0.
    pub store_up: IntGaugeVec,
    /// Session-end events on the shared store's channel, by store and
    /// direction (published, received: from other instances only).
    pub store_events: IntCounterVec,
    /// Times the event stream was re-established and live sessions looked up again.
    pub store_resyncs: IntCounterVec,
    /// Session lookups answered by the instance's local cache of the
    /// shared store, by result (hit, miss).
    pub session_cache: IntCounterVec,
    /// When each served certificate expires, by listener and file.
    pub tls_certificate_expiry: IntGaugeVec,
    /// Certificate reloads (SIGHUP, `POST /admin/reload`), by result.
    pub tls_certificate_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let lifetime_buckets = vec![
            1.0,
            10.0,
            60.0,
            300.0,
            900.0,
            1800.0,
            3600.0,
            4.0 * 3600.0,
            12.0 * 3600.0,
            86400.0,
        ];
        let build_info = gauge(
            "portcullis_build_info",
            "Always 1; the version label says which portcullis is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let sessions_live = prometheus::IntGauge::new(
            "portcullis_sessions_live",
            "Live browser sessions in the session store (approximate).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(sessions_live.clone()))
            .expect("metric registered once");
        Metrics {
            sessions_live,
            token_api: counter(
                "portcullis_token_api_requests_total",
                "Token API calls by deployment, operation (exchange, refresh, revoke) and result (ok or the error code).",
                &["deployment", "operation", "result"],
            ),
            token_api_duration: histogram(
                "portcullis_token_api_duration_seconds",
                "Time portcullis spent on a token API call, by operation, without the provider's time.",
                &["operation"],
                latency_buckets.clone(),
            ),
            store_operations: counter(
                "portcullis_session_store_operations_total",
                "Shared session store calls by store, operation and result (ok, unavailable).",
                &["store", "operation", "result"],
            ),
            store_duration: histogram(
                "portcullis_session_store_operation_seconds",
                "Time a shared session store call took, by store and operation.",
                &["store", "operation"],
                latency_buckets.clone(),
            ),
            store_up: gauge(
                "portcullis_session_store_up",
                "1 while the shared session store answers and its event stream is subscribed, else 0.",
                &["store"],
            ),
            store_events: counter(
                "portcullis_session_store_events_total",
                "Session-end events on the shared store's channel, by store and direction (published, received).",
                &["store", "direction"],
            ),
            store_resyncs: counter(
                "portcullis_session_store_resyncs_total",
                "Times the shared store's event stream came back and live sessions were looked up again.",
                &["store"],
            ),
            session_cache: counter(
                "portcullis_session_cache_total",
                "Session lookups answered from the instance's local cache of the shared store, by result (hit, miss).",
                &["result"],
            ),
            rate_limited: counter(
                "portcullis_rate_limited_total",
                "Requests refused by a rate limit, by endpoint and scope (client, deployment).",
                &["endpoint", "scope"],
            ),
            session_ends: counter(
                "portcullis_session_ends_total",
                "Sessions ended, by reason (logout, expired, idle, revoked).",
                &["reason"],
            ),
            logins: counter(
                "portcullis_logins_total",
                "Browser logins by deployment and result (ok, provider_error, code_refused, nonce_mismatch, a policy or token reason).",
                &["deployment", "result"],
            ),
            auth_decisions: counter(
                "portcullis_auth_decisions_total",
                "Authentication decisions by deployment, credential carrier (method) and outcome.",
                &["deployment", "method", "outcome"],
            ),
            auth_duration: histogram(
                "portcullis_auth_duration_seconds",
                "Time spent authenticating a request, by credential carrier (method).",
                &["method"],
                vec![
                    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            token_cache: counter(
                "portcullis_token_cache_total",
                "Verified-token cache lookups by result (hit, miss).",
                &["result"],
            ),
            discovery_fetches: counter(
                "portcullis_discovery_fetches_total",
                "OpenID discovery document fetches by provider and result.",
                &["provider", "result"],
            ),
            jwks_fetches: counter(
                "portcullis_jwks_fetches_total",
                "JWKS fetches by provider, reason (initial, refresh, unknown_kid) and result.",
                &["provider", "reason", "result"],
            ),
            jwks_age: gauge(
                "portcullis_jwks_age_seconds",
                "Seconds since the provider's keys were last fetched successfully.",
                &["provider"],
            ),
            jwks_keys: gauge(
                "portcullis_jwks_keys",
                "Signing keys currently cached for the provider.",
                &["provider"],
            ),
            jwks_kid_misses: counter(
                "portcullis_jwks_kid_misses_total",
                "Tokens naming an unknown key id, by provider and what followed (refetched, rate_limited, negative_cached).",
                &["provider", "result"],
            ),
            provider_ready: gauge(
                "portcullis_provider_ready",
                "1 when the provider's metadata and keys are usable, else 0.",
                &["provider"],
            ),
            requests: counter(
                "portcullis_requests_total",
                "Requests on the proxy listeners by deployment, route, outcome and status.",
                &["deployment", "route", "outcome", "status"],
            ),
            handshakes: counter(
                "portcullis_handshakes_total",
                "WebSocket upgrade requests by deployment and outcome.",
                &["deployment", "outcome"],
            ),
            active_connections: gauge(
                "portcullis_active_connections",
                "Proxied WebSocket connections currently open, by deployment.",
                &["deployment"],
            ),
            forced_closes: counter(
                "portcullis_forced_closes_total",
                "WebSocket connections closed by portcullis, by deployment and reason.",
                &["deployment", "reason"],
            ),
            connections_refused: counter(
                "portcullis_connections_refused_total",
                "WebSocket handshakes refused at a connection ceiling, by deployment and reason (process_limit, deployment_limit).",
                &["deployment", "reason"],
            ),
            upstream_errors: counter(
                "portcullis_upstream_errors_total",
                "Failures to connect to or exchange with an upstream, by upstream and kind.",
                &["upstream", "kind"],
            ),
            request_duration: histogram(
                "portcullis_request_duration_seconds",
                "Time from a request's arrival to its response header, by kind (http, websocket).",
                &["kind"],
                latency_buckets,
            ),
            connection_duration: histogram(
                "portcullis_connection_duration_seconds",
                "Lifetime of proxied WebSocket connections, by deployment.",
                &["deployment"],
                lifetime_buckets,
            ),
            backchannel_logouts: counter(
                "portcullis_backchannel_logouts_total",
                "Back-channel logout deliveries by provider and result (ok, or why refused: token_replayed, bad_signature, ...).",
                &["provider", "result"],
            ),
            admin_actions: counter(
                "portcullis_admin_actions_total",
                "Admin actions that change something, by action (close_connection, close_connections, revoke_session, revoke_subject) and result (ok, not_found, store_unavailable, ...).",
                &["action", "result"],
            ),
            config_reloads: counter(
                "portcullis_config_reloads_total",
                "Configuration reload attempts by result (ok, rejected).",
                &["result"],
            ),
            upstream_healthy: gauge(
                "portcullis_upstream_healthy",
                "1 when an upstream server passes its health check, 0 when it does not.",
                &["upstream", "server"],
            ),
            tls_certificate_expiry: gauge(
                "portcullis_tls_certificate_expiry_timestamp_seconds",
                "When a certificate a TLS listener serves expires (notAfter, Unix seconds), by listener address and certificate file.",
                &["listener", "certificate"],
            ),
            tls_certificate_reloads: counter(
                "portcullis_tls_certificate_reloads_total",
                "Certificate reloads with the configuration, by result (ok; rejected: the listeners keep their previous certificates).",
                &["result"],
            ),
            auth_duration_by_method: Default::default(),
            registry,
        }
        .with_process_metrics()
    }

    /// `auth_duration{method}` for the method in `slot` (below
    /// `AUTH_METHODS`; each slot always names the same method).
    pub fn auth_duration_of(&self, slot: usize, method: &str) -> &Histogram {
        self.auth_duration_by_method[slot]
            .get_or_init(|| self.auth_duration.with_label_values(&[method]))
    }

    /// Adds the standard `process_*` families (open and maximum
    /// descriptors, resident and virtual memory, CPU seconds, threads,
    /// start time): the sizing in the README is in descriptors and memory
    /// per connection, and these show how close an instance is.
    fn with_process_metrics(self) -> Self {
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            // Registered once per registry; a failure only loses these families.
            let _ = self.registry.register(Box::new(collector));
        }
        self
    }

    /// Records a served certificate's expiry.
    pub fn note_certificate(
        &self,
        listener: std::net::SocketAddr,
        cert: &crate::config::certificates::LoadedCertificate,
    ) {
        self.tls_certificate_expiry
            .with_label_values(&[&listener.to_string(), &cert.file])
            .set(cert.not_after);
    }

    /// Replaces the expiry series with those of the sets now served.
    pub fn note_certificate_sets(
        &self,
        sets: &[(
            std::net::SocketAddr,
            std::sync::Arc<crate::config::certificates::CertificateSet>,
        )],
    ) {
        self.tls_certificate_expiry.reset();
        for (address, set) in sets {
            for cert in set.certificates() {
                self.note_certificate(*address, cert);
            }
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
