//! `ferryctl plans`: the plan of each root namespace, the source of the `target_plans` setting.

use clap::Subcommand;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    ListNamespacePlansRequest, NamespacePlan, SetNamespacePlansRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::view::{PlansView, emit};

/// `ferryctl plans` actions (`list` when none is given).
#[derive(Debug, Subcommand)]
pub enum PlansAction {
    /// Every root namespace with a plan (the others are on `free`).
    List,
    /// Set one root namespace's plan ("" removes it: the namespace is on `free` again).
    Set {
        /// The root namespace (a path's first segment).
        namespace: String,
        /// Its plan, as `ferryctl settings --target-plans` names plans.
        plan: String,
    },
    /// Load plans from FILE: one `NAMESPACE PLAN` (or `NAMESPACE,PLAN`) a line; `#` comments.
    Load {
        /// The file ("-" for standard input).
        file: String,
        /// Remove every namespace the file does not name.
        #[arg(long)]
        replace: bool,
    },
}

/// Runs `ferryctl plans`.
pub async fn run(
    client: &mut SchedulerClient<Connection>,
    action: Option<PlansAction>,
    json: bool,
) -> Result<(), CtlError> {
    let plans = match action {
        None | Some(PlansAction::List) => {
            client
                .list_namespace_plans(ListNamespacePlansRequest {})
                .await?
        }
        Some(PlansAction::Set { namespace, plan }) => {
            let plans = vec![NamespacePlan { namespace, plan }];
            let request = SetNamespacePlansRequest {
                plans,
                replace: false,
            };
            client.set_namespace_plans(request).await?
        }
        Some(PlansAction::Load { file, replace }) => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| CtlError::Input(format!("{file}: {e}")))?;
            let plans = parse(&text).map_err(CtlError::Input)?;
            eprintln!("loading {} namespace plans from {file}", plans.len());
            let request = SetNamespacePlansRequest { plans, replace };
            client.set_namespace_plans(request).await?
        }
    }
    .into_inner();
    emit(&PlansView::from(plans), json)
}

/// The entries of a plans file, or the first bad line.
fn parse(text: &str) -> Result<Vec<NamespacePlan>, String> {
    let mut plans = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        let [namespace, plan] = fields[..] else {
            return Err(format!(
                "line {}: {line:?} is not `NAMESPACE PLAN`",
                number + 1
            ));
        };
        plans.push(NamespacePlan {
            namespace: namespace.to_owned(),
            plan: plan.to_owned(),
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plans_file_takes_spaces_commas_and_comments() {
        let plans = parse("# namespace plan\ngitlab-org premium\n\nacme,ultimate # paid\n")
            .expect("parsed");
        let pairs: Vec<(&str, &str)> = plans
            .iter()
            .map(|p| (p.namespace.as_str(), p.plan.as_str()))
            .collect();
        assert_eq!(pairs, [("gitlab-org", "premium"), ("acme", "ultimate")]);
        let error = parse("a b c\n").expect_err("three fields");
        assert!(error.contains("line 1"), "{error}");
    }
}
