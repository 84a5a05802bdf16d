//! The guard: finds steps that have run longer than `max_step_duration`, asks the importer that
//! owns each one, and repairs what it finds. It is what heals a lost completion notification, a
//! dead importer and a step that runs past its time limit. Runs only under the enqueue lease.
//!
//! For each stale step, by what the owning importer says:
//! - it runs the step and the step is within its time limit: leave it;
//! - it runs the step past its limit (`pre_import_timeout`, or tags × `pre_import_tags_rate` for a
//!   big repository; `import_timeout`): cancel it, then
//!   abort (retried later), or skip with `migration_canceled` when one more abort would reach
//!   `max_retries`;
//! - the status is in progress but no live importer runs it (the importer died or restarted), or
//!   the importer cannot be reached: force-cancel through a live importer, then abort;
//! - the step already ended: reconcile (`pre_import_complete` → pre-import done, `import_complete`
//!   → done, failed or canceled → abort, `native` → done as `native_import`).

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::step::MaybeStep;
use tracing::Instrument;

use crate::importers::{CancelResult, ImporterError, ImporterPool, StepStatus};
use crate::lease::HeldLease;
use crate::state::{MigrationState, SkipReason};
use crate::store::{Abort, RepoKey, SchedulerStore, Settings, StaleStep};

/// What one guard pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardReport {
    /// Stale steps looked at.
    pub stale: u64,
    /// Steps left alone (still running within their limit).
    pub running: u64,
    /// Steps finished from the importer's status (a lost notification).
    pub reconciled: u64,
    /// Steps canceled for running too long.
    pub canceled: u64,
    /// Steps aborted (dead importer, failure, or after a cancel).
    pub aborted: u64,
    /// Steps skipped (canceled near the retry limit).
    pub skipped: u64,
}

/// What the guard decides for one stale step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still running within its limit.
    LeaveAlone,
    /// Running past its limit: cancel, then abort or skip.
    CancelLongRunning,
    /// Nobody runs it any more, or its importer is gone: force-cancel, then abort.
    Orphaned(String),
    /// Its pre-import completed.
    FinishPreImport,
    /// Its final import completed.
    FinishImport,
    /// The repository is native on the new platform.
    Native,
    /// The step failed or was canceled, or the state cannot continue: abort with this reason.
    Abort(String),
}

impl Verdict {
    /// Every verdict's name, each a `ferry_guard_actions_total` series from start-up.
    pub const LABELS: [&'static str; 7] = [
        "leave_alone",
        "cancel_long_running",
        "orphaned",
        "finish_pre_import",
        "finish_import",
        "native",
        "abort",
    ];

    /// The verdict's name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::LeaveAlone => "leave_alone",
            Verdict::CancelLongRunning => "cancel_long_running",
            Verdict::Orphaned(_) => "orphaned",
            Verdict::FinishPreImport => "finish_pre_import",
            Verdict::FinishImport => "finish_import",
            Verdict::Native => "native",
            Verdict::Abort(_) => "abort",
        }
    }
}

/// How long `step` may run before the guard cancels it: `pre_import_limit` for a pre-import
/// (longer for many tags), `import_timeout` otherwise.
pub fn time_limit(step: &StaleStep, settings: &Settings) -> std::time::Duration {
    if step.migration_state == MigrationState::PreImporting {
        settings.pre_import_limit(step.migration_tags_count)
    } else {
        settings.import_timeout
    }
}

/// Most steps [`steps_past_time_limit`] looks at (the oldest first).
const PAST_LIMIT_SCAN: i64 = 1000;

/// Steps in flight longer than their [`time_limit`]: (pre-imports, final imports), counting at
/// most the [`PAST_LIMIT_SCAN`] oldest steps. The guard cancels such a step at its next pass,
/// so a count that stays above 0 means the guard is not doing its job.
pub async fn steps_past_time_limit(
    store: &SchedulerStore,
    settings: &Settings,
) -> Result<(usize, usize), sqlx::Error> {
    let shortest = settings.pre_import_timeout.min(settings.import_timeout);
    let steps = store.stale_steps(shortest, PAST_LIMIT_SCAN).await?;
    let past = |state: MigrationState| {
        (steps.iter())
            .filter(|s| s.migration_state == state)
            .filter(|s| s.age_seconds > time_limit(s, settings).as_secs_f64())
            .count()
    };
    Ok((
        past(MigrationState::PreImporting),
        past(MigrationState::Importing),
    ))
}

/// Decides what to do with `step` given what the importers say of it (`Err`: they could not
/// be asked, or could not tell).
pub fn verdict(
    step: &StaleStep,
    answer: Result<StepStatus, ImporterError>,
    settings: &Settings,
) -> Verdict {
    use MigrationStatus::*;
    let state = step.migration_state;
    let past_limit = step.age_seconds > time_limit(step, settings).as_secs_f64();
    let answer = match answer {
        Ok(answer) => answer,
        // The importer that accepted the step is gone.
        Err(ImporterError::Unreachable(why)) if step.migration_importer.is_some() => {
            return Verdict::Orphaned(format!("importer unreachable: {why}"));
        }
        // Nobody recorded the step's importer and one importer could not be asked: it may run
        // the step. Left alone until the step's own time limit.
        Err(ImporterError::Unreachable(why)) => {
            return if past_limit {
                Verdict::Orphaned(format!("past its time limit and {why}"))
            } else {
                Verdict::LeaveAlone
            };
        }
        Err(refused) => return Verdict::Abort(format!("status check failed: {refused}")),
    };
    let number = step.migration_step;
    match (state, answer.status) {
        (_, Native) => return Verdict::Native,
        (_, ImportComplete) => return Verdict::FinishImport,
        _ => {}
    }
    // `None`, no numbered step, is older than every step.
    if answer.step < number {
        return Verdict::Orphaned(format!(
            "step {} never reached an importer (the repository is at step {})",
            number.wire(),
            answer.step.wire()
        ));
    }
    if answer.step > number {
        return Verdict::Abort(format!(
            "the importer is at step {}, newer than the scheduler's {}",
            answer.step.wire(),
            number.wire()
        ));
    }
    match (state, answer.status) {
        (MigrationState::PreImporting, PreImportInProgress)
        | (MigrationState::Importing, ImportInProgress) => {
            if !answer.running {
                Verdict::Orphaned(format!(
                    "{} but no importer runs it",
                    answer.status.as_db_str()
                ))
            } else if past_limit {
                Verdict::CancelLongRunning
            } else {
                Verdict::LeaveAlone
            }
        }
        (MigrationState::PreImporting, PreImportComplete) => Verdict::FinishPreImport,
        (_, other) => Verdict::Abort(format!(
            "stale {state} step: importer reports {}: {}",
            other.as_db_str(),
            answer.detail
        )),
    }
}

/// The guard and what it needs.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Scheduler database.
    pub store: SchedulerStore,
    /// Importers.
    pub importers: std::sync::Arc<ImporterPool>,
    /// Where its actions are counted.
    pub metrics: crate::metrics::MigrationMetrics,
}

impl Guard {
    /// One pass over the stale steps. Stops early if the lease is lost.
    pub async fn pass(&self, held: &HeldLease) -> Result<GuardReport, sqlx::Error> {
        let settings = self.store.settings().await?;
        let limit = i64::from(settings.capacity.max(1)) * 2;
        let stale = self
            .store
            .stale_steps(settings.max_step_duration, limit)
            .await?;
        let mut report = GuardReport {
            stale: stale.len() as u64,
            ..GuardReport::default()
        };
        for step in stale {
            if !held.is_valid().await {
                break;
            }
            let answer = self
                .importers
                .step_status(
                    step.migration_importer.as_deref(),
                    &step.path,
                    step.migration_step,
                )
                .await;
            let verdict = verdict(&step, answer, &settings);
            self.metrics.guard_action(verdict.label());
            // The step's correlation id, as on the importer's log lines of it.
            let span = tracing::info_span!(
                "guard.step",
                repository = %step.path,
                correlation_id = step.migration_step.map(|number| number.correlation_id(&step.path)),
            );
            async {
                tracing::info!(state = %step.migration_state, age_s = step.age_seconds, ?verdict, "guard");
                self.apply(&step, verdict, &settings, held.fence, &mut report)
                    .await
            }
            .instrument(span)
            .await?;
        }
        Ok(report)
    }

    async fn apply(
        &self,
        step: &StaleStep,
        verdict: Verdict,
        settings: &Settings,
        fence: u64,
        report: &mut GuardReport,
    ) -> Result<(), sqlx::Error> {
        let state = step.migration_state;
        let number = step.migration_step;
        let abort = |reason: String| async move {
            self.store
                .abort(Abort {
                    key: RepoKey::Id(step.id),
                    step: step.migration_step,
                    from: &[state],
                    error: &reason,
                    max_retries: settings.max_retries,
                    counted: true,
                    fence: Some(fence),
                })
                .await
        };
        let finished = |reason: Option<SkipReason>| async move {
            self.store
                .finish_import_as(step.id, step.migration_step, reason, Some(fence))
                .await
        };
        match verdict {
            Verdict::LeaveAlone => report.running += 1,
            Verdict::FinishPreImport => {
                let stats = Default::default();
                if self
                    .store
                    .finish_pre_import(&step.path, step.migration_step, &stats, Some(fence))
                    .await?
                    .is_some()
                {
                    report.reconciled += 1;
                }
            }
            Verdict::FinishImport => {
                if finished(None).await? {
                    report.reconciled += 1;
                }
            }
            Verdict::Native => {
                if finished(Some(SkipReason::NativeImport)).await? {
                    report.reconciled += 1;
                }
            }
            Verdict::CancelLongRunning => {
                let canceled = self.importers.cancel_step(&step.path, number, false).await;
                if self
                    .completed_meanwhile(step, &canceled, fence, report)
                    .await?
                {
                    return Ok(());
                }
                report.canceled += 1;
                let reason =
                    format!("{state} ran longer than its time limit; canceled by the guard");
                if step.migration_retries_count >= settings.max_retries - 1 {
                    if self
                        .store
                        .skip_canceled(step.id, step.migration_step, state, &reason, Some(fence))
                        .await?
                    {
                        report.skipped += 1;
                    }
                } else if abort(reason).await?.is_some() {
                    report.aborted += 1;
                }
            }
            Verdict::Orphaned(reason) => {
                // Unlock it on the importer side too, so that a retry is accepted at once, and a
                // start of this step still on its way is refused.
                let canceled = self.importers.cancel_step(&step.path, number, true).await;
                if self
                    .completed_meanwhile(step, &canceled, fence, report)
                    .await?
                {
                    return Ok(());
                }
                if abort(format!("orphaned {state} step: {reason}"))
                    .await?
                    .is_some()
                {
                    report.aborted += 1;
                }
            }
            Verdict::Abort(reason) => {
                if abort(reason).await?.is_some() {
                    report.aborted += 1;
                }
            }
        }
        Ok(())
    }

    /// After the guard's cancel of `step`: true when the final import had completed instead
    /// (the completion won; the repository is finished as done), false when the guard goes on.
    async fn completed_meanwhile(
        &self,
        step: &StaleStep,
        canceled: &CancelResult,
        fence: u64,
        report: &mut GuardReport,
    ) -> Result<bool, sqlx::Error> {
        match canceled {
            CancelResult::Completed => {
                tracing::info!(repository = %step.path, step = step.migration_step.wire(), "the final import completed before the guard's cancel");
                if self
                    .store
                    .finish_import_as(step.id, step.migration_step, None, Some(fence))
                    .await?
                {
                    report.reconciled += 1;
                }
                Ok(true)
            }
            CancelResult::Canceled(_) => Ok(false),
            CancelResult::NotCanceled(error) | CancelResult::Unreachable(error) => {
                tracing::warn!(repository = %step.path, %error, "the guard's cancel was not carried out");
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests;
