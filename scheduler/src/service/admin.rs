//! The operator calls of the internal API: register, start now, cancel, list, preview, writable.

use ferry_proto::scheduler::v1::{
    DoubleCheckReport, QueuePreview, Repository, RepositoryList, WritableAnswer,
};
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::MaybeStep;

use super::{Scheduler, SchedulerService};
use crate::error::SchedulerError;
use crate::importers::CancelResult;
use crate::inventory::new_repository;
use crate::state::{MigrationState, SkipReason};

fn parse(path: &str) -> Result<RepositoryPath, SchedulerError> {
    RepositoryPath::parse(path).map_err(|e| SchedulerError::InvalidArgument(e.to_string()))
}

impl Scheduler {
    pub(super) async fn do_clear_lease(
        &self,
        holder: &str,
    ) -> Result<ferry_proto::scheduler::v1::LeaseStatus, SchedulerError> {
        if holder.is_empty() {
            return Err(SchedulerError::InvalidArgument(
                "holder is required: give the one `ferryctl lease show` prints".into(),
            ));
        }
        if !self.lease.clear_if_holder(holder).await? {
            let now = SchedulerService::lease(self).await?;
            let who = if now.held {
                now.holder
            } else {
                "nobody".to_owned()
            };
            return Err(SchedulerError::FailedPrecondition(format!(
                "{holder} does not hold the enqueue lease ({who} does): nothing cleared"
            )));
        }
        tracing::warn!(holder, "enqueue lease cleared by an operator");
        SchedulerService::lease(self).await
    }

    pub(super) async fn do_dedup(
        &self,
    ) -> Result<ferry_proto::scheduler::v1::DedupStatus, SchedulerError> {
        let pending = self.triggers.pending().await?;
        Ok(ferry_proto::scheduler::v1::DedupStatus {
            pending: pending.is_some(),
            ttl_left_ms: pending.as_ref().map_or(0, |(_, ttl)| *ttl),
            owner: pending.map(|(owner, _)| owner).unwrap_or_default(),
            deduplicated_triggers: self.triggers.deduplicated(),
        })
    }

    pub(super) async fn do_clear_dedup(
        &self,
    ) -> Result<ferry_proto::scheduler::v1::DedupStatus, SchedulerError> {
        self.triggers.consume().await?;
        tracing::warn!("pending enqueue trigger cleared by an operator");
        self.wake_enqueuer().await;
        self.do_dedup().await
    }

    /// The repository's row, or NOT_FOUND.
    pub(super) async fn record(
        &self,
        path: &str,
    ) -> Result<crate::store::RepositoryRecord, SchedulerError> {
        self.store
            .repository(path)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(path.to_owned()))
    }

    pub(super) async fn do_register(
        &self,
        path: &str,
        on_new_platform: bool,
    ) -> Result<Repository, SchedulerError> {
        let path = parse(path)?;
        let record = self
            .store
            .register_one(
                &new_repository(&path, self.project_segments),
                on_new_platform,
            )
            .await?;
        tracing::info!(repository = %path, on_new_platform, state = %record.migration_state, "repository registered");
        self.wake_enqueuer().await;
        Ok(record.into())
    }

    pub(super) async fn do_start_now(&self, path: &str) -> Result<Repository, SchedulerError> {
        let record = self.record(path).await?;
        if !self.store.prioritize(path).await? {
            return Err(SchedulerError::FailedPrecondition(format!(
                "{path} is {}: only a default, aborted or skipped repository can be started",
                record.migration_state
            )));
        }
        self.wake_enqueuer().await;
        let record = self.record(path).await?;
        Ok(record.into())
    }

    /// Cancels a repository's migration, linearized with its step's end: the cancel is
    /// recorded at the repository's current step first (no new step is claimed from then on),
    /// then the importer cancels that step. Either the cancel wins (both sides end canceled:
    /// `import_skipped` here) or the step's final import had committed first (both sides end
    /// done, and the cancel is refused with `FAILED_PRECONDITION`). See `docs/operations.md`.
    pub(super) async fn do_cancel(
        &self,
        path: &str,
        force: bool,
    ) -> Result<Repository, SchedulerError> {
        let reason = if force {
            SkipReason::MigrationForcedCanceled
        } else {
            SkipReason::MigrationCanceled
        };
        // The step moves on only by a claim made before the request landed: a few tries.
        let mut tries = 0;
        let record = loop {
            let record = self.record(path).await?;
            if matches!(
                record.migration_state,
                MigrationState::ImportDone | MigrationState::ImportSkipped
            ) {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "{path} is {}: nothing to cancel",
                    record.migration_state
                )));
            }
            if self
                .store
                .request_cancel(path, record.migration_step, reason)
                .await?
            {
                break record;
            }
            tries += 1;
            if tries == 5 {
                return Err(SchedulerError::Unavailable(format!(
                    "{path} kept moving on to new steps; try again"
                )));
            }
        };
        let step = record.migration_step;
        if record.migration_state != MigrationState::Default {
            // Unlock the importer side first: a step there stops, and its status becomes canceled.
            match self.importers.cancel_step(path, step, force).await {
                CancelResult::Canceled(status) => {
                    tracing::info!(
                        repository = path,
                        step = step.wire(),
                        status = status.as_db_str(),
                        "importer step canceled"
                    );
                }
                CancelResult::Completed => {
                    self.store
                        .finish_import_as(record.id, step, None, None)
                        .await?;
                    tracing::info!(
                        repository = path,
                        step = step.wire(),
                        "the final import completed before the cancel"
                    );
                    self.wake_enqueuer().await;
                    return Err(SchedulerError::FailedPrecondition(format!(
                        "{path} is import_done: its final import completed before the cancel"
                    )));
                }
                CancelResult::Unreachable(error) => {
                    self.store.withdraw_cancel(path, step).await?;
                    return Err(SchedulerError::Unavailable(format!(
                        "cannot cancel {path}: {error}"
                    )));
                }
                // Nothing in progress there (never started, or ended without completing): fine.
                CancelResult::NotCanceled(answer) => {
                    tracing::info!(repository = path, step = step.wire(), %answer, "nothing to cancel on the importer");
                }
            }
        }
        // Done here unless the step's own canceled end already skipped it (same reason).
        self.store.cancel_migration(path, step, reason).await?;
        self.wake_enqueuer().await;
        let record = self.record(path).await?;
        Ok(record.into())
    }

    pub(super) async fn do_list(
        &self,
        state: &str,
        limit: u32,
        after: &str,
    ) -> Result<RepositoryList, SchedulerError> {
        let limit = match limit {
            0 => 100,
            1..=1000 => i64::from(limit),
            _ => {
                return Err(SchedulerError::InvalidArgument(format!(
                    "limit must be 1..1000, not {limit}"
                )));
            }
        };
        let state = match MigrationState::parse(state) {
            _ if state.is_empty() => None,
            Some(state) => Some(state),
            None => {
                let names: Vec<&str> = MigrationState::ALL.iter().map(|s| s.as_str()).collect();
                return Err(SchedulerError::InvalidArgument(format!(
                    "state must be one of {} (or empty for all)",
                    names.join(", ")
                )));
            }
        };
        let records = self.store.list_repositories(state, after, limit).await?;
        let next_after = if records.len() as i64 == limit {
            records.last().map(|r| r.path.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(RepositoryList {
            repositories: records.into_iter().map(Repository::from).collect(),
            next_after,
        })
    }

    pub(super) async fn do_preview(&self) -> Result<QueuePreview, SchedulerError> {
        let head = self.store.preview_queue().await?;
        Ok(QueuePreview {
            next_ready: head.next_ready.map(Repository::from),
            next_aborted: head.next_aborted.map(Repository::from),
            ready: u64::try_from(head.ready).unwrap_or(0),
        })
    }

    pub(super) async fn do_check_writable(
        &self,
        path: &str,
    ) -> Result<WritableAnswer, SchedulerError> {
        let record = self.record(path).await?;
        let writable = record.migration_state != MigrationState::Importing;
        Ok(WritableAnswer {
            writable,
            reason: if writable {
                String::new()
            } else {
                "Your repository is currently being migrated to a new platform and writes are temporarily disabled".to_owned()
            },
            migration_state: record.migration_state.to_string(),
        })
    }

    pub(super) async fn do_double_check(
        &self,
        since_hours: u32,
        dry_run: bool,
    ) -> Result<DoubleCheckReport, SchedulerError> {
        crate::limits::SINCE_HOURS.require(since_hours)?;
        let since =
            (chrono::Utc::now() - chrono::Duration::hours(i64::from(since_hours))).to_rfc3339();
        let mut report = DoubleCheckReport {
            since: since.clone(),
            ..DoubleCheckReport::default()
        };
        let mut last = String::new();
        loop {
            let page = self
                .importers
                .list_created_since(&since, DOUBLE_CHECK_PAGE, &last)
                .await
                .map_err(|error| {
                    SchedulerError::Unavailable(format!("listing repositories: {error}"))
                })?;
            let paths: Vec<String> = page.repositories.iter().map(|r| r.path.clone()).collect();
            report.checked += paths.len() as u64;
            let existing = self.store.existing_paths(&paths).await?;
            let missing: Vec<_> = paths
                .iter()
                .filter(|path| !existing.contains(*path))
                .filter_map(|path| RepositoryPath::parse(path).ok())
                .map(|path| new_repository(&path, self.project_segments))
                .collect();
            report.missing += missing.len() as u64;
            let room = 100usize.saturating_sub(report.missing_paths.len());
            report
                .missing_paths
                .extend(missing.iter().take(room).map(|r| r.path.clone()));
            if !dry_run && !missing.is_empty() {
                report.created += self.store.register_native(&missing).await?;
            }
            if page.next_last.is_empty() {
                break;
            }
            last = page.next_last;
        }
        report.last_full_repair_pass_at = self
            .store
            .last_full_repair_pass()
            .await?
            .map(|at| at.to_rfc3339())
            .unwrap_or_default();
        tracing::info!(
            since,
            checked = report.checked,
            missing = report.missing,
            created = report.created,
            dry_run,
            "double-check done"
        );
        Ok(report)
    }

    pub(super) async fn do_set_namespace_plans(
        &self,
        request: ferry_proto::scheduler::v1::SetNamespacePlansRequest,
    ) -> Result<ferry_proto::scheduler::v1::NamespacePlans, SchedulerError> {
        crate::limits::NAMESPACE_PLANS.require(request.plans.len())?;
        let mut plans = Vec::with_capacity(request.plans.len());
        for entry in request.plans {
            let namespace_ok =
                (1..=255).contains(&entry.namespace.len()) && !entry.namespace.contains('/');
            if !namespace_ok || entry.plan.len() > 255 {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{:?} → {:?}: a namespace is 1..255 characters without '/', a plan at most 255",
                    entry.namespace, entry.plan
                )));
            }
            plans.push((entry.namespace, entry.plan));
        }
        let plans = self
            .store
            .set_namespace_plans(&plans, request.replace)
            .await?;
        tracing::info!(
            namespaces = plans.len(),
            replace = request.replace,
            "namespace plans set"
        );
        self.wake_enqueuer().await;
        Ok(namespace_plans(plans))
    }

    pub(super) async fn do_namespace_plans(
        &self,
    ) -> Result<ferry_proto::scheduler::v1::NamespacePlans, SchedulerError> {
        Ok(namespace_plans(self.store.namespace_plans().await?))
    }
}

fn namespace_plans(plans: Vec<(String, String)>) -> ferry_proto::scheduler::v1::NamespacePlans {
    ferry_proto::scheduler::v1::NamespacePlans {
        plans: plans
            .into_iter()
            .map(|(namespace, plan)| ferry_proto::scheduler::v1::NamespacePlan { namespace, plan })
            .collect(),
    }
}

/// Repositories asked for per page by the double-check.
const DOUBLE_CHECK_PAGE: u32 = 1000;
