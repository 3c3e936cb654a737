//! A new guest's first answer. "Running" means QEMU started; the requester can work only once
//! the guest has booted, cloud-init has written their key and sshd answers. A queued job
//! looks every 2 s (a job, so a restart does not lose the watch) until the forwarded port
//! sends an SSH banner, then records when, and the addresses the guest agent reports.
use crate::hypervisor::Hypervisors;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::jobs::{Job, JobKind, Outcome};
use crate::provisioning::requests::log;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

const POLL: Duration = Duration::from_secs(2);
/// After this long the watch gives up and says so (a guest under TCG boots in about a minute).
const GIVE_UP: Duration = Duration::from_secs(15 * 60);

/// Queues the watch for a VM that just started (in the transaction that records it running).
pub async fn watch(
    tx: &mut db::Tx,
    host_id: Uuid,
    uuid: Uuid,
    port: u16,
    network: Option<&str>,
    started: OffsetDateTime,
) -> Result<()> {
    crate::platform::jobs::enqueue(
        tx,
        JobKind::GuestReady,
        uuid,
        json!({ "host_id": host_id, "port": port, "network": network, "started": started.unix_timestamp() }),
        5,
    )
    .await
}

/// Whether an SSH server answers at `address:port`: it speaks first, with `SSH-2.0-…`.
pub async fn ssh_answers(address: &str, port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((address, port)).await.ok()?;
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < 4 {
            let n = s.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        Some(buf.starts_with(b"SSH-"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(true))
    )
}

/// The guest's own addresses, as its agent reports them (none while the agent is not up), or
/// as the libvirt network's DHCP server leased them (`source` LEASE).
fn guest_addresses(dom: &virt::domain::Domain, source: u32) -> Vec<String> {
    let Ok(ifaces) = dom.interface_addresses(source, 0) else {
        return Vec::new();
    };
    ifaces
        .into_iter()
        .filter(|i| i.name != "lo")
        .flat_map(|i| {
            i.addrs
                .into_iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix))
        })
        .filter(|a| !a.starts_with("fe80:"))
        .collect()
}

/// The first IPv4 address of `address/prefix` entries: where SSH reaches a guest on a
/// libvirt network.
pub fn first_ipv4(addresses: &[String]) -> Option<String> {
    addresses
        .iter()
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
}

#[derive(sqlx::FromRow)]
struct Vm {
    name: String,
    tenant_id: Uuid,
    request_id: Option<Uuid>,
    login_user: Option<String>,
    deleted: bool,
    ready_at: Option<OffsetDateTime>,
    has_addresses: bool,
}

/// How long after SSH answers the watch still waits for the agent's addresses.
const AGENT_GRACE: Duration = Duration::from_secs(90);

/// One look at the guest.
pub async fn check(
    pool: &PgPool,
    hv: &Hypervisors,
    address: &str,
    job: &Job,
) -> Result<(), Outcome> {
    let host_id: Uuid = serde_json::from_value(job.payload["host_id"].clone())
        .map_err(|_| Outcome::Fail("guest watch without a host".into()))?;
    let port = job.payload["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| Outcome::Fail("guest watch without a port".into()))?;
    let started = job.payload["started"].as_i64().unwrap_or(0);
    let uuid = job.key;

    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let vm: Option<Vm> = sqlx::query_as(
        "SELECT v.name, v.tenant_id, v.request_id, t.login_user,
                v.deleted_at IS NOT NULL AS deleted, v.ssh_ready_at AS ready_at,
                cardinality(v.guest_addresses) > 0 AS has_addresses
         FROM vms v LEFT JOIN templates t ON t.id = v.template_id WHERE v.uuid = $1",
    )
    .bind(uuid)
    .fetch_optional(&mut *tx)
    .await?;
    drop(tx);
    let Some(vm) = vm.filter(|v| !(v.deleted || v.ready_at.is_some() && v.has_addresses)) else {
        return Ok(());
    };

    // On a libvirt network the guest has an address of its own: the agent's word, else the
    // network's DHCP lease.
    let on_network = job.payload["network"].is_string();
    let addresses = hv
        .call(host_id, move |conn| {
            let dom = conn.lookup_domain_by_uuid(uuid)?;
            let agent = guest_addresses(&dom, virt_sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT);
            Ok(if agent.is_empty() && on_network {
                guest_addresses(&dom, virt_sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
            } else {
                agent
            })
        })
        .await
        .unwrap_or_default();
    let own = first_ipv4(&addresses);
    let target = match (on_network, own) {
        (false, _) => Some(address.to_string()),
        (true, own) => own,
    };
    let answered = vm.ready_at.is_some()
        || match &target {
            Some(t) => ssh_answers(t, port).await,
            None => false,
        };
    let address = target.unwrap_or_else(|| address.to_string());
    let command = if port == 22 {
        format!(
            "ssh {}@{address}",
            vm.login_user.as_deref().unwrap_or("root")
        )
    } else {
        format!(
            "ssh -p {port} {}@{address}",
            vm.login_user.as_deref().unwrap_or("root")
        )
    };
    let now = OffsetDateTime::now_utc();
    let after = now.unix_timestamp() - started;

    let mut tx = db::begin(pool, Scope::fleet()).await?;
    if !addresses.is_empty() {
        sqlx::query("UPDATE vms SET guest_addresses = $2 WHERE uuid = $1")
            .bind(uuid)
            .bind(&addresses)
            .execute(&mut *tx)
            .await?;
    }
    if answered && vm.ready_at.is_none() {
        sqlx::query("UPDATE vms SET ssh_ready_at = $2, updated_at = $2 WHERE uuid = $1 AND ssh_ready_at IS NULL")
            .bind(uuid)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        log(
            &mut tx,
            vm.request_id,
            vm.tenant_id,
            None,
            "ready",
            &format!(
                "{} answers on SSH {after} s after it started: {command}",
                vm.name
            ),
            now,
        )
        .await?;
    }
    if answered || !addresses.is_empty() {
        crate::platform::live::notify_vm(&mut tx, uuid, host_id).await?;
    }
    if answered {
        // Done once the agent has reported too, or it had its chance.
        let ready_for = vm.ready_at.map_or(0, |at| (now - at).whole_seconds());
        if !addresses.is_empty() || ready_for > AGENT_GRACE.as_secs() as i64 {
            tx.commit().await?;
            return Ok(());
        }
        tx.commit().await?;
        return Err(Outcome::Wait("waiting for the guest agent".into(), POLL));
    }
    if after > GIVE_UP.as_secs() as i64 {
        log(
            &mut tx,
            vm.request_id,
            vm.tenant_id,
            None,
            "unreachable",
            &format!(
                "{} did not answer on SSH within {} minutes of starting: open its console to see why.",
                vm.name,
                GIVE_UP.as_secs() / 60
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    tx.commit().await?;
    Err(Outcome::Wait("waiting for the guest's SSH".into(), POLL))
}
