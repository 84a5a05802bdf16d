//! `ferryctl settings`: show the run-time settings, or change some of them.

use clap::Args;
use serde_json::json;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{GetSettingsRequest, Settings, StringList, UpdateSettingsRequest};
use ferry_shared::grpc::client::Connection;

use super::CtlError;

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
    if args.json {
        println!("{}", settings_json(&settings));
    } else {
        print_settings(&settings);
    }
    Ok(())
}

fn settings_json(s: &Settings) -> serde_json::Value {
    json!({
        "enabled": s.enabled, "capacity": s.capacity, "max_retries": s.max_retries,
        "max_step_duration_secs": s.max_step_duration_secs,
        "pre_import_timeout_secs": s.pre_import_timeout_secs,
        "import_timeout_secs": s.import_timeout_secs, "max_tags_count": s.max_tags_count,
        "start_max_retries": s.start_max_retries, "pre_import_tags_rate": s.pre_import_tags_rate,
        "enqueue_waiting_time_secs": s.enqueue_waiting_time_secs,
        "created_before": (!s.created_before.is_empty()).then_some(&s.created_before),
        "target_plans": s.target_plans.as_ref().map(|l| &l.values),
        "deny_root_namespaces": s.deny_root_namespaces,
        "repair_enabled": s.repair_enabled,
        "repair_max_concurrency": s.repair_max_concurrency,
        "repair_stale_after_secs": s.repair_stale_after_secs,
    })
}

fn print_settings(s: &Settings) {
    let or = |value: &str, empty: &str| {
        if value.is_empty() {
            empty.to_owned()
        } else {
            value.to_owned()
        }
    };
    println!("Ferry settings");
    println!(
        "  switch                     {}",
        if s.enabled { "on" } else { "off" }
    );
    println!("  capacity                   {}", s.capacity);
    println!("  max retries                {}", s.max_retries);
    println!(
        "  max step duration          {} s",
        s.max_step_duration_secs
    );
    println!(
        "  pre-import timeout         {} s (or {} s per tag)",
        s.pre_import_timeout_secs, s.pre_import_tags_rate
    );
    println!("  final import timeout       {} s", s.import_timeout_secs);
    let tags = if s.max_tags_count == 0 {
        "no limit".to_owned()
    } else {
        s.max_tags_count.to_string()
    };
    println!("  max tags                   {tags}");
    println!("  start attempts when busy   {}", s.start_max_retries);
    println!(
        "  wait between steps         {} s",
        s.enqueue_waiting_time_secs
    );
    println!(
        "  registered before          {}",
        or(&s.created_before, "any time")
    );
    let plans = s
        .target_plans
        .as_ref()
        .map_or_else(|| "all".to_owned(), |l| l.values.join(", "));
    println!("  target plans               {plans}");
    println!(
        "  denied root namespaces     {}",
        or(&s.deny_root_namespaces.join(", "), "none")
    );
    println!(
        "  repair scan                {} ({} workers, stale after {} s)",
        if s.repair_enabled { "on" } else { "off" },
        s.repair_max_concurrency,
        s.repair_stale_after_secs
    );
}
