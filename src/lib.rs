//! portcullis: an OpenID Connect edge proxy for web-messaging servers, built
//! on Pingora. See README.md for the request's journey through the modules.
//!
//! | module        | owns                                                          |
//! |---------------|---------------------------------------------------------------|
//! | `config`      | the YAML file: raw structs, validation, the trusted model     |
//! | `runtime`     | the config compiled for lookups; reloads swap it atomically   |
//! | `proxy`       | the Pingora request phases and the decisions they call        |
//! | `ratelimit`   | per-client and per-deployment limits on costly endpoints      |
//! | `connections` | the live-connection registry and forced WebSocket closes      |
//! | `admin`       | the admin listener: health, readiness, connections, reload    |
//! | `metrics`     | every Prometheus metric portcullis exports                    |
//! | `server`      | assembling listeners and services into one Pingora server     |
//! | `tls`         | served certificates (SNI, reload) and upstream roots           |
//! | `demo`        | `portcullis demo`: an echo chat backend and its page (feature `demo`) |
//! | `devidp`      | a development OpenID provider (feature `demo`: demo and tests, never production) |

pub mod admin;
pub mod capacity;
pub mod config;
pub mod connections;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "demo")]
pub mod devidp;
pub mod endpoints;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod provider;
pub mod proxy;
pub mod ratelimit;
pub mod runtime;
pub mod server;
pub mod session;
pub mod status;
pub mod tls;
pub mod token;

/// Makes aws-lc-rs rustls's process-wide crypto provider, so that every TLS
/// session portcullis has — listeners, upstreams, provider and Redis
/// clients — runs on the one stack its JWTs and cookies use. It must run
/// before anything else touches TLS: Pingora installs `ring` as the default
/// when it builds its first listener or connector unless a provider is
/// already installed, and clients built later take whichever is installed.
/// Also installs jsonwebtoken's provider (aws-lc-rs, with keys parsed once:
/// `token::prepared`) before anything signs or verifies a JWT.
/// Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    token::prepared::ensure_installed();
}
