//! # mjgate
//!
//! A caching, collapsing reverse proxy for Midjourney-style task APIs. Clients poll
//! `GET /mj/task/{id}/fetch`; mjgate answers from a per-credential cache, keeps terminal tasks until
//! memory runs short and in-progress ones for a few seconds, and turns any number of concurrent polls of
//! one task into one upstream call. Everything else passes through, streamed.
//!
//! # Layout
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML file as serde reads it, validated into a typed [`Config`] |
//! | [`server`] | the accept loop, connection limits, graceful drain ([`run`]) |
//! | [`shutdown`] | the future that resolves on SIGTERM or SIGINT |
//! | [`gateway`] | request handling: route, cache, collapse, forward |
//! | [`batch`] | batch queries served from the per-task cache and flights |
//! | [`admission`] | what a request must look like to be served; the one credential it carries |
//! | [`routes`] | which request is a fetch, a batch, a health check, or passthrough |
//! | [`task`] | task ids and the class of an upstream answer (terminal or in progress) |
//! | [`credential`] | the keyed fingerprint of a request's credential headers |
//! | [`cache`] | the moka cache: keys, stored entries, freshness, memory budget |
//! | [`shared`] | the Redis tier replicas share: lookups, leases across replicas, local-only fallback |
//! | [`conditional`] | strong `ETag`s and `If-None-Match` → `304 Not Modified` |
//! | [`watch`] | one poller per watched task, shared by long-polls and streams; their bounds |
//! | [`long_poll`] | `fetch?wait=`: answer at once, or hold until the task changes |
//! | [`events`] | `/events`: a task's changes as server-sent events |
//! | [`cache_status`] | the RFC 9211 `Cache-Status` header and the outcome it names |
//! | [`collapse`] | flights in the air: one upstream call per key, every outcome named |
//! | [`healthcheck`] | `mjgate healthcheck`, the probe for container health checks |
//! | [`metrics`] | the Prometheus registry and pre-resolved metric handles |
//! | [`protect`] | upstream ceilings, 429 backoff per credential, the circuit breaker |
//! | [`request_body`] | client request bodies bounded in size and in idle time (slow-body guard) |
//! | [`request_id`] | the `x-request-id` taken from the client or generated |
//! | [`tls`] | upstream roots and CA bundle, the listener's reloadable certificate, certificate faults |
//! | [`upstream`] | the pooled client, URI rewrite, hop-by-hop and forwarding headers |
//! | [`content_coding`] | gzip, deflate and br bodies a CDN sent despite `identity`, decoded |
//! | [`body`] | the response body type: a buffer or an upstream stream |
//! | [`error`] | the crate's [`Error`] and per-request errors mapped to HTTP |
//! | [`simulator`] | a faithful in-process task API, for tests, benchmarks and the demo |
//! | [`load`] | the load generator behind `mjgate bench` and `mjgate demo` |
//! | [`demo`] | `mjgate demo`: simulator, gateway and polling clients in one process |
//! | [`fixed_body`] | the benchmarks' ceiling: a bare server answering one fixed body |

pub mod admission;
pub mod batch;
pub mod body;
pub mod cache;
pub mod cache_status;
pub mod collapse;
pub mod conditional;
pub mod config;
pub mod content_coding;
pub mod credential;
pub mod demo;
pub mod error;
pub mod events;
pub mod fixed_body;
pub mod gateway;
pub mod healthcheck;
pub mod load;
pub mod long_poll;
pub mod metrics;
pub mod protect;
pub mod request_body;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod simulator;
pub mod task;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use config::Config;
pub use error::Error;
pub use server::{Drain, run};
