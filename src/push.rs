//! Replacing polling: one poller per watched task ([`watch`]), shared by long-polls ([`long_poll`],
//! `fetch?wait=`), server-sent event streams ([`events`]) and the webhooks the gateway delivers
//! ([`hooks`]).

pub mod events;
pub mod hooks;
pub mod long_poll;
pub mod watch;

use std::sync::Arc;

use crate::config::WatchConfig;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use watch::Watchers;

/// Long-polls and event streams, and the pollers behind them, over the fetch core.
pub struct Push {
    /// Every answer a watch serves or polls for comes from here.
    fetcher: Arc<Fetcher>,
    /// Pollers behind long-polls and event streams, and the bounds on them.
    watchers: Watchers,
    metrics: Arc<Metrics>,
}

impl Push {
    pub fn new(config: &WatchConfig, fetcher: Arc<Fetcher>, metrics: Arc<Metrics>) -> Self {
        Push {
            fetcher,
            watchers: Watchers::new(config, Arc::clone(&metrics)),
            metrics,
        }
    }

    /// Tells open long-polls and streams that the gateway is shutting down.
    pub fn start_draining(&self) {
        self.watchers.start_draining();
    }
}
