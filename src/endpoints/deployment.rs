//! What a site needs to embed a deployment, as the hosted product's admin
//! pages hand it out: the deployment's public configuration
//! (`/.auth/deployments/{id}/config.json`, what the SDK reads before it
//! logs anyone in), the snippet a site owner pastes
//! (`/.auth/deployments/{id}/snippet`), and the SDK itself (`/.auth/sdk.js`,
//! from `web/sdk.js`, versioned by its content hash and cached for a year
//! under that version).

use std::sync::OnceLock;

use base64::Engine;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::{cors, error, json, Response};
use crate::config::DeploymentSource;
use crate::runtime::{DeploymentRt, Runtime};

/// The SDK, as built into the binary.
pub const SDK_SOURCE: &str = include_str!("../../web/sdk.js");

struct SdkVersion {
    /// The first 16 hex digits of the SHA-256 of the source: `?v=` and the ETag.
    version: String,
    /// `sha384-...` for the snippet's `integrity` attribute.
    integrity: String,
}

fn sdk_version() -> &'static SdkVersion {
    static VERSION: OnceLock<SdkVersion> = OnceLock::new();
    VERSION.get_or_init(|| {
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, SDK_SOURCE.as_bytes());
        let sha384 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, SDK_SOURCE.as_bytes());
        SdkVersion {
            version: sha256.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            integrity: format!(
                "sha384-{}",
                base64::engine::general_purpose::STANDARD.encode(sha384.as_ref())
            ),
        }
    })
}

/// The version a page should load the SDK with (`/.auth/sdk.js?v=...`).
pub fn sdk_version_tag() -> &'static str {
    &sdk_version().version
}

/// `GET /.auth/sdk.js[?v=VERSION]`: with the current version, cacheable for
/// a year (the URL changes with the content); without, for five minutes.
pub fn sdk(req: &RequestHeader) -> Response {
    let current = sdk_version();
    let etag = format!("\"{}\"", current.version);
    let versioned = req
        .uri
        .query()
        .is_some_and(|q| q == format!("v={}", current.version));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let not_modified = req
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let (status, body) = if not_modified {
        (304, Bytes::new())
    } else {
        (200, Bytes::from_static(SDK_SOURCE.as_bytes()))
    };
    let mut header = ResponseHeader::build(status, Some(7)).expect("valid status");
    let _ = header.insert_header("content-type", "text/javascript; charset=utf-8");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", cache);
    let _ = header.insert_header("etag", etag);
    let _ = header.insert_header("x-content-type-options", "nosniff");
    // A public, static file that pages of other origins load (with SRI,
    // which needs CORS) or import.
    let _ = header.insert_header("access-control-allow-origin", "*");
    let _ = header.insert_header("cross-origin-resource-policy", "cross-origin");
    (header, body)
}

/// Where clients open the deployment's messaging WebSocket: the route fixed
/// to it, else the first route that reads the id from the query.
fn messaging_endpoint(runtime: &Runtime, id: &str) -> Option<String> {
    let base = runtime.config.public_url.as_ref()?;
    let scheme = if base.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    let origin = base.origin().ascii_serialization();
    let host = origin.split_once("://").map(|(_, h)| h)?;
    let routes = runtime.config.routes.iter();
    let fixed = routes
        .clone()
        .find(|r| r.deployment == DeploymentSource::Fixed(id.to_string()))
        .map(|r| r.path_prefix.clone());
    let path = fixed.or_else(|| {
        routes
            .filter_map(|r| match &r.deployment {
                DeploymentSource::Query(param) => Some((r, param)),
                DeploymentSource::Fixed(_) => None,
            })
            .next()
            .map(|(r, param)| {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(param, id)
                    .finish();
                format!("{}?{query}", r.path_prefix)
            })
    })?;
    Some(format!("{scheme}://{host}{path}"))
}

/// The public facts of a deployment, in the shape `web/sdk.js` reads.
pub fn public_config(runtime: &Runtime, deployment: &DeploymentRt) -> serde_json::Value {
    let auth = &deployment.messenger.authentication;
    let oidc = deployment
        .provider
        .as_ref()
        .filter(|_| auth.enabled)
        .map(|p| {
            let metadata = p.metadata();
            serde_json::json!({
                "issuer": p.config.issuer,
                "authorizationEndpoint": metadata.and_then(|m| m.authorization_endpoint.clone()),
                "clientId": p.config.client_id,
                "scopes": p.config.scopes,
            })
        });
    // Absolute URLs when the public URL is known, else paths on this host.
    let base = runtime
        .config
        .public_url
        .as_ref()
        .map_or("", |u| u.as_str().trim_end_matches('/'));
    serde_json::json!({
        "id": deployment.config.id,
        "status": if deployment.is_active() { "Active" } else { "Inactive" },
        "auth": {
            "enabled": auth.enabled,
            "allowSessionUpgrade": auth.allow_session_upgrade,
        },
        "oidc": oidc,
        "redirectUris": deployment.config.redirect_uris.iter().map(url::Url::as_str).collect::<Vec<_>>(),
        "endpoints": {
            "token": format!("{base}/.auth/token"),
            "refresh": format!("{base}/.auth/token/refresh"),
            "revoke": format!("{base}/.auth/token"),
        },
        "messagingEndpoint": messaging_endpoint(runtime, &deployment.config.id),
        "sdkVersion": sdk_version_tag(),
    })
}

/// `GET /.auth/deployments/{id}/config.json`
pub fn config(runtime: &Runtime, req: &RequestHeader, id: &str) -> Response {
    let Some(deployment) = runtime.deployment(id) else {
        return error(404, "unknown_deployment", "no deployment has this id");
    };
    let mut response = json(
        200,
        &public_config(runtime, deployment),
        "public, max-age=60",
    );
    cors::decorate(&mut response.0, req, deployment);
    response
}

/// The `<script>` element that loads this build's SDK from `public_url`,
/// pinned by version and Subresource Integrity: the snippet's first line.
pub fn sdk_script_tag(public_url: &url::Url) -> String {
    let version = sdk_version();
    format!(
        r#"<script src="{base}/.auth/sdk.js?v={v}" integrity="{integrity}" crossorigin="anonymous"></script>"#,
        base = public_url.as_str().trim_end_matches('/'),
        v = version.version,
        integrity = version.integrity,
    )
}

/// `GET /.auth/deployments/{id}/snippet`: the HTML to paste into the site,
/// as text (a browser shows it rather than running it).
pub fn snippet(runtime: &Runtime, id: &str) -> Response {
    let Some(deployment) = runtime.deployment(id) else {
        return error(404, "unknown_deployment", "no deployment has this id");
    };
    let Some(public_url) = &runtime.config.public_url else {
        return error(
            503,
            "no_public_url",
            "the snippet needs `public_url` in the configuration",
        );
    };
    // Deployment ids are [A-Za-z0-9._-] (validated), safe in HTML and JS strings.
    let id = &deployment.config.id;
    let text = format!(
        r#"<!-- portcullis: authenticated messaging for deployment {id} -->
{script}
<script>
  // Log the user in at your identity provider as you do today, then hand the
  // authorization code over in getAuthCode (see {base}/.auth/sdk.js), or call
  // messenger.login() to let the SDK run the redirect itself.
  const messenger = Portcullis.create({{ deploymentId: "{id}" }});
  messenger.on("authenticated", () => {{
    const socket = messenger.connect();
    socket.addEventListener("message", (event) => console.log(event.data));
  }});
</script>
"#,
        script = sdk_script_tag(public_url),
        base = public_url.as_str().trim_end_matches('/'),
    );
    let body = Bytes::from(text);
    let mut header = ResponseHeader::build(200, Some(4)).expect("valid status");
    let _ = header.insert_header("content-type", "text/plain; charset=utf-8");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", "no-cache");
    let _ = header.insert_header("x-content-type-options", "nosniff");
    (header, body)
}
