//! Buckets to run tests on, seeded and inspected behind the driver's back: a local directory,
//! or a fresh bucket on fake-gcs-server (started by `make test` / `scripts/setup.sh`; address
//! `FERRY_GCS_EMULATOR`, default `127.0.0.1:4443`) or on any GCS JSON API endpoint, such as the
//! in-process [`crate::gcs_emulator::GcsEmulator`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry_shared::storage::{BlobStore, GcsStore, LocalStore};
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};

/// A bucket to test a driver on, seeded and inspected behind the driver's back.
#[async_trait]
pub trait Bucket: Send + Sync {
    /// Stores `data` under the raw key `key` (no store prefix applies).
    async fn put(&self, key: &str, data: &[u8]);
    /// The object under the raw key `key`, if any.
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Removes the object under the raw key `key` (it must exist).
    async fn remove(&self, key: &str);
    /// The driver's store for `prefix` of the bucket (`""`: all of it).
    fn store(&self, prefix: &str) -> Box<dyn BlobStore>;
}

/// A bucket in a temporary directory.
pub struct LocalBucket {
    dir: tempfile::TempDir,
}

impl LocalBucket {
    /// An empty bucket.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }
}

#[async_trait]
impl Bucket for LocalBucket {
    async fn put(&self, key: &str, data: &[u8]) {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }

    async fn remove(&self, key: &str) {
        std::fs::remove_file(self.path(key)).expect("remove");
    }

    fn store(&self, prefix: &str) -> Box<dyn BlobStore> {
        let root = self.path(prefix);
        std::fs::create_dir_all(&root).expect("mkdir");
        Box::new(LocalStore::new(root).expect("store"))
    }
}

/// A fresh bucket on fake-gcs-server, or on another GCS JSON API endpoint.
pub struct GcsBucket {
    endpoint: String,
    name: String,
    client: Client,
}

impl GcsBucket {
    /// A new, empty bucket on fake-gcs-server (`FERRY_GCS_EMULATOR`, default `127.0.0.1:4443`).
    pub async fn new() -> Self {
        let host = std::env::var("FERRY_GCS_EMULATOR").unwrap_or_else(|_| "127.0.0.1:4443".into());
        let endpoint = format!("http://{}", host.trim_start_matches("http://"));
        Self::create(endpoint)
            .await
            .unwrap_or_else(|(endpoint, error)| {
                panic!(
                    "fake-gcs-server does not answer at {endpoint} ({error}): run `make test` \
                 (or `bash scripts/setup.sh`) to start it, or set FERRY_GCS_EMULATOR"
                )
            })
    }

    /// A new, empty bucket on the GCS JSON API at `endpoint` (`http://host:port`), e.g. a
    /// [`crate::gcs_emulator::GcsEmulator`]'s.
    pub async fn at(endpoint: &str) -> Self {
        let endpoint = format!("http://{}", endpoint.trim_start_matches("http://"));
        Self::create(endpoint)
            .await
            .unwrap_or_else(|(endpoint, error)| {
                panic!("no GCS JSON API answers at {endpoint}: {error}")
            })
    }

    async fn create(endpoint: String) -> Result<Self, (String, String)> {
        static BUCKETS: AtomicUsize = AtomicUsize::new(0);
        // The GCS driver installs this on first use; this client is built before the driver's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "ferry-conformance-{}-{nanos}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let config = ClientConfig {
            storage_endpoint: endpoint.clone(),
            ..ClientConfig::default()
        };
        let client = Client::new(config.anonymous());
        let request = InsertBucketRequest {
            name: name.clone(),
            param: InsertBucketParam {
                project: "ferry-tests".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        if let Err(error) = client.insert_bucket(&request).await {
            return Err((endpoint, error.to_string()));
        }
        Ok(Self {
            endpoint,
            name,
            client,
        })
    }
}

#[async_trait]
impl Bucket for GcsBucket {
    async fn put(&self, key: &str, data: &[u8]) {
        let request = UploadObjectRequest {
            bucket: self.name.clone(),
            ..Default::default()
        };
        let media = UploadType::Simple(Media::new(key.to_owned()));
        self.client
            .upload_object(&request, data.to_vec(), &media)
            .await
            .expect("upload");
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let request = GetObjectRequest {
            bucket: self.name.clone(),
            object: key.to_owned(),
            ..Default::default()
        };
        (self.client)
            .download_object(&request, &Range::default())
            .await
            .ok()
    }

    async fn remove(&self, key: &str) {
        let request = DeleteObjectRequest {
            bucket: self.name.clone(),
            object: key.to_owned(),
            ..Default::default()
        };
        self.client.delete_object(&request).await.expect("delete");
    }

    fn store(&self, prefix: &str) -> Box<dyn BlobStore> {
        Box::new(GcsStore::with_endpoint(&self.name, prefix, &self.endpoint).expect("store"))
    }
}

impl GcsBucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint's address as `STORAGE_EMULATOR_HOST` takes it (`http://host:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Uploads every file of [`files_under`] `dir`, under its key; returns how many.
    pub async fn upload_dir(&self, dir: &Path) -> usize {
        let files = files_under(dir);
        for (key, path) in &files {
            self.put(key, &std::fs::read(path).expect("read")).await;
        }
        files.len()
    }
}

impl Default for LocalBucket {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBucket {
    /// The bucket's root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// An existing directory seen as a bucket (not removed afterwards).
pub struct DirBucket(pub PathBuf);

#[async_trait]
impl Bucket for DirBucket {
    async fn put(&self, key: &str, data: &[u8]) {
        let path = self.0.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.0.join(key)).ok()
    }

    async fn remove(&self, key: &str) {
        std::fs::remove_file(self.0.join(key)).expect("remove");
    }

    fn store(&self, prefix: &str) -> Box<dyn BlobStore> {
        Box::new(LocalStore::new(self.0.join(prefix)).expect("store"))
    }
}

/// Every file under `dir`, each with its key: its path relative to `dir` with `/` separators.
/// Files whose key starts with `.` (the sample's own description files) are left out.
///
/// # Panics
/// When `dir` cannot be read.
pub fn files_under(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut pending = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .unwrap_or_else(|e| panic!("read {}: {e}", current.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(dir).expect("under dir");
            let key = (relative.iter())
                .map(|part| part.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if !key.starts_with('.') {
                files.push((key, path));
            }
        }
    }
    files
}
