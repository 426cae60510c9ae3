//! CORS for the endpoints a site's own pages call across origins: the token
//! API and a deployment's public config. A deployment's `allowed_origins`
//! (or `allow_all_origins`) are the origins its pages may call from, as in
//! the hosted product, where the allowed domains feed the CORS headers.
//!
//! No credentials mode: these endpoints never read cookies, so
//! `Access-Control-Allow-Credentials` is never sent. A request without
//! `Origin` (a native app, a server) needs no CORS and is not refused for it.

use pingora::http::{RequestHeader, ResponseHeader};

use super::{error, Response};
use crate::config::OriginPolicy;
use crate::runtime::{DeploymentRt, Runtime};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The request's `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOrigin<'a> {
    /// None: not a cross-origin browser request.
    Absent,
    One(&'a str),
    /// Repeated, or not text: never allowed.
    Invalid,
}

pub fn request_origin(req: &RequestHeader) -> RequestOrigin<'_> {
    let mut values = req.headers.get_all("origin").iter();
    let first = values.next();
    if values.next().is_some() {
        return RequestOrigin::Invalid;
    }
    match first.map(|v| v.to_str()) {
        None => RequestOrigin::Absent,
        Some(Ok(origin)) => RequestOrigin::One(origin),
        Some(Err(_)) => RequestOrigin::Invalid,
    }
}

/// Whether pages of `origin` may call this deployment's endpoints.
pub fn allowed(deployment: &DeploymentRt, origin: &str) -> bool {
    match &deployment.config.origins {
        OriginPolicy::Any => true,
        OriginPolicy::List(list) => list.iter().any(|a| a.eq_ignore_ascii_case(origin)),
    }
}

/// Whether the deployment takes this call: a page of a listed origin, or
/// a request without `Origin` (an app, a server).
pub fn permits(deployment: &DeploymentRt, req: &RequestHeader) -> bool {
    match request_origin(req) {
        RequestOrigin::Absent => true,
        RequestOrigin::One(origin) => allowed(deployment, origin),
        RequestOrigin::Invalid => false,
    }
}

/// Adds the CORS answer headers for an allowed `Origin` (and `Vary: Origin`
/// always, since the answer depends on it).
pub fn decorate(header: &mut ResponseHeader, req: &RequestHeader, deployment: &DeploymentRt) {
    let _ = header.append_header("vary", "Origin");
    if let RequestOrigin::One(origin) = request_origin(req) {
        if allowed(deployment, origin) {
            let _ = header.insert_header("access-control-allow-origin", origin);
            // X-Request-Id: so that a site can show the id a user may quote.
            let _ =
                header.insert_header("access-control-expose-headers", "retry-after, x-request-id");
        }
    }
}

/// `OPTIONS` on a token-API path or a deployment's config: allowed when
/// any active deployment lists the origin (the body, which names the
/// deployment, is not sent with a preflight; the real request is checked
/// against its own deployment).
pub fn preflight(runtime: &Runtime, req: &RequestHeader) -> Response {
    let origin = match request_origin(req) {
        RequestOrigin::One(origin) => origin,
        _ => {
            return error(
                400,
                "invalid_request",
                "a preflight request needs exactly one Origin",
            )
        }
    };
    let listed = runtime
        .deployments()
        .any(|d| d.is_active() && allowed(d, origin));
    if !listed {
        return error(
            403,
            "origin_not_allowed",
            "no deployment allows this Origin",
        );
    }
    let mut header = ResponseHeader::build(204, Some(6)).expect("valid status");
    let _ = header.insert_header("access-control-allow-origin", origin);
    let _ = header.insert_header("access-control-allow-methods", "GET, POST, DELETE");
    let _ = header.insert_header(
        "access-control-allow-headers",
        "authorization, content-type",
    );
    let _ = header.insert_header("access-control-max-age", PREFLIGHT_MAX_AGE);
    let _ = header.insert_header("vary", "Origin");
    let _ = header.insert_header("content-length", "0");
    (header, bytes::Bytes::new())
}
