//! `/admin/config` and `/admin/reload`: the running config, and a reload from its file.
//!
//! - `GET /admin/config`: the running config key by key (secrets redacted), what `mjgate
//!   check-config --diff` compares a file with.
//! - `POST /admin/reload`: what `SIGHUP` does (and `mjgate reload` sends): `200` with the keys it
//!   changed, or `409` naming the keys that need a restart, or `422` when the file does not
//!   validate; a refused reload changes nothing.
//!
//! Behind `admin.token`, like the task admin routes.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::Gateway;
use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::reload::Refused;
use crate::request::routes::AdminConfigRoute;

impl Gateway {
    pub(super) fn admin_config<B>(
        &self,
        which: AdminConfigRoute,
        request: &Request<B>,
    ) -> Response<ResponseBody> {
        if let Err(e) = self.admin_authorized(request) {
            return e.into_response();
        }
        match (which, request.method()) {
            (AdminConfigRoute::Show, &Method::GET) => {
                json_response(StatusCode::OK, json!(self.running_config()))
            }
            (AdminConfigRoute::Reload, &Method::POST) => match self.reload_now() {
                Ok(changes) => json_response(
                    StatusCode::OK,
                    json!({
                        "reloaded": true,
                        "changed": changes
                            .iter()
                            .map(|c| json!({"key": c.key, "from": c.from, "to": c.to}))
                            .collect::<Vec<_>>(),
                    }),
                ),
                Err(refused) => {
                    let status = match &refused {
                        Refused::NeedsRestart(_) => StatusCode::CONFLICT,
                        Refused::Invalid(_) | Refused::NoSource => StatusCode::UNPROCESSABLE_ENTITY,
                    };
                    let restart = match &refused {
                        Refused::NeedsRestart(keys) => keys.clone(),
                        _ => Vec::new(),
                    };
                    json_response(
                        status,
                        json!({
                            "reloaded": false,
                            "error": refused.to_string(),
                            "needs_restart": restart,
                        }),
                    )
                }
            },
            (AdminConfigRoute::Show, _) => {
                RequestError::MethodNotAllowed("/admin/config takes GET").into_response()
            }
            (AdminConfigRoute::Reload, _) => {
                RequestError::MethodNotAllowed("/admin/reload takes POST").into_response()
            }
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
