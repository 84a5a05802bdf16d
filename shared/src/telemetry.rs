//! Logging set-up shared by the binaries: JSON lines by default, text for people; the layer
//! that turns the stores' `db.*` spans into query metrics; and OpenTelemetry traces
//! ([`traces`]).

pub mod traces;

use std::io::IsTerminal;
use std::time::Instant;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Default filter: our own crates at info, noisy transport crates at warn.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,sqlx=warn";

/// Flushes and stops the trace exporter when dropped: keep it alive in `main`.
#[derive(Debug)]
#[must_use = "dropping the guard stops the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs the global tracing subscriber. `FERRY_LOG` (or `RUST_LOG`) sets the log filter.
/// Logs are JSON lines, or readable text when stderr is a terminal; `FERRY_LOG_FORMAT=json` or
/// `text` forces one. Query metrics are recorded whatever the log filter says. Spans are exported
/// with OTLP over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
/// configured by the standard `OTEL_*` variables (`OTEL_SERVICE_NAME` defaults to `service`).
pub fn init(service: &'static str) -> Telemetry {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let text = match std::env::var("FERRY_LOG_FORMAT").as_deref() {
        Ok("text") => true,
        Ok("json") => false,
        _ => std::io::stderr().is_terminal(),
    };
    let logs = if text {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = traces::provider(service);
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(SometimesFilter(traces::exported))
    });
    let result = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(query_metrics())
        .with(spans)
        .try_init();
    if result.is_ok() {
        tracing::debug!(
            service,
            exporting = provider.is_some(),
            "telemetry initialised"
        );
    }
    Telemetry { provider }
}

/// Installs a subscriber that records query metrics (for tests that run the services in process
/// and read their `/metrics`) and, when `FERRY_TEST_LOG` holds a filter (`info`,
/// `ferry_scheduler=debug`), writes the logs it lets through to stderr. Does nothing when one is
/// installed already.
pub fn init_metrics_only() {
    let logs = std::env::var("FERRY_TEST_LOG").ok().map(|filter| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::new(filter))
    });
    let _ = tracing_subscriber::registry()
        .with(query_metrics())
        .with(logs)
        .try_init();
}

/// The query-metrics layer with the filter that lets through just what it needs.
fn query_metrics<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    QueryMetricsLayer.with_filter(SometimesFilter(query_wanted))
}

/// A per-layer filter that lets through what `wanted` says, and never answers `always`: a
/// callsite cached as `always` skips `enabled()`, and a per-layer filter then reads the
/// thread-local decision an unrelated `enabled!` check left behind (sqlx makes one after every
/// query), silently dropping the span (tokio-rs/tracing#2519).
#[derive(Clone, Copy)]
struct SometimesFilter(fn(&Metadata<'_>) -> bool);

impl<S> Filter<S> for SometimesFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        (self.0)(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if (self.0)(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }
}

/// Query spans and warnings (a failed query's `err` event), for the query metrics.
fn query_wanted(meta: &Metadata<'_>) -> bool {
    is_query(meta) || (meta.is_event() && *meta.level() <= Level::WARN)
}

/// Whether a span is a store's query span (`#[tracing::instrument(name = "db.<query>")]`).
fn is_query(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.name().starts_with("db.")
}

/// Which database a query span's crate talks to.
fn database(target: &str) -> &'static str {
    if target.starts_with("ferry_importer") {
        "metadata"
    } else if target.starts_with("ferry_scheduler") {
        "scheduler"
    } else {
        "other"
    }
}

/// When a query span started.
struct QueryStarted(Instant);

/// A query span saw a warning or an error (the store's `err` event).
struct QueryFailed;

/// Times `db.*` spans from creation to close into [`crate::metrics::DB`].
struct QueryMetricsLayer;

impl<S> Layer<S> for QueryMetricsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && is_query(span.metadata())
        {
            span.extensions_mut().insert(QueryStarted(Instant::now()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The `error` event `#[instrument(err)]` emits when the query fails; not sqlx's own
        // warnings (a slow statement is not a failure), and never twice (a second insert of the
        // same extension panics).
        if *event.metadata().level() <= Level::WARN
            && event.metadata().fields().field("error").is_some()
            && let Some(span) = ctx.event_span(event)
            && is_query(span.metadata())
        {
            let mut extensions = span.extensions_mut();
            if extensions.get_mut::<QueryFailed>().is_none() {
                extensions.insert(QueryFailed);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let extensions = span.extensions();
        if let Some(QueryStarted(started)) = extensions.get::<QueryStarted>() {
            let meta = span.metadata();
            crate::metrics::DB.query(
                database(meta.target()),
                meta.name().trim_start_matches("db."),
                started.elapsed().as_secs_f64(),
                extensions.get::<QueryFailed>().is_some(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tracing::instrument(name = "db.sample_query", skip_all, err(level = "warn"))]
    async fn sample(fail: bool) -> Result<(), String> {
        if fail { Err("boom".into()) } else { Ok(()) }
    }

    #[tokio::test]
    async fn query_spans_become_metrics() {
        let subscriber = tracing_subscriber::registry().with(query_metrics());
        let _guard = tracing::subscriber::set_default(subscriber);
        // sqlx asks `enabled!` after every query: that must not cost the next span its metrics.
        for _ in 0..20 {
            sample(false).await.unwrap();
            let _ = tracing::enabled!(target: "sqlx::query", Level::DEBUG);
        }
        sample(true).await.unwrap_err();
        let mut registry = crate::metrics::Registry::with_prefix("ferry");
        crate::metrics::register_common(&mut registry);
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(
                "ferry_db_query_duration_seconds_count{db=\"other\",query=\"sample_query\"} 21"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_db_query_errors_total{db=\"other\",query=\"sample_query\"} 1"),
            "{text}"
        );
    }

    #[tracing::instrument(name = "db.slow_query", skip_all, err(level = "warn"))]
    async fn slow(fail: bool) -> Result<(), String> {
        // What sqlx logs when a statement passes its slow threshold: twice in one query span.
        tracing::warn!(
            elapsed_secs = 3.5,
            "slow statement: execution time exceeded alert threshold"
        );
        tracing::warn!(
            elapsed_secs = 1.1,
            "slow statement: execution time exceeded alert threshold"
        );
        if fail { Err("boom".into()) } else { Ok(()) }
    }

    #[tokio::test]
    async fn slow_statement_warnings_are_not_failures_and_never_panic() {
        let subscriber = tracing_subscriber::registry().with(query_metrics());
        let _guard = tracing::subscriber::set_default(subscriber);
        slow(false).await.unwrap();
        slow(true).await.unwrap_err();
        let mut registry = crate::metrics::Registry::with_prefix("ferry");
        crate::metrics::register_common(&mut registry);
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("ferry_db_query_errors_total{db=\"other\",query=\"slow_query\"} 1"),
            "{text}"
        );
    }
}
