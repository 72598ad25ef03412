//! Several statements with their parameters, sent as one multi-statement query: SQLite runs
//! them in one round trip to its connection's thread.

use sqlx::error::BoxDynError;
use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::{Arguments, Encode, Type};

use crate::Result;

/// SQL built piece by piece, parameters numbered in the order they are added.
pub(crate) struct Script {
    sql: String,
    args: SqliteArguments,
    error: Option<BoxDynError>,
}

impl Script {
    /// Starts with `sql`, whose parameters are bound next, in order (`$1`, `$2`…).
    pub(crate) fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_string(),
            args: SqliteArguments::default(),
            error: None,
        }
    }

    /// Binds the next parameter of the SQL so far.
    pub(crate) fn bind<'t, T: Encode<'t, Sqlite> + Type<Sqlite>>(mut self, value: T) -> Self {
        self.param(value);
        self
    }

    /// Adds a parameter and returns its placeholder, to be written into the SQL.
    pub(crate) fn param<'t, T: Encode<'t, Sqlite> + Type<Sqlite>>(&mut self, value: T) -> String {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        format!("${}", self.args.len())
    }

    /// Appends a statement whose parameters are numbered on their own from `$1` (a shared SQL
    /// constant), renumbered to follow the parameters bound so far; bind them next, in order.
    /// Every `$` followed by digits is taken for a parameter: the SQL must hold none in a
    /// literal.
    pub(crate) fn numbered(mut self, sql: &str) -> Self {
        let offset = self.args.len();
        let mut renumbered = String::with_capacity(sql.len() + 16);
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            renumbered.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            match rest[..digits].parse::<usize>() {
                Ok(n) => renumbered.push_str(&(n + offset).to_string()),
                Err(_) => renumbered.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        renumbered.push_str(rest);
        self.statement(&renumbered);
        self
    }

    /// Appends a statement.
    pub(crate) fn statement(&mut self, sql: &str) {
        if !self.sql.is_empty() {
            self.sql.push_str("; ");
        }
        self.sql.push_str(sql);
    }

    /// Whether no statement was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.sql.is_empty()
    }

    /// The SQL and its parameters (an error if a value could not be encoded).
    pub(crate) fn into_parts(self) -> Result<(sqlx::AssertSqlSafe<String>, SqliteArguments)> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e).into()),
            None => Ok((sqlx::AssertSqlSafe(self.sql), self.args)),
        }
    }

    /// The query to run (an error if a value could not be encoded).
    pub(crate) fn query(self) -> Result<sqlx::query::Query<'static, Sqlite, SqliteArguments>> {
        let (sql, args) = self.into_parts()?;
        Ok(sqlx::query_with(sql, args))
    }
}

#[cfg(test)]
mod tests {
    use super::Script;

    #[test]
    fn numbered_statements_follow_the_parameters_before_them() {
        let script = Script::new("SELECT $1")
            .bind(1)
            .numbered("INSERT INTO t VALUES ($1, $2, '$x'); UPDATE t SET a = $10")
            .numbered("DELETE FROM t WHERE a = $1");
        assert_eq!(
            script.sql,
            "SELECT $1; INSERT INTO t VALUES ($2, $3, '$x'); UPDATE t SET a = $11; \
             DELETE FROM t WHERE a = $2"
        );
    }
}
