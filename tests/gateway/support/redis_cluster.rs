//! A real Redis Cluster on loopback: three masters, each with one replica, made by
//! `redis-cli --cluster create`, with a short `cluster-node-timeout` so a killed master's replica is
//! promoted within seconds. With TLS, clients and the cluster bus and replication are all TLS.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::redis_server::{RedisOptions, RedisServer, RedisTlsFiles, free_port};

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    tls: Option<RedisTlsFiles>,
    password: Option<String>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Six nodes: three masters, three replicas; waits until every slot is served and every
    /// replica follows its master.
    pub fn start(tls: Option<RedisTlsFiles>, password: Option<&str>) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mjgate-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let nodes = (0..6)
            .map(|i| {
                let node_dir = dir.join(format!("node-{i}"));
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                ]
                .map(String::from)
                .to_vec();
                args.push(free_port().to_string());
                if tls.is_some() {
                    args.extend(
                        ["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from),
                    );
                }
                RedisServer::start_with(RedisOptions {
                    tls: tls.clone(),
                    password: password.map(str::to_owned),
                    args,
                    dir: Some(node_dir),
                })
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            tls,
            password: password.map(str::to_owned),
            dir,
        };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", cluster.client_port(n)))
            .collect();
        let mut create = cluster.cli_command();
        create
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = create.output().expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_until(
            "three masters serving every slot, three replicas",
            |nodes| {
                let masters = nodes
                    .lines()
                    .filter(|l| {
                        l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8
                    })
                    .count();
                let replicas = nodes
                    .lines()
                    .filter(|l| l.contains("slave") && !l.contains("fail"))
                    .count();
                masters == 3 && replicas == 3
            },
        );
        cluster
    }

    /// The port clients connect to: the TLS one in a TLS cluster.
    fn client_port(&self, node: &RedisServer) -> u16 {
        match &self.tls {
            Some(_) => node.tls_port().unwrap(),
            None => node.port(),
        }
    }

    /// `redis-cli` speaking to the cluster as clients do (TLS, password).
    fn cli_command(&self) -> Command {
        let mut command = Command::new("redis-cli");
        if let Some(tls) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca);
            if tls.clients_need_certificates {
                command
                    .arg("--cert")
                    .arg(&tls.cert)
                    .arg("--key")
                    .arg(&tls.key);
            }
        }
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        command
    }

    /// The seed URLs a gateway is given: every master's and replica's client port.
    pub fn seeds(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", self.client_port(n)))
            .collect()
    }

    /// A running node, for plaintext `redis-cli` (its `CLUSTER` view, `CLUSTER KEYSLOT`).
    pub fn any_node(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node runs")
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.any_node()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot")
    }

    /// Every key of the cluster (`--scan` on each master) matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            if node.cli(&["ROLE"]).starts_with("master") {
                let found = node.cli(&["--scan", "--pattern", pattern]);
                keys.extend(found.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            }
        }
        keys
    }

    /// `GET key`, asked of the master serving it (`-c` follows the redirection).
    pub fn get(&self, key: &str) -> String {
        self.any_node().cli(&["-c", "GET", key])
    }

    /// Kills the master serving `slot` and waits until its replica has taken the slot over.
    /// Returns the killed node's index.
    pub fn kill_master_of(&mut self, slot: u16) -> usize {
        let index = self
            .nodes
            .iter()
            .position(|n| {
                n.is_running()
                    && n.cli(&["ROLE"]).starts_with("master")
                    && owns_slot(&n.cli(&["CLUSTER", "NODES"]), slot)
            })
            .expect("a master serves the slot");
        self.nodes[index].stop();
        self.wait_until("the replica promoted, every slot served again", |nodes| {
            nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                .count()
                == 3
        });
        index
    }

    /// Waits (bounded) until the `CLUSTER NODES` of a running node satisfies `done`, and
    /// `cluster_state` is ok.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = self.any_node();
            let nodes = node.cli(&["CLUSTER", "NODES"]);
            if done(&nodes) && node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never got to: {what}\n{nodes}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the `myself` line of a `CLUSTER NODES` answer serves `slot`.
fn owns_slot(nodes: &str, slot: u16) -> bool {
    let Some(line) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    line.split(' ').skip(8).any(|range| {
        let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
        match (ends.next(), ends.next()) {
            (Some(a), Some(b)) => (a..=b).contains(&slot),
            (Some(a), None) => a == slot,
            _ => false,
        }
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
