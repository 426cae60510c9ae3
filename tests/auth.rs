//! Bearer authentication end to end: a real `portcullis` process, the
//! development provider in-process (so the test can rotate its keys, take it
//! down and count its hits), and the echo backend.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, Header};
use portcullis::devidp::{DevIdp, DevIdpOptions};
use serde_json::json;

const ORIGIN: &str = "https://www.example.com";
const CHAT: &str = "/v1/chat?deploymentId=support";

async fn start_idp() -> DevIdp {
    common::browser::start_devidp(DevIdpOptions::default()).await
}

/// `refetch`: the unknown-kid refetch interval; `max_ttl`: the longest the
/// provider's keys are kept before a background refresh.
fn config(idp: &DevIdp, backend: std::net::SocketAddr, refetch: &str, max_ttl: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
public_url: "http://{{PROXY}}"
threads: 1
admin: {{address: "{{ADMIN}}"}}
providers:
  dev:
    issuer: "{issuer}"
    client_id: portcullis-demo
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
    jwks_refetch_interval: {refetch}
    jwks_min_ttl: 1s
    jwks_max_ttl: {max_ttl}
    jwks_max_stale: 1h
  dead:
    issuer: "http://127.0.0.1:{dead_port}"
    client_id: nobody
    http_timeout: 200ms
messengers:
  support:
    # ID tokens as bearer credentials are an opt-in.
    authentication: {{enabled: true, provider: dev, accept_id_tokens: true}}
    assertion: true
    identity_headers: {{X-Auth-Verified: email_verified, X-Auth-Roles: roles}}
  staff:
    authentication: {{enabled: true, provider: dev, accept_id_tokens: true, require: {{groups_any: [staff]}}}}
  unreachable:
    authentication: {{enabled: true, provider: dead}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN}"], access_token_query: true}}
  - {{id: staff, messenger: staff, upstream: chat, allowed_origins: ["{ORIGIN}"]}}
  - {{id: orphan, messenger: unreachable, upstream: chat, allowed_origins: ["{ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
logging: {{format: json, level: info}}
"#,
        issuer = idp.issuer(),
        dead_port = free_port(),
    )
}

async fn setup(refetch: &str) -> (DevIdp, Proxy) {
    setup_with(refetch, "24h").await
}

async fn setup_with(refetch: &str, max_ttl: &str) -> (DevIdp, Proxy) {
    let idp = start_idp().await;
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(&idp, backend, refetch, max_ttl)).await;
    (idp, proxy)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn open(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Handshake {
    let mut all = vec![("Origin", ORIGIN)];
    all.extend_from_slice(headers);
    ws_connect(&proxy.ws_url(path), &all).await
}

#[tokio::test]
async fn access_tokens_open_websockets_with_identity_and_a_verifiable_assertion() {
    let (idp, proxy) = setup("60s").await;
    let mut sent = Vec::new();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let token = idp.mint_access_token("alice", alg);
        sent.push(token.clone());
        let (mut ws, _) = open(&proxy, CHAT, &[("Authorization", &bearer(&token))])
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}\n{}", proxy.log_text()));
        let welcome = next_json(&mut ws).await;
        let identity = &welcome["identity"];
        assert_eq!(identity["x-auth-subject"], "alice");
        assert_eq!(identity["x-auth-email"], "alice@example.com");
        assert_eq!(identity["x-auth-name"], "Alice Example");
        assert_eq!(identity["x-auth-groups"], "customers");
        assert_eq!(identity["x-auth-issuer"], idp.issuer());
        assert_eq!(identity["x-auth-deployment"], "support");
        assert_eq!(identity["x-auth-verified"], "true");
        assert!(identity["x-auth-session"]
            .as_str()
            .unwrap()
            .starts_with("t-"));
        let headers = welcome["headers"].as_object().unwrap();
        assert!(
            headers.get("authorization").is_none(),
            "the token stays at the edge"
        );

        // The backend can verify the assertion with portcullis's published keys.
        let assertion = identity["x-auth-assertion"].as_str().unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(proxy.url("/.auth/jwks.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kid = jsonwebtoken::decode_header(assertion).unwrap().kid.unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&["chat"]);
        validation.set_issuer(&[format!("http://{}", proxy.addr)]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["deployment"], "support");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 60, "assertions live at most a minute");
    }
    // The signature is what makes a token a token (the header is the same
    // for every token of a key, the payload is not secret).
    let log = proxy.log_text();
    for token in &sent {
        assert!(
            !log.contains(signature(token)),
            "a token's signature in the log"
        );
    }
}

#[tokio::test]
async fn a_bearer_websocket_closes_at_its_tokens_exp_unless_the_messenger_keeps_it_until_idle() {
    let idp = start_idp().await;
    let backend = start_backend().await;
    // The same messenger twice: the default (close at exp) and until_idle.
    let config = config(&idp, backend, "60s", "24h")
        .replace(
            "  staff:\n",
            "  lenient:\n    authentication: {enabled: true, provider: dev, bearer_connections: until_idle}\n  staff:\n",
        )
        .replace(
            "  - {id: staff,",
            &format!("  - {{id: lenient, messenger: lenient, upstream: chat, allowed_origins: [\"{ORIGIN}\"]}}\n  - {{id: staff,"),
        );
    let proxy = Proxy::start(&config).await;
    // An access token with 3 s to live.
    let mut claims = payload(&idp.mint_access_token("alice", Algorithm::RS256));
    let exp = claims["iat"].as_u64().unwrap() + 3;
    claims["exp"] = json!(exp);
    let token = idp.sign(Header::new(Algorithm::RS256), &claims);
    let mut sockets = Vec::new();
    for deployment in ["support", "lenient"] {
        let (mut ws, _) = open(
            &proxy,
            &format!("/v1/chat?deploymentId={deployment}"),
            &[("Authorization", &bearer(&token))],
        )
        .await
        .unwrap_or_else(|e| panic!("{deployment}: {e}\n{}", proxy.log_text()));
        next_json(&mut ws).await;
        sockets.push(ws);
    }
    let [mut at_exp, mut until_idle] = <[Ws; 2]>::try_from(sockets).ok().unwrap();
    let started = Instant::now();
    assert_eq!(
        closed_with(&mut at_exp, Duration::from_secs(3) + CLOSE_DEADLINE).await,
        Some((4001, "token expired".into())),
        "{}",
        proxy.log_text()
    );
    // It closed because the token expired, not before.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now >= exp,
        "closed {:?} after opening, before exp",
        started.elapsed()
    );
    // The other messenger's connection outlives the token (its idle
    // timeout, a minute at least, is unit-tested in connections.rs).
    let reply = echo(&mut until_idle, "still here").await;
    assert_eq!(reply["text"], "still here", "{reply}");
    let closes = proxy
        .metric(
            "portcullis_forced_closes_total",
            &[("deployment", "support"), ("reason", "expired")],
        )
        .await;
    assert_eq!(closes, Some(1.0));
}

/// A JWT's signature segment.
fn signature(token: &str) -> &str {
    let sig = token.rsplit('.').next().unwrap();
    assert!(sig.len() >= 40, "a signed token: {token}");
    sig
}

#[tokio::test]
async fn id_tokens_and_the_other_carriers_authenticate_too() {
    let (idp, proxy) = setup("60s").await;
    let id_token = idp.mint_id_token("carol", Algorithm::ES256, Some("n-1"));
    let protocols = format!("chat.v1, authorization.bearer.{id_token}");
    let (mut ws, response) = open(&proxy, CHAT, &[("Sec-WebSocket-Protocol", &protocols)])
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["identity"]["x-auth-subject"], "carol");
    assert_eq!(
        welcome["headers"]["sec-websocket-protocol"],
        json!(["chat.v1"])
    );

    // The opt-in query carrier, removed before the backend sees the URL.
    let token = idp.mint_access_token("alice", Algorithm::RS256);
    let body: serde_json::Value = reqwest::get(proxy.url(&format!(
        "/v1/echo?deploymentId=support&access_token={token}&x=1"
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["query"], "deploymentId=support&x=1");
    assert_eq!(body["headers"]["x-auth-subject"], json!(["alice"]));
    // Not opted in: the query token is not a credential there.
    let resp =
        reqwest::get(proxy.url(&format!("/v1/echo?deploymentId=staff&access_token={token}")))
            .await
            .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn refusals_say_why_without_echoing_the_token() {
    let (idp, proxy) = setup("60s").await;
    let client = reqwest::Client::new();
    let call = |deployment: &str, token: Option<String>| {
        let mut req = client.get(proxy.url(&format!("/v1/x?deploymentId={deployment}")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let resp = call("support", None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer realm="portcullis""#
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["reason"],
        "no_credentials"
    );

    let now = idp.now();
    let expired = idp.sign(
        Header::new(Algorithm::RS256),
        &json!({"iss": idp.issuer(), "sub": "alice", "aud": "api://messaging", "iat": now - 900, "exp": now - 600}),
    );
    let wrong_aud = idp.sign(
        Header::new(Algorithm::ES256),
        &json!({"iss": idp.issuer(), "sub": "alice", "aud": "api://elsewhere", "exp": now + 60}),
    );
    let good = idp.mint_access_token("alice", Algorithm::RS256);
    let tampered = {
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = base64_url(&json!({"iss": idp.issuer(), "sub": "admin", "aud": "api://messaging", "exp": now + 60}).to_string());
        parts[1] = &forged;
        parts.join(".")
    };
    for (token, reason) in [
        (expired, "token_expired"),
        (wrong_aud, "wrong_audience"),
        (tampered.clone(), "bad_signature"),
    ] {
        let resp = call("support", Some(token.clone())).await.unwrap();
        assert_eq!(resp.status(), 401, "{reason}");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        let text = resp.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["reason"], reason);
        assert!(
            !text.contains(signature(&token)) && !challenge.contains(signature(&token)),
            "the token is never echoed"
        );
    }
    // Policy: alice is no staff member, carol is.
    let resp = call(
        "staff",
        Some(idp.mint_access_token("alice", Algorithm::ES256)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["reason"],
        "group_mismatch"
    );
    let resp = call(
        "staff",
        Some(idp.mint_access_token("carol", Algorithm::ES256)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    // A provider that never answered: 503 with Retry-After, not a 401.
    let resp = call("orphan", Some(good)).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    // The handshake variant of a refusal is a 401 too, never a redirect.
    let refused = open(&proxy, CHAT, &[("Authorization", &bearer(&tampered))]).await;
    assert_eq!(refused_status(&refused), 401);
    let log = proxy.log_text();
    assert!(
        !log.contains(signature(&tampered)),
        "tokens never reach the log"
    );
}

/// A JWT's payload, unverified (other tests verify assertions).
fn payload(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn list_claims_keep_their_elements_upstream_and_match_the_policy() {
    let (idp, proxy) = setup("60s").await;
    // One group whose name holds a comma, and a string `email_verified` as
    // some providers send it.
    idp.set_id_token_claims(
        "alice",
        json!({
            "groups": ["support,admin", "customers"],
            "roles": ["a,b", "100%", 7],
            "email_verified": "true",
        }),
    );
    let token = idp.mint_id_token("alice", Algorithm::RS256, None);
    let (mut ws, _) = open(&proxy, CHAT, &[("Authorization", &bearer(&token))])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    let welcome = next_json(&mut ws).await;
    let identity = &welcome["identity"];
    assert_eq!(identity["x-auth-groups"], "support%2Cadmin,customers");
    assert_eq!(identity["x-auth-roles"], "a%2Cb,100%25,7");
    assert_eq!(identity["x-auth-email-verified"], "true");
    // The mapped raw claim is the provider's string, as it was.
    assert_eq!(identity["x-auth-verified"], "true");
    let assertion = payload(identity["x-auth-assertion"].as_str().unwrap());
    assert_eq!(assertion["groups"], json!(["support,admin", "customers"]));
    assert_eq!(assertion["email_verified"], true);

    // The policy reads the same one group: `staff` is part of a name, not
    // a group of its own, so the staff deployment refuses.
    idp.set_id_token_claims("alice", json!({"groups": ["customers,staff"]}));
    let token = idp.mint_id_token("alice", Algorithm::RS256, None);
    let resp = reqwest::Client::new()
        .get(proxy.url("/v1/x?deploymentId=staff"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["reason"],
        "group_mismatch"
    );
    idp.set_id_token_claims("alice", json!({"groups": ["customers", "staff"]}));
    let token = idp.mint_id_token("alice", Algorithm::RS256, None);
    let resp = reqwest::Client::new()
        .get(proxy.url("/v1/x?deploymentId=staff"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-auth-groups"], json!(["customers,staff"]));
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn rotation_is_picked_up_and_unknown_kid_floods_fetch_at_most_once() {
    let (idp, proxy) = setup("60s").await;
    let first = idp.mint_access_token("alice", Algorithm::RS256);
    assert!(open(&proxy, CHAT, &[("Authorization", &bearer(&first))])
        .await
        .is_ok());
    let hits_before = idp.jwks_hits();

    // Rotation: the new kid is unknown to the cache, one refetch finds it.
    idp.rotate_keys();
    let rotated = idp.mint_access_token("alice", Algorithm::ES256);
    assert!(open(&proxy, CHAT, &[("Authorization", &bearer(&rotated))])
        .await
        .is_ok());
    assert_eq!(idp.jwks_hits(), hits_before + 1);

    // A flood of made-up kids within the refetch interval: no more fetches.
    let now = idp.now();
    let client = reqwest::Client::new();
    for i in 0..50 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("made-up-{i}"));
        let token = idp.sign(
            header,
            &json!({"iss": idp.issuer(), "sub": "x", "aud": "api://messaging", "exp": now + 60}),
        );
        let resp = client
            .get(proxy.url("/v1/x?deploymentId=support"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(
        idp.jwks_hits(),
        hits_before + 1,
        "the flood caused no fetch"
    );
    let misses = proxy.metrics().await;
    assert!(
        sample(
            &misses,
            "portcullis_jwks_kid_misses_total",
            &[("provider", "dev"), ("result", "rate_limited")]
        )
        .unwrap()
            >= 49.0
    );
}

#[tokio::test]
async fn cached_keys_keep_serving_while_the_provider_is_down() {
    // Keys live 1 s, so background refreshes run (and fail) during the test.
    let (idp, proxy) = setup_with("1s", "1s").await;
    let token = idp.mint_access_token("alice", Algorithm::RS256);
    assert!(open(&proxy, CHAT, &[("Authorization", &bearer(&token))])
        .await
        .is_ok());
    idp.set_down(true);
    // Wait until the keys are stale: past their 1 s lifetime (the age, in
    // whole seconds, keeps growing while nothing refreshes them), with a
    // failed refresh counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = proxy.metrics().await;
        let age = sample(
            &metrics,
            "portcullis_jwks_age_seconds",
            &[("provider", "dev")],
        )
        .unwrap_or(0.0);
        let failed = metrics.lines().any(|l| {
            l.starts_with("portcullis_jwks_fetches_total") && l.contains("result=\"error\"")
        });
        if age >= 2.0 && failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jwks age stayed at {age}, failed refresh: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A token never seen before, signed with a known key: verified with the
    // stale keys, no provider needed.
    let fresh = idp.mint_access_token("carol", Algorithm::RS256);
    let (mut ws, _) = open(&proxy, CHAT, &[("Authorization", &bearer(&fresh))])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert_eq!(
        next_json(&mut ws).await["identity"]["x-auth-subject"],
        "carol"
    );
    // Back up: a rotated key becomes usable again.
    idp.set_down(false);
    idp.rotate_keys();
    let rotated = idp.mint_access_token("alice", Algorithm::ES256);
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&proxy, CHAT, &[("Authorization", &bearer(&rotated))])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "never recovered:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn repeat_tokens_hit_the_cache_and_decisions_are_counted() {
    let (idp, proxy) = setup("60s").await;
    let token = idp.mint_access_token("alice", Algorithm::ES256);
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let resp = client
            .get(proxy.url("/v1/x?deploymentId=support"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let text = proxy.metrics().await;
    assert_eq!(
        sample(&text, "portcullis_token_cache_total", &[("result", "hit")]),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "portcullis_token_cache_total", &[("result", "miss")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "portcullis_auth_decisions_total",
            &[
                ("deployment", "support"),
                ("method", "bearer_header"),
                ("outcome", "allowed")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "portcullis_provider_ready", &[("provider", "dev")]),
        Some(1.0)
    );
    let ready = reqwest::get(proxy.admin_url("/readyz")).await.unwrap();
    // The `dead` provider backs the active `orphan` deployment: not ready.
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["providers"]["dev"]["ok"], true);
    assert_eq!(body["checks"]["providers"]["dead"]["ok"], false);
}
