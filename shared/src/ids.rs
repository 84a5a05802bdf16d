//! Validated identifiers: repository paths and content digests.
//!
//! Both come from untrusted storage (link files, manifest JSON, directory names), so they are
//! parsed once at the edge and carried as types that cannot hold a hostile value such as `..`.

use std::fmt;

use thiserror::Error;

/// A value that is not a valid repository path or digest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The repository path breaks the distribution name grammar.
    #[error("invalid repository path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected input (truncated to 300 bytes).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
}

/// Longest repository path the registry accepts.
pub const MAX_PATH_LEN: usize = 255;

/// A repository path such as `group/project/image`, valid under the distribution name grammar:
/// lowercase alphanumeric components separated by `.`, `_`, `__` or dashes, joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryPath(String);

impl RepositoryPath {
    /// Parses and validates a repository path.
    pub fn parse(path: &str) -> Result<Self, IdError> {
        let invalid = |reason| IdError::InvalidPath {
            path: path.chars().take(300).collect(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("empty"));
        }
        if path.len() > MAX_PATH_LEN {
            return Err(invalid("longer than 255 bytes"));
        }
        for component in path.split('/') {
            if !is_valid_component(component) {
                return Err(invalid(
                    "each component must be lowercase alphanumerics joined by '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment (the repository's name within its parent).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The project a repository belongs to: its first `segments` path segments, or the whole path
    /// when it is shorter.
    pub fn project_path(&self, segments: usize) -> &str {
        match self.0.match_indices('/').nth(segments.saturating_sub(1)) {
            Some((index, _)) if segments > 0 => &self.0[..index],
            _ => &self.0,
        }
    }
}

impl fmt::Display for RepositoryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let b = bytes[index];
        if alnum(b) {
            index += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = index;
        while index < bytes.len() && !alnum(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|c| c == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// A content digest in the `sha256:<hex>` form, the only algorithm the old layout uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; surrounding whitespace (as in link files) is ignored.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let trimmed = value.trim();
        let valid = trimmed.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if valid {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(IdError::InvalidDigest(trimmed.chars().take(100).collect()))
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(data))
        ))
    }

    /// The digest built from a finished SHA-256 hash.
    pub fn from_sha256(hash: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(hash)))
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The hash's 32 bytes, a third of the digest's size in a set; `None` for a digest built
    /// from a hash of another length ([`Digest::from_sha256`] takes any).
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(self.hex(), &mut bytes).ok()?;
        Some(bytes)
    }
}

/// The digest of bytes that arrive in pieces (a streamed blob).
#[derive(Debug, Clone, Default)]
pub struct DigestHasher(sha2::Sha256);

impl DigestHasher {
    /// Adds the next piece.
    pub fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.0, data);
    }

    /// The digest of every piece added.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(&sha2::Digest::finalize(self.0))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_paths() {
        for path in [
            "a",
            "group/project/app",
            "a/b/c/d/image",
            "my-group/x.y/z__w",
            "a--b/c_d",
        ] {
            assert!(RepositoryPath::parse(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn rejects_hostile_or_malformed_paths() {
        for path in [
            "", "..", "a/../b", "/a", "a/", "a//b", "A/b", "a/b c", "a/.b", "a/b.", "a_-b",
            "a/./b", "a\\b", "a/%2e%2e",
        ] {
            assert!(
                RepositoryPath::parse(path).is_err(),
                "{path:?} should be rejected"
            );
        }
        assert!(RepositoryPath::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn project_is_the_leading_segments() {
        let path = RepositoryPath::parse("group/project/app/sub").expect("valid");
        assert_eq!(path.project_path(2), "group/project");
        assert_eq!(path.project_path(1), "group");
        assert_eq!(path.project_path(9), "group/project/app/sub");
        assert_eq!(path.name(), "sub");
    }

    #[test]
    fn a_digest_hashed_in_pieces_equals_the_digest_of_the_whole() {
        let mut hasher = DigestHasher::default();
        hasher.update(b"hello, ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::of(b"hello, world"));
    }

    #[test]
    fn a_digest_gives_its_hash_bytes_only_when_it_has_32() {
        let digest = Digest::of(b"layer");
        let bytes = digest.sha256_bytes().expect("32 bytes");
        assert_eq!(Digest::from_sha256(&bytes), digest);
        assert_eq!(Digest::from_sha256(&[1, 2, 3]).sha256_bytes(), None);
    }

    #[test]
    fn digests_parse_strictly() {
        let hex = "a".repeat(64);
        let digest = Digest::parse(&format!(" sha256:{hex}\n")).expect("valid");
        assert_eq!(digest.hex(), hex);
        for bad in [
            "",
            "sha256:",
            "sha512:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/..", "a".repeat(61)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
