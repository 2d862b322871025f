//! The upstream: its base URL, the one pooled HTTP client built at start-up, and the two ways the gateway
//! calls it: buffered (cached routes, whose body must be read) and streamed (passthrough).

pub mod content_coding;
pub mod pool;
pub mod probe;
pub mod protect;

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use crate::body::BoxError;
use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::credential::{Credential, CredentialFingerprint, Fingerprinter, MJ_API_SECRET};
use crate::metrics::{Metrics, RouteLabel, UpstreamResult};
use crate::request::admission::{self, Refused};
use crate::request::body::{self as request_body, BodyFault};
use crate::tls::{self, CertificateFault, FaultLog, TlsError};
use content_coding::DecodeError;
use protect::{CallEnd, Lane, Protection, Refusal};

/// The request body type of the upstream client: empty, a buffer, or a client's stream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Why an upstream call produced no usable answer. Cloneable so one failure can be handed to every
/// collapsed waiter. Its `Display` is what the client is told: the gateway's words, never the source
/// chain (which names hyper's internals and may name internal hosts); that goes to the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made, or one broke before a complete answer: the client gets 502.
    #[error("upstream unreachable: {reason}")]
    Unreachable {
        /// What the client is told.
        reason: &'static str,
        /// The source chain, for the log only.
        detail: String,
        /// No connection could be made at all: only this counts toward opening the breaker.
        connect: bool,
    },
    /// The upstream's TLS certificate was refused: the client gets 502 saying why in plain words. It
    /// counts toward opening the breaker (so a broken certificate is not retried in a tight loop) and
    /// is logged once a minute per cause by the [`FaultLog`], counted per cause in the metrics.
    #[error("upstream unreachable: {}", .0.reason())]
    Certificate(CertificateFault),
    /// The upstream did not answer within `upstream.request_timeout`: the client gets 504.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// A cached route's answer exceeded `upstream.max_body`: the client gets 502.
    #[error("upstream body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// Not sent: backoff after a 429 (429), circuit open (502), or a ceiling reached (503).
    #[error("{0}")]
    Refused(Refusal),
    /// The client's own request body failed while it was forwarded (too large, stalled, malformed or
    /// cut short): the client's error (413, 408, 400), never the upstream's.
    #[error(transparent)]
    ClientBody(BodyFault),
    /// One member of a pool failed: the client is told which (its name, never its address).
    #[error("pool member {member}: {error}")]
    AtMember {
        member: Arc<str>,
        error: Box<UpstreamError>,
    },
}

impl UpstreamError {
    /// A call that reached the upstream but got no usable answer (never counted by the breaker).
    pub fn unreachable(reason: &'static str, detail: impl fmt::Display) -> Self {
        UpstreamError::Unreachable {
            reason,
            detail: detail.to_string(),
            connect: false,
        }
    }

    /// This error, said of pool member `member` (a client error stays the client's).
    pub fn at_member(self, member: &Arc<str>) -> Self {
        match self {
            UpstreamError::ClientBody(_) | UpstreamError::AtMember { .. } => self,
            error => UpstreamError::AtMember {
                member: Arc::clone(member),
                error: Box::new(error),
            },
        }
    }

    /// The error itself, whichever member it happened at.
    fn inner(&self) -> &UpstreamError {
        match self {
            UpstreamError::AtMember { error, .. } => error.inner(),
            error => error,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.inner() {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            // (`inner` is never `AtMember`.)
            UpstreamError::Unreachable { .. }
            | UpstreamError::Certificate(_)
            | UpstreamError::BodyTooLarge(_)
            | UpstreamError::AtMember { .. } => StatusCode::BAD_GATEWAY,
            UpstreamError::Refused(Refusal::Backoff(_)) => StatusCode::TOO_MANY_REQUESTS,
            UpstreamError::Refused(Refusal::CircuitOpen(_)) => StatusCode::BAD_GATEWAY,
            UpstreamError::Refused(Refusal::Overloaded(_)) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::ClientBody(fault) => fault.status(),
        }
    }

    /// Logs a call that failed. A refusal is the gateway's own protection at work (counted in
    /// `mjgate_upstream_refused_total`) and a client's broken body is the client's doing (counted in
    /// `mjgate_client_errors_total`); neither costs the upstream anything, so they are debug lines: at
    /// warn, one client could write a line per request.
    pub fn log(&self) {
        match self.inner() {
            UpstreamError::Refused(_) => tracing::debug!(error = %self, "upstream call refused"),
            UpstreamError::Certificate(_) => tracing::debug!(error = %self, "upstream call failed"),
            UpstreamError::ClientBody(_) => {
                tracing::debug!(error = %self, "client request body failed")
            }
            UpstreamError::Unreachable { detail, .. } => {
                tracing::warn!(error = %self, %detail, "upstream call failed")
            }
            _ => tracing::warn!(error = %self, "upstream call failed"),
        }
    }

    /// Whether the request certainly never reached the upstream: refused by the gateway's own
    /// protection, no connection made, a certificate refused, or the client's body broke before it
    /// was sent. Anything else may have been received (and a submit, acted on).
    pub fn never_sent(&self) -> bool {
        matches!(
            self.inner(),
            UpstreamError::Refused(_)
                | UpstreamError::Unreachable { connect: true, .. }
                | UpstreamError::Certificate(_)
                | UpstreamError::ClientBody(_)
        )
    }

    /// How long the client should wait before trying again, for refusals.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner() {
            UpstreamError::Refused(refusal) => Some(refusal.retry_after()),
            _ => None,
        }
    }

    fn call_end(&self) -> CallEnd {
        match self.inner() {
            UpstreamError::Unreachable { connect: true, .. } | UpstreamError::Certificate(_) => {
                CallEnd::Unreachable
            }
            UpstreamError::Unreachable { connect: false, .. } | UpstreamError::Timeout(_) => {
                CallEnd::NoAnswer
            }
            UpstreamError::ClientBody(_) => CallEnd::ClientFault,
            _ => CallEnd::Other,
        }
    }
}

impl UpstreamResult {
    fn of(result: Result<StatusCode, &UpstreamError>) -> Self {
        match result.map_err(UpstreamError::inner) {
            Ok(status) => UpstreamResult::Status(status.as_u16()),
            Err(UpstreamError::Timeout(_)) => UpstreamResult::Timeout,
            Err(UpstreamError::ClientBody(_)) => UpstreamResult::ClientBody,
            Err(_) => UpstreamResult::Error,
        }
    }
}

/// An upstream answer read whole: what a cached route needs to classify and store it.
#[derive(Debug, Clone)]
pub struct BufferedReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One call on a cached route, read whole.
#[derive(Clone)]
pub struct BufferedCall<'a> {
    pub route: RouteLabel,
    /// Whose call it is, for the per-credential ceilings and backoff.
    pub credential: &'a CredentialFingerprint,
    pub method: http::Method,
    pub path_and_query: &'a str,
    /// The client's request headers, forwarded as for passthrough.
    pub headers: &'a HeaderMap,
    pub client: ClientInfo,
    pub body: Bytes,
}

/// Where the request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client: the connection's peer, or behind trusted proxies the address they name
    /// (`server.trusted_proxies`). What `X-Real-IP` and `True-Client-IP` say.
    pub ip: IpAddr,
    /// The connection's peer: the hop `X-Forwarded-For` and `Forwarded` gain.
    pub peer: IpAddr,
    /// It came over TLS: the upstream is told `https`.
    pub tls: bool,
}

/// The pooled upstream client. Cheap to clone; every clone shares one connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    url: UpstreamUrl,
    request_timeout: Duration,
    max_body: u64,
    /// `server.max_request_body`, to name it when a passthrough body overflows.
    max_request_body: u64,
    metrics: Arc<Metrics>,
    protection: Arc<Protection>,
    certificate_faults: Arc<FaultLog>,
    /// Its name in the pool (`default` for `upstream.url`), and its series under it.
    name: Arc<str>,
    calls: prometheus::IntCounter,
    circuit: prometheus::IntGauge,
}

impl Upstream {
    /// The pooled client for `config`; fails only when its TLS roots cannot be loaded.
    pub fn new(
        config: &UpstreamConfig,
        name: &str,
        max_request_body: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        // SNI is on by default; ALPN (h2, then http/1.1) is set by the builder from the protocols
        // enabled below, so an upstream that speaks HTTP/2 gets it.
        let tls = tls::client_config(config.roots, config.ca_file.as_deref())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Ok(Upstream {
            client,
            url: config.url.clone(),
            request_timeout: config.request_timeout,
            max_body: config.max_body,
            max_request_body,
            protection: Arc::new(Protection::new(config)),
            certificate_faults: Arc::default(),
            name: Arc::from(name),
            calls: metrics.members.calls.with_label_values(&[name]),
            circuit: metrics.members.circuit_open.with_label_values(&[name]),
            metrics,
        })
    }

    /// A client error as the gateway reports it: the client's own body, a refused certificate, or an
    /// upstream that could not be reached.
    fn client_error(&self, err: hyper_util::client::legacy::Error) -> UpstreamError {
        if let Some(fault) = request_body::fault_in(&err, self.max_request_body) {
            return UpstreamError::ClientBody(fault);
        }
        // The legacy client's Display is terse ("client error (Connect)"); the source chain says why.
        let mut detail = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if let Some(fault) = CertificateFault::find(&err) {
            self.metrics.upstream_tls_error(fault.label());
            self.certificate_faults.log(fault, &detail);
            return UpstreamError::Certificate(fault);
        }
        let connect = err.is_connect();
        let reason = if connect {
            "could not connect"
        } else {
            "the connection failed before a complete answer"
        };
        UpstreamError::Unreachable {
            reason,
            detail,
            connect,
        }
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// The upstream's `host[:port]`, for the operator's routes and logs.
    pub fn authority(&self) -> &str {
        self.url.authority()
    }

    /// Its name in the pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `upstream.max_body`: the most of an answer read whole.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// Admits a call through the ceilings, backoff and breaker, counting refusals.
    async fn admit(
        &self,
        credential: &CredentialFingerprint,
        lane: Lane,
    ) -> Result<crate::upstream::protect::Admitted, UpstreamError> {
        self.protection
            .admit(credential, lane)
            .await
            .map_err(|refusal| {
                self.metrics.upstream_refused(refusal.label());
                UpstreamError::Refused(refusal)
            })
    }

    /// Reports an admitted call's end to the breaker and the backoff table.
    fn record(
        &self,
        admitted: crate::upstream::protect::Admitted,
        credential: &CredentialFingerprint,
        end: CallEnd,
        headers: Option<&HeaderMap>,
    ) {
        self.protection.record(admitted, credential, end, headers);
        self.circuit
            .set(i64::from(self.protection.breaker().is_open()));
    }

    /// Calls a cached route and reads the whole answer, within `request_timeout` and `max_body`.
    ///
    /// `headers` are the client's request headers; they are forwarded as for passthrough, except that an
    /// identity body is asked for, so the status can be read and one entry serves every client.
    pub async fn call_buffered(
        &self,
        call: BufferedCall<'_>,
    ) -> Result<BufferedReply, UpstreamError> {
        let BufferedCall {
            route,
            credential,
            method,
            path_and_query,
            headers,
            client,
            body,
        } = call;
        let mut forwarded = headers.clone();
        prepare_cached_request_headers(&mut forwarded, client);
        let body: UpstreamBody = if body.is_empty() {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            Full::new(body).map_err(|never| match never {}).boxed()
        };
        let span = crate::trace::upstream_span(&method, path_and_query);
        let request =
            span.in_scope(|| self.build_request(method, path_and_query, forwarded, body))?;
        let admitted = self.admit(credential, Lane::Cached).await?;
        let max_body = self.max_body;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.client_error(e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_body as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        UpstreamError::BodyTooLarge(max_body)
                    } else {
                        UpstreamError::unreachable("the answer's body broke off", e)
                    }
                })?
                .to_bytes();
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            let body =
                content_coding::decode(&mut headers, body, max_body).map_err(|e| match e {
                    DecodeError::TooLarge(limit) => UpstreamError::BodyTooLarge(limit),
                    DecodeError::Corrupt(_) => {
                        UpstreamError::unreachable("the answer's body could not be decoded", e)
                    }
                })?;
            Ok(BufferedReply {
                status: parts.status,
                headers,
                body,
            })
        };
        let call = self.metrics.upstream_call(route);
        self.calls.inc();
        let began = std::time::Instant::now();
        let result = match tokio::time::timeout(self.request_timeout, exchange)
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
        };
        crate::access::note_upstream(began.elapsed());
        crate::trace::upstream_answer(&span, result.as_ref().map(|reply| reply.status));
        call.finish(UpstreamResult::of(
            result.as_ref().map(|reply| reply.status),
        ));
        match &result {
            Ok(reply) => self.record(
                admitted,
                credential,
                CallEnd::Answered(reply.status.as_u16()),
                Some(&reply.headers),
            ),
            Err(e) => self.record(admitted, credential, e.call_end(), None),
        }
        result
    }

    /// Forwards a request untouched but for hop-by-hop and forwarding headers; both bodies stream.
    /// The timeout covers the response head only: a long download is not cut off.
    pub async fn forward(
        &self,
        route: RouteLabel,
        credential: &CredentialFingerprint,
        request: Request<UpstreamBody>,
        client: ClientInfo,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.forward_within(route, credential, request, client, self.request_timeout)
            .await
    }

    /// [`forward`](Self::forward), the response head awaited at most `timeout` (a submit with an
    /// idempotency key waits `upstream.submit_timeout`).
    pub async fn forward_within(
        &self,
        route: RouteLabel,
        credential: &CredentialFingerprint,
        request: Request<UpstreamBody>,
        client: ClientInfo,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        prepare_request_headers(&mut parts.headers, client);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let span = crate::trace::upstream_span(&parts.method, path_and_query);
        let request = span
            .in_scope(|| self.build_request(parts.method, path_and_query, parts.headers, body))?;
        let admitted = self.admit(credential, Lane::Passthrough).await?;
        let call = self.metrics.upstream_call(route);
        self.calls.inc();
        let began = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, self.client.request(request))
            .instrument(span.clone())
            .await
        {
            Ok(result) => result.map_err(|e| self.client_error(e)),
            Err(_) => Err(UpstreamError::Timeout(timeout)),
        };
        // To the answer's head: a forwarded body streams to the client after it.
        crate::access::note_upstream(began.elapsed());
        crate::trace::upstream_answer(&span, result.as_ref().map(Response::status));
        call.finish(UpstreamResult::of(result.as_ref().map(Response::status)));
        match &result {
            Ok(response) => self.record(
                admitted,
                credential,
                CallEnd::Answered(response.status().as_u16()),
                Some(response.headers()),
            ),
            Err(e) => self.record(admitted, credential, e.call_end(), None),
        }
        let mut response = result?;
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    fn build_request(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: UpstreamBody,
    ) -> Result<Request<UpstreamBody>, UpstreamError> {
        let uri = self.url.join(path_and_query).map_err(|e| {
            UpstreamError::unreachable("the request path cannot be sent upstream", e)
        })?;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        // The pooled client negotiates HTTP/2 by ALPN on its own; a client's HTTP/2 must not force it.
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        // The current span (the call's) is the upstream's parent; the client's own context is not
        // passed on as it came.
        let trace = crate::access::current_notes().and_then(|notes| notes.trace());
        crate::trace::outgoing(request.headers_mut(), trace);
        Ok(request)
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers a client may send that would make one client's upstream answer unfit for the others
/// collapsed on it: a `206` for one client's `Range`, a `304` for one client's validators. Cached
/// routes call the upstream unconditionally and for the whole answer; the gateway answers validators
/// itself, from its own `ETag`s. `Expect` goes too: the body is already in hand.
const PER_CLIENT: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::EXPECT,
    header::CONTENT_LENGTH,
];

/// Headers of a request on a cached route (fetch, batch, a watch's poll) as the upstream sees them:
/// as for passthrough, less anything one client could make the shared answer depend on, and asking
/// for a plain JSON body so the status can be read and one entry serves every client.
pub fn prepare_cached_request_headers(headers: &mut HeaderMap, client: ClientInfo) {
    prepare_request_headers(headers, client);
    for name in &PER_CLIENT {
        headers.remove(name);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// Headers of a client request as the upstream should see them: hop-by-hop removed, `Host` left for the
/// client to set from the upstream URI, and the client's address added.
pub fn prepare_request_headers(headers: &mut HeaderMap, client: ClientInfo) {
    // The gateway's own header: a client naming it in `Connection` must not strip it.
    let request_id = headers.get(&crate::request::id::X_REQUEST_ID).cloned();
    strip_hop_by_hop(headers);
    if let Some(request_id) = request_id {
        headers.insert(crate::request::id::X_REQUEST_ID.clone(), request_id);
    }
    // The host the client asked for, as this hop saw it; a client's own claim never passes.
    let host = headers.remove(header::HOST);
    headers.remove(&X_FORWARDED_HOST);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let proto = if client.tls { "https" } else { "http" };
    let ip =
        HeaderValue::from_str(&client.ip.to_string()).expect("an IP address is a valid header");
    // Every prior hop, however many header lines carried them, then this connection's peer.
    let peer_ip = client.peer.to_string();
    let peer = HeaderValue::from_str(&peer_ip).expect("an IP address is a valid header");
    let xff = joined(headers, &X_FORWARDED_FOR, &peer_ip).unwrap_or(peer);
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    // RFC 7239 likewise: prior elements kept, this hop's appended (IPv6 quoted and bracketed).
    let element = match client.peer {
        IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
    };
    if let Some(forwarded) = joined(headers, &header::FORWARDED, &element) {
        headers.insert(header::FORWARDED, forwarded);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    // The single-address headers upstreams rate-limit by (trueai-org's midjourney-proxy reads both)
    // name the client: the connection's peer, or the address trusted proxies name; never what a
    // client claims, so a client cannot borrow another address's quota.
    headers.insert(TRUE_CLIENT_IP.clone(), ip.clone());
    headers.insert(X_REAL_IP.clone(), ip);
}

/// Every line of the list header `name`, then `last`, as one value (`None` if that is no valid value).
fn joined(headers: &HeaderMap, name: &HeaderName, last: &str) -> Option<HeaderValue> {
    let mut list: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    list.push(last);
    HeaderValue::from_str(&list.join(", ")).ok()
}

/// The property request admission exists for, checked by the unit tests and the `admission` fuzz target:
/// for an admitted request, the partition (the fingerprint of its credential) equals the fingerprint
/// of the headers the upstream receives, on passthrough and on cached routes alike, and the credential
/// the upstream reads (`Authorization`, else `mj-api-secret`) is that same credential. `Ok(false)`
/// would be a cross-partition bug; `Err` is a refused request.
#[doc(hidden)]
pub fn partition_is_what_is_forwarded(
    fingerprinter: &Fingerprinter,
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<bool, Refused> {
    let credential = admission::admit(method, uri, version, headers, usize::MAX)?.credential;
    let partition = fingerprinter.of(credential);
    let client = ClientInfo {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        peer: std::net::Ipv4Addr::LOCALHOST.into(),
        tls: false,
    };
    let mut passthrough = headers.clone();
    prepare_request_headers(&mut passthrough, client);
    let mut cached = headers.clone();
    prepare_cached_request_headers(&mut cached, client);
    Ok([passthrough, cached].iter().all(|forwarded| {
        let read = forwarded
            .get(AUTHORIZATION)
            .map(Credential::Authorization)
            .or_else(|| forwarded.get(&MJ_API_SECRET).map(Credential::Secret))
            .unwrap_or(Credential::Anonymous);
        fingerprinter.fingerprint(forwarded) == partition && fingerprinter.of(read) == partition
    }))
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &PROXY_CONNECTION,
        &KEEP_ALIVE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gateway"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("true-client-ip", HeaderValue::from_static("6.6.6.6"));
        prepare_request_headers(
            &mut h,
            ClientInfo {
                ip: "127.0.0.2".parse().unwrap(),
                peer: "127.0.0.2".parse().unwrap(),
                tls: false,
            },
        );
        assert!(!h.contains_key(header::HOST));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.7, 127.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "127.0.0.2", "a client's claim is replaced");
        assert_eq!(
            h["true-client-ip"], "127.0.0.2",
            "a client's claim is replaced"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["forwarded"], "for=127.0.0.2;proto=http");
    }

    #[test]
    fn forwarded_keeps_prior_hops_and_the_request_id_survives_connection() {
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-request-id"));
        prepare_request_headers(
            &mut h,
            ClientInfo {
                ip: "::1".parse().unwrap(),
                peer: "::1".parse().unwrap(),
                tls: false,
            },
        );
        assert_eq!(h["forwarded"], "for=6.6.6.6, for=\"[::1]\";proto=http");
        assert_eq!(h["x-request-id"], "abc");
    }

    /// Random requests built from the headers that matter (credentials in any case, `Connection`
    /// naming them or not, hop-by-hop headers, `Host`): every admitted one is partitioned by exactly
    /// what is forwarded.
    #[test]
    fn whatever_the_headers_the_partition_is_the_fingerprint_of_what_is_forwarded() {
        use rand::{Rng, SeedableRng};
        const NAMES: [&str; 12] = [
            "authorization",
            "Authorization",
            "mj-api-secret",
            "MJ-API-SECRET",
            "connection",
            "host",
            "te",
            "keep-alive",
            "upgrade",
            "proxy-connection",
            "range",
            "x-other",
        ];
        const VALUES: [&str; 10] = [
            "Bearer a",
            "Bearer b",
            "",
            "close",
            "close, authorization",
            "keep-alive, MJ-API-Secret",
            "x-other, te",
            "authorization ,mj-api-secret",
            "upgrade",
            "Bearer a, Bearer b",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let fingerprinter = Fingerprinter::with_key([3; 32]);
        let uri = Uri::from_static("/mj/task/1/fetch");
        let (mut admitted, mut with_credential) = (0, 0);
        for _ in 0..20_000 {
            let mut headers = HeaderMap::new();
            for _ in 0..rng.random_range(0..6) {
                let name =
                    HeaderName::from_bytes(NAMES[rng.random_range(0..NAMES.len())].as_bytes());
                let value = HeaderValue::from_static(VALUES[rng.random_range(0..VALUES.len())]);
                headers.append(name.unwrap(), value);
            }
            let version =
                [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][rng.random_range(0..3)];
            let checked = partition_is_what_is_forwarded(
                &fingerprinter,
                &Method::GET,
                &uri,
                version,
                &headers,
            );
            if let Ok(holds) = checked {
                assert!(
                    holds,
                    "partition differs from what is forwarded: {headers:?}"
                );
                admitted += 1;
                with_credential += usize::from(
                    admission::admit(&Method::GET, &uri, version, &headers, usize::MAX)
                        .map(|a| a.credential)
                        != Ok(Credential::Anonymous),
                );
            }
        }
        assert!(
            admitted > 2_000 && with_credential > 1_000,
            "{admitted} / {with_credential}"
        );
    }
}
