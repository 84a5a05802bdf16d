//! The long requests that answer with a stream of progress: `RunInventory` (the walk of the
//! bucket), and `VerifyRepositories` and `CollectGarbage` (run on the importers, relayed).

use std::sync::Arc;

use tokio::sync::mpsc;

use ferry_proto::scheduler::v1 as pb;
use ferry_proto::scheduler::v1::InventoryProgress;

use super::Scheduler;
use crate::error::SchedulerError;
use crate::inventory;

impl Scheduler {
    /// Starts an inventory (see [`crate::inventory`]) under the inventory lock; progress comes
    /// on the returned stream, and the enqueuer is woken when it ends.
    pub(super) async fn do_run_inventory(
        &self,
    ) -> Result<mpsc::Receiver<Result<InventoryProgress, SchedulerError>>, SchedulerError> {
        let lock = self.inventory_lock().await?;
        let (tx, rx) = mpsc::channel(64);
        let scheduler = self.clone();
        // An inventory registers in batches and is safe to stop anywhere: it ends with the
        // service, and the next one registers what is still missing.
        self.tasks.spawn_until_stopped("inventory", async move {
            let progress_tx = tx.clone();
            let result = inventory::run(
                Arc::clone(&scheduler.storage),
                &scheduler.store,
                scheduler.project_segments,
                |progress| {
                    // A slow or departed client must not stall the inventory.
                    let _ = progress_tx.try_send(Ok(*progress));
                },
            )
            .await;
            // Before the last report: a rebuild started on it must not find the lock held.
            lock.release().await;
            match result {
                Ok(report) => {
                    tracing::info!(
                        found = report.repositories_found,
                        registered = report.repositories_registered,
                        "inventory finished"
                    );
                    let _ = tx.send(Ok(report)).await;
                    scheduler.wake_enqueuer().await;
                }
                Err(error) => {
                    tracing::error!(%error, "inventory failed");
                    let _ = tx.send(Err(error.into())).await;
                }
            }
        });
        Ok(rx)
    }

    /// Starts verifying the repositories `request` names on the importers (see
    /// [`crate::verify`]); progress comes on the returned stream.
    pub(super) fn do_verify_repositories(
        &self,
        request: pb::VerifyRepositoriesRequest,
    ) -> Result<mpsc::Receiver<Result<pb::VerifyProgress, SchedulerError>>, SchedulerError> {
        let request = crate::verify::VerifyRequest::try_from(request)?;
        let (tx, rx) = mpsc::channel(64);
        let verifier = crate::verify::Verifier {
            store: self.store.clone(),
            importers: Arc::clone(&self.importers),
            metrics: self.metrics.clone(),
        };
        // Read-only on both sides but for the outcomes, each recorded on its own: safe to stop
        // anywhere, so it ends with the service or its caller.
        self.tasks
            .spawn_until_stopped("verify", verifier.run(request, tx));
        Ok(rx)
    }

    /// Starts a garbage collection on one importer (see [`crate::gc`]) and relays its progress.
    pub(super) async fn do_collect_garbage(
        &self,
        request: pb::CollectGarbageRequest,
    ) -> Result<mpsc::Receiver<Result<pb::GarbageProgress, SchedulerError>>, SchedulerError> {
        let request = crate::gc::GcRequest::try_from(request)?;
        let collection = crate::gc::open(&self.importers, request).await?;
        tracing::info!(
            importer = collection.importer,
            older_than_secs = request.older_than_secs,
            dry_run = request.dry_run,
            "garbage collection started"
        );
        let (tx, rx) = mpsc::channel(64);
        // Dropping the relay drops the importer's stream, which stops the collection there
        // between two removals.
        self.tasks
            .spawn_until_stopped("gc", crate::gc::relay(collection, tx));
        Ok(rx)
    }
}
