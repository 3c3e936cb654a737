//! The provisioning and deletion jobs. Every step is keyed by the VM's UUID and checks what
//! the hypervisor already has before acting: the volume is `cc-<uuid>.qcow2` and is looked up
//! before it is cloned, the domain is looked up by UUID before it is defined, and a running
//! domain is not started again. A process killed anywhere and restarted therefore finishes
//! with exactly one disk and one domain per VM. Over 600 lines because the steps stay in the
//! order they run, so that argument reads from top to bottom.
use crate::hypervisor::domain_xml::{self, DiskSpec, DomainXml};
use crate::hypervisor::{cpu_weight, inventory, storage, Hypervisors};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::{Error, Result};
use crate::platform::jobs::{Handler, Job, JobKind, Outcome};
use crate::provisioning::placement;
use crate::provisioning::quota::{self, Release};
use crate::provisioning::requests::log;
use app::states::VmPhase;
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
    /// Where user-mode networking's SSH forwards listen, and the ports they may take.
    pub ssh: SshForwards,
    /// Sends notification e-mail (the job queue's `mail` jobs); none without `--smtp-url`.
    pub mailer: Option<Arc<crate::notifications::mail::Mailer>>,
    /// Sends webhook deliveries (the `webhook` jobs).
    pub webhooks: Arc<crate::notifications::webhooks::Sender>,
}

/// Host ports forwarded to guests' SSH: the address they listen on (on the host) and the
/// range they are allocated from, one per live VM and host.
#[derive(Debug, Clone)]
pub struct SshForwards {
    pub address: String,
    pub ports: std::ops::RangeInclusive<u16>,
}

/// Where a VM goes and how its template's image boots there.
struct Placed {
    host: Uuid,
    pool: String,
    base: String,
    kernel: Option<String>,
    initrd: Option<String>,
    ssh_port: Option<u16>,
}

/// What the template says about first boot.
#[derive(sqlx::FromRow)]
struct GuestSettings {
    login_user: Option<String>,
    user_data: String,
    /// The requester's own cloud-config.
    request_user_data: String,
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
    owner_id: Option<Uuid>,
    template_id: Option<Uuid>,
    name: String,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
    host_id: Option<Uuid>,
    pool: Option<String>,
    volume: Option<String>,
    #[sqlx(try_from = "String")]
    phase: VmPhase,
    deleted_at: Option<time::OffsetDateTime>,
    /// The libvirt network it joins; None: user-mode networking.
    network: Option<String>,
}

/// Serialises the VMs of one request deciding whether they were its last.
async fn lock_request(tx: &mut db::Tx, request: Option<Uuid>) -> Result<()> {
    if let Some(r) = request {
        sqlx::query("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE")
            .bind(r)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Provisioner {
    async fn load(&self, uuid: Uuid) -> Result<Option<VmJob>, Outcome> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        Ok(sqlx::query_as(
            "SELECT v.uuid, v.request_id, v.tenant_id, t.name AS tenant_name, u.email AS owner_email, v.owner_id, v.template_id,
                    v.name, v.vcpus, v.memory_mib, v.disk_gib, v.host_id, v.pool, v.volume, v.phase, v.deleted_at,
                    v.network
             FROM vms v JOIN tenants t ON t.id = v.tenant_id LEFT JOIN users u ON u.id = v.owner_id
             WHERE v.uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await.map_err(Error::from)?)
    }

    /// Records a phase and a line in the request's log.
    async fn phase(&self, vm: &VmJob, phase: VmPhase, message: &str) -> Result<(), Outcome> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query(
            "UPDATE vms SET phase = $2, updated_at = $3 WHERE uuid = $1 AND phase <> 'running'",
        )
        .bind(vm.uuid)
        .bind(phase.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(r) = vm.request_id {
            let moved = sqlx::query("UPDATE requests SET state = 'provisioning', updated_at = $2 WHERE id = $1 AND state = 'approved'")
                .bind(r)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved > 0 {
                audit::record(
                    &mut tx,
                    &Origin::default(),
                    Event::new("request.provision", "request", r).tenant(vm.tenant_id),
                )
                .await?;
            }
            log(&mut tx, r, vm.tenant_id, None, phase.as_str(), message, now).await?;
        }
        Ok(tx.commit().await.map_err(Error::from)?)
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
    async fn place(&self, vm: &VmJob, guest: &GuestSettings) -> Result<Placed, Outcome> {
        let template = vm
            .template_id
            .ok_or_else(|| Outcome::Fail("The template was deleted.".into()))?;
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('concierge.placement'))")
            .execute(&mut *tx)
            .await?;
        let placed: Option<(Option<Uuid>, Option<String>, Option<i32>)> =
            sqlx::query_as("SELECT host_id, pool, ssh_port FROM vms WHERE uuid = $1")
                .bind(vm.uuid)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((Some(host), Some(pool), port)) = placed {
            let image = base_image(&mut tx, template, host).await?;
            let ssh_port = match port {
                Some(p) => u16::try_from(p).ok(),
                None if guest.login_user.is_some() && vm.network.is_none() => {
                    let p = self.ssh_port(&mut tx, vm.uuid, host).await?;
                    tx.commit().await?;
                    Some(p)
                }
                None => None,
            };
            return Ok(Placed {
                host,
                pool,
                base: image.0,
                kernel: image.1,
                initrd: image.2,
                ssh_port,
            });
        }
        let candidates = placement::candidates(&mut tx, template, vm.network.as_deref()).await?;
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
                .await?;
                log(
                    &mut tx,
                    vm.request_id,
                    vm.tenant_id,
                    None,
                    "placed",
                    &format!("{}: {}", vm.name, choice.reason),
                    now,
                )
                .await?;
                // A forwarded port only for user-mode networking.
                let ssh_port = match (&guest.login_user, &vm.network) {
                    (Some(_), None) => Some(self.ssh_port(&mut tx, vm.uuid, choice.host_id).await?),
                    _ => None,
                };
                let image = base_image(&mut tx, template, choice.host_id).await?;
                tx.commit().await?;
                Ok(Placed {
                    host: choice.host_id,
                    pool: choice.pool,
                    base: choice.base_volume,
                    kernel: image.1,
                    initrd: image.2,
                    ssh_port,
                })
            }
            Err(why) => {
                // Wait for capacity: say so once (not on every retry) and keep the quota.
                let message = format!("{}: waiting for capacity. {why}", vm.name);
                sqlx::query("UPDATE vms SET error = $2, updated_at = $3 WHERE uuid = $1")
                    .bind(vm.uuid)
                    .bind(&why)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if let Some(r) = vm.request_id {
                    let last: Option<String> = sqlx::query_scalar(
                        "SELECT message FROM request_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1",
                    )
                    .bind(r)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if last.as_deref() != Some(message.as_str()) {
                        log(&mut tx, r, vm.tenant_id, None, "waiting", &message, now).await?;
                    }
                }
                tx.commit().await?;
                Err(Outcome::Wait(why, self.placement_retry))
            }
        }
    }

    /// Takes the lowest free forward port of `host` for the VM (under the placement lock, so
    /// two VMs cannot take one port; the unique index says so too).
    async fn ssh_port(&self, tx: &mut db::Tx, vm: Uuid, host: Uuid) -> Result<u16, Outcome> {
        let port = self.free_ssh_port(tx, host).await?;
        sqlx::query("UPDATE vms SET ssh_port = $2 WHERE uuid = $1")
            .bind(vm)
            .bind(i32::from(port))
            .execute(&mut **tx)
            .await?;
        Ok(port)
    }

    /// The lowest forward port of `host` no live VM there holds (call under the placement
    /// lock). On the portal's own machine a port some other program holds is skipped.
    pub(super) async fn free_ssh_port(&self, tx: &mut db::Tx, host: Uuid) -> Result<u16, Outcome> {
        let (lo, hi) = (*self.ssh.ports.start() as i32, *self.ssh.ports.end() as i32);
        let free: Vec<i32> = sqlx::query_scalar(
            "SELECT p FROM generate_series($2::int, $3::int) p
             WHERE NOT EXISTS (SELECT 1 FROM vms WHERE host_id = $1 AND ssh_port = p AND deleted_at IS NULL)
             ORDER BY p LIMIT 50",
        )
        .bind(host)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut **tx)
        .await?;
        let uri: String = sqlx::query_scalar("SELECT uri FROM hosts WHERE id = $1")
            .bind(host)
            .fetch_one(&mut **tx)
            .await?;
        let local =
            !uri.contains("://") || uri.split("://").nth(1).is_some_and(|r| r.starts_with('/'));
        free.into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .find(|p| {
                !local || std::net::TcpListener::bind((self.ssh.address.as_str(), *p)).is_ok()
            })
            .ok_or_else(|| {
                Outcome::Retry(format!(
                    "no free SSH forward port on this host between {lo} and {hi}"
                ))
            })
    }

    async fn guest_settings(&self, vm: &VmJob) -> Result<GuestSettings, Outcome> {
        let Some(template) = vm.template_id else {
            return Ok(GuestSettings {
                login_user: None,
                user_data: String::new(),
                request_user_data: String::new(),
            });
        };
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as(
            "SELECT t.login_user, t.user_data, coalesce(r.user_data, '') AS request_user_data
             FROM templates t LEFT JOIN vms v ON v.uuid = $2 LEFT JOIN requests r ON r.id = v.request_id
             WHERE t.id = $1",
        )
        .bind(template)
        .bind(vm.uuid)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Outcome::Fail("The template was deleted.".into()))
    }

    /// Writes the VM's NoCloud seed next to its disk; returns its path on the host.
    async fn seed(
        &self,
        vm: &VmJob,
        placed: &Placed,
        login_user: &str,
        guest: &GuestSettings,
    ) -> Result<String, Outcome> {
        let keys = match vm.owner_id {
            Some(owner) => {
                let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
                crate::accounts::ssh_keys::lines_of(&mut tx, owner).await?
            }
            None => Vec::new(),
        };
        let message = if keys.is_empty() {
            format!("{}: writing the cloud-init seed. The owner has no SSH key yet, so nobody can log in over SSH: add one on the account page and request again, or use the console.", vm.name)
        } else {
            format!(
                "{}: writing the cloud-init seed (login user {login_user}, {} SSH key{}).",
                vm.name,
                keys.len(),
                if keys.len() == 1 { "" } else { "s" }
            )
        };
        self.phase(vm, VmPhase::Seeding, &message).await?;
        let iso = crate::catalog::cloud_init::Seed {
            uuid: vm.uuid,
            hostname: &vm.name,
            login_user,
            keys: &keys,
            snippet: &guest.user_data,
            extra: &guest.request_user_data,
        }
        .iso()
        .await
        .map_err(Outcome::Retry)?;
        let (pool, name) = (
            placed.pool.clone(),
            crate::catalog::cloud_init::seed_volume(vm.uuid),
        );
        Ok(self
            .hypervisors
            .call(placed.host, move |conn| {
                let len = iso.len() as u64;
                storage::upload_volume(
                    conn,
                    &pool,
                    &name,
                    storage::Format::Raw,
                    std::io::Cursor::new(iso),
                    len,
                )
            })
            .await
            .map_err(Error::from)?)
    }

    async fn provision(&self, uuid: Uuid) -> Result<(), Outcome> {
        let Some(vm) = self.load(uuid).await? else {
            return Ok(()); // The VM row is gone (tenant removed): nothing to do.
        };
        if vm.deleted_at.is_some()
            || matches!(
                vm.phase,
                VmPhase::Failed | VmPhase::Deleting | VmPhase::Deleted
            )
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let guest = self.guest_settings(&vm).await?;
        let placed = self.place(&vm, &guest).await?;
        let (host, pool, base) = (placed.host, placed.pool.clone(), placed.base.clone());
        self.crash_point("placed");

        self.phase(
            &vm,
            VmPhase::Cloning,
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
            .await?;
        self.crash_point("cloned");

        let seed = match &guest.login_user {
            Some(user) => Some(self.seed(&vm, &placed, user, &guest).await?),
            None => None,
        };
        self.phase(
            &vm,
            VmPhase::Defining,
            &format!("{}: defining the domain.", vm.name),
        )
        .await?;
        let (name, tenant, owner) = (
            vm.name.clone(),
            vm.tenant_name.clone(),
            vm.owner_email.clone().unwrap_or_default(),
        );
        let (vcpus, memory_mib) = (vm.vcpus as u32, vm.memory_mib as u64);
        let chosen = self.chosen_domain_type(host).await?;
        let (detected, nested) = self
            .hypervisors
            .call(host, |conn| Ok(domain_xml::guest_kind(conn)))
            .await?;
        // The fleet admin's choice wins, except on libvirt's test driver.
        let domain_type = match chosen {
            Some(t) if detected != "test" => t,
            _ => detected,
        };
        let boot = match (&placed.kernel, &placed.initrd) {
            (Some(k), Some(i)) => {
                let (p, k, i) = (pool.clone(), k.clone(), i.clone());
                let (kernel, initrd) = self
                    .hypervisors
                    .call(host, move |conn| {
                        let pool = conn.lookup_storage_pool_by_name(&p)?;
                        Ok((
                            pool.lookup_storage_vol_by_name(&k)?.path()?,
                            pool.lookup_storage_vol_by_name(&i)?.path()?,
                        ))
                    })
                    .await?;
                Some(domain_xml::DirectBoot {
                    kernel,
                    initrd,
                    cmdline: "root=/dev/vda rw console=tty0 console=ttyS0,115200".into(),
                })
            }
            _ => None,
        };
        let real = domain_type != "test";
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
            user_network: vm.network.is_none(),
            network: vm.network.as_deref(),
            ssh_forward: placed
                .ssh_port
                .filter(|_| real)
                .map(|port| domain_xml::SshForward {
                    address: self.ssh.address.clone(),
                    port,
                }),
            boot,
            seed,
            consoles: real,
        }
        .render()
        .map_err(|e| Outcome::Fail(format!("rendering the domain XML: {e}")))?;
        let facts = self
            .hypervisors
            .call(host, move |conn| {
                let dom = domain_xml::define_once(conn, uuid, &xml)?;
                inventory::domain_facts(&dom, &HashMap::new())
            })
            .await?;
        // The row is written (managed, with tenant and owner from `vms`) before the start, so
        // the domain never shows up as drift.
        crate::hypervisor::write_domain(&self.pool, None, host, &facts).await?;
        self.crash_point("defined");

        self.phase(&vm, VmPhase::Starting, &format!("{}: starting.", vm.name))
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
            .await?;
        crate::hypervisor::write_domain(&self.pool, None, host, &facts).await?;
        self.crash_point("started");
        // What to watch for the guest's SSH: the forwarded port, or port 22 at the address
        // the guest gets on its network.
        let forward = match (&vm.network, &guest.login_user) {
            (None, _) => placed.ssh_port.filter(|_| real).map(|p| (host, p)),
            (Some(_), Some(_)) if real => Some((host, 22)),
            _ => None,
        };
        self.finish(&vm, started.elapsed(), forward).await
    }

    /// The fleet admin's choice of kvm or qemu for this host, if any.
    async fn chosen_domain_type(&self, host: Uuid) -> Result<Option<&'static str>, Outcome> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let t: Option<String> = sqlx::query_scalar("SELECT domain_type FROM hosts WHERE id = $1")
            .bind(host)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        Ok(match t.as_deref() {
            Some("kvm") => Some("kvm"),
            Some("qemu") => Some("qemu"),
            _ => None,
        })
    }

    /// The VM runs: allocate its quota, and fulfil the request once all its VMs run.
    async fn finish(
        &self,
        vm: &VmJob,
        took: Duration,
        forward: Option<(Uuid, u16)>,
    ) -> Result<(), Outcome> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        lock_request(&mut tx, vm.request_id).await?;
        let changed = sqlx::query(
            "UPDATE vms SET phase = 'running', error = NULL, updated_at = $2 WHERE uuid = $1 AND phase <> 'running'",
        )
        .bind(vm.uuid)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        quota::allocate(&mut tx, vm.uuid, now).await?;
        if let Some((host, port)) = forward {
            // Running is not usable yet: a job watches for the guest's SSH (see `guest`).
            crate::provisioning::guest::watch(
                &mut tx,
                host,
                vm.uuid,
                port,
                vm.network.as_deref(),
                now,
            )
            .await?;
        }
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
            .await?;
            let (total, running, failed) = tally(&mut tx, r).await?;
            if running == total {
                sqlx::query("UPDATE requests SET state = 'fulfilled', updated_at = $2 WHERE id = $1 AND state IN ('approved', 'provisioning')")
                    .bind(r)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                log(
                    &mut tx,
                    r,
                    vm.tenant_id,
                    None,
                    "fulfilled",
                    "Fulfilled: every VM is running.",
                    now,
                )
                .await?;
                audit::record(
                    &mut tx,
                    &Origin::default(),
                    Event::new("request.fulfil", "request", r).tenant(vm.tenant_id),
                )
                .await?;
            } else if running + failed == total {
                self.close_failed_request(&mut tx, r, vm.tenant_id, failed, total)
                    .await?;
            }
        }
        audit::record(
            &mut tx,
            &Origin::default(),
            Event::new("vm.provision", "vm", vm.uuid)
                .tenant(vm.tenant_id)
                .after(
                    json!({ "name": vm.name, "host": vm.host_id, "ms": took.as_millis() as u64 }),
                ),
        )
        .await?;
        Ok(tx.commit().await.map_err(Error::from)?)
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
            .await?;
        log(
            tx,
            request,
            tenant,
            None,
            "failed",
            &format!("Failed: {reason}"),
            now,
        )
        .await?;
        audit::record(
            tx,
            &Origin::default(),
            Event::new("request.fail", "request", request)
                .tenant(tenant)
                .after(json!({ "reason": reason })),
        )
        .await?;
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
                        let _ = storage::delete_volume(
                            conn,
                            &pool,
                            &crate::catalog::cloud_init::seed_volume(uuid),
                        );
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
                .await?;
            let _ = crate::hypervisor::mark_missing(&self.pool, None, host, uuid).await;
        }
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query("UPDATE vms SET phase = 'deleted', deleted_at = $2, updated_at = $2 WHERE uuid = $1 AND deleted_at IS NULL")
            .bind(uuid)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        quota::release(&mut tx, Release::Vm(uuid), reason, now).await?;
        audit::record(
            &mut tx,
            &Origin::default(),
            Event::new("vm.delete", "vm", uuid)
                .tenant(vm.tenant_id)
                .after(json!({ "name": vm.name, "reason": reason })),
        )
        .await?;
        // The pages listing it learn it is gone (the domain's own events may have come first,
        // while the VM was still "deleting").
        if let Some(host) = vm.host_id {
            crate::platform::live::notify_vm(&mut tx, uuid, host).await?;
        }
        Ok(tx.commit().await.map_err(Error::from)?)
    }
}

/// A request's VMs: how many in all, running, and failed.
async fn tally(tx: &mut db::Tx, request: Uuid) -> Result<(i64, i64, i64), Outcome> {
    Ok(sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE phase = 'running'), count(*) FILTER (WHERE phase = 'failed')
         FROM vms WHERE request_id = $1",
    )
    .bind(request)
    .fetch_one(&mut **tx)
    .await.map_err(Error::from)?)
}

/// The template's image on `host`: disk volume, and kernel and initramfs for direct boot.
async fn base_image(
    tx: &mut db::Tx,
    template: Uuid,
    host: Uuid,
) -> Result<(String, Option<String>, Option<String>), Outcome> {
    sqlx::query_as(
        "SELECT volume, kernel, initrd FROM template_images WHERE template_id = $1 AND host_id = $2",
    )
    .bind(template)
    .bind(host)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Outcome::Fail("The template's image is no longer on the chosen host.".into()))
}

#[async_trait]
impl Handler for Provisioner {
    async fn run(&self, job: &Job) -> Result<(), Outcome> {
        match JobKind::parse(&job.kind) {
            Some(JobKind::Provision) => self.provision(job.key).await,
            Some(JobKind::Delete) => {
                let reason = job
                    .payload
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("deleted");
                self.delete(job.key, reason).await
            }
            Some(JobKind::Shutdown) => {
                crate::provisioning::shutdown::check(&self.pool, &self.hypervisors, job).await
            }
            Some(JobKind::GuestReady) => {
                crate::provisioning::guest::check(
                    &self.pool,
                    &self.hypervisors,
                    &self.ssh.address,
                    job,
                )
                .await
            }
            Some(JobKind::ImageCopy) => {
                crate::catalog::image_copy::run_copy(&self.pool, &self.hypervisors, job).await
            }
            Some(JobKind::Mail) => {
                crate::notifications::mail::deliver(&self.pool, self.mailer.as_deref(), job).await
            }
            Some(JobKind::Webhook) => {
                crate::notifications::webhooks::deliver(&self.pool, &self.webhooks, job).await
            }
            Some(JobKind::Migrate) => self.migrate(job).await,
            None => Err(Outcome::Fail(format!("unknown job kind {}", job.kind))),
        }
    }

    async fn failed(&self, job: &Job, error: &str) {
        match JobKind::parse(&job.kind) {
            Some(JobKind::Shutdown) => {
                crate::provisioning::shutdown::abandoned(&self.pool, job, error).await;
                return;
            }
            Some(JobKind::ImageCopy) => {
                crate::catalog::image_copy::copy_failed(&self.pool, job, error).await;
                return;
            }
            Some(JobKind::Mail) => {
                crate::notifications::mail::abandoned(&self.pool, job, error).await;
                return;
            }
            Some(JobKind::Migrate) => {
                super::migration::abandoned(&self.pool, job, error).await;
                return;
            }
            Some(JobKind::Webhook) => {
                crate::notifications::webhooks::abandoned(&self.pool, job, error).await;
                return;
            }
            Some(JobKind::Provision) => {}
            _ => return,
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
            let mut tx = db::begin(&self.pool, Scope::fleet())
                .await?;
            lock_request(&mut tx, vm.request_id).await?;
            // A failed VM keeps its record but gives its SSH forward port back.
            sqlx::query(
                "UPDATE vms SET phase = 'failed', error = $2, ssh_port = NULL, updated_at = $3 WHERE uuid = $1",
            )
            .bind(vm.uuid)
            .bind(error)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            quota::release(&mut tx, Release::Vm(vm.uuid), "provisioning failed", now)
                .await?;
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
                .await?;
                let (total, running, failed) = tally(&mut tx, r).await?;
                if running + failed == total {
                    self.close_failed_request(&mut tx, r, vm.tenant_id, failed, total)
                        .await?;
                }
            }
            Ok(tx.commit().await?)
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
                let _ = storage::delete_volume(
                    conn,
                    &pool,
                    &crate::catalog::cloud_init::seed_volume(uuid),
                );
                Ok(())
            })
            .await?;
        let _ = crate::hypervisor::mark_missing(&self.pool, None, host, uuid).await;
        Ok(())
    }
}
