//! The development OpenID provider, over real HTTP on loopback: discovery,
//! keys and rotation, test controls, and the code flow with PKCE from the
//! first redirect to logout. Every provider binds 127.0.0.1:0 and stops
//! when its handle is dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use portcullis::devidp::{self, DevIdp, DevIdpOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

const CLIENT_ID: &str = "portcullis-demo";
const CLIENT_SECRET: &str = "demo-secret";
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

async fn start_with(options: DevIdpOptions) -> DevIdp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    devidp::start(listener, options).await.unwrap()
}

async fn start() -> DevIdp {
    start_with(DevIdpOptions::default()).await
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Verifies `token` against the provider's published JWKS, fetched over
/// HTTP as a relying party would.
async fn verify(idp: &DevIdp, token: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let (_, jwks) = get_json(&format!("{}/jwks", idp.issuer())).await;
    let kid = header.kid.clone().expect("a kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not published"));
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[idp.issuer()]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify: {e}"))
        .claims
}

fn pkce_pair() -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

fn query_of(location: &str) -> HashMap<String, String> {
    Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

/// The authorization request of a well-behaved client.
fn authorize_url(idp: &DevIdp, challenge: &str, scope: &str, extra: &[(&str, &str)]) -> String {
    let mut url = Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("state", "st-123")
        .append_pair("nonce", "n-456")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(extra);
    url.into()
}

/// The request id hidden in the login form.
fn request_id(form: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = form.find(marker).expect("the login form") + marker.len();
    let end = start + form[start..].find('"').unwrap();
    form[start..end].to_string()
}

/// Runs /authorize and the login form as `user`; returns the redirect's
/// query parameters.
async fn authorize_as(
    idp: &DevIdp,
    user: &str,
    challenge: &str,
    scope: &str,
) -> HashMap<String, String> {
    let http = client();
    let page = http
        .get(authorize_url(idp, challenge, scope, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let form = page.text().await.unwrap();
    assert!(
        form.contains("NOT FOR PRODUCTION"),
        "the development banner"
    );
    for listed in ["alice", "bob", "carol"] {
        assert!(
            form.contains(&format!("value=\"{listed}\"")),
            "{listed} is listed"
        );
    }
    let response = http
        .post(format!("{}/authorize/login", idp.issuer()))
        .form(&[("request", request_id(&form).as_str()), ("user", user)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let target = location(&response);
    assert!(target.starts_with(REDIRECT_URI), "{target}");
    query_of(&target)
}

/// A code for `user`, with its PKCE verifier.
async fn code_for(idp: &DevIdp, user: &str, scope: &str) -> (String, String) {
    let (verifier, challenge) = pkce_pair();
    let query = authorize_as(idp, user, &challenge, scope).await;
    (query["code"].clone(), verifier)
}

/// `POST /token` with client_secret_basic.
async fn token_basic(idp: &DevIdp, secret: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{}/token", idp.issuer()))
        .basic_auth(CLIENT_ID, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn redeem(idp: &DevIdp, code: &str, verifier: &str) -> (StatusCode, Value) {
    token_basic(
        idp,
        CLIENT_SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
        ],
    )
    .await
}

#[tokio::test]
async fn discovery_document_describes_the_provider() {
    let idp = start().await;
    let issuer = idp.issuer().to_string();
    assert_eq!(issuer, format!("http://{}", idp.addr()));
    let (status, doc) = get_json(&format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], issuer);
    for (field, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("userinfo_endpoint", "/userinfo"),
        ("end_session_endpoint", "/end_session"),
    ] {
        assert_eq!(doc[field], format!("{issuer}{path}"), "{field}");
    }
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    for list in [
        "grant_types_supported",
        "scopes_supported",
        "claims_supported",
    ] {
        assert!(
            doc[list].as_array().is_some_and(|l| !l.is_empty()),
            "{list}"
        );
    }
    assert_eq!(idp.discovery_hits(), 1);
}

#[tokio::test]
async fn jwks_publishes_one_rsa_and_one_ec_key_and_counts_hits() {
    let idp = start().await;
    let url = format!("{}/jwks", idp.issuer());
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "max-age=300");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let (rsa_kid, ec_kid) = idp.current_kids();
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
    assert_eq!(
        (rsa["kid"].as_str(), rsa["alg"].as_str()),
        (Some(rsa_kid.as_str()), Some("RS256"))
    );
    assert_eq!(rsa["use"], "sig");
    assert!(rsa["n"].is_string() && rsa["e"] == "AQAB");
    let ec = keys.iter().find(|k| k["kty"] == "EC").unwrap();
    assert_eq!(
        (ec["kid"].as_str(), ec["alg"].as_str()),
        (Some(ec_kid.as_str()), Some("ES256"))
    );
    assert_eq!(
        (ec["crv"].as_str(), ec["use"].as_str()),
        (Some("P-256"), Some("sig"))
    );
    assert!(ec["x"].is_string() && ec["y"].is_string());
    assert_eq!(idp.public_jwk(&rsa_kid).as_ref(), Some(rsa));

    idp.set_jwks_cache_control(Some("no-store".into()));
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    idp.set_jwks_cache_control(None);
    let response = client().get(&url).send().await.unwrap();
    assert!(response.headers().get("cache-control").is_none());
    assert_eq!(idp.jwks_hits(), 3);
    assert_eq!(idp.discovery_hits(), 0);
}

#[tokio::test]
async fn minted_tokens_verify_against_the_published_keys() {
    let idp = start().await;
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let access = idp.mint_access_token("alice", alg);
        assert_eq!(jsonwebtoken::decode_header(&access).unwrap().alg, alg);
        let claims = verify(&idp, &access, "api://messaging").await;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["name"], "Alice Example");
        assert_eq!(claims["groups"], json!(["customers"]));
        assert_eq!(claims["client_id"], CLIENT_ID);
        assert!(claims["scope"].as_str().unwrap().contains("openid"));
        let now = idp.now();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > now && exp <= now + 300 + 1);

        let id = idp.mint_id_token("bob", alg, Some("nonce-1"));
        let claims = verify(&idp, &id, CLIENT_ID).await;
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["azp"], CLIENT_ID);
        assert_eq!(claims["nonce"], "nonce-1");
        assert_eq!(claims["email_verified"], false);
        assert_eq!(claims["groups"], json!([]));
        assert!(claims["auth_time"].is_u64());
    }
    let id = idp.mint_id_token("carol", Algorithm::RS256, None);
    let claims = verify(&idp, &id, CLIENT_ID).await;
    assert!(claims.get("nonce").is_none());
    assert_eq!(claims["groups"], json!(["customers", "staff"]));
}

#[tokio::test]
async fn sign_accepts_arbitrary_claims_and_headers() {
    let idp = start().await;
    let (rsa_kid, ec_kid) = idp.current_kids();
    let claims = json!({"iss": "https://evil.example", "sub": "mallory", "exp": 1});
    let token = idp.sign(Header::new(Algorithm::ES256), &claims);
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid,
        Some(ec_kid)
    );
    // A genuine signature with an algorithm the provider does not publish.
    let token = idp.sign(Header::new(Algorithm::PS256), &claims);
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid,
        Some(rsa_kid)
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("unknown-kid".into());
    let token = idp.sign(header, &claims);
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
        Some("unknown-kid")
    );
    let payload = token.split('.').nth(1).unwrap();
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(decoded, claims);
}

#[tokio::test]
async fn rotation_keeps_old_keys_published_until_retired() {
    let idp = start().await;
    let (old_rsa, old_ec) = idp.current_kids();
    let old_token = idp.mint_access_token("alice", Algorithm::RS256);
    let (new_rsa, new_ec) = idp.rotate_keys();
    assert_ne!(new_rsa, old_rsa);
    assert_ne!(new_ec, old_ec);
    assert_eq!(idp.current_kids(), (new_rsa.clone(), new_ec.clone()));

    let (_, jwks) = get_json(&format!("{}/jwks", idp.issuer())).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids.len(), 4);
    for kid in [&old_rsa, &old_ec, &new_rsa, &new_ec] {
        assert!(kids.contains(&kid.as_str()), "{kid} published");
    }
    let new_token = idp.mint_access_token("alice", Algorithm::ES256);
    assert_eq!(
        jsonwebtoken::decode_header(&new_token).unwrap().kid,
        Some(new_ec)
    );
    verify(&idp, &new_token, "api://messaging").await;
    verify(&idp, &old_token, "api://messaging").await;

    idp.retire_old_keys();
    let (_, jwks) = get_json(&format!("{}/jwks", idp.issuer())).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(idp.public_jwk(&old_rsa).is_none());
    assert!(idp.public_jwk(&new_rsa).is_some());
}

#[tokio::test]
async fn down_provider_answers_503_everywhere() {
    let idp = start().await;
    idp.set_down(true);
    let http = client();
    for path in [
        "/.well-known/openid-configuration",
        "/jwks",
        "/authorize",
        "/userinfo",
    ] {
        let response = http
            .get(format!("{}{path}", idp.issuer()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    let response = http
        .post(format!("{}/token", idp.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Attempts count even while down.
    assert_eq!(
        (idp.jwks_hits(), idp.discovery_hits(), idp.token_hits()),
        (1, 1, 1)
    );

    idp.set_down(false);
    let (status, _) = get_json(&format!("{}/jwks", idp.issuer())).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn delay_slows_every_response() {
    let idp = start().await;
    let url = format!("{}/jwks", idp.issuer());
    idp.set_delay(Duration::from_millis(600));
    let started = Instant::now();
    let (status, _) = get_json(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(600));

    idp.set_delay(Duration::ZERO);
    let started = Instant::now();
    get_json(&url).await;
    assert!(started.elapsed() < Duration::from_millis(600));
}

#[tokio::test]
async fn code_flow_with_pkce_issues_verifiable_tokens() {
    let idp = start().await;
    let (verifier, challenge) = pkce_pair();
    let query = authorize_as(&idp, "alice", &challenge, "openid email profile").await;
    assert_eq!(query["state"], "st-123");
    assert_eq!(query["iss"], idp.issuer());
    let code = &query["code"];

    let (status, tokens) = redeem(&idp, code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    assert!(
        tokens.get("refresh_token").is_none(),
        "no offline_access, no refresh token"
    );
    let id = verify(&idp, tokens["id_token"].as_str().unwrap(), CLIENT_ID).await;
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], "n-456");
    assert!(id["at_hash"].is_string());
    let access = verify(
        &idp,
        tokens["access_token"].as_str().unwrap(),
        "api://messaging",
    )
    .await;
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["scope"], "openid email profile");
    assert_eq!(idp.token_hits(), 1);

    // The access token opens userinfo.
    let response = client()
        .get(format!("{}/userinfo", idp.issuer()))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["email"], "alice@example.com");

    // A code is good once.
    let (status, error) = redeem(&idp, code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "invalid_grant");
    assert!(error["error_description"].is_string());
}

#[tokio::test]
async fn code_flow_with_es256_signing() {
    let idp = start().await;
    idp.set_signing_alg(Algorithm::ES256);
    let (code, verifier) = code_for(&idp, "carol", "openid").await;
    let (status, tokens) = redeem(&idp, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK);
    let id_token = tokens["id_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(id_token).unwrap().alg,
        Algorithm::ES256
    );
    verify(&idp, id_token, CLIENT_ID).await;
}

#[tokio::test]
async fn wrong_verifier_redirect_uri_or_secret_are_refused() {
    let idp = start().await;
    let (code, _) = code_for(&idp, "alice", "openid").await;
    let (wrong_verifier, _) = pkce_pair();
    let (status, error) = redeem(&idp, &code, &wrong_verifier).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (code, verifier) = code_for(&idp, "alice", "openid").await;
    let (status, error) = token_basic(
        &idp,
        CLIENT_SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (code, verifier) = code_for(&idp, "alice", "openid").await;
    let (status, error) = token_basic(
        &idp,
        "not-the-secret",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    // No client authentication at all, and a grant nobody supports.
    let response = client()
        .post(format!("{}/token", idp.issuer()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, error) = token_basic(&idp, CLIENT_SECRET, &[("grant_type", "password")]).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn client_secret_post_works() {
    let idp = start().await;
    let (code, verifier) = code_for(&idp, "bob", "openid email").await;
    let response = client()
        .post(format!("{}/token", idp.issuer()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    let id = verify(&idp, tokens["id_token"].as_str().unwrap(), CLIENT_ID).await;
    assert_eq!(id["sub"], "bob");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_replay_revokes_the_family() {
    let idp = start().await;
    let (code, verifier) = code_for(&idp, "alice", "openid email offline_access").await;
    let (_, tokens) = redeem(&idp, &code, &verifier).await;
    let first = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();

    let refresh = |token: String| {
        let idp = idp.clone();
        async move {
            token_basic(
                &idp,
                CLIENT_SECRET,
                &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            )
            .await
        }
    };
    let (status, renewed) = refresh(first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let second = renewed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let id = verify(&idp, renewed["id_token"].as_str().unwrap(), CLIENT_ID).await;
    assert_eq!(id["sub"], "alice");
    assert!(
        id.get("nonce").is_none(),
        "a refreshed ID token carries no nonce"
    );
    verify(
        &idp,
        renewed["access_token"].as_str().unwrap(),
        "api://messaging",
    )
    .await;

    // The rotated-out token is refused, and its replay revokes the family.
    let (status, error) = refresh(first).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, error) = refresh(second).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Revocation through the Rust API.
    let (code, verifier) = code_for(&idp, "alice", "openid offline_access").await;
    let (_, tokens) = redeem(&idp, &code, &verifier).await;
    assert_eq!(idp.revoke_refresh_tokens("alice"), 1);
    let (status, _) = refresh(tokens["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn client_credentials_token_is_about_the_client() {
    let idp = start().await;
    let (status, tokens) = token_basic(
        &idp,
        CLIENT_SECRET,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "messages.read"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(tokens.get("id_token").is_none() && tokens.get("refresh_token").is_none());
    let claims = verify(
        &idp,
        tokens["access_token"].as_str().unwrap(),
        "api://messaging",
    )
    .await;
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["scope"], "messages.read");
    assert!(claims.get("email").is_none());
}

#[tokio::test]
async fn authorization_errors_go_back_to_the_client_when_safe() {
    let idp = start().await;
    let http = client();
    let (_, challenge) = pkce_pair();

    let response = http
        .get(authorize_url(
            &idp,
            &challenge,
            "openid",
            &[("prompt", "none")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let query = query_of(&location(&response));
    assert_eq!(query["error"], "login_required");
    assert_eq!(query["state"], "st-123");
    assert_eq!(query["iss"], idp.issuer());

    let mut url = Url::parse(&authorize_url(&idp, &challenge, "openid", &[])).unwrap();
    let without_pkce: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(without_pkce);
    let response = http.get(url.as_str()).send().await.unwrap();
    assert_eq!(query_of(&location(&response))["error"], "invalid_request");

    // An unknown redirect URI is never redirected to.
    let mut url = Url::parse(&authorize_url(&idp, &challenge, "openid", &[])).unwrap();
    let elsewhere: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| match k.as_ref() {
            "redirect_uri" => (k.into_owned(), "https://evil.example/cb".to_string()),
            _ => (k.into_owned(), v.into_owned()),
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(elsewhere);
    let response = http.get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());

    // Cancel at the login form.
    let form = http
        .get(authorize_url(&idp, &challenge, "openid", &[]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = http
        .post(format!("{}/authorize/login", idp.issuer()))
        .form(&[("request", request_id(&form).as_str()), ("cancel", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(query_of(&location(&response))["error"], "access_denied");
    // The request is gone with the cancel.
    let response = http
        .post(format!("{}/authorize/login", idp.issuer()))
        .form(&[("request", request_id(&form).as_str()), ("user", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn configured_redirect_uris_are_matched_exactly() {
    let idp = start_with(DevIdpOptions {
        redirect_uris: vec![REDIRECT_URI.to_string()],
        ..DevIdpOptions::default()
    })
    .await;
    let (_, challenge) = pkce_pair();
    let response = client()
        .get(authorize_url(&idp, &challenge, "openid", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut url = Url::parse(&authorize_url(&idp, &challenge, "openid", &[])).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| match k.as_ref() {
            "redirect_uri" => (k.into_owned(), "http://127.0.0.1:9/other".to_string()),
            _ => (k.into_owned(), v.into_owned()),
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let response = client().get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn userinfo_refuses_what_is_not_an_access_token() {
    let idp = start().await;
    let url = format!("{}/userinfo", idp.issuer());
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    // An ID token has the wrong audience.
    let id_token = idp.mint_id_token("alice", Algorithm::RS256, None);
    let response = client()
        .get(&url)
        .bearer_auth(id_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client()
        .get(&url)
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let token = idp.mint_access_token("carol", Algorithm::ES256);
    let (status, info) = {
        let response = client().get(&url).bearer_auth(token).send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["groups"], json!(["customers", "staff"]));
}

#[tokio::test]
async fn end_session_redirects_to_the_post_logout_uri() {
    let idp = start().await;
    let hint = idp.mint_id_token("alice", Algorithm::RS256, None);
    let mut url = Url::parse(&format!("{}/end_session", idp.issuer())).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", &hint)
        .append_pair("post_logout_redirect_uri", "http://127.0.0.1:9/bye")
        .append_pair("state", "s-1");
    let response = client().get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(location(&response), "http://127.0.0.1:9/bye?state=s-1");

    let response = client()
        .get(format!("{}/end_session", idp.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("logged out"));

    let response = client()
        .get(format!(
            "{}/end_session?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
            idp.issuer()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let idp = start().await;
    let addr = idp.addr();
    let clone = idp.clone();
    drop(idp);
    // A clone keeps it running.
    let (status, _) = get_json(&format!("http://{addr}/jwks")).await;
    assert_eq!(status, StatusCode::OK);
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn malformed_requests_get_errors_not_panics() {
    let idp = start().await;
    let issuer = idp.issuer().to_string();
    let http = client();
    let token_url = format!("{issuer}/token");

    let response = http
        .post(&token_url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .post(&token_url)
        .header("authorization", "Basic %%%not-base64")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = http
        .post(&token_url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, error) = token_basic(
        &idp,
        CLIENT_SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", "never-issued"),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &"v".repeat(43)),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let response = http
        .get(format!("{issuer}/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .post(format!("{issuer}/authorize/login"))
        .body("\u{0}\u{ff}garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .get(format!("{issuer}/end_session?id_token_hint=a.b.c"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .get(format!("{issuer}/userinfo"))
        .header("authorization", "Bearer a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = http.get(format!("{issuer}/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
