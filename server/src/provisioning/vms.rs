//! The VMs requests made: lists, sparklines, the VM record, lease extensions.
use super::requests::*;
use crate::catalog::parse_days;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self, member_tenants, Access, VmFacts};
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{Error, Result};
use crate::platform::list::{self, asc, desc, Order};
use app::account::Actor;
use app::error::AppError;
use app::provisioning::{ManagedVm, VmFilter};
use app::seam::{Provisioning, RequestCtx};
use app::states::VmPhase;
use app::{Page, Place};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

pub(super) async fn vms(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    filter: VmFilter,
) -> Result<Page<ManagedVm>, AppError> {
    let actor = req.actor()?;
    // A custom plan of this six-table query would be re-made on every page (2–4 ms).
    let mut tx =
        db::begin_generic(&b.pool, ProvisioningBackend::list_scope(actor, filter.all)).await?;
    let page = b.vms_in(&mut tx, actor, filter).await?;
    db::done(tx);
    Ok(page)
}

pub(super) async fn cpu_sparkline(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    uuid: Uuid,
) -> Result<String, AppError> {
    let vm = b
        .managed_vm(req, uuid)
        .await?
        .ok_or_else(|| AppError::NotFound("VM".into()))?;
    Ok(b.sparkline(uuid, &vm.name, b.now()).await?)
}

pub(super) async fn managed_vm(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    uuid: Uuid,
) -> Result<Option<ManagedVm>, AppError> {
    let actor = req.actor()?;
    let Some((tenant, owner)) = b.vm_tenant(uuid).await? else {
        return Ok(None);
    };
    if !authz::acts_on_vm(actor, &VmFacts::portal(tenant, owner)) {
        return Ok(None);
    }
    let mut tx = db::begin(&b.pool, ProvisioningBackend::scope(actor, tenant)).await?;
    Ok(b.vm_rows(&mut tx, "v.uuid = $1", uuid)
        .await?
        .into_iter()
        .next())
}

pub(super) async fn extend_lease(
    b: &ProvisioningBackend,
    req: &RequestCtx,
    uuid: Uuid,
    days: &str,
) -> Result<()> {
    let actor = req.actor()?;
    let days = parse_days(days, "days")?;
    let started = std::time::Instant::now();
    let (tenant, mut tx) = b.owned_vm(req, uuid).await?;
    let now = b.now();
    let row: (OffsetDateTime, Option<i32>, String, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT v.lease_ends_at, t.max_lease_days, v.name, v.stopped_for_lease_at FROM vms v
         LEFT JOIN templates t ON t.id = v.template_id WHERE v.uuid = $1 FOR UPDATE OF v",
    )
    .bind(uuid)
    .fetch_one(&mut *tx)
    .await?;
    let (current, max_days, name, _stopped) = row;
    let new_end = current.max(now) + time::Duration::days(days.into());
    let max_days = max_days.unwrap_or(30);
    let limit = now + time::Duration::days(max_days.into());
    // Beyond the template's maximum needs an approver of the tenant.
    if new_end > limit && !authz::decides_in(actor, tenant) {
        return Err(AppError::field(
            "days",
            format!(
                "Leases of {name} can reach at most {max_days} days from today; an admin of its tenant can extend it further."
            ),
        ).into());
    }
    sqlx::query(
        "UPDATE vms SET lease_ends_at = $2, reminded_days = NULL, stopped_for_lease_at = NULL,
                phase = CASE WHEN phase = 'expired' THEN 'running' ELSE phase END, updated_at = $3
         WHERE uuid = $1",
    )
    .bind(uuid)
    .bind(new_end)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("vm.lease.extend", "vm", uuid)
            .tenant(tenant)
            .before(json!({ "lease_ends_at": current.to_string() }))
            .after(json!({ "lease_ends_at": new_end.to_string() })),
    )
    .await?;
    let logged = format!(
        "lease extended by {days} day{}",
        if days == 1 { "" } else { "s" }
    );
    crate::provisioning::day2::log_operation(
        &mut tx,
        uuid,
        tenant,
        Some(actor.user_id),
        &logged,
        started,
    )
    .await?;
    Ok(tx.commit().await?)
}

/// Whose VMs a list counts, and which: the key of `ProvisioningBackend::vm_counts`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VmCountKey {
    owners: VmOwners,
    search: String,
    state: String,
}

/// Whose VMs a list shows: the viewer's own, every VM of some tenants, or every portal VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum VmOwners {
    /// The owner and the tenants they are still a member of: ownership ends with membership.
    Own(Uuid, Vec<Uuid>),
    Tenants(Vec<Uuid>),
    Everything,
}

impl VmOwners {
    /// The condition on `$1`, one statement per kind rather than one with
    /// `owner = $1 OR tenant = ANY($2) OR $3`: a generic plan of that must serve all three and
    /// walks the whole name index to find a user's few VMs (5 ms at 10,000 VMs).
    pub(super) fn condition(&self) -> &'static str {
        match self {
            // One array parameter: the owner first, then their tenants.
            VmOwners::Own(..) => {
                "v.owner_id = ($1::uuid[])[1] AND v.tenant_id = ANY(($1::uuid[])[2:])"
            }
            VmOwners::Tenants(_) => "v.tenant_id = ANY($1)",
            VmOwners::Everything => "$1",
        }
    }

    pub(super) fn bind(&self, args: &mut sqlx::postgres::PgArguments) -> Result<(), AppError> {
        match self {
            VmOwners::Own(user, tenants) => Ok(list::arg(
                args,
                std::iter::once(*user)
                    .chain(tenants.iter().copied())
                    .collect::<Vec<_>>(),
            )?),
            VmOwners::Tenants(tenants) => Ok(list::arg(args, tenants.clone())?),
            VmOwners::Everything => Ok(list::arg(args, true)?),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct VmRow {
    pub(super) uuid: Uuid,
    pub(super) name: String,
    pub(super) tenant_name: String,
    pub(super) owner_email: Option<String>,
    pub(super) template_name: Option<String>,
    pub(super) host_id: Option<Uuid>,
    pub(super) host_name: Option<String>,
    pub(super) vcpus: i32,
    pub(super) memory_mib: i64,
    pub(super) disk_gib: i64,
    #[sqlx(try_from = "String")]
    pub(super) phase: VmPhase,
    pub(super) state: Option<String>,
    pub(super) error: Option<String>,
    pub(super) lease_ends_at: OffsetDateTime,
    pub(super) created_at: OffsetDateTime,
    pub(super) request_id: Option<Uuid>,
    pub(super) max_lease_days: Option<i32>,
    pub(super) login_user: Option<String>,
    pub(super) ssh_port: Option<i32>,
    pub(super) ssh_ready_at: Option<OffsetDateTime>,
    pub(super) guest_addresses: Vec<String>,
    pub(super) network: Option<String>,
}

/// The VM list's orders; each has an index over `vms` (see the migrations), so a page after a
/// cursor is one index seek.
const VM_ORDERS: [Order; 4] = [
    Order {
        name: "name",
        key: &[asc("v.name", "text"), asc("v.uuid", "uuid")],
    },
    Order {
        name: "lease",
        key: &[
            asc("v.lease_ends_at", "timestamptz"),
            asc("v.name", "text"),
            asc("v.uuid", "uuid"),
        ],
    },
    Order {
        name: "created",
        key: &[desc("v.created_at", "timestamptz"), asc("v.uuid", "uuid")],
    },
    Order {
        name: "state",
        key: &[
            asc("coalesce(d.state, v.phase)", "text"),
            asc("v.name", "text"),
            asc("v.uuid", "uuid"),
        ],
    },
];

/// A row's values of `order`'s key, for the cursors of its page.
fn vm_key(order: &Order, r: &VmRow) -> Vec<String> {
    let at = |t: &OffsetDateTime| list::timestamp(*t);
    let (name, uuid) = (r.name.clone(), r.uuid.to_string());
    match order.name {
        "lease" => vec![at(&r.lease_ends_at), name, uuid],
        "created" => vec![at(&r.created_at), uuid],
        "state" => vec![
            r.state.clone().unwrap_or_else(|| r.phase.to_string()),
            name,
            uuid,
        ],
        _ => vec![name, uuid],
    }
}

/// What the state filter accepts: hypervisor states and the portal's phases.
pub(super) fn vm_states() -> impl Iterator<Item = &'static str> {
    ["running", "shutoff", "paused", "crashed", "pmsuspended"]
        .into_iter()
        .chain(
            VmPhase::ALL
                .into_iter()
                .filter(|p| !matches!(p, VmPhase::Running | VmPhase::Deleted))
                .map(VmPhase::as_str),
        )
}

pub(super) const VM_SELECT: &str = "
    SELECT v.uuid, v.name, t.name AS tenant_name, u.email AS owner_email, tp.name AS template_name,
           v.host_id, h.name AS host_name, v.vcpus, v.memory_mib, v.disk_gib, v.phase, d.state, v.error,
           v.lease_ends_at, v.created_at, v.request_id, tp.max_lease_days, tp.login_user, v.ssh_port, v.ssh_ready_at,
           v.guest_addresses, v.network
    FROM vms v JOIN tenants t ON t.id = v.tenant_id LEFT JOIN users u ON u.id = v.owner_id
    LEFT JOIN templates tp ON tp.id = v.template_id LEFT JOIN hosts h ON h.id = v.host_id
    LEFT JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid AND d.missing_since IS NULL";

pub(super) fn to_managed_vm(r: VmRow, now: OffsetDateTime, ssh_host: &str) -> ManagedVm {
    // User-mode networking: a forwarded port on the host; a libvirt network: the guest's
    // own address (once its agent or the network's DHCP lease says it).
    let own_address = crate::provisioning::guest::first_ipv4(&r.guest_addresses);
    let ssh = match (
        r.login_user,
        r.ssh_port.and_then(|p| u16::try_from(p).ok()),
        &r.network,
    ) {
        (Some(user), Some(port), None) => Some(app::provisioning::SshAccess {
            user,
            host: ssh_host.to_string(),
            port,
            ready_at: r.ssh_ready_at,
        }),
        (Some(user), _, Some(_)) => own_address.map(|host| app::provisioning::SshAccess {
            user,
            host,
            port: 22,
            ready_at: r.ssh_ready_at,
        }),
        _ => None,
    };
    ManagedVm {
        ssh,
        guest_addresses: r.guest_addresses,
        network: r.network,
        uuid: r.uuid,
        name: r.name,
        tenant_name: r.tenant_name,
        owner_email: r.owner_email,
        template_name: r.template_name,
        host_id: r.host_id,
        host_name: r.host_name,
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_gib: r.disk_gib,
        phase: r.phase,
        state: r.state,
        error: r.error,
        lease_ends_at: r.lease_ends_at,
        lease_days_left: (r.lease_ends_at - now).whole_days(),
        request_id: r.request_id,
        max_lease_days: r.max_lease_days,
    }
}

impl ProvisioningBackend {
    /// One VM's CPU sparkline, cached for a minute (list pages show the same ones to everyone
    /// who may see them; the caller has authorized the viewer).
    pub(super) async fn sparkline(
        &self,
        uuid: Uuid,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<String> {
        if let Some(svg) = self.sparklines.get(&uuid).await {
            return Ok(svg);
        }
        let lines =
            crate::metering::metrics::cpu_sparklines(&self.pool, Scope::fleet(), vec![uuid], now)
                .await?;
        let points = lines.get(&uuid).map(Vec::as_slice).unwrap_or(&[]);
        let svg = crate::fleet::charts::sparkline(
            points,
            now - time::Duration::hours(6),
            now,
            &format!("{name} CPU, last 6 hours"),
        );
        self.sparklines.insert(uuid, svg.clone()).await;
        Ok(svg)
    }

    pub(super) async fn vm_tenant(&self, uuid: Uuid) -> Result<Option<(Uuid, Option<Uuid>)>> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as("SELECT tenant_id, owner_id FROM vms WHERE uuid = $1 AND deleted_at IS NULL")
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::from)
    }

    pub(super) async fn vm_rows(
        &self,
        tx: &mut Tx,
        filter: &str,
        key: Uuid,
    ) -> Result<Vec<ManagedVm>> {
        let now = self.now();
        let rows: Vec<VmRow> =
            sqlx::query_as(&format!("{VM_SELECT} WHERE {filter} ORDER BY v.name"))
                .bind(key)
                .fetch_all(&mut **tx)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| to_managed_vm(r, now, &self.ssh_host))
            .collect())
    }

    /// The VM for someone who may act on it: its owner, or an admin of its tenant.
    pub(super) async fn owned_vm(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
    ) -> Result<(Uuid, Tx), AppError> {
        let actor = req.actor()?;
        let (tenant, owner) = self
            .vm_tenant(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound("VM".into()))?;
        authz::check_vm(actor, &VmFacts::portal(tenant, owner), Access::Act)?;
        let tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        Ok((tenant, tx))
    }

    /// A page of VMs inside the caller's transaction, which sets the generic plan (see
    /// `vms`): the owners' condition is the authorisation, whatever the transaction's scope.
    pub(super) async fn vms_in(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        filter: VmFilter,
    ) -> Result<Page<ManagedVm>> {
        let place = Place {
            page: filter.page.max(1),
            ..filter.place()
        };
        let now = self.now();
        let order = list::order(&filter.sort, &VM_ORDERS)?;
        let state = list::state_filter(&filter.state, vm_states())?;
        let (search, pattern) = list::search_pattern(&filter.search)?;
        let owners = if !filter.all {
            VmOwners::Own(actor.user_id, member_tenants(actor))
        } else if actor.fleet_admin {
            VmOwners::Everything
        } else {
            let tenants: Vec<Uuid> = actor.administered_tenants().map(|m| m.tenant_id).collect();
            if tenants.is_empty() {
                return Err(AppError::Forbidden.into());
            }
            VmOwners::Tenants(tenants)
        };
        // The page is chosen from `vms` alone (its indexes serve the name, lease and newest
        // orders), joining the domains only to filter or sort by state; the 50 rows are then
        // read with everything the list shows.
        let by_state = !state.is_empty() || filter.sort == "state";
        let (domains_join, state_cond) = if by_state {
            (
                "LEFT JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid AND d.missing_since IS NULL",
                "($4 = '' OR coalesce(d.state, v.phase) = $4)",
            )
        } else {
            ("", "$4 = ''")
        };
        let from_where = format!(
            "FROM vms v {domains_join}
             WHERE {} AND v.deleted_at IS NULL
               AND ($2 = '' OR v.name ILIKE $3) AND {state_cond}",
            owners.condition()
        );
        let mut args = sqlx::postgres::PgArguments::default();
        owners.bind(&mut args)?;
        list::arg(&mut args, search)?;
        list::arg(&mut args, &pattern)?;
        list::arg(&mut args, state)?;
        let key = VmCountKey {
            owners,
            search: search.to_string(),
            state: state.to_string(),
        };
        let (w, total) = self
            .vm_lists
            .window(tx, key, order, &from_where, &args, &place, PER_PAGE)
            .await?;
        let rows: Vec<VmRow> = sqlx::query_as_with(
            &format!(
                "{VM_SELECT} WHERE v.uuid IN (SELECT v.uuid {from_where} {} ORDER BY {} {})
                 ORDER BY {}",
                w.after, w.pick, w.limit, w.show
            ),
            w.args,
        )
        .fetch_all(&mut **tx)
        .await?;
        Ok(list::keyset_page(
            &place,
            PER_PAGE,
            total,
            rows,
            |r| vm_key(order, r),
            |r| to_managed_vm(r, now, &self.ssh_host),
        ))
    }
}

impl ProvisioningBackend {
    /// For day-2 operations: the VM's tenant and a transaction scoped to it, once the actor
    /// is known to be its owner or an admin of its tenant.
    pub async fn authorize_vm(&self, req: &RequestCtx, uuid: Uuid) -> Result<(Uuid, Tx), AppError> {
        self.owned_vm(req, uuid).await
    }
}
