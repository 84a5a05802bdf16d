//! The range of every number the scheduler's API and settings take, in one place: a value out
//! of its range is refused with `INVALID_ARGUMENT` naming the field and the range, before
//! anything is stored or started. The bounds keep every input within what one scheduler can do
//! (a setting read by a restarted scheduler must not crash it again) and within the arithmetic
//! of the code that uses it (a window must not run past the calendar).

use ferry_shared::step::Step;

use crate::error::SchedulerError;

/// The inclusive range of one numeric field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The field's name, as the API spells it.
    pub name: &'static str,
    /// The smallest value accepted.
    pub min: i64,
    /// The largest value accepted.
    pub max: i64,
}

impl Range {
    const fn new(name: &'static str, min: i64, max: i64) -> Self {
        Self { name, min, max }
    }

    /// The value, or the sentence refusing it.
    pub fn check(&self, value: impl TryInto<i64>) -> Result<i64, String> {
        match value.try_into() {
            Ok(value) if (self.min..=self.max).contains(&value) => Ok(value),
            _ => Err(self.refusal()),
        }
    }

    /// The sentence refusing a value out of the range.
    pub fn refusal(&self) -> String {
        format!(
            "{} must be between {} and {}",
            self.name, self.min, self.max
        )
    }

    /// [`Self::check`] as the API's error.
    pub fn require(&self, value: impl TryInto<i64>) -> Result<i64, SchedulerError> {
        self.check(value).map_err(SchedulerError::InvalidArgument)
    }
}

/// Repositories in process at once.
pub const CAPACITY: Range = Range::new("capacity", 0, 10_000);
/// Aborts before a repository is skipped.
pub const MAX_RETRIES: Range = Range::new("max_retries", 0, 100);
/// Tags above which a repository is skipped (0: no limit).
pub const MAX_TAGS_COUNT: Range = Range::new("max_tags_count", 0, 10_000_000);
/// Backoffs of a start that found every importer busy.
pub const START_MAX_RETRIES: Range = Range::new("start_max_retries", 0, 1_000);
/// Workers of the repair scan: each holds a database connection and an importer call.
pub const REPAIR_MAX_CONCURRENCY: Range = Range::new("repair_max_concurrency", 0, 64);
/// The double-check's window, in hours (ten years).
pub const SINCE_HOURS: Range = Range::new("since_hours", 1, 87_600);
/// Repositories a state rebuild asks the importers about per call (0: the default).
pub const REBUILD_BATCH_SIZE: Range = Range::new("batch_size", 0, 1_000);
/// Repositories a restore batch registers at once (0: the default).
pub const RESTORE_BATCH_SIZE: Range = Range::new("batch_size", 0, 100_000);

const DAY: i64 = 86_400;
/// Age after which the guard asks about a step, in seconds.
pub const MAX_STEP_DURATION_SECS: Range = Range::new("max_step_duration_secs", 1, 7 * DAY);
/// Time limit of a pre-import, in seconds.
pub const PRE_IMPORT_TIMEOUT_SECS: Range = Range::new("pre_import_timeout_secs", 1, 7 * DAY);
/// Time limit of a final import, in seconds.
pub const IMPORT_TIMEOUT_SECS: Range = Range::new("import_timeout_secs", 1, 7 * DAY);
/// Wait after a step's end before a new repository starts, in seconds.
pub const ENQUEUE_WAITING_TIME_SECS: Range = Range::new("enqueue_waiting_time_secs", 0, DAY);
/// Age after which a repair analysis counts as abandoned, in seconds.
pub const REPAIR_STALE_AFTER_SECS: Range = Range::new("repair_stale_after_secs", 1, 30 * DAY);
/// The window of `ferryctl gc`, in seconds (0: the importer's default; a year at most).
pub const GC_OLDER_THAN_SECS: Range = Range::new("older_than_secs", 0, 365 * DAY);
/// Entries in the denied root namespaces and in the target plans.
pub const NAME_LIST: Range = Range::new("entries", 0, 1_000);
/// Entries of one `SetNamespacePlans` call.
pub const NAMESPACE_PLANS: Range = Range::new("plans", 0, 10_000);
/// Seconds a pre-import may take per tag (a big repository's time limit grows with it).
pub const PRE_IMPORT_TAGS_RATE_MAX: f64 = 3_600.0;
/// A step's number in an importer's report: a [`Step`]'s range.
pub const STEP: Range = Range::new("step", Step::FIRST.db(), Step::MAX.db());

/// The step a notification names (0, none, is refused like any number out of range).
pub fn step(value: u64) -> Result<Step, SchedulerError> {
    match Step::from_wire(value) {
        Ok(Some(step)) => Ok(step),
        Ok(None) | Err(_) => Err(SchedulerError::InvalidArgument(STEP.refusal())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked_in_seconds() {
        assert!(MAX_STEP_DURATION_SECS.check(0).is_err());
        assert!(IMPORT_TIMEOUT_SECS.check(7 * DAY + 1).is_err());
        assert_eq!(ENQUEUE_WAITING_TIME_SECS.check(0), Ok(0));
    }

    #[test]
    fn refusals_name_the_field_and_its_range() {
        assert_eq!(
            REPAIR_MAX_CONCURRENCY.check(2_147_483_647_i64),
            Err("repair_max_concurrency must be between 0 and 64".to_owned())
        );
        assert_eq!(
            SINCE_HOURS.check(0_u32).unwrap_err(),
            "since_hours must be between 1 and 87600"
        );
        assert!(STEP.check(u64::MAX).is_err());
        assert_eq!(
            STEP.refusal(),
            "step must be between 1 and 9223372036854775807"
        );
        assert_eq!(CAPACITY.check(10_000_u32), Ok(10_000));
    }

    #[test]
    fn a_notified_step_is_one_to_i64_max() {
        assert_eq!(step(1).ok(), Some(Step::FIRST));
        assert_eq!(step(i64::MAX as u64).ok(), Some(Step::MAX));
        for out_of_range in [0, i64::MAX as u64 + 1, u64::MAX] {
            match step(out_of_range) {
                Err(SchedulerError::InvalidArgument(message)) => {
                    assert_eq!(message, "step must be between 1 and 9223372036854775807")
                }
                other => panic!("{out_of_range}: {other:?}"),
            }
        }
    }
}
