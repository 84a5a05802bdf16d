//! Planning a repository in chunks: a bounded number of tag targets (and their index children)
//! at a time, so that a repository of 10,000 tags needs no more memory than one of 100.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use futures::{FutureExt, StreamExt, TryStreamExt};

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::storage::BlobStore;

use super::{Loaded, PlannedBlob, PlannedManifest, SourceLinks, load_manifest};
use crate::error::StepError;

/// Tag targets planned per chunk, at most.
pub const CHUNK_MANIFESTS: usize = 256;
/// Manifest and config bytes a chunk holds before it closes (a chunk may pass it by one manifest
/// and its index children).
pub const CHUNK_BYTES: usize = 8 << 20;
/// Digests a walk remembers to avoid reading or copying them twice across chunks. Beyond it a
/// shared blob or index child is handled again (idempotently), which costs requests, not
/// correctness.
const REMEMBERED: usize = 8192;

/// One part of a repository's import, small enough to hold in memory.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Manifests in dependency order: index children, then images, then indexes.
    pub manifests: Vec<PlannedManifest>,
    /// The config and layer blobs they reference that earlier chunks did not, by digest.
    pub blobs: BTreeMap<Digest, PlannedBlob>,
}

impl Chunk {
    /// The payload bytes the chunk holds.
    fn bytes(&self) -> usize {
        self.manifests.iter().map(PlannedManifest::bytes).sum()
    }
}

impl PlannedManifest {
    fn bytes(&self) -> usize {
        let config = self
            .config
            .as_ref()
            .and_then(|(_, payload)| payload.as_ref());
        self.payload.len() + config.map_or(0, |c| c.len())
    }
}

/// What a walk left out, as the registry left it out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Tagged manifests and index children skipped (no revision link, unlinked config, schema 1).
    pub manifests: u64,
    /// Layers left out of their manifests because they are not linked to the repository.
    pub layers: u64,
}

/// Index children read with their index, by digest, for [`Walk::load_children`].
type Prefetched = HashMap<Digest, Loaded>;

fn loaded_bytes(loaded: &Loaded) -> usize {
    match loaded {
        Loaded::Planned(manifest) => manifest.bytes(),
        Loaded::Skipped(_) => 0,
    }
}

/// A set of digests that stops growing at [`REMEMBERED`] entries, kept as the hashes' bytes: a
/// step on a 10,000-tag repository remembers thousands, and a digest's string costs three times
/// as much.
#[derive(Debug, Default)]
struct Remembered(HashSet<[u8; 32]>);

impl Remembered {
    fn contains(&self, digest: &Digest) -> bool {
        digest
            .sha256_bytes()
            .is_some_and(|bytes| self.0.contains(&bytes))
    }

    fn remember(&mut self, digest: &Digest) {
        if let Some(bytes) = digest.sha256_bytes()
            && self.0.len() < REMEMBERED
        {
            self.0.insert(bytes);
        }
    }
}

/// Plans a repository's tag targets chunk by chunk ([`Walk::next_chunk`]). Looks up to
/// `concurrency` manifests up at once (the registry's `tagconcurrency`) and fails on the first
/// broken piece with a reason that names it.
pub struct Walk<'a> {
    store: &'a dyn BlobStore,
    path: &'a RepositoryPath,
    links: &'a SourceLinks,
    concurrency: usize,
    /// Tag targets not planned yet, each with a referrer for messages.
    roots: VecDeque<(Digest, String)>,
    /// Tag targets skipped: their tags are left out too.
    skipped_roots: BTreeSet<Digest>,
    /// Index children skipped (counted once).
    skipped_children: BTreeSet<Digest>,
    /// Index children planned by earlier chunks.
    children: Remembered,
    /// Blobs planned by earlier chunks.
    blobs: Remembered,
    skipped: Skipped,
}

impl std::fmt::Debug for Walk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("path", &self.path)
            .field("roots_left", &self.roots.len())
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl<'a> Walk<'a> {
    /// A walk over the manifests `tags` point to, less those in `exclude` (already registered),
    /// that asks `links` which manifests and blobs are linked to the repository.
    pub fn new(
        store: &'a dyn BlobStore,
        path: &'a RepositoryPath,
        links: &'a SourceLinks,
        concurrency: usize,
        tags: &[(String, Digest)],
        exclude: &HashSet<Digest>,
    ) -> Self {
        let mut roots: BTreeMap<&Digest, &str> = BTreeMap::new();
        for (tag, digest) in tags.iter().filter(|(_, d)| !exclude.contains(d)) {
            roots.entry(digest).or_insert(tag);
        }
        Self {
            store,
            path,
            links,
            concurrency: concurrency.max(1),
            roots: roots
                .into_iter()
                .map(|(digest, tag)| (digest.clone(), format!("tag {tag}")))
                .collect(),
            skipped_roots: BTreeSet::new(),
            skipped_children: BTreeSet::new(),
            children: Remembered::default(),
            blobs: Remembered::default(),
            skipped: Skipped::default(),
        }
    }

    /// Tag targets skipped so far: their tags must be left out.
    pub fn skipped_roots(&self) -> &BTreeSet<Digest> {
        &self.skipped_roots
    }

    /// What was left out so far.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Plans the next chunk, `None` once every tag target is planned.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, StepError> {
        if self.roots.is_empty() {
            return Ok(None);
        }
        let (loaded, prefetched) = self.load_roots().await?;
        let (mut images, mut indexes) = (Vec::new(), Vec::new());
        for (digest, loaded) in loaded {
            match loaded {
                Loaded::Planned(manifest) if manifest.children.is_empty() => images.push(*manifest),
                Loaded::Planned(manifest) => indexes.push(*manifest),
                Loaded::Skipped(reason) => {
                    tracing::warn!(repository = %self.path, reason, "manifest skipped");
                    self.skipped.manifests += 1;
                    self.skipped_roots.insert(digest);
                }
            }
        }
        let children = self
            .load_children(&images, &mut indexes, prefetched)
            .await?;
        let mut chunk = Chunk {
            manifests: children.into_iter().chain(images).chain(indexes).collect(),
            blobs: BTreeMap::new(),
        };
        for manifest in &chunk.manifests {
            self.skipped.layers += manifest.layers_skipped;
            let config = manifest.config.as_ref().map(|(descriptor, _)| descriptor);
            for blob in config.into_iter().chain(&manifest.layers) {
                if self.blobs.contains(&blob.digest) {
                    continue;
                }
                chunk
                    .blobs
                    .entry(blob.digest.clone())
                    .or_insert_with(|| PlannedBlob {
                        size: blob.size,
                        media_type: blob.media_type.clone(),
                        copy: !blob.foreign,
                        referrer: manifest.digest.clone(),
                    });
            }
        }
        for digest in chunk.blobs.keys() {
            self.blobs.remember(digest);
        }
        tracing::debug!(repository = %self.path, manifests = chunk.manifests.len(),
            blobs = chunk.blobs.len(), bytes = chunk.bytes(), "chunk planned");
        Ok(Some(chunk))
    }

    /// Reads the next tag targets, up to [`CHUNK_MANIFESTS`] or [`CHUNK_BYTES`]. An index's
    /// children not planned before are read as soon as the index is (`concurrency` at a time),
    /// alongside the other targets' configs rather than after them: a round trip less.
    async fn load_roots(&mut self) -> Result<(Vec<(Digest, Loaded)>, Prefetched), StepError> {
        let (store, path, links) = (self.store, self.path, self.links);
        let (planned_children, skipped_children) = (&self.children, &self.skipped_children);
        let concurrency = self.concurrency;
        let mut loads = futures::stream::iter(self.roots.iter().cloned())
            .map(|(digest, referrer)| {
                async move {
                    let loaded =
                        load_manifest(store, path, links, digest.clone(), referrer, true).await?;
                    let children: Vec<Digest> = match &loaded {
                        Loaded::Planned(index) => (index.children.iter())
                            .filter(|child| {
                                !planned_children.contains(child)
                                    && !skipped_children.contains(*child)
                            })
                            .cloned()
                            .collect(),
                        Loaded::Skipped(_) => Vec::new(),
                    };
                    let parent = &digest;
                    let children: Vec<(Digest, Loaded)> = futures::stream::iter(children)
                        .map(|child| async move {
                            let referrer = format!("index {parent}");
                            let loaded =
                                load_manifest(store, path, links, child.clone(), referrer, false)
                                    .await?;
                            Ok::<_, StepError>((child, loaded))
                        })
                        .buffered(concurrency)
                        .try_collect()
                        .await?;
                    Ok::<_, StepError>((digest, loaded, children))
                }
                .boxed()
            })
            .buffered(self.concurrency);
        let (mut loaded, mut prefetched, mut bytes) = (Vec::new(), Prefetched::new(), 0);
        while let Some(item) = loads.next().await {
            let (digest, manifest, children) = item?;
            bytes += loaded_bytes(&manifest);
            bytes += children
                .iter()
                .map(|(_, child)| loaded_bytes(child))
                .sum::<usize>();
            prefetched.extend(children);
            loaded.push((digest, manifest));
            if loaded.len() >= CHUNK_MANIFESTS || bytes >= CHUNK_BYTES {
                break;
            }
        }
        // Reads still in flight are dropped and made again by the next chunk.
        drop(loads);
        self.roots.drain(..loaded.len());
        Ok((loaded, prefetched))
    }

    /// Plans the children of the chunk's indexes that are not images of the chunk or children
    /// planned before, from `prefetched` or read now. An index's child that is itself an index
    /// is an error; a child skipped is dropped from its index, as the registry kept partial
    /// lists.
    async fn load_children(
        &mut self,
        images: &[PlannedManifest],
        indexes: &mut [PlannedManifest],
        mut prefetched: Prefetched,
    ) -> Result<Vec<PlannedManifest>, StepError> {
        let in_chunk: HashSet<&Digest> = images.iter().map(|m| &m.digest).collect();
        let mut wanted: BTreeMap<Digest, Digest> = BTreeMap::new();
        for index in indexes.iter_mut() {
            index
                .children
                .retain(|child| !self.skipped_children.contains(child));
            for child in &index.children {
                if !in_chunk.contains(child) && !self.children.contains(child) {
                    wanted
                        .entry(child.clone())
                        .or_insert_with(|| index.digest.clone());
                }
            }
        }
        let (store, path, links) = (self.store, self.path, self.links);
        let loaded: Vec<(Digest, Digest, Loaded)> = futures::stream::iter(wanted)
            .map(|(digest, parent)| {
                let read = prefetched.remove(&digest);
                async move {
                    if let Some(loaded) = read {
                        return Ok((digest, parent, loaded));
                    }
                    let referrer = format!("index {parent}");
                    let loaded =
                        load_manifest(store, path, links, digest.clone(), referrer, false).await?;
                    Ok::<_, StepError>((digest, parent, loaded))
                }
                .boxed()
            })
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        let mut children = Vec::with_capacity(loaded.len());
        for (digest, parent, loaded) in loaded {
            match loaded {
                Loaded::Planned(child) if !child.children.is_empty() => {
                    return Err(StepError::NestedIndex {
                        digest: parent,
                        child: digest,
                    });
                }
                Loaded::Planned(child) => {
                    self.children.remember(&digest);
                    children.push(*child);
                }
                Loaded::Skipped(reason) => {
                    if self.skipped_children.insert(digest.clone()) {
                        tracing::warn!(repository = %self.path, reason, "index child skipped");
                        self.skipped.manifests += 1;
                    }
                    for index in indexes.iter_mut() {
                        index.children.retain(|c| c != &digest);
                    }
                }
            }
        }
        Ok(children)
    }
}
