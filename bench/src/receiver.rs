//! The bench's own HTTP side: the callback receiver (verifies both signatures, matches each
//! callback to its invoke) and the endpoint that the 3-step workflow's `http` step calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

/// How far a callback's `webhook-timestamp` may be from now.
const TOLERANCE_SECS: i64 = 300;

#[derive(Clone, Copy)]
enum Slot {
    /// The invoke answered 202; no callback yet.
    Sent(Instant),
    /// The callback came first (before the 202 was read); `bool`: completed (not failed).
    Arrived(Instant, bool),
    Done,
}

/// One measured phase: which runs were sent when, which callbacks arrived when.
pub struct Phase {
    pub id: u32,
    /// Only runs sent in `[window.0, window.1)` give latency samples.
    window: (Instant, Instant),
    slots: Mutex<HashMap<String, Slot>>,
    latencies_us: Mutex<Vec<u32>>,
    /// Closed-loop phases: a callback frees a slot for the next run.
    permits: Option<Arc<Semaphore>>,
    pub accepted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub duplicates: AtomicU64,
    /// Accepted runs whose callback has not arrived yet.
    pub outstanding: AtomicU64,
}

impl Phase {
    pub fn new(id: u32, window: (Instant, Instant), permits: Option<Arc<Semaphore>>) -> Self {
        Self {
            id,
            window,
            slots: Mutex::new(HashMap::new()),
            latencies_us: Mutex::new(Vec::new()),
            permits,
            accepted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
        }
    }

    fn record(&self, sent: Instant, arrived: Instant) {
        if sent >= self.window.0 && sent < self.window.1 {
            let us = arrived.saturating_duration_since(sent).as_micros();
            self.latencies_us
                .lock()
                .unwrap()
                .push(us.min(u32::MAX as u128) as u32);
        }
    }

    /// The invoke of `request_id`, sent at `sent`, was accepted.
    pub fn sent(&self, request_id: String, sent: Instant) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap();
        match slots.get_mut(&request_id) {
            Some(slot) => {
                if let Slot::Arrived(arrived, ok) = *slot {
                    if ok {
                        self.record(sent, arrived);
                    }
                    *slot = Slot::Done;
                }
            }
            None => {
                slots.insert(request_id, Slot::Sent(sent));
                self.outstanding.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A verified callback for `request_id` arrived at `at`.
    fn arrived(&self, request_id: &str, at: Instant, ok: bool) {
        let mut slots = self.slots.lock().unwrap();
        let first = match slots.get_mut(request_id) {
            Some(slot) => match *slot {
                Slot::Sent(sent) => {
                    if ok {
                        self.record(sent, at);
                    }
                    *slot = Slot::Done;
                    self.outstanding.fetch_sub(1, Ordering::Relaxed);
                    true
                }
                Slot::Arrived(..) | Slot::Done => false,
            },
            None => {
                slots.insert(request_id.to_string(), Slot::Arrived(at, ok));
                true
            }
        };
        drop(slots);
        if !first {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if ok {
            self.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(permits) = &self.permits {
            permits.add_permits(1);
        }
    }

    /// Latency samples (µs) so far, sorted.
    pub fn latencies(&self) -> Vec<u32> {
        let mut v = self.latencies_us.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
}

/// Shared state of the receiver.
#[derive(Default)]
struct Shared {
    secrets: RwLock<Vec<String>>,
    phase: RwLock<Option<Arc<Phase>>>,
    stray: AtomicU64,
    bad_signature: AtomicU64,
    work_calls: AtomicU64,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/cb/{phase}", post(callback))
            .route("/work", post(work))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// Secrets that callbacks may be signed with.
    pub fn add_secret(&self, secret: String) {
        self.shared.secrets.write().unwrap().push(secret);
    }

    /// Routes callbacks of `phase` (URL `/cb/{id}`) to it.
    pub fn set_phase(&self, phase: Option<Arc<Phase>>) {
        *self.shared.phase.write().unwrap() = phase;
    }

    pub fn callback_url(&self, phase: u32) -> String {
        format!("http://{}/cb/{phase}", self.addr)
    }

    pub fn work_url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    /// (callbacks for no current phase, callbacks with a bad signature, `/work` calls).
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.shared.stray.load(Ordering::Relaxed),
            self.shared.bad_signature.load(Ordering::Relaxed),
            self.shared.work_calls.load(Ordering::Relaxed),
        )
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn verified(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> bool {
    let secrets = shared.secrets.read().unwrap();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let standard = hookflow_webhooks::verify_standard(
        &refs,
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
        body,
        now,
        TOLERANCE_SECS,
    );
    let simple =
        hookflow_webhooks::verify_simple(&refs, header(headers, "x-hookflow-signature"), body);
    standard.is_ok() && simple.is_ok()
}

/// Always answers 200 so hookflow never retries; a callback counts only if both signatures
/// verify.
async fn callback(
    State(shared): State<Arc<Shared>>,
    Path(phase_id): Path<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    if !verified(&shared, &headers, &body) {
        shared.bad_signature.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    }
    let phase = shared.phase.read().unwrap().clone();
    let Some(phase) = phase.filter(|p| p.id == phase_id) else {
        shared.stray.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    };
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        shared.stray.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    };
    let Some(request_id) = event["request_id"].as_str() else {
        shared.stray.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    };
    let ok = event["event_type"] == "workflow.completed";
    phase.arrived(request_id, at, ok);
    StatusCode::OK
}

/// The `http` step's endpoint: answers with what it was sent.
async fn work(State(shared): State<Arc<Shared>>, body: Bytes) -> axum::Json<Value> {
    shared.work_calls.fetch_add(1, Ordering::Relaxed);
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({ "x": sent["x"], "ok": true }))
}
