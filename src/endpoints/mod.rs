//! portcullis's own endpoints under `/.auth/` (and, with
//! `compat.hosted_paths`, the hosted product's token paths): the public
//! keys of portcullis's signatures, browser login (`login`), the token API
//! for custom and mobile messengers (`token_api`), and what a site needs to
//! embed a deployment (`deployment`: its public config, the snippet, the SDK).
//!
//! `Endpoint::of` decides from the request line alone whether a request is
//! for one of them (and how much body it may carry), so the proxy can read a
//! bounded body before `answer` runs. Every answer is a whole response:
//! nothing here goes upstream.

pub mod backchannel;
pub mod cors;
pub mod deployment;
pub mod establish;
pub mod login;
pub mod redirect;
pub mod token_api;

use std::net::IpAddr;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::runtime::{Runtime, State};

pub type Response = (ResponseHeader, Bytes);

/// Bodies of the token API are small JSON objects; anything larger is refused unread.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The hosted product's paths of the token API (`compat.hosted_paths`).
pub const HOSTED_EXCHANGE: &str = "/api/v2/webdeployments/token/oauthcodegrantjwtexchange";
pub const HOSTED_REFRESH: &str = "/api/v2/webdeployments/token/refresh";
pub const HOSTED_REVOKE: &str = "/api/v2/webdeployments/token/revoke";

/// Which shape of the token API a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/.auth/token...`: refresh tokens rotate.
    Own,
    /// The hosted product's paths and shapes: refresh answers `{"jwt"}` and
    /// the refresh token stays the same.
    Hosted,
}

/// One of portcullis's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Jwks,
    Login,
    Callback,
    Me,
    Logout,
    /// OpenID Connect Back-Channel Logout, called by a provider.
    BackchannelLogout,
    Exchange(Flavor),
    Refresh(Flavor),
    Revoke(Flavor),
    /// A CORS preflight for one of the token API's paths or the deployment config.
    Preflight,
    DeploymentConfig(String),
    Snippet(String),
    Sdk,
    /// A path of ours with a method it does not take.
    MethodNotAllowed(&'static str),
}

impl Endpoint {
    /// The endpoint a request is for, if any. `/.auth/...` paths that are
    /// not endpoints are `None` here and refused by routing (404).
    pub fn of(runtime: &Runtime, req: &RequestHeader) -> Option<Endpoint> {
        let path = req.uri.path();
        let method = req.method.as_str();
        let hosted = runtime.config.compat.hosted_paths;
        let endpoint = match path {
            "/.auth/jwks.json" => match method {
                "GET" | "HEAD" => Endpoint::Jwks,
                _ => Endpoint::MethodNotAllowed("GET, HEAD"),
            },
            "/.auth/login" => only(method, "GET", Endpoint::Login),
            "/.auth/callback" => only(method, "GET", Endpoint::Callback),
            "/.auth/me" => only(method, "GET", Endpoint::Me),
            "/.auth/logout" => match method {
                "GET" | "POST" => Endpoint::Logout,
                _ => Endpoint::MethodNotAllowed("GET, POST"),
            },
            "/.auth/backchannel-logout" => only(method, "POST", Endpoint::BackchannelLogout),
            "/.auth/sdk.js" => match method {
                "GET" | "HEAD" => Endpoint::Sdk,
                _ => Endpoint::MethodNotAllowed("GET, HEAD"),
            },
            "/.auth/token" => match method {
                "POST" => Endpoint::Exchange(Flavor::Own),
                "DELETE" => Endpoint::Revoke(Flavor::Own),
                "OPTIONS" => Endpoint::Preflight,
                _ => Endpoint::MethodNotAllowed("POST, DELETE, OPTIONS"),
            },
            "/.auth/token/refresh" => post_or_preflight(method, Endpoint::Refresh(Flavor::Own)),
            HOSTED_EXCHANGE if hosted => {
                post_or_preflight(method, Endpoint::Exchange(Flavor::Hosted))
            }
            HOSTED_REFRESH if hosted => {
                post_or_preflight(method, Endpoint::Refresh(Flavor::Hosted))
            }
            HOSTED_REVOKE if hosted => match method {
                "DELETE" => Endpoint::Revoke(Flavor::Hosted),
                "OPTIONS" => Endpoint::Preflight,
                _ => Endpoint::MethodNotAllowed("DELETE, OPTIONS"),
            },
            _ => {
                let rest = path.strip_prefix("/.auth/deployments/")?;
                let (id, what) = rest.split_once('/')?;
                if !crate::config::is_deployment_id(id) {
                    return None;
                }
                match (what, method) {
                    ("config.json", "GET" | "HEAD") => Endpoint::DeploymentConfig(id.to_string()),
                    ("config.json", "OPTIONS") => Endpoint::Preflight,
                    ("snippet", "GET" | "HEAD") => Endpoint::Snippet(id.to_string()),
                    ("config.json" | "snippet", _) => Endpoint::MethodNotAllowed("GET, HEAD"),
                    _ => return None,
                }
            }
        };
        Some(endpoint)
    }

    /// How much request body the endpoint reads (0: none).
    pub fn body_limit(&self) -> usize {
        match self {
            Endpoint::Exchange(_) | Endpoint::Refresh(_) | Endpoint::BackchannelLogout => {
                MAX_BODY_BYTES
            }
            _ => 0,
        }
    }

    /// Whether the endpoint is rate-limited (it costs a provider call or a session).
    pub fn rate_limited(&self) -> bool {
        matches!(
            self,
            Endpoint::Login
                | Endpoint::Callback
                | Endpoint::Exchange(_)
                | Endpoint::Refresh(_)
                | Endpoint::Revoke(_)
        )
    }
}

fn only(method: &str, wanted: &'static str, endpoint: Endpoint) -> Endpoint {
    if method == wanted {
        endpoint
    } else {
        Endpoint::MethodNotAllowed(wanted)
    }
}

fn post_or_preflight(method: &str, endpoint: Endpoint) -> Endpoint {
    match method {
        "POST" => endpoint,
        "OPTIONS" => Endpoint::Preflight,
        _ => Endpoint::MethodNotAllowed("POST, OPTIONS"),
    }
}

/// A request for an endpoint, with what the proxy read for it.
pub struct Request<'a> {
    pub header: &'a RequestHeader,
    /// The body, read up to the endpoint's limit (empty for bodiless endpoints).
    pub body: Bytes,
    /// The client's address: the peer, or behind a trusted proxy the
    /// address that proxy saw (`X-Forwarded-For`).
    pub client: Option<IpAddr>,
}

/// Answers a request for one of portcullis's endpoints.
pub async fn answer(
    state: &std::sync::Arc<State>,
    runtime: &Runtime,
    endpoint: &Endpoint,
    req: &Request<'_>,
) -> Response {
    let header = req.header;
    match endpoint {
        Endpoint::Jwks => json(200, &runtime.keys.jwks(), "public, max-age=300"),
        Endpoint::Login => login::start(runtime, header).await,
        Endpoint::Callback => login::callback(state, runtime, header).await,
        Endpoint::Me => login::me(state, runtime, header).await,
        Endpoint::Logout => login::logout(state, runtime, header).await,
        Endpoint::BackchannelLogout => backchannel::logout(state, runtime, req).await,
        Endpoint::Exchange(flavor) => token_api::exchange(state, runtime, req, *flavor).await,
        Endpoint::Refresh(flavor) => token_api::refresh(state, runtime, req, *flavor).await,
        Endpoint::Revoke(_) => token_api::revoke(state, runtime, req).await,
        Endpoint::Preflight => cors::preflight(runtime, header),
        Endpoint::DeploymentConfig(id) => deployment::config(runtime, header, id),
        Endpoint::Snippet(id) => deployment::snippet(runtime, id),
        Endpoint::Sdk => deployment::sdk(header),
        Endpoint::MethodNotAllowed(allowed) => {
            let (mut header, body) = error(
                405,
                "method_not_allowed",
                "this endpoint does not take this method",
            );
            let _ = header.insert_header("allow", *allowed);
            (header, body)
        }
    }
}

/// A JSON error that tells the client when to come back (429, 503).
pub(crate) fn error_retry_after(
    status: u16,
    code: &str,
    description: &str,
    retry_after_secs: u64,
) -> Response {
    let (mut header, body) = error(status, code, description);
    let _ = header.insert_header("retry-after", retry_after_secs.to_string());
    (header, body)
}

/// A query parameter given exactly once; a repeated parameter is
/// ambiguous and counts as absent.
pub fn query_param(req: &RequestHeader, name: &str) -> Option<String> {
    let query = req.uri.query()?;
    let mut values = url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name);
    let first = values.next()?.1.into_owned();
    values.next().is_none().then_some(first)
}

pub(crate) fn json(status: u16, value: &serde_json::Value, cache_control: &str) -> Response {
    let body = Bytes::from(value.to_string());
    let mut header = ResponseHeader::build(status, Some(4)).expect("valid status");
    let _ = header.insert_header("content-type", "application/json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", cache_control);
    let _ = header.insert_header("x-content-type-options", "nosniff");
    (header, body)
}

/// The JSON error every API endpoint answers with (SPEC §3): `error`, a
/// stable code, and `error_description`, a sentence; never uncached.
pub(crate) fn error(status: u16, code: &str, description: &str) -> Response {
    json(
        status,
        &serde_json::json!({"error": code, "error_description": description}),
        "no-store",
    )
}
