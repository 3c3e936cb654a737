//! Hosts and inventory: the backend of the `Fleet` seam (fleet admins only).
pub mod charts;
pub mod consoles;
use crate::accounts::AccountsBackend;
use crate::hypervisor::connection::Action;
use crate::hypervisor::Hypervisors;
use crate::hypervisor::{network, storage};
use crate::metering::metrics::Range;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz::{self, Access, VmFacts};
use crate::platform::db::{self, Scope};
use app::error::AppError;
use app::fleet::{
    version_string, BusyHost, ChartUnit, ChartView, DomainSummary, FleetDashboard, HostDetail,
    HostFilter, HostSummary, NetworkInfo, OperationInfo, PoolInfo, VmDetail, VolumeInfo,
};
use app::seam::{Fleet, RequestCtx};
use app::Page;
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub const DOMAINS_PER_PAGE: u32 = 50;
/// Host cards per page on the hosts page.
pub const HOSTS_PER_PAGE: u32 = 24;
/// Hosts whose libvirt library is older than this are flagged (8.0.0).
pub const MIN_LIBVIRT_VERSION: i64 = 8_000_000;

pub struct FleetBackend {
    pub pool: PgPool,
    pub hypervisors: Arc<Hypervisors>,
    pub accounts: AccountsBackend,
    /// How long a graceful shutdown may take before the VM is forced off.
    pub shutdown_timeout: std::time::Duration,
    pub queue: Arc<crate::platform::jobs::Queue>,
    pub vcpu_overcommit: f64,
    /// Where `test:///…` node files may be registered from (`--simulated-fleets-dir`); with
    /// none, only `test:///default`.
    pub simulated_fleets: Option<std::path::PathBuf>,
    /// The live-event generation (see `live::Live`) and the last dashboard computed at one:
    /// the figures are fleet-wide and the same for every fleet admin, so they are computed once
    /// per change (at most 3 s old, for changes that send no event, such as a host's state).
    pub live_generation: Arc<std::sync::atomic::AtomicU64>,
    pub dashboard: Arc<Kept<FleetDashboard>>,
    /// Rendered fleet charts per range, for one sample period.
    pub charts: std::collections::HashMap<Range, Arc<Kept<Vec<ChartView>>>>,
    /// What "now" is for the charts' ranges (tests move it).
    pub clock: Arc<dyn crate::platform::clock::Clock>,
}

/// The fleet dashboard's figures, read from the inventory and the requests.
async fn dashboard_figures(pool: PgPool, vcpu_overcommit: f64) -> Result<FleetDashboard, AppError> {
    let mut tx = db::begin(&pool, Scope::fleet()).await?;
    #[derive(sqlx::FromRow)]
    struct Totals {
        hosts: i64,
        connected: i64,
        lost: i64,
        maintenance: i64,
        cpus: i64,
        memory_kib: i64,
        vcpus_allocated: i64,
        memory_allocated_kib: i64,
        pending_requests: i64,
        drift: i64,
        provisioning: i64,
    }
    let t: Totals = sqlx::query_as(
            "SELECT (SELECT count(*) FROM hosts) AS hosts,
                    (SELECT count(*) FROM hosts WHERE state = 'connected') AS connected,
                    (SELECT count(*) FROM hosts WHERE state = 'lost') AS lost,
                    (SELECT count(*) FROM hosts WHERE maintenance) AS maintenance,
                    (SELECT coalesce(sum(cpus), 0)::int8 FROM hosts WHERE state = 'connected') AS cpus,
                    (SELECT coalesce(sum(memory_kib), 0)::int8 FROM hosts WHERE state = 'connected') AS memory_kib,
                    (SELECT coalesce(sum(d.vcpus), 0)::int8 FROM domains d JOIN hosts h ON h.id = d.host_id
                      WHERE h.state = 'connected' AND d.missing_since IS NULL AND d.state NOT IN ('shutoff', 'crashed')) AS vcpus_allocated,
                    (SELECT coalesce(sum(d.memory_kib), 0)::int8 FROM domains d JOIN hosts h ON h.id = d.host_id
                      WHERE h.state = 'connected' AND d.missing_since IS NULL AND d.state NOT IN ('shutoff', 'crashed')) AS memory_allocated_kib,
                    (SELECT count(*) FROM requests WHERE state = 'pending_approval') AS pending_requests,
                    (SELECT count(*) FROM domains WHERE NOT managed AND missing_since IS NULL) AS drift,
                    (SELECT count(*) FROM vms WHERE phase = 'pending' OR vm_phase_building(phase)) AS provisioning",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db::internal)?;
    let vms_by_state: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM domains WHERE missing_since IS NULL GROUP BY state ORDER BY count(*) DESC, state",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
    let top_tenants: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT t.name, coalesce(sum(d.vcpus), 0)::int8, coalesce(sum(d.memory_kib), 0)::int8, count(*)
             FROM domains d JOIN tenants t ON t.id = d.tenant_id
             WHERE d.missing_since IS NULL GROUP BY t.name ORDER BY 2 DESC, 3 DESC LIMIT 5",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
    // The fullest hosts by memory (what placement runs out of first), with their vCPUs.
    type Busy = (Uuid, String, String, i64, i64, i64, i64);
    let busiest: Vec<Busy> = sqlx::query_as(
            "SELECT h.id, h.name, h.state, coalesce(h.cpus, 0)::int8, coalesce(a.vcpus, 0)::int8,
                    coalesce(h.memory_kib, 0)::int8, coalesce(a.memory_kib, 0)::int8
             FROM hosts h LEFT JOIN (
                 SELECT host_id, sum(vcpus) AS vcpus, sum(memory_kib) AS memory_kib FROM domains
                 WHERE missing_since IS NULL AND state NOT IN ('shutoff', 'crashed') GROUP BY host_id
             ) a ON a.host_id = h.id
             ORDER BY coalesce(a.memory_kib, 0)::float8 / greatest(h.memory_kib, 1) DESC, h.name
             LIMIT 8",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
    Ok(FleetDashboard {
        busiest_hosts: busiest
            .into_iter()
            .map(|(id, name, state, cpus, vcpus, mem, mem_used)| BusyHost {
                id,
                name,
                state,
                cpus,
                vcpus_allocated: vcpus,
                memory_kib: mem,
                memory_allocated_kib: mem_used,
            })
            .collect(),
        hosts: t.hosts,
        connected: t.connected,
        lost: t.lost,
        maintenance: t.maintenance,
        cpus: t.cpus,
        memory_kib: t.memory_kib,
        vcpus_allocated: t.vcpus_allocated,
        memory_allocated_kib: t.memory_allocated_kib,
        vcpu_overcommit,
        vms_by_state,
        top_tenants,
        pending_requests: t.pending_requests,
        drift: t.drift,
        provisioning: t.provisioning,
    })
}

async fn fleet_charts(
    pool: PgPool,
    range: Range,
    now: time::OffsetDateTime,
) -> Result<Vec<ChartView>, AppError> {
    let series = crate::metering::metrics::fleet_series(&pool, range, now)
        .await
        .map_err(db::internal)?;
    Ok([
        ("Fleet CPU busy", "CPU", "cpu", ChartUnit::Percent),
        ("Fleet memory used", "Memory", "mem", ChartUnit::Bytes),
        ("Running VMs", "VMs", "vms", ChartUnit::Count),
    ]
    .into_iter()
    .map(|(title, label, key, unit)| {
        chart_view(title, unit, range, now, vec![(label, series.get(key))])
    })
    .collect())
}

/// A fleet-wide figure (the same for every fleet admin) computed by one request at a time and,
/// once it exists, served while a newer one is computed in the background, so no request waits
/// for a periodic refresh. A new `version` (a live event happened) is computed before
/// answering: a page that refetches because of an event sees the change.
pub struct Kept<T> {
    value: std::sync::RwLock<Option<(u64, std::time::Instant, T)>>,
    refreshing: std::sync::atomic::AtomicBool,
    computing: tokio::sync::Mutex<()>,
    ttl: std::time::Duration,
}

impl<T: Clone + Send + Sync + 'static> Kept<T> {
    pub fn new(ttl: std::time::Duration) -> Arc<Self> {
        Arc::new(Kept {
            value: std::sync::RwLock::new(None),
            refreshing: Default::default(),
            computing: tokio::sync::Mutex::new(()),
            ttl,
        })
    }

    fn current(&self, version: u64) -> Option<(bool, T)> {
        let guard = self.value.read().expect("kept value");
        match &*guard {
            Some((v, at, value)) if *v == version => {
                Some((at.elapsed() >= self.ttl, value.clone()))
            }
            _ => None,
        }
    }

    fn store(&self, version: u64, value: T) {
        *self.value.write().expect("kept value") =
            Some((version, std::time::Instant::now(), value));
    }

    pub async fn get<F, Fut>(self: &Arc<Self>, version: u64, compute: F) -> Result<T, AppError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, AppError>> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        if let Some((stale, value)) = self.current(version) {
            if stale && !self.refreshing.swap(true, Ordering::SeqCst) {
                let me = self.clone();
                tokio::spawn(async move {
                    match compute().await {
                        Ok(v) => me.store(version, v),
                        Err(e) => tracing::warn!(error = %e, "refreshing a fleet figure"),
                    }
                    me.refreshing.store(false, Ordering::SeqCst);
                });
            }
            return Ok(value);
        }
        let _one = self.computing.lock().await;
        if let Some((_, value)) = self.current(version) {
            return Ok(value);
        }
        let value = compute().await?;
        self.store(version, value.clone());
        Ok(value)
    }
}

fn parse_range(range: &str) -> Result<Range, AppError> {
    let range = if range.is_empty() { "24h" } else { range };
    Range::parse(range)
        .ok_or_else(|| AppError::field("range", "Choose a range of 6h, 24h, 7d, 30d or 1y."))
}

fn chart_view(
    title: &str,
    unit: ChartUnit,
    range: Range,
    now: time::OffsetDateTime,
    lines: Vec<(&str, Option<&Vec<crate::metering::metrics::Point>>)>,
) -> ChartView {
    let chart = charts::Chart {
        title,
        unit,
        lines: lines
            .iter()
            .map(|(label, points)| charts::Line {
                label,
                points: points.map(Vec::as_slice).unwrap_or(&[]),
            })
            .collect(),
        from: now - range.span(),
        to: now,
        resolution: i64::from(range.resolution()),
    };
    let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    ChartView {
        title: title.to_string(),
        unit,
        from_ms: ms(chart.from),
        to_ms: ms(chart.to),
        resolution_s: chart.resolution,
        lines: chart
            .lines
            .iter()
            .map(|l| app::fleet::ChartLine {
                label: l.label.to_string(),
                points: l
                    .points
                    .iter()
                    .filter(|p| p.avg.is_finite())
                    .map(|p| (ms(p.at), p.avg))
                    .collect(),
            })
            .collect(),
        summary: charts::summary(&chart),
    }
}

/// A domain row as the VM page and the lifecycle actions need it.
#[derive(sqlx::FromRow, Clone)]
struct VmRow {
    host_id: Uuid,
    host_name: String,
    uuid: Uuid,
    name: String,
    state: String,
    vcpus: i32,
    memory_kib: i64,
    managed: bool,
    tenant_id: Option<Uuid>,
    tenant_name: Option<String>,
    owner_id: Option<Uuid>,
    owner_email: Option<String>,
    missing: bool,
    state_since: time::OffsetDateTime,
    disks: serde_json::Value,
    nics: serde_json::Value,
}

const VM_QUERY: &str = "
    SELECT d.host_id, h.name AS host_name, d.uuid, d.name, d.state, d.vcpus, d.memory_kib, d.managed,
           d.tenant_id, t.name AS tenant_name, d.owner_id, u.email AS owner_email,
           d.missing_since IS NOT NULL AS missing, d.state_since, d.disks, d.nics
    FROM domains d JOIN hosts h ON h.id = d.host_id
    LEFT JOIN tenants t ON t.id = d.tenant_id LEFT JOIN users u ON u.id = d.owner_id
    WHERE d.host_id = $1 AND d.uuid = $2";

/// A host name: lowercase letters, digits and hyphens, at most 63, starting alphanumeric.
pub fn parse_host_name(raw: &str) -> Result<String, AppError> {
    let s = raw.trim();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(AppError::field(
            "name",
            "Use 1 to 63 lowercase letters, digits and hyphens, not starting with a hyphen.",
        ))
    }
}

/// A libvirt URI of a kind Concierge manages.
pub fn parse_uri(raw: &str) -> Result<String, AppError> {
    let s = raw.trim();
    const SCHEMES: [&str; 5] = [
        "qemu:///",
        "qemu+ssh://",
        "qemu+tls://",
        "qemu+tcp://",
        "test:///",
    ];
    if s.is_empty() {
        return Err(AppError::field(
            "uri",
            "Enter a libvirt URI, e.g. qemu:///system.",
        ));
    }
    if s.len() > 500 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AppError::field(
            "uri",
            "A URI has no spaces or control characters and at most 500 characters.",
        ));
    }
    if !SCHEMES.iter().any(|p| s.starts_with(p)) {
        return Err(AppError::field(
            "uri",
            "Use qemu:///system, qemu:///session, qemu+ssh://…, qemu+tls://… or test:///…",
        ));
    }
    Ok(s.to_string())
}

/// Whether `uri` names a simulated host's node file, which is allowed only inside the
/// configured directory of simulated fleets (a fleet admin must not be able to make the
/// server open any file it can read). `test:///default` is always allowed.
fn simulated_file(uri: &str, allowed: Option<&std::path::Path>) -> Result<bool, AppError> {
    let Some(path) = uri.strip_prefix("test://") else {
        return Ok(false);
    };
    if path == "/default" {
        return Ok(false);
    }
    let refused = || {
        AppError::field(
            "uri",
            "Simulated hosts are test:///default, or node files inside the server's --simulated-fleets-dir.",
        )
    };
    let dir = allowed.ok_or_else(refused)?;
    // Canonical forms, so `..` and symbolic links cannot step outside the directory.
    let (Ok(dir), Ok(file)) = (
        std::fs::canonicalize(dir),
        std::fs::canonicalize(std::path::Path::new(path)),
    ) else {
        return Err(refused());
    };
    if file.starts_with(&dir) && file.is_file() {
        Ok(true)
    } else {
        Err(refused())
    }
}

pub fn parse_labels(raw: &str) -> Result<Vec<String>, AppError> {
    let labels: Vec<String> = raw
        .split(',')
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .collect();
    if labels.len() > 16
        || labels.iter().any(|l| {
            l.len() > 32
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    {
        return Err(AppError::field(
            "labels",
            "Up to 16 comma-separated labels of letters, digits, '-', '_' or '.'.",
        ));
    }
    Ok(labels)
}

#[derive(sqlx::FromRow)]
struct HostRow {
    id: Uuid,
    name: String,
    uri: String,
    labels: Vec<String>,
    schedulable: bool,
    maintenance: bool,
    simulated: bool,
    state: String,
    state_reason: Option<String>,
    state_since: time::OffsetDateTime,
    cpus: Option<i32>,
    memory_kib: Option<i64>,
    free_memory_kib: Option<i64>,
    lib_version: Option<i64>,
    hv_type: Option<String>,
    hv_version: Option<i64>,
    last_sync_at: Option<time::OffsetDateTime>,
    vcpus_allocated: i64,
    memory_allocated_kib: i64,
    domains: i64,
    running: i64,
    storage_capacity: i64,
    storage_available: i64,
    domain_type: Option<String>,
}

const HOST_QUERY: &str = "
    SELECT h.id, h.name, h.uri, h.labels, h.schedulable, h.maintenance, h.simulated, h.state, h.state_reason,
           h.state_since, h.cpus, h.memory_kib, h.free_memory_kib, h.lib_version, h.hv_type, h.hv_version,
           h.last_sync_at, h.domain_type,
           coalesce(d.vcpus, 0) AS vcpus_allocated, coalesce(d.memory, 0) AS memory_allocated_kib,
           coalesce(d.n, 0) AS domains, coalesce(d.running, 0) AS running,
           coalesce(p.capacity, 0) AS storage_capacity, coalesce(p.available, 0) AS storage_available
    FROM hosts h
    LEFT JOIN (SELECT host_id, sum(vcpus)::int8 AS vcpus, sum(memory_kib)::int8 AS memory, count(*) AS n,
                      count(*) FILTER (WHERE state = 'running') AS running
               FROM domains WHERE missing_since IS NULL GROUP BY host_id) d ON d.host_id = h.id
    LEFT JOIN (SELECT host_id, sum(capacity)::int8 AS capacity, sum(available)::int8 AS available
               FROM storage_pools WHERE missing_since IS NULL GROUP BY host_id) p ON p.host_id = h.id";

impl From<HostRow> for HostSummary {
    fn from(r: HostRow) -> Self {
        HostSummary {
            id: r.id,
            name: r.name,
            uri: r.uri,
            labels: r.labels,
            schedulable: r.schedulable,
            maintenance: r.maintenance,
            simulated: r.simulated,
            state: r.state,
            state_reason: r.state_reason,
            state_since: r.state_since,
            cpus: r.cpus,
            memory_kib: r.memory_kib,
            free_memory_kib: r.free_memory_kib,
            vcpus_allocated: r.vcpus_allocated,
            vcpu_capacity: 0,
            memory_allocated_kib: r.memory_allocated_kib,
            domains: r.domains,
            running: r.running,
            storage_capacity: r.storage_capacity,
            storage_available: r.storage_available,
            needs_update: r.lib_version.is_some_and(|v| v < MIN_LIBVIRT_VERSION),
            lib_version: r.lib_version.map(version_string),
            hv_type: r.hv_type,
            domain_type: r.domain_type,
            hv_version: r.hv_version.map(version_string),
            last_sync_at: r.last_sync_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DomainRow {
    host_id: Uuid,
    host_name: String,
    uuid: Uuid,
    name: String,
    state: String,
    vcpus: i32,
    memory_kib: i64,
    managed: bool,
    tenant_name: Option<String>,
    owner_email: Option<String>,
    missing: bool,
    state_since: time::OffsetDateTime,
    total: i64,
}

impl From<DomainRow> for DomainSummary {
    fn from(r: DomainRow) -> Self {
        DomainSummary {
            host_id: r.host_id,
            host_name: r.host_name,
            uuid: r.uuid,
            name: r.name,
            state: r.state,
            vcpus: r.vcpus,
            memory_kib: r.memory_kib,
            managed: r.managed,
            tenant_name: r.tenant_name,
            owner_email: r.owner_email,
            missing: r.missing,
            state_since: r.state_since,
        }
    }
}

const DOMAIN_QUERY: &str = "
    SELECT d.host_id, h.name AS host_name, d.uuid, d.name, d.state, d.vcpus, d.memory_kib, d.managed,
           t.name AS tenant_name, u.email AS owner_email, d.missing_since IS NOT NULL AS missing,
           d.state_since, count(*) OVER () AS total
    FROM domains d JOIN hosts h ON h.id = d.host_id
    LEFT JOIN tenants t ON t.id = d.tenant_id LEFT JOIN users u ON u.id = d.owner_id";

impl FleetBackend {
    /// Loads a VM the actor may manage (`authz::acts_on_vm`; unmanaged domains: fleet admins
    /// only) with the transaction scope of the VM's own tenant, so its operation rows land in
    /// that tenant whichever of the actor's tenants came first. Everyone else is refused as
    /// `access` says (`authz::refuse`).
    async fn authorized_vm(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        access: Access,
    ) -> Result<(VmRow, Scope), AppError> {
        let actor = req.actor()?;
        // One fleet-scoped read; the rule below is the authorisation.
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let row: Option<VmRow> = sqlx::query_as(VM_QUERY)
            .bind(host_id)
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)?;
        db::done(tx);
        let row = row.ok_or_else(|| AppError::NotFound("VM".into()))?;
        let facts = VmFacts {
            managed: row.managed,
            tenant: row.tenant_id,
            owner: row.owner_id,
        };
        if !authz::acts_on_vm(actor, &facts) {
            return Err(authz::refuse(access, "VM"));
        }
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

    async fn host_summary(&self, tx: &mut db::Tx, id: Uuid) -> Result<HostSummary, AppError> {
        let row: Option<HostRow> = sqlx::query_as(&format!("{HOST_QUERY} WHERE h.id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db::internal)?;
        row.map(|r| self.summary(r))
            .ok_or_else(|| AppError::NotFound("Host".into()))
    }

    /// What depends on each volume of a pool: templates whose base image it is, portal VMs
    /// and other domains whose disk it is, and linked clones backed by it.
    async fn volume_users(
        &self,
        host_id: Uuid,
        pool: &str,
        facts: &[storage::VolumeFacts],
    ) -> Result<std::collections::HashMap<String, Vec<String>>, AppError> {
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
        .await
        .map_err(db::internal)?;
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
        .await
        .map_err(db::internal)?;
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

    /// The host as pages show it, with its vCPU capacity under this server's overcommit.
    fn summary(&self, row: HostRow) -> HostSummary {
        let mut h = HostSummary::from(row);
        h.vcpu_capacity = (f64::from(h.cpus.unwrap_or(0)) * self.vcpu_overcommit).floor() as i64;
        h
    }

    async fn domains_page(
        &self,
        tx: &mut db::Tx,
        filter: &str,
        bind_host: Option<Uuid>,
        search: &str,
        page: u32,
    ) -> Result<Page<DomainSummary>, AppError> {
        let page = page.max(1);
        let rows: Vec<DomainRow> = sqlx::query_as(&format!(
            "{DOMAIN_QUERY} WHERE {filter} AND ($2 = '' OR d.name ILIKE '%' || $2 || '%')
             ORDER BY d.name, d.uuid LIMIT $3 OFFSET $4"
        ))
        .bind(bind_host)
        .bind(db::escape_like(search))
        .bind(i64::from(DOMAINS_PER_PAGE))
        .bind(i64::from(DOMAINS_PER_PAGE) * i64::from(page - 1))
        .fetch_all(&mut **tx)
        .await
        .map_err(db::internal)?;
        let total = rows.first().map(|r| r.total).unwrap_or(0);
        Ok(Page {
            items: rows.into_iter().map(Into::into).collect(),
            page,
            per_page: DOMAINS_PER_PAGE,
            total,
        })
    }
}

#[async_trait]
impl Fleet for FleetBackend {
    async fn hosts(&self, req: &RequestCtx) -> Result<Vec<HostSummary>, AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let rows: Vec<HostRow> = sqlx::query_as(&format!("{HOST_QUERY} ORDER BY h.name"))
            .fetch_all(&mut *tx)
            .await
            .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;
        Ok(rows.into_iter().map(|r| self.summary(r)).collect())
    }

    async fn host_page(
        &self,
        req: &RequestCtx,
        filter: HostFilter,
    ) -> Result<Page<HostSummary>, AppError> {
        req.fleet_admin()?;
        let page = filter.page.max(1);
        let order = db::order_by(
            &filter.sort,
            &[
                ("name", "h.name"),
                (
                    "memory",
                    "coalesce(d.memory, 0)::float8 / greatest(h.memory_kib, 1) DESC, h.name",
                ),
                ("domains", "coalesce(d.n, 0) DESC, h.name"),
                ("state", "h.state, h.name"),
            ],
        )?;
        let state = db::state_filter(
            &filter.state,
            ["connected", "lost", "connecting", "maintenance"],
        )?;
        let (search, pattern) = db::search_pattern(&filter.search)?;
        let cond = "($1 = '' OR h.name ILIKE $2 OR EXISTS (SELECT 1 FROM unnest(h.labels) l WHERE l ILIKE $2))
             AND ($3 = '' OR ($3 = 'maintenance' AND h.maintenance) OR h.state = $3)";
        let mut args = sqlx::postgres::PgArguments::default();
        db::arg(&mut args, search)?;
        db::arg(&mut args, &pattern)?;
        db::arg(&mut args, state)?;
        let (limit, page_args) = db::page_args(&args, HOSTS_PER_PAGE, page)?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let rows: Vec<HostRow> = sqlx::query_as_with(
            &format!("{HOST_QUERY} WHERE {cond} ORDER BY {order} {limit}"),
            page_args,
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        let total: i64 =
            sqlx::query_scalar_with(&format!("SELECT count(*) FROM hosts h WHERE {cond}"), args)
                .fetch_one(&mut *tx)
                .await
                .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;
        Ok(Page {
            items: rows.into_iter().map(|r| self.summary(r)).collect(),
            page,
            per_page: HOSTS_PER_PAGE,
            total,
        })
    }

    #[tracing::instrument(skip_all)]
    async fn charts(&self, req: &RequestCtx, range: &str) -> Result<Vec<ChartView>, AppError> {
        req.fleet_admin()?;
        let range = parse_range(range)?;
        // Every fleet admin sees the same charts; they change once per sample period.
        let (pool, clock) = (self.pool.clone(), self.clock.clone());
        self.charts[&range]
            .get(0, move || fleet_charts(pool.clone(), range, clock.now()))
            .await
    }

    async fn vm_charts(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        range: &str,
    ) -> Result<Vec<ChartView>, AppError> {
        let range = parse_range(range)?;
        let (_, scope) = self.authorized_vm(req, host_id, uuid, Access::See).await?;
        let now = self.clock.now();
        let s = crate::metering::metrics::subject_series(&self.pool, scope, uuid, range, now)
            .await
            .map_err(db::internal)?;
        Ok(vec![
            chart_view(
                "CPU",
                ChartUnit::Percent,
                range,
                now,
                vec![("CPU", s.get("cpu"))],
            ),
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

    async fn dashboard(&self, req: &RequestCtx) -> Result<FleetDashboard, AppError> {
        req.fleet_admin()?;
        // Versioned by the live-event generation: after an event the figures are computed
        // again before answering (the page refetches because of that event).
        let generation = self
            .live_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let (pool, overcommit) = (self.pool.clone(), self.vcpu_overcommit);
        self.dashboard
            .get(generation, move || {
                dashboard_figures(pool.clone(), overcommit)
            })
            .await
    }

    async fn register(
        &self,
        req: &RequestCtx,
        name: &str,
        uri: &str,
        labels: &str,
        schedulable: bool,
        maintenance: bool,
    ) -> Result<HostSummary, AppError> {
        req.fleet_admin()?;
        let (name, uri, labels) =
            match (parse_host_name(name), parse_uri(uri), parse_labels(labels)) {
                (Ok(n), Ok(u), Ok(l)) => (n, u, l),
                (n, u, l) => return Err(AppError::merge([n.err(), u.err(), l.err()])),
            };
        let simulated_file = simulated_file(&uri, self.simulated_fleets.as_deref())?;
        // Saving tests the connection; libvirt's own words go next to the URI, except for a
        // simulated host's file, whose parse errors would quote the file's content.
        let facts = crate::hypervisor::probe(&uri).await.map_err(|e| {
            let message = if simulated_file {
                "Could not connect: that file is not a libvirt test-driver node file.".to_string()
            } else {
                format!("Could not connect: {e}")
            };
            AppError::field("uri", message)
        })?;
        let simulated = uri.starts_with("test:");
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO hosts (name, uri, labels, schedulable, maintenance, simulated, cpus, memory_kib, lib_version, hv_type, hv_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(&name)
        .bind(&uri)
        .bind(&labels)
        .bind(schedulable)
        .bind(maintenance)
        .bind(simulated)
        .bind(facts.cpus)
        .bind(facts.memory_kib)
        .bind(facts.lib_version)
        .bind(&facts.hv_type)
        .bind(facts.hv_version)
        .fetch_one(&mut *tx)
        .await
        .map_err(host_constraint)?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("host.register", "host", id).after(json!({
                "name": name, "uri": uri, "labels": labels, "schedulable": schedulable, "maintenance": maintenance
            })),
        )
        .await?;
        let summary = self.host_summary(&mut tx, id).await?;
        tx.commit().await.map_err(host_constraint)?;
        self.hypervisors.start(id, uri);
        Ok(summary)
    }

    async fn host(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        search: &str,
        page: u32,
    ) -> Result<HostDetail, AppError> {
        req.fleet_admin()?;
        if search.chars().count() > 100 {
            return Err(AppError::field(
                "search",
                "Search for at most 100 characters.",
            ));
        }
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let host = self.host_summary(&mut tx, host_id).await?;
        #[derive(sqlx::FromRow)]
        struct P {
            name: String,
            pool_type: Option<String>,
            path: Option<String>,
            active: bool,
            capacity: i64,
            allocation: i64,
            available: i64,
            missing: bool,
        }
        let pools: Vec<P> = sqlx::query_as(
            "SELECT name, pool_type, path, active, capacity, allocation, available, missing_since IS NOT NULL AS missing
             FROM storage_pools WHERE host_id = $1 ORDER BY name",
        )
        .bind(host_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        #[derive(sqlx::FromRow)]
        struct N {
            name: String,
            active: bool,
            forward_mode: Option<String>,
            bridge: Option<String>,
            missing: bool,
        }
        let networks: Vec<N> = sqlx::query_as(
            "SELECT name, active, forward_mode, bridge, missing_since IS NOT NULL AS missing FROM networks WHERE host_id = $1 ORDER BY name",
        )
        .bind(host_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        let domains = self
            .domains_page(
                &mut tx,
                "d.host_id = $1 AND d.missing_since IS NULL",
                Some(host_id),
                search.trim(),
                page,
            )
            .await?;
        let missing: Vec<DomainRow> = sqlx::query_as(&format!(
            "{DOMAIN_QUERY} WHERE d.host_id = $1 AND d.missing_since IS NOT NULL
             ORDER BY d.missing_since DESC LIMIT 100"
        ))
        .bind(host_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;
        Ok(HostDetail {
            host,
            pools: pools
                .into_iter()
                .map(|p| PoolInfo {
                    name: p.name,
                    pool_type: p.pool_type,
                    path: p.path,
                    active: p.active,
                    capacity: p.capacity,
                    allocation: p.allocation,
                    available: p.available,
                    missing: p.missing,
                })
                .collect(),
            networks: networks
                .into_iter()
                .map(|n| NetworkInfo {
                    name: n.name,
                    active: n.active,
                    forward_mode: n.forward_mode,
                    bridge: n.bridge,
                    missing: n.missing,
                })
                .collect(),
            domains,
            missing: missing.into_iter().map(Into::into).collect(),
        })
    }

    async fn forget(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<(), AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let row: Option<(String, bool, Option<Uuid>)> = sqlx::query_as(
            "SELECT name, missing_since IS NOT NULL, tenant_id FROM domains WHERE host_id = $1 AND uuid = $2 FOR UPDATE",
        )
        .bind(host_id)
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db::internal)?;
        let (name, missing, tenant) = row.ok_or_else(|| AppError::NotFound("Domain".into()))?;
        if !missing {
            return Err(AppError::Conflict(format!(
                "{name} is still on its host: only a domain that vanished can be forgotten."
            )));
        }
        // A portal VM whose domain vanished: its record is closed and its quota released by
        // the same (idempotent) job that deletes VMs.
        let portal = sqlx::query(
            "UPDATE vms SET phase = 'deleting', updated_at = now() WHERE uuid = $1 AND host_id = $2 AND deleted_at IS NULL",
        )
        .bind(uuid)
        .bind(host_id)
        .execute(&mut *tx)
        .await
        .map_err(db::internal)?
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
            .await
            .map_err(db::internal)?;
        }
        sqlx::query("DELETE FROM domains WHERE host_id = $1 AND uuid = $2")
            .bind(host_id)
            .bind(uuid)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
        let mut event = Event::new("domain.forget", "domain", uuid)
            .after(json!({ "name": name, "host_id": host_id, "portal_vm": portal }));
        event.tenant_id = tenant;
        audit::record(&mut tx, &Origin::of(req), event).await?;
        tx.commit().await.map_err(db::internal)?;
        if portal {
            self.queue.wake.notify_waiters();
        }
        Ok(())
    }

    async fn set_domain_type(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        domain_type: &str,
    ) -> Result<(), AppError> {
        req.fleet_admin()?;
        let value = match domain_type.trim() {
            "" => None,
            "kvm" => Some("kvm"),
            "qemu" => Some("qemu"),
            _ => {
                return Err(AppError::field(
                    "domain_type",
                    "Choose detected, kvm or qemu.",
                ))
            }
        };
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let before: Option<Option<String>> =
            sqlx::query_scalar("SELECT domain_type FROM hosts WHERE id = $1 FOR UPDATE")
                .bind(host_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db::internal)?;
        let before = before.ok_or_else(|| AppError::NotFound("Host".into()))?;
        sqlx::query("UPDATE hosts SET domain_type = $2 WHERE id = $1")
            .bind(host_id)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("host.domain_type", "host", host_id)
                .before(json!({ "domain_type": before }))
                .after(json!({ "domain_type": value })),
        )
        .await?;
        tx.commit().await.map_err(db::internal)
    }

    async fn reconcile(&self, req: &RequestCtx, host_id: Uuid) -> Result<(), AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        self.host_summary(&mut tx, host_id).await?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("host.reconcile", "host", host_id),
        )
        .await?;
        tx.commit().await.map_err(db::internal)?;
        self.hypervisors
            .reconcile(host_id)
            .await
            .map(|_| ())
            .map_err(AppError::Conflict)
    }

    async fn vm(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<VmDetail, AppError> {
        let (row, scope) = self.authorized_vm(req, host_id, uuid, Access::See).await?;
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
        let mut tx = db::begin(&self.pool, scope).await?;
        let ops: Vec<Op> = sqlx::query_as(
            "SELECT o.id, o.operation, o.status, o.error, o.detail, u.email AS actor_email, o.started_at, o.duration_ms
             FROM domain_operations o LEFT JOIN users u ON u.id = o.actor_id
             WHERE o.host_id = $1 AND o.domain_uuid = $2 ORDER BY o.id DESC LIMIT 20",
        )
        .bind(host_id)
        .bind(uuid)
        .fetch_all(&mut *tx)
        .await
        .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;
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
            domain: DomainSummary {
                host_id: row.host_id,
                host_name: row.host_name,
                uuid: row.uuid,
                name: row.name,
                state: row.state,
                vcpus: row.vcpus,
                memory_kib: row.memory_kib,
                managed: row.managed,
                tenant_name: row.tenant_name,
                owner_email: row.owner_email,
                missing: row.missing,
                state_since: row.state_since,
            },
        })
    }

    #[tracing::instrument(skip_all)]
    async fn vm_action(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        action: &str,
        confirm: &str,
    ) -> Result<(), AppError> {
        let action =
            Action::parse(action).ok_or_else(|| AppError::field("action", "Unknown action."))?;
        let (row, scope) = self.authorized_vm(req, host_id, uuid, Access::Act).await?;
        if row.missing {
            return Err(AppError::Conflict(
                "This VM is no longer on its host.".into(),
            ));
        }
        // A portal VM may also be confirmed by the name its owner gave it.
        let portal_name: Option<String> = if action == Action::Delete {
            let mut tx = db::begin(&self.pool, scope).await?;
            sqlx::query_scalar("SELECT name FROM vms WHERE uuid = $1 AND deleted_at IS NULL")
                .bind(uuid)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db::internal)?
        } else {
            None
        };
        if action == Action::Delete
            && confirm.trim() != row.name
            && portal_name.as_deref() != Some(confirm.trim())
        {
            return Err(AppError::field(
                "confirm",
                format!(
                    "Type the VM's name, {}, to confirm.",
                    portal_name.as_deref().unwrap_or(&row.name)
                ),
            ));
        }
        if action == Action::Shutdown {
            // One wait per VM: a second click would only stack up operations.
            let mut tx = db::begin(&self.pool, scope).await?;
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM jobs
                 WHERE kind = $1 AND key = $2 AND state IN ('queued', 'running'))",
            )
            .bind(crate::platform::jobs::JobKind::Shutdown.as_str())
            .bind(uuid)
            .fetch_one(&mut *tx)
            .await
            .map_err(db::internal)?;
            tx.commit().await.map_err(db::internal)?;
            if waiting {
                return Err(AppError::Conflict(
                    "This VM is already shutting down; it is forced off if the guest does not respond in time.".into(),
                ));
            }
        }
        self.run_operation(req, &row, scope, action).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn adopt(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        tenant_id: Uuid,
        owner_email: &str,
    ) -> Result<(), AppError> {
        req.fleet_admin()?;
        let email = crate::accounts::email::Email::parse(owner_email, "owner_email")?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let managed: Option<bool> = sqlx::query_scalar(
            "SELECT managed FROM domains WHERE host_id = $1 AND uuid = $2 FOR UPDATE",
        )
        .bind(host_id)
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db::internal)?;
        match managed {
            None => return Err(AppError::NotFound("VM".into())),
            Some(true) => return Err(AppError::Conflict("This VM is already managed.".into())),
            Some(false) => {}
        }
        let owner: Option<Uuid> = sqlx::query_scalar(
            "SELECT u.id FROM users u JOIN memberships m ON m.user_id = u.id AND m.tenant_id = $1
             WHERE lower(u.email) = $2 AND u.disabled_at IS NULL",
        )
        .bind(tenant_id)
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db::internal)?;
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
            .await
            .map_err(db::internal)?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new("vm.adopt", "domain", uuid)
                .tenant(tenant_id)
                .after(json!({ "host": host_id, "owner": email.as_str() })),
        )
        .await?;
        tx.commit().await.map_err(db::internal)
    }

    #[tracing::instrument(skip_all)]
    async fn create_pool(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        path: &str,
    ) -> Result<(), AppError> {
        req.fleet_admin()?;
        let (name, path) = match (
            storage::parse_name(name, "name"),
            storage::parse_dir(path, "path"),
        ) {
            (Ok(n), Ok(p)) => (n, p),
            (n, p) => return Err(AppError::merge([n.err(), p.err()])),
        };
        self.known_host(host_id).await?;
        let (n, p) = (name.clone(), path.clone());
        self.hypervisors
            .call(host_id, move |conn| {
                storage::create_dir_pool(conn, &n, &p).map(|_| ())
            })
            .await
            .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
        self.record(
            req,
            Event::new("pool.create", "pool", &name)
                .after(json!({ "host": host_id, "path": path })),
        )
        .await?;
        let _ = self.hypervisors.reconcile(host_id).await;
        Ok(())
    }

    async fn volumes(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        pool: &str,
    ) -> Result<Vec<VolumeInfo>, AppError> {
        req.fleet_admin()?;
        let pool = storage::parse_name(pool, "pool")?;
        self.known_host(host_id).await?;
        let p = pool.clone();
        let facts = self
            .hypervisors
            .call(host_id, move |conn| storage::volume_facts(conn, &p))
            .await
            .map_err(|e| AppError::field("pool", format!("libvirt refused: {e}")))?;
        let users = self.volume_users(host_id, &pool, &facts).await?;
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
    async fn create_volume(
        &self,
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
        let job: Box<dyn FnOnce(&virt::connect::Connect) -> Result<(), virt::error::Error> + Send> =
            match kind {
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
                        storage::create_volume(conn, &p, &n, gib << 30, storage::Format::Qcow2)
                            .map(|_| ())
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
        self.known_host(host_id).await?;
        self.hypervisors
            .call(host_id, job)
            .await
            .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
        self.record(
            req,
            Event::new("volume.create", "volume", format!("{pool}/{name}"))
                .after(json!({ "host": host_id, "kind": kind, "source": source, "capacity_gib": capacity_gib })),
        )
        .await?;
        let _ = self.hypervisors.reconcile(host_id).await;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn delete_volume(
        &self,
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
        self.known_host(host_id).await?;
        // Never delete what something depends on: a template's base image (its linked clones
        // would lose their backing file), a VM's disk.
        let p = pool.clone();
        let facts = self
            .hypervisors
            .call(host_id, move |conn| storage::volume_facts(conn, &p))
            .await
            .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
        if !facts.iter().any(|f| f.name == name) {
            return Err(AppError::NotFound("Volume".into()));
        }
        let users = self.volume_users(host_id, &pool, &facts).await?;
        if let Some(used) = users.get(&name).filter(|u| !u.is_empty()) {
            return Err(AppError::Conflict(format!(
                "{name} is in use ({}): it was not deleted.",
                used.join(", ")
            )));
        }
        let (p, n) = (pool.clone(), name.clone());
        self.hypervisors
            .call(host_id, move |conn| storage::delete_volume(conn, &p, &n))
            .await
            .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
        self.record(
            req,
            Event::new("volume.delete", "volume", format!("{pool}/{name}"))
                .after(json!({ "host": host_id })),
        )
        .await?;
        let _ = self.hypervisors.reconcile(host_id).await;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn define_network(
        &self,
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
        self.known_host(host_id).await?;
        let s = spec.clone();
        self.hypervisors
            .call(host_id, move |conn| network::define(conn, &s))
            .await
            .map_err(|e| AppError::field("name", format!("libvirt refused: {e}")))?;
        self.record(
            req,
            Event::new("network.define", "network", &spec.name)
                .after(json!({ "host": host_id, "xml": spec.xml() })),
        )
        .await?;
        let _ = self.hypervisors.reconcile(host_id).await;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn network_action(
        &self,
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
        self.known_host(host_id).await?;
        let (n, o) = (name.clone(), op.to_string());
        self.hypervisors
            .call(host_id, move |conn| match o.as_str() {
                "start" => network::set_active(conn, &n, true),
                "stop" => network::set_active(conn, &n, false),
                _ => network::delete(conn, &n),
            })
            .await
            .map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))?;
        self.record(
            req,
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
        .await?;
        let _ = self.hypervisors.reconcile(host_id).await;
        Ok(())
    }

    async fn drift(&self, req: &RequestCtx, page: u32) -> Result<Page<DomainSummary>, AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let page = self
            .domains_page(&mut tx, "NOT d.managed AND d.missing_since IS NULL AND ($1::uuid IS NULL OR d.host_id = $1)", None, "", page)
            .await?;
        tx.commit().await.map_err(db::internal)?;
        Ok(page)
    }
}

impl FleetBackend {
    /// NotFound unless the host is registered.
    async fn known_host(&self, host_id: Uuid) -> Result<(), AppError> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;
        found
            .map(|_| ())
            .ok_or_else(|| AppError::NotFound("Host".into()))
    }

    /// An audit row on its own (for changes made on a hypervisor rather than in the database).
    async fn record(&self, req: &RequestCtx, event: Event<'_>) -> Result<(), AppError> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        audit::record(&mut tx, &Origin::of(req), event).await?;
        tx.commit().await.map_err(db::internal)
    }

    /// Records the operation, runs it on the host's actor, records the outcome (and an audit
    /// row). Returns libvirt's error as a conflict the user can read.
    async fn run_operation(
        &self,
        req: &RequestCtx,
        row: &VmRow,
        scope: Scope,
        action: Action,
    ) -> Result<(), AppError> {
        let origin = Origin::of(req);
        let mut tx = db::begin(&self.pool, scope).await?;
        let op_id: i64 = sqlx::query_scalar(
            "INSERT INTO domain_operations (host_id, domain_uuid, tenant_id, actor_id, operation, status)
             VALUES ($1, $2, $3, $4, $5, 'running') RETURNING id",
        )
        .bind(row.host_id)
        .bind(row.uuid)
        .bind(row.tenant_id)
        .bind(origin.actor_id)
        .bind(action.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db::internal)?;
        tx.commit().await.map_err(db::internal)?;

        let started = std::time::Instant::now();
        let result = self
            .hypervisors
            .lifecycle(row.host_id, row.uuid, action)
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
                .await
                .map_err(db::internal)?;
            crate::provisioning::shutdown::watch(
                &mut tx,
                row.host_id,
                row.uuid,
                op_id,
                self.shutdown_timeout,
            )
            .await
            .map_err(db::internal)?;
        } else {
            sqlx::query(
                "UPDATE domain_operations SET status = $2, error = $3, finished_at = now(), duration_ms = $4 WHERE id = $1",
            )
            .bind(op_id)
            .bind(if result.is_ok() { "succeeded" } else { "failed" })
            .bind(result.as_ref().err())
            .bind(ms)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
        }
        let mut event = Event::new("vm.action", "domain", row.uuid).after(json!({
            "action": action.as_str(), "host": row.host_name, "name": row.name,
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
            .bind(row.uuid)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?
            .rows_affected();
            if marked > 0 {
                crate::platform::jobs::enqueue(
                    &mut tx,
                    crate::platform::jobs::JobKind::Delete,
                    row.uuid,
                    json!({ "reason": "deleted by its owner or an admin" }),
                    10,
                )
                .await
                .map_err(db::internal)?;
            }
            marked > 0
        } else {
            false
        };
        tx.commit().await.map_err(db::internal)?;
        if portal_vm || (action == Action::Shutdown && result.is_ok()) {
            self.queue.wake.notify_waiters();
        }
        result.map_err(|e| AppError::Conflict(format!("libvirt refused: {e}")))
    }
}

fn host_constraint(e: sqlx::Error) -> AppError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            Some("hosts_name_key") => {
                return AppError::field("name", "A host with that name is already registered.")
            }
            Some("hosts_uri_key") => {
                return AppError::field("uri", "That URI is already registered.")
            }
            _ => {}
        }
    }
    db::map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_fields_are_validated() {
        assert_eq!(parse_host_name(" kvm-01 ").unwrap(), "kvm-01");
        for bad in ["", "-a", "KVM", "a_b", &"a".repeat(64), "a b", "<x>"] {
            assert!(parse_host_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_uri("qemu:///system").is_ok());
        assert!(parse_uri("test:///default").is_ok());
        assert!(parse_uri("qemu+ssh://root@kvm1/system").is_ok());
        for bad in [
            "",
            "http://x",
            "qemu:///system; rm -rf /",
            "xen:///",
            "qemu:///sys\ntem",
        ] {
            assert!(
                parse_uri(bad).unwrap_err().field_message("uri").is_some(),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_labels("GPU, ssd ,,rack-1").unwrap(),
            vec!["gpu", "ssd", "rack-1"]
        );
        assert!(parse_labels("bad label").is_err());
    }
}
