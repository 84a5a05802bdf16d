//! The local-filesystem driver: the embedded default, a directory that holds `docker/`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::Digest as _;

use super::{
    BlobStore, CopyOutcome, DeleteOutcome, ListOptions, ListPage, ObjectMeta, ObjectReader,
    StorageError,
};
use crate::ids::Digest;

const DEFAULT_PAGE: usize = 1000;
const COPY_BUFFER: usize = 1 << 20;
/// Files up to this size are read on the calling task.
const INLINE_READ: u64 = 256 << 10;
/// The most bytes a chunk of [`BlobStore::open_read`] holds.
const STREAM_CHUNK: usize = 64 << 10;

/// Reads the rest of `file` (expected `size` bytes), refusing more than `max_bytes`.
fn read_to_end(
    file: fs::File,
    size: u64,
    key: &str,
    max_bytes: u64,
) -> Result<Bytes, StorageError> {
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|err| io_error(key, err))?;
    if data.len() as u64 > max_bytes {
        return Err(StorageError::TooLarge {
            key: key.to_owned(),
            limit: max_bytes,
        });
    }
    Ok(Bytes::from(data))
}

/// A bucket stored as a directory tree: key `a/b/c` is the file `<root>/a/b/c`.
///
/// A copy hard-links the destination to the source when it can: registry blobs are
/// content-addressed and never rewritten in place, so the new layout can share their bytes, and
/// no byte moves. The source's digest is still verified (by reading it), and a source that is not
/// a regular file, or a destination on another filesystem, gets a byte copy instead (written to a
/// temporary file, hashed, then published). Copies reach the disk at [`BlobStore::persist`]: one
/// `syncfs` for every copy made since the last one, instead of an fsync each.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    link: bool,
    durability: std::sync::Arc<Durability>,
}

/// Copies made, and how many of them the last `syncfs` covered.
#[derive(Debug, Default)]
struct Durability {
    copies: std::sync::atomic::AtomicU64,
    synced: tokio::sync::Mutex<u64>,
}

impl LocalStore {
    /// A store rooted at `root`, which must be an existing directory.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            root,
            link: true,
            durability: Default::default(),
        })
    }

    /// The same store, copying bytes always (never hard-linking).
    pub fn with_byte_copies(self) -> Self {
        Self {
            link: false,
            ..self
        }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let relative = Path::new(key);
        let plain = !key.is_empty()
            && !key.contains("//")
            && !key.contains('\\')
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(relative))
    }

    async fn blocking<T: Send + 'static>(
        key: &str,
        work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| StorageError::Io {
                key: key.to_owned(),
                source: io::Error::other(err),
            })?
    }
}

fn io_error(key: &str, source: io::Error) -> StorageError {
    if source.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound {
            key: key.to_owned(),
        }
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source,
        }
    }
}

/// One directory entry, named as its key would sort: directories carry a trailing `/`.
struct Entry {
    sort_key: String,
    is_dir: bool,
    size: u64,
    version: Option<String>,
    created: Option<std::time::SystemTime>,
}

/// A file's version ([`ObjectMeta::version`]): its inode, modification time and size, which
/// change when the file is replaced or rewritten in place.
fn version_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}.{}.{}.{}",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    )
}

/// When the file's name was created, at the latest ([`ObjectMeta::created`]): its inode's change
/// time, which a hard link or a rename sets. Not its modification time: a hard-linked copy
/// shares that with its source, written maybe years before the copy.
fn created_of(meta: &fs::Metadata) -> Option<std::time::SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let seconds = u64::try_from(meta.ctime()).ok()?;
    let nanos = u64::try_from(meta.ctime_nsec()).ok()?;
    Some(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(seconds)
            + std::time::Duration::from_nanos(nanos),
    )
}

fn read_dir_sorted(dir: &Path, key_prefix: &str) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(entries),
        Err(err) => return Err(err),
    };
    for entry in iter {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // Not a valid key; GCS cannot hold such names either.
        };
        if name.starts_with(".ferry-tmp-") {
            continue;
        }
        let file_type = entry.file_type()?;
        let is_dir = file_type.is_dir();
        let (size, version, created) = if is_dir {
            (0, None, None)
        } else {
            let meta = entry.metadata()?;
            (meta.len(), Some(version_of(&meta)), created_of(&meta))
        };
        let sort_key = if is_dir {
            format!("{key_prefix}{name}/")
        } else {
            format!("{key_prefix}{name}")
        };
        entries.push(Entry {
            sort_key,
            is_dir,
            size,
            version,
            created,
        });
    }
    entries.sort_unstable_by(|a, b| a.sort_key.cmp(&b.sort_key));
    Ok(entries)
}

/// Depth-first walk in key order that collects up to `limit` objects after `after`.
fn walk(
    dir: &Path,
    key_prefix: &str,
    name_filter: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<ObjectMeta>,
) -> io::Result<bool> {
    for entry in read_dir_sorted(dir, key_prefix)? {
        if !entry.sort_key[key_prefix.len()..].starts_with(name_filter) {
            continue;
        }
        if let Some(after) = after {
            // Skip whole subtrees that sort before the token.
            let subtree_before = entry.is_dir
                && entry.sort_key.as_str() < after
                && !after.starts_with(&entry.sort_key);
            if subtree_before || (!entry.is_dir && entry.sort_key.as_str() <= after) {
                continue;
            }
        }
        if entry.is_dir {
            let name = &entry.sort_key[key_prefix.len()..entry.sort_key.len() - 1];
            if walk(&dir.join(name), &entry.sort_key, "", after, limit, out)? {
                return Ok(true);
            }
        } else {
            if out.len() == limit {
                return Ok(true);
            }
            out.push(ObjectMeta {
                key: entry.sort_key,
                size: entry.size,
                crc32c: None,
                version: entry.version,
                created: entry.created,
            });
        }
    }
    Ok(false)
}

impl LocalStore {
    fn list_blocking(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        let limit = if options.max_results == 0 {
            DEFAULT_PAGE
        } else {
            options.max_results
        };
        let (dir_key, name_filter) = match prefix.rfind('/') {
            Some(index) => (&prefix[..=index], &prefix[index + 1..]),
            None => ("", prefix),
        };
        let dir = if dir_key.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_key.trim_end_matches('/'))?
        };
        let after = options.page_token.as_deref();
        let mut page = ListPage::default();
        if options.delimited {
            let entries = read_dir_sorted(&dir, dir_key).map_err(|err| io_error(prefix, err))?;
            let mut taken = 0;
            for entry in entries {
                if !entry.sort_key[dir_key.len()..].starts_with(name_filter)
                    || after.is_some_and(|after| entry.sort_key.as_str() <= after)
                {
                    continue;
                }
                if taken == limit {
                    page.next_page_token = last_key(&page);
                    break;
                }
                taken += 1;
                if entry.is_dir {
                    page.prefixes.push(entry.sort_key);
                } else {
                    page.objects.push(ObjectMeta {
                        key: entry.sort_key,
                        size: entry.size,
                        crc32c: None,
                        version: entry.version,
                        created: entry.created,
                    });
                }
            }
        } else {
            let more = walk(&dir, dir_key, name_filter, after, limit, &mut page.objects)
                .map_err(|err| io_error(prefix, err))?;
            if more {
                page.next_page_token = page.objects.last().map(|o| o.key.clone());
            }
        }
        Ok(page)
    }
}

fn last_key(page: &ListPage) -> Option<String> {
    let object = page.objects.last().map(|o| o.key.as_str());
    let prefix = page.prefixes.last().map(String::as_str);
    object.max(prefix).map(str::to_owned)
}

/// Reads `file` to its end, hashing it.
fn hash_file(file: &mut fs::File, size: u64, src: &str) -> Result<Digest, StorageError> {
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; buffer_size(size)];
    loop {
        let read = file.read(&mut buffer).map_err(|err| io_error(src, err))?;
        if read == 0 {
            return Ok(Digest::from_sha256(&hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// A buffer no larger than the file (most registry blobs are small).
fn buffer_size(size: u64) -> usize {
    usize::try_from(size)
        .unwrap_or(COPY_BUFFER)
        .clamp(4096, COPY_BUFFER)
}

/// Publishes `src_path` at `dst_path` as a hard link, after verifying its digest. `None` when
/// linking is not possible here (not a regular file, another filesystem): copy the bytes.
fn link_blocking(
    src_path: &Path,
    dst_path: &Path,
    parent: &Path,
    src: &str,
    expected: Option<&Digest>,
) -> Result<Option<CopyOutcome>, StorageError> {
    let meta = fs::symlink_metadata(src_path).map_err(|err| io_error(src, err))?;
    if !meta.is_file() {
        return Ok(None);
    }
    if let Some(expected) = expected {
        let mut input = fs::File::open(src_path).map_err(|err| io_error(src, err))?;
        let actual = hash_file(&mut input, meta.len(), src)?;
        if &actual != expected {
            return Err(StorageError::DigestMismatch {
                key: src.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    fs::create_dir_all(parent).map_err(|err| io_error(src, err))?;
    match fs::hard_link(src_path, dst_path) {
        Ok(()) => Ok(Some(CopyOutcome::Copied(meta.len()))),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            Ok(Some(CopyOutcome::PublishedMeanwhile))
        }
        // EXDEV (another filesystem), EPERM (links refused), EMLINK (too many links).
        Err(err) if matches!(err.raw_os_error(), Some(18 | 1 | 31)) => Ok(None),
        Err(err) => Err(io_error(src, err)),
    }
}

fn copy_blocking(
    src_path: &Path,
    dst_path: &Path,
    src: &str,
    expected: Option<&Digest>,
    link: bool,
) -> Result<CopyOutcome, StorageError> {
    if dst_path.exists() {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    let parent = dst_path
        .parent()
        .ok_or_else(|| StorageError::InvalidKey(src.to_owned()))?;
    if link && let Some(outcome) = link_blocking(src_path, dst_path, parent, src, expected)? {
        return Ok(outcome);
    }
    let mut input = fs::File::open(src_path).map_err(|err| io_error(src, err))?;
    let size = input.metadata().map_or(COPY_BUFFER as u64, |m| m.len());
    fs::create_dir_all(parent).map_err(|err| io_error(src, err))?;
    let tmp_path = parent.join(format!(".ferry-tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut output = fs::File::create(&tmp_path).map_err(|err| io_error(src, err))?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; buffer_size(size)];
        let mut copied = 0u64;
        loop {
            let read = input.read(&mut buffer).map_err(|err| io_error(src, err))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            output
                .write_all(&buffer[..read])
                .map_err(|err| io_error(src, err))?;
            copied += read as u64;
        }
        if let Some(expected) = expected {
            let actual = Digest::from_sha256(&hasher.finalize());
            if &actual != expected {
                return Err(StorageError::DigestMismatch {
                    key: src.to_owned(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        // A hard link publishes the file atomically and, unlike rename, never replaces a
        // destination another copier published meanwhile.
        match fs::hard_link(&tmp_path, dst_path) {
            Ok(()) => Ok(CopyOutcome::Copied(copied)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Ok(CopyOutcome::PublishedMeanwhile)
            }
            Err(_) => match fs::rename(&tmp_path, dst_path) {
                Ok(()) => Ok(CopyOutcome::Copied(copied)),
                Err(err) => Err(io_error(src, err)),
            },
        }
    })();
    let _ = fs::remove_file(&tmp_path);
    result
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        let store = self.clone();
        let owned_prefix = prefix.to_owned();
        let options = options.clone();
        Self::blocking(prefix, move || store.list_blocking(&owned_prefix, &options)).await
    }

    // Stats and small reads run on the calling task: from the page cache they take microseconds,
    // less than handing them to the blocking pool and waking the task again.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key)?;
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: meta.len(),
                crc32c: None,
                version: Some(version_of(&meta)),
                created: created_of(&meta),
            })),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_error(key, err)),
        }
    }

    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let path = self.path_of(key)?;
        let file = fs::File::open(&path).map_err(|err| io_error(key, err))?;
        let size = file.metadata().map_err(|err| io_error(key, err))?.len();
        if size > max_bytes {
            return Err(StorageError::TooLarge {
                key: key.to_owned(),
                limit: max_bytes,
            });
        }
        if size <= INLINE_READ {
            return read_to_end(file, size, key, max_bytes);
        }
        let owned_key = key.to_owned();
        Self::blocking(key, move || read_to_end(file, size, &owned_key, max_bytes)).await
    }

    /// Streams the file in chunks of at most 64 KiB, read on the blocking pool. The size is the
    /// open file's, and the stream stops there: bytes appended meanwhile are not read, and a file
    /// truncated meanwhile ends the stream with an error. Anything but a regular file (a
    /// directory, a FIFO, a socket) is not an object: `None`, and a FIFO is never waited on.
    /// Symbolic links are followed, as by [`BlobStore::read`].
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        use futures::StreamExt as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        use tokio::io::AsyncReadExt as _;

        let path = self.path_of(key)?;
        let absent = |err: &io::Error| {
            matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            )
        };
        // Look before opening: opening a FIFO or a socket could wait, or fail obscurely.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(None),
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(io_error(key, err)),
        }
        // Non-blocking, in case the file was replaced by a FIFO since the look: the open does
        // not wait for a writer (reads of a regular file ignore the flag).
        let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nonblock)
            .open(&path);
        let file = match opened {
            Ok(file) => file,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(io_error(key, err)),
        };
        let meta = file.metadata().map_err(|err| io_error(key, err))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let size = meta.len();
        let reader = tokio::fs::File::from_std(file).take(size);
        let owned_key = key.to_owned();
        let body =
            tokio_util::io::ReaderStream::with_capacity(reader, STREAM_CHUNK).map(move |chunk| {
                chunk.map_err(|source| StorageError::Io {
                    key: owned_key.clone(),
                    source,
                })
            });
        let meta = ObjectMeta {
            key: key.to_owned(),
            size,
            crc32c: None,
            version: Some(version_of(&meta)),
            created: created_of(&meta),
        };
        Ok(Some(ObjectReader::sized(meta, body)))
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        let src_path = self.path_of(src)?;
        let dst_path = self.path_of(dst)?;
        let src_key = src.to_owned();
        let expected = expected.cloned();
        let link = self.link;
        let outcome = Self::blocking(src, move || {
            copy_blocking(&src_path, &dst_path, &src_key, expected.as_ref(), link)
        })
        .await?;
        // An existing destination counts too: another step may have written it moments ago,
        // not yet persisted.
        self.durability
            .copies
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(outcome)
    }

    /// Removes the file if its version ([`version_of`]) is still `version`. The check and the
    /// removal are two system calls: a file replaced between them (a copy is never written over
    /// an existing destination, so only by hand) would be removed. The empty directories left
    /// behind stay: removing one could race with a copy creating its file there.
    async fn delete(&self, key: &str, version: &str) -> Result<DeleteOutcome, StorageError> {
        let path = self.path_of(key)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(DeleteOutcome::Absent),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(DeleteOutcome::Absent),
            Err(err) => return Err(io_error(key, err)),
        };
        if version_of(&meta) != version {
            return Ok(DeleteOutcome::Changed);
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(DeleteOutcome::Deleted),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(DeleteOutcome::Absent),
            Err(err) => Err(io_error(key, err)),
        }
    }

    async fn persist(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let wanted = self.durability.copies.load(Ordering::SeqCst);
        // One flush at a time; a caller that waited finds its copies covered already.
        let mut synced = self.durability.synced.lock().await;
        if *synced >= wanted {
            return Ok(());
        }
        let now = self.durability.copies.load(Ordering::SeqCst);
        let root = self.root.clone();
        Self::blocking("", move || {
            let dir = fs::File::open(&root).map_err(|err| io_error("", err))?;
            rustix::fs::syncfs(&dir).map_err(|err| io_error("", err.into()))
        })
        .await?;
        *synced = now;
        Ok(())
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests;
