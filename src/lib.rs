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
//! | `demo`        | `portcullis demo`: an echo chat backend and its page          |
//! | `devidp`      | a development OpenID provider (demo and tests; not production) |

pub mod admin;
pub mod capacity;
pub mod config;
pub mod connections;
pub mod demo;
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
pub mod token;
