//! Figure a1: pre-import and final import of the whole dataset in one-shot mode, on the local
//! filesystem, against `docker-registry garbage-collect --dry-run` walking the same tree.

use std::path::Path;
use std::process::{Command, Stdio};

use ferry_tests::dataset::{DatasetSpec, DatasetStats, generate};
use ferry_tests::{env_size, fresh_database};

use super::{Figure, median, release_bin, runs, timed};

/// The dataset of figures a1 and a2, sized by `FERRY_BENCH_REPOSITORIES` and `FERRY_BENCH_TAGS`.
pub fn dataset(root: &Path) -> (DatasetSpec, DatasetStats) {
    let spec = DatasetSpec {
        repositories: env_size("FERRY_BENCH_REPOSITORIES", 2_000),
        tags: env_size("FERRY_BENCH_TAGS", 5),
        ..DatasetSpec::default()
    };
    let stats = generate(root, &spec);
    (spec, stats)
}

/// `docker-registry garbage-collect --dry-run` over `root`: the peer walker.
pub fn garbage_collect(root: &Path, scratch: &Path) -> f64 {
    let config = scratch.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )
    .expect("registry config");
    timed(
        Command::new("docker-registry")
            .args(["garbage-collect", "--dry-run"])
            .arg(&config)
            .stdout(Stdio::null()),
    )
    .as_secs_f64()
}

/// Figures a1 and a2 (as asked), on one dataset.
pub async fn walks(a1: bool, a2: bool) -> Vec<Figure> {
    let data = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let (spec, stats) = dataset(data.path());
    eprintln!(
        "a: dataset {} repositories × {} tags: {} manifests, {} blobs ({} to copy) in {:.1} s",
        spec.repositories,
        spec.tags,
        stats.manifests,
        stats.blobs,
        stats.copied_blobs,
        started.elapsed().as_secs_f64()
    );
    let mut figures = Vec::new();
    if a1 {
        figures.push(one_shot_against_garbage_collect(data.path(), scratch.path(), &spec).await);
    }
    if a2 {
        figures.push(
            through_scheduler_against_garbage_collect(data.path(), scratch.path(), &spec).await,
        );
    }
    figures
}

/// Runs `ours` and `docker-registry garbage-collect --dry-run` over `data` alternately,
/// `runs()` times, with `gitlab/` set aside before each of ours (rather than deleted: ext4 is slow
/// to allocate inodes next to ones it has just freed, which a real migration never meets), and
/// makes figure `id` of the two medians: Ferry's time at most `limit` × the collector's. Returns
/// the figure and the collector's median.
async fn against_garbage_collect(
    id: &'static str,
    name: String,
    (target, limit): (&'static str, f64),
    data: &Path,
    scratch: &Path,
    mut ours: impl AsyncFnMut() -> f64,
) -> (Figure, f64) {
    let (mut ferry, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs() {
        theirs.push(garbage_collect(data, scratch));
        let _ = std::fs::rename(
            data.join("gitlab"),
            scratch.join(format!("gitlab-{id}-{run}")),
        );
        ferry.push(ours().await);
        eprintln!(
            "{id}: run {}: ferry {:.2} s, garbage-collect {:.2} s",
            run + 1,
            ferry[run],
            theirs[run]
        );
    }
    let (ferry, theirs) = (median(ferry), median(theirs));
    let ratio = ferry / theirs;
    let figure = Figure {
        id,
        name,
        ferry: format!("{ferry:.2} s"),
        reference: format!("garbage-collect --dry-run {theirs:.2} s"),
        ratio: format!("{ratio:.2} ×"),
        target,
        met: ratio <= limit,
    };
    (figure, theirs)
}

async fn one_shot_against_garbage_collect(
    data: &Path,
    scratch: &Path,
    spec: &DatasetSpec,
) -> Figure {
    let name = format!(
        "pre-import + final import, one-shot, local disk ({} repositories × {} tags)",
        spec.repositories, spec.tags
    );
    let mut last = String::new();
    let (mut figure, collector) =
        against_garbage_collect("a1", name, ("≤ 0.5 ×", 0.5), data, scratch, async || {
            let database = fresh_database("bench_a1").await;
            last.clone_from(&database);
            timed(
                Command::new(release_bin("ferry-importer"))
                    .args(["import", "--all"])
                    .env("FERRY_STORAGE_URL", format!("file://{}", data.display()))
                    .env("FERRY_METADATA_DATABASE_URL", &database)
                    .env("FERRY_LOG", "warn")
                    .stdout(Stdio::null()),
            )
            .as_secs_f64()
        })
        .await;
    with_copy_floor(&mut figure, &last, collector).await;
    figure
}

/// Adds to `figure` what no registration of the rows in `database` can beat: a raw `COPY` of
/// them into empty tables, measured in this run, beside the collector's time.
async fn with_copy_floor(figure: &mut Figure, database: &str, collector: f64) {
    let (rows, copy) = super::register::copy_floor(database).await;
    eprintln!(
        "{}: COPY of the {rows} rows registered: {copy:.2} s",
        figure.id
    );
    figure.ferry = format!(
        "{} (COPY of its {rows} rows alone: {copy:.2} s = {:.2} ×)",
        figure.ferry,
        copy / collector
    );
}

/// Figure a2: the same dataset through one scheduler and two importers (in this process, over
/// real gRPC, PostgreSQL and Redis), from the start of the inventory to the last `import_done`.
async fn through_scheduler_against_garbage_collect(
    data: &Path,
    scratch: &Path,
    spec: &DatasetSpec,
) -> Figure {
    use ferry_proto::scheduler::v1::SetMigrationEnabledRequest;
    use ferry_tests::{Cluster, ClusterOptions};
    let slots: usize = env_size("FERRY_BENCH_IMPORTER_SLOTS", 4);
    let name = format!(
        "inventory to last import_done, scheduler + 2 importers × {slots} slots ({} × {})",
        spec.repositories, spec.tags
    );
    let mut last = String::new();
    let (mut figure, collector) =
        against_garbage_collect("a2", name, ("≤ 1.0 ×", 1.0), data, scratch, async || {
            let cluster = Cluster::start_with(
                format!("file://{}", data.display()),
                ClusterOptions {
                    importers: 2,
                    importer_slots: slots,
                    ..ClusterOptions::default()
                },
            )
            .await;
            last.clone_from(&cluster.metadata_database_url);
            let started = std::time::SystemTime::now();
            let mut client = cluster.client().await;
            ferry_tests::run_inventory(&mut client).await;
            client
                .set_migration_enabled(SetMigrationEnabledRequest {
                    enabled: true,
                    capacity: Some(u32::try_from(2 * slots).unwrap_or(8)),
                })
                .await
                .expect("enable");
            let summary = cluster
                .wait_until_settled(std::time::Duration::from_secs(3600))
                .await;
            assert_eq!(summary.problems.len(), 0, "{:?}", summary.problems);
            last_import_done(&cluster.database_url).await
                - started
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs_f64()
        })
        .await;
    with_copy_floor(&mut figure, &last, collector).await;
    figure
}

/// When the last repository reached `import_done`, in seconds since the Unix epoch: the end of
/// figure a2, read off the rows rather than a poll, so the poll's period adds nothing.
pub async fn last_import_done(database_url: &str) -> f64 {
    let db = sqlx::PgPool::connect(database_url)
        .await
        .expect("scheduler database");
    let at: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(migration_import_done_at))::float8 FROM container_repositories",
    )
    .fetch_one(&db)
    .await
    .expect("last import_done");
    db.close().await;
    at
}
