//! Lists: the search box, the state filter, the sort choices and the page window shared by the
//! VM, request, host, drift and audit lists.
//!
//! A page is found either by number (`LIMIT … OFFSET …`, which walks every row before it) or,
//! once a reader follows Next or Previous, by keyset: just after the last row (or before the
//! first row) of the page they came from, which the sort order's index finds directly, so page
//! 100 costs what page 1 does. The cursor is opaque to the browser: the sort key's values as
//! JSON.
use crate::platform::db::Tx;
use crate::platform::error::{Error, Result};
use app::error::AppError;
use app::{Page, Place};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Postgres};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One way to sort a list: its key's columns, the last of which makes the key unique. Keyset
/// paging needs columns that are never NULL.
#[derive(Debug)]
pub struct Order {
    pub name: &'static str,
    pub key: &'static [Column],
}

/// A column of a sort key: SQL expression, PostgreSQL type (to read a cursor's value back),
/// and whether it sorts descending.
#[derive(Debug)]
pub struct Column(pub &'static str, pub &'static str, pub bool);

/// Ascending.
pub const fn asc(expr: &'static str, ty: &'static str) -> Column {
    Column(expr, ty, false)
}

/// Descending.
pub const fn desc(expr: &'static str, ty: &'static str) -> Column {
    Column(expr, ty, true)
}

impl Order {
    /// The ORDER BY clause (without the words), forwards or, to read a page backwards from a
    /// cursor, in reverse.
    pub fn clause(&self, reversed: bool) -> String {
        self.key
            .iter()
            .map(|Column(expr, _, desc)| {
                if desc != &reversed {
                    format!("{expr} DESC")
                } else {
                    expr.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The rows after (or, `backwards`, before) the key `params` in this order: one row
    /// comparison, which the order's index serves, when every column goes the same way.
    fn beyond(&self, params: &[String], backwards: bool) -> String {
        let op = |desc: bool| if desc != backwards { "<" } else { ">" };
        let uniform = self.key.iter().all(|c| c.2 == self.key[0].2);
        if uniform {
            let columns: Vec<&str> = self.key.iter().map(|c| c.0).collect();
            return format!(
                "({}) {} ({})",
                columns.join(", "),
                op(self.key[0].2),
                params.join(", ")
            );
        }
        let mut alternatives = Vec::new();
        for (i, Column(expr, _, desc)) in self.key.iter().enumerate() {
            let mut terms: Vec<String> = self.key[..i]
                .iter()
                .zip(params)
                .map(|(c, p)| format!("{} = {p}", c.0))
                .collect();
            terms.push(format!("{expr} {} {}", op(*desc), params[i]));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        format!("({})", alternatives.join(" OR "))
    }
}

/// The sort choice named `sort` among `choices`; empty picks the first. Anything else is an
/// error on the `sort` field that names the choices.
pub fn order<'o>(sort: &str, choices: &'o [Order]) -> Result<&'o Order, AppError> {
    let chosen = if sort.is_empty() {
        choices.first()
    } else {
        choices.iter().find(|o| o.name == sort)
    };
    chosen.ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|o| o.name).collect();
        let (last, rest) = names.split_last().expect("a list has sort choices");
        AppError::field("sort", format!("Sort by {} or {last}.", rest.join(", ")))
    })
}

/// Makes user input literal inside a LIKE pattern (`\\`, `%` and `_` escaped).
pub fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A list's search box: trimmed, at most 100 characters (a field error on `search`), and the
/// ILIKE pattern that finds it literally anywhere in a value.
pub fn search_pattern(search: &str) -> Result<(&str, String), AppError> {
    let search = search.trim();
    if search.chars().count() > 100 {
        return Err(AppError::field(
            "search",
            "Search for at most 100 characters.",
        ));
    }
    Ok((search, format!("%{}%", escape_like(search))))
}

/// A list's `state` filter, trimmed: empty for any state, otherwise one of `known`.
pub fn state_filter<'s, 'k>(
    state: &'s str,
    known: impl IntoIterator<Item = &'k str>,
) -> Result<&'s str, AppError> {
    let state = state.trim();
    if state.is_empty() || known.into_iter().any(|k| k == state) {
        Ok(state)
    } else {
        Err(AppError::field(
            "state",
            format!("Unknown state \"{state}\"."),
        ))
    }
}

/// Appends `value` to a list's filter parameters, which its page query and its count query
/// share (bound once, cloned for each).
pub fn arg<'q, T>(args: &mut PgArguments, value: T) -> Result<()>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    Ok(args.add(value)?)
}

/// Which rows of a sorted list one page holds, as SQL over the filter's parameters.
pub struct Window {
    /// `AND (key) > (cursor)`, or empty when paging by number.
    pub after: String,
    /// The ORDER BY that picks the page's rows (reversed when reading backwards).
    pub pick: String,
    /// `LIMIT $n` or `LIMIT $n OFFSET $m`.
    pub limit: String,
    /// The ORDER BY to show them in.
    pub show: String,
    /// The filter's parameters followed by the window's.
    pub args: PgArguments,
}

impl Window {
    /// The page of `order` at `place`, `per_page` rows, after the filter's parameters.
    pub fn new(order: &Order, place: &Place, filter: &PgArguments, per_page: u32) -> Result<Self> {
        let mut args = filter.clone();
        let (cursor, backwards) = match (place.after.trim(), place.before.trim()) {
            ("", "") => (None, false),
            (after, "") => (Some(decode(after, order, "after")?), false),
            (_, before) => (Some(decode(before, order, "before")?), true),
        };
        let mut after = String::new();
        if let Some(values) = cursor {
            let mut params = Vec::new();
            for (Column(_, ty, _), value) in order.key.iter().zip(values) {
                arg(&mut args, value)?;
                params.push(format!("${}::{ty}", args.len()));
            }
            after = format!("AND {}", order.beyond(&params, backwards));
        }
        arg(&mut args, i64::from(per_page))?;
        let mut limit = format!("LIMIT ${}", args.len());
        if after.is_empty() {
            arg(
                &mut args,
                i64::from(place.page.max(1) - 1) * i64::from(per_page),
            )?;
            limit.push_str(&format!(" OFFSET ${}", args.len()));
        }
        Ok(Window {
            after,
            pick: order.clause(backwards),
            limit,
            show: order.clause(false),
            args,
        })
    }
}

/// A timestamp as a cursor holds it (RFC 3339, which PostgreSQL reads back exactly).
pub fn timestamp(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("a database timestamp formats")
}

/// The cursor of a row: its sort key's values, as PostgreSQL reads them back.
pub fn cursor(values: &[String]) -> String {
    serde_json::to_string(values).expect("strings serialise")
}

fn decode(cursor: &str, order: &Order, field: &str) -> Result<Vec<String>, AppError> {
    serde_json::from_str::<Vec<String>>(cursor)
        .ok()
        .filter(|v| v.len() == order.key.len())
        .ok_or_else(|| {
            AppError::field(
                field,
                "This page link is damaged or for another sort order: start again from the first page.",
            )
        })
}

/// The page of a list paged by keyset: `rows` as items, with the Previous and Next cursors of
/// its first and last rows (`key` gives a row's sort key values).
pub fn keyset_page<R, T>(
    place: &Place,
    per_page: u32,
    total: i64,
    rows: Vec<R>,
    key: impl Fn(&R) -> Vec<String>,
    item: impl FnMut(R) -> T,
) -> Page<T> {
    let (before, after) = cursors(
        place.page,
        Page::<()>::count(total, per_page),
        rows.first().map(&key),
        rows.last().map(&key),
    );
    Page {
        items: rows.into_iter().map(item).collect(),
        page: place.page,
        per_page,
        total,
        before,
        after,
    }
}

/// The Previous and Next cursors of a page whose first and last rows have the sort keys
/// `first` and `last`: none before page 1 or past the last page.
fn cursors(
    page: u32,
    pages: u32,
    first: Option<Vec<String>>,
    last: Option<Vec<String>>,
) -> (Option<String>, Option<String>) {
    let before = first.filter(|_| page > 1).map(|k| cursor(&k));
    let after = last.filter(|_| page < pages).map(|k| cursor(&k));
    (before, after)
}

/// What a list knows of each filter while the list does not change: its total ("5,000 in
/// all") and where its pages end. Both are kept until the next live event (see
/// `live::Live::generation`: every domain state change, request log line and listener
/// reconnect) or for `ttl` at most, for changes that send no event. At fleet scale, counting
/// every matching index entry was most of a page's database time, and a deep page asked for
/// by number walked every row before it (`OFFSET`); readers page through an unchanged list far
/// more often than it changes.
pub struct Known<K> {
    totals: UntilChange<K, i64>,
    marks: UntilChange<(K, &'static str), Marks>,
}

/// A clone shares what is kept.
impl<K> Clone for Known<K> {
    fn clone(&self) -> Self {
        Known {
            totals: self.totals.clone(),
            marks: self.marks.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Known<K> {
    pub fn new(generation: Arc<AtomicU64>, capacity: u64, ttl: Duration) -> Self {
        Known {
            totals: UntilChange::new(generation.clone(), capacity, ttl),
            marks: UntilChange::new(generation, capacity / 10 + 1, ttl),
        }
    }

    /// The rows of the page at `place` in `order` (`from_where`: `FROM … WHERE …` over `args`,
    /// the filter that `key` names) and the filter's total, read in `tx`. A page asked for by
    /// number beyond `DEEP_PAGE` is read as the page after its predecessor's last row.
    #[allow(clippy::too_many_arguments)]
    pub async fn window(
        &self,
        tx: &mut Tx,
        key: K,
        order: &Order,
        from_where: &str,
        args: &PgArguments,
        place: &Place,
        per_page: u32,
    ) -> Result<(Window, i64)> {
        let total = self
            .totals
            .get(key.clone(), async {
                let count = format!("SELECT count(*) {from_where}");
                Ok(sqlx::query_scalar_with(&count, args.clone())
                    .fetch_one(&mut **tx)
                    .await?)
            })
            .await?;
        let by_number = place.after.trim().is_empty() && place.before.trim().is_empty();
        let mut place = place.clone();
        if by_number && place.page > DEEP_PAGE {
            let marks = self
                .marks
                .get((key, order.name), async {
                    let rows: Vec<Vec<String>> = sqlx::query_scalar_with(
                        &Marks::query(order, from_where, per_page),
                        args.clone(),
                    )
                    .fetch_all(&mut **tx)
                    .await?;
                    Ok(Marks(Arc::new(rows)))
                })
                .await?;
            if let Some(last) = marks.0.get(place.page as usize - 2) {
                place.after = cursor(last);
            }
        }
        Ok((Window::new(order, &place, args, per_page)?, total))
    }

    /// Forgets everything: for changes that send no live event.
    pub fn forget(&self) {
        self.totals.forget();
        self.marks.forget();
    }
}

/// Pages after this one, asked for by number, are found from the marks (read once per change
/// of the list); up to it, `OFFSET` over a page or two of rows costs less.
pub const DEEP_PAGE: u32 = 2;

/// The sort key of every page's last row, in order.
#[derive(Clone, Debug)]
pub struct Marks(Arc<Vec<Vec<String>>>);

impl Marks {
    /// Every `per_page`-th row's key, as text that PostgreSQL reads back exactly (`cursor`).
    fn query(order: &Order, from_where: &str, per_page: u32) -> String {
        let keys: Vec<String> = (0..order.key.len())
            .map(|i| format!("k{i}::text"))
            .collect();
        let columns: Vec<String> = order
            .key
            .iter()
            .enumerate()
            .map(|(i, Column(expr, ..))| format!("{expr} AS k{i}"))
            .collect();
        format!(
            "SELECT ARRAY[{}] FROM (
                 SELECT {}, row_number() OVER (ORDER BY {}) AS n {from_where}) s
             WHERE n % {per_page} = 0 ORDER BY n",
            keys.join(", "),
            columns.join(", "),
            order.clause(false),
        )
    }
}

/// Values per key, kept until the next live event or for `ttl` at most. A value is computed
/// once however many requests want it at the same moment (the others wait for it): when the
/// list changes under 500 pages a second, one reader counts, not every reader of those
/// milliseconds.
struct UntilChange<K, V> {
    kept: moka::future::Cache<(u64, K), V>,
    generation: Arc<AtomicU64>,
}

impl<K, V> Clone for UntilChange<K, V> {
    fn clone(&self) -> Self {
        UntilChange {
            kept: self.kept.clone(),
            generation: self.generation.clone(),
        }
    }
}

impl<K: Hash + Eq + Send + Sync + 'static, V: Clone + Send + Sync + 'static> UntilChange<K, V> {
    fn new(generation: Arc<AtomicU64>, capacity: u64, ttl: Duration) -> Self {
        UntilChange {
            kept: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation,
        }
    }

    /// The value for `key`: kept, or computed now by `compute`.
    async fn get<F: Future<Output = Result<V>>>(&self, key: K, compute: F) -> Result<V> {
        // Read before computing: an event meanwhile leaves the entry stale, not wrong.
        let generation = self.generation.load(Ordering::Relaxed);
        self.kept
            .try_get_with((generation, key), compute)
            .await
            .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|shared| Error::other(&shared)))
    }

    fn forget(&self) {
        self.kept.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [Order; 3] = [
        Order {
            name: "lease",
            key: &[asc("v.lease_ends_at", "timestamptz"), asc("v.uuid", "uuid")],
        },
        Order {
            name: "created",
            key: &[desc("v.created_at", "timestamptz"), desc("v.uuid", "uuid")],
        },
        Order {
            name: "state",
            key: &[asc("r.state", "text"), desc("r.created_at", "timestamptz")],
        },
    ];

    #[test]
    fn sort_choices_default_to_the_first_and_name_themselves_when_unknown() {
        assert_eq!(order("", &ORDERS).unwrap().name, "lease");
        assert_eq!(order("created", &ORDERS).unwrap().name, "created");
        let err = order("price", &ORDERS).unwrap_err().to_string();
        assert!(err.contains("Sort by lease, created or state."), "{err}");
        assert_eq!(state_filter(" lost ", ["lost"]).unwrap(), "lost");
        assert_eq!(state_filter("", ["lost"]).unwrap(), "");
        assert!(state_filter("gone", ["lost"]).is_err());
    }

    #[test]
    fn windows_page_by_number_or_by_keyset_in_either_direction() {
        let mut filter = PgArguments::default();
        arg(&mut filter, "x").unwrap();
        let by_number = Window::new(
            &ORDERS[0],
            &Place {
                page: 3,
                ..Place::default()
            },
            &filter,
            25,
        )
        .unwrap();
        assert_eq!(by_number.after, "");
        assert_eq!(by_number.limit, "LIMIT $2 OFFSET $3");
        assert_eq!(by_number.pick, "v.lease_ends_at, v.uuid");

        let key = cursor(&["2026-12-06T00:00:00Z".into(), uuid::Uuid::nil().to_string()]);
        let next = Window::new(
            &ORDERS[1],
            &Place {
                page: 4,
                after: key.clone(),
                ..Place::default()
            },
            &filter,
            25,
        )
        .unwrap();
        assert_eq!(
            next.after,
            "AND (v.created_at, v.uuid) < ($2::timestamptz, $3::uuid)"
        );
        assert_eq!(next.pick, "v.created_at DESC, v.uuid DESC");
        assert_eq!(next.limit, "LIMIT $4");

        let previous = Window::new(
            &ORDERS[1],
            &Place {
                page: 2,
                before: key,
                ..Place::default()
            },
            &filter,
            25,
        )
        .unwrap();
        assert_eq!(
            previous.after,
            "AND (v.created_at, v.uuid) > ($2::timestamptz, $3::uuid)"
        );
        assert_eq!(previous.pick, "v.created_at, v.uuid");
        assert_eq!(previous.show, "v.created_at DESC, v.uuid DESC");

        let mixed = Window::new(
            &ORDERS[2],
            &Place {
                page: 2,
                after: cursor(&["pending".into(), "2026-12-06T00:00:00Z".into()]),
                ..Place::default()
            },
            &filter,
            25,
        )
        .unwrap();
        assert_eq!(
            mixed.after,
            "AND ((r.state > $2::text) OR (r.state = $2::text AND r.created_at < $3::timestamptz))"
        );

        let damaged = Window::new(
            &ORDERS[0],
            &Place {
                page: 2,
                after: "[\"only one\"]".into(),
                ..Place::default()
            },
            &filter,
            25,
        );
        let Err(crate::platform::error::Error::App(e)) = damaged else {
            panic!("a damaged cursor is the user's error");
        };
        assert!(e.field_message("after").is_some());
    }

    #[test]
    fn pages_link_onwards_only_where_there_is_more() {
        let k = || Some(vec!["a".to_string()]);
        assert_eq!(cursors(1, 3, k(), k()), (None, Some("[\"a\"]".into())));
        assert_eq!(cursors(3, 3, k(), k()), (Some("[\"a\"]".into()), None));
    }
}
