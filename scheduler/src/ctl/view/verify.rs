//! `ferryctl verify`: each repository that does not match, the progress line and the summary.

use std::fmt;

use serde::Serialize;

use ferry_proto::common::v1::{DifferenceKind, VerifyCounts};
use ferry_proto::scheduler::v1::{RepositoryVerification, VerifyOutcome};

use super::{eta, human_bytes, non_empty};

/// An outcome's name as `ferryctl` prints it.
pub fn outcome_label(outcome: VerifyOutcome) -> &'static str {
    match outcome {
        VerifyOutcome::Unspecified => "unknown",
        VerifyOutcome::Match => "match",
        VerifyOutcome::Differs => "differs",
        VerifyOutcome::Failed => "failed",
        VerifyOutcome::NotMigrated => "not_migrated",
    }
}

fn outcome_name<S: serde::Serializer>(
    outcome: &VerifyOutcome,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome_label(*outcome))
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DifferenceView {
    /// What kind (`tag_moved`, `blob_missing`, ...).
    pub kind: &'static str,
    /// The tag or digest.
    pub subject: String,
    /// Both sides, in words.
    pub detail: String,
}

/// One repository's verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepositoryVerificationView {
    /// The repository.
    pub path: String,
    /// Printed `match`, `differs`, `failed` or `not_migrated`.
    #[serde(serialize_with = "outcome_name")]
    pub outcome: VerifyOutcome,
    /// Differences found (may exceed those listed).
    pub difference_count: u64,
    /// The differences listed.
    pub differences: Vec<DifferenceView>,
    /// Why it failed or was not verified.
    pub error: Option<String>,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
}

impl From<RepositoryVerification> for RepositoryVerificationView {
    fn from(verification: RepositoryVerification) -> Self {
        let outcome = verification.outcome();
        Self {
            path: verification.path,
            outcome,
            difference_count: verification.difference_count,
            differences: (verification.differences.into_iter())
                .map(|difference| DifferenceView {
                    kind: DifferenceKind::try_from(difference.kind)
                        .unwrap_or_default()
                        .label(),
                    subject: difference.subject,
                    detail: difference.detail,
                })
                .collect(),
            error: non_empty(verification.error),
            duration_ms: verification.duration_ms,
        }
    }
}

impl fmt::Display for RepositoryVerificationView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.difference_count {
            0 => writeln!(f, "{:<12} {}", outcome_label(self.outcome), self.path)?,
            n => writeln!(
                f,
                "{:<12} {} ({n} differences)",
                outcome_label(self.outcome),
                self.path
            )?,
        }
        for difference in &self.differences {
            writeln!(
                f,
                "  {:<20} {}: {}",
                difference.kind, difference.subject, difference.detail
            )?;
        }
        let unlisted = self
            .difference_count
            .saturating_sub(self.differences.len() as u64);
        if unlisted > 0 {
            writeln!(f, "  ... and {unlisted} more")?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

/// The figures of a whole verification run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifySummaryView {
    /// Repositories looked at.
    pub repositories: u64,
    /// By outcome.
    pub matched: u64,
    /// Repositories with at least one difference.
    pub differ: u64,
    /// Repositories whose comparison could not be made.
    pub failed: u64,
    /// Repositories named that are not `import_done`.
    pub not_migrated: u64,
    /// Differences in all.
    pub differences: u64,
    /// Tags, manifests and blobs compared.
    pub tags: u64,
    /// Manifests compared byte for byte.
    pub manifests: u64,
    /// Configs and layers checked.
    pub blobs: u64,
    /// Blobs compared by the CRC32C the bucket keeps.
    pub blobs_by_checksum: u64,
    /// Bytes re-read and hashed.
    pub bytes_hashed: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// Repositories that did not match, with their differences.
    pub problems: Vec<RepositoryVerificationView>,
}

impl VerifySummaryView {
    /// Counts one repository's verification in, keeping it when it did not match.
    pub fn add(&mut self, verification: RepositoryVerificationView, counts: Option<VerifyCounts>) {
        self.repositories += 1;
        match verification.outcome {
            VerifyOutcome::Match => self.matched += 1,
            VerifyOutcome::Differs => self.differ += 1,
            VerifyOutcome::NotMigrated => self.not_migrated += 1,
            VerifyOutcome::Failed | VerifyOutcome::Unspecified => self.failed += 1,
        }
        self.differences += verification.difference_count;
        if let Some(counts) = counts {
            self.tags += counts.tags;
            self.manifests += counts.manifests;
            self.blobs += counts.blobs;
            self.blobs_by_checksum += counts.blobs_by_checksum;
            self.bytes_hashed += counts.bytes_hashed;
        }
        if verification.outcome != VerifyOutcome::Match {
            self.problems.push(verification);
        }
    }

    /// Whether every repository matched.
    pub fn all_match(&self) -> bool {
        self.matched == self.repositories
    }
}

impl fmt::Display for VerifySummaryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            write!(f, "{problem}")?;
        }
        writeln!(
            f,
            "verified {} repositories in {:.1} s: {} match, {} differ ({} differences), {} failed, {} not migrated",
            self.repositories,
            self.elapsed_ms as f64 / 1000.0,
            self.matched,
            self.differ,
            self.differences,
            self.failed,
            self.not_migrated
        )?;
        writeln!(
            f,
            "compared {} tags, {} manifests byte for byte, {} blobs ({} by CRC32C, {} hashed)",
            self.tags,
            self.manifests,
            self.blobs,
            self.blobs_by_checksum,
            human_bytes(self.bytes_hashed)
        )
    }
}

/// The line `ferryctl verify` keeps on stderr while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifyProgressView {
    /// Repositories verified so far.
    pub done: u64,
    /// Repositories in all.
    pub total: u64,
    /// Repositories that did not match so far.
    pub problems: u64,
    /// Time since the start, milliseconds.
    pub elapsed_ms: u64,
}

impl fmt::Display for VerifyProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = match self.total {
            0 => 100.0,
            total => self.done as f64 * 100.0 / total as f64,
        };
        let left = self.total.saturating_sub(self.done);
        let eta_seconds = match self.done {
            0 => 0,
            done => (self.elapsed_ms as f64 / done as f64 * left as f64 / 1000.0).ceil() as u64,
        };
        write!(
            f,
            "verify: {}/{} repositories ({percent:.0} %), {} not matching, {:.1} s, ETA {}",
            self.done,
            self.total,
            self.problems,
            self.elapsed_ms as f64 / 1000.0,
            if left == 0 {
                "-".to_owned()
            } else {
                eta(eta_seconds.max(1))
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::common::v1::Difference;

    use super::*;

    #[test]
    fn a_difference_is_named_with_its_kind_subject_and_both_sides() {
        let view = RepositoryVerificationView::from(RepositoryVerification {
            path: "group/app".into(),
            outcome: VerifyOutcome::Differs.into(),
            difference_count: 2,
            differences: vec![Difference {
                kind: DifferenceKind::TagMoved.into(),
                subject: "latest".into(),
                detail: "points to a in the source, to b as registered".into(),
            }],
            ..RepositoryVerification::default()
        });
        assert_eq!(
            view.to_string(),
            "differs      group/app (2 differences)\n  tag_moved            latest: points to a in \
             the source, to b as registered\n  ... and 1 more\n"
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["outcome"], "differs");
        assert_eq!(json["differences"][0]["kind"], "tag_moved");
        let mut summary = VerifySummaryView::default();
        summary.add(view, None);
        assert!(!summary.all_match());
        assert_eq!((summary.differ, summary.differences), (1, 2));
    }

    #[test]
    fn the_progress_line_gives_an_eta_from_the_rate_so_far() {
        let line = VerifyProgressView {
            done: 10,
            total: 40,
            problems: 1,
            elapsed_ms: 5000,
        };
        assert_eq!(
            line.to_string(),
            "verify: 10/40 repositories (25 %), 1 not matching, 5.0 s, ETA 15 s"
        );
        let finished = VerifyProgressView { done: 40, ..line };
        assert!(finished.to_string().ends_with("ETA -"));
    }
}
