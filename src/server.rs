//! The accept loop: connection limits, the TLS listener's certificate, and the graceful drain on shutdown.
//! Each connection is served by `server::connection`; `server::stream` is what hyper reads and writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ServerConfig};
use crate::error::Error;
use crate::gateway::{Gateway, Listener};
use crate::tls::{ListenerCert, Reload};
use crate::work::Settled;

mod connection;
mod proxy_protocol;
mod stream;

use connection::{Connection, Serving};

/// How the drain after a shutdown signal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished its in-flight requests within the grace period.
    Complete,
    /// The grace period ran out with connections still open; they are dropped.
    TimedOut,
}

/// The bound sockets the gateway serves: where clients connect, and optionally the admin listener.
pub struct Listeners {
    pub main: TcpListener,
    /// Serves `/metrics`, `/healthz` and `/readyz` only; when set, the main listener does not.
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(main: TcpListener) -> Self {
        Listeners { main, admin: None }
    }
}

/// Serves the gateway until `shutdown` resolves, then drains in-flight requests.
///
/// Binding and signal handling are the caller's, so tests run this on `127.0.0.1:0` with a oneshot.
/// When `config.admin_listen` is set, `listeners.admin` must be bound to it.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Drain, Error> {
    run_reloadable(listeners, config, None, shutdown).await
}

/// [`run`], reloading the config from `source` on SIGHUP and `POST /admin/reload`.
pub async fn run_reloadable(
    listeners: impl Into<Listeners>,
    config: Config,
    source: Option<crate::reload::Source>,
    shutdown: impl Future<Output = ()>,
) -> Result<Drain, Error> {
    let as_configured = config.clone();
    let mut config = config;
    let listeners = listeners.into();
    // The admin routes move off the main listener only when there is an admin listener to take them.
    if listeners.admin.is_none() {
        config.admin_listen = None;
    }
    let gateway = Arc::new(Gateway::new(&config)?);
    gateway.set_running(as_configured);
    gateway.start_background();
    let _probes: Vec<AbortOnDrop> = crate::upstream::probe::start(gateway.pools())
        .into_iter()
        .map(AbortOnDrop)
        .collect();
    let _reloads = source.map(|source| {
        gateway.set_reload_source(source);
        // Installed now, not when the task first runs: a SIGHUP's default action ends the process.
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        #[cfg(not(unix))]
        let hangup = None::<()>;
        AbortOnDrop(tokio::spawn(reload_on_hangup(Arc::clone(&gateway), hangup)))
    });
    let tls = match &config.tls {
        Some(files) => Some(ListenerCert::load(files)?),
        None => None,
    };
    serve(listeners, gateway, &config.server, tls, shutdown).await
}

/// Accepts from `listener`, or waits for ever when there is none.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The accept loop over an already built gateway. With `tls`, the main listener serves TLS with that
/// certificate (HTTP/2 or HTTP/1.1 by ALPN) and reloads it as its files change; the admin listener
/// stays cleartext.
pub async fn serve(
    listeners: Listeners,
    gateway: Arc<Gateway>,
    config: &ServerConfig,
    tls: Option<Arc<ListenerCert>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Drain, Error> {
    let Listeners { main, admin } = listeners;
    let (acceptor, reloader) = match tls {
        Some(cert) => {
            let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()?));
            let reloader = tokio::spawn(reload_on_change(cert, Arc::clone(&gateway)));
            (Some(acceptor), Some(AbortOnDrop(reloader)))
        }
        None => (None, None),
    };
    let serving = Arc::new(serving(config));
    let connections = Arc::new(Semaphore::new(config.max_connections));
    // Tells every connection to finish what it is serving and close: the drain.
    let (closing, _) = watch::channel(false);
    tokio::pin!(shutdown);

    tracing::info!(addr = %main.local_addr()?, tls = acceptor.is_some(), "listening");
    if let Some(admin) = &admin {
        tracing::info!(admin_addr = %admin.local_addr()?, "admin listening");
    }
    let mut refusals = RefusalLog::default();
    loop {
        let (accepted, listener) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = main.accept() => (accepted, Listener::Main),
            accepted = accept(admin.as_ref()) => (accepted, Listener::Admin),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // Closing at once keeps existing connections healthy; the client sees a reset and retries.
            gateway.metrics().connection_refused();
            refusals.refused(peer, config.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            gateway: Arc::clone(&gateway),
            serving: Arc::clone(&serving),
            tls: acceptor.clone().filter(|_| listener == Listener::Main),
            closing: closing.subscribe(),
            peer,
            listener,
            cut_off: Arc::default(),
        };
        tokio::spawn(async move {
            let open = connection.gateway.metrics().client_connection();
            connection.serve(stream).await;
            drop(open);
            drop(permit);
        });
    }

    drop(main);
    drop(admin);
    drop(reloader);
    gateway.start_draining();
    Ok(drain(&closing, &connections, &gateway, config).await)
}

/// The HTTP/1.1 and HTTP/2 settings and the timers every connection is served with.
fn serving(config: &ServerConfig) -> Serving {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    // HTTP/2 peers are pinged when quiet and dropped when they do not answer: a client that opens
    // a connection and then ignores it (or vanished without a FIN) is gone within two idle timeouts,
    // while a live one answers pings on its own and keeps its streams.
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.idle_timeout))
        .keep_alive_timeout(config.idle_timeout.min(Duration::from_secs(20)))
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    Serving {
        http1,
        http2,
        head_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        send_timeout: config.send_timeout,
        park_after: config.park_idle_after,
        proxy_protocol: config.proxy_protocol,
    }
}

/// Tells every connection to finish and close, then waits for them and for the work spawned on
/// behalf of requests (submits going upstream, collapsed calls, hook trackers handing over), all
/// within one `shutdown_grace`; says what it left behind.
async fn drain(
    closing: &watch::Sender<bool>,
    connections: &Semaphore,
    gateway: &Gateway,
    config: &ServerConfig,
) -> Drain {
    tracing::info!(grace = ?config.shutdown_grace, "shutdown signal received, draining connections");
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    closing.send_replace(true);
    // Every connection holds a permit until it is gone: all of them back means the drain is done.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let connections_done = tokio::time::timeout_at(deadline, connections.acquire_many(all))
        .await
        .is_ok();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let work = gateway.work().settle(left).await;
    match (connections_done, work) {
        (true, Settled::Done) => {
            tracing::info!("drain complete");
            Drain::Complete
        }
        (done, work) => {
            let abandoned = match work {
                Settled::Done => String::new(),
                Settled::Abandoned(left) => left
                    .iter()
                    .map(|(kind, n)| format!("{n} {}", kind.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            tracing::warn!(
                connections_drained = done,
                abandoned = %abandoned,
                "grace period elapsed with work still in flight"
            );
            Drain::TimedOut
        }
    }
}

/// Checks the listener's certificate files every `tls.reload_interval`, and reloads at once on
/// SIGHUP. A broken new pair is logged and counted; the old one keeps serving.
async fn reload_on_change(cert: Arc<ListenerCert>, gateway: Arc<Gateway>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(cert.reload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        let outcome = tokio::select! {
            _ = tick.tick() => cert.reload_if_changed(),
            _ = hangup_received => {
                tracing::info!(signal = "SIGHUP", "reloading the TLS certificate");
                cert.reload()
            }
        };
        match outcome {
            Reload::Unchanged => continue,
            Reload::Reloaded => {
                gateway.metrics().tls_reload(true);
                tracing::info!("TLS certificate reloaded");
            }
            Reload::Failed(e) => {
                gateway.metrics().tls_reload(false);
                tracing::warn!(error = %e, "TLS certificate not reloaded: keeping the current one");
            }
        }
    }
}

/// Reloads the config on every SIGHUP (the listener's certificate reloads on it too).
#[cfg(unix)]
async fn reload_on_hangup(gateway: Arc<Gateway>, hangup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hangup) = hangup else {
        tracing::warn!("cannot listen for SIGHUP: reload with POST /admin/reload");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!(signal = "SIGHUP", "reloading the config");
        // Reading a file: off the workers that serve requests.
        let gateway = Arc::clone(&gateway);
        let _ = tokio::task::spawn_blocking(move || gateway.reload_now()).await;
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_gateway: Arc<Gateway>, _hangup: Option<()>) {}

/// Aborts a background task when the server that started it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connection-limit refusals, logged at most once a second: a connection storm would otherwise turn
/// into a storm of log lines (each refusal is counted in `mjgate_client_connections_refused_total`).
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, peer: std::net::SocketAddr, limit: usize) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            %peer,
            limit,
            also_refused = self.unlogged,
            "connection limit reached, refusing"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}
