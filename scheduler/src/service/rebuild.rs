//! `RebuildState`: the scheduler's state rebuilt after its database was lost (see
//! [`crate::rebuild`]): inventory, the importers' records, the repositories created on the new
//! platform, then a summary by state.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use ferry_proto::scheduler::v1::{
    RebuildPhase, RebuildProgress, RebuildStateRequest, StateCount, UpdateSettingsRequest,
};

use super::{Scheduler, SchedulerService, to_u64};
use crate::error::SchedulerError;
use crate::inventory;
use crate::rebuild::{self, DEFAULT_BATCH};
use crate::store::BulkLock;

/// The double-check's widest window: every repository the importers know.
const ALL_TIME_HOURS: u32 = 87_600;

/// What every rebuild's operator must know, whatever it found.
const SKIPS_NOTE: &str = "skips live only in the scheduler database: too_many_tags and not_found \
    are decided again when those repositories are next dispatched, too_many_retries after \
    max_retries more failures; an operator's cancel comes back as import_aborted";
const SETTINGS_NOTE: &str = "settings and namespace plans are not rebuilt: they are the \
    defaults now; apply your saved ones (ferryctl settings, ferryctl plans load) before \
    ferryctl migrate";

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Scheduler {
    /// The bulk lock's shared side, for an inventory: inventories may run together, not while a
    /// rebuild runs (it runs its own).
    pub(super) async fn inventory_lock(&self) -> Result<BulkLock, SchedulerError> {
        self.store
            .try_bulk_lock(false)
            .await?
            .ok_or_else(|| SchedulerError::FailedPrecondition("a state rebuild is running".into()))
    }

    /// Checks the request and the switch, takes the bulk lock, then runs the rebuild in the
    /// background; progress arrives on the returned channel, the last item has `done`.
    pub(super) async fn do_rebuild_state(
        &self,
        request: RebuildStateRequest,
    ) -> Result<mpsc::Receiver<Result<RebuildProgress, SchedulerError>>, SchedulerError> {
        let batch = match crate::limits::REBUILD_BATCH_SIZE.require(request.batch_size)? {
            0 => DEFAULT_BATCH,
            n => u32::try_from(n).unwrap_or(DEFAULT_BATCH),
        };
        let lock = self.store.try_bulk_lock(true).await?.ok_or_else(|| {
            SchedulerError::FailedPrecondition(
                "another rebuild or an inventory is running: wait for it to finish".into(),
            )
        })?;
        let mut notes = Vec::new();
        if self.store.settings().await?.enabled {
            if !request.pause_migration {
                return Err(SchedulerError::FailedPrecondition(
                    "the migration is on: pause it first (ferryctl pause), or let the rebuild \
                     turn it off (ferryctl rebuild-state --yes)"
                        .into(),
                ));
            }
            self.update_settings(UpdateSettingsRequest {
                enabled: Some(false),
                ..Default::default()
            })
            .await?;
            notes.push("the migration was on: the rebuild turned it off".to_owned());
            tracing::warn!("state rebuild: migration switch turned off");
        }
        let (tx, rx) = mpsc::channel(64);
        let scheduler = self.clone();
        // Every write is a compare-and-set on an unclaimed repository: safe to stop anywhere, and
        // the next rebuild goes on from there.
        self.tasks.spawn_until_stopped("rebuild", async move {
            let result = scheduler.rebuild(batch, notes, &tx).await;
            lock.release().await;
            match result {
                Ok(report) => {
                    tracing::info!(
                        checked = report.checked,
                        rebuilt = report.rebuilt,
                        native = report.native_registered,
                        "state rebuild finished"
                    );
                    let _ = tx.send(Ok(report)).await;
                    scheduler.wake_enqueuer().await;
                }
                Err(error) => {
                    tracing::error!(%error, "state rebuild failed");
                    let _ = tx.send(Err(error)).await;
                }
            }
        });
        Ok(rx)
    }

    /// Raises the fencing tokens above `recorded`, the highest the importers recorded, when the
    /// lease has not reached it: Redis lost its counter along with the scheduler database, and
    /// the importers would refuse every start as stale. The database's fence (the floor of every
    /// acquisition) is raised to it and the lease cleared, so its holder takes it again with a
    /// token above. Returns what to tell the operator.
    async fn raise_fence_above(&self, recorded: u64) -> Result<Option<String>, SchedulerError> {
        let lease = self.lease.describe().await?;
        let handed_out = lease.as_ref().map_or(0, |lease| lease.fence);
        if recorded <= handed_out.max(self.store.current_fence().await?) {
            return Ok(None);
        }
        self.store.raise_fence(recorded).await?;
        if let Some(lease) = lease {
            self.lease.clear_if_holder(&lease.holder).await?;
        }
        tracing::warn!(
            recorded,
            handed_out,
            "state rebuild: fencing tokens raised above the importers' records"
        );
        Ok(Some(format!(
            "the importers recorded fencing tokens up to {recorded}, above the lease's \
             {handed_out} (Redis lost its counter too): the fence is raised to {recorded} and \
             the lease cleared, so the next holder's token is above every recorded one"
        )))
    }

    /// The rebuild's phases (the caller holds the bulk lock); returns the last report.
    async fn rebuild(
        &self,
        batch: u32,
        mut notes: Vec<String>,
        tx: &mpsc::Sender<Result<RebuildProgress, SchedulerError>>,
    ) -> Result<RebuildProgress, SchedulerError> {
        let started = Instant::now();
        let mut report = RebuildProgress {
            phase: RebuildPhase::Inventory.into(),
            ..RebuildProgress::default()
        };
        // A slow or departed client must not stall the rebuild: progress is dropped, not awaited.
        let send = |report: &RebuildProgress| {
            let _ = tx.try_send(Ok(report.clone()));
        };
        let found = inventory::run(
            Arc::clone(&self.storage),
            &self.store,
            self.project_segments,
            |progress| {
                let mut now = report.clone();
                now.repositories_found = progress.repositories_found;
                now.repositories_registered = progress.repositories_registered;
                now.elapsed_ms = elapsed_ms(started);
                send(&now);
            },
        )
        .await?;
        report.repositories_found = found.repositories_found;
        report.repositories_registered = found.repositories_registered;
        report.phase = RebuildPhase::Statuses.into();
        report.elapsed_ms = elapsed_ms(started);
        send(&report);
        let statuses = rebuild::rebuild_statuses(&self.store, &self.importers, batch, |so_far| {
            let mut now = report.clone();
            now.checked = so_far.checked;
            now.rebuilt = so_far.rebuilt;
            now.retries_reset = so_far.retries_reset;
            now.elapsed_ms = elapsed_ms(started);
            send(&now);
        })
        .await?;
        report.checked = statuses.checked;
        report.rebuilt = statuses.rebuilt;
        report.retries_reset = statuses.retries_reset;
        report.phase = RebuildPhase::Native.into();
        report.elapsed_ms = elapsed_ms(started);
        send(&report);
        let native = self.do_double_check(ALL_TIME_HOURS, false).await?;
        report.native_registered = native.created;
        if statuses.retries_reset > 0 {
            notes.push(format!(
                "{} repositories are import_aborted from a failed or canceled step: their retry \
                 counts are unknown and restart at 0",
                statuses.retries_reset
            ));
        }
        if statuses.canceled > 0 {
            notes.push(format!(
                "{} of them ended canceled (an operator's cancel and the guard's look alike to the \
                 importers): cancel again those meant to stay out before ferryctl migrate: {}{}",
                statuses.canceled,
                statuses.canceled_paths.join(", "),
                if statuses.canceled > statuses.canceled_paths.len() as u64 {
                    ", ... (ferryctl list --state import_aborted)"
                } else {
                    ""
                }
            ));
        }
        notes.extend(self.raise_fence_above(statuses.max_fence).await?);
        notes.push(SKIPS_NOTE.to_owned());
        notes.push(SETTINGS_NOTE.to_owned());
        report.states = self
            .store
            .state_counts()
            .await?
            .into_iter()
            .map(|(state, count)| StateCount {
                state: state.to_string(),
                count: to_u64(count),
            })
            .collect();
        report.notes = notes;
        report.phase = RebuildPhase::Done.into();
        report.done = true;
        report.elapsed_ms = elapsed_ms(started);
        Ok(report)
    }
}
