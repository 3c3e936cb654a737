//! Day-2 operations on portal VMs: resize while shut off (re-checking quota) and snapshots.
use crate::hypervisor::domain_xml::LibvirtXml;
use crate::hypervisor::inventory;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db;
use crate::platform::error::Result;
use crate::provisioning::quota::{self, Amount};
use crate::provisioning::requests::ProvisioningBackend;
use app::error::{AllValid, AppError};
use app::seam::RequestCtx;
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

fn parse_vcpus(raw: &str) -> Result<i32, AppError> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|v| (1..=crate::catalog::MAX_VCPUS).contains(v))
        .ok_or_else(|| AppError::field("vcpus", "Enter a whole number of vCPUs from 1 to 128."))
}

/// A snapshot name: letters, digits, '-', '_' and '.', at most 64, not starting with '.'.
pub fn parse_snapshot_name(raw: &str) -> Result<String, AppError> {
    crate::hypervisor::storage::parse_name(raw, "name")
}

fn xml_text(s: &str) -> String {
    let mut out = String::new();
    let _ = askama::filters::Escaper::write_escaped_str(&LibvirtXml, &mut out, s);
    out
}

/// Adds a finished day-2 change (resize, snapshot, lease) to the VM's operation log, the
/// "Recent operations" of its page, beside the lifecycle actions. In the change's transaction.
pub async fn log_operation(
    tx: &mut db::Tx,
    vm: Uuid,
    tenant: Uuid,
    actor: Option<Uuid>,
    operation: &str,
    started: std::time::Instant,
) -> Result<()> {
    // A VM not placed yet has no domain to log against.
    sqlx::query(
        "INSERT INTO domain_operations (host_id, domain_uuid, tenant_id, actor_id, operation, status, finished_at, duration_ms)
         SELECT v.host_id, v.uuid, $2, $3, $4, 'succeeded', now(), $5 FROM vms v
         WHERE v.uuid = $1 AND v.host_id IS NOT NULL",
    )
    .bind(vm)
    .bind(tenant)
    .bind(actor)
    .bind(operation)
    .bind(i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The size (vCPUs, MiB) of the domain a snapshot holds: `<domainsnapshot><domain>` with its
/// `<vcpu>` and `<memory unit=…>`.
fn snapshot_size(xml: &str) -> Option<(i32, i64)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let domain = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("domain"))?;
    let child = |tag: &str| domain.children().find(|n| n.has_tag_name(tag));
    let vcpus: i32 = child("vcpu")?.text()?.trim().parse().ok()?;
    let memory = child("memory")?;
    let amount: i64 = memory.text()?.trim().parse().ok()?;
    let kib = match memory.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => amount / 1024,
        "KiB" | "k" => amount,
        "MiB" | "M" => amount * 1024,
        "GiB" | "G" => amount * 1024 * 1024,
        _ => return None,
    };
    Some((vcpus, kib / 1024))
}

/// The VM's host, once it has one.
async fn host_of(tx: &mut db::Tx, uuid: Uuid) -> Result<(Uuid, String, i64, i32, i64)> {
    let row: Option<(Option<Uuid>, String, i64, i32, i64)> = sqlx::query_as(
        "SELECT host_id, name, disk_gib, vcpus, memory_mib FROM vms WHERE uuid = $1 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(uuid)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some((Some(host), name, disk, vcpus, memory)) => Ok((host, name, disk, vcpus, memory)),
        Some((None, ..)) => Err(AppError::Conflict("This VM is not on a host yet.".into()).into()),
        None => Err(AppError::NotFound("VM".into()).into()),
    }
}

pub async fn resize(
    backend: &ProvisioningBackend,
    req: &RequestCtx,
    uuid: Uuid,
    vcpus: &str,
    memory_gib: &str,
) -> Result<()> {
    let (vcpus, memory_mib) = (
        parse_vcpus(vcpus),
        super::validate::parse_gib_as_mib(memory_gib, "memory_gib", 0.25, 1024.0),
    )
        .all_valid()?;
    let started = std::time::Instant::now();
    let (tenant, mut tx) = backend.authorize_vm(req, uuid).await?;
    let change = Resize {
        vm: uuid,
        tenant,
        vcpus,
        memory_mib,
        actor: req.actor.as_ref().map(|a| a.user_id),
        started,
    };
    let (host, facts) = resize_in(
        &mut tx,
        &backend.hypervisors,
        &Origin::of(req),
        &change,
        backend.clock_now(),
    )
    .await?;
    tx.commit().await?;
    crate::hypervisor::write_domain(&backend.pool, None, host, &facts).await
}

/// A resize of a shut-off VM, by its owner or by the system (a reclaimed oversized VM).
pub struct Resize {
    pub vm: Uuid,
    pub tenant: Uuid,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub actor: Option<Uuid>,
    pub started: std::time::Instant,
}

/// Resizes in `tx` (quota, the domain's configuration, the VM row, audit, operation log) and
/// returns the host and the domain's new facts to write after the commit. A running domain is
/// a conflict: the size changes only while it is off.
pub async fn resize_in(
    tx: &mut db::Tx,
    hypervisors: &crate::hypervisor::Hypervisors,
    origin: &Origin,
    change: &Resize,
    now: time::OffsetDateTime,
) -> Result<(Uuid, inventory::DomainFacts)> {
    let (uuid, vcpus, memory_mib) = (change.vm, change.vcpus, change.memory_mib);
    let (host, name, disk, old_vcpus, old_memory) = host_of(tx, uuid).await?;
    // Same quota rules as a new request: growth must fit the tenant's and the owner's limits.
    quota::adjust(tx, uuid, Amount::vm(vcpus, memory_mib, disk), now).await?;
    let facts = hypervisors
        .call(host, move |conn| {
            use virt::sys;
            let dom = conn.lookup_domain_by_uuid(uuid)?;
            if dom.is_active()? {
                return Ok(None);
            }
            let kib = memory_mib as u64 * 1024;
            let config = sys::VIR_DOMAIN_AFFECT_CONFIG;
            // Maximum first when growing, current first when shrinking.
            if vcpus >= old_vcpus {
                dom.set_vcpus_flags(
                    vcpus as u32,
                    sys::VIR_DOMAIN_VCPU_CONFIG | sys::VIR_DOMAIN_VCPU_MAXIMUM,
                )?;
                dom.set_vcpus_flags(vcpus as u32, sys::VIR_DOMAIN_VCPU_CONFIG)?;
            } else {
                dom.set_vcpus_flags(vcpus as u32, sys::VIR_DOMAIN_VCPU_CONFIG)?;
                dom.set_vcpus_flags(
                    vcpus as u32,
                    sys::VIR_DOMAIN_VCPU_CONFIG | sys::VIR_DOMAIN_VCPU_MAXIMUM,
                )?;
            }
            if memory_mib >= old_memory {
                dom.set_memory_flags(kib, config | sys::VIR_DOMAIN_MEM_MAXIMUM)?;
                dom.set_memory_flags(kib, config)?;
            } else {
                dom.set_memory_flags(kib, config)?;
                dom.set_memory_flags(kib, config | sys::VIR_DOMAIN_MEM_MAXIMUM)?;
            }
            inventory::domain_facts(&dom, &HashMap::new()).map(Some)
        })
        .await
        .map_err(|e| AppError::Conflict(format!("The hypervisor refused: {e}")))?
        .ok_or_else(|| AppError::Conflict("Shut the VM off before resizing it.".into()))?;
    sqlx::query("UPDATE vms SET vcpus = $2, memory_mib = $3, updated_at = $4 WHERE uuid = $1")
        .bind(uuid)
        .bind(vcpus)
        .bind(memory_mib)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    audit::record(
        tx,
        origin,
        Event::new("vm.resize", "vm", uuid)
            .tenant(change.tenant)
            .before(json!({ "vcpus": old_vcpus, "memory_mib": old_memory }))
            .after(json!({ "name": name, "vcpus": vcpus, "memory_mib": memory_mib })),
    )
    .await?;
    log_operation(
        tx,
        uuid,
        change.tenant,
        change.actor,
        "resize",
        change.started,
    )
    .await?;
    Ok((host, facts))
}

pub async fn snapshot(
    backend: &ProvisioningBackend,
    req: &RequestCtx,
    uuid: Uuid,
    op: &str,
    name: &str,
    description: &str,
) -> Result<()> {
    if !matches!(op, "create" | "revert" | "delete") {
        return Err(AppError::field("op", "Create, revert or delete.").into());
    }
    let name = parse_snapshot_name(name)?;
    let description = description.trim().to_string();
    if description.chars().count() > 200 {
        return Err(AppError::field("description", "Use at most 200 characters.").into());
    }
    let actor = req.actor()?.user_id;
    let started = std::time::Instant::now();
    let (tenant, mut tx) = backend.authorize_vm(req, uuid).await?;
    let now = backend.clock_now();
    let (host, vm_name, disk, vcpus, memory_mib) = host_of(&mut tx, uuid).await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM vm_snapshots WHERE vm_uuid = $1 AND name = $2)",
    )
    .bind(uuid)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    match (op, exists) {
        ("create", true) => {
            return Err(
                AppError::field("name", "This VM already has a snapshot of that name.").into(),
            )
        }
        ("revert" | "delete", false) => return Err(AppError::NotFound("Snapshot".into()).into()),
        _ => {}
    }
    // A revert brings back the size the VM had then (a resize since is undone): the ledger
    // and the size history follow, and a size that no longer fits the quota is refused.
    let reverted_size = if op == "revert" {
        let n3 = name.clone();
        let xml = backend
            .hypervisors
            .call(host, move |conn| {
                let dom = conn.lookup_domain_by_uuid(uuid)?;
                virt::domain::Domain::lookup_snapshot_by_name(&dom, &n3, 0)?.xml_desc(0)
            })
            .await
            .map_err(|e| AppError::Conflict(format!("The hypervisor refused: {e}")))?;
        snapshot_size(&xml).filter(|&(v, m)| (v, m) != (vcpus, memory_mib))
    } else {
        None
    };
    if let Some((v, m)) = reverted_size {
        quota::adjust(&mut tx, uuid, Amount::vm(v, m, disk), now).await?;
        sqlx::query("UPDATE vms SET vcpus = $2, memory_mib = $3, updated_at = $4 WHERE uuid = $1")
            .bind(uuid)
            .bind(v)
            .bind(m)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let (op_owned, n2) = (op.to_string(), name.clone());
    let xml = format!(
        "<domainsnapshot><name>{}</name><description>{}</description></domainsnapshot>",
        xml_text(&name),
        xml_text(&description)
    );
    backend
        .hypervisors
        .call(host, move |conn| {
            let dom = conn.lookup_domain_by_uuid(uuid)?;
            match op_owned.as_str() {
                "create" => dom.create_snapshot_xml(&xml, 0).map(|_| ()),
                "revert" => virt::domain::Domain::lookup_snapshot_by_name(&dom, &n2, 0)?.revert(0),
                _ => virt::domain::Domain::lookup_snapshot_by_name(&dom, &n2, 0)?.delete(0),
            }
        })
        .await
        .map_err(|e| AppError::Conflict(format!("The hypervisor refused: {e}")))?;
    match op {
        "create" => sqlx::query(
            "INSERT INTO vm_snapshots (vm_uuid, name, tenant_id, description, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid)
        .bind(&name)
        .bind(tenant)
        .bind(&description)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?,
        "delete" => sqlx::query("DELETE FROM vm_snapshots WHERE vm_uuid = $1 AND name = $2")
            .bind(uuid)
            .bind(&name)
            .execute(&mut *tx)
            .await?,
        _ => Default::default(),
    };
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new(
            match op {
                "create" => "vm.snapshot.create",
                "revert" => "vm.snapshot.revert",
                _ => "vm.snapshot.delete",
            },
            "vm",
            uuid,
        )
        .tenant(tenant)
        .before(json!({ "vcpus": vcpus, "memory_mib": memory_mib }))
        .after(json!({
            "vm": vm_name,
            "snapshot": name,
            "vcpus": reverted_size.map_or(vcpus, |(v, _)| v),
            "memory_mib": reverted_size.map_or(memory_mib, |(_, m)| m),
        })),
    )
    .await?;
    let logged = format!("snapshot {op}: {name}");
    log_operation(&mut tx, uuid, tenant, Some(actor), &logged, started).await?;
    tx.commit().await?;
    if op == "revert" {
        // A revert changes the state; let the host re-read the domain.
        let _ = backend.hypervisors.reconcile(host).await;
    }
    Ok(())
}
