//! `CollectGarbage` on this importer: one collection at a time, run in the background and
//! streamed back.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument as _;

use ferry_proto::importer::v1::CollectGarbageEvent;

use super::Importer;
use crate::error::ApiError;
use crate::gc;

impl Importer {
    /// Checks the window, takes the collection slot and collects in the background; candidates,
    /// progress and the summary arrive on the returned channel. A caller that goes away, or a
    /// shutdown, stops it between two removals: a removal is never cut in the middle, where its
    /// lock would be released before its storage request is over.
    pub(super) fn start_collection(
        &self,
        older_than_secs: u64,
        dry_run: bool,
    ) -> Result<mpsc::Receiver<CollectGarbageEvent>, ApiError> {
        let window = gc::window(older_than_secs, &self.inner.limits)?;
        if self.inner.tasks.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        let permit = Arc::clone(&self.inner.collections)
            .try_acquire_owned()
            .map_err(|_| ApiError::CollectionRunning)?;
        let (tx, rx) = mpsc::channel(64);
        let importer = self.clone();
        let span = tracing::info_span!("gc", window_secs = window.as_secs(), dry_run);
        self.inner.tasks.spawn("gc", move |stop| {
            async move {
                let _permit = permit;
                let inner = &importer.inner;
                let storage = &*inner.storage;
                let collection =
                    gc::Collection::new((storage, &inner.db), window, dry_run, &tx, stop);
                let summary = collection.run().await;
                let counts = summary.counts.unwrap_or_default();
                let complete = summary.error.is_empty();
                inner.metrics.collection_ended(&counts, dry_run, complete);
                tracing::info!(
                    listed = counts.listed,
                    candidates = counts.candidates,
                    removed = counts.removed,
                    bytes_removed = counts.bytes_removed,
                    errors = counts.errors,
                    error = summary.error,
                    duration_ms = summary.duration_ms,
                    "abandoned copies collected"
                );
            }
            .instrument(span)
        });
        Ok(rx)
    }
}
