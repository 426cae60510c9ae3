//! The key cache: lifetimes from headers, which keys a set keeps and which
//! a token may use, and, against the development provider on loopback,
//! single-flight fetching, refresh ahead of expiry, backoff and the size limit.

use super::*;

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn lifetimes_come_from_cache_control_then_expires() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        ttl_from_headers(&headers(&[("cache-control", "public, max-age=600")]), now),
        Some(Duration::from_secs(600))
    );
    assert_eq!(
        ttl_from_headers(&headers(&[("cache-control", "no-store")]), now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        ttl_from_headers(&headers(&[("cache-control", "max-age=junk")]), now),
        None
    );
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(120));
    assert_eq!(
        ttl_from_headers(&headers(&[("expires", &expires)]), now),
        Some(Duration::from_secs(120))
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
    assert_eq!(
        ttl_from_headers(&headers(&[("expires", &past)]), now),
        Some(Duration::ZERO)
    );
    assert_eq!(ttl_from_headers(&headers(&[]), now), None);
}

const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","e":"AQAB","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw"}"#;
const EC_JWK: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

fn set(keys: &[&str]) -> Vec<Arc<VerifyingKey>> {
    parse_key_set(format!("{{\"keys\":[{}]}}", keys.join(",")).as_bytes()).unwrap()
}

#[test]
fn key_sets_keep_usable_signing_keys_only() {
    let keys = set(&[
        RSA_JWK,
        EC_JWK,
        r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#,
        r#"{"kty":"RSA","kid":"enc","use":"enc","e":"AQAB","n":"u1SU"}"#,
        r#"{"kty":"XYZ","kid":"odd"}"#,
    ]);
    let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, vec!["r1", "e1"]);
    assert!(parse_key_set(br#"{"keys":[]}"#).is_err());
    assert!(parse_key_set(b"not json").is_err());
}

#[test]
fn a_key_verifies_only_the_algorithms_it_fits() {
    let keys = set(&[RSA_JWK, EC_JWK]);
    let (rsa, ec) = (&keys[0], &keys[1]);
    assert_eq!(check_compatible(rsa, Algorithm::RS256), Ok(()));
    // The JWK says alg RS256: PS256 with the same RSA key is refused.
    assert_eq!(
        check_compatible(rsa, Algorithm::PS256),
        Err(KeyError::Mismatch)
    );
    assert_eq!(
        check_compatible(rsa, Algorithm::ES256),
        Err(KeyError::Mismatch)
    );
    assert_eq!(
        check_compatible(rsa, Algorithm::HS256),
        Err(KeyError::Mismatch)
    );
    assert_eq!(check_compatible(ec, Algorithm::ES256), Ok(()));
    assert_eq!(
        check_compatible(ec, Algorithm::ES384),
        Err(KeyError::Mismatch)
    );
    assert_eq!(
        check_compatible(ec, Algorithm::RS256),
        Err(KeyError::Mismatch)
    );
}

#[test]
fn without_a_kid_only_an_unambiguous_key_is_used() {
    let keys = set(&[RSA_JWK, EC_JWK]);
    let key_set = KeySet {
        by_kid: HashMap::new(),
        all: keys.clone(),
        fetched_at: Instant::now(),
        fetched_wall: SystemTime::now(),
        ttl: Duration::from_secs(60),
        unusable: HashSet::new(),
    };
    assert_eq!(
        select_without_kid(&key_set, Algorithm::ES256)
            .unwrap()
            .kid
            .as_deref(),
        Some("e1")
    );
    assert_eq!(
        select_without_kid(&key_set, Algorithm::PS256).err(),
        Some(KeyError::Mismatch)
    );
    let two_rsa = KeySet {
        all: vec![keys[0].clone(), keys[0].clone()],
        ..key_set
    };
    assert_eq!(
        select_without_kid(&two_rsa, Algorithm::RS256).err(),
        Some(KeyError::Ambiguous)
    );
}

// --- fetching, against the development provider ---------------------------

use crate::devidp::{self, DevIdp, DevIdpOptions};

async fn start_idp() -> DevIdp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    devidp::start(listener, DevIdpOptions::default())
        .await
        .unwrap()
}

fn new_cache(settings: JwksSettings) -> (Arc<JwksCache>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let cache = JwksCache::new("p", settings, reqwest::Client::new(), metrics.clone());
    (Arc::new(cache), metrics)
}

fn fetches(metrics: &Metrics, reason: &str, result: &str) -> u64 {
    metrics
        .jwks_fetches
        .with_label_values(&["p", reason, result])
        .get()
}

fn jwks_uri(idp: &DevIdp) -> String {
    format!("{}/jwks", idp.issuer())
}

#[tokio::test]
async fn concurrent_requests_without_keys_share_one_fetch() {
    let idp = start_idp().await;
    // A slow answer: every request below arrives while the first fetch runs.
    idp.set_delay(Duration::from_millis(300));
    let (cache, metrics) = new_cache(JwksSettings::default());
    let (rsa, _) = idp.current_kids();
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let (cache, uri, kid) = (cache.clone(), jwks_uri(&idp), rsa.clone());
            tokio::spawn(async move {
                cache
                    .key_for(&uri, Some(&kid), Algorithm::RS256)
                    .await
                    .map(|key| key.kid.clone())
            })
        })
        .collect();
    for task in waiting {
        assert_eq!(task.await.unwrap(), Ok(Some(rsa.clone())));
    }
    assert_eq!(idp.jwks_hits(), 1, "one fetch served all 16 requests");
    assert_eq!(fetches(&metrics, "initial", "ok"), 1);
}

/// Puts a key set fetched `age` ago with lifetime `ttl` into the cache.
fn store_aged_set(cache: &JwksCache, age: Duration, ttl: Duration) {
    let all = set(&[RSA_JWK]);
    cache.keys.store(Some(Arc::new(KeySet {
        by_kid: all
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.clone()))
            .collect(),
        all,
        fetched_at: Instant::now().checked_sub(age).unwrap(),
        fetched_wall: SystemTime::now() - age,
        ttl,
        unusable: HashSet::new(),
    })));
}

#[test]
fn the_supervisor_refreshes_keys_from_80_percent_of_their_lifetime() {
    let (cache, _) = new_cache(JwksSettings::default());
    assert!(cache.refresh_due(), "no keys yet");
    let ttl = Duration::from_secs(100);
    store_aged_set(&cache, Duration::from_secs(79), ttl);
    assert!(!cache.refresh_due(), "79 % of the lifetime: not yet");
    store_aged_set(&cache, Duration::from_secs(81), ttl);
    assert!(cache.refresh_due(), "81 %: refresh");
    assert!(
        cache.is_usable(),
        "the refresh comes while the keys still serve"
    );
}

#[test]
fn failures_back_off_2_4_8_16_32_then_60_seconds() {
    let mut backoff = crate::provider::Backoff::default();
    assert!(!backoff.waiting());
    let delays: Vec<u64> = (0..8).map(|_| backoff.failed().as_secs()).collect();
    assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    assert!(backoff.waiting());
}

/// Moves the cache's retry time (set by a real failure) far out, so that
/// what follows does not depend on how fast the test runs.
fn hold_backoff(cache: &JwksCache) {
    let mut backoff = cache.backoff.lock();
    assert!(backoff.retry_at.is_some(), "the failure set a retry time");
    backoff.retry_at = Some(Instant::now() + Duration::from_secs(3600));
}

#[tokio::test]
async fn after_a_failed_fetch_only_an_unknown_kid_fetches_before_the_backoff_ends() {
    let idp = start_idp().await;
    let (cache, metrics) = new_cache(JwksSettings::default());
    let uri = jwks_uri(&idp);
    let (rsa, _) = idp.current_kids();
    idp.set_down(true);
    assert_eq!(
        cache
            .key_for(&uri, Some(&rsa), Algorithm::RS256)
            .await
            .err(),
        Some(KeyError::Unavailable)
    );
    assert_eq!(idp.jwks_hits(), 1);
    assert_eq!(fetches(&metrics, "initial", "error"), 1);
    hold_backoff(&cache);
    idp.set_down(false);
    // While backing off, neither a request nor the supervisor fetches.
    assert!(!cache.refresh_due());
    assert_eq!(
        cache
            .key_for(&uri, Some(&rsa), Algorithm::RS256)
            .await
            .err(),
        Some(KeyError::Unavailable)
    );
    cache.refresh(&uri).await;
    assert_eq!(idp.jwks_hits(), 1, "no fetch while backing off");
    // Once the wait is over, the next request fetches, and success resets.
    cache.backoff.lock().retry_at = Some(Instant::now());
    assert!(cache
        .key_for(&uri, Some(&rsa), Algorithm::RS256)
        .await
        .is_ok());
    assert_eq!(idp.jwks_hits(), 2);
    assert!(!cache.backoff.lock().waiting());
    // A failed refresh backs off again; a token naming a key not seen yet
    // (the provider rotated) still fetches at once.
    idp.set_down(true);
    cache.refresh(&uri).await;
    assert_eq!(fetches(&metrics, "refresh", "error"), 1);
    hold_backoff(&cache);
    idp.set_down(false);
    let (_, new_ec) = idp.rotate_keys();
    let key = cache
        .key_for(&uri, Some(&new_ec), Algorithm::ES256)
        .await
        .unwrap();
    assert_eq!(key.kid.as_deref(), Some(new_ec.as_str()));
    assert_eq!(fetches(&metrics, "unknown_kid", "ok"), 1);
    assert_eq!(idp.jwks_hits(), 4);
}

// --- the size limit, against a minimal server ------------------------------

/// Serves one fixed `/jwks` body on loopback, declared by Content-Length or
/// sent chunked (then the size is known only while reading). The
/// development provider always serves a real, small key set, so it cannot
/// stand in here.
async fn serve_body(body: Vec<u8>, chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let mut response =
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                        .to_vec();
                if chunked {
                    response.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                    for chunk in body.chunks(64 * 1024) {
                        response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        response.extend_from_slice(chunk);
                        response.extend_from_slice(b"\r\n");
                    }
                    response.extend_from_slice(b"0\r\n\r\n");
                } else {
                    response.extend_from_slice(
                        format!("content-length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    response.extend_from_slice(&body);
                }
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    uri
}

/// A valid key set of exactly `len` bytes (padded with a member that is not read).
fn key_set_of(len: usize) -> Vec<u8> {
    let bare = format!(r#"{{"keys":[{RSA_JWK}],"padding":""}}"#);
    let padding = "x".repeat(len - bare.len());
    let body = format!(r#"{{"keys":[{RSA_JWK}],"padding":"{padding}"}}"#).into_bytes();
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_key_set_larger_than_512_kib_is_refused() {
    assert_eq!(MAX_JWKS_BYTES, 512 * 1024);
    for chunked in [false, true] {
        let (cache, metrics) = new_cache(JwksSettings::default());
        let uri = serve_body(key_set_of(MAX_JWKS_BYTES), chunked).await;
        assert!(
            cache
                .key_for(&uri, Some("r1"), Algorithm::RS256)
                .await
                .is_ok(),
            "exactly the limit is accepted (chunked: {chunked})"
        );
        let (cache, metrics_over) = new_cache(JwksSettings::default());
        let uri = serve_body(key_set_of(MAX_JWKS_BYTES + 1), chunked).await;
        assert_eq!(
            cache
                .key_for(&uri, Some("r1"), Algorithm::RS256)
                .await
                .err(),
            Some(KeyError::Unavailable),
            "one byte over is refused (chunked: {chunked})"
        );
        assert_eq!(fetches(&metrics, "initial", "ok"), 1);
        assert_eq!(fetches(&metrics_over, "initial", "error"), 1);
    }
}

/// An RSA key of 1024 bits (aws-lc-rs verifies 2048 to 8192, as
/// jsonwebtoken's verifiers ask) and a P-256 "point" off the curve: keys
/// that parse as JWKs but could never verify a token.
const WEAK_RSA_JWK: &str = r#"{"kty":"RSA","kid":"weak","use":"sig","alg":"RS256","e":"AQAB","n":"wVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVQE"}"#;
const OFF_CURVE_JWK: &str = r#"{"kty":"EC","kid":"off-curve","crv":"P-256","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE","y":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"}"#;

#[test]
fn keys_are_parsed_at_fetch_and_one_that_cannot_verify_is_skipped_by_kid() {
    let body = format!("{{\"keys\":[{WEAK_RSA_JWK},{RSA_JWK},{OFF_CURVE_JWK},{EC_JWK}]}}");
    let parsed = parse_key_set_reporting(body.as_bytes()).unwrap();
    let kids: Vec<_> = parsed.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, vec!["r1", "e1"], "the others still work");
    assert_eq!(parsed.unusable, vec!["weak", "off-curve"]);
    // Each kept key is ready for exactly the algorithms it fits.
    let (rsa, ec) = (&parsed.keys[0], &parsed.keys[1]);
    assert!(rsa.prepared(Algorithm::RS256).is_some());
    assert!(
        rsa.prepared(Algorithm::PS256).is_none(),
        "its JWK says RS256"
    );
    assert!(ec.prepared(Algorithm::ES256).is_some());
    assert!(ec.prepared(Algorithm::RS256).is_none());
}

#[tokio::test]
async fn a_token_naming_a_skipped_key_is_a_mismatch_without_a_refetch() {
    let (cache, metrics) = new_cache(JwksSettings::default());
    let uri = serve_body(
        format!("{{\"keys\":[{WEAK_RSA_JWK},{RSA_JWK}]}}").into_bytes(),
        false,
    )
    .await;
    assert!(cache
        .key_for(&uri, Some("r1"), Algorithm::RS256)
        .await
        .is_ok());
    assert_eq!(
        cache
            .key_for(&uri, Some("weak"), Algorithm::RS256)
            .await
            .err(),
        Some(KeyError::Mismatch)
    );
    assert_eq!(fetches(&metrics, "initial", "ok"), 1);
    assert_eq!(
        fetches(&metrics, "unknown_kid", "ok"),
        0,
        "the provider does publish the kid: nothing to refetch"
    );
}
