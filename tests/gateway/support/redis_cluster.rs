//! A real Redis Cluster on loopback: three masters, each with one replica, made by
//! `redis-cli --cluster create`, with a short `cluster-node-timeout` (2 s: shorter, a busy test
//! machine makes healthy nodes look failed) so a killed master's replica is promoted within seconds. With TLS, clients and the cluster bus and replication are all TLS.

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
                    "2000",
                    // A replica's first sync starts at once, not after the default 5 s.
                    "--repl-diskless-sync",
                    "yes",
                    "--repl-diskless-sync-delay",
                    "0",
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

    /// `GET key`, asked of every master until one serves it (on plaintext ports: a redirection
    /// names the client port of the connection's kind, which after a failover may be another one).
    pub fn get(&self, key: &str) -> String {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.cli(&["ROLE"]).starts_with("master"))
            .map(|n| n.cli(&["GET", key]))
            .find(|value| {
                !value.is_empty() && !value.starts_with("MOVED") && !value.starts_with("ERR")
            })
            .unwrap_or_default()
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
        // What it holds has reached its replica (WAIT 1 replica, at most 5 s): the test is of the
        // gateways through a failover, not of asynchronous replication's window.
        let acked = self.nodes[index].cli(&["WAIT", "1", "5000"]);
        assert_eq!(acked, "1", "the replica acknowledged the master's writes");
        let id = self.nodes[index].cli(&["CLUSTER", "MYID"]);
        self.nodes[index].stop();
        // Until the others agree it failed (`fail`, not the suspicion `fail?`) and three healthy
        // masters serve every slot: right after the kill they still list it as a master.
        self.wait_until("the master failed, its replica promoted", |nodes| {
            let failed = nodes.lines().any(|l| {
                l.starts_with(&id)
                    && l.split(' ')
                        .nth(2)
                        .is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
            });
            let masters = nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                .count();
            failed && masters == 3
        });
        index
    }

    /// Freezes every node (SIGSTOP), as a hung cluster: connections stay open, nothing answers.
    /// Thaw within `cluster-node-timeout` (2 s), or the nodes find each other failed.
    pub fn pause(&self) {
        for node in &self.nodes {
            node.pause();
        }
    }

    /// Thaws every node (SIGCONT).
    pub fn resume(&self) {
        for node in &self.nodes {
            node.resume();
        }
    }

    /// Waits (bounded) until the `CLUSTER NODES` of every running node satisfies `done`, and
    /// each says `cluster_state:ok`.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut nodes = String::new();
            let agreed = self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                nodes = node.cli(&["CLUSTER", "NODES"]);
                done(&nodes) && node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            if agreed {
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
