//! The metric names the dashboard and the alert rules read, and which process exports each,
//! read from the sources themselves: a metric added to a panel or a rule is checked without
//! touching a test.

use std::collections::BTreeSet;

/// The Grafana dashboard the chart ships.
pub const DASHBOARD: &str = "helm/ferry/dashboards/ferry-migration.json";
/// The alert rules, as a plain Prometheus rules file.
pub const ALERT_RULES: &str = "helm/ferry/alerts/ferry.rules.yaml";

/// The sources that register metrics, and which process exports what each registers.
const REGISTERING: [(&str, Exporter); 3] = [
    ("shared/src/metrics.rs", Exporter::Both),
    ("scheduler/src/metrics.rs", Exporter::Scheduler),
    ("importer/src/metrics.rs", Exporter::Importer),
];

/// The processes that serve a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// The scheduler alone.
    Scheduler,
    /// The importers alone.
    Importer,
    /// Both (storage, database, gRPC).
    Both,
}

impl Exporter {
    /// Whether the scheduler serves it.
    pub fn on_scheduler(self) -> bool {
        self != Self::Importer
    }

    /// Whether the importers serve it.
    pub fn on_importer(self) -> bool {
        self != Self::Scheduler
    }
}

/// The names the services register (`registry.register("name", ...)`), prefixed `ferry_`, with
/// the processes that export them.
pub fn registered() -> Vec<(String, Exporter)> {
    let root = crate::workspace_root();
    let mut names = Vec::new();
    for (file, exporter) in REGISTERING {
        let source = std::fs::read_to_string(root.join(file)).expect("source");
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".register(") {
            rest = &rest[at + ".register(".len()..];
            let quoted = rest.trim_start();
            if let Some(name) = quoted.strip_prefix('"').and_then(|q| q.split('"').next()) {
                names.push((format!("ferry_{name}"), exporter));
            }
        }
    }
    names
}

/// The process that exports a queried name (`Both` for a name no source registers).
pub fn exporter_of(name: &str, registered: &[(String, Exporter)]) -> Exporter {
    registered
        .iter()
        .find(|(registered, _)| registered == family(name))
        .map_or(Exporter::Both, |(_, exporter)| *exporter)
}

/// The `ferry_*` names in a file of the workspace, as its queries write them (`_total`,
/// `_bucket`, ...).
pub fn metric_names_in(relative: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(crate::workspace_root().join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"));
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ferry_"))
        .map(str::to_owned)
        .collect()
}

/// Every name the dashboard and the alert rules read.
pub fn used_by_dashboard_and_rules() -> BTreeSet<String> {
    let mut used = metric_names_in(DASHBOARD);
    used.extend(metric_names_in(ALERT_RULES));
    used
}

/// The metric family a queried name belongs to.
pub fn family(name: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every PromQL expression of the dashboard's panels, with its panel's title.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(crate::workspace_root().join(DASHBOARD)).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in json["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("untitled");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((title.to_owned(), expr.to_owned()));
            }
        }
    }
    queries
}
