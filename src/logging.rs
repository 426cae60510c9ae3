//! Log output: `tracing` as JSON or text, filtered by `logging.level`.
//! Pingora logs through the `log` crate; those records are bridged into the
//! same subscriber so one format covers everything.

use crate::config::{LogFormat, Logging};

/// Installs the global subscriber. Calling it twice keeps the first one
/// (tests start several servers in one process).
pub fn init(logging: &Logging) {
    let filter = tracing_subscriber::EnvFilter::try_new(&logging.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match logging.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
