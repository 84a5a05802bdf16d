//! The project repair scan (part 1): for every project, count the tagged repositories the
//! registry has under it that `container_repositories` lacks, into
//! `container_registry_data_repair_details`.
//!
//! It runs on the replica holding the enqueue lease, while the `repair_enabled` flag is on, with
//! `repair_max_concurrency` workers. A sweep walks `projects` by id (keyset) from the start;
//! workers claim chunks of projects without a row by inserting `ongoing` rows (so two workers,
//! or two replicas, never take the same project), list what the registry has under all of a
//! chunk's projects in one `ListSubRepositoriesBatch` call (paged), and stash the results; the
//! stash is written in one statement every [`ScanConfig::flush_every`] projects, and whenever a
//! worker stops: at the end, on an error, on shutdown, when the flag goes off. A claim whose
//! analysis keeps failing is deleted, so its projects return to the scan at once. A claim left
//! by a crash stays `ongoing` until `repair_stale_after` (2 hours by default) has passed, then
//! the scan takes it again. When a sweep finds no project left, the pass is recorded in
//! `repair_passes`.

pub mod restore;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use ferry_proto::importer::v1::{ListSubRepositoriesBatchRequest, SubRepositoryPosition};

use crate::importers::{ImporterError, ImporterPool};
use crate::lease::HeldLease;
use crate::metrics::RepairMetrics;
use crate::store::repair::{RepairProject, RepairResult};
use crate::store::{SchedulerStore, Settings};

/// The scan's sizes and timing.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Projects per claim (and per listing call; at most 1000).
    pub chunk: i64,
    /// Repositories per listing page.
    pub page: u32,
    /// Stashed results that trigger a write.
    pub flush_every: usize,
    /// Wait between sweeps, and between checks while the scan is off.
    pub idle: Duration,
    /// How often the scanning replica reports its rate.
    pub report_every: Duration,
    /// Attempts at one chunk's listing before the worker gives up.
    pub listing_attempts: u32,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            chunk: 1000,
            page: 10_000,
            flush_every: 5_000,
            idle: Duration::from_secs(30),
            report_every: Duration::from_secs(5),
            listing_attempts: 5,
        }
    }
}

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The scheduler database failed.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
    /// The importers kept failing to list a chunk.
    #[error("listing sub-repositories: {0}")]
    Listing(String),
}

/// What the registry has under each of a list of projects.
#[derive(Debug, Default)]
pub struct SubRepositories {
    /// Per project (same order), the tagged repositories at or under its path.
    pub found: Vec<Vec<String>>,
    /// Projects whose path the importer refused.
    pub invalid: HashSet<usize>,
}

/// Lists the tagged repositories under each project, paging through the importers'
/// `ListSubRepositoriesBatch`.
pub async fn sub_repositories(
    importers: &ImporterPool,
    projects: &[RepairProject],
    page_size: u32,
) -> Result<SubRepositories, ImporterError> {
    let mut listing = SubRepositories {
        found: vec![Vec::new(); projects.len()],
        invalid: HashSet::new(),
    };
    let paths: Vec<String> = projects.iter().map(|p| p.full_path.clone()).collect();
    let mut after: Option<SubRepositoryPosition> = None;
    loop {
        let page = importers
            .list_sub_repositories_batch(ListSubRepositoriesBatchRequest {
                paths: paths.clone(),
                n: page_size,
                after: after.take(),
            })
            .await?;
        listing
            .invalid
            .extend(page.invalid.iter().map(|i| *i as usize));
        for repository in page.repositories {
            if let Some(found) = listing.found.get_mut(repository.index as usize) {
                found.push(repository.path);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(listing),
        }
    }
}

/// The scan, as run by every replica (only the lease holder's does work).
#[derive(Debug, Clone)]
pub struct RepairScan {
    store: SchedulerStore,
    importers: Arc<ImporterPool>,
    held: tokio::sync::watch::Receiver<Option<HeldLease>>,
    identity: String,
    config: ScanConfig,
    metrics: RepairMetrics,
}

/// The sweep's shared keyset cursor.
#[derive(Debug, Default)]
struct Cursor {
    after: i64,
    fresh_done: bool,
}

impl RepairScan {
    /// A scan over the scheduler database, asking `importers`; `held` is the enqueue lease
    /// this replica holds, if any; `identity` names the replica in reports.
    pub fn new(
        store: SchedulerStore,
        importers: Arc<ImporterPool>,
        held: tokio::sync::watch::Receiver<Option<HeldLease>>,
        identity: String,
        config: ScanConfig,
        metrics: RepairMetrics,
    ) -> Self {
        Self {
            store,
            importers,
            held,
            identity,
            config,
            metrics,
        }
    }

    /// Projects this process has analyzed.
    pub fn analyzed(&self) -> u64 {
        self.metrics.analyzed.get()
    }

    /// Sweeps while allowed, until `stop`; a sweep in progress flushes what it stashed first.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.allowed().await {
                Ok(Some(settings)) => match self.sweep(&settings, &stop).await {
                    Ok(()) => {}
                    Err(error) => tracing::warn!(%error, "repair scan sweep stopped"),
                },
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "repair scan: reading settings failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config.idle) => {}
            }
        }
    }

    /// The settings, when the scan may run here now: flag on, workers above 0, lease held.
    async fn allowed(&self) -> Result<Option<Settings>, sqlx::Error> {
        let held = self.held.borrow().clone();
        let leading = match held {
            Some(held) => held.is_valid().await,
            None => false,
        };
        if !leading {
            return Ok(None);
        }
        let settings = self.store.settings().await?;
        Ok((settings.repair_enabled && settings.repair_max_concurrency > 0).then_some(settings))
    }

    /// One sweep over every project: `repair_max_concurrency` workers until none is left (then
    /// the pass is recorded) or the scan must stop.
    pub async fn sweep(
        &self,
        settings: &Settings,
        stop: &CancellationToken,
    ) -> Result<(), ScanError> {
        let cursor = Arc::new(Mutex::new(Cursor::default()));
        let halt = CancellationToken::new();
        let mut workers = JoinSet::new();
        for worker in 0..settings.repair_max_concurrency {
            let scan = self.clone();
            let (cursor, stop, halt) = (Arc::clone(&cursor), stop.clone(), halt.clone());
            let stale_after = settings.repair_stale_after;
            workers
                .spawn(async move { scan.work(worker, &cursor, stale_after, &stop, &halt).await });
        }
        let pending = self
            .store
            .repair_pending(settings.repair_stale_after)
            .await?;
        self.metrics.pending.set(pending);
        self.metrics
            .workers
            .set(i64::from(settings.repair_max_concurrency));
        let reporter = tokio::spawn(self.clone().report(halt.clone(), pending));
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(join) => {
                    first_error.get_or_insert(ScanError::Listing(format!("worker failed: {join}")));
                }
            }
        }
        halt.cancel();
        let _ = reporter.await;
        self.metrics.workers.set(0);
        self.metrics.rate.set(0.0);
        self.metrics.eta_seconds.set(0.0);
        self.metrics.pending.set(
            self.store
                .repair_pending(settings.repair_stale_after)
                .await?,
        );
        if let Some(error) = first_error {
            return Err(error);
        }
        if stop.is_cancelled() {
            return Ok(());
        }
        if let Some(pass) = self.store.finish_repair_pass_if_complete().await? {
            self.metrics.passes.inc();
            tracing::info!(
                started_at = %pass.started_at,
                projects = pass.projects,
                missing = pass.missing,
                "repair scan: full pass finished"
            );
        }
        Ok(())
    }

    /// Reports the rate every `report_every` until `halt`, and estimates what is left from the
    /// `pending` count the sweep started with. At `halt` it reports once more, with the sweep's
    /// whole rate, so a sweep shorter than `report_every` still names its scanner.
    async fn report(self, halt: CancellationToken, pending: i64) {
        let start = self.analyzed();
        let began = Instant::now();
        let mut last = (began, start);
        loop {
            tokio::select! {
                () = halt.cancelled() => {
                    let seconds = began.elapsed().as_secs_f64();
                    if seconds > 0.0 {
                        self.record_rate((self.analyzed() - start) as f64 / seconds).await;
                    }
                    return;
                }
                () = tokio::time::sleep(self.config.report_every) => {}
            }
            let now = (Instant::now(), self.analyzed());
            let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
            last = now;
            let left = (pending - i64::try_from(now.1 - start).unwrap_or(i64::MAX)).max(0);
            let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
            self.metrics.rate.set(rate);
            self.metrics.pending.set(left);
            self.metrics.eta_seconds.set(eta);
            tracing::info!(
                analyzed = now.1,
                left,
                projects_per_second = rate.round(),
                eta_seconds = eta.round(),
                "repair scan progress"
            );
            self.record_rate(rate).await;
        }
    }

    /// Records this replica as the scanner, at `rate` projects a second.
    async fn record_rate(&self, rate: f64) {
        if let Err(error) = self.store.report_repair_scan(&self.identity, rate).await {
            tracing::warn!(%error, "repair scan: report failed");
        }
    }

    /// Whether worker `worker` should go on: not stopped, and the scan still allowed for it.
    async fn keep_going(&self, worker: i32, stop: &CancellationToken) -> Result<bool, sqlx::Error> {
        if stop.is_cancelled() {
            return Ok(false);
        }
        Ok(self
            .allowed()
            .await?
            .is_some_and(|s| worker < s.repair_max_concurrency))
    }

    /// One worker: claim, list, stash, flush; flushes whatever it stashed however it ends.
    async fn work(
        &self,
        worker: i32,
        cursor: &Mutex<Cursor>,
        stale_after: Duration,
        stop: &CancellationToken,
        halt: &CancellationToken,
    ) -> Result<(), ScanError> {
        let mut stash: Vec<RepairResult> = Vec::new();
        let result = self
            .fill(worker, cursor, stale_after, stop, halt, &mut stash)
            .await;
        if result.is_err() {
            halt.cancel();
        }
        let flushed = self.flush(&mut stash).await;
        result?;
        flushed?;
        Ok(())
    }

    async fn fill(
        &self,
        worker: i32,
        cursor: &Mutex<Cursor>,
        stale_after: Duration,
        stop: &CancellationToken,
        halt: &CancellationToken,
        stash: &mut Vec<RepairResult>,
    ) -> Result<(), ScanError> {
        while !halt.is_cancelled() && self.keep_going(worker, stop).await? {
            let projects = self.claim(cursor, stale_after).await?;
            if projects.is_empty() {
                return Ok(());
            }
            match self.analyze_with_retries(&projects, stop).await {
                Ok(results) => {
                    self.count(&results);
                    stash.extend(results);
                    if stash.len() >= self.config.flush_every {
                        self.flush(stash).await?;
                    }
                }
                Err(error) => {
                    let ids: Vec<i64> = projects.iter().map(|p| p.id).collect();
                    self.store.release_repairs(&ids).await?;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// The next chunk: projects without a row after the cursor, then stale claims.
    async fn claim(
        &self,
        cursor: &Mutex<Cursor>,
        stale_after: Duration,
    ) -> Result<Vec<RepairProject>, sqlx::Error> {
        let mut cursor = cursor.lock().await;
        while !cursor.fresh_done {
            let claim = self
                .store
                .claim_repair_projects(cursor.after, self.config.chunk)
                .await?;
            match claim.scanned_to {
                None => cursor.fresh_done = true,
                Some(to) => {
                    cursor.after = to;
                    if !claim.projects.is_empty() {
                        self.store.begin_repair_pass().await?;
                        return Ok(claim.projects);
                    }
                }
            }
        }
        self.store
            .claim_stale_repairs(stale_after, self.config.chunk)
            .await
    }

    async fn analyze_with_retries(
        &self,
        projects: &[RepairProject],
        stop: &CancellationToken,
    ) -> Result<Vec<RepairResult>, ScanError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.analyze(projects).await {
                Ok(results) => return Ok(results),
                Err(ScanError::Listing(message)) if attempt < self.config.listing_attempts => {
                    self.metrics.listing_errors.inc();
                    tracing::warn!(
                        attempt,
                        error = message,
                        "repair scan: listing failed, retrying"
                    );
                }
                Err(error) => return Err(error),
            }
            tokio::select! {
                () = stop.cancelled() => {
                    return Err(ScanError::Listing("stopped while retrying".into()));
                }
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
            attempt += 1;
        }
    }

    /// Counts, for each project, the listed repositories the scheduler lacks.
    async fn analyze(&self, projects: &[RepairProject]) -> Result<Vec<RepairResult>, ScanError> {
        let listing = sub_repositories(&self.importers, projects, self.config.page)
            .await
            .map_err(|error| ScanError::Listing(error.to_string()))?;
        let all: Vec<String> = listing.found.iter().flatten().cloned().collect();
        let existing = if all.is_empty() {
            HashSet::new()
        } else {
            self.store.existing_paths(&all).await?
        };
        Ok(projects
            .iter()
            .zip(&listing.found)
            .enumerate()
            .map(|(i, (project, found))| {
                let missing = if listing.invalid.contains(&i) {
                    tracing::warn!(
                        project = project.full_path,
                        "repair scan: invalid project path"
                    );
                    None
                } else {
                    let count = found.iter().filter(|p| !existing.contains(*p)).count();
                    Some(i32::try_from(count).unwrap_or(i32::MAX))
                };
                RepairResult {
                    project_id: project.id,
                    missing,
                }
            })
            .collect())
    }

    fn count(&self, results: &[RepairResult]) {
        self.metrics.analyzed.inc_by(results.len() as u64);
        let failed = results.iter().filter(|r| r.missing.is_none()).count();
        self.metrics.failed.inc_by(failed as u64);
        let missing: i64 = results
            .iter()
            .filter_map(|r| r.missing)
            .map(i64::from)
            .sum();
        self.metrics
            .missing_found
            .inc_by(u64::try_from(missing).unwrap_or(0));
    }

    async fn flush(&self, stash: &mut Vec<RepairResult>) -> Result<(), sqlx::Error> {
        if stash.is_empty() {
            return Ok(());
        }
        self.store.record_repairs(stash).await?;
        stash.clear();
        Ok(())
    }
}
