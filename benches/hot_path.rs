//! Micro-benchmarks of the cache-hit path: credential fingerprint, cache lookup and response build,
//! and reading a task's status from an upstream body.
//!
//!   cargo bench --bench hot_path

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use mjgate::cache::CachedTask;
use mjgate::credential::Fingerprinter;
use mjgate::family::{Families, TaskRef};
use mjgate::gateway::{Gateway, Peer};
use mjgate::pipeline;
use mjgate::request::routes;
use mjgate::task::{TaskClass, TaskId};
use mjgate::tools::fixed_body::TASK_BODY;

fn credential_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    // An HTTP/1.1 request without it is refused (RFC 9112 §3.2), not served from the cache.
    headers.insert("host", HeaderValue::from_static("mjgate.internal:8080"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-0123456789abcdef0123456789abcdef"),
    );
    headers.insert(
        "user-agent",
        HeaderValue::from_static("python-requests/2.31"),
    );
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers
}

fn hot_path(c: &mut Criterion) {
    let headers = credential_headers();
    let fingerprinter = Fingerprinter::with_key([7; 32]);
    c.bench_function("fingerprint credential headers", |b| {
        b.iter(|| fingerprinter.fingerprint(black_box(&headers)))
    });

    let families = Families::builtin();
    c.bench_function("route a fetch path", |b| {
        b.iter(|| {
            routes::classify(
                &families,
                &http::Method::GET,
                black_box("/mj-fast/mj/task/1709123456000123/fetch"),
                None,
                false,
            )
        })
    });
    c.bench_function("route the last family's fetch path", |b| {
        b.iter(|| {
            routes::classify(
                &families,
                &http::Method::GET,
                black_box("/volc/v1/contents/generations/tasks/cgt-20250101"),
                None,
                false,
            )
        })
    });

    let body = TASK_BODY.as_bytes();
    let midjourney = families.by_name("midjourney").unwrap();
    c.bench_function("classify an upstream task body", |b| {
        b.iter(|| midjourney.classify(black_box(body), "task-1"))
    });

    // What a gzip copy costs to make when a task is stored, and what an identity hit would pay to
    // undo it if entries were kept compressed only (docs/benchmarks.md, Compression).
    let etag = http::HeaderValue::from_static("\"0123456789abcdef01234567\"");
    c.bench_function("gzip a task body (on store)", |b| {
        b.iter(|| mjgate::gzip::Gzipped::of(black_box(body), &etag))
    });
    let gzipped = mjgate::gzip::Gzipped::of(body, &etag).expect("worth compressing");
    c.bench_function("gunzip a task body", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(black_box(&gzipped.body[..])),
                &mut out,
            )
            .unwrap();
            out
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let config = mjgate::Config::for_upstream("http://127.0.0.1:9").unwrap();
    let gateway = Arc::new(Gateway::new(&config).expect("gateway builds"));
    let task = Arc::new(CachedTask::new(
        Bytes::from_static(TASK_BODY.as_bytes()),
        Some(HeaderValue::from_static("application/json")),
        TaskClass::Terminal,
    ));
    let task_of = |family: &str, id: &'static str| TaskRef {
        family: families.by_name(family).unwrap().id(),
        id: TaskId::parse(id).unwrap(),
    };
    gateway.store(&headers, task_of("midjourney", "task-1"), Arc::clone(&task));
    let mut request = Request::get("/mj/task/task-1/fetch").body(()).unwrap();
    *request.headers_mut() = headers.clone();
    // One request per family shape: path id, nested path, query id, the last route in the table.
    let mixed: Vec<Request<()>> = [
        ("midjourney", "task-1", "/mj-fast/mj/task/task-1/fetch"),
        ("suno", "s-1", "/suno/fetch/s-1"),
        ("kling", "k-1", "/kling/v1/images/kolors-virtual-try-on/k-1"),
        ("openai-videos", "video_1", "/v1/videos/video_1"),
        ("video-query", "q-1", "/v1/video/query?id=q-1"),
        (
            "volcengine",
            "cgt-1",
            "/volc/v1/contents/generations/tasks/cgt-1",
        ),
    ]
    .into_iter()
    .map(|(family, id, path)| {
        gateway.store(&headers, task_of(family, id), Arc::clone(&task));
        let mut request = Request::get(path).body(()).unwrap();
        *request.headers_mut() = headers.clone();
        request
    })
    .collect();
    // The pipeline's hit path, as on a kept-alive connection: the credential was seen before.
    let mut handler = gateway.handler(Peer::plain(([127, 0, 0, 1], 40000).into()));
    c.bench_function("cache hit: the pipeline's hit path", |b| {
        b.iter(|| {
            let response =
                pipeline::hit(&mut handler, black_box(&request), gateway.metrics(), None);
            assert!(response.is_some());
            response
        })
    });
    let mut next = mixed.iter().cycle();
    c.bench_function("cache hit: a mix of six families", |b| {
        b.iter(|| {
            let request = next.next().unwrap();
            let response = pipeline::hit(&mut handler, black_box(request), gateway.metrics(), None);
            assert!(response.is_some());
            response
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
