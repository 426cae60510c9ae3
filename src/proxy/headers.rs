//! What goes upstream in the request header: spoofed identity headers
//! removed, headers that backends trust for routing removed
//! (`forwarding.strip_headers`), `X-Forwarded-*` set from what portcullis
//! itself saw.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::runtime::StripRules;

/// Whether a header name is, or could be read by an upstream as, an identity
/// header: compared case-insensitively with `_` read as `-`, since some
/// servers (CGI, some frameworks) fold `X_Auth_Subject` into `X-Auth-Subject`.
pub fn is_identity_header(name: &str, rules: &StripRules) -> bool {
    let normalized = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    let name = name.as_bytes();
    let prefix = rules.prefix.as_bytes();
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| normalized(*a) == *b)
}

/// Removes every identity header the client sent; returns how many.
pub fn strip_identity_headers(req: &mut RequestHeader, rules: &StripRules) -> usize {
    remove_headers_where(req, |name| is_identity_header(name, rules))
}

/// Removes every header named in `names` (normalized: lowercase, `_` as
/// `-`), in any case and with `_` for `-`, as identity headers are; returns
/// how many names were found. `StripRules::listed` holds two kinds: the
/// headers some backend framework trusts to choose the path, host or
/// method (`forwarding.strip_headers`: `X-Original-URL`,
/// `X-HTTP-Method-Override`…), which left in would route the request
/// somewhere else than where portcullis admitted it; and the headers
/// portcullis sets itself, whose `_` spellings (`X_Real_IP`) a backend
/// that folds `_` into `-` (CGI's `HTTP_X_REAL_IP`, PHP behind FastCGI)
/// would take for portcullis's.
pub fn strip_listed_headers(req: &mut RequestHeader, names: &[String]) -> usize {
    if names.is_empty() {
        return 0;
    }
    // Header names are lower case already: only `_` is left to fold,
    // compared in place rather than normalized into a new string per name.
    remove_headers_where(req, |name| names.iter().any(|n| folds_to(name, n)))
}

/// Removes every header whose name `doomed` picks; returns how many names.
fn remove_headers_where(req: &mut RequestHeader, doomed: impl Fn(&str) -> bool) -> usize {
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| doomed(k.as_str()))
        .cloned()
        .collect();
    for name in &names {
        // Every line of the name at once.
        req.remove_header(name);
    }
    names.len()
}

/// What portcullis knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: Option<IpAddr>,
    pub tls: bool,
}

/// The client's address as rate limits see it: the peer, or, when the
/// peer is a trusted proxy, the rightmost `X-Forwarded-For` entry that is
/// not itself a trusted proxy (entries left of it could be made up by the
/// client).
pub fn client_address(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    // From the right: our proxies' own entries are skipped; the first other
    // address is the client; junk ends what can be believed.
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
}

/// The `X-Forwarded-*` values to send upstream, ready to be sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub for_: Option<HeaderValue>,
    pub proto: HeaderValue,
    pub host: Option<HeaderValue>,
}

/// Computes `X-Forwarded-For/Proto/Host`. A trusted peer (a configured proxy
/// in front of portcullis) has its values extended; anyone else's are
/// replaced by what portcullis observed. A value that cannot be a header
/// value is left out.
pub fn forwarded(req: &RequestHeader, client: ClientInfo, trusted: bool) -> Forwarded {
    // An untrusted client's own `X-Forwarded-*` are not even read.
    let sent = |name: &HeaderName| req.headers.get(name).and_then(visible_value);
    let peer = client.peer.map(|ip| ip.to_string());
    let chain = trusted.then(|| forwarded_chain(req)).flatten();
    let for_ = match (chain, peer) {
        (Some(chain), Some(peer)) => HeaderValue::try_from(format!("{chain}, {peer}")).ok(),
        (_, peer) => peer.and_then(|p| HeaderValue::try_from(p).ok()),
    };
    let proto_passthrough = trusted
        .then(|| sent(&X_FORWARDED_PROTO))
        .flatten()
        .filter(|p| p == "http" || p == "https");
    let proto = proto_passthrough.unwrap_or(HeaderValue::from_static(if client.tls {
        "https"
    } else {
        "http"
    }));
    let host = trusted
        .then(|| sent(&X_FORWARDED_HOST))
        .flatten()
        .or_else(|| sent(&http::header::HOST))
        .or_else(|| {
            let authority = req.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
    Forwarded { for_, proto, host }
}

/// A trusted proxy's `X-Forwarded-For`, every line of it in order: a
/// proxy that adds its own line (HAProxy's `option forwardfor`) leaves the
/// client's made-up one first, and the address that proxy saw is last.
fn forwarded_chain(req: &RequestHeader) -> Option<String> {
    let lines: Vec<&str> = req
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(visible_text)
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// `value` without surrounding whitespace, or nothing when that leaves it
/// empty or it is not visible ASCII.
fn visible_text(value: &HeaderValue) -> Option<&str> {
    Some(value.to_str().ok()?.trim()).filter(|text| !text.is_empty())
}

/// [`visible_text`] as a header value: shared, not copied, when already
/// trim.
fn visible_value(value: &HeaderValue) -> Option<HeaderValue> {
    let text = visible_text(value)?;
    if text.len() == value.len() {
        Some(value.clone())
    } else {
        HeaderValue::from_str(text).ok()
    }
}

/// Writes the forwarded headers, replacing any of the same names. The
/// client's `Forwarded` and `X-Real-IP`, and every spelling of the others,
/// are removed before, by `strip_listed_headers`: its list holds every name
/// of [`FORWARDING`] ([`set_by_portcullis`]).
pub fn apply_forwarded(req: &mut RequestHeader, fwd: &Forwarded) {
    if let Some(v) = &fwd.for_ {
        let _ = insert_static(req, &X_FORWARDED_FOR, v.clone());
    }
    let _ = insert_static(req, &X_FORWARDED_PROTO, fwd.proto.clone());
    if let Some(h) = &fwd.host {
        let _ = insert_static(req, &X_FORWARDED_HOST, h.clone());
    }
}

/// Every header that says where a request came from: the client's are
/// never passed on.
static FORWARDING: [&HeaderName; 5] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &http::header::FORWARDED,
    &X_REAL_IP,
];

/// The headers `prepare_upstream_request` sets under fixed names (the
/// identity's go under the identity prefix, stripped in every spelling by
/// `strip_identity_headers`), lower case.
pub fn set_by_portcullis() -> impl Iterator<Item = &'static str> {
    FORWARDING
        .iter()
        .map(|name| name.as_str())
        .chain([super::request_id::HEADER_NAME.as_str()])
}

/// Whether `name` reads as `canonical` to a backend that takes `_` for `-`
/// (both lower case, as `HeaderName`s are).
fn folds_to(name: &str, canonical: &str) -> bool {
    let (name, canonical) = (name.as_bytes(), canonical.as_bytes());
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets header `name` to `value`, sent spelled as the name is (lower
/// case), without parsing the name again.
pub fn insert_static(
    req: &mut RequestHeader,
    name: &'static HeaderName,
    value: http::HeaderValue,
) -> pingora::Result<()> {
    req.insert_parsed_header(
        name,
        bytes::Bytes::from_static(name.as_str().as_bytes()),
        value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut req = RequestHeader::build("POST", b"/.auth/token", None).unwrap();
        req.insert_header("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.2")
            .unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        // Behind the trusted proxy: the rightmost address it did not add itself.
        assert_eq!(
            client_address(&req, Some(proxy), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // Anyone else's X-Forwarded-For is ignored.
        assert_eq!(
            client_address(&req, Some(stranger), &trusted),
            Some(stranger)
        );
        // A garbage entry ends the chain that is believed.
        req.insert_header("x-forwarded-for", "198.51.100.7, not-an-ip, 10.0.0.3")
            .unwrap();
        assert_eq!(client_address(&req, Some(proxy), &trusted), Some(proxy));
        req.remove_header("x-forwarded-for");
        assert_eq!(client_address(&req, Some(proxy), &trusted), Some(proxy));
    }

    fn rules() -> StripRules {
        StripRules {
            prefix: "x-auth-".into(),
            listed: Vec::new(),
        }
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v1", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn every_spelling_of_an_identity_header_is_stripped() {
        let mut req = request(&[
            ("X-Auth-Subject", "admin"),
            ("x_auth_subject", "admin"),
            ("X_AUTH_EMAIL", "a@b"),
            ("x-AUTH-groups", "root"),
            ("X-Auth-Subject", "second copy"),
            ("X-Authorization-Other", "keep: prefix is x-auth- with dash"),
            ("Cookie", "a=b"),
            ("X-Auth", "no dash: not the prefix"),
        ]);
        let removed = strip_identity_headers(&mut req, &rules());
        assert_eq!(removed, 4);
        let left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(req.headers.get("x-authorization-other").is_some());
        assert!(req.headers.get("cookie").is_some());
        assert!(req.headers.get("x-auth").is_some());
    }

    #[test]
    fn routing_headers_are_stripped_in_every_spelling() {
        let defaults = crate::config::Forwarding::default().strip_headers;
        let mut req = request(&[
            ("X-Original-URL", "/support/admin"),
            ("x-rewrite-url", "/support/admin"),
            ("X_Forwarded_Prefix", "/support"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("x-http-method-override", "PUT"),
            ("X-Method-Override", "DELETE"),
            ("X-HOST", "evil.example"),
            ("Host", "chat.example.com"),
            ("X-Original", "not listed"),
            ("Cookie", "a=b"),
        ]);
        let removed = strip_listed_headers(&mut req, &defaults);
        assert_eq!(removed, 6);
        let mut left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cookie", "host", "x-original"]);

        // A configured list replaces the default; an empty one strips nothing.
        let mut req = request(&[("X-Original-URL", "/x"), ("X-Tenant-Route", "b")]);
        assert_eq!(
            strip_listed_headers(&mut req, &["x-tenant-route".to_string()]),
            1
        );
        assert!(req.headers.get("x-original-url").is_some());
        assert_eq!(strip_listed_headers(&mut req, &[]), 0);
        assert!(req.headers.get("x-original-url").is_some());
    }

    #[test]
    fn untrusted_clients_cannot_choose_their_forwarded_headers() {
        let req = request(&[
            ("Host", "chat.example.com"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ]);
        let client = ClientInfo {
            peer: Some("192.0.2.7".parse().unwrap()),
            tls: false,
        };
        let f = forwarded(&req, client, false);
        assert_eq!(f.for_.as_ref().unwrap(), "192.0.2.7");
        assert_eq!(f.proto, "http");
        assert_eq!(f.host.as_ref().unwrap(), "chat.example.com");

        let mut req = req;
        apply_forwarded(&mut req, &f);
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(
            req.headers.get("x-forwarded-host").unwrap(),
            "chat.example.com"
        );
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarded_headers_spelled_with_underscores_are_removed() {
        let mut req = request(&[
            ("Host", "chat.example.com"),
            ("X_Real_IP", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("X-Forwarded_Host", "evil.example"),
            ("X_Forwarded-Proto", "https"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("X_Request_Id", "kept: not a forwarding header"),
            ("X_Real_IPv6", "kept: another name"),
        ]);
        let client = ClientInfo {
            peer: Some("192.0.2.7".parse().unwrap()),
            tls: true,
        };
        let f = forwarded(&req, client, false);
        let forwarding: Vec<String> = FORWARDING.iter().map(|n| n.to_string()).collect();
        strip_listed_headers(&mut req, &forwarding);
        apply_forwarded(&mut req, &f);
        let mut left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x_real_ipv6",
                "x_request_id"
            ]
        );
        assert!(!format!("{:?}", req.headers).contains("1.2.3.4"));
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "https");
    }

    #[test]
    fn trusted_proxies_have_their_chain_extended() {
        let req = request(&[
            ("Host", "internal:8080"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "chat.example.com"),
        ]);
        let client = ClientInfo {
            peer: Some("10.0.0.2".parse().unwrap()),
            tls: false,
        };
        let f = forwarded(&req, client, true);
        assert_eq!(f.for_.unwrap(), "203.0.113.9, 10.0.0.2");
        assert_eq!(f.proto, "https");
        assert_eq!(f.host.unwrap(), "chat.example.com");

        // A proxy that adds its own line rather than extending the
        // client's: every line is kept, in order, so the address the
        // proxy saw stays the last before the peer's.
        let mut req = request(&[("X-Forwarded-For", "6.6.6.6")]);
        req.append_header("X-Forwarded-For", "203.0.113.9").unwrap();
        let f = forwarded(&req, client, true);
        assert_eq!(f.for_.unwrap(), "6.6.6.6, 203.0.113.9, 10.0.0.2");
    }
}
