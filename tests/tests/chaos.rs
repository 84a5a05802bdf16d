//! The randomized fault suite (`make chaos` runs many schedules; `make test` a few): each
//! schedule is a real migration under seeded random faults, checked against every invariant
//! once it converged. A failing seed is printed and replays with `FERRY_CHAOS_SEED=<seed>
//! FERRY_CHAOS_SCHEDULES=1 make chaos`.

use ferry_tests::chaos::{self, Plan, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schedule_of_faults_leaves_both_sides_in_agreement() {
    // A few short schedules by default; `make chaos` asks for more and longer ones.
    let plan = Plan::from_env(2, 20);
    let source = Source::build(plan.repositories).await;
    let mut reports = Vec::new();
    for seed in plan.seed..plan.seed + plan.schedules {
        eprintln!(
            "chaos: schedule with seed {seed} ({:?} of faults)",
            plan.window
        );
        let report = chaos::run_schedule(&source, seed, plan.window).await;
        eprintln!("chaos: {}", report.line());
        for violation in &report.violations {
            eprintln!("chaos:     {violation}");
        }
        reports.push(report);
    }
    let summary = chaos::summarize(&reports);
    println!("{summary}");
    let failing: Vec<u64> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.seed)
        .collect();
    assert!(
        failing.is_empty(),
        "violations in the schedules of seeds {failing:?} \
         (replay one with FERRY_CHAOS_SEED=<seed> FERRY_CHAOS_SCHEDULES=1 make chaos):\n{summary}"
    );
}

/// The checks can fail: a converged migration passes them, and each kind of damage they guard
/// against is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_report_each_kind_of_damage() {
    use chaos::{deployment::Deployment, invariants};
    use std::time::Duration;

    let source = Source::build(20).await;
    let root = source.root();
    let logs = tempfile::tempdir().expect("logs");
    let database = ferry_tests::fresh_database("chaos_check").await;
    let metadata = ferry_tests::fresh_database("chaos_check_meta").await;
    let deployment =
        Deployment::start(&root, logs.path(), database.clone(), metadata.clone()).await;
    deployment.configure(4).await;
    let scheduler = sqlx::PgPool::connect(&database).await.expect("scheduler");
    let meta = sqlx::PgPool::connect(&metadata).await.expect("metadata");
    let pending = invariants::wait_terminal(&scheduler, Duration::from_secs(120)).await;
    assert!(pending.is_empty(), "{pending:?}");
    let check = || async {
        let mut violations = Vec::new();
        let complete = invariants::sides_agree(&scheduler, &meta, &mut violations).await;
        invariants::registered_as_source(
            source.registry(),
            &meta,
            &root,
            &complete,
            &mut violations,
        )
        .await;
        (complete, violations)
    };
    let (complete, violations) = check().await;
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(complete.len(), source.paths.len());

    let execute = |sql: &'static str| {
        let meta = meta.clone();
        async move { sqlx::query(sql).execute(&meta).await.expect(sql) }
    };
    // A repository the metadata side canceled after it completed; one left read-only; a
    // manifest whose payload changed; a tag pointing elsewhere; a copied blob gone.
    execute("UPDATE repositories SET migration_status = 'import_canceled' WHERE path = 'chaos/p0000/app'").await;
    execute("UPDATE repositories SET migration_status = 'import_in_progress' WHERE path = 'chaos/p0001/app'").await;
    execute(
        "UPDATE manifests SET payload = payload || ' '::bytea WHERE repository_id = \
         (SELECT id FROM repositories WHERE path = 'chaos/p0002/app')",
    )
    .await;
    execute(
        "DELETE FROM tags WHERE name = 'v1' AND repository_id = \
         (SELECT id FROM repositories WHERE path = 'chaos/p0003/app')",
    )
    .await;
    let layer: String = sqlx::query_scalar(
        "SELECT l.digest FROM layers l JOIN repositories r ON r.id = l.repository_id \
         WHERE r.path = 'chaos/p0004/app' ORDER BY l.digest LIMIT 1",
    )
    .fetch_one(&meta)
    .await
    .expect("a layer");
    let hex = layer.trim_start_matches("sha256:");
    std::fs::remove_file(
        root.join("gitlab/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"),
    )
    .expect("remove the copy");
    let (_, violations) = check().await;
    let reported = |needle: &str| violations.iter().any(|v| v.contains(needle));
    for needle in [
        "chaos/p0000/app: the scheduler says import_done (no reason), the metadata database import_canceled",
        "chaos/p0000/app has 2 tags but is import_canceled",
        "chaos/p0001/app left read-only or locked: import_in_progress",
        "chaos/p0002/app: manifest",
        "chaos/p0003/app: tags",
        &format!("blob {layer} not copied under gitlab/"),
    ] {
        assert!(
            reported(needle),
            "{needle:?} not reported in {violations:#?}"
        );
    }

    // Two runners of one step, two completed final imports, one fence in two incarnations.
    let dir = tempfile::tempdir().expect("logs");
    let line = |fields: &str| format!("{{\"timestamp\":\"2026-12-06T00:00:00Z\",{fields}}}\n");
    let importer = dir.path().join("importer-0.1.log");
    let accepted = line(r#""message":"import step accepted","repository":"g/p/a","step":3"#);
    let completed = line(
        r#""message":"import step ended","repository":"g/p/a","step":4,"status":"import_complete""#,
    );
    std::fs::write(
        &importer,
        [accepted.clone(), accepted, completed.clone(), completed].concat(),
    )
    .expect("write");
    let first = dir.path().join("scheduler-0.1.log");
    let second = dir.path().join("scheduler-1.1.log");
    let acquired = line(r#""message":"enqueue lease acquired","fence":7"#);
    std::fs::write(&first, &acquired).expect("write");
    std::fs::write(
        &second,
        [
            acquired.clone(),
            line(r#""message":"step started","fence":6"#),
        ]
        .concat(),
    )
    .expect("write");
    let mut violations = Vec::new();
    invariants::logs_agree(&[importer], &[first, second], &mut violations);
    for needle in [
        "g/p/a: step 3 accepted 2 times",
        "g/p/a: 2 final imports completed",
        "fence 7 taken by",
        "started a step under fence 6",
    ] {
        assert!(
            violations.iter().any(|v| v.contains(needle)),
            "{needle:?} not reported in {violations:#?}"
        );
    }
}
