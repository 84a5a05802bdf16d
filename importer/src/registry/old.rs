//! The old code path: answers straight from the old storage layout, the way the distribution
//! registry reads it. A tag is its `current/link`; a manifest is served only when the
//! repository links its revision; a blob only when the repository links it as a layer (configs
//! included); the bytes come from `docker/registry/v2/blobs/`.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, StorageError};
use ferry_shared::walk::TagDirectories;

use super::answer::{RegistryError, unavailable};
use super::route::{Page, Reference};
use super::{Blob, Manifest};
use crate::plan::{MAX_LINK_BYTES, MAX_MANIFEST_BYTES};

/// The manifest `reference` names in the repository.
pub async fn manifest(
    store: &dyn BlobStore,
    name: &RepositoryPath,
    reference: &Reference,
) -> Result<Manifest, RegistryError> {
    let unknown = || RegistryError::ManifestUnknown(reference_text(reference));
    let digest = match reference {
        Reference::Digest(digest) => digest.clone(),
        Reference::Tag(tag) => {
            let key = layout::tag_current_link_key(name, tag);
            read_link(store, &key).await?.ok_or_else(unknown)?
        }
    };
    // The repository must link the revision, whichever way it was named.
    if read_link(store, &layout::revision_link_key(name, &digest))
        .await?
        .as_ref()
        != Some(&digest)
    {
        return Err(unknown());
    }
    let payload = match store
        .read(&layout::old_blob_key(&digest), MAX_MANIFEST_BYTES)
        .await
    {
        Ok(payload) => payload,
        Err(StorageError::NotFound { .. }) => return Err(unknown()),
        Err(error) => return Err(unavailable(&error)),
    };
    Ok(Manifest {
        media_type: media_type_of(&payload),
        digest: digest.as_str().to_owned(),
        payload,
    })
}

/// Blob `digest` of the repository: its size, and its bytes unless `head`.
pub async fn blob(
    store: &dyn BlobStore,
    name: &RepositoryPath,
    digest: &Digest,
    head: bool,
) -> Result<Blob, RegistryError> {
    let unknown = || RegistryError::BlobUnknown(digest.to_string());
    if read_link(store, &layout::layer_link_key(name, digest))
        .await?
        .as_ref()
        != Some(digest)
    {
        return Err(unknown());
    }
    let key = layout::old_blob_key(digest);
    if head {
        let meta = store.stat(&key).await.map_err(|e| unavailable(&e))?;
        let meta = meta.ok_or_else(unknown)?;
        return Ok(Blob {
            size: meta.size,
            body: None,
        });
    }
    let reader = store.open_read(&key).await.map_err(|e| unavailable(&e))?;
    let reader = reader.ok_or_else(unknown)?;
    Ok(Blob {
        size: reader.meta.size,
        body: Some(reader.body),
    })
}

/// A page of the repository's tags, in byte order. A repository without a tags directory is
/// unknown.
pub async fn tags(
    store: &dyn BlobStore,
    name: &RepositoryPath,
    page: &Page,
) -> Result<Vec<String>, RegistryError> {
    let mut directories = TagDirectories::new(store, name);
    let mut tags = Vec::new();
    while let Some(names) = directories.next_page().await.map_err(|e| unavailable(&e))? {
        let after_last = |tag: &String| page.last.as_deref().is_none_or(|last| tag.as_str() > last);
        for tag in names.into_iter().filter(|tag| layout::is_valid_tag(tag)) {
            if after_last(&tag) {
                tags.push(tag);
                if tags.len() == page.n {
                    return Ok(tags);
                }
            }
        }
    }
    if directories.found_any() {
        Ok(tags)
    } else {
        Err(RegistryError::NameUnknown(name.to_string()))
    }
}

/// The digest a link file holds, or `None` when there is no such file. A link that does not
/// hold a digest is treated as absent, as the registry treats it.
async fn read_link(store: &dyn BlobStore, key: &str) -> Result<Option<Digest>, RegistryError> {
    match store.read(key, MAX_LINK_BYTES).await {
        Ok(data) => Ok(std::str::from_utf8(&data)
            .ok()
            .and_then(|text| Digest::parse(text.trim()).ok())),
        Err(StorageError::NotFound { .. } | StorageError::TooLarge { .. }) => Ok(None),
        Err(error) => Err(unavailable(&error)),
    }
}

fn reference_text(reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => tag.clone(),
        Reference::Digest(digest) => digest.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    media_type: Option<String>,
    schema_version: Option<i64>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    signatures: Option<IgnoredAny>,
}

/// The media type the distribution registry labels a stored manifest with: the one it declares,
/// else what its shape says (OCI allows omitting it; schema 1 never declares one).
pub fn media_type_of(payload: &Bytes) -> String {
    let Ok(shape) = serde_json::from_slice::<Shape>(payload) else {
        return "application/octet-stream".to_owned();
    };
    if let Some(declared) = shape.media_type.filter(|t| !t.is_empty()) {
        return declared;
    }
    let known = match (shape.schema_version, shape.manifests, shape.config) {
        (Some(1), ..) if shape.signatures.is_some() => {
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        }
        (Some(1), ..) => "application/vnd.docker.distribution.manifest.v1+json",
        (_, Some(_), _) => crate::manifest::OCI_INDEX,
        (_, _, Some(_)) => crate::manifest::OCI_MANIFEST,
        _ => "application/octet-stream",
    };
    known.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_follow_the_payload() {
        let of = |json: &str| media_type_of(&Bytes::from(json.to_owned()));
        assert_eq!(
            of(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            of(r#"{"schemaVersion":2,"config":{}}"#),
            crate::manifest::OCI_MANIFEST
        );
        assert_eq!(
            of(r#"{"schemaVersion":2,"manifests":[]}"#),
            crate::manifest::OCI_INDEX
        );
        assert_eq!(
            of(r#"{"schemaVersion":1,"signatures":[]}"#),
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        );
        assert_eq!(of("not json"), "application/octet-stream");
    }
}
