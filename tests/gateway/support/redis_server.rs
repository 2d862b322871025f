//! A real `redis-server` on a free loopback port, started and stopped by the test that owns it;
//! with TLS, a password, or cluster mode when the test asks.
//!
//! Every server keeps a plaintext port on 127.0.0.1 for the test's own checks and commands, so the
//! test can look at what the gateways wrote whatever the gateways must connect with.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a server is started beyond the defaults (no persistence, loopback only).
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// A TLS port too, with these files.
    pub tls: Option<RedisTlsFiles>,
    /// `requirepass`: the `default` user's password (and `masterauth`, for replicas).
    pub password: Option<String>,
    /// More `redis-server` arguments (`--user ...`, `--cluster-enabled yes`, ...).
    pub args: Vec<String>,
    /// Where the server's files go (cluster node files); a fresh temporary one when `None`.
    pub dir: Option<PathBuf>,
}

/// The server's certificate and key, the CA it trusts for clients (and replication), and whether
/// clients must present a certificate.
#[derive(Clone)]
pub struct RedisTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub clients_need_certificates: bool,
}

/// One `redis-server` process; killed on drop.
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    options: RedisOptions,
    child: Option<Child>,
}

/// A free loopback port (free when asked: the server binds it right after), never one this test
/// process handed out before: the OS may offer a just-closed port again, and a cluster asks for
/// eighteen at once.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh free port");
}

impl RedisServer {
    /// Starts a plaintext server with no password on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(options: RedisOptions) -> Self {
        let tls_port = options.tls.as_ref().map(|_| free_port());
        let mut server = RedisServer {
            port: free_port(),
            tls_port,
            options,
            child: None,
        };
        server.restart();
        server
    }

    /// The plaintext URL, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS URL (`rediss://127.0.0.1:port`), without credentials.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (as a crash or an outage would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers, as with a hung Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts the server again on the same ports (empty, unless cluster files keep its identity).
    pub fn restart(&mut self) {
        self.stop();
        let dir = self.options.dir.clone().unwrap_or_else(std::env::temp_dir);
        let mut command = Command::new("redis-server");
        command
            .current_dir(&dir)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.clients_need_certificates {
                        "yes"
                    } else {
                        "no"
                    },
                ]);
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        let child = command
            .args(&self.options.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let (ask, expect): (String, &[u8]) = match &self.options.password {
            Some(password) => (
                format!(
                    "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\nPING\r\n",
                    password.len()
                ),
                b"+OK\r\n+PONG\r\n",
            ),
            None => ("PING\r\n".to_owned(), b"+PONG\r\n"),
        };
        let mut reply = vec![0u8; expect.len()];
        stream.write_all(ask.as_bytes()).is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && reply == expect
    }

    /// The plaintext URL with the `default` user's password, for the test's own connections.
    pub fn admin_url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// A connection for inspecting what the gateways wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.admin_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// `redis-cli` on the plaintext port, with the password: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.options.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        let output = command.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
