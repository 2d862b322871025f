//! What an operator runs the gateway with day to day: the access log, reload without restart, the
//! real client address (PROXY protocol) and per-address limits.

use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::config_cli::{mjgate, spawn_listening, terminate, write_config};
use crate::support::*;

const TOKEN: &str = "admin-token-0123456789";

/// A connection from `source` (any 127.0.0.0/8 address: each is its own client) to `addr`.
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Writes `bytes` and reads until the gateway closes the connection (5 s at most).
async fn exchange_to_close(stream: &mut TcpStream, bytes: &[u8]) -> String {
    let _ = stream.write_all(bytes).await;
    read_to_close(stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One keep-alive request on `stream`, read to the end of its answer's head (and body).
async fn exchange_kept(stream: &mut TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answered in time")
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        assert!(n > 0, "closed mid-answer: {text}");
    }
}

fn fetch_request(id: &str) -> String {
    format!(
        "GET /mj/task/{id}/fetch HTTP/1.1\r\nHost: gw\r\nAuthorization: {KEY_A}\r\nConnection: close\r\n\r\n"
    )
}

/// The `x-real-ip` the upstream was told for its last call.
fn upstream_client(sim: &Simulator) -> String {
    sim.requests().last().unwrap().headers["x-real-ip"]
        .to_str()
        .unwrap()
        .to_owned()
}

// ---- the PROXY protocol ----

fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source);
    header.extend([127, 0, 0, 1]);
    header.extend(port.to_be_bytes());
    header.extend(80u16.to_be_bytes());
    header
}

#[tokio::test]
async fn behind_a_proxy_protocol_balancer_the_client_is_the_address_its_header_names() {
    let (sim, gw) = start("[server]\nproxy_protocol = true\nheader_read_timeout = \"2s\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let mut v1 = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = b"PROXY TCP4 127.0.0.42 127.0.0.1 51000 80\r\n".to_vec();
    bytes.extend(fetch_request("t").as_bytes());
    let answer = exchange_to_close(&mut v1, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream_client(&sim), "127.0.0.42");

    sim.create_task(KEY_A, "u", "IN_PROGRESS");
    let mut v2 = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = proxy_v2([127, 0, 0, 43], 51001);
    bytes.extend(fetch_request("u").as_bytes());
    let answer = exchange_to_close(&mut v2, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream_client(&sim), "127.0.0.43");
    // Two, and the scrape's own header.
    assert_eq!(scrape_proxied(&gw, "proxied").await, 3.0);
}

#[tokio::test]
async fn a_missing_malformed_truncated_or_slow_proxy_header_is_refused_clearly() {
    let (sim, gw) =
        start("[server]\nproxy_protocol = true\nheader_read_timeout = \"300ms\"\n").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let cases: [(&str, Vec<u8>, bool); 4] = [
        // A client that connects around the balancer.
        ("missing", fetch_request("t").into_bytes(), false),
        (
            "malformed",
            b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec(),
            false,
        ),
        // Half a header, then the client stops writing.
        ("truncated", b"PROXY TCP4 127.0.0.42 127.0".to_vec(), true),
        // Nothing at all within header_read_timeout.
        ("timeout", Vec::new(), false),
    ];
    for (result, bytes, shut) in cases {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        if shut {
            stream.shutdown().await.unwrap();
        }
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{result}: {answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["type"], "mjgate_error", "{result}");
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .contains("proxy_protocol"),
            "{result}: {body}"
        );
        let counted = scrape_proxied(&gw, result).await;
        assert_eq!(counted, 1.0, "{result}");
    }
    assert_eq!(
        sim.fetch_calls("t"),
        0,
        "no refused connection reached the upstream"
    );
}

async fn scrape_proxied(gw: &Gateway, result: &str) -> f64 {
    // /metrics is on the main listener here, behind the PROXY protocol too: read it as the
    // balancer would send it.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = b"PROXY TCP4 127.0.0.9 127.0.0.1 1 2\r\n".to_vec();
    bytes.extend(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let answer = exchange_to_close(&mut stream, &bytes).await;
    let text = answer[answer.find("\r\n\r\n").unwrap() + 4..].to_owned();
    Scrape::parse(text).value("mjgate_proxy_protocol_headers_total", &[("result", result)])
}

// ---- per-address limits ----

#[tokio::test]
async fn one_address_over_its_rate_gets_429_with_retry_after_and_others_are_untouched() {
    let (sim, gw) = start(
        "[server]\nper_client_rps = 1\nper_client_burst = 5\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let from = |client: &'static str| {
        let mut fetch = request(Method::GET, &gw.url("/mj/task/t/fetch"), Some(KEY_A), "");
        fetch
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        fetch
    };
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(send(from("127.0.0.50")).await);
    }
    assert!(
        statuses[..5].iter().all(|r| r.status == 200),
        "the burst is served"
    );
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        limited.len() >= 10,
        "20 requests at once, 1 a second after a burst of 5: {}",
        limited.len()
    );
    let refused = limited[0];
    assert!(refused.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(refused.json()["type"], "mjgate_error");
    // Another address behind the same balancer has its own budget.
    assert_eq!(send(from("127.0.0.51")).await.status, 200);
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_client_limited_total", &[("limit", "rate")]),
        limited.len() as f64
    );
}

#[tokio::test]
async fn one_address_holding_its_connections_cannot_open_more_and_others_still_can() {
    let (_sim, gw) = start("[server]\nper_client_connections = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.2", gw.addr).await;
        // Answered: the connection holds its slot.
        assert!(
            exchange_kept(&mut stream, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        held.push(stream);
    }
    let mut third = connect_from("127.0.0.2", gw.addr).await;
    let refused = read_to_close(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    // Another address is not affected.
    let mut other = connect_from("127.0.0.3", gw.addr).await;
    assert!(
        exchange_kept(&mut other, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(
        scrape(&gw)
            .await
            .value("mjgate_client_limited_total", &[("limit", "connections")]),
        1.0
    );
    // A slot given back is a slot to use.
    drop(held.pop());
    poll_until("a closed connection's slot is free again", || async {
        let mut again = connect_from("127.0.0.2", gw.addr).await;
        let head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
        exchange_to_close(&mut again, head)
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

// ---- the access log ----

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    poll_until("the access lines were written", || async {
        read_lines(path).len() >= count
    })
    .await;
    read_lines(path)
}

struct Running {
    child: std::process::Child,
    addr: String,
    config: crate::config_cli::tempfile_path::TempPath,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape_url(&self.url("/metrics")).await.value(name, labels)
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.config.0, text).unwrap();
    }

    fn hangup(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Runs `mjgate --config <its file> <args> --url <it>`, as an operator at its shell would.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        mjgate()
            .arg("--config")
            .arg(&self.config.0)
            .args(args)
            .args(["--url", &self.url("")])
            .output()
            .unwrap()
    }

    async fn reloads(&self, result: &str, count: f64) {
        poll_until(&format!("a reload counted as {result}"), || async {
            self.metric("mjgate_config_reloads_total", &[("result", result)])
                .await
                == count
        })
        .await;
    }
}

fn run(config: &str) -> Running {
    let config = write_config(config);
    let (child, addr) = spawn_listening(mjgate().arg("--config").arg(&config.0));
    Running {
        child,
        addr,
        config,
    }
}

fn temp_log(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mjgate-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_who_asked_for_what_field_by_field_and_a_reload_changes_its_format() {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let log = temp_log("access");
    let text = |format: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[artifacts]\nenabled = false\n\
             [cache]\nin_progress_ttl = \"1h\"\n[log]\naccess = true\naccess_format = \"{format}\"\naccess_to = {:?}\n",
            sim.url(),
            log.display().to_string()
        )
    };
    let mut gw = run(&text("json"));
    let asked = |id: &str, request_id: &str| {
        let mut fetch = request(
            Method::GET,
            &gw.url(&format!("/mj/task/{id}/fetch?note=private")),
            Some(KEY_A),
            "",
        );
        let headers = fetch.headers_mut();
        headers.insert("user-agent", "probe/1.0".parse().unwrap());
        headers.insert("x-request-id", request_id.parse().unwrap());
        headers.insert("referer", "http://127.0.0.1/app".parse().unwrap());
        fetch
    };
    let miss = send(asked("t", "req-miss")).await;
    let hit = send(asked("t", "req-hit")).await;
    assert!(hit.cache_status().contains("hit"), "{hit:?}");
    let lines = wait_lines(&log, 2).await;
    let line = |i: usize| -> Value { serde_json::from_str(&lines[i]).unwrap() };
    let (first, second) = (line(0), line(1));
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/mj/task/t/fetch", "the query is dropped");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], miss.body.len() as u64);
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["route"], "fetch");
    assert_eq!(first["request_id"], "req-miss");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["peer"], "127.0.0.1");
    assert_eq!(first["user_agent"], "probe/1.0");
    assert_eq!(first["referer"], "http://127.0.0.1/app");
    assert_eq!(first["http"], "HTTP/1.1");
    assert!(first.get("tls").is_none_or(Value::is_null), "cleartext");
    let credential = first["credential"].as_str().unwrap();
    assert_eq!(credential.len(), 8);
    assert!(credential.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first["trace_id"].as_str().unwrap().len(), 32);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["request_id"], "req-hit");
    assert!(
        second.get("upstream_ms").is_none_or(Value::is_null),
        "a hit made no call"
    );
    let all = std::fs::read_to_string(&log).unwrap();
    assert!(!all.contains("sk-key-a"), "never the credential");
    assert!(!all.contains("private"), "never the query");

    // nginx's combined format, by reload: new requests only, same process, same connections.
    gw.rewrite(&text("combined"));
    gw.hangup();
    gw.reloads("ok", 1.0).await;
    send(asked("t", "req-combined")).await;
    // (The scrapes that waited for the reload wrote lines too.)
    poll_until("the combined line was written", || async {
        read_lines(&log).iter().any(|l| l.contains("req-combined"))
    })
    .await;
    let lines = read_lines(&log);
    let combined = lines.iter().find(|l| l.contains("req-combined")).unwrap();
    assert!(
        combined.starts_with(&format!("127.0.0.1 - {credential} [")),
        "{combined}"
    );
    assert!(
        combined.contains("\"GET /mj/task/t/fetch HTTP/1.1\" 200 ")
            && combined.contains("\"http://127.0.0.1/app\" \"probe/1.0\""),
        "{combined}"
    );
    assert!(terminate(&mut gw.child).success());
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_its_client_left_is_logged_on_its_route_as_incomplete() {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "busy", "IN_PROGRESS");
    let log = temp_log("access-left");
    let mut gw = run(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[artifacts]\nenabled = false\n\
         [log]\naccess = true\naccess_to = {:?}\n",
        sim.url(),
        log.display().to_string()
    ));
    let first = send(request(
        Method::GET,
        &gw.url("/mj/task/busy/fetch"),
        Some(KEY_A),
        "",
    ))
    .await;
    let mut held = request(
        Method::GET,
        &gw.url("/mj/task/busy/fetch?wait=30s"),
        Some(KEY_A),
        "",
    );
    held.headers_mut()
        .insert("if-none-match", first.header("etag").parse().unwrap());
    held.headers_mut()
        .insert("x-request-id", "req-left".parse().unwrap());
    let waiting = tokio::spawn(client().request(held));
    poll_until("the long-poll is held", || async {
        gw.metric("mjgate_open_long_polls", &[]).await == 1.0
    })
    .await;
    waiting.abort(); // the client leaves
    poll_until("the abandoned long-poll's line was written", || async {
        read_lines(&log).iter().any(|l| l.contains("req-left"))
    })
    .await;
    let lines = read_lines(&log);
    let line: Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("req-left")).unwrap()).unwrap();
    assert_eq!(line["route"], "long_poll", "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert!(terminate(&mut gw.child).success());
    let _ = std::fs::remove_file(&log);
}

// ---- reload without restart ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_ttl_under_load_with_every_request_answered_and_a_bad_one_changes_nothing()
 {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    let text = |ttl: &str, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[admin]\ntoken = \"{TOKEN}\"\n[upstream]\nurl = \"{}\"\n\
             [artifacts]\nenabled = false\n[cache]\nin_progress_ttl = \"{ttl}\"\n{extra}",
            sim.url()
        )
    };
    let mut gw = run(&text("1h", ""));
    let url = gw.url("/mj/task/t/fetch");
    // Load: keep-alive connections polling the task the whole time, every answer kept.
    let load = tokio::spawn({
        let url = url.clone();
        async move {
            let pooled = client();
            let mut statuses = Vec::new();
            for _ in 0..400 {
                let fetch = request(Method::GET, &url, Some(KEY_A), "");
                let reply = tokio::time::timeout(Duration::from_secs(10), pooled.request(fetch))
                    .await
                    .map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0))
                    .unwrap_or(0);
                statuses.push(reply);
            }
            statuses
        }
    });
    poll_until("the load is under way", || async {
        sim.fetch_calls("t") == 1
    })
    .await;
    gw.rewrite(&text("1ms", ""));
    gw.hangup();
    gw.reloads("ok", 1.0).await;
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "every request answered: {statuses:?}"
    );
    // The cache was kept (no second call before the reload) and the new TTL holds for it now.
    poll_until("the shorter TTL sends polls upstream again", || async {
        send(request(Method::GET, &url, Some(KEY_A), "")).await;
        sim.fetch_calls("t") > 2
    })
    .await;

    // A file that fails validation is refused whole; the running config keeps serving.
    gw.rewrite(&text("1h", "[batch]\nmax_ids = \"many\"\n"));
    gw.hangup();
    gw.reloads("invalid", 1.0).await;
    let shown = send(request(
        Method::GET,
        &gw.url("/admin/config"),
        Some(&format!("Bearer {TOKEN}")),
        "",
    ))
    .await;
    assert_eq!(shown.status, 200);
    assert!(
        shown.body.windows(3).any(|w| w == b"1ms"),
        "still the reloaded TTL"
    );

    // A key only a restart applies: named, refused, nothing else taken from the file.
    gw.rewrite(&text("2s", "").replace("127.0.0.1:0", "127.0.0.1:1"));
    let out = gw.cli(&["reload"]);
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("listen"), "{said}");
    gw.reloads("needs_restart", 1.0).await;
    let diff = gw.cli(&["check-config", "--diff"]);
    assert_eq!(diff.status.code(), Some(3), "{diff:?}");
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.contains("listen") && diff.contains("cache.in_progress_ttl"),
        "{diff}"
    );

    // And `mjgate reload` applies a good one.
    gw.rewrite(&text("2s", ""));
    let out = gw.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cache.in_progress_ttl"));
    gw.reloads("ok", 2.0).await;
    assert!(terminate(&mut gw.child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_family_and_keeps_the_others_cache() {
    use mjgate::tools::simulator::Api;
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    sim.create_task_in(Api::Luma, KEY_A, "a", "completed");
    // Luma's route, claimed by an operator's own family once the file says so.
    let acme = r#"
[families.acme-video]
status_routes = ["/luma/generations/{id}"]
status_at = ["/state"]
id_at = ["/id"]
success = ["completed"]
not_found = [{ status = 404 }]
"#;
    let text = |extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[artifacts]\nenabled = false\n\
             [families.luma]\nenabled = false\n{extra}",
            sim.url()
        )
    };
    let mut gw = run(&text(""));
    let fetch = |path: &str| send(request(Method::GET, &gw.url(path), Some(KEY_A), ""));
    assert_eq!(fetch("/mj/task/t/fetch").await.status, 200);
    // Not a family yet: every poll goes upstream.
    for _ in 0..2 {
        assert_eq!(fetch("/luma/generations/a").await.status, 200);
    }
    assert_eq!(sim.fetch_calls_in(Api::Luma, "a"), 2, "passed through");

    gw.rewrite(&text(acme));
    gw.hangup();
    gw.reloads("ok", 1.0).await;
    for _ in 0..3 {
        assert_eq!(fetch("/luma/generations/a").await.status, 200);
    }
    assert_eq!(
        sim.fetch_calls_in(Api::Luma, "a"),
        3,
        "cached from the reload on"
    );
    assert_eq!(fetch("/mj/task/t/fetch").await.status, 200);
    assert_eq!(
        sim.fetch_calls("t"),
        1,
        "the other families' entries were kept"
    );
    assert_eq!(
        gw.metric(
            "mjgate_task_lookups_total",
            &[("family", "acme-video"), ("cache", "hit")]
        )
        .await,
        2.0,
        "the new family is counted"
    );

    // Taken away again: its route is an ordinary path once more.
    gw.rewrite(&text(""));
    gw.hangup();
    gw.reloads("ok", 2.0).await;
    assert_eq!(fetch("/luma/generations/a").await.status, 200);
    assert_eq!(
        sim.fetch_calls_in(Api::Luma, "a"),
        4,
        "passed through again"
    );
    assert_eq!(fetch("/mj/task/t/fetch").await.status, 200);
    assert_eq!(sim.fetch_calls("t"), 1);
    assert!(terminate(&mut gw.child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_webhook_secret_and_moves_the_links_to_kept_files() {
    const ROTATED: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let receiver = Receiver::start(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.set_link_ttl(Some(Duration::from_secs(3600)));
    // Submitted tasks run until the test finishes them.
    sim.set_task_duration(Duration::from_secs(3600));
    sim.create_task(KEY_A, "done", "SUCCESS");
    let dir = std::env::temp_dir().join(format!("mjgate-reload-files-{}", std::process::id()));
    // Where clients are told the files are: names only, never dialled here.
    let (before, after) = ("http://127.0.0.2:7001", "http://127.0.0.3:7002");
    let text = |secret: &str, public: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[cache]\nin_progress_ttl = \"200ms\"\n\
             [webhooks]\nsecret = \"{secret}\"\nallow_private = true\nfirst_retry = \"100ms\"\n\
             [artifacts]\ndir = \"{}\"\npublic_url = \"{public}\"\n",
            sim.url(),
            dir.display()
        )
    };
    let mut gw = run(&text(SECRET, before));
    let link = |path: &str| {
        let url = gw.url(path);
        async move {
            let answer = send(request(Method::GET, &url, Some(KEY_A), "")).await;
            answer.json()["imageUrl"].as_str().unwrap_or("").to_owned()
        }
    };
    poll_until("the finished task's file is kept", || async {
        link("/mj/task/done/fetch").await.starts_with(before)
    })
    .await;
    let body = serde_json::json!({"prompt": "a cat", "notifyHook": receiver.url()}).to_string();
    let submitted = send(request(
        Method::POST,
        &gw.url("/mj/submit/imagine"),
        Some(KEY_A),
        &body,
    ))
    .await;
    let id = submitted.json()["result"].as_str().unwrap().to_owned();
    poll_until("a first event is delivered", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    assert!(receiver.deliveries()[0].signed_with(SECRET));

    gw.rewrite(&text(ROTATED, after));
    gw.hangup();
    gw.reloads("ok", 1.0).await;
    sim.set_status(&id, "SUCCESS");
    let finished = receiver.wait_for_status("SUCCESS").await;
    let last = finished.last().unwrap();
    assert!(last.signed_with(ROTATED), "signed with the new secret");
    assert!(!last.signed_with(SECRET));
    assert!(
        last.json()["imageUrl"].as_str().unwrap().starts_with(after),
        "{}",
        last.json()
    );
    // An entry kept before the reload is linked under the new name too.
    assert!(link("/mj/task/done/fetch").await.starts_with(after));
    assert_eq!(sim.fetch_calls("done"), 1, "from the cache, rebased");
    assert!(terminate(&mut gw.child).success());
    let _ = std::fs::remove_dir_all(dir);
}
