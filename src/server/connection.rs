//! One client connection from accept to close: the TLS handshake, telling HTTP/2 from HTTP/1,
//! serving with hyper, the idle and drain checks, and parking an idle HTTP/1 connection.
//!
//! Parking is nginx's keep-alive: hyper keeps a read buffer and a header buffer for as long as it
//! serves a connection (8-16 KB allocated, a page or more of each written), so an idle keep-alive
//! connection costs tens of kilobytes. Once a plaintext HTTP/1 connection has had no request for
//! `server.park_idle_after` and nothing is in flight, hyper's connection is taken apart and dropped;
//! the socket alone waits for readability, and the next request gets a fresh hyper connection.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

use super::proxy_protocol;
use super::stream::{ClientIo, ClientStream};
use crate::access::AccessRecord;
use crate::body::{CutOff, ResponseBody};
use crate::gateway::{Gateway, Handler, Listener, Peer};
use crate::pipeline::{Envelope, Enveloped, Logged};

/// How every connection is served: hyper's two protocol builders and the connection timers.
pub(super) struct Serving {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    pub(super) head_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) send_timeout: Duration,
    /// `None`: idle connections are never parked.
    pub(super) park_after: Option<Duration>,
    /// `server.proxy_protocol`: main-listener connections begin with a PROXY protocol header.
    pub(super) proxy_protocol: bool,
}

impl Serving {
    /// How often a connection looks at what it has done since the last look: often enough to park
    /// an idle connection `park_after` after its last request, and to close it `idle_timeout` after.
    fn tick(&self) -> Duration {
        match self.park_after {
            Some(park_after) => park_after.min(self.idle_timeout),
            None => self.idle_timeout,
        }
    }
}

/// What a connection has done, kept by its service, its response bodies and its stream, and read by
/// the connection loop to tell an idle connection (which may park) from a busy one.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests handed to the service, ever.
    started: AtomicUsize,
    /// Responses whose body hyper dropped: sent, or abandoned with the connection.
    finished: AtomicUsize,
    /// Whether the last request had a body that hyper may still be reading or draining: set when
    /// it arrives, cleared by a success or redirect answer (the handlers read a body whole before
    /// they succeed). An error answer may have left it unread, so it holds off parking until the
    /// next request without a body.
    with_body: AtomicBool,
    /// Whether the last write to the socket had to wait: hyper still holds bytes to send.
    pub(super) write_blocked: AtomicBool,
    /// When writes began to wait (milliseconds since `epoch`), if they wait now.
    pub(super) blocked_since: std::sync::atomic::AtomicU64,
    pub(super) epoch: std::sync::OnceLock<Instant>,
}

impl Activity {
    /// Notes whether a write had to wait; the moment it began to, when it did.
    pub(super) fn wrote(&self, blocked: bool) {
        let was = self.write_blocked.swap(blocked, Ordering::Relaxed);
        if blocked && !was {
            let epoch = *self.epoch.get_or_init(Instant::now);
            let since = Instant::now().duration_since(epoch).as_millis() as u64;
            self.blocked_since.store(since, Ordering::Relaxed);
        }
    }

    /// How long writes have waited on the client without taking a byte; zero when they do not.
    fn blocked_for(&self, now: Instant) -> Duration {
        if !self.write_blocked.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let Some(epoch) = self.epoch.get() else {
            return Duration::ZERO;
        };
        let since = *epoch + Duration::from_millis(self.blocked_since.load(Ordering::Relaxed));
        now.saturating_duration_since(since)
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// A request whose answer hyper has not finished with.
    fn in_flight(&self) -> bool {
        self.started() != self.finished.load(Ordering::Relaxed)
    }

    /// Every answer sent whole, and no write waiting on the socket.
    fn nothing_to_send(&self) -> bool {
        !self.in_flight() && !self.write_blocked.load(Ordering::Relaxed)
    }

    /// Nothing in flight, nothing left to read of a request, nothing left to write: hyper sits
    /// waiting for the next request head, and taking its connection apart loses nothing.
    fn quiescent(&self) -> bool {
        self.nothing_to_send() && !self.with_body.load(Ordering::Relaxed)
    }
}

/// One accepted connection and what serving it needs.
pub(super) struct Connection {
    pub(super) gateway: Arc<Gateway>,
    pub(super) serving: Arc<Serving>,
    /// Set on the main listener when it serves TLS.
    pub(super) tls: Option<TlsAcceptor>,
    /// Turns true when the drain begins.
    pub(super) closing: watch::Receiver<bool>,
    pub(super) peer: SocketAddr,
    pub(super) listener: Listener,
    /// Set by a response that needs the connection gone at once (a stalled event stream).
    pub(super) cut_off: Arc<CutOff>,
}

/// Whether a connection may be parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parking {
    /// HTTP/2: never (its streams share the connection).
    Never,
    /// HTTP/1 that is not parked (TLS, or parking turned off).
    Http1,
    /// Plaintext HTTP/1: parked when idle.
    Idle,
}

/// How a spell of serving with hyper ended.
enum SpellEnd {
    /// The connection is over: closed by the client, by an error, or by the idle or drain check.
    Over,
    /// Idle and quiescent: hyper's connection was taken apart, the socket is to park.
    Park,
}

impl Connection {
    /// Serves the connection until it ends. On the drain signal, or when a whole `idle_timeout`
    /// passes without a new request, it is shut down gracefully: HTTP/1 finishes the response in
    /// flight and closes, HTTP/2 sends GOAWAY and lets its open streams finish. `header_read_timeout`
    /// closes idle HTTP/1 connections sooner (parked ones too); the idle check is what closes idle
    /// HTTP/2 ones, which would otherwise hold a connection slot for as long as the client likes.
    pub(super) async fn serve(mut self, stream: TcpStream) {
        // hyper's own head timeout starts with the first byte, and nothing else times the handshake
        // or the read that tells HTTP/1 from HTTP/2: like nginx's client_header_timeout, the first
        // request must arrive within `header_read_timeout` of the connection.
        let first_request = Instant::now() + self.serving.head_timeout;
        let mut stream = stream;
        if self.serving.proxy_protocol && self.listener == Listener::Main {
            let Some(client) = self.proxy_header(&mut stream, first_request).await else {
                return;
            };
            self.peer = client;
        }
        // Per-address connections, counted for the client (a trusted balancer carries many).
        let _slot = if self.listener == Listener::Main && !self.gateway.trusts(self.peer.ip()) {
            match self.gateway.client_limits().connect(self.peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    self.gateway.metrics().client_limited(true);
                    tracing::debug!(peer = %self.peer, "per-address connection limit reached: closed");
                    self.refuse(
                        &mut stream,
                        "429 Too Many Requests",
                        "too many connections from this address (server.per_client_connections)",
                        Some(1),
                    )
                    .await;
                    return;
                }
            }
        } else {
            None
        };
        let Some(stream) = self.handshake(stream).await else {
            return;
        };
        let tls_version = match &stream {
            ClientStream::Tls(tls) => match tls.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
                Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
                _ => Some("TLS"),
            },
            ClientStream::Plain(_) => None,
        };
        let activity = Arc::new(Activity::default());
        let mut served = ClientIo {
            unread: Bytes::new(),
            stream,
            activity: Arc::clone(&activity),
        };
        let mut closing = self.closing.clone();
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout_at(first_request, sniff(&mut served)) => sniffed,
            // A client that connected and said nothing yet must not hold the drain up.
            _ = closing.wait_for(|closing| *closing) => return,
        };
        let Ok(Some(http2)) = sniffed else {
            return;
        };
        let peer = Peer {
            addr: self.peer,
            listener: self.listener,
            tls: self.tls.is_some(),
            tls_version,
            cut_off: Arc::clone(&self.cut_off),
        };
        let service = ConnectionService {
            pipeline: std::cell::RefCell::new(self.gateway.pipeline(peer.clone())),
            gateway: Arc::clone(&self.gateway),
            peer,
            activity: Arc::clone(&activity),
        };
        if http2 {
            let connection = self
                .serving
                .http2
                .serve_connection(TokioIo::new(served), service);
            let mut connection = Box::pin(connection);
            self.supervise(
                &mut connection,
                &activity,
                Some(first_request),
                Parking::Never,
            )
            .await;
        } else {
            self.serve_http1(served, service, &activity, first_request)
                .await;
        }
    }

    /// HTTP/1: serves with hyper, parks when idle, and serves again when the client writes.
    async fn serve_http1(
        &mut self,
        mut served: ClientIo,
        mut service: ConnectionService,
        activity: &Arc<Activity>,
        first_request: Instant,
    ) {
        let parking = match (&self.serving.park_after, &served.stream) {
            (Some(_), ClientStream::Plain(_)) => Parking::Idle,
            _ => Parking::Http1,
        };
        let mut first_request = Some(first_request);
        loop {
            let connection = self
                .serving
                .http1
                .serve_connection(TokioIo::new(served), service);
            let mut connection = Http1(Box::new(connection));
            let ended = self
                .supervise(&mut connection, activity, first_request.take(), parking)
                .await;
            let parts = connection.0.into_parts();
            let mut io = parts.io.into_inner();
            service = parts.service;
            if let SpellEnd::Over = ended {
                // hyper was told not to shut the stream down (it might have been parked): do it here.
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return;
            }
            io.unread = leftover(parts.read_buf, std::mem::take(&mut io.unread));
            if io.unread.is_empty() {
                // Woken by the client: its next request must still come by the deadline hyper
                // would have given it, however slowly it trickles in.
                let Some(deadline) = self.park(&io).await else {
                    return;
                };
                first_request = Some(deadline);
            }
            served = io;
        }
    }

    /// Waits, holding nothing but the socket, until the client writes again; then the deadline for
    /// its next request head, or `None` to close. The client has `header_read_timeout` since its
    /// last answer to send its next request (as it would with hyper holding the connection), and the
    /// drain closes a parked connection at once.
    async fn park(&mut self, served: &ClientIo) -> Option<Instant> {
        let ClientStream::Plain(socket) = &served.stream else {
            return Some(Instant::now() + self.serving.head_timeout);
        };
        let _parked = self.gateway.metrics().parked_connection();
        let serving = &self.serving;
        let quiet_for = serving.head_timeout.min(serving.idle_timeout);
        let deadline = Instant::now() + quiet_for.saturating_sub(serving.tick());
        tokio::select! {
            readable = socket.readable() => readable.is_ok().then_some(deadline),
            _ = self.closing.wait_for(|closing| *closing) => None,
            () = tokio::time::sleep_until(deadline) => None,
        }
    }

    /// Drives one hyper connection until it ends, checking every tick whether it went quiet: closed
    /// after `idle_timeout` without a request, taken apart to park (`Parking::Idle`) after
    /// `park_after`.
    async fn supervise(
        &mut self,
        connection: &mut impl HyperConnection,
        activity: &Activity,
        first_request: Option<Instant>,
        parking: Parking,
    ) -> SpellEnd {
        let serving = Arc::clone(&self.serving);
        let peer = self.peer;
        let drain = self.closing.wait_for(|closing| *closing);
        let tick_timer = tokio::time::sleep(serving.tick());
        let first_timer = tokio::time::sleep_until(first_request.unwrap_or_else(Instant::now));
        let cut_off = Arc::clone(&self.cut_off);
        let cut = cut_off.wait();
        // Looked at four times per `send_timeout`: a stalled reader goes within 1.25 of it.
        let send_look = serving.send_timeout / 4;
        let send_timer = tokio::time::sleep(send_look);
        tokio::pin!(drain, tick_timer, first_timer, cut, send_timer);
        let mut first_pending = first_request.is_some();
        let mut closed = false;
        let mut taken_apart = false;
        let mut quiet = Quiet::new(activity);
        let result = loop {
            tokio::select! {
                biased;
                result = poll_fn(|cx| connection.poll_done(cx)) => break result,
                // Dropped at once, hyper's buffers and every stream with it: no graceful close
                // waits on a reader that does not read.
                () = &mut cut => {
                    tracing::debug!(%peer, "connection cut off: a reader fell behind");
                    return SpellEnd::Over;
                }
                // nginx's `send_timeout`: a client that takes no byte of what it asked for loses
                // the connection, and hyper's buffers and every stream of it go with it.
                () = &mut send_timer => {
                    let now = Instant::now();
                    if activity.blocked_for(now) >= serving.send_timeout {
                        tracing::debug!(%peer, "connection dropped: the client took nothing for send_timeout");
                        self.gateway.metrics().send_timed_out();
                        return SpellEnd::Over;
                    }
                    send_timer.as_mut().reset(now + send_look);
                }
                () = &mut first_timer, if first_pending => {
                    first_pending = false;
                    if !quiet.served_any(activity) {
                        tracing::debug!(%peer, "no request within header_read_timeout: closed");
                        return SpellEnd::Over;
                    }
                }
                _ = &mut drain, if !closed => {
                    // HTTP/1 with nothing to finish: hyper would wait for a next head that may
                    // never come (or come slowly) before it closed.
                    if parking != Parking::Never && activity.nothing_to_send() {
                        return SpellEnd::Over;
                    }
                    connection.shut_down();
                    closed = true;
                }
                () = &mut tick_timer, if !closed => {
                    let now = Instant::now();
                    let next = match quiet.look(now, activity, &serving, parking == Parking::Idle) {
                        Look::Again(next) => next,
                        Look::Close => {
                            connection.shut_down();
                            closed = true;
                            continue;
                        }
                        Look::Park => {
                            // hyper is idle, so this closes its connection at once without a byte
                            // written; `poll_done` then hands the stream back.
                            connection.shut_down();
                            closed = true;
                            taken_apart = true;
                            continue;
                        }
                    };
                    tick_timer.as_mut().reset(now + next);
                }
            }
        };
        match result {
            Ok(()) if taken_apart => SpellEnd::Park,
            Ok(()) => SpellEnd::Over,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                SpellEnd::Over
            }
        }
    }

    /// Reads the connection's PROXY protocol header by `deadline`: the client it names (the peer for
    /// the balancer's own connections), or `None` when the connection is to go (counted, and for a
    /// plaintext listener answered with a `400` that says why).
    async fn proxy_header(&self, stream: &mut TcpStream, deadline: Instant) -> Option<SocketAddr> {
        let metrics = self.gateway.metrics();
        let refused = match tokio::time::timeout_at(deadline, proxy_protocol::read(stream)).await {
            Ok(Ok(proxy_protocol::Header::Proxied(client))) => {
                metrics.proxy_header("proxied");
                return Some(client);
            }
            Ok(Ok(proxy_protocol::Header::Local)) => {
                metrics.proxy_header("local");
                return Some(self.peer);
            }
            Ok(Err(malformed)) => {
                metrics.proxy_header(malformed.label());
                malformed.to_string()
            }
            Err(_) => {
                metrics.proxy_header("timeout");
                "no PROXY protocol header within server.header_read_timeout".to_owned()
            }
        };
        tracing::debug!(peer = %self.peer, reason = %refused, "connection refused");
        self.refuse(
            stream,
            "400 Bad Request",
            &format!("{refused} (server.proxy_protocol is on: connect through the balancer)"),
            None,
        )
        .await;
        None
    }

    /// Answers a connection about to be closed unserved, before reading its request, when the
    /// listener is plaintext (a TLS client would read it as a broken handshake, so it is just
    /// closed): the status and a JSON body that says why, written within a second or not at all.
    async fn refuse(
        &self,
        stream: &mut TcpStream,
        status: &str,
        description: &str,
        retry_after: Option<u64>,
    ) {
        if self.tls.is_some() {
            return;
        }
        let code = status.split(' ').next().unwrap_or("400");
        let body = serde_json::json!({
            "code": code.parse::<u16>().unwrap_or(400),
            "description": description,
            "type": "mjgate_error",
        })
        .to_string();
        let retry_after = retry_after
            .map(|secs| format!("retry-after: {secs}\r\n"))
            .unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    }

    /// The stream to serve: the socket, or TLS over it once the handshake is done. The handshake runs
    /// in the connection's own task, not the accept loop, under the head's deadline: a client that
    /// connects and never says hello holds nothing but its own slot.
    async fn handshake(&mut self, stream: TcpStream) -> Option<ClientStream> {
        let Some(acceptor) = &self.tls else {
            return Some(ClientStream::Plain(stream));
        };
        let metrics = self.gateway.metrics();
        match tokio::time::timeout(self.serving.head_timeout, acceptor.accept(stream)).await {
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

/// What a connection has been doing, as its ticks see it.
struct Quiet {
    /// Requests started when this hyper connection began: a fresh hyper connection counts itself
    /// busy until it has served one, and only then does shutting it down take it apart at once
    /// rather than end keep-alive after the next answer.
    fresh: usize,
    /// Requests started as of the last tick.
    seen: usize,
    /// The tick that first saw the latest request.
    last_request: Instant,
}

/// How often a connection with a request in flight looks at itself.
const BUSY_LOOK: Duration = Duration::from_secs(5);

/// What a tick decided.
enum Look {
    /// Look again after this long.
    Again(Duration),
    /// No request for `idle_timeout`: close gracefully.
    Close,
    /// Idle for `park_after` with nothing in flight: park.
    Park,
}

impl Quiet {
    fn new(activity: &Activity) -> Self {
        let started = activity.started();
        Quiet {
            fresh: started,
            seen: started,
            last_request: Instant::now(),
        }
    }

    /// Whether a request started since this hyper connection began.
    fn served_any(&self, activity: &Activity) -> bool {
        activity.started() != self.fresh
    }

    fn look(
        &mut self,
        now: Instant,
        activity: &Activity,
        serving: &Serving,
        may_park: bool,
    ) -> Look {
        let started = activity.started();
        if started != self.seen {
            self.seen = started;
            self.last_request = now;
            return Look::Again(serving.tick());
        }
        if activity.in_flight() {
            // Serving a request is not idling: the idle clock starts once the answer is sent.
            self.last_request = now;
        }
        let quiet_for = now.duration_since(self.last_request);
        if quiet_for >= serving.idle_timeout {
            return Look::Close;
        }
        if !activity.quiescent() {
            // A held long-poll or stream: nothing to park, so look seldom (15,000 held streams
            // would otherwise wake 60,000 times a second for nothing). The connection parks at
            // most this much later than it could once its answer is sent.
            return Look::Again(serving.tick().max(BUSY_LOOK).min(serving.idle_timeout));
        }
        let park_after = serving.park_after.unwrap_or(Duration::MAX);
        if may_park && self.seen != self.fresh && quiet_for >= park_after {
            return Look::Park;
        }
        Look::Again(serving.tick())
    }
}

/// What the next hyper connection reads first: what hyper had read but not parsed, then what it had
/// not read of `unread`. Copied, never a view: even empty, hyper's `read_buf` shares its whole read
/// buffer, which a parked connection would then keep (8-16 KB each).
fn leftover(read_buf: Bytes, unread: Bytes) -> Bytes {
    match (read_buf.is_empty(), unread.is_empty()) {
        (true, _) => unread,
        (false, true) => Bytes::copy_from_slice(&read_buf),
        (false, false) => [read_buf, unread].concat().into(),
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/2's connection preface from an HTTP/1 request: `true` for
/// HTTP/2, `None` when the client closed or failed first. What was read is left for hyper to read.
/// TLS clients that chose `h2` by ALPN are sniffed the same way, so nothing is sent to a client
/// before it has said something.
async fn sniff(served: &mut ClientIo) -> Option<bool> {
    // One read takes a whole typical request head, so HTTP/1 costs no extra system call.
    let mut read = BytesMut::with_capacity(1024);
    let http2 = loop {
        match served.read_buf(&mut read).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let seen = &read[..read.len().min(H2_PREFACE.len())];
        if seen != &H2_PREFACE[..seen.len()] {
            break false;
        }
        if seen.len() == H2_PREFACE.len() {
            break true;
        }
    };
    served.unread = read.freeze();
    Some(http2)
}

/// What `supervise` needs of a hyper connection, HTTP/1 or HTTP/2.
trait HyperConnection {
    /// Ready when the connection is over; an HTTP/1 stream is then still open, for `into_parts`.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    /// Finish what is in flight, then end (at once when idle).
    fn shut_down(&mut self);
}

/// hyper's HTTP/1 connection, boxed so a parked connection's task holds none of it.
struct Http1(Box<http1::Connection<TokioIo<ClientIo>, ConnectionService>>);

impl HyperConnection for Http1 {
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.0.poll_without_shutdown(cx)
    }

    fn shut_down(&mut self) {
        Pin::new(self.0.as_mut()).graceful_shutdown();
    }
}

type Http2 = Pin<Box<http2::Connection<TokioIo<ClientIo>, ConnectionService, TokioExecutor>>>;

impl HyperConnection for Http2 {
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.as_mut().poll(cx)
    }

    fn shut_down(&mut self) {
        self.as_mut().graceful_shutdown();
    }
}

/// The service hyper calls for each request of one connection: the gateway's pipeline, with the
/// connection's activity kept.
struct ConnectionService {
    /// Built once per connection; hyper calls HTTP/1 one request at a time, so the cell is never
    /// borrowed twice (HTTP/2's concurrent streams get a fresh pipeline if it is).
    pipeline: std::cell::RefCell<Envelope<Handler>>,
    gateway: Arc<Gateway>,
    peer: Peer,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Counted;

    fn call(&self, request: Request<Incoming>) -> Counted {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        self.activity
            .with_body
            .store(!request.body().is_end_stream(), Ordering::Relaxed);
        let inner = match self.pipeline.try_borrow_mut() {
            Ok(mut pipeline) => pipeline.call(request),
            Err(_) => self.gateway.pipeline(self.peer.clone()).call(request),
        };
        Counted {
            inner,
            activity: Some(Arc::clone(&self.activity)),
        }
    }
}

/// A request's answer on its way: the pipeline's future, whose body will count itself finished.
struct Counted {
    inner: Enveloped,
    activity: Option<Arc<Activity>>,
}

impl Future for Counted {
    type Output = Result<Response<CountedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Ok(Logged { response, record }) = ready!(Pin::new(&mut this.inner).poll(cx));
        let activity = this.activity.take().unwrap_or_default();
        if response.status().as_u16() < 400 {
            activity.with_body.store(false, Ordering::Relaxed);
        }
        Poll::Ready(Ok(response.map(|body| CountedBody {
            body,
            activity,
            record,
        })))
    }
}

/// A response body that tells the connection, when hyper drops it, that its request is done, and
/// counts what it sent for the request's access-log line (written as the record drops with it).
pub(super) struct CountedBody {
    body: ResponseBody,
    activity: Arc<Activity>,
    record: Option<Box<AccessRecord>>,
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.activity.finished.fetch_add(1, Ordering::Relaxed);
        if let Some(record) = &mut self.record
            && self.body.is_end_stream()
        {
            record.completed();
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.sent(data.len());
                    }
                }
                Poll::Ready(None) => record.completed(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
