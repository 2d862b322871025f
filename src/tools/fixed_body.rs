//! The benchmarks' ceiling: a bare hyper server answering every request with one fixed task body, on
//! the same server stack as the gateway. A cache hit can cost no less than this.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::Response;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A finished task as the upstream serves it, the size of a real answer.
pub const TASK_BODY: &str = r#"{"id":"task-1","action":"IMAGINE","status":"SUCCESS","prompt":"a beautiful sunset over the ocean --ar 16:9 --v 6","promptEn":"a beautiful sunset over the ocean --ar 16:9 --v 6","description":"/imagine a beautiful sunset over the ocean --ar 16:9 --v 6","state":"","progress":"100%","submitTime":1709123456000,"startTime":1709123457000,"finishTime":1709123520000,"imageUrl":"https://cdn.example/task-1.png","failReason":"","buttons":[{"customId":"MJ::JOB::upsample::1::task-1","emoji":"","label":"U1","style":2}],"properties":{}}"#;

/// Serves `body` (as JSON) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    body: Bytes,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let service = service_fn(move |_request| {
            let mut response = Response::new(Full::new(body.clone()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}
