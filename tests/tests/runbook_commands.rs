//! The runbook's procedures as `ferryctl` commands, run as the binary against a real cluster:
//! the queues, the global switch, a stuck enqueue lease and a stuck deduplication key.

use std::time::Duration;

use ferry_tests::{Cluster, SampleRegistry, redis_url, wait_until};

/// Runs `ferryctl ARGS`; returns (success, stdout, stderr).
fn ferryctl(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let output = cluster.ferryctl(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = ferryctl(cluster, args);
    assert!(ok, "ferryctl {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runbook_step_is_a_ferryctl_command() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 1).await;
    cluster.inventory().await;

    // The queues, with the switch off: the next ready one, no aborted one.
    let next = json(&cluster, &["queue", "next", "--json"]);
    assert_eq!(next["migration_state"], "default", "{next}");
    let all = json(&cluster, &["queue", "--json"]);
    assert_eq!(all["next_ready"]["path"], next["path"]);
    assert_eq!(
        json(&cluster, &["queue", "next-aborted", "--json"]),
        serde_json::Value::Null
    );
    let (ok, text, _) = ferryctl(&cluster, &["queue", "next-aborted"]);
    assert!(ok && text.contains("no aborted repository waits"), "{text}");

    // The same views through other commands, as JSON and as text.
    let summary = json(&cluster, &["status", "--json"]);
    let total = summary["total"].as_u64().expect("total");
    assert_eq!(summary["states"]["default"], total, "{summary}");
    assert_eq!(summary["elapsed_seconds"], serde_json::Value::Null);
    let (ok, text, _) = ferryctl(&cluster, &["status"]);
    assert!(
        ok && text.starts_with("Ferry migration summary\n"),
        "{text}"
    );
    let path = next["path"].as_str().expect("path");
    assert_eq!(json(&cluster, &["status", path, "--json"]), next);
    let (ok, text, _) = ferryctl(&cluster, &["status", path]);
    assert!(
        ok && text.starts_with(&format!("{path}\n  project ")),
        "{text}"
    );
    let page = json(&cluster, &["list", "--limit", "2", "--json"]);
    assert_eq!(
        page["repositories"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    let after = page["next_after"].as_str().expect("next_after");
    let (ok, text, _) = ferryctl(&cluster, &["list", "--limit", "2"]);
    assert!(
        ok && text.ends_with(&format!("next: --after {after}\n")),
        "{text}"
    );
    let writable = json(&cluster, &["writable", path, "--json"]);
    assert_eq!(writable["path"], path, "{writable}");
    assert_eq!(writable["writable"], true, "{writable}");

    // The switch: resume, pause.
    assert!(ferryctl(&cluster, &["resume"]).0);
    assert_eq!(json(&cluster, &["settings", "--json"])["enabled"], true);
    assert!(ferryctl(&cluster, &["pause"]).0);
    assert_eq!(json(&cluster, &["settings", "--json"])["enabled"], false);

    // A stuck lease: clearing needs the current holder; then a replica takes it, fenced higher.
    let lease = json(&cluster, &["lease", "show", "--json"]);
    assert_eq!(lease["held"], true, "{lease}");
    let holder = lease["holder"].as_str().expect("holder").to_owned();
    let fence = lease["fence"].as_u64().expect("fence");
    let (ok, _, stderr) = ferryctl(&cluster, &["lease", "clear", "--holder", "someone-else"]);
    assert!(
        !ok && stderr.contains("does not hold the enqueue lease"),
        "{stderr}"
    );
    let (ok, _, stderr) = ferryctl(&cluster, &["lease", "clear"]);
    assert!(
        !ok && stderr.contains("--holder"),
        "the holder is required: {stderr}"
    );
    let (ok, _, stderr) = ferryctl(&cluster, &["lease", "clear", "--holder", &holder]);
    assert!(ok, "{stderr}");
    wait_until(
        "a replica to take the lease again",
        Duration::from_secs(20),
        async || {
            let now = json(&cluster, &["lease", "--json"]);
            if now["held"] == true && now["fence"].as_u64() > Some(fence) {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;

    // A stuck deduplication key (no expiry, set by a replica that died): shown, then cleared.
    // The lease holder consumes the key at the start of every pass, so the lease is taken away
    // from it first: a key no pass consumes stays until an operator clears it.
    let client = redis::Client::open(redis_url()).expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let lease_key = format!("{}:enqueuer:lease", cluster.redis_prefix);
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("runbook-test")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .expect("take the lease");
    wait_until(
        "the scheduler to stop leading",
        Duration::from_secs(20),
        async || match ferry_tests::metric(&cluster.metrics().await, "ferry_lease_held") {
            Some(0.0) => Ok(()),
            held => Err(held),
        },
    )
    .await;
    let key = format!("{}:enqueuer:pending", cluster.redis_prefix);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("dead-replica")
        .query_async(&mut redis)
        .await
        .expect("set");
    let shown = json(&cluster, &["dedup", "show", "--json"]);
    assert_eq!(shown["pending"], true, "{shown}");
    assert_eq!(shown["owner"], "dead-replica", "{shown}");
    let (ok, text, _) = ferryctl(&cluster, &["dedup"]);
    assert!(ok && text.contains("set by dead-replica"), "{text}");
    // Cleared, it is replaced by this replica's wake-up, which expires by itself.
    let cleared = json(&cluster, &["dedup", "clear", "--json"]);
    assert_eq!(cleared["pending"], true, "{cleared}");
    assert_ne!(cleared["owner"], "dead-replica", "{cleared}");
    assert!(cleared["ttl_left_ms"].as_u64() > Some(0), "{cleared}");
    let owner: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("get");
    assert_ne!(owner.as_deref(), Some("dead-replica"));
    let _: () = redis::cmd("DEL")
        .arg(&lease_key)
        .query_async(&mut redis)
        .await
        .expect("give the lease back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_plans_select_repositories_by_the_plans_ferryctl_loads() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 1).await;
    cluster.inventory().await;
    let file = tempfile::NamedTempFile::new().expect("plans file");
    std::fs::write(
        file.path(),
        "# root namespace, plan\ngroup-a premium\ngroup-b,ultimate\n",
    )
    .expect("write");
    let path = file.path().display().to_string();
    let loaded = json(&cluster, &["plans", "load", &path, "--json"]);
    assert_eq!(loaded["plans"]["group-a"], "premium", "{loaded}");
    assert_eq!(loaded["plans"]["group-b"], "ultimate", "{loaded}");
    let (ok, _, stderr) = ferryctl(&cluster, &["plans", "set", "bad/namespace", "free"]);
    assert!(!ok && stderr.contains("without '/'"), "{stderr}");
    let settings = json(
        &cluster,
        &["settings", "--target-plans", "premium", "--json"],
    );
    assert_eq!(settings["target_plans"], serde_json::json!(["premium"]));
    assert!(ferryctl(&cluster, &["resume"]).0);

    // Only group-a's repositories (on premium) are migrated; the others wait in `default`.
    let in_plan = |path: &str| path.starts_with("group-a/");
    wait_until(
        "group-a's 3 repositories import_done",
        Duration::from_secs(60),
        async || {
            let done = json(&cluster, &["list", "--state", "import_done", "--json"]);
            let paths: Vec<String> = done["repositories"]
                .as_array()
                .expect("repositories")
                .iter()
                .map(|r| r["path"].as_str().expect("path").to_owned())
                .collect();
            assert!(paths.iter().all(|p| in_plan(p)), "{paths:?}");
            if paths.len() == 3 { Ok(()) } else { Err(paths) }
        },
    )
    .await;
    let waiting = json(&cluster, &["list", "--state", "default", "--json"]);
    assert_eq!(
        waiting["repositories"].as_array().map(Vec::len),
        Some(5),
        "{waiting}"
    );
    // Replacing the plans without group-a: the rest of the plan is empty.
    let replaced = json(&cluster, &["plans", "load", "-", "--replace", "--json"]);
    assert_eq!(replaced["plans"], serde_json::json!({}), "{replaced}");
}
