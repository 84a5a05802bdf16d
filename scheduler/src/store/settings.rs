//! Run-time settings, one row shared by every replica, with the original's defaults.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::SchedulerStore;

/// Run-time settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The global switch.
    pub enabled: bool,
    /// Most repositories in process at once.
    pub capacity: i32,
    /// Aborts before a repository is skipped (`too_many_retries`).
    pub max_retries: i32,
    /// A step older than this is checked with its importer by the guard.
    pub max_step_duration: Duration,
    /// A pre-import still running after this long is canceled (see `pre_import_tags_rate`).
    pub pre_import_timeout: Duration,
    /// A final import still running after this long is canceled.
    pub import_timeout: Duration,
    /// Skip a repository with more tags than this (`too_many_tags`); 0 = no limit.
    pub max_tags_count: i32,
    /// Attempts to start a step while every importer is busy, before aborting it.
    pub start_max_retries: i32,
    /// Seconds per tag a pre-import past `pre_import_timeout` may still run.
    pub pre_import_tags_rate: f64,
    /// Wait after a step ends before starting the next repository.
    pub enqueue_waiting_time: Duration,
    /// Only repositories registered before this are migrated.
    pub created_before: Option<DateTime<Utc>>,
    /// Only repositories on these plans (no plan counts as `free`); `None` = all plans.
    pub target_plans: Option<Vec<String>>,
    /// Root namespaces never migrated.
    pub deny_root_namespaces: Vec<String>,
    /// The project repair scan's feature flag.
    pub repair_enabled: bool,
    /// Repair scan workers at once; 0 = off.
    pub repair_max_concurrency: i32,
    /// An ongoing repair analysis older than this goes back to the scan.
    pub repair_stale_after: Duration,
}

impl Default for Settings {
    /// The defaults of the settings table (its column defaults).
    fn default() -> Self {
        Self {
            enabled: false,
            capacity: 4,
            max_retries: 3,
            max_step_duration: Duration::from_secs(300),
            pre_import_timeout: Duration::from_secs(1800),
            import_timeout: Duration::from_secs(600),
            max_tags_count: 100,
            start_max_retries: 50,
            pre_import_tags_rate: 0.5,
            enqueue_waiting_time: Duration::ZERO,
            created_before: None,
            target_plans: None,
            deny_root_namespaces: Vec::new(),
            repair_enabled: false,
            repair_max_concurrency: 2,
            repair_stale_after: Duration::from_secs(7200),
        }
    }
}

impl Settings {
    /// The time limit of a pre-import of a repository with `tags` tags: `pre_import_timeout`, or
    /// `tags × pre_import_tags_rate` when that is longer (a big repository needs longer).
    pub fn pre_import_limit(&self, tags: Option<i32>) -> Duration {
        let by_tags = Duration::from_secs_f64(
            f64::from(tags.unwrap_or(0).max(0)) * self.pre_import_tags_rate.max(0.0),
        );
        self.pre_import_timeout.max(by_tags)
    }
}

/// A change to a setting that can also be cleared (set to "no limit").
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Change<T> {
    /// Left as it is.
    #[default]
    Keep,
    /// Cleared.
    Clear,
    /// Set to this value.
    Set(T),
}

impl<T> Change<T> {
    /// Whether the setting changes (is cleared or set).
    pub fn changes(&self) -> bool {
        !matches!(self, Change::Keep)
    }

    /// The new value, when one is set.
    pub fn value(&self) -> Option<&T> {
        match self {
            Change::Set(value) => Some(value),
            Change::Keep | Change::Clear => None,
        }
    }
}

/// A partial update of the settings: `None` (or [`Change::Keep`]) leaves a value as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsPatch {
    /// See [`Settings::enabled`].
    pub enabled: Option<bool>,
    /// See [`Settings::capacity`].
    pub capacity: Option<i32>,
    /// See [`Settings::max_retries`].
    pub max_retries: Option<i32>,
    /// See [`Settings::max_step_duration`].
    pub max_step_duration: Option<Duration>,
    /// See [`Settings::pre_import_timeout`].
    pub pre_import_timeout: Option<Duration>,
    /// See [`Settings::import_timeout`].
    pub import_timeout: Option<Duration>,
    /// See [`Settings::max_tags_count`].
    pub max_tags_count: Option<i32>,
    /// See [`Settings::start_max_retries`].
    pub start_max_retries: Option<i32>,
    /// See [`Settings::pre_import_tags_rate`].
    pub pre_import_tags_rate: Option<f64>,
    /// See [`Settings::enqueue_waiting_time`].
    pub enqueue_waiting_time: Option<Duration>,
    /// See [`Settings::created_before`]; [`Change::Clear`] removes the limit.
    pub created_before: Change<DateTime<Utc>>,
    /// See [`Settings::target_plans`]; [`Change::Clear`] means all plans.
    pub target_plans: Change<Vec<String>>,
    /// See [`Settings::deny_root_namespaces`].
    pub deny_root_namespaces: Option<Vec<String>>,
    /// See [`Settings::repair_enabled`].
    pub repair_enabled: Option<bool>,
    /// See [`Settings::repair_max_concurrency`].
    pub repair_max_concurrency: Option<i32>,
    /// See [`Settings::repair_stale_after`].
    pub repair_stale_after: Option<Duration>,
}

impl SettingsPatch {
    /// Every problem with the patch, or nothing.
    pub fn problems(&self) -> Vec<String> {
        use crate::limits;
        let mut problems = Vec::new();
        for (range, value) in [
            (limits::MAX_STEP_DURATION_SECS, self.max_step_duration),
            (limits::PRE_IMPORT_TIMEOUT_SECS, self.pre_import_timeout),
            (limits::IMPORT_TIMEOUT_SECS, self.import_timeout),
            (limits::ENQUEUE_WAITING_TIME_SECS, self.enqueue_waiting_time),
            (limits::REPAIR_STALE_AFTER_SECS, self.repair_stale_after),
        ] {
            if let Some(Err(problem)) = value.map(|d| range.check(d.as_secs())) {
                problems.push(problem);
            }
        }
        for (range, value) in [
            (limits::CAPACITY, self.capacity),
            (limits::MAX_RETRIES, self.max_retries),
            (limits::MAX_TAGS_COUNT, self.max_tags_count),
            (limits::START_MAX_RETRIES, self.start_max_retries),
            (limits::REPAIR_MAX_CONCURRENCY, self.repair_max_concurrency),
        ] {
            if let Some(Err(problem)) = value.map(|v| range.check(v)) {
                problems.push(problem);
            }
        }
        if self
            .pre_import_tags_rate
            .is_some_and(|r| !(0.0..=limits::PRE_IMPORT_TAGS_RATE_MAX).contains(&r))
        {
            problems.push(format!(
                "pre_import_tags_rate must be between 0 and {} seconds",
                limits::PRE_IMPORT_TAGS_RATE_MAX
            ));
        }
        for (name, list) in [
            ("deny_root_namespaces", self.deny_root_namespaces.as_ref()),
            ("target_plans", self.target_plans.value()),
        ] {
            if let Some(Err(problem)) = list.map(|l| limits::NAME_LIST.check(l.len())) {
                problems.push(format!("{name}: {problem}"));
            }
        }
        let names = self.deny_root_namespaces.iter().flatten();
        let plans = self.target_plans.value().into_iter().flatten();
        for name in names.chain(plans) {
            if name.is_empty() || name.len() > 255 || name.contains('/') {
                problems.push(format!("{name:?} is not a root namespace or plan name"));
            }
        }
        problems
    }
}

fn secs(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

impl SchedulerStore {
    /// Current settings.
    #[tracing::instrument(name = "db.settings", skip_all, err(level = "warn"))]
    pub async fn settings(&self) -> Result<Settings, sqlx::Error> {
        let row = sqlx::query(
            "SELECT enabled, capacity, max_retries, max_step_duration_secs, pre_import_timeout_secs, \
                    import_timeout_secs, max_tags_count, start_max_retries, pre_import_tags_rate, \
                    enqueue_waiting_time_secs, created_before, target_plans, deny_root_namespaces, \
                    repair_enabled, repair_max_concurrency, repair_stale_after_secs \
             FROM migration_settings",
        )
        .fetch_one(&self.pool)
        .await?;
        let duration =
            |name: &str| Duration::from_secs(u64::try_from(row.get::<i32, _>(name)).unwrap_or(0));
        Ok(Settings {
            enabled: row.get("enabled"),
            capacity: row.get("capacity"),
            max_retries: row.get("max_retries"),
            max_step_duration: duration("max_step_duration_secs"),
            pre_import_timeout: duration("pre_import_timeout_secs"),
            import_timeout: duration("import_timeout_secs"),
            max_tags_count: row.get("max_tags_count"),
            start_max_retries: row.get("start_max_retries"),
            pre_import_tags_rate: row.get("pre_import_tags_rate"),
            enqueue_waiting_time: duration("enqueue_waiting_time_secs"),
            created_before: row.get("created_before"),
            target_plans: row.get("target_plans"),
            deny_root_namespaces: row.get("deny_root_namespaces"),
            repair_enabled: row.get("repair_enabled"),
            repair_max_concurrency: row.get("repair_max_concurrency"),
            repair_stale_after: duration("repair_stale_after_secs"),
        })
    }

    /// Applies `patch` (already checked with [`SettingsPatch::problems`]) and returns the result.
    #[tracing::instrument(name = "db.update_settings", skip_all, err(level = "warn"))]
    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, sqlx::Error> {
        sqlx::query(
            "UPDATE migration_settings SET \
                 enabled = COALESCE($1, enabled), capacity = COALESCE($2, capacity), \
                 max_retries = COALESCE($3, max_retries), \
                 max_step_duration_secs = COALESCE($4, max_step_duration_secs), \
                 pre_import_timeout_secs = COALESCE($5, pre_import_timeout_secs), \
                 import_timeout_secs = COALESCE($6, import_timeout_secs), \
                 max_tags_count = COALESCE($7, max_tags_count), \
                 start_max_retries = COALESCE($8, start_max_retries), \
                 pre_import_tags_rate = COALESCE($9, pre_import_tags_rate), \
                 enqueue_waiting_time_secs = COALESCE($10, enqueue_waiting_time_secs), \
                 created_before = CASE WHEN $11 THEN $12 ELSE created_before END, \
                 target_plans = CASE WHEN $13 THEN $14 ELSE target_plans END, \
                 deny_root_namespaces = COALESCE($15, deny_root_namespaces), \
                 repair_enabled = COALESCE($16, repair_enabled), \
                 repair_max_concurrency = COALESCE($17, repair_max_concurrency), \
                 repair_stale_after_secs = COALESCE($18, repair_stale_after_secs), \
                 updated_at = now()",
        )
        .bind(patch.enabled)
        .bind(patch.capacity)
        .bind(patch.max_retries)
        .bind(patch.max_step_duration.map(secs))
        .bind(patch.pre_import_timeout.map(secs))
        .bind(patch.import_timeout.map(secs))
        .bind(patch.max_tags_count)
        .bind(patch.start_max_retries)
        .bind(patch.pre_import_tags_rate)
        .bind(patch.enqueue_waiting_time.map(secs))
        .bind(patch.created_before.changes())
        .bind(patch.created_before.value())
        .bind(patch.target_plans.changes())
        .bind(patch.target_plans.value())
        .bind(patch.deny_root_namespaces.clone())
        .bind(patch.repair_enabled)
        .bind(patch.repair_max_concurrency)
        .bind(patch.repair_stale_after.map(secs))
        .execute(&self.pool)
        .await?;
        self.settings().await
    }

    /// Whether the last step that ended, ended at least `wait` ago (always, when `wait` is 0).
    #[tracing::instrument(name = "db.waiting_time_passed", skip_all, err(level = "warn"))]
    pub async fn waiting_time_passed(&self, wait: Duration) -> Result<bool, sqlx::Error> {
        if wait.is_zero() {
            return Ok(true);
        }
        sqlx::query_scalar(
            "SELECT COALESCE(GREATEST(max(migration_pre_import_done_at), max(migration_import_done_at), \
                 max(migration_aborted_at), max(migration_skipped_at)) < now() - make_interval(secs => $1), true) \
             FROM container_repositories",
        )
        .bind(wait.as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_names_every_problem() {
        let patch = SettingsPatch {
            capacity: Some(-1),
            max_step_duration: Some(Duration::ZERO),
            pre_import_tags_rate: Some(f64::NAN),
            deny_root_namespaces: Some(vec!["a/b".into()]),
            ..SettingsPatch::default()
        };
        let problems = patch.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            SettingsPatch {
                capacity: Some(40),
                ..SettingsPatch::default()
            }
            .problems()
            .is_empty()
        );
    }

    #[test]
    fn big_repositories_get_a_longer_pre_import_limit() {
        let settings = Settings {
            enabled: true,
            capacity: 1,
            ..Settings::default()
        };
        assert_eq!(
            settings.pre_import_limit(Some(10)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            settings.pre_import_limit(Some(10_000)),
            Duration::from_secs(5000)
        );
        assert_eq!(settings.pre_import_limit(None), Duration::from_secs(1800));
    }
}
