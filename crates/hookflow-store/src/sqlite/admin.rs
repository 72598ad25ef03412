//! Workspaces, keys, secrets, workflow versions and deployments.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::Row;

use super::SqliteStore;
use super::rows;
use crate::{
    Accounts, ApiKey, Definitions, Deployment, Health, Millis, Page, Result, SecretMeta,
    SignalHandler, Signals, StoreError, WorkflowSummary, WorkflowVersion, Workspace,
};

/// The upper bound used when a page has no cursor (sorts after every id and name).
pub(super) fn cursor(page: &Page) -> &str {
    page.cursor.as_deref().unwrap_or("\u{10FFFF}")
}

fn variants_json(deployment: &Deployment) -> String {
    serde_json::to_string(&deployment.variants).expect("variants serialize")
}

#[async_trait]
impl Signals for SqliteStore {
    /// One node per SQLite file: every wake-up is in-process, so there is nothing to watch.
    async fn watch(&self, _handler: SignalHandler) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Health for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn workspace_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM workspaces")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn ensure_workspace(&self, name: &str) -> Result<Workspace> {
        let mut tx = self.write().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM workspaces WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let id = match existing {
            Some(id) => id,
            None => {
                let id = format!("ws_{}", uuid::Uuid::now_v7().simple());
                sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&id)
                    .bind(name)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                id
            }
        };
        tx.commit().await?;
        Ok(Workspace {
            id,
            name: name.to_string(),
        })
    }

    async fn create_api_key(
        &self,
        workspace_id: &str,
        name: Option<&str>,
        key_hash: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<ApiKey> {
        let id = format!("key_{}", uuid::Uuid::now_v7().simple());
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, workspace_id, name, key_hash, prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(workspace_id)
        .bind(name)
        .bind(key_hash)
        .bind(prefix)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ApiKey {
            id,
            name: name.map(str::to_string),
            prefix: prefix.to_string(),
            created_at: now,
        })
    }

    async fn workspace_for_key(&self, key_hash: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT workspace_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn list_api_keys(&self, workspace_id: &str, page: &Page) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, created_at FROM api_keys \
             WHERE workspace_id = $1 AND revoked_at IS NULL AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(workspace_id)
        .bind(cursor(page))
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKey {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn revoke_api_key(&self, workspace_id: &str, id: &str, now: Millis) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE workspace_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(workspace_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_secret(
        &self,
        workspace_id: &str,
        name: &str,
        value: &str,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO secrets (workspace_id, name, value, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (workspace_id, name) DO UPDATE SET value = $3, updated_at = $4",
        )
        .bind(workspace_id)
        .bind(name)
        .bind(value)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM secrets WHERE workspace_id = $1 AND name = $2")
            .bind(workspace_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_secrets(&self, workspace_id: &str, page: &Page) -> Result<Vec<SecretMeta>> {
        let rows = sqlx::query(
            "SELECT name, created_at, updated_at FROM secrets \
             WHERE workspace_id = $1 AND name < $2 ORDER BY name DESC LIMIT $3",
        )
        .bind(workspace_id)
        .bind(cursor(page))
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretMeta {
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn server_key(&self, name: &str) -> Result<String> {
        let fresh = crate::random_key();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&fresh)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let value = sqlx::query_scalar("SELECT value FROM server_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(value)
    }

    async fn secret_values(&self, workspace_id: &str) -> Result<Value> {
        let rows = sqlx::query("SELECT name, value FROM secrets WHERE workspace_id = $1")
            .bind(workspace_id)
            .fetch_all(&self.reader)
            .await?;
        let mut map = Map::new();
        for row in rows {
            map.insert(row.try_get("name")?, Value::String(row.try_get("value")?));
        }
        Ok(Value::Object(map))
    }
}

fn workflow_version(row: &sqlx::sqlite::SqliteRow) -> Result<WorkflowVersion> {
    Ok(WorkflowVersion {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        definition: rows::json(row.try_get("definition")?)?,
        created_at: row.try_get("created_at")?,
    })
}

#[async_trait]
impl Definitions for SqliteStore {
    async fn create_workflow_version(
        &self,
        workspace_id: &str,
        name: &str,
        definition: &Value,
        now: Millis,
    ) -> Result<i64> {
        let mut tx = self.write().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO workflows (workspace_id, name, version, definition, created_at) \
             SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4 FROM workflows \
             WHERE workspace_id = $1 AND name = $2 RETURNING version",
        )
        .bind(workspace_id)
        .bind(name)
        .bind(definition.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn workflow_version(
        &self,
        workspace_id: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowVersion>> {
        let row = sqlx::query(
            "SELECT name, version, definition, created_at FROM workflows \
             WHERE workspace_id = $1 AND name = $2 AND ($3 IS NULL OR version = $3) \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(workspace_id)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(workflow_version).transpose()
    }

    async fn workflow_versions(
        &self,
        workspace_id: &str,
        name: &str,
    ) -> Result<Vec<WorkflowVersion>> {
        let rows = sqlx::query(
            "SELECT name, version, definition, created_at FROM workflows \
             WHERE workspace_id = $1 AND name = $2 ORDER BY version DESC",
        )
        .bind(workspace_id)
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(workflow_version).collect()
    }

    async fn list_workflows(
        &self,
        workspace_id: &str,
        page: &Page,
    ) -> Result<Vec<WorkflowSummary>> {
        let rows = sqlx::query(
            "SELECT w.name, w.version, w.definition, w.created_at FROM workflows w \
             WHERE w.workspace_id = $1 AND w.name < $2 AND w.version = \
               (SELECT MAX(version) FROM workflows v WHERE v.workspace_id = w.workspace_id AND v.name = w.name) \
             ORDER BY w.name DESC LIMIT $3",
        )
        .bind(workspace_id)
        .bind(cursor(page))
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let v = workflow_version(r)?;
                Ok(WorkflowSummary {
                    name: v.name,
                    latest_version: v.version,
                    definition: v.definition,
                    updated_at: v.created_at,
                })
            })
            .collect()
    }

    async fn create_deployment(&self, d: &Deployment) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "INSERT INTO deployments (id, workspace_id, name, workflow, variants, \
             concurrency_limit, secret, previous_secret, previous_secret_expires_at, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (workspace_id, name) DO NOTHING",
        )
        .bind(&d.id)
        .bind(&d.workspace_id)
        .bind(&d.name)
        .bind(&d.workflow)
        .bind(variants_json(d))
        .bind(d.concurrency_limit)
        .bind(&d.secret)
        .bind(&d.previous_secret)
        .bind(d.previous_secret_expires_at)
        .bind(d.created_at)
        .bind(d.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Duplicate(format!("deployment {:?}", d.name)));
        }
        Ok(())
    }

    async fn deployment(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<Deployment>> {
        let row = sqlx::query(
            "SELECT * FROM deployments WHERE workspace_id = $1 AND (id = $2 OR name = $2) \
             ORDER BY id = $2 DESC LIMIT 1",
        )
        .bind(workspace_id)
        .bind(id_or_name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::deployment).transpose()
    }

    async fn deployment_by_id(&self, id: &str) -> Result<Option<Deployment>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::deployment).transpose()
    }

    async fn list_deployments(&self, workspace_id: &str, page: &Page) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE workspace_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(workspace_id)
        .bind(cursor(page))
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::deployment).collect()
    }

    async fn update_deployment(&self, d: &Deployment) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE deployments SET variants = $1, concurrency_limit = $2, secret = $3, \
             previous_secret = $4, previous_secret_expires_at = $5, updated_at = $6 \
             WHERE id = $7 AND workspace_id = $8",
        )
        .bind(variants_json(d))
        .bind(d.concurrency_limit)
        .bind(&d.secret)
        .bind(&d.previous_secret)
        .bind(d.previous_secret_expires_at)
        .bind(d.updated_at)
        .bind(&d.id)
        .bind(&d.workspace_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The current time for rows whose time the caller does not pass.
pub(super) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or_default()
}
