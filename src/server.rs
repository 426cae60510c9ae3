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
use pingora::listeners::{L4BufferSettings, ListenerConfig};
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

/// Plain listeners read straight from the socket. Pingora's default puts a 64 KiB read buffer
/// in front of every accepted connection for its whole life, which on an idle WebSocket is most
/// of what the connection costs; without TLS, nothing reads in pieces small enough to gain from
/// it (request heads and bodies are read into buffers of their own). The write side keeps
/// Pingora's MSS-sized buffer. TLS listeners keep the defaults: rustls reads record by record.
const PLAIN_L4_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// How long live connections get to receive their close frame at shutdown.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Builds the shared state for `config`, after raising the descriptor
/// limit that sizes the connection ceiling.
pub fn build_state(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Arc<State>> {
    // Before the first TLS client (a provider's) is built; main did it
    // already, an embedding program may not have.
    crate::install_crypto_provider();
    raise_descriptor_limit();
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::build(config, None, &metrics).map_err(anyhow::Error::msg)?;
    log_connection_ceiling(&runtime.connection_ceiling);
    State::new(runtime, config_path, metrics).map_err(anyhow::Error::msg)
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

/// Runs the server until SIGTERM (drained, see `Drain`) or SIGINT (at
/// once). Never returns on success.
pub fn run(state: Arc<State>) -> anyhow::Result<()> {
    let server = build_server(state.clone())?;
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain { state }),
    });
    Ok(())
}

/// The signals that end the process, as Pingora asks for them. SIGTERM
/// drains: `/readyz` turns 503 and new WebSocket upgrades are refused at
/// once while everything else is still served, for `shutdown.drain_grace`
/// (the load balancer's time to notice); only then does Pingora stop
/// accepting, and the supervisor closes live WebSockets with 1001 spread
/// over `shutdown.close_window`. SIGINT stops at once; SIGQUIT is Pingora's
/// graceful upgrade (listening sockets handed to a new process started with
/// `--upgrade`), which portcullis does not offer: it drains like SIGTERM.
struct Drain {
    state: Arc<State>,
}

#[async_trait]
impl pingora::server::ShutdownSignalWatch for Drain {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch signals: stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
        }
        let grace = self.state.runtime().config.shutdown.drain_grace;
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            live_connections = self.state.connections.len(),
            "draining: not ready, new WebSocket upgrades refused"
        );
        // A second SIGINT during the grace still stops at once.
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// A ready-to-run Pingora server for `state`.
pub fn build_server(state: Arc<State>) -> anyhow::Result<Server> {
    let runtime = state.runtime();
    let config = &runtime.config;
    // After the drain grace: stop accepting, close live connections over
    // the close window (plus a second for the last close frames and the
    // sweeper), then give in-flight requests a few seconds.
    let close_window = config.shutdown.close_window + SHUTDOWN_CLOSE_WAIT;
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(close_window.as_secs_f64().ceil() as u64),
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
    // Every certificate is loaded before any listener is added: a broken
    // file stops the start with the config path that names it.
    let mut certificates: std::collections::HashMap<_, _> =
        crate::tls::load_all(config, crate::config::certificates::now())
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .collect();
    for listener in &config.listeners {
        let address = listener.address.to_string();
        match certificates.remove(&listener.address) {
            None => proxy.add_listener(ListenerConfig::tcp(&address).l4_buffer(PLAIN_L4_BUFFERS)),
            Some(set) => {
                let settings = tls_settings(&state, listener.address, set)?;
                proxy.add_tls_with_settings(&address, None, settings);
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
        match certificates.remove(&admin.address) {
            None => service.add_tcp(&admin.address.to_string()),
            Some(set) => {
                let settings = tls_settings(&state, admin.address, set)?;
                service.add_tls_with_settings(&admin.address.to_string(), None, settings);
            }
        }
        service.threads = Some(1);
        server.add_service(service);
    }
    server.add_service(background_service(
        "portcullis supervisor",
        Supervisor { state },
    ));
    Ok(server)
}

/// A TLS listener's settings: handshakes answered by a resolver registered
/// in `state` under `address`, which reloads refill (see `crate::tls`).
fn tls_settings(
    state: &State,
    address: std::net::SocketAddr,
    set: crate::config::certificates::CertificateSet,
) -> anyhow::Result<pingora::listeners::tls::TlsSettings> {
    for cert in set.certificates() {
        state.metrics.note_certificate(address, cert);
    }
    let mut names: Vec<&str> = set.by_name.keys().map(String::as_str).collect();
    names.sort_unstable();
    tracing::info!(
        listener = %address,
        default = %set.default.file,
        sni_names = ?names,
        "TLS listener: certificates loaded"
    );
    let resolver = state.certificates.register(address, set);
    // No files: the resolver alone answers (Pingora reads the paths only
    // when no resolver is set).
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .with_context(|| format!("TLS listener {address}"))?;
    settings.set_cert_resolver(resolver);
    Ok(settings)
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
        // A shared store's events: ends decided on other instances.
        if let Some(events) = self.state.sessions.events() {
            tokio::spawn(self.state.clone().follow_store_events(events));
        }
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
                    let window = self.state.runtime().config.shutdown.close_window;
                    let closed = close_spread(&self.state, window).await;
                    if closed > 0 {
                        tokio::time::sleep(SHUTDOWN_CLOSE_WAIT).await;
                        self.state.connections.sweep_overdue();
                    }
                    return;
                }
            }
        }
    }
}

/// Closes every live connection with 1001, in `CLOSE_STEPS` even batches
/// across `window` (all at once for a zero window), sweeping overdue closes
/// between batches. Returns how many began closing.
async fn close_spread(state: &State, window: Duration) -> usize {
    // Before the list is taken: a connection registering after this line
    // closes itself (proxy `response_filter`), one before is in the list.
    state
        .closing_for_shutdown
        .store(true, std::sync::atomic::Ordering::Release);
    let ids = state.connections.ids();
    if ids.is_empty() {
        return 0;
    }
    tracing::info!(
        connections = ids.len(),
        window_seconds = window.as_secs_f64(),
        "closing live connections for shutdown"
    );
    let steps = if window.is_zero() { 1 } else { CLOSE_STEPS };
    let batch = ids.len().div_ceil(steps).max(1);
    let pause = window / steps as u32;
    let mut closed = 0;
    for (i, chunk) in ids.chunks(batch).enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
            state.connections.sweep_overdue();
        }
        for id in chunk {
            if state.connections.close(
                *id,
                close_code::GOING_AWAY,
                "server shutting down",
                "shutdown",
            ) {
                closed += 1;
            }
        }
    }
    closed
}

/// How many batches a shutdown close window is cut into.
const CLOSE_STEPS: usize = 50;
