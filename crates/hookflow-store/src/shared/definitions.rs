//! Workflow versions and deployments ([`crate::Definitions`]).

/// Implements [`crate::Definitions`] for `$store`.
macro_rules! impl_definitions {
    ($store:ident) => {
        const _: () = {
            use serde_json::Value;

            use $crate::shared::{Backend as _, LockSpace, rows};
            use $crate::{
                Definitions, Deployment, Millis, Page, Result, StoreError, WorkflowSummary,
                WorkflowVersion,
            };

            fn variants_json(deployment: &Deployment) -> String {
                serde_json::to_string(&deployment.variants).expect("variants serialize")
            }

            #[async_trait::async_trait]
            impl Definitions for $store {
                async fn create_workflow_version(
                    &self,
                    workspace_id: &str,
                    name: &str,
                    definition: &Value,
                    now: Millis,
                ) -> Result<i64> {
                    let mut tx = self.begin().await?;
                    // Two nodes saving the same workflow at once would both compute MAX + 1.
                    let key = format!("{workspace_id}/{name}");
                    Self::lock(&mut tx, LockSpace::WorkflowVersion, &key).await?;
                    let version: i64 = sqlx::query_scalar(
                        "INSERT INTO workflows (workspace_id, name, version, definition, \
                         created_at) SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4 \
                         FROM workflows WHERE workspace_id = $1 AND name = $2 RETURNING version",
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
                         WHERE workspace_id = $1 AND name = $2 \
                         AND (CAST($3 AS BIGINT) IS NULL OR version = $3) \
                         ORDER BY version DESC LIMIT 1",
                    )
                    .bind(workspace_id)
                    .bind(name)
                    .bind(version)
                    .fetch_optional(self.reader())
                    .await?;
                    row.as_ref().map(rows::workflow_version).transpose()
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
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter().map(rows::workflow_version).collect()
                }

                async fn list_workflows(
                    &self,
                    workspace_id: &str,
                    page: &Page,
                ) -> Result<Vec<WorkflowSummary>> {
                    let latest = |row: &_| {
                        let v = rows::workflow_version(row)?;
                        Ok(WorkflowSummary {
                            name: v.name,
                            latest_version: v.version,
                            definition: v.definition,
                            updated_at: v.created_at,
                        })
                    };
                    self.workspace_page(Self::LIST_WORKFLOWS, workspace_id, page, latest)
                        .await
                }

                async fn create_deployment(&self, d: &Deployment) -> Result<()> {
                    let mut tx = self.autocommit().await?;
                    let done = sqlx::query(
                        "INSERT INTO deployments (id, workspace_id, name, workflow, variants, \
                         concurrency_limit, secret, previous_secret, previous_secret_expires_at, \
                         created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
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

                async fn deployment(
                    &self,
                    workspace_id: &str,
                    id_or_name: &str,
                ) -> Result<Option<Deployment>> {
                    let row = sqlx::query(
                        "SELECT * FROM deployments \
                         WHERE workspace_id = $1 AND (id = $2 OR name = $2) \
                         ORDER BY id = $2 DESC LIMIT 1",
                    )
                    .bind(workspace_id)
                    .bind(id_or_name)
                    .fetch_optional(self.reader())
                    .await?;
                    row.as_ref().map(rows::deployment).transpose()
                }

                async fn deployment_by_id(&self, id: &str) -> Result<Option<Deployment>> {
                    let row = sqlx::query("SELECT * FROM deployments WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                    row.as_ref().map(rows::deployment).transpose()
                }

                async fn list_deployments(
                    &self,
                    workspace_id: &str,
                    page: &Page,
                ) -> Result<Vec<Deployment>> {
                    self.workspace_page(
                        "SELECT * FROM deployments WHERE workspace_id = $1 AND id < $2 \
                         ORDER BY id DESC LIMIT $3",
                        workspace_id,
                        page,
                        rows::deployment,
                    )
                    .await
                }

                async fn update_deployment(&self, d: &Deployment) -> Result<()> {
                    let mut tx = self.autocommit().await?;
                    sqlx::query(
                        "UPDATE deployments SET variants = $1, concurrency_limit = $2, \
                         secret = $3, previous_secret = $4, previous_secret_expires_at = $5, \
                         updated_at = $6 WHERE id = $7 AND workspace_id = $8",
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
        };
    };
}
pub(crate) use impl_definitions;
