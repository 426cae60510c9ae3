//! portcullis's own endpoints under `/.auth/`: the public keys of
//! portcullis's signatures, and browser login (`login`). Logout and the
//! token API come next.

pub mod establish;
pub mod login;
pub mod redirect;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::runtime::{Runtime, State};

/// Answers a request for one of portcullis's endpoints; `None` for anything else.
pub async fn answer(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
) -> Option<(ResponseHeader, Bytes)> {
    let path = req.uri.path();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/.auth/jwks.json") => {
            Some(json(200, &runtime.keys.jwks(), "public, max-age=300"))
        }
        ("GET", "/.auth/login") => Some(login::start(runtime, req).await),
        ("GET", "/.auth/callback") => Some(login::callback(state, runtime, req).await),
        ("GET", "/.auth/me") => Some(login::me(state, runtime, req).await),
        ("GET" | "POST", "/.auth/logout") => Some(login::logout(state, runtime, req).await),
        _ => None,
    }
}

fn json(status: u16, value: &serde_json::Value, cache_control: &str) -> (ResponseHeader, Bytes) {
    let body = Bytes::from(value.to_string());
    let mut header = ResponseHeader::build(status, Some(4)).expect("valid status");
    let _ = header.insert_header("content-type", "application/json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", cache_control);
    let _ = header.insert_header("x-content-type-options", "nosniff");
    (header, body)
}
