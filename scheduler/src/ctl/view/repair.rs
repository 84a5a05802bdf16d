//! Views of the project repair scan (`repair status`) and of batched background migrations
//! (`bbm list`, `repair restore`).

use std::fmt;

use serde::Serialize;

use ferry_proto::scheduler::v1::{
    BackgroundMigration, BackgroundMigrationList, RepairPass, RepairStatus,
};

use super::{eta, non_empty, on_off};

/// One full pass of the repair scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepairPassView {
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Projects analyzed in the pass.
    pub projects: u64,
    /// Repositories found missing.
    pub missing: u64,
}

impl From<RepairPass> for RepairPassView {
    fn from(pass: RepairPass) -> Self {
        Self {
            started_at: pass.started_at,
            finished_at: pass.finished_at,
            projects: pass.projects,
            missing: pass.missing,
        }
    }
}

/// The repair scan's progress: `repair status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepairStatusView {
    /// The scan's feature flag.
    pub enabled: bool,
    /// Workers at once; 0 = off.
    pub max_concurrency: u32,
    /// Projects known to the scheduler.
    pub projects: u64,
    /// Projects analyzed.
    pub completed: u64,
    /// Projects being analyzed.
    pub ongoing: u64,
    /// Projects whose analysis failed.
    pub failed: u64,
    /// Projects still to analyze.
    pub pending: u64,
    /// Repositories the registry has under analyzed projects that the scheduler lacks.
    pub missing_repositories: u64,
    /// Projects with at least one missing repository.
    pub projects_with_missing: u64,
    /// The scan's rate, projects per second.
    pub projects_per_second: f64,
    /// Seconds to finish at that rate; 0 when unknown or done.
    pub eta_seconds: u64,
    /// The replica running the scan; empty when none has reported.
    pub scanner: String,
    /// RFC 3339: when it last reported; empty when none has.
    pub scanner_reported_at: String,
    /// RFC 3339: when the pass in progress started; empty when none is.
    pub pass_started_at: String,
    /// The latest full passes, newest first.
    pub passes: Vec<RepairPassView>,
}

impl From<RepairStatus> for RepairStatusView {
    fn from(s: RepairStatus) -> Self {
        Self {
            enabled: s.enabled,
            max_concurrency: s.max_concurrency,
            projects: s.projects,
            completed: s.completed,
            ongoing: s.ongoing,
            failed: s.failed,
            pending: s.pending,
            missing_repositories: s.missing_repositories,
            projects_with_missing: s.projects_with_missing,
            projects_per_second: s.projects_per_second,
            eta_seconds: s.eta_seconds,
            scanner: s.scanner,
            scanner_reported_at: s.scanner_reported_at,
            pass_started_at: s.pass_started_at,
            passes: s.passes.into_iter().map(Into::into).collect(),
        }
    }
}

impl fmt::Display for RepairStatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Project repair scan")?;
        writeln!(
            f,
            "  scan                 {} ({} workers)",
            on_off(self.enabled),
            self.max_concurrency
        )?;
        writeln!(f, "  projects             {}", self.projects)?;
        writeln!(f, "  analyzed             {}", self.completed)?;
        writeln!(f, "  in analysis          {}", self.ongoing)?;
        writeln!(f, "  failed               {}", self.failed)?;
        writeln!(f, "  left                 {}", self.pending)?;
        writeln!(
            f,
            "  missing repositories {} under {} projects",
            self.missing_repositories, self.projects_with_missing
        )?;
        writeln!(
            f,
            "  rate                 {:.0} projects/s · ETA {}",
            self.projects_per_second,
            eta(self.eta_seconds)
        )?;
        if !self.scanner.is_empty() {
            writeln!(
                f,
                "  scanner              {} (reported {})",
                self.scanner, self.scanner_reported_at
            )?;
        }
        if !self.pass_started_at.is_empty() {
            writeln!(f, "  pass started         {}", self.pass_started_at)?;
        }
        if self.passes.is_empty() {
            return writeln!(f, "  full passes          none yet");
        }
        writeln!(f, "  full passes (newest first)")?;
        for p in &self.passes {
            writeln!(
                f,
                "    {} → {}: {} projects, {} missing",
                p.started_at, p.finished_at, p.projects, p.missing
            )?;
        }
        Ok(())
    }
}

/// One progress line of `repair status --wait` (a line view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RepairProgressView {
    /// Projects analyzed.
    pub completed: u64,
    /// Projects known to the scheduler.
    pub projects: u64,
    /// Projects still to analyze or in analysis.
    pub left: u64,
    /// The scan's rate, projects per second.
    pub projects_per_second: f64,
    /// Seconds to finish at that rate; 0 when unknown.
    pub eta_seconds: u64,
    /// Missing repositories found so far.
    pub missing_repositories: u64,
}

impl From<&RepairStatusView> for RepairProgressView {
    fn from(s: &RepairStatusView) -> Self {
        Self {
            completed: s.completed,
            projects: s.projects,
            left: s.pending + s.ongoing,
            projects_per_second: s.projects_per_second,
            eta_seconds: s.eta_seconds,
            missing_repositories: s.missing_repositories,
        }
    }
}

impl fmt::Display for RepairProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "repair scan: {}/{} projects analyzed · {} left · {:.0} projects/s · ETA {} · {} missing repositories so far",
            self.completed,
            self.projects,
            self.left,
            self.projects_per_second,
            eta(self.eta_seconds),
            self.missing_repositories
        )
    }
}

/// One batched background migration with its job figures (a line view).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackgroundMigrationView {
    /// Its name.
    pub name: String,
    /// The work function its jobs run.
    pub job_signature_name: String,
    /// The table it walks.
    pub table_name: String,
    /// The column it cuts into jobs.
    pub column_name: String,
    /// The first value of the column it covers.
    pub min_value: i64,
    /// The last value of the column it covers.
    pub max_value: i64,
    /// Values per job.
    pub batch_size: i32,
    /// active, paused, running, finished or failed.
    pub status: String,
    /// Why it failed; `null` unless failed.
    pub failure_error_code: Option<String>,
    /// RFC 3339; empty when not yet.
    pub created_at: String,
    /// RFC 3339; empty when not yet.
    pub started_at: String,
    /// RFC 3339; empty when not yet.
    pub finished_at: String,
    /// Jobs created.
    pub jobs: u64,
    /// Jobs finished.
    pub jobs_finished: u64,
    /// Jobs failed.
    pub jobs_failed: u64,
    /// Attempts over all jobs.
    pub attempts: u64,
    /// Time spent in work functions, milliseconds.
    pub work_ms: u64,
    /// Share of the range cut into jobs so far, 0..1.
    pub progress: f64,
    /// The last error of a failed job; empty when none.
    pub last_error: String,
}

impl From<BackgroundMigration> for BackgroundMigrationView {
    fn from(m: BackgroundMigration) -> Self {
        Self {
            name: m.name,
            job_signature_name: m.job_signature_name,
            table_name: m.table_name,
            column_name: m.column_name,
            min_value: m.min_value,
            max_value: m.max_value,
            batch_size: m.batch_size,
            status: m.status,
            failure_error_code: non_empty(m.failure_error_code),
            created_at: m.created_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            jobs: m.jobs,
            jobs_finished: m.jobs_finished,
            jobs_failed: m.jobs_failed,
            attempts: m.attempts,
            work_ms: m.work_ms,
            progress: m.progress,
            last_error: m.last_error,
        }
    }
}

impl BackgroundMigrationView {
    /// Whether it ended (finished or failed).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "finished" | "failed")
    }
}

impl fmt::Display for BackgroundMigrationView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failure = match &self.failure_error_code {
            Some(code) => format!(" ({code})"),
            None => String::new(),
        };
        let error = if self.last_error.is_empty() {
            String::new()
        } else {
            format!(" · last error: {}", self.last_error)
        };
        write!(
            f,
            "{} [{}{failure}] {}:{}.{} {}..{} · {:.0} % · {}/{} jobs finished, {} failed · {} attempts · {:.1} s of work{error}",
            self.name,
            self.status,
            self.job_signature_name,
            self.table_name,
            self.column_name,
            self.min_value,
            self.max_value,
            self.progress * 100.0,
            self.jobs_finished,
            self.jobs,
            self.jobs_failed,
            self.attempts,
            self.work_ms as f64 / 1000.0
        )
    }
}

/// Background migrations: `bbm list`. Its JSON is an array.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct BackgroundMigrationListView {
    /// The migrations.
    pub migrations: Vec<BackgroundMigrationView>,
}

impl From<BackgroundMigrationList> for BackgroundMigrationListView {
    fn from(list: BackgroundMigrationList) -> Self {
        Self {
            migrations: list.migrations.into_iter().map(Into::into).collect(),
        }
    }
}

impl fmt::Display for BackgroundMigrationListView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.migrations.is_empty() {
            return writeln!(f, "no background migrations");
        }
        for migration in &self.migrations {
            writeln!(f, "{migration}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repair_status_prints_and_serializes_its_passes() {
        let view = RepairStatusView::from(RepairStatus {
            enabled: true,
            max_concurrency: 4,
            projects: 100,
            completed: 60,
            ongoing: 4,
            failed: 1,
            pending: 35,
            missing_repositories: 3,
            projects_with_missing: 2,
            projects_per_second: 12.4,
            eta_seconds: 600,
            passes: vec![RepairPass {
                started_at: "t0".into(),
                finished_at: "t1".into(),
                projects: 100,
                missing: 3,
            }],
            ..RepairStatus::default()
        });
        assert_eq!(
            view.to_string(),
            "Project repair scan\n\
             \x20 scan                 on (4 workers)\n\
             \x20 projects             100\n\
             \x20 analyzed             60\n\
             \x20 in analysis          4\n\
             \x20 failed               1\n\
             \x20 left                 35\n\
             \x20 missing repositories 3 under 2 projects\n\
             \x20 rate                 12 projects/s · ETA 10 min\n\
             \x20 full passes (newest first)\n\
             \x20   t0 → t1: 100 projects, 3 missing\n"
        );
        assert_eq!(
            RepairProgressView::from(&view).to_string(),
            "repair scan: 60/100 projects analyzed · 39 left · 12 projects/s · ETA 10 min · 3 missing repositories so far"
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["passes"][0]["projects"], 100);
        assert_eq!(json["scanner"], "");
        assert_eq!(json.as_object().map(|o| o.len()), Some(15));
    }

    #[test]
    fn a_background_migration_is_one_line_and_a_list_an_array() {
        let list = BackgroundMigrationListView::from(BackgroundMigrationList {
            migrations: vec![BackgroundMigration {
                name: "restore_missing_repositories".into(),
                job_signature_name: "restore".into(),
                table_name: "projects".into(),
                column_name: "id".into(),
                min_value: 1,
                max_value: 2000,
                batch_size: 1000,
                status: "failed".into(),
                failure_error_code: "job_exceeds_max_attempt".into(),
                jobs: 2,
                jobs_finished: 1,
                jobs_failed: 1,
                attempts: 6,
                work_ms: 1500,
                progress: 1.0,
                last_error: "boom".into(),
                ..BackgroundMigration::default()
            }],
        });
        assert!(list.migrations[0].ended());
        assert_eq!(
            list.to_string(),
            "restore_missing_repositories [failed (job_exceeds_max_attempt)] restore:projects.id \
             1..2000 · 100 % · 1/2 jobs finished, 1 failed · 6 attempts · 1.5 s of work · last \
             error: boom\n"
        );
        let json = serde_json::to_value(&list).expect("JSON");
        assert_eq!(json[0]["failure_error_code"], "job_exceeds_max_attempt");
        assert_eq!(json[0]["progress"], 1.0);
        let empty = BackgroundMigrationListView::default();
        assert_eq!(empty.to_string(), "no background migrations\n");
        assert_eq!(serde_json::to_string(&empty).expect("JSON"), "[]");
        let view = BackgroundMigrationView::default();
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["failure_error_code"], serde_json::Value::Null);
    }
}
