//! The storage seam: a bucket of objects addressed by `/`-separated keys.
//!
//! [`BlobStore`] is what the importer and the scheduler's inventory need from a bucket: paginated
//! listing by prefix (flat or directory-style), stat, bounded reads, streamed reads
//! ([`BlobStore::open_read`]: any size, in bounded memory), a copy that is server-side where
//! the backend allows it, and a delete of one listed version ([`BlobStore::delete`], for
//! `ferryctl gc` only). [`open`] picks the driver from `FERRY_STORAGE_URL`: [`LocalStore`]
//! for `file://`, [`GcsStore`] for `gs://`.

mod gcs;
pub mod governor;
mod local;
mod reader;
mod retry;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

use crate::ids::Digest;

pub use gcs::GcsStore;
pub use governor::{Governed, Governor};
pub use local::LocalStore;
pub use reader::{ByteStream, ObjectReader};
pub use retry::{RetryPolicy, Retrying};

/// Metadata of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The CRC32C the store keeps of its content, as the store reports it (GCS: base64 of the
    /// big-endian value); `None` where the store keeps none (a filesystem bucket) or the call
    /// did not return it. Only comparable between objects of the same store.
    pub crc32c: Option<String>,
    /// Which version of the object this is, as the store names it: it changes whenever the
    /// object is written again (GCS: its generation; a filesystem bucket: its inode,
    /// modification time and size). `None` where the call did not return one. A caller that
    /// saw the same version before may reuse what it read then.
    pub version: Option<String>,
    /// When this version of the object was written, at the latest: GCS's `timeCreated` of the
    /// generation; on a filesystem the inode's change time (ctime), which creating the name
    /// (hard link, rename) sets and nothing can set back, unlike the modification time, which a
    /// hard-linked copy shares with its old source. `None` where the call did not return one.
    /// What `ferryctl gc` measures an object's age by.
    pub created: Option<SystemTime>,
}

/// How to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Group keys at the next `/` after the prefix into [`ListPage::prefixes`], like a directory
    /// listing, instead of listing every key below the prefix.
    pub delimited: bool,
    /// Continue after the page that returned this token.
    pub page_token: Option<String>,
    /// Most entries (objects plus prefixes) in one page; 0 means the driver's default (1000).
    pub max_results: usize,
}

/// One page of a listing, in lexicographic key order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects directly matched.
    pub objects: Vec<ObjectMeta>,
    /// With [`ListOptions::delimited`]: the "sub-directories", each ending with `/`.
    pub prefixes: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The result of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The object was copied; this many bytes.
    Copied(u64),
    /// The destination already existed, so nothing was copied (objects are content-addressed).
    AlreadyPresent,
    /// Another copier published the destination while this copy ran, so this one kept nothing
    /// (it had read, and on GCS tried to write, before it found out).
    PublishedMeanwhile,
}

/// What [`BlobStore::delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The version given was removed.
    Deleted,
    /// The object is there in another version (written again since it was listed): kept.
    Changed,
    /// No object under the key (removed already, or never there).
    Absent,
}

/// A storage failure.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The object is larger than the caller allows reading into memory.
    #[error("object {key} is larger than the {limit}-byte limit")]
    TooLarge {
        /// The key read.
        key: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The copied content does not hash to the digest it is stored under.
    #[error("content of {key} hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// The source key.
        key: String,
        /// The digest the key names.
        expected: Digest,
        /// The digest of the content.
        actual: Digest,
    },
    /// The key is not a plain relative path (empty component, `..`, leading `/`, ...).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The storage URL cannot be used.
    #[error("storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A remote backend refused the request, or the request failed in transit.
    #[error("storage backend on {key}: {}{message}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
    Backend {
        /// The key (or listing prefix) being accessed.
        key: String,
        /// The HTTP status of the answer; `None` when no answer came (connection refused or
        /// reset, timeout, truncated body), which is worth retrying.
        status: Option<u16>,
        /// What the backend said.
        message: String,
    },
    /// An I/O error from the backend.
    #[error("storage I/O on {key}: {source}")]
    Io {
        /// The key being accessed.
        key: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether retrying the same call may succeed (timeouts, resets, throttling, server errors).
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            StorageError::Backend { status, .. } => {
                status.is_none_or(|status| matches!(status, 408 | 429 | 500..=599))
            }
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                TimedOut | Interrupted | ConnectionReset | ConnectionAborted | WouldBlock
            ),
            _ => false,
        }
    }
}

/// The operations of a [`BlobStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`BlobStore::list`].
    List,
    /// [`BlobStore::stat`].
    Stat,
    /// [`BlobStore::read`].
    Read,
    /// [`BlobStore::open_read`] (the open; the bytes that follow come in the same request).
    OpenRead,
    /// [`BlobStore::copy`].
    Copy,
    /// [`BlobStore::delete`].
    Delete,
}

/// A bucket of objects in the Docker distribution layout.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Lists keys that start with `prefix`, one page at a time.
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError>;

    /// The object's metadata, or `None` if it does not exist.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Reads a whole object of at most `max_bytes` bytes.
    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError>;

    /// Opens `key` for reading as a stream: its metadata now, its bytes as the caller pulls them
    /// ([`ObjectReader`]); `None` when it does not exist (a "directory" is not an object either).
    /// Memory stays bounded by a chunk (tens of KiB) whatever the object's size, and the body
    /// yields exactly `meta.size` bytes or ends with an `Err` item. Keys are validated as for
    /// [`Self::read`]. Wrappers retry (and pace) the open only, never the middle of a stream.
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError>;

    /// Copies `src` to `dst` inside the bucket, atomically: `dst` appears whole or not at all. An
    /// existing `dst` is left alone. When `expected` is given, drivers that see the bytes verify
    /// that they hash to it and refuse the copy otherwise.
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError>;

    /// Removes `key` if it is still in `version` (an [`ObjectMeta::version`] a listing or stat
    /// returned), so that only the version the caller examined can go: GCS deletes with
    /// `ifGenerationMatch`; a filesystem removes the file if its inode, modification time and
    /// size are still those of `version` (checked just before the removal, not atomically with
    /// it). Only `ferryctl gc` deletes, and only under `gitlab/`; see docs/operations.md.
    async fn delete(&self, key: &str, version: &str) -> Result<DeleteOutcome, StorageError>;

    /// Makes every copy this store has made durable: a crash of the machine can no longer undo
    /// it. Callers persist before they record a copy anywhere else (a database commit). Drivers
    /// whose copies are durable when they return (GCS) need do nothing.
    async fn persist(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Requests one call of `operation` makes of the provider, `(reads, writes)`, for the
    /// request budgets (a GCS copy reads the source's metadata before it rewrites). A delete is a
    /// write.
    fn requests(&self, operation: Operation) -> (u32, u32) {
        match operation {
            Operation::Copy | Operation::Delete => (0, 1),
            Operation::List | Operation::Stat | Operation::Read | Operation::OpenRead => (1, 0),
        }
    }

    /// The store's URL, for logs and messages.
    fn url(&self) -> String;
}

/// Opens the store that `url` names: `file:///abs/dir` (the directory that holds `docker/`),
/// or `gs://bucket[/prefix]` (see [`GcsStore`]; the client connects on first use), retrying
/// transient failures with the default [`RetryPolicy`].
pub fn open(url: &str) -> Result<Arc<dyn BlobStore>, StorageError> {
    open_governed(url, None)
}

/// Like [`open`], with every attempt drawing from `governor`'s shared budgets (a retried
/// request draws again, and a 429 cuts the budget's rate).
pub fn open_governed(
    url: &str,
    governor: Option<Governor>,
) -> Result<Arc<dyn BlobStore>, StorageError> {
    let invalid = |reason: &str| StorageError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|err| invalid(&err.to_string()))?;
    let driver: Arc<dyn BlobStore> = match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| invalid("expected file:///absolute/path"))?;
            Arc::new(LocalStore::new(path).map_err(|err| invalid(&err.to_string()))?)
        }
        "gs" => Arc::new(GcsStore::from_url(url)?),
        other => {
            return Err(invalid(&format!(
                "unsupported scheme {other:?}; expected file:// or gs://"
            )));
        }
    };
    let governed: Arc<dyn BlobStore> = match governor {
        Some(governor) => Arc::new(Governed::new(driver, governor)),
        None => driver,
    };
    Ok(Arc::new(Retrying::new(governed, RetryPolicy::default())))
}
