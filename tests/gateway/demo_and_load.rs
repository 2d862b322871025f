//! `mjgate demo` and the load generator behind `mjgate bench` work end to end.

use std::sync::Arc;
use std::time::Duration;

use mjgate::tools::demo::{self, DemoSpec};
use mjgate::tools::hold;
use mjgate::tools::load::{self, LoadSpec, Mode, Progress};
use mjgate::tools::simulator::Api;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_and_reports_what_the_gateway_saved() {
    let spec = DemoSpec {
        clients: 40,
        tasks: 5,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(2),
        redraw: false,
        apis: vec![Api::Midjourney],
    };
    let mut progress = Vec::new();
    let report = demo::run(&spec, &mut progress).await.unwrap();
    assert_eq!(report.client_errors, 0);
    assert!(report.client_requests >= 400, "{report:?}");
    // In progress, at most one call per task per 3 s TTL window (plus one when each finishes).
    assert!(report.upstream_requests <= 5 * 2, "{report:?}");
    assert!(report.calls_saved() > 20.0, "{report:?}");
    assert!(report.hit_ratio > 0.9, "{report:?}");
    // Every task's image, kept once and served by the gateway after the upstream's link died.
    assert_eq!(report.files.linked, 5, "{report:?}");
    assert_eq!(report.files.served, 5, "{report:?}");
    assert_eq!(report.files.upstream_links, 0, "{report:?}");
    assert_eq!(report.files.origin_downloads, 5, "{report:?}");
    let table = demo::table(&report, &spec);
    for row in [
        "client requests",
        "upstream requests",
        "calls saved",
        "hit ratio",
        "p50 / p99",
        "task-minute",
        "result files kept",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    assert!(
        String::from_utf8(progress)
            .unwrap()
            .contains("client requests")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_mix_of_every_task_api() {
    let spec = DemoSpec {
        clients: 36,
        tasks: 9,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(2),
        redraw: false,
        apis: Api::ALL.to_vec(),
    };
    let mut progress = Vec::new();
    let report = demo::run(&spec, &mut progress).await.unwrap();
    assert_eq!(report.client_errors, 0, "{report:?}");
    // Nine tasks, one of each API: at most one call per task per TTL window, plus one at the end.
    assert!(report.upstream_requests <= 9 * 2, "{report:?}");
    assert!(report.calls_saved() > 10.0, "{report:?}");
    let text = String::from_utf8(progress).unwrap();
    assert!(
        text.contains("suno") && text.contains("openai-videos"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_demo_delivers_every_task_signed_with_no_client_polls() {
    let spec = DemoSpec {
        tasks: 6,
        // Tasks take 60% of it; the rest is room for the last deliveries on a loaded machine
        // (the demo returns as soon as every finished state has arrived).
        duration: Duration::from_secs(5),
        redraw: false,
        ..DemoSpec::default()
    };
    let mut progress = Vec::new();
    let report = demo::hooks::run(&spec, &mut progress).await.unwrap();
    assert_eq!(report.submits, 6, "{report:?}");
    assert_eq!(
        report.finished, 6,
        "every finished state arrived: {report:?}"
    );
    assert_eq!(report.bad_signatures, 0);
    assert!(
        report.delivered >= 12,
        "a running state and the finished one each: {report:?}"
    );
    assert!(
        report.upstream_polls < report.polls_avoided / 4,
        "{report:?}"
    );
    let table = demo::hooks::table(&report, &spec);
    assert!(table.contains("client polls needed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_through_the_gateway_costs_one_upstream_call() {
    let (sim, gw) = start("").await;
    sim.create_task("Bearer sk-bench", "task-0", "IN_PROGRESS");
    let spec = LoadSpec {
        target: gw.url(""),
        clients: 300,
        tasks: 1,
        interval: Duration::ZERO,
        duration: Duration::from_secs(1),
        mode: Mode::Fetch,
        credentials: vec!["Bearer sk-bench".into()],
        burst: true,
        sweep: false,
        id_prefix: "task-".into(),
        apis: vec![Api::Midjourney],
        conditional: false,
        wait: None,
    };
    let stats = format!("{}/_sim/stats", sim.url());
    let before = load::upstream_stats(&stats).await.unwrap();
    let report = load::run(&spec, Arc::new(Progress::default())).await;
    let upstream = load::upstream_stats(&stats).await.unwrap() - before;
    assert_eq!(report.requests, 300);
    assert_eq!(report.errors, 0, "{:?}", report.statuses);
    assert_eq!(upstream.fetches, 1);
    // Every one of the 300 was timed: the percentiles are real, ordered, and below the client timeout.
    let latency = &report.latency_ms;
    assert!(latency.p50 > 0.0, "{latency:?}");
    assert!(
        latency.p50 <= latency.p90 && latency.p90 <= latency.p99 && latency.p99 <= latency.max,
        "{latency:?}"
    );
    assert!(latency.max < 20_000.0, "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_load_is_counted_per_id_upstream() {
    let (sim, gw) = start("").await;
    for i in 0..20 {
        sim.create_task("Bearer sk-bench", &format!("task-{i}"), "SUCCESS");
    }
    let spec = LoadSpec {
        target: gw.url(""),
        clients: 10,
        tasks: 20,
        interval: Duration::from_millis(50),
        duration: Duration::from_millis(500),
        mode: Mode::Batch(10),
        credentials: vec!["Bearer sk-bench".into()],
        burst: false,
        sweep: false,
        id_prefix: "task-".into(),
        apis: vec![Api::Midjourney],
        conditional: false,
        wait: None,
    };
    let report = load::run(&spec, Arc::new(Progress::default())).await;
    assert_eq!(report.errors, 0, "{:?}", report.statuses);
    assert!(report.requests >= 50);
    // Client i asks for the ten ids from task-i: task-0 .. task-18 between them.
    for i in 0..19 {
        assert_eq!(
            sim.lookups(&format!("task-{i}")),
            1,
            "terminal: looked up once ever"
        );
    }
    assert_eq!(sim.lookups("task-19"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_long_poll_load_get_304s_and_few_bytes() {
    let (sim, gw) = start("[cache]\nin_progress_ttl = \"200ms\"\n").await;
    sim.create_task("Bearer sk-bench", "task-0", "SUCCESS");
    sim.create_task("Bearer sk-bench", "task-1", "IN_PROGRESS");
    let mut spec = LoadSpec {
        target: gw.url(""),
        clients: 10,
        tasks: 1,
        interval: Duration::from_millis(20),
        duration: Duration::from_millis(500),
        mode: Mode::Fetch,
        credentials: vec!["Bearer sk-bench".into()],
        burst: false,
        sweep: false,
        id_prefix: "task-".into(),
        apis: vec![Api::Midjourney],
        conditional: true,
        wait: None,
    };
    let polled = load::run(&spec, Arc::new(Progress::default())).await;
    assert_eq!(polled.errors, 0, "{:?}", polled.statuses);
    let by_status: std::collections::HashMap<u16, u64> = polled.statuses.iter().copied().collect();
    assert_eq!(by_status[&200], 10, "one full answer per client");
    assert_eq!(by_status[&304], polled.requests - 10, "then only 304s");
    let body_len = fetch(&gw, "task-0", "Bearer sk-bench").await.body.len() as u64;
    assert_eq!(polled.body_bytes, 10 * body_len);

    // Long-poll an in-progress task that does not change: each request is held for its wait.
    spec.interval = Duration::ZERO;
    spec.wait = Some(Duration::from_millis(300));
    spec.tasks = 2;
    spec.clients = 2; // client 0 polls task-0 (terminal), client 1 task-1 (in progress)
    let held = load::run(&spec, Arc::new(Progress::default())).await;
    assert_eq!(held.errors, 0, "{:?}", held.statuses);
    // Client 0 stops at its task's terminal answer; client 1 is held ~300 ms per request.
    assert!(
        (2..=5).contains(&held.requests),
        "one answer for the finished task, a few held ones for the other: {}",
        held.requests
    );
    assert!(held.latency_ms.max >= 250.0, "the in-progress one was held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_opens_and_holds_connections_of_each_kind() {
    let (sim, gw) = start("").await;
    sim.create_task("Bearer sk-bench", "done-0", "SUCCESS");
    sim.create_task("Bearer sk-bench", "busy-0", "IN_PROGRESS");
    let target: std::net::SocketAddr = gw.url("").trim_start_matches("http://").parse().unwrap();
    for (kind, prefix) in [
        (hold::HoldKind::Idle, "done-"),
        (hold::HoldKind::LongPoll, "busy-"),
        (hold::HoldKind::Events, "busy-"),
    ] {
        let spec = hold::HoldSpec {
            target,
            connections: 30,
            kind,
            credential: "Bearer sk-bench".into(),
            tasks: 1,
            id_prefix: prefix.into(),
            hold: Duration::from_millis(200),
        };
        let report = hold::run(&spec).await.unwrap();
        assert_eq!(
            (report.held, report.failed),
            (30, 0),
            "{kind:?}: {report:?}"
        );
        assert!(report.rss_before > 0 && report.rss_held > 0, "{report:?}");
    }
    // Thirty long-polls and thirty streams on one running task: one poller, one upstream call.
    assert_eq!(sim.fetch_calls("busy-0"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_demo_routes_every_follow_up_to_its_owner_within_each_limit() {
    use mjgate::tools::demo::pool::{self, PoolSpec};
    let spec = PoolSpec {
        members: 3,
        tasks: 45,
        max_running: 4,
        task_duration: Duration::from_millis(400),
        interval: Duration::from_millis(100),
        deadline: Duration::from_secs(60),
    };
    let mut progress = Vec::new();
    let report = pool::run(&spec, &mut progress).await.unwrap();
    // Every imagine, every upscale (accepted only by its parent's owner) and every batched read
    // reached the right member.
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.finished, 90, "{report:?}");
    assert_eq!(report.actions_accepted, 45, "{report:?}");
    assert_eq!(report.batched, 90, "{report:?}");
    assert_eq!(report.owner_lookups, 0, "{report:?}");
    assert_eq!(report.submits.iter().sum::<u64>(), 90, "{report:?}");
    for (member, &peak) in report.peak_running.iter().enumerate() {
        assert!(peak <= 4, "member {member} ran {peak} at once: {report:?}");
        assert!(
            report.submits[member] > 0,
            "member {member} idle: {report:?}"
        );
    }
    // As with one member: about one fetch per in-progress TTL window of each task, plus its end.
    assert!(
        report.fetches_per_task() <= 400.0 / 100.0 + 3.0,
        "{report:?}"
    );
    let mut table = Vec::new();
    pool::print(&report, &spec, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("| proxy-2 |"), "{table}");
    assert!(table.contains("0 errors"), "{table}");
}
