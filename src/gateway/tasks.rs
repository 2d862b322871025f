//! `/admin/tasks[/{family}[/{id}]]`: the operator's look at cached answers, and their purge.
//!
//! - `GET /admin/tasks/{family}/{id}`: every answer held for the task on this replica (per
//!   credential, by the first 8 hex digits of its fingerprint) and in Redis.
//! - `DELETE` on `/admin/tasks/{family}/{id}`, `/admin/tasks/{family}` or `/admin/tasks`, optionally
//!   `?credential=<fingerprint prefix>`: gone from this replica, from Redis, and (announced) from
//!   every other replica, so the next poll goes upstream once.
//!
//! Behind `Authorization: Bearer <admin.token>` (compared in constant time); without `admin.token`
//! the routes are off. On `admin_listen` when one is set, else on the main listener.

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::json;

use super::Gateway;
use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::fetch::Served;
use crate::shared::PurgeScope;
use crate::task::TaskId;

impl Gateway {
    /// The request carries `Authorization: Bearer <admin.token>` (compared in constant time).
    pub(super) fn admin_authorized<B>(&self, request: &Request<B>) -> Result<(), RequestError> {
        let settings = self.settings();
        let Some(token) = &settings.admin_token else {
            return Err(RequestError::AdminOff);
        };
        let offered = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same(offered.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(RequestError::AdminUnauthorized)
        }
    }

    pub(super) async fn admin_tasks(&self, rest: &str, request: &Request<Incoming>) -> Served {
        if let Err(e) = self.admin_authorized(request) {
            return Served::error(e);
        }
        if request_has_body(request.headers()) {
            return Served::error(RequestError::BadAdminRequest(
                "task admin requests take no body: the path and ?credential= say what".into(),
            ));
        }
        let scope = match self.admin_scope(rest, request.uri().query()) {
            Ok(scope) => scope,
            Err(e) => return Served::error(e),
        };
        match *request.method() {
            Method::GET if scope.family.is_some() && scope.id.is_some() => {
                self.inspect_task(&scope).await
            }
            Method::GET => Served::error(RequestError::BadAdminRequest(
                "inspect one task: GET /admin/tasks/{family}/{id}".into(),
            )),
            Method::DELETE => self.purge_tasks(&scope).await,
            _ => Served::error(RequestError::MethodNotAllowed(
                "task admin routes take GET (inspect) or DELETE (purge)",
            )),
        }
    }

    /// The scope `/admin/tasks{rest}?{query}` names, its family checked and its id and credential
    /// prefix well formed.
    fn admin_scope(&self, rest: &str, query: Option<&str>) -> Result<PurgeScope, RequestError> {
        // An empty segment (`/admin/tasks/midjourney/`, a script's unset `$ID`) must not widen a purge
        // to the whole family.
        if rest.ends_with('/') || rest.contains("//") {
            return Err(RequestError::BadAdminRequest(
                "an empty family or id in the path: name it, or leave the segment out to mean all"
                    .into(),
            ));
        }
        let mut parts = rest.trim_start_matches('/').splitn(2, '/');
        let family = parts.next().filter(|f| !f.is_empty());
        let id = parts.next().filter(|id| !id.is_empty());
        if let Some(family) = family
            && self.fetcher.families().by_name(family).is_none()
        {
            return Err(RequestError::BadAdminRequest(format!(
                "no task family named {family:?}"
            )));
        }
        if let Some(id) = id {
            TaskId::parse(id).map_err(RequestError::BadTaskId)?;
        }
        // A typo (`?credentail=`) or a second value would widen or change the scope silently.
        let mut credential = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("credential", value)) if credential.is_none() => credential = Some(value),
                Some(("credential", _)) => {
                    return Err(RequestError::BadAdminRequest(
                        "credential= given twice: one prefix per request".into(),
                    ));
                }
                _ => {
                    let name: String = pair
                        .split('=')
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(32)
                        .collect();
                    return Err(RequestError::BadAdminRequest(format!(
                        "unknown parameter {name:?}: the task admin routes take credential= only"
                    )));
                }
            }
        }
        if let Some(prefix) = credential
            && (prefix.is_empty()
                || prefix.len() > 32
                || !prefix.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(RequestError::BadAdminRequest(
                "credential= is a prefix of a fingerprint: 1 to 32 hex digits".into(),
            ));
        }
        Ok(PurgeScope {
            family: family.map(str::to_owned),
            id: id.map(str::to_owned),
            credential: credential.map(str::to_owned),
        })
    }

    async fn inspect_task(&self, scope: &PurgeScope) -> Served {
        let held = match scope.local(&self.fetcher.families()) {
            Some(local) => self.fetcher.cache().matching(&local),
            None => Vec::new(),
        };
        let local: Vec<serde_json::Value> = held
            .iter()
            .map(|(key, task)| {
                let bytes: &[u8] = std::borrow::Borrow::borrow(key);
                json!({
                    "credential": crate::hex::to_hex(&bytes[..4]),
                    "class": task.class().as_str(),
                    "status": task.status().as_u16(),
                    "age_s": task.age(),
                    "fresh_for_s": self.fetcher.cache().fresh_left(task).map(|d| d.as_secs()),
                    "bytes": task.body.len(),
                    "gzip": crate::body::Stored::gzipped(&**task).is_some(),
                    "kept_files": task.files_base.is_some(),
                })
            })
            .collect();
        let shared = match self.fetcher.shared() {
            None => serde_json::Value::Null,
            Some(shared) => match shared
                .inspect(
                    scope.family.as_deref().unwrap_or(""),
                    scope.id.as_deref().unwrap_or(""),
                )
                .await
            {
                Some(entries) => json!(entries),
                None => json!("unreachable"),
            },
        };
        Served::bypass(json_response(json!({
            "family": scope.family,
            "id": scope.id,
            "replica": local,
            "shared": shared,
        })))
    }

    async fn purge_tasks(&self, scope: &PurgeScope) -> Served {
        let local = scope
            .local(&self.fetcher.families())
            .map_or(0, |local| self.fetcher.cache().purge(&local));
        let shared = match self.fetcher.shared() {
            None => serde_json::Value::Null,
            Some(shared) => match shared.purge(scope).await {
                Some(deleted) => json!(deleted),
                None => json!("unreachable"),
            },
        };
        tracing::info!(
            family = scope.family.as_deref().unwrap_or("*"),
            id = scope.id.as_deref().unwrap_or("*"),
            credential = scope.credential.as_deref().unwrap_or("*"),
            replica = local,
            "purged cached answers"
        );
        Served::bypass(json_response(json!({
            "purged": { "replica": local, "shared": shared },
        })))
    }
}

/// Whether a request declares a body (a `Content-Length` above 0, or any `Transfer-Encoding`).
fn request_has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn json_response(body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
