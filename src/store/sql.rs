//! SQL that is the same text on both databases, and the one generic code that runs it.
//!
//! A statement is an [`Sql`]: its text (placeholders `$1`, `$2`, … which SQLite and
//! PostgreSQL both accept) and its parameters as [`Param`] values. When it runs, the
//! parameters become the database's own arguments ([`Dialect::arguments`]) and the rows
//! are decoded by that database's driver through sqlx's `FromRow` ([`Record`]): no
//! intermediate row type, nothing boxed, one `match` on the backend per statement
//! (`backend.rs`).
//!
//! Why parameters as values rather than the store's SQL as generic code over sqlx's
//! `Database`: sqlx states "this database can bind an `i64`" as a bound on `i64`, and
//! Rust does not carry such bounds from a trait to the code that uses it (no implied
//! bounds), so every generic function and impl would repeat the same dozen `where`
//! lines. A parameter is one of the few column types the schema uses (integers, reals,
//! booleans, text, bytes; integer arrays on PostgreSQL), so one enum says it once, the
//! bounds are written once ([`encode`]), and the `Store` methods hold their SQL as plain,
//! non-generic code.

use std::borrow::Cow;
use std::fmt::Write;

use sqlx::database::Database;
use sqlx::encode::Encode;
use sqlx::error::BoxDynError;
use sqlx::query::QueryAs;
use sqlx::{Arguments, FromRow, IntoArguments, Postgres, Sqlite, Type};

/// Splits rows for multi-row statements (one `(…)` per row, or an `IN (…)` list) into
/// chunks of `max` rows (a power of two) and then powers of two below it, so each
/// statement takes one of a dozen texts. Each connection keeps its prepared
/// statements by text (sqlx's statement cache): with a text for every batch size,
/// every batch prepared its statements anew (4.8% of the node's CPU at 1,000 users
/// in one channel) and pushed the node's common statements out of the cache.
pub(super) fn sized_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, after) = rest.split_at(n);
        rest = after;
        Some(chunk)
    })
}

/// A parameter of a statement: a value of one of the column types of the schema.
#[derive(Clone, Debug)]
pub(super) enum Param<'a> {
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(bool),
    Text(Option<Cow<'a, str>>),
    Bytes(Option<Cow<'a, [u8]>>),
    /// An array of integers, for `= ANY($n)`: PostgreSQL only (SQLite has no arrays).
    Ints(&'a [i64]),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl From<f64> for Param<'_> {
    fn from(v: f64) -> Self {
        Param::Real(Some(v))
    }
}

impl From<Option<f64>> for Param<'_> {
    fn from(v: Option<f64>) -> Self {
        Param::Real(v)
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Param::Text(Some(Cow::Owned(v)))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::Text(v.map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Param<'_> {
    fn from(v: Option<String>) -> Self {
        Param::Text(v.map(Cow::Owned))
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Param::Text(v.as_deref().map(Cow::Borrowed))
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<Option<&'a [u8]>> for Param<'a> {
    fn from(v: Option<&'a [u8]>) -> Self {
        Param::Bytes(v.map(Cow::Borrowed))
    }
}

/// What running shared SQL needs of a database, and the few places where the text of
/// otherwise identical statements differs. Implemented for sqlx's [`Sqlite`] and
/// [`Postgres`].
pub(super) trait Dialect: Database {
    /// The database's clock in unix milliseconds, as an SQL expression.
    const NOW: &'static str;
    /// `CONTAINS(haystack, needle)`: the 1-based position of `needle`, 0 when absent.
    const CONTAINS: &'static str;
    /// A query answering whether sqlx's `_sqlx_migrations` table exists.
    const HAS_MIGRATIONS_TABLE: &'static str;

    /// The parameters as this database's arguments. Both implementations call
    /// [`encode`]; it is a method here so that its bounds are proven once per database
    /// instead of repeated by every generic caller.
    fn arguments<'q>(
        params: &'q [Param<'_>],
    ) -> Result<impl IntoArguments<'q, Self> + 'q, BoxDynError>;
}

impl Dialect for Sqlite {
    const NOW: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
    const CONTAINS: &'static str = "instr";
    const HAS_MIGRATIONS_TABLE: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations')";

    fn arguments<'q>(
        params: &'q [Param<'_>],
    ) -> Result<impl IntoArguments<'q, Self> + 'q, BoxDynError> {
        encode::<Self>(params, |_, _| Err("SQLite has no arrays".into()))
    }
}

impl Dialect for Postgres {
    const NOW: &'static str = "(extract(epoch from now()) * 1000)::bigint";
    const CONTAINS: &'static str = "strpos";
    const HAS_MIGRATIONS_TABLE: &'static str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

    fn arguments<'q>(
        params: &'q [Param<'_>],
    ) -> Result<impl IntoArguments<'q, Self> + 'q, BoxDynError> {
        encode::<Self>(params, |args, ints| args.add(ints))
    }
}

/// Binds each parameter with its own type (a NULL keeps its column type, which
/// PostgreSQL needs to plan the statement); arrays with `ints`.
fn encode<'q, D>(
    params: &'q [Param<'_>],
    ints: impl Fn(&mut D::Arguments<'q>, &'q [i64]) -> Result<(), BoxDynError>,
) -> Result<D::Arguments<'q>, BoxDynError>
where
    D: Database,
    Option<i64>: Encode<'q, D> + Type<D>,
    Option<f64>: Encode<'q, D> + Type<D>,
    bool: Encode<'q, D> + Type<D>,
    Option<&'q str>: Encode<'q, D> + Type<D>,
    Option<&'q [u8]>: Encode<'q, D> + Type<D>,
{
    let mut args = D::Arguments::default();
    args.reserve(params.len(), 0);
    for p in params {
        match p {
            Param::Int(v) => args.add(*v)?,
            Param::Real(v) => args.add(*v)?,
            Param::Bool(v) => args.add(*v)?,
            Param::Text(v) => args.add(v.as_deref())?,
            Param::Bytes(v) => args.add(v.as_deref())?,
            Param::Ints(v) => ints(&mut args, v)?,
        }
    }
    Ok(args)
}

/// A row type both backends can decode (a `FromRow` struct or a tuple).
pub(super) trait Record:
    for<'r> FromRow<'r, sqlx::sqlite::SqliteRow>
    + for<'r> FromRow<'r, sqlx::postgres::PgRow>
    + Send
    + Unpin
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin
{
}

/// A statement: its text and its parameters, the same on both databases.
#[derive(Clone, Debug)]
pub(super) struct Sql<'a> {
    text: Cow<'a, str>,
    params: Vec<Param<'a>>,
}

impl<'a> Sql<'a> {
    pub(super) fn new(text: impl Into<Cow<'a, str>>) -> Self {
        Sql {
            text: text.into(),
            params: Vec::new(),
        }
    }

    /// Adds the next parameter (the text names it `$n`).
    pub(super) fn bind(mut self, p: impl Into<Param<'a>>) -> Self {
        self.params.push(p.into());
        self
    }

    /// Appends text.
    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.text.to_mut().push_str(text);
        self
    }

    /// Appends a placeholder for `p`, the next parameter.
    pub(super) fn push_bind(&mut self, p: impl Into<Param<'a>>) -> &mut Self {
        self.params.push(p.into());
        let n = self.params.len();
        // Writing to a String cannot fail.
        let _ = write!(self.text.to_mut(), "${n}");
        self
    }

    /// Rewrites the text for SQLite: placeholders `$1`, `$2`, … that appear each once
    /// and in order become anonymous `?` (the same parameters by position).
    ///
    /// Why: SQLite treats `$n` as a *named* parameter. Preparing a statement looks each
    /// name up among the names before it (a linear `strncmp` scan), and sqlx asks for
    /// every parameter's name when it binds (another linear scan each), so a statement
    /// with thousands of them costs time quadratic in their number: the multi-row
    /// inserts of shared events (8 parameters a row, 1,000 rows a statement) spent a
    /// fifth of the node's CPU there in a 300-user channel (`perf`, docs/benchmarks.md
    /// §2). Anonymous `?` have no name: numbered by position, constant time each.
    /// Text that reuses a placeholder, numbers them out of order or already holds a
    /// `?` is left as it is. String literals and quoted identifiers are skipped.
    pub(super) fn positional_for_sqlite(&mut self) {
        if let Some(text) = positional(&self.text) {
            self.text = Cow::Owned(text);
        }
    }

    /// The statement for database `D`, decoding rows as `R`: run it with sqlx's
    /// `fetch_all`, `execute`… on an executor of `D`. (Not an `async fn` generic over
    /// the executor: rustc then fails to prove the callers' futures `Send`.)
    pub(super) fn query_as<D: Dialect, R>(
        &self,
    ) -> Result<QueryAs<'_, D, R, impl IntoArguments<'_, D>>, sqlx::Error>
    where
        R: for<'r> FromRow<'r, D::Row>,
    {
        let args = D::arguments(&self.params).map_err(sqlx::Error::Encode)?;
        Ok(sqlx::query_as_with(&self.text, args))
    }

    /// The statement for database `D`, for statements without rows.
    pub(super) fn query<D: Dialect>(
        &self,
    ) -> Result<sqlx::query::Query<'_, D, impl IntoArguments<'_, D>>, sqlx::Error> {
        let args = D::arguments(&self.params).map_err(sqlx::Error::Encode)?;
        Ok(sqlx::query_with(&self.text, args))
    }
}

/// `text` with its placeholders `$1`…`$n` (each once, in order) as `?`; `None` when
/// it has none or uses them otherwise (see [`Sql::positional_for_sqlite`]).
fn positional(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut count = 0u64;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                // A literal or quoted identifier, its quote doubled inside.
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'?' => return None,
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                let n: u64 = text[start..end].parse().ok()?;
                count += 1;
                if n != count {
                    return None;
                }
                out.push_str(&text[copied..i]);
                out.push('?');
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    if count == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(text: &'a str) -> Self {
        Sql::new(text)
    }
}

impl From<String> for Sql<'_> {
    fn from(text: String) -> Self {
        Sql::new(text)
    }
}

#[cfg(test)]
mod tests {
    use super::{positional, sized_chunks};

    #[test]
    fn sized_chunks_take_a_few_sizes() {
        let rows: Vec<u32> = (0..1000 + 37).collect();
        let sizes: Vec<usize> = sized_chunks(&rows, 512).map(<[u32]>::len).collect();
        assert_eq!(sizes, [512, 512, 8, 4, 1]);
        let back: Vec<u32> = sized_chunks(&rows, 512).flatten().copied().collect();
        assert_eq!(back, rows);
        assert_eq!(sized_chunks(&rows[..0], 512).count(), 0);
        assert_eq!(sized_chunks(&rows[..1], 512).count(), 1);
    }

    #[test]
    fn placeholders_in_order_become_anonymous_for_sqlite() {
        assert_eq!(
            positional("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)").as_deref(),
            Some("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)")
        );
        assert_eq!(
            positional("SELECT '$1 isn''t a $2', \"$x\" FROM t WHERE a = $1").as_deref(),
            Some("SELECT '$1 isn''t a $2', \"$x\" FROM t WHERE a = ?")
        );
        let many: Vec<String> = (1..=9000).map(|n| format!("(${n})")).collect();
        let rewritten = positional(&many.join(", ")).expect("rewritten");
        assert_eq!(rewritten.matches('?').count(), 9000);
        assert!(!rewritten.contains('$'));
        // Left as written: reused, out of order, mixed, none.
        for text in [
            "DELETE FROM a WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM e WHERE a = $1)",
            "SELECT $2, $1",
            "SELECT ?, $1",
            "SELECT 1",
        ] {
            assert_eq!(positional(text), None, "{text}");
        }
    }
}
