//! The emulator's buckets and objects, in memory. One lock guards them, held only for the map
//! operation itself (a lookup, an insert with its precondition, a page of a listing), never
//! across a request's delay or its network I/O; hashes are computed before it is taken.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::resource::{self, Hashes, ObjectFields};

/// GCS answers at most this many entries a page, whatever `maxResults` says.
const MAX_PAGE: usize = 1000;

/// Why a request fails, with the status GCS answers it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ApiError {
    /// 400: a malformed or unsupported request.
    BadRequest(String),
    /// 404: no such bucket or object (or not that generation).
    NotFound(String),
    /// 409: the bucket exists, or is not empty.
    Conflict(String),
    /// 304: a read's `if*NotMatch` precondition did not hold.
    NotModified,
    /// 412: a precondition did not hold.
    PreconditionFailed,
    /// 416: a `Range` that starts past the object's end; the object's size.
    RangeNotSatisfiable(u64),
    /// 501: a part of the API the emulator does not implement.
    NotImplemented(String),
}

impl ApiError {
    /// The HTTP status.
    pub(super) fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::NotModified => 304,
            Self::PreconditionFailed => 412,
            Self::RangeNotSatisfiable(_) => 416,
            Self::NotImplemented(_) => 501,
        }
    }

    /// GCS's `reason` and `message`.
    pub(super) fn reason_and_message(&self) -> (&'static str, String) {
        match self {
            Self::BadRequest(message) => ("invalid", message.clone()),
            Self::NotFound(message) => ("notFound", message.clone()),
            Self::Conflict(message) => ("conflict", message.clone()),
            Self::NotModified => ("notModified", String::new()),
            Self::PreconditionFailed => (
                "conditionNotMet",
                "At least one of the pre-conditions you specified did not hold.".to_owned(),
            ),
            Self::RangeNotSatisfiable(_) => (
                "requestedRangeNotSatisfiable",
                "The requested range cannot be satisfied.".to_owned(),
            ),
            Self::NotImplemented(message) => ("notImplemented", message.clone()),
        }
    }
}

fn no_such_object(bucket: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!("No such object: {bucket}/{name}"))
}

fn no_such_bucket(bucket: &str) -> ApiError {
    ApiError::NotFound(format!("The specified bucket does not exist: {bucket}"))
}

/// One generation of an object: its bytes, and everything said about them, rendered once.
#[derive(Debug)]
pub(super) struct StoredObject {
    pub(super) data: Bytes,
    pub(super) generation: i64,
    pub(super) content_type: String,
    pub(super) hashes: Hashes,
    /// The JSON resource, as metadata GETs, listings, uploads and rewrites answer it.
    pub(super) resource: Bytes,
}

/// The metageneration of every object (metadata is never patched here).
pub(super) const METAGENERATION: i64 = 1;

/// A request's generation pin and preconditions (`generation`, `ifGenerationMatch`,
/// `ifGenerationNotMatch`, `ifMetagenerationMatch`, `ifMetagenerationNotMatch`), or their
/// `ifSource*` counterparts on a rewrite's source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conditions {
    /// The generation the request is about: another one is "not found".
    pub(super) generation: Option<i64>,
    pub(super) if_generation_match: Option<i64>,
    pub(super) if_generation_not_match: Option<i64>,
    pub(super) if_metageneration_match: Option<i64>,
    pub(super) if_metageneration_not_match: Option<i64>,
}

impl Conditions {
    /// Checks the conditions against the live object (`None`: there is none). A read of a
    /// missing object is "not found" whatever the preconditions; a read's failed `*NotMatch` is
    /// "not modified"; every other failure is 412. `ifGenerationMatch=0` means "must not exist".
    pub(super) fn check(
        &self,
        live: Option<&StoredObject>,
        read: bool,
        missing: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        let live = live.map(|object| (object.generation, METAGENERATION));
        if let Some(pinned) = self.generation
            && live.is_none_or(|(generation, _)| generation != pinned)
        {
            return Err(missing());
        }
        if read && live.is_none() {
            return Err(missing());
        }
        let generation_matches = |wanted: i64| match live {
            Some((generation, _)) => generation == wanted,
            None => wanted == 0,
        };
        let metageneration_matches =
            |wanted: i64| live.is_some_and(|(_, metageneration)| metageneration == wanted);
        let must_hold = [
            self.if_generation_match.is_none_or(generation_matches),
            self.if_metageneration_match
                .is_none_or(metageneration_matches),
        ];
        if must_hold.contains(&false) {
            return Err(ApiError::PreconditionFailed);
        }
        let must_differ = [
            self.if_generation_not_match
                .is_none_or(|wanted| !generation_matches(wanted)),
            self.if_metageneration_not_match
                .is_none_or(|wanted| !metageneration_matches(wanted)),
        ];
        if must_differ.contains(&false) {
            return Err(if read {
                ApiError::NotModified
            } else {
                ApiError::PreconditionFailed
            });
        }
        Ok(())
    }
}

/// A listing's parameters.
#[derive(Debug, Default, Clone)]
pub(super) struct ListQuery {
    pub(super) prefix: String,
    /// Empty: none.
    pub(super) delimiter: String,
    pub(super) start_offset: Option<String>,
    pub(super) end_offset: Option<String>,
    pub(super) page_token: Option<String>,
    /// 0: the default (and most), 1,000.
    pub(super) max_results: usize,
}

/// A page of a listing.
#[derive(Debug, Default)]
pub(super) struct ListPage {
    pub(super) items: Vec<Arc<StoredObject>>,
    pub(super) prefixes: Vec<String>,
    pub(super) next_page_token: Option<String>,
}

/// The entry a page ended on, which its token resumes after: `o:<name>` or `p:<prefix>` (a
/// prefix token also skips every name under the prefix).
enum Resume {
    Object(String),
    Prefix(String),
}

impl Resume {
    fn token(&self) -> String {
        match self {
            Self::Object(name) => format!("o:{name}"),
            Self::Prefix(prefix) => format!("p:{prefix}"),
        }
    }

    fn parse(token: &str) -> Result<Self, ApiError> {
        match token.split_at_checked(2) {
            Some(("o:", name)) => Ok(Self::Object(name.to_owned())),
            Some(("p:", prefix)) => Ok(Self::Prefix(prefix.to_owned())),
            _ => Err(ApiError::BadRequest(format!("Invalid page token: {token}"))),
        }
    }

    /// Where the listing resumes: the first key after every name this entry covers.
    fn start(&self) -> Option<(Bound<String>, String)> {
        match self {
            Self::Object(name) => Some((Bound::Excluded(name.clone()), name.clone())),
            Self::Prefix(prefix) => {
                successor(prefix).map(|next| (Bound::Included(next.clone()), next))
            }
        }
    }
}

/// The least string greater than every string that starts with `prefix` (`None`: there is
/// none). UTF-8 orders as code points do, so bumping the last character does it.
pub(super) fn successor(prefix: &str) -> Option<String> {
    let mut next = prefix.to_owned();
    while let Some(last) = next.pop() {
        let mut code = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&code) {
            code = 0xE000;
        }
        if let Some(bumped) = char::from_u32(code) {
            next.push(bumped);
            return Some(next);
        }
    }
    None
}

struct Bucket {
    objects: BTreeMap<String, Arc<StoredObject>>,
    resource: Bytes,
}

/// Every bucket and object, and the generation counter.
pub(super) struct Store {
    /// The emulator's base URL (`http://host:port`), for links in resources.
    base: String,
    buckets: RwLock<HashMap<String, Bucket>>,
    /// The last generation given out: every write takes the next, under the write lock, so an
    /// object's generations increase with its writes.
    generation: AtomicI64,
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=222).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Store {
    /// An empty store whose resources link to `base`.
    pub(super) fn new(base: String) -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_micros());
        Self {
            base,
            buckets: RwLock::new(HashMap::new()),
            generation: AtomicI64::new(i64::try_from(micros).unwrap_or(1)),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Bucket>> {
        self.buckets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Bucket>> {
        self.buckets.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates bucket `name`: its resource, or 409 when it exists.
    pub(super) fn create_bucket(&self, name: &str) -> Result<Bytes, ApiError> {
        if !valid_bucket_name(name) {
            return Err(ApiError::BadRequest(format!(
                "Invalid bucket name: '{name}'"
            )));
        }
        let resource = resource::bucket_resource(&self.base, name, &resource::now());
        let mut buckets = self.write();
        if buckets.contains_key(name) {
            return Err(ApiError::Conflict(
                "Your previous request to create the named bucket succeeded and you already \
                 own it."
                    .to_owned(),
            ));
        }
        let bucket = Bucket {
            objects: BTreeMap::new(),
            resource: resource.clone(),
        };
        buckets.insert(name.to_owned(), bucket);
        Ok(resource)
    }

    /// Bucket `name`'s resource.
    pub(super) fn bucket(&self, name: &str) -> Result<Bytes, ApiError> {
        let buckets = self.read();
        let bucket = buckets.get(name).ok_or_else(|| no_such_bucket(name))?;
        Ok(bucket.resource.clone())
    }

    /// Every bucket's resource, by name.
    pub(super) fn buckets(&self) -> Vec<Bytes> {
        let buckets = self.read();
        let mut all: Vec<(&String, &Bucket)> = buckets.iter().collect();
        all.sort_unstable_by_key(|(name, _)| *name);
        all.into_iter().map(|(_, b)| b.resource.clone()).collect()
    }

    /// Deletes bucket `name`, which must be empty.
    pub(super) fn delete_bucket(&self, name: &str) -> Result<(), ApiError> {
        let mut buckets = self.write();
        let bucket = buckets.get(name).ok_or_else(|| no_such_bucket(name))?;
        if !bucket.objects.is_empty() {
            return Err(ApiError::Conflict(
                "The bucket you tried to delete is not empty.".to_owned(),
            ));
        }
        buckets.remove(name);
        Ok(())
    }

    /// The live object `bucket/name`, if `conditions` hold for a read of it.
    pub(super) fn get(
        &self,
        bucket: &str,
        name: &str,
        conditions: &Conditions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let buckets = self.read();
        let objects = &buckets
            .get(bucket)
            .ok_or_else(|| no_such_bucket(bucket))?
            .objects;
        let live = objects.get(name);
        conditions.check(live.map(Arc::as_ref), true, || no_such_object(bucket, name))?;
        live.cloned().ok_or_else(|| no_such_object(bucket, name))
    }

    /// A new generation of `name` in `objects`, with `data` and its hashes; `conditions` are
    /// checked against the live object in the same lock as the write.
    fn write_object(
        &self,
        bucket: &str,
        objects: &mut BTreeMap<String, Arc<StoredObject>>,
        name: &str,
        conditions: &Conditions,
        (data, content_type, hashes): (Bytes, String, Hashes),
    ) -> Result<Arc<StoredObject>, ApiError> {
        let live = objects.get(name).map(Arc::as_ref);
        conditions.check(live, false, || no_such_object(bucket, name))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let resource = resource::object_resource(&ObjectFields {
            base: &self.base,
            bucket,
            name,
            generation,
            size: data.len(),
            content_type: &content_type,
            hashes: &hashes,
            created: &resource::now(),
        });
        let object = Arc::new(StoredObject {
            data,
            generation,
            content_type,
            hashes,
            resource,
        });
        objects.insert(name.to_owned(), Arc::clone(&object));
        Ok(object)
    }

    /// Stores `data` as a new generation of `bucket/name`, if `conditions` hold.
    pub(super) fn put(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: String,
        conditions: &Conditions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        if name.is_empty() {
            return Err(ApiError::BadRequest("An object needs a name.".to_owned()));
        }
        let hashes = Hashes::of(&data);
        let mut buckets = self.write();
        let objects = &mut (buckets.get_mut(bucket)).ok_or_else(|| no_such_bucket(bucket))?;
        let content = (data, content_type, hashes);
        self.write_object(bucket, &mut objects.objects, name, conditions, content)
    }

    /// Copies the live `source` (if `source_conditions` hold) to a new generation of
    /// `destination` (if `conditions` hold), all in one lock: the bytes are shared, not copied.
    pub(super) fn rewrite(
        &self,
        (src_bucket, src_name): (&str, &str),
        source_conditions: &Conditions,
        (dst_bucket, dst_name): (&str, &str),
        conditions: &Conditions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut buckets = self.write();
        let source = {
            let objects = &buckets
                .get(src_bucket)
                .ok_or_else(|| no_such_bucket(src_bucket))?;
            let missing = || no_such_object(src_bucket, src_name);
            let live = objects.objects.get(src_name).ok_or_else(missing)?;
            source_conditions.check(Some(live), false, missing)?;
            Arc::clone(live)
        };
        let objects = (buckets.get_mut(dst_bucket)).ok_or_else(|| no_such_bucket(dst_bucket))?;
        let content = (
            source.data.clone(),
            source.content_type.clone(),
            source.hashes.clone(),
        );
        self.write_object(
            dst_bucket,
            &mut objects.objects,
            dst_name,
            conditions,
            content,
        )
    }

    /// Deletes the live `bucket/name`, if `conditions` hold.
    pub(super) fn delete(
        &self,
        bucket: &str,
        name: &str,
        conditions: &Conditions,
    ) -> Result<(), ApiError> {
        let mut buckets = self.write();
        let objects = &mut (buckets.get_mut(bucket)).ok_or_else(|| no_such_bucket(bucket))?;
        let live = objects.objects.get(name).map(Arc::as_ref);
        let missing = || no_such_object(bucket, name);
        if live.is_none() {
            return Err(missing());
        }
        conditions.check(live, false, missing)?;
        objects.objects.remove(name);
        Ok(())
    }

    /// A page of `bucket`'s objects under `query.prefix`, in name order from the largest of the
    /// prefix, `startOffset` and the page token, up to `endOffset`; with a delimiter, names with
    /// one after the prefix are rolled up into prefixes (skipped past in one step each). Objects
    /// and prefixes count together against `maxResults`, as on GCS; a token is given only when
    /// more entries follow.
    pub(super) fn list(&self, bucket: &str, query: &ListQuery) -> Result<ListPage, ApiError> {
        let limit = match query.max_results {
            0 => MAX_PAGE,
            n => n.min(MAX_PAGE),
        };
        let resume = (query.page_token.as_deref())
            .map(Resume::parse)
            .transpose()?;
        // The first key: the largest of the prefix, the start offset and the token's.
        let mut start = (Bound::Included(query.prefix.clone()), query.prefix.clone());
        let offset = query.start_offset.clone();
        let starts = offset.map(|offset| Some((Bound::Included(offset.clone()), offset)));
        for candidate in starts.into_iter().chain(resume.as_ref().map(Resume::start)) {
            let Some(candidate) = candidate else {
                return Ok(ListPage::default()); // after the last possible name
            };
            let later = candidate.1 > start.1
                || (candidate.1 == start.1 && matches!(candidate.0, Bound::Excluded(_)));
            if later {
                start = candidate;
            }
        }
        let buckets = self.read();
        let objects = &buckets
            .get(bucket)
            .ok_or_else(|| no_such_bucket(bucket))?
            .objects;
        let mut page = ListPage::default();
        let mut last: Option<Resume> = None;
        let mut from = start.0;
        loop {
            let mut skip_to = None;
            for (name, object) in objects.range::<String, _>((from.as_ref(), Bound::Unbounded)) {
                let in_range = name.starts_with(&query.prefix)
                    && (query.end_offset.as_ref()).is_none_or(|end| name < end);
                if !in_range {
                    break;
                }
                if page.items.len() + page.prefixes.len() == limit {
                    page.next_page_token = last.as_ref().map(Resume::token);
                    break;
                }
                let rest = &name[query.prefix.len()..];
                let rolled = (!query.delimiter.is_empty())
                    .then(|| rest.find(&query.delimiter))
                    .flatten();
                let Some(at) = rolled else {
                    page.items.push(Arc::clone(object));
                    last = Some(Resume::Object(name.clone()));
                    continue;
                };
                // Every name under the prefix rolls up into it: seek past them all at once.
                let prefix = &name[..query.prefix.len() + at + query.delimiter.len()];
                page.prefixes.push(prefix.to_owned());
                last = Some(Resume::Prefix(prefix.to_owned()));
                skip_to = successor(prefix);
                break;
            }
            match skip_to {
                Some(next) => from = Bound::Included(next),
                None => break,
            }
        }
        Ok(page)
    }
}
