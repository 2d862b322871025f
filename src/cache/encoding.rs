//! Compressed answers (RFC 9110 §8.4, §12.5.3): task and batch answers in gzip for clients whose
//! `Accept-Encoding` takes it, identity for the rest. A stored task is compressed once, when it is
//! stored, and keeps its gzip bytes beside its own; a batch answer, built per request, is compressed
//! once per answer. Each representation has its own `ETag`, and every answer that could have been
//! either says `Vary: Accept-Encoding`.

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, HeaderValue, VARY};
use http::{Response, StatusCode};

use crate::body::{ResponseBody, Stored};
use crate::gzip::{Gzipped, MIN_GZIP};

static GZIP: HeaderValue = HeaderValue::from_static("gzip");
static ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");

/// Picks the representation of a task or batch answer for a client: a stored task's body becomes its
/// gzip copy (made when it was stored) or its own bytes; a batch answer (`batch`) is compressed
/// here, once. Other answers pass unchanged.
pub fn represent(response: &mut Response<ResponseBody>, gzip: bool, batch: bool) {
    let ok = response.status() == StatusCode::OK;
    let chosen = match response.body_mut() {
        ResponseBody::Task(task) => {
            if let Some(task) = task.take() {
                represent_task(response, &*task, gzip);
            }
            return;
        }
        ResponseBody::Full(Some(body)) if batch && ok && body.len() >= MIN_GZIP => {
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
    if let Some(gzipped) = chosen {
        send_gzipped(response, gzipped);
    }
}

/// Gives a stored task's answer its body: the gzip copy for a client that takes it, else its own
/// bytes; `Vary` whenever there is a copy to choose (only `200` answers get one).
pub fn represent_task(response: &mut Response<ResponseBody>, task: &dyn Stored, gzip: bool) {
    let gzipped = task.gzipped();
    if gzipped.is_some() {
        response.headers_mut().append(VARY, ACCEPT_ENCODING.clone());
    }
    match gzipped.filter(|_| gzip) {
        Some(gzipped) => send_gzipped(response, gzipped.clone()),
        None => *response.body_mut() = ResponseBody::full(task.identity().clone()),
    }
}

fn send_gzipped(response: &mut Response<ResponseBody>, gzipped: Gzipped) {
    let Gzipped { body, etag } = gzipped;
    let headers = response.headers_mut();
    headers.insert(CONTENT_ENCODING, GZIP.clone());
    headers.remove(CONTENT_LENGTH);
    if headers.contains_key(ETAG) {
        headers.insert(ETAG, etag);
    }
    *response.body_mut() = ResponseBody::full(body);
}
