//! The `mjgate` binary: parse the command line, set up logging, load the config, bind, and run.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mjgate::config::{self, Config, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

/// A caching, collapsing reverse proxy for Midjourney-style task APIs.
///
/// Without a subcommand, runs the gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML). Defaults to config/mjgate.toml when it exists.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on; beats the file's `listen`.
    #[arg(long, value_name = "ADDR", env = "MJGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Upstream base URL (http or https, may carry a path prefix); beats the file's `[upstream] url`.
    #[arg(long, value_name = "URL", env = "MJGATE_UPSTREAM")]
    upstream: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Probe a running gateway (exit 0 when it answers 2xx): for container health checks.
    Healthcheck {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the simulated task API (the tests' upstream) as a server, for benchmarks and trials.
    Simulator {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Create this many tasks for each credential: `task-0` .. `task-{N-1}` for a single
        /// credential, `task-{c}-{i}` for credential number c otherwise (a task has one owner).
        #[arg(long, default_value_t = 0)]
        tasks: usize,
        /// Credentials (Authorization values) owning the seeded tasks.
        #[arg(long = "credential", default_value = "Bearer sk-bench")]
        credentials: Vec<String>,
        /// Seeded tasks finish this long after start; 0s makes them SUCCESS at once.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        task_duration: std::time::Duration,
        /// Delay before every answer.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Healthcheck { url, timeout }) => return healthcheck(&url, timeout),
        Some(Command::Simulator {
            listen,
            tasks,
            credentials,
            task_duration,
            latency,
        }) => return simulator(listen, tasks, &credentials, task_duration, latency),
        None => {}
    }
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
    };
    let loaded = match &args.config {
        Some(path) => Config::load(path, &overrides),
        None if std::path::Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(std::path::Path::new(config::DEFAULT_PATH), &overrides)
        }
        None => Config::from_toml("", &overrides),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mjgate: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mjgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| mjgate::Error::Bind {
                addr: config.listen,
                source,
            })?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| mjgate::Error::Bind { addr, source })?,
            ),
            None => None,
        };
        tracing::info!(upstream = %config.upstream.url, "mjgate starting");
        let listeners = mjgate::server::Listeners {
            main: listener,
            admin,
        };
        mjgate::run(listeners, config, mjgate::shutdown::signal()).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mjgate stopped");
            eprintln!("mjgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mjgate healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mjgate::healthcheck::probe(url, timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mjgate healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulator(
    listen: SocketAddr,
    tasks: usize,
    credentials: &[String],
    task_duration: std::time::Duration,
    latency: std::time::Duration,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mjgate simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("mjgate simulator: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let sim = match mjgate::simulator::Simulator::start_on(listener) {
            Ok(sim) => sim,
            Err(e) => {
                eprintln!("mjgate simulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        sim.set_latency(latency);
        for (c, credential) in credentials.iter().enumerate() {
            for i in 0..tasks {
                let id = if credentials.len() == 1 {
                    format!("task-{i}")
                } else {
                    format!("task-{c}-{i}")
                };
                if task_duration.is_zero() {
                    sim.create_task(credential, &id, "SUCCESS");
                } else {
                    sim.submit_task(credential, &id, task_duration);
                }
            }
        }
        eprintln!(
            "mjgate simulator listening on {} ({tasks} tasks per credential)",
            sim.addr()
        );
        mjgate::shutdown::signal().await;
        ExitCode::SUCCESS
    })
}

fn init_logging(log: &config::LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}
