//! Deciding requests: the approval inbox, approve/reject with levels, the waiting count.
use super::requests::*;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self};
use crate::platform::db::{self, Scope};
use crate::platform::error::{Error, Result};
use crate::provisioning::approval::{Policies, Policy};
use crate::provisioning::placement;
use crate::provisioning::quota::{self, Amount, Release};
use app::account::Actor;
use app::error::AppError;
use app::provisioning::{InboxItem, RequestState};
use app::seam::RequestCtx;
use app::states::{Decision, QuotaResource};
use serde_json::json;
use uuid::Uuid;

#[tracing::instrument(skip_all)]
pub(super) async fn decide(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    id: Uuid,
    decision: &str,
    reason: &str,
) -> Result<()> {
    let actor = req.actor()?;
    let decision = Decision::from_form(decision)
        .ok_or_else(|| AppError::field("decision", "Approve or reject."))?;
    let reason = reason.trim();
    if decision == Decision::Rejected && reason.is_empty() {
        return Err(AppError::field("reason", "Say why you reject the request.").into());
    }
    if reason.chars().count() > 1000 {
        return Err(AppError::field("reason", "Use at most 1000 characters.").into());
    }
    let (tenant, requester) = b
        .request_tenant(id)
        .await?
        .ok_or_else(|| AppError::NotFound("Request".into()))?;
    if !authz::decides_in(actor, tenant) {
        return Err(if requester == actor.user_id {
            AppError::Forbidden.into()
        } else {
            AppError::NotFound("Request".into()).into()
        });
    }
    if requester == actor.user_id {
        return Err(AppError::Conflict(
            "You cannot decide your own request; another approver must.".into(),
        )
        .into());
    }
    let now = b.now();
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant)).await?;
    let r = b.load_request(&mut tx, id, true).await?;
    if r.state != RequestState::PendingApproval {
        return Err(AppError::Conflict(format!(
            "This request is no longer waiting for approval (it is {}).",
            r.state.label().to_lowercase()
        ))
        .into());
    }
    let policy = Policy::load(&mut tx, tenant).await?;
    let level_no = r.level.unwrap_or(policy.first_level());
    let level = policy
        .level(level_no)
        .cloned()
        .or_else(|| policy.next_level(level_no - 1).cloned())
        .ok_or_else(|| AppError::Conflict("The approval policy changed; reload.".into()))?;
    if !level.eligible(actor, tenant) {
        return Err(AppError::Forbidden.into());
    }
    let inserted = sqlx::query(
        "INSERT INTO request_approvals (request_id, level, approver_id, decision, reason, at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(level.level)
    .bind(actor.user_id)
    .bind(decision.as_str())
    .bind((!reason.is_empty()).then_some(reason))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(AppError::Conflict("You have already decided at this level.".into()).into());
    }
    let origin = Origin::of(req);
    if decision == Decision::Rejected {
        set_state(&mut tx, id, RequestState::Rejected, Some(reason), now).await?;
        quota::release(&mut tx, Release::Request(id), "rejected", now).await?;
        log(
            &mut tx,
            id,
            tenant,
            Some(actor.user_id),
            "rejected",
            &format!(
                "Rejected at level {}: {reason}. Quota released.",
                level.level
            ),
            now,
        )
        .await?;
        audit::record(
            &mut tx,
            &origin,
            Event::new("request.reject", "request", id)
                .tenant(tenant)
                .after(json!({ "level": level.level, "reason": reason })),
        )
        .await?;
        return tx.commit().await.map_err(Error::from);
    }
    let approved_by: Vec<Uuid> = sqlx::query_scalar(
        "SELECT approver_id FROM request_approvals WHERE request_id = $1 AND level = $2 AND decision = $3",
    )
    .bind(id)
    .bind(level.level)
    .bind(Decision::Approved.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let note = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    log(
        &mut tx,
        id,
        tenant,
        Some(actor.user_id),
        "approval",
        &format!("Approved at level {}{note}.", level.level),
        now,
    )
    .await?;
    audit::record(
        &mut tx,
        &origin,
        Event::new("request.approve", "request", id)
            .tenant(tenant)
            .after(json!({ "level": level.level, "reason": reason })),
    )
    .await?;
    let mut provisioning = false;
    if level.satisfied(&approved_by) {
        match policy.next_level(level.level) {
            Some(next) => {
                sqlx::query("UPDATE requests SET level = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(next.level)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                log(
                    &mut tx,
                    id,
                    tenant,
                    None,
                    "pending_approval",
                    &format!(
                        "Level {} complete; waiting for level {}.",
                        level.level, next.level
                    ),
                    now,
                )
                .await?;
            }
            None => {
                log(
                    &mut tx,
                    id,
                    tenant,
                    None,
                    "approved",
                    "Approved: every level agreed. Provisioning is queued.",
                    now,
                )
                .await?;
                b.start_provisioning(&mut tx, &r, None, now).await?;
                provisioning = true;
            }
        }
    }
    tx.commit().await?;
    if provisioning {
        b.wake();
    }
    Ok(())
}

pub(super) async fn inbox(b: &ProvisioningBackend, req: &RequestCtx) -> Result<Vec<InboxItem>> {
    let actor = req.actor()?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let mut out = Vec::new();
    for (r, level) in awaiting(&mut tx, actor).await? {
        // The request's own reservation is already in the counters: show it as the addition.
        let mut effect =
            quota::effect(&mut tx, r.tenant_id, r.requester_id, Amount::default()).await?;
        let amount = r.amount();
        for lines in [&mut effect.tenant, &mut effect.user] {
            for l in lines.iter_mut() {
                let add = match l.resource {
                    QuotaResource::Vcpus => amount.vcpus,
                    QuotaResource::Memory => amount.memory_mib,
                    QuotaResource::Disk => amount.disk_gib,
                    QuotaResource::Vms => amount.vms,
                };
                l.used -= add;
                l.adding = add;
            }
        }
        let requester_vms: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM vms WHERE owner_id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
        )
        .bind(r.requester_id)
        .bind(r.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        let candidates =
            placement::candidates(&mut tx, r.template_id, r.network.as_deref()).await?;
        let need = placement::Need {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disk_gib: r.disk_gib,
        };
        // A preview: the choice may differ once approved (other VMs may land first).
        let (placement, fits) = match placement::choose(&candidates, &need, b.vcpu_overcommit) {
            Ok(c) => (
                c.reason.replacen("Placed on", "Would be placed on", 1),
                true,
            ),
            Err(e) => (e, false),
        };
        out.push(InboxItem {
            level,
            user_data: r.user_data.clone(),
            request: r.summary(),
            effect,
            requester_vms,
            placement,
            fits,
        });
    }
    Ok(out)
}

pub(super) async fn waiting_count(
    b: &ProvisioningBackend,
    req: &RequestCtx,
) -> Result<u32, AppError> {
    let actor = req.actor()?;
    let decides = deciding(actor)?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let waiting = waiting_in(&mut tx, actor, decides).await?;
    db::done(tx);
    Ok(waiting)
}

/// Whose requests the actor decides on, as the (every tenant, these tenants) pair the request
/// filters take: fleet admins every tenant's, approvers and tenant admins their tenants';
/// anyone else is refused.
pub(super) fn deciding(actor: &Actor) -> Result<(bool, Vec<Uuid>), AppError> {
    if actor.fleet_admin {
        return Ok((true, Vec::new()));
    }
    let tenants = actor.approver_tenants();
    if tenants.is_empty() {
        return Err(AppError::Forbidden);
    }
    Ok((false, tenants))
}

/// The requests waiting for the actor ($3) in the tenants they approve for ($2, or all with
/// $1): pending, not their own, not yet approved by them at the current level. Whether they
/// are listed at that level is the policy's to say.
pub(super) const AWAITING: &str = "r.state = 'pending_approval' AND ($1 OR r.tenant_id = ANY($2))
    AND r.requester_id <> $3
    AND NOT EXISTS (SELECT 1 FROM request_approvals a
                    WHERE a.request_id = r.id AND a.level = r.level AND a.approver_id = $3)";

/// How many requests wait for this actor's decision (`deciding`'s answer for them), inside the
/// caller's transaction (which must see every tenant: the filter is the authorisation).
pub(super) async fn waiting_in(
    tx: &mut db::Tx,
    actor: &Actor,
    (any_tenant, tenants): (bool, Vec<Uuid>),
) -> Result<u32> {
    let rows: Vec<(Uuid, Option<i32>)> = sqlx::query_as(&format!(
        "SELECT r.tenant_id, r.level FROM requests r WHERE {AWAITING}"
    ))
    .bind(any_tenant)
    .bind(&tenants)
    .bind(actor.user_id)
    .fetch_all(&mut **tx)
    .await?;
    // The same eligibility as the inbox.
    let mut policies = Policies::default();
    let mut waiting = 0;
    for (tenant, level) in rows {
        let eligible = policies.decides(tx, actor, tenant, level).await?;
        waiting += u32::from(eligible.is_some());
    }
    Ok(waiting)
}

/// The requests waiting for `actor`'s decision, oldest first, with the level each is at: the
/// tenants they decide for, at a level whose approvers include them.
pub(super) async fn awaiting(tx: &mut db::Tx, actor: &Actor) -> Result<Vec<(RequestRow, i32)>> {
    let (any_tenant, tenants) = deciding(actor)?;
    let rows: Vec<RequestRow> = sqlx::query_as(&format!(
        "{REQUEST_SELECT} WHERE {AWAITING} ORDER BY r.created_at LIMIT 200"
    ))
    .bind(any_tenant)
    .bind(&tenants)
    .bind(actor.user_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut policies = Policies::default();
    let mut out = Vec::new();
    for r in rows {
        if let Some(level) = policies.decides(tx, actor, r.tenant_id, r.level).await? {
            out.push((r, level));
        }
    }
    Ok(out)
}
