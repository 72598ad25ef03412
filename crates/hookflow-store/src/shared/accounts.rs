//! Workspaces, API keys, secrets and server keys ([`crate::Accounts`]), and [`crate::Health`].

/// Implements [`crate::Accounts`] and [`crate::Health`] for `$store`.
macro_rules! impl_accounts {
    ($store:ident) => {
        const _: () = {
            use serde_json::{Map, Value};
            use sqlx::Row;

            use $crate::shared::{Backend as _, now_ms, rows};
            use $crate::{
                Accounts, ApiKey, Health, Millis, Page, Result, SecretMeta, StoreError,
                Workspace,
            };

            #[async_trait::async_trait]
            impl Health for $store {
                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(self.reader()).await?;
                    Ok(())
                }
            }

            #[async_trait::async_trait]
            impl Accounts for $store {
                async fn workspace_count(&self) -> Result<i64> {
                    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM workspaces")
                        .fetch_one(self.reader())
                        .await?)
                }

                async fn ensure_workspace(&self, name: &str) -> Result<Workspace> {
                    let mut tx = self.autocommit().await?;
                    let find = "SELECT id FROM workspaces WHERE name = $1";
                    let existing: Option<String> = sqlx::query_scalar(find)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let id = match existing {
                        Some(id) => id,
                        None => {
                            let id = format!("ws_{}", uuid::Uuid::now_v7().simple());
                            let inserted: Option<String> = sqlx::query_scalar(
                                "INSERT INTO workspaces (id, name, created_at) \
                                 VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING id",
                            )
                            .bind(&id)
                            .bind(name)
                            .bind(now_ms())
                            .fetch_optional(&mut *tx)
                            .await?;
                            match inserted {
                                Some(id) => id,
                                // Another node won the race: its row is committed, and this
                                // new statement sees it.
                                None => sqlx::query_scalar(find)
                                    .bind(name)
                                    .fetch_optional(&mut *tx)
                                    .await?
                                    .ok_or_else(|| {
                                        StoreError::Corrupt(format!("workspace {name:?} vanished"))
                                    })?,
                            }
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
                    let mut tx = self.autocommit().await?;
                    sqlx::query(
                        "INSERT INTO api_keys (id, workspace_id, name, key_hash, prefix, \
                         created_at) VALUES ($1, $2, $3, $4, $5, $6)",
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
                        "SELECT workspace_id FROM api_keys \
                         WHERE key_hash = $1 AND revoked_at IS NULL",
                    )
                    .bind(key_hash)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_api_keys(
                    &self,
                    workspace_id: &str,
                    page: &Page,
                ) -> Result<Vec<ApiKey>> {
                    self.workspace_page(
                        "SELECT id, name, prefix, created_at FROM api_keys \
                         WHERE workspace_id = $1 AND revoked_at IS NULL AND id < $2 \
                         ORDER BY id DESC LIMIT $3",
                        workspace_id,
                        page,
                        rows::api_key,
                    )
                    .await
                }

                async fn revoke_api_key(
                    &self,
                    workspace_id: &str,
                    id: &str,
                    now: Millis,
                ) -> Result<bool> {
                    let mut tx = self.autocommit().await?;
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
                    let mut tx = self.autocommit().await?;
                    sqlx::query(
                        "INSERT INTO secrets (workspace_id, name, value, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (workspace_id, name) \
                         DO UPDATE SET value = $3, updated_at = $4",
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
                    let mut tx = self.autocommit().await?;
                    let done =
                        sqlx::query("DELETE FROM secrets WHERE workspace_id = $1 AND name = $2")
                            .bind(workspace_id)
                            .bind(name)
                            .execute(&mut *tx)
                            .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn list_secrets(
                    &self,
                    workspace_id: &str,
                    page: &Page,
                ) -> Result<Vec<SecretMeta>> {
                    self.workspace_page(
                        "SELECT name, created_at, updated_at FROM secrets \
                         WHERE workspace_id = $1 AND name < $2 ORDER BY name DESC LIMIT $3",
                        workspace_id,
                        page,
                        rows::secret_meta,
                    )
                    .await
                }

                async fn secret_values(&self, workspace_id: &str) -> Result<Value> {
                    let rows =
                        sqlx::query("SELECT name, value FROM secrets WHERE workspace_id = $1")
                            .bind(workspace_id)
                            .fetch_all(self.reader())
                            .await?;
                    let mut map = Map::new();
                    for row in rows {
                        map.insert(row.try_get("name")?, Value::String(row.try_get("value")?));
                    }
                    Ok(Value::Object(map))
                }

                async fn server_key(&self, name: &str) -> Result<String> {
                    let mut tx = self.autocommit().await?;
                    // A concurrent first use on another node makes the insert wait for its
                    // commit, and the read that follows then sees the winner's key.
                    sqlx::query(
                        "INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind($crate::random_key())
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
            }
        };
    };
}
pub(crate) use impl_accounts;
