//! Listing repositories for the scheduler's repair scan (`ListSubRepositories`) and the
//! dropped-create-events double-check (`ListRepositoriesCreatedSince`).

use chrono::{DateTime, SecondsFormat, Utc};

use ferry_proto::importer::v1::{
    ListSubRepositoriesBatchRequest, RepositoryEntry, RepositoryPage, SubRepositoriesBatchPage,
    SubRepositoryPosition,
};
use ferry_shared::ids::RepositoryPath;

use crate::error::ApiError;
use crate::store::{ListedRepository, MetadataStore};

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 1000;

fn page_size(n: u32) -> Result<i64, ApiError> {
    match n {
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        1..=MAX_PAGE_SIZE => Ok(i64::from(n)),
        _ => Err(ApiError::InvalidArgument(format!(
            "n must be between 1 and {MAX_PAGE_SIZE}, not {n}"
        ))),
    }
}

fn timestamp(value: DateTime<Utc>) -> String {
    value.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn page(
    rows: Vec<ListedRepository>,
    limit: i64,
    marker: impl Fn(&ListedRepository) -> String,
) -> RepositoryPage {
    let next_last = if rows.len() as i64 == limit {
        rows.last().map(&marker).unwrap_or_default()
    } else {
        String::new()
    };
    RepositoryPage {
        repositories: rows
            .into_iter()
            .map(|row| RepositoryEntry {
                name: row.path.rsplit('/').next().unwrap_or(&row.path).to_owned(),
                created_at: timestamp(row.created_at),
                updated_at: timestamp(row.updated_at),
                path: row.path,
            })
            .collect(),
        next_last,
    }
}

/// One page of the repositories under `path` (inclusive) that have at least one tag.
pub async fn sub_repositories(
    db: &MetadataStore,
    path: &str,
    n: u32,
    last: &str,
) -> Result<RepositoryPage, ApiError> {
    let path = RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let limit = page_size(n)?;
    if !last.is_empty() {
        RepositoryPath::parse(last).map_err(|e| ApiError::InvalidArgument(format!("last: {e}")))?;
    }
    let namespace = path.project_path(1);
    if !db.namespace_exists(namespace).await? {
        return Err(ApiError::NotFound(format!(
            "top-level namespace {namespace}"
        )));
    }
    let rows = db.sub_repositories(&path, last, limit).await?;
    Ok(page(rows, limit, |row| row.path.clone()))
}

/// Most paths in one batch request.
pub const MAX_BATCH_PATHS: usize = 1000;
/// Batch page size when the request gives none.
pub const DEFAULT_BATCH_PAGE_SIZE: u32 = 1000;
/// Largest batch page size.
pub const MAX_BATCH_PAGE_SIZE: u32 = 10_000;

/// One page of the tagged repositories at or under each of `paths` (the repair scan's bulk form
/// of [`sub_repositories`]). Invalid paths are reported, not fatal: one bad project must not
/// stop the scan of the others.
pub async fn sub_repositories_batch(
    db: &MetadataStore,
    request: &ListSubRepositoriesBatchRequest,
) -> Result<SubRepositoriesBatchPage, ApiError> {
    let count = request.paths.len();
    if count == 0 || count > MAX_BATCH_PATHS {
        return Err(ApiError::InvalidArgument(format!(
            "paths must hold 1 to {MAX_BATCH_PATHS} paths, not {count}"
        )));
    }
    let limit = match request.n {
        0 => DEFAULT_BATCH_PAGE_SIZE,
        1..=MAX_BATCH_PAGE_SIZE => request.n,
        n => {
            return Err(ApiError::InvalidArgument(format!(
                "n must be between 1 and {MAX_BATCH_PAGE_SIZE}, not {n}"
            )));
        }
    };
    let after = match &request.after {
        None => None,
        Some(position) => {
            let index = i32::try_from(position.index)
                .ok()
                .filter(|i| (*i as usize) < count)
                .ok_or_else(|| {
                    ApiError::InvalidArgument(format!(
                        "after.index {} is out of range",
                        position.index
                    ))
                })?;
            Some((index, position.path.as_str()))
        }
    };
    let mut invalid = Vec::new();
    // An invalid path is passed as NULL, which matches nothing.
    let paths: Vec<Option<&str>> = request
        .paths
        .iter()
        .enumerate()
        .map(|(i, path)| match RepositoryPath::parse(path) {
            Ok(_) => Some(path.as_str()),
            Err(_) => {
                invalid.push(i as u32);
                None
            }
        })
        .collect();
    let rows = db
        .sub_repositories_batch(&paths, after, i64::from(limit))
        .await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last())
        .flatten()
        .map(|(index, path)| SubRepositoryPosition {
            index: *index as u32,
            path: path.clone(),
        });
    Ok(SubRepositoriesBatchPage {
        repositories: rows
            .into_iter()
            .map(|(index, path)| SubRepositoryPosition {
                index: index as u32,
                path,
            })
            .collect(),
        invalid,
        next,
    })
}

/// Encodes the keyset marker of a created-since page.
fn created_marker(row: &ListedRepository) -> String {
    format!("{}-{}", row.created_at.timestamp_micros(), row.id)
}

fn parse_created_marker(last: &str) -> Result<Option<(DateTime<Utc>, i64)>, ApiError> {
    if last.is_empty() {
        return Ok(None);
    }
    let invalid =
        || ApiError::InvalidArgument(format!("last: {last:?} is not a marker this API returned"));
    let (micros, id) = last.split_once('-').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let id: i64 = id.parse().map_err(|_| invalid())?;
    Ok(Some((
        DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
        id,
    )))
}

/// One page of the repositories with at least one tag created at or after `since`.
pub async fn created_since(
    db: &MetadataStore,
    since: &str,
    n: u32,
    last: &str,
) -> Result<RepositoryPage, ApiError> {
    let since = DateTime::parse_from_rfc3339(since)
        .map_err(|e| {
            ApiError::InvalidArgument(format!(
                "since: {since:?} is not an RFC 3339 timestamp ({e})"
            ))
        })?
        .with_timezone(&Utc);
    let limit = page_size(n)?;
    let after = parse_created_marker(last)?;
    let rows = db.created_since(since, after, limit).await?;
    Ok(page(rows, limit, created_marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
    }

    #[test]
    fn markers_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let row = ListedRepository {
            id: 42,
            path: "a/b".into(),
            created_at: at,
            updated_at: at,
        };
        assert_eq!(
            parse_created_marker(&created_marker(&row)).unwrap(),
            Some((at, 42))
        );
        for bad in ["x", "1-", "-1", "1-2-3", "a-b"] {
            assert!(parse_created_marker(bad).is_err(), "{bad}");
        }
    }
}
