//! The importer's Prometheus metrics (prefixed `ferry_`): its steps, its slots, what the
//! metadata database holds and its collections of abandoned copies (`ferryctl gc`). Storage,
//! database and gRPC metrics come from `ferry_shared::metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use ferry_proto::common::v1::{GarbageCounts, ImportStats, ImportType, MigrationStatus};
use ferry_shared::metrics::{Histograms, Label, Registry};

fn step_histogram() -> Histogram {
    // 10 ms to about 45 h: steps run from milliseconds to the pre-import time limit.
    Histogram::new(exponential_buckets(0.01, 2.0, 24))
}

/// Metrics of the import steps of one importer.
#[derive(Debug, Clone)]
pub struct ImporterMetrics {
    in_flight: Family<[Label; 1], Gauge>,
    steps: Family<[Label; 2], Counter>,
    duration: Histograms<[Label; 2]>,
    slots: Family<[Label; 1], Gauge>,
    blobs_copied: Family<[Label; 1], Counter>,
    bytes_copied: Family<[Label; 1], Counter>,
    registered_namespaces: Gauge,
    registered_repositories: Gauge,
    gc_runs: Family<[Label; 2], Counter>,
    gc_removed_objects: Counter,
    gc_removed_bytes: Counter,
    gc_abandoned_bytes: Gauge,
    gc_last_complete: Gauge<f64, AtomicU64>,
}

/// The `type` label of a step.
const STEP_TYPES: [&str; 2] = ["pre", "final"];
/// The `result` label of a step's end.
const STEP_RESULTS: [&str; 3] = ["complete", "failed", "canceled"];
/// The `result` label of a collection: through the whole listing, or stopped early.
const GC_RESULTS: [&str; 2] = ["complete", "stopped"];
/// The `mode` label of a collection.
const GC_MODES: [&str; 2] = ["dry_run", "remove"];

impl Default for ImporterMetrics {
    fn default() -> Self {
        Self {
            in_flight: Family::default(),
            steps: Family::default(),
            duration: Family::new_with_constructor(step_histogram),
            slots: Family::default(),
            blobs_copied: Family::default(),
            bytes_copied: Family::default(),
            registered_namespaces: Gauge::default(),
            registered_repositories: Gauge::default(),
            gc_runs: Family::default(),
            gc_removed_objects: Counter::default(),
            gc_removed_bytes: Counter::default(),
            gc_abandoned_bytes: Gauge::default(),
            gc_last_complete: Gauge::default(),
        }
    }
}

/// The `type` label of a step.
pub fn type_label(import_type: ImportType) -> &'static str {
    match import_type {
        ImportType::Final => "final",
        _ => "pre",
    }
}

/// The `result` label of a step's end status.
fn result_label(status: MigrationStatus) -> &'static str {
    use MigrationStatus::*;
    match status {
        PreImportComplete | ImportComplete => "complete",
        PreImportCanceled | ImportCanceled => "canceled",
        PreImportFailed | ImportFailed => "failed",
        _ => "other",
    }
}

impl ImporterMetrics {
    /// The metrics, registered in `registry`, with every step type and result at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "import_steps_in_flight",
            "Import steps running on this importer, by type (pre, final)",
            m.in_flight.clone(),
        );
        registry.register(
            "import_steps",
            "Import steps ended, by type and result (complete, failed, canceled)",
            m.steps.clone(),
        );
        registry.register(
            "import_step_duration_seconds",
            "Time an import step took, by type and result",
            m.duration.clone(),
        );
        registry.register(
            "importer_slots",
            "This importer's step slots: busy, and the total (FERRY_MAX_CONCURRENT_IMPORTS)",
            m.slots.clone(),
        );
        registry.register(
            "import_blobs_copied",
            "Blobs copied into the new prefix, by step type",
            m.blobs_copied.clone(),
        );
        registry.register(
            "import_bytes_copied",
            "Bytes copied into the new prefix, by step type",
            m.bytes_copied.clone(),
        );
        registry.register(
            "registered_namespaces",
            "Top-level namespaces with a repository registered in the metadata database",
            m.registered_namespaces.clone(),
        );
        registry.register(
            "registered_repositories",
            "Repositories registered in the metadata database (estimated above 100,000)",
            m.registered_repositories.clone(),
        );
        registry.register(
            "gc_runs",
            "Collections of abandoned copies (ferryctl gc) ended, by mode (dry_run, remove) and \
             result (complete, stopped)",
            m.gc_runs.clone(),
        );
        registry.register(
            "gc_removed_objects",
            "Abandoned copies removed from under gitlab/",
            m.gc_removed_objects.clone(),
        );
        registry.register(
            "gc_removed_bytes",
            "Bytes of the abandoned copies removed from under gitlab/",
            m.gc_removed_bytes.clone(),
        );
        registry.register(
            "gc_abandoned_bytes",
            "Bytes of abandoned copies the last complete collection on this importer left in \
             place: all a dry run found, what a removing run failed to remove",
            m.gc_abandoned_bytes.clone(),
        );
        registry.register(
            "gc_last_complete_timestamp_seconds",
            "When the last complete collection on this importer ended (Unix time; 0: none yet)",
            m.gc_last_complete.clone(),
        );
        for mode in GC_MODES {
            for result in GC_RESULTS {
                m.gc_runs
                    .get_or_create(&[("mode", mode.to_owned()), ("result", result.to_owned())])
                    .inc_by(0);
            }
        }
        for kind in STEP_TYPES {
            let by_type = [("type", kind.to_owned())];
            drop(m.in_flight.get_or_create(&by_type));
            m.blobs_copied.get_or_create(&by_type).inc_by(0);
            m.bytes_copied.get_or_create(&by_type).inc_by(0);
            for result in STEP_RESULTS {
                let labels = [("type", kind.to_owned()), ("result", result.to_owned())];
                m.steps.get_or_create(&labels).inc_by(0);
                drop(m.duration.get_or_create(&labels));
            }
        }
        m
    }

    /// Sets what the metadata database holds: top-level namespaces and repositories.
    pub fn registered(&self, counts: &crate::store::RegisteredCounts) {
        self.registered_namespaces.set(counts.namespaces);
        self.registered_repositories.set(counts.repositories);
    }

    /// A collection of abandoned copies ended with `counts`; `complete` when it went through
    /// the whole listing.
    pub fn collection_ended(&self, counts: &GarbageCounts, dry_run: bool, complete: bool) {
        let labels = [
            ("mode", GC_MODES[usize::from(!dry_run)].to_owned()),
            ("result", GC_RESULTS[usize::from(!complete)].to_owned()),
        ];
        self.gc_runs.get_or_create(&labels).inc();
        self.gc_removed_objects.inc_by(counts.removed);
        self.gc_removed_bytes.inc_by(counts.bytes_removed);
        if complete {
            let left = if dry_run {
                counts.candidate_bytes
            } else {
                counts.bytes_failed
            };
            self.gc_abandoned_bytes
                .set(i64::try_from(left).unwrap_or(i64::MAX));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            self.gc_last_complete.set(now);
        }
    }

    /// Sets the slot gauges.
    pub fn slots(&self, busy: usize, total: usize) {
        let set = |state: &str, value: usize| {
            self.slots
                .get_or_create(&[("state", state.to_owned())])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set("busy", busy);
        set("total", total);
    }

    /// A step started.
    pub fn step_started(&self, import_type: ImportType) {
        self.in_flight
            .get_or_create(&[("type", type_label(import_type).to_owned())])
            .inc();
    }

    /// A step ended with `status` after `seconds`, having done `stats`.
    pub fn step_ended(
        &self,
        import_type: ImportType,
        status: MigrationStatus,
        seconds: f64,
        stats: &ImportStats,
    ) {
        let kind = type_label(import_type).to_owned();
        self.in_flight
            .get_or_create(&[("type", kind.clone())])
            .dec();
        let labels = [
            ("type", kind.clone()),
            ("result", result_label(status).to_owned()),
        ];
        self.steps.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
        self.blobs_copied
            .get_or_create(&[("type", kind.clone())])
            .inc_by(stats.blobs_copied);
        self.bytes_copied
            .get_or_create(&[("type", kind)])
            .inc_by(stats.bytes_copied);
    }
}

/// Code paths of the registry endpoint (`code_path` label).
pub const CODE_PATHS: [&str; 2] = ["old", "new"];
/// Endpoints of the registry endpoint that name a repository (`endpoint` label).
pub const REPOSITORY_ENDPOINTS: [&str; 3] = ["manifest", "blob", "tags"];

/// Metrics of the read-only registry endpoint: requests by the code path that answered them,
/// the dashboard's "traffic share of the new code path".
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    requests: Family<[Label; 3], Counter>,
    duration: Histograms<[Label; 1]>,
    blob_bytes: Family<[Label; 1], Counter>,
}

impl RegistryMetrics {
    /// The metrics, registered in `registry`, with every code path and endpoint at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(ferry_shared::metrics::latency_histogram),
            blob_bytes: Family::default(),
        };
        registry.register(
            "registry_requests",
            "Registry endpoint requests, by code path (old, new, none), endpoint and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "registry_request_duration_seconds",
            "Time to the registry endpoint's response headers, by endpoint",
            m.duration.clone(),
        );
        registry.register(
            "registry_blob_bytes",
            "Blob bytes the registry endpoint answered with, by code path",
            m.blob_bytes.clone(),
        );
        for path in CODE_PATHS {
            m.blob_bytes
                .get_or_create(&[("code_path", path.to_owned())])
                .inc_by(0);
            for endpoint in REPOSITORY_ENDPOINTS {
                m.requests
                    .get_or_create(&[
                        ("code_path", path.to_owned()),
                        ("endpoint", endpoint.to_owned()),
                        ("code", "200".to_owned()),
                    ])
                    .inc_by(0);
            }
        }
        m
    }

    /// A request to `endpoint` answered by `code_path` with `status` after `seconds`.
    pub fn request(&self, code_path: &str, endpoint: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("code_path", code_path.to_owned()),
                ("endpoint", endpoint.to_owned()),
                ("code", status.to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&[("endpoint", endpoint.to_owned())])
            .observe(seconds);
    }

    /// A blob of `bytes` answered by `code_path`.
    pub fn blob_bytes(&self, code_path: &str, bytes: u64) {
        self.blob_bytes
            .get_or_create(&[("code_path", code_path.to_owned())])
            .inc_by(bytes);
    }
}
