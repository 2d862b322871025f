//! A kept file as an HTTP answer: `GET` and `HEAD`, one `Range` (`206`, or `416` when nothing of it
//! is in the file), a strong `ETag` from the content (it never changes: the name is its hash),
//! `Content-Length`, the origin's media type, and `Cache-Control: public, max-age=31536000,
//! immutable`. Served from the gateway's own origin, a file must never become a script there:
//! `X-Content-Type-Options: nosniff` always, and anything that is not an image, audio or video goes
//! as an attachment under `Content-Security-Policy: sandbox`.

use std::ops::Range;

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, IF_NONE_MATCH, RANGE, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::store::{BlobId, BlobStore};
use crate::body::{BoxError, FileBody, ResponseBody};

/// Why a file could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    NotFound,
    /// The file is this long and the range asked for starts past it.
    #[error("the range asked for is not in the file ({0} bytes)")]
    Unsatisfiable(u64),
}

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// The answer to a `GET` (or, with `head`, a `HEAD`) of kept file `id` with the request's
/// `headers` (`Range`, `If-None-Match`).
pub async fn respond(
    store: &BlobStore,
    id: &BlobId,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, FileError> {
    let len = store.len(id).await.ok_or(FileError::NotFound)?;
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", id.hex())).map_err(|_| FileError::NotFound)?;
    let mut response = Response::new(ResponseBody::empty());
    let out = response.headers_mut();
    out.insert(ETAG, etag.clone());
    out.insert(CACHE_CONTROL, IMMUTABLE);
    out.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(id.kind().content_type()),
    );
    if !id.kind().is_media() {
        out.insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
        out.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    if matches_tag(headers, &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    // `If-Range` (RFC 9110 §13.1.5): the range only for the very representation it names, by a
    // strong tag; a weak tag, another tag or a date (these files carry no Last-Modified) gets the
    // whole file.
    let range_holds = headers
        .get(http::header::IF_RANGE)
        .is_none_or(|tag| tag.as_bytes() == etag.as_bytes());
    let range = match headers
        .get(RANGE)
        .filter(|_| range_holds)
        .and_then(|v| v.to_str().ok())
    {
        Some(asked) => match one_range(asked, len) {
            Asked::Range(range) => Some(range),
            Asked::Unsatisfiable => return Err(FileError::Unsatisfiable(len)),
            // Several ranges, or a form this does not read: the whole file (RFC 9110 §14.2 lets a
            // server ignore `Range`).
            Asked::Ignored => None,
        },
        None => None,
    };
    let (status, bytes) = match &range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.end - range.start),
        None => (StatusCode::OK, len),
    };
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(CONTENT_LENGTH, HeaderValue::from(bytes));
    if let Some(range) = &range {
        let value = format!("bytes {}-{}/{len}", range.start, range.end - 1);
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert(CONTENT_RANGE, value);
        }
    }
    if head || bytes == 0 {
        return Ok(response);
    }
    let stream = store.read(id, range).await.ok_or(FileError::NotFound)?;
    let stream = futures_util::StreamExt::map(stream, |chunk| chunk.map_err(BoxError::from));
    *response.body_mut() = ResponseBody::File(FileBody {
        stream: Box::pin(stream),
        remaining: bytes,
    });
    Ok(response)
}

fn matches_tag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|tag| {
            let tag = tag.trim_ascii();
            let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
            tag == b"*" || tag == etag.as_bytes()
        })
    })
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Range(Range<u64>),
    Unsatisfiable,
    Ignored,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`), clamped to the file.
fn one_range(value: &str, len: u64) -> Asked {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Asked::Ignored;
    };
    if spec.contains(',') {
        return Asked::Ignored;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Asked::Ignored;
    };
    let number = |text: &str| -> Option<u64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (start.trim(), end.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => Asked::Unsatisfiable,
            Some(n) if len > 0 => Asked::Range(len.saturating_sub(n)..len),
            Some(_) => Asked::Unsatisfiable,
            None => Asked::Ignored,
        },
        (start, "") => match number(start) {
            Some(start) if start < len => Asked::Range(start..len),
            Some(_) => Asked::Unsatisfiable,
            None => Asked::Ignored,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start > end => Asked::Ignored,
            (Some(start), Some(_)) if start >= len => Asked::Unsatisfiable,
            (Some(start), Some(end)) => Asked::Range(start..end.min(len - 1) + 1),
            _ => Asked::Ignored,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::store::MediaKind;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    #[test]
    fn ranges_are_read_as_rfc_9110_writes_them() {
        assert_eq!(one_range("bytes=0-9", 100), Asked::Range(0..10));
        assert_eq!(one_range("bytes=90-", 100), Asked::Range(90..100));
        assert_eq!(one_range("bytes=-10", 100), Asked::Range(90..100));
        assert_eq!(one_range("bytes=-1000", 100), Asked::Range(0..100));
        assert_eq!(one_range("bytes=50-1000", 100), Asked::Range(50..100));
        assert_eq!(one_range("bytes=100-", 100), Asked::Unsatisfiable);
        assert_eq!(one_range("bytes=100-200", 100), Asked::Unsatisfiable);
        assert_eq!(one_range("bytes=-0", 100), Asked::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=9-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes",
        ] {
            assert_eq!(one_range(ignored, 100), Asked::Ignored, "{ignored}");
        }
    }

    async fn store_with(
        data: &'static [u8],
        kind: MediaKind,
    ) -> (BlobStore, BlobId, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "mjgate-serve-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let store = BlobStore::local(&dir, 1 << 20, 1 << 20).unwrap();
        let body = futures_util::stream::iter(vec![Ok::<Bytes, String>(Bytes::from_static(data))]);
        let (id, _) = store.put(body, kind).await.unwrap();
        (store, id, dir)
    }

    async fn body_of(response: Response<ResponseBody>) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    fn with(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn if_range_honours_the_range_only_for_its_own_strong_tag() {
        let (store, id, dir) = store_with(b"0123456789", MediaKind::Png).await;
        let tag = format!("\"{}\"", id.hex());
        for (if_range, status) in [
            (tag.clone(), StatusCode::PARTIAL_CONTENT),
            (format!("W/{tag}"), StatusCode::OK),
            ("\"other\"".to_owned(), StatusCode::OK),
            ("Wed, 21 Oct 2015 07:28:00 GMT".to_owned(), StatusCode::OK),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(RANGE, HeaderValue::from_static("bytes=0-3"));
            headers.insert(http::header::IF_RANGE, if_range.parse().unwrap());
            let response = respond(&store, &id, false, &headers).await.unwrap();
            assert_eq!(response.status(), status, "{if_range}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_file_is_served_whole_by_range_and_head_with_a_strong_immutable_tag() {
        let (store, id, dir) = store_with(b"0123456789", MediaKind::Png).await;
        let whole = respond(&store, &id, false, &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(whole.status(), 200);
        let etag = whole.headers()[ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", id.hex()));
        assert_eq!(whole.headers()[CONTENT_TYPE], "image/png");
        assert_eq!(whole.headers()[CONTENT_LENGTH], "10");
        assert_eq!(
            whole.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(whole.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            whole.headers().get(CONTENT_DISPOSITION).is_none(),
            "an image renders"
        );
        assert_eq!(body_of(whole).await, b"0123456789");

        let part = respond(&store, &id, false, &with(RANGE, "bytes=2-4"))
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.headers()[CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(part.headers()[CONTENT_LENGTH], "3");
        assert_eq!(body_of(part).await, b"234");

        let head = respond(&store, &id, true, &HeaderMap::new()).await.unwrap();
        assert_eq!(head.headers()[CONTENT_LENGTH], "10");
        assert!(body_of(head).await.is_empty());

        let cached = respond(&store, &id, false, &with(IF_NONE_MATCH, &etag))
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        assert_eq!(
            respond(&store, &id, false, &with(RANGE, "bytes=10-"))
                .await
                .err(),
            Some(FileError::Unsatisfiable(10))
        );
        let missing = BlobId::new([9; 32], MediaKind::Png);
        assert_eq!(
            respond(&store, &missing, false, &HeaderMap::new())
                .await
                .err(),
            Some(FileError::NotFound)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn what_is_not_an_image_audio_or_video_is_an_attachment_under_a_sandbox() {
        let (store, id, dir) = store_with(b"<script>alert(1)</script>", MediaKind::Binary).await;
        let answer = respond(&store, &id, false, &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(answer.headers()[CONTENT_DISPOSITION], "attachment");
        assert_eq!(
            answer.headers()[http::header::CONTENT_SECURITY_POLICY],
            "sandbox"
        );
        assert_eq!(answer.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        let _ = std::fs::remove_dir_all(dir);
    }
}
