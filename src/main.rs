//! The `mjgate` binary: parse the command line, set up logging, load the config, bind, and run.

use std::io::IsTerminal;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mjgate::config::{self, Config, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

/// mimalloc: a request allocates a handful of small, short-lived blocks (header maps, buffers), which
/// glibc's allocator serves noticeably slower (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Redis URL of the cache replicas share; beats `[shared_cache] redis_url`. The fingerprint
    /// secret it needs is read from MJGATE_FINGERPRINT_SECRET (or the file), never from a flag.
    #[arg(
        long,
        value_name = "URL",
        env = "MJGATE_REDIS_URL",
        hide_env_values = true
    )]
    redis_url: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Probe a running gateway (exit 0 when it answers 2xx): for container health checks. Without
    /// `--url`, probes `/healthz` of the gateway the config describes (`--config`, the environment
    /// and the flags, as the gateway reads them): on `admin_listen` when set, else on `listen`.
    Healthcheck {
        /// The URL to probe, instead of the config's.
        #[arg(long)]
        url: Option<String>,
        /// The path probed on the config's listener: `/healthz` (alive) or `/readyz` (can serve).
        #[arg(long, default_value = "/healthz")]
        path: String,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the simulated task API (the tests' upstream) as a server, for benchmarks and trials.
    Simulator {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Create this many tasks for each credential (at most 1,000,000): `task-0` .. `task-{N-1}`
        /// for a single credential, `task-{c}-{i}` for credential number c otherwise (a task has one
        /// owner).
        #[arg(long, default_value_t = 0, value_parser = count)]
        tasks: usize,
        /// Credentials (Authorization values) owning the seeded tasks.
        #[arg(long = "credential", default_value = "Bearer sk-bench")]
        credentials: Vec<String>,
        /// Seeded tasks finish this long after start; 0s makes them SUCCESS at once.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        task_duration: std::time::Duration,
        /// Pad seeded Midjourney tasks' prompts so that each answer is about this many bytes (the
        /// prompt appears three times in it), for memory benchmarks; 0 leaves them small.
        #[arg(long, default_value = "0", value_parser = answer_bytes)]
        answer_bytes: usize,
        /// Delay before every answer.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
        /// Cycle through faults, one phase per period: normal, 500s, 429 with Retry-After: 2, 2 s
        /// latency (for soak tests).
        #[arg(long, value_parser = humantime::parse_duration)]
        chaos: Option<std::time::Duration>,
        /// The task APIs of the tasks, in turn: a name (midjourney, suno, kling, openai-videos,
        /// video-generations, video-query, runway, luma, volcengine), a comma-separated list, or mix.
        #[arg(long, default_value = "midjourney", value_parser = parse_apis)]
        api: Apis,
    },
    /// See it work: a simulated upstream, mjgate in front of it and a swarm of polling clients, all in
    /// this process, then a table of what mjgate saved.
    Demo {
        /// Polling clients (at most 1,000,000).
        #[arg(long, default_value_t = 200, value_parser = count)]
        clients: usize,
        /// Tasks they poll (at most 1,000,000).
        #[arg(long, default_value_t = 50, value_parser = count)]
        tasks: usize,
        /// Each client's poll interval.
        #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// How long the clients poll before the table is printed; the simulated tasks finish
        /// between a fifth and two thirds of the way through it.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Clients submit with a notifyHook and never poll; the gateway delivers every change to a
        /// receiver in this process (signatures checked), set against the polls avoided.
        #[arg(long)]
        webhooks: bool,
        /// The task APIs of the tasks, in turn: a name (midjourney, suno, kling, openai-videos,
        /// video-generations, video-query, runway, luma, volcengine), a comma-separated list, or mix.
        #[arg(long, default_value = "midjourney", value_parser = parse_apis)]
        api: Apis,
    },
    /// Load generator: polling clients against any HTTP gateway (mjgate, nginx, Varnish, ...).
    Bench {
        /// Base URL of the gateway under test.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        #[arg(long, default_value_t = 200, value_parser = count)]
        clients: usize,
        /// Tasks per credential (`task-0` .. as `mjgate simulator --tasks` seeds them).
        #[arg(long, default_value_t = 50, value_parser = count)]
        tasks: usize,
        /// Each client's poll interval; 0s sends the next request as soon as the answer is in.
        #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Poll with list-by-condition batches of this many ids instead of single fetches.
        #[arg(long)]
        batch: Option<usize>,
        /// Authorization values; clients take them in turn.
        #[arg(long = "credential", default_value = "Bearer sk-bench")]
        credentials: Vec<String>,
        /// Every client sends one request, all at once (a cold burst).
        #[arg(long)]
        burst: bool,
        /// Ask for every task exactly once, each request a new id, then stop (fills a cache).
        #[arg(long)]
        sweep: bool,
        #[arg(long, default_value = "task-")]
        id_prefix: String,
        /// Send If-None-Match with the last ETag each client got (304s count as successes).
        #[arg(long)]
        conditional: bool,
        /// Long-poll: fetch with ?wait= this long (and If-None-Match); use with --interval 0s.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
        /// The simulator's /_sim/stats URL, to count the upstream calls the run caused.
        #[arg(long)]
        sim_stats: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead of polling: open and hold this many connections (each from its own 127.0.0.0/8
        /// source address) and report the gateway's resident memory per connection.
        #[arg(long)]
        hold: Option<usize>,
        /// What each held connection does: idle (after one fetch), long-poll, events.
        #[arg(long, value_enum, default_value = "idle")]
        hold_kind: mjgate::tools::hold::HoldKind,
        /// How long the connections are held once open.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold_for: std::time::Duration,
        /// The task APIs of the tasks, in turn: a name (midjourney, suno, kling, openai-videos,
        /// video-generations, video-query, runway, luma, volcengine), a comma-separated list, or mix.
        #[arg(long, default_value = "midjourney", value_parser = parse_apis)]
        api: Apis,
    },
    /// Check the config as the gateway would read it (file, environment, flags), print what it
    /// would run with, and exit: 0 when valid, 2 with the offending key otherwise. Like `nginx -t`, for
    /// deploy pipelines and `ExecStartPre=`.
    CheckConfig,
    /// The benchmarks' ceiling: a bare server answering every request with one fixed task body.
    FixedBody {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Serve this file's bytes instead of the built-in finished task, e.g. the very body the
        /// gateway under test serves, so the ceiling writes as many bytes as it does.
        #[arg(long, value_name = "PATH")]
        body_file: Option<PathBuf>,
    },
}

/// Transparent huge pages are turned off for this process: mimalloc commits its arenas eagerly, and
/// with huge pages behind them every held connection cost about 12 KB more resident memory
/// (bench/hold.sh). The gateway's heap is many small, long-lived pieces per connection, not the large
/// arrays huge pages speed up.
fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let mut args = Args::parse();
    let check_only = matches!(args.command, Some(Command::CheckConfig));
    if let Some(Command::Healthcheck { url, path, timeout }) = &args.command {
        let url = match url {
            Some(url) => url.clone(),
            None => match load_config(&args)
                .map_err(|e| e.to_string())
                .and_then(|c| probe_url(&c, path))
            {
                Ok(url) => url,
                Err(e) => {
                    eprintln!("mjgate healthcheck: {e}");
                    return ExitCode::from(2);
                }
            },
        };
        return healthcheck(&url, *timeout);
    }
    if let Some(command) = args.command.take().filter(|_| !check_only) {
        return tool(command);
    }
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mjgate: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        // Not `println!`: a reader that closes early (`| head`, `| grep -q`) must not turn a valid
        // config into a panic and exit 101.
        let _ = writeln!(std::io::stdout().lock(), "{}", config_summary(&config));
        return ExitCode::SUCCESS;
    }
    run_gateway(config)
}

/// The subcommands that are not the gateway: the probe, the simulator, the demo, the load generator
/// and the benchmarks' ceiling.
fn tool(command: Command) -> ExitCode {
    match command {
        // Handled by `main`, which reads the config for it.
        Command::Healthcheck { .. } => ExitCode::SUCCESS,
        Command::Simulator {
            listen,
            tasks,
            credentials,
            task_duration,
            answer_bytes,
            latency,
            chaos,
            api,
        } => {
            let seeding = Seeding {
                tasks,
                credentials: &credentials,
                task_duration,
                answer_bytes,
                apis: &api.0,
            };
            simulator(listen, &seeding, latency, chaos)
        }
        Command::Demo {
            clients,
            tasks,
            interval,
            duration,
            webhooks,
            api,
        } => {
            let spec = mjgate::tools::demo::DemoSpec {
                clients,
                tasks,
                interval,
                duration,
                redraw: std::io::stderr().is_terminal(),
                apis: api.0,
            };
            demo(&spec, webhooks)
        }
        bench @ Command::Bench { .. } => bench_tool(bench),
        Command::FixedBody { listen, body_file } => {
            let body = match body_file {
                Some(path) => match mjgate::file::read_bounded(&path, 1 << 30) {
                    Ok(bytes) => bytes::Bytes::from(bytes),
                    Err(e) => {
                        eprintln!("mjgate fixed-body: cannot read {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                None => bytes::Bytes::from_static(mjgate::tools::fixed_body::TASK_BODY.as_bytes()),
            };
            fixed_body(listen, body)
        }
        // Handled by `main`, which checks the config itself.
        Command::CheckConfig => ExitCode::SUCCESS,
    }
}

/// The config as the gateway reads it: the file (`--config`, else the default path when it exists),
/// then the environment and flags over it.
/// `--answer-bytes`: at most 64 MiB per answer.
fn answer_bytes(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n > 64 << 20 {
        return Err("at most 67108864".into());
    }
    Ok(n)
}

/// A count for the tools' flags: at most a million (a tool told to make 2^64 tasks would allocate
/// until the kernel killed it).
fn count(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n > 1_000_000 {
        return Err("at most 1000000".into());
    }
    Ok(n)
}

fn load_config(args: &Args) -> Result<Config, config::ConfigError> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream.clone(),
        redis_url: args.redis_url.clone(),
        fingerprint_secret: std::env::var("MJGATE_FINGERPRINT_SECRET").ok(),
        webhook_secret: std::env::var("MJGATE_WEBHOOK_SECRET").ok(),
    };
    match &args.config {
        Some(path) => Config::load(path, &overrides),
        None if std::path::Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(std::path::Path::new(config::DEFAULT_PATH), &overrides)
        }
        None => Config::from_toml("", &overrides),
    }
}

/// Binds, serves until SIGTERM or SIGINT, drains, and says how it went.
fn run_gateway(config: Config) -> ExitCode {
    // Held to the end: dropping it flushes the log lines still queued.
    let _log_writer = init_logging(&config.log);
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
        let stop = mjgate::shutdown::signal();
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| mjgate::Error::Bind { addr, source })
        };
        let main = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        tracing::info!(upstream = %config.upstream.url, "mjgate starting");
        let listeners = mjgate::server::Listeners { main, admin };
        mjgate::run(listeners, config, stop).await
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

/// Where the config's gateway answers `path`: its admin listener when it has one (cleartext), else
/// its main one; an unspecified address (`0.0.0.0`, `[::]`) is probed on loopback.
fn probe_url(config: &Config, path: &str) -> Result<String, String> {
    let (addr, tls) = match config.admin_listen {
        Some(admin) => (admin, false),
        None => (config.listen, config.tls.is_some()),
    };
    if tls {
        return Err(
            "the listener serves TLS and there is no admin_listen: set admin_listen (cleartext, \
             loopback) or give --url"
                .into(),
        );
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(format!(
        "http://{}{path}",
        std::net::SocketAddr::new(ip, addr.port())
    ))
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
    match runtime.block_on(mjgate::tools::healthcheck::probe(url, timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mjgate healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime, or the reason there is none.
fn runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("mjgate {command}: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `mjgate demo`, or with `--webhooks` its webhooks demo: progress on stderr, the table on stdout.
fn demo(spec: &mjgate::tools::demo::DemoSpec, webhooks: bool) -> ExitCode {
    use mjgate::tools::demo;
    let runtime = match runtime("demo") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let mut stderr = std::io::stderr();
    let table = if webhooks {
        runtime
            .block_on(demo::hooks::run(spec, &mut stderr))
            .map(|report| demo::hooks::table(&report, spec))
    } else {
        runtime
            .block_on(demo::run(spec, &mut stderr))
            .map(|report| demo::table(&report, spec))
    };
    match table {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mjgate demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mjgate bench`: the load generator, or with `--hold` the connection holder.
fn bench_tool(command: Command) -> ExitCode {
    let Command::Bench {
        target,
        clients,
        tasks,
        interval,
        duration,
        batch,
        credentials,
        burst,
        sweep,
        id_prefix,
        conditional,
        wait,
        sim_stats,
        json,
        api,
        hold,
        hold_kind,
        hold_for,
    } = command
    else {
        return ExitCode::FAILURE;
    };
    if let Some(connections) = hold {
        let authority = target.trim_start_matches("http://").trim_end_matches('/');
        let Ok(target) = authority.parse::<SocketAddr>() else {
            eprintln!("mjgate bench --hold: --target must be http://IP:PORT, not {target}");
            return ExitCode::from(2);
        };
        let spec = mjgate::tools::hold::HoldSpec {
            target,
            connections,
            kind: hold_kind,
            credential: credentials.first().cloned().unwrap_or_default(),
            tasks: tasks.max(1),
            id_prefix,
            hold: hold_for,
        };
        return bench_hold(&spec, sim_stats.as_deref());
    }
    let spec = mjgate::tools::load::LoadSpec {
        target,
        clients: clients.max(1),
        tasks: tasks.max(1),
        interval,
        duration,
        mode: batch.map_or(
            mjgate::tools::load::Mode::Fetch,
            mjgate::tools::load::Mode::Batch,
        ),
        credentials,
        burst,
        sweep,
        id_prefix,
        conditional,
        wait,
        apis: api.0,
    };
    if batch.is_some()
        && let Some(api) = spec.apis.iter().find(|api| api.batch_path().is_none())
    {
        eprintln!(
            "mjgate bench: --batch needs APIs with a batch route; {} has none",
            api.name()
        );
        return ExitCode::from(2);
    }
    bench(&spec, sim_stats.as_deref(), json)
}

/// `mjgate bench --hold`: one JSON report line; fails when not every connection was held.
fn bench_hold(spec: &mjgate::tools::hold::HoldSpec, sim_stats: Option<&str>) -> ExitCode {
    let runtime = match runtime("bench") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let before = sim_stats_at(sim_stats).await;
        let report = match mjgate::tools::hold::run(spec).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("mjgate bench --hold: {e}");
                return ExitCode::FAILURE;
            }
        };
        let after = sim_stats_at(sim_stats).await;
        let upstream = before
            .zip(after)
            .map(|(b, a)| a.fetches.saturating_sub(b.fetches));
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        json["upstream_fetches"] = upstream.map_or(serde_json::Value::Null, Into::into);
        let _ = writeln!(std::io::stdout().lock(), "{json}");
        if report.held == report.requested {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// The simulator's call counters, when `--sim-stats` names them.
async fn sim_stats_at(url: Option<&str>) -> Option<mjgate::tools::load::UpstreamStats> {
    mjgate::tools::load::upstream_stats(url?).await
}

fn bench(spec: &mjgate::tools::load::LoadSpec, sim_stats: Option<&str>, json: bool) -> ExitCode {
    let runtime = match runtime("bench") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let before = sim_stats_at(sim_stats).await;
        let report = mjgate::tools::load::run(spec, Default::default()).await;
        let upstream = match (sim_stats, before) {
            (Some(url), Some(before)) => {
                mjgate::tools::load::upstream_stats(url).await.map(|after| after - before)
            }
            _ => None,
        };
        if json {
            let value = serde_json::json!({ "load": report, "upstream": upstream });
            println!("{value}");
        } else {
            let l = &report.latency_ms;
            println!(
                "requests {}  errors {}  throughput {:.0}/s  latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}  body bytes {}",
                report.requests, report.errors, report.throughput, l.p50, l.p90, l.p99, l.p999, l.max, report.body_bytes
            );
            println!("statuses {:?}", report.statuses);
            if let Some(u) = upstream {
                println!(
                    "upstream calls {} (fetches {}, list calls {} for {} ids)",
                    u.total, u.fetches, u.list_calls, u.listed_ids
                );
            }
        }
        ExitCode::SUCCESS
    })
}

/// Binds `addr` for a subcommand, or says why it cannot.
async fn bind(command: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("mjgate {command}: cannot listen on {addr}: {e}");
        ExitCode::FAILURE
    })
}

fn fixed_body(listen: SocketAddr, body: bytes::Bytes) -> ExitCode {
    let runtime = match runtime("fixed-body") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let stop = mjgate::shutdown::signal();
        let listener = match bind("fixed-body", listen).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        eprintln!("mjgate fixed-body listening on {listen}");
        match mjgate::tools::fixed_body::serve(listener, body, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mjgate fixed-body: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The task APIs of `--api`.
#[derive(Debug, Clone)]
struct Apis(Vec<mjgate::tools::simulator::Api>);

fn parse_apis(text: &str) -> Result<Apis, String> {
    mjgate::tools::simulator::Api::parse_list(text).map(Apis)
}

/// The tasks `mjgate simulator` starts with.
struct Seeding<'a> {
    tasks: usize,
    credentials: &'a [String],
    task_duration: std::time::Duration,
    answer_bytes: usize,
    apis: &'a [mjgate::tools::simulator::Api],
}

fn simulator(
    listen: SocketAddr,
    seeding: &Seeding<'_>,
    latency: std::time::Duration,
    chaos: Option<std::time::Duration>,
) -> ExitCode {
    let Seeding {
        tasks,
        credentials,
        task_duration,
        answer_bytes,
        apis,
    } = *seeding;
    let padding = "x".repeat(answer_bytes / 3);
    let runtime = match runtime("simulator") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let stop = mjgate::shutdown::signal();
        let listener = match bind("simulator", listen).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let sim = match mjgate::tools::simulator::Simulator::start_on(listener) {
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
                let api = apis[i % apis.len()];
                if task_duration.is_zero() {
                    let done = api.status(mjgate::tools::simulator::Phase::Succeeded);
                    sim.create_task_in(api, credential, &id, done);
                } else {
                    sim.submit_task_in(api, credential, &id, task_duration);
                }
                if !padding.is_empty() {
                    sim.set_prompt(&id, &padding);
                }
            }
        }
        eprintln!(
            "mjgate simulator listening on {} ({tasks} tasks per credential)",
            sim.addr()
        );
        let sim = std::sync::Arc::new(sim);
        if let Some(period) = chaos {
            let sim = std::sync::Arc::clone(&sim);
            tokio::spawn(async move {
                use mjgate::tools::simulator::Fault;
                for phase in (0..4).cycle() {
                    sim.clear_faults();
                    sim.set_latency(latency);
                    match phase {
                        1 => sim.set_fault(Some(Fault::Status(500))),
                        2 => sim.set_fault(Some(Fault::RateLimited {
                            retry_after: Some(2),
                        })),
                        3 => sim.set_latency(std::time::Duration::from_secs(2)),
                        _ => {}
                    }
                    eprintln!("mjgate simulator: chaos phase {phase}");
                    tokio::time::sleep(period).await;
                }
            });
        }
        stop.await;
        ExitCode::SUCCESS
    })
}

/// What `mjgate check-config` prints: the settings an operator most often gets wrong, secrets left out.
fn config_summary(config: &Config) -> String {
    let shared = config.shared_cache.as_ref().map_or_else(
        || "off".to_owned(),
        |shared| config::redact_url(&shared.redis_url),
    );
    let families: Vec<&str> = config.families.all().iter().map(|f| f.name()).collect();
    let families = families.join(", ");
    let webhooks = match &config.webhooks {
        None => "off".to_owned(),
        Some(w) => format!(
            "on (callbacks {}; private hooks {})",
            w.public_url.as_deref().unwrap_or("off"),
            if w.allow_private {
                "allowed"
            } else {
                "refused"
            }
        ),
    };
    format!(
        "config ok\n\
         listen          {}\n\
         admin_listen    {}\n\
         upstream        {}\n\
         in_progress_ttl {}\n\
         max_memory      {}\n\
         shared cache    {shared}\n\
         families        {families}\n\
         webhooks        {webhooks}\n\
         gzip answers    {}\n\
         park idle after {}",
        config.listen,
        config
            .admin_listen
            .map_or_else(|| "(main listener)".to_owned(), |a| a.to_string()),
        config.upstream.url,
        humantime::format_duration(config.cache.in_progress_ttl),
        bytesize::ByteSize(config.cache.max_memory),
        if config.cache.gzip { "on" } else { "off" },
        config.server.park_idle_after.map_or_else(
            || "never".to_owned(),
            |after| humantime::format_duration(after).to_string()
        ),
    )
}

/// Logs go to stderr through a writer thread, so a request never waits on a slow or stopped log
/// consumer (a full pipe, a stalled journald): when the queue is full, lines are dropped and counted
/// in `mjgate_log_lines_dropped_total` instead.
fn init_logging(log: &config::LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    const QUEUED_LINES: usize = 16 * 1024;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("mjgate-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    mjgate::metrics::count_dropped_log_lines(move || dropped.dropped_lines() as u64);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}
