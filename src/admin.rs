//! The admin listener, on its own address: health, readiness, metrics, live
//! connections, reload and the status page (rendered by `status`). Off
//! loopback every endpoint but `/healthz` and `/readyz` requires
//! `Authorization: Bearer <admin token>`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::connections::close_code;
use crate::runtime::State;
use crate::session::store::{SessionQuery, StoreError};
use crate::session::{now, EndReason};

pub struct AdminApp {
    state: Arc<State>,
}

impl AdminApp {
    pub fn new(state: Arc<State>) -> Self {
        AdminApp { state }
    }
}

/// What an admin request asks for, parsed from method, path and query.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminRequest {
    Health,
    Ready,
    Metrics,
    ListConnections {
        detail: bool,
        deployment: Option<String>,
    },
    CloseConnections {
        deployment: String,
    },
    CloseConnection {
        id: u64,
    },
    /// The live sessions of a subject (`GET /admin/sessions?sub=`).
    ListSessions {
        subject: String,
        provider: Option<String>,
    },
    /// Ends one session, by its public id, on every instance.
    RevokeSession {
        public_id: String,
    },
    /// Ends every session of a subject, on every instance.
    RevokeSubject {
        subject: String,
        provider: Option<String>,
    },
    Reload,
    /// The status page (`GET /admin/`), HTML.
    StatusPage,
    NotFound,
    MethodNotAllowed,
    BadRequest(&'static str),
}

impl AdminRequest {
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Self {
        let param = |name: &str| {
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let has_flag = |name: &str| {
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .any(|(k, v)| k == name && v != "0" && v != "false")
        };
        match (method.as_str(), path) {
            ("GET" | "HEAD", "/healthz") => AdminRequest::Health,
            ("GET" | "HEAD", "/readyz") => AdminRequest::Ready,
            ("GET" | "HEAD", "/metrics") => AdminRequest::Metrics,
            ("GET", "/admin/connections") => AdminRequest::ListConnections {
                detail: has_flag("detail"),
                deployment: param("deployment"),
            },
            ("DELETE", "/admin/connections") => match param("deployment") {
                Some(d) if !d.is_empty() => AdminRequest::CloseConnections { deployment: d },
                _ => AdminRequest::BadRequest(
                    "give ?deployment=ID to choose the connections to close",
                ),
            },
            ("DELETE", p) if p.starts_with("/admin/connections/") => {
                match p["/admin/connections/".len()..].parse::<u64>() {
                    Ok(id) => AdminRequest::CloseConnection { id },
                    Err(_) => AdminRequest::BadRequest("a connection id is a number"),
                }
            }
            ("GET", "/admin/sessions") => match param("sub") {
                Some(subject) if !subject.is_empty() => AdminRequest::ListSessions {
                    subject,
                    provider: param("provider"),
                },
                _ => AdminRequest::BadRequest("give ?sub=SUBJECT (and optionally &provider=NAME)"),
            },
            ("DELETE", p) if p.starts_with("/admin/sessions/") => {
                let public_id = &p["/admin/sessions/".len()..];
                if is_public_session_id(public_id) {
                    AdminRequest::RevokeSession {
                        public_id: public_id.to_string(),
                    }
                } else {
                    AdminRequest::BadRequest(
                        "a session is named by its public id: s- and 24 hex digits, as logs and X-Auth-Session show it",
                    )
                }
            }
            (method, p)
                if p.strip_prefix("/admin/subjects/")
                    .and_then(|rest| rest.strip_suffix("/sessions"))
                    .is_some() =>
            {
                // `/admin/subjects/sessions` has no segment: the prefix and
                // the suffix overlap, so strip them rather than slice.
                let segment = p
                    .strip_prefix("/admin/subjects/")
                    .and_then(|rest| rest.strip_suffix("/sessions"))
                    .unwrap_or_default();
                let subject = percent_encoding::percent_decode_str(segment).decode_utf8();
                match (method, subject) {
                    ("DELETE", Ok(subject)) if !subject.is_empty() && !segment.contains('/') => {
                        AdminRequest::RevokeSubject {
                            subject: subject.into_owned(),
                            provider: param("provider"),
                        }
                    }
                    ("DELETE", _) => AdminRequest::BadRequest(
                        "the subject is one percent-encoded path segment (encode '/' as %2F)",
                    ),
                    _ => AdminRequest::MethodNotAllowed,
                }
            }
            ("POST", "/admin/reload") => AdminRequest::Reload,
            ("GET" | "HEAD", "/admin/" | "/admin") => AdminRequest::StatusPage,
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/admin/connections" | "/admin/reload"
                | "/admin/sessions" | "/admin/" | "/admin",
            ) => AdminRequest::MethodNotAllowed,
            _ => AdminRequest::NotFound,
        }
    }

    fn is_public(&self) -> bool {
        matches!(self, AdminRequest::Health | AdminRequest::Ready)
    }
}

/// Whether a request to an admin listener on `listener` may be served, by
/// its `Host` header. On loopback the listener may run without a token, so
/// a page in the operator's browser whose name an attacker re-points at
/// 127.0.0.1 (DNS rebinding) could call it: such requests carry the
/// attacker's name in `Host` and are refused. Only loopback names pass
/// there (`localhost`, `127.x.y.z`, `[::1]`, any port). Off loopback the
/// token is required and the name is the operator's business.
pub fn host_allowed(listener: std::net::SocketAddr, host: Option<&[u8]>) -> bool {
    if !listener.ip().is_loopback() {
        return true;
    }
    // A Host header has no userinfo (RFC 9110 §7.2), which `Authority` would take.
    let Some(host) = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| !h.contains('@'))
    else {
        return false;
    };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `text` has the shape of `SessionId::public_id`.
fn is_public_session_id(text: &str) -> bool {
    text.len() == 26
        && text.starts_with("s-")
        && text[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// At most this many sessions are listed.
const SESSIONS_PER_ROUND: usize = 1000;

/// Compares a presented bearer token with the configured one in constant time.
pub fn token_matches(authorization: Option<&[u8]>, expected: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let Some((scheme, presented)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(presented.ct_eq(expected.as_bytes()))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let body = value.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// The status page: never cached, no script, not frameable.
fn status_page(snapshot: &crate::status::StatusSnapshot) -> Response<Vec<u8>> {
    let body = crate::status::render(snapshot).into_bytes();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header(
            "content-security-policy",
            crate::status::content_security_policy(),
        )
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, description: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": code, "error_description": description}),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let request = AdminRequest::parse(&req.method, &path, query.as_deref());
        let runtime = self.state.runtime();
        if let Some(admin) = &runtime.config.admin {
            let host = req.headers.get("host").map(|v| v.as_bytes());
            if !host_allowed(admin.address, host) {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden_host",
                    "the admin listener on loopback answers only to loopback host names (localhost, 127.0.0.1, [::1])",
                );
            }
        }
        let token = runtime.config.admin.as_ref().and_then(|a| a.token.as_ref());
        if let (Some(token), false) = (token, request.is_public()) {
            let presented = req.headers.get("authorization").map(|v| v.as_bytes());
            if !token_matches(presented, token.expose()) {
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an admin token is required",
                );
                resp.headers_mut()
                    .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
                return resp;
            }
        }
        let connections = &self.state.connections;
        match request {
            AdminRequest::Health => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            AdminRequest::Ready => {
                let loaded = runtime
                    .loaded_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                // Ready when every provider an active deployment needs has
                // usable keys: without them those requests can only get 503.
                let mut providers = serde_json::Map::new();
                let mut all_ready = true;
                for deployment in runtime.deployments().filter(|d| d.is_active()) {
                    if let Some(p) = &deployment.provider {
                        let ready = p.is_ready();
                        all_ready &= ready;
                        providers.insert(p.name().to_string(), serde_json::json!({"ok": ready}));
                    }
                }
                // A shared store that does not answer (or whose event
                // stream is down) would turn every login and uncached
                // session into a 503: unready until it recovers.
                let store_ok = self.state.sessions.reachable();
                all_ready &= store_ok;
                let store = serde_json::json!({
                    "ok": store_ok,
                    "kind": match runtime.config.sessions.store {
                        crate::config::SessionStore::Memory => "memory",
                        crate::config::SessionStore::Redis(_) => "redis",
                    },
                });
                // SIGTERM: out of the load balancer's rotation at once.
                let draining = self.state.is_draining();
                all_ready &= !draining;
                let status = if all_ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let word = match (all_ready, draining) {
                    (_, true) => "draining",
                    (true, false) => "ready",
                    (false, false) => "not_ready",
                };
                json(
                    status,
                    serde_json::json!({
                        "status": word,
                        "checks": {
                            "draining": {"ok": !draining},
                            "config": {"ok": true, "loaded_unix": loaded},
                            "providers": providers,
                            "session_store": store,
                        },
                    }),
                )
            }
            AdminRequest::Metrics => {
                let body = self.state.metrics.render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            AdminRequest::ListConnections { detail, deployment } => {
                let by_deployment = connections.counts_by_deployment();
                let total: usize = by_deployment.values().sum();
                let mut body = serde_json::json!({"total": total, "by_deployment": by_deployment});
                if detail {
                    body["connections"] =
                        serde_json::to_value(connections.list(deployment.as_deref()))
                            .unwrap_or_default();
                }
                json(StatusCode::OK, body)
            }
            AdminRequest::CloseConnections { deployment } => {
                let closed = connections.close_where(
                    |c| *c.deployment == *deployment,
                    close_code::SESSION_REVOKED,
                    "session revoked",
                    "admin",
                );
                self.counted("close_connections", "ok");
                json(StatusCode::OK, serde_json::json!({"closed": closed}))
            }
            AdminRequest::CloseConnection { id } => {
                if connections.close(id, close_code::SESSION_REVOKED, "session revoked", "admin") {
                    self.counted("close_connection", "ok");
                    json(StatusCode::OK, serde_json::json!({"closed": 1}))
                } else {
                    self.counted("close_connection", "not_found");
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no open connection has this id",
                    )
                }
            }
            AdminRequest::ListSessions { subject, provider } => {
                self.list_sessions(&subject, provider.as_deref()).await
            }
            AdminRequest::RevokeSession { public_id } => self.revoke_session(&public_id).await,
            AdminRequest::RevokeSubject { subject, provider } => {
                self.revoke_subject(&subject, provider.as_deref()).await
            }
            AdminRequest::Reload => match self.state.reload().await {
                Ok(summary) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "summary": summary}),
                ),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"reloaded": false, "error": "invalid_config", "error_description": e}),
                ),
            },
            AdminRequest::StatusPage => {
                status_page(&crate::status::StatusSnapshot::collect(&self.state))
            }
            AdminRequest::NotFound => {
                error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
            }
            AdminRequest::MethodNotAllowed => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not supported here",
            ),
            AdminRequest::BadRequest(why) => error(StatusCode::BAD_REQUEST, "bad_request", why),
        }
    }
}

impl AdminApp {
    fn counted(&self, action: &str, result: &str) {
        self.state
            .metrics
            .admin_actions
            .with_label_values(&[action, result])
            .inc();
    }

    fn store_unavailable(&self, action: &str, cause: &StoreError) -> Response<Vec<u8>> {
        self.counted(action, "store_unavailable");
        tracing::warn!(action, error = %cause, "admin action failed: session store unavailable");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            "the session store cannot be reached; nothing was changed",
        )
    }

    async fn list_sessions(&self, subject: &str, provider: Option<&str>) -> Response<Vec<u8>> {
        let query = SessionQuery {
            provider,
            subject: Some(subject),
            provider_sid: None,
        };
        let found = match self
            .state
            .sessions
            .find(&query, now(), SESSIONS_PER_ROUND)
            .await
        {
            Ok(found) => found,
            Err(e) => return self.store_unavailable("list_sessions", &e),
        };
        let mut live: std::collections::HashMap<String, usize> = Default::default();
        for conn in self.state.connections.list(None) {
            if let Some(session) = conn.session {
                *live.entry(session).or_default() += 1;
            }
        }
        let sessions: Vec<_> = found
            .iter()
            .map(|s| {
                let public_id = s.id.public_id();
                serde_json::json!({
                    "id": public_id,
                    "deployment": s.deployment,
                    "provider": s.provider,
                    "subject": s.subject,
                    "created_unix": s.created_at,
                    "last_seen_unix": s.last_seen,
                    "ends_unix": s.ends_at(),
                    "live_connections_here": live.get(&public_id).copied().unwrap_or(0),
                })
            })
            .collect();
        json(
            StatusCode::OK,
            serde_json::json!({
                "sessions": sessions,
                "truncated": found.len() == SESSIONS_PER_ROUND,
            }),
        )
    }

    async fn revoke_session(&self, public_id: &str) -> Response<Vec<u8>> {
        let session = match self.state.sessions.load_public(public_id, now()).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                self.counted("revoke_session", "not_found");
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no live session has this id",
                );
            }
            Err(e) => return self.store_unavailable("revoke_session", &e),
        };
        // Closed here either way; unless the store took the end, the
        // session lives on elsewhere: the operator is told to retry.
        let closed = match self
            .state
            .end_session(&session.id, EndReason::Revoked, "session revoked")
            .await
        {
            Ok(closed) => closed,
            Err(e) => return self.store_unavailable("revoke_session", &e),
        };
        self.counted("revoke_session", "ok");
        tracing::info!(session = %public_id, closed_connections = closed, "admin revoked a session");
        json(
            StatusCode::OK,
            serde_json::json!({"revoked": 1, "closed_connections_here": closed}),
        )
    }

    async fn revoke_subject(&self, subject: &str, provider: Option<&str>) -> Response<Vec<u8>> {
        let query = SessionQuery {
            provider,
            subject: Some(subject),
            provider_sid: None,
        };
        let (revoked, closed) = match self
            .state
            .end_matching(&query, EndReason::Revoked, "session revoked")
            .await
        {
            Ok(counts) => counts,
            Err(e) => return self.store_unavailable("revoke_subject", &e),
        };
        self.counted("revoke_subject", "ok");
        tracing::info!(
            revoked,
            closed_connections = closed,
            "admin revoked every session of a subject"
        );
        json(
            StatusCode::OK,
            serde_json::json!({"revoked": revoked, "closed_connections_here": closed}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_by_method_path_and_query() {
        let get = Method::GET;
        let delete = Method::DELETE;
        assert_eq!(
            AdminRequest::parse(&get, "/metrics", None),
            AdminRequest::Metrics
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin/connections", Some("detail&deployment=d1")),
            AdminRequest::ListConnections {
                detail: true,
                deployment: Some("d1".into())
            }
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin/connections", Some("detail=0")),
            AdminRequest::ListConnections {
                detail: false,
                deployment: None
            }
        );
        assert_eq!(
            AdminRequest::parse(&delete, "/admin/connections", Some("deployment=d1")),
            AdminRequest::CloseConnections {
                deployment: "d1".into()
            }
        );
        assert!(matches!(
            AdminRequest::parse(&delete, "/admin/connections", None),
            AdminRequest::BadRequest(_)
        ));
        assert_eq!(
            AdminRequest::parse(&delete, "/admin/connections/42", None),
            AdminRequest::CloseConnection { id: 42 }
        );
        assert_eq!(
            AdminRequest::parse(&Method::POST, "/admin/reload", None),
            AdminRequest::Reload
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin/sessions", Some("sub=a%2Bb&provider=okta")),
            AdminRequest::ListSessions {
                subject: "a+b".into(),
                provider: Some("okta".into())
            }
        );
        assert!(matches!(
            AdminRequest::parse(&get, "/admin/sessions", Some("sub=")),
            AdminRequest::BadRequest(_)
        ));
        let public_id = "s-0123456789abcdef01234567";
        assert_eq!(
            AdminRequest::parse(&delete, &format!("/admin/sessions/{public_id}"), None),
            AdminRequest::RevokeSession {
                public_id: public_id.into()
            }
        );
        for not_an_id in [
            "s-0123456789ABCDEF01234567",
            "s-0123456789abcdef0123456",
            "0123456789abcdef0123456789",
            "t-0123456789abcdef01234567",
            "",
        ] {
            assert!(
                matches!(
                    AdminRequest::parse(&delete, &format!("/admin/sessions/{not_an_id}"), None),
                    AdminRequest::BadRequest(_)
                ),
                "{not_an_id:?}"
            );
        }
        // A subject is one segment, percent-decoded ('/' arrives as %2F).
        assert_eq!(
            AdminRequest::parse(
                &delete,
                "/admin/subjects/auth0%7C12%2F3/sessions",
                Some("provider=dev")
            ),
            AdminRequest::RevokeSubject {
                subject: "auth0|12/3".into(),
                provider: Some("dev".into())
            }
        );
        // The prefix and suffix overlap here: no subject, and no panic.
        assert_eq!(
            AdminRequest::parse(&delete, "/admin/subjects/sessions", None),
            AdminRequest::NotFound
        );
        for bad in [
            "/admin/subjects//sessions",
            "/admin/subjects/a/b/sessions",
            "/admin/subjects/%FF/sessions",
        ] {
            assert!(
                matches!(
                    AdminRequest::parse(&delete, bad, None),
                    AdminRequest::BadRequest(_)
                ),
                "{bad}"
            );
        }
        assert_eq!(
            AdminRequest::parse(&get, "/admin/subjects/alice/sessions", None),
            AdminRequest::MethodNotAllowed
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin/reload", None),
            AdminRequest::MethodNotAllowed
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin/", None),
            AdminRequest::StatusPage
        );
        assert_eq!(
            AdminRequest::parse(&get, "/admin", None),
            AdminRequest::StatusPage
        );
        assert_eq!(
            AdminRequest::parse(&Method::POST, "/admin/", None),
            AdminRequest::MethodNotAllowed
        );
        assert_eq!(
            AdminRequest::parse(&get, "/nope", None),
            AdminRequest::NotFound
        );
    }

    #[test]
    fn on_loopback_only_loopback_host_names_are_served() {
        let loopback: std::net::SocketAddr = "127.0.0.1:9090".parse().unwrap();
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "127.0.0.2:1",
            "[::1]:9090",
            "localhost",
        ] {
            assert!(host_allowed(loopback, Some(ok.as_bytes())), "{ok}");
        }
        for refused in [
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9090",
            "10.0.0.1:9090",
            "",
            "user@localhost",
            "local host",
        ] {
            assert!(
                !host_allowed(loopback, Some(refused.as_bytes())),
                "{refused}"
            );
        }
        assert!(!host_allowed(loopback, None), "no Host, no answer");
        assert!(!host_allowed(loopback, Some(b"\xff")));
        // Off loopback the token guards the listener, whatever the name.
        let public: std::net::SocketAddr = "10.0.0.5:9090".parse().unwrap();
        assert!(host_allowed(public, Some(b"admin.internal:9090")));
        assert!(host_allowed(public, None));
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(token_matches(Some(b"BEARER s3cret"), "s3cret"));
        assert!(!token_matches(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!token_matches(Some(b"Bearer s3cretX"), "s3cret"));
        assert!(!token_matches(Some(b"Basic s3cret"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }
}
