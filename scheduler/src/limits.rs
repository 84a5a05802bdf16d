//! The range of every number the scheduler's API and settings take, in one place: a value out
//! of its range is refused with `INVALID_ARGUMENT` naming the field and the range, before
//! anything is stored or started. The bounds keep every input within what one scheduler can do
//! (a setting read by a restarted scheduler must not crash it again) and within the arithmetic
//! of the code that uses it (a window must not run past the calendar).

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
            _ => Err(format!(
                "{} must be between {} and {}",
                self.name, self.min, self.max
            )),
        }
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
/// A step's number in an importer's report.
pub const STEP: Range = Range::new("step", 1, i64::MAX);

/// The step a notification names.
pub fn step(value: u64) -> Result<i64, SchedulerError> {
    STEP.require(value)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(CAPACITY.check(10_000_u32), Ok(10_000));
    }
}
