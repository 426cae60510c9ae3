//! The demo's second page: a company's own site on another loopback origin,
//! with its own login, that pasted a deployment's snippet (`web/site.html`).
//! It shows the token API as sites use it: the site logs its user in at the
//! provider, hands the code to the SDK, and the SDK trades it at portcullis
//! for a messenger token and chats with it.
//!
//! Where it lives comes from the demo configuration, so that moving the
//! demo's ports moves it too: the site is the first `redirect_uris` entry of
//! a deployment that is an `http` loopback IP with an explicit port and the
//! path `/` (the page receives the provider's answer itself). That
//! deployment must allow the site's origin, or its chat could not connect.

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::config::{Config, OriginPolicy};
use crate::endpoints::deployment::sdk_script_tag;

/// The page, before the demo fills in its configuration.
pub const PAGE: &str = include_str!("../../web/site.html");

/// The demo site: where it listens and the page it serves there.
#[derive(Debug, Clone)]
pub struct Site {
    pub address: SocketAddr,
    pub deployment_id: String,
    pub page: String,
}

impl Site {
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

/// The site the demo configuration describes, if any.
pub fn from_config(config: &Config) -> anyhow::Result<Option<Site>> {
    let found = config.deployments.iter().find_map(|d| {
        d.redirect_uris
            .iter()
            .find_map(site_address)
            .map(|address| (d, address))
    });
    let Some((deployment, address)) = found else {
        return Ok(None);
    };
    let origin = format!("http://{address}");
    let allowed = match &deployment.origins {
        OriginPolicy::Any => true,
        OriginPolicy::List(origins) => origins.contains(&origin),
    };
    anyhow::ensure!(
        allowed,
        "the demo site {origin} (a redirect URI of deployment {}) must be one of its \
         allowed_origins, or its chat could not connect",
        deployment.id
    );
    let public_url = config
        .public_url
        .as_ref()
        .context("the demo site needs public_url: it loads the SDK from there")?;
    Ok(Some(Site {
        address,
        deployment_id: deployment.id.clone(),
        page: render(public_url, &deployment.id),
    }))
}

/// `http://<loopback ip>:<port>/`, as a listen address.
fn site_address(uri: &url::Url) -> Option<SocketAddr> {
    let ip = match uri.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    (uri.scheme() == "http" && ip.is_loopback() && uri.path() == "/" && uri.query().is_none())
        .then_some(())?;
    Some(SocketAddr::new(ip, uri.port()?))
}

/// The page with the site's configuration and the snippet's script element.
pub fn render(public_url: &url::Url, deployment_id: &str) -> String {
    let site_config = serde_json::json!({
        "portcullis": public_url.as_str().trim_end_matches('/'),
        "deploymentId": deployment_id,
    })
    .to_string()
    // Inside <script>: no "</script>" may end the element early, whatever a
    // future configuration lets into these strings.
    .replace('<', "\\u003c");
    PAGE.replace("PORTCULLIS_SITE_CONFIG", &site_config)
        .replace("PORTCULLIS_SNIPPET", &sdk_script_tag(public_url))
}

pub fn router(site: &Site) -> Router {
    let page = site.page.clone();
    Router::new().route(
        "/",
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                page,
            )
                .into_response()
        }),
    )
}

/// Serves the site on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, site: &Site) -> std::io::Result<()> {
    axum::serve(listener, router(site)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_is_a_loopback_redirect_uri_with_a_port_and_the_root_path() {
        let parse = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            site_address(&parse("http://127.0.0.1:8083/")),
            Some("127.0.0.1:8083".parse().unwrap())
        );
        assert_eq!(
            site_address(&parse("http://[::1]:9000/")),
            Some("[::1]:9000".parse().unwrap())
        );
        for not_a_site in [
            "http://127.0.0.1/callback",  // any port: a native app's
            "http://127.0.0.1/",          // no port to listen on
            "http://127.0.0.1:8083/cb",   // not the page itself
            "http://127.0.0.1:8083/?x=1", // a query the page would lose
            "https://127.0.0.1:8083/",    // the demo serves plain http
            "http://localhost:8083/",     // a name, not a loopback IP
            "https://www.example.com:8443/",
        ] {
            assert_eq!(site_address(&parse(not_a_site)), None, "{not_a_site}");
        }
    }

    #[test]
    fn the_page_gets_the_configuration_and_the_snippets_script_element() {
        let public_url = url::Url::parse("http://127.0.0.1:8080/").unwrap();
        let page = render(&public_url, "dep-1");
        assert!(!page.contains("PORTCULLIS_SITE_CONFIG"));
        assert!(!page.contains("PORTCULLIS_SNIPPET"));
        assert!(page.contains(r#"{"deploymentId":"dep-1","portcullis":"http://127.0.0.1:8080"}"#));
        assert!(
            page.contains(&sdk_script_tag(&public_url)),
            "the snippet's script element"
        );
        assert!(page.contains(r#"src="http://127.0.0.1:8080/.auth/sdk.js?v="#));
    }
}
