//! Telling the scheduler that a step ended, retried until it acknowledges.

use std::time::{Duration, Instant};

use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};

use ferry_proto::scheduler::v1::NotifyImportResultRequest;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;

/// Sends `NotifyImportResult` to the scheduler.
#[derive(Debug, Clone)]
pub struct Notifier {
    clients: Vec<SchedulerClient<Connection>>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    give_up_after: Duration,
}

impl Notifier {
    /// A notifier for the scheduler replicas at `urls` (comma-separated); it connects on first
    /// use and moves to the next replica when one fails. After `give_up_after` of
    /// failed attempts it stops (the importer's recorded status stays the source of truth for reconciliation).
    pub fn new(urls: &str, give_up_after: Duration) -> Result<Self, tonic::transport::Error> {
        Self::with_connector(urls, give_up_after, &Connector::default())
    }

    /// Like [`Self::new`], calling the scheduler through `connector` (TLS, token).
    pub fn with_connector(
        urls: &str,
        give_up_after: Duration,
        connector: &Connector,
    ) -> Result<Self, tonic::transport::Error> {
        let clients = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                let channel = connector.lazy(
                    url,
                    ChannelOptions {
                        timeout: Some(Duration::from_secs(30)),
                        ..ChannelOptions::default()
                    },
                )?;
                Ok(SchedulerClient::new(channel))
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        Ok(Self {
            clients,
            next: Default::default(),
            give_up_after,
        })
    }

    /// Reports a step's end (`request`), retrying with jittered exponential backoff until
    /// acknowledged.
    pub async fn notify(&self, request: NotifyImportResultRequest) {
        let path = request.path.as_str();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            // Any scheduler replica applies a notification; a failed one is passed over.
            let index =
                self.next.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len().max(1);
            let Some(mut client) = self.clients.get(index).cloned() else {
                return;
            };
            match client.notify_import_result(request.clone()).await {
                Ok(_) => return,
                Err(status) if is_permanent(status.code()) => {
                    tracing::error!(repository = path, %status, "scheduler refused the step's result; not retrying");
                    return;
                }
                Err(status) if started.elapsed() >= self.give_up_after => {
                    tracing::error!(repository = path, %status, "scheduler never acknowledged the step's result; giving up");
                    return;
                }
                Err(status) => {
                    tracing::warn!(repository = path, %status, retry_in_ms = backoff.as_millis() as u64, "notifying the scheduler failed");
                    // Try the next replica on the next attempt.
                    self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let jitter = Duration::from_millis(rand_jitter(backoff.as_millis() as u64 / 2));
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Refusals that a retry cannot change.
fn is_permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::PermissionDenied
    )
}

fn rand_jitter(max_ms: u64) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    if max_ms == 0 {
        return 0;
    }
    RandomState::new().hash_one(Instant::now()) % max_ms
}
