//! Test databases for both backends, fixtures, and a small planner.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hookflow_store::postgres::PgStore;
use hookflow_store::sqlite::SqliteStore;
use hookflow_store::{
    Delivery, Deployment, Millis, NewEvent, NewRun, NewStep, Plan, Planner, RunRecord, RunStatus,
    Source, StepExecution, StepStatus, Store, Terminal, Variant, Workspace,
};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Where the PostgreSQL tests create their databases.
pub fn postgres_url() -> String {
    std::env::var("HOOKFLOW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Which backend a test database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database with a store open on it; removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    url: String,
    /// For PostgreSQL: the database to drop at the end.
    pg: Option<PgCleanup>,
    _dir: Option<tempfile::TempDir>,
}

struct PgCleanup {
    admin_url: String,
    name: String,
}

impl TestDb {
    /// A SQLite database in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hookflow.db").display());
        let store = SqliteStore::connect(&url).await.expect("open SQLite");
        Self {
            backend: Backend::Sqlite,
            store: Arc::new(store),
            url,
            pg: None,
            _dir: Some(dir),
        }
    }

    /// A new PostgreSQL database with a store open on it (see [`EmptyPg`]).
    pub async fn postgres() -> Self {
        let mut empty = EmptyPg::create().await;
        let store = PgStore::connect(&empty.url).await.expect("open PostgreSQL");
        Self {
            backend: Backend::Postgres,
            store: Arc::new(store),
            url: empty.url.clone(),
            pg: empty.cleanup.take(),
            _dir: None,
        }
    }

    /// Another node on the same database (SQLite serves one node: the same store).
    pub async fn node(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Sqlite => self.store.clone(),
            Backend::Postgres => Arc::new(PgStore::connect(&self.url).await.expect("second node")),
        }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A new, empty PostgreSQL database (`hf_<random>`) created through the admin URL, dropped
/// (best effort) with this value. Panics with a clear message when PostgreSQL is unreachable:
/// these tests never skip silently.
pub struct EmptyPg {
    pub url: String,
    cleanup: Option<PgCleanup>,
}

impl EmptyPg {
    pub async fn create() -> Self {
        let admin_url = postgres_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin_url} ({e}); start it or point \
                 HOOKFLOW_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE"
            )
        });
        let name = format!("hf_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        Self {
            url: database_url(&admin_url, &name),
            cleanup: Some(PgCleanup { admin_url, name }),
        }
    }
}

impl Drop for EmptyPg {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.run();
        }
    }
}

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

impl PgCleanup {
    /// Drops the database, best effort, on a thread of its own (Drop cannot await).
    fn run(self) {
        let Self { admin_url, name } = self;
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(cleanup) = self.pg.take() {
            cleanup.run();
        }
    }
}

/// A fixed clock for tests.
pub const T0: Millis = 1_700_000_000_000;

/// Lease of test steps.
pub const LEASE: Millis = 60_000;

/// A workspace and a deployment of workflow `wf` (concurrency `limit`).
pub async fn fixture(db: &TestDb, limit: Option<i64>) -> (Workspace, Deployment) {
    let ws = db.store.ensure_workspace("test").await.unwrap();
    let deployment = deployment(&ws, &format!("dep-{}", short_id()), limit);
    db.store.create_deployment(&deployment).await.unwrap();
    (ws, deployment)
}

/// A deployment value (not stored).
pub fn deployment(ws: &Workspace, name: &str, limit: Option<i64>) -> Deployment {
    Deployment {
        id: format!("dep_{}", uuid::Uuid::now_v7().simple()),
        workspace_id: ws.id.clone(),
        name: name.to_string(),
        workflow: "wf".into(),
        variants: BTreeMap::from([(
            "default".to_string(),
            Variant {
                version: 1,
                settings: json!({}),
            },
        )]),
        concurrency_limit: limit,
        secret: "secret".into(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: T0,
        updated_at: T0,
    }
}

/// Eight random hex digits.
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A new, increasing run id.
pub fn run_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// A first attempt of a step, due at `run_at`.
pub fn step(id: &str, run_at: Millis) -> NewStep {
    NewStep {
        step_id: id.to_string(),
        attempt: 1,
        run_at,
        lease_ms: LEASE,
        running: false,
    }
}

/// A run of `deployment` starting with `first` steps, created at `T0`.
pub fn new_run(deployment: &Deployment, first: &[&str]) -> NewRun {
    NewRun {
        id: run_id(),
        workspace_id: deployment.workspace_id.clone(),
        deployment_id: deployment.id.clone(),
        deployment_name: deployment.name.clone(),
        variant: "default".into(),
        workflow: deployment.workflow.clone(),
        version: 1,
        source: Source::Api,
        delivery: Delivery::Callback,
        callback_url: Some("https://example.test/callback".into()),
        inputs: json!({"n": 1}),
        user: None,
        metadata: json!({}),
        settings: json!({}),
        plan: Plan {
            inline: Vec::new(),
            start: first.iter().map(|s| step(s, T0)).collect(),
            status: RunStatus::Running,
            terminal: None,
        },
        concurrency_limit: deployment.concurrency_limit,
        refuse_when_full: false,
        idempotency: None,
        created_at: T0,
        leased: None,
        event_lease: None,
    }
}

/// A planner over a fixed graph: each step starts once all its dependencies completed; the run
/// completes (with a `workflow.completed` event) when every step completed and fails when a
/// step's latest attempt failed for good.
#[derive(Clone)]
pub struct DagPlanner {
    pub steps: Vec<(&'static str, Vec<&'static str>)>,
}

impl DagPlanner {
    /// A copy to hand to `finish_job`.
    pub fn shared(&self) -> Arc<dyn Planner> {
        Arc::new(self.clone())
    }

    /// Steps with no dependencies on each other.
    pub fn parallel(ids: &[&'static str]) -> Self {
        Self {
            steps: ids.iter().map(|id| (*id, vec![])).collect(),
        }
    }

    /// `a` then `b` then ….
    pub fn chain(ids: &[&'static str]) -> Self {
        Self {
            steps: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, if i == 0 { vec![] } else { vec![ids[i - 1]] }))
                .collect(),
        }
    }
}

/// An event of a run, with a fresh id (so a second terminal write would show as a second row).
pub fn event(run: &RunRecord, kind: &str) -> NewEvent {
    NewEvent {
        id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
        event_type: format!("workflow.{kind}"),
        payload: json!({"run": run.id, "type": kind}).to_string(),
        url: run.callback_url.clone().unwrap_or_default(),
    }
}

impl Planner for DagPlanner {
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan {
        let mut latest: HashMap<&str, &StepExecution> = HashMap::new();
        for e in steps {
            let slot = latest.entry(e.step_id.as_str()).or_insert(e);
            if e.attempt > slot.attempt {
                *slot = e;
            }
        }
        let done = |id: &str| {
            latest
                .get(id)
                .is_some_and(|e| e.status == StepStatus::Completed)
        };
        if let Some(failed) = latest.values().find(|e| e.status == StepStatus::Failed) {
            return Plan {
                inline: Vec::new(),
                start: vec![],
                status: RunStatus::Failed,
                terminal: Some(Terminal {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(format!("step {} failed", failed.step_id)),
                    event: Some(event(run, "failed")),
                }),
            };
        }
        if self.steps.iter().all(|(id, _)| done(id)) {
            let output: Value = latest
                .iter()
                .map(|(id, e)| (id.to_string(), e.output.clone().unwrap_or(Value::Null)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            return Plan {
                inline: Vec::new(),
                start: vec![],
                status: RunStatus::Completed,
                terminal: Some(Terminal {
                    status: RunStatus::Completed,
                    output: Some(output),
                    error: None,
                    event: Some(event(run, "completed")),
                }),
            };
        }
        let start = self
            .steps
            .iter()
            .filter(|(id, deps)| !latest.contains_key(id) && deps.iter().all(|d| done(d)))
            .map(|(id, _)| step(id, now))
            .collect();
        Plan {
            inline: Vec::new(),
            start,
            status: RunStatus::Running,
            terminal: None,
        }
    }
}

/// A [`DagPlanner`] whose caller asks for each run's end event under a lease of `lease` ms
/// (see [`Planner::lease_event`]).
#[derive(Clone)]
pub struct EventLeasing {
    pub dag: DagPlanner,
    pub lease: i64,
}

impl Planner for EventLeasing {
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan {
        self.dag.plan(run, steps, now)
    }

    fn lease_event(&self) -> Option<i64> {
        Some(self.lease)
    }
}
