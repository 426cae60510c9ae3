//! `admit` decides every request's fate from the runtime and the header
//! alone; these tests walk its decision table.

use std::path::Path;

use pingora::http::RequestHeader;

use super::*;
use crate::config;

const CONFIG: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
providers:
  idp: {issuer: "https://idp.example.com", client_id: portcullis}
messengers:
  open: {authentication: {enabled: false}}
  secured: {authentication: {enabled: true, provider: idp}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: open-web, messenger: open, upstream: chat, allowed_origins: ["https://www.example.com"]}
  - {id: open-app, messenger: open, upstream: chat, allowed_origins: ["https://www.example.com"], allow_missing_origin: true}
  - {id: paused, messenger: open, upstream: chat, status: inactive, allowed_origins: ["https://www.example.com"]}
  - {id: secure, messenger: secured, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /v1}
"#;

fn runtime() -> Runtime {
    runtime_of(CONFIG)
}

fn runtime_of(text: &str) -> Runtime {
    let cfg = config::parse(text, Path::new("."), &|_: &str| None).unwrap();
    Runtime::build(
        cfg,
        None,
        &std::sync::Arc::new(crate::metrics::Metrics::new()),
    )
    .unwrap()
}

fn request(target: &str, origin: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
    if let Some(o) = origin {
        req.append_header("Origin", o).unwrap();
    }
    req
}

fn decide(target: &str, origin: Option<&str>, upgrade: bool) -> Result<String, Refusal> {
    admit(&runtime(), &request(target, origin), upgrade).map(|t| t.deployment.config.id.clone())
}

const WEB: Option<&str> = Some("https://www.example.com");

#[test]
fn an_allowed_origin_on_an_open_deployment_passes() {
    assert_eq!(
        decide("/v1/chat?deploymentId=open-web", WEB, true),
        Ok("open-web".into())
    );
    assert_eq!(
        decide("/v1/chat?deploymentId=open-web", WEB, false),
        Ok("open-web".into())
    );
}

#[test]
fn refusals_come_in_order_unknown_inactive_origin_auth() {
    // `paused` has an origin list that refuses evil.example: only the
    // inactive check, made first, gives `DeploymentInactive`.
    assert_eq!(
        decide("/v1?deploymentId=ghost", Some("https://evil.example"), true),
        Err(Refusal::UnknownDeployment)
    );
    assert_eq!(
        decide(
            "/v1?deploymentId=paused",
            Some("https://evil.example"),
            true
        ),
        Err(Refusal::DeploymentInactive)
    );
    assert_eq!(
        decide(
            "/v1?deploymentId=open-web",
            Some("https://evil.example"),
            true
        ),
        Err(Refusal::OriginNotAllowed)
    );
    // Admission says nothing about credentials: `authenticate` does.
    assert_eq!(
        decide("/v1?deploymentId=secure", WEB, true),
        Ok("secure".into())
    );
}

#[test]
fn upgrades_need_an_origin_unless_the_deployment_allows_none() {
    assert_eq!(
        decide("/v1?deploymentId=open-web", None, true),
        Err(Refusal::OriginMissing)
    );
    assert_eq!(
        decide("/v1?deploymentId=open-app", None, true),
        Ok("open-app".into())
    );
    assert_eq!(
        decide("/v1?deploymentId=open-web", None, false),
        Ok("open-web".into())
    );
}

#[test]
fn two_origin_headers_are_refused() {
    let mut req = request("/v1?deploymentId=open-web", WEB);
    req.append_header("Origin", "https://evil.example").unwrap();
    assert_eq!(
        admit(&runtime(), &req, true).err(),
        Some(Refusal::OriginNotAllowed)
    );
}

#[test]
fn the_auth_namespace_and_unrouted_paths_are_not_proxied() {
    assert_eq!(
        decide("/.auth/login?deploymentId=open-web", WEB, false),
        Err(Refusal::NoRoute)
    );
    assert_eq!(decide("/elsewhere", WEB, false), Err(Refusal::NoRoute));
    assert!(matches!(
        decide("/v1/../v1?deploymentId=open-web", WEB, false),
        Err(Refusal::BadTarget(_))
    ));
}

/// A route for every path: `/.auth/` stays portcullis's own because it is
/// reserved, not because no route happens to cover it.
const CATCH_ALL: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
messengers:
  open: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: everything, messenger: open, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /, deployment: everything}
"#;

#[test]
fn the_auth_namespace_is_reserved_even_under_a_catch_all_route() {
    let rt = runtime_of(CATCH_ALL);
    let decide = |target: &str| {
        admit(&rt, &request(target, WEB), false).map(|t| t.deployment.config.id.clone())
    };
    // The route covers everything else, so the refusals below are the reservation's.
    assert_eq!(decide("/x"), Ok("everything".into()));
    assert_eq!(decide("/.authx/y"), Ok("everything".into()));
    for reserved in ["/.auth/x", "/.auth", "/.auth/login?deployment=everything"] {
        let refusal = decide(reserved).unwrap_err();
        assert_eq!(refusal, Refusal::NoRoute, "{reserved}");
        assert_eq!(refusal.status(), 404, "{reserved}");
    }
}

#[test]
fn status_labels_are_a_bounded_set() {
    assert_eq!(status_label(101), "101");
    assert_eq!(status_label(418), "4xx");
    assert_eq!(status_label(599), "5xx");
    assert_eq!(status_label(0), "0");
    assert_eq!(status_label(999), "5xx");
}

#[test]
fn own_cookies_never_go_upstream_whatever_the_site_s_cookies_look_like() {
    let rt = runtime();
    let policy = &rt.cookie_policy;
    let session = &policy.session_name;
    let pending = format!("{}abcdefgh", policy.pending_prefix);
    let upstream_cookie = |values: &[&[u8]]| {
        let mut req = request("/v1/chat", None);
        for v in values {
            req.append_header(
                http::header::COOKIE,
                http::HeaderValue::from_bytes(v).unwrap(),
            )
            .unwrap();
        }
        strip_own_cookies(&mut req, policy).unwrap();
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    // A site cookie in raw UTF-8 (not valid header text for `to_str`).
    let with_raw = format!("{session}=SEALED; lang=fran\u{e7}ais; theme=dark");
    assert_eq!(
        upstream_cookie(&[with_raw.as_bytes()]),
        vec!["lang=fran\u{e7}ais; theme=dark".as_bytes().to_vec()]
    );
    // Over several headers, with a pending-login cookie and odd spacing.
    let first = format!(" a=1 ;{pending}=P; ");
    let second = format!("{session}=S;b=2; flag");
    assert_eq!(
        upstream_cookie(&[first.as_bytes(), second.as_bytes()]),
        vec![b"a=1; b=2; flag".to_vec()]
    );
    // A name that is ours up to bytes that are not UTF-8 is still ours.
    let mut odd = pending.as_bytes().to_vec();
    odd.extend_from_slice(b"\xff=P; a=1");
    assert_eq!(upstream_cookie(&[&odd]), vec![b"a=1".to_vec()]);
    // Only ours: no Cookie header at all.
    assert!(upstream_cookie(&[format!("{session}=S").as_bytes()]).is_empty());
    // None of ours: the header passes untouched.
    assert_eq!(upstream_cookie(&[b"x=1;y=2"]), vec![b"x=1;y=2".to_vec()]);
}

#[test]
fn the_session_cookie_is_found_next_to_a_site_cookie_that_is_not_text() {
    let mut req = request("/v1/chat", None);
    req.append_header(
        http::header::COOKIE,
        http::HeaderValue::from_bytes("lang=fran\u{e7}ais; portcullis=SEALED".as_bytes()).unwrap(),
    )
    .unwrap();
    let found: Vec<_> = crate::session::cookie::cookies(&req).collect();
    assert_eq!(
        found,
        vec![("lang", "fran\u{e7}ais"), ("portcullis", "SEALED")]
    );
}

#[test]
fn only_connections_without_a_credential_end_on_client_silence() {
    // Authenticated chats end with their credential (4001/4002), never by
    // Pingora's read timeout; anonymous ones after half an hour of silence.
    assert_eq!(client_silence_limit(true), None);
    assert_eq!(
        client_silence_limit(false),
        Some(std::time::Duration::from_secs(1800))
    );
}

#[test]
fn identity_headers_reach_the_wire_under_their_configured_names() {
    let runtime = runtime();
    let client = headers::ClientInfo {
        peer: Some("203.0.113.7".parse().unwrap()),
        tls: false,
    };
    let wire = |req: &RequestHeader| {
        let mut buf = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    };

    // Auth-disabled: the deployment, and nothing else of the identity.
    let mut open = request("/v1/chat?deploymentId=open-web", WEB);
    let target = admit(&runtime, &open, false).unwrap();
    let id = RequestId::assign(&open, false);
    prepare_upstream_request(&mut open, &runtime, Some(&target), None, &id, client, false).unwrap();
    let sent = wire(&open);
    assert!(sent.contains("X-Auth-Deployment: open-web\r\n"), "{sent}");
    assert!(!sent.contains("X-Auth-Subject"), "{sent}");

    // Authenticated: every identity header as configured, and the bearer
    // token gone.
    let mut secure = request("/v1/chat?deploymentId=secure", None);
    secure
        .append_header("Authorization", "Bearer aaa.bbb.ccc")
        .unwrap();
    secure.append_header("x-auth-subject", "spoofed").unwrap();
    secure
        .append_header("X-Forwarded-For", "198.51.100.1")
        .unwrap();
    // Read as X-Real-IP and X-Request-Id by a backend that takes `_` for `-`.
    secure.append_header("X_Real_IP", "198.51.100.66").unwrap();
    secure
        .append_header("x_request_id", "198.51.100.66")
        .unwrap();
    let target = admit(&runtime, &secure, false).unwrap();
    let claims: crate::token::Claims = serde_json::from_value(serde_json::json!({
        "iss": "https://idp.example.com",
        "sub": "248289761001",
        "email": "jane@example.com",
        "email_verified": true,
        "name": "Jane",
        "groups": ["customers"],
    }))
    .unwrap();
    let rendered = runtime
        .render_identity(&target.deployment, &Arc::new(claims), "t-1".into())
        .unwrap();
    let auth = Authenticated {
        rendered: Arc::new(rendered),
        credential: Credential {
            token: "aaa.bbb.ccc".into(),
            carrier: Carrier::AuthorizationHeader,
        },
        session: None,
        closes_at: None,
        idle_close_secs: None,
        session_idle: None,
        due_for_recheck: None,
    };
    prepare_upstream_request(
        &mut secure,
        &runtime,
        Some(&target),
        Some(&auth),
        &id,
        client,
        false,
    )
    .unwrap();
    let sent = wire(&secure);
    for line in [
        "X-Auth-Subject: 248289761001\r\n",
        "X-Auth-Issuer: https://idp.example.com\r\n",
        "X-Auth-Deployment: secure\r\n",
        "X-Auth-Session: t-1\r\n",
        "X-Auth-Email: jane@example.com\r\n",
        "X-Auth-Email-Verified: true\r\n",
        "X-Auth-Name: Jane\r\n",
        "X-Auth-Groups: customers\r\n",
    ] {
        assert!(sent.contains(line), "{line:?} not in {sent}");
    }
    assert!(
        !sent.to_ascii_lowercase().contains("authorization"),
        "{sent}"
    );
    // The client's copy is gone, not sent beside the verified one; the
    // request id and `X-Forwarded-*` go as they always have, lower case.
    assert!(!sent.contains("spoofed"), "{sent}");
    assert!(!sent.contains("198.51.100"), "{sent}");
    assert_eq!(
        sent.to_ascii_lowercase().matches("x-auth-subject").count(),
        1
    );
    assert!(
        sent.contains(&format!("x-request-id: {}\r\n", id.as_str())),
        "{sent}"
    );
    assert!(sent.contains("x-forwarded-for: 203.0.113.7\r\n"), "{sent}");
    assert!(sent.contains("x-forwarded-proto: http\r\n"), "{sent}");
    // One line per header: those in the map and the identity's, each once.
    assert_eq!(
        sent.matches("\r\n").count(),
        secure.headers.len() + secure.prewritten_headers().len(),
        "{sent}"
    );
    // Every header in the request's parts (the view HTTP/2 sends), the
    // identity's among them.
    let parts = secure.as_owned_parts();
    assert_eq!(parts.headers.get("x-auth-subject").unwrap(), "248289761001");
    assert_eq!(parts.headers.get_all("x-auth-subject").iter().count(), 1);
    assert_eq!(sent.matches("\r\n").count(), parts.headers.len(), "{sent}");
}

#[test]
fn a_trusted_proxys_forwarded_chain_survives_an_identity_prefix_that_matches_it() {
    // `X-` as the identity prefix strips every `X-*` header the client
    // sent; what a trusted proxy said of the client is read before that.
    let runtime = runtime_of(&format!("identity_header_prefix: \"X-\"\n{CONFIG}"));
    let client = headers::ClientInfo {
        peer: Some("10.0.0.2".parse().unwrap()),
        tls: false,
    };
    let forwarded_request = || {
        let mut req = request("/v1/chat?deploymentId=open-web", WEB);
        req.append_header("X-Forwarded-For", "198.51.100.1")
            .unwrap();
        req.append_header("X-Forwarded-Proto", "https").unwrap();
        req.append_header("X-Forwarded-Host", "chat.example.com")
            .unwrap();
        req.append_header("X-Tenant", "spoofed").unwrap();
        req
    };
    let mut trusted = forwarded_request();
    let target = admit(&runtime, &trusted, false).unwrap();
    let id = RequestId::assign(&trusted, true);
    prepare_upstream_request(
        &mut trusted,
        &runtime,
        Some(&target),
        None,
        &id,
        client,
        true,
    )
    .unwrap();
    let sent = h1_wire(&trusted);
    assert!(
        sent.contains("x-forwarded-for: 198.51.100.1, 10.0.0.2\r\n"),
        "{sent}"
    );
    assert!(sent.contains("x-forwarded-proto: https\r\n"), "{sent}");
    assert!(
        sent.contains("x-forwarded-host: chat.example.com\r\n"),
        "{sent}"
    );
    assert!(!sent.contains("spoofed"), "{sent}");
    // From anyone else, the same headers say nothing.
    let mut untrusted = forwarded_request();
    let id = RequestId::assign(&untrusted, false);
    prepare_upstream_request(
        &mut untrusted,
        &runtime,
        Some(&target),
        None,
        &id,
        client,
        false,
    )
    .unwrap();
    let sent = h1_wire(&untrusted);
    assert!(sent.contains("x-forwarded-for: 10.0.0.2\r\n"), "{sent}");
    assert!(sent.contains("x-forwarded-proto: http\r\n"), "{sent}");
    assert!(!sent.contains("198.51.100.1"), "{sent}");
    assert!(!sent.contains("chat.example.com"), "{sent}");
}

fn h1_wire(req: &RequestHeader) -> String {
    let mut buf = bytes::BytesMut::new();
    req.header_to_h1_wire(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

fn prewritten(headers: &[(&'static str, &'static str)]) -> pingora::http::PrewrittenHeaders {
    pingora::http::PrewrittenHeaders::new(
        headers
            .iter()
            .map(|(name, value)| (*name, http::HeaderValue::from_static(value))),
    )
    .unwrap()
}

/// `set_prewritten_headers` (vendor/pingora-http/PATCHED.md §2): the lines
/// rendered once go after the map's headers, spelled as given, and replace
/// every header of their names, in either map, and whatever was
/// prewritten before; a clone keeps them and the parts hold them.
#[test]
fn prewritten_headers_replace_their_names_and_follow_the_map() {
    for keep_case in [true, false] {
        let mut req = if keep_case {
            request("/v1/chat", WEB)
        } else {
            RequestHeader::build_no_case("GET", b"/v1/chat", None).unwrap()
        };
        req.append_header("X-Auth-Subject", "spoofed").unwrap();
        req.append_header("x-auth-subject", "again").unwrap();
        req.append_header("X-Other", "kept").unwrap();
        req.set_prewritten_headers(prewritten(&[("X-Auth-Name", "first")]));
        req.set_prewritten_headers(prewritten(&[
            ("X-Auth-Subject", "alice"),
            ("X-AUTH-Groups", "a,b"),
        ]));
        let sent = h1_wire(&req);
        assert!(
            sent.ends_with("X-Auth-Subject: alice\r\nX-AUTH-Groups: a,b\r\n"),
            "{sent}"
        );
        for gone in ["spoofed", "again", "first"] {
            assert!(!sent.contains(gone), "{sent}");
        }
        assert!(
            sent.to_ascii_lowercase().contains("x-other: kept\r\n"),
            "{sent}"
        );
        // The two maps still in step: every other header once.
        assert_eq!(
            sent.matches("\r\n").count(),
            req.headers.len() + 2,
            "{sent}"
        );
        assert_eq!(h1_wire(&req.clone()), sent);
        // Both ways Pingora turns a request into parts for HTTP/2 (the
        // upstream path converts by value) carry them.
        for parts in [
            req.as_owned_parts(),
            http::request::Parts::from(req.clone()),
        ] {
            assert_eq!(parts.headers.get("x-auth-groups").unwrap(), "a,b");
            assert_eq!(parts.headers.get("x-auth-subject").unwrap(), "alice");
            assert_eq!(parts.headers.len(), req.headers.len() + 2);
        }
        // A clone's parts are the map alone: cloning twice sends each
        // prewritten header once, not once per clone.
        assert_eq!(req.clone().clone().headers.len(), req.headers.len());
    }
}

#[test]
fn prewritten_headers_refuse_what_frames_the_message() {
    let value = || http::HeaderValue::from_static("1");
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Host",
        "Connection",
        "Upgrade",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Proxy-Connection",
    ] {
        let refused = pingora::http::PrewrittenHeaders::new([("X-Fine", value()), (name, value())]);
        let error = refused.expect_err(name).to_string();
        assert!(error.contains("cannot be prewritten"), "{error}");
    }
    let refused = pingora::http::PrewrittenHeaders::new([("Bad Name", value())]);
    assert!(refused.unwrap_err().to_string().contains("invalid"));
    let none = pingora::http::PrewrittenHeaders::new(Vec::<(&str, _)>::new()).unwrap();
    assert!(none.is_empty() && none.h1_lines().is_empty());
}

/// Prewritten headers are set last; one of their names inserted afterwards
/// would go out twice, which debug builds (every test) catch.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "inserted after they were set")]
fn a_header_named_like_a_prewritten_one_set_afterwards_is_caught() {
    let mut req = request("/v1/chat", WEB);
    req.set_prewritten_headers(prewritten(&[("X-Auth-Subject", "alice")]));
    req.insert_header("x-auth-subject", "again").unwrap();
    h1_wire(&req);
}

/// `PrewrittenHeaders::from_parsed` takes names parsed beforehand: the
/// spelling sent must be the same name, and what frames the message stays
/// refused.
#[test]
fn prewritten_headers_from_parsed_names_keep_name_and_spelling_one() {
    let value = || http::HeaderValue::from_static("1");
    let name = http::HeaderName::from_static("x-auth-subject");
    let made =
        pingora::http::PrewrittenHeaders::from_parsed([(name.clone(), "X-AUTH-Subject", value())])
            .unwrap();
    assert_eq!(made.h1_lines(), b"X-AUTH-Subject: 1\r\n");
    assert_eq!(made.iter().next().unwrap().0, &name);
    let refused = pingora::http::PrewrittenHeaders::from_parsed([(name, "X-Auth-Subjec", value())]);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("spells another name"));
    let refused =
        pingora::http::PrewrittenHeaders::from_parsed([(http::header::HOST, "Host", value())]);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("cannot be prewritten"));
}

/// `insert_parsed_header` (vendor/pingora-http/PATCHED.md) takes a name
/// parsed beforehand and the spelling to send: a spelling of another name
/// would put one name in the header map and another on the wire, so it is
/// refused and the head is left as it was.
#[test]
fn a_parsed_header_must_spell_its_own_name() {
    let name = http::HeaderName::from_static("x-auth-subject");
    let value = http::HeaderValue::from_static("alice");
    let mut req = request("/v1/chat", WEB);
    let before = req.headers.clone();
    let refused = req.insert_parsed_header(
        &name,
        bytes::Bytes::from_static(b"X-Auth-Subjekt"),
        value.clone(),
    );
    assert!(refused.is_err());
    assert_eq!(req.headers, before);
    req.insert_parsed_header(
        &name,
        bytes::Bytes::from_static(b"X-AUTH-Subject"),
        value.clone(),
    )
    .unwrap();
    req.insert_parsed_header(&name, bytes::Bytes::from_static(b"X-Auth-Subject"), value)
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    req.header_to_h1_wire(&mut buf);
    let sent = String::from_utf8(buf.to_vec()).unwrap();
    // Inserted, not appended: the second replaced the first, spelling too.
    assert!(sent.contains("X-Auth-Subject: alice\r\n"), "{sent}");
    assert!(!sent.contains("X-AUTH"), "{sent}");
}

#[test]
fn reserved_room_changes_nothing_on_the_wire() {
    let wire_after = |keep_case: bool, reserve: Option<usize>| {
        let mut req = if keep_case {
            request("/v1/chat", WEB)
        } else {
            RequestHeader::build_no_case("GET", b"/v1/chat", None).unwrap()
        };
        req.append_header("Cookie", "a=1").unwrap();
        if let Some(n) = reserve {
            req.reserve_headers(n).unwrap();
        }
        for (name, value) in [("X-One", "1"), ("x-two", "2"), ("X-Three", "3")] {
            let parsed = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            req.insert_parsed_header(
                &parsed,
                bytes::Bytes::from_static(name.as_bytes()),
                http::HeaderValue::from_static(value),
            )
            .unwrap();
        }
        let mut buf = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        buf
    };
    for keep_case in [true, false] {
        let plain = wire_after(keep_case, None);
        assert_eq!(wire_after(keep_case, Some(3)), plain);
        assert_eq!(wire_after(keep_case, Some(40)), plain);
        // Without kept case, Pingora sends names outside its short list of
        // titled ones in lower case.
        let expected: &[u8] = if keep_case {
            b"X-One: 1\r\nx-two: 2\r\nX-Three: 3\r\n"
        } else {
            b"x-one: 1\r\nx-two: 2\r\nx-three: 3\r\n"
        };
        assert!(plain.ends_with(expected), "{plain:?}");
    }
    // More than a header map may ever hold is an error, not a panic.
    assert!(request("/v1", WEB).reserve_headers(40_000).is_err());
    assert!(request("/v1", WEB).reserve_headers(usize::MAX).is_err());
}

/// A runtime whose provider is a development provider on loopback, with an
/// `open` deployment (any user) and a `staff` one (the staff group only).
async fn bearer_runtime() -> (crate::devidp::DevIdp, Runtime) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = crate::devidp::start(listener, crate::devidp::DevIdpOptions::default())
        .await
        .unwrap();
    let text = format!(
        r#"
listen: [{{address: "127.0.0.1:8080"}}]
providers:
  dev: {{issuer: "{}", client_id: portcullis-demo, audiences: ["api://messaging"], algorithms: [RS256, ES256]}}
messengers:
  open: {{authentication: {{enabled: true, provider: dev}}}}
  staff: {{authentication: {{enabled: true, provider: dev, require: {{groups_any: [staff]}}}}}}
upstreams:
  chat: {{servers: ["127.0.0.1:9000"]}}
deployments:
  - {{id: open, messenger: open, upstream: chat, allow_all_origins: true}}
  - {{id: staff, messenger: staff, upstream: chat, allow_all_origins: true}}
routes:
  - {{path_prefix: /v1}}
"#,
        idp.issuer()
    );
    (idp, runtime_of(&text))
}

async fn bearer_to(
    runtime: &Runtime,
    deployment: &str,
    token: &str,
) -> Result<Arc<Rendered>, Refusal> {
    let mut req = request(&format!("/v1/chat?deploymentId={deployment}"), None);
    req.append_header("Authorization", format!("Bearer {token}"))
        .unwrap();
    let target = admit(runtime, &req, false)?;
    let sessions = crate::session::store::MemoryStore::new(1);
    authenticate(runtime, &sessions, &target, &req)
        .await
        .map(|a| a.rendered)
}

#[tokio::test]
async fn a_token_allowed_on_one_deployment_is_judged_again_on_another() {
    use jsonwebtoken::Algorithm;
    let (idp, runtime) = bearer_runtime().await;
    // alice is in no group: `open` lets her in, `staff` does not, however
    // often she comes back and whichever came first.
    let alice = idp.mint_access_token("alice", Algorithm::RS256);
    for _ in 0..2 {
        let rendered = bearer_to(&runtime, "open", &alice).await.unwrap();
        assert_eq!(&*rendered.identity.deployment, "open");
    }
    for _ in 0..2 {
        assert_eq!(
            bearer_to(&runtime, "staff", &alice).await.err(),
            Some(Refusal::Forbidden(policy::PolicyFailure::Groups))
        );
    }
    assert!(bearer_to(&runtime, "open", &alice).await.is_ok());
    // carol is staff: each deployment gets its own identity (its own
    // X-Auth-Deployment), the first's kept with the token, the second's in
    // `identities`, each the same on every request.
    let carol = idp.mint_access_token("carol", Algorithm::ES256);
    let open = bearer_to(&runtime, "open", &carol).await.unwrap();
    let staff = bearer_to(&runtime, "staff", &carol).await.unwrap();
    assert_eq!(&*open.identity.deployment, "open");
    assert_eq!(&*staff.identity.deployment, "staff");
    let open_again = bearer_to(&runtime, "open", &carol).await.unwrap();
    let staff_again = bearer_to(&runtime, "staff", &carol).await.unwrap();
    assert!(Arc::ptr_eq(&open, &open_again));
    assert!(Arc::ptr_eq(&staff, &staff_again));
    // A runtime built afresh (a reload) judges afresh: a tightened policy
    // refuses the token the old runtime kept an identity for.
    let tightened = {
        let mut config = (*runtime.config).clone();
        config
            .messengers
            .get_mut("open")
            .unwrap()
            .authentication
            .require
            .groups_any = vec!["staff".into()];
        Runtime::build(
            config,
            Some(&runtime),
            &Arc::new(crate::metrics::Metrics::new()),
        )
        .unwrap()
    };
    assert_eq!(
        bearer_to(&tightened, "open", &alice).await.err(),
        Some(Refusal::Forbidden(policy::PolicyFailure::Groups))
    );
}

#[tokio::test]
async fn a_replaced_runtime_lets_go_of_what_it_cached() {
    use jsonwebtoken::Algorithm;
    let (idp, runtime) = bearer_runtime().await;
    let carol = idp.mint_access_token("carol", Algorithm::ES256);
    // The token cache keeps `open`'s identity; `staff`'s goes to `identities`.
    bearer_to(&runtime, "open", &carol).await.unwrap();
    bearer_to(&runtime, "staff", &carol).await.unwrap();
    runtime.identities.run_pending_tasks();
    assert_eq!(runtime.tokens.len(), 1);
    assert_eq!(runtime.identities.entry_count(), 1);
    // What a reload does to the runtime it replaces, which a tunnel made
    // under it may keep alive for hours.
    runtime.release_caches();
    assert!(runtime.tokens.is_empty());
    assert_eq!(runtime.identities.entry_count(), 0);
}

#[tokio::test]
async fn a_messenger_token_is_verified_once_and_its_session_identity_rendered_per_check() {
    use crate::session::store::{MemoryStore, SessionStore};
    let (_idp, runtime) = bearer_runtime().await;
    let store = MemoryStore::new(1000);
    let now = crate::session::now();
    let mut session = crate::session::tests::session(now, 3600, 3600);
    session.deployment = "open".into();
    session.provider = "dev".into();
    session.claims.insert("sub".into(), "alice".into());
    let id = session.id.clone();
    store.save(&session).await.unwrap();
    let (jwt, _) = crate::token::messenger::issue(
        &runtime.keys,
        &runtime.issuer,
        "alice",
        "open",
        &id.public_id(),
        now,
        3600,
    )
    .unwrap();
    let with_token = |token: &str| {
        let mut req = request("/v1/chat?deploymentId=open", None);
        req.append_header("Authorization", format!("Bearer {token}"))
            .unwrap();
        req
    };
    let req = with_token(&jwt);
    let target = admit(&runtime, &req, false).unwrap();
    let first = authenticate(&runtime, &store, &target, &req).await.unwrap();
    assert_eq!(first.session.as_deref(), Some(id.public_id().as_str()));
    runtime.messenger_tokens.run_pending_tasks();
    assert_eq!(runtime.messenger_tokens.entry_count(), 1);
    assert!(runtime.messenger_tokens.get(jwt.as_str()).is_some());
    // Again: the same identity, from the session's entry.
    let again = authenticate(&runtime, &store, &target, &req).await.unwrap();
    assert!(Arc::ptr_eq(&first.rendered, &again.rendered));
    // A re-check moves `checked_at`: the identity is rendered afresh.
    session.checked_at += 1;
    store.save(&session).await.unwrap();
    let rechecked = authenticate(&runtime, &store, &target, &req).await.unwrap();
    assert!(!Arc::ptr_eq(&first.rendered, &rechecked.rendered));
    // One character changed anywhere is another text: verified, refused,
    // and not kept.
    let (head, signature) = jwt.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);
    let req = with_token(&forged);
    assert!(matches!(
        authenticate(&runtime, &store, &target, &req).await,
        Err(Refusal::Unauthenticated(_))
    ));
    runtime.messenger_tokens.run_pending_tasks();
    assert_eq!(runtime.messenger_tokens.entry_count(), 1);
}
