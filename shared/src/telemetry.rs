//! Logging set-up shared by the binaries: JSON lines by default, text for people.

use tracing_subscriber::EnvFilter;

/// Default filter: our own crates at info, noisy transport crates at warn.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,sqlx=warn";

/// Installs the global tracing subscriber. `FERRY_LOG` (or `RUST_LOG`) sets the filter;
/// `FERRY_LOG_FORMAT=text` switches from JSON lines to human-readable text.
pub fn init(service: &str) {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let text = std::env::var("FERRY_LOG_FORMAT").is_ok_and(|f| f == "text");
    let result = if text {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
