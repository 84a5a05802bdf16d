//! Retrying transient storage failures (timeouts, connection resets, throttling) with jittered
//! exponential backoff, around any driver. Every store [`super::open`] returns is wrapped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument as _;

use super::{
    BlobStore, CopyOutcome, ListOptions, ListPage, ObjectMeta, ObjectReader, StorageError,
};
use crate::ids::Digest;

/// How hard to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Attempts in all when the provider answers 429 (rate limited): throttling passes as the
    /// shared budget adapts, so it is worth waiting for (GCS advises truncated exponential
    /// backoff).
    pub max_throttled_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub initial_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_throttled_attempts: 12,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): exponential, capped, with jitter in
    /// `[50 %, 100 %]` so that many importers do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let exponential = self
            .initial_delay
            .saturating_mul(1 << retry.saturating_sub(1).min(20));
        exponential
            .min(self.max_delay)
            .mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

/// How an attempt ended, for metrics.
fn outcome<T>(result: &Result<T, StorageError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StorageError::NotFound { .. }) => "not_found",
        Err(StorageError::Backend {
            status: Some(429), ..
        }) => "throttled",
        Err(error) if error.is_transient() => "transient_error",
        Err(_) => "error",
    }
}

/// A store that retries its inner store's transient failures.
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn BlobStore>,
    policy: RetryPolicy,
    retries: AtomicU64,
}

impl Retrying {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlobStore>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            retries: AtomicU64::new(0),
        }
    }

    /// Retries made so far (for metrics).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    async fn with_retry<'a, T, Fut>(
        &'a self,
        what: &'static str,
        key: &str,
        mut operation: impl FnMut() -> Fut + Send,
    ) -> Result<T, StorageError>
    where
        Fut: Future<Output = Result<T, StorageError>> + Send + 'a,
    {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let span = tracing::info_span!(
                "storage",
                otel.name = what,
                otel.kind = "client",
                storage.key = key,
                storage.attempt = attempt,
            );
            let result = operation().instrument(span).await;
            crate::metrics::STORAGE.attempt(
                what,
                outcome(&result),
                started.elapsed().as_secs_f64(),
            );
            let limit = match &result {
                Err(StorageError::Backend {
                    status: Some(429), ..
                }) => self.policy.max_throttled_attempts,
                _ => self.policy.max_attempts,
            };
            match result {
                Err(error) if error.is_transient() && attempt < limit => {
                    let delay = self.policy.delay(attempt);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::STORAGE.retry(what);
                    tracing::warn!(what, key, attempt, delay_ms = delay.as_millis() as u64, %error, "transient storage error; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl BlobStore for Retrying {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        self.with_retry("list", prefix, || self.inner.list(prefix, options))
            .await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.with_retry("stat", key, || self.inner.stat(key)).await
    }

    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        self.with_retry("read", key, || self.inner.read(key, max_bytes))
            .await
    }

    /// Retries the open (its transient failures); an error in the middle of the stream is the
    /// caller's, who has handed part of the bytes on already.
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        self.with_retry("open_read", key, || self.inner.open_read(key))
            .await
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        // A copy is idempotent: it publishes whole or not at all, and skips an existing target.
        self.with_retry("copy", src, || self.inner.copy(src, dst, expected))
            .await
    }

    async fn delete(&self, key: &str, version: &str) -> Result<super::DeleteOutcome, StorageError> {
        // Safe to repeat: a retry after a removal whose answer was lost finds nothing (`Absent`).
        self.with_retry("delete", key, || self.inner.delete(key, version))
            .await
    }

    async fn persist(&self) -> Result<(), StorageError> {
        self.with_retry("persist", "", || self.inner.persist())
            .await
    }

    fn requests(&self, operation: super::Operation) -> (u32, u32) {
        self.inner.requests(operation)
    }

    fn url(&self) -> String {
        self.inner.url()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Fails the first `failures` calls of `read` or `open_read`, then answers (an opened
    /// stream fails after its first byte).
    #[derive(Debug)]
    struct Flaky {
        failures: Mutex<u32>,
        calls: AtomicU64,
        transient: bool,
    }

    #[async_trait]
    impl BlobStore for Flaky {
        async fn list(&self, _: &str, _: &ListOptions) -> Result<ListPage, StorageError> {
            Ok(ListPage::default())
        }
        async fn stat(&self, _: &str) -> Result<Option<ObjectMeta>, StorageError> {
            Ok(None)
        }
        async fn read(&self, key: &str, _: u64) -> Result<Bytes, StorageError> {
            self.fail(key)?;
            Ok(Bytes::from_static(b"ok"))
        }
        async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
            self.fail(key)?;
            let body = futures::stream::iter([Ok(Bytes::from_static(b"o")), Err(reset(key))]);
            let meta = ObjectMeta {
                key: key.to_owned(),
                size: 2,
                crc32c: None,
                version: None,
                created: None,
            };
            Ok(Some(ObjectReader {
                meta,
                body: Box::pin(body),
            }))
        }
        async fn copy(
            &self,
            _: &str,
            _: &str,
            _: Option<&Digest>,
        ) -> Result<CopyOutcome, StorageError> {
            Ok(CopyOutcome::AlreadyPresent)
        }
        async fn delete(
            &self,
            _: &str,
            _: &str,
        ) -> Result<crate::storage::DeleteOutcome, StorageError> {
            Ok(crate::storage::DeleteOutcome::Absent)
        }
        fn url(&self) -> String {
            "flaky://".into()
        }
    }

    fn reset(key: &str) -> StorageError {
        let source = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        StorageError::Io {
            key: key.to_owned(),
            source,
        }
    }

    impl Flaky {
        fn fail(&self, key: &str) -> Result<(), StorageError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut failures = self.failures.lock().unwrap();
            if *failures == 0 {
                return Ok(());
            }
            *failures -= 1;
            if self.transient {
                Err(reset(key))
            } else {
                Err(StorageError::NotFound {
                    key: key.to_owned(),
                })
            }
        }
    }

    fn store(failures: u32, transient: bool) -> (Arc<Flaky>, Retrying) {
        let flaky = Arc::new(Flaky {
            failures: Mutex::new(failures),
            calls: AtomicU64::new(0),
            transient,
        });
        let policy = RetryPolicy {
            max_attempts: 4,
            max_throttled_attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        (Arc::clone(&flaky), Retrying::new(flaky, policy))
    }

    #[test]
    fn attempts_are_classified_for_metrics() {
        let backend = |status| {
            Err::<(), _>(StorageError::Backend {
                key: "k".into(),
                status,
                message: String::new(),
            })
        };
        assert_eq!(outcome(&Ok(())), "ok");
        assert_eq!(outcome(&backend(Some(429))), "throttled");
        assert_eq!(outcome(&backend(Some(503))), "transient_error");
        assert_eq!(outcome(&backend(Some(403))), "error");
        let missing = Err::<(), _>(StorageError::NotFound { key: "k".into() });
        assert_eq!(outcome(&missing), "not_found");
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let (flaky, retrying) = store(3, true);
        assert_eq!(retrying.read("k", 10).await.unwrap(), &b"ok"[..]);
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 4);
        assert_eq!(retrying.retries(), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_limit() {
        let (flaky, retrying) = store(10, true);
        assert!(retrying.read("k", 10).await.unwrap_err().is_transient());
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let (flaky, retrying) = store(1, false);
        assert!(matches!(
            retrying.read("k", 10).await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn opens_are_retried_but_streams_are_not() {
        use futures::StreamExt as _;
        let (flaky, retrying) = store(2, true);
        let reader = retrying.open_read("k").await.unwrap().unwrap();
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 3);
        let items: Vec<_> = reader.body.collect().await;
        assert!(matches!(&items[..], [Ok(_), Err(error)] if error.is_transient()));
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 3, "no new attempt");
        assert_eq!(retrying.retries(), 2);
        let (flaky, retrying) = store(1, false);
        assert!(matches!(
            retrying.open_read("k").await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn delays_grow_and_are_capped_with_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            max_throttled_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = policy.delay(9);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
