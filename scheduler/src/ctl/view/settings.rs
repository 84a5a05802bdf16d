//! Views of the run-time settings (`settings`) and of the root namespaces' plans (`plans`).

use std::fmt;

use serde::Serialize;

use ferry_proto::scheduler::v1::{NamespacePlans, Settings};

use super::{as_map, non_empty, on_off};

/// The run-time settings: `settings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SettingsView {
    /// The global switch.
    pub enabled: bool,
    /// Repositories in process at once.
    pub capacity: u32,
    /// Aborts before a repository is skipped.
    pub max_retries: u32,
    /// A step older than this is checked with its importer.
    pub max_step_duration_secs: u32,
    /// Time limit of a pre-import (or tags × `pre_import_tags_rate`).
    pub pre_import_timeout_secs: u32,
    /// Time limit of a final import.
    pub import_timeout_secs: u32,
    /// Repositories with more tags are skipped; 0 = no limit.
    pub max_tags_count: u32,
    /// Attempts to start a step while every importer is busy.
    pub start_max_retries: u32,
    /// Seconds per tag for the pre-import limit of big repositories.
    pub pre_import_tags_rate: f64,
    /// Wait after a step ends before starting the next repository.
    pub enqueue_waiting_time_secs: u32,
    /// RFC 3339: only repositories registered before; `null` = all.
    pub created_before: Option<String>,
    /// Only these plans; `null` = every plan.
    pub target_plans: Option<Vec<String>>,
    /// Root namespaces never migrated.
    pub deny_root_namespaces: Vec<String>,
    /// The repair scan's feature flag.
    pub repair_enabled: bool,
    /// The repair scan's workers at once; 0 = off.
    pub repair_max_concurrency: u32,
    /// An ongoing repair analysis older than this goes back to the scan.
    pub repair_stale_after_secs: u32,
}

impl From<Settings> for SettingsView {
    fn from(s: Settings) -> Self {
        Self {
            enabled: s.enabled,
            capacity: s.capacity,
            max_retries: s.max_retries,
            max_step_duration_secs: s.max_step_duration_secs,
            pre_import_timeout_secs: s.pre_import_timeout_secs,
            import_timeout_secs: s.import_timeout_secs,
            max_tags_count: s.max_tags_count,
            start_max_retries: s.start_max_retries,
            pre_import_tags_rate: s.pre_import_tags_rate,
            enqueue_waiting_time_secs: s.enqueue_waiting_time_secs,
            created_before: non_empty(s.created_before),
            target_plans: s.target_plans.map(|list| list.values),
            deny_root_namespaces: s.deny_root_namespaces,
            repair_enabled: s.repair_enabled,
            repair_max_concurrency: s.repair_max_concurrency,
            repair_stale_after_secs: s.repair_stale_after_secs,
        }
    }
}

impl fmt::Display for SettingsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Ferry settings")?;
        writeln!(f, "  switch                     {}", on_off(self.enabled))?;
        writeln!(f, "  capacity                   {}", self.capacity)?;
        writeln!(f, "  max retries                {}", self.max_retries)?;
        writeln!(
            f,
            "  max step duration          {} s",
            self.max_step_duration_secs
        )?;
        writeln!(
            f,
            "  pre-import timeout         {} s (or {} s per tag)",
            self.pre_import_timeout_secs, self.pre_import_tags_rate
        )?;
        writeln!(
            f,
            "  final import timeout       {} s",
            self.import_timeout_secs
        )?;
        let tags = if self.max_tags_count == 0 {
            "no limit".to_owned()
        } else {
            self.max_tags_count.to_string()
        };
        writeln!(f, "  max tags                   {tags}")?;
        writeln!(f, "  start attempts when busy   {}", self.start_max_retries)?;
        writeln!(
            f,
            "  wait between steps         {} s",
            self.enqueue_waiting_time_secs
        )?;
        writeln!(
            f,
            "  registered before          {}",
            self.created_before.as_deref().unwrap_or("any time")
        )?;
        let plans = self
            .target_plans
            .as_ref()
            .map_or_else(|| "all".to_owned(), |plans| plans.join(", "));
        writeln!(f, "  target plans               {plans}")?;
        let mut denied = self.deny_root_namespaces.join(", ");
        if denied.is_empty() {
            denied = "none".to_owned();
        }
        writeln!(f, "  denied root namespaces     {denied}")?;
        writeln!(
            f,
            "  repair scan                {} ({} workers, stale after {} s)",
            on_off(self.repair_enabled),
            self.repair_max_concurrency,
            self.repair_stale_after_secs
        )
    }
}

/// The root namespaces' plans: `plans`. Its JSON is `{"plans": {NAMESPACE: PLAN, ...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlansView {
    /// (namespace, plan), by namespace.
    #[serde(serialize_with = "as_map")]
    pub plans: Vec<(String, String)>,
}

impl From<NamespacePlans> for PlansView {
    fn from(plans: NamespacePlans) -> Self {
        Self {
            plans: plans
                .plans
                .into_iter()
                .map(|p| (p.namespace, p.plan))
                .collect(),
        }
    }
}

impl fmt::Display for PlansView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plans.is_empty() {
            writeln!(f, "no namespace plans: every namespace is on free")?;
        }
        for (namespace, plan) in &self.plans {
            writeln!(f, "{namespace:<40} {plan}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::scheduler::v1::{NamespacePlan, StringList};

    #[test]
    fn the_settings_as_text_and_json() {
        let view = SettingsView::from(Settings {
            enabled: true,
            capacity: 4,
            max_retries: 3,
            max_step_duration_secs: 3600,
            pre_import_timeout_secs: 7200,
            import_timeout_secs: 600,
            max_tags_count: 0,
            start_max_retries: 50,
            pre_import_tags_rate: 0.5,
            enqueue_waiting_time_secs: 0,
            created_before: String::new(),
            target_plans: Some(StringList {
                values: vec!["free".into(), "premium".into()],
            }),
            deny_root_namespaces: Vec::new(),
            repair_enabled: false,
            repair_max_concurrency: 4,
            repair_stale_after_secs: 600,
        });
        assert_eq!(
            view.to_string(),
            "Ferry settings\n\
             \x20 switch                     on\n\
             \x20 capacity                   4\n\
             \x20 max retries                3\n\
             \x20 max step duration          3600 s\n\
             \x20 pre-import timeout         7200 s (or 0.5 s per tag)\n\
             \x20 final import timeout       600 s\n\
             \x20 max tags                   no limit\n\
             \x20 start attempts when busy   50\n\
             \x20 wait between steps         0 s\n\
             \x20 registered before          any time\n\
             \x20 target plans               free, premium\n\
             \x20 denied root namespaces     none\n\
             \x20 repair scan                off (4 workers, stale after 600 s)\n"
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["target_plans"], serde_json::json!(["free", "premium"]));
        assert_eq!(json["created_before"], serde_json::Value::Null);
        assert_eq!(json["deny_root_namespaces"], serde_json::json!([]));
        assert_eq!(json.as_object().map(|o| o.len()), Some(16));
        let all = SettingsView::default();
        assert!(all.to_string().contains("target plans               all\n"));
        let json = serde_json::to_value(&all).expect("JSON");
        assert_eq!(json["target_plans"], serde_json::Value::Null);
    }

    #[test]
    fn plans_as_text_and_a_json_object() {
        let view = PlansView::from(NamespacePlans {
            plans: vec![
                NamespacePlan {
                    namespace: "acme".into(),
                    plan: "ultimate".into(),
                },
                NamespacePlan {
                    namespace: "gitlab-org".into(),
                    plan: "premium".into(),
                },
            ],
        });
        assert_eq!(
            view.to_string(),
            format!("{:<40} ultimate\n{:<40} premium\n", "acme", "gitlab-org")
        );
        assert_eq!(
            serde_json::to_string(&view).expect("JSON"),
            r#"{"plans":{"acme":"ultimate","gitlab-org":"premium"}}"#
        );
        let none = PlansView::default();
        assert_eq!(
            none.to_string(),
            "no namespace plans: every namespace is on free\n"
        );
        assert_eq!(
            serde_json::to_string(&none).expect("JSON"),
            r#"{"plans":{}}"#
        );
    }
}
