//! Reading a workspace's rows one page at a time.

/// Adds `workspace_page` to `$store`.
macro_rules! impl_paging {
    ($store:ident) => {
        const _: () = {
            use sqlx::Database;

            use $crate::shared::{Backend as _, cursor};
            use $crate::{Page, Result};

            /// A result row of this backend.
            type DbRow = <<$store as $crate::shared::Backend>::Db as Database>::Row;

            impl $store {
                /// Runs `sql` (`$1` workspace, `$2` cursor, `$3` limit) on a reader and maps
                /// its rows.
                async fn workspace_page<T>(
                    &self,
                    sql: &'static str,
                    workspace_id: &str,
                    page: &Page,
                    map: impl Fn(&DbRow) -> Result<T> + Send,
                ) -> Result<Vec<T>> {
                    let rows = sqlx::query(sql)
                        .bind(workspace_id)
                        .bind(cursor(page))
                        .bind(page.limit)
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(map).collect()
                }
            }
        };
    };
}
pub(crate) use impl_paging;
