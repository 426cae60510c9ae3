//! Where a messaging request carries its credential, and removing it before
//! the request goes upstream. SPEC §4 order: `Authorization: Bearer`, then
//! (with sessions) the cookie, then a `Sec-WebSocket-Protocol` entry
//! `authorization.bearer.<token>`, then — only where the deployment opts in —
//! the `access_token` query parameter.

use pingora::http::RequestHeader;

/// The subprotocol entry prefix that carries a token (browsers cannot set
/// headers on WebSocket handshakes).
pub const SUBPROTOCOL_PREFIX: &str = "authorization.bearer.";
/// The opt-in query parameter.
pub const QUERY_PARAMETER: &str = "access_token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    AuthorizationHeader,
    /// The session cookie (no token: the session is server-side).
    Cookie,
    Subprotocol,
    Query,
}

impl Carrier {
    pub const COUNT: usize = 4;
    pub const ALL: [Carrier; Carrier::COUNT] = [
        Carrier::AuthorizationHeader,
        Carrier::Cookie,
        Carrier::Subprotocol,
        Carrier::Query,
    ];

    /// Where this carrier's metric handles sit in arrays of
    /// `metrics::AUTH_METHODS` (the slot after the carriers is "none").
    pub fn slot(self) -> usize {
        match self {
            Carrier::AuthorizationHeader => 0,
            Carrier::Cookie => 1,
            Carrier::Subprotocol => 2,
            Carrier::Query => 3,
        }
    }

    /// The `method` label of auth metrics.
    pub fn label(self) -> &'static str {
        match self {
            Carrier::AuthorizationHeader => "bearer_header",
            Carrier::Cookie => "cookie",
            Carrier::Subprotocol => "subprotocol",
            Carrier::Query => "query",
        }
    }
}

// Every carrier has a metric slot, and "none" the one after them.
const _: () = assert!(Carrier::COUNT + 1 == crate::metrics::AUTH_METHODS);

/// A carrier that is present but unusable: empty, repeated, or not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The upstream request could not be rewritten without the carriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteFailed;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    pub carrier: Carrier,
}

/// The first credential the request carries, if any. An empty or repeated
/// carrier is a malformed credential, not an absent one.
pub fn extract(req: &RequestHeader, allow_query: bool) -> Result<Option<Credential>, Malformed> {
    match authorization_header(req)? {
        Some(credential) => Ok(Some(credential)),
        None => other_carriers(req, allow_query),
    }
}

/// The bearer token in the `Authorization` header, the first carrier in
/// SPEC §4's order (a session cookie comes next, then the others).
pub fn authorization_header(req: &RequestHeader) -> Result<Option<Credential>, Malformed> {
    let mut authorizations = req.headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = authorizations.next() {
        if authorizations.next().is_some() {
            return Err(Malformed);
        }
        let value = value.to_str().map_err(|_| Malformed)?;
        if let Some((scheme, token)) = value.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                let token = token.trim();
                if token.is_empty() {
                    return Err(Malformed);
                }
                return Ok(Some(Credential {
                    token: token.to_string(),
                    carrier: Carrier::AuthorizationHeader,
                }));
            }
        }
        // Another scheme (Basic for the backend, say) is not ours to judge.
    }
    Ok(None)
}

/// A token in the subprotocol or the query (where the deployment allows
/// it): the carriers after the `Authorization` header and the cookie.
pub fn other_carriers(
    req: &RequestHeader,
    allow_query: bool,
) -> Result<Option<Credential>, Malformed> {
    let mut from_protocol =
        offered_subprotocols(req).filter_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX));
    if let Some(token) = from_protocol.next() {
        if token.is_empty() || from_protocol.next().is_some() {
            return Err(Malformed);
        }
        return Ok(Some(Credential {
            token: token.to_string(),
            carrier: Carrier::Subprotocol,
        }));
    }
    let query = if allow_query { query_of(req) } else { "" };
    if may_name_token_parameter(query) {
        let mut tokens =
            url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == QUERY_PARAMETER);
        if let Some((_, token)) = tokens.next() {
            if token.is_empty() || tokens.next().is_some() {
                return Err(Malformed);
            }
            return Ok(Some(Credential {
                token: token.into_owned(),
                carrier: Carrier::Query,
            }));
        }
    }
    Ok(None)
}

fn offered_subprotocols(req: &RequestHeader) -> impl Iterator<Item = &str> {
    req.headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Whether `query` could hold the token parameter in some spelling: its
/// name as is, or anything percent-encoded (`acc%65ss_token`). Most
/// queries are neither, and skip the decoding parse.
fn may_name_token_parameter(query: &str) -> bool {
    // The name has a `_` (a test holds it to that): a query with neither
    // `_` nor `%`, as most are, is settled by one vector scan.
    memchr::memchr2(b'_', b'%', query.as_bytes()).is_some()
        && (query.contains(QUERY_PARAMETER) || query.contains('%'))
}

fn query_of(req: &RequestHeader) -> &str {
    std::str::from_utf8(req.raw_path())
        .ok()
        .and_then(|t| t.split_once('?'))
        .map(|(_, q)| q)
        .unwrap_or("")
}

/// Removes every token carrier from the upstream request: the token
/// subprotocol entry (other offered protocols stay), the `access_token`
/// parameter, and — unless the token is to be forwarded — the
/// `Authorization` header. A token forwarded from another carrier travels
/// as `Authorization: Bearer`.
pub fn strip_carriers(
    req: &mut RequestHeader,
    used: Option<&Credential>,
    forward_token: bool,
) -> Result<(), RewriteFailed> {
    if req
        .headers
        .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL)
    {
        let kept: Vec<String> = offered_subprotocols(req)
            .filter(|p| !p.starts_with(SUBPROTOCOL_PREFIX))
            .map(str::to_string)
            .collect();
        // `HeaderMap::remove` takes every line of the name at once.
        req.remove_header(&http::header::SEC_WEBSOCKET_PROTOCOL);
        if !kept.is_empty() {
            req.insert_header(http::header::SEC_WEBSOCKET_PROTOCOL, kept.join(", "))
                .map_err(|_| RewriteFailed)?;
        }
    }
    let query = query_of(req);
    if may_name_token_parameter(query)
        && url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == QUERY_PARAMETER)
    {
        let raw = std::str::from_utf8(req.raw_path()).map_err(|_| RewriteFailed)?;
        let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
        let rest: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or("");
                url::form_urlencoded::parse(name.as_bytes())
                    .next()
                    .map(|(k, _)| k != QUERY_PARAMETER)
                    .unwrap_or(true)
            })
            .filter(|pair| !pair.is_empty())
            .collect();
        let target = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", rest.join("&"))
        };
        req.set_uri(target.parse().map_err(|_| RewriteFailed)?);
    }
    match (used, forward_token) {
        (
            Some(Credential {
                carrier: Carrier::Cookie,
                ..
            }),
            _,
        ) => {}
        (Some(credential), true) => {
            req.insert_header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", credential.token),
            )
            .map_err(|_| RewriteFailed)?;
        }
        (
            Some(Credential {
                carrier: Carrier::AuthorizationHeader,
                ..
            }),
            false,
        ) => {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        _ => {}
    }
    Ok(())
}

/// Whether a 101's chosen subprotocol is a token entry (it must never be
/// echoed back to the client).
pub fn is_token_subprotocol(value: &str) -> bool {
    value.trim().starts_with(SUBPROTOCOL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_carrier_has_its_own_metric_slot_and_label() {
        // Per-carrier metric handles are kept in arrays indexed by `slot`.
        for (slot, carrier) in Carrier::ALL.into_iter().enumerate() {
            assert_eq!(carrier.slot(), slot, "{carrier:?}");
        }
        let labels: std::collections::HashSet<_> = Carrier::ALL.map(Carrier::label).into();
        assert_eq!(labels.len(), Carrier::COUNT);
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn found(r: &RequestHeader, query: bool) -> Option<(String, Carrier)> {
        extract(r, query).unwrap().map(|c| (c.token, c.carrier))
    }

    #[test]
    fn carriers_are_tried_in_order() {
        let r = req(
            "/v1?access_token=q",
            &[
                ("Authorization", "Bearer h"),
                ("Sec-WebSocket-Protocol", "chat, authorization.bearer.p"),
            ],
        );
        assert_eq!(
            found(&r, true),
            Some(("h".into(), Carrier::AuthorizationHeader))
        );
        let r = req(
            "/v1?access_token=q",
            &[("Sec-WebSocket-Protocol", "chat, authorization.bearer.p")],
        );
        assert_eq!(found(&r, true), Some(("p".into(), Carrier::Subprotocol)));
        let r = req("/v1?x=1&access_token=q%2Bz", &[]);
        assert_eq!(found(&r, true), Some(("q+z".into(), Carrier::Query)));
        assert_eq!(found(&r, false), None, "the query carrier is opt-in");
        let r = req("/v1", &[("Authorization", "bearer   lower ")]);
        assert_eq!(
            found(&r, false),
            Some(("lower".into(), Carrier::AuthorizationHeader))
        );
        let r = req("/v1", &[("Authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(found(&r, false), None);
    }

    #[test]
    fn empty_or_repeated_carriers_are_malformed() {
        assert!(extract(&req("/v1", &[("Authorization", "Bearer ")]), false).is_err());
        assert!(extract(
            &req(
                "/v1",
                &[("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
            ),
            false
        )
        .is_err());
        assert!(extract(
            &req(
                "/v1",
                &[(
                    "Sec-WebSocket-Protocol",
                    "authorization.bearer.a, authorization.bearer.b"
                )]
            ),
            false
        )
        .is_err());
        assert!(extract(
            &req(
                "/v1",
                &[("Sec-WebSocket-Protocol", "authorization.bearer.")]
            ),
            false
        )
        .is_err());
        assert!(extract(&req("/v1?access_token=a&access_token=b", &[]), true).is_err());
    }

    #[test]
    fn a_percent_encoded_token_parameter_is_found_and_removed() {
        for query in ["acc%65ss_token=secret", "access%5Ftoken=secret"] {
            let mut r = req(&format!("/v1/chat?deploymentId=d&{query}&x=1"), &[]);
            let used = extract(&r, true).unwrap();
            assert_eq!(used.as_ref().map(|c| c.token.as_str()), Some("secret"));
            strip_carriers(&mut r, used.as_ref(), false).unwrap();
            assert_eq!(
                std::str::from_utf8(r.raw_path()).unwrap(),
                "/v1/chat?deploymentId=d&x=1",
                "{query}"
            );
        }
    }

    #[test]
    fn carriers_are_removed_before_forwarding() {
        let mut r = req(
            "/v1/chat?deploymentId=d&access_token=secret&x=1",
            &[
                ("Authorization", "Bearer secret"),
                (
                    "Sec-WebSocket-Protocol",
                    "chat.v1, authorization.bearer.secret, chat.v2",
                ),
            ],
        );
        let used = extract(&r, true).unwrap();
        strip_carriers(&mut r, used.as_ref(), false).unwrap();
        assert_eq!(
            r.headers.get("sec-websocket-protocol").unwrap(),
            "chat.v1, chat.v2"
        );
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(
            std::str::from_utf8(r.raw_path()).unwrap(),
            "/v1/chat?deploymentId=d&x=1"
        );

        let mut only_token = req(
            "/v1?access_token=t",
            &[("Sec-WebSocket-Protocol", "authorization.bearer.t")],
        );
        let used = extract(&only_token, true).unwrap();
        strip_carriers(&mut only_token, used.as_ref(), false).unwrap();
        assert!(only_token.headers.get("sec-websocket-protocol").is_none());
        assert_eq!(std::str::from_utf8(only_token.raw_path()).unwrap(), "/v1");

        // Offers over several lines become one line without the token.
        let mut two_lines = req(
            "/v1",
            &[
                ("Sec-WebSocket-Protocol", "chat.v1, authorization.bearer.t"),
                ("Sec-WebSocket-Protocol", "chat.v2"),
            ],
        );
        let used = extract(&two_lines, false).unwrap();
        strip_carriers(&mut two_lines, used.as_ref(), false).unwrap();
        let lines: Vec<_> = two_lines
            .headers
            .get_all("sec-websocket-protocol")
            .iter()
            .collect();
        assert_eq!(lines, ["chat.v1, chat.v2"]);
    }

    #[test]
    fn forward_token_sends_it_as_a_bearer_header() {
        let mut r = req(
            "/v1",
            &[("Sec-WebSocket-Protocol", "chat, authorization.bearer.tok")],
        );
        let used = extract(&r, false).unwrap();
        strip_carriers(&mut r, used.as_ref(), true).unwrap();
        assert_eq!(r.headers.get("authorization").unwrap(), "Bearer tok");
        assert_eq!(r.headers.get("sec-websocket-protocol").unwrap(), "chat");
        // A Basic header meant for the backend is left alone.
        let mut basic = req(
            "/v1",
            &[
                ("Authorization", "Basic x"),
                ("Sec-WebSocket-Protocol", "authorization.bearer.t"),
            ],
        );
        let used = extract(&basic, false).unwrap();
        strip_carriers(&mut basic, used.as_ref(), false).unwrap();
        assert_eq!(basic.headers.get("authorization").unwrap(), "Basic x");
    }

    #[test]
    fn queries_that_may_name_the_token_parameter_are_told_apart() {
        // The quick scan for `_` and `%` relies on the name having a `_`.
        assert!(QUERY_PARAMETER.contains('_'));
        assert!(may_name_token_parameter("a=1&access_token=t"));
        assert!(may_name_token_parameter("acc%65ss%5Ftoken=t"));
        assert!(!may_name_token_parameter("deploymentId=d&x=1"));
        assert!(!may_name_token_parameter("some_thing=1"));
        assert!(!may_name_token_parameter(""));
    }

    #[test]
    fn token_subprotocols_are_recognised() {
        assert!(is_token_subprotocol("authorization.bearer.abc"));
        assert!(!is_token_subprotocol("chat.v1"));
    }
}

/// Property tests (issue 13 item 10): hostile carriers.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn auth_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"Bearer tok-h".to_vec()),
            Just(b"bearer   tok-h ".to_vec()),
            Just(b"Bearer ".to_vec()),
            Just(b"Bearer".to_vec()),
            Just(b"Basic dXNlcg==".to_vec()),
            Just(b"Bearer \xfftok".to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn protocol_entry() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("chat"),
            Just("authorization.bearer.tok-p"),
            Just("authorization.bearer."),
            Just(" authorization.bearer.tok-p2 "),
            Just("Authorization.Bearer.no"),
            Just(""),
        ]
    }

    fn query_pair() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("access_token=tok-q"),
            Just("access_token="),
            Just("access%5Ftoken=tok-q2"),
            Just("Access_token=DECOY"),
            Just("x=1"),
            Just("access_token%3DDECOY"),
        ]
    }

    /// What SPEC §4 says the result must be, written out case by case.
    fn expected(
        auth: &[Vec<u8>],
        protocols: &[Vec<&str>],
        query: &[&str],
        allow_query: bool,
    ) -> Result<Option<(String, Carrier)>, Malformed> {
        match auth {
            [] => {}
            [one] => {
                let text = std::str::from_utf8(one)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                    .ok_or(Malformed)?;
                if let Some((scheme, token)) = text.split_once(' ') {
                    if scheme.eq_ignore_ascii_case("bearer") {
                        let token = token.trim();
                        if token.is_empty() {
                            return Err(Malformed);
                        }
                        return Ok(Some((token.into(), Carrier::AuthorizationHeader)));
                    }
                }
            }
            _ => return Err(Malformed),
        }
        let tokens: Vec<&str> = protocols
            .iter()
            .flatten()
            .filter_map(|p| p.trim().strip_prefix(SUBPROTOCOL_PREFIX))
            .collect();
        match tokens.as_slice() {
            [] => {}
            [""] => return Err(Malformed),
            [one] => return Ok(Some((one.to_string(), Carrier::Subprotocol))),
            _ => return Err(Malformed),
        }
        if !allow_query {
            return Ok(None);
        }
        let values: Vec<&str> = query
            .iter()
            .filter_map(|p| match *p {
                "access_token=tok-q" => Some("tok-q"),
                "access%5Ftoken=tok-q2" => Some("tok-q2"),
                "access_token=" => Some(""),
                _ => None,
            })
            .collect();
        match values.as_slice() {
            [] => Ok(None),
            [""] => Err(Malformed),
            [one] => Ok(Some((one.to_string(), Carrier::Query))),
            _ => Err(Malformed),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The token comes from the documented carriers only, in the
        /// documented order, and never from a look-alike (a cookie, another
        /// header, another case of the parameter or subprotocol).
        #[test]
        fn carriers_follow_the_documented_order(
            auth in prop::collection::vec(auth_value(), 0..3),
            protocols in prop::collection::vec(prop::collection::vec(protocol_entry(), 0..4), 0..3),
            query in prop::collection::vec(query_pair(), 0..4),
            allow_query: bool,
        ) {
            let target = if query.is_empty() { "/v1".to_string() } else { format!("/v1?{}", query.join("&")) };
            let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            for value in &auth {
                let value = http::HeaderValue::from_bytes(value);
                prop_assume!(value.is_ok());
                req.append_header("Authorization", value.unwrap()).unwrap();
            }
            for list in &protocols {
                req.append_header("Sec-WebSocket-Protocol", list.join(",")).unwrap();
            }
            // Decoys that are no carrier.
            req.append_header("Cookie", "access_token=DECOY").unwrap();
            req.append_header("X-Access-Token", "DECOY").unwrap();
            req.append_header("Sec-WebSocket-Extensions", "authorization.bearer.DECOY").unwrap();
            let got = extract(&req, allow_query).map(|c| c.map(|c| (c.token, c.carrier)));
            prop_assert_eq!(&got, &expected(&auth, &protocols, &query, allow_query));
            if let Ok(Some((token, _))) = &got {
                prop_assert!(!token.contains("DECOY"));
            }
        }

        /// Whatever the bytes, nothing panics, and stripping leaves no
        /// token carrier behind.
        #[test]
        fn arbitrary_values_never_panic_and_strip_clean(
            auth in prop::collection::vec(any::<u8>(), 0..24),
            protocol in prop::collection::vec(any::<u8>(), 0..24),
            query in "[a-z_%=&;+0-9A-F.]{0,24}",
            allow_query: bool,
            forward: bool,
        ) {
            let target = format!("/v1?{query}");
            let Ok(mut req) = RequestHeader::build("GET", target.as_bytes(), None) else {
                return Ok(());
            };
            if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
                req.append_header("Authorization", v).unwrap();
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&protocol) {
                req.append_header("Sec-WebSocket-Protocol", v).unwrap();
            }
            let used = extract(&req, allow_query).ok().flatten();
            if strip_carriers(&mut req, used.as_ref(), forward).is_ok() {
                prop_assert!(offered_subprotocols(&req).all(|p| !p.starts_with(SUBPROTOCOL_PREFIX)));
                prop_assert!(url::form_urlencoded::parse(query_of(&req).as_bytes())
                    .all(|(k, _)| k != QUERY_PARAMETER));
            }
        }
    }
}
