//! `GET` on a family's download route (OpenAI videos' `/v1/videos/{id}/content?variant=...`): the
//! task's file itself, answered from the kept files. The first request for a (credential, task,
//! query) downloads the file from the upstream with that request's credential, streamed into the
//! store; every later one, ranges included, is served from the store, after the upstream's copy has
//! expired too. What the upstream answers with anything but a `200` of a media type (an error, not
//! found, a page) is passed on as it came and nothing is kept. Without `[artifacts]`, passthrough.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{HeaderMap, Method, Request};
use hyper::body::Incoming;

use super::Gateway;
use crate::artifacts::download::content_type_of;
use crate::artifacts::serve;
use crate::artifacts::store::MediaKind;
use crate::body::ResponseBody;
use crate::credential::CredentialFingerprint;
use crate::family::FamilyId;
use crate::fetch::Served;
use crate::metrics::{FileAnswer, RouteLabel};
use crate::upstream::ClientInfo;

/// Longest query kept as part of a download's identity; a longer one is passed through.
const MAX_QUERY: usize = 256;

/// A download is the credential's own: browsers and shared caches may keep it, but only for them.
const PRIVATE_IMMUTABLE: HeaderValue =
    HeaderValue::from_static("private, max-age=31536000, immutable");

/// Request headers that would make the upstream answer one client's part (or nothing) rather than
/// the file: the store gets the whole file, and answers ranges and validators itself.
const PER_CLIENT: [http::header::HeaderName; 6] = [
    http::header::RANGE,
    http::header::IF_RANGE,
    http::header::IF_MATCH,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_UNMODIFIED_SINCE,
];

impl Gateway {
    pub(super) async fn download(
        &self,
        family: FamilyId,
        id: &str,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> Served {
        let query = request.uri().query().unwrap_or("");
        let Some(keeper) = self.fetcher.keeper().filter(|_| query.len() <= MAX_QUERY) else {
            return self.passthrough(request, client).await;
        };
        let keeper = std::sync::Arc::clone(keeper);
        let head = request.method() == Method::HEAD;
        let fingerprint = self.fetcher.fingerprinter().fingerprint(request.headers());
        let key = download_key(&fingerprint, family, id, query);
        if let Some(served) = self.serve_download(&key, head, request.headers()).await {
            return served;
        }
        let turn = keeper.download_turn(&key).await;
        // Kept by the request this one waited for.
        if let Some(served) = self.serve_download(&key, head, request.headers()).await {
            return served;
        }
        let (parts, _body) = request.into_parts();
        let mut headers = parts.headers.clone();
        for name in &PER_CLIENT {
            headers.remove(name);
        }
        let mut upstream_request = Request::new(super::full(Bytes::new()));
        *upstream_request.method_mut() = Method::GET;
        *upstream_request.uri_mut() = parts.uri.clone();
        *upstream_request.headers_mut() = headers;
        // The file is on the member that made the task.
        let pool = Arc::clone(self.fetcher.pool_of(family));
        let member = match pool.is_pool() {
            true => self
                .fetcher
                .member_for(family, "", id, &parts.headers, client)
                .await
                .unwrap_or(0),
            false => 0,
        };
        let response = match pool
            .member(member)
            .upstream
            .forward(RouteLabel::Download, &fingerprint, upstream_request, client)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let e = pool.blame(member, e);
                e.log();
                return Served::error(e);
            }
        };
        let status = response.status().as_u16();
        let kind = MediaKind::of_content_type(&content_type_of(response.headers()));
        if status != 200 || !kind.is_media() {
            // Not a file to keep: as the upstream said it.
            return Served::forwarded(response.map(ResponseBody::Upstream), status);
        }
        match keeper.keep_download(&key, response.into_body(), kind).await {
            Ok(_) => {
                drop(turn);
                match self.serve_download(&key, head, &parts.headers).await {
                    Some(served) => served,
                    None => Served::error(crate::error::RequestError::UnknownFile),
                }
            }
            Err(e) => {
                // Too large to keep, or the store failed: the client still gets the file, straight
                // from the upstream (a second download, the rare case).
                tracing::info!(error = %e, "download route's file not kept; passed through");
                drop(turn);
                let mut again = Request::new(super::full(Bytes::new()));
                *again.method_mut() = Method::GET;
                *again.uri_mut() = parts.uri;
                *again.headers_mut() = parts.headers;
                self.forward_to(&pool, member, RouteLabel::Download, again, client)
                    .await
            }
        }
    }

    /// The kept file for `key`, answered as the file route answers (ranges, tags), if it is kept.
    async fn serve_download(&self, key: &[u8], head: bool, headers: &HeaderMap) -> Option<Served> {
        let keeper = self.fetcher.keeper()?;
        let (blob, _len) = keeper.downloaded(key)?;
        let mut response = match serve::respond(keeper.store(), &blob, head, headers).await {
            Ok(response) => response,
            Err(serve::FileError::Unsatisfiable(len)) => {
                return Some(Served::error(
                    crate::error::RequestError::RangeNotSatisfiable(len),
                ));
            }
            // Evicted since: downloaded again.
            Err(serve::FileError::NotFound) => return None,
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, PRIVATE_IMMUTABLE);
        self.metrics
            .file_served(FileAnswer::of(response.status(), head));
        Some(Served::bypass(response))
    }
}

/// What identifies a download route's file: the credential, the task and the query (`variant=`).
fn download_key(
    fingerprint: &CredentialFingerprint,
    family: FamilyId,
    id: &str,
    query: &str,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + 1 + id.len() + 1 + query.len());
    key.extend_from_slice(fingerprint.as_bytes());
    key.push(family.0);
    key.extend_from_slice(id.as_bytes());
    key.push(b'?');
    key.extend_from_slice(query.as_bytes());
    key
}
