//! Which steps a repository admits. The claim itself is one SQL statement
//! ([`crate::store::MetadataStore::begin_step`]), built from [`claimable_from`]; when it claims
//! nothing, [`refusal`] reads the row and says why. The two must agree on every row, or a refused
//! start would be answered with a wrong reason: the table test below checks every combination of
//! status, step type, fencing token and step number against the statement's condition.

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::Step;

use super::{Claim, statuses};
use crate::error::ApiError;
use crate::store::RepositoryRow;

/// Why `row` refuses a step of `import_type` numbered `step` (`None`: unnumbered): the claim to
/// answer with when the repository is already on the new platform or the step already runs, an
/// error naming the reason, or `Ok(None)` when nothing refuses it.
pub(super) fn refusal(
    path: &RepositoryPath,
    row: Option<&RepositoryRow>,
    import_type: ImportType,
    fence: u64,
    step: Option<Step>,
) -> Result<Option<Claim>, ApiError> {
    use MigrationStatus::*;
    let is_final = import_type == ImportType::Final;
    let Some(row) = row else {
        if is_final {
            return Err(ApiError::PreImportRequired {
                path: path.to_string(),
                reason: "no pre-import ran",
            });
        }
        return Ok(None);
    };
    if fence != 0 && row.fence > fence {
        return Err(ApiError::StaleFence {
            path: path.to_string(),
            token: fence,
            seen: row.fence,
        });
    }
    if matches!(row.status, Native | ImportComplete) {
        return Ok(Some(Claim::AlreadyImported(row.status)));
    }
    if let Some(step) = step {
        if row.step == Some(step) && row.status == statuses(import_type).in_progress {
            return Ok(Some(Claim::AlreadyRunning(step)));
        }
        if let Some(current) = row.step.filter(|current| *current >= step) {
            return Err(ApiError::StaleStep {
                path: path.to_string(),
                step,
                current,
            });
        }
    }
    // A numbered step takes over an older one still recorded in progress, as the claim does.
    if claimable_from(import_type, step.is_some()).contains(&row.status) {
        return Ok(None);
    }
    match row.status {
        PreImportInProgress => Err(ApiError::PreImportInProgress(path.to_string())),
        ImportInProgress => Err(ApiError::ImportInProgress(path.to_string())),
        PreImportFailed if is_final => Err(ApiError::PreImportRequired {
            path: path.to_string(),
            reason: "pre-import failed",
        }),
        PreImportCanceled if is_final => Err(ApiError::PreImportRequired {
            path: path.to_string(),
            reason: "pre-import was canceled",
        }),
        _ => Ok(None),
    }
}

/// The statuses a step of `import_type` may start from (a pre-import also from no row at all).
/// A numbered step (`numbered`) also takes over an older step still recorded in progress: the
/// scheduler numbers a step only once it gave up every older one, and the older step, wherever
/// it still runs, can no longer commit.
pub(super) fn claimable_from(
    import_type: ImportType,
    numbered: bool,
) -> &'static [MigrationStatus] {
    use MigrationStatus::*;
    match (import_type, numbered) {
        (ImportType::Final, false) => &[PreImportComplete, ImportFailed, ImportCanceled],
        (ImportType::Final, true) => &[
            PreImportComplete,
            ImportFailed,
            ImportCanceled,
            ImportInProgress,
        ],
        (_, false) => &[
            PreImportComplete,
            PreImportFailed,
            PreImportCanceled,
            ImportFailed,
            ImportCanceled,
        ],
        (_, true) => &[
            PreImportComplete,
            PreImportFailed,
            PreImportCanceled,
            ImportFailed,
            ImportCanceled,
            PreImportInProgress,
            ImportInProgress,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim statement's condition (`CLAIMABLE` in `store.rs`, and the insert that creates
    /// a pre-import's row), restated.
    fn statement_claims(
        row: Option<&RepositoryRow>,
        import_type: ImportType,
        fence: u64,
        step: Option<Step>,
    ) -> bool {
        match row {
            None => import_type != ImportType::Final,
            Some(row) => {
                claimable_from(import_type, step.is_some()).contains(&row.status)
                    && (fence == 0 || row.fence <= fence)
                    && step.is_none_or(|step| row.step.is_none_or(|current| current < step))
            }
        }
    }

    #[test]
    fn the_explanation_agrees_with_the_claim_on_every_row() {
        use MigrationStatus::*;
        let path = RepositoryPath::parse("group/project/app").expect("path");
        let step = |n: i64| Step::from_db(n);
        let mut rows = vec![None];
        for status in [
            Native,
            PreImportInProgress,
            PreImportComplete,
            PreImportFailed,
            PreImportCanceled,
            ImportInProgress,
            ImportComplete,
            ImportFailed,
            ImportCanceled,
        ] {
            for fence in [0, 5] {
                for current in [0, 3, 5, 7] {
                    rows.push(Some(RepositoryRow {
                        status,
                        error: None,
                        age_seconds: 0.0,
                        fence,
                        step: step(current),
                    }));
                }
            }
        }
        let mut checked = 0;
        for row in &rows {
            for import_type in [ImportType::Pre, ImportType::Final] {
                for fence in [0, 4, 5, 6] {
                    for requested in [None, step(5)] {
                        let claims = statement_claims(row.as_ref(), import_type, fence, requested);
                        let refused = refusal(&path, row.as_ref(), import_type, fence, requested);
                        assert_eq!(
                            claims,
                            matches!(refused, Ok(None)),
                            "{row:?} {import_type:?} fence {fence} step {requested:?}: \
                             the statement claims: {claims}, the explanation: {:?}",
                            refused.map(|claim| claim.is_some())
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, rows.len() * 16);
    }
}
