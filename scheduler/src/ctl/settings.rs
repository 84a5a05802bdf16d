//! `ferryctl settings`: show the run-time settings, or change some of them.

use clap::Args;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{GetSettingsRequest, StringList, UpdateSettingsRequest};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::view::{SettingsView, emit};

/// Changes to make; with none, the settings are shown.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Repositories in process at once.
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Aborts before a repository is skipped.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Seconds after which the guard checks a step with its importer.
    #[arg(long)]
    pub max_step_duration_secs: Option<u32>,
    /// Seconds a pre-import may run (big repositories: tags × rate).
    #[arg(long)]
    pub pre_import_timeout_secs: Option<u32>,
    /// Seconds a final import may run.
    #[arg(long)]
    pub import_timeout_secs: Option<u32>,
    /// Skip repositories with more tags (0 = no limit).
    #[arg(long)]
    pub max_tags_count: Option<u32>,
    /// Attempts to start a step while every importer is busy.
    #[arg(long)]
    pub start_max_retries: Option<u32>,
    /// Seconds per tag for the pre-import limit of big repositories.
    #[arg(long)]
    pub pre_import_tags_rate: Option<f64>,
    /// Seconds to wait after a step ends before starting the next repository.
    #[arg(long)]
    pub enqueue_waiting_time_secs: Option<u32>,
    /// Only repositories registered before this RFC 3339 time; "none" removes the limit.
    #[arg(long)]
    pub created_before: Option<String>,
    /// Comma-separated plans to migrate; "all" for every plan.
    #[arg(long)]
    pub target_plans: Option<String>,
    /// Comma-separated root namespaces never migrated; "none" to clear.
    #[arg(long)]
    pub deny_root_namespaces: Option<String>,
    /// Project repair scan workers at once (0 = off); `ferryctl repair enable` sets the flag.
    #[arg(long)]
    pub repair_max_concurrency: Option<u32>,
    /// Seconds after which an ongoing repair analysis goes back to the scan.
    #[arg(long)]
    pub repair_stale_after_secs: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn list(value: &str, empty_word: &str) -> StringList {
    let values = if value == empty_word {
        Vec::new()
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    StringList { values }
}

impl SettingsArgs {
    fn request(&self) -> Option<UpdateSettingsRequest> {
        let request = UpdateSettingsRequest {
            enabled: None,
            capacity: self.capacity,
            max_retries: self.max_retries,
            max_step_duration_secs: self.max_step_duration_secs,
            pre_import_timeout_secs: self.pre_import_timeout_secs,
            import_timeout_secs: self.import_timeout_secs,
            max_tags_count: self.max_tags_count,
            start_max_retries: self.start_max_retries,
            pre_import_tags_rate: self.pre_import_tags_rate,
            enqueue_waiting_time_secs: self.enqueue_waiting_time_secs,
            created_before: self.created_before.as_deref().map(|v| {
                if v == "none" {
                    String::new()
                } else {
                    v.to_owned()
                }
            }),
            target_plans: self.target_plans.as_deref().map(|v| list(v, "all")),
            deny_root_namespaces: self
                .deny_root_namespaces
                .as_deref()
                .map(|v| list(v, "none")),
            repair_enabled: None,
            repair_max_concurrency: self.repair_max_concurrency,
            repair_stale_after_secs: self.repair_stale_after_secs,
        };
        (request != UpdateSettingsRequest::default()).then_some(request)
    }
}

/// Shows the settings, after applying the changes given.
pub async fn run(
    client: &mut SchedulerClient<Connection>,
    args: &SettingsArgs,
) -> Result<(), CtlError> {
    let settings = match args.request() {
        Some(request) => client.update_settings(request).await?.into_inner(),
        None => client
            .get_settings(GetSettingsRequest {})
            .await?
            .into_inner(),
    };
    emit(&SettingsView::from(settings), args.json)
}
