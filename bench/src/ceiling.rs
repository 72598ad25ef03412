//! The naive design's ceiling: a bare axum endpoint that does one durable insert per request
//! (its own autocommit transaction) into the same kind of database hookflow uses. It runs as a
//! subprocess of the bench (`hookflow-bench ceiling-server`), like hookflow, so both meet the
//! same load generator under the same conditions.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// Connections of the PostgreSQL ceiling (hookflow's own pool size).
pub const PG_POOL: u32 = 16;

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

async fn open(url: &str) -> anyhow::Result<Db> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // One writer connection: SQLite serializes writes anyway.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS accepted (id TEXT PRIMARY KEY, body TEXT NOT NULL, \
             created_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Db::Sqlite(pool))
    } else {
        let pool = PgPoolOptions::new()
            .max_connections(PG_POOL)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS accepted (id TEXT PRIMARY KEY, body JSONB NOT NULL, \
             created_at BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Db::Postgres(pool))
    }
}

/// Parses the JSON body, inserts one row, answers 202 with its id.
async fn insert(State(db): State<Arc<Db>>, body: axum::body::Bytes) -> (StatusCode, String) {
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid JSON"}"#.into(),
        );
    };
    if !parsed.is_object() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"not an object"}"#.into(),
        );
    }
    let id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let text = parsed.to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let result = match db.as_ref() {
        Db::Sqlite(pool) => {
            sqlx::query("INSERT INTO accepted (id, body, created_at) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(&text)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ())
        }
        Db::Postgres(pool) => {
            sqlx::query("INSERT INTO accepted (id, body, created_at) VALUES ($1, $2::jsonb, $3)")
                .bind(&id)
                .bind(&text)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => (
            StatusCode::ACCEPTED,
            json!({ "request_id": id, "run_status": "running" }).to_string(),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

/// `hookflow-bench ceiling-server`: serves `POST /v1/insert` on 127.0.0.1 until killed.
pub async fn serve(database: &str) -> anyhow::Result<()> {
    let db = Arc::new(open(database).await?);
    let app = Router::new()
        .route("/v1/insert", post(insert))
        .with_state(db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
