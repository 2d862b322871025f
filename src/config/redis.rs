//! Where the shared tier's Redis is (`[shared_cache]`): one server by URL, a Redis Cluster by its
//! seed nodes, or a master that Sentinel names; and how connections to it are secured (TLS files,
//! a password kept out of the file).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, redact_url};

/// Most seed nodes (`shared_cache.cluster`) or sentinels (`shared_cache.sentinel.nodes`).
pub const MAX_NODES: usize = 64;

/// How the shared tier's Redis is laid out.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `shared_cache.redis_url`: one server, or one endpoint that looks like one.
    Server(String),
    /// `shared_cache.cluster`: seed nodes of a Redis Cluster (the client learns the rest).
    Cluster(Vec<String>),
    /// `shared_cache.sentinel`: the master that a set of sentinels names, followed through
    /// failovers.
    Sentinel(SentinelConfig),
}

/// `[shared_cache.sentinel]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels, as `redis://host:port` URLs (written `host:port` or as URLs with the
    /// sentinels' own credentials; `rediss://` for TLS to them).
    pub nodes: Vec<String>,
    /// The master's ACL user, if not `default`.
    pub username: Option<String>,
    /// TLS to the master and its replicas (the sentinels' own TLS is their URLs' scheme).
    pub tls: bool,
}

impl RedisTopology {
    /// What the tier uses, without a password: for log lines, `/admin/config` and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            RedisTopology::Server(url) => redact_url(url),
            RedisTopology::Cluster(seeds) => format!(
                "cluster of {} seed node(s): {}",
                seeds.len(),
                seeds
                    .iter()
                    .map(|s| redact_url(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RedisTopology::Sentinel(s) => format!(
                "master `{}` named by {} sentinel(s): {}{}",
                s.master,
                s.nodes.len(),
                s.nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.tls { " (TLS to the master)" } else { "" }
            ),
        }
    }

    /// Whether connections to the data nodes are TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            RedisTopology::Server(url) => url.starts_with("rediss://"),
            RedisTopology::Cluster(seeds) => seeds.iter().all(|s| s.starts_with("rediss://")),
            RedisTopology::Sentinel(s) => s.tls,
        }
    }

    /// The `user:password` parts of every URL, for redacted `Debug` output.
    pub fn userinfo(&self) -> String {
        let urls: Vec<&String> = match self {
            RedisTopology::Server(url) => vec![url],
            RedisTopology::Cluster(seeds) => seeds.iter().collect(),
            RedisTopology::Sentinel(s) => s.nodes.iter().collect(),
        };
        urls.iter()
            .map(|url| super::userinfo(url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// How a `rediss://` connection is checked and presented (`shared_cache.ca_file`,
/// `client_cert_file`, `client_key_file`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl RedisTls {
    pub fn is_set(&self) -> bool {
        *self != RedisTls::default()
    }
}

/// `[shared_cache.sentinel]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    master: Option<String>,
    #[serde(default)]
    nodes: Vec<String>,
    username: Option<String>,
    #[serde(default)]
    tls: bool,
}

/// The topology the keys name: exactly one of `redis_url` (or its override), `cluster` and
/// `sentinel`; `None` when none is set (no shared tier).
pub(super) fn topology(
    url_override: Option<String>,
    redis_url: Option<String>,
    cluster: Option<Vec<String>>,
    sentinel: Option<RawSentinel>,
) -> Result<Option<RedisTopology>, ConfigError> {
    // The command line's URL beats the file's layout whole: it points the tier elsewhere.
    if let Some(url) = url_override {
        return server(url).map(Some);
    }
    let set = [redis_url.is_some(), cluster.is_some(), sentinel.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError::Invalid {
            key: "shared_cache",
            reason: "takes one of redis_url, cluster and sentinel".into(),
        });
    }
    if let Some(url) = redis_url {
        return server(url).map(Some);
    }
    if let Some(seeds) = cluster {
        return cluster_seeds(seeds).map(Some);
    }
    match sentinel {
        Some(raw) => sentinel_config(raw).map(Some),
        None => Ok(None),
    }
}

fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

fn server(url: String) -> Result<RedisTopology, ConfigError> {
    parsed("shared_cache.redis_url", &url, false)?;
    Ok(RedisTopology::Server(url))
}

/// Checks `url` with the parser the client itself uses, so a URL `check-config` passes is one the
/// gateway starts with: a `#` or `/` in a password must be percent-encoded, a port must be 1 to
/// 65535, and a cluster node has no database number.
fn parsed(key: &'static str, url: &str, cluster: bool) -> Result<(), ConfigError> {
    use ::redis::IntoConnectionInfo;
    let invalid = |why: String| ConfigError::Invalid {
        key,
        reason: format!("`{}` {why}", redact_url(url)),
    };
    if !is_redis_url(url) {
        return Err(invalid("is not a redis:// or rediss:// URL".into()));
    }
    // The client's own URL parser: it reads `?protocol=` and `#insecure` (certificates unchecked)
    // and ignores everything else, so a `?password=` would sit in the open and never be sent.
    let syntax = ::url::Url::parse(url).map_err(|e| {
        let hint = if url.contains('@') {
            "; percent-encode `#`, `/`, `?` and `@` in a user or password"
        } else {
            ""
        };
        invalid(format!("does not parse: {e}{hint}"))
    })?;
    if syntax.fragment().is_some() {
        return Err(invalid(
            "has a `#` part: certificates are always checked (`#insecure` is refused); a private \
             CA goes in shared_cache.ca_file, and a `#` in a password is written %23"
                .into(),
        ));
    }
    let ignored: Vec<String> = syntax
        .query_pairs()
        .map(|(name, _)| name.into_owned())
        .filter(|name| name != "protocol")
        .collect();
    if !ignored.is_empty() {
        return Err(invalid(format!(
            "has query parameters the client ignores ({}): a user and password go before the host \
             (`redis://user:password@host`) or the password in MJGATE_REDIS_PASSWORD",
            ignored
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let db = syntax.path().trim_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(invalid(
            "has a path that is not a database number (`redis://host:6379/0`)".into(),
        ));
    }
    // The parser's own words may quote the URL: say what is wrong without it.
    let info = url.into_connection_info().map_err(|e| {
        invalid(format!(
            "does not parse ({}): percent-encode `#`, `/`, `?` and `@` in a user or password",
            e.category()
        ))
    })?;
    let port = match info.addr() {
        ::redis::ConnectionAddr::Tcp(_, port) | ::redis::ConnectionAddr::TcpTls { port, .. } => {
            *port
        }
        _ => return Err(invalid("is not a TCP address".into())),
    };
    if port == 0 {
        return Err(invalid("has port 0".into()));
    }
    if cluster && info.redis_settings().db() != 0 {
        return Err(invalid(
            "names a database: a cluster has only database 0".into(),
        ));
    }
    Ok(())
}

fn cluster_seeds(seeds: Vec<String>) -> Result<RedisTopology, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: "shared_cache.cluster",
        reason,
    };
    if seeds.is_empty() || seeds.len() > MAX_NODES {
        return Err(invalid(format!("lists 1 to {MAX_NODES} seed nodes")));
    }
    for seed in &seeds {
        parsed("shared_cache.cluster", seed, true)?;
    }
    let tls = seeds[0].starts_with("rediss://");
    if seeds.iter().any(|s| s.starts_with("rediss://") != tls) {
        return Err(invalid(
            "mixes redis:// and rediss:// seeds: a cluster is all TLS or none".into(),
        ));
    }
    Ok(RedisTopology::Cluster(seeds))
}

fn sentinel_config(raw: RawSentinel) -> Result<RedisTopology, ConfigError> {
    let master = raw
        .master
        .filter(|m| !m.trim().is_empty())
        .ok_or(ConfigError::Invalid {
            key: "shared_cache.sentinel.master",
            reason: "names the master the sentinels monitor (`sentinel monitor <name> ...`)".into(),
        })?;
    if raw.nodes.is_empty() || raw.nodes.len() > MAX_NODES {
        return Err(ConfigError::Invalid {
            key: "shared_cache.sentinel.nodes",
            reason: format!("lists 1 to {MAX_NODES} sentinels (host:port)"),
        });
    }
    let nodes = raw
        .nodes
        .into_iter()
        .map(|node| {
            let url = if is_redis_url(&node) {
                node
            } else if node.contains("://") {
                return Err(ConfigError::Invalid {
                    key: "shared_cache.sentinel.nodes",
                    reason: format!("`{}` is not host:port or a redis:// URL", redact_url(&node)),
                });
            } else {
                format!("redis://{node}")
            };
            // host:port, nothing after it but an optional slash: a sentinel has no database.
            let rest = url.split_once("://").map_or("", |(_, rest)| rest);
            let host_port = rest.rsplit('@').next().unwrap_or("").trim_end_matches('/');
            let port_ok = host_port.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if port_ok {
                parsed("shared_cache.sentinel.nodes", &url, true)?;
                Ok(url)
            } else {
                Err(ConfigError::Invalid {
                    key: "shared_cache.sentinel.nodes",
                    reason: format!("`{}` is not host:port", redact_url(&url)),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RedisTopology::Sentinel(SentinelConfig {
        master,
        nodes,
        username: raw.username.filter(|u| !u.is_empty()),
        tls: raw.tls,
    }))
}

/// The TLS files, checked: only with TLS connections, a certificate with its key, and every file
/// readable PEM (a bad file is a bad config, not a tier that never comes up).
pub(super) fn tls_files(
    topology: &RedisTopology,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
) -> Result<RedisTls, ConfigError> {
    let tls = RedisTls {
        ca_file,
        client_cert_file,
        client_key_file,
    };
    if !tls.is_set() {
        return Ok(tls);
    }
    if !topology.is_tls() {
        // Named by the first TLS key set, the one the operator wrote.
        let key = if tls.ca_file.is_some() {
            "shared_cache.ca_file"
        } else if tls.client_cert_file.is_some() {
            "shared_cache.client_cert_file"
        } else {
            "shared_cache.client_key_file"
        };
        return Err(ConfigError::Invalid {
            key,
            reason: "is a TLS setting: it needs rediss:// URLs (or sentinel.tls = true)".into(),
        });
    }
    if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
        return Err(ConfigError::Invalid {
            key: "shared_cache.client_cert_file",
            reason: "and shared_cache.client_key_file go together".into(),
        });
    }
    let pem = |key: &'static str, path: &Option<PathBuf>, marker: &str| {
        let Some(path) = path else { return Ok(()) };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key,
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        if !text.contains(marker) {
            return Err(ConfigError::Invalid {
                key,
                reason: format!("{} holds no PEM {marker}", path.display()),
            });
        }
        Ok(())
    };
    pem("shared_cache.ca_file", &tls.ca_file, "CERTIFICATE")?;
    pem(
        "shared_cache.client_cert_file",
        &tls.client_cert_file,
        "CERTIFICATE",
    )?;
    pem(
        "shared_cache.client_key_file",
        &tls.client_key_file,
        "PRIVATE KEY",
    )?;
    if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
        // The pair must go together, as the listener's must: a mismatch is found here, not at the
        // first handshake.
        crate::tls::load_certified_key(cert, key).map_err(|e| ConfigError::Invalid {
            key: "shared_cache.client_key_file",
            reason: e.to_string(),
        })?;
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(nodes: &[&str]) -> RawSentinel {
        RawSentinel {
            master: Some("mymaster".into()),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..RawSentinel::default()
        }
    }

    #[test]
    fn one_layout_at_a_time_and_the_command_line_url_beats_the_file() {
        let both = topology(
            None,
            Some("redis://a:1".into()),
            Some(vec!["redis://b:2".into()]),
            None,
        );
        assert!(both.is_err());
        let over = topology(
            Some("redis://c:3".into()),
            None,
            Some(vec!["redis://b:2".into()]),
            None,
        );
        assert_eq!(
            over.unwrap(),
            Some(RedisTopology::Server("redis://c:3".into()))
        );
        assert_eq!(topology(None, None, None, None).unwrap(), None);
    }

    #[test]
    fn a_url_the_client_would_refuse_is_refused_here_without_its_password() {
        for bad in [
            "redis://mjgate:Hunt#er2Secret@127.0.0.1:6379",
            "redis://u:p/q@127.0.0.1:6379",
            "redis://127.0.0.1:99999",
            "redis://127.0.0.1:abc",
            "http://127.0.0.1:6379",
        ] {
            let error = server(bad.into()).unwrap_err().to_string();
            assert!(error.contains("shared_cache.redis_url"), "{bad}: {error}");
            assert!(!error.contains("er2Secret"), "{error}");
        }
        assert!(server("redis://mjgate:Hunt%23er2@127.0.0.1:6379/2".into()).is_ok());
    }

    #[test]
    fn cluster_seeds_are_urls_all_tls_or_none() {
        assert!(cluster_seeds(vec![]).is_err());
        assert!(cluster_seeds(vec!["127.0.0.1:7000".into()]).is_err());
        assert!(cluster_seeds(vec!["redis://a:1".into(), "rediss://b:2".into()]).is_err());
        for bad in [
            "redis://a:0",
            "redis://a:1/3",
            "redis://u:p@",
            "redis://a:abc",
        ] {
            assert!(cluster_seeds(vec![bad.into()]).is_err(), "{bad}");
        }
        let ok = cluster_seeds(vec!["rediss://u:p@a:1".into(), "rediss://b:2".into()]).unwrap();
        assert!(ok.is_tls());
        assert!(!ok.describe().contains("u:p"), "{}", ok.describe());
    }

    #[test]
    fn sentinels_are_host_port_or_urls() {
        let RedisTopology::Sentinel(s) =
            sentinel_config(sentinel(&["127.0.0.1:26379", "redis://:pw@h:26380"])).unwrap()
        else {
            panic!("a sentinel layout");
        };
        assert_eq!(s.nodes, ["redis://127.0.0.1:26379", "redis://:pw@h:26380"]);
        for bad in ["127.0.0.1", "h:0", ":26379", "h:port", "http://u:p@h:1"] {
            assert!(sentinel_config(sentinel(&[bad])).is_err(), "{bad}");
        }
        assert!(sentinel_config(sentinel(&[])).is_err());
        let nameless = RawSentinel {
            master: Some(" ".into()),
            ..sentinel(&["h:1"])
        };
        assert!(sentinel_config(nameless).is_err());
    }
}
