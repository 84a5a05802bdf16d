//! Prometheus metrics: the process's registry and the `/metrics` endpoint that serves it, in the
//! OpenMetrics text format, on a port of its own (scrapers need no gRPC client or credentials).

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// One label: `(name, value)`. A metric family's label set is an array of these.
pub type Label = (&'static str, String);

/// A family of histograms built by a plain function.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for request latencies: 1 ms to about 33 s.
pub fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The storage operations the retry wrapper names (`operation` label), each a series from
/// start-up.
pub const STORAGE_OPERATIONS: [&str; 7] = [
    "list",
    "stat",
    "read",
    "open_read",
    "copy",
    "delete",
    "persist",
];

/// How a storage attempt can end (`outcome` label), each a series from start-up.
pub const STORAGE_OUTCOMES: [&str; 5] =
    ["ok", "not_found", "throttled", "transient_error", "error"];

/// The shared storage budgets (`budget` label), each a series from start-up.
pub const STORAGE_BUDGETS: [&str; 2] = ["read", "write"];

/// The lowest a 429 cuts a governed budget's rate to, as a share of its configured rate (the
/// governor's script: `math.max(base / 16, ...)`).
pub const BUDGET_FLOOR_SHARE: f64 = 1.0 / 16.0;

type FloatGauges = Family<[Label; 1], Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Storage requests, process-wide: every driver reports through the retry wrapper.
#[derive(Debug)]
pub struct StorageMetrics {
    requests: Family<[Label; 2], Counter>,
    duration: Histograms<[Label; 1]>,
    throttled: Family<[Label; 1], Counter>,
    retries: Family<[Label; 1], Counter>,
    budget_rate: FloatGauges,
    budget_ceiling: FloatGauges,
    budget_floor: FloatGauges,
    budget_cuts: Family<[Label; 1], Counter>,
    budget_wait: Histograms<[Label; 1]>,
}

/// The process's storage metrics.
pub static STORAGE: LazyLock<StorageMetrics> = LazyLock::new(|| StorageMetrics {
    requests: Family::default(),
    duration: Family::new_with_constructor(latency_histogram),
    throttled: Family::default(),
    retries: Family::default(),
    budget_rate: Family::default(),
    budget_ceiling: Family::default(),
    budget_floor: Family::default(),
    budget_cuts: Family::default(),
    budget_wait: Family::new_with_constructor(latency_histogram),
});

impl StorageMetrics {
    /// Creates every operation, outcome and budget series that does not exist yet, at 0, so
    /// that `rate()` and absence alerts work from the first scrape. (`get_or_create` creates a
    /// series; dropping what it returns records nothing.)
    fn create_known_series(&self) {
        for operation in STORAGE_OPERATIONS {
            let op = [("operation", operation.to_owned())];
            for outcome in STORAGE_OUTCOMES {
                self.requests
                    .get_or_create(&[
                        ("operation", operation.to_owned()),
                        ("outcome", outcome.to_owned()),
                    ])
                    .inc_by(0);
            }
            drop(self.duration.get_or_create(&op));
            self.throttled.get_or_create(&op).inc_by(0);
            self.retries.get_or_create(&op).inc_by(0);
        }
        for budget in STORAGE_BUDGETS {
            let label = [("budget", budget.to_owned())];
            drop(self.budget_rate.get_or_create(&label));
            drop(self.budget_ceiling.get_or_create(&label));
            drop(self.budget_floor.get_or_create(&label));
            self.budget_cuts.get_or_create(&label).inc_by(0);
            drop(self.budget_wait.get_or_create(&label));
        }
    }

    /// Records the governed budgets' floors (the lowest a 429 cuts each rate to); an
    /// ungoverned budget's floor stays 0. Call once at start-up with the process's settings.
    pub fn budget_floors(&self, config: &crate::storage::governor::GovernorConfig) {
        for (budget, governed) in STORAGE_BUDGETS.into_iter().zip([config.read, config.write]) {
            let floor = governed.map_or(0.0, |b| b.rate * BUDGET_FLOOR_SHARE);
            self.budget_floor
                .get_or_create(&[("budget", budget.to_owned())])
                .set(floor);
        }
    }

    /// Records one attempt of `operation` (one of [`STORAGE_OPERATIONS`]) and how it ended (one
    /// of [`STORAGE_OUTCOMES`]: `throttled` is an HTTP 429).
    pub fn attempt(&self, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("operation", operation.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        let op = [("operation", operation.to_owned())];
        self.duration.get_or_create(&op).observe(seconds);
        if outcome == "throttled" {
            self.throttled.get_or_create(&op).inc();
        }
    }

    /// Records the governed `budget`'s rate and ramp ceiling (requests per second).
    pub fn budget(&self, budget: &'static str, rate: f64, ceiling: f64) {
        let label = [("budget", budget.to_owned())];
        self.budget_rate.get_or_create(&label).set(rate);
        self.budget_ceiling.get_or_create(&label).set(ceiling);
    }

    /// Records a cut of `budget`'s rate after a 429.
    pub fn budget_cut(&self, budget: &'static str) {
        self.budget_cuts
            .get_or_create(&[("budget", budget.to_owned())])
            .inc();
    }

    /// Records how long a request waited for its slot in `budget`.
    pub fn budget_wait(&self, budget: &'static str, seconds: f64) {
        self.budget_wait
            .get_or_create(&[("budget", budget.to_owned())])
            .observe(seconds);
    }

    /// Records a retry of `operation`.
    pub fn retry(&self, operation: &'static str) {
        self.retries
            .get_or_create(&[("operation", operation.to_owned())])
            .inc();
    }
}

/// Database queries and pools, process-wide: queries are the `db.*` spans of the stores (see
/// [`crate::telemetry`]), pools are reported by each service.
#[derive(Debug)]
pub struct DbMetrics {
    duration: Histograms<[Label; 2]>,
    errors: Family<[Label; 2], Counter>,
    connections: Family<[Label; 2], Gauge>,
    max_connections: Family<[Label; 1], Gauge>,
}

/// The process's database metrics.
pub static DB: LazyLock<DbMetrics> = LazyLock::new(|| DbMetrics {
    duration: Family::new_with_constructor(latency_histogram),
    errors: Family::default(),
    connections: Family::default(),
    max_connections: Family::default(),
});

impl DbMetrics {
    /// Records a query's time, and whether it failed. A query's errors series exists from its
    /// first run, at 0 while none failed.
    pub fn query(&self, db: &'static str, query: &str, seconds: f64, failed: bool) {
        let labels = [("db", db.to_owned()), ("query", query.to_owned())];
        self.duration.get_or_create(&labels).observe(seconds);
        self.errors.get_or_create(&labels).inc_by(u64::from(failed));
    }

    /// Records a pool's connections: open, idle and the most it may open.
    pub fn pool(&self, db: &'static str, open: u32, idle: u32, max: u32) {
        let gauge = |state: &str, value: u32| {
            self.connections
                .get_or_create(&[("db", db.to_owned()), ("state", state.to_owned())])
                .set(i64::from(value));
        };
        gauge("idle", idle);
        gauge("in_use", open.saturating_sub(idle));
        self.max_connections
            .get_or_create(&[("db", db.to_owned())])
            .set(i64::from(max));
    }
}

/// gRPC requests served, process-wide (the layer in [`crate::grpc::serve`]).
#[derive(Debug)]
pub struct GrpcMetrics {
    requests: Family<[Label; 2], Counter>,
    duration: Histograms<[Label; 1]>,
}

/// The process's gRPC server metrics.
pub static GRPC: LazyLock<GrpcMetrics> = LazyLock::new(|| GrpcMetrics {
    requests: Family::default(),
    duration: Family::new_with_constructor(latency_histogram),
});

impl GrpcMetrics {
    /// Creates the series of every method in `methods` (`/package.Service/Method`) at 0: its
    /// `OK` count and its time, so that `rate()` works from the first scrape.
    pub fn known_methods<'a>(&self, methods: impl IntoIterator<Item = &'a str>) {
        for method in methods {
            self.requests
                .get_or_create(&[("method", method.to_owned()), ("code", "OK".to_owned())])
                .inc_by(0);
            drop(
                self.duration
                    .get_or_create(&[("method", method.to_owned())]),
            );
        }
    }

    /// Records a request to `method` (`/package.Service/Method`) that ended with `code`.
    pub fn request(&self, method: &str, code: &str, seconds: f64) {
        self.requests
            .get_or_create(&[("method", method.to_owned()), ("code", code.to_owned())])
            .inc();
        self.duration
            .get_or_create(&[("method", method.to_owned())])
            .observe(seconds);
    }
}

/// Registers the process-wide storage, database and gRPC metrics in `registry`, every storage
/// operation, outcome and budget at 0.
pub fn register_common(registry: &mut Registry) {
    let storage = &*STORAGE;
    storage.create_known_series();
    registry.register(
        "storage_requests",
        "Storage requests (each attempt) by operation and outcome",
        storage.requests.clone(),
    );
    registry.register(
        "storage_request_duration_seconds",
        "Storage request time by operation",
        storage.duration.clone(),
    );
    registry.register(
        "storage_throttled",
        "Storage requests refused with HTTP 429 (rate limited), by operation",
        storage.throttled.clone(),
    );
    registry.register(
        "storage_retries",
        "Storage requests retried after a transient failure, by operation",
        storage.retries.clone(),
    );
    registry.register(
        "storage_budget_rate",
        "Requests per second the shared storage budget allows now, as this process last drew from it (0: not yet, or not governed)",
        storage.budget_rate.clone(),
    );
    registry.register(
        "storage_budget_ceiling",
        "The storage budget's ramp ceiling, requests per second (doubles per ramp period; 0: not yet, or not governed)",
        storage.budget_ceiling.clone(),
    );
    registry.register(
        "storage_budget_floor",
        "The lowest a 429 cuts the storage budget's rate to, requests per second (0: not governed)",
        storage.budget_floor.clone(),
    );
    registry.register(
        "storage_budget_cuts",
        "Cuts of a storage budget's rate after the provider answered 429",
        storage.budget_cuts.clone(),
    );
    registry.register(
        "storage_budget_wait_seconds",
        "Time a storage request waited for its slot in the shared budget",
        storage.budget_wait.clone(),
    );
    let grpc = &*GRPC;
    registry.register(
        "grpc_server_requests",
        "gRPC requests served, by method and status code",
        grpc.requests.clone(),
    );
    registry.register(
        "grpc_server_request_duration_seconds",
        "Time to answer a gRPC request (to the response headers), by method",
        grpc.duration.clone(),
    );
    let db = &*DB;
    registry.register(
        "db_query_duration_seconds",
        "Database query time by database and query name",
        db.duration.clone(),
    );
    registry.register(
        "db_query_errors",
        "Database queries that failed, by database and query name",
        db.errors.clone(),
    );
    registry.register(
        "db_pool_connections",
        "Database pool connections by state (idle, in_use)",
        db.connections.clone(),
    );
    registry.register(
        "db_pool_max_connections",
        "The most connections the pool may open",
        db.max_connections.clone(),
    );
}

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's current values in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            *response.body_mut() = Full::new(Bytes::from(render(registry)));
            if let Ok(value) = CONTENT_TYPE.parse() {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
        }
        (_, "/metrics") => *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED,
        _ => *response.status_mut() = StatusCode::NOT_FOUND,
    }
    response
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&registry, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics endpoint: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    #[test]
    fn a_throttled_storage_request_counts_as_a_429() {
        let mut registry = Registry::with_prefix("ferry");
        register_common(&mut registry);
        STORAGE.attempt("test_op", "throttled", 0.002);
        STORAGE.attempt("test_op", "ok", 0.001);
        let text = render(&registry);
        for line in [
            "ferry_storage_throttled_total{operation=\"test_op\"} 1",
            "ferry_storage_requests_total{operation=\"test_op\",outcome=\"ok\"} 1",
            "ferry_storage_request_duration_seconds_count{operation=\"test_op\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
    }

    #[test]
    fn every_storage_operation_outcome_and_budget_is_a_series_from_the_start() {
        let mut registry = Registry::with_prefix("ferry");
        register_common(&mut registry);
        let text = render(&registry);
        for operation in STORAGE_OPERATIONS {
            for outcome in STORAGE_OUTCOMES {
                let line = format!(
                    "ferry_storage_requests_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} "
                );
                assert!(text.contains(&line), "{line} not in {text}");
            }
            let throttled = format!("ferry_storage_throttled_total{{operation=\"{operation}\"}} ");
            assert!(text.contains(&throttled), "{throttled} not in {text}");
        }
        for budget in STORAGE_BUDGETS {
            for name in ["rate", "ceiling", "floor"] {
                let line = format!("ferry_storage_budget_{name}{{budget=\"{budget}\"}} ");
                assert!(text.contains(&line), "{line} not in {text}");
            }
            let cuts = format!("ferry_storage_budget_cuts_total{{budget=\"{budget}\"}} 0");
            assert!(text.lines().any(|l| l == cuts), "{cuts} not in {text}");
        }
    }

    /// The label values created at start-up are the ones the retry wrapper and the governor use.
    #[test]
    fn the_known_storage_labels_are_the_ones_the_storage_layer_uses() {
        let retry = include_str!("storage/retry.rs");
        let mut operations: Vec<&str> = retry
            .split("self.with_retry(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        operations.sort_unstable();
        let mut known = STORAGE_OPERATIONS.to_vec();
        known.sort_unstable();
        assert_eq!(operations, known);
        let outcome_fn = retry
            .split("fn outcome<T>")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .expect("retry.rs has fn outcome");
        let outcomes: Vec<&str> = outcome_fn
            .split("=> \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(outcomes, STORAGE_OUTCOMES);
        let governor = include_str!("storage/governor.rs");
        let floor = format!("math.max(base / {}, ", (1.0 / BUDGET_FLOOR_SHARE).round());
        assert!(
            governor.contains(&floor),
            "the governor's floor is not {floor}"
        );
        for budget in STORAGE_BUDGETS {
            assert!(governor.contains(&format!("=> \"{budget}\",")), "{budget}");
        }
    }

    #[test]
    fn a_governed_budget_reports_its_floor() {
        use crate::storage::governor::{BudgetConfig, GovernorConfig};
        let mut registry = Registry::with_prefix("ferry");
        register_common(&mut registry);
        STORAGE.budget_floors(&GovernorConfig {
            read: Some(BudgetConfig {
                rate: 800.0,
                max_rate: 0.0,
            }),
            ..GovernorConfig::default()
        });
        let text = render(&registry);
        for line in [
            "ferry_storage_budget_floor{budget=\"read\"} 50.0",
            "ferry_storage_budget_floor{budget=\"write\"} 0.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
    }

    #[test]
    fn a_query_has_an_errors_series_from_its_first_run() {
        let mut registry = Registry::with_prefix("ferry");
        register_common(&mut registry);
        DB.query("other", "first_query", 0.001, false);
        let text = render(&registry);
        let line = "ferry_db_query_errors_total{db=\"other\",query=\"first_query\"} 0";
        assert!(text.lines().any(|l| l == line), "{line} not in {text}");
    }

    #[test]
    fn known_grpc_methods_are_series_at_zero() {
        let mut registry = Registry::with_prefix("ferry");
        register_common(&mut registry);
        GRPC.known_methods(["/test.v1.Known/Method"]);
        let text = render(&registry);
        for line in [
            "ferry_grpc_server_requests_total{method=\"/test.v1.Known/Method\",code=\"OK\"} 0",
            "ferry_grpc_server_request_duration_seconds_count{method=\"/test.v1.Known/Method\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
    }

    #[test]
    fn renders_labelled_counters() {
        let mut registry = Registry::with_prefix("ferry");
        let runs = Family::<[Label; 1], Counter>::default();
        registry.register("test_runs", "Runs by outcome", runs.clone());
        runs.get_or_create(&[("outcome", "idle".to_owned())]).inc();
        let text = render(&registry);
        assert!(
            text.contains("ferry_test_runs_total{outcome=\"idle\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
