//! Operators see what the gateway does: Prometheus metrics, request ids, and logs free of credentials.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

use crate::support::*;

#[tokio::test]
async fn metrics_count_a_known_sequence_of_hits_misses_and_collapses() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"30s\"\n").await;
    sim.create_task(KEY_A, "done", "SUCCESS");
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");

    fetch(&gw, "done", KEY_A).await; // miss
    fetch(&gw, "done", KEY_A).await; // hit
    fetch(&gw, "done", KEY_A).await; // hit

    // One leader and four waiters on "busy": release the upstream once all four wait.
    let hold = sim.hold();
    let gw = Arc::new(gw);
    let polls: Vec<_> = (0..5)
        .map(|_| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { fetch(&gw, "busy", KEY_A).await })
        })
        .collect();
    for _ in 0..500 {
        if scrape(&gw).await.value("mjgate_collapse_waiters", &[]) == 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(hold);
    for poll in polls {
        assert_eq!(poll.await.unwrap().status, 200);
    }
    send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        r#"{"prompt":"p"}"#,
    ))
    .await;
    get(&gw, "/mj/task/bad$id/fetch", KEY_A).await;

    let m = scrape(&gw).await;
    // Kept for `.ci/run`, which lints it with Prometheus's own `promtool check metrics`.
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mjgate-metrics.prom"),
        &m.text,
    )
    .unwrap();
    let requests = |route, cache| {
        m.value(
            "mjgate_requests_total",
            &[("route", route), ("cache", cache)],
        )
    };
    assert_eq!(requests("fetch", "hit"), 2.0);
    assert_eq!(requests("fetch", "miss"), 2.0);
    assert_eq!(requests("fetch", "collapsed"), 4.0);
    assert_eq!(requests("fetch", "bypass"), 1.0, "the refused bad id");
    assert_eq!(
        requests("submit", "bypass"),
        1.0,
        "a submit is its own route"
    );
    assert_eq!(
        m.value("mjgate_task_lookups_total", &[("cache", "miss")]),
        2.0
    );
    assert_eq!(
        m.value(
            "mjgate_upstream_requests_total",
            &[("route", "fetch"), ("status", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "mjgate_upstream_requests_total",
            &[("route", "submit"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "mjgate_request_duration_seconds_count",
            &[("route", "fetch")]
        ),
        9.0
    );
    assert_eq!(
        m.value(
            "mjgate_upstream_request_duration_seconds_count",
            &[("route", "fetch")]
        ),
        2.0
    );
    assert_eq!(m.value("mjgate_upstream_in_flight", &[]), 0.0);
    assert_eq!(m.value("mjgate_collapse_waiters", &[]), 0.0);
    assert_eq!(
        m.value("mjgate_cache_entries", &[("class", "terminal")]),
        1.0
    );
    assert_eq!(
        m.value("mjgate_cache_entries", &[("class", "in_progress")]),
        1.0
    );
    assert!(m.value("mjgate_cache_weighted_bytes", &[("class", "terminal")]) > 100.0);
    assert!(
        m.value("mjgate_client_connections", &[]) >= 1.0,
        "this scrape's own connection"
    );
    for family in [
        "mjgate_cache_capacity_bytes",
        "mjgate_build_info",
        "mjgate_client_connections_refused_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(m.has_family(family), "{family} missing");
    }
    // Calls saved: client task lookups per upstream call.
    assert_eq!(sim.all_fetch_calls(), 2);
}

#[tokio::test]
async fn metrics_count_batches_per_id_and_upstream_errors_by_class() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "a", "SUCCESS");
    sim.create_task(KEY_A, "b", "SUCCESS");
    fetch(&gw, "a", KEY_A).await;
    let body = r#"{"ids":["a","b"]}"#;
    send(request(
        Method::POST,
        &gw.url("/mj/task/list-by-condition"),
        Some(KEY_A),
        body,
    ))
    .await;
    sim.inject(Fault::Status(503), 1);
    fetch(&gw, "c", KEY_A).await;

    let m = scrape(&gw).await;
    assert_eq!(
        m.value(
            "mjgate_requests_total",
            &[("route", "batch"), ("cache", "partial")]
        ),
        1.0
    );
    assert_eq!(
        m.value("mjgate_task_lookups_total", &[("cache", "hit")]),
        1.0
    );
    assert_eq!(
        m.value("mjgate_task_lookups_total", &[("cache", "miss")]),
        3.0
    );
    assert_eq!(
        m.value(
            "mjgate_upstream_requests_total",
            &[("route", "batch"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "mjgate_upstream_requests_total",
            &[("route", "fetch"), ("status", "5xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn metric_labels_carry_no_ids_credentials_or_paths() {
    let (sim, gw) = start("").await;
    sim.create_task("Bearer sk-label-leak", "task-label-leak", "SUCCESS");
    fetch(&gw, "task-label-leak", "Bearer sk-label-leak").await;
    get(&gw, "/some/raw-path-leak?q=1", "Bearer sk-label-leak").await;
    let m = scrape(&gw).await;
    for leak in ["sk-label-leak", "task-label-leak", "raw-path-leak"] {
        assert!(!m.text.contains(leak), "{leak} appears in /metrics");
    }
}

#[tokio::test]
async fn the_request_id_round_trips_to_the_client_and_the_upstream() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let mut with_id = request(Method::GET, &gw.url("/mj/task/t/fetch"), Some(KEY_A), "");
    with_id
        .headers_mut()
        .insert("x-request-id", "trace-abc-123".parse().unwrap());
    let reply = send(with_id).await;
    assert_eq!(reply.header("x-request-id"), "trace-abc-123");
    assert_eq!(sim.requests()[0].headers["x-request-id"], "trace-abc-123");

    let hit = fetch(&gw, "t", KEY_A).await;
    let generated = hit.header("x-request-id");
    assert!(
        generated.len() >= 16 && generated != "trace-abc-123",
        "{generated}"
    );

    let submit = send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        r#"{"prompt":"p"}"#,
    ))
    .await;
    let id = submit.header("x-request-id").to_owned();
    assert_eq!(
        sim.requests().last().unwrap().headers["x-request-id"],
        id.as_str()
    );
}

/// A log sink the test can read.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every log line of this test binary. One global subscriber, not a per-test `set_default`: tracing
/// caches each callsite's interest globally, and a thread-local subscriber can miss events whose
/// callsites other test threads registered first.
pub fn captured_logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("mjgate=trace")
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

#[tokio::test]
async fn no_credential_appears_in_logs_or_metrics() {
    let logs = captured_logs();

    const SECRET: &str = "Bearer sk-never-log-me-0123456789";
    const MJ_SECRET: &str = "mj-secret-never-log-me";
    // With the access log on, every request writes a line: none of them may carry a credential.
    let (sim, gw) = start("[upstream]\nrequest_timeout = \"300ms\"\n[log]\naccess = true\n").await;
    sim.create_task(SECRET, "t", "SUCCESS");
    let mut with_id = request(Method::GET, &gw.url("/mj/task/t/fetch"), Some(SECRET), "");
    with_id
        .headers_mut()
        .insert("x-request-id", "logged-id-1".parse().unwrap());
    send(with_id).await; // miss
    fetch(&gw, "t", SECRET).await; // hit
    sim.inject(Fault::Status(500), 1);
    fetch(&gw, "u", SECRET).await; // upstream error
    sim.set_latency(Duration::from_millis(600));
    fetch(&gw, "v", SECRET).await; // timeout: logged as a warning
    sim.set_latency(Duration::ZERO);
    let mut secret = request(
        Method::POST,
        &gw.url("/mj/task/list-by-condition"),
        None,
        r#"{"ids":["t"]}"#,
    );
    secret
        .headers_mut()
        .insert("mj-api-secret", MJ_SECRET.parse().unwrap());
    send(secret).await;
    send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(SECRET),
        r#"{"prompt":"p"}"#,
    ))
    .await;
    let metrics = scrape(&gw).await;
    drop(gw);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("logged-id-1"),
        "the access line carries the client's request id:\n{logs}"
    );
    assert!(
        logs.contains("upstream call failed"),
        "the timeout was logged:\n{logs}"
    );
    for secret in ["sk-never-log-me", MJ_SECRET] {
        assert!(
            !logs.contains(secret),
            "a credential leaked into the logs:\n{logs}"
        );
        assert!(
            !metrics.text.contains(secret),
            "a credential leaked into /metrics"
        );
    }
}

#[tokio::test]
async fn polls_refused_during_a_backoff_write_no_warning_each() {
    let logs = captured_logs();
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "limited", "IN_PROGRESS");
    sim.inject(
        Fault::RateLimited {
            retry_after: Some(30),
        },
        1,
    );
    assert_eq!(fetch(&gw, "limited", KEY_A).await.status, 429);

    for n in 0..20 {
        let mut poll = request(
            Method::GET,
            &gw.url("/mj/task/limited/fetch"),
            Some(KEY_A),
            "",
        );
        poll.headers_mut()
            .insert("x-request-id", format!("hammer-{n}").parse().unwrap());
        assert_eq!(send(poll).await.status, 429);
    }
    assert_eq!(sim.fetch_calls("limited"), 1);

    let text = logs.text();
    let hammer: Vec<&str> = text.lines().filter(|l| l.contains("hammer-")).collect();
    assert!(
        hammer.iter().any(|l| l.contains("upstream call refused")),
        "refusals are still logged, at debug:\n{text}"
    );
    assert!(
        hammer.iter().all(|l| !l.contains("WARN")),
        "a refused poll wrote a warning:\n{}",
        hammer.join("\n")
    );
}

#[tokio::test]
async fn an_admin_listener_takes_the_operator_routes_off_the_main_one() {
    let sim = Simulator::start().await.unwrap();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
    let config = config(&sim.url(), &format!("admin_listen = \"{admin_addr}\"\n"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mjgate::run(
        mjgate::server::Listeners {
            main,
            admin: Some(admin),
        },
        config,
        async {
            let _ = stopped.await;
        },
    ));

    let admin_metrics = scrape_url(&format!("http://{admin_addr}/metrics")).await;
    assert!(admin_metrics.has_family("mjgate_requests_total"));
    for path in ["/healthz", "/readyz"] {
        let reply = send(request(
            Method::GET,
            &format!("http://{admin_addr}{path}"),
            None,
            "",
        ))
        .await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let not_admin = send(request(
        Method::GET,
        &format!("http://{admin_addr}/mj/task/t/fetch"),
        Some(KEY_A),
        "",
    ))
    .await;
    assert_eq!(not_admin.status, 404);
    // On the main listener /metrics is just another path, passed to the upstream.
    let main_metrics = send(request(
        Method::GET,
        &format!("http://{main_addr}/metrics"),
        None,
        "",
    ))
    .await;
    assert_eq!(main_metrics.status, 404);
    assert_eq!(sim.total_calls(), 1);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn process_cpu_time_is_exported_in_seconds_with_their_fractions() {
    let (_sim, gw) = start("").await;
    // Some work of this process's own: the gateway runs in it.
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let exported = scrape(&gw).await.value("process_cpu_seconds_total", &[]);
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) },
        0
    );
    // SAFETY: initialised by the call above.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let used = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    assert!(exported > 0.0);
    assert!(
        (used - exported).abs() < 0.25,
        "exported {exported} s, the kernel says {used} s (whole seconds would be up to 1 s off)"
    );
}
