//! Reading one repository's old layout: its tags, every manifest they reach (index children
//! first) and every config and layer blob, read and verified before anything is written. A
//! repository is planned in bounded chunks ([`Walk`]), so a repository of any size fits in the
//! same memory.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, ListOptions, StorageError};
use ferry_shared::walk::TagDirectories;

use crate::error::StepError;
use crate::manifest::{self, Descriptor, ManifestBody, ManifestError};

mod walk;

pub use walk::{CHUNK_BYTES, CHUNK_MANIFESTS, Chunk, Skipped, Walk};

/// Largest manifest read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Configs up to this size keep their payload in the database (the registry's limit).
pub const CONFIG_PAYLOAD_LIMIT: u64 = 256_000;
/// Link files are tiny; anything bigger is not a link.
pub const MAX_LINK_BYTES: u64 = 1024;

/// A config or layer blob the import registers.
#[derive(Debug, Clone)]
pub struct PlannedBlob {
    /// Size in bytes, from the manifest.
    pub size: u64,
    /// Media type, from the first manifest that references it.
    pub media_type: String,
    /// False for foreign (non-distributable) layers, which are registered but not copied.
    pub copy: bool,
    /// A manifest that references it, for error messages.
    pub referrer: Digest,
}

/// A manifest the import registers.
#[derive(Debug, Clone)]
pub struct PlannedManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its schema version.
    pub schema_version: i32,
    /// The bytes exactly as stored.
    pub payload: Bytes,
    /// For an image: the config descriptor and, if small enough, its payload.
    pub config: Option<(Descriptor, Option<Bytes>)>,
    /// For an image: its layers.
    pub layers: Vec<Descriptor>,
    /// For an index: its children's digests.
    pub children: Vec<Digest>,
    /// Config plus layer sizes.
    pub total_size: u64,
    /// Layers left out because they are not linked to the repository.
    pub layers_skipped: u64,
    /// A buildx cache index imported as an image manifest.
    pub non_conformant: bool,
    /// The OCI `artifactType`, for artifacts.
    pub artifact_type: Option<String>,
}

/// Lists the repository's tag names (one delimited listing, paged).
pub async fn list_tags(
    store: &dyn BlobStore,
    path: &RepositoryPath,
) -> Result<Vec<String>, StepError> {
    let mut directories = TagDirectories::new(store, path);
    let mut tags = Vec::new();
    while let Some(names) = directories.next_page().await? {
        if let Some(invalid) = names.iter().find(|tag| !layout::is_valid_tag(tag)) {
            return Err(StepError::InvalidTag(invalid.clone()));
        }
        tags.extend(names);
    }
    Ok(tags)
}

/// Every tag of the repository with the digest its current link holds (`None`: no current link).
pub async fn read_tags(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    concurrency: usize,
) -> Result<Vec<(String, Option<Digest>)>, StepError> {
    let tag_names = list_tags(store, path).await?;
    futures::stream::iter(tag_names)
        .map(|tag| read_tag_link(store, path, tag).boxed())
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// The tags the database must hold after the final import: the source's tags as they are now,
/// less `left_out` (those skipped with their manifest). A tag pushed or moved since the step
/// began shows up as a difference.
pub async fn expected_tags(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    left_out: &BTreeSet<String>,
    concurrency: usize,
) -> Result<BTreeMap<String, Digest>, StepError> {
    Ok(read_tags(store, path, concurrency)
        .await?
        .into_iter()
        .filter(|(tag, _)| !left_out.contains(tag))
        .filter_map(|(tag, digest)| digest.map(|digest| (tag, digest)))
        .collect())
}

/// Checks that every blob of `blobs` to be copied is under the new prefix with the size its manifest
/// declares.
pub async fn verify_copied_blobs(
    store: &dyn BlobStore,
    blobs: &BTreeMap<Digest, PlannedBlob>,
    concurrency: usize,
) -> Result<(), StepError> {
    let copied: Vec<(Digest, u64, Digest)> = blobs
        .iter()
        .filter(|entry| entry.1.copy)
        .map(|(digest, blob)| (digest.clone(), blob.size, blob.referrer.clone()))
        .collect();
    let checks = copied.into_iter().map(|(digest, size, referrer)| {
        async move {
            match store.stat(&layout::new_blob_key(&digest)).await? {
                None => Err(StepError::Verification(format!("blob {digest} is not under gitlab/"))),
                Some(meta) if meta.size != size => Err(StepError::Verification(format!(
                    "blob {digest} is {} bytes under gitlab/ but manifest {referrer} declares {size}",
                    meta.size
                ))),
                Some(_) => Ok(()),
            }
        }
        .boxed()
    });
    futures::stream::iter(checks)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// Whether the repository exists in old storage (has a tags directory with at least one entry).
pub async fn exists_in_old_storage(
    store: &dyn BlobStore,
    path: &RepositoryPath,
) -> Result<bool, StorageError> {
    let options = ListOptions {
        delimited: true,
        page_token: None,
        max_results: 1,
    };
    let page = store.list(&layout::tags_prefix(path), &options).await?;
    Ok(!page.prefixes.is_empty() || !page.objects.is_empty())
}

async fn read_tag_link(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    tag: String,
) -> Result<(String, Option<Digest>), StepError> {
    let key = layout::tag_current_link_key(path, &tag);
    match store.read(&key, MAX_LINK_BYTES).await {
        Ok(data) => {
            let text = String::from_utf8_lossy(&data);
            match Digest::parse(&text) {
                Ok(digest) => Ok((tag, Some(digest))),
                Err(source) => Err(StepError::BrokenTagLink { tag, source }),
            }
        }
        Err(StorageError::NotFound { .. }) => Ok((tag, None)),
        Err(StorageError::TooLarge { .. }) => Err(StepError::BrokenTagLink {
            source: ferry_shared::ids::IdError::InvalidDigest(
                "<link file larger than 1 KiB>".into(),
            ),
            tag,
        }),
        Err(err) => Err(err.into()),
    }
}

/// A manifest the walk read, or the reason it is skipped (where the registry skipped it too).
enum Loaded {
    Planned(Box<PlannedManifest>),
    Skipped(String),
}

async fn is_linked(store: &dyn BlobStore, key: &str) -> Result<bool, StepError> {
    Ok(store.stat(key).await?.is_some())
}

/// Reads one manifest. A tagged manifest (`tagged`) must be a revision of the repository; every
/// image's config must be linked to it; layers that are not linked are left out, as the registry
/// did.
async fn load_manifest(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    digest: Digest,
    referrer: String,
    tagged: bool,
) -> Result<Loaded, StepError> {
    if tagged && !is_linked(store, &layout::revision_link_key(path, &digest)).await? {
        return Ok(Loaded::Skipped(format!(
            "manifest {digest} ({referrer}) is not a revision of the repository (no revision link)"
        )));
    }
    let payload = match store
        .read(&layout::old_blob_key(&digest), MAX_MANIFEST_BYTES)
        .await
    {
        Ok(payload) => payload,
        Err(StorageError::NotFound { .. }) => {
            return Err(StepError::ManifestMissing { digest, referrer });
        }
        Err(StorageError::TooLarge { limit, .. }) => {
            return Err(StepError::ManifestTooLarge { digest, limit });
        }
        Err(err) => return Err(err.into()),
    };
    let actual = Digest::of(&payload);
    if actual != digest {
        return Err(StepError::ManifestDigestMismatch { digest, actual });
    }
    let parsed = match manifest::parse(&payload) {
        Ok(parsed) => parsed,
        Err(ManifestError::Schema1) => {
            return Ok(Loaded::Skipped(format!(
                "manifest {digest} ({referrer}): schema 1 manifests are not supported"
            )));
        }
        Err(source) => return Err(StepError::BadManifest { digest, source }),
    };
    let mut planned = PlannedManifest {
        digest,
        media_type: parsed.media_type,
        schema_version: parsed.schema_version,
        payload,
        config: None,
        layers: Vec::new(),
        children: Vec::new(),
        total_size: 0,
        layers_skipped: 0,
        non_conformant: parsed.non_conformant,
        artifact_type: parsed.artifact_type,
    };
    match parsed.body {
        ManifestBody::Image { config, layers } => {
            if !is_linked(store, &layout::layer_link_key(path, &config.digest)).await? {
                return Ok(Loaded::Skipped(format!(
                    "manifest {} ({referrer}): config {} is not linked to the repository",
                    planned.digest, config.digest
                )));
            }
            let config_payload = load_config(store, &config, &planned.digest).await?;
            planned.total_size = config.size + layers.iter().map(|l| l.size).sum::<u64>();
            planned.config = Some((config, config_payload));
            // Foreign layers live outside the registry and are never linked; keep them.
            let linked = futures::future::try_join_all(layers.iter().map(|layer| async move {
                Ok::<bool, StepError>(
                    layer.foreign
                        || is_linked(store, &layout::layer_link_key(path, &layer.digest)).await?,
                )
            }))
            .await?;
            for (layer, linked) in layers.into_iter().zip(linked) {
                if linked {
                    planned.layers.push(layer);
                } else {
                    tracing::warn!(repository = %path, manifest = %planned.digest, layer = %layer.digest,
                        "blob is not linked to the repository; layer skipped");
                    planned.layers_skipped += 1;
                }
            }
        }
        ManifestBody::Index { manifests } => {
            planned.children = manifests.into_iter().map(|d| d.digest).collect();
        }
    }
    Ok(Loaded::Planned(Box::new(planned)))
}

async fn load_config(
    store: &dyn BlobStore,
    config: &Descriptor,
    manifest: &Digest,
) -> Result<Option<Bytes>, StepError> {
    if config.size > CONFIG_PAYLOAD_LIMIT {
        return Ok(None);
    }
    let data = match store
        .read(&layout::old_blob_key(&config.digest), CONFIG_PAYLOAD_LIMIT)
        .await
    {
        Ok(data) => data,
        Err(StorageError::NotFound { .. }) => {
            return Err(StepError::BlobMissing {
                digest: config.digest.clone(),
                manifest: manifest.clone(),
            });
        }
        Err(StorageError::TooLarge { .. }) => {
            return Err(StepError::BlobCorrupt {
                digest: config.digest.clone(),
                manifest: manifest.clone(),
                detail: format!(
                    "stored config is larger than the {} bytes declared",
                    config.size
                ),
            });
        }
        Err(err) => return Err(err.into()),
    };
    let actual = Digest::of(&data);
    if actual != config.digest {
        return Err(StepError::BlobCorrupt {
            digest: config.digest.clone(),
            manifest: manifest.clone(),
            detail: format!("content hashes to {actual}"),
        });
    }
    Ok(Some(data))
}
