//! Cold migration, the rebalancing advice carried out: a portal VM moves to another host while
//! it is shut off. A fleet admin asks; the `migrate` job waits (without using attempts) until
//! the domain is off, so a running VM moves when its owner next shuts it down (they are told),
//! and one that is off moves at once. Then its disk streams from the source pool to the pool
//! holding the template's image on the target, its qcow2 header rebased there onto that copy
//! of the base image (the same bytes: copies are checked against the image's SHA-256, so an
//! unsafe rebase is exact), its cloud-init seed beside it; the domain is defined on the target
//! from its own inactive XML with the paths (and the SSH forward port) rewritten, undefined on
//! the source, and the source volumes are removed. The VM stays off: its owner starts it.
use super::day2::log_operation;
use super::placement::{self, Need};
use super::provisioner::{volume_name, Provisioner};
use crate::catalog::image_copy::{self, Patch};
use crate::hypervisor::inventory;
use crate::notifications::{self, Notice};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::jobs::{self, Job, JobKind, Outcome, Queue};
use app::error::AppError;
use app::notifications::NotificationKind;
use app::seam::RequestCtx;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How often a move waiting for its VM to be shut off looks again.
const WAIT_FOR_STOP: Duration = Duration::from_secs(30);

/// Rewrites a qcow2 image's header (its first bytes, at least the first cluster) to name
/// `backing` as its backing file, in place: the string lives in the header cluster after the
/// header, so a new name fits when it ends inside that cluster (and is at most 1023 bytes, the
/// format's limit). An image without a backing file is left as it is.
pub fn rebase_qcow2(head: &mut [u8], backing: &str) -> Result<(), String> {
    let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    if head.len() < 72 || &head[..4] != b"QFI\xfb" {
        return Err("the disk is not a qcow2 image".into());
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
    let old_len = be32(16) as usize;
    let cluster = 1usize << be32(20).min(21);
    if offset == 0 {
        return Ok(());
    }
    let new = backing.as_bytes();
    if new.len() > 1023 || offset + new.len() > cluster || offset + old_len > head.len() {
        return Err(format!(
            "the new backing path ({} bytes) does not fit the disk's header",
            new.len()
        ));
    }
    head[offset..offset + old_len].fill(0);
    head[offset..offset + new.len()].copy_from_slice(new);
    head[16..20].copy_from_slice(&(new.len() as u32).to_be_bytes());
    Ok(())
}

/// A fleet admin asks for `uuid` (on `host_id`) to move to `target`: checked now (a portal
/// VM, no snapshots, another connected host holding its template's image with room for it),
/// carried out by the `migrate` job when the VM is off.
/// A move asked for: the VM, where it is, and where it goes.
pub struct Move {
    pub host_id: Uuid,
    pub vm: Uuid,
    pub target: Uuid,
}

pub async fn request(
    pool: &PgPool,
    queue: &Queue,
    overcommit: f64,
    req: &RequestCtx,
    m: Move,
    now: time::OffsetDateTime,
) -> Result<()> {
    let Move {
        host_id,
        vm: uuid,
        target,
    } = m;
    req.fleet_admin()?;
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    #[derive(sqlx::FromRow)]
    struct Vm {
        name: String,
        tenant_id: Uuid,
        owner_id: Option<Uuid>,
        template_id: Option<Uuid>,
        network: Option<String>,
        vcpus: i32,
        memory_mib: i64,
        disk_gib: i64,
        snapshots: i64,
        off: bool,
    }
    let vm: Vm = sqlx::query_as(
        "SELECT v.name, v.tenant_id, v.owner_id, v.template_id, v.network, v.vcpus, v.memory_mib, v.disk_gib,
                (SELECT count(*) FROM vm_snapshots s WHERE s.vm_uuid = v.uuid) AS snapshots,
                coalesce(d.state = 'shutoff', false) AS off
         FROM vms v LEFT JOIN domains d ON d.host_id = v.host_id AND d.uuid = v.uuid
         WHERE v.uuid = $1 AND v.host_id = $2 AND v.deleted_at IS NULL AND v.phase = 'running'
         FOR UPDATE OF v",
    )
    .bind(uuid)
    .bind(host_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::NotFound("VM".into()))?;
    if target == host_id {
        return Err(
            AppError::field("target_host", "Choose another host than the VM's own.").into(),
        );
    }
    if vm.snapshots > 0 {
        return Err(AppError::Conflict(format!(
            "{} has snapshots, which do not move with it: delete them first.",
            vm.name
        ))
        .into());
    }
    let template = vm
        .template_id
        .ok_or_else(|| AppError::Conflict("The VM's template was deleted.".into()))?;
    let fits: Vec<placement::Candidate> =
        placement::candidates(&mut tx, template, vm.network.as_deref())
            .await?
            .into_iter()
            .filter(|c| c.host_id == target)
            .collect();
    if fits.is_empty() {
        return Err(AppError::field(
            "target_host",
            "That host does not hold the VM's template image (or its network).",
        )
        .into());
    }
    let need = Need {
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_gib: vm.disk_gib,
    };
    placement::choose(&fits, &need, overcommit)
        .map_err(|why| AppError::field("target_host", why))?;
    let moving: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = $1 AND key = $2 AND state IN ('queued', 'running'))",
    )
    .bind(JobKind::Migrate.as_str())
    .bind(uuid)
    .fetch_one(&mut *tx)
    .await?;
    if moving {
        return Err(AppError::Conflict(format!("{} is being moved already.", vm.name)).into());
    }
    jobs::enqueue(
        &mut tx,
        JobKind::Migrate,
        uuid,
        json!({ "target": target }),
        5,
    )
    .await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("vm.migrate.request", "vm", uuid)
            .tenant(vm.tenant_id)
            .after(json!({ "name": vm.name, "from": host_id, "to": target, "off": vm.off })),
    )
    .await?;
    if !vm.off {
        let title = format!("{} will move to another host when it is off", vm.name);
        let body = format!(
            "To even out the hosts, {} moves to another host the next time it is shut down. \
             Shut it down when it suits you; it is moved while off, then start it again.",
            vm.name
        );
        let link = format!("/vms/{host_id}/{uuid}");
        notifications::send_if(
            &mut tx,
            vm.owner_id,
            move_notice(vm.tenant_id, title, body, link),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    queue.wake.notify_waiters();
    Ok(())
}

/// A notice to a moved VM's owner.
fn move_notice(
    tenant: Uuid,
    title: String,
    body: String,
    link: String,
) -> impl FnOnce(Uuid) -> Notice {
    move |user| Notice {
        user,
        tenant: Some(tenant),
        kind: NotificationKind::Reclamation,
        title,
        body,
        link,
    }
}

/// The VM as the job finds it.
#[derive(sqlx::FromRow)]
struct Moving {
    name: String,
    tenant_id: Uuid,
    owner_id: Option<Uuid>,
    host_id: Uuid,
    pool: String,
    template_id: Option<Uuid>,
    ssh_port: Option<i32>,
}

/// A volume's path in a pool, by name.
fn path_of(
    conn: &virt::connect::Connect,
    pool: &str,
    name: &str,
) -> std::result::Result<String, virt::error::Error> {
    conn.lookup_storage_pool_by_name(pool)?
        .lookup_storage_vol_by_name(name)?
        .path()
}

impl Provisioner {
    /// The `migrate` job (key: the VM; payload: the target host). Idempotent: a VM already on
    /// the target is done; volumes an interrupted try left on the target are written afresh.
    pub(super) async fn migrate(&self, job: &Job) -> std::result::Result<(), Outcome> {
        let uuid = job.key;
        let target = job
            .payload
            .get("target")
            .and_then(|t| t.as_str())
            .and_then(|t| Uuid::parse_str(t).ok())
            .ok_or_else(|| Outcome::Fail("the job names no target host".into()))?;
        let started = std::time::Instant::now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let vm: Option<Moving> = sqlx::query_as(
            "SELECT name, tenant_id, owner_id, host_id, pool, template_id, ssh_port FROM vms
             WHERE uuid = $1 AND deleted_at IS NULL AND phase = 'running' AND host_id IS NOT NULL AND pool IS NOT NULL",
        )
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(vm) = vm else {
            // Deleted meanwhile: nothing to move.
            return Ok(());
        };
        if vm.host_id == target {
            return Ok(());
        }
        let source = vm.host_id;
        let template = vm
            .template_id
            .ok_or_else(|| Outcome::Fail("The VM's template was deleted.".into()))?;
        // The template's image on both hosts: the target's pool takes the disk.
        let image = |host: Uuid| {
            sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
                "SELECT pool, volume, kernel, initrd FROM template_images WHERE template_id = $1 AND host_id = $2",
            )
            .bind(template)
            .bind(host)
        };
        let there = image(target)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                Outcome::Fail("The template's image is no longer on the target host.".into())
            })?;
        let here = image(source).fetch_optional(&mut *tx).await?;
        db::done(tx);

        // Off? Otherwise wait for the owner to shut it down (no attempt used).
        let off = self
            .hypervisors
            .call(source, move |conn| {
                Ok(!conn.lookup_domain_by_uuid(uuid)?.is_active()?)
            })
            .await
            .map_err(Outcome::Retry)?;
        if !off {
            return Err(Outcome::Wait(
                format!(
                    "{} is running: it moves once its owner shuts it down.",
                    vm.name
                ),
                WAIT_FOR_STOP,
            ));
        }

        // The volumes: the disk (rebased onto the target's base image) and the seed, if any.
        let disk = volume_name(uuid);
        let seed = crate::catalog::cloud_init::seed_volume(uuid);
        let (src_pool, seed_name) = (vm.pool.clone(), seed.clone());
        let has_seed = self
            .hypervisors
            .call(source, move |conn| {
                Ok(conn
                    .lookup_storage_pool_by_name(&src_pool)?
                    .lookup_storage_vol_by_name(&seed_name)
                    .is_ok())
            })
            .await
            .map_err(Outcome::Retry)?;
        let (dst_pool, base) = (there.0.clone(), there.1.clone());
        let backing = self
            .hypervisors
            .call(target, move |conn| path_of(conn, &dst_pool, &base))
            .await
            .map_err(Outcome::Retry)?;
        let rebase: Patch = Box::new(move |head: &mut Vec<u8>| rebase_qcow2(head, &backing));
        image_copy::transfer(
            &self.hypervisors,
            (source, vm.pool.clone()),
            (target, there.0.clone()),
            disk.clone(),
            None,
            Some(rebase),
        )
        .await
        .map_err(|e| Outcome::Retry(format!("copying the disk: {e}")))?;
        if has_seed {
            image_copy::transfer(
                &self.hypervisors,
                (source, vm.pool.clone()),
                (target, there.0.clone()),
                seed.clone(),
                None,
                None,
            )
            .await
            .map_err(|e| Outcome::Retry(format!("copying the cloud-init seed: {e}")))?;
        }

        // Old path → new path, for every file the domain names.
        let mut names: Vec<(String, String)> = vec![(disk.clone(), disk.clone())];
        if has_seed {
            names.push((seed.clone(), seed.clone()));
        }
        if let Some((_, _, k, i)) = &here {
            for (from, to) in [(k, &there.2), (i, &there.3)] {
                if let (Some(f), Some(t)) = (from, to) {
                    names.push((f.clone(), t.clone()));
                }
            }
        }
        let (src_pool, dst_pool) = (vm.pool.clone(), there.0.clone());
        let olds = names.clone();
        let old_paths = self
            .hypervisors
            .call(source, move |conn| {
                olds.iter()
                    .map(|(n, _)| path_of(conn, &src_pool, n))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await
            .map_err(Outcome::Retry)?;
        let new_paths = self
            .hypervisors
            .call(target, move |conn| {
                names
                    .iter()
                    .map(|(_, n)| path_of(conn, &dst_pool, n))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await
            .map_err(Outcome::Retry)?;

        // Under the placement lock: the target's SSH forward port, the switch, the records.
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('concierge.placement'))")
            .execute(&mut *tx)
            .await?;
        let port = match vm.ssh_port {
            Some(_) => Some(self.free_ssh_port(&mut tx, target).await?),
            None => None,
        };
        let xml = self
            .hypervisors
            .call(source, move |conn| {
                conn.lookup_domain_by_uuid(uuid)?
                    .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE | virt::sys::VIR_DOMAIN_XML_SECURE)
            })
            .await
            .map_err(Outcome::Retry)?;
        let mut moved = xml.clone();
        for (old, new) in old_paths.iter().zip(&new_paths) {
            moved = moved.replace(&format!("'{old}'"), &format!("'{new}'"));
            moved = moved.replace(&format!("\"{old}\""), &format!("\"{new}\""));
        }
        if let (Some(old), Some(new)) = (vm.ssh_port, port) {
            let address = &self.ssh.address;
            moved = moved.replace(
                &format!("hostfwd=tcp:{address}:{old}-:22"),
                &format!("hostfwd=tcp:{address}:{new}-:22"),
            );
        }
        // Undefine first: the two hosts may be one daemon (a UUID is defined once there).
        self.hypervisors
            .call(source, move |conn| {
                let dom = conn.lookup_domain_by_uuid(uuid)?;
                if dom.is_active()? {
                    return Err(virt::error::Error::last_error());
                }
                dom.undefine()
            })
            .await
            .map_err(|e| Outcome::Retry(format!("taking the domain off its host: {e}")))?;
        let defined = self
            .hypervisors
            .call(target, move |conn| {
                let dom = conn.define_domain_xml(&moved)?;
                inventory::domain_facts(&dom, &HashMap::new())
            })
            .await;
        let facts = match defined {
            Ok(f) => f,
            Err(e) => {
                // Back where it was.
                let back = self
                    .hypervisors
                    .call(source, move |conn| conn.define_domain_xml(&xml).map(|_| ()))
                    .await;
                if let Err(b) = back {
                    tracing::error!(vm = %uuid, error = %b, "could not define a VM back on its host");
                }
                return Err(Outcome::Retry(format!(
                    "defining the domain on the target: {e}"
                )));
            }
        };
        sqlx::query(
            "UPDATE vms SET host_id = $2, pool = $3, ssh_port = $4, updated_at = now() WHERE uuid = $1",
        )
        .bind(uuid)
        .bind(target)
        .bind(&there.0)
        .bind(port.map(i32::from))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM domains WHERE host_id = $1 AND uuid = $2")
            .bind(source)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            &Origin::default(),
            Event::new("vm.migrate", "vm", uuid)
                .tenant(vm.tenant_id)
                .before(json!({ "host": source, "pool": vm.pool, "ssh_port": vm.ssh_port }))
                .after(
                    json!({ "name": vm.name, "host": target, "pool": there.0, "ssh_port": port }),
                ),
        )
        .await?;
        tx.commit().await?;
        crate::hypervisor::write_domain(&self.pool, None, target, &facts)
            .await
            .map_err(|e| Outcome::Retry(e.to_string()))?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        log_operation(&mut tx, uuid, vm.tenant_id, None, "migrate", started).await?;
        let title = format!("{} moved to another host", vm.name);
        let body = format!(
            "{} is on its new host, still off: start it when you need it.",
            vm.name
        );
        let link = format!("/vms/{target}/{uuid}");
        let now = self.clock.now();
        notifications::send_if(
            &mut tx,
            vm.owner_id,
            move_notice(vm.tenant_id, title, body, link),
            now,
        )
        .await?;
        tx.commit().await?;
        // The source's copies go last: until here a failure left the VM whole where it was.
        let (src_pool, gone) = (vm.pool.clone(), [disk, seed]);
        let removed = self
            .hypervisors
            .call(source, move |conn| {
                for name in &gone {
                    let _ = crate::hypervisor::storage::delete_volume(conn, &src_pool, name);
                }
                Ok(())
            })
            .await;
        if let Err(e) = removed {
            tracing::warn!(vm = %uuid, error = %e, "removing a moved VM's old volumes");
        }
        Ok(())
    }
}

/// The job gave up: the VM stays whole where it was (each try puts it back); its operation log
/// says why.
pub async fn abandoned(pool: &PgPool, job: &Job, error: &str) {
    let logged: Result<()> = async {
        let mut tx = db::begin(pool, Scope::fleet()).await?;
        sqlx::query(
            "INSERT INTO domain_operations (host_id, domain_uuid, tenant_id, operation, status, error, detail, finished_at)
             SELECT v.host_id, v.uuid, v.tenant_id, 'migrate', 'failed', $2, 'Not moved: it stays on this host.', now()
             FROM vms v WHERE v.uuid = $1 AND v.host_id IS NOT NULL",
        )
        .bind(job.key)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = logged {
        tracing::warn!(vm = %job.key, error = %e, "recording a failed move");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 v3 header with 64 KiB clusters and `backing` at offset 0x1000.
    fn header(backing: &str) -> Vec<u8> {
        let mut h = vec![0u8; 1 << 16];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&0x1000u64.to_be_bytes());
        h[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[0x1000..0x1000 + backing.len()].copy_from_slice(backing.as_bytes());
        h
    }

    #[test]
    fn the_backing_path_is_replaced_in_place() {
        let mut h = header("/var/lib/libvirt/images/a-rather-long-old-base-name.qcow2");
        rebase_qcow2(&mut h, "/srv/b/base.qcow2").unwrap();
        assert_eq!(&h[16..20], &17u32.to_be_bytes());
        assert_eq!(&h[0x1000..0x1000 + 17], b"/srv/b/base.qcow2");
        assert!(h[0x1000 + 17..0x1100].iter().all(|b| *b == 0));
        // Longer names fit too, within the header cluster and the format's limit.
        let long = format!("/{}", "x".repeat(600));
        rebase_qcow2(&mut h, &long).unwrap();
        assert!(rebase_qcow2(&mut h, &format!("/{}", "x".repeat(1100))).is_err());
        assert!(rebase_qcow2(&mut [0u8; 100], "/b").is_err());
    }

    /// With qemu-img (on every machine here): an overlay's header, rewritten, names the new
    /// base, and qemu-img reads it so.
    #[test]
    fn qemu_img_reads_the_rebased_overlay() {
        let dir =
            std::env::temp_dir().join(format!("concierge-rebase-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new("qemu-img")
                .args(args)
                .current_dir(&dir)
                .output()
        };
        let Ok(made) = run(&["create", "-f", "qcow2", "old-base.qcow2", "1M"]) else {
            eprintln!("qemu-img not found: skipped");
            return;
        };
        assert!(made.status.success());
        let old = dir.join("old-base.qcow2");
        let overlay = dir.join("vm.qcow2");
        let ok = run(&[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            old.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ])
        .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        std::fs::copy(&old, dir.join("new-base.qcow2")).unwrap();
        let new = dir.join("new-base.qcow2");
        let mut bytes = std::fs::read(&overlay).unwrap();
        rebase_qcow2(&mut bytes, new.to_str().unwrap()).unwrap();
        std::fs::write(&overlay, &bytes).unwrap();
        let info = run(&["info", "--output=json", overlay.to_str().unwrap()]).unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], new.to_str().unwrap());
        let check = run(&["check", overlay.to_str().unwrap()]).unwrap();
        assert!(check.status.success(), "{check:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
