//! Child processes (hookflow, the ceiling server) and what /proc tells about them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStdout;

/// A child process that dies with us: SIGKILL when dropped (also while unwinding a panic), and
/// `PR_SET_PDEATHSIG` so the kernel kills it even if this process is killed outright.
pub struct ChildGuard {
    name: String,
    child: tokio::process::Child,
    pid: u32,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed, stdout piped, stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: std::process::Command, log: &Path) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_string(),
            child,
            pid,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited unexpectedly: {status}", self.name),
        }
    }

    /// Kills the process and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Reads stdout lines until `pred` has returned `Some` for every wanted line (the last one
/// ends the wait), then keeps draining stdout in the background so the child never blocks.
pub async fn read_startup(
    stdout: ChildStdout,
    timeout: Duration,
    mut on_line: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + timeout;
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .context("timed out waiting for the server to start")??;
        let Some(line) = line else {
            bail!("the server closed its stdout before it was ready");
        };
        if on_line(&line) {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

/// Builds the release hookflow binary with cargo and returns its path.
pub fn build_hookflow(workspace: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building hookflow (cargo build --release -p hookflow)…");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "hookflow",
            "--bin",
            "hookflow",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p hookflow failed");
    }
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "hookflow"
            && let Some(exe) = msg["executable"].as_str()
        {
            found = Some(PathBuf::from(exe));
        }
    }
    found.context("cargo did not report the hookflow executable")
}

/// Clock ticks per second for /proc CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process, in ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid … utime(11) stime(12).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Names of the PostgreSQL databases this run created: their backends count as ours.
static OUR_DATABASES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Counts the backends of database `name` in the `pg` CPU column from now on.
pub fn track_postgres_database(name: &str) {
    OUR_DATABASES.lock().unwrap().push(name.to_string());
}

/// CPU ticks per thread of a process: tid → (thread name, ticks).
fn thread_ticks(pid: &str) -> HashMap<u32, (String, u64)> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let task = format!("{pid}/task/{tid}");
        let name = std::fs::read_to_string(format!("/proc/{task}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        if let Some(t) = process_ticks(&task) {
            threads.insert(tid, (name, t));
        }
    }
    threads
}

/// Write syscalls and bytes sent to storage by a process, from /proc/PID/io.
fn process_io(pid: &str) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("syscw:")?, field("write_bytes:")?))
}

/// CPU ticks and bytes written per pid of the PostgreSQL processes that work for us: the
/// server's own processes (postmaster, WAL writer, checkpointer, …) and the backends connected
/// to our databases, not other clients' backends.
fn postgres_counters() -> HashMap<u32, (u64, u64)> {
    let mut counters = HashMap::new();
    let ours = OUR_DATABASES.lock().unwrap().clone();
    if ours.is_empty() {
        return counters;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return counters;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let is_pg = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == "postgres")
            .unwrap_or(false);
        if !is_pg {
            continue;
        }
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Client backends show `user database host(port) state` or `[local]`.
        let client = cmdline.contains('(') || cmdline.contains("[local]");
        let pid_s = pid.to_string();
        if (!client || ours.iter().any(|db| cmdline.contains(db.as_str())))
            && let Some(t) = process_ticks(&pid_s)
        {
            let written = process_io(&pid_s).map(|(_, bytes)| bytes).unwrap_or(0);
            counters.insert(pid, (t, written));
        }
    }
    counters
}

/// (busy, total) ticks of the whole machine, all cores.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process now (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process so far (VmHWM), KiB.
pub fn rss_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A point-in-time reading of CPU and I/O counters.
#[derive(Clone)]
pub struct CpuSnapshot {
    at: Instant,
    server: u64,
    /// The server's write syscalls and bytes written to storage.
    server_io: (u64, u64),
    server_threads: HashMap<u32, (String, u64)>,
    bench: u64,
    /// Per pid: (CPU ticks, bytes written).
    postgres: HashMap<u32, (u64, u64)>,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>) -> Self {
        let (machine_busy, machine_total) = machine_ticks();
        let server_pid = server_pid.map(|p| p.to_string());
        Self {
            at: Instant::now(),
            server: server_pid.as_deref().and_then(process_ticks).unwrap_or(0),
            server_io: server_pid.as_deref().and_then(process_io).unwrap_or((0, 0)),
            server_threads: server_pid.as_deref().map(thread_ticks).unwrap_or_default(),
            bench: process_ticks("self").unwrap_or(0),
            postgres: postgres_counters(),
            machine_busy,
            machine_total,
        }
    }

    /// CPU used between `self` and `later`, in percent of one core (200 % = both cores).
    pub fn usage(&self, later: &CpuSnapshot, cores: usize) -> CpuUsage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let tick = clock_ticks();
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / tick / secs * 100.0;
        let machine_total = later.machine_total.saturating_sub(self.machine_total) as f64;
        let machine_busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        let machine = if machine_total > 0.0 {
            machine_busy / machine_total * 100.0 * cores as f64
        } else {
            0.0
        };
        let server = pct(self.server, later.server);
        let bench = pct(self.bench, later.bench);
        // Per process, so a backend that exits in between does not make the sum go down.
        let (postgres_ticks, postgres_written) = later
            .postgres
            .iter()
            .map(|(pid, (t, w))| {
                let (t0, w0) = self.postgres.get(pid).copied().unwrap_or((0, 0));
                (t.saturating_sub(t0), w.saturating_sub(w0))
            })
            .fold((0, 0), |(a, b), (t, w)| (a + t, b + w));
        let postgres = pct(0, postgres_ticks);
        // Server threads grouped by name (tokio workers, SQLite connection threads, …).
        let mut groups: HashMap<String, ThreadGroup> = HashMap::new();
        for (tid, (name, t)) in &later.server_threads {
            let before = self.server_threads.get(tid).map(|(_, t)| *t).unwrap_or(0);
            let used = pct(before, *t);
            let g = groups.entry(name.clone()).or_insert_with(|| ThreadGroup {
                name: name.clone(),
                ..ThreadGroup::default()
            });
            g.threads += 1;
            g.pct += used;
            g.busiest_pct = g.busiest_pct.max(used);
        }
        let mut server_threads: Vec<ThreadGroup> = groups.into_values().collect();
        server_threads.sort_by(|a, b| b.pct.total_cmp(&a.pct));
        CpuUsage {
            server,
            bench,
            postgres,
            machine,
            other: (machine - server - bench - postgres).max(0.0),
            server_write_syscalls: later.server_io.0.saturating_sub(self.server_io.0),
            server_write_bytes: later.server_io.1.saturating_sub(self.server_io.1),
            postgres_write_bytes: postgres_written,
            server_threads,
        }
    }
}

/// Server threads of one name over a phase, percent of one core.
#[derive(Clone, Debug, Default)]
pub struct ThreadGroup {
    pub name: String,
    pub threads: usize,
    pub pct: f64,
    /// The busiest single thread: near 100% means a serial bottleneck.
    pub busiest_pct: f64,
}

/// CPU use over a phase (percent of one core), and what was written in it.
#[derive(Clone, Debug, Default)]
pub struct CpuUsage {
    pub server: f64,
    pub bench: f64,
    pub postgres: f64,
    pub machine: f64,
    pub other: f64,
    pub server_write_syscalls: u64,
    pub server_write_bytes: u64,
    pub postgres_write_bytes: u64,
    pub server_threads: Vec<ThreadGroup>,
}

impl CpuUsage {
    /// `ops`: requests or runs completed in the same window, to give per-operation figures.
    pub fn json(&self, ops: u64) -> serde_json::Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        let per_op = |x: f64| (ops > 0).then(|| (x / ops as f64 * 100.0).round() / 100.0);
        serde_json::json!({
            "server_pct": r(self.server),
            "load_generator_pct": r(self.bench),
            "postgres_pct": r(self.postgres),
            "machine_busy_pct": r(self.machine),
            "other_pct": r(self.other),
            "server_write_syscalls_per_op": per_op(self.server_write_syscalls as f64),
            "server_kib_written_per_op": per_op(self.server_write_bytes as f64 / 1024.0),
            "postgres_kib_written_per_op": per_op(self.postgres_write_bytes as f64 / 1024.0),
            "server_threads": self
                .server_threads
                .iter()
                .filter(|g| g.pct >= 0.5)
                .map(|g| serde_json::json!({
                    "name": g.name,
                    "threads": g.threads,
                    "pct": r(g.pct),
                    "busiest_thread_pct": r(g.busiest_pct),
                }))
                .collect::<Vec<_>>(),
        })
    }
}
