//! The new code path: answers from the metadata database (tags, manifest payloads byte for
//! byte, which blobs a repository may serve) and streams blob bytes from the `gitlab/` prefix.

use bytes::Bytes;

use ferry_shared::ids::Digest;
use ferry_shared::layout;
use ferry_shared::storage::BlobStore;

use super::answer::{RegistryError, unavailable};
use super::route::{Page, Reference};
use super::{Blob, Manifest};
use crate::store::{MetadataStore, ServedRepository, StoredManifest};

/// The manifest `reference` names in the repository.
pub async fn manifest(
    db: &MetadataStore,
    repository: ServedRepository,
    reference: &Reference,
) -> Result<Manifest, RegistryError> {
    let found = match reference {
        Reference::Tag(tag) => db.tagged_manifest(repository, tag).await,
        Reference::Digest(digest) => db.manifest_by_digest(repository, digest).await,
    }
    .map_err(|e| unavailable(&e))?;
    let unknown = || {
        RegistryError::ManifestUnknown(match reference {
            Reference::Tag(tag) => tag.clone(),
            Reference::Digest(digest) => digest.to_string(),
        })
    };
    let StoredManifest {
        digest,
        media_type,
        payload,
    } = found.ok_or_else(unknown)?;
    Ok(Manifest {
        digest,
        media_type,
        payload: Bytes::from(payload),
    })
}

/// Blob `digest` of the repository: its registered size, and its bytes from `gitlab/` unless
/// `head`.
pub async fn blob(
    db: &MetadataStore,
    store: &dyn BlobStore,
    repository: ServedRepository,
    digest: &Digest,
    head: bool,
) -> Result<Blob, RegistryError> {
    let unknown = || RegistryError::BlobUnknown(digest.to_string());
    let size = db
        .repository_blob_size(repository, digest)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(unknown)?;
    if head {
        return Ok(Blob { size, body: None });
    }
    let key = layout::new_blob_key(digest);
    let reader = store.open_read(&key).await.map_err(|e| unavailable(&e))?;
    let Some(reader) = reader else {
        tracing::error!(%digest, %key, "registry: a registered blob is missing under gitlab/");
        return Err(unknown());
    };
    if reader.meta.size != size {
        tracing::error!(
            %digest,
            registered = size,
            stored = reader.meta.size,
            "registry: a blob under gitlab/ differs in size from its registration"
        );
        return Err(RegistryError::Unavailable);
    }
    Ok(Blob {
        size,
        body: Some(reader.body),
    })
}

/// A page of the repository's tags, in byte order.
pub async fn tags(
    db: &MetadataStore,
    repository: ServedRepository,
    page: &Page,
) -> Result<Vec<String>, RegistryError> {
    db.tag_names(repository, page.last.as_deref(), page.n)
        .await
        .map_err(|e| unavailable(&e))
}
