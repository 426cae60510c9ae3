//! Where login and logout may send the browser back to (`rd`,
//! `post_logout_redirect_uri`).
//!
//! The checks are built against the oauth2-proxy open-redirect advisories
//! (GHSA-qqxw-m5fj-f7gv, GHSA-j7px-6hwj-hpjg, GHSA-5m6c-jp6f-2vcv,
//! GHSA-4mf2-f3wh-gvf2) and its `testdata/openredirects.txt` corpus. They fail
//! closed: anything not positively recognised as safe becomes `/`.
//!
//! Rules, in the order they are applied to the raw parameter value:
//!
//! 1. Not empty and at most [`MAX_REDIRECT_LEN`] bytes.
//! 2. Printable ASCII only (`0x21..=0x7E`), and no `\` anywhere. This rejects raw
//!    control characters, spaces, tabs, CR/LF, DEL, Unicode whitespace and
//!    every non-ASCII character, including IDN look-alike hosts written in
//!    Unicode. Links taken from `location.href` are always ASCII (browsers
//!    serialise hosts as punycode and percent-encode paths), so nothing
//!    legitimate is lost, and the value is always a valid `Location` header.
//! 3. Either a relative reference starting with `/` (rule 4), or an absolute
//!    URL starting with `http://` or `https://` (scheme case-insensitive,
//!    exactly two slashes followed by a non-empty authority; rule 5). Every
//!    other shape is rejected: `//host`, `///host`, `https:host`,
//!    `http:/host`, `javascript:`, `data:`, `blob:`, `ftp:`, bare
//!    `host/path`, `?query`, `#fragment`, percent-encoded schemes and slashes.
//! 4. The part after the authority (the whole value, for a relative reference)
//!    is split into path and query-plus-fragment at the first `?` or `#`.
//!    * The path is percent-decoded repeatedly until stable (at most
//!      [`MAX_DECODE_ROUNDS`] rounds, else rejected), so `%2f`, `%5c`, `%09`,
//!      `%252f`… are judged by what they would become in a lenient decoder.
//!    * The decoded path must not contain bytes `0x00..=0x20`, `0x7F` or `\`
//!      (so `%00 %09 %0a %0d %20` and encoded backslashes are rejected in the
//!      path), must not contain an empty segment (`//`, anywhere; only a
//!      trailing `/` is allowed) and must not contain a `.` or `..` segment.
//!      This rejects `//`, `/\`, `/%2f%2f`, `/%5c`, `/%09/`, `/./\`, `/.//`,
//!      `/%2e%2e//` and similar. A relative path cannot leave the origin by
//!      itself, but a later hop (a backend that decodes or normalises the path
//!      and redirects to it) could, so those shapes are refused too.
//!    * The decoded query and fragment must not contain control characters
//!      (`0x00..=0x1F`, `0x7F`). An encoded space (`%20`) *is* allowed there,
//!      since search-like query strings need it and it cannot move the origin.
//! 5. For an absolute URL:
//!    * the raw authority (text between `//` and the first `/`, `?` or `#`)
//!      must not contain `@` (no userinfo, even towards an allowed host) or `%`
//!      (no percent-encoded host tricks such as `%2e`, `%40`, `%23`);
//!    * the value must parse with the WHATWG parser of the `url` crate (the
//!      same algorithm browsers use), as `http` or `https`, without userinfo;
//!    * its origin, serialised with `Origin::ascii_serialization` (lowercase
//!      scheme and host, punycode host, default port dropped), must be exactly
//!      `self_origin` or one of `allowed_origins`. The comparison is an exact
//!      string match: no suffix, prefix or wildcard matching, a different port
//!      or scheme is a different origin, and a trailing-dot host
//!      (`www.example.com.`) is a different origin from `www.example.com`
//!      (browsers treat it as one) so it only passes if configured literally.
//!
//! A fragment is harmless once the origin is fixed: `https://evil.com#@ok.com`
//! is rejected because its authority is `evil.com`, while
//! `https://ok.com/#@evil.com` is accepted.

use url::Url;

/// Longest `rd` value accepted, in bytes.
pub const MAX_REDIRECT_LEN: usize = 2048;

/// How many rounds of percent-decoding are applied before a value that keeps
/// changing is considered hostile.
pub const MAX_DECODE_ROUNDS: usize = 4;

/// Where the browser goes when `rd` is missing or unsafe.
pub const FALLBACK_REDIRECT: &str = "/";

/// Decides where the browser is sent after login or logout.
///
/// `rd` as given by the client (already percent-decoded once by the query
/// parser, i.e. the raw parameter value). `self_origin`: portcullis's own
/// public origin, e.g. `"https://chat.example.com"` (`scheme://host[:port]`,
/// lowercase, no default port). `allowed_origins`: the deployment's allowed
/// origins in the same serialised form.
///
/// Returns the URL to redirect to: the input, unchanged, when it is safe (see
/// the module documentation for the rules), else `"/"`.
pub fn safe_redirect(rd: Option<&str>, self_origin: &str, allowed_origins: &[String]) -> String {
    match rd {
        Some(rd) if is_safe_redirect(rd, self_origin, allowed_origins) => rd.to_owned(),
        _ => FALLBACK_REDIRECT.to_owned(),
    }
}

/// Whether `rd` may be used as a post-login or post-logout redirect target.
/// See the module documentation for the rules.
pub fn is_safe_redirect(rd: &str, self_origin: &str, allowed_origins: &[String]) -> bool {
    if rd.is_empty() || rd.len() > MAX_REDIRECT_LEN {
        return false;
    }
    if !rd.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return false;
    }
    if rd.starts_with('/') {
        return is_safe_tail(rd);
    }
    let Some(after_scheme) = strip_http_scheme(rd) else {
        return false;
    };
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, tail) = after_scheme.split_at(authority_end);
    if authority.is_empty() || authority.contains(['@', '%']) {
        return false;
    }
    if !is_safe_tail(tail) {
        return false;
    }
    let Ok(url) = Url::parse(rd) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return false;
    }
    let origin = url.origin();
    if !origin.is_tuple() {
        return false;
    }
    let origin = origin.ascii_serialization();
    origin == self_origin || allowed_origins.contains(&origin)
}

/// The rest of `rd` after `http://` or `https://` (scheme matched
/// case-insensitively), or `None` for any other beginning.
fn strip_http_scheme(rd: &str) -> Option<&str> {
    ["https://", "http://"].iter().find_map(|prefix| {
        let head = rd.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &rd[prefix.len()..])
    })
}

/// Checks the path, query and fragment of a reference: the whole value of a
/// relative `rd`, or what follows the authority of an absolute one (then
/// possibly empty, or starting with `?` or `#`).
fn is_safe_tail(tail: &str) -> bool {
    let split = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, rest) = tail.split_at(split);

    let Some(path) = decode_fully(path) else {
        return false;
    };
    if path.iter().any(|&b| b <= b' ' || b == 0x7f || b == b'\\') {
        return false;
    }
    if let Some(segments) = path.strip_prefix(b"/") {
        let segments: Vec<&[u8]> = segments.split(|&b| b == b'/').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            if (segment.is_empty() && i != last) || *segment == b"." || *segment == b".." {
                return false;
            }
        }
    } else if !path.is_empty() {
        return false;
    }

    let Some(rest) = decode_fully(rest) else {
        return false;
    };
    !rest.iter().any(|&b| b < b' ' || b == 0x7f)
}

/// Percent-decodes `s` until it stops changing; `None` if it still changes
/// after [`MAX_DECODE_ROUNDS`] rounds. Malformed escapes are kept verbatim.
fn decode_fully(s: &str) -> Option<Vec<u8>> {
    let mut current = s.as_bytes().to_vec();
    for _ in 0..MAX_DECODE_ROUNDS {
        let next = percent_decode_once(&current);
        if next == current {
            return Some(current);
        }
        current = next;
    }
    None
}

fn percent_decode_once(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(hi), Some(lo)) = (hex_value(input[i + 1]), hex_value(input[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SELF_ORIGIN: &str = "https://chat.example.com";

    fn allowed() -> Vec<String> {
        vec![
            "https://www.example.com".to_owned(),
            "http://localhost:3000".to_owned(),
        ]
    }

    fn check(rd: &str) -> String {
        safe_redirect(Some(rd), SELF_ORIGIN, &allowed())
    }

    /// Hostile shapes, mostly from the oauth2-proxy advisories and their
    /// open-redirect corpus, adapted to `www.example.com` as the allowed host.
    const HOSTILE: &[&str] = &[
        // Empty.
        "",
        // Protocol-relative and slash/backslash mixes (GHSA-qqxw-m5fj-f7gv).
        "//evil.com",
        "///evil.com",
        "////evil.com",
        "//EVIL.COM",
        "/\\evil.com",
        "\\/evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "/\\/\\/evil.com/",
        "//evil.com\\@www.example.com",
        // Encoded slashes and backslashes at the start.
        "%2F%2Fevil.com",
        "/%2f%2fevil.com",
        "/%2F%2Fevil.com",
        "/%2f%2f%2fevil.com%2f%3fwww.example.com",
        "/%5cevil.com",
        "/%5Cevil.com",
        "/%2f%5c%2fevil.com/",
        "/%252f%252fevil.com",
        "//%2fxevil.com",
        "//%5cevil.com",
        // Raw whitespace and control characters (GHSA-j7px-6hwj-hpjg).
        "/\t/evil.com",
        "/ /evil.com",
        "/ \\evil.com",
        "/\n/evil.com",
        "/\r/evil.com",
        "/\x0b/evil.com",
        "/\x0c/evil.com",
        "/\0/evil.com",
        "/\x7f/evil.com",
        "/\t\t/\t\\evil.com",
        " /chat",
        "/chat ",
        "\t//evil.com",
        // Encoded whitespace and control characters.
        "/%09/evil.com",
        "/%0d%0a/evil.com",
        "/%0D%0ASet-Cookie:%20a=b",
        "/%20/evil.com",
        "/%00/evil.com",
        "/%0b/evil.com",
        "/%2509/evil.com",
        "/chat?x=%0d%0aSet-Cookie:a=b",
        "/chat#%00",
        // Unicode whitespace and look-alikes.
        "/\u{3000}/evil.com",
        "/\u{a0}/evil.com",
        "/\u{200b}/evil.com",
        "/\u{2028}/evil.com",
        "https://www.example.com\u{3002}evil.com/",
        // Dot-segment tricks.
        "/./\\evil.com",
        "/.//evil.com",
        "/..//evil.com",
        "/./../../\\evil.com",
        "/%2e%2e//evil.com",
        "/%2e%2e%2f%2fevil.com",
        "/chat/../..//evil.com",
        "/chat/.",
        "/https://evil.com",
        "/https:/%5cevil.com/",
        // Schemes other than http(s), and malformed http(s).
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "javascript://www.example.com/%0aalert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        "ftp://www.example.com/",
        "wss://chat.example.com/",
        "blob:https://chat.example.com/0b1e5a5e",
        "https:evil.com",
        "https:www.example.com",
        "http:/evil.com",
        "https:/www.example.com/",
        "https:///evil.com",
        "https:////evil.com",
        "https:\\\\evil.com",
        "https:/\\evil.com",
        "https://",
        "https://?x",
        "https%3A%2F%2Fevil.com",
        "evil.com",
        "www.example.com/page",
        "@evil.com",
        "?next=/chat",
        "#top",
        // Foreign origins, including ones mentioning the allowed host.
        "https://evil.com",
        "HTTPS://EVIL.COM/",
        "https://evil.com/?x=https://www.example.com",
        "https://evil.com?x=https://www.example.com",
        "https://evil.com#@www.example.com",
        "https://evil.com:80#@www.example.com/",
        "https://evil.com?@www.example.com/",
        "https://evil.com/www.example.com",
        // Userinfo (GHSA-5m6c-jp6f-2vcv).
        "https://a@evil.com",
        "https://www.example.com@evil.com",
        "https://www.example.com:@evil.com",
        "https://www.example.com:443@evil.com",
        "https://:@evil.com",
        "https://www.example.com+&@evil.com#+@www.example.com/",
        "https://user:pass@www.example.com/",
        "https://a@www.example.com/",
        // Subdomain, suffix and prefix look-alikes (GHSA-4mf2-f3wh-gvf2).
        "https://www.example.com.evil.com",
        "https://www.example.com.evil.com/page",
        "https://evilwww.example.com",
        "https://sub.www.example.com/",
        "https://example.com/",
        "https://wwwexample.com/",
        "https://www.example.co/",
        "https://www.example.com:443.evil.com",
        "https://www.example.com%2eevil.com/",
        "https://www.example.com%40evil.com/",
        "https://evil.com%23.www.example.com/",
        "https://evil.com%2f%2f.www.example.com/",
        "https://chat.example.com.evil.com/",
        // Trailing-dot host: a different origin to browsers.
        "https://www.example.com.",
        "https://www.example.com./page",
        "https://chat.example.com./",
        // IDN look-alikes: Cyrillic "а", and its punycode form.
        "https://www.ex\u{430}mple.com/",
        "https://www.xn--exmple-4nf.com/",
        // Ports and schemes: only the configured ones.
        "https://www.example.com:8443",
        "https://www.example.com:8443/page",
        "https://chat.example.com:8443/",
        "http://www.example.com/page",
        "http://chat.example.com/",
        "https://localhost:3000/",
        "http://localhost:3001/",
        "http://localhost/",
        // Numeric hosts.
        "http://3627734734",
        "http://0xd83ad6ce/",
        "http://[::ffff:216.58.214.206]/",
        // Same origin, but paths a later hop could turn into `//evil.com`.
        "https://www.example.com//evil.com",
        "https://www.example.com/%2f%2fevil.com",
        "https://www.example.com/./\\evil.com",
        "https://www.example.com/%09/evil.com",
    ];

    #[test]
    fn hostile_inputs_fall_back_to_root() {
        assert!(HOSTILE.len() >= 40);
        for rd in HOSTILE {
            assert_eq!(check(rd), "/", "accepted hostile redirect {rd:?}");
            assert!(
                !is_safe_redirect(rd, SELF_ORIGIN, &allowed()),
                "is_safe_redirect accepted {rd:?}"
            );
        }
    }

    const GOOD: &[&str] = &[
        "/",
        "/chat",
        "/chat/",
        "/chat?x=1#top",
        "/chat/room-42?msg=hello%20world",
        "/chat?next=https://evil.com",
        "/files/a%2Fb",
        "/.well-known/thing",
        "/100%25",
        "https://www.example.com/page",
        "https://www.example.com",
        "https://www.example.com?x=1",
        "https://www.example.com/#@evil.com",
        "https://www.example.com:443/page",
        "HTTPS://WWW.EXAMPLE.COM/ok",
        "https://chat.example.com/chat?x=1#top",
        "https://chat.example.com/",
        "http://localhost:3000/dev",
    ];

    #[test]
    fn good_inputs_pass_through_unchanged() {
        for rd in GOOD {
            assert_eq!(check(rd), *rd, "rejected good redirect {rd:?}");
        }
    }

    #[test]
    fn missing_rd_goes_to_root() {
        assert_eq!(safe_redirect(None, SELF_ORIGIN, &allowed()), "/");
    }

    #[test]
    fn only_self_origin_when_nothing_is_allowed() {
        assert_eq!(
            safe_redirect(Some("https://chat.example.com/x"), SELF_ORIGIN, &[]),
            "https://chat.example.com/x"
        );
        assert_eq!(
            safe_redirect(Some("https://www.example.com/x"), SELF_ORIGIN, &[]),
            "/"
        );
        assert_eq!(safe_redirect(Some("/x"), SELF_ORIGIN, &[]), "/x");
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("/{}", "a".repeat(MAX_REDIRECT_LEN - 1));
        assert_eq!(check(&at_limit), at_limit);
        let over = format!("/{}", "a".repeat(MAX_REDIRECT_LEN));
        assert_eq!(check(&over), "/");
        let absolute_over = format!("https://www.example.com/{}", "a".repeat(MAX_REDIRECT_LEN));
        assert_eq!(check(&absolute_over), "/");
    }

    #[test]
    fn endless_encoding_is_rejected() {
        // Five layers of encoding of "a": still changing after the last round.
        let rd = "/%2525252561";
        assert_eq!(check(rd), "/");
        // Within the limit, and harmless once decoded.
        let rd = "/%252561";
        assert_eq!(check(rd), rd);
    }

    #[test]
    fn idn_compares_by_ascii_serialization() {
        // The punycode used in HOSTILE really is the Cyrillic look-alike.
        let parsed = Url::parse("https://www.ex\u{430}mple.com/").unwrap();
        assert_eq!(
            parsed.origin().ascii_serialization(),
            "https://www.xn--exmple-4nf.com"
        );
        // An IDN origin can be allowed in punycode, and is matched in punycode;
        // the Unicode spelling is refused by the printable-ASCII rule.
        let allowed = vec!["https://xn--bcher-kva.example".to_owned()];
        assert_eq!(
            safe_redirect(
                Some("https://xn--bcher-kva.example/x"),
                SELF_ORIGIN,
                &allowed
            ),
            "https://xn--bcher-kva.example/x"
        );
        assert_eq!(
            safe_redirect(Some("https://b\u{fc}cher.example/x"), SELF_ORIGIN, &allowed),
            "/"
        );
        assert_eq!(
            safe_redirect(
                Some("https://XN--BCHER-KVA.example/x"),
                SELF_ORIGIN,
                &allowed
            ),
            "https://XN--BCHER-KVA.example/x"
        );
    }

    #[test]
    fn ipv6_origins() {
        let self_origin = "https://[2001:db8::1]:8443";
        let allowed = vec!["http://[::1]:3000".to_owned()];
        let run = |rd: &str| safe_redirect(Some(rd), self_origin, &allowed);

        for good in [
            "https://[2001:db8::1]:8443/chat",
            "https://[2001:DB8::1]:8443/chat",
            "https://[2001:db8:0:0::1]:8443/chat",
            "http://[::1]:3000/",
            "http://[0:0:0:0:0:0:0:1]:3000/",
            "/chat",
        ] {
            assert_eq!(run(good), good, "rejected {good:?}");
        }
        for bad in [
            "https://[2001:db8::2]:8443/chat",
            "https://[2001:db8::1]/chat",
            "https://[2001:db8::1]:443/chat",
            "https://[2001:db8::1]:8443.evil.com/",
            "https://[2001:db8::1%25eth0]:8443/",
            "https://[2001:db8::1]@evil.com/",
            "https://2001:db8::1:8443/chat",
            "http://[::1]:3001/",
            "https://[::1]:3000/",
            "http://[::ffff:127.0.0.1]:3000/",
            "//[2001:db8::1]:8443/chat",
        ] {
            assert_eq!(run(bad), "/", "accepted {bad:?}");
        }
    }

    #[test]
    fn non_default_port_origin() {
        let self_origin = "https://chat.example.com:8443";
        let run = |rd: &str| safe_redirect(Some(rd), self_origin, &[]);
        assert_eq!(
            run("https://chat.example.com:8443/x"),
            "https://chat.example.com:8443/x"
        );
        assert_eq!(run("https://chat.example.com/x"), "/");
        assert_eq!(run("https://chat.example.com:443/x"), "/");
        assert_eq!(
            run("https://chat.example.com:08443/x"),
            "https://chat.example.com:08443/x"
        );
    }

    #[test]
    fn trailing_dot_host_only_when_configured_literally() {
        let allowed = vec!["https://www.example.com.".to_owned()];
        assert_eq!(
            safe_redirect(Some("https://www.example.com./x"), SELF_ORIGIN, &allowed),
            "https://www.example.com./x"
        );
        assert_eq!(
            safe_redirect(Some("https://www.example.com/x"), SELF_ORIGIN, &allowed),
            "/"
        );
    }

    #[test]
    fn opaque_origin_never_matches_null() {
        let allowed = vec!["null".to_owned()];
        for rd in ["data:,x", "javascript:1", "file:///x", "https://x y/"] {
            assert_eq!(safe_redirect(Some(rd), SELF_ORIGIN, &allowed), "/");
        }
    }
}

/// Property tests (issue 13 item 10): hostile `rd` values.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const SELF: &str = "https://chat.example.com";

    fn allowed() -> Vec<String> {
        vec![
            "https://app.example.com".into(),
            "http://localhost:8080".into(),
        ]
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("/"),
            Just("//"),
            Just("\\"),
            Just("%2f"),
            Just("%5C"),
            Just("%252f"),
            Just("%09"),
            Just("%00"),
            Just("http:"),
            Just("https://"),
            Just("HTTPS://"),
            Just("javascript:"),
            Just("evil.com"),
            Just("chat.example.com"),
            Just("app.example.com"),
            Just("localhost:8080"),
            Just("@"),
            Just("#"),
            Just("?"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just(":"),
            Just("[::1]"),
            Just("a"),
            Just(" "),
            Just("\t"),
            Just("é"),
        ]
    }

    /// Where a browser would land: `rd` resolved against our own origin,
    /// then (for a later hop that decodes and redirects again) decoded and
    /// resolved once more.
    fn landing_origins(rd: &str) -> Vec<String> {
        let base = Url::parse(&format!("{SELF}/login")).unwrap();
        let mut out = Vec::new();
        if let Ok(u) = base.join(rd) {
            out.push(u.origin().ascii_serialization());
            if let Ok(decoded) = String::from_utf8(decode_fully(u.path()).unwrap_or_default()) {
                if let Ok(again) = u.join(&decoded) {
                    out.push(again.origin().ascii_serialization());
                }
            }
        }
        out
    }

    fn check_result(rd: &str) -> Result<(), TestCaseError> {
        let allowed = allowed();
        let got = safe_redirect(Some(rd), SELF, &allowed);
        if got == FALLBACK_REDIRECT {
            return Ok(());
        }
        prop_assert_eq!(&got, rd, "a safe value passes unchanged");
        prop_assert!(!got.starts_with("//") && !got.contains('\\'), "{}", got);
        prop_assert!(got.bytes().all(|b| b.is_ascii_graphic()));
        if got.starts_with('/') {
            let path = got.split(['?', '#']).next().unwrap_or("");
            let decoded = decode_fully(path).unwrap();
            prop_assert!(
                !decoded.starts_with(b"//") && !decoded.starts_with(b"/\\"),
                "{}",
                got
            );
        } else {
            let url = Url::parse(&got).unwrap();
            prop_assert!(url.username().is_empty() && url.password().is_none());
        }
        let origins = landing_origins(&got);
        prop_assert!(!origins.is_empty());
        for origin in origins {
            prop_assert!(
                origin == SELF || allowed.contains(&origin),
                "{} lands on {}",
                got,
                origin
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn assembled_values_land_on_allowed_origins(pieces in prop::collection::vec(piece(), 1..10)) {
            check_result(&pieces.concat())?;
        }

        #[test]
        fn arbitrary_values_land_on_allowed_origins(rd in "\\PC{0,40}") {
            check_result(&rd)?;
        }

        /// Plain paths under our origin are kept as they are.
        #[test]
        fn plain_paths_pass(segments in prop::collection::vec("[A-Za-z0-9_~-]{1,8}", 0..5), q in "[a-z0-9=&]{0,8}") {
            let rd = format!("/{}?{q}", segments.join("/"));
            prop_assert_eq!(safe_redirect(Some(&rd), SELF, &allowed()), rd);
        }
    }
}
