//! Listing: flat listings pass GCS's page token through; delimited ones page by start offset.

use gcloud_storage::http::objects::list::ListObjectsRequest;

use super::{Connection, GcsStore, MAX_PAGE};
use crate::storage::{ListPage, ObjectMeta, StorageError};

/// A listed object's size, CRC32C, generation and creation time (a prefix has none).
type Listed = (u64, Option<String>, i64, Option<std::time::SystemTime>);

impl GcsStore {
    pub(super) async fn list_flat(
        &self,
        connection: &Connection,
        prefix: &str,
        name_prefix: String,
        limit: usize,
        page_token: Option<String>,
    ) -> Result<ListPage, StorageError> {
        let request = ListObjectsRequest {
            bucket: self.bucket.clone(),
            prefix: Some(name_prefix).filter(|p| !p.is_empty()),
            max_results: Some(limit.min(MAX_PAGE) as i32),
            page_token,
            ..Default::default()
        };
        let response = connection
            .storage
            .list_objects(&request)
            .await
            .map_err(|error| self.error(prefix, error))?;
        Ok(ListPage {
            objects: (response.items.iter().flatten())
                .filter_map(|object| self.meta_of(object))
                .collect(),
            prefixes: Vec::new(),
            next_page_token: response.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    pub(super) async fn list_delimited(
        &self,
        connection: &Connection,
        prefix: &str,
        name_prefix: String,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<ListPage, StorageError> {
        // The token is the key of the last entry returned; resume just after it. Everything
        // below a prefix token `a/` sorts before `a0`, so the listing restarts there.
        let after = page_token.map(|token| format!("{}{token}", self.prefix));
        let start_offset = after.as_ref().map(|after| match after.strip_suffix('/') {
            Some(dir) => format!("{dir}0"),
            None => after.clone(),
        });
        let mut server_token = None;
        let asked = limit.saturating_add(1).min(MAX_PAGE);
        loop {
            let request = ListObjectsRequest {
                bucket: self.bucket.clone(),
                prefix: Some(name_prefix.clone()).filter(|p| !p.is_empty()),
                delimiter: Some("/".to_owned()),
                // One more than asked: the token's own object may come back first.
                max_results: Some(asked as i32),
                page_token: server_token.take(),
                start_offset: start_offset.clone(),
                ..Default::default()
            };
            let response = connection
                .storage
                .list_objects(&request)
                .await
                .map_err(|error| self.error(prefix, error))?;
            let items = response.items.unwrap_or_default();
            let prefixes = response.prefixes.unwrap_or_default();
            let more = response.next_page_token.filter(|t| !t.is_empty());
            // With more to come, which names are surely complete depends on how the server
            // pages. GCS counts objects and prefixes together against `maxResults`, in name
            // order: everything up to the page's last entry is complete. fake-gcs-server pages
            // objects only and returns every later prefix at once (more entries than asked):
            // only names up to the smaller of the two kinds' last are. Taking the smaller on GCS
            // would drop the prefixes after a page's last object, and a page holding only
            // prefixes beyond the token's own object would lose them for good.
            let paged_together = items.len() + prefixes.len() <= asked;
            let cutoff = more.as_ref().and_then(|_| {
                let last_item = items.iter().map(|o| o.name.as_str()).max();
                let last_prefix = prefixes.iter().map(String::as_str).max();
                let lasts = last_item.into_iter().chain(last_prefix);
                let complete = if paged_together {
                    lasts.max()
                } else {
                    lasts.min()
                };
                complete.map(str::to_owned)
            });
            let mut entries: Vec<(String, Option<Listed>)> = (items.iter())
                .filter(|object| !object.name.ends_with('/'))
                .map(|object| {
                    let size = u64::try_from(object.size).unwrap_or(0);
                    (
                        object.name.clone(),
                        Some((
                            size,
                            object.crc32c.clone(),
                            object.generation,
                            object.time_created.map(std::time::SystemTime::from),
                        )),
                    )
                })
                .chain(prefixes.into_iter().map(|prefix| (prefix, None)))
                .filter(|(name, _)| {
                    after.as_ref().is_none_or(|after| name > after)
                        && cutoff.as_ref().is_none_or(|cutoff| name <= cutoff)
                })
                .collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|a, b| a.0 == b.0);
            if entries.is_empty()
                && let Some(token) = more
            {
                server_token = Some(token);
                continue;
            }
            let truncated = entries.len() > limit || more.is_some();
            entries.truncate(limit);
            let mut page = ListPage::default();
            if truncated {
                page.next_page_token = (entries.last())
                    .and_then(|(name, _)| self.key_of(name))
                    .map(str::to_owned);
            }
            for (name, size) in entries {
                let Some(key) = self.key_of(&name) else {
                    continue;
                };
                match size {
                    Some((size, crc32c, generation, created)) => page.objects.push(ObjectMeta {
                        key: key.to_owned(),
                        size,
                        crc32c,
                        version: Some(generation.to_string()),
                        created,
                    }),
                    None => page.prefixes.push(key.to_owned()),
                }
            }
            return Ok(page);
        }
    }
}
