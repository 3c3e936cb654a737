//! A tenant's quotas and approval policy: reading, setting, recounting.
use super::requests::*;
use super::validate::parse_gib_as_mib;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self};
use crate::platform::db::{self};
use crate::platform::error::Result;
use crate::provisioning::approval::{self};
use crate::provisioning::quota::{self, Amount};
use app::error::{AllValid, AppError};
use app::provisioning::{LimitsForm, PolicyForm, QuotaEffect, Recount, TenantQuotas, UserQuota};
use app::seam::RequestCtx;
use serde_json::json;
use uuid::Uuid;

pub(super) async fn quotas(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    tenant_id: Uuid,
) -> Result<TenantQuotas> {
    let actor = req.actor()?;
    if !authz::administers(actor, tenant_id) {
        return Err(authz::refuse_tenant(actor, tenant_id).into());
    }
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant_id)).await?;
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AppError::NotFound("Tenant".into()))?;
    let lines = quota::usage_lines(&mut tx, tenant_id).await?;
    let users = quota::user_lines(&mut tx, tenant_id)
        .await?
        .into_iter()
        .map(|(user_id, email, lines)| UserQuota {
            user_id,
            email,
            lines,
        })
        .collect();
    let policy = approval::describe(&mut tx, tenant_id).await?;
    Ok(TenantQuotas {
        tenant_id,
        tenant_name: name,
        lines,
        users,
        policy,
    })
}

pub(super) async fn set_quota(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    tenant_id: Uuid,
    user_email: &str,
    limits: LimitsForm,
) -> Result<()> {
    let actor = req.actor()?;
    let for_user = !user_email.trim().is_empty();
    let allowed = if for_user {
        authz::administers(actor, tenant_id)
    } else {
        actor.fleet_admin
    };
    if !allowed {
        return Err(authz::refuse_tenant(actor, tenant_id).into());
    }
    let Limits {
        vcpus,
        memory_mib: memory,
        disk_gib: disk,
        vms,
    } = Limits::try_from(&limits)?;
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant_id)).await?;
    let origin = Origin::of(req);
    let after = json!({ "vcpus": vcpus, "memory_mib": memory, "disk_gib": disk, "vms": vms });
    let user = if for_user {
        let email = crate::accounts::email::Email::parse(user_email, "user_email")?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT u.id FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1 WHERE lower(u.email) = $2",
        )
        .bind(tenant_id)
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let user = user.ok_or_else(|| {
            AppError::field("user_email", "That person is not a member of this tenant.")
        })?;
        let tenant_limits: Option<(i32, i64, i64, i32)> = sqlx::query_as(
            "SELECT max_vcpus, max_memory_mib, max_disk_gib, max_vms FROM tenant_quotas WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((tv, tm, td, tn)) = tenant_limits {
            let over = [
                (vcpus > tv, "vcpus"),
                (memory > tm, "memory_gib"),
                (disk > td, "disk_gib"),
                (vms > tn, "vms"),
            ];
            let errors = over.iter().filter(|(o, _)| *o).map(|(_, f)| {
                Some(AppError::field(
                    f,
                    "A member's quota must fit inside the tenant's.",
                ))
            });
            let merged = AppError::merge(errors);
            if merged != AppError::Invalid(Vec::new()) {
                return Err(merged.into());
            }
        }
        Some(user)
    } else {
        None
    };
    // One statement per scope; the member's names the user as $6.
    let (sql, event) = match user {
        Some(user) => (
            "INSERT INTO user_quotas (tenant_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms, user_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET max_vcpus = excluded.max_vcpus,
                 max_memory_mib = excluded.max_memory_mib, max_disk_gib = excluded.max_disk_gib, max_vms = excluded.max_vms",
            Event::new("quota.user.set", "user", user),
        ),
        None => (
            "INSERT INTO tenant_quotas (tenant_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id) DO UPDATE SET max_vcpus = excluded.max_vcpus,
                 max_memory_mib = excluded.max_memory_mib, max_disk_gib = excluded.max_disk_gib, max_vms = excluded.max_vms",
            Event::new("quota.tenant.set", "tenant", tenant_id),
        ),
    };
    let mut query = sqlx::query(sql)
        .bind(tenant_id)
        .bind(vcpus)
        .bind(memory)
        .bind(disk)
        .bind(vms);
    if let Some(user) = user {
        query = query.bind(user);
    }
    query.execute(&mut *tx).await?;
    audit::record(&mut tx, &origin, event.tenant(tenant_id).after(after)).await?;
    Ok(tx.commit().await?)
}

pub(super) async fn set_policy(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    tenant_id: Uuid,
    form: PolicyForm,
) -> Result<()> {
    let actor = req.actor()?;
    if !authz::administers(actor, tenant_id) {
        return Err(authz::refuse_tenant(actor, tenant_id).into());
    }
    let policy = PolicyFields::try_from(&form)?;
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant_id)).await?;
    let mut resolved = Vec::new();
    for (all, emails) in &policy.levels {
        let ids: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT u.id, lower(u.email) FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1
             WHERE lower(u.email) = ANY($2) AND m.role IN ('approver', 'tenant_admin')",
        )
        .bind(tenant_id)
        .bind(emails)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(missing) = emails.iter().find(|e| !ids.iter().any(|(_, x)| x == *e)) {
            return Err(AppError::field(
                "levels",
                format!("{missing} is not an approver or tenant admin of this tenant."),
            )
            .into());
        }
        resolved.push((*all, ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>()));
    }
    // Templates that may be auto-approved, by name among those offered to the tenant.
    let found: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, lower(name) FROM templates WHERE lower(name) = ANY($1) AND (all_tenants OR $2 = ANY(tenant_ids))",
    )
    .bind(&policy.auto_templates)
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(missing) = policy
        .auto_templates
        .iter()
        .find(|n| !found.iter().any(|(_, f)| f == *n))
    {
        return Err(AppError::field(
            "auto_templates",
            format!("No template named \u{201c}{missing}\u{201d} is offered to this tenant."),
        )
        .into());
    }
    let auto_templates: Vec<Uuid> = found.into_iter().map(|(id, _)| id).collect();
    sqlx::query(
        "INSERT INTO approval_policies (tenant_id, auto_max_vcpus, auto_max_memory_mib, auto_max_count, auto_max_lease_days, expire_days, auto_template_ids)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id) DO UPDATE SET auto_max_vcpus = excluded.auto_max_vcpus,
             auto_max_memory_mib = excluded.auto_max_memory_mib, auto_max_count = excluded.auto_max_count,
             auto_max_lease_days = excluded.auto_max_lease_days, expire_days = excluded.expire_days,
             auto_template_ids = excluded.auto_template_ids",
    )
    .bind(tenant_id)
    .bind(policy.auto_max_vcpus)
    .bind(policy.auto_max_memory_mib)
    .bind(policy.auto_max_count)
    .bind(policy.auto_max_lease_days)
    .bind(policy.expire_days)
    .bind(&auto_templates)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM approval_levels WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    for (i, (all, ids)) in resolved.iter().enumerate() {
        sqlx::query("INSERT INTO approval_levels (tenant_id, level, mode, approvers) VALUES ($1, $2, $3, $4)")
            .bind(tenant_id)
            .bind(i as i32 + 1)
            .bind(if *all { "all" } else { "any" })
            .bind(ids)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("policy.set", "tenant", tenant_id)
            .tenant(tenant_id)
            .after(json!({
                "auto_max_vcpus": policy.auto_max_vcpus,
                "auto_max_memory_mib": policy.auto_max_memory_mib,
                "auto_max_count": policy.auto_max_count,
                "auto_max_lease_days": policy.auto_max_lease_days,
                "expire_days": policy.expire_days,
                "levels": policy.levels_text(),
            "auto_templates": auto_templates,
            })),
    )
    .await?;
    Ok(tx.commit().await?)
}

pub(super) async fn recount(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    tenant_id: Uuid,
) -> Result<Recount, AppError> {
    let actor = req.actor()?;
    if !authz::administers(actor, tenant_id) {
        return Err(AppError::NotFound("Tenant".into()));
    }
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant_id)).await?;
    Ok(quota::recount(&mut tx, tenant_id).await?)
}

pub(super) async fn my_quota(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    tenant_id: Uuid,
) -> Result<QuotaEffect, AppError> {
    let actor = req.actor()?;
    if !authz::member_of(actor, tenant_id) {
        return Err(AppError::NotFound("Tenant".into()));
    }
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant_id)).await?;
    Ok(quota::effect(&mut tx, tenant_id, actor.user_id, Amount::default()).await?)
}

/// Quota limits as typed, checked: each from 0 to a ceiling no real tenant reaches.
#[derive(Debug, PartialEq)]
struct Limits {
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
    vms: i32,
}

impl TryFrom<&LimitsForm> for Limits {
    type Error = AppError;

    fn try_from(form: &LimitsForm) -> Result<Self, AppError> {
        let (vcpus, memory_mib, disk_gib, vms) = (
            parse_limit(&form.vcpus, "vcpus", 100_000),
            parse_gib_as_mib(&form.memory_gib, "memory_gib", 0.0, 1_000_000.0),
            parse_limit(&form.disk_gib, "disk_gib", 10_000_000),
            parse_limit(&form.vms, "vms", 100_000),
        )
            .all_valid()?;
        Ok(Limits {
            vcpus: vcpus as i32,
            memory_mib,
            disk_gib,
            vms: vms as i32,
        })
    }
}

/// An approval policy form that passed every check that needs no database (the approvers
/// and template names are looked up by `set_policy`).
#[derive(Debug, PartialEq)]
struct PolicyFields {
    auto_max_vcpus: i32,
    auto_max_memory_mib: i64,
    auto_max_count: i32,
    auto_max_lease_days: i32,
    /// 1 to 365.
    expire_days: i32,
    /// Each level: all must approve (else any), and the approvers' lower-case e-mails
    /// (none: any approver of the tenant).
    levels: Vec<(bool, Vec<String>)>,
    /// Lower-case template names; empty: any template.
    auto_templates: Vec<String>,
}

impl PolicyFields {
    /// The levels as the text form writes them, for the audit trail.
    fn levels_text(&self) -> String {
        self.levels
            .iter()
            .map(|(all, emails)| {
                format!(
                    "{}: {}",
                    if *all { "all" } else { "any" },
                    emails.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl TryFrom<&PolicyForm> for PolicyFields {
    type Error = AppError;

    fn try_from(form: &PolicyForm) -> Result<Self, AppError> {
        let expire_days = parse_limit(&form.expire_days, "expire_days", 365).and_then(|d| {
            if d == 0 {
                Err(AppError::field(
                    "expire_days",
                    "Enter a whole number from 1 to 365.",
                ))
            } else {
                Ok(d)
            }
        });
        // The page sends level rows; API clients may send the text form instead.
        let levels = if form.level.is_empty() {
            approval::parse_levels(&form.levels)
        } else {
            approval::level_rows(&form.level)
        };
        let (vcpus, memory, count, lease, expire_days, levels) = (
            parse_limit(&form.auto_max_vcpus, "auto_max_vcpus", 128),
            parse_gib_as_mib(
                &form.auto_max_memory_gib,
                "auto_max_memory_gib",
                0.0,
                1024.0,
            ),
            parse_limit(&form.auto_max_count, "auto_max_count", i64::from(MAX_COUNT)),
            parse_limit(&form.auto_max_lease_days, "auto_max_lease_days", 3650),
            expire_days,
            levels,
        )
            .all_valid()?;
        let auto_templates = form
            .auto_templates
            .split(',')
            .map(|n| n.trim().to_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        Ok(PolicyFields {
            auto_max_vcpus: vcpus as i32,
            auto_max_memory_mib: memory,
            auto_max_count: count as i32,
            auto_max_lease_days: lease as i32,
            expire_days: expire_days as i32,
            levels,
            auto_templates,
        })
    }
}

fn parse_limit(raw: &str, field: &str, max: i64) -> Result<i64, AppError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (0..=max).contains(v))
        .ok_or_else(|| AppError::field(field, format!("Enter a whole number from 0 to {max}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_whole_numbers_in_range_and_memory_is_gib() {
        let form = |vcpus: &str, memory: &str, disk: &str, vms: &str| LimitsForm {
            vcpus: vcpus.into(),
            memory_gib: memory.into(),
            disk_gib: disk.into(),
            vms: vms.into(),
        };
        assert_eq!(
            Limits::try_from(&form(" 8 ", "1.5", "100", "0")).unwrap(),
            Limits {
                vcpus: 8,
                memory_mib: 1536,
                disk_gib: 100,
                vms: 0
            }
        );
        let err = Limits::try_from(&form("-1", "lots", "1e3", "100001")).unwrap_err();
        for field in ["vcpus", "memory_gib", "disk_gib", "vms"] {
            assert!(err.field_message(field).is_some(), "{field}: {err:?}");
        }
    }

    #[test]
    fn policy_form_names_every_bad_field_and_reads_levels_and_templates() {
        let form = PolicyForm {
            auto_max_vcpus: "4".into(),
            auto_max_memory_gib: "8".into(),
            auto_max_count: "2".into(),
            auto_max_lease_days: "30".into(),
            expire_days: "7".into(),
            levels: "any: Ann@Example.com\nall: bob@example.com, cy@example.com".into(),
            auto_templates: " Small , ,debian ".into(),
            level: Vec::new(),
        };
        let p = PolicyFields::try_from(&form).unwrap();
        assert_eq!(p.auto_max_memory_mib, 8192);
        assert_eq!(p.auto_templates, ["small", "debian"]);
        assert_eq!(p.levels.len(), 2);
        assert!(!p.levels[0].0 && p.levels[1].0);
        let bad = PolicyForm {
            auto_max_vcpus: "129".into(),
            auto_max_count: (MAX_COUNT + 1).to_string(),
            expire_days: "0".into(),
            levels: "some: x@example.com".into(),
            ..form
        };
        let err = PolicyFields::try_from(&bad).unwrap_err();
        for field in ["auto_max_vcpus", "auto_max_count", "expire_days", "levels"] {
            assert!(err.field_message(field).is_some(), "{field}: {err:?}");
        }
        assert!(err.field_message("auto_max_memory_gib").is_none());
    }
}
