//! The fetch core: the one thing that turns "(credential, task) please" into an answer. A fresh cache
//! entry, else one collapsed call ([`collapse`]) through the shared tier to the upstream, classified
//! and stored, with a stale answer standing in when the call fails. Batches ([`batch`]) are served per
//! id from the same cache and flights.

pub mod batch;
pub mod collapse;
