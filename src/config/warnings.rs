//! Settings of a valid file that take no effect in this combination: an
//! entry nothing refers to, an option of a feature that is off, a limit
//! that another limit reaches first. `validate` refuses a key that could
//! never be read; these are read, but change nothing here, and may be
//! there on purpose for a moment (an upstream kept while a deployment
//! moves), so `portcullis check`, `run` and reloads report them as
//! warnings, each with its path, instead of refusing the file.

use std::collections::HashSet;

use super::model::*;
use super::ConfigError;

/// Every setting of `config` that has no effect, located by its YAML path.
/// Paths use the file's indices, which match the model's for a valid file.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut warn = |path: String, message: String| out.push(ConfigError { path, message });

    let authenticating: Vec<&Messenger> = config
        .messengers
        .values()
        .filter(|m| m.authentication.enabled)
        .collect();
    let used_providers: HashSet<&str> = authenticating
        .iter()
        .filter_map(|m| m.authentication.provider.as_deref())
        .collect();
    for name in config.providers.keys() {
        if !used_providers.contains(name.as_str()) {
            warn(
                format!("providers.{name}"),
                "no messenger with authentication enabled uses this provider: it is discovered and its keys fetched for nothing".into(),
            );
        }
    }

    let used_messengers: HashSet<&str> = config
        .deployments
        .iter()
        .map(|d| d.messenger.as_str())
        .collect();
    for (name, m) in &config.messengers {
        if !used_messengers.contains(name.as_str()) {
            warn(
                format!("messengers.{name}"),
                "no deployment uses this messenger".into(),
            );
        }
        if let (false, Some(provider)) = (m.authentication.enabled, &m.authentication.provider) {
            warn(
                format!("messengers.{name}.authentication.provider"),
                format!("authentication is off, so `{provider}` authenticates nobody here (yet /readyz waits for its keys while a deployment of this messenger is active): remove it, or enable authentication"),
            );
        }
    }

    let used_upstreams: HashSet<&str> = config
        .deployments
        .iter()
        .map(|d| d.upstream.as_str())
        .collect();
    for (name, upstream) in &config.upstreams {
        if !used_upstreams.contains(name.as_str()) {
            warn(
                format!("upstreams.{name}"),
                "no deployment uses this upstream (its health checks run for nothing)".into(),
            );
        }
        if upstream.sni_configured && !upstream.tls {
            warn(
                format!("upstreams.{name}.sni"),
                "has no effect while tls is false (the name is sent only in a TLS handshake)"
                    .into(),
            );
        }
    }

    // A route without a fixed deployment reads the id from the request, so
    // it can reach any deployment; fixed routes reach only theirs.
    let reads_id_from_request = config
        .routes
        .iter()
        .any(|r| matches!(r.deployment, DeploymentSource::Query(_)));
    let fixed: HashSet<&str> = config
        .routes
        .iter()
        .filter_map(|r| match &r.deployment {
            DeploymentSource::Fixed(id) => Some(id.as_str()),
            DeploymentSource::Query(_) => None,
        })
        .collect();
    for (i, d) in config.deployments.iter().enumerate() {
        let path = format!("deployments[{i}]");
        let auth = config
            .messengers
            .get(&d.messenger)
            .is_some_and(|m| m.authentication.enabled);
        if !auth {
            for (on, key) in [
                (d.access_token_query, "access_token_query"),
                (d.forward_token, "forward_token"),
            ] {
                if on {
                    warn(
                        format!("{path}.{key}"),
                        format!("has no effect: messenger `{}` has authentication off, so no credential is read (the request passes upstream as sent)", d.messenger),
                    );
                }
            }
        }
        if d.origins == OriginPolicy::Any && d.allow_missing_origin {
            warn(
                format!("{path}.allow_missing_origin"),
                "has no effect with allow_all_origins: true, which admits requests without Origin too".into(),
            );
        }
        if let (Some(own), Some(instance)) = (d.max_connections, config.limits.max_connections) {
            if own >= instance {
                warn(
                    format!("{path}.max_connections"),
                    format!("{own} is not below limits.max_connections ({instance}): the instance's ceiling is reached first"),
                );
            }
        }
        if !reads_id_from_request && !fixed.contains(d.id.as_str()) {
            warn(
                path,
                "no route leads to this deployment: no route reads the deployment id from the request and none names this one (only the token API and login reach it)".into(),
            );
        }
    }

    if config.compat.hosted_paths && authenticating.is_empty() {
        warn(
            "compat.hosted_paths".into(),
            "has no effect: no messenger has authentication enabled, so the token API refuses every deployment".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A valid file in which every setting takes effect.
    const CLEAN: &str = r#"
listen: [{address: 127.0.0.1:8080}]
providers:
  idp: {issuer: https://idp.example.com, client_id: portcullis}
messengers:
  support: {authentication: {enabled: true, provider: idp}}
  public: {authentication: {enabled: false}}
upstreams:
  chat: {servers: [127.0.0.1:9000]}
deployments:
  - {id: web, messenger: support, upstream: chat, allowed_origins: [https://www.example.com], access_token_query: true, forward_token: true, max_connections: 10}
  - {id: open, messenger: public, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /v1}
limits: {max_connections: 100}
compat: {hosted_paths: true}
"#;

    fn warnings_of(text: &str) -> Vec<String> {
        let no_env = |_: &str| None;
        let config = crate::config::parse(text, Path::new("/nonexistent"), &no_env)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        warnings(&config).iter().map(ToString::to_string).collect()
    }

    /// The warnings of `CLEAN` with `from` replaced by `to`.
    fn warnings_after(from: &str, to: &str) -> Vec<String> {
        assert!(CLEAN.contains(from), "test bug: {from:?} not in CLEAN");
        warnings_of(&CLEAN.replacen(from, to, 1))
    }

    fn assert_warns(warnings: &[String], path: &str, part: &str) {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("{path}: ")) && w.contains(part)),
            "expected `{path}: ...{part}...` in {warnings:#?}"
        );
    }

    #[test]
    fn a_file_whose_settings_all_work_has_no_warning() {
        assert_eq!(warnings_of(CLEAN), Vec::<String>::new());
    }

    #[test]
    fn entries_nothing_uses_are_named() {
        let w = warnings_after(
            "  public: {authentication: {enabled: false}}\n",
            "  public: {authentication: {enabled: false}}\n  spare: {authentication: {enabled: false}}\n",
        );
        assert_warns(&w, "messengers.spare", "no deployment uses");
        let w = warnings_after(
            "  chat: {servers: [127.0.0.1:9000]}\n",
            "  chat: {servers: [127.0.0.1:9000]}\n  old: {servers: [127.0.0.1:9001]}\n",
        );
        assert_warns(&w, "upstreams.old", "no deployment uses");
        let w = warnings_after(
            "  idp: {issuer: https://idp.example.com, client_id: portcullis}\n",
            "  idp: {issuer: https://idp.example.com, client_id: portcullis}\n  unused: {issuer: https://other.example.com, client_id: p}\n",
        );
        assert_warns(&w, "providers.unused", "no messenger with authentication");
        assert_eq!(w.len(), 1, "{w:#?}");
    }

    #[test]
    fn a_provider_named_by_a_messenger_without_authentication_is_idle() {
        let w = warnings_after(
            "public: {authentication: {enabled: false}}",
            "public: {authentication: {enabled: false, provider: idp}}",
        );
        assert_warns(
            &w,
            "messengers.public.authentication.provider",
            "authentication is off",
        );
        // A provider only such a messenger names is unused as well.
        let w = warnings_after(
            "support: {authentication: {enabled: true, provider: idp}}",
            "support: {authentication: {enabled: false, provider: idp}}",
        );
        assert_warns(&w, "providers.idp", "no messenger with authentication");
    }

    #[test]
    fn credential_options_of_a_deployment_without_authentication() {
        let w = warnings_after(
            "{id: open, messenger: public, upstream: chat, allow_all_origins: true}",
            "{id: open, messenger: public, upstream: chat, allow_all_origins: true, access_token_query: true, forward_token: true}",
        );
        assert_warns(
            &w,
            "deployments[1].access_token_query",
            "authentication off",
        );
        assert_warns(&w, "deployments[1].forward_token", "authentication off");
    }

    #[test]
    fn allow_missing_origin_beside_allow_all_origins() {
        let w = warnings_after(
            "allow_all_origins: true}",
            "allow_all_origins: true, allow_missing_origin: true}",
        );
        assert_warns(
            &w,
            "deployments[1].allow_missing_origin",
            "allow_all_origins",
        );
    }

    #[test]
    fn a_deployment_ceiling_the_instance_ceiling_shadows() {
        let w = warnings_after("max_connections: 10}", "max_connections: 100}");
        assert_warns(
            &w,
            "deployments[0].max_connections",
            "limits.max_connections (100)",
        );
        // Without an instance ceiling in the file there is nothing to compare.
        let w = warnings_after("limits: {max_connections: 100}\n", "");
        assert!(w.is_empty(), "{w:#?}");
    }

    #[test]
    fn a_deployment_no_route_reaches() {
        let w = warnings_after(
            "  - {path_prefix: /v1}\n",
            "  - {path_prefix: /v1, deployment: web}\n",
        );
        assert_warns(&w, "deployments[1]", "no route leads to this deployment");
        assert!(!w.iter().any(|x| x.starts_with("deployments[0]")), "{w:#?}");
    }

    #[test]
    fn sni_without_tls() {
        let w = warnings_after(
            "chat: {servers: [127.0.0.1:9000]}",
            "chat: {servers: [127.0.0.1:9000], sni: chat.internal}",
        );
        assert_warns(&w, "upstreams.chat.sni", "tls is false");
        let w = warnings_after(
            "chat: {servers: [127.0.0.1:9000]}",
            "chat: {servers: [127.0.0.1:9000], sni: chat.internal, tls: true}",
        );
        assert!(w.is_empty(), "{w:#?}");
    }

    #[test]
    fn hosted_paths_without_any_authentication() {
        let w = warnings_after(
            "support: {authentication: {enabled: true, provider: idp}}",
            "support: {authentication: {enabled: false}}",
        );
        assert_warns(&w, "compat.hosted_paths", "token API refuses");
    }
}
