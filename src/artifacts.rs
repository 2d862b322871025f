//! Durable results: the files a finished task names, kept by the gateway so they outlive the
//! upstream's signed links. `download` fetches one under the outbound guard's rules into `store`,
//! which holds them (a local directory or an S3-compatible bucket, content-addressed).
//!
//! Built so far: the store and the downloader. Mirroring finished tasks, rewriting answers and
//! serving files come next (issue 25).

pub mod download;
pub mod store;
