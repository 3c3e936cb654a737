//! The provisioning and deletion jobs. Every step is keyed by the VM's UUID and checks what
//! the hypervisor already has before acting: the volume is `cc-<uuid>.qcow2` and is looked up
//! before it is cloned, the domain is looked up by UUID before it is defined, and a running
//! domain is not started again. A process killed anywhere and restarted therefore finishes
//! with exactly one disk and one domain per VM.
use crate::audit::{self, Event, Origin};
use crate::clock::Clock;
use crate::db::{self, Scope};
use crate::hypervisor::domain_xml::{self, DiskSpec, DomainXml};
use crate::hypervisor::{cpu_weight, inventory, storage, Hypervisors};
use crate::jobs::{Handler, Job, Outcome};
use crate::placement;
use crate::quota::{self, Release};
use crate::requests::log;
use askama::Template;
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub struct Provisioner {
    pub pool: PgPool,
    pub hypervisors: Arc<Hypervisors>,
    pub clock: Arc<dyn Clock>,
    pub vcpu_overcommit: f64,
    /// How long a VM that found no room waits before it is placed again.
    pub placement_retry: Duration,
    /// Test hook: a step after which the process pretends to die (see the crash tests).
    pub crash_after: Option<String>,
}

/// The volume a VM's disk lives in: derived from its UUID, so a retry finds it.
pub fn volume_name(uuid: Uuid) -> String {
    format!("cc-{uuid}.qcow2")
}

#[derive(sqlx::FromRow, Debug)]
struct VmJob {
    uuid: Uuid,
    request_id: Option<Uuid>,
    tenant_id: Uuid,
    tenant_name: String,
    owner_email: Option<String>,
    template_id: Option<Uuid>,
    name: String,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
    host_id: Option<Uuid>,
    pool: Option<String>,
    volume: Option<String>,
    phase: String,
    deleted_at: Option<time::OffsetDateTime>,
}

fn retry(e: impl std::fmt::Display) -> Outcome {
    Outcome::Retry(e.to_string())
}

impl Provisioner {
    async fn load(&self, uuid: Uuid) -> Result<Option<VmJob>, Outcome> {
        let mut tx = db::begin_raw(&self.pool, Scope::fleet())
            .await
            .map_err(retry)?;
        sqlx::query_as(
            "SELECT v.uuid, v.request_id, v.tenant_id, t.name AS tenant_name, u.email AS owner_email, v.template_id,
                    v.name, v.vcpus, v.memory_mib, v.disk_gib, v.host_id, v.pool, v.volume, v.phase, v.deleted_at
             FROM vms v JOIN tenants t ON t.id = v.tenant_id LEFT JOIN users u ON u.id = v.owner_id
             WHERE v.uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(retry)
    }

    /// Records a phase and a line in the request's log.
    async fn phase(&self, vm: &VmJob, phase: &str, message: &str) -> Result<(), Outcome> {
        let now = self.clock.now();
        let mut tx = db::begin_raw(&self.pool, Scope::fleet())
            .await
            .map_err(retry)?;
        sqlx::query(
            "UPDATE vms SET phase = $2, updated_at = $3 WHERE uuid = $1 AND phase <> 'running'",
        )
        .bind(vm.uuid)
        .bind(phase)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(retry)?;
        if let Some(r) = vm.request_id {
            let moved = sqlx::query("UPDATE requests SET state = 'provisioning', updated_at = $2 WHERE id = $1 AND state = 'approved'")
                .bind(r)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(retry)?
                .rows_affected();
            if moved > 0 {
                audit::record_raw(
                    &mut tx,
                    &Origin::default(),
                    Event::new("request.provision", "request", r).tenant(vm.tenant_id),
                )
                .await
                .map_err(retry)?;
            }
            log(&mut tx, r, vm.tenant_id, None, phase, message, now)
                .await
                .map_err(retry)?;
        }
        tx.commit().await.map_err(retry)
    }

    fn crash_point(&self, step: &str) {
        if self.crash_after.as_deref() == Some(step) {
            tracing::error!(step, "crash point reached: exiting as if killed");
            // Like SIGKILL: no cleanup, no destructors.
            std::process::abort();
        }
    }

    /// Chooses a host under a global lock (so two jobs cannot both take the last room) and
    /// writes it down before any libvirt work.
    async fn place(&self, vm: &VmJob) -> Result<(Uuid, String, String), Outcome> {
        let template = vm
            .template_id
            .ok_or_else(|| Outcome::Fail("The template was deleted.".into()))?;
        let now = self.clock.now();
        let mut tx = db::begin_raw(&self.pool, Scope::fleet())
            .await
            .map_err(retry)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('concierge.placement'))")
            .execute(&mut *tx)
            .await
            .map_err(retry)?;
        let placed: Option<(Option<Uuid>, Option<String>)> =
            sqlx::query_as("SELECT host_id, pool FROM vms WHERE uuid = $1")
                .bind(vm.uuid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(retry)?;
        if let Some((Some(host), Some(pool))) = placed {
            let base = base_volume(&mut tx, template, host).await?;
            return Ok((host, pool, base));
        }
        let candidates = placement::candidates(&mut tx, template)
            .await
            .map_err(retry)?;
        let need = placement::Need {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disk_gib: vm.disk_gib,
        };
        match placement::choose(&candidates, &need, self.vcpu_overcommit) {
            Ok(choice) => {
                sqlx::query(
                    "UPDATE vms SET host_id = $2, pool = $3, volume = $4, phase = 'placing', error = NULL, updated_at = $5 WHERE uuid = $1",
                )
                .bind(vm.uuid)
                .bind(choice.host_id)
                .bind(&choice.pool)
                .bind(volume_name(vm.uuid))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(retry)?;
                if let Some(r) = vm.request_id {
                    log(
                        &mut tx,
                        r,
                        vm.tenant_id,
                        None,
                        "placed",
                        &format!("{}: {}", vm.name, choice.reason),
                        now,
                    )
                    .await
                    .map_err(retry)?;
                }
                tx.commit().await.map_err(retry)?;
                Ok((choice.host_id, choice.pool, choice.base_volume))
            }
            Err(why) => {
                // Wait for capacity: say so once (not on every retry) and keep the quota.
                let message = format!("{}: waiting for capacity. {why}", vm.name);
                sqlx::query("UPDATE vms SET error = $2, updated_at = $3 WHERE uuid = $1")
                    .bind(vm.uuid)
                    .bind(&why)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(retry)?;
                if let Some(r) = vm.request_id {
                    let last: Option<String> = sqlx::query_scalar(
                        "SELECT message FROM request_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1",
                    )
                    .bind(r)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(retry)?;
                    if last.as_deref() != Some(message.as_str()) {
                        log(&mut tx, r, vm.tenant_id, None, "waiting", &message, now)
                            .await
                            .map_err(retry)?;
                    }
                }
                tx.commit().await.map_err(retry)?;
                Err(Outcome::Wait(why, self.placement_retry))
            }
        }
    }

    async fn provision(&self, uuid: Uuid) -> Result<(), Outcome> {
        let Some(vm) = self.load(uuid).await? else {
            return Ok(()); // The VM row is gone (tenant removed): nothing to do.
        };
        if vm.deleted_at.is_some() || matches!(vm.phase.as_str(), "failed" | "deleting" | "deleted")
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (host, pool, base) = self.place(&vm).await?;
        self.crash_point("placed");

        self.phase(
            &vm,
            "cloning",
            &format!("{}: cloning the disk from {base}.", vm.name),
        )
        .await?;
        let volume = volume_name(uuid);
        let capacity = u64::try_from(vm.disk_gib).unwrap_or(1) * 1024 * 1024 * 1024;
        let (p2, v2, b2) = (pool.clone(), volume.clone(), base.clone());
        let disk_path = self
            .hypervisors
            .call(host, move |conn| {
                storage::clone_once(conn, &p2, &v2, &b2, capacity)
            })
            .await
            .map_err(retry)?;
        self.crash_point("cloned");

        self.phase(
            &vm,
            "defining",
            &format!("{}: defining the domain.", vm.name),
        )
        .await?;
        let (name, tenant, owner) = (
            vm.name.clone(),
            vm.tenant_name.clone(),
            vm.owner_email.clone().unwrap_or_default(),
        );
        let (vcpus, memory_mib) = (vm.vcpus as u32, vm.memory_mib as u64);
        let (domain_type, nested) = self
            .hypervisors
            .call(host, |conn| Ok(domain_xml::guest_kind(conn)))
            .await
            .map_err(retry)?;
        let libvirt_name = domain_xml::libvirt_name(&name, uuid);
        let xml = DomainXml {
            domain_type,
            nested,
            name: &libvirt_name,
            uuid,
            title: &name,
            tenant: &tenant,
            owner: &owner,
            memory_mib,
            vcpus,
            cpu_weight: cpu_weight::RUNNING,
            disks: &[DiskSpec {
                path: disk_path,
                format: "qcow2",
                target: "vda".into(),
            }],
            user_network: true,
        }
        .render()
        .map_err(|e| Outcome::Fail(format!("rendering the domain XML: {e}")))?;
        let facts = self
            .hypervisors
            .call(host, move |conn| {
                let dom = domain_xml::define_once(conn, uuid, &xml)?;
                inventory::domain_facts(&dom, &HashMap::new())
            })
            .await
            .map_err(retry)?;
        // The row is written (managed, with tenant and owner from `vms`) before the start, so
        // the domain never shows up as drift.
        crate::hypervisor::write_domain(&self.pool, host, &facts)
            .await
            .map_err(retry)?;
        self.crash_point("defined");

        self.phase(&vm, "starting", &format!("{}: starting.", vm.name))
            .await?;
        let facts = self
            .hypervisors
            .call(host, move |conn| {
                let dom = conn.lookup_domain_by_uuid(uuid)?;
                if !dom.is_active()? {
                    cpu_weight::start(conn, &dom)?;
                }
                inventory::domain_facts(&dom, &HashMap::new())
            })
            .await
            .map_err(retry)?;
        crate::hypervisor::write_domain(&self.pool, host, &facts)
            .await
            .map_err(retry)?;
        self.crash_point("started");
        self.finish(&vm, started.elapsed()).await
    }

    /// The VM runs: allocate its quota, and fulfil the request once all its VMs run.
    async fn finish(&self, vm: &VmJob, took: Duration) -> Result<(), Outcome> {
        let now = self.clock.now();
        let mut tx = db::begin_raw(&self.pool, Scope::fleet())
            .await
            .map_err(retry)?;
        if let Some(r) = vm.request_id {
            // Serialises the VMs of one request deciding whether they were the last.
            sqlx::query("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE")
                .bind(r)
                .execute(&mut *tx)
                .await
                .map_err(retry)?;
        }
        let changed = sqlx::query(
            "UPDATE vms SET phase = 'running', error = NULL, updated_at = $2 WHERE uuid = $1 AND phase <> 'running'",
        )
        .bind(vm.uuid)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(retry)?
        .rows_affected();
        quota::allocate(&mut tx, vm.uuid, now)
            .await
            .map_err(retry)?;
        if let (Some(r), 1) = (vm.request_id, changed) {
            log(
                &mut tx,
                r,
                vm.tenant_id,
                None,
                "running",
                &format!("{} is running ({} ms).", vm.name, took.as_millis()),
                now,
            )
            .await
            .map_err(retry)?;
            let (total, running, failed) = tally(&mut tx, r).await?;
            if running == total {
                sqlx::query("UPDATE requests SET state = 'fulfilled', updated_at = $2 WHERE id = $1 AND state IN ('approved', 'provisioning')")
                    .bind(r)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(retry)?;
                log(
                    &mut tx,
                    r,
                    vm.tenant_id,
                    None,
                    "fulfilled",
                    "Fulfilled: every VM is running.",
                    now,
                )
                .await
                .map_err(retry)?;
                audit::record_raw(
                    &mut tx,
                    &Origin::default(),
                    Event::new("request.fulfil", "request", r).tenant(vm.tenant_id),
                )
                .await
                .map_err(retry)?;
            } else if running + failed == total {
                self.close_failed_request(&mut tx, r, vm.tenant_id, failed, total)
                    .await?;
            }
        }
        audit::record_raw(
            &mut tx,
            &Origin::default(),
            Event::new("vm.provision", "vm", vm.uuid)
                .tenant(vm.tenant_id)
                .after(
                    json!({ "name": vm.name, "host": vm.host_id, "ms": took.as_millis() as u64 }),
                ),
        )
        .await
        .map_err(retry)?;
        tx.commit().await.map_err(retry)
    }

    async fn close_failed_request(
        &self,
        tx: &mut db::Tx,
        request: Uuid,
        tenant: Uuid,
        failed: i64,
        total: i64,
    ) -> Result<(), Outcome> {
        let now = self.clock.now();
        let reason = format!("{failed} of {total} VMs could not be provisioned.");
        sqlx::query("UPDATE requests SET state = 'failed', reason = $2, updated_at = $3 WHERE id = $1 AND state IN ('approved', 'provisioning')")
            .bind(request)
            .bind(&reason)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(retry)?;
        log(
            tx,
            request,
            tenant,
            None,
            "failed",
            &format!("Failed: {reason}"),
            now,
        )
        .await
        .map_err(retry)?;
        audit::record_raw(
            tx,
            &Origin::default(),
            Event::new("request.fail", "request", request)
                .tenant(tenant)
                .after(json!({ "reason": reason })),
        )
        .await
        .map_err(retry)?;
        Ok(())
    }

    /// Removes the domain and its volume, marks the VM deleted and releases its quota.
    async fn delete(&self, uuid: Uuid, reason: &str) -> Result<(), Outcome> {
        let Some(vm) = self.load(uuid).await? else {
            return Ok(());
        };
        if vm.deleted_at.is_some() {
            return Ok(());
        }
        if let Some(host) = vm.host_id {
            let pool = vm.pool.clone();
            let volume = vm.volume.clone().unwrap_or_else(|| volume_name(uuid));
            self.hypervisors
                .call(host, move |conn| {
                    use crate::hypervisor::connection::undefine;
                    if let Ok(dom) = conn.lookup_domain_by_uuid(uuid) {
                        undefine(&dom)?;
                    }
                    if let Some(pool) = pool {
                        match storage::delete_volume(conn, &pool, &volume) {
                            Ok(()) => {}
                            Err(e)
                                if matches!(
                                    e.code(),
                                    virt::enumutil::Enum::Known(
                                        virt::error::ErrorNumber::NoStorageVolume
                                    )
                                ) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(retry)?;
            let _ = crate::hypervisor::mark_missing(&self.pool, host, uuid).await;
        }
        let now = self.clock.now();
        let mut tx = db::begin_raw(&self.pool, Scope::fleet())
            .await
            .map_err(retry)?;
        sqlx::query("UPDATE vms SET phase = 'deleted', deleted_at = $2, updated_at = $2 WHERE uuid = $1 AND deleted_at IS NULL")
            .bind(uuid)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(retry)?;
        quota::release(&mut tx, Release::Vm(uuid), reason, now)
            .await
            .map_err(retry)?;
        audit::record_raw(
            &mut tx,
            &Origin::default(),
            Event::new("vm.delete", "vm", uuid)
                .tenant(vm.tenant_id)
                .after(json!({ "name": vm.name, "reason": reason })),
        )
        .await
        .map_err(retry)?;
        tx.commit().await.map_err(retry)
    }
}

/// A request's VMs: how many in all, running, and failed.
async fn tally(tx: &mut db::Tx, request: Uuid) -> Result<(i64, i64, i64), Outcome> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE phase = 'running'), count(*) FILTER (WHERE phase = 'failed')
         FROM vms WHERE request_id = $1",
    )
    .bind(request)
    .fetch_one(&mut **tx)
    .await
    .map_err(retry)
}

async fn base_volume(tx: &mut db::Tx, template: Uuid, host: Uuid) -> Result<String, Outcome> {
    sqlx::query_scalar("SELECT volume FROM template_images WHERE template_id = $1 AND host_id = $2")
        .bind(template)
        .bind(host)
        .fetch_optional(&mut **tx)
        .await
        .map_err(retry)?
        .ok_or_else(|| {
            Outcome::Fail("The template's image is no longer on the chosen host.".into())
        })
}

#[async_trait]
impl Handler for Provisioner {
    async fn run(&self, job: &Job) -> Result<(), Outcome> {
        match job.kind.as_str() {
            "provision" => self.provision(job.key).await,
            "delete" => {
                let reason = job
                    .payload
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("deleted");
                self.delete(job.key, reason).await
            }
            other => Err(Outcome::Fail(format!("unknown job kind {other}"))),
        }
    }

    async fn failed(&self, job: &Job, error: &str) {
        if job.kind != "provision" {
            return;
        }
        // Give up: remove what was made, mark the VM failed, release its quota, and close the
        // request once none of its VMs is still on its way.
        if let Err(e) = self.delete_leftovers(job.key).await {
            tracing::warn!(error = ?e, "cleaning up a failed VM");
        }
        let result: Result<(), Outcome> = async {
            let Some(vm) = self.load(job.key).await? else {
                return Ok(());
            };
            let now = self.clock.now();
            let mut tx = db::begin_raw(&self.pool, Scope::fleet())
                .await
                .map_err(retry)?;
            if let Some(r) = vm.request_id {
                sqlx::query("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE")
                    .bind(r)
                    .execute(&mut *tx)
                    .await
                    .map_err(retry)?;
            }
            sqlx::query(
                "UPDATE vms SET phase = 'failed', error = $2, updated_at = $3 WHERE uuid = $1",
            )
            .bind(vm.uuid)
            .bind(error)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(retry)?;
            quota::release(&mut tx, Release::Vm(vm.uuid), "provisioning failed", now)
                .await
                .map_err(retry)?;
            if let Some(r) = vm.request_id {
                log(
                    &mut tx,
                    r,
                    vm.tenant_id,
                    None,
                    "failed",
                    &format!("{} failed: {error}. Its quota was released.", vm.name),
                    now,
                )
                .await
                .map_err(retry)?;
                let (total, running, failed) = tally(&mut tx, r).await?;
                if running + failed == total {
                    self.close_failed_request(&mut tx, r, vm.tenant_id, failed, total)
                        .await?;
                }
            }
            tx.commit().await.map_err(retry)
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = ?e, vm = %job.key, "recording a failed provisioning");
        }
    }
}

impl Provisioner {
    async fn delete_leftovers(&self, uuid: Uuid) -> Result<(), Outcome> {
        let Some(vm) = self.load(uuid).await? else {
            return Ok(());
        };
        let (Some(host), Some(pool)) = (vm.host_id, vm.pool.clone()) else {
            return Ok(());
        };
        let volume = volume_name(uuid);
        self.hypervisors
            .call(host, move |conn| {
                if let Ok(dom) = conn.lookup_domain_by_uuid(uuid) {
                    crate::hypervisor::connection::undefine(&dom)?;
                }
                let _ = storage::delete_volume(conn, &pool, &volume);
                Ok(())
            })
            .await
            .map_err(retry)?;
        let _ = crate::hypervisor::mark_missing(&self.pool, host, uuid).await;
        Ok(())
    }
}
