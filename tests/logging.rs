//! At the most verbose setting (`RUST_LOG=trace`), no log line carries a
//! credential: a browser login, a chat with its session cookie and signed
//! assertion, a provider bearer token, a token-API exchange, refresh and
//! revoke all run against a real portcullis, then its whole log is searched
//! for every secret the test saw. Pingora's own targets stay capped at
//! `info` (at `debug` it prints whole request heads) unless the filter
//! names them.

mod common;

use common::browser::*;
use common::*;
use portcullis::devidp::DevIdpOptions;

const SITE: &str = "http://127.0.0.1:7001";
const CALLBACK: &str = "http://127.0.0.1:7001/chat/callback";

/// The signature segment of a JWT: what makes it a credential (its header
/// and payload are not secret).
fn signature(jwt: &str) -> &str {
    jwt.rsplit('.').next().unwrap()
}

#[tokio::test]
async fn the_most_verbose_log_carries_no_token_cookie_code_assertion_or_secret() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}
    scopes: [openid, email, profile, offline_access]
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
    assertion: true
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["http://{{PROXY}}", "{SITE}"], redirect_uris: ["{CALLBACK}"]}}
routes: [{{path_prefix: /v1}}]
sessions:
  keys: {{cookie_key: {{env: COOKIE_KEY}}}}
"#,
        preamble = config_with_dev_provider(&idp),
    );
    let cookie_key = "Y29va2llLWtleS1mb3ItdGhlLWxvZ2dpbmctdGVzdC0zMmJ5dGVz";
    let proxy = Proxy::start_with_env(
        &config,
        &[
            ("DEV_SECRET", "demo-secret"),
            ("COOKIE_KEY", cookie_key),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let mut secrets: Vec<(String, &str)> = vec![
        ("demo-secret".into(), "client secret"),
        (cookie_key.into(), "cookie key"),
    ];

    // A browser login and a chat with its cookie.
    let (cookie, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    secrets.push((
        cookie[cookie.find('=').unwrap() + 1..].to_string(),
        "session cookie",
    ));
    let origin = format!("http://{}", proxy.addr);
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=support"),
        &[("Origin", &origin), ("Cookie", &cookie)],
    )
    .await
    .unwrap();
    let welcome = next_json(&mut ws).await;
    let assertion = welcome["identity"]["x-auth-assertion"].as_str().unwrap();
    secrets.push((signature(assertion).into(), "assertion"));
    echo(&mut ws, "hello").await;

    // A provider access token as a bearer credential.
    let access = idp.mint_access_token("alice", jsonwebtoken::Algorithm::RS256);
    secrets.push((signature(&access).into(), "access token"));
    let resp = reqwest::Client::new()
        .get(proxy.url("/v1/x?deploymentId=support"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The token API: exchange, refresh, revoke.
    let code = site_login(&idp, CALLBACK, "alice").await;
    secrets.push((code.code.clone(), "authorization code"));
    secrets.push((code.verifier.clone(), "code verifier"));
    let client = reqwest::Client::new();
    let exchanged: serde_json::Value = client
        .post(proxy.url("/.auth/token"))
        .header("origin", SITE)
        .json(&serde_json::json!({
            "deploymentId": "support",
            "oauth": {"code": code.code, "redirectUri": code.redirect_uri,
                      "codeVerifier": code.verifier, "nonce": code.nonce, "iss": code.iss},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = exchanged["jwt"].as_str().expect("an exchange").to_string();
    let refresh = exchanged["refreshToken"].as_str().unwrap().to_string();
    secrets.push((signature(&jwt).into(), "messenger token"));
    secrets.push((refresh.clone(), "refresh token"));
    let refreshed: serde_json::Value = client
        .post(proxy.url("/.auth/token/refresh"))
        .header("origin", SITE)
        .json(&serde_json::json!({"deploymentId": "support", "refreshToken": refresh}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = refreshed["refreshToken"]
        .as_str()
        .expect("a refresh")
        .to_string();
    secrets.push((next.clone(), "rotated refresh token"));
    secrets.push((
        signature(refreshed["jwt"].as_str().unwrap()).into(),
        "refreshed messenger token",
    ));
    let revoked = client
        .delete(proxy.url("/.auth/token"))
        .header("origin", SITE)
        .bearer_auth(refreshed["jwt"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let out = no_redirects()
        .post(proxy.url("/.auth/logout"))
        .header("origin", &origin)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    closed_with(&mut ws, CLOSE_DEADLINE).await;

    let log = proxy.log_text();
    // The filter really was trace: portcullis's and its libraries' most
    // verbose lines are there ...
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |level: &str| lines.iter().filter(|l| l["level"] == level).count();
    assert!(
        at("TRACE") + at("DEBUG") > 0,
        "no debug or trace line at RUST_LOG=trace"
    );
    // ... but none of Pingora's below info.
    let pingora_debug = lines.iter().find(|l| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("pingora"))
            && (l["level"] == "DEBUG" || l["level"] == "TRACE")
    });
    assert!(pingora_debug.is_none(), "{pingora_debug:?}");
    for (secret, what) in &secrets {
        assert!(
            secret.len() >= 8,
            "test bug: {what} too short to search for"
        );
        assert!(!log.contains(secret.as_str()), "the log carries the {what}");
    }
}
