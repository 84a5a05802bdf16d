//! The HTTP side: which JSON API call a request is, its delay, and its answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::Shared;
use super::resource::{self, error_body, push_joined};
use super::stats::RequestKind;
use super::store::{ApiError, Conditions, ListQuery, METAGENERATION, StoredObject};

/// Every answer's body: whole, from memory.
pub(super) type Body = Full<Bytes>;

/// A bucket and an object name.
type ObjectName = (String, String);

/// The call a request makes, its names percent-decoded.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    ListBuckets,
    InsertBucket,
    GetBucket(String),
    DeleteBucket(String),
    List(String),
    Metadata(ObjectName),
    Media(ObjectName),
    Delete(ObjectName),
    /// `rewriteTo` (or `copyTo`, which answers the resource alone).
    Rewrite {
        source: ObjectName,
        destination: ObjectName,
        copy: bool,
    },
    Upload(String),
    /// The emulator's own: `GET /_emulator/stats`, `POST /_emulator/reset`,
    /// `POST /_emulator/latency?ms=N`. Neither delayed nor counted.
    Stats,
    ResetStats,
    SetLatency,
    Unknown,
}

impl Route {
    fn parse(method: &Method, path: &str, query: &Query) -> Self {
        let segments: Vec<String> = (path.trim_start_matches('/').split('/'))
            .map(|segment| decode(segment, false))
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let object = |bucket: &str, name: &str| (bucket.to_owned(), name.to_owned());
        let (get, post, delete) = (
            method == Method::GET,
            method == Method::POST,
            method == Method::DELETE,
        );
        match segments.as_slice() {
            ["_emulator", "stats"] if get => Self::Stats,
            ["_emulator", "reset"] if post => Self::ResetStats,
            ["_emulator", "latency"] if post => Self::SetLatency,
            ["storage", "v1", "b"] if get => Self::ListBuckets,
            ["storage", "v1", "b"] if post => Self::InsertBucket,
            ["storage", "v1", "b", b] if get => Self::GetBucket((*b).to_owned()),
            ["storage", "v1", "b", b] if delete => Self::DeleteBucket((*b).to_owned()),
            ["storage", "v1", "b", b, "o"] if get => Self::List((*b).to_owned()),
            ["storage", "v1", "b", b, "o", o] if get && query.get("alt") == Some("media") => {
                Self::Media(object(b, o))
            }
            ["storage", "v1", "b", b, "o", o] if get => Self::Metadata(object(b, o)),
            ["download", "storage", "v1", "b", b, "o", o] if get => Self::Media(object(b, o)),
            ["storage", "v1", "b", b, "o", o] if delete => Self::Delete(object(b, o)),
            ["storage", "v1", "b", b, "o", o, verb, "b", b2, "o", o2]
                if post && (*verb == "rewriteTo" || *verb == "copyTo") =>
            {
                Self::Rewrite {
                    source: object(b, o),
                    destination: object(b2, o2),
                    copy: *verb == "copyTo",
                }
            }
            ["upload", "storage", "v1", "b", b, "o"] if post => Self::Upload((*b).to_owned()),
            _ => Self::Unknown,
        }
    }

    fn kind(&self) -> RequestKind {
        match self {
            Self::ListBuckets | Self::InsertBucket | Self::GetBucket(_) | Self::DeleteBucket(_) => {
                RequestKind::Bucket
            }
            Self::List(_) => RequestKind::List,
            Self::Metadata(_) => RequestKind::Metadata,
            Self::Media(_) => RequestKind::Media,
            Self::Delete(_) => RequestKind::Delete,
            Self::Rewrite { .. } => RequestKind::Rewrite,
            Self::Upload(_) => RequestKind::Upload,
            Self::Stats | Self::ResetStats | Self::SetLatency | Self::Unknown => RequestKind::Other,
        }
    }
}

/// Percent-decodes `text` (and `+` to a space when `form`, as in a query string).
fn decode(text: &str, form: bool) -> String {
    if !text.contains(['%', '+']) {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(match bytes[i] {
            b'+' if form => b' ',
            byte => byte,
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's query parameters, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        let pairs = (raw.split('&').filter(|pair| !pair.is_empty())).map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name, true), decode(value, true))
        });
        Self(pairs.collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        (self.0.iter()).find_map(|(n, value)| (n == name).then_some(value.as_str()))
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let invalid = || ApiError::BadRequest(format!("Invalid value for {name}: {value}"));
        value.parse().map(Some).map_err(|_| invalid())
    }

    /// The generation pin and preconditions: a rewrite's source's (`sourceGeneration`,
    /// `ifSource*`), or the object's (`generation` when `pinned`, `if*`).
    fn conditions(&self, source: bool, pinned: bool) -> Result<Conditions, ApiError> {
        let name = |condition: &str| match source {
            true => format!("ifSource{condition}"),
            false => format!("if{condition}"),
        };
        let generation = match (source, pinned) {
            (true, _) => self.int("sourceGeneration")?,
            (false, true) => self.int("generation")?,
            (false, false) => None,
        };
        Ok(Conditions {
            generation,
            if_generation_match: self.int(&name("GenerationMatch"))?,
            if_generation_not_match: self.int(&name("GenerationNotMatch"))?,
            if_metageneration_match: self.int(&name("MetagenerationMatch"))?,
            if_metageneration_not_match: self.int(&name("MetagenerationNotMatch"))?,
        })
    }

    /// Refuses a parameter that would change the answer in a way the emulator does not model.
    fn refuse(&self, name: &str, allowed: &[&str]) -> Result<(), ApiError> {
        match self.get(name) {
            Some(value) if !allowed.contains(&value) => Err(ApiError::NotImplemented(format!(
                "ferry-gcs-emulator does not implement {name}={value}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Answers one request: counted and in flight from its arrival, then (its body read) the delay,
/// then the operation and the answer. The emulator's own paths answer at once, uncounted.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let route = Route::parse(request.method(), request.uri().path(), &query);
    match route {
        Route::Stats => return Ok(stats(&shared)),
        Route::ResetStats => {
            shared.stats.reset();
            return Ok(stats(&shared));
        }
        Route::SetLatency => {
            let ms = (query.get("ms").and_then(|ms| ms.parse::<f64>().ok()))
                .filter(|ms| ms.is_finite() && (0.0..=3_600_000.0).contains(ms));
            let Some(ms) = ms else {
                let error = ApiError::BadRequest("Expected ms=<milliseconds>".to_owned());
                return Ok(error_response(&error));
            };
            shared.set_latency(Duration::from_secs_f64(ms / 1000.0));
            return Ok(stats(&shared));
        }
        _ => {}
    }
    let _in_flight = shared.stats.begin(route.kind());
    let (parts, body) = request.into_parts();
    let body = if parts.method == Method::POST || parts.method == Method::PUT {
        match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Ok(error_response(&ApiError::BadRequest("Body cut".to_owned()))),
        }
    } else {
        Bytes::new()
    };
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Ok(answer(&shared, route, &query, &parts.headers, body)
        .unwrap_or_else(|error| error_response(&error)))
}

fn answer(
    shared: &Shared,
    route: Route,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let store = &shared.store;
    match route {
        Route::ListBuckets => {
            let mut out = br#"{"kind":"storage#buckets","items":["#.to_vec();
            let buckets = store.buckets();
            push_joined(&mut out, buckets.iter().map(|b| &b[..]));
            out.extend_from_slice(b"]}");
            Ok(json(out))
        }
        Route::InsertBucket => {
            let request: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|err| ApiError::BadRequest(format!("Invalid bucket resource: {err}")))?;
            let name = (request.get("name").and_then(|name| name.as_str()))
                .ok_or_else(|| ApiError::BadRequest("Required: the bucket's name".to_owned()))?;
            Ok(json(store.create_bucket(name)?))
        }
        Route::GetBucket(bucket) => Ok(json(store.bucket(&bucket)?)),
        Route::DeleteBucket(bucket) => {
            store.delete_bucket(&bucket)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Route::List(bucket) => list(shared, &bucket, query),
        Route::Metadata((bucket, name)) => {
            let object = store.get(&bucket, &name, &query.conditions(false, true)?)?;
            Ok(json(object.resource.clone()))
        }
        Route::Media((bucket, name)) => {
            let object = store.get(&bucket, &name, &query.conditions(false, true)?)?;
            media(&object, headers)
        }
        Route::Delete((bucket, name)) => {
            store.delete(&bucket, &name, &query.conditions(false, true)?)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Route::Rewrite {
            source,
            destination,
            copy,
        } => {
            let object = store.rewrite(
                (&source.0, &source.1),
                &query.conditions(true, false)?,
                (&destination.0, &destination.1),
                &query.conditions(false, false)?,
            )?;
            if copy {
                return Ok(json(object.resource.clone()));
            }
            // Done in one call, whatever `maxBytesRewrittenPerCall` says: no rewrite token.
            let size = object.data.len();
            let mut out = format!(
                r#"{{"kind":"storage#rewriteResponse","totalBytesRewritten":"{size}","objectSize":"{size}","done":true,"resource":"#
            )
            .into_bytes();
            out.extend_from_slice(&object.resource);
            out.push(b'}');
            Ok(json(out))
        }
        Route::Upload(bucket) => {
            query.refuse("uploadType", &["media"])?;
            let name = (query.get("name"))
                .ok_or_else(|| ApiError::BadRequest("Required: name".to_owned()))?;
            let content_type = (headers.get(header::CONTENT_TYPE))
                .and_then(|value| value.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let conditions = query.conditions(false, false)?;
            let object = store.put(&bucket, name, body, content_type, &conditions)?;
            Ok(json(object.resource.clone()))
        }
        Route::Stats | Route::ResetStats | Route::SetLatency | Route::Unknown => Err(
            ApiError::NotImplemented("ferry-gcs-emulator does not implement this call".into()),
        ),
    }
}

fn list(shared: &Shared, bucket: &str, query: &Query) -> Result<Response<Body>, ApiError> {
    query.refuse("versions", &["false"])?;
    query.refuse("includeTrailingDelimiter", &["false"])?;
    if query.get("matchGlob").is_some() {
        return Err(ApiError::NotImplemented(
            "ferry-gcs-emulator does not implement matchGlob".to_owned(),
        ));
    }
    let max_results = query.int("maxResults")?.unwrap_or(0);
    let request = ListQuery {
        prefix: query.get("prefix").unwrap_or("").to_owned(),
        delimiter: query.get("delimiter").unwrap_or("").to_owned(),
        start_offset: query.get("startOffset").map(str::to_owned),
        end_offset: query.get("endOffset").map(str::to_owned),
        page_token: query.get("pageToken").map(str::to_owned),
        max_results: usize::try_from(max_results).unwrap_or(0),
    };
    let page = shared.store.list(bucket, &request)?;
    let resources: usize = page.items.iter().map(|item| item.resource.len() + 1).sum();
    let mut out = Vec::with_capacity(resources + 64 * page.prefixes.len() + 64);
    out.extend_from_slice(br#"{"kind":"storage#objects""#);
    let string = |value: &str| serde_json::to_vec(value).expect("a string is JSON");
    if let Some(token) = &page.next_page_token {
        out.extend_from_slice(br#","nextPageToken":"#);
        out.extend_from_slice(&string(token));
    }
    if !page.prefixes.is_empty() {
        out.extend_from_slice(br#","prefixes":["#);
        let prefixes: Vec<Vec<u8>> = page.prefixes.iter().map(|p| string(p)).collect();
        push_joined(&mut out, prefixes.iter().map(Vec::as_slice));
        out.push(b']');
    }
    if !page.items.is_empty() {
        out.extend_from_slice(br#","items":["#);
        push_joined(&mut out, page.items.iter().map(|item| &item.resource[..]));
        out.push(b']');
    }
    out.push(b'}');
    Ok(json(out))
}

/// The bytes `Range: bytes=...` asks for, inclusive (`None`: all of them, also for a range this
/// does not parse, as HTTP allows).
fn byte_range(range: &str, size: usize) -> Result<Option<(usize, usize)>, ApiError> {
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let Some((first, last)) = spec.split_once('-').filter(|_| !spec.contains(',')) else {
        return Ok(None);
    };
    let unsatisfiable = ApiError::RangeNotSatisfiable(size as u64);
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let Ok(suffix) = last.parse::<usize>() else {
            return Ok(None);
        };
        if suffix == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let Ok(start) = first.parse::<usize>() else {
            return Ok(None);
        };
        let end = match last {
            "" => usize::MAX,
            last => match last.parse::<usize>() {
                Ok(end) if end >= start => end,
                _ => return Ok(None),
            },
        };
        if start >= size {
            return Err(unsatisfiable);
        }
        (start, end.min(size - 1))
    };
    Ok(Some((start, end)))
}

fn media(object: &StoredObject, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let size = object.data.len();
    let range = (headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok()))
    .map(|range| byte_range(range, size))
    .transpose()?
    .flatten();
    let (status, body) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, object.data.slice(start..=end)),
        None => (StatusCode::OK, object.data.clone()),
    };
    let hash = format!("crc32c={},md5={}", object.hashes.crc32c, object.hashes.md5);
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, &object.content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::ETAG,
            format!("\"{}\"", resource::etag(object.generation)),
        )
        .header("x-goog-hash", hash)
        .header("x-goog-generation", object.generation)
        .header("x-goog-metageneration", METAGENERATION)
        .header("x-goog-stored-content-length", size)
        .header("x-goog-stored-content-encoding", "identity");
    if let Some((start, end)) = range {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    Ok(builder.body(Full::new(body)).expect("valid media headers"))
}

fn json(body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    if status == StatusCode::NOT_MODIFIED {
        return empty(status);
    }
    let (reason, message) = error.reason_and_message();
    let mut response = json(error_body(status.as_u16(), reason, &message));
    *response.status_mut() = status;
    if let ApiError::RangeNotSatisfiable(size) = error {
        let range = HeaderValue::from_str(&format!("bytes */{size}")).expect("a header value");
        response.headers_mut().insert(header::CONTENT_RANGE, range);
    }
    response
}

fn stats(shared: &Shared) -> Response<Body> {
    let mut stats = shared.stats.snapshot().to_json();
    stats["latency_ms"] = (shared.latency().as_secs_f64() * 1000.0).into();
    json(serde_json::to_vec(&stats).expect("stats are JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_names_and_tell_kinds_apart() {
        let get = |path: &str, query: &str| Route::parse(&Method::GET, path, &Query::parse(query));
        let name = |o: &str| ("bk".to_owned(), o.to_owned());
        assert_eq!(
            get("/storage/v1/b/bk/o", "prefix=a%2F"),
            Route::List("bk".into())
        );
        assert_eq!(
            get("/storage/v1/b/bk/o/a%2Fb+c", ""),
            Route::Metadata(name("a/b+c"))
        );
        assert_eq!(
            get("/storage/v1/b/bk/o/a%2Fb", "alt=media"),
            Route::Media(name("a/b"))
        );
        assert_eq!(
            get("/download/storage/v1/b/bk/o/x", "alt=media"),
            Route::Media(name("x"))
        );
        assert_eq!(get("/storage/v1/b/bk/o/a/b", ""), Route::Unknown);
        let rewrite = Route::parse(
            &Method::POST,
            "/storage/v1/b/bk/o/a%2Fb/rewriteTo/b/bk/o/c%2Fd",
            &Query::default(),
        );
        assert_eq!(rewrite.kind(), RequestKind::Rewrite);
        let query = Query::parse("name=a%2Fb+c&ifGenerationMatch=0&&x");
        assert_eq!(query.get("name"), Some("a/b c"));
        assert_eq!(query.int("ifGenerationMatch"), Ok(Some(0)));
        assert_eq!(query.get("x"), Some(""));
        assert!(query.int("name").is_err());
    }

    #[test]
    fn ranges_follow_http() {
        assert_eq!(byte_range("bytes=0-4", 10), Ok(Some((0, 4))));
        assert_eq!(byte_range("bytes=6-", 10), Ok(Some((6, 9))));
        assert_eq!(byte_range("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(byte_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(byte_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(byte_range("bytes=5-2", 10), Ok(None));
        assert_eq!(byte_range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(byte_range("items=0-1", 10), Ok(None));
        let unsatisfiable = Err(ApiError::RangeNotSatisfiable(10));
        assert_eq!(byte_range("bytes=10-", 10), unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 10), unsatisfiable);
    }
}
