//! Micro-benchmarks of the decisions portcullis makes on every request:
//! admission (target check, routing, origin), identity-header stripping and
//! WebSocket frame tracking. These run before or alongside every proxied
//! byte, so a regression here is a regression of the whole proxy.
//!
//! Run with `cargo bench --bench decisions`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pingora::http::RequestHeader;
use portcullis::config::Limits;
use portcullis::proxy::frames::FrameTracker;
use portcullis::proxy::{admit, headers, route};
use portcullis::runtime::Runtime;

/// The deployment the benchmarked requests are for.
const DEPLOYMENT: &str = "3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10";
/// How many other deployments share the runtime, so that the deployment
/// lookup works on a table of realistic size rather than a single entry.
const OTHER_DEPLOYMENTS: usize = 50;

/// A config shaped like a production one: several routes, many deployments,
/// origin allow-lists and a claim→header mapping (which adds names to the
/// identity-header strip rules, a slower path of the check).
fn config_text() -> String {
    let mut text = format!(
        r#"
listen: [{{address: "127.0.0.1:8080"}}]
messengers:
  open:
    authentication: {{enabled: false}}
    identity_headers: {{X-Auth-Tenant: tenant_id}}
upstreams:
  chat: {{servers: ["127.0.0.1:9000", "127.0.0.1:9001"]}}
routes:
  - {{path_prefix: /v1, deployment_from: {{query: deploymentId}}}}
  - {{path_prefix: /support/, deployment: {DEPLOYMENT}}}
  - {{path_prefix: /api/v2/messaging, deployment_from: {{query: deploymentId}}}}
deployments:
  - id: {DEPLOYMENT}
    messenger: open
    upstream: chat
    allowed_origins: [https://shop.example.com, https://help.example.com, https://www.example.com]
"#
    );
    for i in 0..OTHER_DEPLOYMENTS {
        text.push_str(&format!(
            "  - {{id: deployment-{i:04}, messenger: open, upstream: chat, allowed_origins: [https://site{i}.example.net]}}\n"
        ));
    }
    text
}

fn runtime() -> Runtime {
    let config = portcullis::config::parse(&config_text(), Path::new("."), &|_: &str| None)
        .unwrap_or_else(|e| panic!("benchmark config is invalid:\n{e}"));
    Runtime::build(
        config,
        None,
        &std::sync::Arc::new(portcullis::metrics::Metrics::new()),
    )
    .unwrap_or_else(|e| panic!("benchmark runtime: {e}"))
}

/// A browser's WebSocket handshake for `deployment`, sent from `origin`.
fn handshake(deployment: &str, origin: &str) -> RequestHeader {
    let target =
        format!("/v1/chat?deploymentId={deployment}&conversationId=c-81f2d0a4&locale=en-US");
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).expect("request header");
    for (name, value) in [
        ("Host", "chat.example.com"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Origin", origin),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        (
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("Sec-WebSocket-Protocol", "chat.v1, chat.v2"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("Accept-Language", "en-US,en;q=0.7"),
        ("Cookie", "site_prefs=dark; _ga=GA1.2.1234567890.1700000000"),
    ] {
        req.append_header(name, value).expect("header");
    }
    req
}

/// A handshake carrying ~15 headers, four of them spoofed identity headers
/// in the spellings an attacker would try.
fn spoofed_handshake() -> RequestHeader {
    let mut req = handshake(DEPLOYMENT, "https://www.example.com");
    for (name, value) in [
        ("X-Auth-Subject", "admin"),
        ("x_auth_email", "admin@example.com"),
        ("X-AUTH-Groups", "root"),
        ("X-Auth-Tenant", "other-tenant"),
    ] {
        req.append_header(name, value).expect("header");
    }
    req
}

/// 4 KiB of server→client (unmasked) text frames of mixed sizes, cut where
/// the 4 KiB end falls, mid-frame, as Pingora's body chunks are.
fn frame_chunk() -> Vec<u8> {
    const CHUNK: usize = 4096;
    let mut stream = Vec::with_capacity(CHUNK + 1024);
    for payload in [24usize, 96, 180, 700, 60, 1000].iter().cycle() {
        if stream.len() >= CHUNK {
            break;
        }
        stream.push(0x81); // FIN + text
        if *payload < 126 {
            stream.push(*payload as u8);
        } else {
            stream.push(126);
            stream.extend_from_slice(&(*payload as u16).to_be_bytes());
        }
        stream.extend(std::iter::repeat_n(b'm', *payload));
    }
    stream.truncate(CHUNK);
    stream
}

fn bench_admit(c: &mut Criterion) {
    let runtime = runtime();
    let allowed = handshake(DEPLOYMENT, "https://www.example.com");
    let unknown = handshake(
        "0b4e7f6a-0000-4000-8000-000000000000",
        "https://www.example.com",
    );
    let bad_origin = handshake(DEPLOYMENT, "https://evil.example.org");
    // Sanity: each case takes the path its name says, or the numbers lie.
    assert!(admit(&runtime, &allowed, true).is_ok());
    assert_eq!(
        admit(&runtime, &unknown, true).err().map(|r| r.code()),
        Some("unknown_deployment")
    );
    assert_eq!(
        admit(&runtime, &bad_origin, true).err().map(|r| r.code()),
        Some("origin_not_allowed")
    );

    let mut group = c.benchmark_group("admit");
    group.bench_function("allowed", |b| {
        b.iter(|| admit(black_box(&runtime), black_box(&allowed), true).is_ok())
    });
    group.bench_function("unknown_deployment", |b| {
        b.iter(|| admit(black_box(&runtime), black_box(&unknown), true).is_ok())
    });
    group.bench_function("bad_origin", |b| {
        b.iter(|| admit(black_box(&runtime), black_box(&bad_origin), true).is_ok())
    });
    group.finish();
}

fn bench_check_target(c: &mut Criterion) {
    let limits = Limits::default();
    let target = format!(
        "/v1/chat/rooms/general?deploymentId={DEPLOYMENT}&conversationId=c-81f2d0a4&locale=en-US"
    );
    assert!(route::check_target(target.as_bytes(), &limits).is_ok());
    c.bench_function("check_target", |b| {
        b.iter(|| route::check_target(black_box(target.as_bytes()), black_box(&limits)).is_ok())
    });
}

fn bench_strip(c: &mut Criterion) {
    let runtime = runtime();
    let spoofed = spoofed_handshake();
    let clean = handshake(DEPLOYMENT, "https://www.example.com");
    assert_eq!(
        headers::strip_identity_headers(&mut spoofed.clone(), &runtime.strip),
        4
    );

    let mut group = c.benchmark_group("strip_identity_headers");
    let rules = &runtime.strip;
    for (name, req) in [
        ("15_headers_4_spoofed", &spoofed),
        ("11_headers_none_spoofed", &clean),
    ] {
        // Stripping mutates the header, so every iteration gets a fresh
        // copy, made outside the timed section.
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || req.clone(),
                |req| headers::strip_identity_headers(req, rules),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_frames(c: &mut Criterion) {
    let chunk = frame_chunk();
    let mut group = c.benchmark_group("frame_tracker");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("observe_4KiB", |b| {
        b.iter(|| {
            let mut tracker = FrameTracker::new();
            tracker.observe(black_box(&chunk));
            tracker.at_boundary()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_admit,
    bench_check_target,
    bench_strip,
    bench_frames
);
criterion_main!(benches);
