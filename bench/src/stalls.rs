//! The slow moments of SQLite's writer as the server counts them on `/metrics`: its commits
//! (`hookflow_sqlite_commit_seconds`, checkpoints included) and its WAL flushes
//! (`hookflow_sqlite_wal_flush_seconds`), between two scrapes: how often a figure's writers
//! waited long for the writer or the disk.

use serde_json::{Value, json};

/// Commits and flushes slower than this are counted in a figure's note (seconds): the p99
/// latency the issue sets for a run at half the peak rate, which one such wait of the writer
/// alone would exceed for every run behind it.
const SLOW: f64 = 0.025;

/// Both histograms of SQLite's writer.
#[derive(Clone, Debug, PartialEq)]
pub struct Stalls {
    commits: Histogram,
    flushes: Histogram,
}

impl Stalls {
    /// Reads the server's histograms; `None` when it has none (PostgreSQL) or did not answer.
    pub async fn scrape(client: &reqwest::Client, base: &str, key: &str) -> Option<Self> {
        let text = client
            .get(format!("{base}/metrics"))
            .bearer_auth(key)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Option<Self> {
        Some(Self {
            commits: Histogram::parse(text, "hookflow_sqlite_commit_seconds")?,
            flushes: Histogram::parse(text, "hookflow_sqlite_wal_flush_seconds")?,
        })
    }

    /// What happened after `earlier` (a scrape of the same server).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            commits: self.commits.since(&earlier.commits),
            flushes: self.flushes.since(&earlier.flushes),
        }
    }

    pub fn json(&self) -> Value {
        json!({"commits": self.commits.json(), "wal_flushes": self.flushes.json()})
    }

    /// "2 commits > 25 ms (slowest ≤ 100 ms); 1 WAL flush > 25 ms (…)", when any was slow.
    pub fn note(&self) -> Option<String> {
        let notes: Vec<String> = [
            self.commits.note("commit", "commits"),
            self.flushes.note("WAL flush", "WAL flushes"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// A histogram's cumulative counts: `(upper bound in seconds, samples at most that long)`,
/// ascending, and the count of all samples.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    total: u64,
}

impl Histogram {
    /// The series of histogram `metric` in Prometheus text, if there is one.
    fn parse(text: &str, metric: &str) -> Option<Self> {
        let mut histogram = Self::default();
        let mut found = false;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            if let Some(n) = rest.strip_prefix("_count ") {
                histogram.total = n.trim().parse().ok()?;
                found = true;
            } else if let Some(bucket) = rest.strip_prefix("_bucket{le=\"") {
                let (le, count) = bucket.split_once("\"} ")?;
                if le != "+Inf" {
                    histogram
                        .buckets
                        .push((le.parse().ok()?, count.trim().parse().ok()?));
                }
            }
        }
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        found.then_some(histogram)
    }

    /// What was recorded after `earlier`.
    fn since(&self, earlier: &Self) -> Self {
        let before = |le: f64| {
            (earlier.buckets.iter())
                .find(|b| b.0 == le)
                .map_or(0, |b| b.1)
        };
        Self {
            buckets: (self.buckets.iter())
                .map(|&(le, n)| (le, n.saturating_sub(before(le))))
                .collect(),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// Samples not known to be at most `seconds`: those above the largest bucket bound that
    /// is not above `seconds` (all of them when `seconds` is below every bound).
    fn over(&self, seconds: f64) -> u64 {
        let within = (self.buckets.iter().rev())
            .find(|b| b.0 <= seconds)
            .map_or(0, |b| b.1);
        self.total.saturating_sub(within)
    }

    /// The smallest bucket bound that holds every sample (`None`: some were longer than all).
    fn slowest_within(&self) -> Option<f64> {
        (self.buckets.iter())
            .find(|b| b.1 == self.total)
            .map(|b| b.0)
    }

    fn json(&self) -> Value {
        json!({
            "count": self.total,
            "slow": self.over(SLOW),
            "slow_above_s": SLOW,
            "slowest_within_s": self.slowest_within(),
            "buckets": self.buckets.iter().map(|(le, n)| json!([le, n])).collect::<Vec<_>>(),
        })
    }

    /// "3 WAL flushes > 25 ms (slowest ≤ 250 ms)", when any was slow.
    fn note(&self, one: &str, many: &str) -> Option<String> {
        let slow = self.over(SLOW);
        (slow > 0).then(|| {
            let slowest = match self.slowest_within() {
                Some(s) => format!("≤ {:.0} ms", s * 1000.0),
                None => format!(
                    "> {:.0} ms",
                    self.buckets.last().map_or(0.0, |b| b.0 * 1000.0)
                ),
            };
            let what = if slow == 1 { one } else { many };
            format!(
                "{slow} {what} > {:.0} ms (slowest {slowest})",
                SLOW * 1000.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITS: &str = "hookflow_sqlite_commit_seconds";
    const FLUSHES: &str = "hookflow_sqlite_wal_flush_seconds";

    /// Prometheus text of histogram `metric` with buckets 10, 25, 100 and 250 ms.
    fn exposition(metric: &str, counts: [u64; 4], total: u64) -> String {
        let les = ["0.01", "0.025", "0.1", "0.25"];
        let mut text = format!("# TYPE {metric} histogram\n");
        for (le, n) in les.iter().zip(counts) {
            text += &format!("{metric}_bucket{{le=\"{le}\"}} {n}\n");
        }
        text + &format!("{metric}_bucket{{le=\"+Inf\"}} {total}\n{metric}_count {total}\n")
    }

    fn stalls(commits: ([u64; 4], u64), flushes: ([u64; 4], u64)) -> Stalls {
        let text =
            exposition(COMMITS, commits.0, commits.1) + &exposition(FLUSHES, flushes.0, flushes.1);
        Stalls::parse(&text).expect("both histograms")
    }

    #[test]
    fn counts_the_slow_ones_between_two_scrapes() {
        let before = stalls(([90, 100, 100, 100], 100), ([50, 50, 50, 50], 50));
        let after = stalls(([180, 195, 197, 200], 200), ([99, 100, 100, 100], 100));
        let between = after.since(&before);
        assert_eq!(between.commits.total, 100);
        assert_eq!(between.commits.over(0.025), 5);
        assert_eq!(between.commits.slowest_within(), Some(0.25));
        assert_eq!(between.flushes.over(0.025), 0);
        assert_eq!(
            between.note().as_deref(),
            Some("5 commits > 25 ms (slowest ≤ 250 ms)")
        );
        assert_eq!(between.json()["commits"]["slow"], 5);
        // A bound that is not a bucket's counts from the bucket below it.
        assert_eq!(between.commits.over(0.03), 5);
        assert_eq!(between.commits.over(0.001), 100);
        assert_eq!(between.json()["wal_flushes"]["count"], 50);
    }

    #[test]
    fn samples_past_every_bound_and_quiet_windows() {
        let before = stalls(([0, 0, 0, 0], 0), ([0, 0, 0, 0], 0));
        let after = stalls(([1, 1, 2, 2], 2), ([9, 10, 10, 10], 11));
        assert_eq!(
            after.since(&before).note().as_deref(),
            Some("1 commit > 25 ms (slowest ≤ 100 ms); 1 WAL flush > 25 ms (slowest > 250 ms)")
        );
        assert_eq!(after.since(&after).note(), None);
        let one = exposition(FLUSHES, [1, 1, 1, 1], 1);
        assert_eq!(
            Stalls::parse(&one),
            None,
            "the commits' histogram is missing"
        );
    }
}
