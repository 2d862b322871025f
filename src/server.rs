//! The accept loop: connection limits, HTTP/1.1 and HTTP/2 serving, and the graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ServerConfig};
use crate::error::Error;
use crate::gateway::{Gateway, Listener};
use crate::tls::{ListenerCert, Reload};
use tower::Service as _;

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
    let mut config = config;
    let listeners = listeners.into();
    // The admin routes move off the main listener only when there is an admin listener to take them.
    if listeners.admin.is_none() {
        config.admin_listen = None;
    }
    let gateway = Arc::new(Gateway::new(&config)?);
    gateway.start_background();
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
    let builder = Arc::new(http_builder(config));
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
            builder: Arc::clone(&builder),
            tls: acceptor.clone().filter(|_| listener == Listener::Main),
            closing: closing.subscribe(),
            head_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            peer,
            listener,
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
    Ok(drain(&closing, &connections, config).await)
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn http_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    // HTTP/2 peers are pinged when quiet and dropped when they do not answer: a client that opens
    // a connection and then ignores it (or vanished without a FIN) is gone within two idle timeouts,
    // while a live one answers pings on its own and keeps its streams.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.idle_timeout))
        .keep_alive_timeout(config.idle_timeout.min(Duration::from_secs(20)))
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Tells every connection to finish and close, then waits for them, `shutdown_grace` at most.
async fn drain(
    closing: &watch::Sender<bool>,
    connections: &Semaphore,
    config: &ServerConfig,
) -> Drain {
    tracing::info!(grace = ?config.shutdown_grace, "shutdown signal received, draining connections");
    closing.send_replace(true);
    // Every connection holds a permit until it is gone: all of them back means the drain is done.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let drain =
        match tokio::time::timeout(config.shutdown_grace, connections.acquire_many(all)).await {
            Ok(_) => Drain::Complete,
            Err(_) => Drain::TimedOut,
        };
    match drain {
        Drain::Complete => tracing::info!("drain complete"),
        Drain::TimedOut => tracing::warn!("grace period elapsed with requests still in flight"),
    }
    drain
}

/// One accepted connection and what serving it needs.
struct Connection {
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Set on the main listener when it serves TLS.
    tls: Option<TlsAcceptor>,
    /// Turns true when the drain begins.
    closing: watch::Receiver<bool>,
    head_timeout: Duration,
    idle_timeout: Duration,
    peer: SocketAddr,
    listener: Listener,
}

impl Connection {
    /// Serves the connection until it ends. On the drain signal, or when a whole `idle_timeout`
    /// passes without a new request, it is shut down gracefully: HTTP/1 finishes the response in
    /// flight and closes, HTTP/2 sends GOAWAY and lets its open streams finish. `header_read_timeout`
    /// closes idle HTTP/1 connections sooner; the idle check is what closes idle HTTP/2 ones, which
    /// would otherwise hold a connection slot for as long as the client likes.
    async fn serve(mut self, stream: TcpStream) {
        let Some(stream) = self.handshake(stream).await else {
            return;
        };
        let peer = self.peer;
        // Set by every request, cleared by the idle check: a connection that went a whole
        // `idle_timeout` without one is closed. Unset until the first request arrives.
        let active = Arc::new(AtomicBool::new(false));
        let service = {
            let gateway = Arc::clone(&self.gateway);
            let active = Arc::clone(&active);
            let listener = self.listener;
            // Built once per connection; hyper calls it one request at a time, so the cell is never
            // borrowed twice (a fresh pipeline would serve if it were).
            let pipeline = std::cell::RefCell::new(gateway.pipeline(peer, listener));
            service_fn(move |request| {
                active.store(true, Ordering::Relaxed);
                match pipeline.try_borrow_mut() {
                    Ok(mut pipeline) => pipeline.call(request),
                    Err(_) => gateway.pipeline(peer, listener).call(request),
                }
            })
        };
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        // Built once, not per wake-up: this loop runs on every read and write of the connection.
        let idle_timeout = self.idle_timeout;
        let drain = self.closing.wait_for(|closing| *closing);
        let idle_check = tokio::time::sleep(idle_timeout);
        // hyper's own head timeout starts with the first byte, and nothing times the read that
        // tells HTTP/1 from HTTP/2: a client that connects (and shakes hands) but never sends a
        // request would hold its slot until the idle check. Like nginx's client_header_timeout,
        // the first request must arrive within `header_read_timeout` of the connection.
        let first_request = tokio::time::sleep(self.head_timeout);
        tokio::pin!(drain, idle_check, first_request);
        let mut closed = false;
        let mut first_seen = false;
        let result = loop {
            tokio::select! {
                biased;
                result = connection.as_mut() => break result,
                () = &mut first_request, if !first_seen => {
                    if !active.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "no request within header_read_timeout: closed");
                        break Ok(());
                    }
                    first_seen = true;
                }
                _ = &mut drain, if !closed => {
                    connection.as_mut().graceful_shutdown();
                    closed = true;
                }
                () = &mut idle_check, if !closed => {
                    if active.swap(false, Ordering::Relaxed) {
                        idle_check.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    } else {
                        connection.as_mut().graceful_shutdown();
                        closed = true;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// The stream to serve: the socket, or TLS over it once the handshake is done. The handshake runs
    /// in the connection's own task, not the accept loop, under the head's deadline: a client that
    /// connects and never says hello holds nothing but its own slot.
    async fn handshake(&mut self, stream: TcpStream) -> Option<ClientStream> {
        let Some(acceptor) = &self.tls else {
            return Some(ClientStream::Plain(stream));
        };
        let metrics = self.gateway.metrics();
        match tokio::time::timeout(self.head_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                metrics.tls_handshake(true);
                Some(ClientStream::Tls(Box::new(stream)))
            }
            failed => {
                metrics.tls_handshake(false);
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                None
            }
        }
    }
}

/// A client's byte stream: the socket itself, or TLS over it. One type for both, so one connection
/// loop serves either (the match per read and write costs nothing measurable next to the syscall).
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
