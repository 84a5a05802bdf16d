//! The benchmark dataset: the old distribution layout written directly, at any size, the same
//! bytes for the same seed.
//!
//! `N` repositories × `T` tags × `L` layers per image. Each image takes `shared_layers` of its
//! layers from a pool of base layers common to every repository (as images built `FROM` the same
//! bases do), and makes the rest its own. Tags cycle through the manifest kinds a registry holds:
//! OCI image manifests, Docker schema 2 manifests, and every fifth tag an OCI index over two
//! platform manifests. Everything a push leaves is written: blobs, layer links, revision links,
//! tag `current` and `index` links, so `docker-registry garbage-collect` and Ferry read the same
//! tree they would read in production.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// What to generate.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// Repositories (`bench/gNN/pNNNN/app`, two-level groups as on GitLab).
    pub repositories: usize,
    /// Tags per repository.
    pub tags: usize,
    /// Layers per image.
    pub layers: usize,
    /// Of those, layers taken from the common base pool.
    pub shared_layers: usize,
    /// Size of the base pool.
    pub base_pool: usize,
    /// Bytes per layer (random, so incompressible).
    pub layer_bytes: usize,
    /// The seed: the same seed writes the same tree.
    pub seed: u64,
}

impl Default for DatasetSpec {
    /// The reference size: 2,000 repositories × 5 tags × 3 layers (one shared from 20 bases),
    /// 4 KiB layers.
    fn default() -> Self {
        Self {
            repositories: 2_000,
            tags: 5,
            layers: 3,
            shared_layers: 1,
            base_pool: 20,
            layer_bytes: 4096,
            seed: 1,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetStats {
    /// Repositories.
    pub repositories: usize,
    /// Tags.
    pub tags: usize,
    /// Manifests (indexes and their children included).
    pub manifests: usize,
    /// Distinct blobs (manifests, configs, layers).
    pub blobs: usize,
    /// Distinct layer and config blobs: what an import copies.
    pub copied_blobs: usize,
    /// Bytes of those.
    pub copied_bytes: u64,
    /// Every blob data file, for copy benchmarks.
    pub blob_files: Vec<PathBuf>,
}

/// splitmix64: a tiny PRNG whose output never changes with a crate version.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

struct Writer {
    root: PathBuf,
    written: HashSet<String>,
    stats: DatasetStats,
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

impl Writer {
    fn file(&self, key: &str, data: &[u8]) {
        let path = self.root.join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, data).expect("write");
    }

    /// Stores a blob once; returns its digest. `copied` counts it among what imports copy.
    fn blob(&mut self, data: &[u8], copied: bool) -> String {
        let digest = digest_of(data);
        if self.written.insert(digest.clone()) {
            let hex = &digest[7..];
            let key = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
            self.file(&key, data);
            self.stats.blobs += 1;
            self.stats.blob_files.push(self.root.join(key));
            if copied {
                self.stats.copied_blobs += 1;
                self.stats.copied_bytes += data.len() as u64;
            }
        }
        digest
    }

    fn link(&self, repository: &str, kind: &str, digest: &str) {
        let hex = &digest[7..];
        self.file(
            &format!("docker/registry/v2/repositories/{repository}/{kind}/sha256/{hex}/link"),
            digest.as_bytes(),
        );
    }

    fn tag(&self, repository: &str, tag: &str, digest: &str) {
        let base = format!("docker/registry/v2/repositories/{repository}/_manifests/tags/{tag}");
        self.file(&format!("{base}/current/link"), digest.as_bytes());
        let hex = &digest[7..];
        self.file(
            &format!("{base}/index/sha256/{hex}/link"),
            digest.as_bytes(),
        );
    }

    /// One image manifest over a fresh config and `layers`; returns (digest, size).
    fn image(
        &mut self,
        repository: &str,
        docker: bool,
        layers: &[(String, usize)],
        label: &str,
    ) -> (String, usize) {
        let (manifest_type, config_type, layer_type) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        };
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Labels": {"bench": label}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d).collect::<Vec<_>>()},
        }))
        .expect("json");
        let config_digest = self.blob(&config, true);
        self.link(repository, "_layers", &config_digest);
        let layer_entries: Vec<serde_json::Value> = layers
            .iter()
            .map(|(digest, size)| {
                self.link(repository, "_layers", digest);
                serde_json::json!({"mediaType": layer_type, "digest": digest, "size": size})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layer_entries,
        }))
        .expect("json");
        let digest = self.blob(&manifest, false);
        self.link(repository, "_manifests/revisions", &digest);
        self.stats.manifests += 1;
        (digest, manifest.len())
    }
}

/// Writes the dataset under `root` (the directory that will hold `docker/`).
pub fn generate(root: &Path, spec: &DatasetSpec) -> DatasetStats {
    let mut random = Random(spec.seed);
    let mut writer = Writer {
        root: root.to_path_buf(),
        written: HashSet::new(),
        stats: DatasetStats::default(),
    };
    let base: Vec<(String, usize)> = (0..spec.base_pool.max(1))
        .map(|_| {
            let data = random.bytes(spec.layer_bytes);
            (writer.blob(&data, true), data.len())
        })
        .collect();
    let shared = spec.shared_layers.min(spec.layers);
    for r in 0..spec.repositories {
        let repository = format!("bench/g{:02}/p{r:05}/app", r % 50);
        writer.stats.repositories += 1;
        for t in 0..spec.tags {
            let layers = |writer: &mut Writer, random: &mut Random| {
                let mut layers: Vec<(String, usize)> = (0..shared)
                    .map(|_| base[random.below(base.len())].clone())
                    .collect();
                layers.dedup();
                for _ in shared..spec.layers {
                    let data = random.bytes(spec.layer_bytes);
                    layers.push((writer.blob(&data, true), data.len()));
                }
                layers
            };
            let tag = format!("v{t}");
            let label = format!("{repository}:{tag}");
            let digest = match t % 5 {
                4 => {
                    let amd = layers(&mut writer, &mut random);
                    let arm = layers(&mut writer, &mut random);
                    let children = [
                        writer.image(&repository, false, &amd, &format!("{label} amd64")),
                        writer.image(&repository, false, &arm, &format!("{label} arm64")),
                    ];
                    let index = serde_json::to_vec(&serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": OCI_INDEX,
                        "manifests": [
                            {"mediaType": OCI_MANIFEST, "digest": children[0].0, "size": children[0].1,
                             "platform": {"architecture": "amd64", "os": "linux"}},
                            {"mediaType": OCI_MANIFEST, "digest": children[1].0, "size": children[1].1,
                             "platform": {"architecture": "arm64", "os": "linux"}},
                        ],
                    }))
                    .expect("json");
                    let digest = writer.blob(&index, false);
                    writer.link(&repository, "_manifests/revisions", &digest);
                    writer.stats.manifests += 1;
                    digest
                }
                kind => {
                    let image_layers = layers(&mut writer, &mut random);
                    writer
                        .image(&repository, kind == 3, &image_layers, &label)
                        .0
                }
            };
            writer.tag(&repository, &tag, &digest);
            writer.stats.tags += 1;
        }
    }
    writer.stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_writes_the_same_tree() {
        let spec = DatasetSpec {
            repositories: 6,
            tags: 5,
            ..DatasetSpec::default()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (generate(a.path(), &spec), generate(b.path(), &spec));
        assert_eq!(first.blobs, second.blobs);
        let names = |stats: &DatasetStats, root: &Path| -> Vec<PathBuf> {
            let mut names: Vec<PathBuf> = stats
                .blob_files
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&first, a.path()), names(&second, b.path()));
        assert_eq!((first.repositories, first.tags), (6, 30));
        // Per repository: 4 single images and 1 index of 2 (3 manifests).
        assert_eq!(first.manifests, 6 * 7);
        let c = tempfile::tempdir().unwrap();
        let other = generate(c.path(), &DatasetSpec { seed: 2, ..spec });
        assert_eq!(other.blobs, first.blobs);
        assert_ne!(names(&other, c.path()), names(&first, a.path()));
    }
}
