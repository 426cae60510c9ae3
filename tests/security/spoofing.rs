//! Identity-header spoofing: whatever `X-Auth-*` a client sends, in any
//! well-formed spelling (any case, `_` for `-`, repeated, forged assertion),
//! the backend sees only portcullis's own values; the malformed spellings
//! (obs-fold, whitespace before the colon) are refused 400 before it.

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::fixture::{get, raw, Env};

const SUPPORT: &str = "/v1/x?deploymentId=support";
const OPEN: &str = "/v1/x?deploymentId=open";

/// Every header the backend got whose name, `_` read as `-`, starts with
/// `x-auth-`.
fn identity_headers(echo: &Value) -> Vec<(String, Value)> {
    echo["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter(|(k, _)| {
                    k.replace('_', "-")
                        .to_ascii_lowercase()
                        .starts_with("x-auth-")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The payload of a JWT, unverified.
fn jwt_payload(token: &str) -> Value {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// What the backend must have seen: for `support`, alice and portcullis's
/// own assertion; for `open`, the deployment alone.
fn check_backend_view(env: &mut Env, case: &str, echo: &Value, authenticated: bool) {
    let seen = identity_headers(echo);
    let get = |name: &str| seen.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if authenticated {
        if get("x-auth-subject") != Some(json!(["alice"])) {
            env.fail(case, format!("the backend saw {seen:?}"));
        }
        let assertion = get("x-auth-assertion")
            .and_then(|v| v[0].as_str().map(str::to_string))
            .unwrap_or_default();
        let claims = jwt_payload(&assertion);
        if claims["sub"] != "alice"
            || get("x-auth-assertion").is_some_and(|v| v.as_array().unwrap().len() != 1)
        {
            env.fail(case, format!("the backend's assertion: {seen:?}"));
        }
        env.secrets
            .push(assertion.rsplit('.').next().unwrap_or_default().to_string());
    } else if seen != vec![("x-auth-deployment".to_string(), json!(["open"]))] {
        env.fail(case, format!("the backend saw {seen:?}"));
    }
    for (name, values) in &seen {
        if values.to_string().contains("admin") || values.to_string().contains("forged") {
            env.fail(
                case,
                format!("a spoofed value reached the backend: {name}: {values}"),
            );
        }
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_backend() {
    let mut env = Env::start().await;
    let token = env.idp.mint_access_token("alice", Algorithm::ES256);
    env.secrets
        .push(token.rsplit('.').next().unwrap().to_string());
    let bearer = format!("Bearer {token}");
    let forged_assertion = {
        let (input, _) = token.rsplit_once('.').unwrap();
        format!("{input}.forged-signature-forged-signature")
    };

    // Well-formed spellings, through an ordinary client.
    let spoofs: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("X-Auth-Subject", vec![("X-Auth-Subject", "admin")]),
        ("lower case", vec![("x-auth-subject", "admin")]),
        ("upper case", vec![("X-AUTH-SUBJECT", "admin")]),
        ("underscores", vec![("X_Auth_Subject", "admin")]),
        ("mixed _ and -", vec![("x_Auth-Subject", "admin")]),
        (
            "twice",
            vec![("X-Auth-Subject", "admin"), ("X-Auth-Subject", "root")],
        ),
        (
            "beside its underscore twin",
            vec![("X-Auth-Subject", "admin"), ("X_AUTH_SUBJECT", "admin")],
        ),
        (
            "X-Auth-Assertion forged",
            vec![("X-Auth-Assertion", forged_assertion.as_str())],
        ),
        (
            "X_Auth_Assertion forged",
            vec![("X_Auth_Assertion", forged_assertion.as_str())],
        ),
        ("X-Auth-Groups", vec![("X-Auth-Groups", "admin,staff")]),
        ("X-Auth-Email", vec![("X-Auth-Email", "admin@example.com")]),
        ("X-Auth-Deployment", vec![("X-Auth-Deployment", "admin")]),
        ("an invented X-Auth- header", vec![("X-Auth-Role", "admin")]),
    ];
    for (case, headers) in &spoofs {
        for (path, authenticated) in [(SUPPORT, true), (OPEN, false)] {
            let case = format!("{case} ({path})");
            let mut all = headers.clone();
            if authenticated {
                all.push(("Authorization", bearer.as_str()));
            }
            let (status, body) = get(&env.proxy, path, &all).await;
            match serde_json::from_str::<Value>(&body) {
                Ok(echo) if status == 200 => {
                    check_backend_view(&mut env, &case, &echo, authenticated)
                }
                _ => env.fail(&case, format!("{status} {body}")),
            }
        }
    }

    // Malformed spellings, written raw: refused with 400 by Pingora's HTTP
    // parser (obs-fold, whitespace before the colon), nothing upstream.
    let addr = env.proxy.addr;
    let raw_spoofs = [
        (
            "obs-fold continuation",
            "X-Auth-Subject: alice\r\n admin\r\n",
        ),
        (
            "obs-fold with a tab",
            "X-Auth-Subject: alice\r\n\tadmin\r\n",
        ),
        ("a space before the colon", "X-Auth-Subject : admin\r\n"),
        ("a tab before the colon", "X-Auth-Subject\t: admin\r\n"),
        (
            "a folded line after another header",
            "X-Other: x\r\n X-Auth-Subject: admin\r\n",
        ),
    ];
    for (case, spoof) in raw_spoofs {
        for (path, authenticated) in [(SUPPORT, true), (OPEN, false)] {
            let case = format!("{case} ({path})");
            let auth = if authenticated {
                format!("Authorization: {bearer}\r\n")
            } else {
                String::new()
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{spoof}Connection: close\r\n\r\n"
            );
            let before = env.received.total();
            let answer = raw(addr, request.as_bytes()).await;
            if answer.status != Some(400) {
                env.fail(&case, format!("not refused: {}", answer.text));
            }
            env.expect_untouched(&case, before);
        }
    }
    env.finish("identity-header spoofing").await;
}
