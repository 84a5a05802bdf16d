//! Verification: compares a migrated repository with its source, as `ferryctl verify` asks.
//!
//! The source is read the way an import reads it ([`Walk`]: the same tags, the same manifests
//! skipped, the same layers left out), so a repository imported faithfully shows no difference,
//! and anything that changed since (a tag moved in the source, a copy damaged or deleted under
//! `gitlab/`, a row changed in the database) shows as one, named. The walk goes a chunk at a
//! time, so a repository of any size is verified in the same memory.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use futures::{FutureExt, StreamExt, TryStreamExt};

use ferry_proto::common::v1::{Difference, DifferenceKind, MigrationStatus, VerifyCounts};
use ferry_shared::ids::{Digest, DigestHasher, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, StorageError};

use crate::error::StepError;
use crate::plan::{self, Chunk, PlannedBlob, PlannedManifest, Walk};
use crate::store::{MetadataStore, RegisteredManifest};

/// Differences a verification reports one by one; beyond it they are only counted.
pub const MAX_DIFFERENCES_LISTED: usize = 1000;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// The differences, up to [`MAX_DIFFERENCES_LISTED`]: tags first, then manifests and blobs
    /// in the order the walk met them.
    pub differences: Vec<Difference>,
    /// Every difference found, listed or not.
    pub difference_count: u64,
    /// What was looked at.
    pub counts: VerifyCounts,
    /// Why the comparison could not be finished (a broken source, storage or the database
    /// failing); the differences found until then stand.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

impl Report {
    /// Lists `first`'s differences before this report's, within the limit, and counts them.
    fn put_first(&mut self, first: Report) {
        self.difference_count += first.difference_count;
        let mut differences = first.differences;
        differences.append(&mut self.differences);
        differences.truncate(MAX_DIFFERENCES_LISTED);
        self.differences = differences;
    }

    fn found(&mut self, kind: DifferenceKind, subject: impl ToString, detail: impl Into<String>) {
        self.difference_count += 1;
        if self.differences.len() < MAX_DIFFERENCES_LISTED {
            self.differences.push(Difference {
                kind: kind.into(),
                subject: subject.to_string(),
                detail: detail.into(),
            });
        }
    }
}

/// Compares the repository at `path` with its source. Reads `concurrency` objects at once; with
/// `deep`, re-reads and hashes every copied blob even where the store keeps a CRC32C (a store
/// that keeps none, such as a filesystem bucket, is always hashed).
pub async fn verify_repository(
    store: &dyn BlobStore,
    db: &MetadataStore,
    path: &RepositoryPath,
    deep: bool,
    concurrency: usize,
) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let verifier = Verifier {
        store,
        db,
        path,
        deep,
        concurrency: concurrency.max(1),
    };
    if let Err(error) = verifier.run(&mut report).await {
        report.error = Some(error.to_string());
    }
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

struct Verifier<'a> {
    store: &'a dyn BlobStore,
    db: &'a MetadataStore,
    path: &'a RepositoryPath,
    deep: bool,
    concurrency: usize,
}

/// What checking one copied blob came to.
#[derive(Debug, Default)]
struct BlobCheck {
    difference: Option<(DifferenceKind, String)>,
    bytes_hashed: u64,
    by_checksum: bool,
}

impl BlobCheck {
    fn differs(kind: DifferenceKind, detail: String) -> Self {
        Self {
            difference: Some((kind, detail)),
            ..Self::default()
        }
    }
}

impl Verifier<'_> {
    async fn run(&self, report: &mut Report) -> Result<(), StepError> {
        let Some(repository_id) = self.migrated_row(report).await? else {
            return Ok(());
        };
        let (links, tags) =
            plan::list_and_read_tags(self.store, self.path, self.concurrency).await?;
        let registered_tags = self.db.tag_digests(repository_id).await?;
        let mut walk = Walk::new(
            self.store,
            self.path,
            &links,
            self.concurrency,
            &tags,
            &HashSet::new(),
        );
        while let Some(chunk) = walk.next_chunk().await? {
            self.compare_chunk(repository_id, &chunk, report).await?;
        }
        let skipped = walk.skipped_roots();
        let expected: BTreeMap<&str, &Digest> = tags
            .iter()
            .filter(|(_, digest)| !skipped.contains(digest))
            .map(|(tag, digest)| (tag.as_str(), digest))
            .collect();
        report.counts.tags = u64::try_from(expected.len()).unwrap_or(u64::MAX);
        // The tags are known to be left out only once the walk is over, and are listed first.
        let mut tag_differences = Report::default();
        compare_tags(&expected, &registered_tags, &mut tag_differences);
        report.put_first(tag_differences);
        Ok(())
    }

    /// The repository's row id when the metadata database holds it as `import_complete`; a
    /// difference otherwise.
    async fn migrated_row(&self, report: &mut Report) -> Result<Option<i64>, StepError> {
        match self.db.repository_status(self.path).await? {
            Some((id, Some(MigrationStatus::ImportComplete))) => Ok(Some(id)),
            Some((_, status)) => {
                let status = status.map_or("unknown", MigrationStatus::as_db_str);
                let detail = format!("the metadata database has it {status}, not import_complete");
                report.found(DifferenceKind::NotMigrated, self.path, detail);
                Ok(None)
            }
            None => {
                let detail = "the metadata database has no such repository";
                report.found(DifferenceKind::NotMigrated, self.path, detail);
                Ok(None)
            }
        }
    }

    async fn compare_chunk(
        &self,
        repository_id: i64,
        chunk: &Chunk,
        report: &mut Report,
    ) -> Result<(), StepError> {
        let digests: Vec<&str> = chunk.manifests.iter().map(|m| m.digest.as_str()).collect();
        let registered = self
            .db
            .registered_manifest_details(repository_id, &digests)
            .await?;
        for manifest in &chunk.manifests {
            report.counts.manifests += 1;
            match registered.get(manifest.digest.as_str()) {
                None => report.found(
                    DifferenceKind::ManifestMissing,
                    &manifest.digest,
                    "referenced in the source, not registered",
                ),
                Some(registered) => compare_manifest(manifest, registered, report),
            }
        }
        let digests: Vec<&str> = chunk.blobs.keys().map(Digest::as_str).collect();
        let sizes = self
            .db
            .registered_blob_sizes(repository_id, &digests)
            .await?;
        let mut copied = Vec::new();
        for (digest, blob) in &chunk.blobs {
            report.counts.blobs += 1;
            match sizes.get(digest.as_str()) {
                None => report.found(
                    DifferenceKind::BlobNotRegistered,
                    digest,
                    format!("referenced by manifest {}, not registered", blob.referrer),
                ),
                Some(&size) if size != blob.size => report.found(
                    DifferenceKind::BlobSizeDiffers,
                    digest,
                    format!(
                        "registered as {size} bytes; manifest {} declares {}",
                        blob.referrer, blob.size
                    ),
                ),
                Some(_) if blob.copy => copied.push((digest.clone(), blob.clone())),
                Some(_) => {} // A foreign layer: registered, never copied.
            }
        }
        let checks: Vec<(Digest, BlobCheck)> = futures::stream::iter(copied)
            .map(|(digest, blob)| {
                async move {
                    let check = self.check_copy(&digest, &blob).await?;
                    Ok::<_, StorageError>((digest, check))
                }
                .boxed()
            })
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        for (digest, check) in checks {
            report.counts.bytes_hashed += check.bytes_hashed;
            report.counts.blobs_by_checksum += u64::from(check.by_checksum);
            if let Some((kind, detail)) = check.difference {
                report.found(kind, digest, detail);
            }
        }
        Ok(())
    }

    /// Checks the copy of `digest` under `gitlab/`: present, of the declared size, and of the
    /// source's content (the CRC32C the store keeps of both objects, or the bytes hashed).
    async fn check_copy(
        &self,
        digest: &Digest,
        blob: &PlannedBlob,
    ) -> Result<BlobCheck, StorageError> {
        let key = layout::new_blob_key(digest);
        let missing = || {
            BlobCheck::differs(
                DifferenceKind::BlobMissing,
                format!("not under gitlab/ ({key})"),
            )
        };
        let wrong_size = |size: u64| {
            BlobCheck::differs(
                DifferenceKind::BlobSizeDiffers,
                format!(
                    "{size} bytes under gitlab/; manifest {} declares {}",
                    blob.referrer, blob.size
                ),
            )
        };
        if !self.deep {
            let Some(copy) = self.store.stat(&key).await? else {
                return Ok(missing());
            };
            if copy.size != blob.size {
                return Ok(wrong_size(copy.size));
            }
            if let Some(copied) = copy.crc32c {
                let source = self.store.stat(&layout::old_blob_key(digest)).await?;
                // A source blob gone since the import can still be checked by hashing the copy.
                if let Some(source) = source.and_then(|source| source.crc32c) {
                    return Ok(if source == copied {
                        BlobCheck {
                            by_checksum: true,
                            ..BlobCheck::default()
                        }
                    } else {
                        BlobCheck::differs(
                            DifferenceKind::BlobContentDiffers,
                            format!("CRC32C {copied} under gitlab/; the source's is {source}"),
                        )
                    });
                }
            }
        }
        let Some(reader) = self.store.open_read(&key).await? else {
            return Ok(missing());
        };
        if reader.meta.size != blob.size {
            return Ok(wrong_size(reader.meta.size));
        }
        let mut body = reader.body;
        let mut hasher = DigestHasher::default();
        let mut bytes_hashed = 0;
        while let Some(piece) = body.next().await {
            let piece = piece?;
            bytes_hashed += piece.len() as u64;
            hasher.update(&piece);
        }
        let actual = hasher.finish();
        let mut check = BlobCheck {
            bytes_hashed,
            ..BlobCheck::default()
        };
        if &actual != digest {
            check.difference = Some((
                DifferenceKind::BlobContentDiffers,
                format!("its bytes under gitlab/ hash to {actual}"),
            ));
        }
        Ok(check)
    }
}

/// Compares one manifest as the source holds it with its registration.
fn compare_manifest(
    source: &PlannedManifest,
    registered: &RegisteredManifest,
    report: &mut Report,
) {
    if source.payload.as_ref() != registered.payload.as_slice() {
        let detail = format!(
            "registered payload ({} bytes) is not the source's ({} bytes)",
            registered.payload.len(),
            source.payload.len()
        );
        report.found(DifferenceKind::ManifestDiffers, &source.digest, detail);
    }
    let children: BTreeSet<String> = source.children.iter().map(Digest::to_string).collect();
    if children != registered.children {
        let detail = set_difference("index children", &children, &registered.children);
        report.found(DifferenceKind::ReferencesDiffer, &source.digest, detail);
    }
    let config = source.config.as_ref().map(|(d, _)| d.digest.to_string());
    if config != registered.config {
        let name = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".to_owned());
        let detail = format!(
            "config {} in the source, {} registered",
            name(&config),
            name(&registered.config)
        );
        report.found(DifferenceKind::ReferencesDiffer, &source.digest, detail);
    }
    let layers: BTreeSet<(String, u64)> = (source.layers.iter())
        .map(|layer| (layer.digest.to_string(), layer.size))
        .collect();
    if layers != registered.layers {
        let show = |set: &BTreeSet<(String, u64)>| -> BTreeSet<String> {
            set.iter()
                .map(|(d, size)| format!("{d} ({size} bytes)"))
                .collect()
        };
        let detail = set_difference("layers", &show(&layers), &show(&registered.layers));
        report.found(DifferenceKind::ReferencesDiffer, &source.digest, detail);
    }
}

/// The tags the source holds (less those the import leaves out) against the registered ones.
fn compare_tags(
    expected: &BTreeMap<&str, &Digest>,
    registered: &BTreeMap<String, String>,
    report: &mut Report,
) {
    for (&tag, &digest) in expected {
        match registered.get(tag) {
            None => report.found(
                DifferenceKind::TagMissing,
                tag,
                format!("points to {digest} in the source, not registered"),
            ),
            Some(registered) if registered != digest.as_str() => report.found(
                DifferenceKind::TagMoved,
                tag,
                format!("points to {digest} in the source, to {registered} as registered"),
            ),
            Some(_) => {}
        }
    }
    for (tag, digest) in registered {
        if !expected.contains_key(tag.as_str()) {
            report.found(
                DifferenceKind::TagExtra,
                tag,
                format!("registered (to {digest}), not in the source"),
            );
        }
    }
}

/// "`what`: only in the source: a, b; only registered: c" (the first few of each).
fn set_difference(what: &str, source: &BTreeSet<String>, registered: &BTreeSet<String>) -> String {
    let few = |items: Vec<&String>| {
        let shown: Vec<&str> = items.iter().take(3).map(|s| s.as_str()).collect();
        let more = items.len().saturating_sub(shown.len());
        match more {
            0 => shown.join(", "),
            more => format!("{} and {more} more", shown.join(", ")),
        }
    };
    let only_source: Vec<&String> = source.difference(registered).collect();
    let only_registered: Vec<&String> = registered.difference(source).collect();
    let mut parts = Vec::new();
    if !only_source.is_empty() {
        parts.push(format!("only in the source: {}", few(only_source)));
    }
    if !only_registered.is_empty() {
        parts.push(format!("only registered: {}", few(only_registered)));
    }
    format!("{what} differ; {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn tags_are_compared_both_ways_and_by_digest() {
        let (a, b) = (digest(1), digest(2));
        let expected: BTreeMap<&str, &Digest> =
            [("same", &a), ("moved", &a), ("missing", &b)].into();
        let registered: BTreeMap<String, String> = [
            ("same".to_owned(), a.to_string()),
            ("moved".to_owned(), b.to_string()),
            ("extra".to_owned(), a.to_string()),
        ]
        .into();
        let mut report = Report::default();
        compare_tags(&expected, &registered, &mut report);
        let found: Vec<(i32, &str)> = (report.differences.iter())
            .map(|d| (d.kind, d.subject.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (DifferenceKind::TagMissing as i32, "missing"),
                (DifferenceKind::TagMoved as i32, "moved"),
                (DifferenceKind::TagExtra as i32, "extra"),
            ]
        );
    }

    #[test]
    fn tag_differences_come_first_within_the_limit() {
        let mut report = Report::default();
        for n in 0..MAX_DIFFERENCES_LISTED {
            report.found(DifferenceKind::BlobMissing, n, "x");
        }
        let mut tags = Report::default();
        tags.found(DifferenceKind::TagMoved, "latest", "y");
        report.put_first(tags);
        assert_eq!(report.difference_count, MAX_DIFFERENCES_LISTED as u64 + 1);
        assert_eq!(report.differences.len(), MAX_DIFFERENCES_LISTED);
        assert_eq!(report.differences[0].subject, "latest");
    }

    #[test]
    fn differences_beyond_the_limit_are_counted_not_listed() {
        let mut report = Report::default();
        for n in 0..MAX_DIFFERENCES_LISTED + 5 {
            report.found(DifferenceKind::TagMissing, n, "x");
        }
        assert_eq!(report.differences.len(), MAX_DIFFERENCES_LISTED);
        assert_eq!(report.difference_count, MAX_DIFFERENCES_LISTED as u64 + 5);
    }

    #[test]
    fn set_differences_name_both_sides() {
        let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            set_difference("layers", &set(&["a", "b"]), &set(&["b", "c"])),
            "layers differ; only in the source: a; only registered: c"
        );
        assert_eq!(
            set_difference("x", &set(&["1", "2", "3", "4", "5"]), &set(&[])),
            "x differ; only in the source: 1, 2, 3 and 2 more"
        );
    }
}
