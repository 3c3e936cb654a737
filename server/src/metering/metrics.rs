//! Metrics: turning each host's counters into samples (rates from deltas between two
//! readings), storing them, rolling them up into 5-minute, hourly and daily buckets behind
//! watermarks (incremental, never a rescan), expiring old rows, and reading series for charts.
//! Over 600 lines because writers, rollups and readers share one contract (which bucket holds
//! which range, behind which watermark) that is easier to check in one file.
use crate::hypervisor::stats::{DomainCounters, HostCounters};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use sqlx::PgPool;
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// One stored sample of a domain or a host. Rates are None when there is nothing to compare
/// against (first reading, a gap, a counter that went backwards for a host).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub subject: Uuid,
    pub cpu_pct: Option<f32>,
    pub mem_bytes: Option<i64>,
    pub disk_rd_bps: Option<f32>,
    pub disk_wr_bps: Option<f32>,
    pub net_rx_bps: Option<f32>,
    pub net_tx_bps: Option<f32>,
    pub vms: Option<i32>,
}

/// Bytes (or nanoseconds) per second between two readings of a counter. A counter lower than
/// before was reset (the domain restarted, the device was re-plugged): what it counts now was
/// all counted since the reset, inside the interval, so that is the delta.
pub fn counter_rate(prev: u64, cur: u64, secs: f64) -> f64 {
    let delta = if cur >= prev { cur - prev } else { cur };
    delta as f64 / secs
}

/// Keeps each host's previous readings and turns new ones into samples.
#[derive(Default)]
pub struct Sampler {
    prev_at: Option<OffsetDateTime>,
    prev_host: Option<HostCounters>,
    prev_domains: HashMap<Uuid, DomainCounters>,
}

impl Sampler {
    /// `max_gap`: readings further apart than this give no rates (the host was lost, the
    /// server was down): an average over a long gap would hide what happened in it.
    pub fn sample(
        &mut self,
        host_id: Uuid,
        at: OffsetDateTime,
        host: HostCounters,
        domains: Vec<DomainCounters>,
        vcpus: &HashMap<Uuid, i32>,
        max_gap: Duration,
    ) -> (Sample, Vec<Sample>) {
        let secs = self
            .prev_at
            .map(|p| (at - p).as_seconds_f64())
            .filter(|s| *s > 0.0 && *s <= max_gap.as_seconds_f64());
        let host_cpu = match (secs, &self.prev_host) {
            (Some(_), Some(p)) => match (
                p.cpu_total_ns,
                p.cpu_idle_ns,
                host.cpu_total_ns,
                host.cpu_idle_ns,
            ) {
                // A host's counters only go backwards when it rebooted: no rate for this one.
                (Some(pt), Some(pi), Some(t), Some(i)) if t > pt && i >= pi => {
                    let busy = 1.0 - (i - pi) as f64 / (t - pt) as f64;
                    Some((busy * 100.0).clamp(0.0, 100.0) as f32)
                }
                _ => None,
            },
            _ => None,
        };
        let host_sample = Sample {
            subject: host_id,
            cpu_pct: host_cpu,
            mem_bytes: host.mem_used_bytes.map(|b| b as i64),
            vms: Some(domains.len() as i32),
            ..Default::default()
        };
        let mut vms = Vec::with_capacity(domains.len());
        for d in &domains {
            let mut s = Sample {
                subject: d.uuid,
                mem_bytes: d.mem_bytes.map(|b| b as i64),
                ..Default::default()
            };
            if let (Some(secs), Some(p)) = (secs, self.prev_domains.get(&d.uuid)) {
                let n = f64::from((*vcpus.get(&d.uuid).unwrap_or(&1)).max(1));
                if let (Some(pc), Some(c)) = (p.cpu_time_ns, d.cpu_time_ns) {
                    let pct = counter_rate(pc, c, secs) / 1e9 / n * 100.0;
                    s.cpu_pct = Some(pct.clamp(0.0, 100.0) as f32);
                }
                s.disk_rd_bps = Some(counter_rate(p.rd_bytes, d.rd_bytes, secs) as f32);
                s.disk_wr_bps = Some(counter_rate(p.wr_bytes, d.wr_bytes, secs) as f32);
                s.net_rx_bps = Some(counter_rate(p.rx_bytes, d.rx_bytes, secs) as f32);
                s.net_tx_bps = Some(counter_rate(p.tx_bytes, d.tx_bytes, secs) as f32);
            }
            vms.push(s);
        }
        self.prev_at = Some(at);
        self.prev_host = Some(host);
        self.prev_domains = domains.into_iter().map(|d| (d.uuid, d)).collect();
        (host_sample, vms)
    }
}

/// Writes one round of a host's samples in one statement; each domain's tenant comes from the
/// inventory row.
pub async fn write(
    pool: &PgPool,
    fence: crate::platform::cluster::Fence,
    host_id: Uuid,
    at: OffsetDateTime,
    host: &Sample,
    vms: &[Sample],
) -> Result<()> {
    let all: Vec<&Sample> = std::iter::once(host).chain(vms.iter()).collect();
    let col = |f: fn(&Sample) -> Option<f32>| all.iter().map(|s| f(s)).collect::<Vec<_>>();
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    fence.hold(&mut tx, host_id).await?;
    sqlx::query(
        "INSERT INTO metric_samples (subject, is_host, host_id, tenant_id, at, cpu_pct, mem_bytes,
                                     disk_rd_bps, disk_wr_bps, net_rx_bps, net_tx_bps, vms)
         SELECT s.subject, s.subject = $1, $1, d.tenant_id, $2, s.cpu, s.mem, s.rd, s.wr, s.rx, s.tx, s.vms
         FROM UNNEST($3::uuid[], $4::real[], $5::bigint[], $6::real[], $7::real[], $8::real[],
                     $9::real[], $10::int[]) AS s(subject, cpu, mem, rd, wr, rx, tx, vms)
         LEFT JOIN domains d ON d.host_id = $1 AND d.uuid = s.subject",
    )
    .bind(host_id)
    .bind(at)
    .bind(all.iter().map(|s| s.subject).collect::<Vec<_>>())
    .bind(col(|s| s.cpu_pct))
    .bind(all.iter().map(|s| s.mem_bytes).collect::<Vec<_>>())
    .bind(col(|s| s.disk_rd_bps))
    .bind(col(|s| s.disk_wr_bps))
    .bind(col(|s| s.net_rx_bps))
    .bind(col(|s| s.net_tx_bps))
    .bind(all.iter().map(|s| s.vms).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

/// The metrics a bucket keeps min/sum/max of: (bucket prefix, sample column).
const METRICS: [(&str, &str); 7] = [
    ("cpu", "cpu_pct"),
    ("mem", "mem_bytes"),
    ("rd", "disk_rd_bps"),
    ("wr", "disk_wr_bps"),
    ("rx", "net_rx_bps"),
    ("tx", "net_tx_bps"),
    ("vms", "vms"),
];

/// The resolutions, finest first, each rolled from the one before (the first from raw samples).
pub const RESOLUTIONS: [i32; 3] = [300, 3600, 86400];

fn bucket_expr(col: &str, res: i32) -> String {
    format!("to_timestamp(floor(extract(epoch FROM {col}) / {res}) * {res})")
}

/// `INSERT … SELECT` that rolls `[from, to)` of the finer level (raw samples when `finer` is
/// None) into `res`, merging into buckets that already have rows (late rounds).
fn rollup_sql(res: i32, finer: Option<i32>) -> String {
    let mut select = Vec::new();
    let mut merge = vec![
        "n = metric_rollups.n + EXCLUDED.n".to_string(),
        "rate_n = metric_rollups.rate_n + EXCLUDED.rate_n".to_string(),
    ];
    for (p, c) in METRICS {
        match finer {
            None => select.push(format!("min({c}), sum({c}), max({c})")),
            Some(_) => select.push(format!("min({p}_min), sum({p}_sum), max({p}_max)")),
        }
        merge.push(format!(
            "{p}_min = LEAST(metric_rollups.{p}_min, EXCLUDED.{p}_min)"
        ));
        merge.push(format!(
            "{p}_max = GREATEST(metric_rollups.{p}_max, EXCLUDED.{p}_max)"
        ));
        merge.push(format!(
            "{p}_sum = CASE WHEN metric_rollups.{p}_sum IS NULL THEN EXCLUDED.{p}_sum \
             ELSE metric_rollups.{p}_sum + COALESCE(EXCLUDED.{p}_sum, 0) END"
        ));
    }
    let columns: Vec<String> = METRICS
        .iter()
        .map(|(p, _)| format!("{p}_min, {p}_sum, {p}_max"))
        .collect();
    let (source, time_col, counts, latest) = match finer {
        None => (
            "metric_samples WHERE at >= $1 AND at < $2".to_string(),
            "at",
            "count(*), count(cpu_pct) + count(disk_rd_bps) - count(cpu_pct + disk_rd_bps)",
            "at",
        ),
        Some(f) => (
            format!("metric_rollups WHERE resolution = {f} AND bucket >= $1 AND bucket < $2"),
            "bucket",
            "sum(n), sum(rate_n)",
            "bucket",
        ),
    };
    format!(
        "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n, {cols})
         SELECT {res}, subject, {bucket}, bool_or(is_host),
                (array_agg(host_id ORDER BY {latest} DESC))[1],
                (array_agg(tenant_id ORDER BY {latest} DESC))[1],
                {counts}, {select}
         FROM {source}
         GROUP BY subject, {bucket}
         ON CONFLICT (resolution, subject, bucket) DO UPDATE SET {merge}",
        cols = columns.join(", "),
        bucket = bucket_expr(time_col, res),
        select = select.join(", "),
        merge = merge.join(", "),
    )
}

/// Rolls the hourly buckets of `[from, to)` (whole UTC days) into daily buckets with their
/// hours, outside the watermarks: for tests and benchmarks that write hourly buckets directly.
/// Rolling a day twice would count it twice.
pub async fn roll_days(pool: &PgPool, from: OffsetDateTime, to: OffsetDateTime) -> Result<()> {
    let (from, to) = (floor_to(from, 86400), floor_to(to, 86400));
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query(&rollup_sql(86400, Some(3600)))
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    day_hours(&mut tx, from, to).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes the hours of each VM's daily buckets in `[from, to)`: every sampled hour's mean CPU
/// (% of its vCPUs), disk and network (KiB/s), in hour order (what reclamation rules read).
async fn day_hours(tx: &mut db::Tx, from: OffsetDateTime, to: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE metric_rollups d SET cpu_hours = h.cpu, io_hours = h.io, net_hours = h.net
         FROM (SELECT subject, to_timestamp(floor(extract(epoch FROM bucket) / 86400) * 86400) AS day,
                      array_agg((cpu_sum / rate_n)::real ORDER BY bucket) AS cpu,
                      array_agg(((coalesce(rd_sum, 0) + coalesce(wr_sum, 0)) / rate_n / 1024)::real ORDER BY bucket) AS io,
                      array_agg(((coalesce(rx_sum, 0) + coalesce(tx_sum, 0)) / rate_n / 1024)::real ORDER BY bucket) AS net
               FROM metric_rollups
               WHERE resolution = 3600 AND NOT is_host AND rate_n > 0 AND bucket >= $1 AND bucket < $2
               GROUP BY 1, 2) h
         WHERE d.resolution = 86400 AND d.subject = h.subject AND d.bucket = h.day",
    )
    .bind(from)
    .bind(to)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn floor_to(t: OffsetDateTime, secs: i64) -> OffsetDateTime {
    let s = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(s - s.rem_euclid(secs)).expect("in range")
}

/// How long each level is kept. Daily buckets are kept for ever.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub raw: Duration,
    pub buckets: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::hours(48),
            // 13 months.
            buckets: Duration::days(395),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RollupReport {
    /// Rows written per resolution.
    pub written: [u64; 3],
    pub expired: u64,
}

/// Rolls every complete bucket not yet rolled, level by level, then expires old rows. Raw
/// samples are rolled once their 5-minute bucket ended `lag` ago (late writers).
pub async fn rollup(
    pool: &PgPool,
    now: OffsetDateTime,
    retention: Retention,
) -> Result<RollupReport> {
    let lag = Duration::seconds(30);
    let mut report = RollupReport::default();
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    if !crate::platform::cluster::once(&mut tx, "metrics").await? {
        return Ok(report);
    }
    let marks: HashMap<i32, OffsetDateTime> = sqlx::query_as::<_, (i32, OffsetDateTime)>(
        "SELECT resolution, upto FROM metric_watermarks",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // Where the finer level is complete up to; raw samples are complete up to now - lag.
    let mut finer_upto = now - lag;
    for (i, res) in RESOLUTIONS.iter().copied().enumerate() {
        let target = floor_to(finer_upto, i64::from(res));
        let from = match marks.get(&res) {
            Some(m) => *m,
            None => {
                // First run: start at the oldest data of the finer level.
                let oldest: Option<OffsetDateTime> = if i == 0 {
                    sqlx::query_scalar("SELECT min(at) FROM metric_samples")
                        .fetch_one(&mut *tx)
                        .await?
                } else {
                    sqlx::query_scalar(
                        "SELECT min(bucket) FROM metric_rollups WHERE resolution = $1",
                    )
                    .bind(RESOLUTIONS[i - 1])
                    .fetch_one(&mut *tx)
                    .await?
                };
                floor_to(oldest.unwrap_or(target).min(target), i64::from(res))
            }
        };
        if target > from {
            let finer = if i == 0 {
                None
            } else {
                Some(RESOLUTIONS[i - 1])
            };
            report.written[i] = sqlx::query(&rollup_sql(res, finer))
                .bind(from)
                .bind(target)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if res == 86400 {
                day_hours(&mut tx, from, target).await?;
            }
        }
        let upto = target.max(from);
        sqlx::query(
            "INSERT INTO metric_watermarks (resolution, upto) VALUES ($1, $2)
             ON CONFLICT (resolution) DO UPDATE SET upto = EXCLUDED.upto",
        )
        .bind(res)
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        finer_upto = upto;
    }
    report.expired += sqlx::query("DELETE FROM metric_samples WHERE at < $1")
        .bind(now - retention.raw)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    report.expired +=
        sqlx::query("DELETE FROM metric_rollups WHERE resolution < 86400 AND bucket < $1")
            .bind(now - retention.buckets)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok(report)
}

/// A chart's time range, as the range picker offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Range {
    Hours6,
    Hours24,
    Days7,
    Days30,
    Year,
}

impl Range {
    pub const ALL: [Range; 5] = [
        Range::Hours6,
        Range::Hours24,
        Range::Days7,
        Range::Days30,
        Range::Year,
    ];

    pub fn parse(s: &str) -> Option<Range> {
        Some(match s {
            "6h" => Range::Hours6,
            "24h" => Range::Hours24,
            "7d" => Range::Days7,
            "30d" => Range::Days30,
            "1y" => Range::Year,
            _ => return None,
        })
    }

    pub fn span(self) -> Duration {
        match self {
            Range::Hours6 => Duration::hours(6),
            Range::Hours24 => Duration::hours(24),
            Range::Days7 => Duration::days(7),
            Range::Days30 => Duration::days(30),
            Range::Year => Duration::days(365),
        }
    }

    /// The bucket size read for this range: a few hundred points at most.
    pub fn resolution(self) -> i32 {
        match self {
            Range::Hours6 | Range::Hours24 => 300,
            Range::Days7 | Range::Days30 => 3600,
            Range::Year => 86400,
        }
    }
}

/// One point of a series: the bucket's start and its min/avg/max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: OffsetDateTime,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// Series of one subject (or of all hosts, summed) by metric prefix.
pub type Series = HashMap<&'static str, Vec<Point>>;

/// The buckets of `res` in `[since, now)`: what was rolled into `res`, then each finer level
/// beyond the next coarser one's watermark, then raw samples beyond the 5-minute watermark,
/// all aggregated into `res` buckets, so a chart reaches the present. Parameters: $1 the
/// subjects, $2 since, $3.. the watermarks of each resolution (finest first), clamped to since.
fn series_sql(res: i32, subjects: &str) -> String {
    let idx = RESOLUTIONS
        .iter()
        .position(|r| *r == res)
        .expect("a resolution");
    let w = |k: usize| format!("${}", 3 + k);
    let rolled_cols: Vec<String> = METRICS
        .iter()
        .map(|(p, _)| format!("{p}_min::float8 AS {p}_min, {p}_sum, {p}_max::float8 AS {p}_max"))
        .collect();
    let finer_cols: Vec<String> = METRICS
        .iter()
        .map(|(p, _)| format!("min({p}_min)::float8, sum({p}_sum), max({p}_max)::float8"))
        .collect();
    let raw_cols: Vec<String> = METRICS
        .iter()
        .map(|(_, c)| format!("min({c})::float8, sum({c})::float8, max({c})::float8"))
        .collect();
    let mut parts = vec![format!(
        "SELECT subject, bucket, n::int8 AS n, rate_n::int8 AS rate_n, {cols}
         FROM metric_rollups WHERE resolution = {res} AND {subjects} AND bucket >= $2 AND bucket < {w}",
        cols = rolled_cols.join(", "),
        w = w(idx)
    )];
    for j in (0..idx).rev() {
        parts.push(format!(
            "SELECT subject, {b}, sum(n)::int8, sum(rate_n)::int8, {cols}
             FROM metric_rollups WHERE resolution = {f} AND {subjects} AND bucket >= {lo} AND bucket < {hi}
             GROUP BY subject, 2",
            b = bucket_expr("bucket", res),
            f = RESOLUTIONS[j],
            cols = finer_cols.join(", "),
            lo = w(j + 1),
            hi = w(j)
        ));
    }
    parts.push(format!(
        "SELECT subject, {b}, count(*)::int8,
                (count(cpu_pct) + count(disk_rd_bps) - count(cpu_pct + disk_rd_bps))::int8, {cols}
         FROM metric_samples WHERE {subjects} AND at >= {lo}
         GROUP BY subject, 2",
        b = bucket_expr("at", res),
        cols = raw_cols.join(", "),
        lo = w(0)
    ));
    let merged: Vec<String> = METRICS
        .iter()
        .map(|(p, _)| format!("min({p}_min), sum({p}_sum), max({p}_max)"))
        .collect();
    format!(
        "SELECT subject, bucket, sum(n)::int8, sum(rate_n)::int8, {merged}
         FROM ({union}) AS parts
         GROUP BY subject, bucket ORDER BY bucket",
        merged = merged.join(", "),
        union = parts.join(" UNION ALL ")
    )
}

type Row = (Uuid, OffsetDateTime, i64, i64, Vec<Option<f64>>);

async fn rows(
    tx: &mut db::Tx,
    res: i32,
    subjects: &str,
    subject_bind: Vec<Uuid>,
    since: OffsetDateTime,
) -> Result<Vec<Row>> {
    use sqlx::Row as _;
    let marks: HashMap<i32, OffsetDateTime> = sqlx::query_as::<_, (i32, OffsetDateTime)>(
        "SELECT resolution, upto FROM metric_watermarks",
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    // A level without a watermark holds nothing yet.
    let sql = series_sql(res, subjects);
    let mut query = sqlx::query(&sql).bind(subject_bind).bind(since);
    for r in RESOLUTIONS {
        query = query.bind(marks.get(&r).copied().unwrap_or(since).max(since));
    }
    let raw = query.fetch_all(&mut **tx).await?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let vals = (0..METRICS.len() * 3)
                .map(|i| r.try_get::<Option<f64>, _>(4 + i).unwrap_or(None))
                .collect();
            (r.get(0), r.get(1), r.get(2), r.get(3), vals)
        })
        .collect())
}

fn point(
    at: OffsetDateTime,
    min: Option<f64>,
    sum: Option<f64>,
    max: Option<f64>,
    n: i64,
) -> Option<Point> {
    match (min, sum, max) {
        (Some(min), Some(sum), Some(max)) if n > 0 => Some(Point {
            at,
            min,
            avg: sum / n as f64,
            max,
        }),
        _ => None,
    }
}

/// The series of one subject over `range` ending at `now`. The caller has checked the viewer
/// may see the subject; the scope is the second wall.
pub async fn subject_series(
    pool: &PgPool,
    scope: Scope,
    subject: Uuid,
    range: Range,
    now: OffsetDateTime,
) -> Result<Series> {
    let mut tx = db::begin(pool, scope).await?;
    let since = floor_to(now - range.span(), i64::from(range.resolution()));
    let rows = rows(
        &mut tx,
        range.resolution(),
        "subject = ANY($1)",
        vec![subject],
        since,
    )
    .await?;
    tx.commit().await?;
    let mut out = Series::new();
    for (_, at, n, rate_n, v) in rows {
        for (i, (p, _)) in METRICS.iter().enumerate() {
            let count = if matches!(*p, "mem" | "vms") {
                n
            } else {
                rate_n
            };
            if let Some(pt) = point(at, v[i * 3], v[i * 3 + 1], v[i * 3 + 2], count) {
                out.entry(*p).or_default().push(pt);
            }
        }
    }
    Ok(out)
}

/// Average CPU per subject over the last hours at 5-minute buckets: sparklines for a list.
pub async fn cpu_sparklines(
    pool: &PgPool,
    scope: Scope,
    subjects: Vec<Uuid>,
    now: OffsetDateTime,
) -> Result<HashMap<Uuid, Vec<Point>>> {
    let mut out: HashMap<Uuid, Vec<Point>> = HashMap::new();
    if subjects.is_empty() {
        return Ok(out);
    }
    // CPU only, from 5-minute buckets and the raw samples after them: a list shows dozens.
    let mut tx = db::begin(pool, scope).await?;
    let since = floor_to(now - Duration::hours(6), 300);
    let upto: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT upto FROM metric_watermarks WHERE resolution = 300")
            .fetch_optional(&mut *tx)
            .await?;
    let upto = upto.unwrap_or(since).max(since);
    /// subject, bucket, min, sum, max, samples.
    type CpuRow = (
        Uuid,
        OffsetDateTime,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        i64,
    );
    let rows: Vec<CpuRow> =
        sqlx::query_as(&format!(
            "SELECT subject, bucket, min(lo), sum(total), max(hi), sum(n)::int8 FROM (
                 SELECT subject, bucket, cpu_min::float8 AS lo, cpu_sum AS total, cpu_max::float8 AS hi, rate_n::int8 AS n
                 FROM metric_rollups WHERE resolution = 300 AND subject = ANY($1) AND bucket >= $2 AND bucket < $3
                 UNION ALL
                 SELECT subject, {b}, cpu_pct, cpu_pct, cpu_pct, 1
                 FROM metric_samples WHERE subject = ANY($1) AND at >= $3 AND cpu_pct IS NOT NULL
             ) AS parts GROUP BY subject, bucket ORDER BY bucket",
            b = bucket_expr("at", 300)
        ))
        .bind(&subjects)
        .bind(since)
        .bind(upto)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    for (subject, at, lo, total, hi, n) in rows {
        if let Some(pt) = point(at, lo, total, hi, n) {
            out.entry(subject).or_default().push(pt);
        }
    }
    Ok(out)
}

/// The fleet over `range`: CPU busy across all hosts (weighted by their CPUs), memory used and
/// running VMs summed over hosts.
pub async fn fleet_series(pool: &PgPool, range: Range, now: OffsetDateTime) -> Result<Series> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let since = floor_to(now - range.span(), i64::from(range.resolution()));
    let hosts: Vec<(Uuid, Option<i32>)> = sqlx::query_as("SELECT id, cpus FROM hosts")
        .fetch_all(&mut *tx)
        .await?;
    let cpus: HashMap<Uuid, f64> = hosts
        .iter()
        .map(|(id, c)| (*id, f64::from(c.unwrap_or(1).max(1))))
        .collect();
    let ids: Vec<Uuid> = hosts.into_iter().map(|(id, _)| id).collect();
    let rows = rows(
        &mut tx,
        range.resolution(),
        "is_host AND subject = ANY($1)",
        ids,
        since,
    )
    .await?;
    tx.commit().await?;
    // Per bucket: weighted CPU (sum of avg×cpus, sum of cpus), summed memory and VMs.
    #[derive(Default)]
    struct Acc {
        cpu: (f64, f64, f64, f64, f64),
        mem: (f64, f64, f64),
        vms: (f64, f64, f64),
        any_cpu: bool,
        any: bool,
    }
    let mut buckets: std::collections::BTreeMap<OffsetDateTime, Acc> = Default::default();
    for (subject, at, n, rate_n, v) in rows {
        let a = buckets.entry(at).or_default();
        let w = cpus.get(&subject).copied().unwrap_or(1.0);
        if let Some(p) = point(at, v[0], v[1], v[2], rate_n) {
            a.cpu.0 += p.min * w;
            a.cpu.1 += p.avg * w;
            a.cpu.2 += p.max * w;
            a.cpu.3 += w;
            a.any_cpu = true;
        }
        if let Some(p) = point(at, v[3], v[4], v[5], n) {
            a.mem.0 += p.min;
            a.mem.1 += p.avg;
            a.mem.2 += p.max;
            a.any = true;
        }
        if let Some(p) = point(at, v[18], v[19], v[20], n) {
            a.vms.0 += p.min;
            a.vms.1 += p.avg;
            a.vms.2 += p.max;
            a.any = true;
        }
    }
    let mut out = Series::new();
    for (at, a) in buckets {
        if a.any_cpu {
            let w = a.cpu.3;
            out.entry("cpu").or_default().push(Point {
                at,
                min: a.cpu.0 / w,
                avg: a.cpu.1 / w,
                max: a.cpu.2 / w,
            });
        }
        if a.any {
            out.entry("mem").or_default().push(Point {
                at,
                min: a.mem.0,
                avg: a.mem.1,
                max: a.mem.2,
            });
            out.entry("vms").or_default().push(Point {
                at,
                min: a.vms.0,
                avg: a.vms.1,
                max: a.vms.2,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn rates_from_deltas_with_resets_and_gaps() {
        let host = Uuid::from_u128(1);
        let vm = Uuid::from_u128(2);
        let vcpus = HashMap::from([(vm, 2)]);
        let hc = |total, idle| HostCounters {
            cpu_total_ns: Some(total),
            cpu_idle_ns: Some(idle),
            mem_used_bytes: Some(100),
        };
        let dc = |cpu, rd| DomainCounters {
            uuid: vm,
            cpu_time_ns: Some(cpu),
            mem_bytes: Some(4096),
            rd_bytes: rd,
            ..Default::default()
        };
        let gap = Duration::seconds(60);
        let mut s = Sampler::default();
        let (h, v) = s.sample(host, t(0), hc(1_000, 500), vec![dc(0, 0)], &vcpus, gap);
        assert_eq!(
            (h.cpu_pct, v[0].cpu_pct, v[0].disk_rd_bps),
            (None, None, None)
        );
        assert_eq!((h.vms, v[0].mem_bytes), (Some(1), Some(4096)));
        // 15 s later: 15 s of one vCPU out of two = 50 %; 1,500 bytes read = 100 B/s.
        let (h, v) = s.sample(
            host,
            t(15),
            hc(2_000, 750),
            vec![dc(15_000_000_000, 1_500)],
            &vcpus,
            gap,
        );
        assert_eq!(h.cpu_pct, Some(75.0));
        assert_eq!(v[0].cpu_pct, Some(50.0));
        assert_eq!(v[0].disk_rd_bps, Some(100.0));
        // The domain restarted: its counters start again from zero.
        let (_, v) = s.sample(
            host,
            t(30),
            hc(3_000, 1_000),
            vec![dc(3_000_000_000, 300)],
            &vcpus,
            gap,
        );
        assert_eq!(v[0].cpu_pct, Some(10.0));
        assert_eq!(v[0].disk_rd_bps, Some(20.0));
        // The host rebooted: no host rate, but domains still get theirs.
        let (h, _) = s.sample(
            host,
            t(45),
            hc(10, 5),
            vec![dc(3_000_000_000, 300)],
            &vcpus,
            gap,
        );
        assert_eq!(h.cpu_pct, None);
        // A gap longer than allowed: no rates at all.
        let (h, v) = s.sample(
            host,
            t(200),
            hc(20, 5),
            vec![dc(9_000_000_000, 300)],
            &vcpus,
            gap,
        );
        assert_eq!(
            (h.cpu_pct, v[0].cpu_pct, v[0].disk_rd_bps),
            (None, None, None)
        );
        // A domain seen for the first time has no rates; CPU is capped at 100 %.
        let other = DomainCounters {
            uuid: Uuid::from_u128(3),
            cpu_time_ns: Some(1),
            ..Default::default()
        };
        let (_, v) = s.sample(
            host,
            t(215),
            hc(30, 5),
            vec![dc(99_000_000_000, 300), other],
            &vcpus,
            gap,
        );
        assert_eq!(v[0].cpu_pct, Some(100.0));
        assert_eq!(v[1].cpu_pct, None);
    }

    #[test]
    fn ranges_choose_resolutions() {
        assert_eq!(Range::parse("6h").map(Range::resolution), Some(300));
        assert_eq!(Range::parse("30d").map(Range::resolution), Some(3600));
        assert_eq!(Range::parse("1y").map(Range::resolution), Some(86400));
        assert_eq!(Range::parse("2h"), None);
    }
}
