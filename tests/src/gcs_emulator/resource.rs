//! What the emulator says about objects and buckets: their JSON resources (rendered once, when
//! an object is written), GCS's hashes, and the encodings they use.

use bytes::Bytes;
use crc::{CRC_32_ISCSI, Crc, Table};
use md5::{Digest as _, Md5};

/// CRC32C (Castagnoli), sliced by 16: GCS's checksum.
const CASTAGNOLI: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// The storage class every object and bucket reports.
const STORAGE_CLASS: &str = "STANDARD";

/// An object's hashes as the JSON API reports them: base64 of the big-endian CRC32C, base64 of
/// the MD5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hashes {
    pub(super) crc32c: String,
    pub(super) md5: String,
}

impl Hashes {
    /// The hashes of `data` (computed once per write, never per read).
    pub(super) fn of(data: &[u8]) -> Self {
        Self {
            crc32c: base64(&CASTAGNOLI.checksum(data).to_be_bytes()),
            md5: base64(&Md5::digest(data)),
        }
    }
}

/// Standard base64 with padding, as GCS writes hashes.
pub(super) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `segment` percent-encoded as one path segment (a `/` becomes `%2F`), as in GCS's links.
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Now, as the JSON API writes times (RFC 3339, UTC, milliseconds).
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The fields an object's resource is rendered from.
pub(super) struct ObjectFields<'a> {
    /// The emulator's base URL, for `selfLink` and `mediaLink`.
    pub(super) base: &'a str,
    pub(super) bucket: &'a str,
    pub(super) name: &'a str,
    pub(super) generation: i64,
    pub(super) size: usize,
    pub(super) content_type: &'a str,
    pub(super) hashes: &'a Hashes,
    pub(super) created: &'a str,
}

/// The object's JSON resource (`storage#object`), with every field `gcloud-storage` requires
/// and the ones GCS sends for a plain object; 64-bit numbers are strings, as GCS sends them.
pub(super) fn object_resource(fields: &ObjectFields<'_>) -> Bytes {
    let ObjectFields {
        base,
        bucket,
        name,
        generation,
        size,
        content_type,
        hashes,
        created,
    } = fields;
    let (b, o) = (encode_segment(bucket), encode_segment(name));
    let resource = serde_json::json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{name}/{generation}"),
        "selfLink": format!("{base}/storage/v1/b/{b}/o/{o}"),
        "mediaLink": format!(
            "{base}/download/storage/v1/b/{b}/o/{o}?generation={generation}&alt=media"
        ),
        "name": name,
        "bucket": bucket,
        "generation": generation.to_string(),
        "metageneration": "1",
        "contentType": content_type,
        "storageClass": STORAGE_CLASS,
        "size": size.to_string(),
        "md5Hash": hashes.md5,
        "crc32c": hashes.crc32c,
        "etag": etag(*generation),
        "timeCreated": created,
        "updated": created,
        "timeStorageClassUpdated": created,
    });
    Bytes::from(serde_json::to_vec(&resource).expect("an object resource is JSON"))
}

/// An object generation's entity tag (GCS's is opaque base64 too).
pub(super) fn etag(generation: i64) -> String {
    base64(format!("{generation}/1").as_bytes())
}

/// A bucket's JSON resource (`storage#bucket`), with every field `gcloud-storage` requires.
pub(super) fn bucket_resource(base: &str, name: &str, created: &str) -> Bytes {
    let resource = serde_json::json!({
        "kind": "storage#bucket",
        "id": name,
        "selfLink": format!("{base}/storage/v1/b/{}", encode_segment(name)),
        "projectNumber": "0",
        "name": name,
        "timeCreated": created,
        "updated": created,
        "metageneration": "1",
        "location": "US",
        "locationType": "multi-region",
        "storageClass": STORAGE_CLASS,
        "etag": "CAE=",
    });
    Bytes::from(serde_json::to_vec(&resource).expect("a bucket resource is JSON"))
}

/// GCS's error answer: `{"error": {"code", "message", "errors": [{"domain", "reason",
/// "message"}]}}` (`gcloud-storage` requires `domain` and `reason`).
pub(super) fn error_body(code: u16, reason: &str, message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    });
    Bytes::from(serde_json::to_vec(&body).expect("an error is JSON"))
}

/// A list of already rendered JSON values, comma-separated, appended to `out`.
pub(super) fn push_joined<'a>(out: &mut Vec<u8>, values: impl IntoIterator<Item = &'a [u8]>) {
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(value);
    }
}
