//! A domain's page, charts and lifecycle actions, adoption into a tenant, forgetting a vanished one.
use super::dashboard::*;
use super::*;
use crate::hypervisor::connection::Action;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self, Access, VmFacts};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use app::account::Actor;
use app::error::AppError;
use app::fleet::{ChartUnit, ChartView, OperationInfo, VmDetail};
use app::seam::RequestCtx;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub(super) async fn vm_charts(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    uuid: Uuid,
    range: &str,
) -> Result<Vec<ChartView>> {
    let range = parse_range(range)?;
    let (_, scope) = b.authorized_vm(req, host_id, uuid, Access::See).await?;
    let now = b.clock.now();
    let s = crate::metering::metrics::subject_series(&b.pool, scope, uuid, range, now).await?;
    let mut cpu = chart_view(
        "CPU",
        ChartUnit::Percent,
        range,
        now,
        vec![("CPU", s.get("cpu"))],
    );
    mark_anomalies(&b.pool, scope, uuid, &mut cpu).await?;
    Ok(vec![
        cpu,
        chart_view(
            "Memory",
            ChartUnit::Bytes,
            range,
            now,
            vec![("Memory", s.get("mem"))],
        ),
        chart_view(
            "Disk",
            ChartUnit::BytesPerSecond,
            range,
            now,
            vec![("Read", s.get("rd")), ("Write", s.get("wr"))],
        ),
        chart_view(
            "Network",
            ChartUnit::BytesPerSecond,
            range,
            now,
            vec![("Received", s.get("rx")), ("Sent", s.get("tx"))],
        ),
    ])
}

/// Adds the hours the anomaly check flagged in the chart's span as a second series of single
/// points ("Unusual CPU", drawn as markers), and names them in the caption.
async fn mark_anomalies(
    pool: &PgPool,
    scope: Scope,
    uuid: Uuid,
    chart: &mut ChartView,
) -> Result<()> {
    let from = time::OffsetDateTime::from_unix_timestamp(chart.from_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut tx = db::begin(pool, scope).await?;
    // An anomaly is about the last complete hour before the check that found it.
    let marks: Vec<(time::OffsetDateTime, f64)> = sqlx::query_as(
        "SELECT date_trunc('hour', started_at) - interval '1 hour', value FROM alerts
         WHERE kind = 'anomaly' AND subject = $1 AND value IS NOT NULL AND started_at >= $2
         ORDER BY started_at",
    )
    .bind(uuid)
    .bind(from)
    .fetch_all(&mut *tx)
    .await?;
    db::done(tx);
    if marks.is_empty() {
        return Ok(());
    }
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:00 UTC");
    let named: Vec<String> = marks
        .iter()
        .map(|(at, v)| {
            format!(
                "{} ({})",
                at.format(&f).unwrap_or_default(),
                chart.unit.format(*v)
            )
        })
        .collect();
    chart.summary = format!(
        "{} Unusual for this VM: {}.",
        chart.summary,
        named.join(", ")
    );
    chart.lines.push(app::fleet::ChartLine {
        label: "Unusual CPU".into(),
        points: marks
            .into_iter()
            .map(|(at, v)| ((at.unix_timestamp_nanos() / 1_000_000) as i64, v))
            .collect(),
    });
    Ok(())
}

pub(super) async fn forget(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    uuid: Uuid,
) -> Result<()> {
    req.fleet_admin()?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let row: Option<(String, bool, Option<Uuid>)> = sqlx::query_as(
        "SELECT name, missing_since IS NOT NULL, tenant_id FROM domains WHERE host_id = $1 AND uuid = $2 FOR UPDATE",
    )
    .bind(host_id)
    .bind(uuid)
    .fetch_optional(&mut *tx)
    .await?;
    let (name, missing, tenant) = row.ok_or_else(|| AppError::NotFound("Domain".into()))?;
    if !missing {
        return Err(AppError::Conflict(format!(
            "{name} is still on its host: only a domain that vanished can be forgotten."
        ))
        .into());
    }
    // A portal VM whose domain vanished: its record is closed and its quota released by
    // the same (idempotent) job that deletes VMs.
    let portal = sqlx::query(
        "UPDATE vms SET phase = 'deleting', updated_at = now() WHERE uuid = $1 AND host_id = $2 AND deleted_at IS NULL",
    )
    .bind(uuid)
    .bind(host_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if portal {
        crate::platform::jobs::enqueue(
            &mut tx,
            crate::platform::jobs::JobKind::Delete,
            uuid,
            json!({ "reason": "its domain vanished from the host and was forgotten" }),
            10,
        )
        .await?;
    }
    sqlx::query("DELETE FROM domains WHERE host_id = $1 AND uuid = $2")
        .bind(host_id)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
    let mut event = Event::new("domain.forget", "domain", uuid)
        .after(json!({ "name": name, "host_id": host_id, "portal_vm": portal }));
    event.tenant_id = tenant;
    audit::record(&mut tx, &Origin::of(req), event).await?;
    tx.commit().await?;
    if portal {
        b.queue.wake.notify_waiters();
    }
    Ok(())
}

pub(super) async fn vm(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    uuid: Uuid,
) -> Result<VmDetail> {
    let (row, scope) = b.authorized_vm(req, host_id, uuid, Access::See).await?;
    #[derive(sqlx::FromRow)]
    struct Op {
        id: i64,
        operation: String,
        status: String,
        error: Option<String>,
        detail: Option<String>,
        actor_email: Option<String>,
        started_at: time::OffsetDateTime,
        duration_ms: Option<i32>,
    }
    let mut tx = db::begin(&b.pool, scope).await?;
    let ops: Vec<Op> = sqlx::query_as(
        "SELECT o.id, o.operation, o.status, o.error, o.detail, u.email AS actor_email, o.started_at, o.duration_ms
         FROM domain_operations o LEFT JOIN users u ON u.id = o.actor_id
         WHERE o.host_id = $1 AND o.domain_uuid = $2 ORDER BY o.id DESC LIMIT 20",
    )
    .bind(host_id)
    .bind(uuid)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(VmDetail {
        disks: crate::hypervisor::inventory::parse_disks(&row.disks),
        nics: crate::hypervisor::inventory::parse_nics(&row.nics),
        operations: ops
            .into_iter()
            .map(|o| OperationInfo {
                id: o.id,
                operation: o.operation,
                status: o.status,
                error: o.error,
                detail: o.detail,
                actor_email: o.actor_email,
                started_at: o.started_at,
                duration_ms: o.duration_ms,
            })
            .collect(),
        domain: row.domain.into(),
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn vm_action(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    uuid: Uuid,
    action: &str,
    confirm: &str,
) -> Result<()> {
    let action =
        Action::parse(action).ok_or_else(|| AppError::field("action", "Unknown action."))?;
    let (row, scope) = b.authorized_vm(req, host_id, uuid, Access::Act).await?;
    if row.domain.missing {
        return Err(AppError::Conflict("This VM is no longer on its host.".into()).into());
    }
    // A portal VM may also be confirmed by the name its owner gave it.
    let portal_name: Option<String> = if action == Action::Delete {
        let mut tx = db::begin(&b.pool, scope).await?;
        sqlx::query_scalar("SELECT name FROM vms WHERE uuid = $1 AND deleted_at IS NULL")
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        None
    };
    if action == Action::Delete
        && confirm.trim() != row.domain.name
        && portal_name.as_deref() != Some(confirm.trim())
    {
        return Err(AppError::field(
            "confirm",
            format!(
                "Type the VM's name, {}, to confirm.",
                portal_name.as_deref().unwrap_or(&row.domain.name)
            ),
        )
        .into());
    }
    if action == Action::Shutdown {
        // One wait per VM: a second click would only stack up operations.
        let mut tx = db::begin(&b.pool, scope).await?;
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs
             WHERE kind = $1 AND key = $2 AND state IN ('queued', 'running'))",
        )
        .bind(crate::platform::jobs::JobKind::Shutdown.as_str())
        .bind(uuid)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if waiting {
            return Err(AppError::Conflict(
                "This VM is already shutting down; it is forced off if the guest does not respond in time.".into(),
            ).into());
        }
    }
    b.run_operation(req, &row, scope, action).await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn adopt(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    uuid: Uuid,
    tenant_id: Uuid,
    owner_email: &str,
) -> Result<()> {
    req.fleet_admin()?;
    let email = crate::accounts::email::Email::parse(owner_email, "owner_email")?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let managed: Option<bool> = sqlx::query_scalar(
        "SELECT managed FROM domains WHERE host_id = $1 AND uuid = $2 FOR UPDATE",
    )
    .bind(host_id)
    .bind(uuid)
    .fetch_optional(&mut *tx)
    .await?;
    match managed {
        None => return Err(AppError::NotFound("VM".into()).into()),
        Some(true) => return Err(AppError::Conflict("This VM is already managed.".into()).into()),
        Some(false) => {}
    }
    let owner: Option<Uuid> = sqlx::query_scalar(
        "SELECT u.id FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1
         WHERE lower(u.email) = $2 AND u.disabled_at IS NULL",
    )
    .bind(tenant_id)
    .bind(email.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let owner = owner.ok_or_else(|| {
        AppError::field(
            "owner_email",
            "The owner must be an active member of that tenant.",
        )
    })?;
    sqlx::query("UPDATE domains SET managed = true, tenant_id = $3, owner_id = $4 WHERE host_id = $1 AND uuid = $2")
        .bind(host_id)
        .bind(uuid)
        .bind(tenant_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("vm.adopt", "domain", uuid)
            .tenant(tenant_id)
            .after(json!({ "host": host_id, "owner": email.as_str() })),
    )
    .await?;
    crate::platform::live::notify_domain(&mut tx, host_id, uuid).await?;
    tx.commit().await?;
    // This server's lists count again at once; the others when the event reaches them.
    b.domain_lists.forget();
    Ok(())
}

/// A domain row as the VM page, the lifecycle actions and the consoles need it.
#[derive(sqlx::FromRow)]
pub(super) struct VmRow {
    #[sqlx(flatten)]
    pub(super) domain: DomainRow,
    pub(super) tenant_id: Option<Uuid>,
    pub(super) owner_id: Option<Uuid>,
    pub(super) disks: serde_json::Value,
    pub(super) nics: serde_json::Value,
    /// The host's libvirt URI.
    pub(super) uri: String,
    /// The host's pinned SSH key, for a host reached over SSH.
    pub(super) ssh_host_key: Option<String>,
}

pub(super) const VM_QUERY: &str = "
    SELECT d.host_id, h.name AS host_name, d.uuid, d.name, d.state, d.vcpus, d.memory_kib, d.managed,
           d.tenant_id, t.name AS tenant_name, d.owner_id, u.email AS owner_email,
           d.missing_since IS NOT NULL AS missing, d.state_since, d.disks, d.nics, h.uri, h.ssh_host_key
    FROM domains d JOIN hosts h ON h.id = d.host_id
    LEFT JOIN tenants t ON t.id = d.tenant_id LEFT JOIN users u ON u.id = d.owner_id
    WHERE d.host_id = $1 AND d.uuid = $2";

/// Loads a VM `actor` may manage (`authz::acts_on_vm`; unmanaged domains: fleet admins only)
/// with the transaction scope of the VM's own tenant, so its operation rows land in that
/// tenant whichever of the actor's tenants came first. Everyone else is refused as `access`
/// says (`authz::refuse`). The VM page, its actions and its consoles all load VMs this way.
pub(super) async fn authorized_vm(
    pool: &PgPool,
    actor: &Actor,
    host_id: Uuid,
    uuid: Uuid,
    access: Access,
) -> Result<(VmRow, Scope)> {
    // One fleet-scoped read; the rule below is the authorisation.
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let row: Option<VmRow> = sqlx::query_as(VM_QUERY)
        .bind(host_id)
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await?;
    db::done(tx);
    let row = row.ok_or_else(|| AppError::NotFound("VM".into()))?;
    let facts = VmFacts {
        managed: row.domain.managed,
        tenant: row.tenant_id,
        owner: row.owner_id,
    };
    authz::check_vm(actor, &facts, access)?;
    let scope = match row.tenant_id {
        Some(tenant) if !actor.fleet_admin => Scope {
            user: Some(actor.user_id),
            tenant: Some(tenant),
            fleet: false,
        },
        _ => Scope::fleet(),
    };
    Ok((row, scope))
}

impl FleetBackend {
    pub(super) async fn authorized_vm(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        access: Access,
    ) -> Result<(VmRow, Scope)> {
        authorized_vm(&self.pool, req.actor()?, host_id, uuid, access).await
    }
}

impl FleetBackend {
    /// An audit row on its own (for changes made on a hypervisor rather than in the database).
    pub(super) async fn record(&self, req: &RequestCtx, event: Event<'_>) -> Result<()> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        audit::record(&mut tx, &Origin::of(req), event).await?;
        Ok(tx.commit().await?)
    }
}

impl FleetBackend {
    /// Records the operation, runs it on the host's actor, records the outcome (and an audit
    /// row). Returns libvirt's error as a conflict the user can read.
    pub(super) async fn run_operation(
        &self,
        req: &RequestCtx,
        row: &VmRow,
        scope: Scope,
        action: Action,
    ) -> Result<()> {
        let origin = Origin::of(req);
        let mut tx = db::begin(&self.pool, scope).await?;
        let op_id: i64 = sqlx::query_scalar(
            "INSERT INTO domain_operations (host_id, domain_uuid, tenant_id, actor_id, operation, status)
             VALUES ($1, $2, $3, $4, $5, 'running') RETURNING id",
        )
        .bind(row.domain.host_id)
        .bind(row.domain.uuid)
        .bind(row.tenant_id)
        .bind(origin.actor_id)
        .bind(action.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;

        let started = std::time::Instant::now();
        let result = self
            .hypervisors
            .lifecycle(row.domain.host_id, row.domain.uuid, action)
            .await;
        let ms = started.elapsed().as_millis() as i32;

        let mut tx = db::begin(&self.pool, scope).await?;
        if action == Action::Shutdown && result.is_ok() {
            // The guest was only asked: the operation runs until it is off, or forced off at
            // the deadline (see `shutdown`).
            sqlx::query("UPDATE domain_operations SET detail = $2 WHERE id = $1")
                .bind(op_id)
                .bind(format!(
                    "Waiting for the guest to shut down; forced off after {} s if it does not.",
                    self.shutdown_timeout.as_secs()
                ))
                .execute(&mut *tx)
                .await?;
            crate::provisioning::shutdown::watch(
                &mut tx,
                row.domain.host_id,
                row.domain.uuid,
                op_id,
                self.shutdown_timeout,
            )
            .await?;
        } else {
            sqlx::query(
                "UPDATE domain_operations SET status = $2, error = $3, finished_at = now(), duration_ms = $4 WHERE id = $1",
            )
            .bind(op_id)
            .bind(if result.is_ok() { "succeeded" } else { "failed" })
            .bind(result.as_ref().err())
            .bind(ms)
            .execute(&mut *tx)
            .await?;
        }
        let mut event = Event::new("vm.action", "domain", row.domain.uuid).after(json!({
            "action": action.as_str(), "host": row.domain.host_name, "name": row.domain.name,
            "result": if result.is_ok() { "succeeded" } else { "failed" },
            "error": result.as_ref().err(), "duration_ms": ms
        }));
        event.tenant_id = row.tenant_id;
        audit::record(&mut tx, &origin, event).await?;
        let portal_vm = if action == Action::Delete && result.is_ok() {
            // A portal VM also has a disk to remove and quota to release: the delete job does
            // both (idempotently; the domain is already gone).
            let marked = sqlx::query(
                "UPDATE vms SET phase = 'deleting', updated_at = now() WHERE uuid = $1 AND deleted_at IS NULL",
            )
            .bind(row.domain.uuid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked > 0 {
                crate::platform::jobs::enqueue(
                    &mut tx,
                    crate::platform::jobs::JobKind::Delete,
                    row.domain.uuid,
                    json!({ "reason": "deleted by its owner or an admin" }),
                    10,
                )
                .await?;
            }
            marked > 0
        } else {
            false
        };
        tx.commit().await?;
        if portal_vm || (action == Action::Shutdown && result.is_ok()) {
            self.queue.wake.notify_waiters();
        }
        Ok(result.map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?)
    }
}
