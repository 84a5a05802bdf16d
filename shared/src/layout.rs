//! Object keys of the Docker distribution storage layout, old and new.
//!
//! Keys are relative to the bucket (or the local root) and never start with `/`.

use crate::ids::{Digest, RepositoryPath};

/// Root of the old layout.
pub const OLD_ROOT: &str = "docker/registry/v2";
/// Prefix under which every repository of the old layout lives.
pub const REPOSITORIES_PREFIX: &str = "docker/registry/v2/repositories/";
/// Root of the new layout: blobs registered in the metadata database are copied here.
pub const NEW_ROOT: &str = "gitlab/docker/registry/v2";

/// The old layout's key for a blob's data.
pub fn old_blob_key(digest: &Digest) -> String {
    blob_key(OLD_ROOT, digest)
}

/// The new layout's key for a blob's data (under `gitlab/`).
pub fn new_blob_key(digest: &Digest) -> String {
    blob_key(NEW_ROOT, digest)
}

fn blob_key(root: &str, digest: &Digest) -> String {
    let hex = digest.hex();
    format!("{root}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// The prefix holding one repository's tag directories (ends with `/`).
pub fn tags_prefix(path: &RepositoryPath) -> String {
    format!("{REPOSITORIES_PREFIX}{path}/_manifests/tags/")
}

/// The key of a tag's `current/link` file.
pub fn tag_current_link_key(path: &RepositoryPath, tag: &str) -> String {
    format!("{}{tag}/current/link", tags_prefix(path))
}

/// The key of the link that makes `digest` a manifest revision of the repository.
pub fn revision_link_key(path: &RepositoryPath, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES_PREFIX}{path}/_manifests/revisions/sha256/{}/link",
        digest.hex()
    )
}

/// The key of the link that makes blob `digest` (a layer or config) part of the repository.
pub fn layer_link_key(path: &RepositoryPath, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES_PREFIX}{path}/_layers/sha256/{}/link",
        digest.hex()
    )
}

/// Whether a tag name is valid under the distribution grammar (`[\w][\w.-]{0,127}`), which also
/// keeps it from naming another directory.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_distribution_layout() {
        let digest = Digest::parse(&format!("sha256:ab{}", "0".repeat(62))).expect("valid");
        assert_eq!(
            old_blob_key(&digest),
            format!(
                "docker/registry/v2/blobs/sha256/ab/ab{}/data",
                "0".repeat(62)
            )
        );
        assert!(new_blob_key(&digest).starts_with("gitlab/docker/registry/v2/blobs/sha256/ab/"));
        let path = RepositoryPath::parse("g/p/app").expect("valid");
        assert_eq!(
            tag_current_link_key(&path, "v1"),
            "docker/registry/v2/repositories/g/p/app/_manifests/tags/v1/current/link"
        );
    }

    #[test]
    fn tag_names_are_checked() {
        assert!(is_valid_tag("v1.2-rc_3"));
        assert!(!is_valid_tag(".."));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag("a/b"));
        assert!(!is_valid_tag(&"a".repeat(129)));
    }
}
