//! Step numbers: the identity of one step (a pre-import or a final import attempt) of a
//! repository's migration.
//!
//! The scheduler numbers a repository's steps 1, 2, 3, ...; the importer refuses a start, and
//! ignores an end or a cancel, that names an older step than the repository's. A number lives
//! in three places, each with its own spelling of "no step":
//!
//! - the `migration_step` columns of both databases (`bigint NOT NULL DEFAULT 0 CHECK
//!   (migration_step >= 0)`): 0 until a numbered step claims the repository;
//! - the wire (`uint64` fields of `ferry.*.v1`): 0 means none, or "whichever" / "unnumbered"
//!   where the proto says so;
//! - the code: a [`Step`] where there is always one, an `Option<Step>` where there may be none.
//!
//! A [`Step`] is 1 to `i64::MAX`, so that every step fits the column. Wire values are converted
//! once, where a request is validated ([`Step::from_wire`]); database values where a row is
//! read ([`Step::from_db`]).

use std::fmt;
use std::num::NonZeroU64;

use thiserror::Error;

/// The number of one step (a pre-import or a final import attempt) of a repository's migration:
/// 1 to `i64::MAX` (the largest number the `migration_step` columns hold). Ordered by number: a
/// greater step is a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Step(NonZeroU64);

/// A number that is not a step's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StepNumberError {
    /// Zero or negative: steps are numbered from 1.
    #[error("{0} is not a step number: steps are numbered from 1")]
    NotPositive(i64),
    /// Above `i64::MAX`: more than the database columns hold.
    #[error("{0} is not a step number: steps are numbered up to {max}", max = Step::MAX)]
    TooLarge(u64),
}

impl Step {
    /// A repository's first step.
    pub const FIRST: Step = Step(NonZeroU64::MIN);

    /// The largest step number, `i64::MAX`.
    pub const MAX: Step = match NonZeroU64::new(i64::MAX as u64) {
        Some(max) => Step(max),
        None => Step::FIRST,
    };

    /// The step numbered after this one; `None` past [`Step::MAX`] (no repository gets near it:
    /// the database's `migration_step + 1` would fail there as well).
    pub fn next(self) -> Option<Step> {
        self.0
            .checked_add(1)
            .map(Step)
            .filter(|next| *next <= Step::MAX)
    }

    /// The correlation id of this step of the repository at `path`: 32 hex digits (the shape of
    /// a trace id) derived from the step's identity, so the scheduler and the importer put the
    /// same id on their log lines of one step without telling each other, whether or not traces
    /// are exported.
    pub fn correlation_id(self, path: &str) -> String {
        use sha2::Digest as _;
        let hash = sha2::Sha256::new()
            .chain_update(path.as_bytes())
            .chain_update([0])
            .chain_update(self.get().to_be_bytes())
            .finalize();
        hash[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// A step number from the wire, where 0 means none (or "whichever", "unnumbered": see the
    /// proto field): `Ok(None)` for 0, an error above `i64::MAX`.
    pub fn from_wire(value: u64) -> Result<Option<Step>, StepNumberError> {
        match value {
            0 => Ok(None),
            value => Step::try_from(value).map(Some),
        }
    }

    /// The number as the wire carries it.
    pub const fn wire(self) -> u64 {
        self.0.get()
    }

    /// A `migration_step` column's value: `None` for 0 (no numbered step has claimed the
    /// repository yet). A negative value, which the column's `CHECK (migration_step >= 0)` rules
    /// out, is taken for none as well.
    pub fn from_db(value: i64) -> Option<Step> {
        Step::try_from(value).ok()
    }

    /// The number as the `migration_step` columns hold it (always positive).
    pub const fn db(self) -> i64 {
        // At most `i64::MAX`, the invariant: the cast never wraps.
        self.0.get() as i64
    }
}

impl TryFrom<u64> for Step {
    type Error = StepNumberError;

    /// The step numbered `value` (1 to `i64::MAX`).
    fn try_from(value: u64) -> Result<Self, StepNumberError> {
        match NonZeroU64::new(value) {
            None => Err(StepNumberError::NotPositive(0)),
            Some(_) if value > Step::MAX.get() => Err(StepNumberError::TooLarge(value)),
            Some(number) => Ok(Step(number)),
        }
    }
}

impl TryFrom<i64> for Step {
    type Error = StepNumberError;

    /// The step numbered `value` (1 to `i64::MAX`): how a row's `migration_step` is decoded where
    /// the row always has a numbered step.
    fn try_from(value: i64) -> Result<Self, StepNumberError> {
        match u64::try_from(value).ok().and_then(NonZeroU64::new) {
            Some(number) => Ok(Step(number)),
            None => Err(StepNumberError::NotPositive(value)),
        }
    }
}

impl From<Step> for u64 {
    /// The number (as [`Step::get`]).
    fn from(step: Step) -> u64 {
        step.get()
    }
}

impl From<Step> for i64 {
    /// The number (as [`Step::db`]).
    fn from(step: Step) -> i64 {
        step.db()
    }
}

impl fmt::Display for Step {
    /// Just the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An `Option<Step>` in the spellings of the wire and the database, where none is 0.
pub trait MaybeStep {
    /// The number on the wire: 0 for none.
    fn wire(self) -> u64;

    /// The number in a `migration_step` column: 0 for none.
    fn db(self) -> i64;
}

impl MaybeStep for Option<Step> {
    fn wire(self) -> u64 {
        self.map_or(0, Step::wire)
    }

    fn db(self) -> i64 {
        self.map_or(0, Step::db)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_step_s_correlation_id_is_its_identity_s() {
        let step = Step::from_wire(7).unwrap().unwrap();
        let id = step.correlation_id("group/app");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, step.correlation_id("group/app"));
        assert_ne!(id, step.next().unwrap().correlation_id("group/app"));
        assert_ne!(id, step.correlation_id("group/app2"));
    }

    use super::*;

    const MAX: u64 = i64::MAX as u64;

    #[test]
    fn wire_values_are_none_a_step_or_out_of_range() {
        assert_eq!(Step::from_wire(0), Ok(None));
        assert_eq!(Step::from_wire(1), Ok(Some(Step::FIRST)));
        let max = Step::from_wire(MAX).unwrap().unwrap();
        assert_eq!(max, Step::MAX);
        assert_eq!(max.wire(), MAX);
        assert_eq!(max.db(), i64::MAX);
        assert_eq!(
            Step::from_wire(MAX + 1),
            Err(StepNumberError::TooLarge(MAX + 1))
        );
        assert_eq!(
            Step::from_wire(u64::MAX),
            Err(StepNumberError::TooLarge(u64::MAX))
        );
        assert_eq!(Step::try_from(0_u64), Err(StepNumberError::NotPositive(0)));
    }

    #[test]
    fn database_values_are_none_below_one() {
        assert_eq!(Step::from_db(0), None);
        assert_eq!(Step::from_db(-1), None);
        assert_eq!(Step::from_db(i64::MIN), None);
        assert_eq!(Step::from_db(1), Some(Step::FIRST));
        assert_eq!(Step::from_db(i64::MAX), Some(Step::MAX));
        assert_eq!(Step::try_from(0_i64), Err(StepNumberError::NotPositive(0)));
        assert_eq!(
            Step::try_from(-5_i64),
            Err(StepNumberError::NotPositive(-5))
        );
        assert_eq!(Step::try_from(7_i64).map(Step::db), Ok(7));
    }

    #[test]
    fn every_step_survives_both_round_trips() {
        for number in [1, 2, 41, MAX - 1, MAX] {
            let step = Step::try_from(number).unwrap();
            assert_eq!(Step::from_wire(step.wire()), Ok(Some(step)));
            assert_eq!(Step::from_db(step.db()), Some(step));
            assert_eq!(step.get(), number);
        }
    }

    #[test]
    fn none_is_zero_in_both_spellings() {
        assert_eq!(None::<Step>.wire(), 0);
        assert_eq!(None::<Step>.db(), 0);
        assert_eq!(Some(Step::MAX).wire(), MAX);
        assert_eq!(Some(Step::FIRST).db(), 1);
    }

    #[test]
    fn steps_are_ordered_and_numbered_on() {
        assert_eq!(Step::FIRST.next(), Step::from_db(2));
        assert!(Step::FIRST < Step::FIRST.next().unwrap());
        assert_eq!(Step::MAX.next(), None);
        assert_eq!(
            Step::from_db(MAX as i64 - 1).and_then(Step::next),
            Some(Step::MAX)
        );
        // None orders before every step, as 0 does before every number.
        assert!(None < Some(Step::FIRST));
    }

    #[test]
    fn a_step_displays_as_its_number_and_refusals_name_the_value() {
        assert_eq!(Step::MAX.to_string(), "9223372036854775807");
        assert_eq!(Step::FIRST.to_string(), "1");
        assert_eq!(
            StepNumberError::TooLarge(u64::MAX).to_string(),
            "18446744073709551615 is not a step number: steps are numbered up to 9223372036854775807"
        );
        assert_eq!(
            StepNumberError::NotPositive(0).to_string(),
            "0 is not a step number: steps are numbered from 1"
        );
    }
}
