//! `GET` and `HEAD /_mjgate/files/{token}`: a kept result file, for whoever holds its token (the
//! token is the capability: a browser's `<img src>` sends no credential). Without `[artifacts]`, or for
//! a token that opens to nothing kept, `404`; see `artifacts::serve` for what the answer carries.

use http::{Method, Request};
use hyper::body::Incoming;

use super::Gateway;
use crate::artifacts::serve::{self, FileError};
use crate::error::RequestError;
use crate::fetch::Served;
use crate::metrics::FileAnswer;

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
        let Some(keeper) = self.fetcher.keeper() else {
            return Served::error(RequestError::UnknownFile);
        };
        // Links end in the file's extension (`….png`), for clients that name a download after its
        // URL; the token alone names the file.
        let token = token
            .split_once('.')
            .map_or(token, |(token, _extension)| token);
        let blob = match keeper.tokens().open(token) {
            // Not on this disk (evicted, or kept by another replica): kept again from the link it
            // came from, while that lives.
            Some((blob, _credential, Some(url))) if keeper.store().len(&blob).await.is_none() => {
                match keeper.keep_again(&url).await {
                    Ok((kept, _len)) => kept,
                    Err(e) => return Served::error(RequestError::FileUnavailable(e.cause())),
                }
            }
            Some((blob, _credential, _)) => blob,
            // A lazy family's link: the file is kept now, if it is not yet.
            None => match keeper.tokens().open_url(token) {
                Some((url, _credential)) => match keeper.keep_lazily(&url).await {
                    Ok((blob, _len)) => blob,
                    Err(e) => return Served::error(RequestError::FileUnavailable(e.cause())),
                },
                None => {
                    self.metrics.file_served(FileAnswer::NotFound);
                    return Served::error(RequestError::UnknownFile);
                }
            },
        };
        let answered = serve::respond(keeper.store(), &blob, head, request.headers()).await;
        keeper.count_store();
        match answered {
            Ok(response) => {
                self.metrics
                    .file_served(FileAnswer::of(response.status(), head));
                Served::bypass(response)
            }
            Err(FileError::NotFound) => {
                self.metrics.file_served(FileAnswer::NotFound);
                Served::error(RequestError::UnknownFile)
            }
            Err(FileError::Unsatisfiable(len)) => {
                self.metrics.file_served(FileAnswer::Unsatisfiable);
                Served::error(RequestError::RangeNotSatisfiable(len))
            }
        }
    }
}
