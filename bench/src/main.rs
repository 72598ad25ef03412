//! hookflow-bench: a reproducible benchmark of hookflow.
//!
//! Starts a release hookflow on a fresh database (SQLite and/or PostgreSQL), a callback
//! receiver and an `http` step endpoint of its own, and measures accept rate, end-to-end rate
//! and latency (invoke to verified callback), sync latency, the effect of a backlog of waiting
//! runs, and the naive design's ceiling (one durable insert per request) with the same load
//! generator. Prints a table and writes JSON to `bench/results/`.
//!
//! `cargo run --release -p hookflow-bench -- --quick` (default) or `-- --full`.

mod ceiling;
mod load;
mod procs;
mod receiver;
mod report;
mod stalls;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use sqlx::Connection;

use crate::load::{E2e, Measured, Stop, Target};
use crate::procs::ChildGuard;
use crate::receiver::Receiver;
use crate::report::{MeasuredView, Row};
use crate::stalls::Stalls;

/// Reproducible benchmark of hookflow (accept, end to end, sync, backlog, and the naive
/// one-insert-per-request ceiling), on SQLite and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "hookflow-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Short mode (the default): 5 s per figure, a 20k-run backlog; about 1 minute per backend.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Full mode: 20 s per figure, backlogs of 100k and 1M waiting runs; about 20-40 minutes.
    #[arg(long)]
    full: bool,
    /// Backends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<Backend>,
    /// The hookflow binary to run [default: built with `cargo build --release -p hookflow`].
    #[arg(long)]
    hookflow: Option<PathBuf>,
    /// PostgreSQL server URL (any database on it); each run creates and drops its own databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where SQLite databases and server logs go (a fresh folder inside, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the JSON result goes [default: bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Connections of the closed-loop load (accept, ceiling, peak end to end).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runs between invoke and callback at most, in the peak end-to-end figures.
    #[arg(long, default_value_t = 512)]
    inflight: usize,
    /// Measured seconds per timed figure (overrides the mode's).
    #[arg(long)]
    duration: Option<f64>,
    /// Waiting-run backlog levels, comma-separated (overrides the mode's).
    #[arg(long, value_delimiter = ',')]
    backlog: Option<Vec<u64>>,
    /// Keep the data folder (SQLite databases and server logs) and the PostgreSQL databases
    /// instead of removing them.
    #[arg(long)]
    keep_data: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: the ceiling server (one durable insert per request).
    #[command(hide = true)]
    CeilingServer {
        #[arg(long)]
        database: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The parameters of a run (recorded in the JSON).
#[derive(Debug, Clone)]
struct Params {
    mode: &'static str,
    warmup: Duration,
    measure: Duration,
    concurrency: usize,
    inflight: usize,
    sync_concurrency: usize,
    backlog: Vec<u64>,
    drain_timeout: Duration,
    overall_timeout: Duration,
}

impl Params {
    fn from_cli(cli: &Cli) -> Self {
        let full = cli.full;
        let measure = cli
            .duration
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(if full { 20 } else { 5 }));
        Self {
            mode: if full { "full" } else { "quick" },
            warmup: Duration::from_secs(if full { 3 } else { 1 }),
            measure,
            concurrency: cli.concurrency.max(1),
            inflight: cli.inflight.max(1),
            sync_concurrency: 4,
            backlog: cli.backlog.clone().unwrap_or_else(|| {
                if full {
                    vec![100_000, 1_000_000]
                } else {
                    vec![20_000]
                }
            }),
            drain_timeout: Duration::from_secs(60),
            overall_timeout: Duration::from_secs(if full { 4 * 3600 } else { 30 * 60 }),
        }
    }

    fn json(&self) -> Value {
        json!({
            "mode": self.mode,
            "warmup_s": self.warmup.as_secs_f64(),
            "measure_s": self.measure.as_secs_f64(),
            "concurrency": self.concurrency,
            "peak_inflight_runs": self.inflight,
            "sync_concurrency": self.sync_concurrency,
            "backlog_levels": self.backlog,
            "drain_timeout_s": self.drain_timeout.as_secs_f64(),
            "postgres_ceiling_pool": ceiling::PG_POOL,
            "hookflow_flags": ["--listen", "127.0.0.1:0", "--allow-network", "127.0.0.0/8", "--sync-wait-limit", "60s"],
            "percentiles": "nearest rank over every sample in the measured window",
            "open_loop_latency_from": "scheduled send time",
        })
    }
}

/// Everything a backend run shares.
struct Ctx {
    params: Params,
    hookflow: PathBuf,
    data: PathBuf,
    postgres_url: String,
    client: reqwest::Client,
    receiver: Receiver,
    cores: usize,
    phase_ids: AtomicU32,
    /// PostgreSQL databases this run created (dropped at the end, whatever happens).
    pg_databases: Mutex<Vec<String>>,
}

impl Ctx {
    fn next_phase(&self) -> u32 {
        self.phase_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Where a figure goes in the table (the order of the benchmark's description, not of the run).
fn rank(key: &str) -> u8 {
    match key {
        "ceiling" => 0,
        "accept" => 1,
        "accept_ratio_to_ceiling" => 2,
        "e2e_transform_peak" => 3,
        "e2e_three_steps_peak" => 4,
        "e2e_transform_half_peak" => 5,
        "e2e_three_steps_half_peak" => 6,
        "sync_three_steps" => 7,
        "failed" => 10,
        _ => 8,
    }
}

/// What one backend produced so far (kept when a later step fails).
#[derive(Default)]
struct BackendReport {
    rows: Vec<Row>,
    figures: Map<String, Value>,
}

impl BackendReport {
    fn add(
        &mut self,
        backend: Backend,
        key: &str,
        label: &str,
        m: &Measured,
        rss_kib: Option<u64>,
        extra: Value,
    ) {
        let mut note = Vec::new();
        if m.errors > 0 {
            note.push(format!(
                "{} errors (first: {})",
                m.errors,
                m.first_error.as_deref().unwrap_or("?")
            ));
        }
        if m.failed_runs > 0 {
            note.push(format!("{} runs failed", m.failed_runs));
        }
        if m.missing_callbacks > 0 {
            note.push(format!("{} callbacks missing", m.missing_callbacks));
        }
        if let Some(n) = extra.get("note").and_then(Value::as_str) {
            note.push(n.to_string());
        }
        self.rows.push(Row {
            rank: rank(key),
            backend: backend.name().into(),
            figure: label.into(),
            measured: Some(MeasuredView::new(m, backend == Backend::Postgres, rss_kib)),
            note: note.join("; "),
        });
        let mut value = m.json();
        value["label"] = label.into();
        value["server_rss_kib"] = json!(rss_kib);
        if let (Some(obj), Value::Object(extra)) = (value.as_object_mut(), extra) {
            obj.extend(extra);
        }
        self.figures.insert(key.into(), value);
    }

    fn note(&mut self, backend: Backend, key: &str, label: &str, note: String) {
        self.rows.push(Row {
            rank: rank(key),
            backend: backend.name().into(),
            figure: label.into(),
            measured: None,
            note,
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::CeilingServer { database }) = &cli.command {
        return match ceiling::serve(database).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ceiling server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hookflow-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every backend; `Ok(false)` when one failed (its partial figures are still written).
async fn bench(cli: Cli) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has no parent")?
        .to_path_buf();
    let params = Params::from_cli(&cli);
    let hookflow = match &cli.hookflow {
        Some(path) => path.clone(),
        None => procs::build_hookflow(&workspace)?,
    };
    let data_root = cli.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&data_root)?;
    let data = tempfile::Builder::new()
        .prefix("hookflow-bench-")
        .tempdir_in(&data_root)?;
    let cores = report::cores();
    let before = procs::CpuSnapshot::take(None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_before = before.usage(&procs::CpuSnapshot::take(None), cores).machine;
    if busy_before > 30.0 {
        eprintln!(
            "warning: the machine is already {busy_before:.0}% busy (percent of one core) before \
             the benchmark starts; other work lowers every figure (see the 'other' column)"
        );
    }
    let started = SystemTime::now();
    let mut doc = json!({
        "schema": 1,
        "started_at": humantime::format_rfc3339_seconds(started).to_string(),
        "machine": report::machine(),
        "git": report::git(&workspace),
        "versions": {
            "hookflow": report::hookflow_version(&hookflow),
            "hookflow_bench": env!("CARGO_PKG_VERSION"),
            "rustc": report::rustc_version(),
            "sqlite": sqlite_version().await.ok(),
        },
        "parameters": params.json(),
        "backends": {},
    });
    doc["machine"]["busy_before_start_pct"] = json!((busy_before * 10.0).round() / 10.0);
    let ctx = Arc::new(Ctx {
        params: params.clone(),
        hookflow,
        data: data.path().to_path_buf(),
        postgres_url: cli.postgres_url.clone(),
        client: load::client(params.concurrency * 4)?,
        receiver: Receiver::start().await?,
        cores,
        phase_ids: AtomicU32::new(1),
        pg_databases: Mutex::new(Vec::new()),
    });
    eprintln!(
        "hookflow-bench {} mode: backends {:?}, {} s per figure, backlog {:?}",
        params.mode,
        cli.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        params.measure.as_secs_f64(),
        params.backlog
    );
    let deadline = Instant::now() + params.overall_timeout;
    let mut rows = Vec::new();
    let mut all_ok = true;
    let mut interrupted = false;
    for &backend in &cli.backends {
        if interrupted {
            break;
        }
        let partial = Arc::new(Mutex::new(BackendReport::default()));
        let task = tokio::spawn(run_backend(ctx.clone(), backend, partial.clone()));
        let abort = task.abort_handle();
        let outcome: Result<(), String> = tokio::select! {
            joined = task => match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(format!("the benchmark task failed: {e}")),
            },
            _ = interrupt() => {
                abort.abort();
                interrupted = true;
                Err("interrupted".to_string())
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                abort.abort();
                interrupted = true;
                Err(format!("overall time limit of {:?} reached", params.overall_timeout))
            }
        };
        // Let an aborted task drop its children (SIGKILL on drop) before databases go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut partial = std::mem::take(&mut *partial.lock().unwrap());
        let mut figures = Value::Object(std::mem::take(&mut partial.figures));
        if backend == Backend::Postgres {
            figures["postgres_version"] = json!(postgres_version(&ctx.postgres_url).await.ok());
            figures["postgres_settings"] = json!(postgres_settings(&ctx.postgres_url).await.ok());
        }
        if let Err(e) = &outcome {
            all_ok = false;
            eprintln!("{}: FAILED: {e}", backend.name());
            partial.note(backend, "failed", "FAILED", e.clone());
        }
        figures["error"] = json!(outcome.err());
        doc["backends"][backend.name()] = figures;
        partial.rows.sort_by_key(|r| r.rank);
        rows.extend(partial.rows);
    }
    if cli.keep_data {
        let kept = ctx.pg_databases.lock().unwrap();
        if !kept.is_empty() {
            println!("PostgreSQL databases kept: {}", kept.join(", "));
        }
    } else {
        drop_pg_databases(&ctx).await;
    }
    let (stray, bad_signature, work_calls) = ctx.receiver.counters();
    doc["receiver"] = json!({
        "callbacks_with_bad_signature": bad_signature,
        "stray_callbacks": stray,
        "http_step_calls": work_calls,
    });
    doc["finished_at"] = json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());

    let table = report::table(&rows);
    println!(
        "\nhookflow-bench {} mode · {} · {} cores · commit {}{}\n",
        params.mode,
        doc["machine"]["cpu_model"].as_str().unwrap_or("?"),
        ctx.cores,
        doc["git"]["commit"]
            .as_str()
            .map(|c| &c[..c.len().min(10)])
            .unwrap_or("?"),
        if doc["git"]["dirty"] == true {
            " (dirty work tree)"
        } else {
            ""
        },
    );
    println!("{table}");
    println!(
        "CPU columns: percent of one core over the measured window (200% = both cores); \
         'other' = the rest of the machine."
    );
    if bad_signature > 0 {
        println!("WARNING: {bad_signature} callbacks failed signature verification");
    }
    doc["table"] = json!(table.lines().collect::<Vec<_>>());

    let out_dir = cli
        .out
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out_dir)?;
    let stamp = humantime::format_rfc3339_seconds(started)
        .to_string()
        .replace(':', "");
    let path = out_dir.join(format!("{stamp}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("results: {}", path.display());
    if cli.keep_data {
        let kept = data.keep();
        println!("data kept in {}", kept.display());
    }
    Ok(all_ok)
}

/// SIGINT or SIGTERM: stop measuring, kill the servers, drop the databases, write what we have.
async fn interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn sqlite_version() -> anyhow::Result<String> {
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await?;
    let (v,): (String,) = sqlx::query_as("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await?;
    Ok(v)
}

async fn postgres_version(url: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let (v,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut conn)
        .await?;
    Ok(v)
}

/// The server settings that move the figures most (autovacuum's runs take CPU beside
/// hookflow's own vacuums; `fsync` and `synchronous_commit` set the cost of a commit).
async fn postgres_settings(url: &str) -> anyhow::Result<Value> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', \
         'autovacuum_naptime', 'fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size') \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    let settings = rows.into_iter().map(|(name, v)| (name, Value::String(v)));
    Ok(Value::Object(settings.collect()))
}

/// The URL of database `name` on the server of `url`.
fn pg_url_for(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").context("postgres URL without ://")? + 3;
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(format!("{host_part}/{name}{query}"))
}

/// Waits until no `VACUUM` or `ANALYZE` has run in the database for longer than hookflow's
/// vacuum interval (5 s), at most two minutes; answers how long it waited.
async fn settle_vacuums(url: &str) -> anyhow::Result<Duration> {
    const QUIET: Duration = Duration::from_secs(6);
    const MAX_WAIT: Duration = Duration::from_secs(120);
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let started = Instant::now();
    let mut quiet_since = started;
    while quiet_since.elapsed() < QUIET && started.elapsed() < MAX_WAIT {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'active' AND query ~* '^\\s*(VACUUM|ANALYZE)'",
        )
        .fetch_one(&mut conn)
        .await?;
        if busy > 0 {
            quiet_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close().await?;
    Ok(started.elapsed())
}

async fn create_pg_database(ctx: &Ctx, prefix: &str) -> anyhow::Result<String> {
    // Only [a-z0-9_]: safe to splice into CREATE/DROP DATABASE.
    let name = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = sqlx::PgConnection::connect(&ctx.postgres_url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    ctx.pg_databases.lock().unwrap().push(name.clone());
    procs::track_postgres_database(&name);
    pg_url_for(&ctx.postgres_url, &name)
}

async fn drop_pg_databases(ctx: &Ctx) {
    let names = std::mem::take(&mut *ctx.pg_databases.lock().unwrap());
    if names.is_empty() {
        return;
    }
    match sqlx::PgConnection::connect(&ctx.postgres_url).await {
        Ok(mut conn) => {
            for name in names {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                {
                    eprintln!("could not drop database {name}: {e}");
                }
            }
        }
        Err(e) => eprintln!("could not drop databases {names:?}: {e}"),
    }
}

fn check_202(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::ACCEPTED {
        Ok(())
    } else {
        Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

fn check_sync_completed(status: StatusCode, body: &[u8]) -> Result<(), String> {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status == StatusCode::OK && answer["run_status"] == "completed" {
        Ok(())
    } else {
        Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

/// A running hookflow.
struct Server {
    child: ChildGuard,
    base: String,
    key: String,
}

async fn start_hookflow(ctx: &Ctx, database: &str, log: &Path) -> anyhow::Result<Server> {
    let mut cmd = std::process::Command::new(&ctx.hookflow);
    cmd.args([
        "serve",
        "--database",
        database,
        "--listen",
        "127.0.0.1:0",
        "--allow-network",
        "127.0.0.0/8",
        "--sync-wait-limit",
        "60s",
    ]);
    // The server's own defaults, whatever this shell has set.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("HOOKFLOW_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    let mut child = ChildGuard::spawn("hookflow", cmd, log)?;
    let stdout = child.take_stdout().context("no stdout")?;
    let (mut key, mut base) = (None, None);
    let started = procs::read_startup(stdout, Duration::from_secs(120), |line| {
        if let Some(k) = line.strip_prefix("API key for workspace default: ") {
            key = Some(k.trim().to_string());
        }
        if let Some(b) = line.strip_prefix("hookflow listening on ") {
            base = Some(b.trim().to_string());
        }
        base.is_some()
    })
    .await;
    if let Err(e) = started {
        let tail = log_tail(log);
        bail!("{e:#}; server log ends with:\n{tail}");
    }
    Ok(Server {
        child,
        base: base.context("no listening line")?,
        key: key.context("hookflow printed no API key (database not fresh?)")?,
    })
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A management call that must succeed.
async fn api(ctx: &Ctx, server: &Server, path: &str, body: &Value) -> anyhow::Result<Value> {
    let resp = ctx
        .client
        .post(format!("{}{path}", server.base))
        .bearer_auth(&server.key)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("POST {path} answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The workflows measured (JSON definitions, as sent).
fn workflows(work_url: &str) -> [Value; 3] {
    [
        json!({
            "name": "bench_transform",
            "steps": [{"id": "a", "kind": "transform", "value": {"x": "{{ inputs.n }}"}}],
            "output": "{{ steps.a.output }}"
        }),
        json!({
            "name": "bench_three_steps",
            "steps": [
                {"id": "a", "kind": "transform", "value": {"x": "{{ inputs.n }}"}},
                {"id": "b", "kind": "http", "needs": ["a"], "request": {
                    "method": "POST", "url": work_url, "body": {"x": "{{ steps.a.output.x }}"}}},
                {"id": "c", "kind": "transform", "needs": ["b"], "value": "{{ steps.b.output }}"}
            ],
            "output": "{{ steps.c.output }}"
        }),
        json!({
            "name": "bench_delay",
            "steps": [{"id": "d", "kind": "delay", "duration": "24h"}],
            "output": "{{ inputs }}"
        }),
    ]
}

fn invoke_async(deployment: &str, callback_url: &str) -> Value {
    json!({
        "deployment": deployment,
        "inputs": {"n": 42},
        "async": {"enabled": true, "callback_url": callback_url}
    })
}

async fn run_backend(
    ctx: Arc<Ctx>,
    backend: Backend,
    report: Arc<Mutex<BackendReport>>,
) -> anyhow::Result<()> {
    let p = &ctx.params;
    let name = backend.name();
    let dir = ctx.data.join(name);
    std::fs::create_dir_all(&dir)?;
    let (hookflow_db, ceiling_db) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.join("hookflow.db").display()),
            format!("sqlite://{}", dir.join("ceiling.db").display()),
        ),
        Backend::Postgres => (
            create_pg_database(&ctx, "bench_hookflow").await?,
            create_pg_database(&ctx, "bench_ceiling").await?,
        ),
    };
    let timed = Stop::Time {
        warmup: p.warmup,
        measure: p.measure,
    };
    // SQLite's slow commits and WAL flushes since the row before; set once the server runs.
    let stalls_seen: tokio::sync::Mutex<Option<Stalls>> = Default::default();
    let server_at: std::sync::OnceLock<(String, String)> = Default::default();
    let add = async |key: &str, label: &str, m: &Measured, rss: Option<u64>, mut extra: Value| {
        if let Some((base, api_key)) = server_at.get() {
            let now = Stalls::scrape(&ctx.client, base, api_key).await;
            let mut seen = stalls_seen.lock().await;
            // The ceiling row is another server's: hookflow's writes meanwhile are not its.
            if let (Some(now), Some(before), false) = (&now, &*seen, key == "ceiling") {
                let between = now.since(before);
                if let Some(note) = between.note() {
                    extra["note"] = note.into();
                }
                extra["sqlite_writer"] = between.json();
            }
            *seen = now;
        }
        eprintln!(
            "{name}: {label}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, CPU server {:.0}% (busiest thread {}), loadgen {:.0}%, other {:.0}%{}",
            m.rate,
            m.latency.p50,
            m.latency.p99,
            m.cpu.server,
            m.cpu
                .server_threads
                .iter()
                .max_by(|a, b| a.busiest_pct.total_cmp(&b.busiest_pct))
                .map(|g| format!("{} {:.0}%", g.name, g.busiest_pct))
                .unwrap_or_else(|| "-".into()),
            m.cpu.bench,
            m.cpu.other,
            if m.errors > 0 {
                format!(
                    ", {} errors: {}",
                    m.errors,
                    m.first_error.as_deref().unwrap_or("")
                )
            } else {
                String::new()
            }
        );
        report
            .lock()
            .unwrap()
            .add(backend, key, label, m, rss, extra);
    };

    // 1. hookflow on a fresh database.
    eprintln!("{name}: starting hookflow…");
    let mut server = start_hookflow(&ctx, &hookflow_db, &dir.join("hookflow.log")).await?;
    let pid = server.child.pid();
    *stalls_seen.lock().await = Stalls::scrape(&ctx.client, &server.base, &server.key).await;
    let _ = server_at.set((server.base.clone(), server.key.clone()));
    let defs = workflows(&ctx.receiver.work_url());
    for (def, deployment) in
        defs.iter()
            .zip(["bench-transform", "bench-three-steps", "bench-delay"])
    {
        api(&ctx, &server, "/v1/workflows", def).await?;
        let dep = api(
            &ctx,
            &server,
            "/v1/deployments",
            &json!({"name": deployment, "workflow": def["name"]}),
        )
        .await?;
        let secret = dep["secret"]
            .as_str()
            .context("deployment without secret")?;
        ctx.receiver.add_secret(secret.to_string());
    }
    let sync_target = Target::new(
        format!("{}/v1/workflow/invoke", server.base),
        Some(&server.key),
        &json!({"deployment": "bench-three-steps", "inputs": {"n": 42}}),
    );
    // Smoke test: the 3-step workflow answers what we expect.
    let smoke = api(
        &ctx,
        &server,
        "/v1/workflow/invoke",
        &json!({"deployment": "bench-three-steps", "inputs": {"n": 42}}),
    )
    .await?;
    if smoke["run_status"] != "completed" {
        bail!("the 3-step workflow did not complete: {smoke}");
    }
    report.lock().unwrap().figures.insert(
        "workflows".into(),
        json!({"definitions": defs, "sync_sample_answer": smoke}),
    );
    let e2e = E2e {
        client: &ctx.client,
        receiver: &ctx.receiver,
        server_pid: pid,
        cores: ctx.cores,
        drain_timeout: p.drain_timeout,
    };
    let invoke_url = format!("{}/v1/workflow/invoke", server.base);
    let async_target = |deployment: &str, phase: u32| {
        Target::new(
            invoke_url.clone(),
            Some(&server.key),
            &invoke_async(deployment, &ctx.receiver.callback_url(phase)),
        )
    };

    // 2. Sync latency of the 3-step workflow at low load.
    eprintln!("{name}: sync…");
    let m = load::http_load(
        &ctx.client,
        &sync_target,
        p.sync_concurrency,
        timed,
        Some(pid),
        ctx.cores,
        check_sync_completed,
    )
    .await;
    add(
        "sync_three_steps",
        &format!("sync 3-step, {} conn", p.sync_concurrency),
        &m,
        procs::rss_kib(pid),
        json!({"concurrency": p.sync_concurrency}),
    )
    .await;
    server.child.check_alive()?;

    // 3-4. Peak end to end, then half the peak in an open loop.
    let mut peaks = Vec::new();
    for (key, deployment, label) in [
        ("e2e_transform_peak", "bench-transform", "1-step"),
        ("e2e_three_steps_peak", "bench-three-steps", "3-step"),
    ] {
        eprintln!("{name}: end to end, {label}, peak…");
        let phase = ctx.next_phase();
        let m = e2e
            .closed(
                phase,
                &async_target(deployment, phase),
                p.concurrency,
                p.inflight,
                p.warmup,
                p.measure,
            )
            .await;
        add(
            key,
            &format!("e2e {label} peak, ≤{} in flight", p.inflight),
            &m,
            procs::rss_kib(pid),
            json!({"concurrency": p.concurrency, "inflight": p.inflight, "waiting_runs": 0}),
        )
        .await;
        server.child.check_alive()?;
        peaks.push((key, deployment, label, m.rate));
    }
    for (key, deployment, label, peak) in peaks.clone() {
        let rate = (peak / 2.0).floor();
        if rate < 1.0 {
            report.lock().unwrap().note(
                backend,
                &key.replace("_peak", "_half_peak"),
                label,
                "no peak rate measured: half-rate figure skipped".into(),
            );
            continue;
        }
        eprintln!("{name}: end to end, {label}, open loop at {rate}/s…");
        let phase = ctx.next_phase();
        let m = e2e
            .open(
                phase,
                &async_target(deployment, phase),
                rate,
                p.warmup,
                p.measure,
            )
            .await;
        add(
            &key.replace("_peak", "_half_peak"),
            &format!("e2e {label} open loop, ½ peak: {rate:.0}/s"),
            &m,
            procs::rss_kib(pid),
            json!({"offered_rate_per_s": rate, "peak_rate_per_s": peak}),
        )
        .await;
        server.child.check_alive()?;
    }

    // 5. The ceiling, right before accept so that both meet the same machine: one durable
    //    insert per request, same load generator, same body. (hookflow idles meanwhile, once
    //    its PostgreSQL vacuums of what the figures above left behind are over.)
    if backend == Backend::Postgres {
        let waited = settle_vacuums(&hookflow_db).await?;
        eprintln!(
            "{name}: waited {:.1} s for hookflow's vacuums to end",
            waited.as_secs_f64()
        );
    }
    eprintln!("{name}: ceiling server…");
    let (m, rss) = measure_ceiling(&ctx, backend, &dir, &ceiling_db, timed).await?;
    let design = match backend {
        Backend::Sqlite => "WAL, synchronous=FULL, one writer connection, autocommit insert",
        Backend::Postgres => "pool of 16, autocommit insert (synchronous_commit as configured)",
    };
    add(
        "ceiling",
        &format!("ceiling: 1 insert/request, {} conn", p.concurrency),
        &m,
        rss,
        json!({ "concurrency": p.concurrency, "design": design }),
    )
    .await;
    let ceiling_rate = m.rate;
    server.child.check_alive()?;

    // 6. Accept (runs that park on a 24 h delay, so the engine has nothing else to do), which
    //    also builds the backlog; then the 3-step peak again at each backlog level.
    let delay_target = Target::new(
        invoke_url.clone(),
        Some(&server.key),
        &invoke_async("bench-delay", &ctx.receiver.callback_url(0)),
    );
    let mut waiting = 0u64;
    let mut backlog = vec![json!({
        "waiting_runs": 0,
        "e2e_three_steps_rate_per_s": peaks[1].3,
        "server_rss_kib": report.lock().unwrap().figures["e2e_three_steps_peak"]["server_rss_kib"],
    })];
    let mut accept_rate = None;
    for &level in &p.backlog {
        if level <= waiting {
            continue;
        }
        let first = waiting == 0;
        eprintln!(
            "{name}: accept, invoking {} runs that wait 24 h…",
            level - waiting
        );
        let m = load::http_load(
            &ctx.client,
            &delay_target,
            p.concurrency,
            Stop::Count(level - waiting),
            Some(pid),
            ctx.cores,
            check_202,
        )
        .await;
        let before = waiting;
        waiting += m.ok;
        let (key, label) = if first {
            accept_rate = Some(m.rate);
            (
                "accept".to_string(),
                format!("accept: async invoke, {} conn", p.concurrency),
            )
        } else {
            (
                format!("accept_backlog_{before}_to_{waiting}"),
                format!(
                    "accept while backlog {} → {}",
                    short(before),
                    short(waiting)
                ),
            )
        };
        add(
            &key,
            &label,
            &m,
            procs::rss_kib(pid),
            json!({"concurrency": p.concurrency, "requests": level - before, "waiting_before": before, "waiting_after": waiting}),
        )
        .await;
        if first {
            let ratio = m.rate / ceiling_rate.max(1e-9);
            let mut r = report.lock().unwrap();
            r.figures.insert(
                "accept_ratio_to_ceiling".into(),
                json!((ratio * 1000.0).round() / 1000.0),
            );
            r.note(
                backend,
                "accept_ratio_to_ceiling",
                "  accept / ceiling",
                format!("{ratio:.2}× ({:.0} / {:.0} per s)", m.rate, ceiling_rate),
            );
        }
        server.child.check_alive()?;
        tokio::time::sleep(Duration::from_secs(1)).await;

        eprintln!(
            "{name}: end to end, 3-step, peak, {} waiting…",
            short(waiting)
        );
        let phase = ctx.next_phase();
        let m = e2e
            .closed(
                phase,
                &async_target("bench-three-steps", phase),
                p.concurrency,
                p.inflight,
                p.warmup,
                p.measure,
            )
            .await;
        let rss = procs::rss_kib(pid);
        add(
            &format!("e2e_three_steps_peak_backlog_{waiting}"),
            &format!("e2e 3-step peak, {} runs waiting", short(waiting)),
            &m,
            rss,
            json!({"waiting_runs": waiting, "inflight": p.inflight}),
        )
        .await;
        backlog.push(json!({
            "waiting_runs": waiting,
            "e2e_three_steps_rate_per_s": (m.rate * 10.0).round() / 10.0,
            "e2e_three_steps_p99_ms": m.latency.p99,
            "server_rss_kib": rss,
        }));
        server.child.check_alive()?;
    }
    {
        let mut r = report.lock().unwrap();
        r.figures.insert("backlog".into(), json!(backlog));
        r.figures
            .insert("server_rss_peak_kib".into(), json!(procs::rss_hwm_kib(pid)));
        if accept_rate.is_none() {
            r.note(
                backend,
                "accept",
                "accept",
                "no backlog level: accept not measured".into(),
            );
        }
    }
    server.child.stop().await;
    Ok(())
}

/// Runs the ceiling server on `database` and loads it like hookflow's accept figure.
async fn measure_ceiling(
    ctx: &Ctx,
    backend: Backend,
    dir: &Path,
    database: &str,
    stop: Stop,
) -> anyhow::Result<(Measured, Option<u64>)> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["ceiling-server", "--database", database]);
    let log = dir.join("ceiling.log");
    let mut child = ChildGuard::spawn("ceiling server", cmd, &log)?;
    let stdout = child.take_stdout().context("no stdout")?;
    let mut base = None;
    if let Err(e) = procs::read_startup(stdout, Duration::from_secs(60), |line| {
        base = line
            .strip_prefix("ceiling listening on ")
            .map(|b| b.trim().to_string());
        base.is_some()
    })
    .await
    {
        bail!(
            "{} ceiling server: {e:#}\n{}",
            backend.name(),
            log_tail(&log)
        );
    }
    let body = invoke_async("bench-delay", &ctx.receiver.callback_url(0));
    let target = Target::new(
        format!("{}/v1/insert", base.context("no address")?),
        None,
        &body,
    );
    let m = load::http_load(
        &ctx.client,
        &target,
        ctx.params.concurrency,
        stop,
        Some(child.pid()),
        ctx.cores,
        check_202,
    )
    .await;
    child.check_alive()?;
    let rss = procs::rss_kib(child.pid());
    child.stop().await;
    Ok((m, rss))
}

/// 20000 → "20k", 1000000 → "1M".
fn short(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
