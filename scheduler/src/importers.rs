//! The pool of importers the scheduler dispatches to: fixed endpoints and DNS names (a
//! Kubernetes headless Service) re-resolved periodically, each with its last known load.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_proto::importer::v1::importer_client::ImporterClient;
use ferry_proto::importer::v1::{
    CancelImportRequest, Capacity, GetCapacityRequest, GetImportStatusRequest,
    GetImportStatusResponse, ListRepositoriesCreatedSinceRequest, ListSubRepositoriesBatchRequest,
    RepositoryPage, StartImportRequest, StartOutcome, SubRepositoriesBatchPage,
};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};
use ferry_shared::step::{MaybeStep, Step};

/// Deadline of one listing call (a page is milliseconds of work; a stuck call must not stall
/// the repair scan).
pub const LISTING_DEADLINE: Duration = Duration::from_secs(60);

/// Deadline of a capacity, status or cancel call: one or two database statements on the
/// importer. A frozen or partitioned importer must not hold up the caller (a start-up refresh, a
/// guard pass, an operator's cancel) for the transport's 30 s.
pub const QUICK_DEADLINE: Duration = Duration::from_secs(5);

mod gc;
mod statuses;
mod step_status;
mod verify;

pub use gc::OpenCollection;
pub use statuses::RecordedStatus;
pub use step_status::StepStatus;
pub use verify::ImporterVerification;

fn quick<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(QUICK_DEADLINE);
    request
}

/// Why a call to the importers brought no answer. The gRPC status stops here: the rest of the
/// scheduler decides on these two cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImporterError {
    /// No importer could be asked: down, frozen past the call's deadline, partitioned, or none
    /// known. Nothing can be concluded about the repository from it.
    #[error("no importer reachable: {0}")]
    Unreachable(String),
    /// An importer answered with a refusal (`code` is the gRPC code it answered with).
    #[error("importer refused ({code:?}): {message}")]
    Refused {
        /// The importer's gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

impl From<tonic::Status> for ImporterError {
    /// A call past its deadline on this side ends `CANCELLED` ("Timeout expired"): a frozen
    /// importer, not an answer.
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::Unreachable(status.message().to_owned())
            }
            code => Self::Refused {
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

impl ImporterError {
    /// Whether no importer could be asked (as opposed to an answer).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    fn none_configured() -> Self {
        Self::Unreachable("no importers configured".to_owned())
    }
}

/// What [`ImporterPool::cancel_step`] found.
#[derive(Debug, Clone)]
pub enum CancelResult {
    /// The step is canceled (or canceled ahead of its start); the status afterwards.
    Canceled(MigrationStatus),
    /// The repository's final import completed: the completion won.
    Completed,
    /// Nothing was canceled (no step in progress, without force), and nothing completed.
    NotCanceled(ImporterError),
    /// No importer could be reached.
    Unreachable(ImporterError),
}

/// The `import_type` of spans and log lines: `pre` or `final`.
pub fn type_label(import_type: ImportType) -> &'static str {
    match import_type {
        ImportType::Final => "final",
        _ => "pre",
    }
}

/// How an importer answered a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartResult {
    /// Accepted by the importer at this URL; runs in the background.
    Accepted {
        /// The importer that runs the step.
        importer: String,
        /// When the importer claimed the step, on its clock (None from an importer that does
        /// not say).
        accepted_at: Option<chrono::DateTime<chrono::Utc>>,
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
    /// The step was accepted by an earlier start (whose answer was lost) and still runs.
    AlreadyRunning,
    /// Refused for another reason (a step in progress, a missing pre-import, a stale step, ...).
    Refused(String),
}

fn free_slots(capacity: &Capacity) -> i64 {
    if capacity.shutting_down {
        return 0;
    }
    i64::from(capacity.max_concurrent_imports) - i64::from(capacity.in_flight)
}

/// Where importers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A fixed endpoint.
    Url(String),
    /// `dns://host:port`: every address the name resolves to (a Kubernetes headless Service),
    /// re-resolved on every refresh.
    Dns { host: String, port: u16 },
}

/// One importer, with what it last said about its load.
#[derive(Debug)]
struct Member {
    url: String,
    /// Name its certificate must carry (the `dns://` name it was found under).
    server_name: Option<String>,
    client: ImporterClient<Connection>,
    /// Free slots when last heard of (unknown: 1; unreachable or full: 0).
    free: AtomicI64,
}

/// The importers the scheduler dispatches to.
#[derive(Debug)]
pub struct ImporterPool {
    sources: Vec<Source>,
    connector: Connector,
    members: RwLock<Vec<Arc<Member>>>,
    next: AtomicUsize,
    /// Wakes one start that found every importer busy, each time a step ends somewhere.
    slot_freed: tokio::sync::Notify,
}

fn member(
    connector: &Connector,
    url: String,
    server_name: Option<String>,
) -> Result<Arc<Member>, tonic::transport::Error> {
    let channel = connector.lazy(
        &url,
        ChannelOptions {
            server_name: server_name.as_deref(),
            connect_timeout: Duration::from_secs(3),
            timeout: Some(Duration::from_secs(30)),
        },
    )?;
    Ok(Arc::new(Member {
        url,
        server_name,
        client: ImporterClient::new(channel),
        free: AtomicI64::new(1),
    }))
}

fn parse_source(entry: &str) -> Source {
    match entry
        .strip_prefix("dns://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
    {
        Some((host, port)) => match port.parse() {
            Ok(port) => Source::Dns {
                host: host.to_owned(),
                port,
            },
            Err(_) => Source::Url(entry.to_owned()),
        },
        None => Source::Url(entry.to_owned()),
    }
}

impl ImporterPool {
    /// A pool of `entries`: `http(s)://host:port` endpoints, and `dns://name:port` names that
    /// stand for every address they resolve to (see [`Self::refresh`]). Fixed endpoints are
    /// members at once; clients connect on first use.
    pub fn new(entries: &[String]) -> Result<Self, tonic::transport::Error> {
        Self::with_connector(entries, Connector::default())
    }

    /// Like [`Self::new`], calling importers through `connector` (TLS, token).
    pub fn with_connector(
        entries: &[String],
        connector: Connector,
    ) -> Result<Self, tonic::transport::Error> {
        let sources: Vec<Source> = entries.iter().map(|e| parse_source(e)).collect();
        let members = sources
            .iter()
            .filter_map(|source| match source {
                Source::Url(url) => Some(member(&connector, url.clone(), None)),
                Source::Dns { .. } => None,
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sources,
            connector,
            members: RwLock::new(members),
            next: AtomicUsize::new(0),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    /// The members, starting one further along at each call, so that ties and turns spread
    /// over the importers.
    fn members_in_turn(&self) -> Vec<Arc<Member>> {
        let mut members = self.members();
        if !members.is_empty() {
            let len = members.len();
            members.rotate_left(self.next.fetch_add(1, Ordering::Relaxed) % len);
        }
        members
    }

    fn members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-resolves DNS names (importers come and go with a headless Service) and asks every
    /// member for its load. Returns the members' URLs.
    pub async fn refresh(&self) -> Vec<String> {
        let mut urls = Vec::new();
        for source in &self.sources {
            match source {
                Source::Url(url) => urls.push((url.clone(), None)),
                Source::Dns { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addresses) => {
                            let mut found: Vec<(String, Option<String>)> = addresses
                                .map(|a| (format!("http://{a}"), Some(host.clone())))
                                .collect();
                            found.sort();
                            found.dedup();
                            urls.extend(found);
                        }
                        Err(error) => {
                            // Keep the members this name had: a DNS hiccup must not empty the pool.
                            tracing::warn!(host, %error, "resolving importers failed; keeping the last answer");
                            let known = self.members();
                            urls.extend(
                                known
                                    .iter()
                                    .filter(|m| !self.is_fixed(&m.url))
                                    .map(|m| (m.url.clone(), m.server_name.clone())),
                            );
                        }
                    }
                }
            }
        }
        let known = self.members();
        let mut next = Vec::with_capacity(urls.len());
        for (url, server_name) in &urls {
            match known.iter().find(|m| &m.url == url) {
                Some(existing) => next.push(Arc::clone(existing)),
                None => match member(&self.connector, url.clone(), server_name.clone()) {
                    Ok(new) => next.push(new),
                    Err(error) => tracing::warn!(url, %error, "bad importer address"),
                },
            }
        }
        futures::future::join_all(next.iter().map(|m| async move {
            let free = match m
                .client
                .clone()
                .get_capacity(quick(GetCapacityRequest {}))
                .await
            {
                Ok(answer) => free_slots(&answer.into_inner()),
                Err(_) => 0,
            };
            m.free.store(free, Ordering::Relaxed);
        }))
        .await;
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        urls.into_iter().map(|(url, _)| url).collect()
    }

    fn is_fixed(&self, url: &str) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s, Source::Url(u) if u == url))
    }

    /// Starts a step on the importer with the most free slots (ties round-robin). One of its
    /// slots is counted as taken before the request goes out, so starts made at the same time
    /// spread over the importers instead of all asking the same one. Importers that answer
    /// `RESOURCE_EXHAUSTED` or cannot be reached are passed over. A `step` of `None` is an
    /// unnumbered start (the importer numbers it); the scheduler's own are always numbered.
    pub async fn start(
        &self,
        path: &str,
        import_type: ImportType,
        fence: u64,
        step: impl Into<Option<Step>>,
    ) -> StartResult {
        let step = step.into();
        let mut untried = self.members_in_turn();
        if untried.is_empty() {
            return StartResult::AllBusy("no importers known".into());
        }
        let mut busy = Vec::new();
        while let Some(best) = (0..untried.len()).max_by_key(|&i| {
            (
                untried[i].free.load(Ordering::Relaxed),
                std::cmp::Reverse(i),
            )
        }) {
            let m = untried.remove(best);
            m.free.fetch_sub(1, Ordering::Relaxed);
            let request = StartImportRequest {
                path: path.to_owned(),
                import_type: import_type.into(),
                fencing_token: fence,
                step: step.wire(),
            };
            match m.client.clone().start_import(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    if let Some(capacity) = &response.capacity {
                        m.free.store(free_slots(capacity), Ordering::Relaxed);
                    }
                    return match StartOutcome::try_from(response.outcome) {
                        Ok(StartOutcome::AlreadyImported) => StartResult::AlreadyImported {
                            imported: response.status == i32::from(MigrationStatus::ImportComplete),
                        },
                        Ok(StartOutcome::AlreadyRunning) => StartResult::AlreadyRunning,
                        _ => StartResult::Accepted {
                            importer: m.url.clone(),
                            accepted_at: chrono::DateTime::from_timestamp_micros(
                                response.accepted_at_unix_micros,
                            )
                            .filter(|_| response.accepted_at_unix_micros > 0),
                        },
                    };
                }
                Err(status) => match status.code() {
                    // A start that timed out on a frozen importer may or may not have claimed
                    // the step there: the next importer is asked for the same step, which
                    // answers ALREADY_RUNNING if the frozen one took it.
                    tonic::Code::ResourceExhausted
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => {
                        m.free.store(0, Ordering::Relaxed);
                        busy.push(format!("{}: {}", m.url, status.message()));
                    }
                    tonic::Code::NotFound => {
                        m.free.fetch_add(1, Ordering::Relaxed);
                        return StartResult::NotFound(status.message().to_owned());
                    }
                    _ => {
                        m.free.fetch_add(1, Ordering::Relaxed);
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

    /// A step has ended (on the importer at `url`, when known): counts that importer's slot as
    /// free again (its next answer replaces the count with its own), and wakes the longest
    /// waiting start that found every importer busy. The importer gave the slot up before it
    /// reported the end.
    pub fn step_ended(&self, url: Option<&str>) {
        if let Some(m) = url.and_then(|url| self.members().into_iter().find(|m| m.url == url)) {
            m.free.fetch_add(1, Ordering::Relaxed);
        }
        self.slot_freed.notify_one();
    }

    /// Waits until a step ends somewhere (true) or `until` passes (false): how a start that
    /// found every importer busy backs off. Each end wakes one waiter, the longest waiting, so
    /// a freed slot is tried at once without a crowd of starts racing for it.
    pub async fn slot_freed_before(&self, until: tokio::time::Instant) -> bool {
        tokio::select! {
            () = self.slot_freed.notified() => true,
            () = tokio::time::sleep_until(until) => false,
        }
    }

    fn client(&self, url: &str) -> Option<ImporterClient<Connection>> {
        self.members()
            .iter()
            .find(|m| m.url == url)
            .map(|m| m.client.clone())
    }

    /// The repository's status as the importer at `url` reports it (including whether that
    /// importer runs its step), or as any reachable importer does when `url` is unknown.
    pub async fn status(
        &self,
        url: Option<&str>,
        path: &str,
    ) -> Result<GetImportStatusResponse, ImporterError> {
        let request = || {
            quick(GetImportStatusRequest {
                path: path.to_owned(),
            })
        };
        if let Some(mut client) = url.and_then(|url| self.client(url)) {
            return Ok(client.get_import_status(request()).await?.into_inner());
        }
        self.ask_any(|mut client| {
            let request = request();
            async move { client.get_import_status(request).await }
        })
        .await
    }

    /// One page of the repositories (with tags) created since `since` (RFC 3339), from any
    /// reachable importer (they share the metadata database).
    pub async fn list_created_since(
        &self,
        since: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ImporterError> {
        self.ask_any(|mut client| {
            let request = ListRepositoriesCreatedSinceRequest {
                since: since.to_owned(),
                n,
                last: last.to_owned(),
            };
            async move { client.list_repositories_created_since(request).await }
        })
        .await
    }

    /// One page of [`ListSubRepositoriesBatch`](ListSubRepositoriesBatchRequest) from any
    /// reachable importer, within [`LISTING_DEADLINE`].
    pub async fn list_sub_repositories_batch(
        &self,
        request: ListSubRepositoriesBatchRequest,
    ) -> Result<SubRepositoriesBatchPage, ImporterError> {
        self.ask_any(|mut client| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(LISTING_DEADLINE);
            async move { client.list_sub_repositories_batch(call).await }
        })
        .await
    }

    /// Cancels step `step` of the repository (see [`Self::cancel`]) and says which side won:
    /// the cancel, or a final import that committed first (the importer then refuses the
    /// cancel and reports `import_complete`, which only a newer step could change, and no newer
    /// one is claimed while the caller holds the step).
    pub async fn cancel_step(&self, path: &str, step: Option<Step>, force: bool) -> CancelResult {
        match self.cancel(path, step, force).await {
            Ok(status) => CancelResult::Canceled(status),
            Err(unreachable @ ImporterError::Unreachable(_)) => {
                CancelResult::Unreachable(unreachable)
            }
            // Refused: whether the completion won decides both sides' end, so a status that
            // cannot be read is no answer either (never taken for "not completed").
            Err(refused) => match self.status(None, path).await {
                Ok(answer) if answer.status == i32::from(MigrationStatus::ImportComplete) => {
                    CancelResult::Completed
                }
                Ok(_) => CancelResult::NotCanceled(refused),
                Err(error) => CancelResult::Unreachable(error),
            },
        }
    }

    /// Cancels the repository's step `step` (`None`: whichever it is in) through any reachable
    /// importer (they share the metadata database; the one running the step notices within its
    /// poll interval). Returns the status afterwards.
    pub async fn cancel(
        &self,
        path: &str,
        step: Option<Step>,
        force: bool,
    ) -> Result<MigrationStatus, ImporterError> {
        let answer = self
            .ask_any(|mut client| {
                let request = quick(CancelImportRequest {
                    path: path.to_owned(),
                    force,
                    step: step.wire(),
                });
                async move { client.cancel_import(request).await }
            })
            .await?;
        Ok(MigrationStatus::try_from(answer.status).unwrap_or_default())
    }

    /// Makes `call` on each importer in turn until one answers (the importers share the
    /// metadata database, so any answer is the answer): its answer, or its refusal, or
    /// `Unreachable` with the last reason when none could be asked.
    async fn ask_any<T, F, Fut>(&self, mut call: F) -> Result<T, ImporterError>
    where
        F: FnMut(ImporterClient<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = ImporterError::none_configured();
        for m in self.members() {
            match call(m.client.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match ImporterError::from(status) {
                    unreachable @ ImporterError::Unreachable(_) => last = unreachable,
                    refused => return Err(refused),
                },
            }
        }
        Err(last)
    }
}
