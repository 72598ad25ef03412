//! `hookflow serve`: opens the store, starts the engine and delivery loops, serves the API.

use std::io::Write;
use std::sync::Arc;

use hookflow_store::postgres::PgStore;
use hookflow_store::sqlite::SqliteStore;
use hookflow_store::{Signal, Store};

use crate::app::{App, now_ms};
use crate::config::{ServeArgs, Settings};
use crate::ids::{hash_key, key_prefix, new_api_key};
use crate::tokens::Tokens;

/// Opens the database named by a URL, running migrations.
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        anyhow::bail!("unsupported database URL {url:?}: use sqlite://PATH or postgres://…")
    }
}

/// Creates a workspace (if needed) and a new API key for it; returns the key.
pub async fn new_key(store: &dyn Store, workspace: &str) -> anyhow::Result<String> {
    let workspace = store.ensure_workspace(workspace).await?;
    let key = new_api_key();
    store
        .create_api_key(
            &workspace.id,
            None,
            &hash_key(&key),
            &key_prefix(&key),
            now_ms(),
        )
        .await?;
    Ok(key)
}

/// Runs the server until Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::net::install_crypto_provider();
    let settings = Settings::resolve(args)?;
    let store = connect(&settings.database).await?;
    if store.workspace_count().await? == 0 {
        let key = new_key(store.as_ref(), "default").await?;
        println!("API key for workspace default: {key}");
    }
    let listener = tokio::net::TcpListener::bind(&settings.listen).await?;
    let addr = listener.local_addr()?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let tokens = Tokens::new(&store.server_key("tokens").await?);
    let metrics = crate::metrics::install()?;
    let app = Arc::new(App::new(store, settings, public_url, tokens, Some(metrics)));
    let signalled = app.clone();
    app.store
        .watch(Arc::new(move |signal| match signal {
            Signal::Work => signalled.work.notify_one(),
            Signal::Outbox => signalled.outbox.notify_one(),
            Signal::RunEnded(run_id) => signalled.waiters.wake(&run_id),
        }))
        .await?;
    tokio::spawn(crate::engine::run(app.clone()));
    tokio::spawn(crate::delivery::run(app.clone()));
    println!("hookflow listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, database = %app.settings.database, "hookflow started");
    axum::serve(listener, crate::api::router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
