//! Hypervisor hosts and their inventory, as fleet admins see them.
use crate::error::AppError;
use crate::Page;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub id: Uuid,
    pub name: String,
    pub uri: String,
    pub labels: Vec<String>,
    pub schedulable: bool,
    pub maintenance: bool,
    pub simulated: bool,
    /// connecting, connected or lost.
    pub state: String,
    pub state_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub state_since: OffsetDateTime,
    pub cpus: Option<i32>,
    pub memory_kib: Option<i64>,
    pub free_memory_kib: Option<i64>,
    pub vcpus_allocated: i64,
    /// vCPUs placement may allocate: CPUs × the configured overcommit.
    #[serde(default)]
    pub vcpu_capacity: i64,
    pub memory_allocated_kib: i64,
    pub domains: i64,
    pub running: i64,
    pub storage_capacity: i64,
    pub storage_available: i64,
    pub lib_version: Option<String>,
    pub hv_type: Option<String>,
    /// The fleet admin's choice for new VMs: kvm or qemu (TCG); None: detected.
    #[serde(default)]
    pub domain_type: Option<String>,
    pub hv_version: Option<String>,
    /// libvirt or QEMU is older than the fleet's minimum (`update_reason` says which).
    pub needs_update: bool,
    #[serde(default)]
    pub update_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sync_at: Option<OffsetDateTime>,
    /// Reached over SSH: the pinned host key's fingerprint (`SHA256:…`), or None with
    /// `ssh_unverified` when the URI turns the check off.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    #[serde(default)]
    pub ssh_unverified: bool,
}

/// A volume in a pool: its size, and what depends on it (a volume in use is not deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation_bytes: u64,
    /// "template Demo Linux", "VM web-1", "linked clone cc-….qcow2".
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub pool_type: Option<String>,
    pub path: Option<String>,
    pub active: bool,
    pub capacity: i64,
    pub allocation: i64,
    pub available: i64,
    pub missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub active: bool,
    pub forward_mode: Option<String>,
    pub bridge: Option<String>,
    pub missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSummary {
    pub host_id: Uuid,
    pub host_name: String,
    pub uuid: Uuid,
    pub name: String,
    pub state: String,
    pub vcpus: i32,
    pub memory_kib: i64,
    pub managed: bool,
    pub tenant_name: Option<String>,
    pub owner_email: Option<String>,
    pub missing: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub state_since: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDetail {
    pub host: HostSummary,
    pub pools: Vec<PoolInfo>,
    pub networks: Vec<NetworkInfo>,
    /// Domains on the host now (those that vanished are listed in `missing`).
    pub domains: Page<DomainSummary>,
    /// Domains the host no longer has, most recently vanished first (at most 100).
    #[serde(default)]
    pub missing: Vec<DomainSummary>,
}

/// libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release.
pub fn version_string(v: i64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1_000) % 1_000, v % 1_000)
}

#[server(prefix = "/api", endpoint = "list_hosts")]
pub async fn list_hosts() -> Result<Vec<HostSummary>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.hosts(&req).await)
}

/// The hosts page: filtered by name or label and state, sorted, one page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFilter {
    pub page: u32,
    pub search: String,
    /// connected, lost, connecting or maintenance; empty for any.
    pub state: String,
    /// name (default), state, memory (fullest first) or domains (most first).
    pub sort: String,
}

pub const HOST_SORTS: [(&str, &str); 4] = [
    ("name", "Name"),
    ("memory", "Fullest first"),
    ("domains", "Most domains"),
    ("state", "State"),
];

#[server(prefix = "/api", endpoint = "host_page")]
pub async fn host_page(
    #[server(default)] page: u32,
    #[server(default)] search: String,
    #[server(default)] state: String,
    #[server(default)] sort: String,
) -> Result<Page<HostSummary>, AppError> {
    let req = crate::seam::request()?;
    let filter = HostFilter {
        page,
        search,
        state,
        sort,
    };
    crate::seam::reply(crate::seam::backend()?.fleet.host_page(&req, filter).await)
}

/// A host as the registration form types it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostForm {
    pub name: String,
    /// A libvirt URI, e.g. `qemu:///system` or `qemu+ssh://root@kvm1/system`.
    pub uri: String,
    /// Comma-separated.
    pub labels: String,
    pub schedulable: bool,
    pub maintenance: bool,
    /// For a host reached over SSH: the host key it must present (`ssh-ed25519 AAAA…` as
    /// `ssh-keyscan` prints it, or its `SHA256:…` fingerprint).
    #[serde(default)]
    pub ssh_host_key: String,
}

#[server(prefix = "/api", endpoint = "register_host")]
pub async fn register_host(
    name: String,
    uri: String,
    #[server(default)] labels: String,
    #[server(default)] schedulable: bool,
    #[server(default)] maintenance: bool,
    #[server(default)] ssh_host_key: String,
) -> Result<HostSummary, AppError> {
    let req = crate::seam::request()?;
    let form = HostForm {
        name,
        uri,
        labels,
        schedulable,
        maintenance,
        ssh_host_key,
    };
    crate::seam::reply(crate::seam::backend()?.fleet.register(&req, form).await)
}

/// kvm, qemu (TCG) or empty (detected) for the VMs defined on a host from now on.
#[server(prefix = "/api", endpoint = "set_host_domain_type")]
pub async fn set_host_domain_type(host_id: Uuid, domain_type: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .set_domain_type(&req, host_id, &domain_type)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "get_host")]
pub async fn get_host(
    host_id: Uuid,
    #[server(default)] search: String,
    #[server(default)] page: u32,
) -> Result<HostDetail, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .host(&req, host_id, &search, page)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "reconcile_host")]
pub async fn reconcile_host(host_id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.reconcile(&req, host_id).await)
}

/// Drops the record of a domain that vanished from its host (a portal VM's record is closed
/// and its quota released).
#[server(prefix = "/api", endpoint = "forget_domain")]
pub async fn forget_domain(host_id: Uuid, uuid: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .forget(&req, host_id, uuid)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "list_drift")]
pub async fn list_drift(
    #[server(default)] page: u32,
    #[server(default)] after: String,
    #[server(default)] before: String,
) -> Result<Page<DomainSummary>, AppError> {
    let req = crate::seam::request()?;
    let place = crate::Place {
        page,
        after,
        before,
    };
    crate::seam::reply(crate::seam::backend()?.fleet.drift(&req, place).await)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub target: String,
    pub device: String,
    pub format: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub kind: String,
    pub mac: Option<String>,
    pub source: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationInfo {
    pub id: i64,
    pub operation: String,
    /// running, succeeded or failed.
    pub status: String,
    pub error: Option<String>,
    /// What the outcome means ("forced off after 120 s"), or what is awaited while running.
    pub detail: Option<String>,
    pub actor_email: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_ms: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDetail {
    pub domain: DomainSummary,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    pub operations: Vec<OperationInfo>,
}

/// The lifecycle actions, in the order the VM page offers them.
pub const VM_ACTIONS: [(&str, &str); 7] = [
    ("start", "Start"),
    ("shutdown", "Shut down"),
    ("reboot", "Reboot"),
    ("suspend", "Suspend"),
    ("resume", "Resume"),
    ("force_off", "Force off"),
    ("delete", "Delete"),
];

#[server(prefix = "/api", endpoint = "get_vm")]
pub async fn get_vm(host_id: Uuid, uuid: Uuid) -> Result<VmDetail, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.vm(&req, host_id, uuid).await)
}

#[server(prefix = "/api", endpoint = "vm_action")]
pub async fn vm_action(
    host_id: Uuid,
    uuid: Uuid,
    action: String,
    #[server(default)] confirm: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .vm_action(&req, host_id, uuid, &action, &confirm)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "adopt_vm")]
pub async fn adopt_vm(
    host_id: Uuid,
    uuid: Uuid,
    tenant_id: Uuid,
    owner_email: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .adopt(&req, host_id, uuid, tenant_id, &owner_email)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "create_pool")]
pub async fn create_pool(host_id: Uuid, name: String, path: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .create_pool(&req, host_id, &name, &path)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "list_volumes")]
pub async fn list_volumes(host_id: Uuid, pool: String) -> Result<Vec<VolumeInfo>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .volumes(&req, host_id, &pool)
            .await,
    )
}

/// `kind`: `blank` (new qcow2 of `capacity_gib`), `linked` (overlay on `source`) or `copy`.
#[server(prefix = "/api", endpoint = "create_volume")]
pub async fn create_volume(
    host_id: Uuid,
    pool: String,
    name: String,
    kind: String,
    #[server(default)] capacity_gib: String,
    #[server(default)] source: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .create_volume(&req, host_id, &pool, &name, &kind, &capacity_gib, &source)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "delete_volume")]
pub async fn delete_volume(
    host_id: Uuid,
    pool: String,
    name: String,
    #[server(default)] confirm: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .delete_volume(&req, host_id, &pool, &name, &confirm)
            .await,
    )
}

/// `mode`: `nat` or `isolated` (with `address`, the gateway, and `prefix`) or `bridge`.
#[server(prefix = "/api", endpoint = "define_network")]
pub async fn define_network(
    host_id: Uuid,
    name: String,
    mode: String,
    #[server(default)] address: String,
    #[server(default)] prefix: String,
    #[server(default)] bridge: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .define_network(&req, host_id, &name, &mode, &address, &prefix, &bridge)
            .await,
    )
}

/// `op`: `start`, `stop` or `delete`.
#[server(prefix = "/api", endpoint = "network_action")]
pub async fn network_action(host_id: Uuid, name: String, op: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .network_action(&req, host_id, &name, &op)
            .await,
    )
}

/// The fleet at a glance (fleet admins).
/// One of the fullest hosts on the fleet dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyHost {
    pub id: Uuid,
    pub name: String,
    /// connecting, connected or lost.
    pub state: String,
    pub cpus: i64,
    pub vcpus_allocated: i64,
    pub memory_kib: i64,
    pub memory_allocated_kib: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutdatedHost {
    pub id: Uuid,
    pub name: String,
    /// e.g. "libvirt 7.0.0 (minimum 8.0.0)".
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDashboard {
    pub hosts: i64,
    pub connected: i64,
    pub lost: i64,
    pub maintenance: i64,
    pub cpus: i64,
    pub memory_kib: i64,
    pub vcpus_allocated: i64,
    pub memory_allocated_kib: i64,
    pub vcpu_overcommit: f64,
    /// (state, count) of every domain on a host.
    pub vms_by_state: Vec<(String, i64)>,
    /// (tenant, vCPUs, memory KiB, VMs) of the largest consumers.
    pub top_tenants: Vec<(String, i64, i64, i64)>,
    pub pending_requests: i64,
    pub drift: i64,
    pub provisioning: i64,
    /// (id, name, state, CPUs, vCPUs allocated, memory KiB, memory allocated KiB) of the
    /// fullest hosts by memory.
    pub busiest_hosts: Vec<BusyHost>,
    /// The server processes sharing the database, live ones first.
    #[serde(default)]
    pub replicas: Vec<ReplicaInfo>,
    /// VMs whose CPU is unusual for them now (firing anomaly alerts), newest first.
    #[serde(default)]
    pub anomalies: Vec<Anomaly>,
    /// Hosts whose libvirt or QEMU is below the fleet's minimum, and the minimum.
    #[serde(default)]
    pub outdated_hosts: Vec<OutdatedHost>,
    #[serde(default)]
    pub minimum_versions: String,
}

/// A VM behaving unlike its own history (an anomaly alert that is firing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub vm: Uuid,
    pub host_id: Option<Uuid>,
    pub vm_name: String,
    pub tenant_name: Option<String>,
    /// "95 % at 03:00 UTC; usually 4 % at that hour (robust z = 60.7)."
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// A server process sharing the database (a replica), as the others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: Uuid,
    /// Where it listens, as it was configured.
    pub address: String,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    /// Beat within the last few seconds and not stopped.
    pub alive: bool,
    /// Hosts whose actor it runs (whose lease it holds).
    #[serde(default)]
    pub hosts: i64,
    /// The replica that served this answer.
    pub this: bool,
}

#[server(prefix = "/api", endpoint = "fleet_dashboard")]
pub async fn get_fleet_dashboard() -> Result<FleetDashboard, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.dashboard(&req).await)
}

/// What a chart's values measure: for its axis, its tooltips and its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChartUnit {
    Percent,
    Bytes,
    BytesPerSecond,
    Count,
}

impl ChartUnit {
    /// "42 %", "1.5 GiB", "300 kB/s", "12".
    pub fn format(self, v: f64) -> String {
        fn scaled(v: f64, units: &[&str], step: f64) -> String {
            let mut v = v;
            let mut i = 0;
            while v.abs() >= step && i + 1 < units.len() {
                v /= step;
                i += 1;
            }
            if v.abs() >= 100.0 || v == v.trunc() {
                format!("{v:.0} {}", units[i])
            } else {
                format!("{v:.1} {}", units[i])
            }
        }
        match self {
            ChartUnit::Percent => format!("{v:.0} %"),
            ChartUnit::Bytes => scaled(v, &["B", "KiB", "MiB", "GiB", "TiB"], 1024.0),
            ChartUnit::BytesPerSecond => scaled(v, &["B/s", "kB/s", "MB/s", "GB/s"], 1000.0),
            ChartUnit::Count => format!("{v:.0}"),
        }
    }
}

/// One line of a chart: its label and its points as (milliseconds since the epoch, average
/// over the bucket), sorted by time; a missing bucket is a gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartLine {
    pub label: String,
    pub points: Vec<(i64, f64)>,
}

/// A chart's data, drawn in the browser: title, unit, span, bucket size, lines, and its text
/// alternative (average, peak and latest), which the page shows as the caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartView {
    pub title: String,
    pub unit: ChartUnit,
    pub from_ms: i64,
    pub to_ms: i64,
    pub resolution_s: i64,
    pub lines: Vec<ChartLine>,
    pub summary: String,
}

/// The ranges the range picker offers, as (value, label).
pub const RANGES: [(&str, &str); 5] = [
    ("6h", "6 hours"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("1y", "1 year"),
];

/// Fleet CPU, memory and running VMs over `range` (6h, 24h, 7d, 30d, 1y).
#[server(prefix = "/api", endpoint = "fleet_charts")]
pub async fn fleet_charts(#[server(default)] range: String) -> Result<Vec<ChartView>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.charts(&req, &range).await)
}

/// A VM's CPU, memory, disk and network over `range`.
#[server(prefix = "/api", endpoint = "vm_charts")]
pub async fn vm_charts(
    host_id: Uuid,
    uuid: Uuid,
    #[server(default)] range: String,
) -> Result<Vec<ChartView>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .vm_charts(&req, host_id, uuid, &range)
            .await,
    )
}

/// One host's allocated memory as a share of its own, now and after the advised moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostBalance {
    pub id: Uuid,
    pub name: String,
    pub before_pct: f64,
    pub after_pct: f64,
}

/// One advised move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveAdvice {
    pub vm: Uuid,
    pub vm_name: String,
    pub from_id: Uuid,
    pub from: String,
    #[serde(default)]
    pub to_id: Uuid,
    pub to: String,
    pub memory_mib: i64,
    pub vcpus: i32,
}

/// Rebalancing advice: the moves that even out the hosts' memory, and their effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rebalancing {
    pub mean_pct: f64,
    pub margin_pct: f64,
    pub hosts: Vec<HostBalance>,
    pub moves: Vec<MoveAdvice>,
    /// Fullest minus emptiest host, in points, now and after the moves.
    pub spread_before: f64,
    pub spread_after: f64,
}

/// Moves a VM to another host (a cold migration, while it is off).
#[server(prefix = "/api", endpoint = "move_vm")]
pub async fn move_vm(host_id: Uuid, uuid: Uuid, target_host: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .fleet
            .move_vm(&req, host_id, uuid, target_host)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "rebalance_advice")]
pub async fn rebalance_advice() -> Result<Rebalancing, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.fleet.rebalance(&req).await)
}
