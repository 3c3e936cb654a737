//! Requests and approvals, quotas and policy, and the VMs requests create: the backend of the
//! `Provisioning` seam. Every state change writes its audit row and its request log line in
//! the transaction that makes it.
use crate::catalog::{self, parse_days};
use crate::hypervisor::domain_xml::VmName;
use crate::hypervisor::Hypervisors;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self, member_tenants, Access, VmFacts};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::jobs::{self, Queue};
use crate::provisioning::approval::{self, Ask, Policies, Policy};
use crate::provisioning::placement;
use crate::provisioning::quota::{self, Amount, Release};
use app::account::Actor;
use app::error::AppError;
use app::provisioning::{
    HomePanels, InboxItem, LimitsForm, ManagedVm, PolicyForm, QuotaEffect, Recount, RequestDetail,
    RequestEvent, RequestFilter, RequestForm, RequestState, RequestSummary, Snapshot, TenantQuotas,
    UserQuota, VmFilter,
};
use app::seam::{Provisioning, RequestCtx};
use app::Page;
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
    /// Totals of the VM lists by (who, search, state), with the live-event generation they
    /// were counted at: paging through 10,000 VMs need not count them on every page. A count
    /// is reused only while no event has happened since and for at most `time_to_live`.
    pub vm_counts: moka::future::Cache<VmCountKey, (u64, i64)>,
    pub live_generation: Arc<std::sync::atomic::AtomicU64>,
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
enum VmOwners {
    /// The owner and the tenants they are still a member of: ownership ends with membership.
    Own(Uuid, Vec<Uuid>),
    Tenants(Vec<Uuid>),
    Everything,
}

impl VmOwners {
    /// The condition on `$1`, one statement per kind rather than one with
    /// `owner = $1 OR tenant = ANY($2) OR $3`: a generic plan of that must serve all three and
    /// walks the whole name index to find a user's few VMs (5 ms at 10,000 VMs).
    fn condition(&self) -> &'static str {
        match self {
            // One array parameter: the owner first, then their tenants.
            VmOwners::Own(..) => {
                "v.owner_id = ($1::uuid[])[1] AND v.tenant_id = ANY(($1::uuid[])[2:])"
            }
            VmOwners::Tenants(_) => "v.tenant_id = ANY($1)",
            VmOwners::Everything => "$1",
        }
    }

    fn bind(&self, args: &mut sqlx::postgres::PgArguments) -> Result<(), AppError> {
        match self {
            VmOwners::Own(user, tenants) => db::arg(
                args,
                std::iter::once(*user)
                    .chain(tenants.iter().copied())
                    .collect::<Vec<_>>(),
            ),
            VmOwners::Tenants(tenants) => db::arg(args, tenants.clone()),
            VmOwners::Everything => db::arg(args, true),
        }
    }
}

/// A validated request form.
struct Valid {
    tenant: Uuid,
    template: app::provisioning::Template,
    size: app::provisioning::Size,
    count: i32,
    prefix: String,
    lease_days: i32,
    purpose: String,
    user_data: String,
    /// The libvirt network chosen; None: user-mode networking.
    network: Option<String>,
}

/// The network among the template's choices (empty: the first); None for user-mode.
fn parse_network(
    template: &app::provisioning::Template,
    raw: &str,
) -> Result<Option<String>, AppError> {
    let choices = crate::catalog::network_choices(template);
    let chosen = match raw.trim() {
        "" => choices[0].as_str(),
        n => n,
    };
    if !choices.iter().any(|c| c == chosen) {
        return Err(AppError::field(
            "network",
            format!(
                "Choose one of the networks {} offers: {}.",
                template.name,
                choices.join(", ")
            ),
        ));
    }
    Ok((chosen != crate::catalog::USER_NETWORK).then(|| chosen.to_string()))
}

/// The requester's own cloud-config: only where the template allows it, a YAML mapping of
/// at most 16 KiB that does not touch what the portal sets (users, keys, host name).
fn parse_user_data(template: &app::provisioning::Template, raw: &str) -> Result<String, AppError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    if !template.allow_user_data {
        return Err(AppError::field(
            "user_data",
            format!("{} does not take your own cloud-config.", template.name),
        ));
    }
    crate::catalog::cloud_init::parse_snippet(text, "user_data")?;
    Ok(text.to_string())
}

/// The names a request's VMs get: the prefix alone for one VM, else prefix-1, prefix-2, …
pub fn vm_names(prefix: &str, count: i32) -> Vec<String> {
    if count == 1 {
        vec![prefix.to_string()]
    } else {
        (1..=count).map(|i| format!("{prefix}-{i}")).collect()
    }
}

/// Whose requests the actor decides on, as the (every tenant, these tenants) pair the request
/// filters take: fleet admins every tenant's, approvers and tenant admins their tenants';
/// anyone else is refused.
fn deciding(actor: &Actor) -> Result<(bool, Vec<Uuid>), AppError> {
    if actor.fleet_admin {
        return Ok((true, Vec::new()));
    }
    let tenants = actor.approver_tenants();
    if tenants.is_empty() {
        return Err(AppError::Forbidden);
    }
    Ok((false, tenants))
}

fn parse_count(raw: &str) -> Result<i32, AppError> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|c| (1..=MAX_COUNT).contains(c))
        .ok_or_else(|| AppError::field("count", format!("Ask for 1 to {MAX_COUNT} VMs at a time.")))
}

fn parse_purpose(raw: &str) -> Result<String, AppError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(AppError::field(
            "purpose",
            "Say what the VMs are for (approvers read it).",
        ));
    }
    if s.chars().count() > 1000 || s.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        return Err(AppError::field(
            "purpose",
            "Use at most 1000 characters, without control characters.",
        ));
    }
    Ok(s.to_string())
}

fn parse_limit(raw: &str, field: &str, max: i64) -> Result<i64, AppError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (0..=max).contains(v))
        .ok_or_else(|| AppError::field(field, format!("Enter a whole number from 0 to {max}.")))
}

/// A size in GiB (fractions allowed) as MiB, within `min_gib..=max_gib`.
pub(crate) fn parse_gib_as_mib(
    raw: &str,
    field: &str,
    min_gib: f64,
    max_gib: f64,
) -> Result<i64, AppError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= min_gib && *v <= max_gib)
        .map(|v| (v * 1024.0).round() as i64)
        .ok_or_else(|| {
            AppError::field(
                field,
                format!("Enter a number of GiB from {min_gib} to {max_gib}."),
            )
        })
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    id: Uuid,
    tenant_id: Uuid,
    tenant_name: String,
    requester_id: Uuid,
    requester_email: String,
    template_id: Uuid,
    template_name: String,
    size_name: String,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
    count: i32,
    name_prefix: String,
    lease_days: i32,
    purpose: String,
    #[sqlx(try_from = "String")]
    state: RequestState,
    level: Option<i32>,
    reason: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    user_data: String,
    network: Option<String>,
}

impl RequestRow {
    fn summary(&self) -> RequestSummary {
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

    fn amount(&self) -> Amount {
        Amount::vm(self.vcpus, self.memory_mib, self.disk_gib).times(self.count.into())
    }
}

/// The requests waiting for the actor ($3) in the tenants they approve for ($2, or all with
/// $1): pending, not their own, not yet approved by them at the current level. Whether they
/// are listed at that level is the policy's to say.
const AWAITING: &str = "r.state = 'pending_approval' AND ($1 OR r.tenant_id = ANY($2))
    AND r.requester_id <> $3
    AND NOT EXISTS (SELECT 1 FROM request_approvals a
                    WHERE a.request_id = r.id AND a.level = r.level AND a.approver_id = $3)";

const REQUEST_SELECT: &str = "
    SELECT r.id, r.tenant_id, t.name AS tenant_name, r.requester_id, u.email AS requester_email,
           r.template_id, tp.name AS template_name, r.size_name, r.vcpus, r.memory_mib, r.disk_gib,
           r.count, r.name_prefix, r.lease_days, r.purpose, r.state, r.level, r.reason, r.created_at, r.updated_at,
           r.user_data, r.network
    FROM requests r JOIN tenants t ON t.id = r.tenant_id JOIN users u ON u.id = r.requester_id
    JOIN templates tp ON tp.id = r.template_id";

#[derive(sqlx::FromRow)]
struct VmRow {
    uuid: Uuid,
    name: String,
    tenant_name: String,
    owner_email: Option<String>,
    template_name: Option<String>,
    host_id: Option<Uuid>,
    host_name: Option<String>,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
    phase: String,
    state: Option<String>,
    error: Option<String>,
    lease_ends_at: OffsetDateTime,
    request_id: Option<Uuid>,
    max_lease_days: Option<i32>,
    login_user: Option<String>,
    ssh_port: Option<i32>,
    ssh_ready_at: Option<OffsetDateTime>,
    guest_addresses: Vec<String>,
    network: Option<String>,
}

/// What the state filter accepts: hypervisor states and provisioning phases.
const VM_STATES: [&str; 12] = [
    "running",
    "shutoff",
    "paused",
    "crashed",
    "pmsuspended",
    "pending",
    "placing",
    "cloning",
    "defining",
    "starting",
    "failed",
    "deleting",
];

const VM_SELECT: &str = "
    SELECT v.uuid, v.name, t.name AS tenant_name, u.email AS owner_email, tp.name AS template_name,
           v.host_id, h.name AS host_name, v.vcpus, v.memory_mib, v.disk_gib, v.phase, d.state, v.error,
           v.lease_ends_at, v.request_id, tp.max_lease_days, tp.login_user, v.ssh_port, v.ssh_ready_at,
           v.guest_addresses, v.network
    FROM vms v JOIN tenants t ON t.id = v.tenant_id LEFT JOIN users u ON u.id = v.owner_id
    LEFT JOIN templates tp ON tp.id = v.template_id LEFT JOIN hosts h ON h.id = v.host_id
    LEFT JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid AND d.missing_since IS NULL";

fn managed_vm(r: VmRow, now: OffsetDateTime, ssh_host: &str) -> ManagedVm {
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

/// Appends a line to a request's log.
pub async fn log(
    tx: &mut Tx,
    request: Uuid,
    tenant: Uuid,
    actor: Option<Uuid>,
    kind: &str,
    message: &str,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
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
    Ok(())
}

async fn set_state(
    tx: &mut Tx,
    id: Uuid,
    state: RequestState,
    reason: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
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
    /// One VM's CPU sparkline, cached for a minute (list pages show the same ones to everyone
    /// who may see them; the caller has authorized the viewer).
    async fn sparkline(
        &self,
        uuid: Uuid,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<String, AppError> {
        if let Some(svg) = self.sparklines.get(&uuid).await {
            return Ok(svg);
        }
        let lines =
            crate::metering::metrics::cpu_sparklines(&self.pool, Scope::fleet(), vec![uuid], now)
                .await
                .map_err(db::internal)?;
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

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The tenant a request belongs to (looked up before the scoped transaction, which needs
    /// it); callers authorise against it right after.
    async fn request_tenant(&self, id: Uuid) -> Result<Option<(Uuid, Uuid)>, AppError> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as("SELECT tenant_id, requester_id FROM requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)
    }

    async fn vm_tenant(&self, uuid: Uuid) -> Result<Option<(Uuid, Option<Uuid>)>, AppError> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as("SELECT tenant_id, owner_id FROM vms WHERE uuid = $1 AND deleted_at IS NULL")
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)
    }

    fn scope(actor: &Actor, tenant: Uuid) -> Scope {
        Scope {
            user: Some(actor.user_id),
            tenant: Some(tenant),
            fleet: false,
        }
    }

    async fn validate(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        form: &RequestForm,
        full: bool,
    ) -> Result<Valid, AppError> {
        let tenant = form
            .tenant_id
            .ok_or_else(|| AppError::field("tenant_id", "Choose a tenant."))?;
        if !actor.may_request(tenant) {
            return Err(AppError::field(
                "tenant_id",
                "You cannot request VMs in that tenant.",
            ));
        }
        let template_id = form
            .template_id
            .ok_or_else(|| AppError::field("template_id", "Choose a template."))?;
        let template = catalog::usable_template(tx, tenant, template_id).await?;
        let size = template
            .sizes
            .iter()
            .find(|s| s.name == form.size.trim())
            .cloned()
            .ok_or_else(|| AppError::field("size", "Choose one of the template's sizes."));
        let count = parse_count(&form.count);
        if !full {
            let (size, count) = match (size, count) {
                (Ok(s), Ok(c)) => (s, c),
                (s, c) => return Err(AppError::merge([s.err(), c.err()])),
            };
            return Ok(Valid {
                tenant,
                template,
                size,
                count,
                prefix: String::new(),
                lease_days: 0,
                purpose: String::new(),
                user_data: String::new(),
                network: None,
            });
        }
        let prefix = VmName::parse(&form.name_prefix, "name_prefix").and_then(|p| {
            if p.as_str().len() > 50 {
                Err(AppError::field(
                    "name_prefix",
                    "Use at most 50 characters (VM numbers are appended).",
                ))
            } else {
                Ok(p.as_str().to_string())
            }
        });
        let lease_days = if form.lease_days.trim().is_empty() {
            Ok(template.default_lease_days)
        } else {
            parse_days(&form.lease_days, "lease_days").and_then(|d| {
                if d > template.max_lease_days {
                    Err(AppError::field(
                        "lease_days",
                        format!(
                            "The longest lease for {} is {} days.",
                            template.name, template.max_lease_days
                        ),
                    ))
                } else {
                    Ok(d)
                }
            })
        };
        let purpose = parse_purpose(&form.purpose);
        let user_data = parse_user_data(&template, &form.user_data);
        let network = parse_network(&template, &form.network);
        match (size, count, prefix, lease_days, purpose, user_data, network) {
            (
                Ok(size),
                Ok(count),
                Ok(prefix),
                Ok(lease_days),
                Ok(purpose),
                Ok(user_data),
                Ok(network),
            ) => {
                let names = vm_names(&prefix, count);
                let taken: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM vms WHERE tenant_id = $1 AND deleted_at IS NULL AND name = ANY($2) LIMIT 1",
                )
                .bind(tenant)
                .bind(&names)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db::internal)?;
                if let Some(t) = taken {
                    return Err(AppError::field(
                        "name_prefix",
                        format!(
                            "A VM named {t} already exists in this tenant; choose another prefix."
                        ),
                    ));
                }
                Ok(Valid {
                    tenant,
                    template,
                    size,
                    count,
                    prefix,
                    lease_days,
                    purpose,
                    user_data,
                    network,
                })
            }
            (a, b, c, d, e, f, g) => Err(AppError::merge([
                a.err(),
                b.err(),
                c.err(),
                d.err(),
                e.err(),
                f.err(),
                g.err(),
            ])),
        }
    }

    async fn load_request(
        &self,
        tx: &mut Tx,
        id: Uuid,
        lock: bool,
    ) -> Result<RequestRow, AppError> {
        let sql = if lock {
            format!("{REQUEST_SELECT} WHERE r.id = $1 FOR UPDATE OF r")
        } else {
            format!("{REQUEST_SELECT} WHERE r.id = $1")
        };
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db::internal)?
            .ok_or_else(|| AppError::NotFound("Request".into()))
    }

    /// Creates the request's VMs (UUIDs from the reservation) and their provisioning jobs.
    async fn start_provisioning(
        &self,
        tx: &mut Tx,
        r: &RequestRow,
        reserved: Option<&[Uuid]>,
        now: OffsetDateTime,
    ) -> Result<(), AppError> {
        let uuids: Vec<Uuid> = match reserved {
            Some(u) => u.to_vec(),
            None => sqlx::query_scalar(
            "SELECT vm_uuid FROM quota_ledger WHERE request_id = $1 AND state = 'reserved' ORDER BY id",
        )
        .bind(r.id)
        .fetch_all(&mut **tx)
        .await
        .map_err(db::internal)?,
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
            .await
            .map_err(db::internal)?;
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
            .await
            .map_err(db::internal)?;
            jobs::enqueue(
                tx,
                jobs::JobKind::Provision,
                *uuid,
                // The VM's row says everything the job needs.
                json!({}),
                self.max_attempts,
            )
            .await
            .map_err(db::internal)?;
        }
        set_state(tx, r.id, RequestState::Approved, None, now)
            .await
            .map_err(db::internal)?;
        Ok(())
    }

    async fn vm_rows(
        &self,
        tx: &mut Tx,
        filter: &str,
        key: Uuid,
    ) -> Result<Vec<ManagedVm>, AppError> {
        let now = self.now();
        let rows: Vec<VmRow> =
            sqlx::query_as(&format!("{VM_SELECT} WHERE {filter} ORDER BY v.name"))
                .bind(key)
                .fetch_all(&mut **tx)
                .await
                .map_err(db::internal)?;
        Ok(rows
            .into_iter()
            .map(|r| managed_vm(r, now, &self.ssh_host))
            .collect())
    }

    /// The VM for someone who may act on it: its owner, or an admin of its tenant.
    async fn owned_vm(&self, req: &RequestCtx, uuid: Uuid) -> Result<(Uuid, Tx), AppError> {
        let actor = req.actor()?;
        let (tenant, owner) = self
            .vm_tenant(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound("VM".into()))?;
        if !authz::acts_on_vm(actor, &VmFacts::portal(tenant, owner)) {
            return Err(authz::refuse(Access::Act, "VM"));
        }
        let tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        Ok((tenant, tx))
    }

    fn wake(&self) {
        self.queue.wake.notify_waiters();
    }

    /// Own lists (`all` false) are scoped to the user by row-level security; lists over
    /// several tenants run fleet-scoped, their SQL filter being the authorisation.
    fn list_scope(actor: &Actor, all: bool) -> Scope {
        if all {
            Scope::fleet()
        } else {
            Scope {
                user: Some(actor.user_id),
                ..Scope::default()
            }
        }
    }

    /// A page of VMs inside the caller's transaction, which sets the generic plan (see
    /// `vms`): the owners' condition is the authorisation, whatever the transaction's scope.
    async fn vms_in(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        filter: VmFilter,
    ) -> Result<Page<ManagedVm>, AppError> {
        let page = filter.page.max(1);
        let now = self.now();
        let order = db::order_by(
            &filter.sort,
            &[
                ("name", "v.name, v.uuid"),
                ("lease", "v.lease_ends_at, v.name, v.uuid"),
                ("created", "v.created_at DESC, v.uuid"),
                ("state", "coalesce(d.state, v.phase), v.name, v.uuid"),
            ],
        )?;
        let state = db::state_filter(&filter.state, VM_STATES)?;
        let (search, pattern) = db::search_pattern(&filter.search)?;
        let owners = if !filter.all {
            VmOwners::Own(actor.user_id, member_tenants(actor))
        } else if actor.fleet_admin {
            VmOwners::Everything
        } else {
            let tenants: Vec<Uuid> = actor.administered_tenants().map(|m| m.tenant_id).collect();
            if tenants.is_empty() {
                return Err(AppError::Forbidden);
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
        db::arg(&mut args, search)?;
        db::arg(&mut args, &pattern)?;
        db::arg(&mut args, state)?;
        let (limit, page_args) = db::page_args(&args, PER_PAGE, page)?;
        let rows: Vec<VmRow> = sqlx::query_as_with(
            &format!(
                "{VM_SELECT} WHERE v.uuid IN (SELECT v.uuid {from_where} ORDER BY {order} {limit})
                 ORDER BY {order}"
            ),
            page_args,
        )
        .fetch_all(&mut **tx)
        .await
        .map_err(db::internal)?;
        let key = VmCountKey {
            owners,
            search: search.to_string(),
            state: state.to_string(),
        };
        // Read before counting: an event during the count leaves the entry stale, not wrong.
        let generation = self
            .live_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let total = match self.vm_counts.get(&key).await {
            Some((at, total)) if at == generation => total,
            _ => {
                let total: i64 =
                    sqlx::query_scalar_with(&format!("SELECT count(*) {from_where}"), args)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(db::internal)?;
                self.vm_counts.insert(key, (generation, total)).await;
                total
            }
        };
        let items: Vec<ManagedVm> = rows
            .into_iter()
            .map(|r| managed_vm(r, now, &self.ssh_host))
            .collect();
        Ok(Page {
            items,
            page,
            per_page: PER_PAGE,
            total,
        })
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
        quota::effect(&mut tx, v.tenant, actor.user_id, adding).await
    }

    #[tracing::instrument(skip_all)]
    async fn submit(&self, req: &RequestCtx, form: RequestForm) -> Result<Uuid, AppError> {
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
        .await
        .map_err(db::internal)?;
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
        .await
        .map_err(db::internal)?;
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
            .await
            .map_err(db::internal)?;
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
                .await
                .map_err(db::internal)?;
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
            .await
            .map_err(db::internal)?;
        }
        // Last, and committed with the submission: the tenant's quota row is locked only from
        // here to that commit, so concurrent submissions queue for as short a time as possible.
        let reserved =
            quota::reserve(&mut tx, v.tenant, actor.user_id, id, per_vm, &vm_uuids, now).await;
        match reserved {
            Ok(()) => {}
            Err(quota::Reserve::Failed(e)) => return Err(e),
            Err(quota::Reserve::Refused) => {
                tx.rollback().await.map_err(db::internal)?;
                let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
                let total = per_vm.times(vm_uuids.len() as i64);
                return Err(quota::refusal(&mut tx, v.tenant, actor.user_id, total).await);
            }
        }
        // Returns once the submission is on disk (see `quota::reserve`).
        tx.commit().await.map_err(db::internal)?;
        if auto {
            self.wake();
        }
        Ok(id)
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
        let actor = req.actor()?;
        let (tenant, requester) = self
            .request_tenant(id)
            .await?
            .ok_or_else(|| AppError::NotFound("Request".into()))?;
        if !authz::sees_request(actor, tenant, requester) {
            return Err(authz::refuse(Access::See, "Request"));
        }
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        let r = self.load_request(&mut tx, id, false).await?;
        let events: Vec<(OffsetDateTime, Option<String>, String, String)> = sqlx::query_as(
            "SELECT e.at, u.email, e.kind, e.message FROM request_events e LEFT JOIN users u ON u.id = e.actor_id
             WHERE e.request_id = $1 ORDER BY e.id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
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
                .await
                .map_err(db::internal)?;
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
                    .await
                    .map_err(db::internal)?;
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
    }

    async fn cancel(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        let actor = req.actor()?;
        let (tenant, requester) = self
            .request_tenant(id)
            .await?
            .ok_or_else(|| AppError::NotFound("Request".into()))?;
        if requester != actor.user_id {
            return Err(if authz::decides_in(actor, tenant) {
                AppError::Forbidden
            } else {
                AppError::NotFound("Request".into())
            });
        }
        let now = self.now();
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        let r = self.load_request(&mut tx, id, true).await?;
        if !r.state.undecided() {
            return Err(AppError::Conflict(format!(
                "Only pending requests can be cancelled; this one is {}.",
                r.state.label().to_lowercase()
            )));
        }
        set_state(&mut tx, id, RequestState::Cancelled, None, now)
            .await
            .map_err(db::internal)?;
        quota::release(&mut tx, Release::Request(id), "cancelled", now)
            .await
            .map_err(db::internal)?;
        log(
            &mut tx,
            id,
            tenant,
            Some(actor.user_id),
            "cancelled",
            "Cancelled by the requester. Quota released.",
            now,
        )
        .await
        .map_err(db::internal)?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("request.cancel", "request", id).tenant(tenant),
        )
        .await?;
        tx.commit().await.map_err(db::internal)
    }

    #[tracing::instrument(skip_all)]
    async fn decide(
        &self,
        req: &RequestCtx,
        id: Uuid,
        decision: &str,
        reason: &str,
    ) -> Result<(), AppError> {
        let actor = req.actor()?;
        let approve = match decision {
            "approve" => true,
            "reject" => false,
            _ => return Err(AppError::field("decision", "Approve or reject.")),
        };
        let reason = reason.trim();
        if !approve && reason.is_empty() {
            return Err(AppError::field("reason", "Say why you reject the request."));
        }
        if reason.chars().count() > 1000 {
            return Err(AppError::field("reason", "Use at most 1000 characters."));
        }
        let (tenant, requester) = self
            .request_tenant(id)
            .await?
            .ok_or_else(|| AppError::NotFound("Request".into()))?;
        if !authz::decides_in(actor, tenant) {
            return Err(if requester == actor.user_id {
                AppError::Forbidden
            } else {
                AppError::NotFound("Request".into())
            });
        }
        if requester == actor.user_id {
            return Err(AppError::Conflict(
                "You cannot decide your own request; another approver must.".into(),
            ));
        }
        let now = self.now();
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        let r = self.load_request(&mut tx, id, true).await?;
        if r.state != RequestState::PendingApproval {
            return Err(AppError::Conflict(format!(
                "This request is no longer waiting for approval (it is {}).",
                r.state.label().to_lowercase()
            )));
        }
        let policy = Policy::load(&mut tx, tenant).await?;
        let level_no = r.level.unwrap_or(policy.first_level());
        let level = policy
            .level(level_no)
            .cloned()
            .or_else(|| policy.next_level(level_no - 1).cloned())
            .ok_or_else(|| AppError::Conflict("The approval policy changed; reload.".into()))?;
        if !level.eligible(actor, tenant) {
            return Err(AppError::Forbidden);
        }
        let inserted = sqlx::query(
            "INSERT INTO request_approvals (request_id, level, approver_id, decision, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(level.level)
        .bind(actor.user_id)
        .bind(if approve { "approved" } else { "rejected" })
        .bind((!reason.is_empty()).then_some(reason))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db::internal)?
        .rows_affected();
        if inserted == 0 {
            return Err(AppError::Conflict(
                "You have already decided at this level.".into(),
            ));
        }
        let origin = Origin::of(req);
        if !approve {
            set_state(&mut tx, id, RequestState::Rejected, Some(reason), now)
                .await
                .map_err(db::internal)?;
            quota::release(&mut tx, Release::Request(id), "rejected", now)
                .await
                .map_err(db::internal)?;
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
            .await
            .map_err(db::internal)?;
            audit::record(
                &mut tx,
                &origin,
                Event::new("request.reject", "request", id)
                    .tenant(tenant)
                    .after(json!({ "level": level.level, "reason": reason })),
            )
            .await?;
            return tx.commit().await.map_err(db::internal);
        }
        let approved_by: Vec<Uuid> = sqlx::query_scalar(
            "SELECT approver_id FROM request_approvals WHERE request_id = $1 AND level = $2 AND decision = 'approved'",
        )
        .bind(id)
        .bind(level.level)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
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
        .await
        .map_err(db::internal)?;
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
                        .await
                        .map_err(db::internal)?;
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
                    .await
                    .map_err(db::internal)?;
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
                    .await
                    .map_err(db::internal)?;
                    self.start_provisioning(&mut tx, &r, None, now).await?;
                    provisioning = true;
                }
            }
        }
        tx.commit().await.map_err(db::internal)?;
        if provisioning {
            self.wake();
        }
        Ok(())
    }

    async fn inbox(&self, req: &RequestCtx) -> Result<Vec<InboxItem>, AppError> {
        let actor = req.actor()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let mut out = Vec::new();
        for (r, level) in awaiting(&mut tx, actor).await? {
            // The request's own reservation is already in the counters: show it as the addition.
            let mut effect =
                quota::effect(&mut tx, r.tenant_id, r.requester_id, Amount::default()).await?;
            let amount = r.amount();
            for lines in [&mut effect.tenant, &mut effect.user] {
                for l in lines.iter_mut() {
                    let add = match l.resource.as_str() {
                        "vcpus" => amount.vcpus,
                        "memory" => amount.memory_mib,
                        "disk" => amount.disk_gib,
                        _ => amount.vms,
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
            .await
            .map_err(db::internal)?;
            let candidates = placement::candidates(&mut tx, r.template_id, r.network.as_deref())
                .await
                .map_err(db::internal)?;
            let need = placement::Need {
                vcpus: r.vcpus,
                memory_mib: r.memory_mib,
                disk_gib: r.disk_gib,
            };
            // A preview: the choice may differ once approved (other VMs may land first).
            let (placement, fits) =
                match placement::choose(&candidates, &need, self.vcpu_overcommit) {
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
        let actor = req.actor()?;
        let decides = deciding(actor)?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let waiting = waiting_in(&mut tx, actor, decides).await?;
        db::done(tx);
        Ok(waiting)
    }

    async fn quotas(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<TenantQuotas, AppError> {
        let actor = req.actor()?;
        if !authz::administers(actor, tenant_id) {
            return Err(authz::refuse_tenant(actor, tenant_id));
        }
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant_id)).await?;
        let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)?
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

    async fn set_quota(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_email: &str,
        limits: LimitsForm,
    ) -> Result<(), AppError> {
        let actor = req.actor()?;
        let for_user = !user_email.trim().is_empty();
        let allowed = if for_user {
            authz::administers(actor, tenant_id)
        } else {
            actor.fleet_admin
        };
        if !allowed {
            return Err(authz::refuse_tenant(actor, tenant_id));
        }
        let parsed = (
            parse_limit(&limits.vcpus, "vcpus", 100_000),
            parse_gib_as_mib(&limits.memory_gib, "memory_gib", 0.0, 1_000_000.0),
            parse_limit(&limits.disk_gib, "disk_gib", 10_000_000),
            parse_limit(&limits.vms, "vms", 100_000),
        );
        let (vcpus, memory, disk, vms) = match parsed {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (a, b, c, d) => return Err(AppError::merge([a.err(), b.err(), c.err(), d.err()])),
        };
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant_id)).await?;
        let origin = Origin::of(req);
        let after = json!({ "vcpus": vcpus, "memory_mib": memory, "disk_gib": disk, "vms": vms });
        if for_user {
            let email = crate::accounts::email::Email::parse(user_email, "user_email")?;
            let user: Option<Uuid> = sqlx::query_scalar(
                "SELECT u.id FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1 WHERE lower(u.email) = $2",
            )
            .bind(tenant_id)
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)?;
            let user = user.ok_or_else(|| {
                AppError::field("user_email", "That person is not a member of this tenant.")
            })?;
            let tenant_limits: Option<(i32, i64, i64, i32)> = sqlx::query_as(
                "SELECT max_vcpus, max_memory_mib, max_disk_gib, max_vms FROM tenant_quotas WHERE tenant_id = $1",
            )
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)?;
            if let Some((tv, tm, td, tn)) = tenant_limits {
                let over = [
                    (vcpus > i64::from(tv), "vcpus"),
                    (memory > tm, "memory_gib"),
                    (disk > td, "disk_gib"),
                    (vms > i64::from(tn), "vms"),
                ];
                let errors = over.iter().filter(|(o, _)| *o).map(|(_, f)| {
                    Some(AppError::field(
                        f,
                        "A member's quota must fit inside the tenant's.",
                    ))
                });
                let merged = AppError::merge(errors);
                if merged != AppError::Invalid(Vec::new()) {
                    return Err(merged);
                }
            }
            sqlx::query(
                "INSERT INTO user_quotas (tenant_id, user_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET max_vcpus = excluded.max_vcpus,
                     max_memory_mib = excluded.max_memory_mib, max_disk_gib = excluded.max_disk_gib, max_vms = excluded.max_vms",
            )
            .bind(tenant_id)
            .bind(user)
            .bind(vcpus as i32)
            .bind(memory)
            .bind(disk)
            .bind(vms as i32)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
            audit::record(
                &mut tx,
                &origin,
                Event::new("quota.user.set", "user", user)
                    .tenant(tenant_id)
                    .after(after),
            )
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO tenant_quotas (tenant_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id) DO UPDATE SET max_vcpus = excluded.max_vcpus,
                     max_memory_mib = excluded.max_memory_mib, max_disk_gib = excluded.max_disk_gib, max_vms = excluded.max_vms",
            )
            .bind(tenant_id)
            .bind(vcpus as i32)
            .bind(memory)
            .bind(disk)
            .bind(vms as i32)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => AppError::NotFound("Tenant".into()),
                _ => db::internal(e),
            })?;
            audit::record(
                &mut tx,
                &origin,
                Event::new("quota.tenant.set", "tenant", tenant_id)
                    .tenant(tenant_id)
                    .after(after),
            )
            .await?;
        }
        tx.commit().await.map_err(db::internal)
    }

    async fn set_policy(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        form: PolicyForm,
    ) -> Result<(), AppError> {
        let actor = req.actor()?;
        if !authz::administers(actor, tenant_id) {
            return Err(authz::refuse_tenant(actor, tenant_id));
        }
        let parsed = (
            parse_limit(&form.auto_max_vcpus, "auto_max_vcpus", 128),
            parse_gib_as_mib(
                &form.auto_max_memory_gib,
                "auto_max_memory_gib",
                0.0,
                1024.0,
            ),
            parse_limit(&form.auto_max_count, "auto_max_count", i64::from(MAX_COUNT)),
            parse_limit(&form.auto_max_lease_days, "auto_max_lease_days", 3650),
            parse_limit(&form.expire_days, "expire_days", 365).and_then(|d| {
                if d == 0 {
                    Err(AppError::field(
                        "expire_days",
                        "Enter a whole number from 1 to 365.",
                    ))
                } else {
                    Ok(d)
                }
            }),
            if form.level.is_empty() {
                approval::parse_levels(&form.levels)
            } else {
                approval::level_rows(&form.level)
            },
        );
        let (v, m, c, l, e, levels) = match parsed {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f)) => (a, b, c, d, e, f),
            (a, b, c, d, e, f) => {
                return Err(AppError::merge([
                    a.err(),
                    b.err(),
                    c.err(),
                    d.err(),
                    e.err(),
                    f.err(),
                ]))
            }
        };
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant_id)).await?;
        let mut resolved = Vec::new();
        for (all, emails) in &levels {
            let ids: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT u.id, lower(u.email) FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1
                 WHERE lower(u.email) = ANY($2) AND m.role IN ('approver', 'tenant_admin')",
            )
            .bind(tenant_id)
            .bind(emails)
            .fetch_all(&mut *tx)
            .await
            .map_err(db::internal)?;
            if let Some(missing) = emails.iter().find(|e| !ids.iter().any(|(_, x)| x == *e)) {
                return Err(AppError::field(
                    "levels",
                    format!("{missing} is not an approver or tenant admin of this tenant."),
                ));
            }
            resolved.push((*all, ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>()));
        }
        // Templates that may be auto-approved, by name among those offered to the tenant.
        let names: Vec<String> = form
            .auto_templates
            .split(',')
            .map(|n| n.trim().to_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        let found: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, lower(name) FROM templates WHERE lower(name) = ANY($1) AND (all_tenants OR $2 = ANY(tenant_ids))",
        )
        .bind(&names)
        .bind(tenant_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        if let Some(missing) = names.iter().find(|n| !found.iter().any(|(_, f)| f == *n)) {
            return Err(AppError::field(
                "auto_templates",
                format!("No template named \u{201c}{missing}\u{201d} is offered to this tenant."),
            ));
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
        .bind(v as i32)
        .bind(m)
        .bind(c as i32)
        .bind(l as i32)
        .bind(e as i32)
        .bind(&auto_templates)
        .execute(&mut *tx)
        .await
        .map_err(db::internal)?;
        sqlx::query("DELETE FROM approval_levels WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
        for (i, (all, ids)) in resolved.iter().enumerate() {
            sqlx::query("INSERT INTO approval_levels (tenant_id, level, mode, approvers) VALUES ($1, $2, $3, $4)")
                .bind(tenant_id)
                .bind(i as i32 + 1)
                .bind(if *all { "all" } else { "any" })
                .bind(ids)
                .execute(&mut *tx)
                .await
                .map_err(db::internal)?;
        }
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("policy.set", "tenant", tenant_id)
                .tenant(tenant_id)
                .after(json!({
                    "auto_max_vcpus": v, "auto_max_memory_mib": m, "auto_max_count": c,
                    "auto_max_lease_days": l, "expire_days": e, "levels": form.levels,
                "auto_templates": auto_templates,
                })),
        )
        .await?;
        tx.commit().await.map_err(db::internal)
    }

    async fn recount(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<Recount, AppError> {
        let actor = req.actor()?;
        if !authz::administers(actor, tenant_id) {
            return Err(AppError::NotFound("Tenant".into()));
        }
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant_id)).await?;
        quota::recount(&mut tx, tenant_id).await
    }

    async fn my_quota(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<QuotaEffect, AppError> {
        let actor = req.actor()?;
        if !authz::member_of(actor, tenant_id) {
            return Err(AppError::NotFound("Tenant".into()));
        }
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant_id)).await?;
        quota::effect(&mut tx, tenant_id, actor.user_id, Amount::default()).await
    }

    async fn vms(&self, req: &RequestCtx, filter: VmFilter) -> Result<Page<ManagedVm>, AppError> {
        let actor = req.actor()?;
        // A custom plan of this six-table query would be re-made on every page (2–4 ms).
        let mut tx = db::begin_generic(&self.pool, Self::list_scope(actor, filter.all)).await?;
        let page = self.vms_in(&mut tx, actor, filter).await?;
        db::done(tx);
        Ok(page)
    }

    async fn cpu_sparkline(&self, req: &RequestCtx, uuid: Uuid) -> Result<String, AppError> {
        let vm = self
            .managed_vm(req, uuid)
            .await?
            .ok_or_else(|| AppError::NotFound("VM".into()))?;
        self.sparkline(uuid, &vm.name, self.now()).await
    }

    async fn managed_vm(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
    ) -> Result<Option<ManagedVm>, AppError> {
        let actor = req.actor()?;
        let Some((tenant, owner)) = self.vm_tenant(uuid).await? else {
            return Ok(None);
        };
        if !authz::acts_on_vm(actor, &VmFacts::portal(tenant, owner)) {
            return Ok(None);
        }
        let mut tx = db::begin(&self.pool, Self::scope(actor, tenant)).await?;
        Ok(self
            .vm_rows(&mut tx, "v.uuid = $1", uuid)
            .await?
            .into_iter()
            .next())
    }

    async fn extend_lease(&self, req: &RequestCtx, uuid: Uuid, days: &str) -> Result<(), AppError> {
        let actor = req.actor()?;
        let days = parse_days(days, "days")?;
        let started = std::time::Instant::now();
        let (tenant, mut tx) = self.owned_vm(req, uuid).await?;
        let now = self.now();
        let row: (OffsetDateTime, Option<i32>, String, Option<OffsetDateTime>) = sqlx::query_as(
            "SELECT v.lease_ends_at, t.max_lease_days, v.name, v.stopped_for_lease_at FROM vms v
             LEFT JOIN templates t ON t.id = v.template_id WHERE v.uuid = $1 FOR UPDATE OF v",
        )
        .bind(uuid)
        .fetch_one(&mut *tx)
        .await
        .map_err(db::internal)?;
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
            ));
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
        .await
        .map_err(db::internal)?;
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
        tx.commit().await.map_err(db::internal)
    }

    async fn resize(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        vcpus: &str,
        memory_gib: &str,
    ) -> Result<(), AppError> {
        crate::provisioning::day2::resize(self, req, uuid, vcpus, memory_gib).await
    }

    async fn snapshots(&self, req: &RequestCtx, uuid: Uuid) -> Result<Vec<Snapshot>, AppError> {
        let (_, mut tx) = self.owned_vm(req, uuid).await?;
        let rows: Vec<(String, String, OffsetDateTime, Option<String>)> = sqlx::query_as(
            "SELECT s.name, s.description, s.created_at, u.email FROM vm_snapshots s
             LEFT JOIN users u ON u.id = s.created_by WHERE s.vm_uuid = $1 ORDER BY s.created_at DESC",
        )
        .bind(uuid)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        Ok(rows
            .into_iter()
            .map(|(name, description, created_at, created_by)| Snapshot {
                name,
                description,
                created_at,
                created_by,
            })
            .collect())
    }

    async fn snapshot_action(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        op: &str,
        name: &str,
        description: &str,
    ) -> Result<(), AppError> {
        crate::provisioning::day2::snapshot(self, req, uuid, op, name, description).await
    }
}

impl ProvisioningBackend {
    /// For day-2 operations: the VM's tenant and a transaction scoped to it, once the actor
    /// is known to be its owner or an admin of its tenant.
    pub async fn authorize_vm(&self, req: &RequestCtx, uuid: Uuid) -> Result<(Uuid, Tx), AppError> {
        self.owned_vm(req, uuid).await
    }

    pub fn clock_now(&self) -> OffsetDateTime {
        self.now()
    }
}

/// The actor's own requests, or (`all`) those of every tenant they decide for, inside the
/// caller's transaction: the filter is the authorisation, whatever the transaction's scope.
async fn requests_in(
    tx: &mut db::Tx,
    actor: &Actor,
    filter: RequestFilter,
) -> Result<Page<RequestSummary>, AppError> {
    let page = filter.page.max(1);
    let order = db::order_by(
        &filter.sort,
        &[
            ("newest", "r.created_at DESC, r.id"),
            ("oldest", "r.created_at, r.id"),
            ("state", "r.state, r.created_at DESC, r.id"),
            ("template", "tp.name, r.created_at DESC, r.id"),
        ],
    )?;
    let state = db::state_filter(
        &filter.state,
        std::iter::once("open").chain(RequestState::ALL.map(RequestState::as_str)),
    )?;
    let (search, pattern) = db::search_pattern(&filter.search)?;
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
               AND ($6 = '' OR r.state = $6 OR ($6 = 'open'
                    AND r.state IN ('submitted', 'pending_approval', 'approved', 'provisioning')))";
    let mut args = sqlx::postgres::PgArguments::default();
    db::arg(&mut args, any_tenant)?;
    db::arg(&mut args, &tenants)?;
    db::arg(&mut args, requester)?;
    db::arg(&mut args, search)?;
    db::arg(&mut args, &pattern)?;
    db::arg(&mut args, state)?;
    let (limit, page_args) = db::page_args(&args, PER_PAGE, page)?;
    let rows: Vec<RequestRow> = sqlx::query_as_with(
        &format!(
            "{REQUEST_SELECT} WHERE r.id IN (SELECT r.id {from_where} ORDER BY {order} {limit})
                 ORDER BY {order}"
        ),
        page_args,
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db::internal)?;
    let total: i64 = sqlx::query_scalar_with(&format!("SELECT count(*) {from_where}"), args)
        .fetch_one(&mut **tx)
        .await
        .map_err(db::internal)?;
    Ok(Page {
        items: rows.iter().map(RequestRow::summary).collect(),
        page,
        per_page: PER_PAGE,
        total,
    })
}

/// How many requests wait for this actor's decision (`deciding`'s answer for them), inside the
/// caller's transaction (which must see every tenant: the filter is the authorisation).
async fn waiting_in(
    tx: &mut db::Tx,
    actor: &Actor,
    (any_tenant, tenants): (bool, Vec<Uuid>),
) -> Result<u32, AppError> {
    let rows: Vec<(Uuid, Option<i32>)> = sqlx::query_as(&format!(
        "SELECT r.tenant_id, r.level FROM requests r WHERE {AWAITING}"
    ))
    .bind(any_tenant)
    .bind(&tenants)
    .bind(actor.user_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db::internal)?;
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
async fn awaiting(tx: &mut db::Tx, actor: &Actor) -> Result<Vec<(RequestRow, i32)>, AppError> {
    let (any_tenant, tenants) = deciding(actor)?;
    let rows: Vec<RequestRow> = sqlx::query_as(&format!(
        "{REQUEST_SELECT} WHERE {AWAITING} ORDER BY r.created_at LIMIT 200"
    ))
    .bind(any_tenant)
    .bind(&tenants)
    .bind(actor.user_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db::internal)?;
    let mut policies = Policies::default();
    let mut out = Vec::new();
    for r in rows {
        if let Some(level) = policies.decides(tx, actor, r.tenant_id, r.level).await? {
            out.push((r, level));
        }
    }
    Ok(out)
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
