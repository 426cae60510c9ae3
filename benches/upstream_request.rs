//! The request header's way upstream, as every proxied request takes it:
//! Pingora's clone of the client's header, `prepare_upstream_request`
//! (strips, request id, identity or deployment header, `X-Forwarded-*`) and
//! the head written out as Pingora writes it. Once for a deployment without
//! authentication and once for a bearer-authenticated one carrying a full
//! identity: the difference is what carrying an identity costs per request.
//!
//! Run with `cargo bench --bench upstream_request`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use portcullis::proxy::credential::{Carrier, Credential};
use portcullis::proxy::headers::ClientInfo;
use portcullis::proxy::request_id::RequestId;
use portcullis::proxy::{admit, prepare_upstream_request, Authenticated};
use portcullis::runtime::Runtime;
use portcullis::token::Claims;

const CONFIG: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
providers:
  idp:
    issuer: "https://idp.example.com"
    client_id: chat
    client_secret: {env: BENCH_CLIENT_SECRET}
    audiences: ["api://messaging"]
messengers:
  open: {authentication: {enabled: false}}
  bearer: {authentication: {enabled: true, provider: idp}, assertion: false}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
routes:
  - {path_prefix: /v1, deployment_from: {query: deploymentId}}
deployments:
  - {id: open-deployment, messenger: open, upstream: chat, allowed_origins: [https://shop.example.com]}
  - {id: bearer-deployment, messenger: bearer, upstream: chat, allowed_origins: [https://shop.example.com]}
"#;

fn runtime() -> Runtime {
    let secret = |name: &str| (name == "BENCH_CLIENT_SECRET").then(|| "s".repeat(32));
    let config = portcullis::config::parse(CONFIG, Path::new("."), &secret)
        .unwrap_or_else(|e| panic!("benchmark config is invalid:\n{e}"));
    Runtime::build(config, None, &Arc::new(portcullis::metrics::Metrics::new()))
        .unwrap_or_else(|e| panic!("benchmark runtime: {e}"))
}

/// A JWT-sized bearer token (the header is stripped before it goes upstream).
fn token() -> String {
    format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.{}.{}",
        "a".repeat(420),
        "b".repeat(342)
    )
}

/// A browser's HTTP request as Pingora parses it (original case kept).
fn request(deployment: &str, bearer: Option<&str>) -> RequestHeader {
    let path = format!("/v1/ping?deploymentId={deployment}");
    let mut req = RequestHeader::build("GET", path.as_bytes(), Some(12)).expect("request header");
    for (name, value) in [
        ("Host", "chat.example.com"),
        ("Origin", "https://shop.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("Accept", "application/json"),
        ("Accept-Language", "en-US,en;q=0.7"),
        ("Cookie", "site_prefs=dark; _ga=GA1.2.1234567890.1700000000"),
    ] {
        req.append_header(name, value).expect("header");
    }
    if let Some(token) = bearer {
        req.append_header("Authorization", format!("Bearer {token}"))
            .expect("header");
    }
    req
}

fn authenticated(runtime: &Runtime, target: &portcullis::proxy::route::Target) -> Authenticated {
    let claims: Claims = serde_json::from_value(serde_json::json!({
        "iss": "https://idp.example.com",
        "sub": "248289761001",
        "email": "jane.doe@example.com",
        "email_verified": true,
        "name": "Jane Doe",
        "groups": ["customers", "premium"],
    }))
    .expect("claims");
    let rendered = runtime
        .render_identity(
            &target.deployment,
            &Arc::new(claims),
            "b-4f1c2a9d0e7b".into(),
        )
        .expect("rendered identity");
    Authenticated {
        rendered: Arc::new(rendered),
        credential: Credential {
            token: token(),
            carrier: Carrier::AuthorizationHeader,
        },
        session: None,
        closes_at: None,
        idle_close_secs: None,
        session_idle: None,
        due_for_recheck: None,
    }
}

fn upstream_request(c: &mut Criterion) {
    let runtime = runtime();
    let client = ClientInfo {
        peer: Some("203.0.113.7".parse().expect("address")),
        tls: true,
    };
    let token = token();
    let open = request("open-deployment", None);
    let bearer = request("bearer-deployment", Some(&token));
    let open_target = admit(&runtime, &open, false).expect("open request admitted");
    let bearer_target = admit(&runtime, &bearer, false).expect("bearer request admitted");
    let auth = authenticated(&runtime, &bearer_target);

    let mut group = c.benchmark_group("upstream_request");
    for (label, req, target, auth) in [
        ("open", &open, &open_target, None),
        ("bearer_identity", &bearer, &bearer_target, Some(&auth)),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let id = RequestId::generate();
                let mut upstream = req.clone();
                prepare_upstream_request(
                    &mut upstream,
                    &runtime,
                    Some(target),
                    auth,
                    &id,
                    client,
                    false,
                )
                .expect("prepared");
                let mut wire = BytesMut::with_capacity(1024);
                upstream.header_to_h1_wire(&mut wire);
                black_box(wire)
            })
        });
    }
    group.bench_function("request_id", |b| {
        b.iter(|| black_box(RequestId::generate()))
    });
    group.finish();
}

criterion_group!(benches, upstream_request);
criterion_main!(benches);
