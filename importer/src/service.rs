//! The import service: the domain side of `ferry.importer.v1.Importer`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_proto::importer::v1::{
    CancelImportResponse, Capacity, CheckWritableResponse, CollectGarbageEvent,
    GetImportStatusResponse, ListSubRepositoriesBatchRequest, MigrationStatusList, RepositoryPage,
    StartImportResponse, StartOutcome, SubRepositoriesBatchPage, VerifyRepositoryEvent,
};
use ferry_shared::ids::RepositoryPath;
use ferry_shared::lifecycle::Tasks;
use ferry_shared::step::{MaybeStep, Step};
use ferry_shared::storage::BlobStore;
use tracing::Instrument as _;

use crate::error::{ApiError, StepError};
use crate::listing;
use crate::metrics::ImporterMetrics;
use crate::notifier::Notifier;
use crate::plan;
use crate::running::RunningSteps;
use crate::store::{CancelOutcome, ClaimedStep, MetadataStore, StepClaim};

mod admission;
mod copy_flights;
mod gc;
mod statuses;
mod step;
mod verify;

pub use statuses::MAX_STATUS_PATHS;

use admission::{claimable_from, refusal};

/// What the importer offers, independent of gRPC. Steps come as the wire has them (0: none);
/// one above `i64::MAX` is refused as an invalid argument.
#[async_trait]
pub trait ImportService: Send + Sync + 'static {
    /// Starts a step in the background, answering at once.
    async fn start_import(
        &self,
        path: &str,
        import_type: ImportType,
        fencing_token: u64,
        step: u64,
    ) -> Result<StartImportResponse, ApiError>;

    /// The repository's status in the metadata database.
    async fn import_status(&self, path: &str) -> Result<GetImportStatusResponse, ApiError>;

    /// The metadata database's record of each of `paths` (1..[`MAX_STATUS_PATHS`]), in order.
    async fn migration_statuses(&self, paths: &[String]) -> Result<MigrationStatusList, ApiError>;

    /// Cancels the repository's step `step` (0: any; see the proto for the rules).
    async fn cancel_import(
        &self,
        path: &str,
        step: u64,
        force: bool,
    ) -> Result<CancelImportResponse, ApiError>;

    /// How busy this importer is.
    fn capacity(&self) -> Capacity;

    /// Whether the repository accepts writes: not while its final import runs.
    async fn check_writable(&self, path: &str) -> Result<CheckWritableResponse, ApiError>;

    /// One page of the tagged repositories at or under `path`.
    async fn list_sub_repositories(
        &self,
        path: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError>;

    /// One page of the tagged repositories at or under each of several paths.
    async fn list_sub_repositories_batch(
        &self,
        request: &ListSubRepositoriesBatchRequest,
    ) -> Result<SubRepositoriesBatchPage, ApiError>;

    /// One page of the tagged repositories created at or after `since` (RFC 3339).
    async fn list_repositories_created_since(
        &self,
        since: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError>;

    /// Starts comparing a migrated repository with its source; its differences, then a summary,
    /// arrive on the returned channel. Refused when this importer runs its maximum of
    /// verifications.
    async fn verify_repository(
        &self,
        path: &str,
        deep: bool,
    ) -> Result<mpsc::Receiver<VerifyRepositoryEvent>, ApiError>;

    /// Starts removing the copies under `gitlab/` that no registered blob refers to and that
    /// are older than the window (`older_than_secs`, 0: the default; see [`crate::gc::window`]),
    /// or only listing them with `dry_run`; candidates, progress and a summary arrive on the
    /// returned channel. Refused while a collection runs here.
    async fn collect_garbage(
        &self,
        older_than_secs: u64,
        dry_run: bool,
    ) -> Result<mpsc::Receiver<CollectGarbageEvent>, ApiError>;
}

/// Limits of import steps.
#[derive(Debug, Clone)]
pub struct StepLimits {
    /// Imports run at once on this importer.
    pub max_concurrent_imports: usize,
    /// Time limit of a pre-import.
    pub pre_import_timeout: Duration,
    /// Time limit of a final import.
    pub import_timeout: Duration,
    /// Blob copies in flight per import.
    pub copy_concurrency: usize,
    /// Tags (and their manifests) looked up at once per import.
    pub tag_concurrency: usize,
    /// How often a running step checks the database for a cancellation made elsewhere.
    pub cancel_poll: Duration,
}

/// The importer.
#[derive(Debug, Clone)]
pub struct Importer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    notifier: Option<Notifier>,
    limits: StepLimits,
    permits: Arc<Semaphore>,
    /// Verifications run at once (as many as steps, apart from them).
    verifications: Arc<Semaphore>,
    /// Garbage collections run at once: one.
    collections: Arc<Semaphore>,
    /// Blob copies in flight, so that steps needing the same blob at once copy it once.
    copy_flights: Arc<copy_flights::CopyFlights>,
    running: Arc<RunningSteps>,
    /// Background steps, so shutdown can wait for them to record their end and notify (the
    /// service's tasks when it runs as one, see [`Importer::with_tasks`]); once they are told
    /// to stop, starts are refused.
    tasks: Tasks,
    metrics: ImporterMetrics,
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The repository's status afterwards.
    pub status: MigrationStatus,
    /// The reason of a failure, else a description of the status.
    pub detail: String,
    /// What the step did.
    pub stats: ferry_proto::common::v1::ImportStats,
}

/// The statuses one kind of step moves through.
#[derive(Debug, Clone, Copy)]
struct StepStatuses {
    in_progress: MigrationStatus,
    complete: MigrationStatus,
    failed: MigrationStatus,
}

fn statuses(import_type: ImportType) -> StepStatuses {
    match import_type {
        ImportType::Final => StepStatuses {
            in_progress: MigrationStatus::ImportInProgress,
            complete: MigrationStatus::ImportComplete,
            failed: MigrationStatus::ImportFailed,
        },
        _ => StepStatuses {
            in_progress: MigrationStatus::PreImportInProgress,
            complete: MigrationStatus::PreImportComplete,
            failed: MigrationStatus::PreImportFailed,
        },
    }
}

/// The span of one step: every log line of the step carries its repository, its type, its number
/// and its correlation id (the scheduler's log lines of the step carry the same), and its trace
/// continues the caller's.
fn step_span(path: &RepositoryPath, import_type: ImportType, step: Step) -> tracing::Span {
    tracing::info_span!(
        "import.step",
        repository = %path,
        import_type = crate::metrics::type_label(import_type),
        step = step.get(),
        correlation_id = %step.correlation_id(path.as_str()),
    )
}

/// Describes a status for `GetImportStatus` when no error is recorded.
pub fn status_detail(status: MigrationStatus) -> &'static str {
    match status {
        MigrationStatus::ImportComplete => "final import completed successfully",
        MigrationStatus::PreImportComplete => "pre import completed successfully",
        MigrationStatus::PreImportCanceled => "pre import was canceled manually",
        MigrationStatus::ImportCanceled => "final import was canceled manually",
        other => other.as_db_str(),
    }
}

impl Importer {
    /// An importer over `storage` and `db` that reports each step's end to `notifier` (none in the
    /// one-shot mode, which runs without a scheduler).
    pub fn new(
        storage: Arc<dyn BlobStore>,
        db: MetadataStore,
        notifier: Option<Notifier>,
        limits: StepLimits,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_imports));
        let verifications = Arc::new(Semaphore::new(limits.max_concurrent_imports));
        Self {
            inner: Arc::new(Inner {
                storage,
                db,
                notifier,
                limits,
                permits,
                verifications,
                collections: Arc::new(Semaphore::new(1)),
                copy_flights: Arc::default(),
                running: Arc::default(),
                tasks: Tasks::new(),
                metrics: ImporterMetrics::default(),
            }),
        }
    }

    /// The importer, reporting to `metrics` (call right after [`Self::new`]).
    pub fn with_metrics(mut self, metrics: ImporterMetrics) -> Self {
        metrics.slots(0, self.inner.limits.max_concurrent_imports);
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = metrics;
        }
        self
    }

    /// The importer, running its steps on the service's `tasks` and stopping with them (call
    /// right after [`Self::new`]).
    pub fn with_tasks(mut self, tasks: &Tasks) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tasks = tasks.clone();
        }
        self
    }

    /// Runs a step in the calling task, waiting for a free slot, and returns how it ended (the
    /// one-shot mode). A repository already on the new platform is reported as such.
    pub async fn import_now(
        &self,
        path: &str,
        import_type: ImportType,
    ) -> Result<StepOutcome, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        let (claimed, listing) = match self.claim(&path, import_type, 0, None).await? {
            Claim::Step(claimed, listing) => (claimed, listing.map(|listing| *listing)),
            Claim::AlreadyImported(status) => {
                let detail = "already on the new platform".to_owned();
                return Ok(StepOutcome {
                    status,
                    detail,
                    stats: Default::default(),
                });
            }
            // An unnumbered start never finds its own step running.
            Claim::AlreadyRunning(step) => {
                return Err(ApiError::StaleStep {
                    path: path.to_string(),
                    step,
                    current: step,
                });
            }
        };
        let running = self.inner.running.register(&path, claimed.step);
        let span = step_span(&path, import_type, claimed.step);
        Ok(self
            .clone()
            .run_step(path, (claimed, listing), import_type, permit, running)
            .instrument(span)
            .await)
    }

    /// Starts shutting down: new starts are refused (`UNAVAILABLE`) and every running step is
    /// stopped, to be recorded as failed with reason `shutdown` and handed back to the scheduler
    /// (which retries it without counting a retry).
    pub fn begin_shutdown(&self) {
        self.inner.tasks.stop();
        let stopped = self.inner.running.stop_all();
        tracing::info!(stopped, "importer shutting down; running steps stopped");
    }

    /// Waits up to `grace` for stopped steps to record their end and notify the scheduler.
    /// Returns false if some were still running when the grace period ended.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.tasks.stop_and_wait(grace).await.is_ok()
    }

    /// This importer's load: steps running, the limit, whether it is shutting down.
    pub fn capacity(&self) -> Capacity {
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Capacity {
            in_flight: as_u32(self.in_flight()),
            max_concurrent_imports: as_u32(self.inner.limits.max_concurrent_imports),
            shutting_down: self.inner.tasks.is_stopping(),
        }
    }

    /// Steps running on this importer now (each holds one of `max_concurrent_imports` slots until
    /// its end status is written).
    pub fn in_flight(&self) -> usize {
        self.inner.limits.max_concurrent_imports - self.inner.permits.available_permits()
    }

    /// Claims the repository for the step, after checking it exists in old storage: one
    /// statement on the way that succeeds. When the claim is refused, or old storage does not
    /// hold the repository, the row is read for the reason; its answer comes first. The check
    /// is the first page of the listing the step needs ([`plan::SourceListing`]), handed on to
    /// it; only when that page cannot tell (a long listing) is the tags directory looked at.
    async fn claim(
        &self,
        path: &RepositoryPath,
        import_type: ImportType,
        fence: u64,
        step: Option<Step>,
    ) -> Result<Claim, ApiError> {
        let storage = self.inner.storage.as_ref();
        let scope = match import_type {
            ImportType::Final => plan::ListingScope::Tags,
            _ => plan::ListingScope::Links,
        };
        let (listing, in_old_storage) = match plan::SourceListing::begin(storage, path, scope).await
        {
            Ok(listing) => {
                let exists = match listing.has_tags() {
                    Some(exists) => Ok(exists),
                    None => plan::exists_in_old_storage(storage, path).await,
                };
                (Some(Box::new(listing)), exists)
            }
            Err(StepError::Storage(error)) => (None, Err(error)),
            // Something is there but broken (a tag directory that names no tag): the step
            // lists again and fails with the reason.
            Err(_) => (None, Ok(true)),
        };
        if matches!(in_old_storage, Ok(true)) {
            let is_final = import_type == ImportType::Final;
            let claim = StepClaim {
                in_progress: statuses(import_type).in_progress,
                from: claimable_from(import_type, step.is_some()),
                create: !is_final,
                fence,
                step,
            };
            if let Some(claimed) = self.inner.db.begin_step(path, &claim).await? {
                return Ok(Claim::Step(claimed, listing));
            }
        }
        let row = self.inner.db.repository(path).await?;
        if let Some(refused) = refusal(path, row.as_ref(), import_type, fence, step)? {
            return Ok(refused);
        }
        if !in_old_storage? {
            return Err(ApiError::NotFound(path.to_string()));
        }
        // Nothing refuses it now: another actor changed the row between the two statements.
        Err(match import_type {
            ImportType::Final => ApiError::ImportInProgress(path.to_string()),
            _ => ApiError::PreImportInProgress(path.to_string()),
        })
    }
}

/// What a start found.
enum Claim {
    /// The repository is claimed for the step, with the listing the check began (none when it
    /// failed: the step lists again).
    Step(ClaimedStep, Option<Box<plan::SourceListing>>),
    /// It is already on the new platform (`native` or `import_complete`); nothing was claimed.
    AlreadyImported(MigrationStatus),
    /// The start's step already holds the repository (an earlier start of it was accepted, here
    /// or by another importer).
    AlreadyRunning(Step),
}

#[async_trait]
impl ImportService for Importer {
    async fn start_import(
        &self,
        path: &str,
        import_type: ImportType,
        fencing_token: u64,
        step: u64,
    ) -> Result<StartImportResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if self.inner.tasks.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        if import_type == ImportType::Unspecified {
            return Err(ApiError::InvalidArgument(
                "import_type must be PRE or FINAL".into(),
            ));
        }
        let step = Step::from_wire(step)?;
        let permit = Arc::clone(&self.inner.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyImports(self.inner.limits.max_concurrent_imports))?;
        let (claimed, listing) = match self.claim(&path, import_type, fencing_token, step).await? {
            Claim::Step(claimed, listing) => (claimed, listing.map(|listing| *listing)),
            Claim::AlreadyImported(status) => {
                drop(permit);
                return Ok(StartImportResponse {
                    outcome: StartOutcome::AlreadyImported.into(),
                    status: status.into(),
                    capacity: Some(self.capacity()),
                    accepted_at_unix_micros: 0,
                    step: step.wire(),
                });
            }
            Claim::AlreadyRunning(step) => {
                drop(permit);
                tracing::info!(repository = %path, ?import_type, step = step.get(), "import step already running");
                return Ok(StartImportResponse {
                    outcome: StartOutcome::AlreadyRunning.into(),
                    status: statuses(import_type).in_progress.into(),
                    capacity: Some(self.capacity()),
                    accepted_at_unix_micros: 0,
                    step: step.wire(),
                });
            }
        };
        let accepted_at = chrono::Utc::now();
        tracing::info!(repository = %path, ?import_type, fencing_token, step = claimed.step.get(), "import step accepted");
        // Registered before the task starts, so a cancel or shutdown right after this answer
        // always reaches the step.
        let running = self.inner.running.register(&path, claimed.step);
        let span = step_span(&path, import_type, claimed.step);
        let step = self
            .clone()
            .run_step(path, (claimed, listing), import_type, permit, running)
            .instrument(span);
        self.inner.tasks.spawn("import step", |_stop| async move {
            step.await;
        });
        Ok(StartImportResponse {
            outcome: StartOutcome::Accepted.into(),
            status: statuses(import_type).in_progress.into(),
            capacity: Some(self.capacity()),
            accepted_at_unix_micros: accepted_at.timestamp_micros(),
            step: claimed.step.wire(),
        })
    }

    async fn cancel_import(
        &self,
        path: &str,
        step: u64,
        force: bool,
    ) -> Result<CancelImportResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let step = Step::from_wire(step)?;
        match self.inner.db.cancel(&path, step, force).await? {
            CancelOutcome::NoRow => Err(ApiError::NotFound(path.to_string())),
            CancelOutcome::Refused { status, step } => Err(ApiError::CannotCancel {
                path: path.to_string(),
                status: status.as_db_str(),
                step,
            }),
            CancelOutcome::Canceled { status, step } => {
                let here = self.inner.running.cancel(&path, step);
                tracing::info!(repository = %path, force, step = step.wire(), status = status.as_db_str(), stopped_here = here, "import canceled");
                Ok(CancelImportResponse {
                    status: status.into(),
                    step: step.wire(),
                })
            }
        }
    }

    async fn list_sub_repositories(
        &self,
        path: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError> {
        listing::sub_repositories(&self.inner.db, path, n, last).await
    }

    async fn list_sub_repositories_batch(
        &self,
        request: &ListSubRepositoriesBatchRequest,
    ) -> Result<SubRepositoriesBatchPage, ApiError> {
        listing::sub_repositories_batch(&self.inner.db, request).await
    }

    async fn list_repositories_created_since(
        &self,
        since: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError> {
        listing::created_since(&self.inner.db, since, n, last).await
    }

    async fn verify_repository(
        &self,
        path: &str,
        deep: bool,
    ) -> Result<mpsc::Receiver<VerifyRepositoryEvent>, ApiError> {
        self.start_verification(path, deep)
    }

    async fn collect_garbage(
        &self,
        older_than_secs: u64,
        dry_run: bool,
    ) -> Result<mpsc::Receiver<CollectGarbageEvent>, ApiError> {
        self.start_collection(older_than_secs, dry_run)
    }

    fn capacity(&self) -> Capacity {
        Importer::capacity(self)
    }

    async fn check_writable(&self, path: &str) -> Result<CheckWritableResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let status = self
            .inner
            .db
            .repository(&path)
            .await?
            .map_or(MigrationStatus::Native, |r| r.status);
        let writable = status != MigrationStatus::ImportInProgress;
        Ok(CheckWritableResponse {
            writable,
            status: status.into(),
            reason: if writable {
                String::new()
            } else {
                "the repository is being migrated to a new platform; writes are disabled until its final import ends".to_owned()
            },
        })
    }

    async fn migration_statuses(&self, paths: &[String]) -> Result<MigrationStatusList, ApiError> {
        self.recorded_statuses(paths).await
    }

    async fn import_status(&self, path: &str) -> Result<GetImportStatusResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let row = self
            .inner
            .db
            .repository(&path)
            .await?
            .ok_or_else(|| ApiError::NotFound(path.to_string()))?;
        let running_step = self.inner.running.running_step(&path);
        Ok(GetImportStatusResponse {
            name: path.name().to_owned(),
            path: path.to_string(),
            status: row.status.into(),
            detail: row
                .error
                .unwrap_or_else(|| status_detail(row.status).to_owned()),
            running_here: running_step.is_some(),
            step: row.step.wire(),
            running_step: running_step.wire(),
        })
    }
}
