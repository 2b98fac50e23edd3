//! `type = "sql"`: the result of a query on PostgreSQL or SQLite, as CSV or JSON Lines.
//!
//! The rows stream from the database as it sends them and are encoded a chunk at a time; no
//! more than a few chunks are ever held. Values from the run (`params`) are bound as query
//! parameters (`$1`, `$2`, … on PostgreSQL, `?1`, `?2`, … on SQLite), never pasted into
//! the text.
//!
//! On PostgreSQL, CSV without parameters is `COPY (query) TO STDOUT (FORMAT csv, HEADER)`:
//! the server writes the CSV, exactly as `psql \copy` does. With parameters (which COPY
//! cannot take) the server formats each column with its type's output function, as COPY
//! does (`format('%s', q."col")`, NULL kept), so values read the same. JSON Lines are the server's `row_to_json` of each row, numbers and booleans
//! kept as JSON's own. On SQLite each value is written as what it holds: an integer, a real,
//! text, a blob (hex, `\x…`) or NULL (an empty CSV field, JSON `null`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sqlx::{
    Column as _, Connection as _, Executor as _, Row as _, Statement as _, TypeInfo as _,
    ValueRef as _,
};
use tokio::sync::mpsc;

use super::pages::{PageEnd, PageLog};
use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{ConfigDuration, KeyPath, Problems, Secret, SecretField, keys};
use crate::{CHUNK_SIZE, RunContext};

/// Settings of a `sql` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The database: `postgres://…` or `sqlite://PATH` (`url`, `url_env` or `url_file`, as
    /// it usually holds a password).
    #[serde(flatten)]
    pub url: SecretField<keys::Url>,
    /// The query; one statement that returns rows.
    pub query: String,
    /// Values of the run bound to the query's parameters, in order: `"scheduled"` (the
    /// slot, a timestamp with time zone), `"scheduled_date"` (its date in the job's time
    /// zone), `"job"`, `"run_id"`.
    #[serde(default)]
    pub params: Vec<SqlParam>,
    /// `"csv"` (RFC 4180 with a header line, the default) or `"jsonl"` (one JSON object a
    /// row).
    #[serde(default)]
    pub format: SqlFormat,
    /// How long connecting may take (default `"30s"`).
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// A column of the query that orders its rows uniquely (`"id"`): the rows are read in
    /// pages ordered by it, and a retry continues after the last key the writers hold.
    #[serde(default)]
    pub resume_key: Option<String>,
    /// Rows per page with `resume_key` (default 10,000).
    #[serde(default)]
    pub page_rows: Option<u64>,
}

/// A value of the run bound to a query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlParam {
    /// The scheduled time (the slot).
    Scheduled,
    /// The scheduled time's date in the job's time zone.
    ScheduledDate,
    /// The job's name.
    Job,
    /// The run's id.
    RunId,
}

/// `format`: how rows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlFormat {
    /// RFC 4180 CSV with a header line.
    #[default]
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    Sqlite,
}

fn engine(url: &str) -> Option<Engine> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Engine::Postgres)
    } else if url.starts_with("sqlite:") {
        Some(Engine::Sqlite)
    } else {
        None
    }
}

const BAD_URL: &str = "must be a postgres://… or sqlite://PATH URL";

impl SourceSettings for SqlConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        self.url.validate_required(at, problems);
        if let Some(crate::settings::SecretRef::Inline(url)) = self.url.source()
            && engine(&url).is_none()
        {
            problems.add(at.key("url"), BAD_URL);
        }
        if self.query.trim().is_empty() {
            problems.add(at.key("query"), "must not be empty");
        }
        if self.connect_timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("connect_timeout"), "must be longer than zero");
        }
        if self.resume_key.as_deref().is_some_and(str::is_empty) {
            problems.add(at.key("resume_key"), "must name a column");
        }
        if self.page_rows == Some(0) {
            problems.add(at.key("page_rows"), "must be at least 1");
        }
        if self.page_rows.is_some() && self.resume_key.is_none() {
            problems.add(at.key("page_rows"), "only applies with resume_key");
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let url = self.url.resolve_required(&env.base_dir)?;
        let Some(engine) = engine(url.expose()) else {
            return Err(DeliveryError::new(
                ErrorKind::Config,
                format!("{} {BAD_URL}", self.url.given_key()),
            ));
        };
        // A relative SQLite path is the job file's directory's, as every other path.
        let url = match engine {
            Engine::Sqlite => {
                let path = url
                    .expose()
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let (path, options) = path.split_once('?').unwrap_or((path, ""));
                let joined = env.base_dir.join(path);
                Secret::new(match options {
                    "" => format!("sqlite://{}", joined.display()),
                    _ => format!("sqlite://{}?{options}", joined.display()),
                })
            }
            Engine::Postgres => url,
        };
        Ok(Arc::new(SqlSource {
            settings: self.clone(),
            url,
            engine,
            connect_timeout: self
                .connect_timeout
                .map_or(Duration::from_secs(30), ConfigDuration::get),
        }))
    }
}

/// A source that streams a query's rows.
#[derive(Debug, Clone)]
pub struct SqlSource {
    settings: SqlConfig,
    url: Secret,
    engine: Engine,
    connect_timeout: Duration,
}

/// A failed database step: a refused login is `auth`, a connection failure `network`,
/// anything the database says about the query (syntax, a missing table) `rejected`.
fn sql_error(action: &str, err: sqlx::Error) -> DeliveryError {
    let kind = match &err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_authorization_specification, invalid_password
            Some("28000" | "28P01") => ErrorKind::Auth,
            // connection_exception, admin_shutdown, cannot_connect_now, too_many_connections
            Some(code) if code.starts_with("08") || code == "57P01" || code == "57P03" || code == "53300" => {
                ErrorKind::Network
            }
            _ => ErrorKind::Rejected,
        },
        sqlx::Error::Io(io) => ErrorKind::of_io(io),
        sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => {
            ErrorKind::Network
        }
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        _ => ErrorKind::Rejected,
    };
    // sqlx's messages name the server and the problem, never the URL's password.
    DeliveryError::new(kind, format!("{action}: {err}"))
}

/// A PostgreSQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Encodes rows into chunks of about [`CHUNK_SIZE`] and sends them; `false` once the reader
/// is gone (the run ended), so the query can stop.
struct Chunks {
    buffer: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Chunks {
    async fn flush_if_full(&mut self) -> bool {
        if self.buffer.len() < CHUNK_SIZE {
            return true;
        }
        self.flush().await
    }

    async fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_SIZE + CHUNK_SIZE / 4),
        ));
        self.tx.send(Ok(chunk)).await.is_ok()
    }

    async fn fail(&mut self, err: DeliveryError) {
        let _ = self.tx.send(Err(err.into_io())).await;
    }
}

/// One CSV record of `fields` appended to `out`, as PostgreSQL's COPY writes CSV: a field
/// is quoted when it holds a comma, a quote, a line break or is empty text, quotes doubled;
/// NULL (`None`) is an empty, unquoted field; lines end in `\n`.
fn csv_record<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = Option<&'a str>>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Some(text) = field else {
            continue;
        };
        if text.is_empty() || text.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            for byte in text.bytes() {
                if byte == b'"' {
                    out.push(b'"');
                }
                out.push(byte);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.push(b'\n');
}

impl SqlSource {
    fn what(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "PostgreSQL",
            Engine::Sqlite => "SQLite",
        }
    }

    /// Runs the query, sending its encoded rows to `out`.
    async fn produce(
        &self,
        ctx: &RunContext,
        out: &mut Chunks,
        paging: Option<Paging>,
    ) -> Result<(), DeliveryError> {
        let connect = format!("connect to {}", self.what());
        match self.engine {
            Engine::Postgres => {
                let conn = tokio::time::timeout(
                    self.connect_timeout,
                    sqlx::PgConnection::connect(self.url.expose()),
                )
                .await
                .map_err(|_| DeliveryError::new(ErrorKind::Timeout, format!("{connect}: no answer")))?
                .map_err(|err| sql_error(&connect, err))?;
                self.postgres(conn, ctx, out, paging).await
            }
            Engine::Sqlite => {
                use std::str::FromStr as _;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(self.url.expose())
                    .map_err(|err| sql_error(&connect, err))?
                    .read_only(true)
                    .create_if_missing(false);
                let conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .map_err(|err| sql_error(&connect, err))?;
                self.sqlite(conn, ctx, out, paging).await
            }
        }
    }

    async fn postgres(
        &self,
        mut conn: sqlx::PgConnection,
        ctx: &RunContext,
        out: &mut Chunks,
        paging: Option<Paging>,
    ) -> Result<(), DeliveryError> {
        let query = self.settings.query.trim().trim_end_matches(';');
        let run = "run the query";
        if self.settings.format == SqlFormat::Csv
            && self.settings.params.is_empty()
            && paging.is_none()
        {
            let copy = format!("COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)");
            let mut stream = conn
                .copy_out_raw(&copy)
                .await
                .map_err(|err| sql_error(run, err))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|err| sql_error(run, err))?;
                out.buffer.extend_from_slice(&chunk);
                if !out.flush_if_full().await {
                    return Ok(());
                }
            }
            return Ok(());
        }
        let statement = (&mut conn)
            .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(query)))
            .await
            .map_err(|err| sql_error(run, err))?;
        let columns: Vec<(String, String)> = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let mut selected = match self.settings.format {
            SqlFormat::Jsonl => "row_to_json(q)::text".to_owned(),
            SqlFormat::Csv => {
                let mut seen = std::collections::HashSet::new();
                if let Some(twice) = names.iter().find(|name| !seen.insert(**name)) {
                    return Err(DeliveryError::new(
                        ErrorKind::Rejected,
                        format!("the query returns two columns named {twice}: give them distinct names (AS …) for the CSV header"),
                    ));
                }
                let casts: Vec<String> = names
                    .iter()
                    .map(|name| {
                        // The type's own output function, as COPY writes it (a cast to
                        // text differs for some: boolean `true`, not `t`).
                        let column = format!("q.{}", quoted(name));
                        format!("CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END")
                    })
                    .collect();
                casts.join(", ")
            }
        };
        let mut tail = String::new();
        if let Some(paging) = &paging {
            let key = &paging.key;
            let Some((_, key_type)) = columns.iter().find(|(name, _)| name == key) else {
                return Err(no_key_column(key, &names));
            };
            if !key_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(DeliveryError::new(
                    ErrorKind::Rejected,
                    format!("resume_key {key} is of type {key_type}, which ferry cannot compare"),
                ));
            }
            let column = format!("q.{}", quoted(key));
            let param = self.settings.params.len() + 1;
            selected.push_str(&format!(", {column}::text"));
            tail = format!(
                " WHERE (${param}::text IS NULL OR {column} > ${param}::text::{key_type}) ORDER BY {column} LIMIT {}",
                paging.rows
            );
        }
        let wrapped = format!("SELECT {selected} FROM ({query}) AS q{tail}");
        let mut page = paging.map(Paging::start);
        if self.settings.format == SqlFormat::Csv && page.as_ref().is_none_or(|p| p.at.bytes == 0)
        {
            csv_record(&mut out.buffer, names.iter().map(|n| Some(*n)));
        }
        loop {
            // The query is the job file's, as its operator wrote it; the run's values are
            // bound.
            let mut bound = bind(
                sqlx::query(sqlx::AssertSqlSafe(wrapped.as_str())),
                &self.settings.params,
                ctx,
            );
            if let Some(page) = &page {
                bound = bound.bind(page.at.next.key.as_ref().map(key_text));
            }
            let mut rows = bound.fetch(&mut conn);
            let (mut count, mut last) = (0u64, None);
            while let Some(row) = rows.try_next().await.map_err(|err| sql_error(run, err))? {
                let fields = row.len() - usize::from(page.is_some());
                match self.settings.format {
                    SqlFormat::Jsonl => {
                        let line: String = row.try_get(0).map_err(|err| sql_error(run, err))?;
                        out.buffer.extend_from_slice(line.as_bytes());
                        out.buffer.push(b'\n');
                    }
                    SqlFormat::Csv => {
                        let mut values = Vec::with_capacity(fields);
                        for i in 0..fields {
                            let value: Option<String> =
                                row.try_get(i).map_err(|err| sql_error(run, err))?;
                            values.push(value);
                        }
                        csv_record(&mut out.buffer, values.iter().map(|f| f.as_deref()));
                    }
                }
                if page.is_some() {
                    count += 1;
                    last = row
                        .try_get::<Option<String>, _>(fields)
                        .map_err(|err| sql_error(run, err))?
                        .map(serde_json::Value::String);
                } else if !out.flush_if_full().await {
                    return Ok(());
                }
            }
            drop(rows);
            let Some(current) = &mut page else {
                return Ok(());
            };
            if !current.end(ctx, out, count, last).await {
                return Ok(());
            }
        }
    }

    async fn sqlite(
        &self,
        mut conn: sqlx::SqliteConnection,
        ctx: &RunContext,
        out: &mut Chunks,
        paging: Option<Paging>,
    ) -> Result<(), DeliveryError> {
        let run = "run the query";
        let query = self.settings.query.trim().trim_end_matches(';');
        // The header comes from the statement, so a query without rows still has one.
        let names: Vec<String> = (&mut conn)
            .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(query)))
            .await
            .map_err(|err| sql_error(run, err))?
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let (wrapped, key_index) = match &paging {
            None => (query.to_owned(), None),
            Some(paging) => {
                let Some(index) = names.iter().position(|name| *name == paging.key) else {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    return Err(no_key_column(&paging.key, &names));
                };
                let column = format!("q.{}", quoted(&paging.key));
                let param = self.settings.params.len() + 1;
                let wrapped = format!(
                    "SELECT * FROM ({query}) AS q WHERE (?{param} IS NULL OR {column} > ?{param}) ORDER BY {column} LIMIT {}",
                    paging.rows
                );
                (wrapped, Some(index))
            }
        };
        let mut page = paging.map(Paging::start);
        if self.settings.format == SqlFormat::Csv && page.as_ref().is_none_or(|p| p.at.bytes == 0)
        {
            csv_record(&mut out.buffer, names.iter().map(|n| Some(n.as_str())));
        }
        loop {
            let mut bound = bind(
                sqlx::query(sqlx::AssertSqlSafe(wrapped.as_str())),
                &self.settings.params,
                ctx,
            );
            if let Some(page) = &page {
                bound = match &page.at.next.key {
                    Some(serde_json::Value::Number(n)) if n.is_i64() => bound.bind(n.as_i64()),
                    Some(serde_json::Value::Number(n)) => bound.bind(n.as_f64()),
                    other => bound.bind(other.as_ref().map(key_text)),
                };
            }
            let mut rows = bound.fetch(&mut conn);
            let (mut count, mut last) = (0u64, None);
            while let Some(row) = rows.try_next().await.map_err(|err| sql_error(run, err))? {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    values.push(sqlite_value(&row, i).map_err(|err| sql_error(run, err))?);
                }
                match self.settings.format {
                    SqlFormat::Csv => {
                        let texts: Vec<Option<String>> =
                            values.iter().map(SqliteValue::text).collect();
                        csv_record(&mut out.buffer, texts.iter().map(|t| t.as_deref()));
                    }
                    SqlFormat::Jsonl => {
                        // Written by hand to keep the columns' order (serde_json's map
                        // sorts).
                        out.buffer.push(b'{');
                        for (i, (name, value)) in names.iter().zip(&values).enumerate() {
                            if i > 0 {
                                out.buffer.push(b',');
                            }
                            let _ = serde_json::to_writer(&mut out.buffer, name);
                            out.buffer.push(b':');
                            let _ = serde_json::to_writer(&mut out.buffer, &value.json());
                        }
                        out.buffer.extend_from_slice(b"}\n");
                    }
                }
                match key_index {
                    Some(index) => {
                        count += 1;
                        last = values.get(index).map(SqliteValue::json);
                    }
                    None if !out.flush_if_full().await => return Ok(()),
                    None => {}
                }
            }
            drop(rows);
            let Some(current) = &mut page else {
                return Ok(());
            };
            if !current.end(ctx, out, count, last).await {
                return Ok(());
            }
        }
    }
}

/// Where the next page of a `resume_key` query starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyPosition {
    /// The last key delivered; `None` before the first page.
    key: Option<serde_json::Value>,
    /// The last page was short: there is nothing after it.
    done: bool,
}

/// A `resume_key` query's paging: the key, the page size, and the page ends so far.
struct Paging {
    key: String,
    rows: u64,
    start: PageEnd<KeyPosition>,
    log: PageLog<KeyPosition>,
}

/// A paged query under way: where it is, and its log.
struct Page {
    rows: u64,
    at: PageEnd<KeyPosition>,
    log: PageLog<KeyPosition>,
}

impl Paging {
    fn start(self) -> Page {
        Page {
            rows: self.rows,
            at: self.start,
            log: self.log,
        }
    }
}

impl Page {
    /// Ends a page of `count` rows whose last key was `last`: records where the next page
    /// starts, then sends the page as one chunk. Whether to go on.
    async fn end(
        &mut self,
        ctx: &RunContext,
        out: &mut Chunks,
        count: u64,
        last: Option<serde_json::Value>,
    ) -> bool {
        self.at = PageEnd {
            bytes: self.at.bytes + out.buffer.len() as u64,
            next: KeyPosition {
                key: last.or_else(|| self.at.next.key.take()),
                done: count < self.rows,
            },
        };
        self.log.record(ctx, self.at.clone()).await;
        out.flush().await && !self.at.next.done
    }
}

/// A key as query text (for a cast on PostgreSQL, a text comparison on SQLite).
fn key_text(key: &serde_json::Value) -> String {
    match key {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn no_key_column(key: &str, names: &[&str]) -> DeliveryError {
    DeliveryError::new(
        ErrorKind::Rejected,
        format!(
            "resume_key {key} is not a column of the query (it returns {})",
            names.join(", ")
        ),
    )
}

/// `query` with the run's values for `params` bound, in order.
fn bind<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    params: &[SqlParam],
    ctx: &RunContext,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    chrono::DateTime<chrono::Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    chrono::NaiveDate: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for param in params {
        query = match param {
            SqlParam::Scheduled => query.bind(ctx.slot.with_timezone(&chrono::Utc)),
            SqlParam::ScheduledDate => query.bind(ctx.slot.date_naive()),
            SqlParam::Job => query.bind(ctx.job.clone()),
            SqlParam::RunId => query.bind(ctx.run_id.clone()),
        };
    }
    query
}

/// A SQLite value, as stored.
enum SqliteValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqliteValue {
    fn text(&self) -> Option<String> {
        match self {
            SqliteValue::Null => None,
            SqliteValue::Integer(i) => Some(i.to_string()),
            SqliteValue::Real(r) => Some(r.to_string()),
            SqliteValue::Text(t) => Some(t.clone()),
            SqliteValue::Blob(b) => Some(format!("\\x{}", hex::encode(b))),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            SqliteValue::Null => serde_json::Value::Null,
            SqliteValue::Integer(i) => (*i).into(),
            SqliteValue::Real(r) => serde_json::Number::from_f64(*r)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            SqliteValue::Text(t) => t.clone().into(),
            SqliteValue::Blob(b) => format!("\\x{}", hex::encode(b)).into(),
        }
    }
}

fn sqlite_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<SqliteValue, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(SqliteValue::Null);
    }
    Ok(match raw.type_info().name() {
        "INTEGER" => SqliteValue::Integer(row.try_get(i)?),
        "REAL" => SqliteValue::Real(row.try_get(i)?),
        "BLOB" => SqliteValue::Blob(row.try_get(i)?),
        _ => SqliteValue::Text(row.try_get(i)?),
    })
}

/// Aborts the query's task when the stream reading it is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl DataSource for SqlSource {
    fn describe(&self) -> String {
        let format = match self.settings.format {
            SqlFormat::Csv => "csv",
            SqlFormat::Jsonl => "jsonl",
        };
        format!("sql {} query as {format}", self.what())
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        let paging = self.paging(PageLog::default(), None);
        Ok(self.stream(ctx, paging))
    }

    async fn open_at(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        if self.settings.resume_key.is_none() {
            return Ok(None);
        }
        let log = PageLog::<KeyPosition>::load(ctx).await;
        let Some(at) = log.at(offset).cloned() else {
            return Ok(None);
        };
        tracing::info!(key = ?at.next.key, "Continuing the query after the last key delivered.");
        Ok(Some(self.stream(ctx, self.paging(log, Some(at)))))
    }
}

impl SqlSource {
    /// The paging of a `resume_key` query, from `at` (the start when `None`).
    fn paging(
        &self,
        log: PageLog<KeyPosition>,
        at: Option<PageEnd<KeyPosition>>,
    ) -> Option<Paging> {
        let key = self.settings.resume_key.clone()?;
        Some(Paging {
            key,
            rows: self.settings.page_rows.unwrap_or(10_000),
            start: at.unwrap_or(PageEnd {
                bytes: 0,
                next: KeyPosition {
                    key: None,
                    done: false,
                },
            }),
            log,
        })
    }

    /// Runs the query in a task of its own, its encoded rows coming through a channel of
    /// two chunks.
    fn stream(&self, ctx: &RunContext, paging: Option<Paging>) -> SourceStream {
        let (tx, rx) = mpsc::channel(2);
        let source = self.clone();
        let ctx = ctx.clone();
        let producer = tokio::spawn(async move {
            let mut out = Chunks {
                buffer: Vec::with_capacity(CHUNK_SIZE + CHUNK_SIZE / 4),
                tx,
            };
            match source.produce(&ctx, &mut out, paging).await {
                Ok(()) => {
                    out.flush().await;
                }
                Err(err) => out.fail(err).await,
            }
        });
        // A run that stops reading (cancelled, or a writer failed) ends the query too.
        let guard = AbortOnDrop(producer.abort_handle());
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|item| (item, (rx, guard)))
        });
        SourceStream {
            stream: Box::pin(stream),
            len: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_quote_what_needs_it() {
        let mut out = Vec::new();
        csv_record(
            &mut out,
            [Some("a"), None, Some(""), Some("b,c"), Some("say \"hi\"\n")],
        );
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "a,,\"\",\"b,c\",\"say \"\"hi\"\"\n\"\n"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quoted("id"), "\"id\"");
        assert_eq!(quoted("we\"ird"), "\"we\"\"ird\"");
    }
}
