//! Durable results: the files a finished task names, kept by the gateway so they outlive the
//! upstream's signed links. `store` holds them (a local directory or an S3-compatible bucket,
//! content-addressed).
//!
//! Built so far: the store. Mirroring, rewriting answers and serving files come next (issue 25).

pub mod store;
