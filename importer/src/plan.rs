//! Reading one repository's old layout: its tags, every manifest they reach (index children
//! first) and every config and layer blob, read and verified before anything is written. A
//! repository is planned in bounded chunks ([`Walk`]), so a repository of any size fits in the
//! same memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, ListOptions, StorageError};

use crate::error::StepError;
use crate::manifest::{self, Descriptor, ManifestBody, ManifestError};

mod source;
mod walk;

pub use source::{Link, ListingScope, MAX_LISTED_LINKS, SourceLinks, SourceListing, SourceTag};
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

/// A tag of the source and what its `current/link` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTagLink {
    /// The tag.
    pub tag: String,
    /// The digest its current link holds; `None` when it has no current link.
    pub digest: Option<Digest>,
    /// The link's version as listed, where the store names versions.
    pub version: Option<String>,
}

/// Every tag of `tags` (as [`SourceLinks::take_tags`] gives them) with the digest its current
/// link holds. A link whose listed version is the one `known` holds for its tag is not read
/// again: its digest is taken from there.
pub async fn read_tags(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    tags: Vec<SourceTag>,
    known: &HashMap<String, (String, Digest)>,
    concurrency: usize,
) -> Result<Vec<SourceTagLink>, StepError> {
    futures::stream::iter(tags)
        .map(|tag| {
            async move {
                let digest = if !tag.has_current {
                    None
                } else if let Some(digest) = known_digest(known, &tag.name, tag.version.as_deref())
                {
                    Some(digest.clone())
                } else {
                    read_tag_link(store, path, &tag.name).await?
                };
                Ok(SourceTagLink {
                    tag: tag.name,
                    digest,
                    version: tag.version,
                })
            }
            .boxed()
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Lists `path`'s links and reads every tag's current link: the listing (for a [`Walk`]) and
/// the tags that point somewhere, each with its digest.
pub async fn list_and_read_tags(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    concurrency: usize,
) -> Result<(SourceLinks, Vec<(String, Digest)>), StepError> {
    let mut links = SourceLinks::list(store, path).await?;
    let tags = read_tags(store, path, links.take_tags(), &HashMap::new(), concurrency)
        .await?
        .into_iter()
        .filter_map(|link| Some((link.tag, link.digest?)))
        .collect();
    Ok((links, tags))
}

fn known_digest<'a>(
    known: &'a HashMap<String, (String, Digest)>,
    tag: &str,
    version: Option<&str>,
) -> Option<&'a Digest> {
    let (known_version, digest) = known.get(tag)?;
    (Some(known_version.as_str()) == version).then_some(digest)
}

/// The tags the database must hold after the final import: the source's tags as they are now,
/// less `left_out` (those skipped with their manifest). A tag pushed or moved since the step
/// began shows up as a difference. One listing of the tags; a link is read again only if its
/// version differs from the one `used` holds (the tags the step used, each with the version of
/// the link it read).
pub async fn expected_tags<'a>(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    used: impl Iterator<Item = (&'a (String, Digest), &'a Option<String>)>,
    left_out: &BTreeSet<String>,
    concurrency: usize,
) -> Result<BTreeMap<String, Digest>, StepError> {
    let mut links = SourceLinks::list_tags(store, path).await?;
    let known: HashMap<String, (String, Digest)> = used
        .filter_map(|((tag, digest), version)| {
            Some((tag.clone(), (version.clone()?, digest.clone())))
        })
        .collect();
    Ok(
        read_tags(store, path, links.take_tags(), &known, concurrency)
            .await?
            .into_iter()
            .filter(|link| !left_out.contains(&link.tag))
            .filter_map(|link| link.digest.map(|digest| (link.tag, digest)))
            .collect(),
    )
}

/// Checks that `copied` (a copy's or a stat's answer) is what manifest `referrer` declares for
/// blob `digest`: `None` when nothing is under `gitlab/`.
pub fn check_copied_size(
    digest: &Digest,
    declared: u64,
    referrer: &Digest,
    copied: Option<u64>,
) -> Result<(), StepError> {
    match copied {
        None => Err(StepError::Verification(format!(
            "blob {digest} is not under gitlab/"
        ))),
        Some(size) if size != declared => Err(StepError::Verification(format!(
            "blob {digest} is {size} bytes under gitlab/ but manifest {referrer} declares {declared}"
        ))),
        Some(_) => Ok(()),
    }
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

/// The digest a tag's current link holds (`None`: it went away since the listing).
async fn read_tag_link(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    tag: &str,
) -> Result<Option<Digest>, StepError> {
    let key = layout::tag_current_link_key(path, tag);
    match store.read(&key, MAX_LINK_BYTES).await {
        Ok(data) => {
            let text = String::from_utf8_lossy(&data);
            match Digest::parse(&text) {
                Ok(digest) => Ok(Some(digest)),
                Err(source) => Err(StepError::BrokenTagLink {
                    tag: tag.to_owned(),
                    source,
                }),
            }
        }
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(StorageError::TooLarge { .. }) => Err(StepError::BrokenTagLink {
            source: ferry_shared::ids::IdError::InvalidDigest(
                "<link file larger than 1 KiB>".into(),
            ),
            tag: tag.to_owned(),
        }),
        Err(err) => Err(err.into()),
    }
}

/// A manifest the walk read, or the reason it is skipped (where the registry skipped it too).
enum Loaded {
    Planned(Box<PlannedManifest>),
    Skipped(String),
}

/// Reads one manifest. A tagged manifest (`tagged`) must be a revision of the repository; every
/// image's config must be linked to it; layers that are not linked are left out, as the registry
/// did.
async fn load_manifest(
    store: &dyn BlobStore,
    path: &RepositoryPath,
    links: &SourceLinks,
    digest: Digest,
    referrer: String,
    tagged: bool,
) -> Result<Loaded, StepError> {
    if tagged
        && !links
            .is_linked(store, path, Link::Revision, &digest)
            .await?
    {
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
            if !links
                .is_linked(store, path, Link::Layer, &config.digest)
                .await?
            {
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
                        || links
                            .is_linked(store, path, Link::Layer, &layer.digest)
                            .await?,
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
