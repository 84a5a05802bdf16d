//! Removing abandoned copies (`ferryctl gc`): blobs a step copied under `gitlab/` and never
//! registered, because it failed, was canceled or was killed before its commit.
//!
//! The collection lists `gitlab/docker/registry/v2/blobs/` flat, a page at a time, and keeps
//! every object but the candidates: a blob's data key (`sha256/<hh>/<hex>/data`, nothing else),
//! written longer ago than the window ([`ObjectMeta::created`]), whose digest the metadata
//! database neither registers nor has a claim on younger than the window. Each candidate is
//! removed in its own transaction holding the digest's exclusive advisory lock, re-checked
//! under it, and only in the version listed ([`MetadataStore::lock_for_removal`],
//! [`BlobStore::delete`]). Why that never removes a copy a step relies on is in
//! `store/gc.rs` and docs/operations.md ("Removing abandoned copies").
//!
//! [`ObjectMeta::created`]: ferry_shared::storage::ObjectMeta::created

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ferry_proto::common::v1::{GarbageCandidate, GarbageCounts};
use ferry_proto::importer::v1::{
    CollectGarbageEvent, CollectGarbageSummary, collect_garbage_event::Event,
};
use ferry_shared::ids::Digest;
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, DeleteOutcome, ListOptions, StorageError};

use crate::error::ApiError;
use crate::service::StepLimits;
use crate::store::{MetadataStore, Protection, RemovalCheck};

/// The window when the request gives none, at the least.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// What the default window adds to the importer's longest step time limit.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);
/// The longest window accepted, in seconds (a year).
pub const MAX_WINDOW_SECS: u64 = 365 * 86_400;
/// Candidates sent one by one; beyond it they are only counted.
pub const MAX_CANDIDATES_LISTED: u64 = 1000;
/// Objects listed a page.
const PAGE: usize = 1000;
/// Removals in flight at once (each holds a database connection for its request).
const REMOVALS_AT_ONCE: usize = 4;

/// The window a request asks for: `older_than_secs`, or the default (0), which is the longer of
/// [`DEFAULT_WINDOW`] and the longest step time limit plus [`DEFAULT_MARGIN`]. A window not
/// longer than both step time limits is refused: a step's own copy, not registered until its
/// commit, is at most that old.
pub fn window(older_than_secs: u64, limits: &StepLimits) -> Result<Duration, ApiError> {
    let longest = limits.pre_import_timeout.max(limits.import_timeout);
    if older_than_secs == 0 {
        return Ok(DEFAULT_WINDOW.max(longest + DEFAULT_MARGIN));
    }
    if older_than_secs > MAX_WINDOW_SECS {
        return Err(ApiError::InvalidArgument(format!(
            "older_than_secs must be between 1 and {MAX_WINDOW_SECS} (0: the default)"
        )));
    }
    let window = Duration::from_secs(older_than_secs);
    if window <= longest {
        return Err(ApiError::InvalidArgument(format!(
            "older_than_secs: {older_than_secs} s is not longer than this importer's step time \
             limit ({} s): a copy of a step still running could be removed",
            longest.as_secs()
        )));
    }
    Ok(window)
}

/// The prefix listed: the new layout's blobs, and nothing else.
pub fn blobs_prefix() -> String {
    format!("{}/blobs/", layout::NEW_ROOT)
}

/// The digest whose data `key` holds, if `key` is exactly a blob's data key in the new layout.
pub fn digest_of_key(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(&blobs_prefix())?;
    let mut parts = rest.split('/');
    let (algorithm, _, hex, data) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || algorithm != "sha256" || data != "data" {
        return None;
    }
    let digest = Digest::parse(&format!("sha256:{hex}")).ok()?;
    (layout::new_blob_key(&digest) == key).then_some(digest)
}

/// Why a collection stopped before the end of the listing.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Listing failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] sqlx::Error),
    /// The caller went away or the importer is shutting down.
    #[error("stopped before the end: the caller went away or the importer is shutting down")]
    Stopped,
}

/// An old object under the blobs prefix, as listed.
#[derive(Debug)]
struct Listed {
    key: String,
    digest: Digest,
    size: u64,
    age: Duration,
    version: String,
}

/// How one removal came out.
#[derive(Debug)]
enum Removal {
    Deleted,
    Protected(Protection),
    /// Written again since listed, or gone already.
    Changed(&'static str),
    Failed(String),
}

/// One collection: what it is asked, and what it found so far.
#[derive(Debug)]
pub struct Collection<'a> {
    storage: &'a dyn BlobStore,
    db: &'a MetadataStore,
    window: Duration,
    dry_run: bool,
    events: &'a mpsc::Sender<CollectGarbageEvent>,
    stop: CancellationToken,
    counts: GarbageCounts,
    sent: u64,
}

impl<'a> Collection<'a> {
    /// A collection over `storage` and `db` that sends its events on `events` and stops (between
    /// removals, never in the middle of one) when `stop` is cancelled or `events` is closed.
    pub fn new(
        (storage, db): (&'a dyn BlobStore, &'a MetadataStore),
        window: Duration,
        dry_run: bool,
        events: &'a mpsc::Sender<CollectGarbageEvent>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            storage,
            db,
            window,
            dry_run,
            events,
            stop,
            counts: GarbageCounts::default(),
            sent: 0,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_cancelled() || self.events.is_closed()
    }

    /// Runs the collection to its end (or until it stops) and returns its summary, which is
    /// also the last event sent. A listing that went through ends with dropping the claims
    /// older than the window (not in a dry run).
    pub async fn run(mut self) -> CollectGarbageSummary {
        let started = Instant::now();
        let mut result = self.pages().await;
        if result.is_ok() && !self.dry_run {
            match self.db.drop_stale_claims(self.window).await {
                Ok(dropped) => self.counts.claims_dropped = dropped,
                Err(error) => result = Err(error.into()),
            }
        }
        let summary = CollectGarbageSummary {
            counts: Some(self.counts),
            error: result.err().map(|e| e.to_string()).unwrap_or_default(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            older_than_secs: self.window.as_secs(),
            dry_run: self.dry_run,
        };
        let event = Event::Done(summary.clone());
        let _ = self
            .events
            .send(CollectGarbageEvent { event: Some(event) })
            .await;
        summary
    }

    async fn send(&self, event: Event) {
        let _ = self
            .events
            .send(CollectGarbageEvent { event: Some(event) })
            .await;
    }

    async fn pages(&mut self) -> Result<(), GcError> {
        let prefix = blobs_prefix();
        let mut options = ListOptions {
            delimited: false,
            page_token: None,
            max_results: PAGE,
        };
        loop {
            if self.stopped() {
                return Err(GcError::Stopped);
            }
            // Taken before the listing: an object written while it runs is never older than
            // the window by this clock.
            let now = SystemTime::now();
            let page = self.storage.list(&prefix, &options).await?;
            let old = self.sort_out(page.objects, now);
            let candidates = self.check(old).await?;
            if self.dry_run {
                for candidate in &candidates {
                    self.report(candidate, false, String::new()).await;
                }
            } else {
                self.remove(candidates).await;
            }
            self.send(Event::Progress(self.counts)).await;
            match page.next_page_token {
                Some(token) => options.page_token = Some(token),
                None => return Ok(()),
            }
        }
    }

    /// Counts the page's objects, keeping those old enough to be candidates.
    fn sort_out(
        &mut self,
        objects: Vec<ferry_shared::storage::ObjectMeta>,
        now: SystemTime,
    ) -> Vec<Listed> {
        let mut old = Vec::new();
        for object in objects {
            self.counts.listed += 1;
            let Some(digest) = digest_of_key(&object.key) else {
                self.counts.other_keys += 1;
                continue;
            };
            let age = object
                .created
                .and_then(|created| now.duration_since(created).ok());
            match (age, object.version) {
                (Some(age), Some(version)) if age >= self.window => old.push(Listed {
                    key: object.key,
                    digest,
                    size: object.size,
                    age,
                    version,
                }),
                _ => self.counts.young += 1,
            }
        }
        old
    }

    /// Keeps the old objects the metadata database does not protect.
    async fn check(&mut self, old: Vec<Listed>) -> Result<Vec<Listed>, GcError> {
        let digests: Vec<&str> = old.iter().map(|o| o.digest.as_str()).collect();
        let protections = self.db.blob_protections(&digests, self.window).await?;
        let mut candidates = Vec::new();
        for object in old {
            match protections.get(object.digest.as_str()) {
                Some(Protection::Registered) => self.counts.registered += 1,
                Some(Protection::Claimed) => self.counts.claimed += 1,
                None => {
                    self.counts.candidates += 1;
                    self.counts.candidate_bytes += object.size;
                    candidates.push(object);
                }
            }
        }
        Ok(candidates)
    }

    /// Removes the candidates, [`REMOVALS_AT_ONCE`] at a time; none starts once stopped.
    async fn remove(&mut self, candidates: Vec<Listed>) {
        let (storage, db, window, stop, events) =
            (self.storage, self.db, self.window, &self.stop, self.events);
        let mut removals = futures::stream::iter(candidates)
            .take_while(|_| std::future::ready(!stop.is_cancelled() && !events.is_closed()))
            .map(|candidate| async move {
                let removal = remove_one(storage, db, &candidate, window).await;
                (candidate, removal)
            })
            .buffer_unordered(REMOVALS_AT_ONCE);
        let mut done = Vec::new();
        while let Some(result) = removals.next().await {
            done.push(result);
        }
        drop(removals);
        for (candidate, removal) in done {
            let (removed, detail) = match removal {
                Removal::Deleted => {
                    self.counts.removed += 1;
                    self.counts.bytes_removed += candidate.size;
                    (true, String::new())
                }
                Removal::Protected(Protection::Registered) => {
                    self.counts.registered += 1;
                    (false, "kept: registered meanwhile".to_owned())
                }
                Removal::Protected(Protection::Claimed) => {
                    self.counts.claimed += 1;
                    (false, "kept: claimed by a step meanwhile".to_owned())
                }
                Removal::Changed(what) => {
                    self.counts.changed += 1;
                    (false, what.to_owned())
                }
                Removal::Failed(error) => {
                    self.counts.errors += 1;
                    self.counts.bytes_failed += candidate.size;
                    tracing::warn!(
                        key = candidate.key,
                        error,
                        "removing an abandoned copy failed"
                    );
                    (false, error)
                }
            };
            self.report(&candidate, removed, detail).await;
        }
    }

    async fn report(&mut self, candidate: &Listed, removed: bool, detail: String) {
        if self.sent >= MAX_CANDIDATES_LISTED {
            return;
        }
        self.sent += 1;
        self.send(Event::Candidate(GarbageCandidate {
            key: candidate.key.clone(),
            digest: candidate.digest.to_string(),
            size: candidate.size,
            age_secs: candidate.age.as_secs(),
            removed,
            detail,
        }))
        .await;
    }
}

/// Removes one candidate under its digest's exclusive lock, in the version listed. The
/// transaction ends after the storage request has answered, whatever the answer.
async fn remove_one(
    storage: &dyn BlobStore,
    db: &MetadataStore,
    candidate: &Listed,
    window: Duration,
) -> Removal {
    if !candidate.key.starts_with(&blobs_prefix()) {
        return Removal::Failed(format!("{} is not under the new layout", candidate.key));
    }
    let removal = match db.lock_for_removal(candidate.digest.as_str(), window).await {
        Ok(RemovalCheck::Clear(removal)) => removal,
        Ok(RemovalCheck::Protected(protection)) => return Removal::Protected(protection),
        Err(error) => return Removal::Failed(format!("metadata database: {error}")),
    };
    let outcome = storage.delete(&candidate.key, &candidate.version).await;
    if let Err(error) = removal.finish().await {
        // Nothing was written; the lock is released with the session anyway.
        tracing::warn!(key = candidate.key, %error, "ending a removal's transaction failed");
    }
    match outcome {
        Ok(DeleteOutcome::Deleted) => {
            tracing::info!(
                key = candidate.key,
                size = candidate.size,
                "abandoned copy removed"
            );
            Removal::Deleted
        }
        Ok(DeleteOutcome::Changed) => Removal::Changed("kept: written again since listed"),
        Ok(DeleteOutcome::Absent) => Removal::Changed("gone already"),
        Err(error) => Removal::Failed(format!("storage: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pre: u64, fin: u64) -> StepLimits {
        StepLimits {
            max_concurrent_imports: 1,
            pre_import_timeout: Duration::from_secs(pre),
            import_timeout: Duration::from_secs(fin),
            copy_concurrency: 1,
            tag_concurrency: 1,
            cancel_poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_window_is_longer_than_every_step_time_limit() {
        let defaults = limits(7200, 3600);
        assert_eq!(
            window(0, &defaults).ok(),
            Some(Duration::from_secs(3 * 3600))
        );
        assert_eq!(
            window(0, &limits(5 * 3600, 60)).ok(),
            Some(Duration::from_secs(6 * 3600))
        );
        assert!(window(7200, &defaults).is_err());
        assert_eq!(
            window(7201, &defaults).ok(),
            Some(Duration::from_secs(7201))
        );
        assert!(window(MAX_WINDOW_SECS + 1, &defaults).is_err());
        let refusal = window(60, &defaults).unwrap_err().to_string();
        assert!(refusal.contains("older_than_secs"), "{refusal}");
    }

    #[test]
    fn only_blob_data_keys_are_candidates() {
        let digest = Digest::of(b"x");
        let key = layout::new_blob_key(&digest);
        assert_eq!(digest_of_key(&key), Some(digest.clone()));
        assert_eq!(digest_of_key(&layout::old_blob_key(&digest)), None);
        assert_eq!(digest_of_key(&format!("{key}.tmp")), None);
        assert_eq!(digest_of_key(&key.replace("/data", "/link")), None);
        let hex = digest.hex();
        let misplaced = format!("{}sha256/00/{hex}/data", blobs_prefix());
        assert_eq!(digest_of_key(&misplaced), None);
        assert_eq!(digest_of_key(&format!("{}sha256/", blobs_prefix())), None);
    }
}
