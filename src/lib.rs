//! # mjgate
//!
//! A caching, collapsing reverse proxy for Midjourney-style task APIs. Clients poll
//! `GET /mj/task/{id}/fetch`; mjgate answers from a per-credential cache, keeps terminal tasks until
//! memory runs short and in-progress ones for a few seconds, and turns any number of concurrent polls of
//! one task into one upstream call. Everything else passes through, streamed.
//!
//! # Layout
//! The product, by concern (each folder's `foo.rs` says what its parts own):
//!
//! | module | owns |
//! | --- | --- |
//! | [`server`], [`shutdown`] | the accept loop, connection limits, TLS on the listener, the PROXY protocol, drain, parking idle connections; the signal future |
//! | [`request`] | what comes in: admission, routing, the request id, bounded request bodies, the client's address, per-address limits |
//! | [`pipeline`] | the per-request envelope every request goes through: request id, 304, metrics, access-log record |
//! | [`access`] | the access log: fields, formats, sampling, its writers |
//! | [`trace`] | W3C trace context continued to the upstream; spans exported over OTLP/HTTP |
//! | [`reload`] | reload without restart: describing, diffing and checking a config against the running one |
//! | [`gateway`] | admission and routing to the handlers, one file each under `gateway/`: batch, submit, callback, files, download, admin, tasks, config, passthrough |
//! | [`fetch`] | the fetch core: cache, collapse, shared tier, upstream, classify, store; batches per id |
//! | [`cache`] | the task cache: entries, freshness, memory budget, ETags and 304s, `Cache-Status`, representations (identity or gzip) |
//! | [`gzip`] | what `Accept-Encoding` takes gzip; a body's gzip copy and its tag |
//! | [`shared`] | the Redis tier replicas share: values bound to their keys (`codec`), leases, hook records and callback tokens |
//! | [`upstream`] | the pooled client and URL, protection (ceilings, backoff, breaker), content coding; the pool of members, submit placement and task owners (`upstream/pool.rs`) |
//! | [`push`] | watchers (one poller per task), long-poll, event streams |
//! | [`task`], [`credential`] | task ids and answer classes; the keyed credential fingerprint |
//! | [`tls`] | upstream roots, the listener's reloadable certificate, certificate faults |
//! | [`family`] | the task APIs as data: descriptions, the route table, reading answers, expiry, where result files are |
//! | [`artifacts`] | durable results: the content-addressed store of kept files (local directory or S3) |
//! | [`webhook`] | webhooks the gateway delivers for submits' `notifyHook`: signing, the hook guard, attempts, retries |
//! | `work` | everything spawned on behalf of requests, tracked, in its request's span; what the drain waits for |
//! | [`config`], [`metrics`], `error`, `body`, [`file`], `hex`, `redact` | typed config (every numeric default and range in `config/keys.rs`); Prometheus registry; the one rescue from a typed error to an HTTP answer; bodies; files the operator names, read within a bound; hex digits; secrets shown as a digest |
//!
//! [`tools`] holds what is not the product (simulator, load generator, demo, fixed-body ceiling,
//! healthcheck probe); no product module imports it.

pub mod access;
pub mod artifacts;
pub(crate) mod body;
pub mod cache;
pub mod config;
pub mod credential;
pub(crate) mod error;
pub mod family;
pub mod fetch;
pub mod file;
pub mod gateway;
pub mod gzip;
pub(crate) mod hex;
pub mod idempotency;
pub mod metrics;
pub mod pipeline;
pub mod push;
pub(crate) mod redact;
pub mod reload;
pub mod request;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod task;
pub mod tls;
pub mod tools;
pub mod trace;
pub mod upstream;
pub mod webhook;
pub(crate) mod work;

pub use config::Config;
pub use error::Error;
pub use server::{Drain, run, run_reloadable};
