//! Replacing polling: one poller per watched task ([`watch`]), shared by long-polls ([`long_poll`],
//! `fetch?wait=`) and server-sent event streams ([`events`]).

pub mod events;
pub mod long_poll;
pub mod watch;
