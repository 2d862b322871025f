//! What comes in: whether a request is admitted at all ([`admission`]), which route it takes
//! ([`routes`]), its request id ([`id`]), and its body, bounded in size and idle time ([`body`]).

pub mod admission;
pub mod body;
pub mod client_addr;
pub mod client_limits;
pub mod id;
pub mod routes;
