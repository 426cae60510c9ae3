//! Cross-site WebSocket hijacking: an upgrade from any origin but a listed
//! one, spelled exactly as a browser serializes it, is refused 403 before
//! anything reaches the backend, with or without a valid credential.

use jsonwebtoken::Algorithm;

use crate::common::{refused_json, refused_status, ws_connect};
use crate::fixture::{Env, LOCAL_ORIGIN, ORIGIN};

#[tokio::test]
async fn upgrades_from_other_origins_are_refused() {
    let mut env = Env::start().await;
    let token = env.idp.mint_access_token("alice", Algorithm::RS256);
    env.secrets
        .push(token.rsplit('.').next().unwrap().to_string());
    let bearer = format!("Bearer {token}");
    let support = env.proxy.ws_url("/v1/chat?deploymentId=support");
    let open = env.proxy.ws_url("/v1/chat?deploymentId=open");

    // Controls: the listed origins open both deployments. Origins compare
    // ASCII case-insensitively (a browser serializes them in lower case, so
    // an upper-case host is the same origin, from a non-browser client).
    for origin in [ORIGIN, LOCAL_ORIGIN, "https://WWW.EXAMPLE.COM"] {
        for (url, auth) in [(&support, Some(bearer.as_str())), (&open, None)] {
            let mut headers = vec![("Origin", origin)];
            headers.extend(auth.map(|a| ("Authorization", a)));
            let before = env.received.total();
            match ws_connect(url, &headers).await {
                Ok((ws, _)) if env.received.total() > before => drop(ws),
                other => env.fail(
                    &format!("control {origin} {url}"),
                    format!("{:?}", other.err()),
                ),
            }
        }
    }

    let refused: Vec<(&str, Vec<&str>, &str)> = vec![
        ("Origin: null", vec!["null"], "origin_not_allowed"),
        (
            "a suffix look-alike",
            vec!["https://www.example.com.evil.example"],
            "origin_not_allowed",
        ),
        (
            "a dash look-alike",
            vec!["https://www-example.com"],
            "origin_not_allowed",
        ),
        (
            "a run-together look-alike",
            vec!["https://wwwexample.com"],
            "origin_not_allowed",
        ),
        (
            "a prefix look-alike",
            vec!["https://evilwww.example.com"],
            "origin_not_allowed",
        ),
        (
            "a subdomain",
            vec!["https://sub.www.example.com"],
            "origin_not_allowed",
        ),
        (
            "the parent domain",
            vec!["https://example.com"],
            "origin_not_allowed",
        ),
        (
            "another port",
            vec!["https://www.example.com:8443"],
            "origin_not_allowed",
        ),
        (
            "the default port spelled out",
            vec!["https://www.example.com:443"],
            "origin_not_allowed",
        ),
        (
            "a local origin on another port",
            vec!["http://localhost:8081"],
            "origin_not_allowed",
        ),
        (
            "a local origin without its port",
            vec!["http://localhost"],
            "origin_not_allowed",
        ),
        (
            "http for https",
            vec!["http://www.example.com"],
            "origin_not_allowed",
        ),
        (
            "https for http",
            vec!["https://localhost:8080"],
            "origin_not_allowed",
        ),
        (
            "wss for https",
            vec!["wss://www.example.com"],
            "origin_not_allowed",
        ),
        (
            "a trailing dot",
            vec!["https://www.example.com."],
            "origin_not_allowed",
        ),
        (
            "a trailing slash",
            vec!["https://www.example.com/"],
            "origin_not_allowed",
        ),
        (
            "userinfo",
            vec!["https://user@www.example.com"],
            "origin_not_allowed",
        ),
        (
            "punycode look-alike",
            vec!["https://www.xn--exmple-4nf.com"],
            "origin_not_allowed",
        ),
        ("an empty Origin", vec![""], "origin_not_allowed"),
        (
            "duplicated, both allowed",
            vec![ORIGIN, ORIGIN],
            "origin_not_allowed",
        ),
        (
            "duplicated, allowed first",
            vec![ORIGIN, "https://evil.example"],
            "origin_not_allowed",
        ),
        (
            "duplicated, allowed second",
            vec!["https://evil.example", ORIGIN],
            "origin_not_allowed",
        ),
        ("no Origin", vec![], "origin_required"),
    ];
    for (case, origins, reason) in &refused {
        for (url, auth) in [(&support, Some(bearer.as_str())), (&open, None)] {
            let case = format!("{case} ({url})");
            let mut headers: Vec<(&str, &str)> = origins.iter().map(|o| ("Origin", *o)).collect();
            headers.extend(auth.map(|a| ("Authorization", a)));
            let before = env.received.total();
            let result = ws_connect(url, &headers).await;
            match &result {
                Err(tokio_tungstenite::tungstenite::Error::Http(_)) => {
                    let status = refused_status(&result);
                    let body = refused_json(&result);
                    env.expect_refusal(
                        &case,
                        before,
                        (status, &body.to_string()),
                        (403, *reason, *reason),
                    );
                }
                other => env.fail(&case, format!("not refused: {:?}", other.as_ref().err())),
            }
        }
    }
    env.finish("CSWSH origins").await;
}
