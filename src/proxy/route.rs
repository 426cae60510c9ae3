//! Which messaging route and deployment a request is for, decided from the
//! raw request target alone. The target is checked strictly first: a path
//! the upstream might normalize differently than we do (dot segments,
//! encoded slashes or dots, backslashes) is refused, never guessed at.

use std::sync::Arc;

use crate::config::{DeploymentSource, Limits};
use crate::runtime::{DeploymentRt, RouteRt, Runtime};

use super::refusal::Refusal;

/// The route and deployment a request was matched to.
#[derive(Clone)]
pub struct Target {
    pub route: Arc<RouteRt>,
    pub deployment: Arc<DeploymentRt>,
}

/// A request target split into its checked path and raw query.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckedTarget<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Checks the raw request target (origin-form: path and optional query).
pub fn check_target<'a>(raw: &'a [u8], limits: &Limits) -> Result<CheckedTarget<'a>, Refusal> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Refusal::BadTarget("the request path is not valid UTF-8"))?;
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    if !path.starts_with('/') {
        return Err(Refusal::BadTarget(
            "the request target must be a path starting with '/'",
        ));
    }
    if path.len() > limits.max_path_bytes {
        return Err(Refusal::BadTarget("the request path is too long"));
    }
    if query.is_some_and(|q| q.len() > limits.max_query_bytes) {
        return Err(Refusal::BadTarget("the query string is too long"));
    }
    if text.bytes().any(|b| b < 0x21 || b == 0x7f || b >= 0x80) {
        return Err(Refusal::BadTarget(
            "the request target contains raw control, space or non-ASCII bytes",
        ));
    }
    if path.contains('\\') {
        return Err(Refusal::BadTarget(
            "backslashes are not allowed in the path",
        ));
    }
    if has_path_parameter(path) {
        return Err(Refusal::PathParameter);
    }
    if path.contains("//") {
        return Err(Refusal::BadTarget(
            "empty path segments ('//') are not allowed in the path",
        ));
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(Refusal::BadTarget(
            "dot segments are not allowed in the path",
        ));
    }
    if has_ambiguous_escape(path) {
        return Err(Refusal::BadTarget(
            "percent-encoded '/', '\\', '.' or control characters are not allowed in the path",
        ));
    }
    if std::str::from_utf8(&percent_decode(path)).is_err() {
        return Err(Refusal::BadTarget(
            "the percent-encoded path is not valid UTF-8",
        ));
    }
    Ok(CheckedTarget { path, query })
}

/// Whether the path carries a `;` parameter, raw or as `%3B`. Tomcat, Jetty
/// and Spring cut `;…` off every segment before they normalize and route
/// (`/public/..;/support/x` becomes `/support/x`, `/support;x/y` becomes
/// `/support/y`), so any `;` in the path can move a request from the route
/// portcullis matched to another one. `%3B` is refused too: a layer that
/// decodes before it cuts reads it as a parameter. A `;` in the query is
/// none of this and passes.
pub fn has_path_parameter(path: &str) -> bool {
    path.contains(';') || percent_decode(path).contains(&b';')
}

/// `%XX` escapes decoded (malformed ones kept as they are; those are
/// refused on their own). Overlong or otherwise invalid UTF-8 in the
/// result (`%c0%ae`, once read as `.` by Tomcat) is refused by the caller.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |b: &u8| (*b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Escapes that change how a path splits or normalizes: `%2f`, `%5c`, `%2e`,
/// `%25` (double encoding) and controls.
fn has_ambiguous_escape(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.windows(3).any(|w| {
        if w[0] != b'%' {
            return false;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        match (hex(w[1]), hex(w[2])) {
            (Some(hi), Some(lo)) => {
                let v = hi * 16 + lo;
                v < 0x20 || v == 0x7f || matches!(v, 0x2f | 0x5c | 0x2e | 0x25)
            }
            _ => true, // a malformed escape is ambiguous too
        }
    })
}

/// Whether `prefix` covers `path` on a segment boundary (`/v1` covers `/v1`
/// and `/v1/x`, not `/v10`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Picks the most specific route and resolves its deployment.
pub fn select(runtime: &Runtime, target: &CheckedTarget<'_>) -> Result<Target, Refusal> {
    let route_of = |path: &str| {
        runtime
            .routes()
            .iter()
            .find(|r| prefix_matches(&r.config.path_prefix, path))
    };
    let route = route_of(target.path).ok_or(Refusal::NoRoute)?;
    // Backends decode escapes of plain characters before they route
    // (`/%61dmin` is `/admin`): a path whose decoded form falls under
    // another route is refused, not sent to the route its raw form matched.
    if target.path.contains('%') {
        let decoded = String::from_utf8(percent_decode(target.path))
            .map_err(|_| Refusal::BadTarget("the percent-encoded path is not valid UTF-8"))?;
        if !route_of(&decoded).is_some_and(|other| Arc::ptr_eq(other, route)) {
            return Err(Refusal::BadTarget(
                "the percent-decoded path falls under another route",
            ));
        }
    }
    let id = match &route.config.deployment {
        DeploymentSource::Fixed(id) => std::borrow::Cow::Borrowed(id.as_str()),
        DeploymentSource::Query(name) => deployment_id_from_query(target.query, name)?,
    };
    let deployment = runtime
        .deployment(&id)
        .ok_or(Refusal::UnknownDeployment)?
        .clone();
    Ok(Target {
        route: route.clone(),
        deployment,
    })
}

/// The single value of query parameter `name`. A repeated parameter is
/// refused: the upstream might read the other copy. So is any other
/// spelling of the name, beside the real one or alone (see
/// [`has_name_variant`]).
fn deployment_id_from_query<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<std::borrow::Cow<'q, str>, Refusal> {
    let query = query.unwrap_or("");
    if has_name_variant(query, name) {
        return Err(Refusal::DeploymentIdVariant);
    }
    let mut found = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(Refusal::BadDeploymentId(
                    "the deployment id parameter is given more than once",
                ));
            }
            found = Some(value);
        }
    }
    let id = found.ok_or(Refusal::BadDeploymentId(
        "the deployment id query parameter is required",
    ))?;
    if !crate::config::is_deployment_id(&id) {
        return Err(Refusal::BadDeploymentId("the deployment id is malformed"));
    }
    Ok(id)
}

/// Whether the query names parameter `name` in a spelling other than the
/// one portcullis reads (the exact name, once decoded, between `&`s), but
/// that a backend may read as that parameter: in another case
/// (`DeploymentId`: case-insensitive binders, ASP.NET's among them), with
/// brackets (`deploymentId[]`, `deploymentId[0]`: PHP, Rails and `qs` merge
/// them into an array), with `.` or a space for `_` (PHP), percent-encoded
/// twice (a backend that decodes again), or after a `;` (a query separator
/// for Python before 3.9.2 and Rack before 3). A `;` elsewhere in the query
/// is left alone.
pub fn has_name_variant(query: &str, name: &str) -> bool {
    let name_is_plain = is_plain_param_name(name);
    // `canonical_param_name(name)`, computed only when a key is not plain.
    let mut wanted: Option<String> = None;
    query.split('&').any(|pair| {
        let pair_key = pair.split('=').next().unwrap_or("");
        pair.split(';').enumerate().any(|(i, piece)| {
            let raw_key = piece.split('=').next().unwrap_or("");
            let in_place_of_the_name = i == 0 && !pair_key.contains(';');
            if name_is_plain && is_plain_param_name(raw_key) {
                // Decoding and folding change two plain names in ASCII case
                // only, so they compare without either being rewritten.
                return !(in_place_of_the_name && raw_key == name)
                    && raw_key.eq_ignore_ascii_case(name);
            }
            let key = url::form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            let exact = in_place_of_the_name && key == name;
            let wanted = wanted.get_or_insert_with(|| canonical_param_name(name));
            !exact && canonical_param_name(&key) == *wanted
        })
    })
}

/// A name that [`canonical_param_name`] and form decoding leave as it is,
/// but for ASCII case: letters, digits, `_` and `-` (no `%`, `+`, brackets,
/// `.`, spaces or anything beyond ASCII). Nearly every query's keys are.
fn is_plain_param_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A parameter name as the most lenient backend reads it: decoded until it
/// stops changing (up to twice more), trimmed, without a trailing `[…]`,
/// `.` and space read as `_`, and case-folded per character the way Java's
/// `equalsIgnoreCase` does (so `ſ` is `s` and `K` is `k`).
fn canonical_param_name(name: &str) -> String {
    let mut name = name.to_string();
    for _ in 0..2 {
        let decoded = String::from_utf8_lossy(&percent_decode(&name)).into_owned();
        if decoded == name {
            break;
        }
        name = decoded;
    }
    let name = name.trim();
    let base = match name.find('[') {
        Some(i) if name.ends_with(']') => &name[..i],
        _ => name,
    };
    base.trim()
        .chars()
        .map(|c| match c {
            '.' | ' ' => '_',
            c => {
                let upper = c.to_uppercase().next().unwrap_or(c);
                upper.to_lowercase().next().unwrap_or(upper)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const CONFIG: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
messengers:
  open: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: dep-a, messenger: open, upstream: chat, allow_all_origins: true}
  - {id: dep-b, messenger: open, upstream: chat, allow_all_origins: true}
  - {id: fixed-1, messenger: open, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /v1}
  - {path_prefix: /v1/special/, deployment: fixed-1, name: special}
  - {path_prefix: /custom, deployment_from: {query: dep}}
"#;

    fn runtime() -> Runtime {
        let cfg = config::parse(CONFIG, std::path::Path::new("."), &|_: &str| None).unwrap();
        Runtime::build(
            cfg,
            None,
            &std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .unwrap()
    }

    fn target(raw: &str) -> Result<Target, Refusal> {
        let limits = Limits::default();
        let checked = check_target(raw.as_bytes(), &limits)?;
        select(&runtime(), &checked)
    }

    fn deployment_of(raw: &str) -> String {
        target(raw)
            .map(|t| t.deployment.config.id.clone())
            .unwrap_or_else(|r| format!("refused:{}", r.code()))
    }

    #[test]
    fn query_deployment_and_longest_prefix() {
        assert_eq!(deployment_of("/v1?deploymentId=dep-a"), "dep-a");
        assert_eq!(deployment_of("/v1/chat?x=1&deploymentId=dep-b"), "dep-b");
        assert_eq!(
            deployment_of("/v1/special/room?deploymentId=dep-a"),
            "fixed-1"
        );
        assert_eq!(
            target("/v1/special/x").unwrap().route.label.as_ref(),
            "special"
        );
        assert_eq!(deployment_of("/custom?dep=dep-b"), "dep-b");
        assert_eq!(deployment_of("/v1?deploymentId=dep%2Da"), "dep-a");
    }

    #[test]
    fn route_and_deployment_refusals() {
        assert_eq!(
            deployment_of("/v10?deploymentId=dep-a"),
            "refused:not_found"
        );
        assert_eq!(deployment_of("/other"), "refused:not_found");
        assert_eq!(deployment_of("/v1"), "refused:invalid_deployment_id");
        assert_eq!(
            deployment_of("/v1?deploymentId=nope"),
            "refused:unknown_deployment"
        );
        assert_eq!(
            deployment_of("/v1?deploymentId=dep-a&deploymentId=dep-b"),
            "refused:invalid_deployment_id"
        );
        assert_eq!(
            deployment_of("/v1?deploymentId=%3Cscript%3E"),
            "refused:invalid_deployment_id"
        );
        assert_eq!(
            deployment_of("/custom?deploymentId=dep-a"),
            "refused:invalid_deployment_id"
        );
    }

    #[test]
    fn ambiguous_targets_are_refused_before_routing() {
        for raw in [
            "/v1/../admin?deploymentId=dep-a",
            "/v1/./x?deploymentId=dep-a",
            "/v1/%2e%2e/x?deploymentId=dep-a",
            "/v1%2fx?deploymentId=dep-a",
            "/v1%5cx",
            "/v1\\x",
            "/v1/%252e",
            "/v1/%00",
            "/v1/%zz",
            "http://evil/v1?deploymentId=dep-a",
            "*",
        ] {
            assert_eq!(deployment_of(raw), "refused:bad_request", "{raw}");
        }
        assert!(matches!(
            check_target(b"/v1/\xff\xfe", &Limits::default()),
            Err(Refusal::BadTarget(_))
        ));
        let long = format!("/v1/{}", "a".repeat(3000));
        assert_eq!(deployment_of(&long), "refused:bad_request");
        let long_query = format!("/v1?deploymentId=dep-a&pad={}", "a".repeat(5000));
        assert_eq!(deployment_of(&long_query), "refused:bad_request");
    }

    fn reason_of(raw: &str) -> String {
        target(raw)
            .map(|t| t.deployment.config.id.clone())
            .unwrap_or_else(|r| format!("refused:{}:{}", r.code(), r.outcome()))
    }

    /// Tomcat, Jetty and Spring cut `;…` off each segment before routing:
    /// every form of it is refused, raw or encoded, on dot segments or not.
    #[test]
    fn path_parameters_are_refused_in_every_form() {
        for raw in [
            "/v1/..;/special/x",
            "/v1/.;/x?deploymentId=dep-a",
            "/v1/..;jsessionid=x/special/x",
            "/v1/%2e%2e;/special/x",
            "/v1/%2E.;/special/x",
            "/v1/.%2e;/x",
            "/v1;x/special/x?deploymentId=dep-a",
            "/v1/special;a=b/x",
            "/v1/chat;jsessionid=0123",
            "/v1/%3B/x",
            "/v1/..%3b/special/x",
            "/;/v1",
        ] {
            assert_eq!(
                reason_of(raw),
                "refused:bad_request:path_parameter",
                "{raw}"
            );
        }
        assert!(has_path_parameter("/a%3Bb"));
        assert!(!has_path_parameter("/a/b%3A"));
        // A `;` in the query is not a path parameter.
        assert_eq!(deployment_of("/v1/chat?deploymentId=dep-a&q=a;b"), "dep-a");
        assert_eq!(deployment_of("/v1/chat?q=%3B&deploymentId=dep-b"), "dep-b");
    }

    /// Other forms Java backends normalize away: merged slashes and
    /// overlong UTF-8 (`%c0%ae`, once a `.` for Tomcat).
    #[test]
    fn empty_segments_and_invalid_encoded_utf8_are_refused() {
        for raw in [
            "//v1/special/x",
            "/v1//special/x",
            "/v1/x//",
            "/v1/%c0%ae%c0%ae/special/x",
            "/v1/%e0%80%ae/x",
            "/v1/%ff",
        ] {
            assert_eq!(reason_of(raw), "refused:bad_request:bad_request", "{raw}");
        }
        // Well-formed encoded UTF-8 and a trailing slash still pass.
        assert_eq!(deployment_of("/v1/caf%C3%A9?deploymentId=dep-a"), "dep-a");
        assert_eq!(deployment_of("/v1/?deploymentId=dep-a"), "dep-a");
    }

    /// Found by `props::accepted_paths_stay_under_their_route`: backends
    /// decode `%73` to `s` before routing, so a path whose decoded form
    /// falls under another route is refused.
    #[test]
    fn encoded_plain_characters_cannot_move_a_path_to_another_route() {
        for raw in [
            "/v1/%73pecial/x?deploymentId=dep-a",
            "/v1/%73pecial/?deploymentId=dep-a",
            "/v1/sp%65cial/x",
        ] {
            assert_eq!(reason_of(raw), "refused:bad_request:bad_request", "{raw}");
        }
        // A raw path under no route stays unrouted.
        assert_eq!(deployment_of("/%76%31/special/x"), "refused:not_found");
        // Within one route, decoded escapes change nothing and pass.
        assert_eq!(deployment_of("/v1/%73pecial?deploymentId=dep-a"), "dep-a");
        assert_eq!(deployment_of("/v1/special/%78"), "fixed-1");
    }

    #[test]
    fn deployment_id_variants_are_refused_beside_the_real_one_and_alone() {
        let variant = "refused:invalid_deployment_id:deployment_id_variant";
        for query in [
            "deploymentId=dep-a&DeploymentId=dep-b",
            "deploymentId=dep-a&DEPLOYMENTID=dep-b",
            "deploymentId=dep-a&deploymentId[]=dep-b",
            "deploymentId[0]=dep-b&deploymentId=dep-a",
            "deploymentId=dep-a&deploymentId%5B%5D=dep-b",
            "deploymentId=dep-a&deploymentId%5b0%5d=dep-b",
            "deploymentId=dep-a&Deployment%49d=dep-b",
            "deploymentId=dep-a&deployment%2549d=dep-b",
            "deploymentId=dep-a&deploymentId+=dep-b",
            "deploymentId=dep-a&%20deploymentId=dep-b",
            "x=1;deploymentId=dep-b&deploymentId=dep-a",
            "deploymentId=dep-a&x;deploymentId=dep-b",
            "deploymentId;x=dep-b&deploymentId=dep-a",
            // Alone, a variant is refused, not read as "no deployment id".
            "DeploymentId=dep-b",
            "deploymentId[]=dep-b",
            "x=1;deploymentId=dep-b",
        ] {
            assert_eq!(reason_of(&format!("/v1/chat?{query}")), variant, "{query}");
        }
        // The configured name is the one whose variants count.
        assert_eq!(reason_of("/custom?dep=dep-a&DEP=dep-b"), variant);
        assert_eq!(reason_of("/custom?dep=dep-a&dep[]=dep-b"), variant);
        assert_eq!(
            deployment_of("/custom?dep=dep-a&deploymentId=dep-b"),
            "dep-a"
        );
        // Once-encoded names are the name itself (every framework decodes
        // them), neighbours that only look alike pass, and a fixed route
        // reads no query.
        assert_eq!(deployment_of("/v1?deployment%49d=dep-a"), "dep-a");
        assert_eq!(
            deployment_of("/v1?deploymentIds=x&deployment=y&deploymentId=dep-a"),
            "dep-a"
        );
        assert_eq!(deployment_of("/v1/special/x?DeploymentId=dep-a"), "fixed-1");
        // `deploymentId=dep-a;x=1`: the value is not a deployment id.
        assert_eq!(
            reason_of("/v1?deploymentId=dep-a;x=1"),
            "refused:invalid_deployment_id:invalid_deployment_id"
        );
    }

    #[test]
    fn parameter_names_fold_as_lenient_backends_read_them() {
        assert_eq!(canonical_param_name("deploymentId"), "deploymentid");
        assert_eq!(canonical_param_name("DeploymentId[]"), "deploymentid");
        assert_eq!(canonical_param_name("deploymentId[a][b]"), "deploymentid");
        assert_eq!(canonical_param_name("deployment%2549d"), "deploymentid");
        assert_eq!(canonical_param_name(" deployment.id "), "deployment_id");
        // Java's equalsIgnoreCase: the long s is an s, the Kelvin sign a k.
        assert_eq!(
            canonical_param_name("ſession"),
            canonical_param_name("session")
        );
        assert_eq!(canonical_param_name("\u{212a}ey"), "key");
        assert!(!has_name_variant("deploymentId=a&b=c;d", "deploymentId"));
        assert!(has_name_variant("a=b;DeploymentId=c", "deploymentId"));
    }

    /// `has_name_variant` as it was before its plain-name shortcut: every
    /// key decoded and folded.
    fn has_name_variant_by_folding_every_key(query: &str, name: &str) -> bool {
        let wanted = canonical_param_name(name);
        query.split('&').any(|pair| {
            let pair_key = pair.split('=').next().unwrap_or("");
            pair.split(';').enumerate().any(|(i, piece)| {
                let raw_key = piece.split('=').next().unwrap_or("");
                let key = url::form_urlencoded::parse(raw_key.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default();
                let exact = i == 0 && !pair_key.contains(';') && key == name;
                !exact && canonical_param_name(&key) == wanted
            })
        })
    }

    /// A spelling of `name` as a client might send it: each character
    /// kept, case-flipped, percent-encoded once or twice, or (for `_`,
    /// `.`, `-`) swapped for another of `_ . - + space`, then maybe a `[]`,
    /// each choice read from `bits`.
    fn spelling_of(name: &str, mut bits: u64) -> String {
        let mut take = |n: u64| {
            let v = bits % n;
            bits /= n;
            v
        };
        let mut key = String::new();
        for c in name.chars() {
            match take(8) {
                0 if c.is_ascii() => key.push_str(&format!("%{:02X}", c as u32)),
                1 if c.is_ascii() => key.push_str(&format!("%25{:02X}", c as u32)),
                2 | 3 if c.is_ascii_alphabetic() => key.push(if c.is_ascii_uppercase() {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }),
                2 | 3 if matches!(c, '_' | '.' | '-') => {
                    key.push(['_', '.', '-', '+', ' '][take(5) as usize])
                }
                4 if c == 's' => key.push('\u{17f}'),
                4 if c == 'k' => key.push('\u{212a}'),
                _ => key.push(c),
            }
        }
        if take(4) == 0 {
            key.push_str("[]");
        }
        key
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The shortcut for plain keys gives the verdict folding every key
        /// gives: queries of spellings of the name, the name itself and
        /// other keys, joined by `&` or `;`, with and without values.
        #[test]
        fn plain_keys_get_the_verdict_of_folding(
            name in proptest::sample::select(vec!["dep", "deploymentId", "s", "key", "k-e_y", "dep.x", "x y"]),
            pairs in proptest::collection::vec((0u8..6, proptest::prelude::any::<u64>()), 0..4),
        ) {
            let mut query = String::new();
            for (kind, bits) in pairs {
                let key = match kind {
                    0 | 1 => spelling_of(name, bits),
                    2 => name.to_string(),
                    3 => name.to_ascii_uppercase(),
                    4 => format!("{name}s"),
                    _ => "other".to_string(),
                };
                if !query.is_empty() {
                    query.push(if bits % 5 == 0 { ';' } else { '&' });
                }
                query.push_str(&key);
                if bits % 3 != 0 {
                    query.push_str("=v");
                }
            }
            proptest::prop_assert_eq!(
                has_name_variant(&query, name),
                has_name_variant_by_folding_every_key(&query, name),
                "query {:?}, name {:?}", query, name
            );
        }

        /// The same for any plain or near-plain name and any query of
        /// what decodes, folds or separates: empty keys, digits, `&&`,
        /// a leading `=`, a trailing `;`.
        #[test]
        fn any_query_gets_the_verdict_of_folding(
            name in "[A-Za-z0-9_.-]{0,6}",
            query in "([A-Za-z0-9_.%+ ;=&\\[\\]-]|\u{17f}|\u{212a}){0,16}",
        ) {
            proptest::prop_assert_eq!(
                has_name_variant(&query, &name),
                has_name_variant_by_folding_every_key(&query, &name),
                "query {:?}, name {:?}", query, name
            );
        }
    }

    #[test]
    fn prefix_matching_respects_segments() {
        assert!(prefix_matches("/v1", "/v1"));
        assert!(prefix_matches("/v1", "/v1/"));
        assert!(prefix_matches("/v1", "/v1/a"));
        assert!(!prefix_matches("/v1", "/v10"));
        assert!(prefix_matches("/support/", "/support/x"));
        assert!(!prefix_matches("/support/", "/support"));
        assert!(prefix_matches("/", "/anything"));
    }
}

/// Property tests (issue 13 item 10): hostile request targets.
#[cfg(test)]
mod props {
    use super::*;
    use crate::config;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
messengers:
  open: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: dep-a, messenger: open, upstream: chat, allow_all_origins: true}
  - {id: fixed-1, messenger: open, upstream: chat, allow_all_origins: true}
  - {id: fixed-2, messenger: open, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /v1}
  - {path_prefix: /v1/special/, deployment: fixed-1}
  - {path_prefix: /admin, deployment: fixed-2}
  - {path_prefix: /, deployment: fixed-2, name: catch-all}
"#;

    fn runtime() -> Runtime {
        let cfg = config::parse(CONFIG, std::path::Path::new("."), &|_: &str| None).unwrap();
        Runtime::build(cfg, None, &Arc::new(crate::metrics::Metrics::new())).unwrap()
    }

    /// Segments chosen to hit every normalisation rule, with some plain ones.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("v1".to_string()),
            Just("special".to_string()),
            Just("admin".to_string()),
            Just("x".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just(".%2e".to_string()),
            Just("%2f".to_string()),
            Just("a%2Fb".to_string()),
            Just("%5c".to_string()),
            Just("\\".to_string()),
            Just(";".to_string()),
            Just("..;".to_string()),
            Just("x;y=z".to_string()),
            Just("%3b".to_string()),
            Just("%252e".to_string()),
            Just("%c0%ae".to_string()),
            Just("%00".to_string()),
            Just("%zz".to_string()),
            Just("%".to_string()),
            Just("caf%C3%A9".to_string()),
            // Encoded unreserved characters: `%73` is `s`, `%61` is `a`.
            Just("%73pecial".to_string()),
            Just("%61dmin".to_string()),
            Just("v%31".to_string()),
            "[a-z0-9%;.\\\\/-]{0,6}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..7).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn decode(path: &str) -> Vec<u8> {
        let b = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit()
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        out
    }

    /// What a lenient backend routes on: percent-decoded, `;…` cut off each
    /// segment, `//` merged, `.` and `..` resolved.
    fn backend_normalise(path: &str) -> String {
        let decoded = String::from_utf8_lossy(&decode(path)).into_owned();
        let mut out: Vec<&str> = Vec::new();
        let segments: Vec<&str> = decoded.split('/').skip(1).collect();
        let trailing = decoded.ends_with('/');
        for seg in segments {
            let seg = seg.split(';').next().unwrap_or("");
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        let mut p = format!("/{}", out.join("/"));
        if trailing && p != "/" {
            p.push('/');
        }
        p
    }

    fn route_for(runtime: &Runtime, path: &str) -> Option<String> {
        runtime
            .routes()
            .iter()
            .find(|r| prefix_matches(&r.config.path_prefix, path))
            .map(|r| r.config.path_prefix.clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = check_target(&raw, &Limits::default());
        }

        /// An accepted path is already in normal form: nothing a backend
        /// normalises is left in it, raw or once decoded.
        #[test]
        fn accepted_targets_are_already_normal(p in path(), q in "[a-z=&;%0-9]{0,8}") {
            let raw = format!("{p}?{q}");
            if let Ok(checked) = check_target(raw.as_bytes(), &Limits::default()) {
                prop_assert_eq!(checked.path, p.as_str());
                let decoded = decode(checked.path);
                let decoded = std::str::from_utf8(&decoded).expect("accepted paths decode to UTF-8");
                prop_assert_eq!(decoded.matches('/').count(), checked.path.matches('/').count(),
                    "no encoded slash in {}", checked.path);
                prop_assert!(!decoded.contains(';') && !decoded.contains('\\') && !decoded.contains("//"));
                prop_assert!(!decoded.contains('%') || !checked.path.contains("%25"));
                prop_assert!(decoded.split('/').all(|s| s != "." && s != ".."), "{}", decoded);
                prop_assert!(decoded.bytes().all(|b| b > 0x20 && b != 0x7f));
            }
        }

        /// A path accepted and routed by portcullis reaches the backend as a
        /// path under the same route's prefix, whatever the backend
        /// normalises.
        #[test]
        fn accepted_paths_stay_under_their_route(p in path()) {
            let runtime = runtime();
            let Ok(checked) = check_target(p.as_bytes(), &Limits::default()) else {
                return Ok(());
            };
            let Ok(target) = select(&runtime, &checked) else {
                return Ok(());
            };
            let normalised = backend_normalise(checked.path);
            prop_assert_eq!(
                Some(target.route.config.path_prefix.clone()),
                route_for(&runtime, &normalised),
                "{} normalises to {}", p, normalised
            );
        }
    }
}
