//! Compressed answers (RFC 9110 §8.4, §12.5.3): task and batch answers in gzip for clients whose
//! `Accept-Encoding` takes it, identity for the rest. A stored task is compressed once, when it is
//! stored, and keeps its gzip bytes beside its own; a batch answer, built per request, is compressed
//! once per answer. Each representation has its own `ETag`, and every answer that could have been
//! either says `Vary: Accept-Encoding`.

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, HeaderValue, VARY};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::gzip::{Gzipped, MIN_GZIP};

static GZIP: HeaderValue = HeaderValue::from_static("gzip");
static ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");

/// Picks the representation of a task or batch answer for a client: a stored task's body becomes its
/// gzip copy (made when it was stored) or its own bytes; a batch answer (`batch`) is compressed
/// here, once. Other answers pass unchanged.
pub fn represent(response: &mut Response<ResponseBody>, gzip: bool, batch: bool) {
    if response.status() != StatusCode::OK {
        if let ResponseBody::Task(task) = response.body_mut() {
            *response.body_mut() = ResponseBody::full(
                task.take()
                    .map(|t| t.identity().clone())
                    .unwrap_or_default(),
            );
        }
        return;
    }
    let chosen = match response.body_mut() {
        ResponseBody::Task(task) => {
            let Some(task) = task.take() else {
                return;
            };
            let gzipped = if gzip { task.gzipped().cloned() } else { None };
            let varies = gzipped.is_some() || task.gzipped().is_some();
            *response.body_mut() = ResponseBody::full(task.identity().clone());
            if varies {
                response.headers_mut().append(VARY, ACCEPT_ENCODING.clone());
            }
            gzipped
        }
        ResponseBody::Full(Some(body)) if batch && body.len() >= MIN_GZIP => {
            response.headers_mut().append(VARY, ACCEPT_ENCODING.clone());
            if !gzip {
                return;
            }
            let etag = response
                .headers()
                .get(ETAG)
                .cloned()
                .unwrap_or(HeaderValue::from_static("\"\""));
            let ResponseBody::Full(Some(body)) = response.body_mut() else {
                return;
            };
            Gzipped::of(body, &etag)
        }
        _ => None,
    };
    if let Some(Gzipped { body, etag }) = chosen {
        let headers = response.headers_mut();
        headers.insert(CONTENT_ENCODING, GZIP.clone());
        headers.remove(CONTENT_LENGTH);
        if headers.contains_key(ETAG) {
            headers.insert(ETAG, etag);
        }
        *response.body_mut() = ResponseBody::full(body);
    }
}
