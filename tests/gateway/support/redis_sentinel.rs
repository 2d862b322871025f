//! A master, its replica and three `redis-sentinel`s on loopback, with a one-second
//! `down-after-milliseconds`, so killing the master fails over to the replica within seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::redis_server::{RedisOptions, RedisServer, free_port};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mjgate-master";

pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl RedisSentinel {
    /// Starts the three and waits until every sentinel names the master and knows the replica.
    pub fn start() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mjgate-sentinel-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let master = RedisServer::start();
        let replica = RedisServer::start_with(RedisOptions {
            args: ["--replicaof", "127.0.0.1", &master.port().to_string()]
                .map(String::from)
                .to_vec(),
            ..RedisOptions::default()
        });
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let file = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &file,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 10000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir = dir.display(),
                        master = master.port()
                    ),
                )
                .unwrap();
                let child = Command::new("redis-sentinel")
                    .arg(&file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot run redis-sentinel ({e}): apt-get install redis-sentinel")
                    });
                (port, child)
            })
            .collect();
        let sentinel = RedisSentinel {
            master,
            replica,
            sentinels,
            dir,
        };
        let master_port = sentinel.master.port();
        sentinel.wait_until(
            "every sentinel names the master and sees the replica",
            |port| {
                sentinel.master_port_named_by(port) == Some(master_port)
                    && sentinel
                        .ask(port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                        .contains("flags\nslave")
                    && sentinel
                        .ask(port, &["SENTINEL", "SENTINELS", MASTER_NAME])
                        .matches("flags\nsentinel")
                        .count()
                        == 2
            },
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sentinel
            .replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// The sentinels' addresses, as `shared_cache.sentinel.nodes` takes them.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// Kills the master and waits until every sentinel names the replica instead.
    pub fn fail_over(&mut self) {
        self.master.stop();
        let replica = self.replica.port();
        self.wait_until("the sentinels promoted the replica", |port| {
            self.master_port_named_by(port) == Some(replica)
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.replica.cli(&["ROLE"]).starts_with("master") {
            assert!(Instant::now() < deadline, "the replica never became master");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `SENTINEL FAILOVER`: the sentinels promote the replica with the master still running, and
    /// this waits until they name it.
    pub fn switch_over(&self) {
        let (port, _) = &self.sentinels[0];
        let answer = self.ask(*port, &["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert_eq!(answer, "OK", "SENTINEL FAILOVER");
        let replica = self.replica.port();
        self.wait_until("the sentinels promoted the replica", |port| {
            self.master_port_named_by(port) == Some(replica)
        });
    }

    fn ask(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn master_port_named_by(&self, port: u16) -> Option<u16> {
        let answer = self.ask(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// Waits (bounded) until `done` holds for every sentinel's port.
    fn wait_until(&self, what: &str, done: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.sentinels.iter().all(|(port, _)| done(*port)) {
            assert!(Instant::now() < deadline, "sentinels never got to: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
