//! Webhooks the gateway delivers itself (issue 15, in progress): the building blocks so far, each
//! complete and tested on its own, not yet wired into the request path.
//!
//! - [`sign`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//! - [`guard`]: where a client's hook may point (no internal addresses, no rebinding).
//! - [`submit`]: taking a submit's `notifyHook` over, and the task id from the upstream's answer.
//! - [`retry`]: when a failed delivery is tried again, and when it is given up.

pub mod guard;
pub mod retry;
pub mod sign;
pub mod submit;
