//! [`LayoutWriter`]: old-layout data written by hand.

use std::path::{Path, PathBuf};

/// Writes old-layout data by hand, for cases a real registry would never produce (broken links,
/// corrupt blobs, hostile names).
#[derive(Debug)]
pub struct LayoutWriter {
    root: PathBuf,
}

impl LayoutWriter {
    /// A writer over `root` (the directory that holds `docker/`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn write(&self, key: &str, data: &[u8]) {
        let path = self.root.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }

    /// Stores `data` under `digest` (which may be wrong on purpose).
    pub fn blob_at(&self, digest: &str, data: &[u8]) {
        let hex = &digest["sha256:".len()..];
        self.write(
            &format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]),
            data,
        );
    }

    /// Stores `data` under its own digest and returns it.
    pub fn blob(&self, data: &[u8]) -> String {
        let digest = Self::digest_of(data);
        self.blob_at(&digest, data);
        digest
    }

    /// The `sha256:<hex>` digest of `data`.
    fn digest_of(data: &[u8]) -> String {
        ferry_shared::ids::Digest::of(data).as_str().to_owned()
    }

    /// Writes a tag's `current/link` with `content`.
    pub fn tag_link(&self, repository: &str, tag: &str, content: &str) {
        self.write(
            &format!(
                "docker/registry/v2/repositories/{repository}/_manifests/tags/{tag}/current/link"
            ),
            content.as_bytes(),
        );
    }

    /// Stores an OCI image manifest over `config` and `layers` (digest, size) and returns its
    /// digest; nothing else is written.
    pub fn manifest(&self, config: (&str, usize), layers: &[(&str, usize)]) -> String {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(digest, size)| {
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
            "layers": layers,
        });
        self.blob(&serde_json::to_vec(&manifest).expect("json"))
    }

    /// Makes `digest` a manifest revision of the repository, as a push does.
    pub fn link_revision(&self, repository: &str, digest: &str) {
        let hex = &digest["sha256:".len()..];
        self.write(
            &format!("docker/registry/v2/repositories/{repository}/_manifests/revisions/sha256/{hex}/link"),
            digest.as_bytes(),
        );
    }

    /// Links blob `digest` (a layer or config) to the repository, as a push does.
    pub fn link_layer(&self, repository: &str, digest: &str) {
        let hex = &digest["sha256:".len()..];
        self.write(
            &format!("docker/registry/v2/repositories/{repository}/_layers/sha256/{hex}/link"),
            digest.as_bytes(),
        );
    }

    /// A complete, valid image tagged `repository:tag`, linked as a push links it; returns the
    /// manifest, config and layer digests.
    pub fn image_parts(&self, repository: &str, tag: &str, seed: &str) -> (String, String, String) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer of {seed}").repeat(50);
        let manifest = self.image_of(repository, tag, config.as_bytes(), &[layer.as_bytes()]);
        (
            manifest,
            Self::digest_of(config.as_bytes()),
            Self::digest_of(layer.as_bytes()),
        )
    }

    /// An image of `config` and `layers` tagged `repository:tag`, every blob stored and linked
    /// as a push links it; returns the manifest digest.
    pub fn image_of(&self, repository: &str, tag: &str, config: &[u8], layers: &[&[u8]]) -> String {
        let config_digest = self.blob(config);
        self.link_layer(repository, &config_digest);
        let layers: Vec<(String, usize)> = (layers.iter())
            .map(|layer| {
                let digest = self.blob(layer);
                self.link_layer(repository, &digest);
                (digest, layer.len())
            })
            .collect();
        let layers: Vec<(&str, usize)> = layers.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        let manifest = self.manifest((&config_digest, config.len()), &layers);
        self.link_revision(repository, &manifest);
        self.tag_link(repository, tag, &manifest);
        manifest
    }

    /// Stores an OCI index over `children` (digest, media type), makes it a revision of the
    /// repository and tags it; returns its digest.
    pub fn index(&self, repository: &str, tag: &str, children: &[(&str, &str)]) -> String {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(digest, media_type)| serde_json::json!({"mediaType": media_type, "digest": digest, "size": 1}))
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let digest = self.blob(&serde_json::to_vec(&index).expect("json"));
        self.link_revision(repository, &digest);
        self.tag_link(repository, tag, &digest);
        digest
    }

    /// A complete, valid image tagged `repository:tag`; returns the manifest digest.
    pub fn image(&self, repository: &str, tag: &str, seed: &str) -> String {
        self.image_parts(repository, tag, seed).0
    }

    /// A synthetic registry: `repositories` repositories `{group}/p0000/app`, `{group}/p0001/app`,
    /// ..., each with `tags` distinct images tagged `v0`, `v1`, ...
    pub fn registry(&self, group: &str, repositories: usize, tags: usize) {
        for i in 0..repositories {
            for t in 0..tags {
                self.image(
                    &format!("{group}/p{i:04}/app"),
                    &format!("v{t}"),
                    &format!("{group} {i}.{t}"),
                );
            }
        }
    }
}
