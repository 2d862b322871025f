//! The connection to the shared tier's Redis, whatever its layout: one server, a Redis Cluster, or
//! a master that Sentinel names. Every command of the tier goes through [`Link`], which is a
//! `redis::aio::ConnectionLike`, so the tier's code does not care which.
//!
//! The redis crate does the routing: its cluster connection follows `MOVED`/`ASK` and topology
//! changes; its Sentinel client asks the sentinels which server is the master. What is ours is when
//! to ask again: a command that failed marks the tier down, and the tier's probe then asks the
//! sentinels before it pings, so a failover is followed within a `retry_interval` of the new master
//! answering.
//!
//! Connections are made lazily: a Redis that is down at start-up is a local-only start.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

use crate::config::{RedisTopology, SentinelConfig, SharedCacheConfig};

/// How the tier reaches Redis. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub(super) enum Link {
    /// The client too: the listener makes its pub/sub connection with it.
    Server(ConnectionManager, Arc<redis::Client>),
    Cluster(Arc<ClusterLink>),
    Sentinel(Arc<SentinelLink>),
}

pub(super) struct ClusterLink {
    client: ClusterClient,
    /// Made by the first command that needs it; the crate re-establishes its node connections.
    connection: tokio::sync::OnceCell<ClusterConnection>,
    /// For the listener's own connection (RESP3, with a push sender).
    seeds: Vec<String>,
    settings: Settings,
}

pub(super) struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The master as last named, and the connection to it.
    current: RwLock<Option<Master>>,
    manager: ConnectionManagerConfig,
    timeout: Duration,
}

#[derive(Clone)]
struct Master {
    address: String,
    client: redis::Client,
    connection: ConnectionManager,
}

/// What every connection is made with: the password override and the TLS material.
#[derive(Clone)]
struct Settings {
    password: Option<String>,
    certificates: Option<TlsCertificates>,
    timeout: Duration,
}

impl Link {
    pub(super) fn new(config: &SharedCacheConfig) -> RedisResult<Link> {
        install_crypto();
        let settings = Settings {
            password: config.password.clone(),
            certificates: certificates(config)?,
            timeout: config.timeout,
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.retry_interval);
        Ok(match &config.topology {
            RedisTopology::Server(url) => {
                let client = server_client(url, &settings)?;
                let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager)?;
                Link::Server(connection, Arc::new(client))
            }
            RedisTopology::Cluster(seeds) => Link::Cluster(Arc::new(ClusterLink {
                client: cluster_builder(seeds, &settings).build()?,
                connection: tokio::sync::OnceCell::new(),
                seeds: seeds.clone(),
                settings,
            })),
            RedisTopology::Sentinel(sentinel) => Link::Sentinel(Arc::new(SentinelLink {
                sentinel: tokio::sync::Mutex::new(sentinel_client(sentinel, &settings)?),
                current: RwLock::new(None),
                manager,
                timeout: config.timeout,
            })),
        })
    }

    /// Whether the server to use can change under the same configuration (Sentinel's master).
    pub(super) fn follows_master(&self) -> bool {
        matches!(self, Link::Sentinel(_))
    }

    /// Whether keys of different hash slots must go in separate commands.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// Asks the sentinels again which server is the master, or makes a cluster's first connection
    /// (the probe's first step while the tier is down, and a warm-up at start); nothing for one
    /// server, whose manager connects by itself. Cluster clients follow changes themselves.
    pub(super) async fn refresh(&self) -> RedisResult<()> {
        match self {
            Link::Server(..) => {}
            // Connects if not yet connected: the first command need not pay for the topology.
            Link::Cluster(cluster) => {
                cluster.connection().await?;
            }
            Link::Sentinel(sentinel) => {
                sentinel.resolve().await?;
            }
        }
        Ok(())
    }

    /// A client of the server whose announcements the listener subscribes to (one server, or the
    /// master now named); `None` for a cluster, whose listener has its own connection.
    pub(super) async fn pubsub_client(&self) -> RedisResult<Option<redis::Client>> {
        Ok(match self {
            Link::Server(_, client) => Some(client.as_ref().clone()),
            Link::Cluster(_) => None,
            Link::Sentinel(sentinel) => Some(sentinel.master().await?.client),
        })
    }

    /// For a cluster: the builder of the listener's connection (RESP3, so that subscriptions
    /// arrive as pushes and are renewed by the crate after reconnections).
    pub(super) fn cluster_listener(&self) -> Option<ClusterClientBuilder> {
        let Link::Cluster(cluster) = self else {
            return None;
        };
        Some(
            cluster_builder(&cluster.seeds, &cluster.settings)
                .use_protocol(redis::ProtocolVersion::RESP3),
        )
    }

    /// Where a keyspace-wide `SCAN` must run: every master of a cluster, or the one server.
    pub(super) async fn scan_targets(&mut self) -> RedisResult<Vec<Option<(String, u16)>>> {
        let Link::Cluster(_) = self else {
            return Ok(vec![None]);
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(self).await?;
        Ok(cluster_masters(&nodes).into_iter().map(Some).collect())
    }

    /// Runs `cmd` on `target` (from [`scan_targets`](Self::scan_targets)).
    pub(super) async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        target: &Option<(String, u16)>,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match (self, target) {
            (Link::Cluster(cluster), Some((host, port))) => {
                let mut connection = cluster.connection().await?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = connection.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (link, _) => cmd.query_async(link).await,
        }
    }
}

impl ClusterLink {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let connection = self
            .connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(connection.clone())
    }
}

impl SentinelLink {
    /// The master's connection, asking the sentinels first if none is known yet.
    async fn master(&self) -> RedisResult<Master> {
        let known = self.current.read().clone();
        match known {
            Some(master) => Ok(master),
            None => self.resolve().await,
        }
    }

    /// Asks the sentinels which server is the master, and moves to it if it changed.
    async fn resolve(&self) -> RedisResult<Master> {
        let ask = async { self.sentinel.lock().await.async_get_client().await };
        let client = tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| {
                RedisError::from((ErrorKind::Io, "the sentinels did not answer in time"))
            })??;
        let address = client.get_connection_info().addr().to_string();
        if let Some(master) = self.current.read().as_ref()
            && master.address == address
        {
            return Ok(master.clone());
        }
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), self.manager.clone())?;
        let master = Master {
            address,
            client,
            connection,
        };
        let previous = {
            let mut current = self.current.write();
            // Two asks at once (the probe's and a first command's) name the same master: the
            // first to get here moved, the second keeps what it found.
            if let Some(known) = current.as_ref()
                && known.address == master.address
            {
                return Ok(known.clone());
            }
            current.replace(master.clone())
        };
        match previous {
            Some(previous) => tracing::warn!(
                from = %previous.address,
                to = %master.address,
                "shared cache: the sentinels name a new master; moved to it"
            ),
            None => {
                tracing::info!(master = %master.address, "shared cache: the sentinels name the master")
            }
        }
        Ok(master)
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(connection, _) => connection.req_packed_command(cmd),
            Link::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
            Link::Sentinel(sentinel) => Box::pin(async move {
                sentinel
                    .master()
                    .await?
                    .connection
                    .req_packed_command(cmd)
                    .await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(connection, _) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => Box::pin(async move {
                cluster
                    .connection()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
            Link::Sentinel(sentinel) => Box::pin(async move {
                sentinel
                    .master()
                    .await?
                    .connection
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(connection, _) => connection.get_db(),
            Link::Cluster(_) | Link::Sentinel(_) => 0,
        }
    }
}

/// Pipelines that may span keys: one for a server; on a cluster, one per hash tag, since a
/// pipeline's keys must share a slot there. Run them with [`Pipes::run`].
pub(super) struct Pipes {
    cluster: bool,
    pipes: Vec<(Vec<u8>, Pipeline, Vec<String>)>,
}

impl Pipes {
    pub(super) fn new(link: &Link) -> Self {
        Pipes {
            cluster: link.is_cluster(),
            pipes: Vec::new(),
        }
    }

    /// The pipeline commands on `key` go in.
    pub(super) fn on(&mut self, key: &[u8]) -> &mut Pipeline {
        &mut self.entry(key).1
    }

    /// The pipeline for `key`, with `script` loaded in it first (a fresh or flushed Redis knows
    /// none, and a pipeline's `EVALSHA` is not retried as a lone one is).
    pub(super) fn on_with_script(&mut self, key: &[u8], script: &redis::Script) -> &mut Pipeline {
        let entry = self.entry(key);
        if !entry.2.iter().any(|loaded| loaded == script.get_hash()) {
            entry.1.load_script(script).ignore();
            entry.2.push(script.get_hash().to_owned());
        }
        &mut entry.1
    }

    fn entry(&mut self, key: &[u8]) -> &mut (Vec<u8>, Pipeline, Vec<String>) {
        let tag: &[u8] = if self.cluster { hash_tag(key) } else { b"" };
        let index = match self.pipes.iter().position(|(t, _, _)| t.as_slice() == tag) {
            Some(index) => index,
            None => {
                self.pipes.push((tag.to_vec(), redis::pipe(), Vec::new()));
                self.pipes.len() - 1
            }
        };
        &mut self.pipes[index]
    }

    /// Runs every pipeline at once; the first error, if any.
    pub(super) async fn run(self, link: &Link) -> RedisResult<()> {
        let runs = self.pipes.into_iter().map(|(_, pipe, _)| {
            let mut link = link.clone();
            async move { pipe.query_async::<()>(&mut link).await }
        });
        for ran in futures_util::future::join_all(runs).await {
            ran?;
        }
        Ok(())
    }
}

/// Indices of `keys` grouped so each group may go in one multi-key command: all of them for a
/// server, those sharing a hash tag on a cluster.
pub(super) fn slot_groups(link: &Link, keys: &[&[u8]]) -> Vec<Vec<usize>> {
    if !link.is_cluster() {
        return vec![(0..keys.len()).collect()];
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_tag: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let group = *by_tag.entry(hash_tag(key)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(i);
    }
    groups
}

/// The part of `key` Redis Cluster hashes to pick its slot: the text between the first `{` and the
/// next `}` when there is some, else the whole key. Keys with one tag share a slot.
pub(super) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The masters (`host`, `port`) of a `CLUSTER NODES` answer that are not failed.
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The rustls crypto of this process: redis's TLS builds its configuration with the process
/// default, and two providers are linked in (ring here, aws-lc through object_store's client), so
/// one is named: ring, as for every other TLS connection of the gateway.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA bundle and client certificate of `shared_cache`, read; `None` when neither is set (the
/// system roots are trusted then).
fn certificates(config: &SharedCacheConfig) -> RedisResult<Option<TlsCertificates>> {
    let tls = &config.tls;
    if tls.ca_file.is_none() && tls.client_cert_file.is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RedisError::from((
                ErrorKind::Io,
                "cannot read a shared_cache TLS file",
                format!("{}: {e}", path.display()),
            ))
        })
    };
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// One server's client: its URL, with `MJGATE_REDIS_PASSWORD` over any password in it. The host
/// name is the TLS server name, as for any HTTPS client.
fn server_client(url: &str, settings: &Settings) -> RedisResult<redis::Client> {
    let mut info = url.into_connection_info()?;
    if let Some(password) = &settings.password {
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    match &settings.certificates {
        Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
        None => redis::Client::open(info),
    }
}

/// A cluster client on `seeds`: user and password from the first seed's URL (or the override),
/// every command under the tier's deadline, retried briefly on `MOVED`/`ASK` and reconnections.
fn cluster_builder(seeds: &[String], settings: &Settings) -> ClusterClientBuilder {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(settings.timeout)
        .response_timeout(settings.timeout)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200);
    if let Some(password) = &settings.password {
        builder = builder.password(password);
    }
    if let Some(certificates) = &settings.certificates {
        builder = builder.certs(certificates.clone());
    }
    builder
}

/// The Sentinel client of `config`: the sentinels by their URLs (with their own credentials, if
/// any), the master reached with the tier's user, password and TLS.
fn sentinel_client(config: &SentinelConfig, settings: &Settings) -> RedisResult<SentinelClient> {
    let infos = config
        .nodes
        .iter()
        .map(|node| node.as_str().into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?;
    let first = infos[0].redis_settings().clone();
    let addresses = infos.iter().map(|info| info.addr().clone());
    let mut builder =
        SentinelClientBuilder::new(addresses, &config.master, SentinelServerType::Master)?;
    if let Some(username) = first.username() {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = first.password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(username) = &config.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &settings.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if config.tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = &settings.certificates {
            builder = builder.set_client_to_redis_certificates(certificates.clone());
        }
    }
    if config.nodes[0].starts_with("rediss://") {
        builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = &settings.certificates {
            builder = builder.set_client_to_sentinel_certificates(certificates.clone());
        }
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_tag_is_the_first_braced_text_else_the_whole_key() {
        assert_eq!(hash_tag(b"mj:task:{ab:mj:t1}"), b"ab:mj:t1");
        assert_eq!(hash_tag(b"mj:lease:{ab:mj:t1}"), b"ab:mj:t1");
        // An id with braces ends the tag early, the same way in every key of the task.
        assert_eq!(hash_tag(b"mj:task:{ab:mj:t}1}"), b"ab:mj:t");
        assert_eq!(hash_tag(b"mj:hooks"), b"mj:hooks");
        assert_eq!(
            hash_tag(b"mj:{}x"),
            b"mj:{}x",
            "an empty tag hashes the whole key"
        );
    }

    #[test]
    fn cluster_nodes_lists_live_masters() {
        let nodes = "\
07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002,node-2 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 connected
e7d1 127.0.0.1:30004@40004 slave 07c3 0 1 1 connected
";
        assert_eq!(
            cluster_masters(nodes),
            [
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30002)
            ]
        );
    }
}
