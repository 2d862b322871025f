//! Integration tests: the real gateway on 127.0.0.1:0 in front of the in-process simulator.
//! One file per behaviour users rely on; `support` starts both and speaks HTTP to them.

mod support;

mod artifacts;
mod bad_input;
mod batch;
mod collapsing;
mod compression;
mod conditional;
mod config_cli;
mod credentials;
mod demo_and_load;
mod deploy;
mod docs;
mod families;
mod fetch_cache;
mod hardening;
mod idempotency;
mod layout;
mod observability;
mod operations;
mod parking;
mod passthrough;
mod pools;
mod purge;
mod push;
mod redis_topologies;
mod resilience;
mod shared_cache;
mod shutdown;
mod submits;
mod tls;
mod traces;
mod webhooks;
