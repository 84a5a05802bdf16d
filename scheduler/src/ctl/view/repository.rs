//! Views of repositories: one repository, a page of them, the queues, the double-check and the
//! writable check.

use std::fmt;

use serde::{Serialize, Serializer};

use ferry_proto::common::v1::ImportStats;
use ferry_proto::scheduler::v1::{
    DoubleCheckReport, QueuePreview, Repository, RepositoryList, WritableAnswer,
};
use ferry_shared::step::{MaybeStep, Step};

use super::{human_bytes, non_empty};

/// Step figures: one repository's, or the sum over every repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsView {
    /// Manifests registered (index children count).
    pub manifests: u64,
    /// Tags registered.
    pub tags: u64,
    /// Tags skipped: no current link, or their manifest was skipped.
    pub tags_skipped: u64,
    /// Distinct config and layer blobs registered.
    pub blobs: u64,
    /// Blobs copied under `gitlab/`.
    pub blobs_copied: u64,
    /// Bytes copied under `gitlab/`.
    pub bytes_copied: u64,
    /// Blobs already under `gitlab/` (copy skipped).
    pub blobs_present: u64,
    /// Wall-clock duration of the step, milliseconds.
    pub duration_ms: u64,
    /// Tagged manifests skipped (no revision link, schema 1, unlinked config).
    pub manifests_skipped: u64,
    /// Layers left out of their manifest (not linked to their repository).
    pub layers_skipped: u64,
}

impl From<ImportStats> for StatsView {
    fn from(stats: ImportStats) -> Self {
        Self {
            manifests: stats.manifests,
            tags: stats.tags,
            tags_skipped: stats.tags_skipped,
            blobs: stats.blobs,
            blobs_copied: stats.blobs_copied,
            bytes_copied: stats.bytes_copied,
            blobs_present: stats.blobs_present,
            duration_ms: stats.duration_ms,
            manifests_skipped: stats.manifests_skipped,
            layers_skipped: stats.layers_skipped,
        }
    }
}

impl From<Option<ImportStats>> for StatsView {
    fn from(stats: Option<ImportStats>) -> Self {
        stats.map(Self::from).unwrap_or_default()
    }
}

impl fmt::Display for StatsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  manifests       {} registered, {} skipped (no revision link, schema 1 or unlinked config)",
            self.manifests, self.manifests_skipped
        )?;
        writeln!(
            f,
            "  tags            {} registered, {} skipped (no current link, or manifest skipped)",
            self.tags, self.tags_skipped
        )?;
        writeln!(
            f,
            "  blobs           {} registered, {} copied ({}), {} already under gitlab/",
            self.blobs,
            self.blobs_copied,
            human_bytes(self.bytes_copied),
            self.blobs_present
        )?;
        if self.layers_skipped > 0 {
            writeln!(
                f,
                "  layers          {} skipped (not linked to their repository)",
                self.layers_skipped
            )?;
        }
        Ok(())
    }
}

/// One repository: `status PATH`, `register`, `start`, `cancel`, `queue next`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepositoryView {
    /// The scheduler's id.
    pub id: i64,
    /// The repository path.
    pub path: String,
    /// Its project's path.
    pub project_path: String,
    /// Its migration state.
    pub migration_state: String,
    /// Aborts counted towards `max_retries`.
    pub retries_count: i32,
    /// Why it was skipped (or done without an import); empty otherwise.
    pub skipped_reason: String,
    /// The state it was aborted in; empty unless aborted.
    pub aborted_in_state: String,
    /// The last step's error; empty when none.
    pub last_error: String,
    /// RFC 3339; empty when unset.
    pub pre_import_started_at: String,
    /// RFC 3339; empty when unset.
    pub pre_import_done_at: String,
    /// RFC 3339; empty when unset.
    pub import_started_at: String,
    /// RFC 3339; empty when unset.
    pub import_done_at: String,
    /// RFC 3339; empty when unset.
    pub aborted_at: String,
    /// RFC 3339; empty when unset.
    pub skipped_at: String,
    /// The importer that accepted the current (or last) step; empty until one has.
    pub importer: String,
    /// RFC 3339: when the importer accepted it; empty until one has.
    pub step_accepted_at: String,
    /// The current (or last) step; `None` (printed as 0, like the API's) until one is claimed.
    #[serde(serialize_with = "step_number")]
    pub step: Option<Step>,
    /// An operator's cancel in flight (its skip reason); empty otherwise.
    pub cancel_requested: String,
    /// The figures of its completed steps.
    pub stats: StatsView,
    /// Its last verification, if any.
    pub verification: Option<LastVerificationView>,
}

/// A repository's last verification, as `status PATH` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastVerificationView {
    /// RFC 3339.
    pub at: String,
    /// `match`, `differs` or `failed`.
    pub outcome: &'static str,
    /// Differences found.
    pub differences: u64,
    /// The first difference or the failure, in words.
    pub detail: Option<String>,
}

impl From<Repository> for RepositoryView {
    fn from(repo: Repository) -> Self {
        let verify_outcome = repo.verify_outcome();
        Self {
            id: repo.id,
            path: repo.path,
            project_path: repo.project_path,
            migration_state: repo.migration_state,
            retries_count: repo.retries_count,
            skipped_reason: repo.skipped_reason,
            aborted_in_state: repo.aborted_in_state,
            last_error: repo.last_error,
            pre_import_started_at: repo.pre_import_started_at,
            pre_import_done_at: repo.pre_import_done_at,
            import_started_at: repo.import_started_at,
            import_done_at: repo.import_done_at,
            aborted_at: repo.aborted_at,
            skipped_at: repo.skipped_at,
            importer: repo.importer,
            step_accepted_at: repo.step_accepted_at,
            // A scheduler's answer is never out of range (its column holds no such number).
            step: Step::from_wire(repo.step).ok().flatten(),
            cancel_requested: repo.cancel_requested,
            stats: repo.stats.into(),
            verification: (!repo.verified_at.is_empty()).then(|| LastVerificationView {
                outcome: super::outcome_label(verify_outcome),
                at: repo.verified_at,
                differences: repo.verify_differences,
                detail: super::non_empty(repo.verify_detail),
            }),
        }
    }
}

impl fmt::Display for RepositoryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path)?;
        writeln!(f, "  project         {}", self.project_path)?;
        writeln!(f, "  state           {}", self.migration_state)?;
        writeln!(f, "  retries         {}", self.retries_count)?;
        writeln!(f, "  step            {}", self.step.wire())?;
        for (label, value) in [
            ("cancel pending", &self.cancel_requested),
            ("skipped reason", &self.skipped_reason),
            ("aborted in", &self.aborted_in_state),
            ("last error", &self.last_error),
            ("pre-import from", &self.pre_import_started_at),
            ("pre-import done", &self.pre_import_done_at),
            ("import from", &self.import_started_at),
            ("import done", &self.import_done_at),
            ("importer", &self.importer),
            ("accepted at", &self.step_accepted_at),
            ("aborted at", &self.aborted_at),
            ("skipped at", &self.skipped_at),
        ] {
            if !value.is_empty() {
                writeln!(f, "  {label:<15} {value}")?;
            }
        }
        if let Some(verified) = &self.verification {
            let outcome = match verified.differences {
                0 => verified.outcome.to_owned(),
                n => format!("{} ({n} differences)", verified.outcome),
            };
            writeln!(f, "  verified        {} at {}", outcome, verified.at)?;
            if let Some(detail) = &verified.detail {
                writeln!(f, "  verify detail   {detail}")?;
            }
        }
        write!(f, "{}", self.stats)
    }
}

/// A step as the API gives it: its number, 0 for none.
fn step_number<S: Serializer>(step: &Option<Step>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(step.wire())
}

/// A page of repositories by path: `list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepositoryPageView {
    /// The repositories, by path.
    pub repositories: Vec<RepositoryView>,
    /// The `--after` of the next page; empty on the last page.
    pub next_after: String,
}

impl From<RepositoryList> for RepositoryPageView {
    fn from(page: RepositoryList) -> Self {
        Self {
            repositories: page.repositories.into_iter().map(Into::into).collect(),
            next_after: page.next_after,
        }
    }
}

impl fmt::Display for RepositoryPageView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for repo in &self.repositories {
            let reason = if repo.skipped_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", repo.skipped_reason)
            };
            writeln!(f, "{:<16} {}{reason}", repo.migration_state, repo.path)?;
        }
        if !self.next_after.is_empty() {
            writeln!(f, "next: --after {}", self.next_after)?;
        }
        Ok(())
    }
}

/// Both queues' heads: `queue`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueView {
    /// Ready repositories waiting.
    pub ready: u64,
    /// The next ready repository (priority first, then by path).
    pub next_ready: Option<RepositoryView>,
    /// The next aborted repository, retried before any ready one.
    pub next_aborted: Option<RepositoryView>,
}

impl From<QueuePreview> for QueueView {
    fn from(preview: QueuePreview) -> Self {
        Self {
            ready: preview.ready,
            next_ready: preview.next_ready.map(Into::into),
            next_aborted: preview.next_aborted.map(Into::into),
        }
    }
}

impl fmt::Display for QueueView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ready repositories  {}", self.ready)?;
        writeln!(
            f,
            "next aborted retry  {} (retried first)",
            path_or_dash(&self.next_aborted)
        )?;
        writeln!(f, "next ready          {}", path_or_dash(&self.next_ready))
    }
}

/// The repository's path, or `-`.
fn path_or_dash(repository: &Option<RepositoryView>) -> &str {
    repository.as_ref().map_or("-", |r| r.path.as_str())
}

/// One queue's head: `queue next`, `queue next-aborted`. Its JSON is the repository, or `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct QueueHeadView {
    /// The queue's name in the text ("ready", "aborted").
    #[serde(skip)]
    pub queue: &'static str,
    /// The repository at its head, if any waits.
    pub repository: Option<RepositoryView>,
}

impl fmt::Display for QueueHeadView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repository {
            Some(repository) => write!(f, "{repository}"),
            None => writeln!(f, "no {} repository waits", self.queue),
        }
    }
}

/// The double-check for dropped create events: `double-check`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DoubleCheckView {
    /// Whether it was a dry run (text only).
    #[serde(skip)]
    pub dry_run: bool,
    /// RFC 3339: the start of the window checked.
    pub since: String,
    /// Repositories the importers report created in the window.
    pub checked: u64,
    /// Of those, missing here.
    pub missing: u64,
    /// Missing ones created (0 in a dry run).
    pub created: u64,
    /// The first 100 missing paths.
    pub missing_paths: Vec<String>,
    /// RFC 3339: when the last full repair pass started; `null` if none did.
    pub last_full_repair_pass_at: Option<String>,
}

impl DoubleCheckView {
    /// The view of `report`, from a run that was a dry run or not.
    pub fn new(report: DoubleCheckReport, dry_run: bool) -> Self {
        Self {
            dry_run,
            since: report.since,
            checked: report.checked,
            missing: report.missing,
            created: report.created,
            missing_paths: report.missing_paths,
            last_full_repair_pass_at: non_empty(report.last_full_repair_pass_at),
        }
    }
}

impl fmt::Display for DoubleCheckView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry_run = if self.dry_run { " (dry run)" } else { "" };
        writeln!(f, "double-check since {}{dry_run}", self.since)?;
        writeln!(f, "  repositories created in the window   {}", self.checked)?;
        writeln!(
            f,
            "  missing here                          {}",
            self.missing
        )?;
        writeln!(
            f,
            "  created                               {}",
            self.created
        )?;
        for path in &self.missing_paths {
            writeln!(f, "    {path}")?;
        }
        let pass = match &self.last_full_repair_pass_at {
            None => "none yet: check back to the start of the migration".to_owned(),
            Some(at) => format!("{at} (checking back to then is enough)"),
        };
        writeln!(f, "  last full repair pass started        {pass}")
    }
}

/// Whether a repository accepts writes: `writable`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WritableView {
    /// The repository path.
    pub path: String,
    /// False while its final import runs.
    pub writable: bool,
    /// Its migration state.
    pub migration_state: String,
    /// Why it is read-only; empty when writable.
    pub reason: String,
}

impl WritableView {
    /// The view of the answer about `path`.
    pub fn new(path: String, answer: WritableAnswer) -> Self {
        Self {
            path,
            writable: answer.writable,
            migration_state: answer.migration_state,
            reason: answer.reason,
        }
    }
}

impl fmt::Display for WritableView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.writable {
            writeln!(f, "{} accepts writes ({})", self.path, self.migration_state)
        } else {
            writeln!(f, "{} is read-only: {}", self.path, self.reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::scheduler::v1::VerifyOutcome;

    use super::*;

    fn sample() -> Repository {
        Repository {
            id: 7,
            path: "group-d/project-6/broken".into(),
            project_path: "group-d/project-6".into(),
            migration_state: "import_skipped".into(),
            retries_count: 3,
            skipped_reason: "too_many_retries".into(),
            last_error: "pre_import_failed: manifest sha256:ab is missing from storage".into(),
            stats: Some(ImportStats {
                manifests: 3,
                blobs: 4,
                blobs_copied: 4,
                bytes_copied: 8500,
                layers_skipped: 1,
                ..ImportStats::default()
            }),
            step: 6,
            ..Repository::default()
        }
    }

    #[test]
    fn a_repository_prints_its_set_fields_and_serializes_every_one() {
        let view = RepositoryView::from(sample());
        assert_eq!(
            view.to_string(),
            "group-d/project-6/broken\n\
             \x20 project         group-d/project-6\n\
             \x20 state           import_skipped\n\
             \x20 retries         3\n\
             \x20 step            6\n\
             \x20 skipped reason  too_many_retries\n\
             \x20 last error      pre_import_failed: manifest sha256:ab is missing from storage\n\
             \x20 manifests       3 registered, 0 skipped (no revision link, schema 1 or unlinked config)\n\
             \x20 tags            0 registered, 0 skipped (no current link, or manifest skipped)\n\
             \x20 blobs           4 registered, 4 copied (8.3 KiB), 0 already under gitlab/\n\
             \x20 layers          1 skipped (not linked to their repository)\n"
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["path"], "group-d/project-6/broken");
        assert_eq!(json["retries_count"], 3);
        assert_eq!(json["aborted_at"], "");
        assert_eq!(json["stats"]["bytes_copied"], 8500);
        assert_eq!(json["step"], 6);
        let unnumbered = RepositoryView::from(Repository {
            step: 0,
            ..sample()
        });
        assert_eq!(unnumbered.step, None);
        assert_eq!(serde_json::to_value(&unnumbered).expect("JSON")["step"], 0);
        assert_eq!(json["stats"]["duration_ms"], 0);
        assert_eq!(json.as_object().map(|o| o.len()), Some(20));
        assert_eq!(json["stats"].as_object().map(|o| o.len()), Some(10));
        assert_eq!(json["verification"], serde_json::Value::Null);
    }

    #[test]
    fn a_verified_repository_shows_its_last_outcome() {
        let verified = RepositoryView::from(Repository {
            verified_at: "2026-12-06T12:00:00+00:00".into(),
            verify_outcome: VerifyOutcome::Differs.into(),
            verify_differences: 2,
            verify_detail: "tag_moved stable: points elsewhere".into(),
            ..sample()
        });
        let text = verified.to_string();
        assert!(
            text.contains(
                "  verified        differs (2 differences) at 2026-12-06T12:00:00+00:00\n\
                 \x20 verify detail   tag_moved stable: points elsewhere\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&verified).expect("JSON");
        assert_eq!(json["verification"]["outcome"], "differs");
        assert_eq!(json["verification"]["differences"], 2);
    }

    #[test]
    fn a_queue_head_is_its_repository_or_null() {
        let empty = QueueHeadView {
            queue: "aborted",
            repository: None,
        };
        assert_eq!(empty.to_string(), "no aborted repository waits\n");
        assert_eq!(serde_json::to_string(&empty).expect("JSON"), "null");
        let next = QueueHeadView {
            queue: "ready",
            repository: Some(sample().into()),
        };
        let json = serde_json::to_value(&next).expect("JSON");
        assert_eq!(json["migration_state"], "import_skipped");
        let both = QueueView::from(QueuePreview {
            next_ready: Some(sample()),
            next_aborted: None,
            ready: 5,
        });
        assert_eq!(
            both.to_string(),
            "ready repositories  5\n\
             next aborted retry  - (retried first)\n\
             next ready          group-d/project-6/broken\n"
        );
        let json = serde_json::to_value(&both).expect("JSON");
        assert_eq!(json["next_aborted"], serde_json::Value::Null);
        assert_eq!(json["next_ready"]["id"], 7);
    }

    #[test]
    fn a_page_lists_state_and_path_and_where_to_go_on() {
        let page = RepositoryPageView::from(RepositoryList {
            repositories: vec![sample()],
            next_after: "group-d/project-6/broken".into(),
        });
        assert_eq!(
            page.to_string(),
            "import_skipped   group-d/project-6/broken (too_many_retries)\n\
             next: --after group-d/project-6/broken\n"
        );
        let json = serde_json::to_value(&page).expect("JSON");
        assert_eq!(json["repositories"][0]["path"], "group-d/project-6/broken");
        assert_eq!(json["next_after"], "group-d/project-6/broken");
    }

    #[test]
    fn the_double_check_and_writable_answers() {
        let report = DoubleCheckReport {
            since: "2026-11-20T00:00:00+00:00".into(),
            checked: 4,
            missing: 1,
            created: 0,
            missing_paths: vec!["a/b/c".into()],
            last_full_repair_pass_at: String::new(),
        };
        let view = DoubleCheckView::new(report, true);
        assert_eq!(
            view.to_string(),
            "double-check since 2026-11-20T00:00:00+00:00 (dry run)\n\
             \x20 repositories created in the window   4\n\
             \x20 missing here                          1\n\
             \x20 created                               0\n\
             \x20   a/b/c\n\
             \x20 last full repair pass started        none yet: check back to the start of the migration\n"
        );
        assert_eq!(
            serde_json::to_string(&view).expect("JSON"),
            r#"{"since":"2026-11-20T00:00:00+00:00","checked":4,"missing":1,"created":0,"missing_paths":["a/b/c"],"last_full_repair_pass_at":null}"#
        );
        let answer = WritableAnswer {
            writable: false,
            migration_state: "importing".into(),
            reason: "its final import runs".into(),
        };
        let view = WritableView::new("a/b/c".into(), answer);
        assert_eq!(
            view.to_string(),
            "a/b/c is read-only: its final import runs\n"
        );
        assert_eq!(
            serde_json::to_string(&view).expect("JSON"),
            r#"{"path":"a/b/c","writable":false,"migration_state":"importing","reason":"its final import runs"}"#
        );
    }
}
