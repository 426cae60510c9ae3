//! The admin status page (`GET /admin/`): the set-up as the hosted
//! product's admin views show it: providers, messengers, deployments, live
//! sessions and the last reload. `StatusSnapshot::collect` reads the running
//! state into plain data; `render` turns a snapshot into HTML and is a pure
//! function, tested without a server.
//!
//! Every value shown comes from the configuration or a provider and is
//! untrusted: the page is built with `maud`, which escapes every
//! interpolated value for its context, and carries no script. Secrets
//! (client secrets, tokens, keys) are not in the snapshot at all, so the
//! page cannot show them.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::config::{DeploymentStatus, OriginPolicy, Require, SessionStore};
use crate::runtime::State;

/// Everything the page shows, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub version: String,
    pub now_unix: u64,
    pub config_path: Option<String>,
    pub config_loaded_unix: u64,
    pub last_reload: Option<ReloadView>,
    pub draining: bool,
    pub providers: Vec<ProviderView>,
    pub messengers: Vec<MessengerView>,
    pub deployments: Vec<DeploymentView>,
    pub sessions: SessionsView,
}

#[derive(Debug, Clone)]
pub struct ReloadView {
    pub at_unix: u64,
    /// The change summary, or why the new file was rejected.
    pub result: Result<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProviderView {
    pub name: String,
    pub issuer: String,
    pub discovery_url: String,
    pub client_id: String,
    /// Whether the discovery document was fetched and accepted.
    pub discovered: bool,
    /// Keys present and within their lifetime plus `jwks_max_stale`.
    pub keys_usable: bool,
    /// Seconds since the cached key set was fetched; `None` before the first fetch.
    pub jwks_age_secs: Option<u64>,
    pub key_ids: Vec<String>,
    pub algorithms: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MessengerView {
    pub name: String,
    pub authentication: bool,
    pub provider: Option<String>,
    /// The `require` rules, one line each.
    pub rules: Vec<String>,
    /// Session lifetimes, e.g. `max 24h, idle 30m, token 15m`.
    pub lifetimes: String,
}

#[derive(Debug, Clone, Default)]
pub struct DeploymentView {
    pub id: String,
    pub name: Option<String>,
    pub messenger: String,
    pub active: bool,
    /// `None`: every origin (`allow_all_origins`).
    pub allowed_origins: Option<Vec<String>>,
    pub upstream: String,
    /// Each server and whether its health check passes (true without checks).
    pub upstream_servers: Vec<(String, bool)>,
    pub live_connections: usize,
    /// Where the site's snippet is served; absolute when `public_url` is set.
    pub snippet_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct SessionsView {
    pub store: &'static str,
    pub reachable: bool,
    /// Live sessions in the store; `None` where counting is not cheap (Redis).
    pub in_store: Option<u64>,
    /// Distinct sessions with a live connection on this instance.
    pub with_live_connections_here: usize,
    pub live_connections_here: usize,
}

/// What a path segment must encode: all but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn short(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The `require` rules of a messenger, one line each.
pub fn describe_rules(require: &Require) -> Vec<String> {
    let mut rules = Vec::new();
    for (claim, value) in &require.claims {
        rules.push(format!("claim {claim} = {value}"));
    }
    if !require.groups_any.is_empty() {
        rules.push(format!(
            "in any group of: {}",
            require.groups_any.join(", ")
        ));
    }
    if !require.groups_all.is_empty() {
        rules.push(format!(
            "in every group of: {}",
            require.groups_all.join(", ")
        ));
    }
    if !require.email_domains.is_empty() {
        let verified = if require.allow_unverified_email {
            " (verified or not)"
        } else {
            " (verified)"
        };
        rules.push(format!(
            "email in: {}{verified}",
            require.email_domains.join(", ")
        ));
    }
    rules
}

impl StatusSnapshot {
    /// Reads the running state.
    pub fn collect(state: &State) -> Self {
        let runtime = state.runtime();
        let config = &runtime.config;
        let now = SystemTime::now();
        let providers = config
            .providers
            .values()
            .map(|p| {
                let service = runtime.providers.get(&p.name);
                let keys = service.and_then(|s| s.jwks.key_ids());
                ProviderView {
                    name: p.name.clone(),
                    issuer: p.issuer.clone(),
                    discovery_url: p.discovery_url.to_string(),
                    client_id: p.client_id.clone(),
                    discovered: service.is_some_and(|s| s.metadata().is_some()),
                    keys_usable: service.is_some_and(|s| s.jwks.is_usable()),
                    jwks_age_secs: keys.as_ref().map(|(fetched, _)| {
                        now.duration_since(*fetched).unwrap_or_default().as_secs()
                    }),
                    key_ids: keys.map(|(_, ids)| ids).unwrap_or_default(),
                    algorithms: p.algorithms.clone(),
                }
            })
            .collect();
        let messengers = config
            .messengers
            .values()
            .map(|m| MessengerView {
                name: m.name.clone(),
                authentication: m.authentication.enabled,
                provider: m.authentication.provider.clone(),
                rules: describe_rules(&m.authentication.require),
                lifetimes: format!(
                    "max {}, idle {}, token {}",
                    short(m.session.max_lifetime),
                    short(m.session.idle_timeout),
                    short(m.session.token_lifetime)
                ),
            })
            .collect();
        let live = state.connections.counts_by_deployment();
        let base = config
            .public_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let deployments = config
            .deployments
            .iter()
            .map(|d| {
                let upstream_servers = runtime
                    .deployment(&d.id)
                    .map(|rt| {
                        let backends = rt.upstream.balancer.backends();
                        backends
                            .get_backend()
                            .iter()
                            .map(|b| (b.addr.to_string(), backends.ready(b)))
                            .collect()
                    })
                    .unwrap_or_default();
                DeploymentView {
                    id: d.id.clone(),
                    name: d.name.clone(),
                    messenger: d.messenger.clone(),
                    active: d.status == DeploymentStatus::Active,
                    allowed_origins: match &d.origins {
                        OriginPolicy::Any => None,
                        OriginPolicy::List(list) => Some(list.clone()),
                    },
                    upstream: d.upstream.clone(),
                    upstream_servers,
                    live_connections: live.get(&d.id).copied().unwrap_or(0),
                    snippet_url: format!(
                        "{base}/.auth/deployments/{}/snippet",
                        percent_encoding::utf8_percent_encode(&d.id, PATH_SEGMENT)
                    ),
                }
            })
            .collect();
        let connections = state.connections.list(None);
        let mut sessions_here: Vec<&str> = connections
            .iter()
            .filter_map(|c| c.session.as_deref())
            .collect();
        sessions_here.sort_unstable();
        sessions_here.dedup();
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_unix: unix(now),
            config_path: state.config_path.as_ref().map(|p| p.display().to_string()),
            config_loaded_unix: unix(runtime.loaded_at),
            last_reload: state.last_reload.lock().as_ref().map(|r| ReloadView {
                at_unix: unix(r.at),
                result: r.result.clone(),
            }),
            draining: state.is_draining(),
            providers,
            messengers,
            deployments,
            sessions: SessionsView {
                store: match config.sessions.store {
                    SessionStore::Memory => "memory",
                    SessionStore::Redis(_) => "redis",
                },
                reachable: state.sessions.reachable(),
                in_store: state.sessions.approximate_count(),
                with_live_connections_here: sessions_here.len(),
                live_connections_here: connections.len(),
            },
        }
    }
}

/// The page's only style sheet, allowed by its hash in the CSP.
const CSS: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}\
table{border-collapse:collapse;margin-bottom:1.5rem}\
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f2f2f2}.ok{color:#0a6b2d}.bad{color:#b00020;font-weight:bold}\
code{font-size:.9em}ul{margin:0;padding-left:1.1rem}";

/// The `Content-Security-Policy` of the page: nothing may load or run but
/// its own style element; it cannot be framed, and has no forms.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CSS.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    })
}

fn ago(now: u64, then: u64) -> String {
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(now.saturating_sub(then)))
    )
}

/// `2m 5s` for 125 seconds.
fn age_text(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn state_word(ok: bool, good: &'static str, bad: &'static str) -> Markup {
    html! { span class=(if ok { "ok" } else { "bad" }) { (if ok { good } else { bad }) } }
}

/// The page, as HTML.
pub fn render(s: &StatusSnapshot) -> String {
    let deployments_by_messenger: HashMap<&str, usize> =
        s.deployments.iter().fold(HashMap::new(), |mut m, d| {
            *m.entry(d.messenger.as_str()).or_default() += 1;
            m
        });
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "portcullis status" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "portcullis " (s.version) }
                p {
                    "Configuration "
                    @if let Some(path) = &s.config_path { code { (path) } " " }
                    "loaded " (ago(s.now_unix, s.config_loaded_unix)) ". "
                    @if s.draining { span class="bad" { "Draining: shutting down." } }
                }
                h2 id="reload" { "Last reload" }
                @match &s.last_reload {
                    None => p { "No reload since start." },
                    Some(r) => p {
                        (ago(s.now_unix, r.at_unix)) ": "
                        @match &r.result {
                            Ok(summary) => { span class="ok" { "applied" } " (" (summary) ")" }
                            Err(why) => { span class="bad" { "rejected" } "; the previous configuration keeps serving: " code { (why) } }
                        }
                    },
                }
                h2 id="providers" { "Providers" }
                @if s.providers.is_empty() { p { "None configured." } } @else {
                    table {
                        tr { th { "name" } th { "issuer" } th { "client id" } th { "discovery" } th { "signing keys" } th { "key ids" } th { "algorithms" } }
                        @for p in &s.providers {
                            tr {
                                td { (p.name) }
                                td { code { (p.issuer) } }
                                td { code { (p.client_id) } }
                                td { (state_word(p.discovered, "discovered", "not discovered")) br; code { (p.discovery_url) } }
                                td {
                                    (state_word(p.keys_usable, "usable", "unusable"))
                                    @if let Some(age) = p.jwks_age_secs { ", fetched " (age_text(age)) " ago" } @else { ", never fetched" }
                                }
                                td { ul { @for kid in &p.key_ids { li { code { (kid) } } } } }
                                td { (p.algorithms.join(", ")) }
                            }
                        }
                    }
                }
                h2 id="messengers" { "Messengers" }
                table {
                    tr { th { "name" } th { "authentication" } th { "provider" } th { "rules" } th { "sessions" } th { "deployments" } }
                    @for m in &s.messengers {
                        tr {
                            td { (m.name) }
                            td { (if m.authentication { "enabled" } else { "disabled" }) }
                            td { (m.provider.as_deref().unwrap_or("-")) }
                            td {
                                @if m.rules.is_empty() { "-" } @else { ul { @for rule in &m.rules { li { (rule) } } } }
                            }
                            td { @if m.authentication { (m.lifetimes) } @else { "-" } }
                            td { (deployments_by_messenger.get(m.name.as_str()).copied().unwrap_or(0)) }
                        }
                    }
                }
                h2 id="deployments" { "Deployments" }
                table {
                    tr { th { "id" } th { "name" } th { "messenger" } th { "status" } th { "allowed origins" } th { "upstream" } th { "live connections" } th { "snippet" } }
                    @for d in &s.deployments {
                        tr {
                            td { code { (d.id) } }
                            td { (d.name.as_deref().unwrap_or("-")) }
                            td { (d.messenger) }
                            td { (state_word(d.active, "active", "inactive")) }
                            td {
                                @match &d.allowed_origins {
                                    None => "any origin",
                                    Some(list) => ul { @for o in list { li { code { (o) } } } },
                                }
                            }
                            td {
                                (d.upstream)
                                ul { @for (server, healthy) in &d.upstream_servers {
                                    li { code { (server) } " " (state_word(*healthy, "healthy", "unhealthy")) }
                                } }
                            }
                            td { (d.live_connections) }
                            td {
                                @if d.snippet_url.starts_with('/') { code { (d.snippet_url) } " (on the proxy listener)" }
                                @else { a href=(d.snippet_url) rel="noreferrer" { "snippet" } }
                            }
                        }
                    }
                }
                h2 id="sessions" { "Sessions" }
                table {
                    tr { th { "store" } td { (s.sessions.store) " " (state_word(s.sessions.reachable, "reachable", "unreachable")) } }
                    tr { th { "live sessions in the store" } td {
                        @match s.sessions.in_store { Some(n) => (n), None => "not counted (shared store)" }
                    } }
                    tr { th { "sessions with live connections here" } td { (s.sessions.with_live_connections_here) } }
                    tr { th { "live connections here" } td { (s.sessions.live_connections_here) } }
                }
            }
        }
    };
    page.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str =
        "https://evil.example/\"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;";

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            version: "0.1.0".into(),
            now_unix: 1_000,
            config_path: Some("/etc/portcullis/portcullis.yaml".into()),
            config_loaded_unix: 900,
            last_reload: Some(ReloadView {
                at_unix: 940,
                result: Err("deployments[0].upstream: unknown upstream `<b>x</b>`".into()),
            }),
            draining: false,
            providers: vec![ProviderView {
                name: "okta".into(),
                issuer: HOSTILE.into(),
                discovery_url: format!("{HOSTILE}/.well-known/openid-configuration"),
                client_id: "portcullis".into(),
                discovered: true,
                keys_usable: true,
                jwks_age_secs: Some(120),
                key_ids: vec!["key-2026-11".into(), "</td><script>k</script>".into()],
                algorithms: vec!["RS256".into()],
            }],
            messengers: vec![MessengerView {
                name: "support".into(),
                authentication: true,
                provider: Some("okta".into()),
                rules: vec!["in any group of: customers".into()],
                lifetimes: "max 1day, idle 30m, token 15m".into(),
            }],
            deployments: vec![DeploymentView {
                id: "3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10".into(),
                name: Some("website".into()),
                messenger: "support".into(),
                active: true,
                allowed_origins: Some(vec![HOSTILE.into(), "https://www.example.com".into()]),
                upstream: "chat".into(),
                upstream_servers: vec![("10.0.0.5:8080".into(), true), ("10.0.0.6:8080".into(), false)],
                live_connections: 7,
                snippet_url: "https://chat.example.com/.auth/deployments/3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10/snippet".into(),
            }],
            sessions: SessionsView {
                store: "memory",
                reachable: true,
                in_store: Some(12),
                with_live_connections_here: 5,
                live_connections_here: 7,
            },
        }
    }

    #[test]
    fn the_page_shows_the_set_up() {
        let page = render(&snapshot());
        for shown in [
            "portcullis 0.1.0",
            "okta",
            "key-2026-11",
            "discovered",
            "fetched 2m ago",
            "support",
            "in any group of: customers",
            "3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10",
            "website",
            "https://www.example.com",
            "10.0.0.6:8080</code> <span class=\"bad\">unhealthy",
            "<td>7</td>",
            "href=\"https://chat.example.com/.auth/deployments/3f1c9a52-6a8b-4c1e-9a0e-2f4b8d7e6c10/snippet\"",
            "rejected",
            "1m 40s ago",
            "<td>12</td>",
        ] {
            assert!(page.contains(shown), "{shown:?} missing from\n{page}");
        }
    }

    #[test]
    fn every_untrusted_value_is_escaped() {
        let page = render(&snapshot());
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>x</b>"));
        // The hostile string is shown, as text, quote and all.
        assert!(
            page.contains("https://evil.example/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;")
        );
        assert!(page.contains("&amp;amp;"));
        assert!(page.contains("&lt;/td&gt;&lt;script&gt;k&lt;/script&gt;"));
    }

    #[test]
    fn a_snippet_link_without_public_url_is_text_not_a_link() {
        let mut s = snapshot();
        s.deployments[0].snippet_url = "/.auth/deployments/web/snippet".into();
        let page = render(&s);
        assert!(
            page.contains("<code>/.auth/deployments/web/snippet</code> (on the proxy listener)")
        );
        assert!(!page.contains("href=\"/.auth"));
    }

    #[test]
    fn the_style_sheet_is_the_one_the_policy_allows() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"));
        assert!(!csp.contains("unsafe"));
        let page = render(&snapshot());
        assert!(page.contains(&format!("<style>{CSS}</style>")));
    }
}
