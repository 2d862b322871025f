//! What is not the product: the simulated upstream, the load generator, the connection holder, the
//! demo, the benchmarks' fixed-body ceiling and the container healthcheck probe. The product never imports these.

pub mod demo;
pub mod fixed_body;
pub mod healthcheck;
pub mod hold;
pub mod load;
pub mod simulator;
