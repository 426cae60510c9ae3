//! Raw YAML → validated model. Each section, map entry and list element is
//! deserialized on its own so that one bad entry does not hide the problems
//! of the others; then every value is checked and every reference resolved.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::model::*;
use super::raw::*;
use super::{ConfigError, ConfigErrors, Environment};

/// The sections a configuration file may have, in the order they are documented.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "threads",
    "admin",
    "providers",
    "messengers",
    "deployments",
    "upstreams",
    "routes",
    "sessions",
    "logging",
    "compat",
    "forwarding",
    "identity_header_prefix",
    "limits",
    "rate_limits",
    "shutdown",
];

/// Algorithms a provider may be configured to accept. HMAC and `none` are
/// deliberately absent: a provider's keys are public.
const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Headers an identity mapping may never overwrite: they carry routing,
/// framing or credentials.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "authorization",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Names that, beyond [`RESERVED_HEADERS`], cannot carry identity (though
/// `forwarding.strip_headers` may name them, as it always could).
const NOT_IDENTITY_HEADERS: &[&str] = &[
    // Set (or, `X-Real-IP`, removed) by portcullis on every upstream
    // request: an identity header of the name would replace portcullis's
    // request id, or send the `X-Real-IP` it promises to remove.
    "x-request-id",
    "x-real-ip",
    // Governs the connection: Pingora will not prewrite it
    // (vendor/pingora-http/PATCHED.md §2).
    "proxy-connection",
];

const MIN_SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Every name the file declares, for reference checks.
struct Declared {
    providers: HashSet<String>,
    messengers: HashSet<String>,
    upstreams: HashSet<String>,
    deployments: HashSet<String>,
}

struct Checker<'a> {
    errors: Vec<ConfigError>,
    base_dir: &'a Path,
    env: &'a dyn Environment,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes `value` as `T`, recording a located error on failure.
    fn decode<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let message = e.into_inner().to_string();
                self.error(join_path(path, &inner), strip_location(&message));
                None
            }
        }
    }

    /// Decodes each element of a sequence on its own, keeping its index.
    fn decode_list<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Vec<(usize, T)> {
        match value {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    self.decode(&format!("{path}[{i}]"), item)
                        .map(|decoded| (i, decoded))
                })
                .collect(),
            _ => {
                self.error(path, "expected a list");
                Vec::new()
            }
        }
    }

    /// Decodes each entry of a mapping on its own, keeping its key.
    fn decode_map<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Vec<(String, T)> {
        match value {
            Value::Null => Vec::new(),
            Value::Mapping(entries) => {
                let mut out = Vec::new();
                for (key, item) in entries {
                    let Some(name) = key.as_str() else {
                        self.error(path, "keys must be strings");
                        continue;
                    };
                    let entry_path = format!("{path}.{name}");
                    if !is_entity_name(name) {
                        self.error(
                            &entry_path,
                            "names may use letters, digits, '-' and '_' only (1 to 64 characters)",
                        );
                        continue;
                    }
                    if let Some(decoded) = self.decode(&entry_path, item) {
                        out.push((name.to_string(), decoded));
                    }
                }
                out
            }
            _ => {
                self.error(path, "expected a mapping of names to entries");
                Vec::new()
            }
        }
    }

    fn duration(&mut self, path: &str, value: Option<&Value>, default: Duration) -> Duration {
        match value {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) => Duration::from_secs(secs),
                None => {
                    self.error(path, "a duration must be a whole, non-negative number of seconds or text such as 30s, 15m, 24h");
                    default
                }
            },
            Some(Value::String(text)) => match humantime::parse_duration(text.trim()) {
                Ok(d) => d,
                Err(_) => {
                    self.error(
                        path,
                        format!("`{text}` is not a duration (use e.g. 30s, 15m, 24h, 7d)"),
                    );
                    default
                }
            },
            Some(_) => {
                self.error(path, "a duration must be text such as 30s, 15m, 24h");
                default
            }
        }
    }

    fn bounded_duration(
        &mut self,
        path: &str,
        value: Option<&Value>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d < min || d > max {
            self.error(
                path,
                format!(
                    "must be between {} and {}",
                    short_duration(min),
                    short_duration(max)
                ),
            );
        }
        d
    }

    /// Resolves `{env: NAME}` or `{file: PATH}`. Inline values are refused
    /// unless `allow_plain`, for values that are only sometimes secret.
    fn secret(&mut self, path: &str, value: &Value, allow_plain: bool) -> Option<Secret> {
        if let (Value::String(plain), true) = (value, allow_plain) {
            return Some(Secret::new(plain.clone()));
        }
        let Value::Mapping(map) = value else {
            self.error(
                path,
                "secrets are not written inline: use {env: VARIABLE} or {file: /path/to/file}",
            );
            return None;
        };
        let source: RawSecretSource = self.decode(path, &Value::Mapping(map.clone()))?;
        match (source.env, source.file) {
            (Some(name), None) => match self.env.var(&name) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                Some(_) => {
                    self.error(path, format!("environment variable {name} is empty"));
                    None
                }
                None => {
                    self.error(path, format!("environment variable {name} is not set"));
                    None
                }
            },
            (None, Some(file)) => {
                let full = self.resolve_path(&file);
                match std::fs::read_to_string(&full) {
                    Ok(content) => {
                        let trimmed = content.trim_end_matches(['\r', '\n']).to_string();
                        if trimmed.is_empty() {
                            self.error(path, format!("file {} is empty", full.display()));
                            None
                        } else {
                            Some(Secret::new(trimmed))
                        }
                    }
                    Err(e) => {
                        self.error(path, format!("cannot read file {}: {e}", full.display()));
                        None
                    }
                }
            }
            _ => {
                self.error(path, "give exactly one of `env` or `file`");
                None
            }
        }
    }

    /// A listener's `tls` block: paths resolved, every certificate loaded
    /// and checked (`certificates`), each problem reported at its own path.
    /// `None` when anything is wrong.
    fn tls_files(&mut self, path: &str, raw: RawTls) -> Option<TlsFiles> {
        let mut sni = Vec::new();
        let mut names_ok = true;
        for (i, entry) in raw.sni.into_iter().enumerate() {
            let entry = SniCertificate {
                names: entry
                    .names
                    .iter()
                    .map(|n| n.trim().to_ascii_lowercase())
                    .collect(),
                cert: self.resolve_path(&entry.cert),
                key: self.resolve_path(&entry.key),
            };
            for (j, message) in super::certificates::check_sni_names(&entry) {
                names_ok = false;
                if j == usize::MAX {
                    self.error(format!("{path}.sni[{i}].names"), message);
                } else {
                    self.error(format!("{path}.sni[{i}].names[{j}]"), message);
                }
            }
            sni.push(entry);
        }
        let files = TlsFiles {
            cert: self.resolve_path(&raw.cert),
            key: self.resolve_path(&raw.key),
            sni,
        };
        // With a bad name, the files are still checked (their problems
        // reported too), without the names.
        let checked = match names_ok {
            true => files.clone(),
            false => TlsFiles {
                sni: files
                    .sni
                    .iter()
                    .map(|e| SniCertificate {
                        names: Vec::new(),
                        ..e.clone()
                    })
                    .collect(),
                ..files.clone()
            },
        };
        match super::certificates::load_set(&checked, super::certificates::now()) {
            Ok(_) if names_ok => Some(files),
            Ok(_) => None,
            Err(errors) => {
                for e in errors {
                    self.error(format!("{path}.{}", e.field), e.message);
                }
                None
            }
        }
    }

    fn hsts(&mut self, path: &str, raw: RawHsts) -> Hsts {
        const YEAR: Duration = Duration::from_secs(365 * 86400);
        let max_age = self.bounded_duration(
            &format!("{path}.max_age"),
            raw.max_age.as_ref(),
            YEAR,
            Duration::from_secs(0),
            Duration::from_secs(2 * 365 * 86400),
        );
        if raw.preload && (!raw.include_subdomains || max_age < YEAR) {
            self.error(
                format!("{path}.preload"),
                "preload lists require include_subdomains: true and a max_age of at least 365d",
            );
        }
        Hsts {
            max_age,
            include_subdomains: raw.include_subdomains,
            preload: raw.preload,
        }
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretSource {
    env: Option<String>,
    file: Option<String>,
}

/// Names declared under a mapping section, whether or not their entries
/// decoded: a reference to a broken entry is not reported a second time as
/// a reference to nothing.
fn declared_names(value: &Value) -> HashSet<String> {
    match value {
        Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => HashSet::new(),
    }
}

/// Deployment ids declared in the list, including entries that failed to decode.
fn declared_ids(value: &Value) -> HashSet<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.get("id").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => HashSet::new(),
    }
}

/// A duration the way operators write them in this file: `90d`, `15m`, `500ms`.
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_millis()) {
        (0, 0) => "0s".to_string(),
        (s, 0) if s % 86400 == 0 => format!("{}d", s / 86400),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

fn join_path(prefix: &str, inner: &str) -> String {
    match inner {
        "" | "." => prefix.to_string(),
        _ if inner.starts_with('[') => format!("{prefix}{inner}"),
        _ if prefix.is_empty() => inner.to_string(),
        _ => format!("{prefix}.{inner}"),
    }
}

/// serde_yaml_ng appends "at line N column M" relative to the fragment being
/// decoded, which is meaningless once sections are decoded separately.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn is_entity_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Deployment ids are what clients send (`deploymentId`); the hosted product
/// uses UUIDs, and any short URL-safe token is accepted.
pub fn is_deployment_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// Parses `scheme://host[:port]` into its serialized origin form
/// (lowercase host, default port elided). Paths, queries, fragments and
/// userinfo are refused: an origin is exactly what browsers send.
pub fn parse_origin(text: &str) -> Result<String, &'static str> {
    let url = url::Url::parse(text).map_err(|_| "not an origin (expected scheme://host[:port])")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("an origin's scheme must be http or https");
    }
    if url.host_str().is_none() {
        return Err("not an origin (expected scheme://host[:port])");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("an origin has no user information");
    }
    let has_extra = url.query().is_some()
        || url.fragment().is_some()
        || (url.path() != "/" && !url.path().is_empty())
        || text.trim_end().ends_with('/');
    if has_extra {
        return Err("an origin has no path, query or fragment (expected scheme://host[:port])");
    }
    Ok(url.origin().ascii_serialization())
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An absolute http(s) URL; plain http only for loopback hosts.
fn parse_web_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err("must use https (plain http is accepted only for loopback hosts)".into())
        }
        other => return Err(format!("unsupported scheme `{other}` (expected https)")),
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user information".into());
    }
    Ok(url)
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address (expected ip:port, e.g. 127.0.0.1:8080 or [::1]:8080)")
    })
}

/// `host:port` where host is an IP literal or a DNS name.
fn check_server(text: &str) -> Result<(), String> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("`{text}` is not a server (expected host:port)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid_host {
        Ok(())
    } else {
        Err(bad())
    }
}

fn check_path_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with '/'");
    }
    if prefix.contains(['?', '#', '%', '\\']) || prefix.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(
            "must be a plain path (no query, fragment, percent-encoding, backslash or spaces)",
        );
    }
    if prefix.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("must not contain '.' or '..' segments");
    }
    if prefix == "/.auth" || prefix.starts_with("/.auth/") {
        return Err("/.auth/ is reserved for portcullis's own endpoints");
    }
    Ok(())
}

pub(super) fn validate(
    text: &str,
    base_dir: &Path,
    env: &dyn Environment,
) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        errors: Vec::new(),
        base_dir,
        env,
    };
    let doc: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            c.error("", format!("not valid YAML: {e}"));
            return Err(ConfigErrors(c.errors));
        }
    };
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            c.error(
                "",
                "the file must be a YAML mapping of sections (listen, deployments, ...)",
            );
            return Err(ConfigErrors(c.errors));
        }
    };
    for key in top.keys() {
        match key.as_str() {
            Some(k) if TOP_LEVEL_KEYS.contains(&k) => {}
            // An empty key (`"": x`, `!!binary :`) has no path to name.
            Some("") => c.error(
                "",
                format!(
                    "a top-level key is empty; expected one of {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ),
            Some(k) => c.error(
                k,
                format!("unknown key; expected one of {}", TOP_LEVEL_KEYS.join(", ")),
            ),
            None => c.error("", "top-level keys must be strings"),
        }
    }
    let get = |k: &str| top.get(k).cloned().unwrap_or(Value::Null);

    let listeners = listeners(&mut c, &get("listen"));
    let public_url = public_url(&mut c, &get("public_url"));
    let threads = threads(&mut c, &get("threads"));
    let admin = admin(&mut c, &get("admin"));
    if let Some(a) = &admin {
        if listeners.iter().any(|l| l.address == a.address) {
            c.error(
                "admin.address",
                format!(
                    "{} is also a proxy listener's address: give the admin listener its own",
                    a.address
                ),
            );
        }
    }
    let declared = Declared {
        providers: declared_names(&get("providers")),
        messengers: declared_names(&get("messengers")),
        upstreams: declared_names(&get("upstreams")),
        deployments: declared_ids(&get("deployments")),
    };
    let providers = providers(&mut c, &get("providers"));
    let identity_header_prefix = identity_prefix(&mut c, &get("identity_header_prefix"));
    let messengers = messengers(
        &mut c,
        &get("messengers"),
        &declared,
        &identity_header_prefix,
    );
    let upstreams = upstreams(&mut c, &get("upstreams"));
    let deployments = deployments(&mut c, &get("deployments"), &declared, &messengers);
    let routes = routes(&mut c, &get("routes"), &declared);
    let sessions = sessions(&mut c, &get("sessions"));
    let logging = logging(&mut c, &get("logging"));
    let compat = c
        .decode::<Option<RawCompat>>("compat", &get("compat"))
        .flatten()
        .map(|r| Compat {
            hosted_paths: r.hosted_paths,
        })
        .unwrap_or_default();
    let forwarding = forwarding(&mut c, &get("forwarding"), &identity_header_prefix);
    let limits = limits(&mut c, &get("limits"));
    let rate_limits = rate_limits(&mut c, &get("rate_limits"));
    let shutdown = shutdown(&mut c, &get("shutdown"));

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        listeners,
        public_url,
        threads,
        admin,
        providers,
        messengers,
        deployments,
        upstreams,
        routes,
        sessions,
        logging,
        compat,
        forwarding,
        identity_header_prefix,
        limits,
        rate_limits,
        shutdown,
    })
}

fn shutdown(c: &mut Checker, value: &Value) -> Shutdown {
    let defaults = Shutdown::default();
    let Some(raw) = c.decode::<Option<RawShutdown>>("shutdown", value).flatten() else {
        return defaults;
    };
    Shutdown {
        drain_grace: c.bounded_duration(
            "shutdown.drain_grace",
            raw.drain_grace.as_ref(),
            defaults.drain_grace,
            Duration::ZERO,
            Duration::from_secs(300),
        ),
        close_window: c.bounded_duration(
            "shutdown.close_window",
            raw.close_window.as_ref(),
            defaults.close_window,
            Duration::ZERO,
            Duration::from_secs(300),
        ),
    }
}

fn listeners(c: &mut Checker, value: &Value) -> Vec<Listener> {
    let raw: Vec<(usize, RawListener)> = c.decode_list("listen", value);
    if matches!(value, Value::Null) || matches!(value, Value::Sequence(s) if s.is_empty()) {
        c.error("listen", "at least one listener is required");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in raw {
        let path = format!("listen[{i}]");
        let address = match parse_socket_addr(&l.address) {
            Ok(a) => a,
            Err(e) => {
                c.error(format!("{path}.address"), e);
                continue;
            }
        };
        if !seen.insert(address) {
            c.error(
                format!("{path}.address"),
                format!("{address} is listed twice"),
            );
        }
        let has_tls = l.tls.is_some();
        let tls = l.tls.and_then(|t| c.tls_files(&format!("{path}.tls"), t));
        let hsts = l.hsts.map(|h| c.hsts(&format!("{path}.hsts"), h));
        if hsts.is_some() && !has_tls {
            c.error(
                format!("{path}.hsts"),
                "only on a TLS listener: browsers ignore Strict-Transport-Security over plain HTTP",
            );
        }
        out.push(Listener { address, tls, hsts });
    }
    out
}

fn public_url(c: &mut Checker, value: &Value) -> Option<url::Url> {
    let text: String = c.decode::<Option<String>>("public_url", value).flatten()?;
    match parse_web_url(&text) {
        Ok(url) if url.query().is_some() => {
            c.error("public_url", "must not have a query");
            None
        }
        Ok(url) => Some(url),
        Err(e) => {
            c.error("public_url", e);
            None
        }
    }
}

fn threads(c: &mut Checker, value: &Value) -> usize {
    let default = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match c.decode::<Option<usize>>("threads", value).flatten() {
        None => default,
        Some(n) if (1..=1024).contains(&n) => n,
        Some(_) => {
            c.error("threads", "must be between 1 and 1024");
            default
        }
    }
}

fn admin(c: &mut Checker, value: &Value) -> Option<Admin> {
    let raw: RawAdmin = c.decode::<Option<RawAdmin>>("admin", value).flatten()?;
    let address = match parse_socket_addr(&raw.address) {
        Ok(a) => a,
        Err(e) => {
            c.error("admin.address", e);
            return None;
        }
    };
    let token = raw
        .token
        .as_ref()
        .and_then(|t| c.secret("admin.token", t, false));
    if raw.token.is_none() && !address.ip().is_loopback() {
        c.error(
            "admin.token",
            "required when the admin address is not loopback (metrics and admin actions would be open to the network)",
        );
    }
    let tls = raw.tls.and_then(|t| c.tls_files("admin.tls", t));
    Some(Admin {
        address,
        token,
        tls,
    })
}

fn providers(c: &mut Checker, value: &Value) -> BTreeMap<String, Provider> {
    let mut out = BTreeMap::new();
    for (name, p) in c.decode_map::<RawProvider>("providers", value) {
        let path = format!("providers.{name}");
        let issuer = match parse_web_url(&p.issuer) {
            Ok(_) => Some(p.issuer.clone()),
            Err(e) => {
                c.error(format!("{path}.issuer"), e);
                None
            }
        };
        let discovery_url = match (&p.discovery_url, &issuer) {
            (Some(d), _) => match parse_web_url(d) {
                Ok(u) => Some(u),
                Err(e) => {
                    c.error(format!("{path}.discovery_url"), e);
                    None
                }
            },
            (None, Some(iss)) => {
                let base = iss.trim_end_matches('/');
                url::Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()
            }
            (None, None) => None,
        };
        if p.client_id.trim().is_empty() {
            c.error(format!("{path}.client_id"), "must not be empty");
        }
        let client_secret = p
            .client_secret
            .as_ref()
            .and_then(|s| c.secret(&format!("{path}.client_secret"), s, false));
        let jwks = jwks_settings(c, &path, &p);
        let scopes = p
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            c.error(format!("{path}.scopes"), "must include `openid`");
        }
        for (i, s) in scopes.iter().enumerate() {
            if s.is_empty()
                || s.bytes()
                    .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
            {
                c.error(format!("{path}.scopes[{i}]"), "not a valid scope token");
            }
        }
        let algorithms = p
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
        if algorithms.is_empty() {
            c.error(
                format!("{path}.algorithms"),
                "must list at least one algorithm",
            );
        }
        for (i, a) in algorithms.iter().enumerate() {
            if SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
                continue;
            }
            let why = if a.eq_ignore_ascii_case("none") {
                "`none` is never accepted".to_string()
            } else if a.to_ascii_uppercase().starts_with("HS") {
                "HMAC algorithms are never accepted with a provider's public keys".to_string()
            } else {
                format!(
                    "unsupported algorithm `{a}` (supported: {})",
                    SUPPORTED_ALGORITHMS.join(", ")
                )
            };
            c.error(format!("{path}.algorithms[{i}]"), why);
        }
        let clock_skew = c.bounded_duration(
            &format!("{path}.clock_skew"),
            p.clock_skew.as_ref(),
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::from_secs(300),
        );
        let max_token_bytes = match p.max_token_bytes {
            None => 8 * 1024,
            Some(n) if (1024..=65536).contains(&n) => n,
            Some(_) => {
                c.error(
                    format!("{path}.max_token_bytes"),
                    "must be between 1024 and 65536",
                );
                8 * 1024
            }
        };
        let http_timeout = c.bounded_duration(
            &format!("{path}.http_timeout"),
            p.http_timeout.as_ref(),
            Duration::from_secs(5),
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        if let (Some(issuer), Some(discovery_url)) = (issuer, discovery_url) {
            out.insert(
                name.clone(),
                Provider {
                    name,
                    issuer: issuer.to_string(),
                    discovery_url,
                    client_id: p.client_id,
                    client_secret,
                    scopes,
                    audiences: p.audiences,
                    algorithms,
                    clock_skew,
                    max_token_bytes,
                    http_timeout,
                    jwks,
                },
            );
        }
    }
    out
}

fn jwks_settings(c: &mut Checker, path: &str, p: &RawProvider) -> JwksSettings {
    let defaults = JwksSettings::default();
    let hour = Duration::from_secs(3600);
    let min_ttl = c.bounded_duration(
        &format!("{path}.jwks_min_ttl"),
        p.jwks_min_ttl.as_ref(),
        defaults.min_ttl,
        Duration::from_secs(1),
        24 * hour,
    );
    let max_ttl = c.bounded_duration(
        &format!("{path}.jwks_max_ttl"),
        p.jwks_max_ttl.as_ref(),
        defaults.max_ttl,
        Duration::from_secs(1),
        7 * 24 * hour,
    );
    if min_ttl > max_ttl {
        c.error(
            format!("{path}.jwks_min_ttl"),
            "must not exceed jwks_max_ttl",
        );
    }
    let refetch_interval = c.bounded_duration(
        &format!("{path}.jwks_refetch_interval"),
        p.jwks_refetch_interval.as_ref(),
        defaults.refetch_interval,
        Duration::from_secs(1),
        24 * hour,
    );
    let max_stale = c.bounded_duration(
        &format!("{path}.jwks_max_stale"),
        p.jwks_max_stale.as_ref(),
        defaults.max_stale,
        Duration::ZERO,
        7 * 24 * hour,
    );
    JwksSettings {
        min_ttl,
        max_ttl,
        refetch_interval,
        max_stale,
    }
}

fn identity_prefix(c: &mut Checker, value: &Value) -> String {
    let prefix = c
        .decode::<Option<String>>("identity_header_prefix", value)
        .flatten()
        .unwrap_or_else(|| "X-Auth-".to_string());
    if prefix.len() < 2 || prefix.len() > MAX_IDENTITY_PREFIX || !is_header_name(&prefix) {
        c.error(
            "identity_header_prefix",
            format!("must be the start of a header name, 2 to {MAX_IDENTITY_PREFIX} characters (default X-Auth-)"),
        );
    }
    prefix
}

/// The longest `identity_header_prefix`: room for any header name a
/// backend would take, far below what a header name may be.
const MAX_IDENTITY_PREFIX: usize = 64;

fn messengers(
    c: &mut Checker,
    value: &Value,
    declared: &Declared,
    identity_prefix: &str,
) -> BTreeMap<String, Messenger> {
    let providers = &declared.providers;
    let mut out = BTreeMap::new();
    for (name, m) in c.decode_map::<RawMessenger>("messengers", value) {
        let path = format!("messengers.{name}");
        let auth = m.authentication;
        if auth.enabled {
            match &auth.provider {
                None => c.error(
                    format!("{path}.authentication.provider"),
                    "required when authentication is enabled",
                ),
                Some(p) if !providers.contains(p) => c.error(
                    format!("{path}.authentication.provider"),
                    format!("unknown provider `{p}`{}", known_list(providers)),
                ),
                Some(_) => {}
            }
        } else if let Some(p) = &auth.provider {
            if !providers.contains(p) {
                c.error(
                    format!("{path}.authentication.provider"),
                    format!("unknown provider `{p}`{}", known_list(providers)),
                );
            }
        }
        if auth.bearer_connections.is_some() && !auth.enabled {
            c.error(
                format!("{path}.authentication.bearer_connections"),
                "has no effect while authentication is off",
            );
        }
        if auth.accept_id_tokens && !auth.enabled {
            c.error(
                format!("{path}.authentication.accept_id_tokens"),
                "has no effect while authentication is off",
            );
        }
        // Accepted and ignored would tell the operator something works that
        // does not: session upgrade needs the guest-api profile.
        if auth.allow_session_upgrade {
            c.error(
                format!("{path}.authentication.allow_session_upgrade"),
                "session upgrade is not built yet (it arrives with the guest-api profile): remove the key or set it to false",
            );
        }
        // Without authentication there is nobody to hold to rules, no
        // session to time and no identity to sign: such keys would be read
        // by nothing. `require` above all: an operator who writes it
        // beside `enabled: false` believes the rules hold, and they do not.
        if !auth.enabled {
            if auth.require.is_some() {
                c.error(
                    format!("{path}.authentication.require"),
                    "has no effect while authentication is off: nobody is identified, so no rule can hold (everyone passes)",
                );
            }
            if m.session.is_some() {
                c.error(
                    format!("{path}.session"),
                    "has no effect while authentication is off (no sessions, no tokens, no refresh tokens)",
                );
            }
            if m.assertion {
                c.error(
                    format!("{path}.assertion"),
                    "has no effect while authentication is off: there is no identity to sign",
                );
            }
            if !m.identity_headers.is_empty() {
                c.error(
                    format!("{path}.identity_headers"),
                    "has no effect while authentication is off: there are no claims to send (client copies are stripped by the identity prefix anyway)",
                );
            }
        }
        let require = auth
            .require
            .map(|r| require(c, &format!("{path}.authentication.require"), r))
            .unwrap_or_default();
        let session = session_lifetimes(c, &format!("{path}.session"), m.session);
        let prefix_lower = normalize_header_name(identity_prefix);
        let mut mapped_names = HashSet::new();
        for header in m.identity_headers.keys() {
            let hp = format!("{path}.identity_headers.{header}");
            let normalized = normalize_header_name(header);
            if !is_header_name(header) {
                c.error(hp, "not a valid header name");
            } else if RESERVED_HEADERS
                .iter()
                .chain(NOT_IDENTITY_HEADERS)
                .any(|reserved| *reserved == normalized)
            {
                // Normalized as for stripping: a backend that reads `_` as
                // `-` would take `X_Forwarded_For` for the real one.
                c.error(hp, "this header cannot carry identity");
            } else if !normalized.starts_with(&prefix_lower) {
                c.error(
                    hp,
                    format!("identity headers must start with the identity prefix `{identity_prefix}` so that spoofed copies are always stripped"),
                );
            } else if BUILT_IN_IDENTITY_HEADERS.contains(&&normalized[prefix_lower.len()..]) {
                c.error(
                    hp,
                    "portcullis sends this header itself: choose another name",
                );
            } else if !mapped_names.insert(normalized) {
                // Header names ignore case, and many servers read `_` as `-`:
                // a backend could see two values under one name.
                c.error(
                    hp,
                    "another identity header has the same name (up to case and `_`/`-`)",
                );
            }
        }
        for (header, claim) in &m.identity_headers {
            if claim.is_empty() {
                c.error(
                    format!("{path}.identity_headers.{header}"),
                    "claim name must not be empty",
                );
            }
        }
        out.insert(
            name.clone(),
            Messenger {
                name,
                authentication: Authentication {
                    enabled: auth.enabled,
                    provider: auth.provider,
                    allow_session_upgrade: auth.allow_session_upgrade,
                    accept_id_tokens: auth.accept_id_tokens,
                    bearer_connections: auth.bearer_connections.unwrap_or_default(),
                    require,
                },
                session,
                identity_headers: m.identity_headers,
                assertion: m.assertion,
            },
        );
    }
    out
}

/// Header names compared the way an upstream might read them: lowercase, `_` as `-`.
pub fn normalize_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            _ => b.to_ascii_lowercase() as char,
        })
        .collect()
}

fn known_list(names: &HashSet<String>) -> String {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        " (none are defined)".to_string()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

fn require(c: &mut Checker, path: &str, r: RawRequire) -> Require {
    for (i, d) in r.email_domains.iter().enumerate() {
        let valid = !d.is_empty()
            && !d.contains('@')
            && d.split('.').count() >= 2
            && d.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            c.error(
                format!("{path}.email_domains[{i}]"),
                "not a domain (expected e.g. example.com)",
            );
        }
    }
    for (field, groups) in [("groups_any", &r.groups_any), ("groups_all", &r.groups_all)] {
        for (i, g) in groups.iter().enumerate() {
            if g.is_empty() {
                c.error(
                    format!("{path}.{field}[{i}]"),
                    "group names must not be empty",
                );
            }
        }
    }
    // The opt-out relaxes a check that only `email_domains` makes: alone it
    // would look like a rule while changing nothing.
    if r.allow_unverified_email && r.email_domains.is_empty() {
        c.error(
            format!("{path}.allow_unverified_email"),
            "has no effect without email_domains (only email_domains checks email_verified)",
        );
    }
    for (claim, v) in &r.claims {
        if matches!(v, serde_json::Value::Null) {
            c.error(
                format!("{path}.claims.{claim}"),
                "a required claim needs a value to compare with",
            );
        }
    }
    Require {
        claims: r.claims,
        groups_any: r.groups_any,
        groups_all: r.groups_all,
        email_domains: r
            .email_domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        allow_unverified_email: r.allow_unverified_email,
    }
}

fn session_lifetimes(
    c: &mut Checker,
    path: &str,
    raw: Option<RawSessionLifetimes>,
) -> SessionLifetimes {
    let defaults = SessionLifetimes::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let max_lifetime = c.bounded_duration(
        &format!("{path}.max_lifetime"),
        raw.max_lifetime.as_ref(),
        defaults.max_lifetime,
        MIN_SESSION_LIFETIME,
        MAX_SESSION_LIFETIME,
    );
    let idle_timeout = c.bounded_duration(
        &format!("{path}.idle_timeout"),
        raw.idle_timeout.as_ref(),
        defaults.idle_timeout.min(max_lifetime),
        Duration::from_secs(60),
        MAX_SESSION_LIFETIME,
    );
    if idle_timeout > max_lifetime {
        c.error(
            format!("{path}.idle_timeout"),
            "must not exceed max_lifetime",
        );
    }
    let token_lifetime = c.bounded_duration(
        &format!("{path}.token_lifetime"),
        raw.token_lifetime.as_ref(),
        defaults.token_lifetime.min(max_lifetime),
        Duration::from_secs(5),
        Duration::from_secs(24 * 3600),
    );
    if token_lifetime > max_lifetime {
        c.error(
            format!("{path}.token_lifetime"),
            "must not exceed max_lifetime",
        );
    }
    let refresh_reuse_grace = c.bounded_duration(
        &format!("{path}.refresh_reuse_grace"),
        raw.refresh_reuse_grace.as_ref(),
        defaults.refresh_reuse_grace,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    SessionLifetimes {
        max_lifetime,
        idle_timeout,
        token_lifetime,
        refresh_reuse_grace,
    }
}

fn upstreams(c: &mut Checker, value: &Value) -> BTreeMap<String, Upstream> {
    let mut out = BTreeMap::new();
    for (name, u) in c.decode_map::<RawUpstream>("upstreams", value) {
        let path = format!("upstreams.{name}");
        if u.servers.is_empty() {
            c.error(format!("{path}.servers"), "at least one server is required");
        }
        let mut seen = HashSet::new();
        for (i, s) in u.servers.iter().enumerate() {
            if let Err(e) = check_server(s) {
                c.error(format!("{path}.servers[{i}]"), e);
            } else if !seen.insert(s.as_str()) {
                c.error(
                    format!("{path}.servers[{i}]"),
                    format!("`{s}` is listed twice"),
                );
            }
        }
        // Default SNI: the first server given by name (IP literals have none).
        let sni = u.sni.clone().unwrap_or_else(|| {
            u.servers
                .iter()
                .filter_map(|s| s.rsplit_once(':').map(|(host, _)| host))
                .find(|host| !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err())
                .unwrap_or_default()
                .to_string()
        });
        if u.tls && sni.is_empty() {
            c.error(
                format!("{path}.sni"),
                "required when tls is true and the servers are IP addresses: the name their certificates are issued for",
            );
        }
        let ca = u.ca_file.as_ref().and_then(|file| {
            if !u.tls {
                c.error(
                    format!("{path}.ca_file"),
                    "only with tls: true (a plain upstream has no certificate to verify)",
                );
                return None;
            }
            let file = c.resolve_path(file);
            match super::certificates::load_ca_file(&file) {
                Ok(certificates) => Some(UpstreamCa { file, certificates }),
                Err(e) => {
                    c.error(format!("{path}.ca_file"), e);
                    None
                }
            }
        });
        let health_check = u.health_check.map(|h| {
            let hp = format!("{path}.health_check");
            let check_path = h.path.unwrap_or_else(|| "/".to_string());
            if !check_path.starts_with('/') || check_path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                c.error(format!("{hp}.path"), "must be a path starting with '/'");
            }
            let interval = c.bounded_duration(
                &format!("{hp}.interval"),
                h.interval.as_ref(),
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_secs(3600),
            );
            let timeout = c.bounded_duration(
                &format!("{hp}.timeout"),
                h.timeout.as_ref(),
                Duration::from_secs(1).min(interval),
                Duration::from_millis(50),
                Duration::from_secs(60),
            );
            if timeout > interval {
                c.error(format!("{hp}.timeout"), "must not exceed the interval");
            }
            HealthCheck {
                path: check_path,
                interval,
                timeout,
            }
        });
        let connect_timeout = c.bounded_duration(
            &format!("{path}.connect_timeout"),
            u.connect_timeout.as_ref(),
            Duration::from_secs(3),
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        let read_timeout = c.bounded_duration(
            &format!("{path}.read_timeout"),
            u.read_timeout.as_ref(),
            Duration::from_secs(60),
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        out.insert(
            name.clone(),
            Upstream {
                name,
                servers: u.servers,
                tls: u.tls,
                sni,
                sni_configured: u.sni.is_some(),
                ca,
                health_check,
                connect_timeout,
                read_timeout,
            },
        );
    }
    out
}

fn deployments(
    c: &mut Checker,
    value: &Value,
    declared: &Declared,
    validated_messengers: &BTreeMap<String, Messenger>,
) -> Vec<Deployment> {
    let (messengers, upstreams) = (&declared.messengers, &declared.upstreams);
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for (i, d) in c.decode_list::<RawDeployment>("deployments", value) {
        let path = format!("deployments[{i}]");
        if !is_deployment_id(&d.id) {
            c.error(
                format!("{path}.id"),
                "a deployment id uses letters, digits, '-', '_' and '.' only (1 to 64 characters)",
            );
        } else if !ids.insert(d.id.clone()) {
            c.error(
                format!("{path}.id"),
                format!("duplicate deployment id `{}`", d.id),
            );
        }
        if !messengers.contains(&d.messenger) {
            c.error(
                format!("{path}.messenger"),
                format!(
                    "unknown messenger `{}`{}",
                    d.messenger,
                    known_list(messengers)
                ),
            );
        }
        if !upstreams.contains(&d.upstream) {
            c.error(
                format!("{path}.upstream"),
                format!("unknown upstream `{}`{}", d.upstream, known_list(upstreams)),
            );
        }
        let status = match d.status.as_deref() {
            None | Some("active") => DeploymentStatus::Active,
            Some("inactive") => DeploymentStatus::Inactive,
            Some(other) => {
                c.error(
                    format!("{path}.status"),
                    format!("`{other}` is not a status (expected active or inactive)"),
                );
                DeploymentStatus::Inactive
            }
        };
        let origins = if d.allow_all_origins {
            if !d.allowed_origins.is_empty() {
                c.error(
                    format!("{path}.allow_all_origins"),
                    "set either allowed_origins or allow_all_origins: true, not both",
                );
            }
            OriginPolicy::Any
        } else {
            let mut list = Vec::new();
            for (j, o) in d.allowed_origins.iter().enumerate() {
                match parse_origin(o) {
                    Ok(origin) => list.push(origin),
                    Err(e) => c.error(format!("{path}.allowed_origins[{j}]"), e),
                }
            }
            OriginPolicy::List(list)
        };
        let authenticates = validated_messengers
            .get(&d.messenger)
            .is_none_or(|m| m.authentication.enabled);
        if !d.redirect_uris.is_empty() && !authenticates {
            c.error(
                format!("{path}.redirect_uris"),
                format!(
                    "has no effect: messenger `{}` has authentication off, so the token API refuses this deployment",
                    d.messenger
                ),
            );
        }
        let mut redirect_uris = Vec::new();
        for (j, r) in d.redirect_uris.iter().enumerate() {
            match parse_web_url(r) {
                Ok(u) => redirect_uris.push(u),
                Err(e) => c.error(format!("{path}.redirect_uris[{j}]"), e),
            }
        }
        out.push(Deployment {
            id: d.id,
            name: d.name,
            messenger: d.messenger,
            status,
            origins,
            allow_missing_origin: d.allow_missing_origin,
            upstream: d.upstream,
            access_token_query: d.access_token_query,
            forward_token: d.forward_token,
            redirect_uris,
            max_connections: max_connections(
                c,
                &format!("{path}.max_connections"),
                d.max_connections,
            ),
        });
    }
    out
}

fn routes(c: &mut Checker, value: &Value, declared: &Declared) -> Vec<Route> {
    let known = &declared.deployments;
    let mut prefixes = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in c.decode_list::<RawRoute>("routes", value) {
        let path = format!("routes[{i}]");
        if let Err(e) = check_path_prefix(&r.path_prefix) {
            c.error(format!("{path}.path_prefix"), e);
        } else if !prefixes.insert(r.path_prefix.clone()) {
            c.error(
                format!("{path}.path_prefix"),
                format!("`{}` is used by another route", r.path_prefix),
            );
        }
        let deployment = match (r.deployment_from, r.deployment) {
            (Some(_), Some(_)) => {
                c.error(
                    path.clone(),
                    "give either `deployment` or `deployment_from`, not both",
                );
                continue;
            }
            (Some(from), None) => {
                if from.query.is_empty() {
                    c.error(
                        format!("{path}.deployment_from.query"),
                        "must name a query parameter",
                    );
                }
                DeploymentSource::Query(from.query)
            }
            (None, Some(id)) => {
                if !known.contains(&id) {
                    c.error(
                        format!("{path}.deployment"),
                        format!("unknown deployment `{id}`"),
                    );
                }
                DeploymentSource::Fixed(id)
            }
            (None, None) => DeploymentSource::Query("deploymentId".to_string()),
        };
        let profile = match r.profile.as_deref() {
            None | Some("standard") => RouteProfile::Standard,
            Some("guest-api") => {
                c.error(
                    format!("{path}.profile"),
                    "the guest-api profile is not built yet: use standard (the default)",
                );
                RouteProfile::Standard
            }
            Some(other) => {
                c.error(
                    format!("{path}.profile"),
                    format!("`{other}` is not a profile (expected standard or guest-api)"),
                );
                RouteProfile::Standard
            }
        };
        out.push(Route {
            name: r.name.unwrap_or_else(|| r.path_prefix.clone()),
            path_prefix: r.path_prefix,
            deployment,
            profile,
        });
    }
    out
}

/// `sessions.redis`: exactly one of `url` and `sentinel`, secrets from env
/// or file, timeouts within bounds. `None` when the block is unusable (its
/// errors are recorded).
fn redis_store(c: &mut Checker, redis: Option<RawRedis>) -> SessionStore {
    let Some(r) = redis else {
        c.error("sessions.redis", "required when sessions.store is redis");
        return SessionStore::Memory;
    };
    let mut usable = true;
    let mut url_scheme = None;
    let mut url_has_password = false;
    let target = match (r.url, r.sentinel) {
        (Some(url), None) => match c.secret("sessions.redis.url", &url, true) {
            Some(secret) => {
                match url::Url::parse(secret.expose()) {
                    Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => {
                        url_scheme = Some(u.scheme().to_string());
                        url_has_password = u.password().is_some();
                        // A password written into the file in plain text.
                        if url_has_password && matches!(url, Value::String(_)) {
                            c.error(
                                "sessions.redis.url",
                                "a URL with a password is a secret: use {env: VARIABLE} or {file: PATH}, or give the password as sessions.redis.password",
                            );
                            usable = false;
                        }
                    }
                    _ => {
                        c.error(
                            "sessions.redis.url",
                            "not a Redis URL (expected redis://host:port/db, rediss://... or redis+unix:///path)",
                        );
                        usable = false;
                    }
                }
                Some(RedisTarget::Url(secret))
            }
            None => None,
        },
        (None, Some(sentinel)) => {
            if sentinel.master.trim().is_empty() {
                c.error(
                    "sessions.redis.sentinel.master",
                    "must name the monitored primary",
                );
                usable = false;
            }
            if sentinel.nodes.is_empty() {
                c.error(
                    "sessions.redis.sentinel.nodes",
                    "list at least one sentinel as host:port",
                );
                usable = false;
            }
            for (i, node) in sentinel.nodes.iter().enumerate() {
                if !host_port(node) {
                    c.error(
                        format!("sessions.redis.sentinel.nodes[{i}]"),
                        format!("`{node}` is not host:port"),
                    );
                    usable = false;
                }
            }
            Some(RedisTarget::Sentinel {
                master: sentinel.master,
                nodes: sentinel.nodes,
            })
        }
        (Some(_), Some(_)) => {
            c.error(
                "sessions.redis",
                "give either `url` or `sentinel`, not both",
            );
            None
        }
        (None, None) => {
            c.error(
                "sessions.redis",
                "give `url` (one server) or `sentinel` (a monitored primary)",
            );
            None
        }
    };
    if let Some(name) = &r.username {
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            c.error("sessions.redis.username", "a user name without spaces");
            usable = false;
        }
    }
    let password = r
        .password
        .as_ref()
        .and_then(|v| c.secret("sessions.redis.password", v, false));
    if r.password.is_some() && password.is_none() {
        usable = false;
    }
    if password.is_some() && url_has_password {
        c.error(
            "sessions.redis.password",
            "the URL already carries a password: give it in one place",
        );
        usable = false;
    }
    let tls = match (url_scheme.as_deref(), r.tls) {
        (Some("rediss"), Some(false)) => {
            c.error(
                "sessions.redis.tls",
                "a rediss:// URL always uses TLS: remove `tls: false`",
            );
            usable = false;
            true
        }
        (Some("rediss"), _) => true,
        (Some("redis+unix" | "unix"), Some(true)) => {
            c.error("sessions.redis.tls", "a Unix socket does not use TLS");
            usable = false;
            false
        }
        (_, tls) => tls.unwrap_or(false),
    };
    let connect_timeout = c.bounded_duration(
        "sessions.redis.connect_timeout",
        r.connect_timeout.as_ref(),
        DEFAULT_REDIS_CONNECT_TIMEOUT,
        Duration::from_millis(100),
        Duration::from_secs(60),
    );
    let command_timeout = c.bounded_duration(
        "sessions.redis.command_timeout",
        r.command_timeout.as_ref(),
        DEFAULT_REDIS_COMMAND_TIMEOUT,
        Duration::from_millis(10),
        Duration::from_secs(30),
    );
    let local_cache = c.bounded_duration(
        "sessions.redis.local_cache",
        r.local_cache.as_ref(),
        DEFAULT_REDIS_LOCAL_CACHE,
        Duration::ZERO,
        Duration::from_secs(300),
    );
    let key_prefix = r
        .key_prefix
        .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
    let prefix_ok = !key_prefix.is_empty()
        && key_prefix.len() <= 64
        && key_prefix.bytes().all(|b| b.is_ascii_graphic());
    if !prefix_ok {
        c.error(
            "sessions.redis.key_prefix",
            "1 to 64 printable ASCII characters without spaces (e.g. portcullis:)",
        );
        usable = false;
    }
    match target {
        Some(target) if usable => SessionStore::Redis(Redis {
            target,
            username: r.username,
            password,
            tls,
            connect_timeout,
            command_timeout,
            key_prefix,
            local_cache,
        }),
        _ => SessionStore::Memory,
    }
}

/// `host:port` with a port number.
fn host_port(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn sessions(c: &mut Checker, value: &Value) -> Sessions {
    let raw = c.decode::<Option<RawSessions>>("sessions", value).flatten();
    let (store, memory_max_bytes, redis, cookie, keys) = match raw {
        Some(r) => (r.store, r.memory_max_bytes, r.redis, r.cookie, r.keys),
        None => (None, None, None, None, None),
    };
    let memory_max_bytes_set = memory_max_bytes.is_some();
    let memory_max_bytes = memory_budget(c, memory_max_bytes.as_ref());
    let store = match store.as_deref() {
        None | Some("memory") => {
            if redis.is_some() {
                c.error(
                    "sessions.redis",
                    "has no effect while sessions.store is memory: remove it",
                );
            }
            SessionStore::Memory
        }
        Some("redis") => {
            if memory_max_bytes_set {
                c.error(
                    "sessions.memory_max_bytes",
                    "has no effect while sessions.store is redis: remove it",
                );
            }
            redis_store(c, redis)
        }
        Some(other) => {
            c.error(
                "sessions.store",
                format!("`{other}` is not a store (expected memory or redis)"),
            );
            SessionStore::Memory
        }
    };
    let (cookie_name, cookie_domain) = match cookie {
        Some(ck) => (ck.name.unwrap_or_else(|| "portcullis".into()), ck.domain),
        None => ("portcullis".into(), None),
    };
    if let Some(domain) = &cookie_domain {
        let valid = domain.len() <= 253
            && domain.trim_start_matches('.').split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            c.error(
                "sessions.cookie.domain",
                "not a domain name (expected e.g. example.com)",
            );
        }
    }
    let cookie_name_ok = !cookie_name.is_empty()
        && cookie_name.len() <= 64
        && cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !cookie_name_ok {
        c.error(
            "sessions.cookie.name",
            "a cookie name uses letters, digits, '-', '_' and '.' only (1 to 64 characters)",
        );
    }
    let (cookie_key, previous_cookie_keys, signing_key, previous_signing_keys) = match keys {
        Some(k) => {
            let cookie_key = k
                .cookie_key
                .as_ref()
                .and_then(|v| cookie_key_secret(c, "sessions.keys.cookie_key".into(), v));
            let previous_cookie_keys: Vec<Secret> = k
                .previous_cookie_keys
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    cookie_key_secret(c, format!("sessions.keys.previous_cookie_keys[{i}]"), v)
                })
                .collect();
            if cookie_key.is_none() && !k.previous_cookie_keys.is_empty() {
                c.error(
                    "sessions.keys.previous_cookie_keys",
                    "needs sessions.keys.cookie_key (the key new cookies are sealed with)",
                );
            }
            let signing_key = k
                .signing_key
                .as_ref()
                .and_then(|v| c.secret("sessions.keys.signing_key", v, false));
            if let Some(key) = &signing_key {
                if !key.expose().contains("-----BEGIN") {
                    c.error(
                        "sessions.keys.signing_key",
                        "expected a PEM-encoded private key",
                    );
                }
            }
            let mut previous = Vec::new();
            for (i, v) in k.previous_signing_keys.iter().enumerate() {
                let key_path = format!("sessions.keys.previous_signing_keys[{i}]");
                if let Some(key) = c.secret(&key_path, v, false) {
                    if !key.expose().contains("-----BEGIN") {
                        c.error(key_path, "expected a PEM-encoded key");
                    }
                    previous.push(key);
                }
            }
            (cookie_key, previous_cookie_keys, signing_key, previous)
        }
        None => (None, Vec::new(), None, Vec::new()),
    };
    Sessions {
        store,
        memory_max_bytes,
        cookie_name,
        cookie_domain,
        cookie_key,
        previous_cookie_keys,
        signing_key,
        previous_signing_keys,
    }
}

/// `sessions.memory_max_bytes`: whole bytes, or text such as `512KiB`,
/// `256MiB`, `2GiB`.
fn memory_budget(c: &mut Checker, value: Option<&Value>) -> u64 {
    const PATH: &str = "sessions.memory_max_bytes";
    let parsed = match value {
        None | Some(Value::Null) => return DEFAULT_MEMORY_MAX_BYTES,
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(text)) => parse_bytes(text),
        Some(_) => None,
    };
    match parsed {
        Some(n) if (MIN_MEMORY_MAX_BYTES..=MAX_MEMORY_MAX_BYTES).contains(&n) => n,
        Some(_) => {
            c.error(PATH, "must be between 1MiB and 64GiB");
            DEFAULT_MEMORY_MAX_BYTES
        }
        None => {
            c.error(
                PATH,
                "not a size (use whole bytes or text such as 512KiB, 256MiB, 2GiB)",
            );
            DEFAULT_MEMORY_MAX_BYTES
        }
    }
}

fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

/// A cookie key: a secret that decodes from base64 to 32 bytes or more.
fn cookie_key_secret(c: &mut Checker, path: String, value: &RawSecret) -> Option<Secret> {
    let key = c.secret(&path, value, false)?;
    match base64::engine::general_purpose::STANDARD.decode(key.expose().trim()) {
        Ok(bytes) if bytes.len() >= 32 => Some(key),
        Ok(bytes) => {
            c.error(
                path,
                format!(
                    "must be at least 32 bytes once base64-decoded (got {})",
                    bytes.len()
                ),
            );
            None
        }
        Err(_) => {
            c.error(path, "not valid base64");
            None
        }
    }
}

fn logging(c: &mut Checker, value: &Value) -> Logging {
    let raw = c.decode::<Option<RawLogging>>("logging", value).flatten();
    let (format, level) = match raw {
        Some(r) => (r.format, r.level),
        None => (None, None),
    };
    let format = match format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.error(
                "logging.format",
                format!("`{other}` is not a log format (expected json or text)"),
            );
            LogFormat::Text
        }
    };
    let level = level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        c.error(
            "logging.level",
            format!(
                "`{level}` is not a level or filter (expected e.g. info, debug, portcullis=debug)"
            ),
        );
    }
    Logging { format, level }
}

fn forwarding(c: &mut Checker, value: &Value, identity_prefix: &str) -> Forwarding {
    let Some(raw) = c
        .decode::<Option<RawForwarding>>("forwarding", value)
        .flatten()
    else {
        return Forwarding::default();
    };
    let mut trusted_proxies = Vec::new();
    for (i, p) in raw.trusted_proxies.iter().enumerate() {
        let parsed = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => c.error(
                format!("forwarding.trusted_proxies[{i}]"),
                format!("`{p}` is not an IP address or CIDR range"),
            ),
        }
    }
    let strip_headers = match raw.strip_headers {
        Some(names) => strip_headers(c, &names, identity_prefix),
        None => Forwarding::default().strip_headers,
    };
    Forwarding {
        trusted_proxies,
        strip_headers,
    }
}

/// `forwarding.strip_headers`: header names, lowercased with `_` as `-`
/// (they are matched the way identity headers are). Names portcullis
/// handles itself (framing, credentials, `Origin`, `X-Forwarded-*`, the
/// identity prefix) are refused: stripping them would either break the
/// request or do nothing, since portcullis sets them after stripping.
fn strip_headers(c: &mut Checker, names: &[String], identity_prefix: &str) -> Vec<String> {
    let prefix = normalize_header_name(identity_prefix);
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = format!("forwarding.strip_headers[{i}]");
        let normalized = normalize_header_name(name);
        if !is_header_name(name) {
            c.error(path, format!("`{name}` is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&normalized.as_str()) {
            c.error(
                path,
                format!("`{name}` is handled by portcullis itself and cannot be stripped"),
            );
        } else if normalized.starts_with(&prefix) {
            c.error(
                path,
                format!(
                    "`{name}` starts with the identity prefix: the client's copies are always removed and portcullis sets its own"
                ),
            );
        } else if out.contains(&normalized) {
            c.error(path, format!("`{name}` is listed twice"));
        } else {
            out.push(normalized);
        }
    }
    out
}

fn rate_limits(c: &mut Checker, value: &Value) -> RateLimits {
    let defaults = RateLimits::default();
    let Some(raw) = c
        .decode::<Option<RawRateLimits>>("rate_limits", value)
        .flatten()
    else {
        return defaults;
    };
    let mut rate = |field: &str, raw: Option<RawRate>, default: Rate| {
        let Some(raw) = raw else {
            return default;
        };
        let path = format!("rate_limits.{field}");
        if !(1..=1_000_000).contains(&raw.per_minute) {
            c.error(
                format!("{path}.per_minute"),
                "must be between 1 and 1000000",
            );
            return default;
        }
        // A burst below one request would refuse everything.
        let burst = raw.burst.unwrap_or(raw.per_minute.div_ceil(3).max(1));
        if !(1..=1_000_000).contains(&burst) {
            c.error(format!("{path}.burst"), "must be between 1 and 1000000");
            return default;
        }
        Rate {
            per_minute: raw.per_minute,
            burst,
        }
    };
    RateLimits {
        per_client: rate("per_client", raw.per_client, defaults.per_client),
        per_deployment: rate(
            "per_deployment",
            raw.per_deployment,
            defaults.per_deployment,
        ),
    }
}

/// The most connections a ceiling may name: far beyond any descriptor limit,
/// so only a typo is refused here (what the descriptor limit allows is
/// checked against the running process, `capacity::Ceiling`).
const MAX_CONNECTIONS_BOUND: usize = 10_000_000;

/// A connection ceiling: at least one (an inactive deployment is how to
/// refuse every WebSocket).
fn max_connections(c: &mut Checker, path: &str, value: Option<usize>) -> Option<usize> {
    match value {
        Some(n) if !(1..=MAX_CONNECTIONS_BOUND).contains(&n) => {
            c.error(
                path.to_string(),
                format!(
                    "must be between 1 and {MAX_CONNECTIONS_BOUND} (to refuse every WebSocket, make the deployment inactive)"
                ),
            );
            None
        }
        other => other,
    }
}

fn limits(c: &mut Checker, value: &Value) -> Limits {
    let defaults = Limits::default();
    let Some(raw) = c.decode::<Option<RawLimits>>("limits", value).flatten() else {
        return defaults;
    };
    let mut bounded = |field: &str, v: Option<usize>, default: usize| match v {
        None => default,
        Some(n) if (64..=65536).contains(&n) => n,
        Some(_) => {
            c.error(format!("limits.{field}"), "must be between 64 and 65536");
            default
        }
    };
    Limits {
        max_path_bytes: bounded(
            "max_path_bytes",
            raw.max_path_bytes,
            defaults.max_path_bytes,
        ),
        max_query_bytes: bounded(
            "max_query_bytes",
            raw.max_query_bytes,
            defaults.max_query_bytes,
        ),
        max_connections: max_connections(c, "limits.max_connections", raw.max_connections),
    }
}
