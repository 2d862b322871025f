//! Durable results: the files a finished task names, kept by the gateway so they outlive the
//! upstream's signed links. `mirror` keeps each URL's file once (collapsed, bounded, retried);
//! `download` fetches one under the outbound guard's rules into `store`,
//! which holds them (a local directory or an S3-compatible bucket, content-addressed); `token` is the
//! capability a kept file's URL carries (one per credential and file), and `serve` answers for a
//! file (ranges, tags, the headers that keep it from becoming a script on the gateway's origin).
//!
//! `keeper` ties them to the cache: a finished answer's files kept (eagerly, or lazily on first
//! open), the entry rewritten to link to them, links rebased to each client's name.

pub mod download;
pub mod keeper;
pub mod mirror;
pub mod serve;
pub mod store;
pub mod token;
