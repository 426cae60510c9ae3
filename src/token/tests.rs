//! Verification against hostile tokens, with keys made here and a minimal
//! discovery + JWKS server on loopback that counts its hits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::{self, JwksSettings};
use crate::metrics::Metrics;
use crate::provider::ProviderService;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: String,
    rsa_jwk: Value,
    ec: EncodingKey,
    ec_jwk: Value,
}

fn make_keys() -> Keys {
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
    let rsa_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", rsa_der.as_ref().to_vec()));
    let public = rsa.public_key();
    let public_der = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public).unwrap();
    let rsa_public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", public_der.as_ref().to_vec()));
    let rsa_jwk = json!({
        "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
    });
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let ec_der = ec.to_pkcs8v1().unwrap();
    let point = ec.public_key().as_ref();
    let ec_jwk = json!({
        "kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    });
    Keys {
        rsa: EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap(),
        rsa_public_pem,
        rsa_jwk,
        ec: EncodingKey::from_ec_der(ec_der.as_ref()),
        ec_jwk,
    }
}

/// Discovery and JWKS on loopback; counts JWKS hits; can go down.
struct TestIdp {
    issuer: String,
    jwks: Arc<parking_lot::Mutex<Value>>,
    jwks_hits: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

async fn start_idp(jwks: Value) -> TestIdp {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(parking_lot::Mutex::new(jwks));
    let hits = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
    let (j, h, d1, d2) = (jwks.clone(), hits.clone(), down.clone(), down.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let down = d1.load(Ordering::SeqCst);
                let body = discovery.clone();
                async move {
                    if down {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(axum::Json(body))
                    }
                }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let down = d2.load(Ordering::SeqCst);
                let body = j.lock().clone();
                async move {
                    if down {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(([("cache-control", "max-age=300")], axum::Json(body)))
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    TestIdp {
        issuer,
        jwks,
        jwks_hits: hits,
        down,
    }
}

fn provider_for(idp: &TestIdp, algorithms: &str, jwks: JwksSettings) -> Arc<ProviderService> {
    let text = format!(
        "listen: [{{address: \"127.0.0.1:1\"}}]\nproviders:\n  p: {{issuer: \"{}\", client_id: chat-client, audiences: [\"api://messaging\"], algorithms: {algorithms}, clock_skew: 30s}}\n",
        idp.issuer
    );
    let mut config = config::parse(&text, std::path::Path::new("."), &|_: &str| None).unwrap();
    let mut p = config.providers.remove("p").unwrap();
    p.jwks = jwks;
    ProviderService::new(p, Arc::new(Metrics::new()))
}

fn now() -> u64 {
    super::now_unix()
}

fn claims(idp: &TestIdp) -> Value {
    json!({"iss": idp.issuer, "sub": "alice", "aud": "api://messaging", "exp": now() + 300, "iat": now(), "email": "alice@example.com"})
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token from raw header and payload text (for shapes serde would not produce).
fn sign_raw(key: &EncodingKey, alg: Algorithm, header: &str, payload: &str) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// An RS256 token of the standard claims with `change` applied.
fn signed_with(f: &Fixture, change: Value) -> String {
    let mut c = claims(&f.idp);
    for (k, v) in change.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(&f.keys.rsa, Algorithm::RS256, Some("rsa-1"), &c)
}

struct Fixture {
    keys: Keys,
    idp: TestIdp,
    provider: Arc<ProviderService>,
}

async fn fixture() -> Fixture {
    fixture_with("[RS256, ES256, PS256]", JwksSettings::default()).await
}

async fn fixture_with(algorithms: &str, settings: JwksSettings) -> Fixture {
    let keys = make_keys();
    let idp = start_idp(json!({"keys": [keys.rsa_jwk, keys.ec_jwk]})).await;
    let provider = provider_for(&idp, algorithms, settings);
    Fixture {
        keys,
        idp,
        provider,
    }
}

#[tokio::test]
async fn good_rs256_and_es256_tokens_verify() {
    let f = fixture().await;
    let rs = sign(
        &f.keys.rsa,
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(&f.idp),
    );
    let v = verify(&f.provider, &rs).await.unwrap();
    assert_eq!(v.kind, TokenKind::Access);
    assert_eq!(v.claims.str("sub"), Some("alice"));
    let es = sign(&f.keys.ec, Algorithm::ES256, Some("ec-1"), &claims(&f.idp));
    assert!(verify(&f.provider, &es).await.is_ok());
    // An ID token: aud is the client id.
    let mut id = claims(&f.idp);
    id["aud"] = json!("chat-client");
    let v = verify(
        &f.provider,
        &sign(&f.keys.ec, Algorithm::ES256, Some("ec-1"), &id),
    )
    .await
    .unwrap();
    assert_eq!(v.kind, TokenKind::Id);
    assert_eq!(
        f.idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "one fetch serves every token"
    );
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
    let none_upper = format!("{}.{payload}.", b64(br#"{"alg":"NONE","kid":"rsa-1"}"#));
    assert_eq!(
        verify(&f.provider, &none_upper).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    // The classic confusion: HS256 keyed with the provider's RSA public key.
    let hmac_key = EncodingKey::from_secret(f.keys.rsa_public_pem.as_bytes()).unwrap();
    let confused = sign(&hmac_key, Algorithm::HS256, Some("rsa-1"), &claims(&f.idp));
    assert_eq!(
        verify(&f.provider, &confused).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        f.idp.jwks_hits.load(Ordering::SeqCst),
        0,
        "refused before any key lookup"
    );
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_or_the_key_are_refused() {
    let f = fixture_with("[RS256]", JwksSettings::default()).await;
    let es = sign(&f.keys.ec, Algorithm::ES256, Some("ec-1"), &claims(&f.idp));
    assert_eq!(
        verify(&f.provider, &es).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    let f = fixture().await;
    // The RSA JWK declares alg RS256: a PS256 token with it is refused.
    let ps = sign(
        &f.keys.rsa,
        Algorithm::PS256,
        Some("rsa-1"),
        &claims(&f.idp),
    );
    assert_eq!(
        verify(&f.provider, &ps).await.unwrap_err(),
        TokenError::KeyMismatch
    );
    // An ES256 token naming the RSA key.
    let crossed = sign(&f.keys.ec, Algorithm::ES256, Some("rsa-1"), &claims(&f.idp));
    assert_eq!(
        verify(&f.provider, &crossed).await.unwrap_err(),
        TokenError::KeyMismatch
    );
}

#[tokio::test]
async fn tokens_without_kid_need_an_unambiguous_key() {
    let f = fixture().await;
    let no_kid = sign(&f.keys.ec, Algorithm::ES256, None, &claims(&f.idp));
    assert!(
        verify(&f.provider, &no_kid).await.is_ok(),
        "one EC key: unambiguous"
    );
    let two_ec = make_keys();
    let mut second = two_ec.ec_jwk.clone();
    second["kid"] = json!("ec-2");
    *f.idp.jwks.lock() = json!({"keys": [f.keys.rsa_jwk, f.keys.ec_jwk, second]});
    let g = Fixture {
        provider: provider_for(&f.idp, "[RS256, ES256]", JwksSettings::default()),
        ..f
    };
    let no_kid = sign(&g.keys.ec, Algorithm::ES256, None, &claims(&g.idp));
    assert_eq!(
        verify(&g.provider, &no_kid).await.unwrap_err(),
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
    let token = sign(&f.keys.rsa, Algorithm::RS256, Some("rsa-1"), &no_exp);
    assert_eq!(
        verify(&f.provider, &token).await.unwrap_err(),
        TokenError::MissingClaim
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let f = fixture().await;
    let with = |change: Value| signed_with(&f, change);
    assert_eq!(
        verify(&f.provider, &with(json!({"iss": "https://evil.example"})))
            .await
            .unwrap_err(),
        TokenError::WrongIssuer
    );
    let trailing = format!("{}/", f.idp.issuer);
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
    let stolen = with(json!({"aud": ["chat-client", "other-client"], "azp": "other-client"}));
    assert_eq!(
        verify(&f.provider, &stolen).await.unwrap_err(),
        TokenError::WrongAudience
    );
    let ours = with(json!({"aud": ["chat-client", "other-client"], "azp": "chat-client"}));
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
    let good = sign(
        &f.keys.rsa,
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(&f.idp),
    );
    verify(&f.provider, &good).await.unwrap();
    let hits = f.idp.jwks_hits.load(Ordering::SeqCst);
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
    // Signed by a key with the same kid that the provider does not publish.
    let impostor = make_keys();
    let forged = sign(
        &impostor.rsa,
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(&f.idp),
    );
    assert_eq!(
        verify(&f.provider, &forged).await.unwrap_err(),
        TokenError::BadSignature
    );
    assert_eq!(
        f.idp.jwks_hits.load(Ordering::SeqCst),
        hits,
        "a known kid never triggers a fetch"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let f = fixture().await;
    verify(
        &f.provider,
        &sign(
            &f.keys.rsa,
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(&f.idp),
        ),
    )
    .await
    .unwrap();
    assert_eq!(f.idp.jwks_hits.load(Ordering::SeqCst), 1);
    for i in 0..200 {
        let token = sign(
            &f.keys.rsa,
            Algorithm::RS256,
            Some(&format!("bogus-{i}")),
            &claims(&f.idp),
        );
        assert_eq!(
            verify(&f.provider, &token).await.unwrap_err(),
            TokenError::UnknownKey
        );
    }
    assert_eq!(
        f.idp.jwks_hits.load(Ordering::SeqCst),
        2,
        "one refetch for the whole flood"
    );
    // The first bogus kid was remembered after its refetch.
    let again = sign(
        &f.keys.rsa,
        Algorithm::RS256,
        Some("bogus-0"),
        &claims(&f.idp),
    );
    assert_eq!(
        verify(&f.provider, &again).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(f.idp.jwks_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_through_an_unknown_kid() {
    let settings = JwksSettings {
        refetch_interval: Duration::from_secs(1),
        ..JwksSettings::default()
    };
    let f = fixture_with("[RS256, ES256]", settings).await;
    verify(
        &f.provider,
        &sign(&f.keys.ec, Algorithm::ES256, Some("ec-1"), &claims(&f.idp)),
    )
    .await
    .unwrap();
    let rotated = make_keys();
    let mut new_jwk = rotated.ec_jwk.clone();
    new_jwk["kid"] = json!("ec-2");
    *f.idp.jwks.lock() = json!({"keys": [f.keys.rsa_jwk, new_jwk]});
    let token = sign(&rotated.ec, Algorithm::ES256, Some("ec-2"), &claims(&f.idp));
    assert!(verify(&f.provider, &token).await.is_ok());
    assert_eq!(f.idp.jwks_hits.load(Ordering::SeqCst), 2);
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
    let token = sign(
        &f.keys.rsa,
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(&f.idp),
    );
    verify(&f.provider, &token).await.unwrap();
    f.idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past the 1 s lifetime, within 2 s of staleness: still verifies.
    f.provider.maintain().await;
    assert!(verify(&f.provider, &token).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        verify(&f.provider, &token).await.unwrap_err(),
        TokenError::ProviderUnavailable
    );
    f.idp.down.store(false, Ordering::SeqCst);
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
    // A header that parses but a payload that is not JSON.
    let junk = sign_raw(
        &f.keys.rsa,
        Algorithm::RS256,
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        "not json",
    );
    assert_eq!(
        verify(&f.provider, &junk).await.unwrap_err(),
        TokenError::Malformed
    );
    assert_eq!(f.idp.jwks_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn duplicate_claims_are_refused() {
    let f = fixture().await;
    let payload = format!(
        r#"{{"iss":"{}","sub":"alice","sub":"admin","aud":"api://messaging","exp":{}}}"#,
        f.idp.issuer,
        now() + 300
    );
    let token = sign_raw(
        &f.keys.rsa,
        Algorithm::RS256,
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        &payload,
    );
    assert_eq!(
        verify(&f.provider, &token).await.unwrap_err(),
        TokenError::DuplicateClaim
    );
}

#[tokio::test]
async fn the_cache_skips_verification_for_a_repeated_token() {
    let f = fixture().await;
    let metrics = Arc::new(Metrics::new());
    let cache = TokenCache::new(100, metrics.clone());
    let token = sign(&f.keys.ec, Algorithm::ES256, Some("ec-1"), &claims(&f.idp));
    cache.verify(&f.provider, &token).await.unwrap();
    cache.verify(&f.provider, &token).await.unwrap();
    assert_eq!(metrics.token_cache.with_label_values(&["hit"]).get(), 1);
    assert_eq!(metrics.token_cache.with_label_values(&["miss"]).get(), 1);
    // Failures are not cached: a bad token is judged again every time.
    let bad = format!("{token}x");
    assert!(cache.verify(&f.provider, &bad).await.is_err());
    assert!(cache.verify(&f.provider, &bad).await.is_err());
    assert_eq!(metrics.token_cache.with_label_values(&["miss"]).get(), 3);
}
