//! The load generator: closed-loop HTTP load, closed-loop and open-loop end-to-end load (invoke
//! to verified callback), and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::procs::{CpuSnapshot, CpuUsage};
use crate::receiver::{Phase, Receiver};

/// The load generator's HTTP client: keep-alive, no proxy, generous per-request timeout (a
/// sync invoke may legitimately wait up to the server's sync wait limit).
pub fn client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(90))
        .build()?)
}

/// One request target: URL, optional API key, fixed JSON body.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub key: Option<String>,
    pub body: Bytes,
}

impl Target {
    pub fn new(url: String, key: Option<&str>, body: &Value) -> Self {
        Self {
            url,
            key: key.map(str::to_string),
            body: Bytes::from(serde_json::to_vec(body).expect("serializable body")),
        }
    }

    async fn send(&self, client: &reqwest::Client) -> Result<(StatusCode, Bytes), String> {
        let mut req = client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone());
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("{e:#}"))?;
        Ok((status, body))
    }
}

/// When a load phase ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Run `warmup + measure`; only the `measure` window is reported.
    Time { warmup: Duration, measure: Duration },
    /// Send exactly this many requests; all are reported.
    Count(u64),
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From sorted samples in microseconds (nearest-rank percentiles).
    pub fn from_sorted_us(sorted: &[u32]) -> Self {
        if sorted.is_empty() {
            return Self::default();
        }
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64 / 1000.0
        };
        Self {
            samples: sorted.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: sorted[sorted.len() - 1] as f64 / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "samples": self.samples,
            "p50_ms": r(self.p50),
            "p90_ms": r(self.p90),
            "p99_ms": r(self.p99),
            "max_ms": r(self.max),
        })
    }
}

/// What one phase measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Successful requests (or verified callbacks) per second in the measured window.
    pub rate: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Latency,
    pub cpu: CpuUsage,
    pub window_secs: f64,
    /// End-to-end phases: callbacks of failed runs, callbacks still missing after the drain,
    /// duplicate callbacks.
    pub failed_runs: u64,
    pub missing_callbacks: u64,
    pub duplicate_callbacks: u64,
}

impl Measured {
    pub fn json(&self) -> Value {
        json!({
            "rate_per_s": (self.rate * 10.0).round() / 10.0,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "latency": self.latency.json(),
            "cpu": self.cpu.json(self.ok),
            "window_s": (self.window_secs * 1000.0).round() / 1000.0,
            "failed_runs": self.failed_runs,
            "missing_callbacks": self.missing_callbacks,
            "duplicate_callbacks": self.duplicate_callbacks,
        })
    }
}

#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Errors {
    fn add(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

/// Measures CPU between two instants in the background.
fn cpu_between(
    server_pid: Option<u32>,
    from: Instant,
    to: Instant,
    cores: usize,
) -> tokio::task::JoinHandle<CpuUsage> {
    tokio::spawn(async move {
        sleep_until(from.into()).await;
        let a = CpuSnapshot::take(server_pid);
        sleep_until(to.into()).await;
        a.usage(&CpuSnapshot::take(server_pid), cores)
    })
}

/// Plain request/response load at a fixed concurrency (closed loop, keep-alive). `check`
/// decides whether an answer counts as a success.
pub async fn http_load(
    client: &reqwest::Client,
    target: &Target,
    concurrency: usize,
    stop: Stop,
    server_pid: Option<u32>,
    cores: usize,
    check: fn(StatusCode, &[u8]) -> Result<(), String>,
) -> Measured {
    let start = Instant::now();
    let (cutoff, end) = match stop {
        Stop::Time { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Stop::Count(_) => (start, None),
    };
    let cpu_task = end.map(|end| cpu_between(server_pid, cutoff, end, cores));
    let cpu_start = CpuSnapshot::take(server_pid);
    let claimed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let target = target.clone();
        let claimed = claimed.clone();
        let errors = errors.clone();
        workers.spawn(async move {
            let mut lat = Vec::new();
            let mut ok_in_window = 0u64;
            let mut last_done = start;
            loop {
                let done = match (stop, end) {
                    (Stop::Count(n), _) => claimed.fetch_add(1, Ordering::Relaxed) >= n,
                    (_, Some(end)) => Instant::now() >= end,
                    (Stop::Time { .. }, None) => true,
                };
                if done {
                    break;
                }
                let t0 = Instant::now();
                let result = target.send(&client).await;
                let t1 = Instant::now();
                let outcome = match result {
                    Ok((status, body)) => check(status, &body),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        let in_window = t1 >= cutoff && end.is_none_or(|end| t1 <= end);
                        if in_window {
                            ok_in_window += 1;
                            last_done = t1;
                        }
                        if t0 >= cutoff && end.is_none_or(|end| t0 < end) {
                            lat.push(t1.duration_since(t0).as_micros().min(u32::MAX as u128) as u32);
                        }
                    }
                    Err(e) => {
                        errors.add(e);
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (lat, ok_in_window, last_done)
        });
    }
    let mut latencies = Vec::new();
    let mut ok = 0;
    let mut last = start;
    while let Some(joined) = workers.join_next().await {
        let (lat, n, done) = joined.expect("load worker panicked");
        latencies.extend(lat);
        ok += n;
        last = last.max(done);
    }
    latencies.sort_unstable();
    let (window_secs, cpu) = match (end, cpu_task) {
        (Some(end), Some(task)) => (
            end.duration_since(cutoff).as_secs_f64(),
            task.await.unwrap_or_default(),
        ),
        _ => (
            last.duration_since(start).as_secs_f64(),
            cpu_start.usage(&CpuSnapshot::take(server_pid), cores),
        ),
    };
    Measured {
        rate: ok as f64 / window_secs.max(1e-3),
        ok,
        errors: errors.count.load(Ordering::Relaxed),
        first_error: errors.first.lock().unwrap().clone(),
        latency: Latency::from_sorted_us(&latencies),
        cpu,
        window_secs,
        ..Measured::default()
    }
}

/// The `request_id` of a 202 answer.
fn accepted_id(status: StatusCode, body: &[u8]) -> Result<String, String> {
    if status != StatusCode::ACCEPTED {
        return Err(format!(
            "invoke answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let answer: Value = serde_json::from_slice(body).map_err(|e| format!("invoke answer: {e}"))?;
    answer["request_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "invoke answer without request_id".to_string())
}

/// Waits (bounded) until every accepted run of `phase` has called back.
async fn drain(phase: &Phase, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let left = phase.outstanding.load(Ordering::Relaxed);
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an end-to-end phase needs.
pub struct E2e<'a> {
    pub client: &'a reqwest::Client,
    pub receiver: &'a Receiver,
    pub server_pid: u32,
    pub cores: usize,
    pub drain_timeout: Duration,
}

impl E2e<'_> {
    fn finish(
        &self,
        phase: &Phase,
        counts: (u64, u64, f64),
        errors: &Errors,
        cpu: CpuUsage,
        missing: u64,
    ) -> Measured {
        let (a, b, secs) = counts;
        Measured {
            rate: (b - a) as f64 / secs.max(1e-3),
            ok: b - a,
            errors: errors.count.load(Ordering::Relaxed),
            first_error: errors.first.lock().unwrap().clone(),
            latency: Latency::from_sorted_us(&phase.latencies()),
            cpu,
            window_secs: secs,
            failed_runs: phase.failed.load(Ordering::Relaxed),
            missing_callbacks: missing,
            duplicate_callbacks: phase.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Counts verified callbacks and CPU between `from` and `to`.
    fn window_counter(
        &self,
        phase: Arc<Phase>,
        from: Instant,
        to: Instant,
    ) -> tokio::task::JoinHandle<((u64, u64, f64), CpuUsage)> {
        let pid = Some(self.server_pid);
        let cores = self.cores;
        tokio::spawn(async move {
            sleep_until(from.into()).await;
            let a = phase.completed.load(Ordering::Relaxed);
            let cpu_a = CpuSnapshot::take(pid);
            let t_a = Instant::now();
            sleep_until(to.into()).await;
            let b = phase.completed.load(Ordering::Relaxed);
            let cpu = cpu_a.usage(&CpuSnapshot::take(pid), cores);
            ((a, b, t_a.elapsed().as_secs_f64()), cpu)
        })
    }

    /// Peak rate: `concurrency` connections invoke as fast as they can while at most
    /// `inflight` runs are between invoke and callback (a callback frees a slot).
    pub async fn closed(
        &self,
        phase_id: u32,
        target: &Target,
        concurrency: usize,
        inflight: usize,
        warmup: Duration,
        measure: Duration,
    ) -> Measured {
        let start = Instant::now();
        let (cutoff, end) = (start + warmup, start + warmup + measure);
        let permits = Arc::new(Semaphore::new(inflight));
        let phase = Arc::new(Phase::new(phase_id, (cutoff, end), Some(permits.clone())));
        self.receiver.set_phase(Some(phase.clone()));
        let counter = self.window_counter(phase.clone(), cutoff, end);
        let errors = Arc::new(Errors::default());
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (client, target, permits, phase, errors) = (
                self.client.clone(),
                target.clone(),
                permits.clone(),
                phase.clone(),
                errors.clone(),
            );
            workers.spawn(async move {
                loop {
                    tokio::select! {
                        permit = permits.acquire() => permit.expect("semaphore open").forget(),
                        _ = sleep_until(end.into()) => break,
                    }
                    let sent = Instant::now();
                    if sent >= end {
                        permits.add_permits(1);
                        break;
                    }
                    let result = target
                        .send(&client)
                        .await
                        .and_then(|(status, body)| accepted_id(status, &body));
                    match result {
                        Ok(id) => phase.sent(id, sent),
                        Err(e) => {
                            errors.add(e);
                            permits.add_permits(1);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let (counts, cpu) = counter.await.expect("counter task");
        let missing = drain(&phase, self.drain_timeout).await;
        self.receiver.set_phase(None);
        self.finish(&phase, counts, &errors, cpu, missing)
    }

    /// Open loop: invokes at a fixed `rate` (scheduled, not waiting for answers); latency is
    /// measured from each invoke's scheduled time, so a slow server cannot hide its queueing.
    pub async fn open(
        &self,
        phase_id: u32,
        target: &Target,
        rate: f64,
        warmup: Duration,
        measure: Duration,
    ) -> Measured {
        let start = Instant::now() + Duration::from_millis(10);
        let (cutoff, end) = (start + warmup, start + warmup + measure);
        let phase = Arc::new(Phase::new(phase_id, (cutoff, end), None));
        self.receiver.set_phase(Some(phase.clone()));
        let counter = self.window_counter(phase.clone(), cutoff, end);
        let errors = Arc::new(Errors::default());
        let total = (rate.max(1.0) * (warmup + measure).as_secs_f64()).round() as u64;
        let mut tasks = JoinSet::new();
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate.max(1.0));
            sleep_until(at.into()).await;
            let (client, target, phase, errors) = (
                self.client.clone(),
                target.clone(),
                phase.clone(),
                errors.clone(),
            );
            tasks.spawn(async move {
                let result = target
                    .send(&client)
                    .await
                    .and_then(|(status, body)| accepted_id(status, &body));
                match result {
                    Ok(id) => phase.sent(id, at),
                    Err(e) => errors.add(e),
                }
            });
            // Reap finished tasks as we go.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let (counts, cpu) = counter.await.expect("counter task");
        let missing = drain(&phase, self.drain_timeout).await;
        self.receiver.set_phase(None);
        self.finish(&phase, counts, &errors, cpu, missing)
    }
}
