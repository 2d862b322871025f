//! The binary's command line and config handling, run as a user would run it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

pub(crate) fn mjgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mjgate"));
    command
        .env_remove("MJGATE_LISTEN")
        .env_remove("MJGATE_UPSTREAM")
        .env_remove("RUST_LOG")
        // Kept files are on by default, in ./artifacts: not in the source tree.
        .env(
            "MJGATE_ARTIFACTS_DIR",
            std::env::temp_dir().join(format!("mjgate-cli-artifacts-{}", std::process::id())),
        )
        .stdin(Stdio::null());
    command
}

pub(crate) fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

pub(crate) mod tempfile_path {
    //! A config file in the system temp dir, removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "mjgate-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn an_unknown_key_stops_start_up_naming_the_key() {
    let file = write_config(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nin_progress_tll = \"3s\"\n",
    );
    let out = mjgate().arg("--config").arg(&file.0).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`cache.in_progress_tll`"), "{stderr}");
}

#[test]
fn an_invalid_value_stops_start_up_naming_the_key() {
    let file = write_config(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nin_progress_ttl = \"three\"\n",
    );
    let out = mjgate().arg("--config").arg(&file.0).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`cache.in_progress_ttl`"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = mjgate()
        .args(["--config", "/nonexistent/mjgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mjgate.toml"));
}

/// Starts the binary and reads its log up to the "listening" line. Returns the child, its address and
/// the rest of its stderr, unread: the caller drains it or, to play a stuck log consumer, does not.
pub(crate) fn spawn_logging(
    command: &mut Command,
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStderr>,
) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = read_listening_addr(&mut stderr);
    (child, addr, stderr)
}

/// `mjgate --config path check-config`, run to its end.
fn check_config(path: &std::path::Path) -> std::process::Output {
    mjgate()
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .output()
        .unwrap()
}

fn read_listening_addr(stderr: &mut impl BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the binary exited without logging its address"
        );
        if let Some(at) = line.find("addr=") {
            return line[at + 5..].split_whitespace().next().unwrap().to_owned();
        }
    }
}

/// Starts the binary, waits for its "listening" line, and returns the child and its address; the
/// rest of its log is drained in the background.
pub(crate) fn spawn_listening(command: &mut Command) -> (std::process::Child, String) {
    let (child, addr, stderr) = spawn_logging(command);
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(drop));
    (child, addr)
}

pub(crate) fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SIGTERM, as an orchestrator sends it.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the binary did not exit on SIGTERM");
}

#[tokio::test]
async fn flags_beat_env_and_env_beats_the_file_and_sigterm_exits_zero() {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let file = write_config(
        "listen = \"127.0.0.1:1\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[cache]\nin_progress_ttl = \"3s\"\n",
    );
    // The file's listen address (port 1) would fail to bind; env and flag replace it.
    let (mut child, addr) = spawn_listening(
        mjgate()
            .arg("--config")
            .arg(&file.0)
            .args(["--listen", "127.0.0.1:0"])
            .env("MJGATE_LISTEN", "127.0.0.1:1")
            .env("MJGATE_UPSTREAM", sim.url()),
    );
    let url = format!("http://{addr}/mj/task/t/fetch");
    let reply = send(request(http::Method::GET, &url, Some(KEY_A), "")).await;
    assert_eq!(
        reply.status, 200,
        "MJGATE_UPSTREAM replaced the file's upstream"
    );
    let status = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let file = write_config(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[log]\nformat = \"json\"\n",
    );
    let mut child = mjgate()
        .arg("--config")
        .arg(&file.0)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut messages = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let message = value["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        messages.push(message.clone());
        if message == "listening" {
            assert!(
                value["fields"]["addr"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
            break;
        }
    }
    assert!(messages.iter().any(|m| m == "listening"), "{messages:?}");
    // SIGTERM right after "listening": the handler must already be installed.
    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_shipped_shared_cache_section_is_valid_once_uncommented() {
    let shipped = include_str!("../../config/mjgate.toml");
    let start = shipped
        .find("# [shared_cache]")
        .expect("the section is documented");
    let mut text = shipped[..start].to_owned();
    for line in shipped[start..].lines() {
        // Keys are `# key = ...`; their comments are `# # ...`.
        let line = line.strip_prefix("# ").unwrap_or(line);
        if !line.starts_with('#') {
            text.push_str(line);
            text.push('\n');
        }
    }
    let config = mjgate::Config::from_toml(&text, &Default::default()).expect("valid");
    let shared = config.shared_cache.expect("on once uncommented");
    assert_eq!(shared.terminal_ttl, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(shared.lease_ttl, Duration::from_secs(5));
    assert_eq!(shared.timeout, Duration::from_millis(250));
    assert_eq!(shared.poll_interval, Duration::from_millis(100));
    assert_eq!(shared.retry_interval, Duration::from_secs(1));
    assert_eq!(shared.key_prefix, "mjgate:");
}

#[test]
fn the_shipped_config_sets_the_watch_defaults() {
    let shipped = mjgate::Config::from_toml(
        include_str!("../../config/mjgate.toml"),
        &Default::default(),
    )
    .unwrap();
    let defaults = mjgate::Config::for_upstream("http://127.0.0.1:1").unwrap();
    assert_eq!(shipped.watch.max_wait, defaults.watch.max_wait);
    assert_eq!(shipped.watch.max_open, defaults.watch.max_open);
    assert_eq!(
        shipped.watch.max_open_per_credential,
        defaults.watch.max_open_per_credential
    );
    assert_eq!(shipped.watch.heartbeat, defaults.watch.heartbeat);
    assert!(
        shipped.shared_cache.is_none(),
        "the shipped config runs one instance"
    );
}

#[tokio::test]
async fn a_log_reader_that_stops_reading_stalls_no_request_and_dropped_lines_are_counted() {
    let sim = Simulator::start().await.unwrap();
    sim.create_task(KEY_A, "t", "SUCCESS");
    let file = write_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[log]\naccess = true\n",
        sim.url()
    ));
    // Read up to the address, then hold the pipe open without reading: a stuck log consumer.
    let mut command = mjgate();
    command.arg("--config").arg(&file.0);
    let (mut child, addr, unread) =
        tokio::task::spawn_blocking(move || spawn_logging(&mut command))
            .await
            .unwrap();

    // One access line per request: far more than the pipe (64 KiB) and the writer's queue
    // (16,384 lines) hold.
    let url = format!("http://{addr}/mj/task/t/fetch");
    let client = client();
    let requests = futures_util::future::join_all((0..8).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut ok = 0;
            for _ in 0..2_500 {
                let reply = client
                    .request(request(http::Method::GET, &url, Some(KEY_A), ""))
                    .await
                    .unwrap();
                ok += usize::from(reply.status() == 200);
                http_body_util::BodyExt::collect(reply.into_body())
                    .await
                    .unwrap();
            }
            ok
        }
    }));
    // Generous: a gateway that waits on its log pipe never finishes at all.
    let answered = tokio::time::timeout(Duration::from_secs(60), requests)
        .await
        .expect("requests stalled behind the log pipe");
    assert_eq!(answered.iter().sum::<usize>(), 20_000);

    let metrics = scrape_url(&format!("http://{addr}/metrics")).await;
    assert!(metrics.value("mjgate_log_lines_dropped_total", &[]) > 0.0);
    let status = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(unread);
}

#[test]
fn check_config_prints_what_the_gateway_would_run_with_and_hides_secrets() {
    let out = mjgate()
        .args(["--config", "config/mjgate.toml", "check-config"])
        .env(
            "MJGATE_REDIS_URL",
            "redis://user:hunter2-pass@127.0.0.1:6379/0",
        )
        .env("MJGATE_FINGERPRINT_SECRET", "fingerprint-secret-0123456789")
        .env("MJGATE_LISTEN", "127.0.0.1:18080")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("config ok"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:18080"), "env applies: {stdout}");
    assert!(stdout.contains("https://crazyrouter.com"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:6379"), "{stdout}");
    assert!(
        stdout.contains("families        midjourney, suno, kling, openai-videos"),
        "{stdout}"
    );
    assert!(stdout.contains("gzip answers    on"), "{stdout}");
    assert!(stdout.contains("park idle after 250ms"), "{stdout}");
    for secret in ["hunter2-pass", "fingerprint-secret-0123456789"] {
        assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
    }
}

#[test]
fn a_bad_family_stops_check_config_with_exit_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("mjgate-family-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[families.acme]\nstatus_routes = [\"/acme/{id}/x{id}\"]\nstatus_at = [\"/s\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`families.acme.status_routes`"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_config_answers_by_its_exit_code_even_when_its_reader_is_gone() {
    // `mjgate check-config | grep -q ...` in a pipeline: stdout closed before anything is written.
    let mut child = mjgate()
        .args(["--config", "config/mjgate.toml", "check-config"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn check_config_fails_on_a_bad_file_naming_the_key() {
    let file =
        write_config("[upstream]\nurl = \"http://127.0.0.1:1\"\n[batch]\nmax_ids = \"many\"\n");
    let out = check_config(&file.0);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`batch.max_ids`"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_the_listener_certificate_at_once() {
    let pki = Pki::new("sighup");
    let (first, second) = (pki.leaf(), pki.leaf());
    let cert = pki.write("cert.pem", &first.cert_pem);
    let key = pki.write("key.pem", &first.key_pem);
    let file = write_config(&format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[tls]\ncert_file = {}\nkey_file = {}\nreload_interval = \"1h\"\n",
        toml_path(&cert),
        toml_path(&key)
    ));
    let (mut child, addr) = spawn_listening(mjgate().arg("--config").arg(&file.0));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_eq!(pki.presented_certificate(addr).await, first.der);
    pki.write("cert.pem", &second.cert_pem);
    pki.write("key.pem", &second.key_pem);
    // The files are checked once an hour: only the signal can make the change show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pki.presented_certificate(addr).await, first.der);
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    poll_until("the certificate reloaded on SIGHUP", || async {
        pki.presented_certificate(addr).await == second.der
    })
    .await;
    assert!(terminate(&mut child).success(), "SIGHUP did not end it");
}

#[test]
fn the_shipped_family_example_is_valid_once_uncommented() {
    let shipped = include_str!("../../config/mjgate.toml");
    let start = shipped
        .find("# [families.<name>]")
        .expect("the section is documented");
    let mut text = String::from("[upstream]\nurl = \"http://127.0.0.1:9\"\n");
    for line in shipped[start..].lines().take_while(|l| l.starts_with("# ")) {
        text.push_str(&line["# ".len()..].replace("<name>", "acme"));
        text.push('\n');
    }
    let config = mjgate::Config::from_toml(&text, &Default::default()).expect("valid");
    let acme = config.families.by_name("acme").expect("the example family");
    assert_eq!(
        acme.class_of("succeeded"),
        mjgate::task::TaskClass::Terminal
    );
}

#[test]
fn the_shipped_webhooks_example_is_valid_once_uncommented() {
    let shipped = include_str!("../../config/mjgate.toml");
    let start = shipped
        .find("# [webhooks]")
        .expect("the section is documented");
    let mut text = String::from("[upstream]\nurl = \"http://127.0.0.1:9\"\n");
    for line in shipped[start..].lines().take_while(|l| l.starts_with("# ")) {
        text.push_str(&line["# ".len()..]);
        text.push('\n');
    }
    let config = mjgate::Config::from_toml(&text, &Default::default()).expect("valid");
    let webhooks = config.webhooks.expect("on once uncommented");
    assert!(!webhooks.allow_private);
    assert_eq!(webhooks.max_pending, 10_000);
    assert_eq!(webhooks.retry.max_age, Duration::from_secs(24 * 3600));
}

#[tokio::test]
async fn healthcheck_probes_the_listener_its_config_names() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Simulator::start().await.unwrap();
    let _gw = start_gateway_on(listener, config(&sim.url(), ""));
    let file = write_config(&format!(
        "listen = \"0.0.0.0:{}\"\n[upstream]\nurl = \"{}\"\n",
        addr.port(),
        sim.url()
    ));
    let probe = |path: &'static str| {
        let file = file.0.clone();
        tokio::task::spawn_blocking(move || {
            mjgate()
                .arg("--config")
                .arg(&file)
                .args(["healthcheck", "--path", path])
                .output()
                .unwrap()
        })
    };
    let alive = probe("/healthz").await.unwrap();
    assert!(
        alive.status.success(),
        "{}",
        String::from_utf8_lossy(&alive.stderr)
    );
    assert!(probe("/readyz").await.unwrap().status.success());
    let missing = probe("/nothing-here").await.unwrap();
    assert!(!missing.status.success(), "a 404 is not healthy");
    // A config naming a port nothing listens on: the probe fails, it does not probe 8080.
    let elsewhere = write_config(&format!(
        "listen = \"127.0.0.1:1\"\n[upstream]\nurl = \"{}\"\n",
        sim.url()
    ));
    let dead = tokio::task::spawn_blocking(move || {
        mjgate()
            .arg("--config")
            .arg(&elsewhere.0)
            .arg("healthcheck")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!dead.status.success());
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&dead.stderr)
    );
}

#[test]
fn check_config_names_the_redis_layout_without_its_passwords_and_refuses_bad_ones() {
    let seed_a = format!("redis://mjgate:url-pass-41@127.0.0.1:{}", free_port());
    let seed_b = format!("redis://127.0.0.1:{}", free_port());
    let good = write_config(&format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[shared_cache]\ncluster = [\"{seed_a}\", \"{seed_b}\"]\nfingerprint_secret = \"0123456789abcdef0123456789\"\n"
    ));
    // Nothing listens on the seeds: check-config connects to nothing, so it passes all the same.
    let out = mjgate()
        .env("MJGATE_REDIS_PASSWORD", "env-pass-97")
        .arg("--config")
        .arg(&good.0)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cluster of 2 seed node(s)"), "{text}");
    assert!(
        !text.contains("url-pass-41") && !text.contains("env-pass-97"),
        "{text}"
    );

    for (bad, key) in [
        (
            "redis_url = \"redis://a:1\"\ncluster = [\"redis://b:2\"]",
            "`shared_cache`",
        ),
        (
            "cluster = [\"redis://a:1\", \"rediss://b:2\"]",
            "`shared_cache.cluster`",
        ),
        ("cluster = []", "`shared_cache.cluster`"),
        (
            "redis_url = \"redis://mjgate:pw-66#x@127.0.0.1:1\"",
            "`shared_cache.redis_url`",
        ),
        (
            "cluster = [\"redis://127.0.0.1:1/3\"]",
            "`shared_cache.cluster`",
        ),
        (
            "sentinel = { nodes = [\"h:1\"] }",
            "`shared_cache.sentinel.master`",
        ),
        (
            "sentinel = { master = \"m\", nodes = [\"h:0\"] }",
            "`shared_cache.sentinel.nodes`",
        ),
        (
            "redis_url = \"redis://a:1\"\nca_file = \"/etc/hostname\"",
            "`shared_cache.ca_file`",
        ),
        (
            "redis_url = \"redis://a:1\"\nclient_cert_file = \"/etc/hostname\"\nclient_key_file = \"/etc/hostname\"",
            "`shared_cache.client_cert_file`",
        ),
        (
            "redis_url = \"redis://a:1\"\nkey_prefix = \"{x}\"",
            "`shared_cache.key_prefix`",
        ),
        (
            "redis_url = \"rediss://:pw-66@a:1\"\nclient_cert_file = \"/etc/hostname\"",
            "`shared_cache.client_cert_file`",
        ),
        (
            "redis_url = \"rediss://a:1\"\nca_file = \"/etc/hostname\"",
            "`shared_cache.ca_file`",
        ),
    ] {
        let file = write_config(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[shared_cache]\n{bad}\nfingerprint_secret = \"0123456789abcdef0123456789\"\n"
        ));
        let out = check_config(&file.0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(key), "{bad}: {stderr}");
        assert!(!stderr.contains("pw-66"), "{stderr}");
    }
}

#[test]
fn a_redis_url_the_client_would_misread_is_refused_in_words_that_say_why() {
    for (url, words) in [
        (
            "redis://127.0.0.1:1/?password=secret-77",
            "query parameters the client ignores (`password`)",
        ),
        ("rediss://127.0.0.1:1#insecure", "`#insecure` is refused"),
        ("redis://127.0.0.1:99999", "invalid port number"),
        ("redis://127.0.0.1:1/abc", "not a database number"),
        ("redis://[::1", "invalid IPv6 address"),
    ] {
        let file = write_config(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[shared_cache]\nredis_url = \"{url}\"\nfingerprint_secret = \"0123456789abcdef0123456789\"\n"
        ));
        let out = check_config(&file.0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("`shared_cache.redis_url`"),
            "{url}: {stderr}"
        );
        assert!(stderr.contains(words), "{url}: {stderr}");
        assert!(!stderr.contains("percent-encode"), "{url}: {stderr}");
        assert!(!stderr.contains("secret-77"), "{url}: {stderr}");
    }
}
