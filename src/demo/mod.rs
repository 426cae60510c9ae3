//! `portcullis demo`: a chat a person can log into. It starts, on loopback,
//! the in-process echo chat backend, the development OpenID provider
//! ([`crate::devidp`], NOT FOR PRODUCTION) and the proxy in front of both,
//! with a chat page that logs in through the provider, and a company site
//! on another origin ([`site`]) that logs its user in itself and chats
//! through the SDK and the token API. The same backend serves the
//! integration tests.
//!
//! Every address comes from the demo configuration (the built-in
//! `conf/demo.yaml` or `-c FILE`): the backend listens on the first server
//! of the `demo-backend` upstream, the provider on the address of the
//! `demo-idp` issuer (`http://<ip>:<port>`), and the provider's one client is
//! the one `demo-idp` describes, with `public_url + /.auth/callback` as its
//! only redirect URI.

pub mod backend;
pub mod site;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::config::{self, Config};
use crate::devidp::{self, DevIdpOptions};

/// The demo configuration shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

/// The upstream the demo backend stands in for.
const DEMO_UPSTREAM: &str = "demo-backend";

/// The provider entry the development provider stands in for.
pub const DEMO_PROVIDER: &str = "demo-idp";

/// Where the demo configuration takes its client secret from.
pub const CLIENT_SECRET_VAR: &str = "PORTCULLIS_DEMO_CLIENT_SECRET";

/// The client secret the demo uses when [`CLIENT_SECRET_VAR`] is unset.
pub const DEFAULT_CLIENT_SECRET: &str = "demo-secret";

/// Loads the demo config: the given file, or the built-in one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let result = match path {
        Some(p) => config::load(p),
        None => config::parse(DEMO_CONFIG, Path::new("."), &config::ProcessEnv),
    };
    result.map_err(|e| anyhow::anyhow!("invalid demo configuration:\n{e}"))
}

/// A loopback `ip:port`, or why not.
fn loopback(address: SocketAddr, what: &str) -> anyhow::Result<SocketAddr> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "{what} {address} is not a loopback address; the demo binds loopback only"
    );
    Ok(address)
}

/// The address the demo backend must listen on: the demo upstream's first server.
pub fn backend_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let upstream = config
        .upstreams
        .get(DEMO_UPSTREAM)
        .with_context(|| format!("the demo config needs an upstream named {DEMO_UPSTREAM}"))?;
    let server = upstream
        .servers
        .first()
        .context("the demo upstream has no server")?;
    let address = server
        .parse()
        .with_context(|| format!("the demo upstream's server {server} must be an ip:port"))?;
    loopback(address, "the demo upstream's server")
}

/// The address the development provider must listen on, from the
/// `demo-idp` issuer. The provider's issuer is `http://<listen address>`,
/// so the configured issuer must be exactly that or tokens would not verify.
pub fn provider_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let provider = config
        .providers
        .get(DEMO_PROVIDER)
        .with_context(|| format!("the demo config needs a provider named {DEMO_PROVIDER}"))?;
    let issuer = &provider.issuer;
    let address: SocketAddr = issuer
        .strip_prefix("http://")
        .and_then(|rest| rest.parse().ok())
        .filter(|a: &SocketAddr| format!("http://{a}") == *issuer)
        .with_context(|| {
            format!(
                "the {DEMO_PROVIDER} issuer {issuer} must be http://<ip>:<port> (no path, \
                 no trailing slash): the development provider listens there"
            )
        })?;
    loopback(address, "the demo provider's issuer address")
}

/// The development provider's set-up: its one client is the `demo-idp`
/// entry, redirecting to `public_url + /.auth/callback` and to the
/// deployments' `redirect_uris` (the token API's sites and apps).
pub fn provider_options(config: &Config) -> anyhow::Result<DevIdpOptions> {
    let provider = config
        .providers
        .get(DEMO_PROVIDER)
        .with_context(|| format!("the demo config needs a provider named {DEMO_PROVIDER}"))?;
    let client_secret = provider
        .client_secret
        .as_ref()
        .with_context(|| format!("the {DEMO_PROVIDER} provider needs a client_secret"))?;
    let public_url = config
        .public_url
        .as_ref()
        .context("the demo config needs public_url: login redirects come back there")?;
    // The same callback URL the login endpoint sends.
    let callback = format!(
        "{}/.auth/callback",
        public_url.as_str().trim_end_matches('/')
    );
    let defaults = DevIdpOptions::default();
    // The token API's redirect URIs too: the sites and apps of the demo
    // log in at the provider themselves.
    let mut redirect_uris = vec![callback];
    for d in &config.deployments {
        redirect_uris.extend(d.redirect_uris.iter().map(|u| u.to_string()));
    }
    Ok(DevIdpOptions {
        client_id: provider.client_id.clone(),
        client_secret: client_secret.expose().to_string(),
        redirect_uris,
        access_token_audience: provider
            .audiences
            .first()
            .cloned()
            .unwrap_or(defaults.access_token_audience),
        ..defaults
    })
}

/// Makes sure [`CLIENT_SECRET_VAR`] is set, to [`DEFAULT_CLIENT_SECRET`]
/// unless the user set it. Call only while the process has one thread.
fn provide_client_secret() {
    if std::env::var_os(CLIENT_SECRET_VAR).is_none_or(|v| v.is_empty()) {
        // SAFETY (the sense of it: `set_var` is only `unsafe` from the 2024
        // edition on, and this crate is 2021): changing the environment is
        // unsound while another thread may read it, because the C library's
        // getenv hands out pointers into the block that setenv replaces.
        // `run` is called by `main` right after parsing the arguments, when
        // the process still has its main thread only: the backend and
        // provider thread, the tokio runtimes, Pingora's threads and the
        // logger all start later in `run`. Every later reader (the config
        // load below, reloads) runs after this write, ordered by program
        // order and by thread spawning.
        std::env::set_var(CLIENT_SECRET_VAR, DEFAULT_CLIENT_SECRET);
    }
}

/// Runs the backend and the development provider on their own thread and
/// runtime; returns once the provider is serving (its issuer).
fn start_servers(
    backend_addr: SocketAddr,
    provider_addr: SocketAddr,
    options: DevIdpOptions,
    site: Option<site::Site>,
) -> anyhow::Result<String> {
    let backend_listener = std::net::TcpListener::bind(backend_addr)
        .with_context(|| format!("cannot bind the demo backend to {backend_addr}"))?;
    backend_listener.set_nonblocking(true)?;
    let site = match site {
        Some(site) => {
            let listener = std::net::TcpListener::bind(site.address)
                .with_context(|| format!("cannot bind the demo site to {}", site.address))?;
            listener.set_nonblocking(true)?;
            Some((listener, site))
        }
        None => None,
    };
    let provider_listener = std::net::TcpListener::bind(provider_addr)
        .with_context(|| format!("cannot bind the development provider to {provider_addr}"))?;
    provider_listener.set_nonblocking(true)?;
    let (ready, started) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    std::thread::Builder::new()
        .name("demo-servers".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(anyhow::anyhow!(
                        "the demo servers' runtime failed to start: {e}"
                    )));
                    return;
                }
            };
            rt.block_on(async move {
                let listeners = tokio::net::TcpListener::from_std(provider_listener)
                    .and_then(|p| Ok((p, tokio::net::TcpListener::from_std(backend_listener)?)));
                let (provider_listener, backend_listener) = match listeners {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(anyhow::anyhow!("demo listener failed: {e}")));
                        return;
                    }
                };
                // The provider stops when this handle drops: keep it for as
                // long as the backend serves, which is until the process ends.
                let _provider = match devidp::start(provider_listener, options).await {
                    Ok(provider) => {
                        let _ = ready.send(Ok(provider.issuer().to_string()));
                        provider
                    }
                    Err(e) => {
                        let _ = ready.send(Err(anyhow::anyhow!(
                            "the development provider failed to start: {e}"
                        )));
                        return;
                    }
                };
                let site = async {
                    let Some((listener, site)) = site else {
                        return std::future::pending().await;
                    };
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    site::serve(listener, &site).await
                };
                tokio::select! {
                    result = backend::serve(backend_listener) => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "demo backend stopped");
                        }
                    }
                    result = site => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "demo site stopped");
                        }
                    }
                }
            });
        })?;
    started
        .recv()
        .context("the demo servers' thread ended before starting")?
}

/// Starts the backend and the development provider, then runs the proxy.
/// Call it from `main` before any other thread exists (see
/// `provide_client_secret`).
pub fn run(path: Option<&Path>) -> anyhow::Result<()> {
    provide_client_secret();
    let config = load_config(path)?;
    crate::logging::init(&config.logging);
    let backend_addr = backend_address(&config)?;
    let provider_addr = provider_address(&config)?;
    let options = provider_options(&config)?;
    let users = options
        .users
        .iter()
        .map(|u| {
            format!(
                "\n                 {:<6} {} <{}>",
                u.subject, u.name, u.email
            )
        })
        .collect::<String>();
    let site = site::from_config(&config)?;
    let site_line = site.as_ref().map_or_else(String::new, |s| {
        format!(
            "  a site's page: {} (another origin with its own login; the SDK \
             exchanges its code for a messenger token)\n",
            s.url()
        )
    });
    let issuer = start_servers(backend_addr, provider_addr, options, site)?;

    let page = config
        .listeners
        .first()
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}/", l.address)
        })
        .unwrap_or_default();
    let page = config
        .public_url
        .as_ref()
        .map_or(page, |u| u.as_str().to_string());
    let admin = config
        .admin
        .as_ref()
        .map(|a| format!("http://{}/metrics", a.address))
        .unwrap_or_else(|| "(no admin listener)".into());
    eprintln!(
        "\nportcullis demo\n  \
         chat page:     {page}\n\
         {site_line}  \
         log in as:     pick a user on the provider's login page (no passwords):{users}\n  \
         provider:      {issuer}\n                 \
         a DEVELOPMENT OpenID provider: anyone can sign in as anyone.\n                 \
         NOT FOR PRODUCTION.\n  \
         metrics:       {admin}\n  \
         backend:       http://{backend_addr}/ (behind the proxy)\n\
         Press Ctrl-C to stop.\n"
    );
    let state = crate::server::build_state(config, path.map(Path::to_path_buf))?;
    crate::server::run(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_config(secret: Option<&str>) -> Result<Config, config::ConfigErrors> {
        let env = |name: &str| (name == CLIENT_SECRET_VAR).then(|| secret.map(str::to_string))?;
        config::parse(DEMO_CONFIG, Path::new("."), &env)
    }

    #[test]
    fn the_demo_config_names_every_address_and_the_provider_client() {
        let c = demo_config(Some("s3cret")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            backend_address(&c).unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert_eq!(
            provider_address(&c).unwrap(),
            "127.0.0.1:8082".parse().unwrap()
        );
        let options = provider_options(&c).unwrap();
        assert_eq!(options.client_id, "portcullis-demo");
        assert_eq!(options.client_secret, "s3cret");
        assert_eq!(
            options.redirect_uris,
            [
                "http://127.0.0.1:8080/.auth/callback",
                "http://127.0.0.1/callback",
                "http://127.0.0.1:8083/"
            ]
        );
        let site = site::from_config(&c).unwrap().expect("the demo has a site");
        assert_eq!(site.address, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(site.deployment_id, "6f2d3c1a-0b4e-4c5d-9e8f-7a6b5c4d3e2f");
        assert_eq!(options.access_token_audience, "api://messaging");
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn a_site_its_deployment_does_not_allow_is_refused() {
        let text = DEMO_CONFIG.replace(", http://127.0.0.1:8083]", "]");
        let env = |name: &str| (name == CLIENT_SECRET_VAR).then(|| "x".to_string());
        let c = config::parse(&text, Path::new("."), &env).unwrap_or_else(|e| panic!("{e}"));
        let error = site::from_config(&c).unwrap_err().to_string();
        assert!(error.contains("allowed_origins"), "{error}");
    }

    #[test]
    fn the_client_secret_must_come_from_the_environment() {
        let errors = demo_config(None).unwrap_err();
        assert!(
            errors.contains("providers.demo-idp.client_secret", CLIENT_SECRET_VAR),
            "{errors}"
        );
    }

    #[test]
    fn an_issuer_the_provider_cannot_listen_at_is_refused() {
        let text = DEMO_CONFIG.replace("http://127.0.0.1:8082", "http://localhost:8082");
        let env = |name: &str| (name == CLIENT_SECRET_VAR).then(|| "x".to_string());
        let c = config::parse(&text, Path::new("."), &env).unwrap_or_else(|e| panic!("{e}"));
        let error = provider_address(&c).unwrap_err().to_string();
        assert!(error.contains("http://<ip>:<port>"), "{error}");
        let text = DEMO_CONFIG.replace("http://127.0.0.1:8082", "http://127.0.0.1:8082/x");
        let c = config::parse(&text, Path::new("."), &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(provider_address(&c).is_err());
    }
}
