//! The admin listener, on its own address: health, readiness, metrics, live
//! connections and reload. Off loopback every endpoint but `/healthz` and
//! `/readyz` requires `Authorization: Bearer <admin token>`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::connections::close_code;
use crate::runtime::State;

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
    Reload,
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
            ("POST", "/admin/reload") => AdminRequest::Reload,
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/connections" | "/admin/reload") => {
                AdminRequest::MethodNotAllowed
            }
            _ => AdminRequest::NotFound,
        }
    }

    fn is_public(&self) -> bool {
        matches!(self, AdminRequest::Health | AdminRequest::Ready)
    }
}

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
                let status = if all_ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    serde_json::json!({
                        "status": if all_ready { "ready" } else { "not_ready" },
                        "checks": {
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
                json(StatusCode::OK, serde_json::json!({"closed": closed}))
            }
            AdminRequest::CloseConnection { id } => {
                if connections.close(id, close_code::SESSION_REVOKED, "session revoked", "admin") {
                    json(StatusCode::OK, serde_json::json!({"closed": 1}))
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no open connection has this id",
                    )
                }
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
            AdminRequest::parse(&get, "/admin/reload", None),
            AdminRequest::MethodNotAllowed
        );
        assert_eq!(
            AdminRequest::parse(&get, "/nope", None),
            AdminRequest::NotFound
        );
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
