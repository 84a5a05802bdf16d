//! Parsing manifests from the old layout: image manifests (Docker schema 2, OCI) and indexes
//! (Docker manifest list, OCI index).

use serde::Deserialize;
use thiserror::Error;

use ferry_shared::ids::{Digest, IdError};

/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The config media type that marks an index as a buildx cache (`--cache-to type=registry`).
pub const BUILDX_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
const SCHEMA1_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Why a manifest could not be understood.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Not valid JSON, or missing required fields.
    #[error("invalid manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Docker schema 1, which the new platform does not store.
    #[error("schema 1 manifests are not supported")]
    Schema1,
    /// A media type that is neither an image manifest nor an index.
    #[error("unknown manifest media type {0:?}")]
    UnknownMediaType(String),
    /// A descriptor's digest is malformed.
    #[error("bad descriptor: {0}")]
    Descriptor(#[from] IdError),
}

/// A content descriptor: what a manifest says about a blob or child manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The referenced content's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the blob lives outside the registry (foreign / non-distributable layers): it is
    /// registered but never copied.
    pub foreign: bool,
}

/// What a manifest references.
#[derive(Debug, Clone)]
pub enum ManifestBody {
    /// An image manifest: one config blob and its layers.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, in order.
        layers: Vec<Descriptor>,
    },
    /// An index or manifest list: child manifests.
    Index {
        /// The child manifests.
        manifests: Vec<Descriptor>,
    },
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type, from the payload (or inferred for OCI payloads that omit it).
    pub media_type: String,
    /// `schemaVersion` (2 for everything accepted here).
    pub schema_version: i32,
    /// What it references.
    pub body: ManifestBody,
    /// True for a buildx cache index imported as an image manifest (its payload is kept as is).
    pub non_conformant: bool,
    /// The OCI `artifactType`, for artifacts.
    pub artifact_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i32>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    urls: Vec<String>,
}

impl RawDescriptor {
    fn into_descriptor(self, default_media_type: &str) -> Result<Descriptor, ManifestError> {
        let media_type = self
            .media_type
            .unwrap_or_else(|| default_media_type.to_owned());
        let foreign = !self.urls.is_empty()
            || media_type.contains("foreign")
            || media_type.contains("nondistributable");
        Ok(Descriptor {
            digest: Digest::parse(&self.digest)?,
            size: self.size,
            media_type,
            foreign,
        })
    }
}

/// Parses a manifest payload.
pub fn parse(payload: &[u8]) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(payload)?;
    let schema_version = raw.schema_version.unwrap_or(0);
    let declared = raw.media_type.clone().unwrap_or_default();
    if schema_version == 1 || SCHEMA1_TYPES.contains(&declared.as_str()) {
        return Err(ManifestError::Schema1);
    }
    let media_type = match declared.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST | DOCKER_MANIFEST_LIST | OCI_INDEX => declared,
        // OCI allows the media type to be omitted; the shape tells.
        "" if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        "" if raw.config.is_some() => OCI_MANIFEST.to_owned(),
        _ => return Err(ManifestError::UnknownMediaType(declared)),
    };
    let artifact_type = raw.artifact_type.clone().filter(|t| !t.is_empty());
    let is_index = media_type == DOCKER_MANIFEST_LIST || media_type == OCI_INDEX;
    let is_buildx_cache = is_index
        && raw.manifests.as_ref().is_some_and(|m| {
            m.iter()
                .any(|d| d.media_type.as_deref() == Some(BUILDX_CACHE_CONFIG))
        });
    if is_buildx_cache {
        // The registry imported these as image manifests: the cache config is the config and the
        // other entries (layer blobs, not manifests) are the layers.
        let mut config = None;
        let mut layers = Vec::new();
        for descriptor in raw.manifests.unwrap_or_default() {
            let is_config = descriptor.media_type.as_deref() == Some(BUILDX_CACHE_CONFIG);
            let descriptor =
                descriptor.into_descriptor("application/vnd.oci.image.layer.v1.tar")?;
            if is_config && config.is_none() {
                config = Some(descriptor);
            } else {
                layers.push(descriptor);
            }
        }
        let config =
            config.ok_or_else(|| ManifestError::UnknownMediaType(BUILDX_CACHE_CONFIG.into()))?;
        return Ok(Manifest {
            media_type,
            schema_version,
            body: ManifestBody::Image { config, layers },
            non_conformant: true,
            artifact_type,
        });
    }
    let body = if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| serde::de::Error::missing_field("manifests"))
            .map_err(ManifestError::Json)?
            .into_iter()
            .map(|d| d.into_descriptor(OCI_MANIFEST))
            .collect::<Result<_, _>>()?;
        ManifestBody::Index { manifests }
    } else {
        let config = raw
            .config
            .ok_or_else(|| serde::de::Error::missing_field("config"))
            .map_err(ManifestError::Json)?
            .into_descriptor("application/vnd.oci.image.config.v1+json")?;
        let layers = raw
            .layers
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.into_descriptor("application/vnd.oci.image.layer.v1.tar"))
            .collect::<Result<_, _>>()?;
        ManifestBody::Image { config, layers }
    };
    Ok(Manifest {
        media_type,
        schema_version,
        body,
        non_conformant: false,
        artifact_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_a_docker_image_manifest() {
        let payload = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":7}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":9}},
                      {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":3,"urls":["https://x"]}}]}}"#,
            digest('a'),
            digest('b'),
            digest('c')
        );
        let manifest = parse(payload.as_bytes()).expect("parses");
        assert_eq!(manifest.media_type, DOCKER_MANIFEST);
        let ManifestBody::Image { config, layers } = manifest.body else {
            panic!("image")
        };
        assert_eq!(config.size, 7);
        assert_eq!(layers.len(), 2);
        assert!(!layers[0].foreign);
        assert!(layers[1].foreign);
    }

    #[test]
    fn infers_oci_types_and_parses_indexes() {
        let payload = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            digest('d')
        );
        let manifest = parse(payload.as_bytes()).expect("parses");
        assert_eq!(manifest.media_type, OCI_INDEX);
        assert!(
            matches!(manifest.body, ManifestBody::Index { ref manifests } if manifests.len() == 1)
        );
    }

    #[test]
    fn a_buildx_cache_index_becomes_a_non_conformant_image() {
        let payload = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
                {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                {{"mediaType":"{BUILDX_CACHE_CONFIG}","digest":"{}","size":4}}]}}"#,
            digest('a'),
            digest('b')
        );
        let manifest = parse(payload.as_bytes()).expect("parses");
        assert!(manifest.non_conformant);
        assert_eq!(
            manifest.media_type, OCI_INDEX,
            "the original media type is kept"
        );
        let ManifestBody::Image { config, layers } = manifest.body else {
            panic!("image")
        };
        assert_eq!(config.media_type, BUILDX_CACHE_CONFIG);
        assert_eq!(layers.len(), 1);
    }

    #[test]
    fn artifacts_keep_their_artifact_type() {
        let payload = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sbom+json",
            "config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
            digest('c')
        );
        let manifest = parse(payload.as_bytes()).expect("parses");
        assert_eq!(
            manifest.artifact_type.as_deref(),
            Some("application/vnd.example.sbom+json")
        );
        assert!(!manifest.non_conformant);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(matches!(parse(b"{not json"), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#),
            Err(ManifestError::UnknownMediaType(_))
        ));
        let bad_digest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"sha256:../../etc","size":1}}}}"#
        );
        assert!(matches!(
            parse(bad_digest.as_bytes()),
            Err(ManifestError::Descriptor(_))
        ));
        let no_config = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#);
        assert!(matches!(
            parse(no_config.as_bytes()),
            Err(ManifestError::Json(_))
        ));
    }
}
