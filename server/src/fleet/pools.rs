//! Storage pools, volumes and virtual networks, for fleet admins.
use super::*;
use crate::hypervisor::{network, storage};
use crate::platform::audit::Event;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use app::error::{AllValid, AppError};
use app::fleet::VolumeInfo;
use app::seam::RequestCtx;
use serde_json::json;
use uuid::Uuid;

/// Records a change made on a host and reads the host again, so its lists show the change
/// at once (a failed read is left to the reconciler's next round).
async fn changed(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    event: Event<'_>,
) -> Result<(), AppError> {
    b.record(req, event).await?;
    let _ = b.hypervisors.reconcile(host_id).await;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn create_pool(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    name: &str,
    path: &str,
) -> Result<(), AppError> {
    req.fleet_admin()?;
    let (name, path) = (
        storage::parse_name(name, "name"),
        storage::parse_dir(path, "path"),
    )
        .all_valid()?;
    b.known_host(host_id).await?;
    let (n, p) = (name.clone(), path.clone());
    b.hypervisors
        .call(host_id, move |conn| {
            storage::create_dir_pool(conn, &n, &p).map(|_| ())
        })
        .await
        .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
    changed(
        b,
        req,
        host_id,
        Event::new("pool.create", "pool", &name).after(json!({ "host": host_id, "path": path })),
    )
    .await
}

pub(super) async fn volumes(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    pool: &str,
) -> Result<Vec<VolumeInfo>, AppError> {
    req.fleet_admin()?;
    let pool = storage::parse_name(pool, "pool")?;
    b.known_host(host_id).await?;
    let p = pool.clone();
    let facts = b
        .hypervisors
        .call(host_id, move |conn| storage::volume_facts(conn, &p))
        .await
        .map_err(|e| AppError::field("pool", format!("libvirt refused: {e}")))?;
    let users = b.volume_users(host_id, &pool, &facts).await?;
    Ok(facts
        .into_iter()
        .map(|f| VolumeInfo {
            used_by: users.get(&f.name).cloned().unwrap_or_default(),
            name: f.name,
            capacity_bytes: f.capacity,
            allocation_bytes: f.allocation,
        })
        .collect())
}

#[tracing::instrument(skip_all)]
// The `Fleet` method's arguments, one by one.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create_volume(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    pool: &str,
    name: &str,
    kind: &str,
    capacity_gib: &str,
    source: &str,
) -> Result<(), AppError> {
    req.fleet_admin()?;
    let pool = storage::parse_name(pool, "pool")?;
    let name = storage::parse_name(name, "name")?;
    let job: HostJob = match kind {
        "blank" => {
            let gib: u64 = capacity_gib
                .trim()
                .parse()
                .ok()
                .filter(|g| (1..=16_384).contains(g))
                .ok_or_else(|| {
                    AppError::field("capacity_gib", "Enter a size from 1 to 16384 GiB.")
                })?;
            let (p, n) = (pool.clone(), name.clone());
            Box::new(move |conn| {
                storage::create_volume(conn, &p, &n, gib << 30, storage::Format::Qcow2).map(|_| ())
            })
        }
        "linked" | "copy" => {
            let src = storage::parse_name(source, "source")?;
            let (p, n, linked) = (pool.clone(), name.clone(), kind == "linked");
            Box::new(move |conn| {
                if linked {
                    storage::linked_clone(conn, &p, &n, &src).map(|_| ())
                } else {
                    storage::full_copy(conn, &p, &n, &src).map(|_| ())
                }
            })
        }
        _ => {
            return Err(AppError::field(
                "kind",
                "Choose blank, linked clone or full copy.",
            ))
        }
    };
    b.known_host(host_id).await?;
    b.hypervisors
        .call(host_id, job)
        .await
        .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
    let event = Event::new("volume.create", "volume", format!("{pool}/{name}")).after(json!({
        "host": host_id, "kind": kind, "source": source, "capacity_gib": capacity_gib
    }));
    changed(b, req, host_id, event).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_volume(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    pool: &str,
    name: &str,
    confirm: &str,
) -> Result<(), AppError> {
    req.fleet_admin()?;
    let pool = storage::parse_name(pool, "pool")?;
    let name = storage::parse_name(name, "name")?;
    if confirm.trim() != name {
        return Err(AppError::field(
            "confirm",
            format!("Type the volume's name, {name}, to confirm."),
        ));
    }
    b.known_host(host_id).await?;
    // Never delete what something depends on: a template's base image (its linked clones
    // would lose their backing file), a VM's disk.
    let p = pool.clone();
    let facts = b
        .hypervisors
        .call(host_id, move |conn| storage::volume_facts(conn, &p))
        .await
        .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
    if !facts.iter().any(|f| f.name == name) {
        return Err(AppError::NotFound("Volume".into()));
    }
    let users = b.volume_users(host_id, &pool, &facts).await?;
    if let Some(used) = users.get(&name).filter(|u| !u.is_empty()) {
        return Err(AppError::Conflict(format!(
            "{name} is in use ({}): it was not deleted.",
            used.join(", ")
        )));
    }
    let (p, n) = (pool.clone(), name.clone());
    b.hypervisors
        .call(host_id, move |conn| storage::delete_volume(conn, &p, &n))
        .await
        .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
    changed(
        b,
        req,
        host_id,
        Event::new("volume.delete", "volume", format!("{pool}/{name}"))
            .after(json!({ "host": host_id })),
    )
    .await
}

#[tracing::instrument(skip_all)]
#[allow(clippy::too_many_arguments)]
pub(super) async fn define_network(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    name: &str,
    mode: &str,
    address: &str,
    prefix: &str,
    bridge: &str,
) -> Result<(), AppError> {
    req.fleet_admin()?;
    let spec = network::NetworkSpec::parse(name, mode, address, prefix, bridge)?;
    b.known_host(host_id).await?;
    let s = spec.clone();
    b.hypervisors
        .call(host_id, move |conn| network::define(conn, &s))
        .await
        .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
    changed(
        b,
        req,
        host_id,
        Event::new("network.define", "network", &spec.name)
            .after(json!({ "host": host_id, "xml": spec.xml() })),
    )
    .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn network_action(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    name: &str,
    op: &str,
) -> Result<(), AppError> {
    req.fleet_admin()?;
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 64 {
        return Err(AppError::field("name", "Name a network."));
    }
    if !matches!(op, "start" | "stop" | "delete") {
        return Err(AppError::field("op", "Choose start, stop or delete."));
    }
    b.known_host(host_id).await?;
    let (n, o) = (name.clone(), op.to_string());
    b.hypervisors
        .call(host_id, move |conn| match o.as_str() {
            "start" => network::set_active(conn, &n, true),
            "stop" => network::set_active(conn, &n, false),
            _ => network::delete(conn, &n),
        })
        .await
        .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
    changed(
        b,
        req,
        host_id,
        Event::new(
            match op {
                "start" => "network.start",
                "stop" => "network.stop",
                _ => "network.delete",
            },
            "network",
            &name,
        )
        .after(json!({ "host": host_id })),
    )
    .await
}

impl FleetBackend {
    /// What depends on each volume of a pool: templates whose base image it is, portal VMs
    /// and other domains whose disk it is, and linked clones backed by it.
    pub(super) async fn volume_users(
        &self,
        host_id: Uuid,
        pool: &str,
        facts: &[storage::VolumeFacts],
    ) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let mut users: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        // Templates' base images first, then portal VMs' disks, each by name.
        let portal: Vec<(String, String)> = sqlx::query_as(
            "SELECT volume, what FROM (
                 SELECT ti.volume, 'base image of template ' || t.name AS what, 0 AS kind, t.name
                 FROM template_images ti JOIN templates t ON t.id = ti.template_id
                 WHERE ti.host_id = $1 AND ti.pool = $2
                 UNION ALL
                 SELECT volume, 'disk of VM ' || name, 1, name FROM vms
                 WHERE host_id = $1 AND pool = $2 AND volume IS NOT NULL AND deleted_at IS NULL
             ) u ORDER BY kind, name",
        )
        .bind(host_id)
        .bind(pool)
        .fetch_all(&mut *tx)
        .await?;
        for (volume, what) in portal {
            users.entry(volume).or_default().push(what);
        }
        // Other domains (unmanaged, or not from the portal) by their disks' files.
        let domains: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT d.name, d.disks FROM domains d
             WHERE d.host_id = $1 AND d.missing_since IS NULL
               AND NOT EXISTS (SELECT 1 FROM vms v WHERE v.uuid = d.uuid AND v.deleted_at IS NULL)",
        )
        .bind(host_id)
        .fetch_all(&mut *tx)
        .await?;
        db::done(tx);
        for (domain, disks) in domains {
            for disk in crate::hypervisor::inventory::parse_disks(&disks) {
                if let Some(f) = facts
                    .iter()
                    .find(|f| disk.source.as_deref() == Some(f.path.as_str()))
                {
                    users
                        .entry(f.name.clone())
                        .or_default()
                        .push(format!("disk of domain {domain}"));
                }
            }
        }
        for f in facts {
            if let Some(base) = facts
                .iter()
                .find(|b| f.backing.as_deref() == Some(b.path.as_str()))
            {
                users
                    .entry(base.name.clone())
                    .or_default()
                    .push(format!("backing file of {}", f.name));
            }
        }
        Ok(users)
    }
}

/// Work for one host's connection, chosen at run time.
type HostJob = Box<dyn FnOnce(&virt::connect::Connect) -> Result<(), virt::error::Error> + Send>;
