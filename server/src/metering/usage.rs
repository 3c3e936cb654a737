//! Usage per VM per hour, derived from what the VM was (its size history) and what its domain
//! did (its power-state history), so an hour is right even when nothing was sampled in it.
//!
//! Rules: a VM is allocated from its creation until its deletion, whatever its power state
//! (vCPU-, memory- and disk-hours); it is powered on while its domain is running or paused.
//! The rollup fills `usage_hourly` hour by hour behind a watermark: each run handles the
//! complete hours since the last one (never a rescan), and re-running an hour overwrites it.
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use sqlx::PgPool;
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourUsage {
    pub vcpu_hours: f64,
    pub memory_gib_hours: f64,
    pub disk_gib_hours: f64,
    pub powered_on_hours: f64,
}

/// A size from `at` on.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub at: OffsetDateTime,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

/// A power state from `at` on.
#[derive(Debug, Clone)]
pub struct State {
    pub at: OffsetDateTime,
    pub state: String,
}

fn overlap_hours(a: (OffsetDateTime, OffsetDateTime), b: (OffsetDateTime, OffsetDateTime)) -> f64 {
    let start = a.0.max(b.0);
    let end = a.1.min(b.1);
    if end > start {
        (end - start).as_seconds_f64() / 3600.0
    } else {
        0.0
    }
}

pub fn powered_on(state: &str) -> bool {
    matches!(state, "running" | "paused")
}

/// The usage of one VM in `[hour, hour + 1 h)`, given its life `[created, deleted)` and its
/// histories (each sorted by time).
pub fn hour_usage(
    hour: OffsetDateTime,
    created: OffsetDateTime,
    deleted: Option<OffsetDateTime>,
    sizes: &[Size],
    states: &[State],
) -> HourUsage {
    let far = OffsetDateTime::from_unix_timestamp(253_402_300_799).expect("year 9999");
    let window = (
        hour.max(created),
        (hour + Duration::HOUR).min(deleted.unwrap_or(far)),
    );
    let mut u = HourUsage {
        vcpu_hours: 0.0,
        memory_gib_hours: 0.0,
        disk_gib_hours: 0.0,
        powered_on_hours: 0.0,
    };
    if window.1 <= window.0 {
        return u;
    }
    for (i, s) in sizes.iter().enumerate() {
        let until = sizes.get(i + 1).map(|n| n.at).unwrap_or(far);
        let h = overlap_hours(window, (s.at, until));
        u.vcpu_hours += h * f64::from(s.vcpus);
        u.memory_gib_hours += h * s.memory_mib as f64 / 1024.0;
        u.disk_gib_hours += h * s.disk_gib as f64;
    }
    for (i, s) in states.iter().enumerate() {
        if powered_on(&s.state) {
            let until = states.get(i + 1).map(|n| n.at).unwrap_or(far);
            u.powered_on_hours += overlap_hours(window, (s.at, until));
        }
    }
    u
}

/// Adds the incoming sums to a month's row (or subtracts, with negated sums).
const MONTHLY_ADD: &str = "ON CONFLICT ON CONSTRAINT usage_monthly_key DO UPDATE SET
    vcpu_hours = usage_monthly.vcpu_hours + excluded.vcpu_hours,
    memory_gib_hours = usage_monthly.memory_gib_hours + excluded.memory_gib_hours,
    disk_gib_hours = usage_monthly.disk_gib_hours + excluded.disk_gib_hours,
    powered_on_hours = usage_monthly.powered_on_hours + excluded.powered_on_hours";

pub fn truncate_hour(t: OffsetDateTime) -> OffsetDateTime {
    let secs = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(secs - secs.rem_euclid(3600)).expect("in range")
}

#[derive(sqlx::FromRow)]
struct LiveVm {
    uuid: Uuid,
    tenant_id: Uuid,
    owner_id: Option<Uuid>,
    template_id: Option<Uuid>,
    created_at: OffsetDateTime,
    deleted_at: Option<OffsetDateTime>,
}

/// Rolls up the complete hours before `now` not yet rolled up, at most `max_hours` of them.
/// Returns how many hours were written.
pub async fn rollup(pool: &PgPool, now: OffsetDateTime, max_hours: i64) -> Result<i64> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    // One roller at a time (several servers may run this).
    if !crate::platform::cluster::once(&mut tx, "usage").await? {
        return Ok(0);
    }
    let end_limit = truncate_hour(now);
    let mark: Option<OffsetDateTime> = sqlx::query_scalar("SELECT hour FROM usage_watermark")
        .fetch_optional(&mut *tx)
        .await?;
    let start = match mark {
        Some(m) => m,
        None => {
            let first: Option<OffsetDateTime> =
                sqlx::query_scalar("SELECT min(created_at) FROM vms")
                    .fetch_one(&mut *tx)
                    .await?;
            truncate_hour(first.unwrap_or(now))
        }
    };
    let end = (start + Duration::hours(max_hours)).min(end_limit);
    if end <= start {
        return Ok(0);
    }
    let vms: Vec<LiveVm> = sqlx::query_as(
        "SELECT uuid, tenant_id, owner_id, template_id, created_at, deleted_at FROM vms
         WHERE created_at < $2 AND (deleted_at IS NULL OR deleted_at > $1)",
    )
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = vms.iter().map(|v| v.uuid).collect();
    let mut sizes: HashMap<Uuid, Vec<Size>> = HashMap::new();
    for (uuid, at, vcpus, memory_mib, disk_gib) in
        sqlx::query_as::<_, (Uuid, OffsetDateTime, i32, i64, i64)>(
            "SELECT vm_uuid, at, vcpus, memory_mib, disk_gib FROM vm_size_history
         WHERE vm_uuid = ANY($1) AND at < $2 ORDER BY vm_uuid, at, id",
        )
        .bind(&ids)
        .bind(end)
        .fetch_all(&mut *tx)
        .await?
    {
        sizes.entry(uuid).or_default().push(Size {
            at,
            vcpus,
            memory_mib,
            disk_gib,
        });
    }
    let mut states: HashMap<Uuid, Vec<State>> = HashMap::new();
    for (uuid, at, state) in sqlx::query_as::<_, (Uuid, OffsetDateTime, String)>(
        "SELECT uuid, at, state FROM domain_state_history
         WHERE uuid = ANY($1) AND at < $2 ORDER BY uuid, at, id",
    )
    .bind(&ids)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?
    {
        states.entry(uuid).or_default().push(State { at, state });
    }
    let (mut c_vm, mut c_hour, mut c_tenant, mut c_owner, mut c_template) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut c_cpu, mut c_mem, mut c_disk, mut c_on) = (vec![], vec![], vec![], vec![]);
    let mut hour = start;
    while hour < end {
        for v in &vms {
            if v.created_at >= hour + Duration::HOUR || v.deleted_at.is_some_and(|d| d <= hour) {
                continue;
            }
            let u = hour_usage(
                hour,
                v.created_at,
                v.deleted_at,
                sizes.get(&v.uuid).map(Vec::as_slice).unwrap_or(&[]),
                states.get(&v.uuid).map(Vec::as_slice).unwrap_or(&[]),
            );
            c_vm.push(v.uuid);
            c_hour.push(hour);
            c_tenant.push(v.tenant_id);
            c_owner.push(v.owner_id);
            c_template.push(v.template_id);
            c_cpu.push(u.vcpu_hours);
            c_mem.push(u.memory_gib_hours);
            c_disk.push(u.disk_gib_hours);
            c_on.push(u.powered_on_hours);
        }
        hour += Duration::HOUR;
    }
    // Monthly totals follow the hours: an hour written again (it should not be, behind the
    // watermark) first takes its old values out, so each hour counts once.
    sqlx::query(&format!(
        "INSERT INTO usage_monthly (vm_uuid, month, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
         SELECT u.vm_uuid, date_trunc('month', u.hour, 'UTC'), u.tenant_id, u.owner_id, u.template_id,
                -sum(u.vcpu_hours), -sum(u.memory_gib_hours), -sum(u.disk_gib_hours), -sum(u.powered_on_hours)
         FROM usage_hourly u JOIN UNNEST($1::uuid[], $2::timestamptz[]) AS n(vm, hour) ON u.vm_uuid = n.vm AND u.hour = n.hour
         GROUP BY 1, 2, 3, 4, 5
         {MONTHLY_ADD}"
    ))
    .bind(&c_vm)
    .bind(&c_hour)
    .execute(&mut *tx)
    .await?;
    // The hours and their months' totals in one statement, from one set of arrays.
    sqlx::query(&format!(
        "WITH n AS (
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::uuid[],
                                  $6::float8[], $7::float8[], $8::float8[], $9::float8[])
                 AS n(vm, hour, tenant, owner, template, c, m, d, p)),
         hourly AS (
             INSERT INTO usage_hourly (vm_uuid, hour, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
             SELECT * FROM n
             ON CONFLICT (vm_uuid, hour) DO UPDATE SET vcpu_hours = excluded.vcpu_hours, memory_gib_hours = excluded.memory_gib_hours,
                 disk_gib_hours = excluded.disk_gib_hours, powered_on_hours = excluded.powered_on_hours)
         INSERT INTO usage_monthly (vm_uuid, month, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
         SELECT vm, date_trunc('month', hour, 'UTC'), tenant, owner, template, sum(c), sum(m), sum(d), sum(p)
         FROM n GROUP BY 1, 2, 3, 4, 5
         {MONTHLY_ADD}"
    ))
    .bind(&c_vm)
    .bind(&c_hour)
    .bind(&c_tenant)
    .bind(&c_owner)
    .bind(&c_template)
    .bind(&c_cpu)
    .bind(&c_mem)
    .bind(&c_disk)
    .bind(&c_on)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_watermark (id, hour) VALUES (true, $1) ON CONFLICT (id) DO UPDATE SET hour = excluded.hour",
    )
    .bind(end)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((end - start).whole_hours())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn size(at: OffsetDateTime, vcpus: i32, memory_mib: i64, disk_gib: i64) -> Size {
        Size {
            at,
            vcpus,
            memory_mib,
            disk_gib,
        }
    }

    fn st(at: OffsetDateTime, s: &str) -> State {
        State {
            at,
            state: s.into(),
        }
    }

    #[test]
    fn a_known_history_gives_exact_hours() {
        let h = datetime!(2026-11-01 10:00 UTC);
        // Created at 10:15 with 2 vCPUs, 4 GiB, 20 GiB; resized at 10:45 to 4 vCPUs, 8 GiB.
        let sizes = [
            size(datetime!(2026-11-01 10:15 UTC), 2, 4096, 20),
            size(datetime!(2026-11-01 10:45 UTC), 4, 8192, 20),
        ];
        // Running 10:20–10:30, shut off, running again from 10:50.
        let states = [
            st(datetime!(2026-11-01 10:15 UTC), "shutoff"),
            st(datetime!(2026-11-01 10:20 UTC), "running"),
            st(datetime!(2026-11-01 10:30 UTC), "shutoff"),
            st(datetime!(2026-11-01 10:50 UTC), "running"),
        ];
        let u = hour_usage(h, datetime!(2026-11-01 10:15 UTC), None, &sizes, &states);
        // 30 min × 2 + 15 min × 4 = 1 + 1 = 2 vCPU-hours.
        assert!((u.vcpu_hours - 2.0).abs() < 1e-9, "{u:?}");
        // 30 min × 4 GiB + 15 min × 8 GiB = 2 + 2 = 4 GiB-hours.
        assert!((u.memory_gib_hours - 4.0).abs() < 1e-9, "{u:?}");
        // 45 min × 20 GiB = 15.
        assert!((u.disk_gib_hours - 15.0).abs() < 1e-9, "{u:?}");
        // 10 + 10 minutes.
        assert!((u.powered_on_hours - 20.0 / 60.0).abs() < 1e-9, "{u:?}");

        // The next hour: 4 vCPUs all hour, running all hour (no event in it).
        let u = hour_usage(
            h + Duration::HOUR,
            datetime!(2026-11-01 10:15 UTC),
            None,
            &sizes,
            &states,
        );
        assert_eq!(u.vcpu_hours, 4.0);
        assert_eq!(u.powered_on_hours, 1.0);

        // Deleted at 11:30: half an hour.
        let u = hour_usage(
            h + Duration::HOUR,
            datetime!(2026-11-01 10:15 UTC),
            Some(datetime!(2026-11-01 11:30 UTC)),
            &sizes,
            &states,
        );
        assert_eq!(u.vcpu_hours, 2.0);
        assert_eq!(u.powered_on_hours, 0.5);
        // Before creation and after deletion: nothing.
        let u = hour_usage(
            h - Duration::HOUR,
            datetime!(2026-11-01 10:15 UTC),
            None,
            &sizes,
            &states,
        );
        assert_eq!(u.vcpu_hours, 0.0);
    }

    #[test]
    fn hours_truncate() {
        assert_eq!(
            truncate_hour(datetime!(2026-11-01 10:59:59 UTC)),
            datetime!(2026-11-01 10:00 UTC)
        );
    }
}
