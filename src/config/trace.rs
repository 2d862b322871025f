//! `[trace]`: exporting the gateway's spans over OTLP/HTTP. W3C trace context is continued to the
//! upstream whether or not this is on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, keys};
use crate::trace::{OtlpProtocol, TraceConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrace {
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<OtlpProtocol>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    otlp_timeout: Option<Duration>,
    #[serde(default)]
    otlp_headers: BTreeMap<String, String>,
}

impl RawTrace {
    pub(super) fn validate(raw: Option<Self>) -> Result<Option<TraceConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let timeout = keys::TRACE_OTLP_TIMEOUT.duration(raw.otlp_timeout)?;
        let sample_ratio = raw
            .sample_ratio
            .unwrap_or_else(|| keys::TRACE_SAMPLE_RATIO.parsed());
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(ConfigError::Invalid {
                key: keys::TRACE_SAMPLE_RATIO.name,
                reason: format!("{sample_ratio} is not a share from 0 to 1"),
            });
        }
        let Some(endpoint) = raw.otlp_endpoint else {
            return Ok(None);
        };
        let uri = endpoint.parse::<http::Uri>().ok();
        let scheme_ok = uri
            .as_ref()
            .is_some_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")));
        if !scheme_ok || uri.and_then(|uri| uri.authority().cloned()).is_none() {
            return Err(ConfigError::Invalid {
                key: "trace.otlp_endpoint",
                reason: format!("{endpoint:?} is not an http:// or https:// URL"),
            });
        }
        for (name, value) in &raw.otlp_headers {
            if http::HeaderName::try_from(name.as_str()).is_err()
                || http::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(ConfigError::Invalid {
                    key: "trace.otlp_headers",
                    reason: format!("{name:?} is not a valid header"),
                });
            }
        }
        Ok(Some(TraceConfig {
            otlp_endpoint: endpoint,
            protocol: raw.otlp_protocol.unwrap_or_default(),
            service_name: keys::TRACE_SERVICE_NAME.word(raw.service_name),
            sample_ratio,
            timeout,
            headers: crate::trace::ExportHeaders(raw.otlp_headers),
        }))
    }
}
