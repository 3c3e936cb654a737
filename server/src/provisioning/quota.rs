//! The quota ledger. Every reservation is a row in `quota_ledger` and moves the tenant's
//! counters in the same transaction; the check and the reservation are one conditional
//! UPDATE of the tenant's quota row (in `quota_reserve`, a database function), whose row lock
//! also serialises the per-user check, so racing requests can never push usage past a limit.
use crate::platform::db::Tx;
use crate::platform::error::{internal, Error, Result};
use app::error::AppError;
use app::provisioning::{QuotaEffect, QuotaLine, Recount};
use app::states::QuotaResource;
use time::OffsetDateTime;
use uuid::Uuid;

/// Resources one VM (or a sum of VMs) takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub vms: i64,
}

impl Amount {
    pub fn vm(vcpus: i32, memory_mib: i64, disk_gib: i64) -> Self {
        Amount {
            vcpus: vcpus.into(),
            memory_mib,
            disk_gib,
            vms: 1,
        }
    }

    pub fn times(self, n: i64) -> Self {
        Amount {
            vcpus: self.vcpus * n,
            memory_mib: self.memory_mib * n,
            disk_gib: self.disk_gib * n,
            vms: self.vms * n,
        }
    }
}

#[derive(sqlx::FromRow, Debug, Clone, Copy)]
struct Limits {
    max_vcpus: i32,
    max_memory_mib: i64,
    max_disk_gib: i64,
    max_vms: i32,
}

#[derive(sqlx::FromRow, Debug, Clone, Copy, Default)]
struct Usage {
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    vms: i64,
}

fn lines(limits: Limits, used: Usage, adding: Amount) -> Vec<QuotaLine> {
    vec![
        QuotaLine {
            resource: QuotaResource::Vcpus,
            used: used.vcpus,
            adding: adding.vcpus,
            limit: limits.max_vcpus.into(),
        },
        QuotaLine {
            resource: QuotaResource::Memory,
            used: used.memory_mib,
            adding: adding.memory_mib,
            limit: limits.max_memory_mib,
        },
        QuotaLine {
            resource: QuotaResource::Disk,
            used: used.disk_gib,
            adding: adding.disk_gib,
            limit: limits.max_disk_gib,
        },
        QuotaLine {
            resource: QuotaResource::Vms,
            used: used.vms,
            adding: adding.vms,
            limit: limits.max_vms.into(),
        },
    ]
}

fn overflow(scope: &str, lines: &[QuotaLine]) -> Option<String> {
    lines.iter().find(|l| l.overflows()).map(|l| {
        format!(
            "This would exceed the {scope} {} quota: {} requested, {} in use, limit {}.",
            l.label(),
            l.amount(l.adding),
            l.amount(l.used),
            l.amount(l.limit)
        )
    })
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    max_vcpus: i32,
    max_memory_mib: i64,
    max_disk_gib: i64,
    max_vms: i32,
    used_vcpus: i32,
    used_memory_mib: i64,
    used_disk_gib: i64,
    used_vms: i32,
}

impl TenantRow {
    fn limits(&self) -> Limits {
        Limits {
            max_vcpus: self.max_vcpus,
            max_memory_mib: self.max_memory_mib,
            max_disk_gib: self.max_disk_gib,
            max_vms: self.max_vms,
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            vcpus: self.used_vcpus.into(),
            memory_mib: self.used_memory_mib,
            disk_gib: self.used_disk_gib,
            vms: self.used_vms.into(),
        }
    }
}

/// The tenant's quota row with the user's limits and use (absent without a user quota).
#[derive(sqlx::FromRow)]
struct EffectRow {
    #[sqlx(flatten)]
    tenant: TenantRow,
    user_max_vcpus: Option<i32>,
    user_max_memory_mib: Option<i64>,
    user_max_disk_gib: Option<i64>,
    user_max_vms: Option<i32>,
    user_vcpus: Option<i64>,
    user_memory_mib: Option<i64>,
    user_disk_gib: Option<i64>,
    user_vms: Option<i64>,
}

async fn tenant_row(tx: &mut Tx, tenant: Uuid) -> Result<Option<(Limits, Usage)>> {
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT max_vcpus, max_memory_mib, max_disk_gib, max_vms, used_vcpus, used_memory_mib, used_disk_gib, used_vms
         FROM tenant_quotas WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| (r.limits(), r.usage())))
}

async fn user_limits(tx: &mut Tx, tenant: Uuid, user: Uuid) -> Result<Option<Limits>> {
    sqlx::query_as(
        "SELECT max_vcpus, max_memory_mib, max_disk_gib, max_vms FROM user_quotas WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await
    .map_err(Error::from)
}

async fn user_usage(tx: &mut Tx, tenant: Uuid, user: Uuid) -> Result<Usage> {
    sqlx::query_as(
        "SELECT coalesce(sum(vcpus), 0)::int8 AS vcpus, coalesce(sum(memory_mib), 0)::int8 AS memory_mib,
                coalesce(sum(disk_gib), 0)::int8 AS disk_gib, coalesce(sum(vms), 0)::int8 AS vms
         FROM quota_ledger WHERE tenant_id = $1 AND user_id = $2 AND state <> 'released'",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(&mut **tx)
    .await
    .map_err(Error::from)
}

/// What adding `adding` would do, without reserving anything.
pub async fn effect(tx: &mut Tx, tenant: Uuid, user: Uuid, adding: Amount) -> Result<QuotaEffect> {
    // One round trip: the tenant's row, the user's limits if any, and then their use.
    let row: Option<EffectRow> = sqlx::query_as(
        "SELECT t.max_vcpus, t.max_memory_mib, t.max_disk_gib, t.max_vms, t.used_vcpus,
                t.used_memory_mib, t.used_disk_gib, t.used_vms,
                u.max_vcpus AS user_max_vcpus, u.max_memory_mib AS user_max_memory_mib,
                u.max_disk_gib AS user_max_disk_gib, u.max_vms AS user_max_vms,
                l.vcpus AS user_vcpus, l.memory_mib AS user_memory_mib, l.disk_gib AS user_disk_gib,
                l.vms AS user_vms
         FROM tenant_quotas t
         LEFT JOIN user_quotas u ON u.tenant_id = t.tenant_id AND u.user_id = $2
         LEFT JOIN LATERAL (
             SELECT coalesce(sum(vcpus), 0)::int8 AS vcpus, coalesce(sum(memory_mib), 0)::int8 AS memory_mib,
                    coalesce(sum(disk_gib), 0)::int8 AS disk_gib, coalesce(sum(vms), 0)::int8 AS vms
             FROM quota_ledger
             WHERE u.user_id IS NOT NULL AND tenant_id = $1 AND user_id = $2 AND state <> 'released'
         ) l ON true
         WHERE t.tenant_id = $1",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    let row = row.ok_or_else(no_quota)?;
    let tenant_lines = lines(row.tenant.limits(), row.tenant.usage(), adding);
    let user_lines = match (
        row.user_max_vcpus,
        row.user_max_memory_mib,
        row.user_max_disk_gib,
        row.user_max_vms,
    ) {
        (Some(max_vcpus), Some(max_memory_mib), Some(max_disk_gib), Some(max_vms)) => {
            let limits = Limits {
                max_vcpus,
                max_memory_mib,
                max_disk_gib,
                max_vms,
            };
            let used = Usage {
                vcpus: row.user_vcpus.unwrap_or(0),
                memory_mib: row.user_memory_mib.unwrap_or(0),
                disk_gib: row.user_disk_gib.unwrap_or(0),
                vms: row.user_vms.unwrap_or(0),
            };
            lines(limits, used, adding)
        }
        _ => Vec::new(),
    };
    let overflow = overflow("tenant's", &tenant_lines).or_else(|| overflow("your", &user_lines));
    Ok(QuotaEffect {
        tenant: tenant_lines,
        user: user_lines,
        overflow,
    })
}

fn no_quota() -> AppError {
    AppError::Conflict("This tenant has no quota yet. Ask a fleet admin to set one.".into())
}

/// Checks and reserves `per_vm` for each of `vm_uuids` atomically and commits `tx` with the
/// reservation, or changes nothing and names the resource that would overflow. It must be
/// the transaction's last step.
///
/// The tenant's quota row is what every racing submission queues for, so it is held as
/// briefly as PostgreSQL allows: the check-and-reserve (`quota_reserve`, one server-side call)
/// and the COMMIT travel in one message, and that commit does not wait for the disk. Durability
/// comes right after, outside the lock: the same message opens a new transaction that takes a
/// transaction id, and the caller's `tx.commit()` of it flushes the write-ahead log up to and
/// past the reservation (the log is flushed in order) before the user is answered.
pub async fn reserve(
    tx: &mut Tx,
    tenant: Uuid,
    user: Uuid,
    request: Uuid,
    per_vm: Amount,
    vm_uuids: &[Uuid],
    now: OffsetDateTime,
) -> Result<(), Reserve> {
    // One message needs the simple-query protocol, which takes no parameters: the values are
    // written into it, and each is a UUID, an integer or an RFC 3339 time, so none can carry
    // quotes.
    let vms = vm_uuids
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(",");
    let at = now
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Reserve::Failed(internal(e)))?;
    let sql = format!(
        "SET LOCAL synchronous_commit = off;
         SELECT quota_reserve('{tenant}', '{user}', '{request}', {}, {}, {}, ARRAY[{vms}]::uuid[], '{at}');
         COMMIT;
         BEGIN;
         SELECT pg_current_xact_id();",
        per_vm.vcpus, per_vm.memory_mib, per_vm.disk_gib
    );
    // Through the connection's `Executor` (not `RawSql::execute`), whose future is `Send`.
    let conn: &mut sqlx::PgConnection = tx;
    match sqlx::Executor::execute(conn, sqlx::raw_sql(&sql)).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("P0001") && e.message() == "quota exceeded" =>
        {
            Err(Reserve::Refused)
        }
        Err(e) => Err(Reserve::Failed(internal(e))),
    }
}

/// Why `reserve` reserved nothing.
#[derive(Debug)]
pub enum Reserve {
    /// A limit would be passed, or the tenant has no quota: `refusal` says which.
    Refused,
    Failed(AppError),
}

/// Why a reservation of `total` was refused, read in a new transaction (the refused one is
/// aborted): the tenant has no quota, or which limit would overflow.
pub async fn refusal(tx: &mut Tx, tenant: Uuid, user: Uuid, total: Amount) -> AppError {
    match effect(tx, tenant, user, total).await {
        Ok(effect) => overflow_error(effect, "count"),
        Err(e) => e.into(),
    }
}

/// The error for a reservation that did not fit, on the form field that asked for it.
fn overflow_error(effect: QuotaEffect, field: &str) -> AppError {
    match effect.overflow {
        Some(message) => AppError::field(field, message),
        None => AppError::Conflict("The quota changed meanwhile; try again.".into()),
    }
}

/// Which open ledger entries to release.
pub enum Release {
    Request(Uuid),
    Vm(Uuid),
}

/// Releases open entries and gives their resources back to the tenant. Returns how many
/// entries were released (0 when already released: releasing twice is harmless).
pub async fn release(
    tx: &mut Tx,
    which: Release,
    reason: &str,
    now: OffsetDateTime,
) -> Result<u64> {
    let (column, key) = match which {
        Release::Request(id) => ("request_id", id),
        Release::Vm(id) => ("vm_uuid", id),
    };
    let freed: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "WITH released AS (
             UPDATE quota_ledger SET state = 'released', reason = $2, updated_at = $3
             WHERE {column} = $1 AND state <> 'released'
             RETURNING tenant_id, vcpus, memory_mib, disk_gib, vms)
         SELECT tenant_id, sum(vcpus)::int8, sum(memory_mib)::int8, sum(disk_gib)::int8, sum(vms)::int8
         FROM released GROUP BY tenant_id"
    ))
    .bind(key)
    .bind(reason)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut n = 0;
    for (tenant, vcpus, memory, disk, vms) in freed {
        sqlx::query(
            "UPDATE tenant_quotas SET used_vcpus = used_vcpus - $2, used_memory_mib = used_memory_mib - $3,
                    used_disk_gib = used_disk_gib - $4, used_vms = used_vms - $5 WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(vcpus as i32)
        .bind(memory)
        .bind(disk)
        .bind(vms as i32)
        .execute(&mut **tx)
        .await?;
        n += vms as u64;
    }
    Ok(n)
}

/// The VM exists: its reservation becomes an allocation.
pub async fn allocate(tx: &mut Tx, vm: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE quota_ledger SET state = 'allocated', updated_at = $2 WHERE vm_uuid = $1 AND state = 'reserved'",
    )
    .bind(vm)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Changes a VM's entry to `to` (a resize), checking the tenant's and the owner's limits for
/// any growth exactly like a reservation.
pub async fn adjust(tx: &mut Tx, vm: Uuid, to: Amount, now: OffsetDateTime) -> Result<()> {
    let entry: Option<(i64, Uuid, Uuid, i32, i64, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, user_id, vcpus, memory_mib, disk_gib FROM quota_ledger
         WHERE vm_uuid = $1 AND state <> 'released' FOR UPDATE",
    )
    .bind(vm)
    .fetch_optional(&mut **tx)
    .await?;
    let (id, tenant, user, vcpus, memory, disk) =
        entry.ok_or_else(|| AppError::Conflict("This VM has no quota entry.".into()))?;
    let delta = Amount {
        vcpus: to.vcpus - i64::from(vcpus),
        memory_mib: to.memory_mib - memory,
        disk_gib: to.disk_gib - disk,
        vms: 0,
    };
    let ok = sqlx::query(
        "UPDATE tenant_quotas SET used_vcpus = used_vcpus + $2, used_memory_mib = used_memory_mib + $3,
                used_disk_gib = used_disk_gib + $4
         WHERE tenant_id = $1 AND ($2 <= 0 OR used_vcpus + $2 <= max_vcpus)
           AND ($3 <= 0 OR used_memory_mib + $3 <= max_memory_mib) AND ($4 <= 0 OR used_disk_gib + $4 <= max_disk_gib)",
    )
    .bind(tenant)
    .bind(delta.vcpus as i32)
    .bind(delta.memory_mib)
    .bind(delta.disk_gib)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let grow = Amount {
        vcpus: delta.vcpus.max(0),
        memory_mib: delta.memory_mib.max(0),
        disk_gib: delta.disk_gib.max(0),
        vms: 0,
    };
    if ok == 0 {
        let effect = effect(tx, tenant, user, grow).await?;
        return Err(overflow_error(effect, "vcpus").into());
    }
    if let Some(limits) = user_limits(tx, tenant, user).await? {
        let used = user_usage(tx, tenant, user).await?;
        if let Some(m) = overflow("your", &lines(limits, used, grow)) {
            return Err(AppError::field("vcpus", m).into());
        }
    }
    sqlx::query(
        "UPDATE quota_ledger SET vcpus = $2, memory_mib = $3, disk_gib = $4, updated_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(to.vcpus as i32)
    .bind(to.memory_mib)
    .bind(to.disk_gib)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Counters against the ledger, and allocations against the VMs that exist.
pub async fn recount(tx: &mut Tx, tenant: Uuid) -> Result<Recount> {
    let (_, counters) = tenant_row(tx, tenant).await?.ok_or_else(no_quota)?;
    let ledger: Usage = sqlx::query_as(
        "SELECT coalesce(sum(vcpus), 0)::int8 AS vcpus, coalesce(sum(memory_mib), 0)::int8 AS memory_mib,
                coalesce(sum(disk_gib), 0)::int8 AS disk_gib, coalesce(sum(vms), 0)::int8 AS vms
         FROM quota_ledger WHERE tenant_id = $1 AND state <> 'released'",
    )
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    // What exists or is on its way: VMs not deleted or failed, plus reservations of requests
    // whose VMs are not created yet.
    let existing: Usage = sqlx::query_as(
        "SELECT coalesce(sum(vcpus), 0)::int8 AS vcpus, coalesce(sum(memory_mib), 0)::int8 AS memory_mib,
                coalesce(sum(disk_gib), 0)::int8 AS disk_gib, count(*)::int8 AS vms
         FROM (SELECT v.vcpus::int8, v.memory_mib, v.disk_gib FROM vms v
               WHERE v.tenant_id = $1 AND v.deleted_at IS NULL AND v.phase NOT IN ('failed', 'deleted')
               UNION ALL
               SELECT l.vcpus::int8, l.memory_mib, l.disk_gib FROM quota_ledger l
               WHERE l.tenant_id = $1 AND l.state = 'reserved'
                 AND NOT EXISTS (SELECT 1 FROM vms v WHERE v.uuid = l.vm_uuid)) x",
    )
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    let rows = vec![
        (
            "vcpus".to_string(),
            counters.vcpus,
            ledger.vcpus,
            existing.vcpus,
        ),
        (
            "memory_mib".to_string(),
            counters.memory_mib,
            ledger.memory_mib,
            existing.memory_mib,
        ),
        (
            "disk_gib".to_string(),
            counters.disk_gib,
            ledger.disk_gib,
            existing.disk_gib,
        ),
        ("vms".to_string(), counters.vms, ledger.vms, existing.vms),
    ];
    // The hypervisor's truth: each VM's recorded size against what its domain runs.
    let mismatched: Vec<(String, i32, i64, i32, i64)> = sqlx::query_as(
        "SELECT v.name, v.vcpus, v.memory_mib, d.vcpus, d.memory_kib / 1024
         FROM vms v JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid AND d.missing_since IS NULL
         WHERE v.tenant_id = $1 AND v.deleted_at IS NULL
           AND (d.vcpus <> v.vcpus OR d.memory_kib <> v.memory_mib * 1024)
         ORDER BY v.name",
    )
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    let mismatched: Vec<String> = mismatched
        .into_iter()
        .map(|(name, v, m, dv, dm)| {
            format!("{name}: recorded {v} vCPUs, {m} MiB; the hypervisor runs {dv} vCPUs, {dm} MiB")
        })
        .collect();
    let consistent = rows.iter().all(|(_, a, b, c)| a == b && b == c) && mismatched.is_empty();
    Ok(Recount {
        lines: rows,
        mismatched,
        consistent,
    })
}

/// The tenant's and one user's quota lines (no addition).
pub async fn usage_lines(tx: &mut Tx, tenant: Uuid) -> Result<Vec<QuotaLine>, AppError> {
    let (limits, used) = tenant_row(tx, tenant).await?.ok_or_else(no_quota)?;
    Ok(lines(limits, used, Amount::default()))
}

/// Every member with a personal quota, with their usage.
pub async fn user_lines(tx: &mut Tx, tenant: Uuid) -> Result<Vec<(Uuid, String, Vec<QuotaLine>)>> {
    let rows: Vec<(Uuid, String, i32, i64, i64, i32)> = sqlx::query_as(
        "SELECT q.user_id, u.email, q.max_vcpus, q.max_memory_mib, q.max_disk_gib, q.max_vms
         FROM user_quotas q JOIN users u ON u.id = q.user_id WHERE q.tenant_id = $1 ORDER BY lower(u.email)",
    )
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (user, email, v, m, d, n) in rows {
        let used = user_usage(tx, tenant, user).await?;
        let limits = Limits {
            max_vcpus: v,
            max_memory_mib: m,
            max_disk_gib: d,
            max_vms: n,
        };
        out.push((user, email, lines(limits, used, Amount::default())));
    }
    Ok(out)
}
