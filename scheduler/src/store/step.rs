//! Step numbers in rows: a claimed step (always numbered), an aborted repository's step, and
//! the `migration_step` column decoded where a repository may have no numbered step yet (0: a
//! repository never claimed, or one from before steps were numbered).

use ferry_shared::step::Step;
use sqlx::FromRow;

/// A repository picked for a step.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Claimed {
    /// Its id.
    pub id: i64,
    /// Its path.
    pub path: String,
    /// The step's number: the start, the importer's record of it, its end and its cancel name it.
    /// A claim numbers the step after the repository's last, so it is never 0.
    #[sqlx(try_from = "i64")]
    pub step: Step,
}

/// An `import_aborted` repository to retry, as [`super::SchedulerStore::next_aborted`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortedRepo {
    /// Its id.
    pub id: i64,
    /// Its path.
    pub path: String,
    /// The step it was aborted in (`None`: a step from before steps were numbered).
    pub step: Option<Step>,
}

/// The `migration_step` column as stored, to decode into an `Option<Step>` in a derived
/// [`FromRow`] (`#[sqlx(try_from = "StepColumn")]`): 0 is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct StepColumn(i64);

impl From<StepColumn> for Option<Step> {
    fn from(column: StepColumn) -> Self {
        Step::from_db(column.0)
    }
}
