//! Capacity runway: days until a resource runs out, from the Theil–Sen trend of its daily
//! peaks (the median of the slopes between every two days: one odd day moves it little),
//! with a range from the 10th to the 90th percentile of those slopes as the stated
//! confidence. Per tenant quota (vCPUs, memory, disk allocated, from the hourly usage),
//! fleet-wide (host memory in use; vCPUs allocated against the cores after overcommit) and
//! per host (memory in use).
use crate::platform::authz;
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use app::error::AppError;
use app::reports::Runway;
use app::seam::RequestCtx;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Beyond this many days the answer is "no exhaustion within a year".
pub const HORIZON_DAYS: f64 = 365.0;

/// A trend: value ≈ intercept + slope × day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    pub slope_low: f64,
    pub slope_high: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Theil–Sen over (day, value) points; `None` with fewer than 3 days.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Fit> {
    if points.len() < 3 {
        return None;
    }
    let mut slopes = Vec::with_capacity(points.len() * (points.len() - 1) / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 != a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let slope = quantile(&slopes, 0.5);
    let mut rest: Vec<f64> = points.iter().map(|(x, y)| y - slope * x).collect();
    rest.sort_by(f64::total_cmp);
    Some(Fit {
        slope,
        intercept: quantile(&rest, 0.5),
        slope_low: quantile(&slopes, 0.1),
        slope_high: quantile(&slopes, 0.9),
    })
}

/// Days from `today` (a day number of `points`) until the trend reaches `capacity`.
fn days_left(level: f64, slope: f64, capacity: f64) -> Option<f64> {
    if level >= capacity {
        return Some(0.0);
    }
    if slope <= 0.0 {
        return None;
    }
    let d = (capacity - level) / slope;
    (d <= HORIZON_DAYS).then_some(d)
}

/// The runway of one resource from its daily peaks (day numbers, oldest first).
pub fn runway(
    subject: &str,
    resource: &str,
    unit: &str,
    points: Vec<(f64, f64)>,
    capacity: f64,
    today: f64,
) -> Runway {
    let fit = theil_sen(&points);
    let latest = points.last().map(|p| p.1).unwrap_or(0.0);
    let (days, days_low, days_high, summary) = match fit {
        None => (
            None,
            None,
            None,
            "Not enough history yet (three days or more).".to_string(),
        ),
        Some(f) if capacity <= 0.0 => (
            None,
            None,
            None,
            format!("No limit set (trend {:+.2} {unit}/day).", f.slope),
        ),
        Some(f) => {
            let level = (f.intercept + f.slope * today).max(latest.min(capacity));
            let days = days_left(level, f.slope, capacity);
            // A steeper slope runs out sooner: the high slope gives the low end of the range.
            let low = days_left(level, f.slope_high, capacity);
            let high = days_left(level, f.slope_low, capacity);
            let summary = match days {
                Some(0.0) => "At its limit now.".to_string(),
                Some(d) => format!(
                    "Runs out in about {:.0} days ({}; trend {:+.2} {unit}/day over {} days).",
                    d,
                    match (low, high) {
                        (Some(l), Some(h)) => format!("80 % range {l:.0}–{h:.0} days"),
                        (Some(l), None) => format!("80 % range {l:.0} days to beyond a year"),
                        _ => "range uncertain".into(),
                    },
                    f.slope,
                    points.len()
                ),
                None => format!(
                    "No exhaustion within a year at the current trend ({:+.2} {unit}/day over {} days).",
                    f.slope,
                    points.len()
                ),
            };
            (days, low, high, summary)
        }
    };
    Runway {
        subject: subject.to_string(),
        resource: resource.to_string(),
        unit: unit.to_string(),
        capacity,
        latest,
        slope_per_day: fit.map(|f| f.slope).unwrap_or(0.0),
        intercept: fit.map(|f| f.intercept).unwrap_or(latest),
        days,
        days_low,
        days_high,
        points,
        today,
        summary,
    }
}

/// Daily peaks as (day number counted from `since`, value).
fn days(rows: Vec<(OffsetDateTime, f64)>, since: OffsetDateTime) -> Vec<(f64, f64)> {
    rows.into_iter()
        .map(|(d, v)| ((d - since).whole_days() as f64, v))
        .collect()
}

/// A tenant's quota runways: daily peaks of allocated vCPUs, memory and disk over 90 days.
pub async fn tenant(tx: &mut Tx, tenant: Uuid, now: OffsetDateTime) -> Result<Vec<Runway>> {
    let since = (now - time::Duration::days(90)).replace_time(time::Time::MIDNIGHT);
    let peaks: Vec<(OffsetDateTime, f64, f64, f64)> = sqlx::query_as(
        "SELECT date_trunc('day', hour) AS day, max(vcpus)::float8, max(memory)::float8, max(disk)::float8 FROM (
             SELECT hour, sum(vcpu_hours) AS vcpus, sum(memory_gib_hours) AS memory, sum(disk_gib_hours) AS disk
             FROM usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 GROUP BY hour) h
         GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant)
    .bind(since)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let limits: Option<(String, f64, f64, f64)> = sqlx::query_as(
        "SELECT t.name, q.max_vcpus::float8, (q.max_memory_mib / 1024.0)::float8, q.max_disk_gib::float8
         FROM tenants t LEFT JOIN tenant_quotas q ON q.tenant_id = t.id WHERE t.id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((name, vcpus, memory, disk)) = limits else {
        return Ok(Vec::new());
    };
    let today = (now - since).whole_days() as f64;
    let series = |pick: fn(&(OffsetDateTime, f64, f64, f64)) -> f64| {
        days(peaks.iter().map(|p| (p.0, pick(p))).collect(), since)
    };
    Ok(vec![
        runway(&name, "vCPUs", "vCPUs", series(|p| p.1), vcpus, today),
        runway(&name, "memory", "GiB", series(|p| p.2), memory, today),
        runway(&name, "disk", "GiB", series(|p| p.3), disk, today),
    ])
}

/// Fleet-wide and per-host runways.
pub async fn fleet(tx: &mut Tx, now: OffsetDateTime, overcommit: f64) -> Result<Vec<Runway>> {
    let since = (now - time::Duration::days(90)).replace_time(time::Time::MIDNIGHT);
    let today = (now - since).whole_days() as f64;
    let mut out = Vec::new();
    // Memory in use: each host's daily peak (the daily buckets' maximum), summed per day.
    let per_host: Vec<(Uuid, String, f64, OffsetDateTime, f64)> = sqlx::query_as(
        "SELECT h.id, h.name, (h.memory_kib / 1048576.0)::float8, r.bucket, (r.mem_max / 1073741824.0)::float8
         FROM metric_rollups r JOIN hosts h ON h.id = r.subject
         WHERE r.resolution = 86400 AND r.is_host AND r.bucket >= $1 AND r.bucket < $2
           AND r.mem_max IS NOT NULL AND h.memory_kib IS NOT NULL
         ORDER BY h.name, r.bucket",
    )
    .bind(since)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let capacity: f64 = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT (sum(memory_kib) / 1048576.0)::float8 FROM hosts WHERE state = 'connected'",
    )
    .fetch_one(&mut **tx)
    .await?
    .unwrap_or(0.0);
    let mut by_day: std::collections::BTreeMap<OffsetDateTime, f64> = Default::default();
    for (_, _, _, day, gib) in &per_host {
        *by_day.entry(*day).or_default() += gib;
    }
    out.push(runway(
        "Fleet",
        "memory in use",
        "GiB",
        days(by_day.into_iter().collect(), since),
        capacity,
        today,
    ));
    let cores: f64 = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT sum(cpus)::float8 FROM hosts WHERE state = 'connected'",
    )
    .fetch_one(&mut **tx)
    .await?
    .unwrap_or(0.0);
    let vcpus: Vec<(OffsetDateTime, f64)> = sqlx::query_as(
        "SELECT date_trunc('day', hour) AS day, max(v)::float8 FROM (
             SELECT hour, sum(vcpu_hours) AS v FROM usage_hourly WHERE hour >= $1 AND hour < $2 GROUP BY hour) h
         GROUP BY 1 ORDER BY 1",
    )
    .bind(since)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    out.push(runway(
        "Fleet",
        "vCPUs allocated (after overcommit)",
        "vCPUs",
        days(vcpus, since),
        cores * overcommit,
        today,
    ));
    // Pool space: each pool's daily peak of allocated bytes, summed per day for the fleet.
    let pools: Vec<(String, f64, OffsetDateTime, f64)> = sqlx::query_as(
        "SELECT h.name || ' · ' || p.name, (last_value(p.capacity) OVER w / 1073741824.0)::float8,
                (p.day::timestamp AT TIME ZONE 'UTC'), (p.allocation_max / 1073741824.0)::float8
         FROM storage_pool_daily p JOIN hosts h ON h.id = p.host_id
         WHERE p.day >= $1::date AND p.day <= $2::date
         WINDOW w AS (PARTITION BY p.host_id, p.name ORDER BY p.day
                      ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
         ORDER BY 1, 3",
    )
    .bind(since.date())
    .bind(now.date())
    .fetch_all(&mut **tx)
    .await?;
    let pool_capacity: f64 = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT (sum(p.capacity) / 1073741824.0)::float8 FROM storage_pools p JOIN hosts h ON h.id = p.host_id
         WHERE h.state = 'connected' AND p.active AND p.missing_since IS NULL",
    )
    .fetch_one(&mut **tx)
    .await?
    .unwrap_or(0.0);
    let mut pool_days: std::collections::BTreeMap<OffsetDateTime, f64> = Default::default();
    for (_, _, day, gib) in &pools {
        *pool_days.entry(*day).or_default() += gib;
    }
    if !pool_days.is_empty() {
        out.push(runway(
            "Fleet",
            "pool space",
            "GiB",
            days(pool_days.into_iter().collect(), since),
            pool_capacity,
            today,
        ));
    }
    // vCPUs allocated to portal VMs per host: each hour's sum, peaked per day.
    let host_vcpus: Vec<(String, f64, OffsetDateTime, f64)> = sqlx::query_as(
        "SELECT h.name, coalesce(h.cpus, 0)::float8, d.day, d.v FROM (
             SELECT host_id, date_trunc('day', hour) AS day, max(v)::float8 AS v FROM (
                 SELECT v.host_id, u.hour, sum(u.vcpu_hours) AS v
                 FROM usage_hourly u JOIN vms v ON v.uuid = u.vm_uuid
                 WHERE u.hour >= $1 AND u.hour < $2 AND v.host_id IS NOT NULL GROUP BY 1, 2) x
             GROUP BY 1, 2) d
         JOIN hosts h ON h.id = d.host_id ORDER BY h.name, d.day",
    )
    .bind(since)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut hosts = Vec::new();
    for (name, cap, pts) in by_subject(
        per_host
            .into_iter()
            .map(|(_, n, c, d, v)| (n, c, d, v))
            .collect(),
    ) {
        hosts.push(runway(
            &name,
            "memory in use",
            "GiB",
            days(pts, since),
            cap,
            today,
        ));
    }
    for (name, cores, pts) in by_subject(host_vcpus) {
        hosts.push(runway(
            &name,
            "vCPUs allocated (after overcommit)",
            "vCPUs",
            days(pts, since),
            cores * overcommit,
            today,
        ));
    }
    for (name, cap, pts) in by_subject(pools) {
        hosts.push(runway(
            &name,
            "pool space",
            "GiB",
            days(pts, since),
            cap,
            today,
        ));
    }
    // The hosts that run out soonest first; a large fleet shows only those.
    hosts.sort_by(|a, b| {
        let key = |r: &Runway| r.days.unwrap_or(f64::INFINITY);
        key(a)
            .total_cmp(&key(b))
            .then_with(|| a.subject.cmp(&b.subject))
    });
    hosts.truncate(HOSTS_SHOWN);
    out.extend(hosts);
    Ok(out)
}

/// How many host runways the fleet's list carries (the soonest to run out).
pub const HOSTS_SHOWN: usize = 12;

type Peaks = Vec<(OffsetDateTime, f64)>;

/// Rows of (subject, capacity, day, value) in subject order, grouped as (subject, the last
/// row's capacity, daily values).
fn by_subject(rows: Vec<(String, f64, OffsetDateTime, f64)>) -> Vec<(String, f64, Peaks)> {
    let mut out: Vec<(String, f64, Peaks)> = Vec::new();
    for (name, cap, day, v) in rows {
        match out.last_mut() {
            Some((n, c, pts)) if *n == name => {
                *c = cap;
                pts.push((day, v));
            }
            _ => out.push((name, cap, vec![(day, v)])),
        }
    }
    out
}

/// A tenant's quota runways (its managers and admins), or the fleet's and hosts' (fleet
/// admins) when `tenant` is `None`.
pub async fn runways(
    pool: &PgPool,
    clock: &Arc<dyn Clock>,
    overcommit: f64,
    req: &RequestCtx,
    tenant: Option<Uuid>,
) -> Result<Vec<Runway>, AppError> {
    seam(async move {
        let actor = req.actor()?;
        match tenant {
            Some(t) if !authz::reads_reports(actor, t) => {
                return Err(authz::refuse_tenant(actor, t).into())
            }
            None if !actor.fleet_admin => return Err(AppError::Forbidden.into()),
            _ => {}
        }
        let now = clock.now();
        let mut tx = db::begin(pool, Scope::fleet()).await?;
        let out = match tenant {
            Some(t) => self::tenant(&mut tx, t, now).await?,
            None => fleet(&mut tx, now, overcommit).await?,
        };
        db::done(tx);
        Ok(out)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_growth_gives_the_runway_and_flat_use_none() {
        // 60 days growing 0.5 a day from 10, with noise and one outlier; limit 100.
        let points: Vec<(f64, f64)> = (0..60)
            .map(|d| {
                (
                    d as f64,
                    10.0 + 0.5 * d as f64
                        + if d % 7 == 3 { 1.5 } else { 0.0 }
                        + if d == 40 { 30.0 } else { 0.0 },
                )
            })
            .collect();
        let r = runway("Acme", "vCPUs", "vCPUs", points, 100.0, 59.0);
        // Level at day 59 ≈ 39.5: 60.5 left at 0.5/day ≈ 121 days.
        let d = r.days.unwrap();
        assert!((d - 121.0).abs() / 121.0 <= 0.05, "{d}: {}", r.summary);
        assert!(
            r.days_low.unwrap() <= d && d <= r.days_high.unwrap(),
            "{r:?}"
        );
        let flat: Vec<(f64, f64)> = (0..60)
            .map(|d| (d as f64, 20.0 + if d % 2 == 0 { 1.0 } else { 0.0 }))
            .collect();
        let r = runway("Acme", "vCPUs", "vCPUs", flat, 100.0, 59.0);
        assert_eq!(r.days, None);
        assert!(
            r.summary.starts_with("No exhaustion within a year"),
            "{}",
            r.summary
        );
        assert!(theil_sen(&[(0.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
