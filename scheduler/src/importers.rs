//! The pool of importers the scheduler dispatches to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_proto::importer::v1::importer_client::ImporterClient;
use ferry_proto::importer::v1::{
    CancelImportRequest, GetImportStatusRequest, GetImportStatusResponse, StartImportRequest,
    StartOutcome,
};

/// How an importer answered a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartResult {
    /// Accepted by the importer at this URL; runs in the background.
    Accepted {
        /// The importer that runs the step.
        importer: String,
    },
    /// Already on the new platform: created there (`native`) or imported earlier (a final
    /// import whose notification was lost).
    AlreadyImported {
        /// True when the importer recorded a completed import, false for a native repository.
        imported: bool,
    },
    /// Not in old storage.
    NotFound(String),
    /// Every importer is full or unreachable: try again later.
    AllBusy(String),
    /// Refused for another reason (a step in progress, a missing pre-import, ...).
    Refused(String),
}

/// Whether a status means the importer could not be reached (as opposed to an answer).
pub fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// Importer clients, tried round-robin.
#[derive(Debug)]
pub struct ImporterPool {
    clients: Vec<(String, ImporterClient<Channel>)>,
    next: AtomicUsize,
}

impl ImporterPool {
    /// Clients for each URL; they connect on first use.
    pub fn new(urls: &[String]) -> Result<Self, tonic::transport::Error> {
        let clients = urls
            .iter()
            .map(|url| {
                let channel = Endpoint::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(30))
                    .connect_lazy();
                Ok((url.clone(), ImporterClient::new(channel)))
            })
            .collect::<Result<_, tonic::transport::Error>>()?;
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// Starts a step on the first importer, round-robin, that has room. Importers that answer
    /// `RESOURCE_EXHAUSTED` or cannot be reached are passed over.
    pub async fn start(&self, path: &str, import_type: ImportType, fence: u64) -> StartResult {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut busy = Vec::new();
        for offset in 0..self.clients.len() {
            let (url, client) = &self.clients[(first + offset) % self.clients.len()];
            let request = StartImportRequest {
                path: path.to_owned(),
                import_type: import_type.into(),
                fencing_token: fence,
            };
            match client.clone().start_import(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    return match StartOutcome::try_from(response.outcome) {
                        Ok(StartOutcome::AlreadyImported) => StartResult::AlreadyImported {
                            imported: response.status == i32::from(MigrationStatus::ImportComplete),
                        },
                        _ => StartResult::Accepted {
                            importer: url.clone(),
                        },
                    };
                }
                Err(status) => match status.code() {
                    tonic::Code::ResourceExhausted
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded => {
                        busy.push(format!("{url}: {}", status.message()));
                    }
                    tonic::Code::NotFound => {
                        return StartResult::NotFound(status.message().to_owned());
                    }
                    _ => {
                        return StartResult::Refused(format!(
                            "{:?}: {}",
                            status.code(),
                            status.message()
                        ));
                    }
                },
            }
        }
        StartResult::AllBusy(busy.join("; "))
    }

    fn client(&self, url: &str) -> Option<ImporterClient<Channel>> {
        self.clients
            .iter()
            .find(|(u, _)| u == url)
            .map(|(_, client)| client.clone())
    }

    /// The repository's status as the importer at `url` reports it (including whether that
    /// importer runs its step), or as any reachable importer does when `url` is unknown.
    pub async fn status(
        &self,
        url: Option<&str>,
        path: &str,
    ) -> Result<GetImportStatusResponse, tonic::Status> {
        let request = || GetImportStatusRequest {
            path: path.to_owned(),
        };
        if let Some(mut client) = url.and_then(|url| self.client(url)) {
            return client
                .get_import_status(request())
                .await
                .map(tonic::Response::into_inner);
        }
        let mut last = tonic::Status::unavailable("no importers configured");
        for (_, client) in &self.clients {
            match client.clone().get_import_status(request()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if is_unreachable(&status) => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Cancels the repository's step through any reachable importer (they share the metadata
    /// database; the one running the step notices within its poll interval).
    pub async fn cancel(&self, path: &str, force: bool) -> Result<MigrationStatus, tonic::Status> {
        let mut last = tonic::Status::unavailable("no importers configured");
        for (_, client) in &self.clients {
            let request = CancelImportRequest {
                path: path.to_owned(),
                force,
            };
            match client.clone().cancel_import(request).await {
                Ok(response) => {
                    return Ok(
                        MigrationStatus::try_from(response.into_inner().status).unwrap_or_default()
                    );
                }
                Err(status) if is_unreachable(&status) => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}
