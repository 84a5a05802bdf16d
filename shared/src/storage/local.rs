//! The local-filesystem driver: the embedded default, a directory that holds `docker/`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::Digest as _;

use super::{BlobStore, CopyOutcome, ListOptions, ListPage, ObjectMeta, StorageError};
use crate::ids::Digest;

const DEFAULT_PAGE: usize = 1000;
const COPY_BUFFER: usize = 1 << 20;

/// A bucket stored as a directory tree: key `a/b/c` is the file `<root>/a/b/c`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
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
        Ok(Self { root })
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
        let size = if is_dir { 0 } else { entry.metadata()?.len() };
        let sort_key = if is_dir {
            format!("{key_prefix}{name}/")
        } else {
            format!("{key_prefix}{name}")
        };
        entries.push(Entry {
            sort_key,
            is_dir,
            size,
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

fn copy_blocking(
    src_path: &Path,
    dst_path: &Path,
    src: &str,
    expected: Option<&Digest>,
) -> Result<CopyOutcome, StorageError> {
    if dst_path.exists() {
        return Ok(CopyOutcome::AlreadyPresent);
    }
    let mut input = fs::File::open(src_path).map_err(|err| io_error(src, err))?;
    let parent = dst_path
        .parent()
        .ok_or_else(|| StorageError::InvalidKey(src.to_owned()))?;
    fs::create_dir_all(parent).map_err(|err| io_error(src, err))?;
    let tmp_path = parent.join(format!(".ferry-tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut output = fs::File::create(&tmp_path).map_err(|err| io_error(src, err))?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; COPY_BUFFER];
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
        output.sync_all().map_err(|err| io_error(src, err))?;
        // A hard link publishes the file atomically and, unlike rename, never replaces a
        // destination another copier published meanwhile.
        match fs::hard_link(&tmp_path, dst_path) {
            Ok(()) => Ok(CopyOutcome::Copied(copied)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Ok(CopyOutcome::AlreadyPresent)
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

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_error(key, err)),
        }
    }

    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let path = self.path_of(key)?;
        let owned_key = key.to_owned();
        Self::blocking(key, move || {
            let file = fs::File::open(&path).map_err(|err| io_error(&owned_key, err))?;
            let size = file
                .metadata()
                .map_err(|err| io_error(&owned_key, err))?
                .len();
            if size > max_bytes {
                return Err(StorageError::TooLarge {
                    key: owned_key,
                    limit: max_bytes,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            file.take(max_bytes + 1)
                .read_to_end(&mut data)
                .map_err(|err| io_error(&owned_key, err))?;
            if data.len() as u64 > max_bytes {
                return Err(StorageError::TooLarge {
                    key: owned_key,
                    limit: max_bytes,
                });
            }
            Ok(Bytes::from(data))
        })
        .await
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
        Self::blocking(src, move || {
            copy_blocking(&src_path, &dst_path, &src_key, expected.as_ref())
        })
        .await
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests;
