//! Assembles one Pingora server from a validated config: the proxy service
//! on every `listen` address, the admin listener, and the supervisor that
//! runs health checks, cuts overdue closes, reloads on SIGHUP and closes live
//! connections on shutdown. Before that, the process's descriptor limit is
//! raised and the connection ceiling it allows is logged (`capacity`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::capacity;
use crate::config::Config;
use crate::connections::close_code;
use crate::metrics::Metrics;
use crate::proxy::Portcullis;
use crate::runtime::{Runtime, State, SUPERVISOR_TICK};

/// How long live connections get to receive their close frame at shutdown.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Builds the shared state for `config`, after raising the descriptor
/// limit that sizes the connection ceiling.
pub fn build_state(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Arc<State>> {
    raise_descriptor_limit();
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::build(config, None, &metrics).map_err(anyhow::Error::msg)?;
    log_connection_ceiling(&runtime.connection_ceiling);
    Ok(State::new(runtime, config_path, metrics))
}

/// Raises the soft descriptor limit to the hard one: each live WebSocket
/// holds two descriptors, and the soft limit is often far below the hard one.
fn raise_descriptor_limit() {
    match capacity::raise_descriptor_limit() {
        Ok((before, after)) => tracing::info!(
            soft_before = before.soft,
            soft = after.soft,
            hard = after.hard,
            "descriptor limit (RLIMIT_NOFILE)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not raise the descriptor limit; the connection ceiling follows the current one"
        ),
    }
}

fn log_connection_ceiling(ceiling: &capacity::Ceiling) {
    if let Some(warning) = ceiling.warning() {
        tracing::warn!("{warning}");
    }
    let source = match ceiling.source {
        capacity::CeilingSource::Configured => "limits.max_connections",
        _ => "descriptor limit",
    };
    tracing::info!(
        max_connections = ceiling.max_connections,
        source,
        descriptors = ceiling.descriptors,
        reserve = capacity::DESCRIPTOR_RESERVE,
        "connection ceiling: WebSocket handshakes beyond it get 503"
    );
}

/// Runs the server until SIGTERM/SIGINT. Never returns on success.
pub fn run(state: Arc<State>) -> anyhow::Result<()> {
    let server = build_server(state)?;
    server.run(RunArgs::default());
    Ok(())
}

/// A ready-to-run Pingora server for `state`.
pub fn build_server(state: Arc<State>) -> anyhow::Result<Server> {
    let runtime = state.runtime();
    let config = &runtime.config;
    let conf = ServerConf {
        threads: config.threads,
        // After SIGTERM: stop accepting, give live connections their close
        // frames, then let in-flight requests finish.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Portcullis::new(state.clone()),
        "portcullis proxy",
    );
    for listener in &config.listeners {
        let address = listener.address.to_string();
        match &listener.tls {
            None => proxy.add_tcp(&address),
            Some(tls) => {
                let cert = tls.cert.to_string_lossy();
                let key = tls.key.to_string_lossy();
                proxy.add_tls(&address, &cert, &key).with_context(|| {
                    format!("TLS listener {address}: cannot load {cert} / {key}")
                })?;
            }
        }
    }
    proxy.threads = Some(config.threads);
    server.add_service(proxy);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "portcullis admin".to_string(),
            HttpServer::new_app(AdminApp::new(state.clone())),
        );
        service.add_tcp(&admin.address.to_string());
        service.threads = Some(1);
        server.add_service(service);
    }
    server.add_service(background_service(
        "portcullis supervisor",
        Supervisor { state },
    ));
    Ok(server)
}

/// The one background task: periodic health checks and overdue-close sweeps,
/// SIGHUP reloads, and closing live connections at shutdown.
struct Supervisor {
    state: Arc<State>,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SUPERVISOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "SIGHUP reload unavailable"))
            .ok();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let state = self.state.clone();
                    // Health checks may wait on slow servers; sweeps must not.
                    tokio::spawn(async move { state.run_due_health_checks().await });
                    self.state.maintain_providers();
                    self.state.connections.sweep_overdue();
                    let now = crate::session::now();
                    self.state.connections.close_expired(now);
                    let keeper = self.state.clone();
                    // Store calls may wait; the tick must not.
                    tokio::spawn(async move { keeper.keep_live_sessions(now).await });
                    self.state.runtime().limiters.trim_if_due();
                    if let Some(count) = self.state.sessions.approximate_count() {
                        self.state.metrics.sessions_live.set(count as i64);
                    }
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.state.reload().await;
                }
                _ = shutdown.changed() => {
                    let closed = self.state.connections.close_where(
                        |_| true,
                        close_code::GOING_AWAY,
                        "server shutting down",
                        "shutdown",
                    );
                    if closed > 0 {
                        tracing::info!(closed, "closing live connections for shutdown");
                        tokio::time::sleep(SHUTDOWN_CLOSE_WAIT).await;
                        self.state.connections.sweep_overdue();
                    }
                    return;
                }
            }
        }
    }
}
