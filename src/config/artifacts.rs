//! `[artifacts]`: the gateway keeps finished tasks' result files (durable results).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, keys};
use crate::artifacts::store::S3Bucket;

/// `[artifacts]`, validated.
#[derive(Debug, Clone)]
pub struct ArtifactsConfig {
    /// Where kept files live: a local directory, or an S3-compatible bucket.
    pub store: ArtifactStore,
    /// The largest file kept; larger ones keep the upstream's link.
    pub max_file: u64,
    /// Download from loopback, private and other internal addresses (tests, private networks).
    pub allow_private: bool,
    /// Deadline for one download, redirects included.
    pub timeout: Duration,
    /// Longest a download may go without a byte.
    pub idle_timeout: Duration,
    /// Keys the file tokens (`artifacts.secret`, at least 16 bytes): set, tokens outlive restarts and
    /// every replica opens every replica's. Unset: the shared tier's fingerprint secret, else a
    /// random key for this process (tokens die with it).
    pub secret: Option<String>,
    /// `artifacts.public_url`: where clients reach the gateway, for the links in answers; unset, the
    /// scheme and `Host` of the client's request.
    pub public_url: Option<String>,
}

/// Where kept files live.
#[derive(Debug, Clone)]
pub enum ArtifactStore {
    /// `artifacts.dir`, under `artifacts.max_disk`.
    Local { dir: PathBuf, max_disk: u64 },
    /// `[artifacts.s3]`.
    S3(S3Bucket),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifacts {
    enabled: Option<bool>,
    public_url: Option<String>,
    dir: Option<PathBuf>,
    max_disk: Option<bytesize::ByteSize>,
    max_file: Option<bytesize::ByteSize>,
    allow_private: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    secret: Option<String>,
    s3: Option<RawS3>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    prefix: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

impl RawArtifacts {
    /// On by default (a local directory with the defaults, also without an `[artifacts]` table);
    /// `None` with `enabled = false`: answers keep the upstream's links.
    pub(super) fn validate(raw: Option<Self>) -> Result<Option<ArtifactsConfig>, ConfigError> {
        let raw = raw.unwrap_or_default();
        if !keys::ARTIFACTS_ENABLED.flag(raw.enabled) {
            return Ok(None);
        }
        if let Some(url) = &raw.public_url {
            let usable = url
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty())
                        && uri.query().is_none()
                        && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
                })
                .is_some();
            if !usable {
                return Err(ConfigError::Invalid {
                    key: "artifacts.public_url",
                    reason: format!(
                        "{url:?} is not an http or https URL without a query or credentials"
                    ),
                });
            }
        }
        let store = match raw.s3 {
            Some(s3) => {
                if raw.dir.is_some() || raw.max_disk.is_some() {
                    return Err(ConfigError::Invalid {
                        key: "artifacts.s3",
                        reason: "keeps files in a bucket: artifacts.dir and max_disk do not apply"
                            .into(),
                    });
                }
                let bucket = s3
                    .bucket
                    .filter(|b| !b.is_empty())
                    .ok_or(ConfigError::Invalid {
                        key: "artifacts.s3.bucket",
                        reason: "is required with [artifacts.s3]".into(),
                    })?;
                if let Some(endpoint) = &s3.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    return Err(ConfigError::Invalid {
                        key: "artifacts.s3.endpoint",
                        reason: format!("{endpoint:?} is not an http or https URL"),
                    });
                }
                let path_style = keys::ARTIFACTS_S3_PATH_STYLE.flag(s3.path_style);
                // Virtual-hosted style puts the bucket in the host name: an endpoint at an address
                // has none to put it in, and the requests would name no bucket at all.
                if let Some(endpoint) = &s3.endpoint
                    && !path_style
                    && endpoint
                        .parse::<http::Uri>()
                        .ok()
                        .and_then(|uri| uri.host().map(str::to_owned))
                        .is_some_and(|host| {
                            host.eq_ignore_ascii_case("localhost")
                                || host
                                    .trim_start_matches('[')
                                    .trim_end_matches(']')
                                    .parse::<std::net::IpAddr>()
                                    .is_ok()
                        })
                {
                    return Err(ConfigError::Invalid {
                        key: "artifacts.s3.path_style",
                        reason: format!(
                            "must be true for an endpoint at an address ({endpoint}): the bucket cannot go in its host name"
                        ),
                    });
                }
                let access_key = match (s3.access_key_id, s3.secret_access_key) {
                    (Some(id), Some(secret)) => Some((id, secret)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: "artifacts.s3.access_key_id",
                            reason: "and secret_access_key go together (or both come from the AWS environment variables)".into(),
                        });
                    }
                };
                ArtifactStore::S3(S3Bucket {
                    endpoint: s3.endpoint,
                    bucket,
                    region: keys::ARTIFACTS_S3_REGION.word(s3.region),
                    prefix: s3.prefix,
                    path_style,
                    access_key,
                })
            }
            None => ArtifactStore::Local {
                dir: raw
                    .dir
                    .unwrap_or_else(|| PathBuf::from(keys::ARTIFACTS_DIR.default)),
                max_disk: keys::ARTIFACTS_MAX_DISK.number(raw.max_disk.map(|b| b.0))?,
            },
        };
        if let Some(secret) = &raw.secret
            && secret.len() < 16
        {
            return Err(ConfigError::Invalid {
                key: "artifacts.secret",
                reason: "must be at least 16 bytes".into(),
            });
        }
        let max_file = keys::ARTIFACTS_MAX_FILE.number(raw.max_file.map(|b| b.0))?;
        if let ArtifactStore::Local { max_disk, .. } = &store
            && max_file > *max_disk
        {
            return Err(ConfigError::Invalid {
                key: "artifacts.max_file",
                reason: format!(
                    "{} is more than artifacts.max_disk ({}): such a file would be evicted as it is kept",
                    bytesize::ByteSize(max_file),
                    bytesize::ByteSize(*max_disk)
                ),
            });
        }
        Ok(Some(ArtifactsConfig {
            secret: raw.secret,
            public_url: raw.public_url,
            store,
            max_file,
            allow_private: keys::ARTIFACTS_ALLOW_PRIVATE.flag(raw.allow_private),
            timeout: keys::ARTIFACTS_TIMEOUT.duration(raw.timeout)?,
            idle_timeout: keys::ARTIFACTS_IDLE_TIMEOUT.duration(raw.idle_timeout)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ArtifactStore, Config, Overrides};

    fn load(artifacts: &str) -> Result<Config, String> {
        Config::from_toml(
            &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{artifacts}"),
            &Overrides::default(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn on_by_default_in_a_local_directory_and_off_when_disabled() {
        assert!(
            load("[artifacts]\nenabled = false\n")
                .unwrap()
                .artifacts
                .is_none()
        );
        let on = load("").unwrap().artifacts.unwrap();
        assert!(on.public_url.is_none());
        assert!(matches!(
            on.store,
            ArtifactStore::Local { ref dir, max_disk } if dir.as_os_str() == "artifacts" && max_disk == 10 << 30
        ));
        assert_eq!(on.max_file, 512 << 20);
        assert!(!on.allow_private);
    }

    #[test]
    fn a_bucket_needs_its_name_an_http_endpoint_and_no_local_keys() {
        let s3 = load("[artifacts.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true\n")
            .unwrap()
            .artifacts
            .unwrap();
        assert!(
            matches!(s3.store, ArtifactStore::S3(ref b) if b.bucket == "b" && b.path_style && b.region == "us-east-1")
        );
        for (bad, key) in [
            ("[artifacts.s3]\nregion = \"x\"\n", "artifacts.s3.bucket"),
            (
                "[artifacts.s3]\nbucket = \"b\"\nendpoint = \"ftp://127.0.0.1\"\n",
                "artifacts.s3.endpoint",
            ),
            (
                "[artifacts]\ndir = \"/tmp/x\"\n[artifacts.s3]\nbucket = \"b\"\n",
                "artifacts.s3",
            ),
            ("[artifacts]\nmax_file = \"10\"\n", "artifacts.max_file"),
            (
                "[artifacts]\nmax_disk = \"1MiB\"\nmax_file = \"4MiB\"\n",
                "artifacts.max_file",
            ),
            ("[artifacts]\nunknown = 1\n", "unknown"),
            ("[artifacts]\nsecret = \"short\"\n", "artifacts.secret"),
            (
                "[artifacts.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n",
                "artifacts.s3.path_style",
            ),
            (
                "[artifacts]\npublic_url = \"ftp://files.example\"\n",
                "artifacts.public_url",
            ),
            (
                "[artifacts]\npublic_url = \"https://u:p@files.example\"\n",
                "artifacts.public_url",
            ),
        ] {
            let err = load(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
