//! Reclamation: enabled rules propose, owners answer, and what nobody answered is carried out
//! after the tenant's response window. An oversized VM is shrunk to the proposed size of its
//! template when it is next shut off (the proposal waits until then), through the same resize
//! as its owner's. The periodic check (`Reclaimer::tick`, once per
//! cluster) writes proposals and carries out the due ones; owners keep a VM (with a reason,
//! which keeps this kind of rule off it for `KEEP_DAYS`) or accept (carried out at once).
//! Stopping forces the domain off, as an ended lease does, and is in the VM's operation log;
//! deleting goes through the delete job, which releases the quota. Everything is audited.
pub mod rules;

use crate::hypervisor::Hypervisors;
use crate::notifications::{self, webhooks, Notice};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz;
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use crate::platform::jobs::{self, Queue};
use crate::provisioning::leases::vm_link;
use app::account::Actor;
use app::error::AppError;
use app::notifications::NotificationKind;
use app::reclamation::{
    action_done, kind_label, Candidate, Figure, Preview, Proposal, ReclaimedMonth,
    ReclamationOverview, Rule as RuleDto, RuleForm,
};
use app::seam::{Reclamation, RequestCtx};
use async_trait::async_trait;
use rules::{Found, Rule, Target};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// How long "keep" keeps a kind of rule off a VM.
pub const KEEP_DAYS: i64 = 90;

fn evidence(found: &Found, figures: &[Figure], rule: &Rule) -> serde_json::Value {
    json!({
        "figures": figures.iter().map(|f| json!([f.label, f.value])).collect::<Vec<_>>(),
        "daily_cpu": found.daily_cpu.clone().unwrap_or_default(),
        "rule": { "days": rule.days, "cpu_pct": rule.cpu_pct, "mem_pct": rule.mem_pct, "io_kbps": rule.io_kbps,
                  "net_kbps": rule.net_kbps, "share_pct": rule.share_pct },
    })
}

fn figures_of(evidence: &serde_json::Value) -> (Vec<Figure>, Vec<f32>) {
    let figures = evidence["figures"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| Figure {
                    label: p[0].as_str().unwrap_or_default().to_string(),
                    value: p[1].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let daily = evidence["daily_cpu"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default();
    (figures, daily)
}

/// What a tick did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    pub proposed: usize,
    pub carried_out: usize,
    pub dropped: usize,
    pub shrunk: usize,
}

pub struct Reclaimer {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub hypervisors: Arc<Hypervisors>,
    pub queue: Arc<Queue>,
}

/// A proposal about to be carried out.
#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    tenant_id: Uuid,
    vm_uuid: Uuid,
    kind: String,
    action: String,
}

/// A VM whose domain is to be forced off after the commit.
struct PowerOff {
    host: Uuid,
    vm: Uuid,
    tenant: Uuid,
    kind: String,
}

impl Reclaimer {
    pub async fn tick(&self) -> Result<Tick> {
        let now = self.clock.now();
        let mut out = Tick::default();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        if !crate::platform::cluster::once(&mut tx, "reclamation").await? {
            return Ok(out);
        }
        let enabled: Vec<(Option<Uuid>, Rule)> = sqlx::query_as::<_, RuleRow>(
            "SELECT r.*, NULL::text AS scope_name FROM reclamation_rules r WHERE enabled",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.tenant_id, r.rule))
        .collect();
        for (tenant, rule) in &enabled {
            let target = tenant.map_or(Target::Fleet, Target::Tenant);
            let tenants = rules::covered(&mut tx, target, &rule.kind).await?;
            for found in rules::candidates(&mut tx, &tenants, rule, now).await? {
                if propose(&mut tx, &found, rule, now).await? {
                    out.proposed += 1;
                }
            }
        }
        let mut wake = false;
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, tenant_id, vm_uuid, kind, action FROM reclamation_proposals
             WHERE state = 'open' AND respond_by <= $1 ORDER BY respond_by FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut offs = Vec::new();
        for d in &due {
            if d.action == "delete" {
                wake = true;
            }
            match carry_out(
                &mut tx,
                d,
                &Origin::default(),
                "nobody answered in time",
                now,
            )
            .await?
            {
                Some(Some(off)) => {
                    offs.push(off);
                    out.carried_out += 1;
                }
                Some(None) => out.carried_out += 1,
                None => out.dropped += 1,
            }
        }
        tx.commit().await?;
        if wake {
            self.queue.wake.notify_waiters();
        }
        self.power_off(offs).await?;
        out.shrunk = self.shrink_waiting().await?;
        Ok(out)
    }

    /// Forces off what was decided, after the commit (a failure is in the operation log; the
    /// proposal stays done: the owner or an admin sees the VM still on).
    async fn power_off(&self, offs: Vec<PowerOff>) -> Result<()> {
        for off in offs {
            crate::provisioning::shutdown::force_off_logged(
                &self.pool,
                &self.hypervisors,
                off.host,
                off.vm,
                off.tenant,
                &format!("Reclaimed ({}): stopped.", kind_label(&off.kind)),
            )
            .await?;
        }
        Ok(())
    }

    /// Checks every `every` until the process ends.
    pub fn spawn(self: Arc<Self>, every: std::time::Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.tick().await {
                    Ok(t) if t != Tick::default() => tracing::info!(?t, "reclamation check"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reclamation check"),
                }
            }
        });
    }
}

/// Writes a proposal unless one is open already; tells the owner (or, when the owner is gone,
/// the tenant's admins) and the tenant's webhooks. True when it is new.
async fn propose(tx: &mut Tx, found: &Found, rule: &Rule, now: OffsetDateTime) -> Result<bool> {
    let respond_by = now + time::Duration::days(i64::from(rule.response_days));
    let figures = found.figures(rule, now);
    let ev = evidence(found, &figures, rule);
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO reclamation_proposals (tenant_id, vm_uuid, kind, action, evidence, vcpus, memory_mib,
                                            disk_gib, created_at, respond_by, new_vcpus, new_memory_mib, new_size)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
         -- A shrink waiting for the VM's next stop is still in hand: no second proposal.
         WHERE NOT EXISTS (SELECT 1 FROM reclamation_proposals w WHERE w.vm_uuid = $2 AND w.kind = $3 AND w.state = 'waiting')
         ON CONFLICT (vm_uuid, kind) WHERE state = 'open' DO NOTHING RETURNING id",
    )
    .bind(found.tenant_id)
    .bind(found.vm)
    .bind(&rule.kind)
    .bind(&rule.action)
    .bind(&ev)
    .bind(found.vcpus)
    .bind(found.memory_mib)
    .bind(found.disk_gib)
    .bind(now)
    .bind(respond_by)
    .bind(found.proposed.as_ref().map(|s| s.vcpus))
    .bind(found.proposed.as_ref().map(|s| s.memory_mib))
    .bind(found.proposed.as_ref().map(|s| s.name.clone()))
    .fetch_optional(&mut **tx)
    .await?;
    let Some(id) = id else {
        return Ok(false);
    };
    audit::record(
        tx,
        &Origin::default(),
        Event::new("vm.reclaim.propose", "vm", found.vm)
            .tenant(found.tenant_id)
            .after(
                json!({ "proposal": id, "name": found.name, "kind": rule.kind,
                           "action": rule.action, "respond_by": respond_by.to_string() }),
            ),
    )
    .await?;
    let verb = match &found.proposed {
        Some(size) => format!("shrunk to {} at its next stop after", size.name),
        None => format!("{} on", action_done(&rule.action)),
    };
    let title = format!(
        "{} may be reclaimed: {}",
        found.name,
        kind_label(&rule.kind).to_lowercase()
    );
    let body = format!(
        "{} will be {verb} {} unless you keep it (with a reason) or accept now. {}",
        found.name,
        respond_by.date(),
        figures
            .iter()
            .map(|f| format!("{}: {}", f.label, f.value))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let owner_is_member =
        match found.owner_id {
            Some(o) => sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM memberships WHERE tenant_id = $1 AND user_id = $2)",
            )
            .bind(found.tenant_id)
            .bind(o)
            .fetch_one(&mut **tx)
            .await?,
            None => false,
        };
    let recipients: Vec<Uuid> = if owner_is_member {
        found.owner_id.into_iter().collect()
    } else {
        sqlx::query_scalar(
            "SELECT user_id FROM memberships WHERE tenant_id = $1 AND role = 'tenant_admin' ORDER BY user_id",
        )
        .bind(found.tenant_id)
        .fetch_all(&mut **tx)
        .await?
    };
    for user in recipients {
        notifications::send(
            tx,
            Notice {
                user,
                tenant: Some(found.tenant_id),
                kind: NotificationKind::Reclamation,
                title: title.clone(),
                body: body.clone(),
                link: "/proposals".into(),
            },
            now,
        )
        .await?;
    }
    webhooks::publish(
        tx,
        Some(found.tenant_id),
        "reclamation.proposed",
        json!({ "proposal_id": id, "vm_id": found.vm, "tenant_id": found.tenant_id, "name": found.name,
                "kind": rule.kind, "action": rule.action,
                "respond_by": respond_by.format(&time::format_description::well_known::Rfc3339).ok(),
                "evidence": ev, "path": vm_link(found.host_id, found.vm) }),
        now,
    )
    .await?;
    Ok(true)
}

/// Marks a proposal done with what carrying it out freed (vCPUs, MiB, GiB of disk) and what
/// that allocation costs a month at the rate card of `now` for the VM's template.
async fn finish(tx: &mut Tx, id: Uuid, now: OffsetDateTime, freed: (i32, i64, i64)) -> Result<()> {
    sqlx::query(
        "UPDATE reclamation_proposals p
            SET state = 'done', done_at = $2, freed_vcpus = $3, freed_memory_mib = $4, freed_disk_gib = $5,
                (monthly_cost, currency) = (
                    SELECT 730 * ($3 * r.vcpu_hour + $4 / 1024.0 * r.memory_gib_hour + $5 * r.disk_gib_hour), r.currency
                    FROM vms v JOIN rate_cards r ON r.template_id = v.template_id OR r.template_id IS NULL
                    WHERE v.uuid = p.vm_uuid AND r.valid_from <= $2 AND (r.valid_to IS NULL OR $2 < r.valid_to)
                    ORDER BY r.template_id IS NULL, r.valid_from DESC LIMIT 1)
          WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .bind(freed.0)
    .bind(freed.1)
    .bind(freed.2)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A notice about proposal `d` to its VM's owner, linking to the VM.
fn owner_notice(
    d: &Due,
    host: Option<Uuid>,
    title: String,
    body: String,
) -> impl FnOnce(Uuid) -> Notice {
    let (link, tenant) = (vm_link(host, d.vm_uuid), Some(d.tenant_id));
    move |user| Notice {
        user,
        tenant,
        kind: NotificationKind::Reclamation,
        title,
        body,
        link,
    }
}

/// Tells the owner and the tenant's webhooks that a proposal was carried out.
#[allow(clippy::too_many_arguments)]
async fn tell_done(
    tx: &mut Tx,
    d: &Due,
    name: &str,
    host: Option<Uuid>,
    owner: Option<Uuid>,
    what: &str,
    why: &str,
    now: OffsetDateTime,
) -> Result<()> {
    let body = format!(
        "{name} was {what} ({}): {why}.",
        kind_label(&d.kind).to_lowercase()
    );
    let title = format!("{name} was {what}: reclaimed");
    notifications::send_if(tx, owner, owner_notice(d, host, title, body), now).await?;
    webhooks::publish(
        tx,
        Some(d.tenant_id),
        "reclamation.done",
        json!({ "proposal_id": d.id, "vm_id": d.vm_uuid, "tenant_id": d.tenant_id, "name": name,
                "kind": d.kind, "action": d.action, "why": why }),
        now,
    )
    .await
}

/// Carries a proposal out in `tx`: deletes through the delete job, schedules a shrink for the
/// VM's next stop, or returns the power-off to do after the commit. `None` when the VM is gone
/// or no longer running (dropped).
async fn carry_out(
    tx: &mut Tx,
    d: &Due,
    origin: &Origin,
    why: &str,
    now: OffsetDateTime,
) -> Result<Option<Option<PowerOff>>> {
    let vm: Option<VmNow> = sqlx::query_as(
        "SELECT name, host_id, owner_id, vcpus, memory_mib, disk_gib FROM vms
         WHERE uuid = $1 AND deleted_at IS NULL AND phase = 'running' FOR UPDATE",
    )
    .bind(d.vm_uuid)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(VmNow {
        name,
        host_id: host,
        owner_id: owner,
        vcpus,
        memory_mib,
        disk_gib,
    }) = vm
    else {
        sqlx::query(
            "UPDATE reclamation_proposals SET state = 'dropped', done_at = $2 WHERE id = $1",
        )
        .bind(d.id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    };
    if d.action == "shrink" {
        // The size changes only while the domain is off: wait for the owner's next stop.
        sqlx::query("UPDATE reclamation_proposals SET state = 'waiting' WHERE id = $1")
            .bind(d.id)
            .execute(&mut **tx)
            .await?;
        audit::record(
            tx,
            origin,
            Event::new("vm.reclaim.shrink_scheduled", "vm", d.vm_uuid)
                .tenant(d.tenant_id)
                .after(json!({ "proposal": d.id, "name": name, "why": why })),
        )
        .await?;
        let title = format!("{name} will be shrunk at its next stop");
        let body = format!(
            "{name} keeps running as it is; the next time it is shut off it is resized to the proposed size ({why})."
        );
        notifications::send_if(tx, owner, owner_notice(d, host, title, body), now).await?;
        return Ok(Some(None));
    }
    let reason = format!("reclaimed ({}): {why}", kind_label(&d.kind).to_lowercase());
    let off = if d.action == "delete" {
        finish(tx, d.id, now, (vcpus, memory_mib, disk_gib)).await?;
        sqlx::query("UPDATE vms SET phase = 'deleting', updated_at = $2 WHERE uuid = $1")
            .bind(d.vm_uuid)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        jobs::enqueue(
            tx,
            jobs::JobKind::Delete,
            d.vm_uuid,
            json!({ "reason": reason }),
            10,
        )
        .await?;
        None
    } else {
        // Stopped, its vCPUs and memory are free on the host; the disk stays.
        finish(tx, d.id, now, (vcpus, memory_mib, 0)).await?;
        host.map(|host| PowerOff {
            host,
            vm: d.vm_uuid,
            tenant: d.tenant_id,
            kind: d.kind.clone(),
        })
    };
    audit::record(
        tx,
        origin,
        Event::new(
            if d.action == "delete" {
                "vm.reclaim.delete"
            } else {
                "vm.reclaim.stop"
            },
            "vm",
            d.vm_uuid,
        )
        .tenant(d.tenant_id)
        .after(json!({ "proposal": d.id, "name": name, "why": why })),
    )
    .await?;
    tell_done(tx, d, &name, host, owner, action_done(&d.action), why, now).await?;
    Ok(Some(off))
}

/// The VM a proposal is about, as it is now.
#[derive(sqlx::FromRow)]
struct VmNow {
    name: String,
    host_id: Option<Uuid>,
    owner_id: Option<Uuid>,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
}

/// A shrink waiting for its VM to be off, with the size it goes to.
#[derive(sqlx::FromRow)]
struct Waiting {
    #[sqlx(flatten)]
    due: Due,
    new_vcpus: i32,
    new_memory_mib: i64,
    new_size: String,
}

impl Reclaimer {
    /// Shrinks the waiting oversized VMs that are shut off now, each in its own transaction
    /// (a domain started again in between refuses, and the proposal waits for the next stop);
    /// drops those whose VM is gone. Returns how many were shrunk.
    pub async fn shrink_waiting(&self) -> Result<usize> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query(
            "UPDATE reclamation_proposals p SET state = 'dropped', done_at = $1
             WHERE p.state = 'waiting' AND NOT EXISTS (
                 SELECT 1 FROM vms v WHERE v.uuid = p.vm_uuid AND v.deleted_at IS NULL AND v.phase = 'running')",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let off: Vec<Uuid> = sqlx::query_scalar(
            "SELECT p.id FROM reclamation_proposals p
             JOIN vms v ON v.uuid = p.vm_uuid JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid
             WHERE p.state = 'waiting' AND d.state = 'shutoff' AND d.missing_since IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut shrunk = 0;
        for id in off {
            match self.shrink(id, now).await {
                Ok(true) => shrunk += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(proposal = %id, error = %e, "shrink waits for the next stop")
                }
            }
        }
        Ok(shrunk)
    }

    async fn shrink(&self, id: Uuid, now: OffsetDateTime) -> Result<bool> {
        let started = std::time::Instant::now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let w: Option<Waiting> = sqlx::query_as(
            "SELECT id, tenant_id, vm_uuid, kind, action, new_vcpus, new_memory_mib, new_size
             FROM reclamation_proposals WHERE id = $1 AND state = 'waiting' FOR UPDATE SKIP LOCKED",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(w) = w else {
            return Ok(false);
        };
        let (name, host, owner, vcpus, memory_mib): (String, Option<Uuid>, Option<Uuid>, i32, i64) =
            sqlx::query_as(
                "SELECT name, host_id, owner_id, vcpus, memory_mib FROM vms WHERE uuid = $1",
            )
            .bind(w.due.vm_uuid)
            .fetch_one(&mut *tx)
            .await?;
        let change = crate::provisioning::day2::Resize {
            vm: w.due.vm_uuid,
            tenant: w.due.tenant_id,
            vcpus: w.new_vcpus,
            memory_mib: w.new_memory_mib,
            actor: None,
            started,
        };
        let (host_id, facts) = crate::provisioning::day2::resize_in(
            &mut tx,
            &self.hypervisors,
            &Origin::default(),
            &change,
            now,
        )
        .await?;
        finish(
            &mut tx,
            id,
            now,
            (
                (vcpus - w.new_vcpus).max(0),
                (memory_mib - w.new_memory_mib).max(0),
                0,
            ),
        )
        .await?;
        let why = format!("resized to {} at its stop", w.new_size);
        audit::record(
            &mut tx,
            &Origin::default(),
            Event::new("vm.reclaim.shrink", "vm", w.due.vm_uuid)
                .tenant(w.due.tenant_id)
                .before(json!({ "vcpus": vcpus, "memory_mib": memory_mib }))
                .after(json!({ "proposal": id, "name": name, "size": w.new_size,
                               "vcpus": w.new_vcpus, "memory_mib": w.new_memory_mib })),
        )
        .await?;
        tell_done(&mut tx, &w.due, &name, host, owner, "shrunk", &why, now).await?;
        tx.commit().await?;
        crate::hypervisor::write_domain(&self.pool, None, host_id, &facts).await?;
        Ok(true)
    }
}

#[derive(sqlx::FromRow)]
struct ReportRow {
    month: String,
    tenant_name: String,
    vms: i64,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    monthly_cost: Option<f64>,
    currency: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    scope_name: Option<String>,
    #[sqlx(flatten)]
    rule: Rule,
}

#[derive(sqlx::FromRow)]
struct ProposalRow {
    id: Uuid,
    vm_uuid: Uuid,
    host_id: Option<Uuid>,
    vm_name: Option<String>,
    tenant_name: String,
    owner: Option<String>,
    kind: String,
    action: String,
    evidence: serde_json::Value,
    state: String,
    created_at: OffsetDateTime,
    respond_by: OffsetDateTime,
    reason: Option<String>,
}

impl From<ProposalRow> for Proposal {
    fn from(r: ProposalRow) -> Self {
        let (figures, daily_cpu) = figures_of(&r.evidence);
        Proposal {
            id: r.id,
            vm: r.vm_uuid,
            host_id: r.host_id,
            vm_name: r.vm_name.unwrap_or_else(|| "a deleted VM".into()),
            tenant_name: r.tenant_name,
            owner: r.owner,
            kind: r.kind,
            action: r.action,
            figures,
            daily_cpu,
            state: r.state,
            created_at: r.created_at,
            respond_by: r.respond_by,
            reason: r.reason,
        }
    }
}

const PROPOSALS: &str = "SELECT p.id, p.vm_uuid, v.host_id, v.name AS vm_name, t.name AS tenant_name,
        u.email AS owner, p.kind, p.action, p.evidence, p.state, p.created_at, p.respond_by, p.reason
    FROM reclamation_proposals p JOIN tenants t ON t.id = p.tenant_id
    LEFT JOIN vms v ON v.uuid = p.vm_uuid LEFT JOIN users u ON u.id = v.owner_id";

pub struct ReclamationBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub reclaimer: Arc<Reclaimer>,
}

/// Where `actor` may set rules.
fn scopes(actor: &Actor) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if actor.fleet_admin {
        out.push((
            "fleet".to_string(),
            "Fleet default (tenants without their own rule)".to_string(),
        ));
    }
    out.extend(
        actor
            .administered_tenants()
            .filter(|m| !m.tenant_suspended)
            .map(|m| (m.tenant_id.to_string(), m.tenant_name.clone())),
    );
    out
}

fn may_set(actor: &Actor, target: Target) -> std::result::Result<(), AppError> {
    let ok = match target {
        Target::Fleet => actor.fleet_admin,
        Target::Tenant(t) => authz::administers(actor, t),
    };
    match (ok, target) {
        (true, _) => Ok(()),
        (false, Target::Tenant(t)) => Err(authz::refuse_tenant(actor, t)),
        (false, Target::Fleet) => Err(AppError::Forbidden),
    }
}

#[async_trait]
impl Reclamation for ReclamationBackend {
    async fn overview(&self, req: &RequestCtx) -> Result<ReclamationOverview, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut scopes = scopes(actor);
            // Admins set rules; their tenants' managers read the proposals and the report.
            let tenants: Vec<Uuid> = actor
                .memberships
                .iter()
                .filter(|m| !m.tenant_suspended && authz::reads_reports(actor, m.tenant_id))
                .map(|m| m.tenant_id)
                .collect();
            if scopes.is_empty() && tenants.is_empty() {
                return Err(AppError::Forbidden.into());
            }
            let all = actor.fleet_admin;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            if all {
                // Fleet admins set rules for any tenant, not only those they are members of.
                let every = crate::accounts::tenants::choosable(&mut tx, true, &[]).await?;
                scopes.truncate(1);
                scopes.extend(every.into_iter().map(|(id, name)| (id.to_string(), name)));
            }
            let rules: Vec<RuleRow> = sqlx::query_as(
                "SELECT r.*, t.name AS scope_name FROM reclamation_rules r LEFT JOIN tenants t ON t.id = r.tenant_id
                 WHERE $1 OR r.tenant_id = ANY($2) ORDER BY t.name NULLS FIRST, r.kind",
            )
            .bind(all)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            let proposals: Vec<ProposalRow> = sqlx::query_as(&format!(
                "{PROPOSALS} WHERE ($1 OR p.tenant_id = ANY($2))
                 ORDER BY p.state <> 'open', p.created_at DESC LIMIT 200"
            ))
            .bind(all)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            let report: Vec<ReportRow> = sqlx::query_as(
                "SELECT to_char(date_trunc('month', p.done_at), 'YYYY-MM') AS month, t.name AS tenant_name,
                        count(*) AS vms, coalesce(sum(p.freed_vcpus), 0)::int8 AS vcpus,
                        coalesce(sum(p.freed_memory_mib), 0)::int8 AS memory_mib,
                        coalesce(sum(p.freed_disk_gib), 0)::int8 AS disk_gib,
                        sum(p.monthly_cost)::float8 AS monthly_cost,
                        string_agg(DISTINCT p.currency, '/') AS currency
                 FROM reclamation_proposals p JOIN tenants t ON t.id = p.tenant_id
                 WHERE p.state = 'done' AND ($1 OR p.tenant_id = ANY($2))
                 GROUP BY 1, 2 ORDER BY 1 DESC, 2",
            )
            .bind(all)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(ReclamationOverview {
                scopes,
                rules: rules
                    .into_iter()
                    .map(|r| RuleDto {
                        id: r.id,
                        tenant_id: r.tenant_id,
                        scope_name: r.scope_name.unwrap_or_else(|| "Fleet default".into()),
                        kind: r.rule.kind,
                        enabled: r.rule.enabled,
                        days: r.rule.days,
                        cpu_pct: r.rule.cpu_pct,
                        mem_pct: r.rule.mem_pct,
                        io_kbps: r.rule.io_kbps,
                        net_kbps: r.rule.net_kbps,
                        share_pct: r.rule.share_pct,
                        action: r.rule.action,
                        response_days: r.rule.response_days,
                    })
                    .collect(),
                proposals: proposals.into_iter().map(Proposal::from).collect(),
                report: report
                    .into_iter()
                    .map(|r| ReclaimedMonth {
                        month: r.month,
                        tenant_name: r.tenant_name,
                        vms: r.vms,
                        vcpus: r.vcpus,
                        memory_mib: r.memory_mib,
                        disk_gib: r.disk_gib,
                        monthly_cost: r.monthly_cost,
                        currency: r.currency,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn preview(&self, req: &RequestCtx, form: RuleForm) -> Result<Preview, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let (target, rule) = Rule::parse(&form)?;
            may_set(actor, target)?;
            let now = self.clock.now();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let tenants = rules::covered(&mut tx, target, &rule.kind).await?;
            let found = rules::candidates(&mut tx, &tenants, &rule, now).await?;
            db::done(tx);
            let candidates = found
                .into_iter()
                .map(|f| Candidate {
                    figures: f.figures(&rule, now),
                    vm: f.vm,
                    host_id: f.host_id,
                    tenant_name: f.tenant_name,
                    name: f.name,
                    owner: f.owner_email,
                    daily_cpu: f.daily_cpu.unwrap_or_default(),
                })
                .collect();
            Ok(Preview {
                rule: RuleForm {
                    scope: form.scope.trim().to_string(),
                    kind: rule.kind.clone(),
                    days: rule.days.to_string(),
                    cpu_pct: rule.cpu_pct.to_string(),
                    mem_pct: rule.mem_pct.to_string(),
                    io_kbps: rule.io_kbps.to_string(),
                    net_kbps: rule.net_kbps.to_string(),
                    share_pct: rule.share_pct.to_string(),
                    action: rule.action.clone(),
                    response_days: rule.response_days.to_string(),
                    enabled: None,
                },
                candidates,
            })
        })
        .await
    }

    async fn save(&self, req: &RequestCtx, form: RuleForm) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let (target, rule) = Rule::parse(&form)?;
            may_set(actor, target)?;
            let now = self.clock.now();
            let scope = match target {
                Target::Tenant(t) if !actor.fleet_admin => Scope::tenant(t),
                _ => Scope::fleet(),
            };
            let mut tx = db::begin(&self.pool, scope).await?;
            let before: Option<serde_json::Value> = sqlx::query_scalar(
                "SELECT to_jsonb(r) - 'id' - 'updated_at' - 'updated_by' FROM reclamation_rules r
                 WHERE tenant_id IS NOT DISTINCT FROM $1 AND kind = $2",
            )
            .bind(target.tenant())
            .bind(&rule.kind)
            .fetch_optional(&mut *tx)
            .await?;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO reclamation_rules (tenant_id, kind, enabled, days, cpu_pct, io_kbps, net_kbps,
                                                share_pct, action, response_days, updated_by, updated_at, mem_pct)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), kind)
                 DO UPDATE SET enabled = EXCLUDED.enabled, days = EXCLUDED.days, cpu_pct = EXCLUDED.cpu_pct,
                     mem_pct = EXCLUDED.mem_pct,
                     io_kbps = EXCLUDED.io_kbps, net_kbps = EXCLUDED.net_kbps, share_pct = EXCLUDED.share_pct,
                     action = EXCLUDED.action, response_days = EXCLUDED.response_days,
                     updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
                 RETURNING id",
            )
            .bind(target.tenant())
            .bind(&rule.kind)
            .bind(rule.enabled)
            .bind(rule.days)
            .bind(rule.cpu_pct)
            .bind(rule.io_kbps)
            .bind(rule.net_kbps)
            .bind(rule.share_pct)
            .bind(&rule.action)
            .bind(rule.response_days)
            .bind(actor.user_id)
            .bind(now)
            .bind(rule.mem_pct)
            .fetch_one(&mut *tx)
            .await?;
            let mut event = Event::new("reclamation_rule.save", "reclamation_rule", id)
                .tenant_opt(target.tenant())
                .after(json!({ "kind": rule.kind, "enabled": rule.enabled, "days": rule.days,
                               "cpu_pct": rule.cpu_pct, "mem_pct": rule.mem_pct, "io_kbps": rule.io_kbps, "net_kbps": rule.net_kbps,
                               "share_pct": rule.share_pct, "action": rule.action,
                               "response_days": rule.response_days }));
            if let Some(b) = before {
                event = event.before(b);
            }
            audit::record(&mut tx, &Origin::of(req), event).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn mine(&self, req: &RequestCtx) -> Result<Vec<Proposal>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenants = authz::member_tenants(actor);
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<ProposalRow> = sqlx::query_as(&format!(
                "{PROPOSALS} WHERE v.owner_id = $1 AND p.tenant_id = ANY($2)
                   AND (p.state = 'open' OR p.created_at > $3 - interval '30 days')
                 ORDER BY p.state <> 'open', p.respond_by"
            ))
            .bind(actor.user_id)
            .bind(&tenants)
            .bind(self.clock.now())
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(rows.into_iter().map(Proposal::from).collect())
        })
        .await
    }

    async fn answer(
        &self,
        req: &RequestCtx,
        id: Uuid,
        answer: &str,
        reason: &str,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let now = self.clock.now();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let row: Option<(Uuid, Uuid, String, String, String, Option<Uuid>)> = sqlx::query_as(
                "SELECT p.tenant_id, p.vm_uuid, p.kind, p.action, p.state, v.owner_id
                 FROM reclamation_proposals p LEFT JOIN vms v ON v.uuid = p.vm_uuid
                 WHERE p.id = $1 FOR UPDATE OF p",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((tenant, vm, kind, action, state, owner)) = row else {
                return Err(AppError::NotFound("Proposal".into()).into());
            };
            let facts = authz::VmFacts::portal(tenant, owner);
            authz::check_vm(actor, &facts, authz::Access::Act).map_err(|e| match e {
                AppError::Forbidden if !authz::member_of(actor, tenant) && !actor.fleet_admin => {
                    AppError::NotFound("Proposal".into())
                }
                e => e,
            })?;
            if state != "open" {
                return Err(AppError::Conflict(format!("This proposal was answered already ({state}).")).into());
            }
            match answer {
                "keep" => {
                    let reason = reason.trim();
                    if reason.is_empty() {
                        return Err(AppError::field("reason", "Say why this VM is still needed.").into());
                    }
                    if reason.chars().count() > 500 {
                        return Err(AppError::field("reason", "Keep the reason to 500 characters.").into());
                    }
                    let until = now + time::Duration::days(KEEP_DAYS);
                    sqlx::query(
                        "UPDATE reclamation_proposals SET state = 'kept', answered_by = $2, answered_at = $3,
                                reason = $4, keep_until = $5 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(actor.user_id)
                    .bind(now)
                    .bind(reason)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                    audit::record(
                        &mut tx,
                        &Origin::of(req),
                        Event::new("vm.reclaim.keep", "vm", vm).tenant(tenant).after(
                            json!({ "proposal": id, "kind": kind, "reason": reason, "keep_until": until.to_string() }),
                        ),
                    )
                    .await?;
                    tx.commit().await?;
                }
                "accept" => {
                    sqlx::query("UPDATE reclamation_proposals SET answered_by = $2, answered_at = $3 WHERE id = $1")
                        .bind(id)
                        .bind(actor.user_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let action_is_shrink = action == "shrink";
                    let due = Due { id, tenant_id: tenant, vm_uuid: vm, kind, action };
                    let why = format!("accepted by {}", actor.email);
                    let off = carry_out(&mut tx, &due, &Origin::of(req), &why, now).await?;
                    tx.commit().await?;
                    match off {
                        Some(Some(off)) => self.reclaimer.power_off(vec![off]).await?,
                        Some(None) if action_is_shrink => {
                            // Off already: shrunk now, not at the next check.
                            self.reclaimer.shrink_waiting().await?;
                        }
                        Some(None) => self.reclaimer.queue.wake.notify_waiters(),
                        None => {
                            return Err(AppError::Conflict(
                                "This VM is no longer running: nothing to reclaim.".into(),
                            )
                            .into())
                        }
                    }
                }
                _ => return Err(AppError::field("answer", "Answer keep or accept.").into()),
            }
            Ok(())
        })
        .await
    }
}
