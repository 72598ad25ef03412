//! Vacuuming the tables that hookflow churns, sooner than autovacuum would.
//!
//! Every claim, step outcome and delivery attempt updates or deletes rows of `jobs`,
//! `deliveries`, `step_executions` and `runs`. The old row versions, and their index entries,
//! stay until a vacuum removes them, and claims walk past them: with autovacuum off (as on
//! the development machine), a delivery claim took 19 ms on average after two minutes of
//! load, and the benchmark's end-to-end rates fell to 40 % of a fresh database's. Autovacuum,
//! when on, waits for a fifth of a table to be dead and naps a minute between rounds, which a
//! queue at thousands of rows a second outruns. So every node looks every few seconds at how many dead rows these tables
//! hold, and one node at a time (an advisory lock) vacuums each table past its threshold.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// How often a node looks at the tables.
const INTERVAL: Duration = Duration::from_secs(5);

/// The first key of the session-level advisory lock held while vacuuming (a space apart from
/// the transaction-scoped locks' spaces; see `dialect`).
const LOCK_SPACE: i32 = 3;

/// Each churned table, the dead rows it may hold before it is vacuumed, and the share of its
/// live rows it may hold on top: the queues' claims walk their dead index entries, so they are
/// vacuumed after a fixed count however large they are; the tables read by key, once a tenth
/// of them is dead (autovacuum's default waits for a fifth).
const TABLES: [(&str, i64, f64); 4] = [
    ("jobs", 1_000, 0.0),
    ("deliveries", 1_000, 0.0),
    ("step_executions", 10_000, 0.1),
    ("runs", 10_000, 0.1),
];

/// Starts the node's vacuuming task; it stops once the pool is closed.
pub(super) fn start(pool: PgPool) {
    tokio::spawn(async move {
        while !pool.is_closed() {
            tokio::time::sleep(INTERVAL).await;
            if let Err(e) = vacuum_dead(&pool).await {
                tracing::warn!(error = %e, "vacuuming hookflow's tables failed; trying again later");
            }
        }
    });
}

/// What a table needs, by the counts of its rows changed since its last vacuum and analyze.
#[derive(sqlx::FromRow)]
struct Due {
    table_name: String,
    needs_vacuum: bool,
    needs_analyze: bool,
}

impl Due {
    /// The statement that does it, for a table of [`TABLES`] only.
    fn statement(&self) -> Option<String> {
        let (table, ..) = TABLES.iter().find(|(name, ..)| *name == self.table_name)?;
        let verb = match (self.needs_vacuum, self.needs_analyze) {
            (true, true) => "VACUUM (ANALYZE)",
            (true, false) => "VACUUM",
            (false, _) => "ANALYZE",
        };
        Some(format!("{verb} {table}"))
    }
}

/// Vacuums the tables past their thresholds of dead rows, and analyzes those whose changes
/// since their last analyze, a minute ago or more, reach a tenth of their size (the planner's
/// estimates then lag, and autovacuum, which analyzes too, may be off), unless another node
/// is at it.
async fn vacuum_dead(pool: &PgPool) -> sqlx::Result<()> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.0).collect();
    let thresholds: Vec<i64> = TABLES.iter().map(|t| t.1).collect();
    let shares: Vec<f64> = TABLES.iter().map(|t| t.2).collect();
    let due: Vec<Due> = sqlx::query_as(
        "SELECT * FROM ( \
           SELECT s.relname::text AS table_name, \
             s.n_dead_tup >= t.threshold + t.share * s.n_live_tup AS needs_vacuum, \
             s.n_mod_since_analyze >= t.threshold + s.n_live_tup / 10 \
               AND coalesce(greatest(s.last_analyze, s.last_autoanalyze), '-infinity') \
                 < now() - interval '1 minute' AS needs_analyze \
           FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS t (name, threshold, share) \
           JOIN pg_stat_user_tables s \
             ON s.relname = t.name AND s.schemaname = current_schema()) AS counts \
         WHERE needs_vacuum OR needs_analyze",
    )
    .bind(&names)
    .bind(&thresholds)
    .bind(&shares)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
        .bind(LOCK_SPACE)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(());
    }
    let done = vacuum_locked(&mut conn, &due).await;
    if done.is_err() {
        // Closing the session releases its lock, however far the unlock got.
        let _ = conn.close().await;
    }
    done
}

/// Runs the statements `due` calls for, then releases the lock.
async fn vacuum_locked(conn: &mut PgConnection, due: &[Due]) -> sqlx::Result<()> {
    for statement in due.iter().filter_map(Due::statement) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("SELECT pg_advisory_unlock($1, 0)")
        .bind(LOCK_SPACE)
        .execute(conn)
        .await?;
    Ok(())
}
