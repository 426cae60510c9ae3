//! Who the request is from, as the backend learns it: the identity built
//! from verified claims, and the headers (and signed assertion) that carry
//! it upstream, under names each deployment parses once (`HeaderNames`).
//! Header values are sanitized here, once.

use std::sync::Arc;

use serde_json::Value;

use pingora::http::PrewrittenHeaders;

use crate::config::Messenger;
use crate::token::signing::{SigningKey, ASSERTION_TYP};
use crate::token::Claims;

/// The longest value portcullis puts in an identity header.
pub const MAX_HEADER_VALUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider verified `email` (`policy::email_verified`:
    /// only `true` or `"true"` count). Meaningless without an email.
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub issuer: String,
    pub deployment: Arc<str>,
    /// An opaque id for the session (or, for bearer tokens, derived from the
    /// token's hash): stable per login, and it grants nothing.
    pub session: Arc<str>,
    pub claims: Arc<Claims>,
}

impl Identity {
    /// Whether a bearer token (not a login session) authenticated: its
    /// session id is the token's (`t-…`, `token::BEARER_SESSION_PREFIX`);
    /// a login session's, also behind a messenger token, is `s-…`.
    pub fn is_bearer(&self) -> bool {
        self.session
            .starts_with(crate::token::BEARER_SESSION_PREFIX)
    }

    pub fn from_claims(claims: &Arc<Claims>, deployment: Arc<str>, session: Arc<str>) -> Self {
        Identity {
            subject: claims.str("sub").unwrap_or_default().to_string(),
            email: claims.str("email").map(str::to_string),
            email_verified: crate::policy::email_verified(claims.get("email_verified")),
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
/// `Zo%C3%AB`, reversible by the backend), spaces at either end as `%20`
/// (HTTP trims them: ` admin` would arrive as `admin`), cut to
/// `MAX_HEADER_VALUE` bytes without splitting an escape.
pub fn header_value(text: &str) -> String {
    let plain = text.len() <= MAX_HEADER_VALUE
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%');
    if plain {
        return text.to_string();
    }
    escape(text, false, MAX_HEADER_VALUE)
}

/// A list header's value (`X-Auth-Groups`, a claim mapped by
/// `identity_headers`): the items joined by `,`, each escaped like
/// `header_value` and also with `,` as `%2C`, `"` as `%22` (a quoted string
/// to HTTP list parsers) and leading or trailing spaces as `%20` (list
/// parsers trim them), so that splitting at `,` and percent-decoding each
/// element gives back exactly the items: `["support,admin", "50%"]` arrives
/// as `support%2Cadmin,50%25`. Empty items are left out (list parsers
/// ignore empty elements), and so are the items from the first one that
/// would take the value past `MAX_HEADER_VALUE` on: a list loses whole
/// elements, never a piece of one.
pub fn list_header_value<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for item in items {
        let element = escape(item, true, usize::MAX);
        if element.is_empty() {
            continue;
        }
        let separator = usize::from(!out.is_empty());
        if out.len() + separator + element.len() > MAX_HEADER_VALUE {
            break;
        }
        if separator == 1 {
            out.push(',');
        }
        out.push_str(&element);
    }
    out
}

/// `text` without control characters, with non-ASCII, `%` and spaces at
/// either end (and, for a list element, `,` and `"`) percent-encoded, cut at
/// `limit` bytes without splitting an escape.
fn escape(text: &str, list_element: bool, limit: usize) -> String {
    let clean: Vec<char> = text.chars().filter(|c| !c.is_ascii_control()).collect();
    let lead = clean.iter().take_while(|&&c| c == ' ').count();
    let trail = clean.len()
        - clean[lead..]
            .iter()
            .rev()
            .take_while(|&&c| c == ' ')
            .count();
    let mut out = String::with_capacity(clean.len().min(limit));
    for (i, &c) in clean.iter().enumerate() {
        let encode = !c.is_ascii()
            || c == '%'
            || (c == ' ' && (i < lead || i >= trail))
            || (list_element && (c == ',' || c == '"'));
        if !encode {
            if out.len() + 1 > limit {
                break;
            }
            out.push(c);
            continue;
        }
        let mut buf = [0u8; 4];
        let encoded = c.encode_utf8(&mut buf);
        if out.len() + 3 * encoded.len() > limit {
            break;
        }
        for b in encoded.bytes() {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    // Cut inside a run of spaces, the value would end in one that HTTP
    // trims: the value is cut anyway, so it ends before them.
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A claim rendered for a header mapped by `identity_headers`. Such a claim
/// may be a string at one provider and an array at another, so every value
/// is a list: an array's strings, numbers and booleans are its elements
/// (see `list_header_value`; nested arrays, objects and nulls are left
/// out), and a string, number or boolean is a list of one, escaped the
/// same way, so `"a,b"` and `["a", "b"]` never look alike. Numbers and
/// booleans are written as JSON; objects and null are not sent.
fn claim_header_value(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
            Value::Array(_) | Value::Object(_) | Value::Null => None,
        }
    }
    match value {
        Value::Array(items) => {
            let texts: Vec<String> = items.iter().filter_map(scalar).collect();
            Some(list_header_value(texts.iter().map(String::as_str)))
        }
        // A single element longer than a header may be is cut, as any
        // identity header is.
        other => scalar(other).map(|text| escape(&text, true, MAX_HEADER_VALUE)),
    }
}

/// Which deployment admitted the request: the one identity header every
/// deployment sends, with or without authentication (the only one an
/// auth-disabled deployment sends, since nobody was identified).
pub fn deployment_header(
    deployment: &str,
    names: &HeaderNames<WireName>,
) -> Result<PrewrittenHeaders, String> {
    prewritten([(&names.deployment, header_value(deployment))])
}

/// Headers rendered once, as Pingora writes them on every request that
/// carries them (vendor/pingora-http/PATCHED.md §2): their HTTP/1 lines
/// made here, not per request; an error names the header whose value
/// cannot be sent.
fn prewritten<'n>(
    headers: impl IntoIterator<Item = (&'n WireName, String)>,
) -> Result<PrewrittenHeaders, String> {
    let lines = headers
        .into_iter()
        .map(|(name, value)| {
            http::HeaderValue::try_from(value)
                .map(|value| (name.name.clone(), name.spelling.clone(), value))
                .map_err(|e| format!("{}: {e}", name.spelling()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // The names as parsed when the configuration was compiled: none parsed
    // again for a newly seen identity.
    PrewrittenHeaders::from_parsed(lines).map_err(|e| e.to_string())
}

/// A header name as portcullis hands it to Pingora: parsed once, when the
/// configuration is compiled, with its spelling as configured (the case the
/// backend sees). Clones share both (`HeaderName` and `Bytes` count
/// references), so rendering an identity's headers for a deployment
/// (`PrewrittenHeaders::from_parsed`) neither copies nor parses a name.
#[derive(Debug, Clone)]
pub struct WireName {
    name: http::HeaderName,
    spelling: bytes::Bytes,
}

impl WireName {
    pub fn new(spelling: String) -> Result<Self, String> {
        let name = http::HeaderName::from_bytes(spelling.as_bytes())
            .map_err(|e| format!("{spelling}: {e}"))?;
        Ok(WireName {
            name,
            spelling: bytes::Bytes::from(spelling),
        })
    }

    pub fn spelling(&self) -> &str {
        // Made from a `String` in `new`.
        std::str::from_utf8(&self.spelling).unwrap_or_default()
    }

    /// Sets a header of this name on `req`, replacing any of the same name.
    pub fn insert_into(
        &self,
        req: &mut pingora::http::RequestHeader,
        value: http::HeaderValue,
    ) -> pingora::Result<()> {
        req.insert_parsed_header(&self.name, self.spelling.clone(), value)
    }
}

/// The names of the identity headers one messenger sends under one prefix
/// (`identity_header_prefix`, default `X-Auth-`), in the order they are
/// sent: as spelled (`HeaderNames<String>`, [`HeaderNames::spelled`]) or
/// parsed for the wire (`HeaderNames<WireName>`, made once per deployment
/// when the configuration is compiled).
#[derive(Debug, Clone)]
pub struct HeaderNames<N> {
    subject: N,
    issuer: N,
    deployment: N,
    session: N,
    email: N,
    email_verified: N,
    name: N,
    groups: N,
    /// `X-Auth-Assertion`, sent where the messenger signs one.
    pub assertion: N,
    /// `identity_headers`: a header and the claim it carries.
    mapped: Vec<(N, String)>,
}

impl HeaderNames<String> {
    pub fn spelled(messenger: &Messenger, prefix: &str) -> Self {
        HeaderNames {
            subject: format!("{prefix}Subject"),
            issuer: format!("{prefix}Issuer"),
            deployment: format!("{prefix}Deployment"),
            session: format!("{prefix}Session"),
            email: format!("{prefix}Email"),
            email_verified: format!("{prefix}Email-Verified"),
            name: format!("{prefix}Name"),
            groups: format!("{prefix}Groups"),
            assertion: format!("{prefix}Assertion"),
            mapped: messenger
                .identity_headers
                .iter()
                .map(|(header, claim)| (header.clone(), claim.clone()))
                .collect(),
        }
    }

    /// Each name parsed for the wire; an error names the first that is
    /// not a header name, or one Pingora will not prewrite (`check` refuses
    /// such a configuration first).
    pub fn parsed(self) -> Result<HeaderNames<WireName>, String> {
        let names = HeaderNames {
            subject: WireName::new(self.subject)?,
            issuer: WireName::new(self.issuer)?,
            deployment: WireName::new(self.deployment)?,
            session: WireName::new(self.session)?,
            email: WireName::new(self.email)?,
            email_verified: WireName::new(self.email_verified)?,
            name: WireName::new(self.name)?,
            groups: WireName::new(self.groups)?,
            assertion: WireName::new(self.assertion)?,
            mapped: self
                .mapped
                .into_iter()
                .map(|(header, claim)| Ok((WireName::new(header)?, claim)))
                .collect::<Result<_, String>>()?,
        };
        // Every name prewritten once with a placeholder: a name that cannot
        // be (one that frames the message) fails the configuration here,
        // not every identity at run time, should `check` ever let one by.
        prewritten(names.every().map(|name| (name, String::from("-"))))?;
        Ok(names)
    }
}

impl<N> HeaderNames<N> {
    /// Every name, the built-in ones first.
    fn every(&self) -> impl Iterator<Item = &N> {
        [
            &self.subject,
            &self.issuer,
            &self.deployment,
            &self.session,
            &self.email,
            &self.email_verified,
            &self.name,
            &self.groups,
            &self.assertion,
        ]
        .into_iter()
        .chain(self.mapped.iter().map(|(name, _)| name))
    }
}

/// The identity headers for the upstream request, each with its name from
/// `names`: which are sent and with what values.
pub fn identity_headers<'n, N>(
    identity: &Identity,
    names: &'n HeaderNames<N>,
) -> Vec<(&'n N, String)> {
    let mut headers = vec![
        (&names.subject, header_value(&identity.subject)),
        (&names.issuer, header_value(&identity.issuer)),
        (&names.deployment, header_value(&identity.deployment)),
        (&names.session, header_value(&identity.session)),
    ];
    if let Some(email) = &identity.email {
        headers.push((&names.email, header_value(email)));
        // Beside the address, never alone: the backend needs both to trust
        // it, and a verification flag for no address would mean nothing.
        headers.push((&names.email_verified, identity.email_verified.to_string()));
    }
    if let Some(name) = &identity.name {
        headers.push((&names.name, header_value(name)));
    }
    let groups = list_header_value(identity.groups.iter().map(String::as_str));
    if !groups.is_empty() {
        headers.push((&names.groups, groups));
    }
    for (header, claim) in &names.mapped {
        if let Some(value) = identity.claims.get(claim).and_then(claim_header_value) {
            headers.push((header, value));
        }
    }
    headers
}

/// The claims of `X-Auth-Assertion`: who, for which deployment (and, for a
/// login session, which session), for which upstream, for at most a minute.
///
/// `sid` names a login session (`s-…`: a cookie, or a messenger token
/// bound to one) and is left out for a bearer token: a token's id names
/// one credential, and an assertion without it can be shared by every
/// token of the same identity (see [`Rendered::assertion`]). The token's
/// id still reaches the backend in `X-Auth-Session`.
pub fn assertion_claims(identity: &Identity, issuer: &str, audience: &str, now: u64) -> Value {
    let mut claims = serde_json::json!({
        "iss": issuer,
        "aud": audience,
        "sub": identity.subject,
        "deployment": &*identity.deployment,
        "idp": identity.issuer,
    });
    if !identity.is_bearer() {
        claims["sid"] = Value::from(&*identity.session);
    }
    // Absent claims are left out, not sent as null or empty.
    if let Some(email) = &identity.email {
        claims["email"] = Value::from(email.as_str());
        // As in `X-Auth-Email-Verified`: portcullis's reading, a boolean.
        claims["email_verified"] = Value::from(identity.email_verified);
    }
    if let Some(name) = &identity.name {
        claims["name"] = Value::from(name.as_str());
    }
    if !identity.groups.is_empty() {
        claims["groups"] = Value::from(identity.groups.clone());
    }
    set_times(&mut claims, now);
    claims
}

/// An assertion's `iat`, `nbf` and `exp`: valid from `now`, for its lifetime.
fn set_times(claims: &mut Value, now: u64) {
    claims["iat"] = Value::from(now);
    claims["nbf"] = Value::from(now);
    claims["exp"] = Value::from(now + ASSERTION_LIFETIME_SECS);
}

pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// An identity rendered for one deployment, built once per token (or
/// session) and deployment and shared by every request presenting it: the
/// headers are ready to insert, and the signed assertion is reused while it
/// has more than half its minute left.
///
/// A bearer token's assertion carries no `sid` (see [`assertion_claims`]),
/// so it is also shared across tokens: every token of the same identity
/// (every claim the assertion carries), deployment, upstream, issuer and
/// signing key gets the same assertion while it is fresh enough
/// ([`SharedAssertions`]), and a first-seen token of a known identity costs
/// no signature. A login session's assertion names its session and stays
/// its own.
pub struct Rendered {
    pub identity: Identity,
    /// The identity headers, names as configured (`X-Auth-Subject`: the
    /// case the backend sees), their lines written once.
    pub headers: PrewrittenHeaders,
    assertion: parking_lot::Mutex<Option<SignedAssertion>>,
}

/// A signed assertion and what it was signed for, besides the identity.
#[derive(Clone)]
struct SignedAssertion {
    value: http::HeaderValue,
    expires: u64,
    kid: String,
    issuer: String,
    audience: String,
}

impl SignedAssertion {
    /// Whether this may be served at `now` for `key`, `issuer` and
    /// `audience`: signed for them, by the current key (a rotation never
    /// serves the old key's), with more than half its lifetime left.
    fn serves(&self, now: u64, key: &SigningKey, issuer: &str, audience: &str) -> bool {
        self.expires > now + ASSERTION_LIFETIME_SECS / 2
            && self.kid == key.kid
            && self.issuer == issuer
            && self.audience == audience
    }
}

/// Bearer assertions shared across tokens, process-wide. The key is a
/// SHA-256 of the signing key's id and of the assertion's claims with its
/// times left out (`assertion_claims` at time 0), so two identities share
/// an entry only when every claim they would be signed with is the same,
/// for the same deployment, upstream (`aud`) and issuer: nothing of one
/// identity can reach another's backend. Entries live one assertion
/// lifetime and are served only while `SignedAssertion::serves`; at most
/// `SHARED_ASSERTION_BYTES` of them are kept (the least used go first).
struct SharedAssertions {
    cache: moka::sync::Cache<[u8; 32], Arc<SignedAssertion>>,
}

/// How many bytes of bearer assertions are kept for reuse across tokens:
/// 16 MiB, some 20 000 assertions of a usual identity (a few hundred bytes
/// each), far fewer of identities with very many groups.
pub const SHARED_ASSERTION_BYTES: u64 = 16 << 20;

static SHARED: std::sync::LazyLock<SharedAssertions> =
    std::sync::LazyLock::new(|| SharedAssertions {
        cache: moka::sync::Cache::builder()
            // Weighed in bytes: an assertion carries the groups whole, and
            // tokens may be up to 64 KiB.
            .weigher(|_, assertion: &Arc<SignedAssertion>| {
                u32::try_from(assertion.value.len()).unwrap_or(u32::MAX)
            })
            .max_capacity(SHARED_ASSERTION_BYTES)
            .time_to_live(std::time::Duration::from_secs(ASSERTION_LIFETIME_SECS))
            .build(),
    });

/// Forgets every shared bearer assertion: the next request of each
/// identity signs afresh. For benchmarks that measure identities not seen
/// before (`benches/decisions.rs`); nothing in the proxy calls it.
pub fn forget_shared_assertions() {
    SHARED.cache.invalidate_all();
}

impl SharedAssertions {
    /// The entry of `claims` (made at time 0: `assertion_claims(…, 0)`)
    /// signed with `key`.
    fn key(claims: &Value, key: &SigningKey) -> [u8; 32] {
        // serde_json's map is ordered by name: the same claims, the same bytes.
        crate::token::sha256_scoped(key.kid.as_bytes(), claims.to_string().as_bytes())
    }
}

impl Rendered {
    pub fn new(identity: Identity, names: &HeaderNames<WireName>) -> Result<Self, String> {
        let headers = prewritten(identity_headers(&identity, names))?;
        Ok(Rendered {
            identity,
            headers,
            assertion: parking_lot::Mutex::new(None),
        })
    }

    /// The `X-Auth-Assertion` value for a request to the upstream named
    /// `audience`: the one this identity was last given while it
    /// `serves` (signed by `key` for this issuer and audience, more than
    /// half its lifetime left); for a bearer identity, else one another
    /// token of the same identity was given, on the same terms; else a new
    /// one. A signing key rotation (a new current key) therefore never
    /// serves an assertion signed by the old key.
    pub fn assertion(
        &self,
        now: u64,
        key: &SigningKey,
        issuer: &str,
        audience: &str,
    ) -> Result<http::HeaderValue, String> {
        let mut cached = self.assertion.lock();
        if let Some(signed) = cached.as_ref() {
            if signed.serves(now, key, issuer, audience) {
                return Ok(signed.value.clone());
            }
        }
        // Made once at time 0: the shared entry's key leaves the times out;
        // they are set below if a new assertion is signed.
        let mut claims = assertion_claims(&self.identity, issuer, audience, 0);
        let shared = self
            .identity
            .is_bearer()
            .then(|| SharedAssertions::key(&claims, key));
        if let Some(found) = shared.and_then(|k| SHARED.cache.get(&k)) {
            if found.serves(now, key, issuer, audience) {
                *cached = Some(SignedAssertion::clone(&found));
                return Ok(found.value.clone());
            }
        }
        set_times(&mut claims, now);
        let token = key.sign(ASSERTION_TYP, &claims)?;
        let value = http::HeaderValue::from_str(&token).map_err(|e| e.to_string())?;
        let signed = SignedAssertion {
            value: value.clone(),
            expires: now + ASSERTION_LIFETIME_SECS,
            kid: key.kid.clone(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
        };
        if let Some(k) = shared {
            SHARED.cache.insert(k, Arc::new(signed.clone()));
        }
        *cached = Some(signed);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        identity_at(claims, "dep-1", "s-123")
    }

    /// The identity headers as spelled for `messenger` under `prefix`.
    fn upstream_headers(
        identity: &Identity,
        messenger: &Messenger,
        prefix: &str,
    ) -> Vec<(String, String)> {
        let names = HeaderNames::spelled(messenger, prefix);
        identity_headers(identity, &names)
            .into_iter()
            .map(|(name, value)| (name.clone(), value))
            .collect()
    }

    fn identity_at(claims: Value, deployment: &str, session: &str) -> Identity {
        let claims: Claims = serde_json::from_value(claims).unwrap();
        Identity::from_claims(&Arc::new(claims), Arc::from(deployment), session.into())
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
        // HTTP trims a value's ends: spaces there are kept as escapes, and
        // only there.
        assert_eq!(header_value(" admin "), "%20admin%20");
        assert_eq!(header_value("Ada  Lovelace"), "Ada  Lovelace");
        assert_eq!(header_value("  "), "%20%20");
        let long = "é".repeat(1000);
        let v = header_value(&long);
        assert!(
            v.len() <= MAX_HEADER_VALUE && v.len() % 6 == 0,
            "escapes are never split"
        );
        // A cut inside spaces leaves none at the end.
        let spaced = format!("{}  {}", "a".repeat(MAX_HEADER_VALUE - 1), "b");
        assert_eq!(header_value(&spaced), "a".repeat(MAX_HEADER_VALUE - 1));
    }

    #[test]
    fn default_and_mapped_headers() {
        let messenger: Messenger = {
            // A mapping means something only with authentication on.
            let text = format!("{MAPPING_PREAMBLE}messengers: {{m: {{authentication: {{enabled: true, provider: p}}, identity_headers: {{X-Auth-Tenant: tenant_id, X-Auth-Roles: roles, X-Auth-Absent: nope}}}}}}\n");
            crate::config::parse(&text, std::path::Path::new("."), &|_: &str| None)
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
        assert_eq!(
            get("X-Auth-Email-Verified"),
            Some("false"),
            "no email_verified claim: not verified"
        );
        assert_eq!(get("X-Auth-Name"), Some("AnnX"));
        assert_eq!(get("X-Auth-Groups"), Some("g1,g2"));
        assert_eq!(get("X-Auth-Issuer"), Some("https://idp"));
        assert_eq!(get("X-Auth-Deployment"), Some("dep-1"));
        assert_eq!(get("X-Auth-Session"), Some("s-123"));
        assert_eq!(get("X-Auth-Tenant"), Some("42"));
        assert_eq!(get("X-Auth-Roles"), Some("r1,r2"));
        assert_eq!(get("X-Auth-Absent"), None);
    }

    /// A listener and a provider for the messengers these tests map claims for.
    const MAPPING_PREAMBLE: &str = "listen: [{address: \"127.0.0.1:1\"}]\nproviders: {p: {issuer: \"https://idp.example.com\", client_id: c}}\n";

    fn messenger_mapping(map: &str) -> Messenger {
        let text = format!("{MAPPING_PREAMBLE}messengers: {{m: {{authentication: {{enabled: true, provider: p}}, identity_headers: {map}}}}}\n");
        crate::config::parse(&text, std::path::Path::new("."), &|_: &str| None)
            .unwrap()
            .messengers
            .remove("m")
            .unwrap()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn email_verified_goes_beside_the_email_and_only_with_it() {
        let messenger = messenger_mapping("{}");
        for (claim, shown) in [
            (json!(true), "true"),
            (json!("true"), "true"),
            (json!(false), "false"),
            (json!("false"), "false"),
            (json!("yes"), "false"),
        ] {
            let id = identity(json!({"sub": "u", "email": "a@b.c", "email_verified": claim}));
            let headers = upstream_headers(&id, &messenger, "X-Edge-");
            assert_eq!(
                header(&headers, "X-Edge-Email-Verified"),
                Some(shown),
                "{claim}"
            );
            let assertion = assertion_claims(&id, "portcullis", "chat", 1000);
            assert_eq!(
                assertion["email_verified"],
                json!(shown == "true"),
                "{claim}"
            );
        }
        let no_email = identity(json!({"sub": "u", "email_verified": true}));
        let headers = upstream_headers(&no_email, &messenger, "X-Auth-");
        assert_eq!(header(&headers, "X-Auth-Email-Verified"), None);
        assert!(assertion_claims(&no_email, "portcullis", "chat", 1000)
            .get("email_verified")
            .is_none());
    }

    #[test]
    fn list_separators_inside_values_are_encoded() {
        assert_eq!(
            list_header_value(["support,admin", "50%", "say \"hi\"", " pad ", "Zoë"]),
            "support%2Cadmin,50%25,say %22hi%22,%20pad%20,Zo%C3%AB"
        );
        // Spaces inside an element are no separator and stay.
        assert_eq!(list_header_value(["Domain Users"]), "Domain Users");
        assert_eq!(list_header_value(["", "a", "  "]), "a,%20%20");
        // Whole elements only: the one that does not fit is left out, and
        // so is everything after it.
        let big = "g".repeat(MAX_HEADER_VALUE - 2);
        assert_eq!(
            list_header_value([big.as_str(), "x", "y"]),
            format!("{big},x")
        );
        assert_eq!(list_header_value([big.as_str(), "xy", "z"]), big);

        // X-Auth-Groups: one group with a comma is not two groups.
        let messenger = messenger_mapping("{X-Auth-Roles: roles, X-Auth-Org: org}");
        let one = identity(json!({"sub": "u", "groups": ["support,admin"]}));
        let two = identity(json!({"sub": "u", "groups": ["support", "admin"]}));
        let one = upstream_headers(&one, &messenger, "X-Auth-");
        let two = upstream_headers(&two, &messenger, "X-Auth-");
        assert_eq!(header(&one, "X-Auth-Groups"), Some("support%2Cadmin"));
        assert_eq!(header(&two, "X-Auth-Groups"), Some("support,admin"));
        let no_names = identity(json!({"sub": "u", "groups": [""]}));
        assert_eq!(
            header(
                &upstream_headers(&no_names, &messenger, "X-Auth-"),
                "X-Auth-Groups"
            ),
            None
        );

        // Mapped claims: a string with a comma is not an array of two.
        let id = identity(json!({
            "sub": "u",
            "roles": ["a,b", "c", 7, true, ["nested"], {"o": 1}, null],
            "org": "Acme, Inc. 100%"
        }));
        let headers = upstream_headers(&id, &messenger, "X-Auth-");
        assert_eq!(header(&headers, "X-Auth-Roles"), Some("a%2Cb,c,7,true"));
        assert_eq!(header(&headers, "X-Auth-Org"), Some("Acme%2C Inc. 100%25"));
        let pair = identity(json!({"sub": "u", "org": ["Acme", " Inc. 100%"]}));
        assert_eq!(
            header(
                &upstream_headers(&pair, &messenger, "X-Auth-"),
                "X-Auth-Org"
            ),
            Some("Acme,%20Inc. 100%25")
        );
    }

    #[test]
    fn every_header_portcullis_sends_is_reserved_from_mappings() {
        let id = identity(json!({
            "sub": "u", "iss": "i", "email": "a@b.c", "name": "n", "groups": ["g"]
        }));
        let messenger = messenger_mapping("{}");
        let mut names: Vec<String> = upstream_headers(&id, &messenger, "X-Auth-")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        names.push(HeaderNames::spelled(&messenger, "X-Auth-").assertion);
        for name in names {
            let suffix = crate::config::normalize_header_name(&name["X-Auth-".len()..]);
            assert!(
                crate::config::BUILT_IN_IDENTITY_HEADERS.contains(&suffix.as_str()),
                "{name} is not in BUILT_IN_IDENTITY_HEADERS"
            );
        }
    }

    #[test]
    fn an_anonymous_request_names_only_its_deployment() {
        // The configured prefix is used, spelled as configured, and the
        // value is sanitized like every identity header.
        for (id, prefix, wire) in [
            ("web-1", "X-Auth-", "X-Auth-Deployment: web-1\r\n"),
            ("d\r\n", "X-Edge-", "X-Edge-Deployment: d\r\n"),
        ] {
            let names = wire_names(prefix);
            let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
            req.set_prewritten_headers(deployment_header(id, &names).unwrap());
            let mut buf = Vec::new();
            req.header_to_h1_wire(&mut buf);
            assert_eq!(String::from_utf8(buf).unwrap(), wire);
        }
    }

    /// A name that passed `check` by mistake but cannot be prewritten fails
    /// when the deployment's names are compiled, not per identity.
    #[test]
    fn names_that_cannot_be_prewritten_fail_compilation() {
        let mut messenger = open_messenger();
        messenger
            .identity_headers
            .insert("Proxy-Connection".into(), "sub".into());
        let error = HeaderNames::spelled(&messenger, "X-Auth-")
            .parsed()
            .unwrap_err();
        assert!(error.contains("cannot be prewritten"), "{error}");
        assert!(HeaderNames::spelled(&open_messenger(), "X-Auth-")
            .parsed()
            .is_ok());
    }

    /// The wire names of an open messenger's headers under `prefix`.
    fn wire_names(prefix: &str) -> HeaderNames<WireName> {
        HeaderNames::spelled(&open_messenger(), prefix)
            .parsed()
            .unwrap()
    }

    /// A messenger without authentication, as the config parser builds it.
    fn open_messenger() -> Messenger {
        let text = "listen: [{address: \"127.0.0.1:1\"}]\nmessengers: {m: {authentication: {enabled: false}}}\n";
        crate::config::parse(text, std::path::Path::new("."), &|_: &str| None)
            .unwrap()
            .messengers
            .remove("m")
            .unwrap()
    }

    #[test]
    fn rendered_assertions_are_reused_for_half_their_lifetime() {
        let rendered =
            Rendered::new(identity(json!({"sub": "u"})), &wire_names("X-Auth-")).unwrap();
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.set_prewritten_headers(rendered.headers.clone());
        assert_eq!(
            req.as_owned_parts().headers.get("x-auth-subject").unwrap(),
            "u"
        );
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert!(String::from_utf8(wire)
            .unwrap()
            .starts_with("X-Auth-Subject: u\r\n"));
        let key = SigningKey::generate().unwrap();
        let first = rendered
            .assertion(1000, &key, "portcullis", "chat")
            .unwrap();
        let claims = |value: &http::HeaderValue| {
            let token = value.to_str().unwrap();
            let header = jsonwebtoken::decode_header(token).unwrap();
            let claims = crate::token::recorded_expiry(token).unwrap();
            (header.kid.unwrap(), claims)
        };
        assert_eq!(claims(&first), (key.kid.clone(), 1060));
        let again = rendered
            .assertion(1029, &key, "portcullis", "chat")
            .unwrap();
        assert_eq!(
            again, first,
            "reused while more than half its minute is left"
        );
        let renewed = rendered
            .assertion(1031, &key, "portcullis", "chat")
            .unwrap();
        assert_eq!(claims(&renewed), (key.kid.clone(), 1091));
        let elsewhere = rendered
            .assertion(1032, &key, "portcullis", "other")
            .unwrap();
        assert_ne!(elsewhere, renewed, "another audience gets its own");
    }

    #[test]
    fn a_signing_key_rotation_never_serves_an_assertion_of_the_old_key() {
        let rendered =
            Rendered::new(identity(json!({"sub": "u"})), &wire_names("X-Auth-")).unwrap();
        let (old, new) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let before = rendered
            .assertion(1000, &old, "portcullis", "chat")
            .unwrap();
        // One second later, well within the old assertion's reuse window.
        let after = rendered
            .assertion(1001, &new, "portcullis", "chat")
            .unwrap();
        assert_ne!(after, before);
        let kid = |v: &http::HeaderValue| {
            jsonwebtoken::decode_header(v.to_str().unwrap())
                .unwrap()
                .kid
        };
        assert_eq!(kid(&after), Some(new.kid.clone()), "signed by the new key");
        // The signature (times aside: these are made-up clocks) is the new key's.
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_exp = false;
        validation.set_required_spec_claims::<&str>(&[]);
        validation.set_audience(&["chat"]);
        let verifies = |key: &SigningKey| {
            jsonwebtoken::decode::<Value>(after.to_str().unwrap(), &key.decoding, &validation)
                .is_ok()
        };
        assert!(verifies(&new));
        assert!(!verifies(&old));
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

    fn bearer(claims: Value, token_id: &str) -> Rendered {
        Rendered::new(
            identity_at(claims, "dep-1", token_id),
            &wire_names("X-Auth-"),
        )
        .unwrap()
    }

    fn payload(value: &http::HeaderValue) -> Value {
        use base64::Engine;
        let part = value.to_str().unwrap().split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn sid_is_in_assertions_of_login_sessions_only() {
        let session = identity(json!({"sub": "u"}));
        assert!(!session.is_bearer());
        assert_eq!(
            assertion_claims(&session, "portcullis", "chat", 1000)["sid"],
            "s-123"
        );
        let token = bearer(json!({"sub": "u"}), "t-0123456789abcdef01234567");
        assert!(token.identity.is_bearer());
        let claims = assertion_claims(&token.identity, "portcullis", "chat", 1000);
        assert!(claims.get("sid").is_none(), "{claims}");
        let key = SigningKey::generate().unwrap();
        let signed = token.assertion(1000, &key, "portcullis", "chat").unwrap();
        assert!(payload(&signed).get("sid").is_none());
        assert_eq!(payload(&signed)["sub"], "u");
    }

    #[test]
    fn tokens_of_one_identity_share_an_assertion_and_no_one_else_gets_it() {
        // Subjects of this test only: the shared cache is process-wide.
        let claims = json!({"sub": "shared-1", "email": "a@example.com", "groups": ["g1"]});
        let key = SigningKey::generate().unwrap();
        let a = bearer(claims.clone(), "t-aaaaaaaaaaaaaaaaaaaaaaaa");
        let b = bearer(claims.clone(), "t-bbbbbbbbbbbbbbbbbbbbbbbb");
        let first = a.assertion(1000, &key, "portcullis", "chat").unwrap();
        assert_eq!(
            b.assertion(1010, &key, "portcullis", "chat").unwrap(),
            first,
            "another token of the same identity reuses it"
        );
        // Any claim of the assertion that differs: not shared.
        for (what, other) in [
            (
                "groups",
                json!({"sub": "shared-1", "email": "a@example.com", "groups": ["g2"]}),
            ),
            (
                "email",
                json!({"sub": "shared-1", "email": "b@example.com", "groups": ["g1"]}),
            ),
            (
                "subject",
                json!({"sub": "shared-2", "email": "a@example.com", "groups": ["g1"]}),
            ),
            (
                "email_verified",
                json!({"sub": "shared-1", "email": "a@example.com", "email_verified": true, "groups": ["g1"]}),
            ),
            (
                "idp",
                json!({"sub": "shared-1", "email": "a@example.com", "groups": ["g1"], "iss": "https://other"}),
            ),
        ] {
            let c = bearer(other, "t-cccccccccccccccccccccccc");
            assert_ne!(
                c.assertion(1010, &key, "portcullis", "chat").unwrap(),
                first,
                "{what} differs"
            );
        }
        let other_deployment = Rendered::new(
            identity_at(claims.clone(), "dep-2", "t-dddddddddddddddddddddddd"),
            &wire_names("X-Auth-"),
        )
        .unwrap();
        assert_ne!(
            other_deployment
                .assertion(1010, &key, "portcullis", "chat")
                .unwrap(),
            first,
            "another deployment"
        );
        let d = bearer(claims.clone(), "t-eeeeeeeeeeeeeeeeeeeeeeee");
        assert_ne!(
            d.assertion(1010, &key, "portcullis", "other").unwrap(),
            first,
            "another audience"
        );
        assert_ne!(
            d.assertion(1010, &key, "other-issuer", "chat").unwrap(),
            first,
            "another issuer"
        );
        let rotated = SigningKey::generate().unwrap();
        let new = d.assertion(1010, &rotated, "portcullis", "chat").unwrap();
        assert_ne!(new, first, "a new signing key");
        assert_eq!(
            jsonwebtoken::decode_header(new.to_str().unwrap())
                .unwrap()
                .kid,
            Some(rotated.kid.clone())
        );
        // Half the lifetime gone: a new token of the identity gets a new one.
        let late = bearer(claims, "t-ffffffffffffffffffffffff");
        let renewed = late.assertion(1031, &key, "portcullis", "chat").unwrap();
        assert_ne!(
            renewed, first,
            "not served with less than half its lifetime left"
        );
        assert_eq!(payload(&renewed)["exp"], 1091);
    }
}
