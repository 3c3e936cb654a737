//! The backend of the `Provisioning` seam. Its trait impl here is the table of contents:
//! requests (submit, read, cancel, the home panels) are here; `validate` checks a request form,
//! `approvals` decides requests, `limits` holds quotas and policy, `vms` the VMs requests make,
//! `day2` resizes and snapshots. Every state change writes its audit row and its request log
//! line in the transaction that makes it. Over 600 lines because a trait's impl is one block:
//! the other areas' methods here are one-line calls into their modules.
use super::approvals::*;
use super::validate::*;
use super::vms::*;
use crate::hypervisor::Hypervisors;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self, member_tenants, Access};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Error, Result};
use crate::platform::jobs::{self, Queue};
use crate::platform::list::{self, asc, desc, Order, Window};
use crate::provisioning::approval::{Ask, Policy};
use crate::provisioning::quota::{self, Amount, Release};
use app::account::Actor;
use app::error::AppError;
use app::provisioning::{
    HomePanels, InboxItem, LimitsForm, ManagedVm, PolicyForm, QuotaEffect, Recount, RequestDetail,
    RequestEvent, RequestFilter, RequestForm, RequestState, RequestSummary, Snapshot, TenantQuotas,
    VmFilter,
};
use app::seam::{Provisioning, RequestCtx};
use app::{Page, Place};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

pub const PER_PAGE: u32 = 25;
pub const MAX_COUNT: i32 = 20;

#[derive(Clone)]
pub struct ProvisioningBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub hypervisors: Arc<Hypervisors>,
    pub queue: Arc<Queue>,
    pub vcpu_overcommit: f64,
    pub max_attempts: i32,
    /// The address SSH commands name (`--ssh-forward-address`).
    pub ssh_host: String,
    /// Rendered CPU sparklines by VM for a minute: a list page shows the same ones to everyone
    /// who may see them (each list is authorized before its sparklines are looked up).
    pub sparklines: moka::future::Cache<Uuid, String>,
    /// Totals and page ends of the VM lists by (who, search, state): paging through 10,000
    /// VMs need not count them on every page.
    pub vm_lists: crate::platform::list::Known<VmCountKey>,
}

#[derive(sqlx::FromRow)]
pub(super) struct RequestRow {
    pub(super) id: Uuid,
    pub(super) tenant_id: Uuid,
    pub(super) tenant_name: String,
    pub(super) requester_id: Uuid,
    pub(super) requester_email: String,
    pub(super) template_id: Uuid,
    pub(super) template_name: String,
    pub(super) size_name: String,
    pub(super) vcpus: i32,
    pub(super) memory_mib: i64,
    pub(super) disk_gib: i64,
    pub(super) count: i32,
    pub(super) name_prefix: String,
    pub(super) lease_days: i32,
    pub(super) purpose: String,
    #[sqlx(try_from = "String")]
    pub(super) state: RequestState,
    pub(super) level: Option<i32>,
    pub(super) reason: Option<String>,
    pub(super) created_at: OffsetDateTime,
    pub(super) updated_at: OffsetDateTime,
    pub(super) user_data: String,
    pub(super) network: Option<String>,
}

impl RequestRow {
    pub(super) fn summary(&self) -> RequestSummary {
        RequestSummary {
            id: self.id,
            tenant_id: self.tenant_id,
            tenant_name: self.tenant_name.clone(),
            requester_email: self.requester_email.clone(),
            template_name: self.template_name.clone(),
            size_name: self.size_name.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            count: self.count,
            name_prefix: self.name_prefix.clone(),
            lease_days: self.lease_days,
            purpose: self.purpose.clone(),
            state: self.state,
            reason: self.reason.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            network: self.network.clone(),
        }
    }

    pub(super) fn amount(&self) -> Amount {
        Amount::vm(self.vcpus, self.memory_mib, self.disk_gib).times(self.count.into())
    }
}

pub(super) const REQUEST_SELECT: &str = "
    SELECT r.id, r.tenant_id, t.name AS tenant_name, r.requester_id, u.email AS requester_email,
           r.template_id, tp.name AS template_name, r.size_name, r.vcpus, r.memory_mib, r.disk_gib,
           r.count, r.name_prefix, r.lease_days, r.purpose, r.state, r.level, r.reason, r.created_at, r.updated_at,
           r.user_data, r.network
    FROM requests r JOIN tenants t ON t.id = r.tenant_id JOIN users u ON u.id = r.requester_id
    JOIN templates tp ON tp.id = r.template_id";

/// Appends a line to a request's log.
pub async fn log(
    tx: &mut Tx,
    request: impl Into<Option<Uuid>>,
    tenant: Uuid,
    actor: Option<Uuid>,
    kind: &str,
    message: &str,
    at: OffsetDateTime,
) -> Result<()> {
    // A VM that no request made (its request was removed with its tenant's data) has no log.
    let Some(request) = request.into() else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO request_events (request_id, tenant_id, actor_id, kind, message, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(request)
    .bind(tenant)
    .bind(actor)
    .bind(kind)
    .bind(message)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    // Whoever this line concerns is told in the same transaction.
    crate::notifications::on_request_event(tx, request, tenant, kind, message, at).await
}

pub(super) async fn set_state(
    tx: &mut Tx,
    id: Uuid,
    state: RequestState,
    reason: Option<&str>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("UPDATE requests SET state = $2, reason = coalesce($3, reason), updated_at = $4, level = CASE WHEN $2 = 'pending_approval' THEN level ELSE NULL END WHERE id = $1")
        .bind(id)
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl ProvisioningBackend {
    pub(super) fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The tenant a request belongs to (looked up before the scoped transaction, which needs
    /// it); callers authorise against it right after.
    pub(super) async fn request_tenant(&self, id: Uuid) -> Result<Option<(Uuid, Uuid)>> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as("SELECT tenant_id, requester_id FROM requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::from)
    }

    pub(super) fn scope(actor: &Actor, tenant: Uuid) -> Scope {
        Scope {
            user: Some(actor.user_id),
            tenant: Some(tenant),
            fleet: false,
        }
    }

    pub(super) async fn load_request(
        &self,
        tx: &mut Tx,
        id: Uuid,
        lock: bool,
    ) -> Result<RequestRow> {
        let sql = if lock {
            format!("{REQUEST_SELECT} WHERE r.id = $1 FOR UPDATE OF r")
        } else {
            format!("{REQUEST_SELECT} WHERE r.id = $1")
        };
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| AppError::NotFound("Request".into()))?)
    }

    /// Creates the request's VMs (UUIDs from the reservation) and their provisioning jobs.
    pub(super) async fn start_provisioning(
        &self,
        tx: &mut Tx,
        r: &RequestRow,
        reserved: Option<&[Uuid]>,
        now: OffsetDateTime,
    ) -> Result<()> {
        let uuids: Vec<Uuid> = match reserved {
            Some(u) => u.to_vec(),
            None => sqlx::query_scalar(
            "SELECT vm_uuid FROM quota_ledger WHERE request_id = $1 AND state = 'reserved' ORDER BY id",
        )
        .bind(r.id)
        .fetch_all(&mut **tx)
        .await?,
        };
        let names = vm_names(&r.name_prefix, r.count);
        let lease_end = now + time::Duration::days(r.lease_days.into());
        for (uuid, name) in uuids.iter().zip(names) {
            // A name taken meanwhile (by another request approved first) gets a suffix.
            let taken: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM vms WHERE tenant_id = $1 AND name = $2 AND deleted_at IS NULL)",
            )
            .bind(r.tenant_id)
            .bind(&name)
            .fetch_one(&mut **tx)
            .await?;
            let name = if taken {
                format!("{name}-{}", &uuid.simple().to_string()[..4])
            } else {
                name
            };
            sqlx::query(
                "INSERT INTO vms (uuid, request_id, tenant_id, owner_id, template_id, name, vcpus, memory_mib, disk_gib,
                                  phase, lease_ends_at, created_at, updated_at, network)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $11, $12)",
            )
            .bind(uuid)
            .bind(r.id)
            .bind(r.tenant_id)
            .bind(r.requester_id)
            .bind(r.template_id)
            .bind(&name)
            .bind(r.vcpus)
            .bind(r.memory_mib)
            .bind(r.disk_gib)
            .bind(lease_end)
            .bind(now)
            .bind(&r.network)
            .execute(&mut **tx)
            .await?;
            jobs::enqueue(
                tx,
                jobs::JobKind::Provision,
                *uuid,
                // The VM's row says everything the job needs.
                json!({}),
                self.max_attempts,
            )
            .await?;
        }
        set_state(tx, r.id, RequestState::Approved, None, now).await?;
        Ok(())
    }

    pub(super) fn wake(&self) {
        self.queue.wake.notify_waiters();
    }

    /// Own lists (`all` false) are scoped to the user by row-level security; lists over
    /// several tenants run fleet-scoped, their SQL filter being the authorisation.
    pub(super) fn list_scope(actor: &Actor, all: bool) -> Scope {
        if all {
            Scope::fleet()
        } else {
            Scope {
                user: Some(actor.user_id),
                ..Scope::default()
            }
        }
    }
}

#[async_trait]
impl Provisioning for ProvisioningBackend {
    async fn preview(&self, req: &RequestCtx, form: RequestForm) -> Result<QuotaEffect, AppError> {
        let actor = req.actor()?;
        let tenant = form
            .tenant_id
            .ok_or_else(|| AppError::field("tenant_id", "Choose a tenant."))?;
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        let v = self.validate(&mut tx, actor, &form, false).await?;
        let adding =
            Amount::vm(v.size.vcpus, v.size.memory_mib, v.size.disk_gib).times(v.count.into());
        Ok(quota::effect(&mut tx, v.tenant, actor.user_id, adding).await?)
    }

    #[tracing::instrument(skip_all)]
    async fn submit(&self, req: &RequestCtx, form: RequestForm) -> Result<Uuid, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = form
                .tenant_id
                .ok_or_else(|| AppError::field("tenant_id", "Choose a tenant."))?;
            let now = self.now();
            let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
            let v = self.validate(&mut tx, actor, &form, true).await?;
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO requests (id, tenant_id, requester_id, template_id, size_name, vcpus, memory_mib, disk_gib,
                                       count, name_prefix, lease_days, purpose, state, created_at, updated_at, user_data, network)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'submitted', $13, $13, $14, $15)",
            )
            .bind(id)
            .bind(v.tenant)
            .bind(actor.user_id)
            .bind(v.template.id)
            .bind(&v.size.name)
            .bind(v.size.vcpus)
            .bind(v.size.memory_mib)
            .bind(v.size.disk_gib)
            .bind(v.count)
            .bind(&v.prefix)
            .bind(v.lease_days)
            .bind(&v.purpose)
            .bind(now)
            .bind(&v.user_data)
            .bind(&v.network)
            .execute(&mut *tx)
            .await?;
            let vm_uuids: Vec<Uuid> = (0..v.count).map(|_| Uuid::new_v4()).collect();
            let per_vm = Amount::vm(v.size.vcpus, v.size.memory_mib, v.size.disk_gib);
            let origin = Origin::of(req);
            let what = format!(
                "{} × {} ({}) for {} days",
                v.count, v.template.name, v.size.name, v.lease_days
            );
            log(
                &mut tx,
                id,
                v.tenant,
                Some(actor.user_id),
                "submitted",
                &format!("Submitted: {what}. Quota reserved."),
                now,
            )
            .await?;
            audit::record(
                &mut tx,
                &origin,
                Event::new("request.submit", "request", id)
                    .tenant(v.tenant)
                    .after(json!({
                        "template": v.template.id, "size": v.size.name, "count": v.count,
                        "name_prefix": v.prefix, "lease_days": v.lease_days, "purpose": v.purpose,
                    })),
            )
            .await?;
            let policy = Policy::load(&mut tx, v.tenant).await?;
            let ask = Ask {
                template: v.template.id,
                vcpus: v.size.vcpus,
                memory_mib: v.size.memory_mib,
                count: v.count,
                lease_days: v.lease_days,
            };
            let row = self.load_request(&mut tx, id, true).await?;
            let auto = policy.auto_approves(&ask);
            if auto {
                log(
                    &mut tx,
                    id,
                    v.tenant,
                    None,
                    "approved",
                    "Approved automatically: within the tenant's auto-approval thresholds.",
                    now,
                )
                .await?;
                audit::record(
                    &mut tx,
                    &Origin::default(),
                    Event::new("request.approve", "request", id)
                        .tenant(v.tenant)
                        .after(json!({ "by": "policy" })),
                )
                .await?;
                self.start_provisioning(&mut tx, &row, Some(&vm_uuids), now)
                    .await?;
            } else {
                let level = policy.first_level();
                let decide_by = now + time::Duration::days(policy.expire_days.into());
                sqlx::query("UPDATE requests SET state = 'pending_approval', level = $2, decide_by = $3 WHERE id = $1")
                    .bind(id)
                    .bind(level)
                    .bind(decide_by)
                    .execute(&mut *tx)
                    .await?;
                log(
                    &mut tx,
                    id,
                    v.tenant,
                    None,
                    "pending_approval",
                    &format!(
                        "Needs approval (level {level} of {}); expires unless decided within {} days.",
                        policy.levels.len(),
                        policy.expire_days
                    ),
                    now,
                )
                .await?;
            }
            // Last, and committed with the submission: the tenant's quota row is locked only from
            // here to that commit, so concurrent submissions queue for as short a time as possible.
            let reserved =
                quota::reserve(&mut tx, v.tenant, actor.user_id, id, per_vm, &vm_uuids, now).await;
            match reserved {
                Ok(()) => {}
                Err(quota::Reserve::Failed(e)) => return Err(e.into()),
                Err(quota::Reserve::Refused) => {
                    tx.rollback().await?;
                    let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
                    let total = per_vm.times(vm_uuids.len() as i64);
                    return Err(quota::refusal(&mut tx, v.tenant, actor.user_id, total).await.into());
                }
            }
            // Returns once the submission is on disk (see `quota::reserve`).
            tx.commit().await?;
            if auto {
                self.wake();
            }
            Ok(id)
    }).await
    }

    async fn requests(
        &self,
        req: &RequestCtx,
        filter: RequestFilter,
    ) -> Result<Page<RequestSummary>, AppError> {
        let actor = req.actor()?;
        let mut tx = db::begin(&self.pool, Self::list_scope(actor, filter.all)).await?;
        let page = requests_in(&mut tx, actor, filter).await?;
        db::done(tx);
        Ok(page)
    }

    async fn request(&self, req: &RequestCtx, id: Uuid) -> Result<RequestDetail, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let (tenant, requester) = self
                .request_tenant(id)
                .await?
                .ok_or_else(|| AppError::NotFound("Request".into()))?;
            if !authz::sees_request(actor, tenant, requester) {
                return Err(authz::refuse(Access::See, "Request").into());
            }
            let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
            let r = self.load_request(&mut tx, id, false).await?;
            let events: Vec<(OffsetDateTime, Option<String>, String, String)> = sqlx::query_as(
                "SELECT e.at, u.email, e.kind, e.message FROM request_events e LEFT JOIN users u ON u.id = e.actor_id
                 WHERE e.request_id = $1 ORDER BY e.id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let vms = self.vm_rows(&mut tx, "v.request_id = $1", id).await?;
            let mut waiting_for = Vec::new();
            let mut can_decide = false;
            if r.state == RequestState::PendingApproval {
                let policy = Policy::load(&mut tx, tenant).await?;
                if let Some(level) = r.level.and_then(|l| policy.level(l)) {
                    let decided: Vec<Uuid> = sqlx::query_scalar(
                        "SELECT approver_id FROM request_approvals WHERE request_id = $1 AND level = $2",
                    )
                    .bind(id)
                    .bind(level.level)
                    .fetch_all(&mut *tx)
                    .await?;
                    if level.approvers.is_empty() {
                        waiting_for.push(format!("any approver of {}", r.tenant_name));
                    } else {
                        let pending: Vec<Uuid> = level
                            .approvers
                            .iter()
                            .filter(|a| !decided.contains(a))
                            .copied()
                            .collect();
                        waiting_for = sqlx::query_scalar(
                            "SELECT email FROM users WHERE id = ANY($1) ORDER BY lower(email)",
                        )
                        .bind(&pending)
                        .fetch_all(&mut *tx)
                        .await?;
                        if !level.all && !waiting_for.is_empty() {
                            waiting_for = vec![format!("one of {}", waiting_for.join(", "))];
                        }
                    }
                    can_decide = requester != actor.user_id
                        && level.eligible(actor, tenant)
                        && !decided.contains(&actor.user_id);
                }
            }
            Ok(RequestDetail {
                request: r.summary(),
                events: events
                    .into_iter()
                    .map(|(at, actor_email, kind, message)| RequestEvent {
                        at,
                        actor_email,
                        kind,
                        message,
                    })
                    .collect(),
                vms,
                waiting_for,
                level: r.level,
                can_cancel: requester == actor.user_id && r.state.undecided(),
                can_decide,
                user_data: r.user_data.clone(),
            })
    }).await
    }

    async fn cancel(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let (tenant, requester) = self
                .request_tenant(id)
                .await?
                .ok_or_else(|| AppError::NotFound("Request".into()))?;
            if !authz::cancels_request(actor, tenant, requester) {
                let access = if authz::sees_request(actor, tenant, requester) {
                    Access::Act
                } else {
                    Access::See
                };
                return Err(authz::refuse(access, "Request").into());
            }
            let now = self.now();
            let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
            let r = self.load_request(&mut tx, id, true).await?;
            if !r.state.undecided() {
                return Err(AppError::Conflict(format!(
                    "Only pending requests can be cancelled; this one is {}.",
                    r.state.label().to_lowercase()
                ))
                .into());
            }
            set_state(&mut tx, id, RequestState::Cancelled, None, now).await?;
            quota::release(&mut tx, Release::Request(id), "cancelled", now).await?;
            log(
                &mut tx,
                id,
                tenant,
                Some(actor.user_id),
                "cancelled",
                "Cancelled by the requester. Quota released.",
                now,
            )
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("request.cancel", "request", id).tenant(tenant),
            )
            .await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn decide(
        &self,
        req: &RequestCtx,
        id: Uuid,
        decision: &str,
        reason: &str,
    ) -> Result<(), AppError> {
        Ok(super::approvals::decide(self, req, id, decision, reason).await?)
    }

    async fn inbox(&self, req: &RequestCtx) -> Result<Vec<InboxItem>, AppError> {
        Ok(super::approvals::inbox(self, req).await?)
    }

    async fn home(&self, req: &RequestCtx) -> Result<HomePanels, AppError> {
        let actor = req.actor()?;
        let tenant = actor
            .memberships
            .iter()
            .find(|m| actor.may_request(m.tenant_id))
            .map(|m| (m.tenant_id, m.tenant_name.clone()));
        // One transaction for the four panels (it was four, one per panel). It sees every
        // tenant because the waiting count spans the tenants the actor approves for; each
        // query's own filter (owner, requester, tenant) is the authorisation, as in the lists.
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let open = RequestFilter {
            page: 1,
            state: "open".into(),
            ..RequestFilter::default()
        };
        let requests = requests_in(&mut tx, actor, open).await?;
        // Only for those who decide on requests.
        let waiting = match deciding(actor) {
            Ok(decides) => Some(waiting_in(&mut tx, actor, decides).await?),
            Err(_) => None,
        };
        let quota = match tenant {
            Some((t, name)) => Some((
                name,
                quota::effect(&mut tx, t, actor.user_id, Amount::default()).await?,
            )),
            None => None,
        };
        // The VM list's generic plan (see `vms`), for the rest of this transaction only.
        db::generic_plans(&mut tx).await?;
        let vms = self.vms_in(&mut tx, actor, VmFilter::default()).await?;
        db::done(tx);
        Ok(HomePanels {
            vms,
            requests,
            waiting,
            quota,
        })
    }

    async fn waiting_count(&self, req: &RequestCtx) -> Result<u32, AppError> {
        super::approvals::waiting_count(self, req).await
    }

    async fn quotas(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<TenantQuotas, AppError> {
        Ok(super::limits::quotas(self, req, tenant_id).await?)
    }

    async fn set_quota(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_email: &str,
        limits: LimitsForm,
    ) -> Result<(), AppError> {
        Ok(super::limits::set_quota(self, req, tenant_id, user_email, limits).await?)
    }

    async fn set_policy(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        form: PolicyForm,
    ) -> Result<(), AppError> {
        Ok(super::limits::set_policy(self, req, tenant_id, form).await?)
    }

    async fn recount(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<Recount, AppError> {
        super::limits::recount(self, req, tenant_id).await
    }

    async fn my_quota(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<QuotaEffect, AppError> {
        super::limits::my_quota(self, req, tenant_id).await
    }

    async fn vms(&self, req: &RequestCtx, filter: VmFilter) -> Result<Page<ManagedVm>, AppError> {
        super::vms::vms(self, req, filter).await
    }

    async fn cpu_sparkline(&self, req: &RequestCtx, uuid: Uuid) -> Result<String, AppError> {
        super::vms::cpu_sparkline(self, req, uuid).await
    }

    async fn managed_vm(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
    ) -> Result<Option<ManagedVm>, AppError> {
        super::vms::managed_vm(self, req, uuid).await
    }

    async fn extend_lease(&self, req: &RequestCtx, uuid: Uuid, days: &str) -> Result<(), AppError> {
        Ok(super::vms::extend_lease(self, req, uuid, days).await?)
    }

    async fn resize(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        vcpus: &str,
        memory_gib: &str,
    ) -> Result<(), AppError> {
        Ok(crate::provisioning::day2::resize(self, req, uuid, vcpus, memory_gib).await?)
    }

    async fn snapshots(&self, req: &RequestCtx, uuid: Uuid) -> Result<Vec<Snapshot>, AppError> {
        seam(async move {
            let (_, mut tx) = self.owned_vm(req, uuid).await?;
            let rows: Vec<(String, String, OffsetDateTime, Option<String>)> = sqlx::query_as(
                "SELECT s.name, s.description, s.created_at, u.email FROM vm_snapshots s
                 LEFT JOIN users u ON u.id = s.created_by WHERE s.vm_uuid = $1 ORDER BY s.created_at DESC",
            )
            .bind(uuid)
            .fetch_all(&mut *tx)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(name, description, created_at, created_by)| Snapshot {
                    name,
                    description,
                    created_at,
                    created_by,
                })
                .collect())
    }).await
    }

    async fn snapshot_action(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        op: &str,
        name: &str,
        description: &str,
    ) -> Result<(), AppError> {
        Ok(crate::provisioning::day2::snapshot(self, req, uuid, op, name, description).await?)
    }
}

impl ProvisioningBackend {
    pub fn clock_now(&self) -> OffsetDateTime {
        self.now()
    }
}

/// The request list's orders (paged by number).
const REQUEST_ORDERS: [Order; 4] = [
    Order {
        name: "newest",
        key: &[desc("r.created_at", "timestamptz"), asc("r.id", "uuid")],
    },
    Order {
        name: "oldest",
        key: &[asc("r.created_at", "timestamptz"), asc("r.id", "uuid")],
    },
    Order {
        name: "state",
        key: &[
            asc("r.state", "text"),
            desc("r.created_at", "timestamptz"),
            asc("r.id", "uuid"),
        ],
    },
    Order {
        name: "template",
        key: &[
            asc("tp.name", "text"),
            desc("r.created_at", "timestamptz"),
            asc("r.id", "uuid"),
        ],
    },
];

/// The actor's own requests, or (`all`) those of every tenant they decide for, inside the
/// caller's transaction: the filter is the authorisation, whatever the transaction's scope.
pub(super) async fn requests_in(
    tx: &mut db::Tx,
    actor: &Actor,
    filter: RequestFilter,
) -> Result<Page<RequestSummary>> {
    let place = Place {
        page: filter.page.max(1),
        ..Place::default()
    };
    let order = list::order(&filter.sort, &REQUEST_ORDERS)?;
    let state = list::state_filter(
        &filter.state,
        std::iter::once("open").chain(RequestState::ALL.map(RequestState::as_str)),
    )?;
    let (search, pattern) = list::search_pattern(&filter.search)?;
    // (any tenant, these tenants, only this requester): one filter for the list and its count.
    let (any_tenant, tenants, requester) = if filter.all {
        let (any_tenant, tenants) = deciding(actor)?;
        (any_tenant, tenants, None)
    } else {
        (false, member_tenants(actor), Some(actor.user_id))
    };
    let from_where = "FROM requests r JOIN users u ON u.id = r.requester_id
             JOIN templates tp ON tp.id = r.template_id
             WHERE ($1 OR r.tenant_id = ANY($2)) AND ($3::uuid IS NULL OR r.requester_id = $3)
               AND ($4 = '' OR r.name_prefix ILIKE $5 OR tp.name ILIKE $5 OR u.email ILIKE $5
                    OR r.purpose ILIKE $5)
               AND ($6 = '' OR r.state = $6 OR ($6 = 'open' AND r.state = ANY($7)))";
    let open: Vec<&str> = RequestState::ALL
        .into_iter()
        .filter(|s| s.in_flight())
        .map(RequestState::as_str)
        .collect();
    let mut args = sqlx::postgres::PgArguments::default();
    list::arg(&mut args, any_tenant)?;
    list::arg(&mut args, &tenants)?;
    list::arg(&mut args, requester)?;
    list::arg(&mut args, search)?;
    list::arg(&mut args, &pattern)?;
    list::arg(&mut args, state)?;
    list::arg(&mut args, &open)?;
    let w = Window::new(order, &place, &args, PER_PAGE)?;
    let rows: Vec<RequestRow> = sqlx::query_as_with(
        &format!(
            "{REQUEST_SELECT} WHERE r.id IN (SELECT r.id {from_where} ORDER BY {} {})
                 ORDER BY {}",
            w.pick, w.limit, w.show
        ),
        w.args,
    )
    .fetch_all(&mut **tx)
    .await?;
    let total: i64 = sqlx::query_scalar_with(&format!("SELECT count(*) {from_where}"), args)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Page {
        items: rows.iter().map(RequestRow::summary).collect(),
        page: place.page,
        per_page: PER_PAGE,
        total,
        before: None,
        after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts() {
        assert_eq!(vm_names("web", 1), vec!["web"]);
        assert_eq!(vm_names("web", 3), vec!["web-1", "web-2", "web-3"]);
        assert!(parse_count("0").is_err());
        assert!(parse_count("21").is_err());
        assert!(parse_count("99999999999").is_err());
        assert!(parse_count("-3").is_err());
        assert_eq!(parse_count(" 4 ").unwrap(), 4);
        assert!(parse_purpose("  ").is_err());
        assert!(parse_gib_as_mib("1.5", "m", 0.0, 10.0).unwrap() == 1536);
        assert!(parse_gib_as_mib("NaN", "m", 0.0, 10.0).is_err());
    }
}
