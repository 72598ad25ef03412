//! The machine, the versions, and the printed table.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::load::Measured;

/// CPU model, cores, memory, kernel.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    json!({
        "cpu_model": model,
        "cores": cores(),
        "memory_mib": mem_kib.map(|k| k / 1024),
        "kernel": kernel,
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
    })
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn command_output(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit of the work tree, and whether tracked files differ from it. Read-only: no
/// optional locks, so a concurrent git command is never disturbed.
pub fn git(workspace: &Path) -> Value {
    let commit = command_output("git", &["rev-parse", "HEAD"], workspace);
    let dirty = command_output(
        "git",
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
        workspace,
    )
    .map(|s| !s.is_empty());
    json!({ "commit": commit, "dirty": dirty })
}

pub fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    command_output(&rustc, &["--version"], Path::new("."))
}

pub fn hookflow_version(bin: &Path) -> Option<String> {
    command_output(&bin.to_string_lossy(), &["--version"], Path::new("."))
}

/// One printed line.
pub struct Row {
    /// Printing order within a backend.
    pub rank: u8,
    pub backend: String,
    pub figure: String,
    pub measured: Option<MeasuredView>,
    pub note: String,
}

/// What a row shows of a [`Measured`].
pub struct MeasuredView {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub server_cpu: f64,
    pub bench_cpu: f64,
    pub postgres_cpu: Option<f64>,
    pub other_cpu: f64,
    pub rss_mib: Option<f64>,
}

impl MeasuredView {
    pub fn new(m: &Measured, postgres: bool, rss_kib: Option<u64>) -> Self {
        Self {
            rate: m.rate,
            p50: m.latency.p50,
            p99: m.latency.p99,
            server_cpu: m.cpu.server,
            bench_cpu: m.cpu.bench,
            postgres_cpu: postgres.then_some(m.cpu.postgres),
            other_cpu: m.cpu.other,
            rss_mib: rss_kib.map(|k| k as f64 / 1024.0),
        }
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<40} {:>7} {:>8} {:>8} {:>7} {:>7} {:>5} {:>5} {:>7}  note",
        "backend",
        "figure",
        "per s",
        "p50 ms",
        "p99 ms",
        "server",
        "loadgen",
        "pg",
        "other",
        "RSS MiB"
    );
    for row in rows {
        let _ = write!(out, "{:<8} {:<40}", row.backend, row.figure);
        match &row.measured {
            Some(m) => {
                let _ = write!(
                    out,
                    " {:>7.0} {:>8.2} {:>8.2} {:>6.0}% {:>6.0}% {:>5} {:>4.0}% {:>7}",
                    m.rate,
                    m.p50,
                    m.p99,
                    m.server_cpu,
                    m.bench_cpu,
                    m.postgres_cpu
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_else(|| "-".into()),
                    m.other_cpu,
                    m.rss_mib
                        .map(|r| format!("{r:.0}"))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            None => {
                let _ = write!(out, "{:62}", "");
            }
        }
        let _ = write!(out, "  {}", row.note);
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}
