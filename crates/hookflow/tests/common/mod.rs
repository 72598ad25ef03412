//! Black-box harness: the real `hookflow` binary over real HTTP, on a real database, with real
//! in-test HTTP peers (a callback receiver and a step service).
//!
//! Every test starts its own [`Server`] on its own fresh database, so tests run in parallel. The
//! backend is chosen by `HOOKFLOW_TEST_BACKEND`: `sqlite` (default, a temporary file) or `postgres`
//! (a fresh `hf_<random>` database created through `HOOKFLOW_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, and dropped afterwards).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hookflow");
/// Upper bound for anything we wait on (liveness, not speed: a passing run takes a fraction).
pub const WAIT: Duration = Duration::from_secs(30);
/// How long the server gets to print its listening line.
const STARTUP: Duration = Duration::from_secs(30);
/// The line the server prints on first start with an empty database.
const KEY_LINE: &str = "API key for workspace default: ";
/// The line the server prints once it accepts connections.
const LISTEN_LINE: &str = "hookflow listening on ";
/// How long a [`Reply::Hang`] sleeps: well past the test servers' `--callback-timeout 1s`.
const HANG: Duration = Duration::from_secs(5);
/// The status values after which a run never changes again.
pub const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

// ---------------------------------------------------------------------------------------------
// Server

/// Flags of `hookflow serve` (besides `--database`), in order. Defaults keep every test fast.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    flags: Vec<(String, String)>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        let flags = [
            ("--listen", "127.0.0.1:0"),
            ("--allow-network", "127.0.0.0/8"),
            ("--retry-schedule", "200ms,200ms,200ms"),
            ("--callback-timeout", "1s"),
            ("--retry-throttle-floor", "1s"),
            ("--sync-wait-limit", "5s"),
        ];
        ServerOpts {
            flags: flags
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl ServerOpts {
    /// Replaces every occurrence of `flag` by this one value (or adds it).
    pub fn set(self, flag: &str, value: &str) -> Self {
        self.without(flag).arg(flag, value)
    }

    /// Drops a default flag, e.g. `--allow-network` to test the refusal of local addresses.
    pub fn without(mut self, flag: &str) -> Self {
        self.flags.retain(|(f, _)| f != flag);
        self
    }

    /// Appends one more `flag value` pair (repeatable flags).
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.flags.push((flag.to_string(), value.to_string()));
        self
    }

    fn args(&self, db_url: &str) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            "--database".to_string(),
            db_url.to_string(),
        ];
        for (flag, value) in &self.flags {
            args.push(flag.clone());
            args.push(value.clone());
        }
        args
    }
}

/// A running `hookflow serve` on its own fresh database; killed on drop.
pub struct Server {
    dir: tempfile::TempDir,
    db: Arc<TestDb>,
    pub db_url: String,
    opts: ServerOpts,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the current process.
    pub base_url: String,
    /// An API key of workspace `default` (stays valid across restarts).
    pub key: String,
    /// The key the *latest* start printed on stdout, if it printed one.
    pub printed_key: Option<String>,
    /// Every stdout line of every start, in order (stderr goes to `log` only).
    pub stdout: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub async fn start_default() -> Server {
        Server::start(ServerOpts::default()).await
    }

    /// Starts on a fresh database of the backend chosen by `HOOKFLOW_TEST_BACKEND`.
    pub async fn start(opts: ServerOpts) -> Server {
        Server::start_on(Arc::new(TestDb::fresh().await), opts).await
    }

    /// Starts on a database prepared beforehand (e.g. by `hookflow keys create`), possibly shared
    /// with other servers (several nodes on one PostgreSQL database).
    pub async fn start_on(db: Arc<TestDb>, opts: ServerOpts) -> Server {
        let mut server = Server {
            dir: tempfile::tempdir().expect("temp dir"),
            db_url: db.url.clone(),
            db,
            opts,
            child: None,
            base_url: String::new(),
            key: String::new(),
            printed_key: None,
            stdout: Arc::default(),
            log: Arc::default(),
        };
        server.spawn().await;
        server.key = match &server.printed_key {
            Some(key) => key.clone(),
            None => create_key(&server.db_url, None).await,
        };
        server
    }

    /// The database this server runs on.
    pub fn db(&self) -> Arc<TestDb> {
        self.db.clone()
    }

    /// A temporary directory of this server, for scratch files (SQLite keeps its database elsewhere).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let mut child = command()
            .args(self.opts.args(&self.db_url))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        drain(
            child.stdout.take().unwrap(),
            "out",
            self.log.clone(),
            Some(tx),
        );
        drain(child.stderr.take().unwrap(), "err", self.log.clone(), None);
        self.child = Some(child);
        self.printed_key = None;

        let deadline = Instant::now() + STARTUP;
        loop {
            let line = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = self.child.as_mut().unwrap().wait().await;
                    panic!(
                        "hookflow exited before listening ({status:?}); output:\n{}",
                        self.log_text()
                    )
                }
                Err(_) => panic!(
                    "hookflow did not print `{LISTEN_LINE}…` within {STARTUP:?}; output:\n{}",
                    self.log_text()
                ),
            };
            self.stdout.lock().unwrap().push(line.clone());
            if let Some(key) = line.trim().strip_prefix(KEY_LINE) {
                self.printed_key = Some(key.trim().to_string());
            }
            if let Some(url) = line.trim().strip_prefix(LISTEN_LINE) {
                self.base_url = url.trim().trim_end_matches('/').to_string();
                break;
            }
        }
        // Keep recording later stdout lines too.
        let stdout = self.stdout.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                stdout.lock().unwrap().push(line);
            }
        });
    }

    /// SIGKILL, no chance to clean up.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill hookflow");
        }
    }

    /// Starts again on the same database with the same flags (a new port is fine).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// A client for the current process (take a new one after [`Server::restart`]).
    pub fn api(&self) -> Api {
        Api::new(&self.base_url, Some(&self.key))
    }

    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(300);
        log[skip..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- hookflow output ({}) ----\n{}\n---- end ----",
                self.db_url,
                self.log_text()
            );
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

/// The database backend of the black-box suite, from `HOOKFLOW_TEST_BACKEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `HOOKFLOW_TEST_BACKEND`: `sqlite` (default) or `postgres`; anything else is a test failure.
pub fn backend() -> Backend {
    match std::env::var("HOOKFLOW_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") | Ok("postgresql") => Backend::Postgres,
        Ok(other) => panic!("HOOKFLOW_TEST_BACKEND={other:?}: use `sqlite` or `postgres`"),
    }
}

/// Admin connection URL of the PostgreSQL server the suite creates its databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("HOOKFLOW_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh database for one test (or one group of nodes): a temporary SQLite file, or a new
/// PostgreSQL database `hf_<random>` that is dropped (best effort) when this value is dropped.
pub struct TestDb {
    /// The `--database` URL.
    pub url: String,
    /// Holds the SQLite file.
    _dir: Option<tempfile::TempDir>,
    /// `(admin URL, database name)` of a PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database of the backend chosen by `HOOKFLOW_TEST_BACKEND`.
    pub async fn fresh() -> TestDb {
        match backend() {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hookflow.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// Creates `hf_<random>` through the admin connection; panics (fails the test) with a clear
    /// message when PostgreSQL cannot be reached: this suite never skips silently.
    pub async fn postgres() -> TestDb {
        use sqlx::Connection as _;
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin} ({e}). The PostgreSQL tests need a running \
                 server: start one, or point HOOKFLOW_TEST_POSTGRES_URL at one."
            )
        });
        let name = format!("hf_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin} failed: {e}"));
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin)
            .unwrap_or_else(|e| panic!("HOOKFLOW_TEST_POSTGRES_URL {admin:?} is not a URL: {e}"));
        url.set_path(&format!("/{name}"));
        TestDb {
            url: url.to_string(),
            _dir: None,
            postgres: Some((admin, name)),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the tests' runtime, which cannot block: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("DROP DATABASE {name}: {e}"))?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop a test database: {e}");
        }
    }
}

fn drain<R: AsyncRead + Unpin + Send + 'static>(
    stream: R,
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::UnboundedSender<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(format!("[{tag}] {line}"));
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}

/// `hookflow` without any `HOOKFLOW_*` variable of the environment: the flags decide.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HOOKFLOW_") {
            command.env_remove(name);
        }
    }
    command
}

/// Output of one CLI run.
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `hookflow ARGS…` to completion.
pub async fn cli(args: &[&str]) -> CliOutput {
    let out = tokio::time::timeout(WAIT, command().args(args).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("hookflow {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("cannot run hookflow {args:?}: {e}"));
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `hookflow keys create --database URL [--workspace NAME]`: returns the printed key.
pub async fn create_key(db_url: &str, workspace: Option<&str>) -> String {
    let mut args = vec!["keys", "create", "--database", db_url];
    if let Some(ws) = workspace {
        args.extend(["--workspace", ws]);
    }
    let out = cli(&args).await;
    assert_eq!(
        out.code,
        Some(0),
        "hookflow keys create failed: {}{}",
        out.stdout,
        out.stderr
    );
    let key = out.stdout.trim().to_string();
    assert!(
        key.starts_with("hf_") && !key.contains(char::is_whitespace),
        "keys create must print the key alone, got {:?}",
        out.stdout
    );
    key
}

// ---------------------------------------------------------------------------------------------
// API client

static CRYPTO: Once = Once::new();

/// An HTTP client bound to one server and (optionally) one API key. Answers are `(status, json)`;
/// a body that is empty is `Null`, a body that is not JSON is a JSON string of the raw text.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: Option<String>,
    http: reqwest::Client,
}

/// A deployment created by [`Api::deploy`].
#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: String,
    pub name: String,
    pub secret: String,
    pub body: Value,
}

impl Api {
    pub fn new(base: &str, key: Option<&str>) -> Api {
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WAIT)
            .build()
            .expect("http client");
        Api {
            base: base.to_string(),
            key: key.map(str::to_string),
            http,
        }
    }

    pub fn with_key(&self, key: Option<&str>) -> Api {
        Api {
            key: key.map(str::to_string),
            ..self.clone()
        }
    }

    async fn try_raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((status, parse_body(&bytes)))
    }

    /// Like [`Api::send`], but a failed connection is an `Err` instead of a panic (for clients
    /// of a server that may be down).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), reqwest::Error> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let ct = body.map(|_| "application/json");
        self.try_raw(method, path, ct, bytes, headers).await
    }

    /// Sends a raw body with a content type and extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        self.try_raw(method, path, content_type, body, headers)
            .await
            .unwrap_or_else(|e| panic!("request to {path} failed: {e}"))
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        self.try_send(method, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("request to {path} failed: {e}"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PUT", path, Some(body), &[]).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PATCH", path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send("DELETE", path, None, &[]).await
    }

    pub async fn create_workflow(&self, definition: &Value) -> (u16, Value) {
        self.post("/v1/workflows", definition).await
    }

    pub async fn create_deployment(&self, body: &Value) -> (u16, Value) {
        self.post("/v1/deployments", body).await
    }

    pub async fn invoke(&self, body: &Value) -> (u16, Value) {
        self.post("/v1/workflow/invoke", body).await
    }

    /// Rotates the deployment's signing secret with `grace_period`; asserts it succeeds and
    /// returns the answer (`secret`, `previous_secret_expires_at`).
    pub async fn rotate_secret(&self, deployment_id: &str, grace_period: &str) -> Value {
        let (status, rotated) = self
            .post(
                &format!("/v1/deployments/{deployment_id}/secret/rotate"),
                &json!({ "grace_period": grace_period }),
            )
            .await;
        assert_eq!(status, 200, "{rotated}");
        rotated
    }

    /// Saves `definition` and deploys it under the workflow's own name; asserts both succeed.
    pub async fn deploy(&self, definition: &Value) -> Deployment {
        let name = definition["name"].as_str().expect("definition has a name");
        self.deploy_with(definition, json!({ "name": name })).await
    }

    /// Saves `definition` and creates the deployment `deployment` (its `workflow` is filled in).
    pub async fn deploy_with(&self, definition: &Value, mut deployment: Value) -> Deployment {
        let (status, body) = self.create_workflow(definition).await;
        assert_eq!(status, 201, "create workflow: {body}");
        deployment["workflow"] = definition["name"].clone();
        let (status, body) = self.create_deployment(&deployment).await;
        assert_eq!(status, 201, "create deployment: {body}");
        Deployment {
            id: str_of(&body["id"]),
            name: str_of(&body["name"]),
            secret: str_of(&body["secret"]),
            body,
        }
    }

    /// Sync invoke that must answer 200; returns the body.
    pub async fn invoke_sync(&self, deployment: &str, inputs: Value) -> Value {
        let (status, body) = self
            .invoke(&json!({ "deployment": deployment, "inputs": inputs }))
            .await;
        assert_eq!(status, 200, "sync invoke: {body}");
        body
    }

    /// Async invoke with a callback that must answer 202; returns the request id.
    pub async fn invoke_async(
        &self,
        deployment: &str,
        inputs: Value,
        callback_url: &str,
    ) -> String {
        let (status, body) = self
            .invoke(&json!({
                "deployment": deployment,
                "inputs": inputs,
                "async": { "enabled": true, "callback_url": callback_url },
            }))
            .await;
        assert_eq!(status, 202, "async invoke: {body}");
        str_of(&body["request_id"])
    }

    /// `GET /v1/workflow/runs/{id}`, which must answer 200.
    pub async fn run(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/workflow/runs/{id}")).await;
        assert_eq!(status, 200, "get run {id}: {body}");
        body
    }

    /// Polls the run until `done(run)` holds; panics with the last state after [`WAIT`].
    pub async fn wait_run_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let run = self.run(id).await;
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never reached the expected state: {run:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the run until it is terminal.
    pub async fn wait_run(&self, id: &str) -> Value {
        self.wait_run_until(id, |run| {
            TERMINAL.contains(&run["run_status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// The run's delivery attempts, newest first.
    pub async fn deliveries(&self, id: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/workflow/runs/{id}/deliveries"))
            .await;
        assert_eq!(status, 200, "deliveries of {id}: {body}");
        body["data"].as_array().expect("deliveries data").clone()
    }

    /// Polls the delivery log until it holds `n` attempts (or more).
    pub async fn wait_deliveries(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let data = self.deliveries(id).await;
            if data.len() >= n {
                return data;
            }
            assert!(
                Instant::now() < deadline,
                "run {id}: expected {n} delivery attempts, have {data:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `request_id`s of `GET /v1/workflow/runs?{query}` (one page), in answer order.
    pub async fn list_run_ids(&self, query: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/v1/workflow/runs?{query}")).await;
        assert_eq!(status, 200, "list runs ?{query}: {body}");
        body["data"]
            .as_array()
            .expect("data array")
            .iter()
            .map(|run| str_of(&run["request_id"]))
            .collect()
    }

    /// `POST /v1/workflow/runs/{id}/cancel` with `body`.
    pub async fn cancel(&self, id: &str, body: &Value) -> (u16, Value) {
        self.post(&format!("/v1/workflow/runs/{id}/cancel"), body)
            .await
    }

    /// `GET /v1/workflow/approvals?{query}` (one page): the approvals, in answer order.
    pub async fn approvals(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/workflow/approvals?{query}")).await;
        assert_eq!(status, 200, "list approvals ?{query}: {body}");
        body["data"].as_array().expect("data array").clone()
    }

    /// Waits until run `request_id` has a pending approval (listed with `?status=pending`).
    pub async fn wait_pending_approval(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let pending = self.approvals("status=pending").await;
            if let Some(approval) = pending.iter().find(|a| a["request_id"] == request_id) {
                return approval.clone();
            }
            assert!(
                Instant::now() < deadline,
                "run {request_id} never opened an approval; pending: {pending:#?}; run: {:#}",
                self.run(request_id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/workflow/approvals/{id}` with an answer.
    pub async fn answer(&self, approval_id: &str, answer: &Value) -> (u16, Value) {
        self.post(&format!("/v1/workflow/approvals/{approval_id}"), answer)
            .await
    }
}

/// POSTs JSON to an absolute URL without an API key (completions, respond links).
pub async fn post_url(url: &str, body: &Value) -> (u16, Value) {
    Api::new("", None).post(url, body).await
}

/// The path (and query) of an absolute URL, to send it to another node or process.
pub fn url_path(url: &str) -> String {
    let url = url::Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not a URL: {e}"));
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

/// `metadata.webhook_url` of a call hookflow made to an `async_http` step's endpoint.
pub fn webhook_url(call: &Recorded) -> String {
    str_of(&call.json()["metadata"]["webhook_url"])
}

/// Asserts that `runs` (records of one deployment with `concurrency_limit: 1`, in invocation
/// order) ran one after another, first in first out.
pub fn assert_ran_one_after_another(runs: &[Value]) {
    for pair in runs.windows(2) {
        assert!(
            ts(&pair[1]["started_at"]) >= ts(&pair[0]["finished_at"]),
            "with limit 1, a queued run starts after the one before it finished (FIFO):\n{:#}\n{:#}",
            pair[0],
            pair[1]
        );
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// The string at `v`, panicking with the value when it is not one.
pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

/// Asserts an error answer: status, `error_code`, and (when given) the exact `error` message.
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str, message: Option<&str>) {
    let (got, body) = resp;
    assert_eq!(*got, status, "status of {body}");
    assert_eq!(body["error_code"], code, "error_code of {body}");
    assert!(body["error"].is_string(), "error message missing in {body}");
    if let Some(message) = message {
        assert_eq!(body["error"], message, "error message of {body}");
    }
}

/// Percent-encodes a query parameter value (secrets and cursors may hold `+`, `/`, `=`).
pub fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `req_` + 32 lowercase hex digits.
pub fn is_request_id(id: &str) -> bool {
    id.strip_prefix("req_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Parses an RFC 3339 UTC timestamp, panicking when the value is not one.
pub fn ts(v: &Value) -> SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 timestamp, got {v}"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339 UTC: {e}"))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The executions of one step in a run record, ordered by attempt.
pub fn step_attempts(run: &Value, step_id: &str) -> Vec<Value> {
    let mut attempts: Vec<Value> = run["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("run has no steps array: {run:#}"))
        .iter()
        .filter(|s| s["step_id"] == step_id)
        .cloned()
        .collect();
    attempts.sort_by_key(|s| s["attempt"].as_u64());
    attempts
}

/// Statuses of one step's executions, by attempt.
pub fn step_statuses(run: &Value, step_id: &str) -> Vec<String> {
    step_attempts(run, step_id)
        .iter()
        .map(|s| str_of(&s["status"]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Workflow definitions used across files

/// `{"name", "steps", "output"}`.
pub fn workflow(name: &str, steps: Value, output: &str) -> Value {
    json!({ "name": name, "steps": steps, "output": output })
}

/// One transform step `echo` whose output (and the workflow's result) is the inputs.
pub fn echo_workflow(name: &str) -> Value {
    workflow(
        name,
        json!([{ "id": "echo", "kind": "transform", "value": "{{ inputs }}" }]),
        "{{ steps.echo.output }}",
    )
}

/// A `delay` step `wait` of `duration`, then a transform `done` that answers the inputs.
pub fn delay_workflow(name: &str, duration: &str) -> Value {
    workflow(
        name,
        json!([
            { "id": "wait", "kind": "delay", "duration": duration },
            { "id": "done", "kind": "transform", "needs": ["wait"], "value": "{{ inputs }}" },
        ]),
        "{{ steps.done.output }}",
    )
}

/// One `http` step `remote_call` that POSTs the inputs to `url` (no retry unless the step says so).
pub fn http_workflow(name: &str, url: &str) -> Value {
    workflow(
        name,
        json!([{
            "id": "remote_call",
            "kind": "http",
            "request": { "method": "POST", "url": url, "body": "{{ inputs }}" },
        }]),
        "{{ steps.remote_call.output }}",
    )
}

/// An `async_http` step `work` calling `url` with `{"input": <inputs>}` as arguments (plus the
/// fields of `extra`, e.g. `timeout` and `retry`), then a transform `after` whose output (and the
/// workflow's result) is `{"work": <work's output>}`.
pub fn async_workflow(name: &str, url: &str, extra: Value) -> Value {
    let mut work = json!({
        "id": "work", "kind": "async_http", "url": url, "arguments": { "input": "{{ inputs }}" },
    });
    merge(&mut work, extra);
    workflow(
        name,
        json!([
            work,
            { "id": "after", "kind": "transform", "needs": ["work"],
              "value": { "work": "{{ steps.work.output }}" } },
        ]),
        "{{ steps.after.output }}",
    )
}

/// A `human` step `review` asking `Ship {{ inputs.item }}?` of `ops@example.com` (plus the fields
/// of `extra`, e.g. `timeout`, `on_timeout`, `notify_url`), then a transform `after` whose output
/// (and the workflow's result) is review's output.
pub fn human_workflow(name: &str, extra: Value) -> Value {
    let mut review = json!({
        "id": "review", "kind": "human", "prompt": "Ship {{ inputs.item }}?",
        "assignee": "ops@example.com",
    });
    merge(&mut review, extra);
    workflow(
        name,
        json!([
            review,
            { "id": "after", "kind": "transform", "needs": ["review"],
              "value": "{{ steps.review.output }}" },
        ]),
        "{{ steps.after.output }}",
    )
}

/// Copies the members of object `extra` into object `target`.
pub fn merge(target: &mut Value, extra: Value) {
    let target = target.as_object_mut().expect("merge into an object");
    match extra {
        Value::Object(extra) => target.extend(extra),
        Value::Null => {}
        other => panic!("merge expects an object, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// In-test HTTP peers

/// How the callback receiver answers its next request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// 429 with `Retry-After`.
    TooMany {
        retry_after_secs: u64,
    },
    /// 302 with a `Location` to `/redirected` on this same peer.
    Redirect,
    /// Sleeps far past the callback timeout, then 200.
    Hang,
    /// 200 with a plain-text body of this many bytes.
    Large(usize),
}

/// One request a [`Peer`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request arrived.
    pub at: Instant,
    /// When the answer was ready (after any sleep).
    pub done: Option<Instant>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads `read` every 20 ms until it holds `n` items or more and returns them; panics with
/// `failure`'s text about the last read once `timeout` passed.
async fn wait_len<T>(
    n: usize,
    timeout: Duration,
    read: impl Fn() -> Vec<T>,
    failure: impl Fn(&[T]) -> String,
) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = read();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{}", failure(&got));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An in-test HTTP server that records every request. Paths it serves as a step service:
/// - `/echo…` → 200 `{"method", "path", "query", "body"}` (the JSON body it got);
/// - `/fail-times/{n}…` → 500 for the first `n` calls of that exact path, then 200 `{"calls"}`;
/// - `/slow/{ms}…` → sleeps `ms`, then 200 `{"slept_ms"}`;
/// - `/status/{code}…` → that status with `{"status": code}`;
///
/// and as the endpoint of `async_http` steps:
/// - `/accept…` → 202 `{"accepted": true}` (the completion is left to the test);
/// - `/refuse…` → 200 StepResult `{"success": false, "error": "refused by the service"}`;
/// - `/complete-first…` → first POSTs the completion `{"success": true, "outputs": {"early":
///   true, "arguments"}}` to the call's `metadata.webhook_url` and waits for hookflow's answer
///   (kept in [`Peer::completions`]), and only then answers 200 `{"accepted": true}`.
///
/// Any other path is a callback receiver: answered from the [`Reply`] script, then 200.
pub struct Peer {
    pub addr: SocketAddr,
    inner: Arc<PeerInner>,
    task: JoinHandle<()>,
}

/// The peer used as a callback receiver.
pub type Receiver = Peer;
/// The peer used as the user's service for `http` steps.
pub type Service = Peer;

struct PeerInner {
    addr: SocketAddr,
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    counts: Mutex<HashMap<String, u64>>,
    /// Answers hookflow gave to the completions `/complete-first…` posted.
    completions: Mutex<Vec<(u16, Value)>>,
}

impl Peer {
    pub async fn start() -> Peer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind peer");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(PeerInner {
            addr,
            script: Mutex::default(),
            requests: Mutex::default(),
            counts: Mutex::default(),
            completions: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("peer server");
        });
        Peer { addr, inner, task }
    }

    /// A receiver answering `replies` in order, then 200.
    pub async fn scripted(replies: impl IntoIterator<Item = Reply>) -> Peer {
        let peer = Peer::start().await;
        peer.script(replies);
        peer
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The receiver's usual callback URL (`/callback`).
    pub fn callback_url(&self) -> String {
        self.url("/callback")
    }

    /// Queues more replies (after those still queued).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// Drops the replies still queued: from now on every request gets 200.
    pub fn clear_script(&self) {
        self.inner.script.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// How many requests to exactly `path` arrived (without copying them).
    pub fn count_to(&self, path: &str) -> usize {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// hookflow's answers to the completions this peer posted from `/complete-first…`, once
    /// `n` arrived (a run may end before its completion's answer is back here; panics after
    /// 10 s).
    pub async fn completions(&self, n: usize) -> Vec<(u16, Value)> {
        let read = || self.inner.completions.lock().unwrap().clone();
        wait_len(n, Duration::from_secs(10), read, |got| {
            format!("expected {n} completion answers, got {got:?}")
        })
        .await
    }

    /// Requests whose path is exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `n` requests to `path` arrived; returns them (panics after `timeout`).
    pub async fn wait_for_path(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        wait_len(
            n,
            timeout,
            || self.requests_to(path),
            |got| {
                format!(
                    "expected {n} requests to {path} within {timeout:?}, got {}: {:#?}",
                    got.len(),
                    self.summary()
                )
            },
        )
        .await
    }

    /// Waits until `n` requests (to any path) arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        wait_len(
            n,
            timeout,
            || self.requests(),
            |got| {
                format!(
                    "expected {n} requests within {timeout:?}, got {}: {:#?}",
                    got.len(),
                    self.summary()
                )
            },
        )
        .await
    }

    /// Callbacks received at `/callback`, waiting for at least `n`.
    pub async fn callbacks(&self, n: usize) -> Vec<Recorded> {
        self.wait_for_path("/callback", n, WAIT).await
    }

    /// Waits `quiet` and asserts that `path` still has exactly `n` requests.
    pub async fn assert_stays_at(&self, path: &str, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let got = self.requests_to(path);
        assert_eq!(
            got.len(),
            n,
            "expected exactly {n} requests to {path}, got {:#?}",
            self.summary()
        );
    }

    fn summary(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.method,
                    r.path,
                    String::from_utf8_lossy(&r.body)
                )
            })
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(peer): State<Arc<PeerInner>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let record = Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at,
        done: None,
    };
    let index = {
        let mut requests = peer.requests.lock().unwrap();
        requests.push(record.clone());
        requests.len() - 1
    };
    let calls = {
        let mut counts = peer.counts.lock().unwrap();
        let count = counts.entry(path.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let response = respond(&peer, &record, calls).await;
    peer.requests.lock().unwrap()[index].done = Some(Instant::now());
    response
}

/// The number right after `prefix` in `path` (`/slow/250/x` with `/slow/` → 250).
fn number_after(path: &str, prefix: &str) -> Option<u64> {
    path.strip_prefix(prefix)?.split('/').next()?.parse().ok()
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, axum::Json(body)).into_response()
}

async fn respond(peer: &PeerInner, record: &Recorded, calls: u64) -> Response {
    let path = record.path.as_str();
    if path.starts_with("/echo") {
        let body: Value = serde_json::from_slice(&record.body).unwrap_or(Value::Null);
        return json_response(
            200,
            json!({ "method": record.method, "path": path, "query": record.query, "body": body }),
        );
    }
    if let Some(n) = number_after(path, "/fail-times/") {
        return if calls <= n {
            json_response(500, json!({ "error": "planned failure", "calls": calls }))
        } else {
            json_response(200, json!({ "calls": calls }))
        };
    }
    if let Some(ms) = number_after(path, "/slow/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return json_response(200, json!({ "slept_ms": ms }));
    }
    if let Some(code) = number_after(path, "/status/") {
        return json_response(code as u16, json!({ "status": code }));
    }
    if path.starts_with("/accept") {
        return json_response(202, json!({ "accepted": true }));
    }
    if path.starts_with("/refuse") {
        return json_response(
            200,
            json!({ "success": false, "error": "refused by the service" }),
        );
    }
    if path.starts_with("/complete-first") {
        let call = record.json();
        let completion = json!({
            "success": true,
            "outputs": { "early": true, "arguments": call["arguments"] },
        });
        let answer = post_url(&webhook_url(record), &completion).await;
        peer.completions.lock().unwrap().push(answer);
        return json_response(200, json!({ "accepted": true }));
    }
    let reply = peer.script.lock().unwrap().pop_front();
    match reply {
        None => json_response(200, json!({ "received": true })),
        Some(Reply::Status(code)) => json_response(code, json!({ "status": code })),
        Some(Reply::TooMany { retry_after_secs }) => {
            let mut resp = json_response(429, json!({ "status": 429 }));
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string()).unwrap(),
            );
            resp
        }
        Some(Reply::Redirect) => Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, format!("http://{}/redirected", peer.addr))
            .body(Body::empty())
            .unwrap(),
        Some(Reply::Large(size)) => (StatusCode::OK, "a".repeat(size)).into_response(),
        Some(Reply::Hang) => {
            tokio::time::sleep(HANG).await;
            json_response(200, json!({ "late": true }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// HMAC-SHA256, written out here so the tests do not share code with what they check.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner_hash = Sha256::new()
        .chain_update(&inner)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer)
        .chain_update(inner_hash)
        .finalize()
        .into()
}

/// Decodes the part of a `whsec_` secret after the prefix.
pub fn secret_key_bytes(secret: &str) -> Vec<u8> {
    let b64 = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret {secret:?} lacks whsec_"));
    STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .unwrap_or_else(|e| panic!("secret {secret:?} is not base64 after whsec_: {e}"))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn simple_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body))
    )
}

/// `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`.
pub fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "v1,{}",
        STANDARD.encode(hmac_sha256(&secret_key_bytes(secret), &message))
    )
}

/// Checks every signature of a callback request against the deployment secret(s), both with the
/// `hookflow-webhooks` crate and with the independent computation above.
/// `simple_secret` is the secret expected in `X-Hookflow-Signature`; `standard_secrets` must all
/// be among the `webhook-signature` entries.
pub fn verify_callback(req: &Recorded, simple_secret: &str, standard_secrets: &[&str]) {
    let simple = req
        .header("x-hookflow-signature")
        .expect("X-Hookflow-Signature header");
    assert_eq!(
        simple,
        simple_signature(simple_secret, &req.body),
        "X-Hookflow-Signature"
    );
    hookflow_webhooks::verify_simple(&[simple_secret], simple, &req.body)
        .expect("hookflow_webhooks::verify_simple accepts the callback");

    let id = req.header("webhook-id").expect("webhook-id header");
    let timestamp = req
        .header("webhook-timestamp")
        .expect("webhook-timestamp header");
    let signature = req
        .header("webhook-signature")
        .expect("webhook-signature header");
    let sent = timestamp
        .parse::<i64>()
        .expect("webhook-timestamp is unix seconds");
    assert!(
        (sent - unix_now()).abs() < 300,
        "webhook-timestamp {sent} is not the time of the attempt"
    );
    let entries: Vec<&str> = signature.split(' ').collect();
    for secret in standard_secrets {
        let expected = standard_signature(secret, id, timestamp, &req.body);
        assert!(
            entries.contains(&expected.as_str()),
            "webhook-signature {signature:?} lacks {expected:?}"
        );
        hookflow_webhooks::verify_standard(
            &[*secret],
            id,
            timestamp,
            signature,
            &req.body,
            unix_now(),
            300,
        )
        .expect("hookflow_webhooks::verify_standard accepts the callback");
    }
}
