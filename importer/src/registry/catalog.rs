//! `GET /v2/_catalog`: every repository of the old layout, in the order a walk of the
//! repositories tree finds them (a directory's entries in byte order, a repository where its
//! `_manifests/` sorts among its sub-directories), then the repositories created on the new
//! platform that the old layout does not hold, in byte order. A page names its last entry, and
//! the next page resumes the walk after it without walking again what came before.

use ferry_shared::ids::RepositoryPath;
use ferry_shared::storage::BlobStore;
use ferry_shared::walk::{Found, RepositoryWalk};

use super::answer::{RegistryError, unavailable};
use super::route::Page;
use crate::plan::exists_in_old_storage;
use crate::store::MetadataStore;

/// One page of the catalog.
pub async fn page(
    storage: &dyn BlobStore,
    db: &MetadataStore,
    page: &Page,
) -> Result<Vec<String>, RegistryError> {
    let last = match page.last.as_deref().map(RepositoryPath::parse) {
        None => None,
        Some(Ok(last)) => Some(last),
        // Nothing valid sorts there; a client that sends it gets what comes after it in
        // the new platform's part, like any name the old layout does not hold.
        Some(Err(_)) => return native_page(storage, db, page.last.as_deref(), page.n).await,
    };
    if let Some(last) = &last
        && is_native_only(storage, db, last).await?
    {
        return native_page(storage, db, Some(last.as_str()), page.n).await;
    }
    let mut walk = match &last {
        Some(last) => RepositoryWalk::after(storage, last),
        None => RepositoryWalk::new(storage),
    };
    let mut names = Vec::with_capacity(page.n);
    while names.len() < page.n {
        match walk.next().await.map_err(|e| unavailable(&e))? {
            Some(Found::Repository(path)) => names.push(path.to_string()),
            Some(Found::Invalid(_)) => {}
            None => {
                let rest = page.n - names.len();
                names.extend(native_page(storage, db, None, rest).await?);
                break;
            }
        }
    }
    Ok(names)
}

/// Whether `path` is a repository of the new platform that the old layout does not hold.
async fn is_native_only(
    storage: &dyn BlobStore,
    db: &MetadataStore,
    path: &RepositoryPath,
) -> Result<bool, RegistryError> {
    let is_native = db.is_native(path).await.map_err(|e| unavailable(&e))?;
    Ok(is_native
        && !exists_in_old_storage(storage, path)
            .await
            .map_err(|e| unavailable(&e))?)
}

/// Up to `n` repositories of the new platform after `after` that the old layout does not hold.
async fn native_page(
    storage: &dyn BlobStore,
    db: &MetadataStore,
    after: Option<&str>,
    n: usize,
) -> Result<Vec<String>, RegistryError> {
    let mut names = Vec::new();
    let mut after = after.map(str::to_owned);
    while names.len() < n {
        let batch = db
            .native_repositories(after.as_deref(), n)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(last) = batch.last().cloned() else {
            break;
        };
        for name in batch {
            let Ok(path) = RepositoryPath::parse(&name) else {
                continue;
            };
            let in_old = exists_in_old_storage(storage, &path)
                .await
                .map_err(|e| unavailable(&e))?;
            if !in_old && names.len() < n {
                names.push(name);
            }
        }
        after = Some(last);
    }
    Ok(names)
}
