//! The command line: the gateway's flags and the subcommands (the tools), as clap reads them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// A caching, collapsing reverse proxy for Midjourney-style task APIs.
///
/// Without a subcommand, runs the gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (TOML). Defaults to config/mjgate.toml when it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on; beats the file's `listen`.
    #[arg(long, value_name = "ADDR", env = "MJGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Upstream base URL (http or https, may carry a path prefix); beats the file's `[upstream] url`.
    #[arg(long, value_name = "URL", env = "MJGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Redis URL of the cache replicas share; beats `[shared_cache] redis_url`. The fingerprint
    /// secret it needs is read from MJGATE_FINGERPRINT_SECRET (or the file), never from a flag.
    #[arg(
        long,
        value_name = "URL",
        env = "MJGATE_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Directory kept result files live in; beats `[artifacts] dir` (containers mount a volume here).
    #[arg(long, value_name = "DIR", env = "MJGATE_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
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
        /// Seeded tasks finish this long after start, and tasks submitted to the simulator this long
        /// after their submit (60 s when 0s); 0s makes the seeded ones SUCCESS at once.
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
        /// Several members behind the gateway (midjourney-proxy-like, each with --max-running):
        /// clients submit --tasks tasks through it, poll them to the end, upscale each (an action
        /// naming its parent) and read everything back in batches; the table shows where each
        /// submit went and how many tasks each member ran at once.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        members: Option<u16>,
        /// With --members: each member's limit of tasks running at once.
        #[arg(long, default_value_t = 10, value_parser = count)]
        max_running: usize,
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
    /// deploy pipelines and `ExecStartPre=`. With `--diff`, also compare it key by key with what the
    /// running gateway runs (`GET /admin/config`, behind `admin.token`): exit 3 when a key that
    /// needs a restart differs (a reload would be refused).
    CheckConfig {
        /// Compare with the running gateway.
        #[arg(long)]
        diff: bool,
        /// The gateway's URL, instead of the config's admin listener (or listener).
        #[arg(long)]
        url: Option<String>,
    },
    /// Make a running gateway read its config file again (`POST /admin/reload`, what SIGHUP does):
    /// prints what changed, or why nothing did (a key that needs a restart, an invalid file).
    Reload {
        /// The gateway's URL, instead of the config's admin listener (or listener).
        #[arg(long)]
        url: Option<String>,
    },
    /// Keep a local file in the `[artifacts]` store the config names (streamed, content-addressed)
    /// and print its URL path for `--credential` (`/_mjgate/files/{token}`): for operators seeding a
    /// store, and for the file-serving benchmark.
    ArtifactsKeep {
        /// The file to keep.
        file: std::path::PathBuf,
        /// Its media type (`image/png`, `video/mp4`, ...); anything else is kept as an attachment.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
        /// The credential (Authorization value) the token is for.
        #[arg(long, default_value = "")]
        credential: String,
    },
    /// Show what a running gateway holds for one task, on this replica and in Redis (`GET
    /// /admin/tasks/{family}/{id}` on its admin listener, with `admin.token`).
    Inspect {
        /// The task family (`midjourney`, `suno`, ...).
        family: String,
        /// The task id.
        id: String,
        /// The gateway's URL, instead of the config's admin listener (or listener).
        #[arg(long)]
        url: Option<String>,
    },
    /// Purge cached answers from a running gateway, Redis and every replica (`DELETE
    /// /admin/tasks[/{family}[/{id}]]`): one task, a family, or, with neither, everything.
    Purge {
        /// The task family; omit to purge every family.
        family: Option<String>,
        /// The task id; omit to purge the whole family.
        id: Option<String>,
        /// Only the credential whose fingerprint starts with these hex digits (as `inspect` shows).
        #[arg(long)]
        credential: Option<String>,
        /// The gateway's URL, instead of the config's admin listener (or listener).
        #[arg(long)]
        url: Option<String>,
    },
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

#[derive(Debug, Clone)]
pub struct Apis(pub Vec<mjgate::tools::simulator::Api>);

fn parse_apis(text: &str) -> Result<Apis, String> {
    mjgate::tools::simulator::Api::parse_list(text).map(Apis)
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
