//! Prometheus metrics: the recorder, and the HTTP middleware that counts every request.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use hookflow_store::sqlite::{COMMIT_SECONDS, WAL_FLUSH_SECONDS};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their summaries. The recorder keeps every
/// sample until then (or until `/metrics` is scraped): without this, a node nobody scrapes
/// grew by a sample for every request (the benchmark's RSS rose by 24 MiB over 900k invokes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds (seconds) of SQLite's commit and WAL flush durations: histograms rather than
/// summaries, so that a scraper can count the slow ones between two scrapes (a disk that
/// stalls, a checkpoint holding the writer).
const WRITER_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Installs the process-wide recorder and its upkeep task; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for histogram in [COMMIT_SECONDS, WAL_FLUSH_SECONDS] {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(histogram.into()), WRITER_BUCKETS)?;
    }
    let handle = builder.install_recorder()?;
    let upkept = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkept.run_upkeep();
        }
    });
    Ok(handle)
}

/// Counts requests and their latency by method, route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("hookflow_http_requests_total", &labels).increment(1);
    metrics::histogram!("hookflow_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
