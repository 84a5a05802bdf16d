//! Settings change what the scheduler migrates, at run time, through the API: the deny list,
//! `created_before` and `max_tags_count` (too_many_tags). Real services, real registry data.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, GetRepositoryRequest, GetSettingsRequest, StringList,
    UpdateSettingsRequest,
};
use ferry_tests::{Cluster, SampleRegistry, metric, wait_until};

async fn states(cluster: &Cluster) -> BTreeMap<String, u64> {
    let mut client = cluster.client().await;
    let summary = client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    summary
        .states
        .into_iter()
        .map(|s| (s.state, s.count))
        .collect()
}

async fn wait_for(cluster: &Cluster, expected: &[(&str, u64)]) {
    let expected: BTreeMap<String, u64> = expected
        .iter()
        .map(|(s, n)| ((*s).to_owned(), *n))
        .collect();
    let what = format!("states {expected:?}");
    wait_until(&what, Duration::from_secs(90), async || {
        let now = states(cluster).await;
        if now == expected { Ok(()) } else { Err(now) }
    })
    .await;
}

/// Whole enqueue passes the scheduler has finished.
async fn enqueue_passes(cluster: &Cluster) -> f64 {
    metric(&cluster.metrics().await, "ferry_enqueue_passes_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_decide_what_is_migrated() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let mut client = cluster.client().await;
    ferry_tests::run_inventory(&mut client).await;

    // Bad values are refused, each named.
    let bad = UpdateSettingsRequest {
        max_step_duration_secs: Some(0),
        created_before: Some("last tuesday".into()),
        ..Default::default()
    };
    let refused = client.update_settings(bad).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("max_step_duration")
            && refused.message().contains("created_before"),
        "{}",
        refused.message()
    );

    // At most one tag, nothing under root namespace "a", and on.
    let update = UpdateSettingsRequest {
        enabled: Some(true),
        capacity: Some(4),
        max_tags_count: Some(1),
        deny_root_namespaces: Some(StringList {
            values: vec!["a".into()],
        }),
        ..Default::default()
    };
    let settings = client
        .update_settings(update)
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        (
            settings.max_tags_count,
            settings.deny_root_namespaces.clone()
        ),
        (1, vec!["a".to_owned()])
    );
    assert_eq!(
        client
            .get_settings(GetSettingsRequest {})
            .await
            .expect("get")
            .into_inner(),
        settings
    );
    // app has tags v1 and latest; gone has keep and removed (a tag directory without a link).
    wait_for(
        &cluster,
        &[("default", 1), ("import_done", 5), ("import_skipped", 2)],
    )
    .await;
    let app = client
        .get_repository(GetRepositoryRequest {
            path: "group-a/project-1/app".into(),
        })
        .await
        .expect("repo")
        .into_inner();
    assert_eq!(app.skipped_reason, "too_many_tags");
    assert_eq!(app.last_error, "2 tags, over the limit of 1");

    // Lift the deny list but only migrate what was registered before 2000: still nothing new.
    let update = UpdateSettingsRequest {
        deny_root_namespaces: Some(StringList { values: vec![] }),
        created_before: Some("2000-01-01T00:00:00Z".into()),
        ..Default::default()
    };
    client.update_settings(update).await.expect("update");
    // Two passes end after the update: the second began after it, with these settings.
    let passes = enqueue_passes(&cluster).await;
    wait_until(
        "two enqueue passes with the new settings",
        Duration::from_secs(30),
        async || {
            let now = enqueue_passes(&cluster).await;
            if now >= passes + 2.0 {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
    assert_eq!(states(&cluster).await.get("default"), Some(&1));
    // Remove the date limit: the last repository is migrated.
    let update = UpdateSettingsRequest {
        created_before: Some(String::new()),
        ..Default::default()
    };
    client.update_settings(update).await.expect("update");
    wait_for(&cluster, &[("import_done", 6), ("import_skipped", 2)]).await;
}
