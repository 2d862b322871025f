//! `[webhooks]`: the gateway delivers the task notifications clients asked for with `notifyHook`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, keys};
use crate::webhook::retry::Schedule;
use crate::webhook::sign::SigningSecret;

/// `[webhooks]`, validated.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// The Standard Webhooks signing secret (`whsec_...`; also `MJGATE_WEBHOOK_SECRET`).
    pub secret: Arc<SigningSecret>,
    /// Deliver to hooks on loopback, private and other internal addresses (tests, private networks).
    pub allow_private: bool,
    /// Deliver only the finished state, not every change of status or progress.
    pub finished_only: bool,
    /// When failed deliveries are tried again, and for how long.
    pub retry: Schedule,
    /// Deadline for one delivery attempt, connect to answer.
    pub timeout: Duration,
    /// Most delivery attempts under way at once (each holds a connection and its buffers); others
    /// wait their turn, their deadline not yet started.
    pub max_in_flight: usize,
    /// Most tasks with a hook being watched at once; submits past it are forwarded with their hook
    /// left in place (the upstream's own callback, if any).
    pub max_pending: usize,
    /// Most of those for one credential, so that one client cannot take every place.
    pub max_pending_per_credential: usize,
    /// Bytes all watched hooks may hold together: each hook's record and overhead, and the bodies of
    /// events being sent. A hook past it is not taken over; an event waits for room.
    pub max_memory: u64,
    /// Where the upstream can reach this gateway (`https://gw.example.com`): submits carry the
    /// gateway's own callback URL under it instead of dropping the hook, so an upstream that calls
    /// back refreshes the cache at once. `None`: the hook is dropped and polling alone drives delivery.
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    secret: Option<String>,
    allow_private: Option<bool>,
    finished_only: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    first_retry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_retry_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    max_pending: Option<usize>,
    max_pending_per_credential: Option<usize>,
    max_memory: Option<bytesize::ByteSize>,
    public_url: Option<String>,
}

impl RawWebhooks {
    /// `None` without a `[webhooks]` table: submits pass through untouched.
    pub(super) fn validate(
        raw: Option<Self>,
        secret_override: Option<String>,
    ) -> Result<Option<WebhooksConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let text = secret_override.or(raw.secret).ok_or(ConfigError::Invalid {
            key: "webhooks.secret",
            reason: "is required: a Standard Webhooks secret `whsec_<base64>` (in the file or \
                     MJGATE_WEBHOOK_SECRET)"
                .into(),
        })?;
        let secret = SigningSecret::parse(&text).map_err(|e| ConfigError::Invalid {
            key: "webhooks.secret",
            reason: e.to_string(),
        })?;
        let retry = Schedule {
            first: keys::WEBHOOKS_FIRST_RETRY.duration(raw.first_retry)?,
            cap: keys::WEBHOOKS_MAX_RETRY_INTERVAL.duration(raw.max_retry_interval)?,
            max_age: keys::WEBHOOKS_MAX_AGE.duration(raw.max_age)?,
        };
        if retry.first > retry.cap {
            return Err(ConfigError::Invalid {
                key: "webhooks.first_retry",
                reason: "must not exceed webhooks.max_retry_interval".into(),
            });
        }
        Ok(Some(WebhooksConfig {
            secret: Arc::new(secret),
            allow_private: keys::WEBHOOKS_ALLOW_PRIVATE.flag(raw.allow_private),
            finished_only: keys::WEBHOOKS_FINISHED_ONLY.flag(raw.finished_only),
            retry,
            timeout: keys::WEBHOOKS_TIMEOUT.duration(raw.timeout)?,
            max_in_flight: keys::WEBHOOKS_MAX_IN_FLIGHT.count(raw.max_in_flight)?,
            max_pending: keys::WEBHOOKS_MAX_PENDING.count(raw.max_pending)?,
            max_pending_per_credential: keys::WEBHOOKS_MAX_PENDING_PER_CREDENTIAL
                .count(raw.max_pending_per_credential)?,
            max_memory: keys::WEBHOOKS_MAX_MEMORY.number(raw.max_memory.map(|b| b.0))?,
            public_url: raw.public_url.map(public_url).transpose()?,
        }))
    }
}

/// `webhooks.public_url`, checked: an `http(s)` URL with a host, no query, kept without a trailing `/`.
fn public_url(text: String) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "webhooks.public_url",
        reason: reason.to_owned(),
    };
    let uri: http::Uri = text.parse().map_err(|_| invalid("is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(invalid("must be an http or https URL with a host"));
    }
    if uri.query().is_some() || text.contains('@') {
        return Err(invalid("must have no query and no user information"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}
