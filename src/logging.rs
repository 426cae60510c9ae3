//! Log output: `tracing` as JSON or text, filtered by `RUST_LOG` when it is
//! set (and valid), else by `logging.level`; both take per-target
//! directives (`info,portcullis::proxy=debug`). Pingora logs through the
//! `log` crate; those records are bridged into the same subscriber so one
//! format covers everything.
//!
//! Pingora's own targets are capped at `info` unless the filter names them:
//! at `debug` Pingora prints whole request heads, which carry the signed
//! assertion, the site's cookies and, where forwarding is on, a token. An
//! operator who asks for `pingora_core=debug` by name gets it.

use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, Logging};

/// Where the filter in force came from, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSource {
    Config,
    Environment,
    /// `RUST_LOG` was set but is not a filter: the config's is used.
    EnvironmentRejected,
}

/// The filter directives in force: `rust_log` when it is a valid filter,
/// else `level` (which `check` has validated).
pub fn directives<'a>(level: &'a str, rust_log: Option<&'a str>) -> (&'a str, FilterSource) {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(env) if EnvFilter::try_new(env).is_ok() => (env, FilterSource::Environment),
        Some(_) => (level, FilterSource::EnvironmentRejected),
        None => (level, FilterSource::Config),
    }
}

/// The Pingora targets `directives` name (`pingora_core=debug`,
/// `pingora_proxy::proxy_h1`): only these may go above `info`.
pub fn named_pingora_targets(directives: &str) -> Vec<&str> {
    directives
        .split(',')
        .map(|d| d.trim().split(['=', '[']).next().unwrap_or("").trim())
        .filter(|target| target.starts_with("pingora"))
        .collect()
}

/// What caps Pingora's targets at `info` (a prefix match: `pingora` covers
/// `pingora_core`, `pingora_proxy`, ...) except those the directives name,
/// letting everything else through to the main filter. The most specific
/// target wins, so `pingora_proxy=warn` leaves `pingora_core` capped.
fn pingora_cap(directives: &str) -> Targets {
    let mut cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    for target in named_pingora_targets(directives) {
        cap = cap.with_target(target, LevelFilter::TRACE);
    }
    cap
}

/// Installs the global subscriber. Calling it twice keeps the first one
/// (tests start several servers in one process).
pub fn init(logging: &Logging) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (directives, source) = directives(&logging.level, rust_log.as_deref());
    let env = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = env.and(pingora_cap(directives));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match logging.format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => layer.with_filter(filter).boxed(),
    };
    if tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_ok()
    {
        match source {
            FilterSource::Config => {}
            FilterSource::Environment => {
                tracing::info!(filter = directives, "log filter from RUST_LOG")
            }
            FilterSource::EnvironmentRejected => tracing::warn!(
                filter = directives,
                "RUST_LOG is not a valid filter; using logging.level"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_when_it_is_a_filter() {
        assert_eq!(directives("info", None), ("info", FilterSource::Config));
        assert_eq!(
            directives("info", Some("debug,hyper=warn")),
            ("debug,hyper=warn", FilterSource::Environment)
        );
        assert_eq!(
            directives("info", Some("  ")),
            ("info", FilterSource::Config)
        );
        assert_eq!(
            directives("info", Some("portcullis=[")),
            ("info", FilterSource::EnvironmentRejected)
        );
    }

    #[test]
    fn pingora_is_capped_unless_named() {
        use tracing::Level;
        let enabled = |directives: &str, target: &str, level: Level| {
            pingora_cap(directives).would_enable(target, &level)
        };
        assert!(!enabled(
            "trace",
            "pingora_core::protocols::http::v1::client",
            Level::DEBUG
        ));
        assert!(enabled("trace", "pingora_core::server", Level::INFO));
        assert!(enabled("trace", "portcullis::proxy", Level::TRACE));
        assert!(enabled("trace", "hyper::proto", Level::TRACE));
        assert!(enabled(
            "info,pingora_core=debug",
            "pingora_core::protocols",
            Level::DEBUG
        ));
        // Naming one Pingora target lifts that one only.
        assert!(!enabled(
            "trace,pingora_proxy=warn",
            "pingora_core::protocols",
            Level::DEBUG
        ));
        assert!(enabled(
            "trace,pingora_proxy=warn",
            "pingora_proxy::proxy_h1",
            Level::DEBUG
        ));
        assert_eq!(
            named_pingora_targets(
                "warn, pingora_proxy=trace,portcullis=debug,pingora_core[span]=debug"
            ),
            vec!["pingora_proxy", "pingora_core"]
        );
        assert!(named_pingora_targets("debug,portcullis=trace").is_empty());
    }
}
