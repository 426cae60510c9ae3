//! The token API end to end over real HTTP (SPEC §3): a site logs its user
//! in at the development provider itself, hands the code to portcullis,
//! and opens the chat with the messenger token; refresh with rotation and
//! reuse detection, revoke, the hosted product's paths, CORS, rate limits,
//! and every refusal the contract lists.

mod common;

use std::time::Duration;

use common::browser::*;
use common::*;
use portcullis::devidp::{DevIdp, DevIdpOptions};

const SITE: &str = "http://127.0.0.1:7001";
const CALLBACK: &str = "http://127.0.0.1:7001/chat/callback";

/// Portcullis with deployments `support` (token API on), `other` (same
/// messenger), `off` (inactive), `open` (no authentication);
/// `extra_top`: YAML added at the top level, `support_extra`: lines added
/// to the `support` messenger.
async fn setup_with(extra_top: &str, support_extra: &str) -> (DevIdp, Proxy) {
    setup_with_provider("", extra_top, support_extra).await
}

/// [`setup_with`], and `provider_extra`: lines added to the provider.
async fn setup_with_provider(
    provider_extra: &str,
    extra_top: &str,
    support_extra: &str,
) -> (DevIdp, Proxy) {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}{provider_extra}
    scopes: [openid, email, profile, offline_access]
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
    assertion: true
{support_extra}
  open:
    authentication: {{enabled: false}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{SITE}"], redirect_uris: ["{CALLBACK}"]}}
  - {{id: other, messenger: support, upstream: chat, allowed_origins: ["{SITE}"], redirect_uris: ["{CALLBACK}"]}}
  - {{id: off, messenger: support, upstream: chat, status: inactive, allowed_origins: ["{SITE}"], redirect_uris: ["{CALLBACK}"]}}
  - {{id: open, messenger: open, upstream: chat, allowed_origins: ["{SITE}"]}}
routes: [{{path_prefix: /v1}}]
{extra_top}
"#,
        preamble = config_with_dev_provider(&idp),
    );
    let proxy = Proxy::start_with_env(&config, &[("DEV_SECRET", "demo-secret")]).await;
    (idp, proxy)
}

/// Rate limits lifted: these tests send dozens of calls from one address
/// within a second (rate limits have their own test).
const NO_RATE_LIMITS: &str = "rate_limits: {per_client: {per_minute: 100000, burst: 10000}}";

async fn setup() -> (DevIdp, Proxy) {
    setup_with(NO_RATE_LIMITS, "").await
}

fn exchange_body(deployment: &str, code: &SiteCode) -> serde_json::Value {
    serde_json::json!({
        "deploymentId": deployment,
        "oauth": {
            "code": code.code,
            "redirectUri": code.redirect_uri,
            "codeVerifier": code.verifier,
            "nonce": code.nonce,
            "iss": code.iss,
        }
    })
}

async fn post(proxy: &Proxy, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(proxy.url(path))
        .header("origin", SITE)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Alice's site login, exchanged: `(jwt, refreshToken, expiresIn)`.
async fn tokens_for(idp: &DevIdp, proxy: &Proxy, deployment: &str) -> (String, String, u64) {
    let code = site_login(idp, CALLBACK, "alice").await;
    let (status, body) = post(proxy, "/.auth/token", &exchange_body(deployment, &code)).await;
    assert_eq!(status, 200, "{body}");
    (
        body["jwt"].as_str().unwrap().to_string(),
        body["refreshToken"].as_str().unwrap().to_string(),
        body["expiresIn"].as_u64().unwrap(),
    )
}

async fn chat_with(proxy: &Proxy, deployment: &str, jwt: &str) -> Handshake {
    let protocols = format!("authorization.bearer.{jwt}, chat.v1");
    ws_connect(
        &proxy.ws_url(&format!("/v1/chat?deploymentId={deployment}")),
        &[("Origin", SITE), ("Sec-WebSocket-Protocol", &protocols)],
    )
    .await
}

fn payload(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

async fn token_result(proxy: &Proxy, operation: &str, result: &str) -> Option<f64> {
    proxy
        .metric(
            "portcullis_token_api_requests_total",
            &[("operation", operation), ("result", result)],
        )
        .await
}

#[tokio::test]
async fn a_site_login_becomes_a_messenger_token_that_opens_the_chat() {
    let (idp, proxy) = setup().await;
    let code = site_login(&idp, CALLBACK, "alice").await;
    let resp = reqwest::Client::new()
        .post(proxy.url("/.auth/token"))
        .header("origin", SITE)
        .json(&exchange_body("support", &code))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], SITE);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    let jwt = body["jwt"].as_str().unwrap();
    assert!(body["refreshToken"].as_str().unwrap().starts_with("pcr_"));
    // min(token_lifetime 15 min, the provider's access token: 300 s).
    assert_eq!(body["expiresIn"], 300);
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let claims = payload(jwt);
    assert_eq!(claims["aud"], "support");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], format!("http://{}", proxy.addr));
    let sid = claims["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("s-"));

    // The jwt opens the chat; the backend learns who, never the token.
    let (mut ws, response) = chat_with(&proxy, "support", jwt).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "chat.v1",
        "the token entry is never echoed"
    );
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["identity"]["x-auth-subject"], "alice");
    assert_eq!(welcome["identity"]["x-auth-session"], sid.as_str());
    assert_eq!(welcome["protocol"], "chat.v1");
    assert!(!welcome.to_string().contains(jwt.split('.').nth(2).unwrap()));
    // Also in the Authorization header, on plain HTTP.
    let echoed: serde_json::Value = reqwest::Client::new()
        .get(proxy.url("/v1/page?deploymentId=support"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echoed["headers"]["x-auth-subject"],
        serde_json::json!(["alice"])
    );
    assert_eq!(echoed["headers"].get("authorization"), None);
    assert_eq!(token_result(&proxy, "exchange", "ok").await, Some(1.0));
    // Nothing secret reaches the log.
    let log = proxy.log_text();
    for secret in [
        code.code.as_str(),
        body["refreshToken"].as_str().unwrap(),
        jwt.split('.').nth(2).unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[tokio::test]
async fn what_portcullis_signs_for_one_purpose_works_for_no_other() {
    let (idp, proxy) = setup().await;
    let (jwt, _, _) = tokens_for(&idp, &proxy, "support").await;
    // Another deployment of the same messenger and provider: refused.
    let on_other = chat_with(&proxy, "other", &jwt).await;
    assert_eq!(refused_status(&on_other), 401);
    assert_eq!(refused_json(&on_other)["reason"], "wrong_audience");
    // The assertion the backend got is no credential anywhere.
    let (mut ws, _) = chat_with(&proxy, "support", &jwt).await.unwrap();
    let welcome = next_json(&mut ws).await;
    let assertion = welcome["identity"]["x-auth-assertion"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    assert_ne!(header.typ.as_deref(), Some("at+jwt"));
    let replayed = chat_with(&proxy, "support", assertion).await;
    assert_eq!(refused_status(&replayed), 401);
    assert_eq!(refused_json(&replayed)["reason"], "wrong_token_type");
    // A provider ID token is not a credential unless the messenger opts in.
    let id_token = idp.mint_id_token("alice", jsonwebtoken::Algorithm::RS256, None);
    let id = chat_with(&proxy, "support", &id_token).await;
    assert_eq!(refused_json(&id)["reason"], "id_token_not_accepted");
}

#[tokio::test]
async fn refresh_rotates_forgives_a_second_tab_and_ends_the_session_on_reuse() {
    let (idp, proxy) = setup_with("", "    session: {refresh_reuse_grace: 2s}").await;
    let (jwt, first, _) = tokens_for(&idp, &proxy, "support").await;
    let (mut ws, _) = chat_with(&proxy, "support", &jwt).await.unwrap();
    next_json(&mut ws).await;
    let refresh = |token: String| {
        let proxy = &proxy;
        async move {
            post(
                proxy,
                "/.auth/token/refresh",
                &serde_json::json!({"refreshToken": token, "deploymentId": "support"}),
            )
            .await
        }
    };
    // Two tabs refresh with the same token at once: both get the same new one.
    let ((s1, a), (s2, b)) = tokio::join!(refresh(first.clone()), refresh(first.clone()));
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    let second = a["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(second, first, "rotated");
    assert_eq!(b["refreshToken"], a["refreshToken"], "the same successor");
    assert_eq!(
        payload(a["jwt"].as_str().unwrap())["sid"],
        payload(&jwt)["sid"]
    );
    // The new refresh token works, once more rotating.
    let (status, c) = refresh(second.clone()).await;
    assert_eq!(status, 200, "{c}");
    // Past the grace window, the first token is a copy: the session ends.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, reused) = refresh(first).await;
    assert_eq!(status, 401);
    assert_eq!(reused["error"], "refresh_token_reused");
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".to_string()))
    );
    let (status, _) = refresh(c["refreshToken"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 401, "every token of the session is dead");
    let again = chat_with(&proxy, "support", &jwt).await;
    assert_eq!(refused_json(&again)["reason"], "session_ended");
}

#[tokio::test]
async fn revoke_ends_the_session_and_its_live_chats() {
    let (idp, proxy) = setup().await;
    let (jwt, refresh, _) = tokens_for(&idp, &proxy, "support").await;
    let (mut ws, _) = chat_with(&proxy, "support", &jwt).await.unwrap();
    next_json(&mut ws).await;
    let revoke = || {
        reqwest::Client::new()
            .delete(proxy.url("/.auth/token"))
            .header("origin", SITE)
            .bearer_auth(&jwt)
            .send()
    };
    let done = revoke().await.unwrap();
    assert_eq!(done.status(), 204);
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "logged out".to_string()))
    );
    // The jwt has not expired, but its session has.
    let after = chat_with(&proxy, "support", &jwt).await;
    assert_eq!(refused_status(&after), 401);
    assert_eq!(refused_json(&after)["reason"], "session_ended");
    assert_eq!(revoke().await.unwrap().status(), 401, "already invalid");
    let (status, _) = post(
        &proxy,
        "/.auth/token/refresh",
        &serde_json::json!({"refreshToken": refresh, "deploymentId": "support"}),
    )
    .await;
    assert_eq!(status, 401);
    let no_bearer = reqwest::Client::new()
        .delete(proxy.url("/.auth/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_bearer.status(), 401);
}

#[tokio::test]
async fn every_bad_exchange_gets_its_own_clear_error_and_no_session() {
    let (idp, proxy) = setup().await;
    let fresh = || site_login(&idp, CALLBACK, "alice");
    let expect = |status: u16, error: &'static str| {
        move |(s, b): (u16, serde_json::Value)| {
            assert_eq!(
                (s, b["error"].as_str().unwrap_or("")),
                (status, error),
                "{b}"
            );
            assert!(b["error_description"].is_string());
        }
    };
    // Unknown, inactive and auth-disabled deployments.
    let code = fresh().await;
    expect(404, "unknown_deployment")(
        post(&proxy, "/.auth/token", &exchange_body("nope", &code)).await,
    );
    expect(403, "deployment_inactive")(
        post(&proxy, "/.auth/token", &exchange_body("off", &code)).await,
    );
    expect(400, "authentication_disabled")(
        post(&proxy, "/.auth/token", &exchange_body("open", &code)).await,
    );
    // A redirect URI the deployment does not register.
    let mut body = exchange_body("support", &code);
    body["oauth"]["redirectUri"] = "http://127.0.0.1:7001/elsewhere".into();
    expect(400, "invalid_redirect_uri")(post(&proxy, "/.auth/token", &body).await);
    // Another issuer's answer, and a missing one (the provider names itself).
    let mut body = exchange_body("support", &code);
    body["oauth"]["iss"] = "https://evil.example".into();
    expect(400, "invalid_issuer")(post(&proxy, "/.auth/token", &body).await);
    let mut body = exchange_body("support", &code);
    body["oauth"].as_object_mut().unwrap().remove("iss");
    expect(400, "invalid_issuer")(post(&proxy, "/.auth/token", &body).await);
    assert_eq!(idp.token_hits(), 0, "nothing so far reached the provider");
    // A wrong verifier: the provider refuses the code.
    let mut body = exchange_body("support", &code);
    body["oauth"]["codeVerifier"] = "x".repeat(43).into();
    expect(401, "invalid_grant")(post(&proxy, "/.auth/token", &body).await);
    // The same code again (spent by that attempt), and a made-up one.
    expect(401, "invalid_grant")(
        post(&proxy, "/.auth/token", &exchange_body("support", &code)).await,
    );
    let mut body = exchange_body("support", &fresh().await);
    body["oauth"]["code"] = "made-up".into();
    expect(401, "invalid_grant")(post(&proxy, "/.auth/token", &body).await);
    // Another login's nonce.
    let mut body = exchange_body("support", &fresh().await);
    body["oauth"]["nonce"] = "not-this-login".into();
    expect(401, "invalid_grant")(post(&proxy, "/.auth/token", &body).await);
    assert_eq!(
        token_result(&proxy, "exchange", "invalid_grant").await,
        Some(4.0)
    );
    // Malformed and oversize bodies.
    for bad in [
        serde_json::json!({"deploymentId": "support"}),
        serde_json::json!({"deploymentId": "support", "oauth": {}}),
        serde_json::json!({"deploymentId": "support", "oauth": {"code": "c"}}),
        serde_json::json!({"deploymentId": "support", "oauth": {"code": "c", "redirectUri": CALLBACK, "codeVerifier": "short"}}),
        serde_json::json!({"deploymentId": "support", "oauth": {"idToken": "x"}}),
        serde_json::json!({"deploymentId": "support", "oauth": {"code": "c", "idToken": "x", "nonce": "n"}}),
        serde_json::json!({"deploymentId": 7, "oauth": {}}),
        serde_json::json!({"deploymentId": "support", "oauth": {"code": "c", "unknown": 1}}),
    ] {
        expect(400, "invalid_request")(post(&proxy, "/.auth/token", &bad).await);
    }
    let raw = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(proxy.url("/.auth/token"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let not_json = raw(b"{not json".to_vec()).await.unwrap();
    assert_eq!(not_json.status(), 400);
    let huge = raw(vec![b' '; 64 * 1024]).await.unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(
        huge.json::<serde_json::Value>().await.unwrap()["error"],
        "body_too_large"
    );
    // A page of an origin the deployment does not list.
    let foreign = reqwest::Client::new()
        .post(proxy.url("/.auth/token"))
        .header("origin", "https://evil.example")
        .json(&exchange_body("support", &fresh().await))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // Wrong methods.
    let get = reqwest::get(proxy.url("/.auth/token")).await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST, DELETE, OPTIONS");
    assert_eq!(
        proxy.metric("portcullis_sessions_live", &[]).await,
        Some(0.0)
    );
    // The codes never reach the log.
    assert!(!proxy.log_text().contains(&code.code));
}

#[tokio::test]
async fn a_login_older_than_the_sites_max_age_is_refused() {
    // No clock skew forgiven, so that two seconds are older than one.
    let (idp, proxy) = setup_with_provider("    clock_skew: 0s", NO_RATE_LIMITS, "").await;
    let with_max_age = |code: &SiteCode, max_age: u64| {
        let mut body = exchange_body("support", code);
        body["oauth"]["maxAge"] = max_age.into();
        body
    };
    let stale = site_login(&idp, CALLBACK, "alice").await;
    let fresh = site_login(&idp, CALLBACK, "alice").await;
    // Both logins are at least two whole seconds old when exchanged.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (status, body) = post(&proxy, "/.auth/token", &with_max_age(&stale, 1)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "the provider's login is older than requested"
    );
    assert_eq!(token_result(&proxy, "exchange", "ok").await, None);

    // The control: the same kind of login, with room in maxAge, is taken.
    let (status, body) = post(&proxy, "/.auth/token", &with_max_age(&fresh, 3600)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_id_token_from_the_site_is_exchanged_without_a_refresh_token() {
    let (idp, proxy) = setup().await;
    let id_token = idp.mint_id_token("alice", jsonwebtoken::Algorithm::ES256, Some("n-123"));
    let body = serde_json::json!({"deploymentId": "support", "oauth": {"idToken": id_token, "nonce": "n-123"}});
    let (status, answer) = post(&proxy, "/.auth/token", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("refreshToken").is_none());
    let exp = payload(answer["jwt"].as_str().unwrap())["exp"]
        .as_u64()
        .unwrap();
    assert!(
        exp <= payload(&id_token)["exp"].as_u64().unwrap(),
        "never past the ID token"
    );
    let (mut ws, _) = chat_with(&proxy, "support", answer["jwt"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await["identity"]["x-auth-subject"],
        "alice"
    );
    let body = serde_json::json!({"deploymentId": "support", "oauth": {"idToken": id_token, "nonce": "other"}});
    let (status, answer) = post(&proxy, "/.auth/token", &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn accepted_provider_id_tokens_die_with_their_session() {
    let (idp, proxy) = setup_with("", "").await;
    let config = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace(
            "authentication: {enabled: true, provider: dev}",
            "authentication: {enabled: true, provider: dev, accept_id_tokens: true}",
        );
    std::fs::write(&proxy.config_path, config).unwrap();
    let reloaded = proxy
        .admin_json(reqwest::Method::POST, "/admin/reload")
        .await;
    assert_eq!(reloaded["reloaded"], true, "{reloaded}");
    // The site's ID token, accepted as a bearer credential by opt-in...
    let id_token = idp.mint_id_token("alice", jsonwebtoken::Algorithm::RS256, Some("n-9"));
    let (mut ws, _) = chat_with(&proxy, "support", &id_token).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await["identity"]["x-auth-subject"],
        "alice"
    );
    // ...and also exchanged for a session, which then ends.
    let body = serde_json::json!({"deploymentId": "support", "oauth": {"idToken": id_token, "nonce": "n-9"}});
    let (status, answer) = post(&proxy, "/.auth/token", &body).await;
    assert_eq!(status, 200, "{answer}");
    let revoked = reqwest::Client::new()
        .delete(proxy.url("/.auth/token"))
        .bearer_auth(answer["jwt"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    // Its signature still verifies and it has not expired, but its session is over.
    let after = chat_with(&proxy, "support", &id_token).await;
    assert_eq!(refused_status(&after), 401);
    assert_eq!(refused_json(&after)["reason"], "session_ended");
    // Another ID token of the same user is not affected.
    let other = idp.mint_id_token("alice", jsonwebtoken::Algorithm::ES256, None);
    assert!(chat_with(&proxy, "support", &other).await.is_ok());
}

#[tokio::test]
async fn the_hosted_products_paths_speak_its_shapes_and_never_rotate() {
    let (idp, proxy) = setup_with("compat: {hosted_paths: true}", "").await;
    let code = site_login(&idp, CALLBACK, "alice").await;
    let (status, body) = post(
        &proxy,
        "/api/v2/webdeployments/token/oauthcodegrantjwtexchange",
        &exchange_body("support", &code),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["jwt", "refreshToken"]);
    let refresh_token = body["refreshToken"].as_str().unwrap();
    // The hosted mobile SDK sends only the refresh token, and keeps it.
    for _ in 0..2 {
        let (status, answer) = post(
            &proxy,
            "/api/v2/webdeployments/token/refresh",
            &serde_json::json!({"refreshToken": refresh_token}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
        assert!(answer["jwt"].is_string());
    }
    let revoked = reqwest::Client::new()
        .delete(proxy.url("/api/v2/webdeployments/token/revoke"))
        .header(
            "authorization",
            format!("bearer {}", body["jwt"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    // Off by default.
    let (_, plain) = setup().await;
    let (status, _) = post(
        &plain,
        "/api/v2/webdeployments/token/oauthcodegrantjwtexchange",
        &exchange_body("support", &code),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn preflights_and_deployment_config_follow_the_allowed_origins() {
    let (_idp, proxy) = setup().await;
    let c = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, proxy.url("/.auth/token"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight(SITE).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], SITE);
    assert!(ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let evil = preflight("https://evil.example").await.unwrap();
    assert_eq!(evil.status(), 403);
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    let config = c
        .get(proxy.url("/.auth/deployments/support/config.json"))
        .header("origin", SITE)
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), 200);
    assert_eq!(config.headers()["access-control-allow-origin"], SITE);
    assert!(config.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let config: serde_json::Value = config.json().await.unwrap();
    assert_eq!(config["status"], "Active");
    assert_eq!(config["auth"]["enabled"], true);
    assert_eq!(config["oidc"]["clientId"], "portcullis-demo");
    assert_eq!(
        config["messagingEndpoint"],
        format!("ws://{}/v1?deploymentId=support", proxy.addr)
    );
    let unknown = c
        .get(proxy.url("/.auth/deployments/nope/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let snippet = c
        .get(proxy.url("/.auth/deployments/support/snippet"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        snippet.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let snippet = snippet.text().await.unwrap();
    let version = config["sdkVersion"].as_str().unwrap();
    assert!(
        snippet.contains(&format!("/.auth/sdk.js?v={version}")),
        "{snippet}"
    );
    assert!(snippet.contains("integrity=\"sha384-"));
    assert!(snippet.contains(r#"deploymentId: "support""#));
    let sdk = c
        .get(proxy.url(&format!("/.auth/sdk.js?v={version}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sdk.status(), 200);
    assert!(sdk.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = sdk.headers()["etag"].to_str().unwrap().to_string();
    assert!(sdk.text().await.unwrap().contains("Portcullis"));
    let again = c
        .get(proxy.url("/.auth/sdk.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn floods_of_junk_codes_are_held_back_before_the_provider() {
    let (idp, proxy) = setup_with(
        "rate_limits: {per_client: {per_minute: 60, burst: 3}, per_deployment: {per_minute: 600, burst: 100}}",
        "",
    )
    .await;
    let code = site_login(&idp, CALLBACK, "alice").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let mut body = exchange_body("support", &code);
        body["oauth"]["code"] = format!("junk-{i}").into();
        let resp = reqwest::Client::new()
            .post(proxy.url("/.auth/token"))
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
            assert_eq!(
                resp.json::<serde_json::Value>().await.unwrap()["error"],
                "rate_limited"
            );
        }
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    assert_eq!(retry_after.unwrap().to_str().unwrap(), "1");
    assert_eq!(
        idp.token_hits(),
        3,
        "refused requests never reach the provider"
    );
    assert_eq!(
        proxy
            .metric(
                "portcullis_rate_limited_total",
                &[("endpoint", "token_api"), ("scope", "client")]
            )
            .await,
        Some(3.0)
    );
    // Login is limited by the same client bucket.
    let login = no_redirects()
        .get(proxy.url("/.auth/login?deployment=support&rd=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 429);
}

#[tokio::test]
async fn a_deployment_over_its_budget_answers_429_with_retry_after() {
    let (idp, proxy) = setup_with(
        "rate_limits: {per_client: {per_minute: 100000, burst: 10000}, per_deployment: {per_minute: 60, burst: 2}}",
        "",
    )
    .await;
    let code = site_login(&idp, CALLBACK, "alice").await;
    let mut answers = Vec::new();
    for i in 0..3 {
        let mut body = exchange_body("support", &code);
        body["oauth"]["code"] = format!("junk-{i}").into();
        let resp = reqwest::Client::new()
            .post(proxy.url("/.auth/token"))
            .header("origin", SITE)
            .json(&body)
            .send()
            .await
            .unwrap();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let cors = resp.headers().get("access-control-allow-origin").cloned();
        let error = resp.json::<serde_json::Value>().await.unwrap()["error"].clone();
        answers.push((error, retry_after, cors.is_some()));
    }
    assert_eq!(answers[0].0, "invalid_grant");
    assert_eq!(answers[1].0, "invalid_grant");
    assert_eq!(answers[2].0, "rate_limited");
    assert_eq!(
        answers[2].1.as_deref(),
        Some("1"),
        "429 says when to come back"
    );
    assert!(answers[2].2, "the page can read the 429");
    assert_eq!(idp.token_hits(), 2);
    assert_eq!(
        proxy
            .metric(
                "portcullis_rate_limited_total",
                &[("endpoint", "token_api"), ("scope", "deployment")]
            )
            .await,
        Some(1.0)
    );
}
