//! What is wrong now, found three ways: threshold rules over the raw samples, faults in the
//! inventory (crashed or I/O-paused domains, lost or flapping hosts, failing provisioning),
//! and anomalies (a VM's last hour far from its own median at that hour of day, in robust
//! units: z = 0.6745 (x − median) / MAD). Each finding says whether it is established (fire)
//! or merely still there (keep firing, do not resolve): a threshold alert fires after the
//! whole duration beyond the threshold and resolves when the latest sample is back.
use crate::platform::db::Tx;
use crate::platform::error::Result;
use time::OffsetDateTime;
use uuid::Uuid;

/// The subject of fleet-wide findings (provisioning as a whole).
pub const FLEET: Uuid = Uuid::nil();

#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: &'static str,
    pub cause: String,
    pub rule_id: Option<Uuid>,
    pub subject: Uuid,
    pub subject_kind: &'static str,
    pub subject_name: String,
    pub host_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    pub severity: String,
    pub title: String,
    pub detail: String,
    pub value: Option<f64>,
    /// Fire when not firing yet; otherwise it only keeps a firing alert from resolving.
    pub established: bool,
    /// Who is told: the fleet admins, and/or the admins of this tenant.
    pub fleet: bool,
    pub tenant_admins: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    name: String,
    subject: String,
    metric: String,
    above: bool,
    threshold: f64,
    for_minutes: i32,
    severity: String,
}

#[derive(sqlx::FromRow)]
struct Window {
    subject: Uuid,
    name: String,
    host_id: Uuid,
    tenant_id: Option<Uuid>,
    lo: f64,
    hi: f64,
    first: OffsetDateTime,
    n: i64,
    latest: f64,
}

fn unit(metric: &str) -> &'static str {
    match metric {
        "cpu" | "memory" | "headroom" => " %",
        _ => " KiB/s",
    }
}

/// Subjects of each enabled threshold rule beyond its threshold.
pub async fn thresholds(tx: &mut Tx, now: OffsetDateTime) -> Result<Vec<Finding>> {
    let rules: Vec<RuleRow> = sqlx::query_as(
        "SELECT id, tenant_id, name, subject, metric, above, threshold, for_minutes, severity
         FROM alert_rules WHERE enabled ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    // Headroom is read from the inventory (`headroom`), not from samples.
    for r in rules.into_iter().filter(|r| r.metric != "headroom") {
        let value = match r.metric.as_str() {
            "cpu" => "m.cpu_pct::float8",
            "memory" => {
                "m.mem_bytes * 100.0 / nullif(CASE WHEN m.is_host THEN h.memory_kib * 1024.0
                     ELSE coalesce(v.memory_mib * 1048576.0, d.memory_kib * 1024.0) END, 0)"
            }
            "disk" => "(m.disk_rd_bps + m.disk_wr_bps)::float8 / 1024",
            _ => "(m.net_rx_bps + m.net_tx_bps)::float8 / 1024",
        };
        let sql = format!(
            "SELECT m.subject, coalesce(v.name, d.name, h.name, m.subject::text) AS name, m.host_id,
                    coalesce(v.tenant_id, m.tenant_id) AS tenant_id, min(e.x) AS lo, max(e.x) AS hi,
                    min(m.at) AS first, count(*) AS n, (array_agg(e.x ORDER BY m.at DESC))[1] AS latest
             FROM metric_samples m
             LEFT JOIN vms v ON NOT m.is_host AND v.uuid = m.subject
             LEFT JOIN domains d ON NOT m.is_host AND d.host_id = m.host_id AND d.uuid = m.subject
             LEFT JOIN hosts h ON h.id = m.host_id
             CROSS JOIN LATERAL (SELECT ({value})::float8 AS x) e
             WHERE m.is_host = $1 AND m.at > $2 - make_interval(mins => $3) AND m.at <= $2
               AND ($4::uuid IS NULL OR m.tenant_id = $4) AND e.x IS NOT NULL
             GROUP BY 1, 2, 3, 4"
        );
        let windows: Vec<Window> = sqlx::query_as(&sql)
            .bind(r.subject == "host")
            .bind(now)
            .bind(r.for_minutes)
            .bind(r.tenant_id)
            .fetch_all(&mut **tx)
            .await?;
        let covered = now - time::Duration::seconds(i64::from(r.for_minutes) * 45);
        for w in windows {
            let (beyond_all, beyond_now) = if r.above {
                (w.lo > r.threshold, w.latest > r.threshold)
            } else {
                (w.hi < r.threshold, w.latest < r.threshold)
            };
            if !beyond_now {
                continue;
            }
            let dir = if r.above { "above" } else { "below" };
            out.push(Finding {
                kind: "threshold",
                cause: r.id.to_string(),
                rule_id: Some(r.id),
                subject: w.subject,
                subject_kind: if r.subject == "host" { "host" } else { "vm" },
                subject_name: w.name.clone(),
                host_id: Some(w.host_id),
                tenant_id: w.tenant_id,
                severity: r.severity.clone(),
                title: format!(
                    "{}: {} ({} {dir} {}{} for {} min)",
                    w.name,
                    r.name,
                    r.metric,
                    r.threshold,
                    unit(&r.metric),
                    r.for_minutes
                ),
                detail: format!("Now {:.1}{}.", w.latest, unit(&r.metric)),
                value: Some(w.latest),
                established: beyond_all && w.n >= 2 && w.first <= covered,
                fleet: r.tenant_id.is_none(),
                tenant_admins: r.tenant_id,
            });
        }
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct Headroom {
    rule_id: Uuid,
    name: String,
    above: bool,
    threshold: f64,
    for_minutes: i32,
    severity: String,
    host: Uuid,
    host_name: String,
    memory_pct: f64,
    vcpu_pct: f64,
    since: Option<OffsetDateTime>,
}

/// Connected hosts whose capacity headroom (the smaller of free memory and free vCPUs after
/// overcommit, as a share, allocated to running domains) is beyond a headroom rule's
/// threshold; when each went beyond is kept in `alert_pending`, so the rule's duration counts
/// across checks, and forgotten when it comes back.
pub async fn headroom(tx: &mut Tx, now: OffsetDateTime, overcommit: f64) -> Result<Vec<Finding>> {
    let rows: Vec<Headroom> = sqlx::query_as(
        "SELECT r.id AS rule_id, r.name, r.above, r.threshold, r.for_minutes, r.severity,
                h.id AS host, h.name AS host_name,
                100.0 - coalesce(a.memory_kib, 0) * 100.0 / greatest(h.memory_kib, 1) AS memory_pct,
                100.0 - coalesce(a.vcpus, 0) * 100.0 / greatest(h.cpus * $1, 1) AS vcpu_pct,
                p.since
         FROM alert_rules r CROSS JOIN hosts h
         LEFT JOIN (SELECT host_id, sum(vcpus)::float8 AS vcpus, sum(memory_kib)::float8 AS memory_kib
                    FROM domains WHERE missing_since IS NULL AND state NOT IN ('shutoff', 'crashed')
                    GROUP BY host_id) a ON a.host_id = h.id
         LEFT JOIN alert_pending p ON p.rule_id = r.id AND p.subject = h.id
         WHERE r.enabled AND r.metric = 'headroom' AND h.state = 'connected' AND h.memory_kib > 0
         ORDER BY r.id, h.name",
    )
    .bind(overcommit)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    for h in rows {
        let value = h.memory_pct.min(h.vcpu_pct);
        let beyond = if h.above {
            value > h.threshold
        } else {
            value < h.threshold
        };
        if !beyond {
            sqlx::query("DELETE FROM alert_pending WHERE rule_id = $1 AND subject = $2")
                .bind(h.rule_id)
                .bind(h.host)
                .execute(&mut **tx)
                .await?;
            continue;
        }
        let since = match h.since {
            Some(s) => s,
            None => {
                sqlx::query(
                    "INSERT INTO alert_pending (rule_id, subject, since) VALUES ($1, $2, $3)",
                )
                .bind(h.rule_id)
                .bind(h.host)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                now
            }
        };
        let dir = if h.above { "above" } else { "below" };
        out.push(Finding {
            kind: "threshold",
            cause: h.rule_id.to_string(),
            rule_id: Some(h.rule_id),
            subject: h.host,
            subject_kind: "host",
            subject_name: h.host_name.clone(),
            host_id: Some(h.host),
            tenant_id: None,
            severity: h.severity,
            title: format!(
                "{}: {} (headroom {dir} {} % for {} min)",
                h.host_name, h.name, h.threshold, h.for_minutes
            ),
            detail: format!(
                "Now {:.1} % free: memory {:.1} %, vCPUs {:.1} %.",
                value, h.memory_pct, h.vcpu_pct
            ),
            value: Some(value),
            established: since <= now - time::Duration::minutes(i64::from(h.for_minutes)),
            fleet: true,
            tenant_admins: None,
        });
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct Fault {
    cause: String,
    subject: Uuid,
    subject_kind: String,
    name: String,
    host_id: Option<Uuid>,
    tenant_id: Option<Uuid>,
    severity: String,
    title: String,
    detail: String,
}

/// Crashed or I/O-paused domains, lost hosts, hosts lost three times within the hour, and
/// provisioning failing for a fifth or more of the last hour's VMs (at least three).
pub async fn faults(tx: &mut Tx, now: OffsetDateTime) -> Result<Vec<Finding>> {
    let rows: Vec<Fault> = sqlx::query_as(
        "SELECT CASE WHEN d.state = 'crashed' THEN 'crashed' ELSE 'io_error' END AS cause, d.uuid AS subject,
                'vm' AS subject_kind, coalesce(v.name, d.name) AS name, d.host_id, d.tenant_id, 'critical' AS severity,
                coalesce(v.name, d.name)
                    || CASE WHEN d.state = 'crashed' THEN ' crashed' ELSE ' is paused on an I/O error' END AS title,
                coalesce(d.state_reason, '') AS detail
         FROM domains d LEFT JOIN vms v ON v.uuid = d.uuid AND v.deleted_at IS NULL
         WHERE d.missing_since IS NULL
           AND (d.state = 'crashed' OR (d.state = 'paused' AND d.state_reason ILIKE '%io%error%'))
         UNION ALL
         SELECT 'lost', h.id, 'host', h.name, h.id, NULL, 'critical', 'Host ' || h.name || ' is lost',
                coalesce(h.state_reason, '')
         FROM hosts h WHERE h.state = 'lost'
         UNION ALL
         SELECT 'flapping', h.id, 'host', h.name, h.id, NULL, 'warning',
                'Host ' || h.name || ' is flapping', 'Lost ' || c.n || ' times in the last hour.'
         FROM hosts h JOIN (SELECT host_id, count(*) AS n FROM host_state_changes
                            WHERE state = 'lost' AND at > $1 - interval '1 hour' GROUP BY host_id) c
           ON c.host_id = h.id
         WHERE c.n >= 3
         UNION ALL
         SELECT 'provisioning', $2, 'fleet', 'Provisioning', NULL, NULL, 'warning',
                'Provisioning is failing', f.failed || ' of the last hour''s ' || f.total || ' VMs failed.'
         FROM (SELECT count(*) FILTER (WHERE phase = 'failed') AS failed, count(*) AS total
               FROM vms WHERE created_at > $1 - interval '1 hour'
                 AND phase IN ('failed', 'running', 'expired', 'deleting', 'deleted')) f
         WHERE f.failed >= 3 AND f.failed * 5 >= f.total",
    )
    .bind(now)
    .bind(FLEET)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|f| Finding {
            kind: "fault",
            rule_id: None,
            subject: f.subject,
            subject_kind: match f.subject_kind.as_str() {
                "vm" => "vm",
                "host" => "host",
                _ => "fleet",
            },
            subject_name: f.name,
            host_id: f.host_id,
            tenant_id: f.tenant_id,
            severity: f.severity,
            title: f.title,
            detail: f.detail,
            value: None,
            established: true,
            fleet: true,
            tenant_admins: f.tenant_id,
            cause: f.cause,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct Unusual {
    subject: Uuid,
    name: String,
    host_id: Uuid,
    tenant_id: Uuid,
    hour: i32,
    x: f64,
    median: f64,
    z: f64,
}

/// Running portal VMs whose CPU in the last complete hour is far from their own median for
/// that hour of day over the 14 days before (|z| ≥ 5 and at least 10 points apart; the MAD is
/// taken as at least one point, so a perfectly regular VM is not flagged for a small change).
pub async fn anomalies(tx: &mut Tx, now: OffsetDateTime) -> Result<Vec<Finding>> {
    let rows: Vec<Unusual> = sqlx::query_as(
        "WITH last AS (SELECT date_trunc('hour', $1::timestamptz) - interval '1 hour' AS b),
         cur AS (
            SELECT r.subject, extract(hour FROM r.bucket)::int AS hour, r.cpu_sum / r.rate_n AS x
            FROM metric_rollups r, last
            WHERE r.resolution = 3600 AND NOT r.is_host AND r.bucket = last.b AND r.rate_n > 0),
         base AS (
            SELECT r.subject, c.hour, r.cpu_sum / r.rate_n AS v
            FROM cur c JOIN metric_rollups r ON r.resolution = 3600 AND r.subject = c.subject, last
            WHERE r.bucket >= last.b - interval '14 days' AND r.bucket < last.b AND r.rate_n > 0
              AND extract(hour FROM r.bucket)::int = c.hour),
         med AS (SELECT subject, hour, percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS m, count(*) AS n
                 FROM base GROUP BY 1, 2),
         mad AS (SELECT b.subject, percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(b.v - med.m)) AS d
                 FROM base b JOIN med USING (subject, hour) GROUP BY 1)
         SELECT c.subject, v.name, v.host_id, v.tenant_id, c.hour, c.x, med.m AS median,
                0.6745 * (c.x - med.m) / greatest(mad.d, 1.0) AS z
         FROM cur c JOIN med USING (subject, hour) JOIN mad USING (subject)
         JOIN vms v ON v.uuid = c.subject AND v.deleted_at IS NULL AND v.phase = 'running'
         WHERE med.n >= 5",
    )
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|u| u.z.abs() >= 5.0 && (u.x - u.median).abs() >= 10.0)
        .map(|u| Finding {
            kind: "anomaly",
            cause: "cpu".into(),
            rule_id: None,
            subject: u.subject,
            subject_kind: "vm",
            subject_name: u.name.clone(),
            host_id: Some(u.host_id),
            tenant_id: Some(u.tenant_id),
            severity: "warning".into(),
            title: format!("{}: unusual CPU", u.name),
            detail: format!(
                "{:.0} % at {:02}:00 UTC; usually {:.0} % at that hour (robust z = {:.1}).",
                u.x, u.hour, u.median, u.z
            ),
            value: Some(u.x),
            established: true,
            fleet: false,
            tenant_admins: Some(u.tenant_id),
        })
        .collect())
}
