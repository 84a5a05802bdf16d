//! Figure i: pull throughput of Ferry's registry endpoint on the new code path, against Debian's
//! `docker-registry` (distribution 2.8, read-only) serving the same images from the same
//! directory, at 16 concurrent pulls.
//!
//! The dataset (`FERRY_BENCH_PULL_REPOSITORIES` = 256 repositories × `FERRY_BENCH_TAGS` = 5
//! tags, 4 KiB layers) gives the manifests; its layers are too small for a byte rate, so a
//! repository `bench/big/app` beside it holds `FERRY_BENCH_PULL_BLOBS` = 64 layers of
//! `FERRY_BENCH_PULL_BLOB_MIB` = 8 MiB, 8 to an image. The one-shot import migrates all of it
//! into a fresh metadata database (every repository `import_complete`, blobs linked under
//! `gitlab/`), then a release `ferry-importer` serves it with `FERRY_REGISTRY_ADDR` and
//! `docker-registry` serves the old layout of the same directory, on the local disk. Both get
//! the same work from the same `FERRY_BENCH_PULL_CLIENTS` = 16 kept-alive connections:
//! `FERRY_BENCH_PULL_MANIFESTS` = 20,000 manifest GETs (every tag, and every index's children by
//! digest, in turn), then every big blob GET `FERRY_BENCH_PULL_BLOB_PASSES` = 4 times, bodies
//! read to the end. Every answer is checked: `200`, `Docker-Content-Digest`, a manifest's
//! sha256, a blob's byte count, and for Ferry `ferry-code-path: new`; an untimed pass first
//! hashes every blob from both. The servers take turns going first from one run to the next.

mod load;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::processes::free_port;
use ferry_tests::{LayoutWriter, env_size, fresh_database, http_request, wait_until};

use super::{Figure, median, release_bin, runs, timed};
use load::{Checks, Load, Target};

/// The repository of big layers, beside the dataset's `bench/gNN/…` ones.
const BIG: &str = "bench/big/app";
/// Layers per image of [`BIG`].
const LAYERS_PER_IMAGE: usize = 8;

/// A server this figure started: killed when dropped, checked for life after each load.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    /// The `ferry-code-path` every answer must carry.
    code_path: Option<&'static str>,
}

impl Server {
    /// Runs `command` (its output going to `log`) and waits until `/v2/` answers on `port`.
    async fn start(
        name: &'static str,
        mut command: Command,
        port: u16,
        log: PathBuf,
        code_path: Option<&'static str>,
    ) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut server = Self {
            name,
            child,
            port,
            log,
            code_path,
        };
        wait_until(
            &format!("{name} to answer on port {port}"),
            Duration::from_secs(60),
            async || {
                server.check_alive();
                match http_request(port, "GET", "/v2/", "*/*").await {
                    Some(response) if response.status == 200 => Ok(()),
                    other => Err(other.map(|r| r.status)),
                }
            },
        )
        .await;
        server
    }

    /// Panics, with its log, if the process has exited.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!(
                "i: {} exited ({status}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// CPU-seconds the process has used (user and system), from `/proc`.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command name, which ends with the last ')': utime and stime are
        // the 12th and 13th, in clock ticks (100 a second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
    }

    /// `requests` pulls of `targets` by the figure's clients, then a check that it still runs;
    /// returns the load and the CPU-seconds the server process spent on it.
    async fn load(
        &mut self,
        targets: &Arc<Vec<Target>>,
        requests: usize,
        hash: bool,
    ) -> (Load, f64) {
        let checks = Checks {
            code_path: self.code_path,
            hash_blobs: hash,
        };
        let clients = env_size("FERRY_BENCH_PULL_CLIENTS", 16);
        let cpu = self.cpu_seconds();
        let load = load::drive(self.name, self.port, targets, requests, clients, checks).await;
        self.check_alive();
        (load, self.cpu_seconds() - cpu)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // registry-serve.sh execs docker-registry: the child is the server itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes that do not compress, from `state`.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Writes [`BIG`]: `blobs` layers of `mib` MiB, `LAYERS_PER_IMAGE` to a tagged image, linked as a
/// push links them; returns the layers' pull targets.
fn big_images(root: &Path, blobs: usize, mib: usize) -> Vec<Target> {
    let writer = LayoutWriter::new(root);
    let mut state = 0x1_5EED_u64;
    let mut targets = Vec::new();
    for (image, start) in (0..blobs).step_by(LAYERS_PER_IMAGE).enumerate() {
        let count = LAYERS_PER_IMAGE.min(blobs - start);
        let layers: Vec<(String, usize)> = (0..count)
            .map(|_| {
                let digest = writer.blob(&noise(&mut state, mib << 20));
                writer.link_layer(BIG, &digest);
                (digest, mib << 20)
            })
            .collect();
        let config = format!(r#"{{"architecture":"amd64","os":"linux","image":{image}}}"#);
        let config_digest = writer.blob(config.as_bytes());
        writer.link_layer(BIG, &config_digest);
        let refs: Vec<(&str, usize)> = layers.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        let manifest = writer.manifest((&config_digest, config.len()), &refs);
        writer.link_revision(BIG, &manifest);
        writer.tag_link(BIG, &format!("b{image}"), &manifest);
        targets.extend(layers.into_iter().map(|(digest, size)| Target {
            path: format!("/v2/{BIG}/blobs/{digest}"),
            digest,
            size: Some(size as u64),
        }));
    }
    targets
}

/// Every tag of every repository under `root` as a manifest pull, and every child of a tagged
/// index by its digest, read off the old layout as docker-registry reads it.
fn manifest_targets(root: &Path) -> Vec<Target> {
    let v2 = root.join("docker/registry/v2");
    let mut repositories = Vec::new();
    let mut pending = vec![v2.join("repositories")];
    while let Some(dir) = pending.pop() {
        if dir.join("_manifests").is_dir() {
            repositories.push(dir);
            continue;
        }
        for entry in std::fs::read_dir(&dir).expect("repositories tree") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    repositories.sort();
    let mut targets = Vec::new();
    for repository in repositories {
        let name = repository
            .strip_prefix(v2.join("repositories"))
            .expect("under repositories")
            .to_string_lossy()
            .into_owned();
        let mut tags: Vec<String> = std::fs::read_dir(repository.join("_manifests/tags"))
            .expect("tags")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
            .collect();
        tags.sort();
        for tag in tags {
            let link = repository.join(format!("_manifests/tags/{tag}/current/link"));
            let digest = std::fs::read_to_string(link).expect("tag link");
            let hex = &digest["sha256:".len()..];
            let payload = std::fs::read(v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])))
                .expect("manifest");
            let manifest: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
            for child in manifest["manifests"].as_array().into_iter().flatten() {
                let child = child["digest"].as_str().expect("child digest");
                targets.push(Target {
                    path: format!("/v2/{name}/manifests/{child}"),
                    digest: child.to_owned(),
                    size: None,
                });
            }
            targets.push(Target {
                path: format!("/v2/{name}/manifests/{tag}"),
                digest,
                size: None,
            });
        }
    }
    targets
}

/// Ferry's endpoint over the migrated `data` (a `ferry-importer` serving, as deployed).
async fn start_ferry(data: &Path, database: &str, scratch: &Path) -> Server {
    let port = free_port();
    let mut command = Command::new(release_bin("ferry-importer"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
        command.env_remove(key);
    }
    command
        .env("FERRY_LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("FERRY_REGISTRY_ADDR", format!("127.0.0.1:{port}"))
        .env("FERRY_METRICS_ADDR", "off")
        // Nothing is imported through it: no scheduler is needed.
        .env("FERRY_SCHEDULER_URL", "http://127.0.0.1:1")
        .env("FERRY_STORAGE_URL", format!("file://{}", data.display()))
        .env("FERRY_METADATA_DATABASE_URL", database)
        .env("FERRY_LOG", "warn")
        // As the images and the chart run it (see importer/Dockerfile).
        .env("MALLOC_ARENA_MAX", "2");
    Server::start(
        "ferry",
        command,
        port,
        scratch.join("ferry.log"),
        Some("new"),
    )
    .await
}

/// `docker-registry` serving the old layout of `data`, read-only.
async fn start_docker_registry(data: &Path, scratch: &Path) -> Server {
    let port = free_port();
    let mut command = Command::new("bash");
    command
        .arg(ferry_tests::workspace_root().join("scripts/registry-serve.sh"))
        .arg(data)
        .arg(port.to_string())
        .arg("--read-only");
    let log = scratch.join("docker-registry.log");
    Server::start("docker-registry", command, port, log, None).await
}

/// One server's rates in one run, and the CPU its own process spent (PostgreSQL's aside).
#[derive(Debug, Clone, Copy)]
struct Rates {
    manifests: f64,
    mib: f64,
    /// CPU milliseconds per manifest answered.
    manifest_cpu_ms: f64,
    /// CPU seconds per GiB of blobs served.
    blob_cpu_s_per_gib: f64,
}

/// Figure i: migrates the data, starts both servers, and pulls the same work from each `runs()`
/// times; the row compares the medians.
pub async fn pull_throughput() -> Figure {
    let repositories = env_size("FERRY_BENCH_PULL_REPOSITORIES", 256);
    let tags = env_size("FERRY_BENCH_TAGS", 5);
    let blobs = env_size("FERRY_BENCH_PULL_BLOBS", 64_usize).max(1);
    let blob_mib = env_size("FERRY_BENCH_PULL_BLOB_MIB", 8_usize).max(1);
    let manifest_requests = env_size("FERRY_BENCH_PULL_MANIFESTS", 20_000);
    let blob_passes = env_size("FERRY_BENCH_PULL_BLOB_PASSES", 4_usize).max(1);
    let clients = env_size("FERRY_BENCH_PULL_CLIENTS", 16);
    let data = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let spec = DatasetSpec {
        repositories,
        tags,
        ..DatasetSpec::default()
    };
    let stats = generate(data.path(), &spec);
    let blob_targets = Arc::new(big_images(data.path(), blobs, blob_mib));
    let manifest_targets = Arc::new(manifest_targets(data.path()));
    eprintln!(
        "i: dataset {repositories} × {tags} ({} manifests) and {blobs} × {blob_mib} MiB layers \
         written in {:.1} s; {} manifest pulls in turn",
        stats.manifests,
        started.elapsed().as_secs_f64(),
        manifest_targets.len(),
    );

    let database = fresh_database("bench_i").await;
    let migration = timed(
        Command::new(release_bin("ferry-importer"))
            .args(["import", "--all"])
            .env(
                "FERRY_STORAGE_URL",
                format!("file://{}", data.path().display()),
            )
            .env("FERRY_METADATA_DATABASE_URL", &database)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null()),
    );
    eprintln!("i: migrated in {:.1} s", migration.as_secs_f64());
    let mut servers = [
        start_ferry(data.path(), &database, scratch.path()).await,
        start_docker_registry(data.path(), scratch.path()).await,
    ];

    // Untimed: every target once from each, blobs hashed; warms both caches the same way.
    for server in &mut servers {
        server
            .load(&manifest_targets, manifest_targets.len(), true)
            .await;
        server.load(&blob_targets, blob_targets.len(), true).await;
    }
    let mut rates: [Vec<Rates>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs() {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let server = &mut servers[i];
            let (manifests, manifest_cpu) = server
                .load(&manifest_targets, manifest_requests, false)
                .await;
            let (blob_load, blob_cpu) = server
                .load(&blob_targets, blob_targets.len() * blob_passes, false)
                .await;
            rates[i].push(Rates {
                manifests: manifests.per_second(),
                mib: blob_load.mib_per_second(),
                manifest_cpu_ms: 1000.0 * manifest_cpu / manifests.requests as f64,
                blob_cpu_s_per_gib: blob_cpu / (blob_load.bytes as f64 / f64::from(1 << 30)),
            });
        }
        for (name, rates) in [("ferry", rates[0][run]), ("docker-registry", rates[1][run])] {
            eprintln!(
                "i: run {}: {name}: {:.0} manifests/s ({:.2} ms of its CPU each), {:.0} MiB/s \
                 ({:.2} CPU-s a GiB)",
                run + 1,
                rates.manifests,
                rates.manifest_cpu_ms,
                rates.mib,
                rates.blob_cpu_s_per_gib
            );
        }
    }
    drop(servers);
    // (manifests/s, MiB/s), the medians of each.
    let medians = |rates: &[Rates]| {
        (
            median(rates.iter().map(|r| r.manifests).collect()),
            median(rates.iter().map(|r| r.mib).collect()),
        )
    };
    let (ferry, theirs) = (medians(&rates[0]), medians(&rates[1]));
    let by_manifests = ferry.0 / theirs.0;
    let by_bytes = ferry.1 / theirs.1;
    let lower = by_manifests.min(by_bytes);
    Figure {
        id: "i",
        name: format!(
            "pull throughput, new code path, local disk, {clients} concurrent pulls \
             ({repositories} repositories × {tags} tags; {blobs} × {blob_mib} MiB layers)"
        ),
        ferry: format!("{:.0} manifests/s, {:.0} MiB/s", ferry.0, ferry.1),
        reference: format!(
            "docker-registry 2.8 {:.0} manifests/s, {:.0} MiB/s",
            theirs.0, theirs.1
        ),
        ratio: format!("{lower:.2} × (manifests {by_manifests:.2} ×, blobs {by_bytes:.2} ×)"),
        target: "≥ 1.0 ×",
        met: lower >= 1.0,
    }
}
