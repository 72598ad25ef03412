//! What every part of a running node shares: the store, settings, caches and wake-up hints.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookflow_core::{Templates, WorkflowDef};
use hookflow_store::{Applied, Millis, Store, StoreError};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};

use crate::config::Settings;
use crate::lookups::Lookups;
use crate::net::NetworkPolicy;
use crate::tokens::Tokens;

/// Pause after a failed queue read before looking again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Sleeps until `wake` is signalled, the next item of a queue is due (as `next_due` reads
/// it), or `poll` passes. A wake-up already pending returns at once without reading the queue:
/// under load wake-ups come faster than a claim loop goes round, and the read would be one more
/// round trip per round.
pub async fn sleep_until_due(
    wake: &Notify,
    next_due: impl Future<Output = Result<Option<Millis>, StoreError>>,
    poll: Duration,
) {
    tokio::select! {
        biased;
        _ = wake.notified() => return,
        _ = std::future::ready(()) => {}
    }
    let wait = match next_due.await {
        Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64).min(poll),
        Ok(None) => poll,
        Err(e) => {
            tracing::error!(error = %e, "reading the queue failed");
            ERROR_BACKOFF
        }
    };
    if wait.is_zero() {
        return;
    }
    tokio::select! {
        _ = wake.notified() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// The current time as unix milliseconds.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or_default()
}

/// A node's shared state.
pub struct App {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    /// Base of async-step webhook URLs (no trailing slash).
    pub public_url: String,
    pub templates: Templates,
    pub policy: Arc<NetworkPolicy>,
    pub http: reqwest::Client,
    pub definitions: DefinitionCache,
    /// API keys and deployments looked up recently.
    pub lookups: Lookups,
    pub tokens: Tokens,
    /// Renders `/metrics` (None when no recorder is installed).
    pub metrics: Option<PrometheusHandle>,
    pub waiters: Waiters,
    /// Wakes the engine: new jobs were committed.
    pub work: Notify,
    /// Wakes delivery: new events were committed.
    pub outbox: Notify,
    /// Steps this node may execute at once (see [`crate::engine`]): taken by the engine's
    /// claims and by the first steps of the runs this node creates (see
    /// [`hookflow_store::NewRun::lease_first_step`]).
    pub engine_slots: Arc<Semaphore>,
    /// Delivery attempts this node may have in flight (see [`crate::delivery`]): taken by the
    /// delivery loop's claims and by the events leased to this node by the writes that end
    /// runs (see [`hookflow_store::Queue::finish_job`], [`hookflow_store::NewRun::event_lease`]).
    pub delivery_slots: Arc<Semaphore>,
}

impl App {
    /// Builds the shared state of a node.
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        public_url: String,
        tokens: Tokens,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let policy = Arc::new(NetworkPolicy::new(settings.allow_networks.clone()));
        let user_agent = format!("hookflow/{}", env!("CARGO_PKG_VERSION"));
        Self {
            http: crate::net::build_client(policy.clone(), &user_agent),
            policy,
            store,
            settings,
            public_url,
            templates: Templates::new(),
            definitions: DefinitionCache::default(),
            lookups: Lookups::default(),
            tokens,
            metrics,
            waiters: Waiters::default(),
            work: Notify::new(),
            outbox: Notify::new(),
            engine_slots: Arc::new(Semaphore::new(crate::engine::MAX_IN_FLIGHT)),
            delivery_slots: Arc::new(Semaphore::new(crate::delivery::MAX_IN_FLIGHT)),
        }
    }

    /// Wakes whoever a committed change concerns: the run's sync waiter, delivery, the engine.
    pub fn signal(&self, run_id: &str, applied: &Applied) {
        if let Applied::Done {
            terminal,
            event,
            work,
            leased_event,
            ..
        } = applied
        {
            if let Some(status) = terminal {
                metrics::counter!("hookflow_runs_finished_total", "status" => status.as_str())
                    .increment(1);
                self.waiters.wake(run_id);
            }
            if *event && leased_event.is_none() {
                self.outbox.notify_one();
            }
            if *work {
                self.work.notify_one();
            }
        }
    }

    /// The workspace's secret values for a run of `def`: loaded only when its templates read
    /// them.
    pub async fn secrets(
        &self,
        def: &WorkflowDef,
        workspace_id: &str,
    ) -> Result<Value, StoreError> {
        if def.uses_secrets {
            self.store.secret_values(workspace_id).await
        } else {
            Ok(Value::Object(Map::new()))
        }
    }

    /// The parsed definition of a workflow version (versions are immutable, so cached).
    pub async fn definition(
        &self,
        workspace_id: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<Arc<WorkflowDef>>, StoreError> {
        let key = (workspace_id.to_string(), name.to_string(), version);
        if let Some(def) = self.definitions.get(&key) {
            return Ok(Some(def));
        }
        let Some(stored) = self
            .store
            .workflow_version(workspace_id, name, Some(version))
            .await?
        else {
            return Ok(None);
        };
        let def = WorkflowDef::from_json(&stored.definition)
            .map_err(|e| StoreError::Corrupt(format!("stored workflow {name} v{version}: {e}")))?;
        Ok(Some(self.definitions.insert(key, def)))
    }
}

type DefinitionKey = (String, String, i64);

/// Parsed workflow versions by (workspace, name, version); a hint, bounded in size.
#[derive(Default)]
pub struct DefinitionCache(Mutex<HashMap<DefinitionKey, Arc<WorkflowDef>>>);

/// Entries kept before the cache starts over.
const DEFINITION_CACHE_SIZE: usize = 10_000;

impl DefinitionCache {
    fn get(&self, key: &DefinitionKey) -> Option<Arc<WorkflowDef>> {
        self.0.lock().expect("cache lock").get(key).cloned()
    }

    fn insert(&self, key: DefinitionKey, def: WorkflowDef) -> Arc<WorkflowDef> {
        let mut map = self.0.lock().expect("cache lock");
        if map.len() >= DEFINITION_CACHE_SIZE {
            map.clear();
        }
        map.entry(key).or_insert_with(|| Arc::new(def)).clone()
    }
}

/// Sync invokes waiting for their run to end, by request id (in-process hints).
#[derive(Default)]
pub struct Waiters(Mutex<HashMap<String, Arc<Notify>>>);

impl Waiters {
    /// Registers interest in a run; the guard unregisters on drop.
    pub fn register(&self, run_id: &str) -> WaiterGuard<'_> {
        let notify = Arc::new(Notify::new());
        self.0
            .lock()
            .expect("waiters lock")
            .insert(run_id.to_string(), notify.clone());
        WaiterGuard {
            waiters: self,
            run_id: run_id.to_string(),
            notify,
        }
    }

    /// Wakes the waiter of a run, if any.
    pub fn wake(&self, run_id: &str) {
        if let Some(notify) = self.0.lock().expect("waiters lock").get(run_id) {
            notify.notify_one();
        }
    }
}

/// A registered waiter.
pub struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    run_id: String,
    /// Notified when the run may have ended.
    pub notify: Arc<Notify>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters
            .0
            .lock()
            .expect("waiters lock")
            .remove(&self.run_id);
    }
}
