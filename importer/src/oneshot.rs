//! `ferry-importer import`: imports repositories straight from storage into the metadata
//! database, without a scheduler (as `registry database import` does), with progress and a
//! summary. Each repository goes through a pre-import and a final import; `--dry-run` only reads
//! and checks the source.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_shared::ids::RepositoryPath;
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, StorageError};
use ferry_shared::walk::{Found, LISTINGS_IN_FLIGHT, ParallelWalk};

use crate::plan;
use crate::service::Importer;

/// What to import.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every repository in the bucket.
    All,
    /// These repositories.
    Paths(Vec<String>),
}

/// How one repository ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Imported,
    AlreadyImported,
    Checked,
    Failed(String),
}

/// Totals of a one-shot run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Repositories imported (or, in a dry run, checked without a problem).
    pub ok: u64,
    /// Repositories already on the new platform.
    pub already: u64,
    /// Repositories that failed, with their reasons (the first 100).
    pub failed: Vec<(String, String)>,
    /// Count of failures.
    pub failed_count: u64,
    /// Sum of the steps' figures.
    pub stats: ImportStats,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl Summary {
    fn add(&mut self, path: String, outcome: Outcome, stats: &ImportStats) {
        match outcome {
            Outcome::Imported | Outcome::Checked => self.ok += 1,
            Outcome::AlreadyImported => self.already += 1,
            Outcome::Failed(reason) => {
                self.failed_count += 1;
                if self.failed.len() < 100 {
                    self.failed.push((path, reason));
                }
            }
        }
        let total = &mut self.stats;
        total.manifests += stats.manifests;
        total.tags += stats.tags;
        total.blobs += stats.blobs;
        total.blobs_copied += stats.blobs_copied;
        total.bytes_copied += stats.bytes_copied;
        total.blobs_present += stats.blobs_present;
        total.tags_skipped += stats.tags_skipped;
        total.manifests_skipped += stats.manifests_skipped;
        total.layers_skipped += stats.layers_skipped;
    }

    fn done(&self) -> u64 {
        self.ok + self.already + self.failed_count
    }

    /// Prints the summary on stdout.
    pub fn print(&self, dry_run: bool) {
        let seconds = self.elapsed.as_secs_f64();
        println!(
            "ferry-importer one-shot {}",
            if dry_run { "dry run" } else { "import" }
        );
        println!(
            "  repositories    {} {}, {} already on the new platform, {} failed",
            self.ok,
            if dry_run { "checked" } else { "imported" },
            self.already,
            self.failed_count
        );
        if !dry_run {
            let s = &self.stats;
            println!(
                "  manifests       {} registered, {} skipped",
                s.manifests, s.manifests_skipped
            );
            println!(
                "  tags            {} registered, {} skipped",
                s.tags, s.tags_skipped
            );
            println!(
                "  blobs           {} copied ({} bytes), {} already under gitlab/",
                s.blobs_copied, s.bytes_copied, s.blobs_present
            );
        }
        println!(
            "  elapsed         {seconds:.1} s ({:.2} repositories/s)",
            self.done() as f64 / seconds.max(0.001)
        );
        for (path, reason) in &self.failed {
            println!("  failed          {path}: {reason}");
        }
    }
}

async fn import_one(importer: &Importer, path: &str) -> (Outcome, ImportStats) {
    let mut stats = ImportStats::default();
    for import_type in [ImportType::Pre, ImportType::Final] {
        match importer.import_now(path, import_type).await {
            Ok(outcome)
                if outcome.status == MigrationStatus::ImportComplete
                    && import_type == ImportType::Pre =>
            {
                return (Outcome::AlreadyImported, stats);
            }
            Ok(outcome) if outcome.status == MigrationStatus::Native => {
                return (Outcome::AlreadyImported, stats);
            }
            Ok(outcome)
                if matches!(
                    outcome.status,
                    MigrationStatus::PreImportComplete | MigrationStatus::ImportComplete
                ) =>
            {
                let s = outcome.stats;
                stats.manifests += s.manifests;
                stats.tags += s.tags;
                stats.blobs = stats.blobs.max(s.blobs);
                stats.blobs_copied += s.blobs_copied;
                stats.bytes_copied += s.bytes_copied;
                stats.blobs_present += s.blobs_present;
                stats.tags_skipped = stats.tags_skipped.max(s.tags_skipped);
                stats.manifests_skipped = stats.manifests_skipped.max(s.manifests_skipped);
                stats.layers_skipped = stats.layers_skipped.max(s.layers_skipped);
            }
            Ok(outcome) => {
                return (
                    Outcome::Failed(format!(
                        "{}: {}",
                        outcome.status.as_db_str(),
                        outcome.detail
                    )),
                    stats,
                );
            }
            Err(error) => return (Outcome::Failed(error.to_string()), stats),
        }
    }
    (Outcome::Imported, stats)
}

/// Reads and checks a repository without writing anything: every manifest its tags reach, and
/// every blob it would copy present in old storage with its declared size.
async fn check_one(storage: &dyn BlobStore, path: &str, concurrency: usize) -> Outcome {
    let path = match RepositoryPath::parse(path) {
        Ok(path) => path,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    match check_repository(storage, &path, concurrency).await {
        Ok(()) => Outcome::Checked,
        Err(reason) => Outcome::Failed(reason),
    }
}

async fn check_repository(
    storage: &dyn BlobStore,
    path: &RepositoryPath,
    concurrency: usize,
) -> Result<(), String> {
    let (links, tags) = plan::list_and_read_tags(storage, path, concurrency)
        .await
        .map_err(|error| error.reason())?;
    let mut walk = plan::Walk::new(storage, path, &links, concurrency, &tags, &HashSet::new());
    while let Some(chunk) = walk.next_chunk().await.map_err(|error| error.reason())? {
        for (digest, blob) in chunk.blobs.iter().filter(|(_, blob)| blob.copy) {
            match storage.stat(&layout::old_blob_key(digest)).await {
                Ok(Some(meta)) if meta.size == blob.size => {}
                Ok(Some(meta)) => {
                    return Err(format!(
                        "blob {digest} is {} bytes but manifest {} declares {}",
                        meta.size, blob.referrer, blob.size
                    ));
                }
                Ok(None) => {
                    return Err(format!(
                        "blob {digest} referenced by manifest {} is missing from storage",
                        blob.referrer
                    ));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    Ok(())
}

struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
    total: Option<u64>,
}

impl Progress {
    fn show(&mut self, summary: &Summary, finished: bool) {
        if !finished && !self.tty && self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last = Instant::now();
        let done = summary.done();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let eta = match self.total {
            Some(total) if rate > 0.0 => {
                format!(" · ETA {:.0} s", total.saturating_sub(done) as f64 / rate)
            }
            _ => String::new(),
        };
        let line = format!(
            "import: {done}{of} repositories · {} failed · {rate:.1} repos/s{eta}",
            summary.failed_count
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            if finished {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }
}

/// One item for the workers: a repository to import (or check), or a directory of the walk whose
/// path is not a valid repository path, counted as failed.
enum Work {
    Repository(String),
    Invalid(String),
}

/// What the workers need to handle a [`Work`].
struct Workers<'a> {
    importer: &'a Importer,
    storage: &'a dyn BlobStore,
    dry_run: bool,
    tag_concurrency: usize,
}

impl Workers<'_> {
    async fn handle(&self, work: Work) -> (String, Outcome, ImportStats) {
        match work {
            Work::Repository(path) => {
                let (outcome, stats) = if self.dry_run {
                    (
                        check_one(self.storage, &path, self.tag_concurrency).await,
                        ImportStats::default(),
                    )
                } else {
                    import_one(self.importer, &path).await
                };
                (path, outcome, stats)
            }
            Work::Invalid(reason) => (
                String::from("<invalid>"),
                Outcome::Failed(reason),
                ImportStats::default(),
            ),
        }
    }

    /// Handles everything `work` yields, `concurrency` at a time, into `summary`.
    async fn run(
        &self,
        work: impl Stream<Item = Work>,
        concurrency: usize,
        summary: &mut Summary,
        progress: &mut Progress,
    ) {
        let mut results = std::pin::pin!(
            work.map(|work| self.handle(work))
                .buffer_unordered(concurrency.max(1))
        );
        while let Some((path, outcome, stats)) = results.next().await {
            summary.add(path, outcome, &stats);
            progress.show(summary, false);
        }
    }
}

/// Runs the one-shot import (or dry run) of `selection`, `concurrency` repositories at a time.
/// With [`Selection::All`], repositories go to the workers as a [`ParallelWalk`] finds them (with
/// [`LISTINGS_IN_FLIGHT`] listings running); the walk runs at most a channel of `concurrency`
/// repositories, plus its own buffer, ahead of the workers. A storage error of the walk stops
/// it: the imports already started finish, then the error is returned.
pub async fn run(
    importer: &Importer,
    storage: &dyn BlobStore,
    selection: Selection,
    dry_run: bool,
    concurrency: usize,
    tag_concurrency: usize,
) -> Result<Summary, StorageError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let total = match &selection {
        Selection::Paths(paths) => Some(paths.len() as u64),
        Selection::All => None,
    };
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        started,
        last: started,
        total,
    };
    let workers = Workers {
        importer,
        storage,
        dry_run,
        tag_concurrency,
    };
    match selection {
        Selection::Paths(paths) => {
            let work = futures::stream::iter(paths).map(Work::Repository);
            workers
                .run(work, concurrency, &mut summary, &mut progress)
                .await;
        }
        Selection::All => {
            let (sender, receiver) = mpsc::channel(concurrency.max(1));
            let walk = ParallelWalk::new(storage, LISTINGS_IN_FLIGHT).send_to(sender);
            let mut walk_error = None;
            let work = ReceiverStream::new(receiver).scan(&mut walk_error, |walk_error, found| {
                futures::future::ready(match found {
                    Ok(Found::Repository(path)) => Some(Work::Repository(path.to_string())),
                    Ok(Found::Invalid(error)) => Some(Work::Invalid(error.to_string())),
                    Err(error) => {
                        **walk_error = Some(error);
                        None
                    }
                })
            });
            let importing = workers.run(work, concurrency, &mut summary, &mut progress);
            tokio::join!(walk, importing);
            if let Some(error) = walk_error {
                return Err(error);
            }
        }
    }
    summary.elapsed = started.elapsed();
    progress.show(&summary, true);
    Ok(summary)
}
