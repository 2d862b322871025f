//! The `mjgate` binary: parse the command line, set up logging, load the config, bind, and run.

use std::io::IsTerminal;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[path = "main/cli.rs"]
mod cli;
use cli::{Args, Command};
use mjgate::config::{self, Config, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

/// mimalloc: a request allocates a handful of small, short-lived blocks (header maps, buffers), which
/// glibc's allocator serves noticeably slower (see docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let check_only = matches!(args.command, Some(Command::CheckConfig { diff: false, .. }));
    if let Some(Command::CheckConfig { diff: true, url }) = &args.command {
        return match load_config(&args) {
            Ok(config) => config_diff(&config, url.clone()),
            Err(e) => {
                eprintln!("mjgate: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(problem) = admin_args_problem(&args.command) {
        eprintln!("mjgate: {problem}");
        return ExitCode::from(2);
    }
    if let Some(call) = admin_call_of(&args.command) {
        return match load_config(&args) {
            Ok(config) => tasks_admin(&config, &call),
            Err(e) => {
                eprintln!("mjgate {}: {e}", call.name);
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::ArtifactsKeep {
        file,
        content_type,
        credential,
    }) = &args.command
    {
        return match load_config(&args) {
            Ok(config) => artifacts_keep(&config, file, content_type, credential),
            Err(e) => {
                eprintln!("mjgate artifacts-keep: {e}");
                ExitCode::from(2)
            }
        };
    }
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
    run_gateway(config, args)
}

/// The subcommands that are not the gateway: the probe, the simulator, the demo, the load generator
/// and the benchmarks' ceiling.
fn tool(command: Command) -> ExitCode {
    match command {
        // Handled by `main`, which reads the config for it.
        Command::Healthcheck { .. } | Command::Inspect { .. } | Command::Purge { .. } => {
            ExitCode::SUCCESS
        }
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
            members,
            max_running,
            api,
        } => {
            if let Some(members) = members {
                let spec = mjgate::tools::demo::pool::PoolSpec {
                    members: usize::from(members),
                    tasks,
                    max_running,
                    interval,
                    ..Default::default()
                };
                return pool_demo(&spec);
            }
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
        Command::CheckConfig { .. } | Command::Reload { .. } => ExitCode::SUCCESS,
        // Handled by `main`, which reads the config for it.
        Command::ArtifactsKeep { .. } => ExitCode::SUCCESS,
    }
}

/// `mjgate artifacts-keep FILE`: the file streamed into the configured store, its URL path printed.
fn artifacts_keep(
    config: &Config,
    file: &std::path::Path,
    content_type: &str,
    credential: &str,
) -> ExitCode {
    use mjgate::artifacts::store::{BlobStore, MediaKind};
    let Some(artifacts) = &config.artifacts else {
        eprintln!("mjgate artifacts-keep: the config has no [artifacts] table");
        return ExitCode::from(2);
    };
    let runtime = match runtime("artifacts-keep") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match &artifacts.store {
            config::ArtifactStore::Local { dir, max_disk } => {
                BlobStore::local(dir, *max_disk, artifacts.max_file).map_err(|e| e.to_string())
            }
            config::ArtifactStore::S3(bucket) => {
                BlobStore::s3(bucket, artifacts.max_file).map_err(|e| e.to_string())
            }
        };
        let store = match store {
            Ok(store) => store,
            Err(e) => {
                eprintln!("mjgate artifacts-keep: cannot open the store: {e}");
                return ExitCode::FAILURE;
            }
        };
        let opened = match tokio::fs::File::open(file).await {
            Ok(opened) => opened,
            Err(e) => {
                eprintln!("mjgate artifacts-keep: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let body = tokio_util::io::ReaderStream::with_capacity(opened, 256 << 10);
        let kind = MediaKind::of_content_type(content_type);
        match store.put(body, kind).await {
            Ok((blob, len)) => {
                let secret = artifacts.secret.as_deref().map(str::as_bytes).or(config
                    .shared_cache
                    .as_ref()
                    .map(|shared| shared.fingerprint_secret.as_bytes()));
                if secret.is_none() {
                    eprintln!(
                        "mjgate artifacts-keep: kept {len} bytes, but with neither artifacts.secret \
                         nor a shared tier a running gateway keys its tokens itself: set one"
                    );
                    return ExitCode::from(2);
                }
                let tokens = mjgate::artifacts::token::FileTokens::new(secret);
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = http::HeaderValue::from_str(credential)
                    && !credential.is_empty()
                {
                    headers.insert(http::header::AUTHORIZATION, value);
                }
                // As the gateway fingerprints: under the shared tier's secret when there is one.
                let fingerprinter = match &config.shared_cache {
                    Some(shared) => mjgate::credential::Fingerprinter::from_secret(
                        shared.fingerprint_secret.as_bytes(),
                    ),
                    None => mjgate::credential::Fingerprinter::random(),
                };
                let fingerprint = fingerprinter.fingerprint(&headers);
                let token = tokens.issue(&blob, &fingerprint, None);
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}{token}",
                    mjgate::artifacts::token::FILES_PREFIX
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mjgate artifacts-keep: not kept: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn load_config(args: &Args) -> Result<Config, config::ConfigError> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream.clone(),
        redis_url: args.redis_url.clone(),
        artifacts_dir: args.artifacts_dir.clone(),
        fingerprint_secret: std::env::var("MJGATE_FINGERPRINT_SECRET").ok(),
        redis_password: std::env::var("MJGATE_REDIS_PASSWORD").ok(),
        webhook_secret: std::env::var("MJGATE_WEBHOOK_SECRET").ok(),
        admin_token: std::env::var("MJGATE_ADMIN_TOKEN").ok(),
    };
    match &args.config {
        Some(path) => Config::load(path, &overrides),
        None if std::path::Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(std::path::Path::new(config::DEFAULT_PATH), &overrides)
        }
        None => Config::from_toml("", &overrides),
    }
}

/// Binds, serves until SIGTERM or SIGINT (reloading on SIGHUP), drains, and says how it went.
fn run_gateway(config: Config, args: Args) -> ExitCode {
    // Held to the end: dropping it flushes the log lines still queued.
    let export = match config
        .trace
        .as_ref()
        .map(mjgate::trace::Export::new)
        .transpose()
    {
        Ok(export) => export,
        Err(e) => {
            eprintln!("mjgate: {e}");
            return ExitCode::from(2);
        }
    };
    let (_log_writer, log) = init_logging(&config.log, export.as_ref());
    if let Err(e) = mjgate::access::install(&config.log.access.to, &log.writer) {
        eprintln!("mjgate: log.access_to: {e}");
        return ExitCode::from(2);
    }
    let source = mjgate::reload::Source {
        load: Box::new(move || load_config(&args).map_err(|e| e.to_string())),
        apply: Box::new(move |config: &Config| log.apply(&config.log)),
    };
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
        mjgate::run_reloadable(listeners, config, Some(source), stop).await
    });
    mjgate::access::flush();
    // Off the runtime: the exporter's last batch is sent with its own blocking client.
    if let Some(export) = &export {
        export.shutdown();
    }
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

/// `mjgate inspect` or `mjgate purge`, as the request it makes.
struct AdminCall {
    name: &'static str,
    method: http::Method,
    /// `/admin/tasks...` and its query.
    path: String,
    url: Option<String>,
}

/// What is wrong with an admin subcommand's arguments: an empty family, id or credential (a script's
/// unset variable) would widen a purge to the whole family, or to everything.
fn admin_args_problem(command: &Option<Command>) -> Option<&'static str> {
    let empty = |part: &Option<String>| part.as_deref().is_some_and(str::is_empty);
    match command {
        Some(Command::Inspect { family, id, .. }) if family.is_empty() || id.is_empty() => {
            Some("an empty family or id (an unset variable?): name the task")
        }
        Some(Command::Purge {
            family,
            id,
            credential,
            ..
        }) if empty(family) || empty(id) || empty(credential) => Some(
            "an empty family, id or --credential (an unset variable?) would widen the purge: \
             name it, or leave it out",
        ),
        _ => None,
    }
}

fn admin_call_of(command: &Option<Command>) -> Option<AdminCall> {
    match command {
        Some(Command::Inspect { family, id, url }) => Some(AdminCall {
            name: "inspect",
            method: http::Method::GET,
            path: format!("/admin/tasks/{family}/{id}"),
            url: url.clone(),
        }),
        Some(Command::Purge {
            family,
            id,
            credential,
            url,
        }) => {
            let mut path = "/admin/tasks".to_owned();
            for part in [family, id].into_iter().flatten() {
                path.push('/');
                path.push_str(part);
            }
            if let Some(credential) = credential {
                path.push_str(&format!("?credential={credential}"));
            }
            Some(AdminCall {
                name: "purge",
                method: http::Method::DELETE,
                path,
                url: url.clone(),
            })
        }
        Some(Command::Reload { url }) => Some(AdminCall {
            name: "reload",
            method: http::Method::POST,
            path: "/admin/reload".to_owned(),
            url: url.clone(),
        }),
        _ => None,
    }
}

/// `check-config --diff`: the file's config against the running gateway's, key by key. Exit 0 when
/// a reload would take it, 3 when a key differs that needs a restart, 2 when it cannot be asked.
fn config_diff(config: &Config, url: Option<String>) -> ExitCode {
    let call = AdminCall {
        name: "check-config --diff",
        method: http::Method::GET,
        path: "/admin/config".to_owned(),
        url,
    };
    let Some(body) = admin_answer(config, &call) else {
        return ExitCode::from(2);
    };
    let running: std::collections::BTreeMap<String, String> = match serde_json::from_slice(&body) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("mjgate check-config --diff: the gateway's answer is not a config: {e}");
            return ExitCode::from(2);
        }
    };
    let changes = mjgate::reload::diff(&running, &mjgate::reload::describe(config));
    let mut out = std::io::stdout().lock();
    if changes.is_empty() {
        let _ = writeln!(out, "no difference from the running config");
        return ExitCode::SUCCESS;
    }
    for change in &changes {
        let _ = writeln!(out, "{change}");
    }
    if changes.iter().any(|change| !change.reloadable) {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// The body of the running gateway's `2xx` answer to `call`; `None` (said on stderr) otherwise.
fn admin_answer(config: &Config, call: &AdminCall) -> Option<Vec<u8>> {
    let (url, status, body) = ask_admin(config, call).ok()?;
    if status.is_success() {
        return Some(body.to_vec());
    }
    eprintln!(
        "mjgate {}: {url} answered {status}: {}",
        call.name,
        String::from_utf8_lossy(&body)
    );
    None
}

/// Calls the running gateway's task admin route with the config's `admin.token`; prints its JSON.
/// Exit 0 on a 2xx, 1 on another answer, 2 when it cannot be asked.
fn tasks_admin(config: &Config, call: &AdminCall) -> ExitCode {
    let Ok((url, status, body)) = ask_admin(config, call) else {
        return ExitCode::from(2);
    };
    println!("{}", String::from_utf8_lossy(&body));
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        eprintln!("mjgate {}: {url} answered {status}", call.name);
        ExitCode::from(1)
    }
}

/// Asks the running gateway `call` with the config's admin token: its URL, status and body, or
/// `Err` (said on stderr) when it cannot be asked at all.
fn ask_admin(
    config: &Config,
    call: &AdminCall,
) -> Result<(String, http::StatusCode, bytes::Bytes), ()> {
    let Some(token) = &config.admin_token else {
        eprintln!(
            "mjgate {}: no admin.token in the config (or MJGATE_ADMIN_TOKEN)",
            call.name
        );
        return Err(());
    };
    let url = match &call.url {
        Some(base) => format!("{}{}", base.trim_end_matches('/'), call.path),
        None => probe_url(config, &call.path).map_err(|e| {
            eprintln!("mjgate {}: {e}", call.name);
        })?,
    };
    let runtime = runtime(call.name).map_err(|_| ())?;
    match runtime.block_on(mjgate::tools::healthcheck::admin_call(
        call.method.clone(),
        &url,
        token,
        std::time::Duration::from_secs(30),
    )) {
        Ok((status, body)) => Ok((url, status, body)),
        Err(e) => {
            let hint = if call.url.is_none() {
                " (the address is the file's admin_listen, else listen: if the running gateway's \
                 differs, name it with --url)"
            } else {
                ""
            };
            eprintln!("mjgate {}: {url}: {e}{hint}", call.name);
            Err(())
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

fn pool_demo(spec: &mjgate::tools::demo::pool::PoolSpec) -> ExitCode {
    use mjgate::tools::demo::pool;
    let runtime = match runtime("demo") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(pool::run(spec, &mut std::io::stderr())) {
        Ok(report) => {
            let _ = pool::print(&report, spec, &mut std::io::stdout().lock());
            if report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
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
        if !task_duration.is_zero() {
            // Tasks submitted to it run as long as the seeded ones.
            sim.set_task_duration(task_duration);
        }
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
    let shared = config
        .shared_cache
        .as_ref()
        .map_or_else(|| "off".to_owned(), |shared| shared.topology.describe());
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
    let idempotency = match &config.idempotency {
        None => "off".to_owned(),
        Some(i) => format!(
            "on (answers kept {}, {}; {} keys a credential, {}; submits wait {})",
            humantime::format_duration(i.ttl),
            if i.require {
                "key required"
            } else {
                "key optional"
            },
            i.max_keys_per_credential,
            bytesize::ByteSize(i.max_memory),
            humantime::format_duration(config.upstream.submit_timeout),
        ),
    };
    let artifacts = match &config.artifacts {
        None => "off".to_owned(),
        Some(a) => {
            let store = match &a.store {
                config::ArtifactStore::Local { dir, max_disk } => format!(
                    "directory {} (at most {})",
                    dir.display(),
                    bytesize::ByteSize(*max_disk)
                ),
                config::ArtifactStore::S3(s3) => format!(
                    "bucket {} at {} ({}{}; keys from {})",
                    s3.bucket,
                    s3.endpoint.as_deref().unwrap_or("AWS"),
                    s3.region,
                    if s3.path_style { ", path-style" } else { "" },
                    if s3.access_key.is_some() {
                        "the config"
                    } else {
                        "the AWS environment"
                    }
                ),
            };
            let families = |mode: mjgate::family::KeepFiles| {
                let names: Vec<&str> = config
                    .families
                    .all()
                    .iter()
                    .filter(|family| family.keep_files() == mode)
                    .map(|family| family.name())
                    .collect();
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            };
            format!(
                "finished tasks' files kept (docs/artifacts.md): {store}; links under {}; files up to {}; private origins {} (the upstream's own origin allowed); kept on open (lazy): {}; not kept: {}",
                a.public_url
                    .as_deref()
                    .unwrap_or("the client's scheme and Host"),
                bytesize::ByteSize(a.max_file),
                if a.allow_private {
                    "allowed"
                } else {
                    "refused"
                },
                families(mjgate::family::KeepFiles::Lazy),
                families(mjgate::family::KeepFiles::Off),
            )
        }
    };
    format!(
        "config ok\n\
         listen          {}\n\
         admin_listen    {}\n\
         task admin      {}\n\
         upstream        {}\n\
         in_progress_ttl {}\n\
         max_memory      {}\n\
         shared cache    {shared}\n\
         families        {families}\n\
         webhooks        {webhooks}\n\
         idempotency     {idempotency}\n\
         artifacts       {artifacts}\n\
         gzip answers    {}\n\
         park idle after {}",
        config.listen,
        config
            .admin_listen
            .map_or_else(|| "(main listener)".to_owned(), |a| a.to_string()),
        if config.admin_token.is_some() {
            "on: /admin/tasks behind admin.token (mjgate inspect, mjgate purge)"
        } else {
            "off (no admin.token)"
        },
        pools_summary(config),
        humantime::format_duration(config.cache.in_progress_ttl),
        bytesize::ByteSize(config.cache.max_memory),
        if config.cache.gzip { "on" } else { "off" },
        config.server.park_idle_after.map_or_else(
            || "never".to_owned(),
            |after| humantime::format_duration(after).to_string()
        ),
    )
}

/// The upstream, or the pool's members one per line (docs/pools.md).
/// The default pool, then each named pool and the families that go to it.
fn pools_summary(config: &config::Config) -> String {
    let mut text = upstream_summary(&config.upstream);
    if !config.upstreams.is_empty() {
        let families: Vec<&str> = config
            .families
            .live()
            .filter(|family| family.upstream().is_none())
            .map(|family| family.name())
            .collect();
        text.push_str(&format!(
            "\n  (the default pool: passthrough, and {})",
            match families.as_slice() {
                [] => "no family".to_owned(),
                names => names.join(", "),
            }
        ));
    }
    for (name, pool) in &config.upstreams {
        let families: Vec<&str> = config
            .families
            .live()
            .filter(|family| family.upstream() == Some(name.as_str()))
            .map(|family| family.name())
            .collect();
        let families = match families.as_slice() {
            [] => "no family goes to it".to_owned(),
            names => format!("for {}", names.join(", ")),
        };
        let summary = upstream_summary(pool).replace('\n', "\n  ");
        text.push_str(&format!("\n  pool {name} ({families}): {summary}"));
    }
    text
}

fn upstream_summary(upstream: &config::UpstreamConfig) -> String {
    let probe = upstream.probe.as_ref().map_or_else(String::new, |probe| {
        format!(
            ", probe GET {} every {} (timeout {})",
            probe.path,
            humantime::format_duration(probe.interval),
            humantime::format_duration(probe.timeout)
        )
    });
    if let [only] = upstream.members.as_slice() {
        return format!("{}{probe}", only.url);
    }
    let policy = match upstream.policy {
        config::Policy::LeastBusy => "least-busy",
        config::Policy::Weighted => "weighted",
        config::Policy::RoundRobin => "round-robin",
    };
    let mut text = format!(
        "{} members, submits spread {policy} (queue_wait {}){probe}",
        upstream.members.len(),
        humantime::format_duration(upstream.queue_wait)
    );
    for member in &upstream.members {
        let limit = match member.max_running {
            0 => "no running limit".to_owned(),
            n => format!("max_running {n}"),
        };
        text.push_str(&format!(
            "\n  member {:<13} {} (weight {}, {limit})",
            member.name, member.url, member.weight
        ));
    }
    text
}

/// Logs go to stderr through a writer thread, so a request never waits on a slow or stopped log
/// consumer (a full pipe, a stalled journald): when the queue is full, lines are dropped and counted
/// in `mjgate_log_lines_dropped_total` instead. The filter and the format sit behind reload handles,
/// so a reload changes them in place.
fn init_logging(
    log: &config::LogConfig,
    export: Option<&mjgate::trace::Export>,
) -> (tracing_appender::non_blocking::WorkerGuard, Logging) {
    use tracing_subscriber::prelude::*;
    const QUEUED_LINES: usize = 16 * 1024;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("mjgate-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    // The access log's own writers (stdout, a file) count theirs beside it.
    mjgate::metrics::count_dropped_log_lines(move || {
        dropped.dropped_lines() as u64 + mjgate::access::dropped_lines()
    });
    // The filter is the log lines' own: spans exported over OTLP are recorded whatever it says.
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter_of(&log.filter));
    let (format, format_handle) =
        tracing_subscriber::reload::Layer::new(format_layer(log.format, &writer, ansi));
    let spans: Option<SpanLayer> = export.map(|export| Box::new(export.layer()) as SpanLayer);
    tracing_subscriber::registry()
        .with(spans)
        .with(format.with_filter(filter))
        .init();
    let logging = Logging {
        writer,
        ansi,
        filter: filter_handle,
        format: format_handle,
    };
    (guard, logging)
}

/// `RUST_LOG` when it is set (it wins over the file, at start and on reload), else `log.filter`.
/// The redis crate's own lines are kept to errors unless the filter names it: its cluster client
/// warns at every reconnection attempt to every node, twice a second through an outage, which the
/// shared tier already says once (and counts).
fn filter_of(configured: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        if configured.contains("redis") {
            EnvFilter::new(configured)
        } else {
            EnvFilter::new(format!("{configured},redis=error"))
        }
    })
}

/// The OTLP span layer, when `[trace]` configures one.
type SpanLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
type Filtered = tracing_subscriber::layer::Layered<Option<SpanLayer>, tracing_subscriber::Registry>;
type FormatLayer = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

fn format_layer(
    format: LogFormat,
    writer: &tracing_appender::non_blocking::NonBlocking,
    ansi: bool,
) -> FormatLayer {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(layer.json().with_current_span(true).with_span_list(false)),
        LogFormat::Pretty => Box::new(layer),
    }
}

/// What a reload re-applies of `[log]`: the filter, the format, the access log's destination.
struct Logging {
    writer: tracing_appender::non_blocking::NonBlocking,
    ansi: bool,
    filter: tracing_subscriber::reload::Handle<EnvFilter, Filtered>,
    format: tracing_subscriber::reload::Handle<FormatLayer, Filtered>,
}

impl Logging {
    fn apply(&self, log: &config::LogConfig) -> Result<(), String> {
        // The access file first: the one step that can fail, before anything has changed.
        mjgate::access::install(&log.access.to, &self.writer)
            .map_err(|e| format!("log.access_to: {e}"))?;
        self.filter
            .reload(filter_of(&log.filter))
            .map_err(|e| format!("log.filter: {e}"))?;
        self.format
            .reload(format_layer(log.format, &self.writer, self.ansi))
            .map_err(|e| format!("log.format: {e}"))
    }
}
