//! A repository's migration state and the reasons a repository ends skipped (or done without
//! an import), as enums mapped to the scheduler database's text columns. SQL statements spell
//! the values out where they are part of the statement; everything the code passes, reads and
//! matches on is one of these.

use std::fmt;

/// `container_repositories.migration_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum MigrationState {
    /// Registered, waiting for its pre-import.
    Default,
    /// Its pre-import runs.
    PreImporting,
    /// Its pre-import completed; its final import waits (in its slot).
    PreImportDone,
    /// Its final import runs: the repository is read-only.
    Importing,
    /// On the new platform.
    ImportDone,
    /// A step failed or was given up; it is retried.
    ImportAborted,
    /// Given up for good (see its [`SkipReason`]).
    ImportSkipped,
}

impl MigrationState {
    /// Every state, in the order of a repository's life.
    pub const ALL: [Self; 7] = [
        Self::Default,
        Self::PreImporting,
        Self::PreImportDone,
        Self::Importing,
        Self::ImportDone,
        Self::ImportAborted,
        Self::ImportSkipped,
    ];
    /// States with migration work ahead.
    pub const PENDING: [Self; 5] = [
        Self::Default,
        Self::PreImporting,
        Self::PreImportDone,
        Self::Importing,
        Self::ImportAborted,
    ];
    /// States that take a slot of the capacity.
    pub const IN_PROCESS: [Self; 3] = [Self::PreImporting, Self::PreImportDone, Self::Importing];

    /// The database's (and the API's) name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::PreImporting => "pre_importing",
            Self::PreImportDone => "pre_import_done",
            Self::Importing => "importing",
            Self::ImportDone => "import_done",
            Self::ImportAborted => "import_aborted",
            Self::ImportSkipped => "import_skipped",
        }
    }

    /// The state named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `container_repositories.migration_skipped_reason` (and `migration_cancel_requested`): why a
/// repository ended skipped, or done without being imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum SkipReason {
    /// Its root namespace is not on a target plan (the original's reason; Ferry leaves such a
    /// repository waiting in `default` instead).
    NotInPlan,
    /// It reached `max_retries` aborts.
    TooManyRetries,
    /// It has more tags than `max_tags_count`.
    TooManyTags,
    /// Its root namespace is denied (the original's reason; Ferry leaves it waiting).
    RootNamespaceInDenyList,
    /// An operator canceled it, or the guard canceled its step near the retry limit.
    MigrationCanceled,
    /// Done without an import: old storage has no tag for it.
    NotFound,
    /// Done without an import: it lives on the new platform already.
    NativeImport,
    /// An operator force-canceled it.
    MigrationForcedCanceled,
    /// The registry canceled it (the original's reason; Ferry's importers never do).
    MigrationCanceledByRegistry,
}

impl SkipReason {
    /// The database's (and the API's) name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotInPlan => "not_in_plan",
            Self::TooManyRetries => "too_many_retries",
            Self::TooManyTags => "too_many_tags",
            Self::RootNamespaceInDenyList => "root_namespace_in_deny_list",
            Self::MigrationCanceled => "migration_canceled",
            Self::NotFound => "not_found",
            Self::NativeImport => "native_import",
            Self::MigrationForcedCanceled => "migration_forced_canceled",
            Self::MigrationCanceledByRegistry => "migration_canceled_by_registry",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `container_repositories.verify_outcome`: how a migrated repository's last verification came
/// out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum VerifyResult {
    /// No difference from the source.
    Match,
    /// At least one difference.
    Differs,
    /// The comparison could not be made.
    Failed,
}

impl VerifyResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [Self; 3] = [Self::Match, Self::Differs, Self::Failed];

    /// The database's (and the metrics') name of the result.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Differs => "differs",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for VerifyResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in MigrationState::ALL {
            assert_eq!(MigrationState::parse(state.as_str()), Some(state));
        }
        assert_eq!(MigrationState::parse("imported"), None);
        assert_eq!(SkipReason::NativeImport.to_string(), "native_import");
    }
}
