//! Who the request is from, as the backend learns it: the identity built
//! from verified claims, and the headers (and signed assertion) that carry
//! it upstream. Header values are sanitized here, once.

use std::sync::Arc;

use serde_json::Value;

use crate::config::Messenger;
use crate::token::Claims;

/// The longest value portcullis puts in an identity header.
pub const MAX_HEADER_VALUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub issuer: String,
    pub deployment: Arc<str>,
    /// An opaque id for the session (or, for bearer tokens, derived from the
    /// token's hash): stable per login, and it grants nothing.
    pub session: String,
    pub claims: Arc<Claims>,
}

impl Identity {
    pub fn from_claims(claims: &Arc<Claims>, deployment: Arc<str>, session: String) -> Self {
        Identity {
            subject: claims.str("sub").unwrap_or_default().to_string(),
            email: claims.str("email").map(str::to_string),
            name: claims
                .str("name")
                .or_else(|| claims.str("preferred_username"))
                .map(str::to_string),
            groups: crate::policy::groups(claims)
                .into_iter()
                .map(str::to_string)
                .collect(),
            issuer: claims.str("iss").unwrap_or_default().to_string(),
            deployment,
            session,
            claims: Arc::clone(claims),
        }
    }
}

/// Makes a claim safe as a header value: control characters (CR, LF, NUL…)
/// dropped, non-ASCII and `%` percent-encoded as UTF-8 (so `Zoë` arrives as
/// `Zo%C3%AB`, reversible by the backend), cut to `MAX_HEADER_VALUE` bytes
/// without splitting an escape.
pub fn header_value(text: &str) -> String {
    let plain = text.len() <= MAX_HEADER_VALUE
        && text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%');
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len().min(MAX_HEADER_VALUE));
    for c in text.chars() {
        if c.is_ascii_control() {
            continue;
        }
        if c.is_ascii() && c != '%' {
            if out.len() + 1 > MAX_HEADER_VALUE {
                break;
            }
            out.push(c);
            continue;
        }
        let mut buf = [0u8; 4];
        let encoded = c.encode_utf8(&mut buf);
        if out.len() + 3 * encoded.len() > MAX_HEADER_VALUE {
            break;
        }
        for b in encoded.bytes() {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A claim rendered for a header: strings as they are, arrays joined by
/// commas, numbers and booleans as JSON; objects are not sent.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(claim_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Null | Value::Object(_) => None,
    }
}

/// Which deployment admitted the request: the one identity header every
/// deployment sends, with or without authentication (the only one an
/// auth-disabled deployment sends, since nobody was identified).
pub fn deployment_header(deployment: &str, prefix: &str) -> (String, String) {
    (format!("{prefix}Deployment"), header_value(deployment))
}

/// The identity headers for the upstream request, names as configured
/// (the prefix is `identity_header_prefix`, default `X-Auth-`).
pub fn upstream_headers(
    identity: &Identity,
    messenger: &Messenger,
    prefix: &str,
) -> Vec<(String, String)> {
    let mut headers = vec![
        (format!("{prefix}Subject"), header_value(&identity.subject)),
        (format!("{prefix}Issuer"), header_value(&identity.issuer)),
        deployment_header(&identity.deployment, prefix),
        (format!("{prefix}Session"), header_value(&identity.session)),
    ];
    if let Some(email) = &identity.email {
        headers.push((format!("{prefix}Email"), header_value(email)));
    }
    if let Some(name) = &identity.name {
        headers.push((format!("{prefix}Name"), header_value(name)));
    }
    if !identity.groups.is_empty() {
        headers.push((
            format!("{prefix}Groups"),
            header_value(&identity.groups.join(",")),
        ));
    }
    for (header, claim) in &messenger.identity_headers {
        if let Some(text) = identity.claims.get(claim).and_then(claim_text) {
            headers.push((header.clone(), header_value(&text)));
        }
    }
    headers
}

/// The claims of `X-Auth-Assertion`: who, for which deployment and session,
/// for which upstream, for at most a minute.
pub fn assertion_claims(identity: &Identity, issuer: &str, audience: &str, now: u64) -> Value {
    let mut claims = serde_json::json!({
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
        "sub": identity.subject,
        "deployment": &*identity.deployment,
        "sid": identity.session,
        "idp": identity.issuer,
    });
    // Absent claims are left out, not sent as null or empty.
    if let Some(email) = &identity.email {
        claims["email"] = Value::from(email.as_str());
    }
    if let Some(name) = &identity.name {
        claims["name"] = Value::from(name.as_str());
    }
    if !identity.groups.is_empty() {
        claims["groups"] = Value::from(identity.groups.clone());
    }
    claims
}

pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// An identity rendered for one deployment, built once per token and
/// deployment and shared by every request presenting that token: the
/// headers are ready to insert, and the signed assertion is reused while it
/// has more than half its minute left.
pub struct Rendered {
    pub identity: Identity,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    assertion: parking_lot::Mutex<Option<(http::HeaderValue, u64)>>,
}

impl Rendered {
    pub fn new(identity: Identity, messenger: &Messenger, prefix: &str) -> Result<Self, String> {
        let headers = upstream_headers(&identity, messenger, prefix)
            .into_iter()
            .map(|(name, value)| {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("{name}: {e}"))?;
                let value =
                    http::HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Rendered {
            identity,
            headers,
            assertion: parking_lot::Mutex::new(None),
        })
    }

    /// The assertion header value: the cached one while it has more than
    /// half its lifetime left, else a new one from `sign(now)`.
    pub fn assertion(
        &self,
        now: u64,
        sign: impl FnOnce(u64) -> Result<String, String>,
    ) -> Result<http::HeaderValue, String> {
        let mut cached = self.assertion.lock();
        if let Some((value, expires)) = cached.as_ref() {
            if *expires > now + ASSERTION_LIFETIME_SECS / 2 {
                return Ok(value.clone());
            }
        }
        let token = sign(now)?;
        let value = http::HeaderValue::from_str(&token).map_err(|e| e.to_string())?;
        *cached = Some((value.clone(), now + ASSERTION_LIFETIME_SECS));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        let claims: Claims = serde_json::from_value(claims).unwrap();
        Identity::from_claims(&Arc::new(claims), Arc::from("dep-1"), "s-123".into())
    }

    #[test]
    fn header_values_lose_controls_and_encode_non_ascii() {
        assert_eq!(header_value("alice"), "alice");
        assert_eq!(
            header_value("a\r\nX-Auth-Subject: admin"),
            "aX-Auth-Subject: admin"
        );
        assert_eq!(header_value("Zoë"), "Zo%C3%AB");
        assert_eq!(header_value("100%"), "100%25");
        assert_eq!(header_value("\u{0}\u{7f}x"), "x");
        let long = "é".repeat(1000);
        let v = header_value(&long);
        assert!(
            v.len() <= MAX_HEADER_VALUE && v.len() % 6 == 0,
            "escapes are never split"
        );
    }

    #[test]
    fn default_and_mapped_headers() {
        let messenger: Messenger = {
            let text = "listen: [{address: \"127.0.0.1:1\"}]\nmessengers: {m: {authentication: {enabled: false}, identity_headers: {X-Auth-Tenant: tenant_id, X-Auth-Roles: roles, X-Auth-Absent: nope}}}\n";
            crate::config::parse(text, std::path::Path::new("."), &|_: &str| None)
                .unwrap()
                .messengers
                .remove("m")
                .unwrap()
        };
        let id = identity(json!({
            "sub": "u1", "iss": "https://idp", "email": "a@example.com", "name": "Ann\nX",
            "groups": ["g1", "g2"], "tenant_id": 42, "roles": ["r1", "r2"]
        }));
        let headers = upstream_headers(&id, &messenger, "X-Auth-");
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("X-Auth-Subject"), Some("u1"));
        assert_eq!(get("X-Auth-Email"), Some("a@example.com"));
        assert_eq!(get("X-Auth-Name"), Some("AnnX"));
        assert_eq!(get("X-Auth-Groups"), Some("g1,g2"));
        assert_eq!(get("X-Auth-Issuer"), Some("https://idp"));
        assert_eq!(get("X-Auth-Deployment"), Some("dep-1"));
        assert_eq!(get("X-Auth-Session"), Some("s-123"));
        assert_eq!(get("X-Auth-Tenant"), Some("42"));
        assert_eq!(get("X-Auth-Roles"), Some("r1,r2"));
        assert_eq!(get("X-Auth-Absent"), None);
    }

    #[test]
    fn an_anonymous_request_names_only_its_deployment() {
        assert_eq!(
            deployment_header("web-1", "X-Auth-"),
            ("X-Auth-Deployment".to_string(), "web-1".to_string())
        );
        // The configured prefix is used, and the value is sanitized like
        // every identity header.
        assert_eq!(
            deployment_header("d\r\n", "X-Edge-"),
            ("X-Edge-Deployment".to_string(), "d".to_string())
        );
    }

    #[test]
    fn rendered_assertions_are_reused_for_half_their_lifetime() {
        let messenger: Messenger = {
            let text = "listen: [{address: \"127.0.0.1:1\"}]\nmessengers: {m: {authentication: {enabled: false}}}\n";
            crate::config::parse(text, std::path::Path::new("."), &|_: &str| None)
                .unwrap()
                .messengers
                .remove("m")
                .unwrap()
        };
        let rendered = Rendered::new(identity(json!({"sub": "u"})), &messenger, "X-Auth-").unwrap();
        assert!(rendered
            .headers
            .iter()
            .any(|(k, v)| k == "x-auth-subject" && v == "u"));
        let signs = std::cell::Cell::new(0);
        let sign = |now: u64| {
            signs.set(signs.get() + 1);
            Ok(format!("token-{now}"))
        };
        assert_eq!(rendered.assertion(1000, sign).unwrap(), "token-1000");
        assert_eq!(rendered.assertion(1029, sign).unwrap(), "token-1000");
        assert_eq!(rendered.assertion(1031, sign).unwrap(), "token-1031");
        assert_eq!(signs.get(), 2);
    }

    #[test]
    fn assertions_leave_absent_claims_out() {
        let service = identity(json!({"sub": "svc", "iss": "https://idp"}));
        let claims = assertion_claims(&service, "portcullis", "chat", 1000);
        assert_eq!(claims["exp"], 1060);
        assert_eq!(claims["aud"], "chat");
        for absent in ["email", "name", "groups"] {
            assert!(claims.get(absent).is_none(), "{absent}");
        }
        let person = identity(json!({"sub": "u", "email": "a@b.c", "groups": ["g"]}));
        let claims = assertion_claims(&person, "portcullis", "chat", 1000);
        assert_eq!(claims["email"], "a@b.c");
        assert_eq!(claims["groups"], json!(["g"]));
    }
}
