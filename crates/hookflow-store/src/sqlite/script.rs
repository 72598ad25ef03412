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
