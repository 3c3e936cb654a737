//! A reclamation rule's thresholds, checked from the form, and the VMs it matches now with the
//! figures that matched. One SQL statement per kind over the tenants it covers: the dry run
//! and the periodic evaluation run the same code.
use crate::platform::db::Tx;
use crate::platform::error::Result;
use app::error::AppError;
use app::reclamation::{Figure, RuleForm, ACTIONS, RULE_KINDS};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Rule {
    pub kind: String,
    pub enabled: bool,
    pub days: i32,
    pub cpu_pct: f32,
    pub mem_pct: f32,
    pub io_kbps: f32,
    pub net_kbps: f32,
    pub share_pct: i32,
    pub action: String,
    pub response_days: i32,
}

/// Where a rule applies: one tenant, or the fleet default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tenant(Uuid),
    Fleet,
}

impl Target {
    pub fn tenant(self) -> Option<Uuid> {
        match self {
            Target::Tenant(t) => Some(t),
            Target::Fleet => None,
        }
    }
}

fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    raw: &str,
    field: &'static str,
    what: &str,
    min: T,
    max: T,
    default: T,
) -> Result<T, AppError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(default);
    }
    match raw.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(AppError::field(
            field,
            format!("Enter {what} from {min} to {max}."),
        )),
    }
}

impl Rule {
    /// The form's rule, or the first field that is wrong.
    pub fn parse(form: &RuleForm) -> Result<(Target, Rule), AppError> {
        let target = match form.scope.trim() {
            "fleet" => Target::Fleet,
            s => Target::Tenant(
                s.parse()
                    .map_err(|_| AppError::field("scope", "Choose the tenant this rule is for."))?,
            ),
        };
        let kind = form.kind.trim();
        if !RULE_KINDS.iter().any(|(k, _)| *k == kind) {
            return Err(AppError::field("kind", "Choose what the rule looks for."));
        }
        let oversized = kind == "oversized";
        let action = match form.action.trim() {
            "" if oversized => "shrink",
            "" => "stop",
            a => a,
        };
        if !ACTIONS.iter().any(|(a, _)| *a == action) {
            return Err(AppError::field("action", "Choose stop, delete or shrink."));
        }
        // A VM that is too big is made smaller, not taken away; only those are shrunk.
        if oversized != (action == "shrink") {
            return Err(AppError::field(
                "action",
                if oversized {
                    "Oversized VMs are shrunk: choose shrink."
                } else {
                    "Only oversized VMs are shrunk: choose stop or delete."
                },
            ));
        }
        let default_days = match kind {
            "idle" | "oversized" => 14,
            "powered_off" => 30,
            _ => 1,
        };
        Ok((
            target,
            Rule {
                kind: kind.to_string(),
                enabled: form
                    .enabled
                    .as_deref()
                    .is_some_and(|v| v == "on" || v == "true"),
                days: number(&form.days, "days", "a number of days", 1, 365, default_days)?,
                cpu_pct: number(
                    &form.cpu_pct,
                    "cpu_pct",
                    "a percentage",
                    0.0,
                    100.0,
                    if oversized { 25.0 } else { 5.0 },
                )?,
                mem_pct: number(&form.mem_pct, "mem_pct", "a percentage", 0.0, 100.0, 50.0)?,
                io_kbps: number(&form.io_kbps, "io_kbps", "KiB/s", 0.0, 1e7, 100.0)?,
                net_kbps: number(&form.net_kbps, "net_kbps", "KiB/s", 0.0, 1e7, 20.0)?,
                share_pct: number(&form.share_pct, "share_pct", "a percentage", 1, 100, 90)?,
                action: action.to_string(),
                response_days: number(
                    &form.response_days,
                    "response_days",
                    "a number of days",
                    1,
                    90,
                    7,
                )?,
            },
        ))
    }
}

/// A VM the rule matches now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Found {
    #[sqlx(rename = "uuid")]
    pub vm: Uuid,
    pub host_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub name: String,
    pub owner_id: Option<Uuid>,
    pub owner_email: Option<String>,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// Idle: days in the window, idle days, mean and peak CPU; powered off: since when.
    pub days_seen: Option<i64>,
    pub idle_days: Option<i64>,
    pub cpu_mean: Option<f64>,
    pub cpu_peak: Option<f64>,
    pub io_mean_kbps: Option<f64>,
    pub net_mean_kbps: Option<f64>,
    pub off_since: Option<OffsetDateTime>,
    pub daily_cpu: Option<Vec<f32>>,
    /// Oversized: the 95th percentiles of hourly CPU (% of its vCPUs) and memory in use (MiB),
    /// the template's sizes, and the size proposed from them.
    pub cpu_p95: Option<f64>,
    pub mem_p95_mib: Option<f64>,
    pub sizes: Option<serde_json::Value>,
    #[sqlx(skip)]
    pub proposed: Option<Size>,
}

/// A size of a template, as `templates.sizes` holds it (the disk is never shrunk).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    pub name: String,
    pub vcpus: i32,
    pub memory_mib: i64,
}

/// Headroom left above the 95th percentile in a proposed size: it runs at most 70 % busy.
const TARGET_SHARE: f64 = 0.7;

/// The smallest of the template's sizes that still holds the 95th percentiles with headroom,
/// if it is smaller than the VM is now (and no larger in either dimension).
pub fn smaller_size(
    vcpus: i32,
    memory_mib: i64,
    cpu_p95: f64,
    mem_p95_mib: f64,
    sizes: &[Size],
) -> Option<Size> {
    let need_vcpus = ((f64::from(vcpus) * cpu_p95 / 100.0) / TARGET_SHARE)
        .ceil()
        .max(1.0);
    let need_mib = (mem_p95_mib / TARGET_SHARE).ceil();
    sizes
        .iter()
        .filter(|s| f64::from(s.vcpus) >= need_vcpus && s.memory_mib as f64 >= need_mib)
        .filter(|s| s.vcpus <= vcpus && s.memory_mib <= memory_mib)
        .filter(|s| s.vcpus < vcpus || s.memory_mib < memory_mib)
        .min_by_key(|s| (s.memory_mib, s.vcpus))
        .cloned()
}

fn gib(mib: f64) -> String {
    format!("{:.1} GiB", mib / 1024.0)
}

impl Found {
    /// The figures that matched, for the page, the notification and the proposal.
    pub fn figures(&self, rule: &Rule, now: OffsetDateTime) -> Vec<Figure> {
        let f = |label: String, value: String| Figure { label, value };
        match rule.kind.as_str() {
            "idle" => vec![
                f(
                    format!("Idle days (of {})", rule.days),
                    format!("{}", self.idle_days.unwrap_or(0)),
                ),
                f(
                    format!("CPU, {}-day mean", rule.days),
                    format!("{:.1} %", self.cpu_mean.unwrap_or(0.0)),
                ),
                f(
                    "CPU, hourly peak".into(),
                    format!("{:.1} %", self.cpu_peak.unwrap_or(0.0)),
                ),
                f(
                    "Disk, mean".into(),
                    format!("{:.1} KiB/s", self.io_mean_kbps.unwrap_or(0.0)),
                ),
                f(
                    "Network, mean".into(),
                    format!("{:.1} KiB/s", self.net_mean_kbps.unwrap_or(0.0)),
                ),
            ],
            "oversized" => {
                let mut out = vec![
                    f(
                        format!("CPU, 95th percentile over {} days", rule.days),
                        format!(
                            "{:.1} % of {} vCPU{}",
                            self.cpu_p95.unwrap_or(0.0),
                            self.vcpus,
                            if self.vcpus == 1 { "" } else { "s" }
                        ),
                    ),
                    f(
                        "Memory in use, 95th percentile".into(),
                        format!(
                            "{} of {}",
                            gib(self.mem_p95_mib.unwrap_or(0.0)),
                            gib(self.memory_mib as f64)
                        ),
                    ),
                ];
                if let Some(s) = &self.proposed {
                    out.push(f(
                        "Proposed size".into(),
                        format!(
                            "{}: {} vCPU{}, {}",
                            s.name,
                            s.vcpus,
                            if s.vcpus == 1 { "" } else { "s" },
                            gib(s.memory_mib as f64)
                        ),
                    ));
                }
                out
            }
            "powered_off" => {
                let since = self.off_since.unwrap_or(now);
                vec![
                    f("Off since".into(), since.date().to_string()),
                    f("Days off".into(), format!("{}", (now - since).whole_days())),
                ]
            }
            _ => vec![f(
                "Owner".into(),
                match &self.owner_email {
                    Some(e) => format!("{e} is no longer a member"),
                    None => "none (the account was removed)".into(),
                },
            )],
        }
    }
}

/// Midnight (UTC) of `$3`, the evaluation's now: windows of days end there.
const TODAY: &str = "date_bin('1 day', $3::timestamptz, timestamptz '2000-01-01 00:00:00+00')";

/// The oversized columns, empty for the other kinds.
const NO_SIZES: &str = "NULL::float8 AS cpu_p95, NULL::float8 AS mem_p95_mib, NULL::jsonb AS sizes";

/// The VMs of `tenants` that `rule` matches at `now`, leaving out those whose owner kept them
/// from this kind of rule until a later date.
pub async fn candidates(
    tx: &mut Tx,
    tenants: &[Uuid],
    rule: &Rule,
    now: OffsetDateTime,
) -> Result<Vec<Found>> {
    // The VMs in question: live portal VMs of these tenants, not kept from this rule.
    const VMS: &str = "SELECT v.uuid, v.host_id, v.tenant_id, t.name AS tenant_name, v.name, v.owner_id,
               u.email AS owner_email, v.vcpus, v.memory_mib, v.disk_gib
        FROM vms v JOIN tenants t ON t.id = v.tenant_id LEFT JOIN users u ON u.id = v.owner_id
        WHERE v.tenant_id = ANY($1) AND v.deleted_at IS NULL AND v.phase = 'running'
          AND NOT EXISTS (SELECT 1 FROM reclamation_proposals p
                          WHERE p.vm_uuid = v.uuid AND p.kind = $2 AND p.state = 'kept' AND p.keep_until > $3)";
    let sql = match rule.kind.as_str() {
        // The VM's daily buckets of the last `days` complete days (UTC), each with its sampled
        // hours' means (`cpu_hours`, `io_hours`, `net_hours`, written by the rollup when the
        // day completed): a day is idle when enough of its hours are below every threshold
        // (`idle_hours`, a parallel-safe function, so every worker counts), and a VM matches
        // when each of the days has samples and is idle. Then the figures, for matches only.
        // One row per VM and day instead of one per hour: see benchmarks.md.
        "idle" => format!(
            "WITH days AS (
                SELECT r.subject,
                       idle_hours(r.cpu_hours, r.io_hours, r.net_hours, $5, $6, $7) * 100
                           >= cardinality(r.cpu_hours) * $8 AS idle
                FROM metric_rollups r
                WHERE r.resolution = 86400 AND NOT r.is_host AND r.tenant_id = ANY($1) AND r.rate_n > 0
                  AND r.cpu_hours IS NOT NULL
                  AND r.bucket >= {today} - make_interval(days => $4) AND r.bucket < {today}),
             matched AS (
                SELECT subject, count(*) AS days_seen, count(*) FILTER (WHERE idle) AS idle_days
                FROM days GROUP BY subject HAVING count(*) FILTER (WHERE idle) >= $4),
             vm AS ({VMS})
             SELECT vm.*, m.days_seen, m.idle_days, f.cpu_mean, f.cpu_peak, f.io_mean_kbps, f.net_mean_kbps,
                    NULL::timestamptz AS off_since, f.daily_cpu, {NO_SIZES}
             FROM matched m JOIN vm ON vm.uuid = m.subject
             CROSS JOIN LATERAL (
                SELECT avg(r.cpu_sum / r.rate_n) AS cpu_mean,
                       max((SELECT max(c) FROM unnest(r.cpu_hours) c))::float8 AS cpu_peak,
                       avg((coalesce(r.rd_sum, 0) + coalesce(r.wr_sum, 0)) / r.rate_n / 1024) AS io_mean_kbps,
                       avg((coalesce(r.rx_sum, 0) + coalesce(r.tx_sum, 0)) / r.rate_n / 1024) AS net_mean_kbps,
                       array_agg((r.cpu_sum / r.rate_n)::real ORDER BY r.bucket DESC) AS daily_cpu
                FROM metric_rollups r
                WHERE r.resolution = 86400 AND r.subject = m.subject AND r.rate_n > 0 AND r.cpu_hours IS NOT NULL
                  AND r.bucket >= {today} - make_interval(days => $4) AND r.bucket < {today}) f
             ORDER BY vm.tenant_name, vm.name",
            today = TODAY
        ),
        // The 95th percentiles of hourly CPU and of hourly peak memory over the window (every
        // day of it sampled), both below their share of the VM's size; the size is chosen
        // from the template's after the query.
        "oversized" => format!(
            "WITH hours AS (
                SELECT r.subject, date_bin('1 day', r.bucket, $3) AS day, r.cpu_sum / r.rate_n AS cpu, r.mem_max
                FROM metric_rollups r
                WHERE r.resolution = 3600 AND NOT r.is_host AND r.tenant_id = ANY($1) AND r.rate_n > 0
                  AND r.bucket >= $3 - make_interval(days => $4) AND r.bucket < $3),
             p AS (
                SELECT subject, count(DISTINCT day) AS days_seen, max(cpu) AS cpu_peak,
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY cpu) AS cpu_p95,
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY mem_max) / 1048576 AS mem_p95_mib
                FROM hours GROUP BY subject HAVING count(DISTINCT day) >= $4),
             daily AS (
                SELECT subject, array_agg(cpu::real ORDER BY day DESC) AS daily_cpu
                FROM (SELECT subject, day, avg(cpu) AS cpu FROM hours GROUP BY 1, 2) d GROUP BY 1),
             vm AS ({VMS})
             SELECT vm.*, p.days_seen, NULL::int8 AS idle_days, NULL::float8 AS cpu_mean, p.cpu_peak,
                    NULL::float8 AS io_mean_kbps, NULL::float8 AS net_mean_kbps,
                    NULL::timestamptz AS off_since, daily.daily_cpu, p.cpu_p95, p.mem_p95_mib,
                    (SELECT t.sizes FROM vms v2 JOIN templates t ON t.id = v2.template_id WHERE v2.uuid = vm.uuid) AS sizes
             FROM p JOIN vm ON vm.uuid = p.subject JOIN daily ON daily.subject = p.subject
             WHERE p.cpu_p95 < $5 AND p.mem_p95_mib < vm.memory_mib * $9 / 100
             ORDER BY vm.tenant_name, vm.name"
        ),
        // Off now, and since the last time it was seen in any other state.
        "powered_off" => format!(
            "WITH vm AS ({VMS})
             SELECT vm.*, NULL::int8 AS days_seen, NULL::int8 AS idle_days, NULL::float8 AS cpu_mean,
                    NULL::float8 AS cpu_peak, NULL::float8 AS io_mean_kbps, NULL::float8 AS net_mean_kbps,
                    off.since AS off_since, NULL::real[] AS daily_cpu, {NO_SIZES}
             FROM vm JOIN domains d ON d.host_id = vm.host_id AND d.uuid = vm.uuid
             CROSS JOIN LATERAL (
                SELECT min(h.at) AS since FROM domain_state_history h
                WHERE h.uuid = vm.uuid AND h.state = 'shutoff'
                  AND h.at > coalesce((SELECT max(o.at) FROM domain_state_history o
                                       WHERE o.uuid = vm.uuid AND o.state <> 'shutoff'), '-infinity')) off
             WHERE d.state = 'shutoff' AND d.missing_since IS NULL
               AND off.since <= $3 - make_interval(days => $4)
             ORDER BY vm.tenant_name, vm.name"
        ),
        // The owner is gone (account removed) or no longer a member of the VM's tenant.
        _ => format!(
            "WITH vm AS ({VMS})
             SELECT vm.*, NULL::int8 AS days_seen, NULL::int8 AS idle_days, NULL::float8 AS cpu_mean,
                    NULL::float8 AS cpu_peak, NULL::float8 AS io_mean_kbps, NULL::float8 AS net_mean_kbps,
                    NULL::timestamptz AS off_since, NULL::real[] AS daily_cpu, {NO_SIZES}
             FROM vm
             WHERE $4 > 0 AND NOT EXISTS (SELECT 1 FROM memberships m
                                          WHERE m.tenant_id = vm.tenant_id AND m.user_id = vm.owner_id)
             ORDER BY vm.tenant_name, vm.name"
        ),
    };
    if matches!(rule.kind.as_str(), "idle" | "oversized") {
        // The sorts of many VMs' days (idle) or hours (oversized) fit in memory, not on disk.
        sqlx::query("SET LOCAL work_mem = '64MB'")
            .execute(&mut **tx)
            .await?;
    }
    let mut found: Vec<Found> = sqlx::query_as(&sql)
        .bind(tenants)
        .bind(&rule.kind)
        .bind(now)
        .bind(rule.days)
        .bind(f64::from(rule.cpu_pct))
        .bind(f64::from(rule.io_kbps))
        .bind(f64::from(rule.net_kbps))
        .bind(rule.share_pct)
        .bind(f64::from(rule.mem_pct))
        .fetch_all(&mut **tx)
        .await?;
    for f in &mut found {
        // Oldest first, for the sparkline.
        if let Some(d) = &mut f.daily_cpu {
            d.reverse();
        }
        if let (Some(cpu), Some(mem), Some(sizes)) = (f.cpu_p95, f.mem_p95_mib, &f.sizes) {
            let sizes: Vec<Size> = serde_json::from_value(sizes.clone()).unwrap_or_default();
            f.proposed = smaller_size(f.vcpus, f.memory_mib, cpu, mem, &sizes);
        }
    }
    if rule.kind == "oversized" {
        // Nothing to propose where the template has no smaller size that still fits.
        found.retain(|f| f.proposed.is_some());
    }
    Ok(found)
}

/// The tenants a rule at `target` covers: the tenant, or for the fleet default every active
/// tenant without a rule of its own of this kind.
pub async fn covered(tx: &mut Tx, target: Target, kind: &str) -> Result<Vec<Uuid>> {
    Ok(match target {
        Target::Tenant(t) => vec![t],
        Target::Fleet => {
            sqlx::query_scalar(
                "SELECT t.id FROM tenants t
             WHERE t.suspended_at IS NULL AND NOT EXISTS (
                 SELECT 1 FROM reclamation_rules r WHERE r.tenant_id = t.id AND r.kind = $1)
             ORDER BY t.name",
            )
            .bind(kind)
            .fetch_all(&mut **tx)
            .await?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Vec<Size> {
        [("small", 1, 1024), ("medium", 2, 4096), ("large", 4, 8192)]
            .into_iter()
            .map(|(n, v, m)| Size {
                name: n.into(),
                vcpus: v,
                memory_mib: m,
            })
            .collect()
    }

    #[test]
    fn the_smallest_size_that_holds_the_peaks_with_headroom() {
        // 4 vCPUs at 10 % → 0.4 vCPU busy → 1 vCPU; 600 MiB → 858 MiB needed → small.
        let s = smaller_size(4, 8192, 10.0, 600.0, &sizes()).unwrap();
        assert_eq!(s.name, "small");
        // 30 % of 4 vCPUs = 1.2 busy → 2 vCPUs at 70 %; 2 GiB in use → medium.
        let s = smaller_size(4, 8192, 30.0, 2048.0, &sizes()).unwrap();
        assert_eq!(s.name, "medium");
        // Nothing smaller holds 6 GiB in use.
        assert_eq!(smaller_size(4, 8192, 10.0, 6000.0, &sizes()), None);
        // Already the smallest size.
        assert_eq!(smaller_size(1, 1024, 1.0, 100.0, &sizes()), None);
        // A custom size is never grown in one dimension to shrink the other.
        assert_eq!(
            smaller_size(1, 8192, 50.0, 500.0, &sizes()).unwrap().name,
            "small"
        );
        assert_eq!(smaller_size(4, 512, 10.0, 100.0, &sizes()), None);
    }
}
