//! Validation tests: good files parse into the expected model, and each bad
//! input yields its own located, actionable message.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = r#"
listen:
  - address: 127.0.0.1:8080
public_url: https://chat.example.com
threads: 4
admin:
  address: 127.0.0.1:9090
providers:
  okta:
    issuer: https://example.okta.com/oauth2/default
    client_id: portcullis
    client_secret: {env: OKTA_CLIENT_SECRET}
    scopes: [openid, email, profile, offline_access]
    audiences: [api://messaging]
    algorithms: [RS256, ES256]
    clock_skew: 60s
messengers:
  support:
    authentication:
      enabled: true
      provider: okta
      allow_session_upgrade: false
      require:
        claims: {email_verified: true}
        groups_any: [customers]
        email_domains: [Example.com]
    session: {max_lifetime: 24h, idle_timeout: 30m, token_lifetime: 15m}
    identity_headers: {X-Auth-Tenant: tenant_id}
    assertion: true
  public:
    authentication: {enabled: false}
deployments:
  - id: 3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10
    name: website
    messenger: support
    status: active
    allowed_origins: [https://www.example.com, "HTTPS://Shop.Example.com:443"]
    upstream: chat
    access_token_query: false
    forward_token: false
    redirect_uris: [https://www.example.com/chat/callback]
  - id: open-1
    messenger: public
    status: inactive
    allow_all_origins: true
    upstream: chat
upstreams:
  chat:
    servers: [10.0.0.5:8080, "chat-backend.internal:8080"]
    tls: false
    health_check: {path: /healthz, interval: 5s}
routes:
  - path_prefix: /v1
    deployment_from: {query: deploymentId}
  - path_prefix: /support/
    deployment: 3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10
    profile: standard
sessions:
  store: memory
  cookie: {name: portcullis}
  keys:
    cookie_key: {env: PORTCULLIS_COOKIE_KEY}
logging: {format: json, level: info}
compat: {hosted_paths: false}
forwarding: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}
"#;

fn env() -> HashMap<&'static str, String> {
    HashMap::from([
        ("OKTA_CLIENT_SECRET", "s3cret".to_string()),
        // 32 zero bytes, base64.
        (
            "PORTCULLIS_COOKIE_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ),
        ("PORTCULLIS_ADMIN_TOKEN", "admin-token".to_string()),
        ("PORTCULLIS_DEMO_CLIENT_SECRET", "demo-secret".to_string()),
    ])
}

fn parse_with(text: &str, vars: &HashMap<&'static str, String>) -> Result<Config, ConfigErrors> {
    let lookup = |name: &str| vars.get(name).cloned();
    parse(text, Path::new("/nonexistent"), &lookup)
}

fn parse_text(text: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, &env())
}

/// The errors of `GOOD` with `from` replaced by `to`.
fn errors_after(from: &str, to: &str) -> ConfigErrors {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    parse_text(&GOOD.replacen(from, to, 1)).expect_err("the edited file should be invalid")
}

/// GOOD with `from` replaced by `to`, which must still be valid.
fn parsed_after(from: &str, to: &str) -> Config {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    parse_text(&GOOD.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_error(errors: &ConfigErrors, path: &str, message: &str) {
    assert!(
        errors.contains(path, message),
        "expected `{path}: ...{message}...` in:\n{errors}"
    );
}

#[test]
fn the_canonical_file_parses_into_the_model() {
    let c = parse_text(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.threads, 4);
    let okta = &c.providers["okta"];
    assert_eq!(okta.client_secret.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(
        okta.discovery_url.as_str(),
        "https://example.okta.com/oauth2/default/.well-known/openid-configuration"
    );
    assert_eq!(okta.clock_skew, Duration::from_secs(60));
    let support = &c.messengers["support"];
    assert!(support.authentication.enabled);
    assert_eq!(
        support.authentication.require.email_domains,
        vec!["example.com"]
    );
    assert_eq!(support.session.idle_timeout, Duration::from_secs(1800));
    let d = &c.deployments[0];
    assert_eq!(
        d.origins,
        OriginPolicy::List(vec![
            "https://www.example.com".into(),
            "https://shop.example.com".into()
        ])
    );
    assert_eq!(c.deployments[1].status, DeploymentStatus::Inactive);
    assert_eq!(c.deployments[1].origins, OriginPolicy::Any);
    assert_eq!(
        c.routes[0].deployment,
        DeploymentSource::Query("deploymentId".into())
    );
    assert_eq!(c.routes[1].profile, RouteProfile::Standard);
    assert_eq!(
        c.upstreams["chat"].health_check.as_ref().unwrap().interval,
        Duration::from_secs(5)
    );
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.forwarding.trusted_proxies.len(), 2);
    assert_eq!(c.identity_header_prefix, "X-Auth-");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = parse_text(GOOD).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("s3cret"));
    assert!(dump.contains("<redacted>"));
}

#[test]
fn defaults_fill_every_optional_key() {
    let c = parse_text(
        r#"
listen: [{address: "127.0.0.1:8080"}]
messengers: {m: {authentication: {enabled: false}}}
upstreams: {u: {servers: ["127.0.0.1:9000"]}}
deployments: [{id: d, messenger: m, upstream: u}]
routes: [{path_prefix: /v1}]
"#,
    )
    .unwrap();
    assert!(c.threads >= 1);
    assert!(c.admin.is_none());
    assert_eq!(
        c.routes[0].deployment,
        DeploymentSource::Query("deploymentId".into())
    );
    assert_eq!(c.routes[0].name, "/v1");
    assert_eq!(c.deployments[0].status, DeploymentStatus::Active);
    assert_eq!(c.deployments[0].origins, OriginPolicy::List(vec![]));
    assert!(!c.deployments[0].allow_missing_origin);
    assert_eq!(c.messengers["m"].session, SessionLifetimes::default());
    assert!(matches!(c.sessions.store, SessionStore::Memory));
    assert_eq!(c.sessions.cookie_name, "portcullis");
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.upstreams["u"].connect_timeout, Duration::from_secs(3));
    assert_eq!(c.upstreams["u"].read_timeout, Duration::from_secs(60));
    assert!(c.upstreams["u"].health_check.is_none());
}

#[test]
fn an_upstream_read_timeout_is_taken_within_its_bounds() {
    let c = parsed_after(
        "    tls: false\n",
        "    tls: false\n    read_timeout: 250ms\n",
    );
    assert_eq!(c.upstreams["chat"].read_timeout, Duration::from_millis(250));
    for refused in ["0s", "50ms", "2h"] {
        assert_error(
            &errors_after(
                "    tls: false\n",
                &format!("    tls: false\n    read_timeout: {refused}\n"),
            ),
            "upstreams.chat.read_timeout",
            "must be between",
        );
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = GOOD
        .replacen("address: 127.0.0.1:8080", "address: localhost", 1)
        .replacen("messenger: support", "messenger: nope", 1)
        .replacen(
            "[https://www.example.com, ",
            "[https://www.example.com/path, ",
            1,
        )
        .replacen(
            "upstream: chat\n    access_token_query",
            "upstream: gone\n    access_token_query",
            1,
        );
    let errors = parse_text(&text).unwrap_err();
    assert_error(&errors, "listen[0].address", "not an address");
    assert_error(
        &errors,
        "deployments[0].messenger",
        "unknown messenger `nope` (known: public, support)",
    );
    assert_error(&errors, "deployments[0].allowed_origins[0]", "no path");
    assert_error(
        &errors,
        "deployments[0].upstream",
        "unknown upstream `gone`",
    );
    assert_eq!(errors.0.len(), 4, "{errors}");
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    assert_error(
        &errors_after("public_url:", "pubilc_url:"),
        "pubilc_url",
        "unknown key",
    );
    let errors = errors_after(
        "    name: website\n",
        "    name: website\n    allowed_origin: [x]\n",
    );
    assert_error(
        &errors,
        "deployments[0].allowed_origin",
        "unknown field `allowed_origin`, expected one of `id`",
    );
    let errors = errors_after(
        "health_check: {path: /healthz",
        "health_check: {pth: /healthz",
    );
    assert_error(
        &errors,
        "upstreams.chat.health_check.pth",
        "unknown field `pth`",
    );
}

#[test]
fn wrong_types_are_located() {
    assert_error(
        &errors_after("threads: 4", "threads: many"),
        "threads",
        "invalid type",
    );
    assert_error(
        &errors_after("assertion: true", "assertion: maybe"),
        "messengers.support.assertion",
        "invalid type",
    );
    assert_error(
        &errors_after("enabled: true", "enabled: [1]"),
        "messengers.support.authentication.enabled",
        "invalid type",
    );
}

#[test]
fn references_must_resolve() {
    assert_error(
        &errors_after("provider: okta", "provider: auth0"),
        "messengers.support.authentication.provider",
        "unknown provider `auth0` (known: okta)",
    );
    assert_error(
        &errors_after(
            "deployment: 3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10\n    profile",
            "deployment: missing\n    profile",
        ),
        "routes[1].deployment",
        "unknown deployment `missing`",
    );
    assert_error(
        &errors_after("      provider: okta\n", ""),
        "messengers.support.authentication.provider",
        "required when authentication is enabled",
    );
}

#[test]
fn duplicate_ids_and_prefixes_are_refused() {
    assert_error(
        &errors_after("id: open-1", "id: 3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10"),
        "deployments[1].id",
        "duplicate deployment id",
    );
    assert_error(
        &errors_after("path_prefix: /support/", "path_prefix: /v1"),
        "routes[1].path_prefix",
        "used by another route",
    );
    assert_error(
        &errors_after(
            "servers: [10.0.0.5:8080, \"chat-backend.internal:8080\"]",
            "servers: [10.0.0.5:8080, 10.0.0.5:8080]",
        ),
        "upstreams.chat.servers[1]",
        "listed twice",
    );
}

#[test]
fn secrets_must_come_from_env_or_file() {
    assert_error(
        &errors_after(
            "client_secret: {env: OKTA_CLIENT_SECRET}",
            "client_secret: hunter2",
        ),
        "providers.okta.client_secret",
        "not written inline",
    );
    let mut vars = env();
    vars.remove("OKTA_CLIENT_SECRET");
    let errors = parse_with(GOOD, &vars).unwrap_err();
    assert_error(
        &errors,
        "providers.okta.client_secret",
        "environment variable OKTA_CLIENT_SECRET is not set",
    );
    assert_error(
        &errors_after(
            "client_secret: {env: OKTA_CLIENT_SECRET}",
            "client_secret: {file: /no/such/secret}",
        ),
        "providers.okta.client_secret",
        "cannot read file /no/such/secret",
    );
    assert_error(
        &errors_after(
            "client_secret: {env: OKTA_CLIENT_SECRET}",
            "client_secret: {env: A, file: B}",
        ),
        "providers.okta.client_secret",
        "exactly one of `env` or `file`",
    );
}

#[test]
fn secret_files_are_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.secret"), "from-file\n").unwrap();
    let text = GOOD.replacen(
        "client_secret: {env: OKTA_CLIENT_SECRET}",
        "client_secret: {file: client.secret}",
        1,
    );
    let vars = env();
    let lookup = |name: &str| vars.get(name).cloned();
    let c = parse(&text, dir.path(), &lookup).unwrap();
    assert_eq!(
        c.providers["okta"].client_secret.as_ref().unwrap().expose(),
        "from-file"
    );
}

#[test]
fn origins_must_be_origins() {
    for (bad, why) in [
        ("ftp://www.example.com", "scheme"),
        ("www.example.com", "not an origin"),
        ("https://www.example.com/", "no path"),
        ("https://user@www.example.com", "no user information"),
        ("https://www.example.com?x=1", "no path, query"),
        ("*", "not an origin"),
    ] {
        let errors = errors_after("https://www.example.com, ", &format!("\"{bad}\", "));
        assert_error(&errors, "deployments[0].allowed_origins[0]", why);
    }
    assert_error(
        &errors_after(
            "allow_all_origins: true",
            "allow_all_origins: true\n    allowed_origins: [https://a.example]",
        ),
        "deployments[1].allow_all_origins",
        "not both",
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let errors = errors_after("address: 127.0.0.1:9090", "address: 0.0.0.0:9090");
    assert_error(
        &errors,
        "admin.token",
        "required when the admin address is not loopback",
    );
    let ok = parsed_after(
        "address: 127.0.0.1:9090",
        "address: 0.0.0.0:9090\n  token: {env: PORTCULLIS_ADMIN_TOKEN}",
    );
    assert_eq!(ok.admin.unwrap().token.unwrap().expose(), "admin-token");
}

#[test]
fn algorithms_are_an_allow_list_without_none_or_hmac() {
    assert_error(
        &errors_after("algorithms: [RS256, ES256]", "algorithms: [RS256, none]"),
        "providers.okta.algorithms[1]",
        "`none` is never accepted",
    );
    assert_error(
        &errors_after("algorithms: [RS256, ES256]", "algorithms: [HS256]"),
        "providers.okta.algorithms[0]",
        "HMAC algorithms are never accepted",
    );
    assert_error(
        &errors_after("algorithms: [RS256, ES256]", "algorithms: [XX1]"),
        "providers.okta.algorithms[0]",
        "unsupported algorithm",
    );
    assert_error(
        &errors_after("scopes: [openid, email", "scopes: [email"),
        "providers.okta.scopes",
        "must include `openid`",
    );
}

#[test]
fn durations_are_parsed_and_bounded() {
    assert_error(
        &errors_after("clock_skew: 60s", "clock_skew: soon"),
        "providers.okta.clock_skew",
        "not a duration",
    );
    assert_error(
        &errors_after("clock_skew: 60s", "clock_skew: 10m"),
        "providers.okta.clock_skew",
        "between 0s and 5m",
    );
    assert_error(
        &errors_after("max_lifetime: 24h", "max_lifetime: 5m"),
        "messengers.support.session.max_lifetime",
        "between 15m and 90d",
    );
    assert_error(
        &errors_after("max_lifetime: 24h", "max_lifetime: 100d"),
        "messengers.support.session.max_lifetime",
        "between",
    );
    assert_error(
        &errors_after("idle_timeout: 30m", "idle_timeout: 48h"),
        "messengers.support.session.idle_timeout",
        "must not exceed max_lifetime",
    );
    let c = parsed_after("clock_skew: 60s", "clock_skew: 30");
    assert_eq!(c.providers["okta"].clock_skew, Duration::from_secs(30));
}

#[test]
fn urls_are_https_except_on_loopback() {
    assert_error(
        &errors_after(
            "issuer: https://example.okta.com",
            "issuer: http://example.okta.com",
        ),
        "providers.okta.issuer",
        "must use https",
    );
    let c = parsed_after(
        "issuer: https://example.okta.com",
        "issuer: http://127.0.0.1:3000",
    );
    assert_eq!(
        c.providers["okta"].issuer,
        "http://127.0.0.1:3000/oauth2/default"
    );
    assert_error(
        &errors_after(
            "public_url: https://chat.example.com",
            "public_url: chat.example.com",
        ),
        "public_url",
        "not a URL",
    );
}

#[test]
fn identity_headers_must_be_strippable() {
    assert_error(
        &errors_after(
            "identity_headers: {X-Auth-Tenant: tenant_id}",
            "identity_headers: {X-Tenant: tenant_id}",
        ),
        "messengers.support.identity_headers.X-Tenant",
        "must start with the identity prefix",
    );
    assert_error(
        &errors_after(
            "identity_headers: {X-Auth-Tenant: tenant_id}",
            "identity_headers: {Cookie: tenant_id}",
        ),
        "messengers.support.identity_headers.Cookie",
        "cannot carry identity",
    );
    // Names portcullis sets on every upstream request, in any spelling a
    // backend may fold into them, even under a prefix they start with.
    // Proxy-Connection and Keep-Alive govern the connection: Pingora will
    // not send them as identity (a config passing `check` would refuse
    // every identity at run time).
    for (prefix, name) in [
        ("X-", "X-Request-Id"),
        ("X-", "x-real-ip"),
        ("X-", "X_Forwarded_For"),
        ("Proxy-", "Proxy-Connection"),
        ("Keep-", "Keep-Alive"),
    ] {
        let text = GOOD
            .replacen(
                "public_url: https://chat.example.com",
                &format!("public_url: https://chat.example.com\nidentity_header_prefix: {prefix}"),
                1,
            )
            .replacen(
                "identity_headers: {X-Auth-Tenant: tenant_id}",
                &format!("identity_headers: {{{name}: tenant_id}}"),
                1,
            );
        assert_error(
            &parse_text(&text).expect_err("a reserved name"),
            &format!("messengers.support.identity_headers.{name}"),
            "cannot carry identity",
        );
    }
    assert_error(
        &errors_after(
            "identity_headers: {X-Auth-Tenant: tenant_id}",
            "identity_headers: {\"Bad Header\": tenant_id}",
        ),
        "messengers.support.identity_headers.Bad Header",
        "not a valid header name",
    );
}

#[test]
fn identity_headers_may_not_replace_the_built_in_ones() {
    // Compared like the stripping: any case, `_` as `-`.
    for name in ["X-Auth-Email-Verified", "x-auth-groups", "X_Auth_Subject"] {
        assert_error(
            &errors_after(
                "identity_headers: {X-Auth-Tenant: tenant_id}",
                &format!("identity_headers: {{{name}: tenant_id}}"),
            ),
            &format!("messengers.support.identity_headers.{name}"),
            "portcullis sends this header itself",
        );
    }
    // Longer names that start like one are the operator's.
    let c = parsed_after(
        "identity_headers: {X-Auth-Tenant: tenant_id}",
        "identity_headers: {X-Auth-Email-Verified-At: verified_at}",
    );
    assert_eq!(c.messengers["support"].identity_headers.len(), 1);
}

#[test]
fn identity_headers_may_not_share_a_name() {
    // Alike as a backend may read them: any case, `_` as `-`.
    for other in ["x-auth-tenant", "X_Auth_Tenant"] {
        let errors = errors_after(
            "identity_headers: {X-Auth-Tenant: tenant_id}",
            &format!("identity_headers: {{X-Auth-Tenant: tenant_id, {other}: org}}"),
        );
        assert_error(
            &errors,
            &format!("messengers.support.identity_headers.{other}"),
            "another identity header has the same name",
        );
    }
    let c = parsed_after(
        "identity_headers: {X-Auth-Tenant: tenant_id}",
        "identity_headers: {X-Auth-Tenant: tenant_id, X-Auth-Tenants: org}",
    );
    assert_eq!(c.messengers["support"].identity_headers.len(), 2);
}

#[test]
fn the_identity_prefix_has_a_length() {
    let with_prefix = |prefix: &str| {
        GOOD.replacen(
            "public_url: https://chat.example.com",
            &format!("public_url: https://chat.example.com\nidentity_header_prefix: {prefix}"),
            1,
        )
        .replacen(
            "identity_headers: {X-Auth-Tenant: tenant_id}",
            &format!("identity_headers: {{{prefix}Tenant: tenant_id}}"),
            1,
        )
    };
    let longest = format!("X-{}", "a".repeat(62));
    assert!(parse_text(&with_prefix(&longest)).is_ok());
    let errors = parse_text(&with_prefix(&format!("{longest}a"))).unwrap_err();
    assert_error(&errors, "identity_header_prefix", "2 to 64 characters");
    let errors = parse_text(&with_prefix("X")).unwrap_err();
    assert_error(&errors, "identity_header_prefix", "2 to 64 characters");
}

#[test]
fn unverified_emails_are_an_opt_out_beside_email_domains_only() {
    let c = parse_text(GOOD).unwrap();
    assert!(
        !c.messengers["support"]
            .authentication
            .require
            .allow_unverified_email,
        "verified addresses by default"
    );
    let c = parsed_after(
        "email_domains: [Example.com]",
        "email_domains: [Example.com]\n        allow_unverified_email: true",
    );
    assert!(
        c.messengers["support"]
            .authentication
            .require
            .allow_unverified_email
    );
    assert_error(
        &errors_after(
            "email_domains: [Example.com]",
            "allow_unverified_email: true",
        ),
        "messengers.support.authentication.require.allow_unverified_email",
        "has no effect without email_domains",
    );
    assert_error(
        &errors_after(
            "email_domains: [Example.com]",
            "email_domains: [Example.com]\n        allow_unverified_email: yes-please",
        ),
        "messengers.support.authentication.require.allow_unverified_email",
        "expected a boolean",
    );
}

#[test]
fn routes_are_plain_paths_outside_the_auth_namespace() {
    for (prefix, why) in [
        ("v1", "must start with '/'"),
        ("/v1/../x", "'..'"),
        ("/v1%2f", "plain path"),
        ("/.auth/login", "reserved"),
    ] {
        let errors = errors_after("path_prefix: /v1", &format!("path_prefix: \"{prefix}\""));
        assert_error(&errors, "routes[0].path_prefix", why);
    }
    assert_error(
        &errors_after(
            "deployment_from: {query: deploymentId}",
            "deployment_from: {query: deploymentId}\n    deployment: open-1",
        ),
        "routes[0]",
        "not both",
    );
    assert_error(
        &errors_after("profile: standard", "profile: genesys"),
        "routes[1].profile",
        "not a profile",
    );
}

/// Keys that would be accepted and then do nothing are refused, each with
/// a message that says so, until what they name is built.
#[test]
fn keys_for_what_is_not_built_are_refused() {
    assert_error(
        &errors_after("profile: standard", "profile: guest-api"),
        "routes[1].profile",
        "the guest-api profile is not built yet",
    );
    assert_error(
        &errors_after(
            "allow_session_upgrade: false",
            "allow_session_upgrade: true",
        ),
        "messengers.support.authentication.allow_session_upgrade",
        "session upgrade is not built yet",
    );
    assert!(
        !parse_text(GOOD).unwrap().messengers["support"]
            .authentication
            .allow_session_upgrade,
        "false is accepted"
    );
    // The reuse grace only means something where refresh tokens are issued.
    // Keys that only mean something with authentication are refused
    // beside `enabled: false`, `require` above all (everyone would pass).
    for (added, path, message) in [
        (
            "\n    session: {refresh_reuse_grace: 5s}",
            "messengers.public.session",
            "has no effect while authentication is off",
        ),
        (
            "\n    session: {max_lifetime: 2h}",
            "messengers.public.session",
            "has no effect while authentication is off",
        ),
        (
            "\n    assertion: true",
            "messengers.public.assertion",
            "no identity to sign",
        ),
        (
            "\n    identity_headers: {X-Auth-Tenant: tenant_id}",
            "messengers.public.identity_headers",
            "no claims to send",
        ),
    ] {
        assert_error(
            &errors_after(
                "  public:\n    authentication: {enabled: false}",
                &format!("  public:\n    authentication: {{enabled: false}}{added}"),
            ),
            path,
            message,
        );
    }
    assert_error(
        &errors_after(
            "  public:\n    authentication: {enabled: false}",
            "  public:\n    authentication: {enabled: false, require: {groups_any: [staff]}}",
        ),
        "messengers.public.authentication.require",
        "everyone passes",
    );
    // The hosted product's paths are built (the token API serves them):
    // accepted, and carried into the model the endpoints read.
    let c = parsed_after(
        "compat: {hosted_paths: false}",
        "compat: {hosted_paths: true}",
    );
    assert!(c.compat.hosted_paths);
    assert!(!parse_text(GOOD).unwrap().compat.hosted_paths);
}

#[test]
fn the_memory_store_budget_is_a_size_in_bounds() {
    let budget = |text: &str| {
        parsed_after("store: memory", text)
            .sessions
            .memory_max_bytes
    };
    assert_eq!(budget("store: memory"), DEFAULT_MEMORY_MAX_BYTES);
    assert_eq!(
        budget("store: memory\n  memory_max_bytes: 512MiB"),
        512 << 20
    );
    assert_eq!(budget("memory_max_bytes: 2GiB"), 2 << 30);
    assert_eq!(budget("memory_max_bytes: 1048576"), 1 << 20);
    for (bad, message) in [
        ("memory_max_bytes: 512KiB", "between 1MiB and 64GiB"),
        ("memory_max_bytes: 65GiB", "between 1MiB and 64GiB"),
        ("memory_max_bytes: 256MB", "not a size"),
        ("memory_max_bytes: lots", "not a size"),
        ("memory_max_bytes: -1", "not a size"),
    ] {
        assert_error(
            &errors_after("store: memory", bad),
            "sessions.memory_max_bytes",
            message,
        );
    }
    assert_error(
        &errors_after(
            "store: memory",
            "store: redis\n  memory_max_bytes: 1GiB\n  redis: {url: \"redis://127.0.0.1:6379/0\"}",
        ),
        "sessions.memory_max_bytes",
        "has no effect while sessions.store is redis",
    );
}

#[test]
fn session_keys_and_stores_are_checked() {
    let mut vars = env();
    vars.insert("PORTCULLIS_COOKIE_KEY", "c2hvcnQ=".into());
    assert_error(
        &parse_with(GOOD, &vars).unwrap_err(),
        "sessions.keys.cookie_key",
        "at least 32 bytes",
    );
    vars.insert("PORTCULLIS_COOKIE_KEY", "!!not base64!!".into());
    assert_error(
        &parse_with(GOOD, &vars).unwrap_err(),
        "sessions.keys.cookie_key",
        "not valid base64",
    );
    let errors = errors_after("store: memory", "store: redis");
    assert_error(
        &errors,
        "sessions.redis",
        "required when sessions.store is redis",
    );
    assert_error(
        &errors_after("store: memory", "store: disk"),
        "sessions.store",
        "not a store",
    );
    // A redis block beside the memory store would be read by nothing.
    assert_error(
        &errors_after(
            "store: memory",
            "store: memory\n  redis: {url: \"redis://127.0.0.1:6379/0\"}",
        ),
        "sessions.redis",
        "has no effect while sessions.store is memory",
    );
    assert_error(
        &errors_after(
            "store: memory",
            "store: redis\n  redis: {url: \"http://x\"}",
        ),
        "sessions.redis.url",
        "not a Redis URL",
    );
}

/// The config with `sessions.store: redis` and `redis` as its block.
fn with_redis(redis: &str) -> Result<Config, ConfigErrors> {
    let mut vars = env();
    vars.insert("REDIS_PASSWORD", "hunter2".into());
    vars.insert("REDIS_URL", "redis://:hunter2@10.0.0.9:6379/2".into());
    parse_with(
        &GOOD.replacen(
            "store: memory",
            &format!("store: redis\n  redis: {redis}"),
            1,
        ),
        &vars,
    )
}

fn redis_settings(redis: &str) -> Redis {
    match with_redis(redis)
        .unwrap_or_else(|e| panic!("{redis}: {e}"))
        .sessions
        .store
    {
        SessionStore::Redis(r) => r,
        SessionStore::Memory => panic!("{redis}: not the redis store"),
    }
}

#[test]
fn the_redis_store_takes_a_url_or_sentinels_with_safe_defaults() {
    let r = redis_settings("{url: \"redis://127.0.0.1:6379/0\"}");
    assert_eq!(
        r.target,
        RedisTarget::Url(Secret::new("redis://127.0.0.1:6379/0".into()))
    );
    assert_eq!(
        (r.connect_timeout, r.command_timeout, r.local_cache),
        (
            DEFAULT_REDIS_CONNECT_TIMEOUT,
            DEFAULT_REDIS_COMMAND_TIMEOUT,
            DEFAULT_REDIS_LOCAL_CACHE
        )
    );
    assert_eq!(r.key_prefix, "portcullis:");
    assert!(!r.tls && r.password.is_none() && r.username.is_none());
    assert!(
        redis_settings("{url: \"rediss://cache.internal:6380\"}").tls,
        "rediss is TLS"
    );
    assert!(redis_settings("{url: \"redis://cache.internal\", tls: true}").tls);

    let r = redis_settings(
        "{sentinel: {master: m, nodes: [\"10.0.0.1:26379\", \"[::1]:26379\"]}, username: app, \
         password: {env: REDIS_PASSWORD}, connect_timeout: 1s, command_timeout: 250ms, \
         key_prefix: \"chat:\", local_cache: 0s}",
    );
    assert_eq!(
        r.target,
        RedisTarget::Sentinel {
            master: "m".into(),
            nodes: vec!["10.0.0.1:26379".into(), "[::1]:26379".into()]
        }
    );
    assert_eq!(r.username.as_deref(), Some("app"));
    assert_eq!(r.password.as_ref().map(Secret::expose), Some("hunter2"));
    assert_eq!(r.command_timeout, std::time::Duration::from_millis(250));
    assert_eq!(r.local_cache, std::time::Duration::ZERO);
    assert_eq!(r.key_prefix, "chat:");
    // A URL with a password comes from the environment or a file.
    let r = redis_settings("{url: {env: REDIS_URL}}");
    assert!(
        !format!("{r:?}").contains("hunter2"),
        "Debug hides secrets: {r:?}"
    );
}

#[test]
fn every_mistake_in_the_redis_block_is_named_by_its_path() {
    for (block, path, message) in [
        ("{}", "sessions.redis", "give `url`"),
        (
            "{url: \"redis://a\", sentinel: {master: m, nodes: [\"a:1\"]}}",
            "sessions.redis",
            "not both",
        ),
        (
            "{url: \"http://a\"}",
            "sessions.redis.url",
            "not a Redis URL",
        ),
        (
            "{url: \"redis://:pw@a:6379\"}",
            "sessions.redis.url",
            "a URL with a password is a secret",
        ),
        (
            "{url: {env: REDIS_URL}, password: {env: REDIS_PASSWORD}}",
            "sessions.redis.password",
            "give it in one place",
        ),
        (
            "{url: \"redis://a\", password: hunter2}",
            "sessions.redis.password",
            "not written inline",
        ),
        (
            "{url: \"redis://a\", password: {env: NOPE}}",
            "sessions.redis.password",
            "NOPE is not set",
        ),
        (
            "{url: \"rediss://a\", tls: false}",
            "sessions.redis.tls",
            "always uses TLS",
        ),
        (
            "{url: \"redis+unix:///run/redis.sock\", tls: true}",
            "sessions.redis.tls",
            "Unix socket",
        ),
        (
            "{sentinel: {master: \"\", nodes: [\"a:1\"]}}",
            "sessions.redis.sentinel.master",
            "must name",
        ),
        (
            "{sentinel: {master: m, nodes: []}}",
            "sessions.redis.sentinel.nodes",
            "at least one",
        ),
        (
            "{sentinel: {master: m, nodes: [\"a\"]}}",
            "sessions.redis.sentinel.nodes[0]",
            "not host:port",
        ),
        (
            "{sentinel: {master: m, nodes: [\"a:1\"], extra: 1}}",
            "sessions.redis.sentinel.extra",
            "unknown field",
        ),
        (
            "{url: \"redis://a\", command_timeout: 1ms}",
            "sessions.redis.command_timeout",
            "between",
        ),
        (
            "{url: \"redis://a\", connect_timeout: 2m}",
            "sessions.redis.connect_timeout",
            "between",
        ),
        (
            "{url: \"redis://a\", local_cache: 1h}",
            "sessions.redis.local_cache",
            "between",
        ),
        (
            "{url: \"redis://a\", key_prefix: \"has space\"}",
            "sessions.redis.key_prefix",
            "printable",
        ),
        (
            "{url: \"redis://a\", key_prefix: \"\"}",
            "sessions.redis.key_prefix",
            "printable",
        ),
        (
            "{url: \"redis://a\", username: \"\"}",
            "sessions.redis.username",
            "without spaces",
        ),
        (
            "{url: \"redis://a\", db: 3}",
            "sessions.redis.db",
            "unknown field",
        ),
    ] {
        let errors = with_redis(block).expect_err(block);
        assert_error(&errors, path, message);
    }
}

#[test]
fn previous_cookie_keys_are_checked_like_the_current_one() {
    let with_previous = GOOD.replacen(
        "cookie_key: {env: PORTCULLIS_COOKIE_KEY}",
        "cookie_key: {env: PORTCULLIS_COOKIE_KEY}\n    \
         previous_cookie_keys: [{env: OLD_KEY_1}, {env: OLD_KEY_2}]",
        1,
    );
    let mut vars = env();
    let good_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string();
    vars.insert("OLD_KEY_1", good_key.clone());
    vars.insert("OLD_KEY_2", good_key.clone());
    let c = parse_with(&with_previous, &vars).unwrap();
    assert_eq!(c.sessions.previous_cookie_keys.len(), 2);

    vars.insert("OLD_KEY_1", "c2hvcnQ=".into());
    vars.insert("OLD_KEY_2", "!!".into());
    let errors = parse_with(&with_previous, &vars).unwrap_err();
    assert_error(
        &errors,
        "sessions.keys.previous_cookie_keys[0]",
        "at least 32 bytes",
    );
    assert_error(
        &errors,
        "sessions.keys.previous_cookie_keys[1]",
        "not valid base64",
    );

    vars.insert("OLD_KEY_1", good_key);
    let without_current = GOOD.replacen(
        "cookie_key: {env: PORTCULLIS_COOKIE_KEY}",
        "previous_cookie_keys: [{env: OLD_KEY_1}]",
        1,
    );
    assert_error(
        &parse_with(&without_current, &vars).unwrap_err(),
        "sessions.keys.previous_cookie_keys",
        "needs sessions.keys.cookie_key",
    );
}

#[test]
fn tls_upstreams_on_ip_addresses_need_a_server_name() {
    let c = parsed_after("    tls: false\n", "    tls: true\n");
    assert_eq!(
        c.upstreams["chat"].sni, "chat-backend.internal",
        "the first server given by name"
    );
    let errors = errors_after(
        "servers: [10.0.0.5:8080, \"chat-backend.internal:8080\"]\n    tls: false",
        "servers: [10.0.0.5:8080]\n    tls: true",
    );
    assert_error(&errors, "upstreams.chat.sni", "required when tls is true");
    let c = parsed_after(
        "servers: [10.0.0.5:8080, \"chat-backend.internal:8080\"]\n    tls: false",
        "servers: [10.0.0.5:8080]\n    tls: true\n    sni: chat.internal",
    );
    assert_eq!(c.upstreams["chat"].sni, "chat.internal");
    assert_error(
        &errors_after(
            "cookie: {name: portcullis}",
            "cookie: {name: portcullis, domain: \"exa mple.com\"}",
        ),
        "sessions.cookie.domain",
        "not a domain name",
    );
}

#[test]
fn deployment_ids_and_statuses_are_checked() {
    assert_error(
        &errors_after("id: open-1", "id: \"has space\""),
        "deployments[1].id",
        "letters, digits",
    );
    assert_error(
        &errors_after("status: inactive", "status: paused"),
        "deployments[1].status",
        "not a status",
    );
}

#[test]
fn broken_yaml_and_non_mappings_say_so() {
    let errors = parse_text("listen: [unclosed").unwrap_err();
    assert!(
        errors.0[0].message.starts_with("not valid YAML"),
        "{errors}"
    );
    let errors = parse_text("- a\n- b\n").unwrap_err();
    assert!(
        errors.0[0].message.contains("must be a YAML mapping"),
        "{errors}"
    );
    let errors = parse_text("").unwrap_err();
    assert_error(&errors, "listen", "at least one listener is required");
}

#[test]
fn the_shipped_example_and_demo_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = std::fs::read_to_string(root.join("conf/demo.yaml")).unwrap();
    parse_text(&demo).unwrap_or_else(|e| panic!("conf/demo.yaml: {e}"));
    let example = std::fs::read_to_string(root.join("conf/portcullis.example.yaml")).unwrap();
    let c = parse_text(&example).unwrap_or_else(|e| panic!("conf/portcullis.example.yaml: {e}"));
    assert!(!c.deployments.is_empty() && !c.routes.is_empty());
    // The example spells out the default list of stripped headers.
    assert_eq!(
        c.forwarding.strip_headers,
        Forwarding::default().strip_headers
    );
    // conf/compose/portcullis.yaml, the compose stack's, is checked by
    // tests/packaging.rs with `portcullis check`.
}

#[test]
fn token_api_settings_are_parsed_and_bounded() {
    let c = parse_text(GOOD).unwrap();
    assert_eq!(c.rate_limits, RateLimits::default());
    assert!(!c.messengers["support"].authentication.accept_id_tokens);
    assert_eq!(
        c.messengers["support"].session.refresh_reuse_grace,
        Duration::from_secs(10)
    );
    let c = parsed_after("compat: {hosted_paths: false}", "compat: {hosted_paths: true}\nrate_limits: {per_client: {per_minute: 30}, per_deployment: {per_minute: 900, burst: 50}}");
    assert!(c.compat.hosted_paths);
    assert_eq!(
        c.rate_limits.per_client,
        Rate {
            per_minute: 30,
            burst: 10
        },
        "the burst defaults to a third of the rate"
    );
    assert_eq!(c.rate_limits.per_deployment.burst, 50);
    assert_error(
        &errors_after(
            "compat: {hosted_paths: false}",
            "rate_limits: {per_client: {per_minute: 0}}",
        ),
        "rate_limits.per_client.per_minute",
        "between 1 and 1000000",
    );
    assert_error(
        &errors_after(
            "compat: {hosted_paths: false}",
            "rate_limits: {per_deployment: {per_minute: 10, burst: 0}}",
        ),
        "rate_limits.per_deployment.burst",
        "between 1 and 1000000",
    );
    assert_error(
        &errors_after(
            "compat: {hosted_paths: false}",
            "rate_limits: {per_client: {rate: 5}}",
        ),
        "rate_limits.per_client.rate",
        "unknown field",
    );
    assert_error(
        &errors_after(
            "token_lifetime: 15m}",
            "token_lifetime: 15m, refresh_reuse_grace: 2m}",
        ),
        "messengers.support.session.refresh_reuse_grace",
        "must be between",
    );
    let c = parse_text(&GOOD.replacen(
        "  public:\n    authentication: {enabled: false}",
        "  public:\n    authentication: {enabled: false, accept_id_tokens: true}",
        1,
    ));
    assert_error(
        &c.expect_err("accepted and ignored"),
        "messengers.public.authentication.accept_id_tokens",
        "has no effect while authentication is off",
    );
    let c = parse_text(&GOOD.replacen(
        "  public:\n    authentication: {enabled: false}",
        "  public:\n    authentication: {enabled: false, bearer_connections: until_idle}",
        1,
    ));
    assert_error(
        &c.expect_err("accepted and ignored"),
        "messengers.public.authentication.bearer_connections",
        "has no effect while authentication is off",
    );
    assert_error(
        &errors_after(
            "      allow_session_upgrade: false\n",
            "      allow_session_upgrade: false\n      bearer_connections: forever\n",
        ),
        "messengers.support.authentication.bearer_connections",
        "unknown variant",
    );
    assert_error(
        &errors_after(
            "    status: inactive\n    allow_all_origins: true",
            "    status: inactive\n    allow_all_origins: true\n    redirect_uris: [https://www.example.com/cb]",
        ),
        "deployments[1].redirect_uris",
        "has no effect",
    );
}

#[test]
fn bearer_connections_close_at_exp_unless_told_otherwise() {
    use crate::config::model::BearerConnections;
    let c = parse_text(GOOD).unwrap();
    assert_eq!(
        c.messengers["support"].authentication.bearer_connections,
        BearerConnections::CloseAtExp
    );
    let c = parsed_after(
        "      allow_session_upgrade: false\n",
        "      allow_session_upgrade: false\n      bearer_connections: until_idle\n",
    );
    assert_eq!(
        c.messengers["support"].authentication.bearer_connections,
        BearerConnections::UntilIdle
    );
}

#[test]
fn strip_headers_default_and_replace() {
    let defaults = parse_text(GOOD).unwrap().forwarding.strip_headers;
    assert_eq!(
        defaults,
        DEFAULT_STRIP_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
    );
    assert!(defaults.contains(&"x-original-url".to_string()));
    assert!(defaults.contains(&"x-http-method-override".to_string()));
    let forwarding = "forwarding: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}";
    let replaced = parsed_after(
        forwarding,
        "forwarding: {strip_headers: [X-Original-URL, X_Tenant_Route]}",
    );
    assert_eq!(
        replaced.forwarding.strip_headers,
        ["x-original-url", "x-tenant-route"]
    );
    let none = parsed_after(forwarding, "forwarding: {strip_headers: []}");
    assert!(none.forwarding.strip_headers.is_empty());
}

/// Names that may not carry identity but that operators could always strip
/// (portcullis sets its own request id after stripping).
#[test]
fn strip_headers_may_name_what_identity_may_not() {
    let c = parsed_after(
        "forwarding: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}",
        "forwarding: {strip_headers: [X-Real-IP, X_Request_Id, Proxy-Connection]}",
    );
    assert_eq!(c.forwarding.strip_headers.len(), 3);
}

#[test]
fn strip_headers_are_header_names_portcullis_does_not_handle_itself() {
    let errors = errors_after(
        "forwarding: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}",
        r#"forwarding: {strip_headers: ["Bad Header", Host, x-forwarded-for, Cookie, X-Auth-Subject, x_auth_email, X-Rewrite-URL, x-rewrite-url]}"#,
    );
    assert_error(
        &errors,
        "forwarding.strip_headers[0]",
        "not a valid header name",
    );
    assert_error(
        &errors,
        "forwarding.strip_headers[1]",
        "handled by portcullis",
    );
    assert_error(
        &errors,
        "forwarding.strip_headers[2]",
        "handled by portcullis",
    );
    assert_error(
        &errors,
        "forwarding.strip_headers[3]",
        "handled by portcullis",
    );
    assert_error(&errors, "forwarding.strip_headers[4]", "identity prefix");
    assert_error(&errors, "forwarding.strip_headers[5]", "identity prefix");
    assert_error(&errors, "forwarding.strip_headers[7]", "listed twice");
    assert!(!errors.contains("forwarding.strip_headers[6]", ""));
    assert_error(
        &errors_after(
            "forwarding: {trusted_proxies: [10.0.0.0/8, 192.0.2.1]}",
            "forwarding: {strip_headers: X-Original-URL}",
        ),
        "forwarding.strip_headers",
        "expected a sequence",
    );
}

#[test]
fn connection_ceilings_are_optional_and_at_least_one() {
    let c = parse_text(GOOD).unwrap();
    assert_eq!(
        c.limits.max_connections, None,
        "derived at start by default"
    );
    assert!(c.deployments.iter().all(|d| d.max_connections.is_none()));
    let c = parse_text(
        &GOOD
            .replacen(
                "compat: {hosted_paths: false}",
                "compat: {hosted_paths: false}\nlimits: {max_connections: 5000}",
                1,
            )
            .replacen(
                "    upstream: chat\n    access_token_query",
                "    upstream: chat\n    max_connections: 200\n    access_token_query",
                1,
            ),
    )
    .unwrap();
    assert_eq!(c.limits.max_connections, Some(5000));
    assert_eq!(c.deployments[0].max_connections, Some(200));
    assert_eq!(c.deployments[1].max_connections, None);
    assert_error(
        &errors_after(
            "compat: {hosted_paths: false}",
            "limits: {max_connections: 0}",
        ),
        "limits.max_connections",
        "must be between 1 and",
    );
    assert_error(
        &errors_after(
            "    upstream: chat\n    access_token_query",
            "    upstream: chat\n    max_connections: 0\n    access_token_query",
        ),
        "deployments[0].max_connections",
        "make the deployment inactive",
    );
}

/// A CA-issued certificate for `names` written to `dir` as `<stem>.crt`
/// and `<stem>.key`; returns their paths.
fn write_certificate(dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}-ca.pem")), ca.pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[test]
fn tls_listeners_take_sni_certificates_checked_at_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path(), "default", &["localhost"]);
    let (chat_cert, chat_key) = write_certificate(dir.path(), "chat", &["chat.example.com"]);
    let (_, other_key) = write_certificate(dir.path(), "other", &["chat.example.com"]);
    let listen = |tls: &str| {
        GOOD.replacen(
            "  - address: 127.0.0.1:8080\n",
            &format!("  - address: 127.0.0.1:8080\n  - address: 127.0.0.1:8443\n    tls: {tls}\n"),
            1,
        )
    };
    let good = format!(
        "{{cert: \"{cert}\", key: \"{key}\", sni: [{{names: [Chat.Example.com], cert: \"{chat_cert}\", key: \"{chat_key}\"}}]}}\n    hsts: {{max_age: 30d, include_subdomains: true}}"
    );
    let c = parse_text(&listen(&good)).unwrap();
    let tls = c.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.sni[0].names, ["chat.example.com"]);
    assert_eq!(
        c.listeners[1].hsts.unwrap().header_value(),
        "max-age=2592000; includeSubDomains"
    );
    let errors = |tls: String| parse_text(&listen(&tls)).unwrap_err();
    assert_error(
        &errors(format!("{{cert: \"{cert}\", key: \"{other_key}\"}}")),
        "listen[1].tls.key",
        "is not the key of the certificate",
    );
    assert_error(
        &errors(format!("{{cert: \"{cert}\", key: \"{key}\", sni: [{{names: [www.example.com], cert: \"{chat_cert}\", key: \"{chat_key}\"}}]}}")),
        "listen[1].tls.sni[0].names[0]",
        "not issued for `www.example.com`",
    );
    assert_error(
        &errors(format!("{{cert: \"{cert}\", key: \"{key}\", sni: [{{names: [\"*.example.com\"], cert: \"{chat_cert}\", key: \"{chat_key}\"}}]}}")),
        "listen[1].tls.sni[0].names[0]",
        "not issued for `*.example.com`",
    );
    // A bad name does not hide a bad file.
    let both = errors(format!("{{cert: \"{cert}\", key: \"{other_key}\", sni: [{{names: [\"*.com\"], cert: \"{chat_cert}\", key: \"{chat_key}\"}}]}}"));
    assert_error(&both, "listen[1].tls.sni[0].names[0]", "two labels");
    assert_error(&both, "listen[1].tls.key", "is not the key");
    assert_error(
        &errors(format!(
            "{{cert: \"{}/missing.crt\", key: \"{key}\"}}",
            dir.path().display()
        )),
        "listen[1].tls.cert",
        "cannot read",
    );
    assert_error(
        &errors(format!(
            "{{cert: \"{cert}\", key: \"{key}\"}}\n    hsts: {{preload: true}}"
        )),
        "listen[1].hsts.preload",
        "include_subdomains",
    );
    // HSTS means nothing over plain HTTP.
    assert_error(
        &errors_after(
            "  - address: 127.0.0.1:8080\n",
            "  - address: 127.0.0.1:8080\n    hsts: {max_age: 1d}\n",
        ),
        "listen[0].hsts",
        "only on a TLS listener",
    );
    // The admin listener takes the same block.
    let c = parsed_after(
        "  address: 127.0.0.1:9090\n",
        &format!("  address: 127.0.0.1:9090\n  tls: {{cert: \"{cert}\", key: \"{key}\"}}\n"),
    );
    assert!(c.admin.unwrap().tls.is_some());
    assert_error(
        &errors_after(
            "  address: 127.0.0.1:9090\n",
            &format!(
                "  address: 127.0.0.1:9090\n  tls: {{cert: \"{cert}\", key: \"{other_key}\"}}\n"
            ),
        ),
        "admin.tls.key",
        "is not the key",
    );
}

#[test]
fn upstream_ca_files_are_read_and_need_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path(), "up", &["chat.internal"]);
    let ca = dir.path().join("up-ca.pem").display().to_string();
    let c = parsed_after(
        "    tls: false\n",
        &format!("    tls: true\n    ca_file: \"{ca}\"\n"),
    );
    assert_eq!(
        c.upstreams["chat"].ca.as_ref().unwrap().certificates.len(),
        1
    );
    // An empty SNI name would turn Pingora's verification off: refused.
    assert_error(
        &errors_after(
            "    tls: false\n",
            &format!("    tls: true\n    sni: \"\"\n    ca_file: \"{ca}\"\n"),
        ),
        "upstreams.chat.sni",
        "required when tls is true",
    );
    assert_error(
        &errors_after(
            "    tls: false\n",
            &format!("    tls: false\n    ca_file: \"{ca}\"\n"),
        ),
        "upstreams.chat.ca_file",
        "only with tls: true",
    );
    assert_error(
        &errors_after(
            "    tls: false\n",
            &format!(
                "    tls: true\n    ca_file: \"{}/none.pem\"\n",
                dir.path().display()
            ),
        ),
        "upstreams.chat.ca_file",
        "cannot read",
    );
}

#[test]
fn the_admin_listener_needs_an_address_of_its_own() {
    let errors = errors_after("  address: 127.0.0.1:9090", "  address: 127.0.0.1:8080");
    assert_error(&errors, "admin.address", "also a proxy listener's address");
}
