//! Who may call Ferry, and how much: mTLS between the scheduler and the importers (certificate
//! files reloaded when renewed), bearer tokens with a read and an admin scope, and the admission
//! limits (request size, timeout, concurrency). Every refusal is checked for its gRPC code.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_proto::importer::v1::GetCapacityRequest;
use ferry_proto::importer::v1::importer_client::ImporterClient;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, GetRepositoryRequest, MigrationSummary, SetMigrationEnabledRequest,
};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};
use ferry_shared::security::SecurityArgs;
use ferry_shared::security::tls::{ReloadingTls, TlsFiles};
use ferry_tests::certs::{TestCa, replace_file};
use ferry_tests::{Cluster, ClusterOptions, SampleRegistry, wait_until};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

fn tls_args(files: &TlsFiles, tokens: Option<&Path>, token: Option<&str>) -> SecurityArgs {
    SecurityArgs {
        tls_cert_file: files.cert.clone(),
        tls_key_file: files.key.clone(),
        tls_ca_file: files.ca.clone(),
        tls_reload_secs: "1".into(),
        auth_tokens_file: tokens.map(Path::to_owned),
        auth_token: token.map(str::to_owned),
        ..SecurityArgs::default()
    }
}

fn connector(files: Option<TlsFiles>, token: Option<&str>) -> Connector {
    let tls = files.map(|f| ReloadingTls::fixed(f.load().expect("client TLS files")));
    Connector::new(tls, token)
}

async fn client(
    url: &str,
    files: Option<TlsFiles>,
    token: Option<&str>,
) -> Result<SchedulerClient<Connection>, tonic::transport::Error> {
    connector(files, token)
        .connect(url, ChannelOptions::default())
        .await
        .map(SchedulerClient::new)
}

async fn summary(client: &mut SchedulerClient<Connection>) -> Result<MigrationSummary, Code> {
    client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.code())
}

async fn enable(client: &mut SchedulerClient<Connection>) -> Result<(), tonic::Status> {
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(4),
        })
        .await
        .map(drop)
}

fn done(summary: &MigrationSummary) -> u64 {
    summary
        .states
        .iter()
        .find(|s| s.state == "import_done")
        .map_or(0, |s| s.count)
}

/// Migrates the whole sample and checks every repository ended `import_done`.
async fn migrate_everything(cluster: &Cluster, client: &mut SchedulerClient<Connection>) {
    cluster.inventory().await;
    enable(client).await.expect("enable");
    let settled = cluster.wait_until_settled(Duration::from_secs(120)).await;
    assert!(settled.total > 0);
    assert_eq!(done(&settled), settled.total, "{settled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_carries_a_whole_migration_and_refuses_callers_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "ferry");
    let with = |issued: ferry_tests::certs::IssuedFiles| TlsFiles {
        cert: Some(issued.cert),
        key: Some(issued.key),
        ca: Some(ca.ca_file.clone()),
    };
    let scheduler = with(ca.issue(dir.path(), "scheduler", &["localhost", "127.0.0.1"]));
    // The importers' certificate names only the DNS name the scheduler finds them under (a
    // headless Service's, in Kubernetes), not their addresses.
    let importer = with(ca.issue(dir.path(), "importer", &["localhost"]));
    let operator = with(ca.issue(dir.path(), "operator", &["operator"]));
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start_with(
        format!("file://{}", sample.root().display()),
        ClusterOptions {
            scheduler_security: tls_args(&scheduler, None, None),
            importer_security: tls_args(&importer, None, None),
            client: connector(Some(operator.clone()), None),
            importers_by_name: Some("localhost".into()),
            ..ClusterOptions::default()
        },
    )
    .await;
    // StartImport (scheduler → importer) and the completion callback (importer → scheduler) both
    // cross mTLS: the migration finishing proves both directions.
    let mut admin = cluster.client().await;
    migrate_everything(&cluster, &mut admin).await;

    // The importers' registry endpoint serves the same certificate: skopeo pulls over TLS,
    // trusting the CA, and plain HTTP gets no answer.
    let registry = format!("localhost:{}", cluster.importer_registry_ports[0]);
    let trust = dir.path().join("registry-ca");
    std::fs::create_dir_all(&trust).expect("cert dir");
    std::fs::copy(&ca.ca_file, trust.join("ca.crt")).expect("CA");
    let repository = &sample.repositories()[0];
    let path = repository["path"].as_str().expect("path");
    let (tag, digest) = repository["tags"]
        .as_object()
        .and_then(|tags| tags.iter().next())
        .expect("a tag");
    let inspected = std::process::Command::new("skopeo")
        .args(["inspect", "--format", "{{.Digest}}", "--cert-dir"])
        .arg(&trust)
        .arg(format!("docker://{registry}/{path}:{tag}"))
        .output()
        .expect("skopeo");
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&inspected.stdout).trim(),
        digest.as_str().expect("digest")
    );
    let plain_http =
        ferry_tests::http_request(cluster.importer_registry_ports[0], "GET", "/v2/", "*/*").await;
    assert!(
        plain_http
            .as_ref()
            .is_none_or(|answer| answer.status != 200),
        "{plain_http:?}"
    );

    // Plain text to a TLS port: no answer.
    let mut plain = client(&cluster.scheduler_url, None, None)
        .await
        .expect("TCP connects lazily");
    assert!(summary(&mut plain).await.is_err());
    // TLS without a client certificate: the handshake passes, the call does not.
    let anonymous = TlsFiles {
        cert: None,
        key: None,
        ca: Some(ca.ca_file.clone()),
    };
    let mut anonymous = client(&cluster.scheduler_url, Some(anonymous), None)
        .await
        .expect("TLS without a certificate");
    assert_eq!(
        summary(&mut anonymous).await.err(),
        Some(Code::Unauthenticated)
    );
    // A certificate from another CA is refused at the handshake.
    let stranger_ca = TestCa::new(dir.path(), "stranger");
    let stranger = TlsFiles {
        ca: Some(ca.ca_file.clone()),
        ..with(stranger_ca.issue(dir.path(), "stranger", &["stranger"]))
    };
    let refused = match client(&cluster.scheduler_url, Some(stranger), None).await {
        Err(error) => format!("{error:?}"),
        Ok(mut c) => format!("{:?}", summary(&mut c).await),
    };
    assert!(
        !refused.starts_with("Ok"),
        "a certificate from an unknown CA must be refused: {refused}"
    );
    // The importers refuse a caller without a certificate too: StartImport and the rest are the
    // scheduler's (or an admin token's) to call.
    let importer_channel = connector(
        Some(TlsFiles {
            cert: None,
            key: None,
            ca: Some(ca.ca_file.clone()),
        }),
        None,
    )
    .lazy(
        &cluster.importer_urls[0].replace("127.0.0.1", "localhost"),
        ChannelOptions::default(),
    )
    .expect("channel");
    let refused = ImporterClient::new(importer_channel.clone())
        .get_capacity(GetCapacityRequest {})
        .await
        .expect_err("no certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut health = HealthClient::new(importer_channel);
    // Health checks answer without credentials (probes and load balancers).
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over TLS without a certificate");
    assert_eq!(serving.into_inner().status, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_serve_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = TestCa::new(dir.path(), "old");
    let new_ca = TestCa::new(dir.path(), "new");
    let served = old_ca.issue(dir.path(), "scheduler", &["127.0.0.1"]);
    let trust = |ca: &TestCa| TlsFiles {
        cert: None,
        key: None,
        ca: Some(ca.ca_file.clone()),
    };
    // The scheduler trusts both CAs for client certificates; its own certificate rotates.
    let bundle = dir.path().join("bundle.pem");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&old_ca.ca_file).expect("old CA"),
        std::fs::read_to_string(&new_ca.ca_file).expect("new CA")
    );
    std::fs::write(&bundle, both).expect("bundle");
    let server_files = TlsFiles {
        cert: Some(served.cert.clone()),
        key: Some(served.key.clone()),
        ca: Some(bundle),
    };
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("read {READ}\n")).expect("tokens");
    let sample = tempfile::tempdir().expect("bucket");
    let cluster = Cluster::start_with(
        format!("file://{}", sample.path().display()),
        ClusterOptions {
            importers: 1,
            scheduler_security: tls_args(&server_files, Some(&tokens), None),
            client: connector(Some(trust(&old_ca)), Some(READ)),
            ..ClusterOptions::default()
        },
    )
    .await;
    let mut before = cluster.client().await;
    summary(&mut before).await.expect("old certificate serves");

    // cert-manager renews: the files change in place (the key first, then the certificate).
    let (cert, key) = new_ca.issue_pem(&["127.0.0.1"]);
    replace_file(&served.key, &key);
    replace_file(&served.cert, &cert);
    wait_until(
        "the renewed certificate to be served",
        Duration::from_secs(15),
        async || {
            let mut renewed = client(&cluster.scheduler_url, Some(trust(&new_ca)), Some(READ))
                .await
                .map_err(|e| format!("{e:?}"))?;
            summary(&mut renewed)
                .await
                .map_err(|code| format!("{code:?}"))
        },
    )
    .await;
    // New connections that trust only the old CA now fail; the process never restarted.
    let stale = client(&cluster.scheduler_url, Some(trust(&old_ca)), Some(READ)).await;
    let refused = match stale {
        Err(_) => true,
        Ok(mut c) => summary(&mut c).await.is_err(),
    };
    assert!(refused, "the old certificate is still served");

    // The token file reloads too: a token added later is accepted without a restart.
    const LATER: &str = "later-read-token-0123456789";
    let mut later = client(&cluster.scheduler_url, Some(trust(&new_ca)), Some(LATER))
        .await
        .expect("connect");
    assert_eq!(summary(&mut later).await.err(), Some(Code::Unauthenticated));
    replace_file(&tokens, &format!("read {READ}\nread {LATER}\n"));
    wait_until(
        "the new token to be accepted",
        Duration::from_secs(15),
        async || summary(&mut later).await,
    )
    .await;
}

/// Runs `ferryctl ARGS` against `url` with `token`; returns (success, stderr).
fn ferryctl(url: &str, token: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(ferry_tests::processes::bin_dir().join("ferryctl"))
        .args(args)
        .env("FERRY_SCHEDULER_URL", url)
        .env("FERRY_AUTH_TOKEN", token)
        .output()
        .expect("ferryctl runs (make test builds it)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grant_read_or_admin_and_every_other_caller_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# operators\nadmin {ADMIN}\nread {READ} # dashboards\n"),
    )
    .expect("tokens");
    // Both services check tokens; each presents the admin token to the other.
    let args = SecurityArgs {
        auth_tokens_file: Some(tokens.clone()),
        auth_token: Some(ADMIN.into()),
        ..SecurityArgs::default()
    };
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start_with(
        format!("file://{}", sample.root().display()),
        ClusterOptions {
            scheduler_security: args.clone(),
            importer_security: args,
            client: connector(None, Some(ADMIN)),
            ..ClusterOptions::default()
        },
    )
    .await;
    let url = &cluster.scheduler_url;

    // No token, a wrong token, a malformed header: UNAUTHENTICATED.
    let mut none = client(url, None, None).await.expect("connect");
    assert_eq!(summary(&mut none).await.err(), Some(Code::Unauthenticated));
    let mut wrong = client(url, None, Some("not-a-token-0123456789"))
        .await
        .expect("connect");
    assert_eq!(summary(&mut wrong).await.err(), Some(Code::Unauthenticated));
    let mut request = tonic::Request::new(GetMigrationSummaryRequest {});
    request.metadata_mut().insert(
        "authorization",
        "Basic YWRtaW46YWRtaW4=".parse().expect("header"),
    );
    let malformed = SchedulerClient::new(
        Connector::default()
            .lazy(url, ChannelOptions::default())
            .expect("channel"),
    )
    .get_migration_summary(request)
    .await
    .expect_err("Basic credentials are not a bearer token");
    assert_eq!(malformed.code(), Code::Unauthenticated);

    // The read scope reads, and is denied what changes state.
    let mut reader = client(url, None, Some(READ)).await.expect("connect");
    summary(&mut reader).await.expect("read scope reads");
    let denied = enable(&mut reader).await.expect_err("read cannot enable");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{denied:?}");

    // Health checks need nothing.
    let mut health = HealthClient::new(
        Connector::default()
            .lazy(url, ChannelOptions::default())
            .expect("channel"),
    );
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");

    // The admin scope migrates everything: the importers accept the scheduler's token for
    // StartImport and the scheduler accepts theirs for the completion callback.
    let mut admin = cluster.client().await;
    migrate_everything(&cluster, &mut admin).await;

    // ferryctl presents FERRY_AUTH_TOKEN: read commands work with read, changes need admin.
    let (ok, stderr) = ferryctl(url, READ, &["status"]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = ferryctl(url, READ, &["pause"]);
    assert!(!ok && stderr.contains("needs the admin scope"), "{stderr}");
    let (ok, stderr) = ferryctl(url, "bogus-token-0123456789", &["status"]);
    assert!(!ok && stderr.contains("token is not accepted"), "{stderr}");
    let (ok, stderr) = ferryctl(url, ADMIN, &["pause"]);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limits_refuse_with_the_right_codes() {
    let bucket = tempfile::tempdir().expect("bucket");
    let cluster = Cluster::start_with(
        format!("file://{}", bucket.path().display()),
        ClusterOptions {
            importers: 1,
            scheduler_security: SecurityArgs {
                request_timeout_secs: "4".into(),
                max_concurrent_requests: "2".into(),
                max_request_bytes: "1024".into(),
                ..SecurityArgs::default()
            },
            ..ClusterOptions::default()
        },
    )
    .await;
    let url = cluster.scheduler_url.clone();
    let get = |path: String| {
        let url = url.clone();
        async move {
            let mut client = client(&url, None, None).await.expect("connect");
            client
                .get_repository(GetRepositoryRequest { path })
                .await
                .map(drop)
        }
    };

    // A request over the size limit: RESOURCE_EXHAUSTED, naming the limit.
    let big = get("a/".repeat(1000)).await.expect_err("too large");
    assert_eq!(big.code(), Code::ResourceExhausted, "{big:?}");
    assert!(big.message().contains("1024 bytes"), "{big:?}");
    let small = get("group/project/app".into()).await.expect_err("unknown");
    assert_eq!(small.code(), Code::NotFound, "{small:?}");

    // Hold the repositories table so that calls reading it hang.
    let db = sqlx::PgPool::connect(&cluster.database_url)
        .await
        .expect("scheduler db");
    let mut blocker = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE container_repositories IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");

    // A call longer than the timeout: DEADLINE_EXCEEDED after about 4 s.
    let started = Instant::now();
    let slow = get("group/project/app".into()).await.expect_err("hangs");
    assert_eq!(slow.code(), Code::DeadlineExceeded, "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // Two calls hang and fill the limit; the third is shed at once, while health still answers.
    // The two are admitted once both wait for the lock, and the third comes before they time out.
    let first = tokio::spawn(get("group/project/one".into()));
    let second = tokio::spawn(get("group/project/two".into()));
    wait_until(
        "two calls waiting for the lock",
        Duration::from_secs(3),
        async || {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks \
             WHERE relation = 'container_repositories'::regclass AND NOT granted",
            )
            .fetch_one(&db)
            .await
            .expect("pg_locks");
            if waiting >= 2 { Ok(()) } else { Err(waiting) }
        },
    )
    .await;
    let started = Instant::now();
    let shed = get("group/project/three".into()).await.expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("limit of 2 calls"), "{shed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed, not queued until a slot frees"
    );
    let mut health = HealthClient::new(
        Connector::default()
            .lazy(&url, ChannelOptions::default())
            .expect("channel"),
    );
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is never shed");
    for hung in [first, second] {
        let status = hung.await.expect("task").expect_err("timed out");
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }
    blocker.rollback().await.expect("unlock");
    // Capacity returns once the hung calls end.
    let after = get("group/project/app".into()).await.expect_err("unknown");
    assert_eq!(after.code(), Code::NotFound);
}
