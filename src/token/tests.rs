//! Verification against hostile tokens, signed by the development
//! provider (`crate::devidp`), which serves discovery and the JWKS on
//! loopback and counts its JWKS hits.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::{self, JwksSettings};
use crate::devidp::{self, DevIdp, DevIdpOptions};
use crate::metrics::Metrics;
use crate::provider::ProviderService;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn start_idp() -> DevIdp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    devidp::start(listener, DevIdpOptions::default())
        .await
        .unwrap()
}

fn client_id(idp: &DevIdp) -> &str {
    &idp.options().client_id
}

fn provider_for(
    idp: &DevIdp,
    algorithms: &str,
    jwks: JwksSettings,
    metrics: Arc<Metrics>,
) -> Arc<ProviderService> {
    provider_named("p", idp, algorithms, jwks, metrics)
}

fn provider_named(
    name: &str,
    idp: &DevIdp,
    algorithms: &str,
    jwks: JwksSettings,
    metrics: Arc<Metrics>,
) -> Arc<ProviderService> {
    let text = format!(
        "listen: [{{address: \"127.0.0.1:1\"}}]\nproviders:\n  {name}: {{issuer: \"{}\", client_id: {}, audiences: [\"{}\"], algorithms: {algorithms}, clock_skew: 30s}}\n",
        idp.issuer(),
        client_id(idp),
        idp.options().access_token_audience,
    );
    let mut config = config::parse(&text, std::path::Path::new("."), &|_: &str| None).unwrap();
    let mut p = config.providers.remove(name).unwrap();
    p.jwks = jwks;
    ProviderService::new(p, metrics)
}

fn now() -> u64 {
    super::now_unix()
}

fn claims(idp: &DevIdp) -> Value {
    json!({"iss": idp.issuer(), "sub": "alice", "aud": "api://messaging", "exp": now() + 300, "iat": now(), "email": "alice@example.com"})
}

/// Signed by the provider's current key for `alg`; `kid` None names that key.
fn sign(idp: &DevIdp, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    idp.sign(header, claims)
}

fn rs256(idp: &DevIdp, claims: &Value) -> String {
    sign(idp, Algorithm::RS256, None, claims)
}

fn es256(idp: &DevIdp, claims: &Value) -> String {
    sign(idp, Algorithm::ES256, None, claims)
}

/// An RS256 token of the standard claims with `change` applied.
fn signed_with(f: &Fixture, change: Value) -> String {
    let mut c = claims(&f.idp);
    for (k, v) in change.as_object().unwrap() {
        c[k] = v.clone();
    }
    rs256(&f.idp, &c)
}

/// Unknown-kid lookups of provider `p` that ended with `result`.
fn kid_count(metrics: &Metrics, result: &str) -> u64 {
    metrics
        .jwks_kid_misses
        .with_label_values(&["p", result])
        .get()
}

struct Fixture {
    idp: DevIdp,
    provider: Arc<ProviderService>,
    metrics: Arc<Metrics>,
}

impl Fixture {
    fn rsa_kid(&self) -> String {
        self.idp.current_kids().0
    }
    fn jwks_hits(&self) -> u64 {
        self.idp.jwks_hits()
    }
}

async fn fixture() -> Fixture {
    fixture_with("[RS256, ES256, PS256]", JwksSettings::default()).await
}

async fn fixture_with(algorithms: &str, settings: JwksSettings) -> Fixture {
    let idp = start_idp().await;
    let metrics = Arc::new(Metrics::new());
    let provider = provider_for(&idp, algorithms, settings, metrics.clone());
    Fixture {
        idp,
        provider,
        metrics,
    }
}

#[tokio::test]
async fn good_rs256_and_es256_tokens_verify() {
    let f = fixture().await;
    let v = verify(&f.provider, &rs256(&f.idp, &claims(&f.idp)))
        .await
        .unwrap();
    assert_eq!(v.kind, TokenKind::Access);
    assert_eq!(v.claims.str("sub"), Some("alice"));
    assert!(verify(&f.provider, &es256(&f.idp, &claims(&f.idp)))
        .await
        .is_ok());
    // An ID token: aud is the client id.
    let mut id = claims(&f.idp);
    id["aud"] = json!(client_id(&f.idp));
    let v = verify(&f.provider, &es256(&f.idp, &id)).await.unwrap();
    assert_eq!(v.kind, TokenKind::Id);
    assert_eq!(f.jwks_hits(), 1, "one fetch serves every token");
}

#[tokio::test]
async fn none_and_hmac_are_refused_whatever_the_header_says() {
    let f = fixture().await;
    let payload = b64(claims(&f.idp).to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(
        verify(&f.provider, &none).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    let none_upper = format!(
        "{}.{payload}.",
        b64(format!(r#"{{"alg":"NONE","kid":"{}"}}"#, f.rsa_kid()).as_bytes())
    );
    assert_eq!(
        verify(&f.provider, &none_upper).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    // The classic confusion: HS256 keyed with the provider's published RSA key.
    let published = f.idp.public_jwk(&f.rsa_kid()).unwrap().to_string();
    let hmac_key = EncodingKey::from_secret(published.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(f.rsa_kid());
    let confused = jsonwebtoken::encode(&header, &claims(&f.idp), &hmac_key).unwrap();
    assert_eq!(
        verify(&f.provider, &confused).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(f.jwks_hits(), 0, "refused before any key lookup");
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_or_the_key_are_refused() {
    let f = fixture_with("[RS256]", JwksSettings::default()).await;
    let es = es256(&f.idp, &claims(&f.idp));
    assert_eq!(
        verify(&f.provider, &es).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    let f = fixture().await;
    // The RSA JWK declares alg RS256: a PS256 token with it is refused.
    let ps = sign(&f.idp, Algorithm::PS256, None, &claims(&f.idp));
    assert_eq!(
        verify(&f.provider, &ps).await.unwrap_err(),
        TokenError::KeyMismatch
    );
    // An ES256 token naming the RSA key.
    let crossed = sign(
        &f.idp,
        Algorithm::ES256,
        Some(&f.rsa_kid()),
        &claims(&f.idp),
    );
    assert_eq!(
        verify(&f.provider, &crossed).await.unwrap_err(),
        TokenError::KeyMismatch
    );
}

#[tokio::test]
async fn tokens_without_kid_need_an_unambiguous_key() {
    let f = fixture().await;
    let no_kid = |idp: &DevIdp| {
        idp.sign_raw(
            Algorithm::ES256,
            r#"{"alg":"ES256","typ":"JWT"}"#,
            &claims(idp).to_string(),
        )
    };
    assert!(
        verify(&f.provider, &no_kid(&f.idp)).await.is_ok(),
        "one EC key: unambiguous"
    );
    // After a rotation the old EC key stays published next to the new one.
    f.idp.rotate_keys();
    let provider = provider_for(
        &f.idp,
        "[RS256, ES256]",
        JwksSettings::default(),
        Arc::new(Metrics::new()),
    );
    assert_eq!(
        verify(&provider, &no_kid(&f.idp)).await.unwrap_err(),
        TokenError::KeyMismatch
    );
}

#[tokio::test]
async fn time_claims_are_checked_with_the_configured_skew() {
    let f = fixture().await;
    let with = |change: Value| signed_with(&f, change);
    assert_eq!(
        verify(&f.provider, &with(json!({"exp": now() - 120})))
            .await
            .unwrap_err(),
        TokenError::Expired
    );
    assert!(
        verify(&f.provider, &with(json!({"exp": now() - 10})))
            .await
            .is_ok(),
        "within 30 s of skew"
    );
    assert_eq!(
        verify(&f.provider, &with(json!({"nbf": now() + 120})))
            .await
            .unwrap_err(),
        TokenError::NotYetValid
    );
    assert_eq!(
        verify(&f.provider, &with(json!({"iat": now() + 120})))
            .await
            .unwrap_err(),
        TokenError::IssuedInFuture
    );
    let mut no_exp = claims(&f.idp);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verify(&f.provider, &rs256(&f.idp, &no_exp))
            .await
            .unwrap_err(),
        TokenError::MissingClaim
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let f = fixture().await;
    let with = |change: Value| signed_with(&f, change);
    let client = client_id(&f.idp);
    assert_eq!(
        verify(&f.provider, &with(json!({"iss": "https://evil.example"})))
            .await
            .unwrap_err(),
        TokenError::WrongIssuer
    );
    let trailing = format!("{}/", f.idp.issuer());
    assert_eq!(
        verify(&f.provider, &with(json!({"iss": trailing})))
            .await
            .unwrap_err(),
        TokenError::WrongIssuer
    );
    assert_eq!(
        verify(&f.provider, &with(json!({"aud": "api://other"})))
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
    assert!(
        verify(&f.provider, &with(json!({"aud": ["x", "api://messaging"]})))
            .await
            .is_ok()
    );
    // An ID token among several audiences must have been issued to us (azp).
    let stolen = with(json!({"aud": [client, "other-client"], "azp": "other-client"}));
    assert_eq!(
        verify(&f.provider, &stolen).await.unwrap_err(),
        TokenError::WrongAudience
    );
    let ours = with(json!({"aud": [client, "other-client"], "azp": client}));
    assert_eq!(
        verify(&f.provider, &ours).await.unwrap().kind,
        TokenKind::Id
    );
    assert_eq!(
        verify(&f.provider, &with(json!({"sub": ""})))
            .await
            .unwrap_err(),
        TokenError::MissingClaim
    );
}

#[tokio::test]
async fn tampering_and_bad_signatures_never_refetch_keys() {
    let f = fixture().await;
    let good = rs256(&f.idp, &claims(&f.idp));
    verify(&f.provider, &good).await.unwrap();
    let hits = f.jwks_hits();
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut forged = claims(&f.idp);
    forged["sub"] = json!("admin");
    parts[1] = b64(forged.to_string().as_bytes());
    let tampered = parts.join(".");
    for _ in 0..20 {
        assert_eq!(
            verify(&f.provider, &tampered).await.unwrap_err(),
            TokenError::BadSignature
        );
    }
    // Signed by another provider's key under the kid this provider publishes.
    let impostor = start_idp().await;
    let forged = sign(
        &impostor,
        Algorithm::RS256,
        Some(&f.rsa_kid()),
        &claims(&f.idp),
    );
    assert_eq!(
        verify(&f.provider, &forged).await.unwrap_err(),
        TokenError::BadSignature
    );
    assert_eq!(f.jwks_hits(), hits, "a known kid never triggers a fetch");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_spacing() {
    let f = fixture().await;
    verify(&f.provider, &rs256(&f.idp, &claims(&f.idp)))
        .await
        .unwrap();
    assert_eq!(f.jwks_hits(), 1);
    let bogus = |i: usize| {
        sign(
            &f.idp,
            Algorithm::RS256,
            Some(&format!("bogus-{i}")),
            &claims(&f.idp),
        )
    };
    for i in 0..200 {
        assert_eq!(
            verify(&f.provider, &bogus(i)).await.unwrap_err(),
            TokenError::UnknownKey
        );
    }
    assert_eq!(f.jwks_hits(), 2, "one refetch for the whole flood");
    assert_eq!(kid_count(&f.metrics, "refetched"), 1);
    assert_eq!(kid_count(&f.metrics, "rate_limited"), 199);
    assert_eq!(kid_count(&f.metrics, "negative_cached"), 0);
    // bogus-0 was looked up by its refetch and remembered: asked again, it
    // is answered from the negative cache, not by the rate limit.
    assert_eq!(
        verify(&f.provider, &bogus(0)).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(kid_count(&f.metrics, "negative_cached"), 1);
    assert_eq!(kid_count(&f.metrics, "rate_limited"), 199);
    assert_eq!(f.jwks_hits(), 2);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_through_an_unknown_kid() {
    let settings = JwksSettings {
        refetch_interval: Duration::from_secs(1),
        ..JwksSettings::default()
    };
    let f = fixture_with("[RS256, ES256]", settings).await;
    verify(&f.provider, &es256(&f.idp, &claims(&f.idp)))
        .await
        .unwrap();
    let (_, new_ec) = f.idp.rotate_keys();
    let token = es256(&f.idp, &claims(&f.idp));
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid,
        Some(new_ec)
    );
    assert!(verify(&f.provider, &token).await.is_ok());
    assert_eq!(f.jwks_hits(), 2);
    assert_eq!(kid_count(&f.metrics, "refetched"), 1);
}

/// A token naming `kid`, with a signature that is never checked: the
/// lookup of its key fails first. Cheap, so a flood can be fast.
fn junk_token(kid: &str) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(json!({"sub": "mallory"}).to_string().as_bytes()),
        b64(b"not a signature")
    )
}

fn unknown_kid_fetches(metrics: &Metrics) -> u64 {
    ["ok", "error"]
        .iter()
        .map(|result| {
            metrics
                .jwks_fetches
                .with_label_values(&["p", "unknown_kid", result])
                .get()
        })
        .sum()
}

/// Issue 13 item 6: junk kids must not hold the refetch so that a rotated
/// key waits for the scheduled refresh. The provider rotates right after a
/// junk token spent a refetch (the worst moment); the new key must verify
/// within one spacing (interval / REFETCHES_PER_INTERVAL) plus slack, while
/// the unknown-kid fetches stay within one per spacing for the whole flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_gets_through_a_flood_of_junk_kids_within_one_spacing() {
    use crate::provider::jwks::{refetch_spacing, REFETCHES_PER_INTERVAL};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    let interval = Duration::from_secs(3);
    let settings = JwksSettings {
        refetch_interval: interval,
        ..JwksSettings::default()
    };
    let spacing = refetch_spacing(&settings);
    assert_eq!(spacing, interval / REFETCHES_PER_INTERVAL);
    let f = fixture_with("[RS256, ES256]", settings).await;
    verify(&f.provider, &es256(&f.idp, &claims(&f.idp)))
        .await
        .unwrap();
    assert_eq!(f.jwks_hits(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let flood = {
        let (provider, stop, sent) = (f.provider.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let result = verify(&provider, &junk_token(&format!("junk-{n}"))).await;
                assert_eq!(result.unwrap_err(), TokenError::UnknownKey);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Wait for a junk token to spend a refetch, then rotate at once: the
    // refetch slot has just been taken, the worst case for the new key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = unknown_kid_fetches(&f.metrics);
    while unknown_kid_fetches(&f.metrics) == before {
        assert!(Instant::now() < deadline, "the flood never refetched");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (_, new_ec) = f.idp.rotate_keys();
    let rotated = Instant::now();
    let token = es256(&f.idp, &claims(&f.idp));
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid,
        Some(new_ec)
    );
    let deadline = rotated + 4 * interval;
    let waited = loop {
        if verify(&f.provider, &token).await.is_ok() {
            break rotated.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was still refused {:?} after the rotation",
            rotated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Keep flooding a while after: the bound must hold throughout.
    tokio::time::sleep(interval).await;
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    let flooded = flood_started.elapsed();

    // The bound: one spacing (0.5 s here) plus a fetch; generous slack,
    // still well under the old single slot (one whole interval, 3 s).
    assert!(
        waited < interval / 2,
        "rotated key accepted only after {waited:?}"
    );
    let fetches = unknown_kid_fetches(&f.metrics);
    let allowed = (flooded.as_secs_f64() / spacing.as_secs_f64()).floor() as u64 + 1;
    assert!(
        fetches <= allowed,
        "{fetches} unknown-kid fetches in {flooded:?}, at most {allowed} allowed"
    );
    assert_eq!(
        f.jwks_hits(),
        1 + fetches,
        "nothing but unknown-kid fetches reached the provider"
    );
    assert!(sent.load(Ordering::Relaxed) > 500, "the flood was a flood");
    eprintln!(
        "flood: {} junk tokens in {flooded:?}, {fetches} unknown-kid fetches (bound {allowed}); rotated key accepted after {waited:?}",
        sent.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn stale_keys_serve_while_the_provider_is_down_within_the_bound() {
    let settings = JwksSettings {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(1),
        refetch_interval: Duration::from_secs(1),
        max_stale: Duration::from_secs(2),
    };
    let f = fixture_with("[RS256]", settings).await;
    let token = rs256(&f.idp, &claims(&f.idp));
    verify(&f.provider, &token).await.unwrap();
    f.idp.set_down(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past the 1 s lifetime, within 2 s of staleness: still verifies.
    f.provider.maintain().await;
    assert!(verify(&f.provider, &token).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        verify(&f.provider, &token).await.unwrap_err(),
        TokenError::ProviderUnavailable
    );
    f.idp.set_down(false);
    // Back up: the next fetch (after its backoff) recovers.
    let mut recovered = false;
    for _ in 0..40 {
        f.provider.maintain().await;
        if verify(&f.provider, &token).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered);
}

#[tokio::test]
async fn oversize_and_malformed_tokens_are_refused_cheaply() {
    let f = fixture().await;
    let big = format!("eyJ{}.x.y", "A".repeat(9000));
    assert_eq!(
        verify(&f.provider, &big).await.unwrap_err(),
        TokenError::TooLarge
    );
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        "e30.e30.sig",
        "bm90IGpzb24.e30.sig",
    ] {
        assert_eq!(
            verify(&f.provider, bad).await.unwrap_err(),
            TokenError::Malformed,
            "{bad:?}"
        );
    }
    assert_eq!(
        f.jwks_hits(),
        0,
        "oversize and malformed tokens are refused before any key is fetched"
    );
    // A header that parses but a payload that is not JSON: its key is
    // looked up (the one fetch), then the payload refused.
    let header = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, f.rsa_kid());
    let junk = f.idp.sign_raw(Algorithm::RS256, &header, "not json");
    assert_eq!(
        verify(&f.provider, &junk).await.unwrap_err(),
        TokenError::Malformed
    );
    assert_eq!(f.jwks_hits(), 1);
}

#[tokio::test]
async fn duplicate_claims_are_refused() {
    let f = fixture().await;
    let payload = format!(
        r#"{{"iss":"{}","sub":"alice","sub":"admin","aud":"api://messaging","exp":{}}}"#,
        f.idp.issuer(),
        now() + 300
    );
    let header = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, f.rsa_kid());
    let token = f.idp.sign_raw(Algorithm::RS256, &header, &payload);
    assert_eq!(
        verify(&f.provider, &token).await.unwrap_err(),
        TokenError::DuplicateClaim
    );
}

#[tokio::test]
async fn the_cache_skips_verification_for_a_repeated_token() {
    let f = fixture().await;
    let metrics = Arc::new(Metrics::new());
    let cache: TokenCache = TokenCache::new(1 << 20, metrics.clone());
    let hits = || metrics.token_cache.with_label_values(&["hit"]).get();
    let token = es256(&f.idp, &claims(&f.idp));
    let first = cache.verify(&f.provider, &token).await.unwrap();
    // No series before it counts something.
    let rendered = String::from_utf8(metrics.render()).unwrap();
    assert!(!rendered.contains(r#"result="hit""#), "{rendered}");
    let again = cache.verify(&f.provider, &token).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(hits(), 1);
    // The counter kept after the first hit counts every later one.
    cache.verify(&f.provider, &token).await.unwrap();
    assert!(cache.cached(&f.provider, &token).is_some());
    assert_eq!(hits(), 3);
    assert_eq!(metrics.token_cache.with_label_values(&["miss"]).get(), 1);
    // Failures are not cached: a bad token is judged again every time.
    let bad = format!("{token}x");
    assert!(cache.verify(&f.provider, &bad).await.is_err());
    assert!(cache.verify(&f.provider, &bad).await.is_err());
    assert_eq!(metrics.token_cache.with_label_values(&["miss"]).get(), 3);
    assert_eq!(hits(), 3);
}

#[tokio::test]
async fn only_the_very_token_hits_its_cache_entry() {
    // Keyed by the token itself: anything but the same bytes misses,
    // however alike (a prefix, one byte changed, one byte more).
    let f = fixture().await;
    let cache: TokenCache = TokenCache::new(1 << 20, Arc::new(Metrics::new()));
    let token = rs256(&f.idp, &claims(&f.idp));
    cache.verify(&f.provider, &token).await.unwrap();
    assert!(cache.cached(&f.provider, &token).is_some());
    let mut changed = token.clone().into_bytes();
    for at in [0, token.len() / 2, token.len() - 1] {
        changed[at] ^= 1;
        let other = std::str::from_utf8(&changed).unwrap();
        assert!(cache.cached(&f.provider, other).is_none(), "byte {at}");
        changed[at] ^= 1;
    }
    for len in [1, token.len() / 2, token.len() - 1] {
        assert!(cache.cached(&f.provider, &token[..len]).is_none(), "{len}");
    }
    assert!(cache.cached(&f.provider, &format!("{token}A")).is_none());
    assert!(cache.cached(&f.provider, "").is_none());
}

#[tokio::test]
async fn a_token_cached_for_one_provider_is_no_hit_for_another() {
    // Two providers trusting the same issuer and keys: each verification
    // stands for its own provider's audiences and settings only.
    let f = fixture().await;
    let other = provider_named(
        "q",
        &f.idp,
        "[RS256, ES256]",
        JwksSettings::default(),
        f.metrics.clone(),
    );
    let metrics = Arc::new(Metrics::new());
    let cache: TokenCache = TokenCache::new(1 << 20, metrics.clone());
    let token = rs256(&f.idp, &claims(&f.idp));
    let by_p = cache.verify(&f.provider, &token).await.unwrap();
    assert_eq!(&*by_p.provider, "p");
    assert!(cache.cached(&other, &token).is_none());
    let by_q = cache.verify(&other, &token).await.unwrap();
    assert_eq!(&*by_q.provider, "q");
    assert_eq!(metrics.token_cache.with_label_values(&["miss"]).get(), 2);
    assert_eq!(metrics.token_cache.with_label_values(&["hit"]).get(), 0);
    // The entry is now q's: p verifies again rather than take it.
    assert!(cache.cached(&f.provider, &token).is_none());
    assert_eq!(&*cache.cached(&other, &token).unwrap().provider, "q");
}

#[test]
fn a_cached_token_keeps_one_deployment_s_value_and_only_for_it() {
    let cached: CachedToken<&str> = CachedToken::new(Arc::from("t"), verified_until(now() + 60));
    assert!(cached.kept_for("a").is_none());
    assert_eq!(
        cached
            .keep_for(Arc::from("a"), Arc::new("first"))
            .map(|v| **v),
        Some("first")
    );
    // Set once: a concurrent request of `a` gets the value kept first, and
    // another deployment gets nothing kept.
    assert_eq!(
        cached
            .keep_for(Arc::from("a"), Arc::new("second"))
            .map(|v| **v),
        Some("first")
    );
    assert!(cached.keep_for(Arc::from("b"), Arc::new("b's")).is_none());
    assert!(cached.kept_for("b").is_none());
    assert!(cached.kept_for("ab").is_none());
    assert_eq!(cached.kept_for("a").map(|v| **v), Some("first"));
}

#[test]
fn entries_weigh_their_token_and_what_it_parses_into() {
    assert_eq!(entry_weight(""), 1024);
    assert_eq!(entry_weight(&"a".repeat(1024)), 7 * 1024);
    // The largest token a provider may allow (64 KiB) fits in the weight.
    assert_eq!(entry_weight(&"a".repeat(65536)), 6 * 65536 + 1024);
}

fn verified_until(exp: u64) -> VerifiedToken {
    VerifiedToken {
        claims: Arc::new(Claims::default()),
        session_id: "t-0".into(),
        kind: TokenKind::Access,
        expires_at: exp,
        provider: Arc::from("p"),
    }
}

/// How long the token cache keeps a verification of a token expiring at `exp`.
fn cache_lifetime(exp: u64) -> Option<Duration> {
    use moka::Expiry;
    let cached: Arc<CachedToken<()>> =
        Arc::new(CachedToken::new(Arc::from("t"), verified_until(exp)));
    UntilExpiry.expire_after_create(&Arc::from("t"), &cached, std::time::Instant::now())
}

#[test]
fn a_cached_verification_lives_until_the_token_expires_or_five_minutes() {
    assert_eq!(MAX_CACHE_LIFETIME, Duration::from_secs(300));
    // A long-lived token is verified again after five minutes, so a key
    // the provider withdrew stops working within that time.
    assert_eq!(cache_lifetime(now() + 3600), Some(Duration::from_secs(300)));
    assert_eq!(cache_lifetime(now() + 301), Some(Duration::from_secs(300)));
    // A short-lived one goes when it expires (the clock may tick once).
    let short = cache_lifetime(now() + 60).unwrap();
    assert!(
        (Duration::from_secs(59)..=Duration::from_secs(60)).contains(&short),
        "{short:?}"
    );
    assert_eq!(
        cache_lifetime(now().saturating_sub(5)),
        Some(Duration::ZERO)
    );
}

#[tokio::test]
async fn a_header_jsonwebtoken_cannot_read_is_malformed_when_its_alg_is_allowed() {
    // The header is read once, by jsonwebtoken; only a header it refuses is
    // read again for its `alg` by name. An allowed `alg` beside a member of
    // the wrong type is malformed, not an algorithm refusal, and no key is
    // fetched for it.
    let f = fixture().await;
    let payload = b64(claims(&f.idp).to_string().as_bytes());
    let odd = format!("{}.{payload}.c2ln", b64(br#"{"alg":"RS256","kid":7}"#));
    assert_eq!(
        verify(&f.provider, &odd).await.unwrap_err(),
        TokenError::Malformed
    );
    let lower_hmac = format!("{}.{payload}.c2ln", b64(br#"{"alg":"hs256"}"#));
    assert_eq!(
        verify(&f.provider, &lower_hmac).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(f.jwks_hits(), 0);
}

#[test]
fn a_bearer_session_id_is_t_and_the_first_24_hex_digits_of_the_token_sha256() {
    // What backends have seen as X-Auth-Session for a bearer token; the
    // faster rendering must not change it.
    assert_eq!(token_session_id("abc"), "t-ba7816bf8f01cfea414140de");
}

// ---------------------------------------------------------------------
// The one-pass check (`check_prepared`) against jsonwebtoken's own path.

/// `verify` as it was before the one-pass check: every token through
/// `jsonwebtoken::decode` (with the prepared key). The reference the
/// one-pass check must agree with, verdict for verdict.
async fn verify_through_jsonwebtoken(
    provider: &ProviderService,
    token: &str,
) -> Result<(Claims, TokenKind, u64), TokenError> {
    let config = &provider.config;
    let (header, key) = provider_key(provider, token).await?;
    let claims = prepared::with_verifier(&key.key, key.prepared(header.alg), || {
        check_signature_and_time(
            token,
            &key.key,
            header.alg,
            &config.issuer,
            config.clock_skew,
        )
    })?;
    let kind = audience_kind(&claims, &config.audiences, &config.client_id)?;
    let exp = claims.number("exp").ok_or(TokenError::MissingClaim)?;
    Ok((claims, kind, exp))
}

async fn verify_one_pass(
    provider: &ProviderService,
    token: &str,
) -> Result<(Claims, TokenKind, u64), TokenError> {
    verify(provider, token)
        .await
        .map(|v| ((*v.claims).clone(), v.kind, v.expires_at))
}

#[tokio::test]
async fn a_usual_token_takes_the_one_pass_check() {
    let f = fixture().await;
    for token in [
        rs256(&f.idp, &claims(&f.idp)),
        es256(&f.idp, &claims(&f.idp)),
    ] {
        let (header, key) = provider_key(&f.provider, &token).await.unwrap();
        let prepared = key
            .prepared(header.alg)
            .expect("keys are prepared at fetch");
        let checked = check_prepared(
            &token,
            &header,
            prepared,
            &f.provider.config.issuer,
            f.provider.config.clock_skew,
        )
        .unwrap()
        .expect("no fallback to jsonwebtoken for usual claims");
        assert_eq!(checked.claims.str("sub"), Some("alice"));
        // Hashed on the way (RS256 and ES256 continue the signing input's
        // SHA-256): the whole token's, as its session id needs.
        assert_eq!(checked.token_sha256, sha256(token.as_bytes()));
        let verified = verify(&f.provider, &token).await.unwrap();
        assert_eq!(verified.session_id, token_session_id(&token));
        // The per-token records' key, hashed when first asked for.
        let cache: TokenCache = TokenCache::new(1 << 20, Arc::new(Metrics::new()));
        let cached = cache.verify(&f.provider, &token).await.unwrap();
        assert_eq!(
            cached.digest(),
            TokenCache::key(&f.provider.config.name, &token)
        );
    }
}

/// A JSON value for a registered claim: every type, and the number
/// spellings whose reading differs between parsers.
fn claim_text(kind: u8, usual: &str, offset_base: u64) -> Option<String> {
    Some(match kind {
        0 => return None,
        1 => usual.to_string(),
        2 => "null".into(),
        3 => "\"1700000000\"".into(),
        4 => "-5".into(),
        5 => format!("{offset_base}.0"),
        6 => "1e3".into(),
        7 => "18446744073709551616".into(),
        8 => "18446744073709551615".into(),
        9 => "[]".into(),
        10 => "[1]".into(),
        11 => "{}".into(),
        12 => "{\"a\":1}".into(),
        13 => "true".into(),
        14 => "\"\"".into(),
        15 => "[\"a\",\"b\"]".into(),
        _ => format!("{}", offset_base),
    })
}

#[derive(Debug, Clone)]
struct Shape {
    exp: (u8, i64),
    nbf: (u8, i64),
    iat: (u8, i64),
    sub: u8,
    iss: (u8, bool),
    aud: u8,
    duplicate: Option<usize>,
    header_extra: u8,
    mutation: u8,
    es256: bool,
}

fn shape() -> impl proptest::strategy::Strategy<Value = Shape> {
    use proptest::prelude::*;
    // Times around the 30 s skew, never within a second of a boundary (the
    // two checks run a moment apart).
    let offset = prop::sample::select(vec![-1000i64, -32, -28, 0, 28, 32, 1000]);
    // Mostly the usual type, so that valid tokens and the time and issuer
    // rules get their share of the cases.
    let kind = || prop_oneof![6 => Just(1u8), 1 => Just(0u8), 3 => 2u8..17];
    (
        (kind(), offset.clone()),
        (kind(), offset.clone()),
        (kind(), offset),
        kind(),
        (kind(), prop::bool::weighted(0.8)),
        0u8..6,
        prop::option::of(0usize..6),
        prop_oneof![3 => Just(0u8), 1 => 1u8..9],
        prop_oneof![3 => Just(0u8), 1 => 1u8..10],
        any::<bool>(),
    )
        .prop_map(
            |(exp, nbf, iat, sub, iss, aud, duplicate, header_extra, mutation, es256)| Shape {
                exp,
                nbf,
                iat,
                sub,
                iss,
                aud,
                duplicate,
                header_extra,
                mutation,
                es256,
            },
        )
}

fn token_of(f: &Fixture, s: &Shape) -> String {
    let now = now() as i64;
    let time = |(kind, offset): (u8, i64)| {
        let at = (now + offset) as u64;
        claim_text(kind, &at.to_string(), at)
    };
    let issuer = f.idp.issuer();
    let iss = match s.iss {
        (1, true) => Some(format!("\"{issuer}\"")),
        (1, false) => Some("\"https://elsewhere.example\"".into()),
        (kind, _) => claim_text(kind, "", 0),
    };
    let aud = match s.aud {
        0 => None,
        1 => Some("\"api://messaging\"".into()),
        2 => Some(format!("\"{}\"", client_id(&f.idp))),
        3 => Some("[\"api://messaging\", \"x\"]".into()),
        4 => Some("[1]".into()),
        _ => Some("\"other\"".into()),
    };
    let mut members: Vec<(&str, String)> = [
        ("exp", time(s.exp)),
        ("nbf", time(s.nbf)),
        ("iat", time(s.iat)),
        ("sub", claim_text(s.sub, "\"alice\"", 0)),
        ("iss", iss),
        ("aud", aud),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect();
    members.push(("email", "\"alice@example.com\"".into()));
    if let Some(i) = s.duplicate {
        let again = members[i % members.len()].clone();
        members.push(again);
    }
    let payload = format!(
        "{{{}}}",
        members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (alg, name, kid) = if s.es256 {
        (Algorithm::ES256, "ES256", f.idp.current_kids().1)
    } else {
        (Algorithm::RS256, "RS256", f.rsa_kid())
    };
    let extra = match s.header_extra {
        0 => "",
        1 => ",\"b64\":true",
        2 => ",\"b64\":false",
        3 => ",\"b64\":\"yes\"",
        4 => ",\"b64\":true,\"crit\":[\"b64\"]",
        5 => ",\"crit\":[\"b64\"]",
        6 => ",\"b64\":true,\"crit\":[]",
        7 => ",\"b64\":true,\"crit\":[\"b64\",\"b64\"]",
        _ => ",\"typ\":\"JWT\",\"cty\":\"x\"",
    };
    let header = format!("{{\"alg\":\"{name}\",\"kid\":\"{kid}\"{extra}}}");
    let token = f.idp.sign_raw(alg, &header, &payload);
    let (h, rest) = token.split_once('.').unwrap();
    let (p, sig) = rest.split_once('.').unwrap();
    match s.mutation {
        1 => format!("{h}.{p}.{}", flip_last(sig)),
        2 => format!("{h}.{p}.{sig}="),
        3 => format!("{h}.{p}=.{sig}"),
        4 => format!("{h}.{p}.{sig}.x"),
        5 => format!("{h}.{}.{sig}", flip_last(p)),
        6 => format!("{h}.{p}*.{sig}"),
        7 => format!("{h}.{p}.{}", &sig[..sig.len() - 4]),
        8 => format!("{h}.{p} .{sig}"),
        _ => token,
    }
}

/// The last base64url character replaced by another (possibly one whose
/// unused bits are not zero, which a strict decoder refuses).
fn flip_last(part: &str) -> String {
    let (head, last) = part.split_at(part.len() - 1);
    let replacement = if last == "A" { "B" } else { "A" };
    format!("{head}{replacement}")
}

#[test]
fn the_one_pass_check_agrees_with_jsonwebtoken_on_every_shape() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = runtime.block_on(fixture());
    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&shape(), |s| {
            let token = token_of(&f, &s);
            let ours = runtime.block_on(verify_one_pass(&f.provider, &token));
            let reference = runtime.block_on(verify_through_jsonwebtoken(&f.provider, &token));
            proptest::prop_assert_eq!(ours, reference, "{:?}", s);
            Ok(())
        })
        .unwrap();
    assert_eq!(f.jwks_hits(), 1, "no shape refetched the keys");
}

#[tokio::test]
async fn one_pass_edge_cases_match_jsonwebtoken() {
    // Cases named on their own, beside the generated ones: each must give
    // the same verdict (and claims) both ways, and the verdict listed.
    let f = fixture().await;
    let kid = f.rsa_kid();
    let issuer = f.idp.issuer().to_string();
    let exp = now() + 300;
    let header = format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#);
    let good = format!(r#""iss":"{issuer}","sub":"alice","aud":"api://messaging","exp":{exp}"#);
    let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
        ("usual", format!("{{{good}}}"), Ok(())),
        (
            "duplicate sub",
            format!(r#"{{{good},"sub":"admin"}}"#),
            Err(TokenError::DuplicateClaim),
        ),
        (
            "duplicate exp",
            format!(r#"{{{good},"exp":{exp}}}"#),
            Err(TokenError::DuplicateClaim),
        ),
        (
            "exp as float",
            format!(r#"{{"iss":"{issuer}","sub":"a","aud":"api://messaging","exp":{exp}.0}}"#),
            Err(TokenError::MissingClaim),
        ),
        (
            "exp beyond u64",
            format!(
                r#"{{"iss":"{issuer}","sub":"a","aud":"api://messaging","exp":18446744073709551616}}"#
            ),
            Err(TokenError::MissingClaim),
        ),
        (
            "exp null",
            format!(r#"{{"iss":"{issuer}","sub":"a","aud":"api://messaging","exp":null}}"#),
            Err(TokenError::MissingClaim),
        ),
        (
            "sub an object",
            format!(r#"{{"iss":"{issuer}","sub":{{"a":1}},"aud":"api://messaging","exp":{exp}}}"#),
            Err(TokenError::Malformed),
        ),
        (
            "sub a number",
            format!(r#"{{"iss":"{issuer}","sub":7,"aud":"api://messaging","exp":{exp}}}"#),
            Err(TokenError::MissingClaim),
        ),
        (
            "sub empty",
            format!(r#"{{"iss":"{issuer}","sub":"","aud":"api://messaging","exp":{exp}}}"#),
            Err(TokenError::MissingClaim),
        ),
        (
            "iss an array",
            format!(r#"{{"iss":["{issuer}"],"sub":"a","aud":"api://messaging","exp":{exp}}}"#),
            Err(TokenError::WrongIssuer),
        ),
        (
            "aud a number",
            format!(r#"{{"iss":"{issuer}","sub":"a","aud":5,"exp":{exp}}}"#),
            Err(TokenError::WrongAudience),
        ),
        (
            "nbf a string",
            format!(r#"{{{good},"nbf":"0"}}"#),
            Err(TokenError::Malformed),
        ),
        (
            "iat far ahead",
            format!(r#"{{{good},"iat":{}}}"#, now() + 1000),
            Err(TokenError::IssuedInFuture),
        ),
        (
            "escaped name",
            format!(
                r#"{{"iss":"{issuer}","s\u0075b":"alice","aud":"api://messaging","exp":{exp}}}"#
            ),
            Ok(()),
        ),
        (
            "not an object",
            "[1,2]".to_string(),
            Err(TokenError::Malformed),
        ),
        (
            "trailing text",
            format!("{{{good}}} x"),
            Err(TokenError::Malformed),
        ),
    ];
    for (what, payload, expected) in cases {
        let token = f.idp.sign_raw(Algorithm::RS256, &header, &payload);
        let ours = verify_one_pass(&f.provider, &token).await;
        let reference = verify_through_jsonwebtoken(&f.provider, &token).await;
        assert_eq!(ours, reference, "{what}");
        assert_eq!(ours.map(|_| ()), expected, "{what}");
    }
}

#[test]
fn the_quick_header_read_agrees_with_jsonwebtoken() {
    let headers = [
        r#"{"alg":"RS256","kid":"k1"}"#,
        r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#,
        r#"{"typ":"JWT","alg":"ES256"}"#,
        r#"{"alg":"RS256","kid":null}"#,
        r#"{"alg":"RS256","typ":null}"#,
        r#"{"alg":null}"#,
        r#"{"alg":"none","kid":"k1"}"#,
        r#"{"alg":"rs256"}"#,
        r#"{"alg":"RS256","kid":"k1","kid":"k2"}"#,
        r#"{"alg":"RS256","alg":"HS256"}"#,
        r#"{"alg":"RS256","k\u0069d":"k1"}"#,
        r#"{"alg":"RS256","kid":"k\u00e9"}"#,
        r#"{"alg":"RS256","kid":5}"#,
        r#"{"alg":"RS256","cty":"x"}"#,
        r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
        r#"{"alg":"RS256","jwk":5}"#,
        r#" { "alg" : "RS256" } "#,
        r#"{"alg":"RS256"} x"#,
        r#"{"kid":"k1"}"#,
        r#"["RS256"]"#,
        r#"["RS256","k1",null]"#,
        r#"["RS256",null,null]"#,
        r#" ["RS256","k1","JWT"]"#,
        "",
    ];
    let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(400));
    for header in headers.iter().copied().chain([long_kid.as_str()]) {
        for token in [
            format!("{}.e30.c2ln", b64(header.as_bytes())),
            format!("x.{}.e30.c2ln", b64(header.as_bytes())),
            format!("{}.e30", b64(header.as_bytes())),
            format!("{}=.e30.c2ln", b64(header.as_bytes())),
        ] {
            let ours = decode_header(&token).map_err(|e| e.to_string());
            let theirs = jsonwebtoken::decode_header(&token).map_err(|e| e.to_string());
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{header} in {token}");
            assert_eq!(ours.ok(), theirs.ok(), "{header} in {token}");
        }
    }
}

#[test]
fn claims_are_found_by_name_in_any_order() {
    let claims: Claims = serde_json::from_str(
        r#"{"sub":"ada","aud":["a","b"],"exp":7,"zz":null,"iss":"https://op","a":1}"#,
    )
    .unwrap();
    assert_eq!(claims.str("sub"), Some("ada"));
    assert_eq!(claims.str("iss"), Some("https://op"));
    assert_eq!(claims.number("exp"), Some(7));
    assert_eq!(claims.number("a"), Some(1));
    assert_eq!(claims.get("zz"), Some(&Value::Null));
    assert_eq!(claims.get("nope"), None);
    assert_eq!(claims.get(""), None);
    assert_eq!(claims.audiences(), ["a", "b"]);
    let names: Vec<&str> = claims.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["a", "aud", "exp", "iss", "sub", "zz"]);
}

#[test]
fn a_claim_named_twice_is_refused_wherever_the_two_stand() {
    for json in [
        r#"{"sub":"a","sub":"b"}"#,
        r#"{"sub":"a","x":1,"y":2,"sub":"b"}"#,
        r#"{"x":1,"y":2,"z":3,"y":4}"#,
        r#"{"m":1,"a":1,"z":1,"m":2,"b":3}"#,
        // The same name behind a JSON escape is the same name.
        r#"{"sub":"a","s\u0075b":"b"}"#,
    ] {
        let error = serde_json::from_str::<Claims>(json).unwrap_err();
        assert!(
            error.to_string().contains(DUPLICATE_CLAIM),
            "{json}: {error}"
        );
    }
    assert!(serde_json::from_str::<Claims>(r#"{"sub":"a","Sub":"b"}"#).is_ok());
    assert!(serde_json::from_str::<Claims>(r#"["sub","a"]"#).is_err());
}

#[test]
fn claims_collected_from_pairs_keep_the_last_of_one_name() {
    let claims: Claims = [
        ("sub".to_string(), json!("first")),
        ("aud".to_string(), json!("x")),
        ("sub".to_string(), json!("second")),
        ("exp".to_string(), json!(1)),
        ("sub".to_string(), json!("last")),
    ]
    .into_iter()
    .collect();
    assert_eq!(claims.str("sub"), Some("last"));
    let names: Vec<&str> = claims.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["aud", "exp", "sub"]);
    let map = claims.to_map();
    assert_eq!(map.len(), 3);
    assert_eq!(claims, map.into_iter().collect::<Claims>());
}
