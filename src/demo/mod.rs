//! `portcullis demo`: the proxy in front of an in-process echo chat backend,
//! with a chat page a person can open in a browser. Everything binds to
//! loopback. The same backend serves the integration tests.

pub mod backend;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::config::{self, Config};

/// The demo configuration shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

/// The upstream the demo backend stands in for.
const DEMO_UPSTREAM: &str = "demo-backend";

/// Loads the demo config: the given file, or the built-in one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let result = match path {
        Some(p) => config::load(p),
        None => config::parse(DEMO_CONFIG, Path::new("."), &config::ProcessEnv),
    };
    result.map_err(|e| anyhow::anyhow!("invalid demo configuration:\n{e}"))
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
    server
        .parse()
        .with_context(|| format!("the demo upstream's server {server} must be an ip:port"))
}

/// Starts the backend on its own thread and runtime, then runs the proxy.
pub fn run(path: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    crate::logging::init(&config.logging);
    let backend_addr = backend_address(&config)?;
    let listener = std::net::TcpListener::bind(backend_addr)
        .with_context(|| format!("cannot bind the demo backend to {backend_addr}"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("demo-backend".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "demo backend runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = backend::serve(l).await {
                            tracing::error!(error = %e, "demo backend stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "demo backend listener failed"),
                }
            });
        })?;

    let page = config
        .listeners
        .first()
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}/", l.address)
        })
        .unwrap_or_default();
    let admin = config
        .admin
        .as_ref()
        .map(|a| format!("http://{}/metrics", a.address))
        .unwrap_or_else(|| "(no admin listener)".into());
    eprintln!(
        "\nportcullis demo\n  chat page:   {page}\n  metrics:     {admin}\n  backend:     http://{backend_addr}/ (behind the proxy)\nPress Ctrl-C to stop.\n"
    );
    let state = crate::server::build_state(config, path.map(Path::to_path_buf))?;
    crate::server::run(state)
}
