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
    Ok(CheckedTarget { path, query })
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
    let route = runtime
        .routes()
        .iter()
        .find(|r| prefix_matches(&r.config.path_prefix, target.path))
        .ok_or(Refusal::NoRoute)?;
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
/// refused: the upstream might read the other copy.
fn deployment_id_from_query<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<std::borrow::Cow<'q, str>, Refusal> {
    let mut found = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
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
