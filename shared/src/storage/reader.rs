//! Streamed reads: an object opened with [`super::BlobStore::open_read`] hands its bytes over
//! chunk by chunk, so serving a multi-GB blob holds one chunk in memory, not the blob.

use std::fmt;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{BoxStream, Stream};

use super::{ObjectMeta, StorageError};

/// A stream of an object's bytes, in order, chunk by chunk. A failure after the first byte (a
/// connection cut, a read error, an object shorter than its size) is an `Err` item, and the
/// stream ends after it: a consumer that meets one aborts what it was doing with the bytes (a
/// response already under way, say), since the stream cannot resume.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// An object opened for reading: its metadata, then its bytes.
///
/// `body` yields exactly `meta.size` bytes, or ends with an `Err` item: a driver whose object
/// turns out shorter or longer than the size it announced reports that as an error rather than
/// hand over bytes that do not match the announced size.
pub struct ObjectReader {
    /// The object's key and size (the size of the bytes `body` yields).
    pub meta: ObjectMeta,
    /// The object's bytes.
    pub body: ByteStream,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// A reader for `meta` whose `body` is checked against `meta.size`: a body that runs past
    /// the size, or ends before it, ends with an [`StorageError::Io`] item (`InvalidData`, or
    /// `UnexpectedEof`). Every item after an error is dropped: the stream ends there.
    pub(crate) fn sized(
        meta: ObjectMeta,
        body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
    ) -> Self {
        let state = Checked {
            body: body.boxed(),
            key: meta.key.clone(),
            remaining: meta.size,
            done: false,
        };
        let body = futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let item = match state.body.next().await {
                Some(Ok(chunk)) => match state.remaining.checked_sub(chunk.len() as u64) {
                    Some(remaining) => {
                        state.remaining = remaining;
                        Ok(chunk)
                    }
                    None => Err(length_error(
                        &state.key,
                        std::io::ErrorKind::InvalidData,
                        "the object is longer than its announced size",
                    )),
                },
                Some(Err(error)) => Err(error),
                None if state.remaining == 0 => return None,
                None => Err(length_error(
                    &state.key,
                    std::io::ErrorKind::UnexpectedEof,
                    &format!("the object ended {} bytes short", state.remaining),
                )),
            };
            state.done = item.is_err();
            Some((item, state))
        });
        Self {
            meta,
            body: body.boxed(),
        }
    }
}

/// The state of a [`ObjectReader::sized`] body.
struct Checked {
    body: ByteStream,
    key: String,
    /// Bytes still to come.
    remaining: u64,
    /// An error has been yielded: nothing more will be.
    done: bool,
}

fn length_error(key: &str, kind: std::io::ErrorKind, message: &str) -> StorageError {
    StorageError::Io {
        key: key.to_owned(),
        source: std::io::Error::new(kind, message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            crc32c: None,
            version: None,
            created: None,
        }
    }

    async fn items(reader: ObjectReader) -> Vec<Result<Bytes, StorageError>> {
        reader.body.collect().await
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, StorageError>> {
        futures::stream::iter(parts.iter().map(|part| Ok(Bytes::from_static(part))))
    }

    #[tokio::test]
    async fn a_body_of_the_announced_size_passes_through() {
        let got = items(ObjectReader::sized(meta(5), chunks(&[b"12", b"345"]))).await;
        let got: Vec<Bytes> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, [&b"12"[..], &b"345"[..]]);
        assert!(
            items(ObjectReader::sized(meta(0), chunks(&[])))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_short_or_long_body_ends_with_an_error() {
        let short = items(ObjectReader::sized(meta(6), chunks(&[b"12", b"345"]))).await;
        assert_eq!(short.len(), 3);
        assert!(
            matches!(&short[2], Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "{:?}",
            short[2]
        );
        let long = items(ObjectReader::sized(meta(4), chunks(&[b"12", b"345", b"6"]))).await;
        assert_eq!(long.len(), 2, "nothing after the error");
        assert!(
            matches!(&long[1], Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData),
            "{:?}",
            long[1]
        );
    }

    #[tokio::test]
    async fn the_stream_ends_after_an_error() {
        let failing = futures::stream::iter([
            Ok(Bytes::from_static(b"1")),
            Err(StorageError::NotFound { key: "k".into() }),
            Ok(Bytes::from_static(b"2")),
        ]);
        let got = items(ObjectReader::sized(meta(2), failing)).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(StorageError::NotFound { .. })));
        let reader = ObjectReader::sized(meta(2), chunks(&[]));
        assert_eq!(
            format!("{reader:?}"),
            r#"ObjectReader { meta: ObjectMeta { key: "k", size: 2, crc32c: None, version: None, created: None }, .. }"#
        );
    }
}
