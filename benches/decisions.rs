//! Micro-benchmarks of the decisions portcullis makes on every request:
//! admission (target check, routing, origin), identity-header stripping and
//! WebSocket frame tracking. These run before or alongside every proxied
//! byte, so a regression here is a regression of the whole proxy.
//!
//! The `token` group measures bearer authentication against a development
//! provider started inside the bench (loopback, port chosen by the system):
//! the per-request cost of a token seen before (`cached_check`,
//! `authenticate_cached`), and the cost of a token seen for the first time,
//! layer by layer, from the bare signature check that compares with
//! `openssl speed` (`crypto_*`) up to `portcullis::token::verify`
//! (`first_seen_*`), and the whole bearer request as the proxy makes it
//! (`authenticate` and the `X-Auth-Assertion`) for tokens never seen
//! before, all of one person (`first_seen_request_*`: their assertion is
//! shared) or each of another (`first_seen_request_distinct_*`: one
//! assertion signed per token), and for one seen before
//! (`cached_request`). Every `token` bench counts one verification per
//! iteration, so criterion's `thrpt` line reads as verifications per second
//! of this thread's CPU time (as `openssl speed` counts by default).
//!
//! Run with `cargo bench --bench decisions` (`-- token` for that group
//! only); `scripts/bench-tokens.sh` runs the token rows beside `openssl
//! speed` on one core and prints the ratios.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{
    ParsedPublicKey, RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    RSA_PKCS1_2048_8192_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::Algorithm;
use pingora::http::RequestHeader;
use portcullis::config::Limits;
use portcullis::devidp::{self, DevIdp, DevIdpOptions};
use portcullis::provider::jwks::VerifyingKey;
use portcullis::provider::ProviderService;
use portcullis::proxy::frames::FrameTracker;
use portcullis::proxy::{admit, authenticate, headers, route};
use portcullis::runtime::Runtime;
use portcullis::token::{self, check_signature_and_time};

/// The deployment the benchmarked requests are for.
const DEPLOYMENT: &str = "3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10";
/// How many other deployments share the runtime, so that the deployment
/// lookup works on a table of realistic size rather than a single entry.
const OTHER_DEPLOYMENTS: usize = 50;

/// A config shaped like a production one: several routes, many deployments,
/// origin allow-lists.
fn config_text() -> String {
    let mut text = format!(
        r#"
listen: [{{address: "127.0.0.1:8080"}}]
messengers:
  open:
    authentication: {{enabled: false}}
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

// ---------------------------------------------------------------- tokens

/// The deployment of the authenticating messenger in the token benches.
const AUTH_DEPLOYMENT: &str = "7d2e4b10-3c5a-4f8e-b1d6-9a0c2e4f6b81";
const AUTH_ORIGIN: &str = "https://www.example.com";
/// Distinct tokens per algorithm for the first-seen benches, used in turn,
/// so that no iteration sees the exact bytes of the one before.
const FRESH_TOKENS: usize = 256;

/// A development provider on loopback, and a runtime whose provider `dev`
/// points at it. Fields drop in order: the runtime (and its HTTP client)
/// before the provider, the async runtime last.
struct AuthBench {
    runtime: Runtime,
    /// The config `runtime` was built from, to build fresh runtimes (empty
    /// token and identity caches, the same provider and its cached keys).
    config: portcullis::config::Config,
    metrics: Arc<portcullis::metrics::Metrics>,
    idp: DevIdp,
    tokio: tokio::runtime::Runtime,
}

fn auth_config_text(issuer: &str) -> String {
    format!(
        r#"
listen: [{{address: "127.0.0.1:8080"}}]
public_url: "http://127.0.0.1:8080"
providers:
  dev:
    issuer: "{issuer}"
    client_id: portcullis-demo
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
messengers:
  bearer:
    authentication: {{enabled: true, provider: dev}}
    assertion: false
upstreams:
  chat: {{servers: ["127.0.0.1:9000"]}}
routes:
  - {{path_prefix: /v1, deployment_from: {{query: deploymentId}}}}
deployments:
  - {{id: {AUTH_DEPLOYMENT}, messenger: bearer, upstream: chat, allowed_origins: ["{AUTH_ORIGIN}"]}}
"#
    )
}

fn auth_bench() -> AuthBench {
    // One thread: the provider answers discovery and JWKS while the setup
    // blocks on them, and sits idle while the benches run.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let idp = tokio
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let options = DevIdpOptions {
                // Outlives any bench run, so no token expires mid-measurement.
                token_lifetime: Duration::from_secs(3600),
                ..DevIdpOptions::default()
            };
            devidp::start(listener, options).await
        })
        .expect("development provider");
    let config = portcullis::config::parse(
        &auth_config_text(idp.issuer()),
        Path::new("."),
        &|_: &str| None,
    )
    .unwrap_or_else(|e| panic!("token benchmark config is invalid:\n{e}"));
    let metrics = Arc::new(portcullis::metrics::Metrics::new());
    let runtime = Runtime::build(config.clone(), None, &metrics)
        .unwrap_or_else(|e| panic!("token benchmark runtime: {e}"));
    AuthBench {
        runtime,
        config,
        metrics,
        idp,
        tokio,
    }
}

/// The public key of `alg` in the form the signature check takes it.
enum RawKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point.
    Ec(Vec<u8>),
}

impl RawKey {
    fn from_jwk(key: &VerifyingKey) -> Self {
        let decode = |b64: &str| URL_SAFE_NO_PAD.decode(b64).expect("JWK base64url");
        match &key.jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => RawKey::Rsa {
                n: decode(&rsa.n),
                e: decode(&rsa.e),
            },
            AlgorithmParameters::EllipticCurve(ec) => {
                let mut point = vec![0x04];
                point.extend(decode(&ec.x));
                point.extend(decode(&ec.y));
                RawKey::Ec(point)
            }
            other => panic!("unexpected key type {other:?}"),
        }
    }

    /// Parsed once, as `openssl speed` holds its key.
    fn parsed(&self) -> ParsedPublicKey {
        match self {
            RawKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .expect("RSA key"),
            RawKey::Ec(point) => {
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).expect("EC key")
            }
        }
    }

    /// What jsonwebtoken does per token: builds the key from the JWK's
    /// components, hashes the signing input, verifies.
    fn verify_unparsed(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            RawKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            RawKey::Ec(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// A token's signing input (`header.payload`) and decoded signature.
fn split_jws(token: &str) -> (&[u8], Vec<u8>) {
    let (input, signature) = token.rsplit_once('.').expect("a JWS");
    (
        input.as_bytes(),
        URL_SAFE_NO_PAD
            .decode(signature)
            .expect("signature base64url"),
    )
}

/// What the proxy does for a bearer request to a deployment with
/// `assertion: true` (whatever the bench config's messenger says, the
/// assertion is always made here): `authenticate` (the token check, the
/// identity), then the `X-Auth-Assertion` value as `upstream_request_filter`
/// gets it (reused while fresh, also across tokens of one identity, else
/// signed). True when both succeed.
async fn bearer_request(
    runtime: &Runtime,
    sessions: &portcullis::session::store::MemoryStore,
    target: &route::Target,
    request: &RequestHeader,
) -> bool {
    let Ok(auth) = authenticate(runtime, sessions, target, request).await else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    auth.rendered
        .assertion(
            now,
            &runtime.keys.current,
            &runtime.issuer,
            &target.deployment.upstream.config.name,
        )
        .is_ok()
}

/// This thread's CPU time (user and system), as `openssl speed` counts its
/// operations per second of CPU time by default: on a machine whose cores
/// are shared, wall-clock rates move with whatever else runs there, CPU-time
/// rates much less, and both sides of a ratio are counted the same way.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Criterion measuring [`thread_cpu_time`] (the `token` and `identity`
/// groups); reported like wall time.
struct ThreadCpuTime;

impl criterion::measurement::Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        static WALL: criterion::measurement::WallTime = criterion::measurement::WallTime;
        WALL.formatter()
    }
}

/// Runs `op` `iters` times inside one `block_on`, timing (in this thread's
/// CPU time) only the loop.
fn time_async<F, Fut>(tokio: &tokio::runtime::Runtime, iters: u64, mut op: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio.block_on(async {
        let started = thread_cpu_time();
        for i in 0..iters {
            black_box(op(i).await);
        }
        thread_cpu_time().saturating_sub(started)
    })
}

/// A live session of alice's saved in `store`: a handshake carrying its
/// sealed cookie, the admitted target, and a handshake carrying a messenger
/// token of the session (as the token API issues it) instead.
async fn session_and_messenger_token(
    runtime: &Runtime,
    store: &portcullis::session::store::MemoryStore,
) -> (RequestHeader, route::Target, RequestHeader) {
    use portcullis::session::store::SessionStore;
    use portcullis::session::{Session, SessionId};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let id = SessionId::random().expect("randomness");
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "alice".into());
    claims.insert("email".into(), "alice@example.com".into());
    let session = Session {
        id: id.clone(),
        deployment: AUTH_DEPLOYMENT.into(),
        provider: "dev".into(),
        subject: "alice".into(),
        claims,
        created_at: now,
        last_seen: now,
        expires_at: now + 3600,
        idle_timeout_secs: 3600,
        refresh_token: None,
        id_token: None,
        checked_at: now,
        provider_token_lifetime_secs: None,
    };
    store.save(&session).await.expect("memory store");
    let name = runtime.cookie_policy.session_name.clone();
    let sealed = runtime.cookies.seal(&name, id.as_bytes()).expect("sealed");
    let mut request = handshake(AUTH_DEPLOYMENT, AUTH_ORIGIN);
    request
        .append_header("Cookie", format!("theme=dark; {name}={sealed}; lang=en"))
        .expect("header");
    let target = admit(runtime, &request, true).expect("admitted");
    let (jwt, _) = portcullis::token::messenger::issue(
        &runtime.keys,
        &runtime.issuer,
        "alice",
        AUTH_DEPLOYMENT,
        &id.public_id(),
        now,
        3600,
    )
    .expect("messenger token");
    let mut by_jwt = handshake(AUTH_DEPLOYMENT, AUTH_ORIGIN);
    by_jwt
        .append_header("Authorization", format!("Bearer {jwt}"))
        .expect("header");
    (request, target, by_jwt)
}

fn bench_tokens(c: &mut Criterion<ThreadCpuTime>) {
    // As the binary does first thing: jsonwebtoken's provider is fixed by
    // its first use, and the development provider signs tokens below.
    portcullis::install_crypto_provider();
    assert!(
        portcullis::token::prepared::is_installed(),
        "keys parsed once are in use"
    );
    let AuthBench {
        runtime,
        config,
        metrics,
        idp,
        tokio,
    } = &auth_bench();
    let provider: &ProviderService = runtime.providers.get("dev").expect("provider dev");
    let issuer = provider.config.issuer.as_str();
    let skew = provider.config.clock_skew;

    // Sanity first: every benched call must take its success path, or the
    // numbers measure an error (an unreachable provider, a refused token).
    let repeat = idp.mint_access_token("alice", Algorithm::RS256);
    let first = tokio
        .block_on(runtime.tokens.verify(provider, &repeat))
        .expect("the repeated token verifies");
    assert_eq!(first.claims.str("sub"), Some("alice"));
    let again = tokio
        .block_on(runtime.tokens.verify(provider, &repeat))
        .expect("the repeated token verifies again");
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second verification must come from the token cache"
    );
    let mut request = handshake(AUTH_DEPLOYMENT, AUTH_ORIGIN);
    request
        .append_header("Authorization", format!("Bearer {repeat}"))
        .expect("header");
    let target = admit(runtime, &request, true).expect("the bearer request is admitted");
    // Bearer requests never reach the session store; an empty one will do.
    let sessions = portcullis::session::store::MemoryStore::new(1);
    let authenticated = tokio
        .block_on(authenticate(runtime, &sessions, &target, &request))
        .expect("the bearer request authenticates");
    assert_eq!(authenticated.rendered.identity.subject, "alice");
    let anonymous = handshake(AUTH_DEPLOYMENT, AUTH_ORIGIN);
    let target_anonymous = admit(runtime, &anonymous, true).expect("admitted before auth");
    assert!(
        tokio
            .block_on(authenticate(
                runtime,
                &sessions,
                &target_anonymous,
                &anonymous
            ))
            .is_err(),
        "the deployment must require authentication"
    );

    let mut group = c.benchmark_group("token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cached_check", |b| {
        b.iter_custom(|iters| {
            time_async(tokio, iters, |_| async {
                runtime
                    .tokens
                    .verify(black_box(provider), black_box(&repeat))
                    .await
                    .is_ok()
            })
        })
    });
    // The whole bearer request for a token seen before: cached verdict,
    // cached identity, the assertion reused while it is fresh.
    assert!(tokio.block_on(bearer_request(runtime, &sessions, &target, &request)));
    group.bench_function("cached_request", |b| {
        b.iter_custom(|iters| {
            time_async(tokio, iters, |_| async {
                bearer_request(black_box(runtime), &sessions, &target, black_box(&request)).await
            })
        })
    });
    group.bench_function("authenticate_cached", |b| {
        b.iter_custom(|iters| {
            time_async(tokio, iters, |_| async {
                authenticate(black_box(runtime), &sessions, &target, black_box(&request))
                    .await
                    .is_ok()
            })
        })
    });

    // The session-cookie path: open the sealed cookie (AES-256-GCM), look the
    // session up in the memory store, apply the policy, reuse the identity.
    let store = portcullis::session::store::MemoryStore::new(1000);
    let (cookie_request, cookie_target, jwt_request) =
        tokio.block_on(session_and_messenger_token(runtime, &store));
    let by_cookie = tokio
        .block_on(authenticate(
            runtime,
            &store,
            &cookie_target,
            &cookie_request,
        ))
        .expect("the session cookie authenticates");
    assert!(by_cookie.session.is_some() && by_cookie.rendered.identity.subject == "alice");
    group.bench_function("authenticate_session_cookie", |b| {
        b.iter_custom(|iters| {
            time_async(tokio, iters, |_| async {
                authenticate(
                    black_box(runtime),
                    &store,
                    &cookie_target,
                    black_box(&cookie_request),
                )
                .await
                .is_ok()
            })
        })
    });

    // The messenger-token path (token API): the jwt verified locally (cached
    // until exp), then its session looked up by the public id it names.
    let by_jwt = tokio
        .block_on(authenticate(runtime, &store, &cookie_target, &jwt_request))
        .expect("the messenger token authenticates");
    assert!(
        by_jwt.session.is_some() && by_jwt.rendered.identity.subject == "alice",
        "the messenger token is bound to its session"
    );
    group.bench_function("authenticate_messenger_token", |b| {
        b.iter_custom(|iters| {
            time_async(tokio, iters, |_| async {
                authenticate(
                    black_box(runtime),
                    &store,
                    &cookie_target,
                    black_box(&jwt_request),
                )
                .await
                .is_ok()
            })
        })
    });

    group.finish();

    // What a first-seen token (or a session's first request to a
    // deployment) pays once: its identity rendered for the deployment, the
    // header values made under the names the deployment parsed when the
    // configuration was compiled. Later requests reuse it (the upstream
    // head: `benches/upstream_request.rs`).
    let claims = first.claims.clone();
    let session_id = authenticated.rendered.identity.session.clone();
    let rendered = runtime
        .render_identity(&target.deployment, &claims, session_id.clone())
        .expect("the identity renders");
    assert_eq!(rendered.identity.subject, "alice");
    let mut group = c.benchmark_group("identity");
    group.bench_function(format!("render_{}", rendered.headers.len()), |b| {
        b.iter(|| {
            runtime
                .render_identity(
                    black_box(&target.deployment),
                    black_box(&claims),
                    session_id.clone(),
                )
                .expect("the identity renders")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("token");
    group.throughput(Throughput::Elements(1));
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let name = format!("{alg:?}").to_ascii_lowercase();
        let fresh: Vec<String> = (0..FRESH_TOKENS)
            .map(|_| idp.mint_access_token("alice", alg))
            .collect();
        let kid = jsonwebtoken::decode_header(&fresh[0])
            .expect("token header")
            .kid;
        let key = tokio
            .block_on(provider.key_for(kid.as_deref(), alg))
            .unwrap_or_else(|e| panic!("{alg:?} key: {e:?}"));
        let raw = RawKey::from_jwk(&key);
        let parsed = raw.parsed();
        let signed: Vec<(&[u8], Vec<u8>)> = fresh.iter().map(|t| split_jws(t)).collect();
        let digests: Vec<aws_lc_rs::digest::Digest> = signed
            .iter()
            .map(|(input, _)| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input))
            .collect();
        for (i, token) in fresh.iter().enumerate() {
            let (input, signature) = &signed[i];
            let verified = tokio
                .block_on(token::verify(provider, token))
                .unwrap_or_else(|e| panic!("{alg:?} token::verify: {e:?}"));
            assert_eq!(verified.kind, token::TokenKind::Access);
            check_signature_and_time(token, &key.key, alg, issuer, skew)
                .unwrap_or_else(|e| panic!("{alg:?} check_signature_and_time: {e:?}"));
            assert!(raw.verify_unparsed(input, signature), "{alg:?} unparsed");
            assert!(
                parsed.verify_digest_sig(&digests[i], signature).is_ok(),
                "{alg:?} parsed"
            );
        }
        // And the checks do check: a flipped bit in the signature fails each.
        let (input, signature) = &signed[0];
        let mut bad = signature.clone();
        bad[7] ^= 1;
        assert!(!raw.verify_unparsed(input, &bad));
        assert!(parsed.verify_digest_sig(&digests[0], &bad).is_err());
        let bad_token = format!(
            "{}.{}",
            std::str::from_utf8(input).expect("ASCII"),
            URL_SAFE_NO_PAD.encode(&bad)
        );
        assert_eq!(
            check_signature_and_time(&bad_token, &key.key, alg, issuer, skew).err(),
            Some(token::TokenError::BadSignature)
        );

        let nth = |i: u64| (i % FRESH_TOKENS as u64) as usize;
        // The signature alone, key parsed once and the digest precomputed:
        // the figure that compares with `openssl speed`'s verify/s.
        group.bench_function(format!("crypto_{name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                let n = nth(i);
                parsed
                    .verify_digest_sig(black_box(&digests[n]), black_box(&signed[n].1))
                    .is_ok()
            })
        });
        // As jsonwebtoken verifies: key from the JWK components and the
        // SHA-256 of the signing input, every time.
        group.bench_function(format!("crypto_as_jsonwebtoken_{name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                let (input, signature) = &signed[nth(i)];
                raw.verify_unparsed(black_box(input), black_box(signature))
            })
        });
        // Plus base64, claims JSON, iss/exp/nbf/iat.
        group.bench_function(format!("signature_and_time_{name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                check_signature_and_time(black_box(&fresh[nth(i)]), &key.key, alg, issuer, skew)
                    .is_ok()
            })
        });
        // The whole bearer request for tokens never seen before, through the
        // function the proxy calls (`authenticate`) and the assertion: each
        // pass over the distinct tokens runs on a fresh runtime (empty token
        // and identity caches; the same provider and cached key set), built
        // outside the timed loop, so no token is ever a cache hit.
        let to_requests = |tokens: &[String]| -> Vec<RequestHeader> {
            tokens
                .iter()
                .map(|token| {
                    let mut request = handshake(AUTH_DEPLOYMENT, AUTH_ORIGIN);
                    request
                        .append_header("Authorization", format!("Bearer {token}"))
                        .expect("header");
                    request
                })
                .collect()
        };
        let requests = to_requests(&fresh);
        // The same tokens, each of another person (its own `sub`): no two
        // share an identity, so no assertion is shared between them.
        let distinct: Vec<String> = fresh
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let payload = token.split('.').nth(1).expect("payload");
                let mut claims: serde_json::Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64"))
                        .expect("claims");
                claims["sub"] = serde_json::Value::from(format!("user-{i}"));
                idp.sign(jsonwebtoken::Header::new(alg), &claims)
            })
            .collect();
        let distinct_requests = to_requests(&distinct);
        let fresh_runtime = || {
            let fresh = Runtime::build(config.clone(), Some(runtime), metrics)
                .unwrap_or_else(|e| panic!("token benchmark runtime: {e}"));
            assert!(
                Arc::ptr_eq(&fresh.providers["dev"], &runtime.providers["dev"]),
                "the fresh runtime keeps the provider and its keys"
            );
            fresh
        };
        for (row, requests) in [
            ("first_seen_request", &requests),
            ("first_seen_request_distinct", &distinct_requests),
        ] {
            {
                let fresh = fresh_runtime();
                for request in requests {
                    assert!(
                        tokio.block_on(bearer_request(&fresh, &sessions, &target, request)),
                        "{alg:?} {row}"
                    );
                }
            }
            group.bench_function(format!("{row}_{name}"), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let fresh = fresh_runtime();
                        // Nor is any identity's assertion known yet.
                        portcullis::identity::forget_shared_assertions();
                        let pass = (iters - done).min(FRESH_TOKENS as u64);
                        timed += time_async(tokio, pass, |i| {
                            let request = &requests[i as usize];
                            let fresh = &fresh;
                            let sessions = &sessions;
                            let target = &target;
                            async move {
                                bearer_request(
                                    black_box(fresh),
                                    sessions,
                                    target,
                                    black_box(request),
                                )
                                .await
                            }
                        });
                        done += pass;
                    }
                    timed
                })
            });
        }
        // The whole verification of a token not in the token cache: header
        // and algorithm checks, key lookup (the JWKS is cached), signature,
        // claims, audience. `token::verify` keeps no cache of its own.
        group.bench_function(format!("first_seen_{name}"), |b| {
            b.iter_custom(|iters| {
                time_async(tokio, iters, |i| {
                    let token = &fresh[nth(i)];
                    async move {
                        token::verify(black_box(provider), black_box(token))
                            .await
                            .is_ok()
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_admit,
    bench_check_target,
    bench_strip,
    bench_frames
);
criterion_group! {
    name = token_benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_tokens
}
criterion_main!(benches, token_benches);
