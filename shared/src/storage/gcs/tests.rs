//! What fake-gcs-server cannot show (see `tests/tests/storage_conformance.rs` for the rest): the
//! driver against a scripted HTTP server that answers each request as a test says.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::storage::{RetryPolicy, Retrying};

type Respond = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// A server on 127.0.0.1 that answers `respond(method, path?query)` and records each request.
struct Scripted {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(respond: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&requests);
        let respond: Arc<Respond> = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, Arc::clone(&seen), Arc::clone(&respond)));
            }
        });
        Self { endpoint, requests }
    }

    fn store(&self) -> GcsStore {
        GcsStore::with_endpoint("bkt", "pre", &self.endpoint).unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// One request, one answer, then the connection closes.
async fn serve(
    mut socket: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    respond: Arc<Respond>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = socket.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = (head.lines())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = socket.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    seen.lock().unwrap().push(format!("{method} {target}"));
    let (status, body) = respond(method, target);
    let answer = format!(
        "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn object(name: &str, generation: u64, crc32c: &str) -> (u16, String) {
    let body = serde_json::json!({
        "kind": "storage#object", "id": format!("bkt/{name}"), "name": name, "bucket": "bkt",
        "selfLink": "", "mediaLink": "", "etag": "e", "size": "5",
        "generation": generation.to_string(), "metageneration": "1", "crc32c": crc32c,
    });
    (200, body.to_string())
}

fn error(status: u16) -> (u16, String) {
    let body = serde_json::json!({"error": {"code": status, "message": format!("scripted {status}"),
        "errors": [{"domain": "global", "reason": "scripted", "message": "scripted"}]}});
    (status, body.to_string())
}

fn rewritten(done: bool, token: &str, generation: u64, crc32c: &str) -> (u16, String) {
    let mut body = serde_json::json!({
        "kind": "storage#rewriteResponse", "totalBytesRewritten": "5", "objectSize": "5",
        "done": done, "rewriteToken": token,
    });
    if done {
        body["resource"] = serde_json::from_str(&object("pre/dst", generation, crc32c).1).unwrap();
    }
    (200, body.to_string())
}

/// Answers with the status the key names (`pre/404` → 404), 500 when it names none.
fn status_the_key_names(target: &str) -> (u16, String) {
    let code = target.split("/o/pre%2F").nth(1).unwrap_or("0")[..3]
        .parse()
        .unwrap_or(500);
    error(code)
}

#[tokio::test]
async fn http_statuses_map_to_not_found_transient_and_permanent_errors() {
    let server = Scripted::start(|_, target| status_the_key_names(target)).await;
    let store = server.store();
    assert_eq!(store.stat("404").await.unwrap(), None);
    assert!(matches!(
        store.read("404", 10).await,
        Err(StorageError::NotFound { .. })
    ));
    for (key, transient) in [("429", true), ("503", true), ("408", true), ("403", false)] {
        let err = store.stat(key).await.unwrap_err();
        let status = key.parse().ok();
        assert!(
            matches!(&err, StorageError::Backend { status: s, .. } if *s == status),
            "{key}: {err}"
        );
        assert_eq!(err.is_transient(), transient, "{key}: {err}");
    }
    assert_eq!(store.throttled(), 1);
}

#[tokio::test]
async fn retrying_wrapper_retries_throttling_until_success() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let server = Scripted::start(move |_, _| {
        if counter.fetch_add(1, Ordering::Relaxed) < 2 {
            error(429)
        } else {
            object("pre/k", 1, "AAAAAA==")
        }
    })
    .await;
    let store = Arc::new(server.store());
    let policy = RetryPolicy {
        max_attempts: 4,
        max_throttled_attempts: 4,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    let retrying = Retrying::new(Arc::clone(&store) as Arc<dyn BlobStore>, policy);
    let meta = retrying.stat("k").await.unwrap().unwrap();
    assert_eq!((meta.key.as_str(), meta.size), ("k", 5));
    assert_eq!((store.throttled(), retrying.retries()), (2, 2));
}

#[tokio::test]
async fn no_answer_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    drop(listener); // Nothing listens there now.
    let store = GcsStore::with_endpoint("bkt", "", &endpoint).unwrap();
    let err = store.stat("k").await.unwrap_err();
    assert!(
        matches!(err, StorageError::Backend { status: None, .. }),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_copy_is_one_rewrite_that_refuses_an_existing_destination() {
    let server = Scripted::start(|_, _| error(412)).await;
    let store = server.store();
    let outcome = store.copy("src", "dst", None).await.unwrap();
    assert_eq!(outcome, CopyOutcome::AlreadyPresent);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("POST /storage/v1/b/bkt/o/pre%2Fsrc/rewriteTo/b/bkt/o/pre%2Fdst?"),
        "{requests:?}"
    );
    assert!(requests[0].contains("ifGenerationMatch=0"), "{requests:?}");
    assert_eq!(store.requests(crate::storage::Operation::Copy), (0, 1));
}

#[tokio::test]
async fn a_copy_of_a_missing_source_is_not_found() {
    let server = Scripted::start(|_, _| error(404)).await;
    let err = server.store().copy("src", "dst", None).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { key } if key == "src"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rewrite_taking_several_calls_passes_the_token_on() {
    let server = Scripted::start(|_, target| {
        if target.contains("rewriteToken=t%2B1") {
            rewritten(true, "", 9, "AAAAAA==")
        } else {
            rewritten(false, "t+1", 0, "")
        }
    })
    .await;
    let outcome = server.store().copy("src", "dst", None).await.unwrap();
    assert_eq!(outcome, CopyOutcome::Copied(5));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.starts_with("POST")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn urls_name_a_bucket_and_an_optional_prefix() {
    let store = GcsStore::from_url("gs://my-bucket/some/prefix/").unwrap();
    assert_eq!(store.url(), "gs://my-bucket/some/prefix");
    assert_eq!(store.prefix, "some/prefix/");
    let store = GcsStore::with_endpoint("my-bucket", "", "127.0.0.1:1").unwrap();
    assert_eq!(store.url(), "gs://my-bucket");
    assert_eq!(
        store.endpoint,
        Endpoint::Anonymous("http://127.0.0.1:1".into())
    );
    for bad in [
        "gs://",
        "gs:///x",
        "gs://Upper",
        "gs://b/../x",
        "gs://bkt/a//b",
        "gs://bkt/p?x=1",
        "s3://bkt",
    ] {
        let err = GcsStore::from_url(bad).unwrap_err();
        assert!(matches!(err, StorageError::InvalidUrl { .. }), "{bad}");
    }
    let opened = crate::storage::open("gs://bkt/p/q").unwrap();
    assert_eq!(opened.url(), "gs://bkt/p/q");
}

#[tokio::test]
async fn hostile_keys_are_refused_before_any_request() {
    let store = GcsStore::with_endpoint("bkt", "", "127.0.0.1:1").unwrap();
    for key in [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "a//b",
        "",
        "a/",
        "a\\b",
    ] {
        let err = store.read(key, 10).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey(_)), "{key}: {err}");
    }
    let err = store.list("a/../", &ListOptions::default()).await;
    assert!(matches!(err, Err(StorageError::InvalidKey(_))));
}

#[test]
fn emulator_hosts_are_read_like_google_sdks_do() {
    assert_eq!(emulator_base("localhost:4443"), "http://localhost:4443");
    assert_eq!(emulator_base("http://h:1/"), "http://h:1");
    assert_eq!(emulator_base("https://h:1"), "https://h:1");
}

#[tokio::test]
async fn a_read_is_one_request_and_stops_at_its_limit() {
    let server = Scripted::start(|method, target| match method {
        "GET" if target.contains("alt=media") => (200, "0123456789".to_owned()),
        _ => error(400),
    })
    .await;
    let store = server.store();
    assert_eq!(store.read("a/link", 10).await.unwrap(), &b"0123456789"[..]);
    let err = store.read("a/link", 9).await.unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit: 9, .. }),
        "{err}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "one request a read: {requests:?}");
    assert!(
        requests.iter().all(|r| r.contains("alt=media")),
        "{requests:?}"
    );
    assert_eq!(store.requests(crate::storage::Operation::Read), (1, 0));
}

/// Every item of an opened object's stream.
async fn stream_items(reader: crate::storage::ObjectReader) -> Vec<Result<Bytes, StorageError>> {
    reader.body.collect().await
}

#[tokio::test]
async fn an_open_is_one_request_whose_headers_give_the_size() {
    let server = Scripted::start(|method, target| match method {
        "GET" if target.contains("alt=media") => (200, "0123456789".to_owned()),
        _ => error(400),
    })
    .await;
    let store = server.store();
    let reader = store.open_read("a/link").await.unwrap().unwrap();
    assert_eq!((reader.meta.key.as_str(), reader.meta.size), ("a/link", 10));
    let items = stream_items(reader).await;
    let bytes: Vec<u8> = items.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(bytes, b"0123456789");
    assert_eq!(
        server.requests(),
        ["GET /storage/v1/b/bkt/o/pre%2Fa%2Flink?alt=media"]
    );
    assert_eq!(store.requests(crate::storage::Operation::OpenRead), (1, 0));
}

#[tokio::test]
async fn an_open_maps_statuses_like_the_other_calls() {
    let server = Scripted::start(|_, target| status_the_key_names(target)).await;
    let store = server.store();
    assert!(store.open_read("404").await.unwrap().is_none());
    for (key, transient) in [("429", true), ("503", true), ("403", false)] {
        let err = store.open_read(key).await.unwrap_err();
        let status = key.parse().ok();
        assert!(
            matches!(&err, StorageError::Backend { status: s, message, .. }
                if *s == status && message == &format!("scripted {key}")),
            "{key}: {err}"
        );
        assert_eq!(err.is_transient(), transient, "{key}: {err}");
    }
    assert_eq!(store.throttled(), 1);
    let err = store.open_read("a/../b").await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey(_)), "{err}");
    assert_eq!(server.requests().len(), 4, "{:?}", server.requests());
}

/// A server that answers every request with `answer`, verbatim, then closes the connection.
async fn raw_server(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head).await;
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    endpoint
}

#[tokio::test]
async fn a_connection_cut_mid_stream_ends_the_stream_with_a_transient_error() {
    let endpoint = raw_server("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
    let store = GcsStore::with_endpoint("bkt", "", &endpoint).unwrap();
    let reader = store.open_read("k").await.unwrap().unwrap();
    assert_eq!(reader.meta.size, 100);
    let items = stream_items(reader).await;
    let (last, bytes) = items.split_last().unwrap();
    let received: usize = bytes.iter().map(|b| b.as_ref().unwrap().len()).sum();
    assert!(received <= 10, "{received}");
    assert!(
        matches!(last, Err(StorageError::Backend { status: None, .. })),
        "{last:?}"
    );
    assert!(last.as_ref().unwrap_err().is_transient());
}

#[tokio::test]
async fn an_answer_without_a_length_is_refused() {
    let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let store = GcsStore::with_endpoint("bkt", "", &raw_server(answer).await).unwrap();
    let err = store.open_read("k").await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::InvalidData),
        "{err}"
    );
}

#[tokio::test]
async fn retrying_wrapper_retries_an_open_until_it_succeeds() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let server = Scripted::start(move |_, _| {
        if counter.fetch_add(1, Ordering::Relaxed) < 2 {
            error(503)
        } else {
            (200, "abc".to_owned())
        }
    })
    .await;
    let policy = RetryPolicy {
        max_attempts: 4,
        max_throttled_attempts: 4,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    let retrying = Retrying::new(Arc::new(server.store()), policy);
    let reader = retrying.open_read("k").await.unwrap().unwrap();
    assert_eq!(reader.meta.size, 3);
    assert_eq!(stream_items(reader).await.len(), 1);
    assert_eq!((calls.load(Ordering::Relaxed), retrying.retries()), (3, 2));
}
