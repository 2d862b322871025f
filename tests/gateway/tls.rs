//! TLS both ways: an https upstream behind a private CA (cached, pooled, HTTP/2 by ALPN), certificate
//! faults as plain-worded 502s that open the breaker instead of being retried, and a TLS listener over
//! HTTP/1.1 and HTTP/2 whose certificate rotates without a failed request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::*;

/// A simulator serving https with a `localhost` certificate from `pki`.
async fn tls_simulator(pki: &Pki) -> Simulator {
    Simulator::start_tls(pki.leaf().server_config())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_https_upstream_behind_a_private_ca_is_cached_over_one_pooled_http2_connection() {
    let pki = Pki::new("upstream");
    let sim = tls_simulator(&pki).await;
    let gw = start_gateway(config(
        &sim.url(),
        &format!("[upstream]\nca_file = {}\n", toml_path(&pki.ca_file())),
    ))
    .await;
    for id in ["t1", "t2", "t3", "t4", "t5"] {
        sim.create_task(KEY_A, id, "SUCCESS");
    }
    for id in ["t1", "t1", "t2", "t3", "t1"] {
        let reply = fetch(&gw, id, KEY_A).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["id"], id);
    }
    let batch = send(request(
        Method::POST,
        &gw.url("/mj/task/list-by-condition"),
        Some(KEY_A),
        r#"{"ids":["t1","t4","t5"]}"#,
    ))
    .await;
    assert_eq!(batch.status, 200);
    assert_eq!(batch.json().as_array().unwrap().len(), 3);
    assert_eq!(sim.fetch_calls("t1"), 1, "a finished task is fetched once");
    assert_eq!(
        sim.list_calls(),
        vec![vec!["t4".to_owned(), "t5".to_owned()]]
    );
    assert_eq!(sim.total_calls(), 4);
    assert_eq!(sim.tls_handshakes(), 1, "four calls over one connection");
    assert_eq!(sim.h2_handshakes(), 1, "HTTP/2 chosen by ALPN");
}

#[tokio::test]
async fn refused_upstream_certificates_are_plain_502s_counted_and_then_failed_fast() {
    let pki = Pki::new("faults");
    let sim = tls_simulator(&pki).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let ca = toml_path(&pki.ca_file());
    let expired = pki.leaf_with(|params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let expired_sim = Simulator::start_tls(expired.server_config()).await.unwrap();
    for (url, extra, says, cause) in [
        (
            sim.url(),
            String::new(),
            "not signed by a trusted authority",
            "unknown_issuer",
        ),
        (
            sim.url_with_host("127.0.0.1"),
            format!("ca_file = {ca}\n"),
            "for another name",
            "wrong_name",
        ),
        (
            expired_sim.url(),
            format!("ca_file = {ca}\n"),
            "expired",
            "expired",
        ),
    ] {
        let gw = start_gateway(config(
            &url,
            &format!("[upstream]\nbreaker_failures = 2\nbreaker_cooldown = \"1m\"\n{extra}"),
        ))
        .await;
        for _ in 0..2 {
            let reply = fetch(&gw, "t", KEY_A).await;
            assert_eq!(reply.status, 502, "{url}");
            let description = reply.json()["description"].as_str().unwrap().to_owned();
            assert!(description.contains(says), "{url}: {description}");
            assert!(!description.contains("rustls"), "{description}");
        }
        // The breaker is open: no more handshakes are attempted for a while.
        for _ in 0..5 {
            assert_eq!(fetch(&gw, "t", KEY_A).await.status, 502);
        }
        let metrics = scrape(&gw).await;
        assert_eq!(
            metrics.value("mjgate_upstream_tls_errors_total", &[("cause", cause)]),
            2.0,
            "{url}: two refusals, then the circuit opened"
        );
        assert_eq!(metrics.value("mjgate_upstream_circuit_open", &[]), 1.0);
    }
    assert_eq!(sim.total_calls() + expired_sim.total_calls(), 0);
}

/// A gateway whose main listener serves TLS with `leaf`, its files checked every 100 ms.
async fn tls_gateway(pki: &Pki, leaf: &Leaf) -> (Simulator, Gateway) {
    let cert = pki.write("cert.pem", &leaf.cert_pem);
    let key = pki.write("key.pem", &leaf.key_pem);
    start(&format!(
        "[tls]\ncert_file = {}\nkey_file = {}\nreload_interval = \"100ms\"\n",
        toml_path(&cert),
        toml_path(&key)
    ))
    .await
}

/// Fetches `id` over https, trusting `pki`, with `http2` or HTTP/1.1, on a new connection.
async fn fetch_tls(pki: &Pki, gw: &Gateway, id: &str, http2: bool) -> (Version, u16) {
    get_tls(pki, gw, &format!("/mj/task/{id}/fetch"), http2, &[]).await
}

/// `GET path` over https with `headers`, as `fetch_tls` sends it.
async fn get_tls(
    pki: &Pki,
    gw: &Gateway,
    path: &str,
    http2: bool,
    headers: &[(&str, &str)],
) -> (Version, u16) {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_max_idle_per_host(0)
        .build(connector);
    let url = format!("https://localhost:{}{path}", gw.addr.port());
    let mut request = Request::get(url).header("authorization", KEY_A);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("in time")
        .expect("an answer over TLS");
    let (version, status) = (response.version(), response.status().as_u16());
    let _ = response.into_body().collect().await;
    (version, status)
}

#[tokio::test]
async fn the_listener_serves_tls_over_http_1_1_and_http_2_chosen_by_alpn() {
    let pki = Pki::new("listener");
    let (sim, gw) = tls_gateway(&pki, &pki.leaf()).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    assert_eq!(
        fetch_tls(&pki, &gw, "t", false).await,
        (Version::HTTP_11, 200)
    );
    assert_eq!(
        fetch_tls(&pki, &gw, "t", true).await,
        (Version::HTTP_2, 200)
    );
    assert_eq!(sim.fetch_calls("t"), 1, "the second was a hit");
    // Cleartext on a TLS port gets no answer, and is counted as a failed handshake.
    assert!(
        try_send(request(Method::GET, &gw.url("/healthz"), None, ""))
            .await
            .is_err()
    );
    let metrics = scrape_tls(&pki, &gw).await;
    assert_eq!(
        metrics.value("mjgate_tls_handshakes_total", &[("result", "ok")]),
        3.0
    );
    assert_eq!(
        metrics.value("mjgate_tls_handshakes_total", &[("result", "error")]),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_shakes_hands_and_then_says_nothing_is_closed_after_the_head_timeout() {
    let pki = Pki::new("silent");
    let leaf = pki.leaf();
    let cert = pki.write("cert.pem", &leaf.cert_pem);
    let key = pki.write("key.pem", &leaf.key_pem);
    let (_sim, gw) = start(&format!(
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1h\"\n[tls]\ncert_file = {}\nkey_file = {}\n",
        toml_path(&cert),
        toml_path(&key)
    ))
    .await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"h2"])));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .expect("handshake");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
    )
    .await
    .expect("closed well before the idle timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// `/metrics` over TLS.
async fn scrape_tls(pki: &Pki, gw: &Gateway) -> Scrape {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let url = format!("https://localhost:{}/metrics", gw.addr.port());
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Scrape::parse(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_failed_request_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new("rotation");
    let first = pki.leaf();
    let (sim, gw) = tls_gateway(&pki, &first).await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    assert_eq!(pki.presented_certificate(gw.addr).await, first.der);

    // Clients keep fetching, each on a new connection, while the files are replaced one by one
    // (a reload may see the new certificate with the old key: it must keep the old pair then).
    let polling = {
        let pki_dir_client = Arc::new(pki.client_config(&[]));
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(fetch_over(&pki_dir_client, addr).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    let second = pki.leaf();
    tokio::time::sleep(Duration::from_millis(50)).await;
    pki.write("cert.pem", &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(150)).await;
    pki.write("key.pem", &second.key_pem);
    let statuses = polling.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    poll_until("the rotated certificate served", || async {
        pki.presented_certificate(gw.addr).await == second.der
    })
    .await;

    // A broken pair: logged, counted, and the second certificate keeps serving.
    let before = scrape_tls(&pki, &gw).await;
    pki.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    poll_until("the broken pair counted", || async {
        scrape_tls(&pki, &gw)
            .await
            .value("mjgate_tls_reloads_total", &[("result", "error")])
            > before.value("mjgate_tls_reloads_total", &[("result", "error")])
    })
    .await;
    assert_eq!(pki.presented_certificate(gw.addr).await, second.der);
    assert_eq!(
        fetch_tls(&pki, &gw, "t", true).await,
        (Version::HTTP_2, 200)
    );
    let after = scrape_tls(&pki, &gw).await;
    assert!(after.value("mjgate_tls_reloads_total", &[("result", "ok")]) >= 1.0);
}

/// One fetch over a new TLS connection to `addr`; its status, or 0 when it failed.
async fn fetch_over(client_config: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> u16 {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**client_config).clone())
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let request = Request::get(format!("https://localhost:{}/mj/task/t/fetch", addr.port()))
        .header("authorization", KEY_A)
        .body(Full::new(Bytes::new()))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => response.status().as_u16(),
        _ => 0,
    }
}

#[test]
fn tls_files_are_checked_at_start_up_naming_the_key() {
    let pki = Pki::new("config");
    let leaf = pki.leaf();
    let other = pki.leaf();
    let cert = pki.write("cert.pem", &leaf.cert_pem);
    let wrong_key = pki.write("other-key.pem", &other.key_pem);
    let missing = pki.dir.join("missing.pem");
    let cases = [
        (
            format!(
                "[upstream]\nurl = \"https://localhost:1\"\nca_file = {}\n",
                toml_path(&missing)
            ),
            "upstream.ca_file",
        ),
        (
            format!(
                "[upstream]\nurl = \"http://a\"\n[tls]\ncert_file = {}\nkey_file = {}\n",
                toml_path(&cert),
                toml_path(&wrong_key)
            ),
            "tls.key_file",
        ),
        (
            format!(
                "[upstream]\nurl = \"http://a\"\n[tls]\ncert_file = {}\n",
                toml_path(&cert)
            ),
            "tls.key_file",
        ),
        (
            format!(
                "[upstream]\nurl = \"http://a\"\n[tls]\ncert_file = {}\nkey_file = {}\n",
                toml_path(&missing),
                toml_path(&wrong_key)
            ),
            "tls.cert_file",
        ),
    ];
    for (text, key) in cases {
        let error = mjgate::Config::from_toml(&text, &Default::default())
            .expect_err(key)
            .to_string();
        assert!(error.contains(key), "{error}");
    }
}

#[tokio::test]
async fn the_upstream_is_told_the_client_came_over_https_and_never_a_clients_own_forwarded_host() {
    let pki = Pki::new("forwarding");
    let (sim, gw) = tls_gateway(&pki, &pki.leaf()).await;
    for http2 in [false, true] {
        let claims = [
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "gopher"),
        ];
        let (_, status) = get_tls(&pki, &gw, "/v1/models", http2, &claims).await;
        assert_eq!(status, 404, "passed through to the simulator");
        let forwarded = sim.requests().pop().unwrap();
        let header = |name: &str| forwarded.headers[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-forwarded-proto"), "https", "http2: {http2}");
        assert!(
            header("forwarded").ends_with(";proto=https"),
            "{}",
            header("forwarded")
        );
        assert_eq!(
            header("x-forwarded-host"),
            format!("localhost:{}", gw.addr.port()),
            "the host this hop was asked for, over HTTP/2 too (:authority)"
        );
        assert_eq!(
            forwarded.headers.get_all("x-forwarded-host").iter().count(),
            1
        );
    }
}
