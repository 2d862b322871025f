//! `GET` and `HEAD /_mjgate/files/{token}`: a kept result file, for whoever holds its token (the
//! token is the capability: a browser's `<img src>` sends no credential). Without `[artifacts]`, or for
//! a token that opens to nothing kept, `404`; see `artifacts::serve` for what the answer carries.

use http::{Method, Request};
use hyper::body::Incoming;

use super::Gateway;
use crate::artifacts::serve::{self, FileError};
use crate::error::RequestError;
use crate::fetch::Served;

impl Gateway {
    pub(super) async fn file(&self, token: &str, request: &Request<Incoming>) -> Served {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return Served::error(RequestError::MethodNotAllowed(
                    "kept files are read with GET or HEAD",
                ));
            }
        };
        let Some(artifacts) = &self.artifacts else {
            return Served::error(RequestError::UnknownFile);
        };
        let Some((blob, _credential)) = artifacts.tokens.open(token) else {
            return Served::error(RequestError::UnknownFile);
        };
        match serve::respond(&artifacts.store, &blob, head, request.headers()).await {
            Ok(response) => Served::bypass(response),
            Err(FileError::NotFound) => Served::error(RequestError::UnknownFile),
            Err(FileError::Unsatisfiable(len)) => {
                Served::error(RequestError::RangeNotSatisfiable(len))
            }
        }
    }
}
