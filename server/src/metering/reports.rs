//! Usage and showback reports over `usage_hourly`, priced by the rate card valid in each hour
//! (a template's own card before the general one), and their CSV export. About 600 lines
//! before its tests: the seam's reports, their pricing and their CSV share one row type.
use crate::platform::audit::{self, Event, Origin};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::error::{AllValid, AppError};
use app::reports::{RateCard, RateCardForm, Report, ReportQuery, ReportRow};
use app::seam::{Reports, RequestCtx};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime};
use uuid::Uuid;

pub const MAX_DAYS: i64 = 400;

pub struct ReportsBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    /// vCPUs per core the placement allows: the fleet's vCPU capacity for the runway.
    pub vcpu_overcommit: f64,
}

/// The dates reports and rate cards accept: wide enough for any real period, narrow enough
/// that the arithmetic on them (a day past the end, the previous period) cannot overflow.
const FIRST_YEAR: i32 = 2000;
const LAST_YEAR: i32 = 2199;

pub fn parse_date(raw: &str, field: &str) -> Result<Date, AppError> {
    let date = Date::parse(raw.trim(), format_description!("[year]-[month]-[day]"))
        .map_err(|_| AppError::field(field, "Enter a date as YYYY-MM-DD."))?;
    if !(FIRST_YEAR..=LAST_YEAR).contains(&date.year()) {
        return Err(AppError::field(
            field,
            format!("Enter a date between {FIRST_YEAR}-01-01 and {LAST_YEAR}-12-31."),
        ));
    }
    Ok(date)
}

fn iso(d: Date) -> String {
    d.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

#[derive(Debug)]
struct Period {
    from: Date,
    to: Date,
}

/// The report's days (inclusive), defaulting to this month so far.
fn parse_period(q: &ReportQuery, today: Date) -> Result<Period, AppError> {
    let from = if q.from.trim().is_empty() {
        Ok(today.replace_day(1).expect("day 1 exists"))
    } else {
        parse_date(&q.from, "from")
    };
    let to = if q.to.trim().is_empty() {
        Ok(today)
    } else {
        parse_date(&q.to, "to")
    };
    let (from, to) = (from, to).all_valid()?;
    if to < from {
        return Err(AppError::field(
            "to",
            "The end must not be before the start.",
        ));
    }
    if (to - from).whole_days() + 1 > MAX_DAYS {
        return Err(AppError::field(
            "to",
            format!("A report covers at most {MAX_DAYS} days; shorten the range."),
        ));
    }
    Ok(Period { from, to })
}

/// How a report's span is read: whole UTC months (from `usage_monthly`) and the hour ranges
/// around them (from `usage_hourly`).
#[derive(Debug, PartialEq)]
pub struct Split {
    pub months: Vec<OffsetDateTime>,
    pub hours: Vec<(OffsetDateTime, OffsetDateTime)>,
}

fn next_month(t: OffsetDateTime) -> OffsetDateTime {
    let d = t.date();
    let (y, m) = if d.month() == time::Month::December {
        (d.year() + 1, time::Month::January)
    } else {
        (d.year(), d.month().next())
    };
    time::Date::from_calendar_date(y, m, 1)
        .expect("a first of the month")
        .midnight()
        .assume_utc()
}

/// Splits `[from, to)` into whole months without a rate-card boundary strictly inside (one
/// price for the whole month) and hour ranges for the rest, merged where adjacent.
pub fn split_by_month(
    from: OffsetDateTime,
    to: OffsetDateTime,
    boundaries: &[OffsetDateTime],
) -> Split {
    let mut split = Split {
        months: Vec::new(),
        hours: Vec::new(),
    };
    let mut at = from;
    while at < to {
        let first = at.date().day() == 1 && at.time() == time::Time::MIDNIGHT;
        let next = next_month(at).min(to);
        let whole = first && next == next_month(at);
        let clean = !boundaries.iter().any(|b| *b > at && *b < next);
        if whole && clean {
            split.months.push(at);
        } else {
            match split.hours.last_mut() {
                Some(last) if last.1 == at => last.1 = next,
                _ => split.hours.push((at, next)),
            }
        }
        at = next;
    }
    split
}

fn group_sql(group_by: &str) -> Result<(&'static str, &'static str, &'static str), AppError> {
    // (key, label, join) — fixed SQL fragments, never user input.
    Ok(match group_by {
        "" | "tenant" => (
            "u.tenant_id::text",
            "t.name",
            "JOIN tenants t ON t.id = u.tenant_id",
        ),
        "user" => (
            "coalesce(u.owner_id::text, '')",
            "coalesce(x.email, '(no owner)')",
            "LEFT JOIN users x ON x.id = u.owner_id",
        ),
        "template" => (
            "coalesce(u.template_id::text, '')",
            "coalesce(x.name, '(deleted template)')",
            "LEFT JOIN templates x ON x.id = u.template_id",
        ),
        "vm" => (
            "u.vm_uuid::text",
            "x.name",
            "JOIN vms x ON x.uuid = u.vm_uuid",
        ),
        _ => {
            return Err(AppError::field(
                "group_by",
                "Group by tenant, user, template or VM.",
            ))
        }
    })
}

#[derive(sqlx::FromRow)]
struct Row {
    key: String,
    label: String,
    vcpu_hours: f64,
    memory_gib_hours: f64,
    disk_gib_hours: f64,
    powered_on_hours: f64,
    cost: f64,
    previous_cost: f64,
}

/// A spreadsheet runs a cell that starts with one of these as a formula.
fn neutralise(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

/// The report as CSV: a header row, RFC 4180 quoting (the `csv` crate), ISO dates, dot
/// decimals, and text cells neutralised against formula injection.
pub fn to_csv(r: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "group",
        "key",
        "label",
        "from",
        "to",
        "vcpu_hours",
        "memory_gib_hours",
        "disk_gib_hours",
        "powered_on_hours",
        "cost",
        "currency",
        "previous_cost",
        "change_pct",
    ]);
    let f = |v: f64| format!("{v:.4}");
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        let _ = w.write_record([
            r.group_by.clone(),
            neutralise(&row.key),
            neutralise(&row.label),
            r.from.clone(),
            r.to.clone(),
            f(row.vcpu_hours),
            f(row.memory_gib_hours),
            f(row.disk_gib_hours),
            f(row.powered_on_hours),
            format!("{:.2}", row.cost),
            neutralise(&r.currency),
            format!("{:.2}", row.previous_cost),
            row.change_pct()
                .map(|c| format!("{c:.1}"))
                .unwrap_or_default(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn parse_price(raw: &str, field: &str) -> Result<f64, AppError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1_000_000.0)
        .ok_or_else(|| {
            AppError::field(
                field,
                "Enter a price of 0 or more, with a dot for decimals.",
            )
        })
}

/// A rate card form that passed every check; every bad field is named at once.
#[derive(Debug, PartialEq)]
struct RateCardFields {
    /// None: every template without a card of its own.
    template: Option<Uuid>,
    /// Three upper-case letters.
    currency: String,
    vcpu_hour: f64,
    memory_gib_hour: f64,
    disk_gib_hour: f64,
    valid_from: Date,
    /// After `valid_from`; None: open-ended.
    valid_to: Option<Date>,
}

impl TryFrom<&RateCardForm> for RateCardFields {
    type Error = AppError;

    fn try_from(form: &RateCardForm) -> Result<Self, AppError> {
        let currency = form.currency.trim().to_uppercase();
        let currency = if currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()) {
            Ok(currency)
        } else {
            Err(AppError::field(
                "currency",
                "Use a three-letter currency code such as EUR.",
            ))
        };
        let prices = (
            parse_price(&form.vcpu_hour, "vcpu_hour"),
            parse_price(&form.memory_gib_hour, "memory_gib_hour"),
            parse_price(&form.disk_gib_hour, "disk_gib_hour"),
        );
        let from = parse_date(&form.valid_from, "valid_from");
        let to = if form.valid_to.trim().is_empty() {
            Ok(None)
        } else {
            parse_date(&form.valid_to, "valid_to").map(Some)
        };
        let order = match (&from, &to) {
            (Ok(f), Ok(Some(t))) if t <= f => Err(AppError::field(
                "valid_to",
                "The end must be after the start.",
            )),
            _ => Ok(()),
        };
        let template = if form.template_id.trim().is_empty() {
            Ok(None)
        } else {
            Uuid::parse_str(form.template_id.trim())
                .map(Some)
                .map_err(|_| AppError::field("template_id", "Choose a template from the list."))
        };
        let (
            currency,
            (vcpu_hour, memory_gib_hour, disk_gib_hour),
            valid_from,
            valid_to,
            template,
            (),
        ) = (currency, prices.all_valid(), from, to, template, order).all_valid()?;
        Ok(RateCardFields {
            template,
            currency,
            vcpu_hour,
            memory_gib_hour,
            disk_gib_hour,
            valid_from,
            valid_to,
        })
    }
}

#[async_trait]
impl Reports for ReportsBackend {
    async fn runways(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
    ) -> Result<Vec<app::reports::Runway>, AppError> {
        crate::metering::forecast::runways(
            &self.pool,
            &self.clock,
            self.vcpu_overcommit,
            req,
            tenant,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn report(&self, req: &RequestCtx, q: ReportQuery) -> Result<Report, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let readable: Vec<Uuid> = actor
                .memberships
                .iter()
                .filter(|m| crate::platform::authz::reads_reports(actor, m.tenant_id))
                .map(|m| m.tenant_id)
                .collect();
            if readable.is_empty() && !actor.fleet_admin {
                return Err(AppError::Forbidden.into());
            }
            let tenant = if q.tenant_id.trim().is_empty() {
                None
            } else {
                let t = Uuid::parse_str(q.tenant_id.trim())
                    .ok()
                    .filter(|t| actor.fleet_admin || readable.contains(t))
                    .ok_or_else(|| AppError::field("tenant_id", "Choose one of your organisations."))?;
                Some(t)
            };
            let period = parse_period(&q, self.clock.now().date());
            let group = group_sql(q.group_by.trim());
            let (period, (key, label, join)) = (period, group).all_valid()?;
            let start = period.from.midnight().assume_utc();
            let end = (period.to + Duration::DAY).midnight().assume_utc();
            let prev_start = start - (end - start);
            // Every tenant for fleet admins without a choice; else the chosen or readable ones.
            let (all, tenants) = match tenant {
                Some(t) => (false, vec![t]),
                None if actor.fleet_admin => (true, Vec::new()),
                None => (false, readable),
            };
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let tenant_name: Option<String> = match tenant {
                Some(t) => Some(
                    sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
                        .bind(t)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or_else(|| {
                            AppError::field("tenant_id", "Choose one of your organisations.")
                        })?,
                ),
                None => None,
            };
            // Whole months with no rate-card boundary inside are read from `usage_monthly` (one
            // row per VM and month, priced by the card of the month); the rest, hour by hour.
            let boundaries: Vec<OffsetDateTime> = sqlx::query_scalar(
                "SELECT valid_from FROM rate_cards UNION SELECT valid_to FROM rate_cards WHERE valid_to IS NOT NULL",
            )
            .fetch_all(&mut *tx)
            .await?;
            // The start of the current period is a boundary too: a month is current or previous.
            let boundaries: Vec<OffsetDateTime> = boundaries.into_iter().chain([start]).collect();
            let split = split_by_month(prev_start, end, &boundaries);
            // One range predicate per hour range (at most three), so each can use the index on
            // (tenant, hour); a join against an array of ranges made the planner scan every row.
            let hour_ranges = if split.hours.is_empty() {
                "$4::timestamptz[] IS NULL AND $5::timestamptz[] IS NULL".to_string()
            } else {
                (1..=split.hours.len())
                    .map(|i| format!("(u.hour >= ($4::timestamptz[])[{i}] AND u.hour < ($5::timestamptz[])[{i}])"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            };
            let sql = format!(
                "WITH usage AS (
                     SELECT u.vm_uuid, u.hour, u.tenant_id, u.owner_id, u.template_id, u.vcpu_hours,
                            u.memory_gib_hours, u.disk_gib_hours, u.powered_on_hours
                     FROM usage_hourly u
                     WHERE ($2 OR u.tenant_id = ANY($3)) AND ({hour_ranges})
                     UNION ALL
                     SELECT m.vm_uuid, m.month, m.tenant_id, m.owner_id, m.template_id, m.vcpu_hours,
                            m.memory_gib_hours, m.disk_gib_hours, m.powered_on_hours
                     FROM usage_monthly m
                     WHERE m.month = ANY($6) AND ($2 OR m.tenant_id = ANY($3))
                 ),
                 -- The card of each (template, hour) present, looked up once per pair, not per row.
                 pairs AS (SELECT DISTINCT template_id, hour FROM usage),
                 cards AS (
                     SELECT coalesce(p.template_id, '00000000-0000-0000-0000-000000000000') AS template_key, p.hour, rc.*
                     FROM pairs p
                     LEFT JOIN LATERAL (
                         SELECT r.currency, r.vcpu_hour, r.memory_gib_hour, r.disk_gib_hour FROM rate_cards r
                         WHERE (r.template_id = p.template_id OR r.template_id IS NULL)
                           AND r.valid_from <= p.hour AND (r.valid_to IS NULL OR p.hour < r.valid_to)
                         ORDER BY r.template_id IS NULL, r.valid_from DESC LIMIT 1) rc ON true),
                 priced AS (
                     SELECT u.*, rc.currency,
                            coalesce(u.vcpu_hours * rc.vcpu_hour::float8 + u.memory_gib_hours * rc.memory_gib_hour::float8
                                     + u.disk_gib_hours * rc.disk_gib_hour::float8, 0) AS cost,
                            u.hour >= $1 AS current
                     FROM usage u
                     JOIN cards rc ON rc.template_key = coalesce(u.template_id, '00000000-0000-0000-0000-000000000000')
                                  AND rc.hour = u.hour)
                 SELECT {key} AS key, {label} AS label,
                        coalesce(sum(u.vcpu_hours) FILTER (WHERE u.current), 0) AS vcpu_hours,
                        coalesce(sum(u.memory_gib_hours) FILTER (WHERE u.current), 0) AS memory_gib_hours,
                        coalesce(sum(u.disk_gib_hours) FILTER (WHERE u.current), 0) AS disk_gib_hours,
                        coalesce(sum(u.powered_on_hours) FILTER (WHERE u.current), 0) AS powered_on_hours,
                        coalesce(sum(u.cost) FILTER (WHERE u.current), 0) AS cost,
                        coalesce(sum(u.cost) FILTER (WHERE NOT u.current), 0) AS previous_cost
                 FROM priced u {join}
                 GROUP BY 1, 2 ORDER BY cost DESC, vcpu_hours DESC, label"
            );
            let rows: Vec<Row> = sqlx::query_as(&sql)
                .bind(start)
                .bind(all)
                .bind(&tenants)
                .bind(split.hours.iter().map(|r| r.0).collect::<Vec<_>>())
                .bind(split.hours.iter().map(|r| r.1).collect::<Vec<_>>())
                .bind(&split.months)
                .fetch_all(&mut *tx)
                .await?;
            let currency: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(DISTINCT currency, '/') FROM rate_cards WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1)",
            )
            .bind(start)
            .bind(end)
            .fetch_one(&mut *tx)
            .await?;
            let rows: Vec<ReportRow> = rows
                .into_iter()
                .filter(|r| r.vcpu_hours > 0.0 || r.previous_cost > 0.0 || r.cost > 0.0)
                .map(|r| ReportRow {
                    key: r.key,
                    label: r.label,
                    vcpu_hours: r.vcpu_hours,
                    memory_gib_hours: r.memory_gib_hours,
                    disk_gib_hours: r.disk_gib_hours,
                    powered_on_hours: r.powered_on_hours,
                    cost: r.cost,
                    previous_cost: r.previous_cost,
                })
                .collect();
            let total = rows.iter().fold(
                ReportRow {
                    key: String::new(),
                    label: "Total".into(),
                    vcpu_hours: 0.0,
                    memory_gib_hours: 0.0,
                    disk_gib_hours: 0.0,
                    powered_on_hours: 0.0,
                    cost: 0.0,
                    previous_cost: 0.0,
                },
                |mut t, r| {
                    t.vcpu_hours += r.vcpu_hours;
                    t.memory_gib_hours += r.memory_gib_hours;
                    t.disk_gib_hours += r.disk_gib_hours;
                    t.powered_on_hours += r.powered_on_hours;
                    t.cost += r.cost;
                    t.previous_cost += r.previous_cost;
                    t
                },
            );
            let prev_to = period.from - Duration::DAY;
            let prev_from = period.from - (period.to - period.from) - Duration::DAY;
            Ok(Report {
                from: iso(period.from),
                to: iso(period.to),
                previous_from: iso(prev_from),
                previous_to: iso(prev_to),
                group_by: if q.group_by.trim().is_empty() {
                    "tenant".into()
                } else {
                    q.group_by.trim().to_string()
                },
                tenant_name,
                currency: currency.unwrap_or_default(),
                rows,
                total,
            })
    }).await
    }

    async fn rate_cards(&self, req: &RequestCtx) -> Result<Vec<RateCard>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let may = actor.fleet_admin
                || actor
                    .memberships
                    .iter()
                    .any(|m| crate::platform::authz::reads_reports(actor, m.tenant_id));
            if !may {
                return Err(AppError::Forbidden.into());
            }
            // Others see the general cards and those of templates offered to a tenant whose
            // reports they read, never names of templates offered only to other tenants.
            let readable: Vec<Uuid> = actor
                .memberships
                .iter()
                .filter(|m| crate::platform::authz::reads_reports(actor, m.tenant_id))
                .map(|m| m.tenant_id)
                .collect();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            type Row = (
                Uuid,
                Option<String>,
                String,
                f64,
                f64,
                f64,
                OffsetDateTime,
                Option<OffsetDateTime>,
                bool,
            );
            let rows: Vec<Row> =
                sqlx::query_as(
                    "SELECT r.id, t.name, r.currency, r.vcpu_hour::float8, r.memory_gib_hour::float8, r.disk_gib_hour::float8,
                            r.valid_from, r.valid_to, r.valid_from <= now() AND (r.valid_to IS NULL OR now() < r.valid_to)
                     FROM rate_cards r LEFT JOIN templates t ON t.id = r.template_id
                     WHERE $1 OR r.template_id IS NULL OR t.all_tenants OR t.tenant_ids && $2
                     ORDER BY r.valid_from DESC, t.name NULLS FIRST",
                )
                .bind(actor.fleet_admin)
                .bind(&readable)
                .fetch_all(&mut *tx)
                .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, template_name, currency, v, m, d, from, to, in_force)| RateCard {
                        id,
                        template_name,
                        currency,
                        vcpu_hour: v,
                        memory_gib_hour: m,
                        disk_gib_hour: d,
                        valid_from: iso(from.date()),
                        valid_to: to.map(|t| iso(t.date())),
                        in_force,
                    },
                )
                .collect())
    }).await
    }

    async fn end_rate_card(
        &self,
        req: &RequestCtx,
        id: Uuid,
        valid_to: &str,
    ) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let to = parse_date(valid_to, "valid_to")?.midnight().assume_utc();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let card: Option<(OffsetDateTime, Option<OffsetDateTime>)> = sqlx::query_as(
                "SELECT valid_from, valid_to FROM rate_cards WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let (from, before) = card.ok_or_else(|| AppError::NotFound("Rate card".into()))?;
            if to <= from {
                return Err(AppError::field(
                    "valid_to",
                    format!("The end must be after the start, {}.", iso(from.date())),
                )
                .into());
            }
            // Ending a card in the past would reprice hours already reported.
            let today = self.clock.now().date().midnight().assume_utc();
            if to < today {
                return Err(AppError::field(
                    "valid_to",
                    format!(
                        "End the card today ({}) or later: past hours keep the prices they had.",
                        iso(today.date())
                    ),
                )
                .into());
            }
            sqlx::query("UPDATE rate_cards SET valid_to = $2 WHERE id = $1")
                .bind(id)
                .bind(to)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("rate_card.end", "rate_card", id)
                    .before(json!({ "valid_to": before.map(|b| iso(b.date())) }))
                    .after(json!({ "valid_to": iso(to.date()) })),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn add_rate_card(&self, req: &RequestCtx, form: RateCardForm) -> Result<Uuid, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let card = RateCardFields::try_from(&form)?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO rate_cards (template_id, currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from, valid_to)
                 VALUES ($1, $2, $3::float8::numeric, $4::float8::numeric, $5::float8::numeric, $6, $7) RETURNING id",
            )
            .bind(card.template)
            .bind(&card.currency)
            .bind(card.vcpu_hour)
            .bind(card.memory_gib_hour)
            .bind(card.disk_gib_hour)
            .bind(card.valid_from.midnight().assume_utc())
            .bind(card.valid_to.map(|t| t.midnight().assume_utc()))
            .fetch_one(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("rate_card.create", "rate_card", id).after(json!({
                    "template": card.template, "currency": card.currency, "vcpu_hour": card.vcpu_hour,
                    "memory_gib_hour": card.memory_gib_hour, "disk_gib_hour": card.disk_gib_hour,
                    "valid_from": iso(card.valid_from), "valid_to": card.valid_to.map(iso),
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(id)
    }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, cost: f64) -> ReportRow {
        ReportRow {
            key: "k".into(),
            label: label.into(),
            vcpu_hours: 1.5,
            memory_gib_hours: 2.0,
            disk_gib_hours: 10.0,
            powered_on_hours: 0.25,
            cost,
            previous_cost: 2.0,
        }
    }

    #[test]
    fn csv_quotes_neutralises_and_formats() {
        let r = Report {
            from: "2026-11-01".into(),
            to: "2026-11-30".into(),
            previous_from: "2026-10-02".into(),
            previous_to: "2026-10-31".into(),
            group_by: "vm".into(),
            tenant_name: None,
            currency: "EUR".into(),
            rows: vec![
                row("web, \"prod\"\nline 2", 1.0),
                row("=HYPERLINK(\"http://x\")", 3.0),
                row("+1", 0.0),
                row("-2", 0.0),
                row("@SUM(A1)", 0.0),
            ],
            total: row("Total", 4.0),
        };
        let csv = to_csv(&r);
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(header[0], "group");
        assert_eq!(header[12], "change_pct");
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            &rows[0][2], "web, \"prod\"\nline 2",
            "quoted and round-trips"
        );
        assert_eq!(&rows[1][2], "'=HYPERLINK(\"http://x\")");
        assert_eq!(&rows[2][2], "'+1");
        assert_eq!(&rows[3][2], "'-2");
        assert_eq!(&rows[4][2], "'@SUM(A1)");
        assert_eq!(&rows[0][3], "2026-11-01");
        assert_eq!(&rows[0][5], "1.5000");
        assert_eq!(&rows[0][9], "1.00");
        assert_eq!(&rows[0][12], "-50.0", "numbers stay numbers");
        assert_eq!(&rows[5][2], "Total");
    }

    #[test]
    fn spans_split_into_clean_months_and_hour_ranges() {
        use time::macros::datetime;
        // 2025-11-15 .. 2026-04-01 with a rate change on 2026-02-10.
        let s = split_by_month(
            datetime!(2025-11-15 00:00 UTC),
            datetime!(2026-04-01 00:00 UTC),
            &[
                datetime!(2026-02-10 00:00 UTC),
                datetime!(2026-01-01 00:00 UTC),
            ],
        );
        assert_eq!(
            s.months,
            vec![
                datetime!(2025-12-01 00:00 UTC),
                datetime!(2026-01-01 00:00 UTC),
                datetime!(2026-03-01 00:00 UTC)
            ]
        );
        assert_eq!(
            s.hours,
            vec![
                (
                    datetime!(2025-11-15 00:00 UTC),
                    datetime!(2025-12-01 00:00 UTC)
                ),
                (
                    datetime!(2026-02-01 00:00 UTC),
                    datetime!(2026-03-01 00:00 UTC)
                )
            ]
        );
        // A span inside one month is all hours.
        let s = split_by_month(
            datetime!(2026-05-03 00:00 UTC),
            datetime!(2026-05-09 00:00 UTC),
            &[],
        );
        assert!(s.months.is_empty());
        assert_eq!(s.hours.len(), 1);
    }

    #[test]
    fn periods_are_checked() {
        let today = time::macros::date!(2026 - 11 - 28);
        let q = |from: &str, to: &str| ReportQuery {
            tenant_id: String::new(),
            from: from.into(),
            to: to.into(),
            group_by: "tenant".into(),
        };
        let p = parse_period(&q("", ""), today).unwrap();
        assert_eq!(
            (iso(p.from), iso(p.to)),
            ("2026-11-01".into(), "2026-11-28".into())
        );
        assert!(parse_period(&q("2026-11-10", "2026-11-01"), today)
            .unwrap_err()
            .field_message("to")
            .is_some());
        assert!(parse_period(&q("2020-01-01", "2026-11-01"), today)
            .unwrap_err()
            .field_message("to")
            .unwrap()
            .contains("at most"));
        assert!(parse_period(&q("11/01/2026", ""), today)
            .unwrap_err()
            .field_message("from")
            .is_some());
        assert!(group_sql("'; DROP TABLE x").is_err());
    }

    #[test]
    fn rate_card_form_names_every_bad_field_at_once() {
        let good = RateCardForm {
            template_id: String::new(),
            currency: " eur ".into(),
            vcpu_hour: "0.02".into(),
            memory_gib_hour: "0.005".into(),
            disk_gib_hour: "0".into(),
            valid_from: "2026-12-01".into(),
            valid_to: String::new(),
        };
        let card = RateCardFields::try_from(&good).unwrap();
        assert_eq!(
            (card.currency.as_str(), card.template, card.valid_to),
            ("EUR", None, None)
        );
        assert_eq!(card.vcpu_hour, 0.02);
        let bad = RateCardForm {
            template_id: "not-a-uuid".into(),
            currency: "EURO".into(),
            vcpu_hour: "-1".into(),
            memory_gib_hour: "NaN".into(),
            disk_gib_hour: "1,5".into(),
            valid_from: "2026-12-01".into(),
            valid_to: "2026-11-30".into(),
        };
        let err = RateCardFields::try_from(&bad).unwrap_err();
        for field in [
            "template_id",
            "currency",
            "vcpu_hour",
            "memory_gib_hour",
            "disk_gib_hour",
            "valid_to",
        ] {
            assert!(err.field_message(field).is_some(), "{field}: {err:?}");
        }
        assert!(err.field_message("valid_from").is_none());
    }
}
