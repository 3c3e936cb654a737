//! Hosts: registration, the host list and page, the domain type, manual reconciles.
use super::dashboard::*;
use super::*;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::list::{self, asc, desc, Order, Window};
use app::error::{AllValid, AppError};
use app::fleet::{
    version_string, HostDetail, HostFilter, HostForm, HostSummary, NetworkInfo, PoolInfo,
};
use app::seam::RequestCtx;
use app::{Page, Place};
use serde_json::json;
use uuid::Uuid;

pub(super) async fn hosts(b: &FleetBackend, req: &RequestCtx) -> Result<Vec<HostSummary>> {
    req.fleet_admin()?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let rows: Vec<HostRow> = sqlx::query_as(&format!("{HOST_QUERY} ORDER BY h.name"))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| b.summary(r)).collect())
}

/// The host list's orders (a few hundred hosts at most: paged by number).
const HOST_ORDERS: [Order; 4] = [
    Order {
        name: "name",
        key: &[asc("h.name", "text")],
    },
    Order {
        name: "memory",
        key: &[
            desc(
                "coalesce(d.memory, 0)::float8 / greatest(h.memory_kib, 1)",
                "float8",
            ),
            asc("h.name", "text"),
        ],
    },
    Order {
        name: "domains",
        key: &[desc("coalesce(d.n, 0)", "int8"), asc("h.name", "text")],
    },
    Order {
        name: "state",
        key: &[asc("h.state", "text"), asc("h.name", "text")],
    },
];

pub(super) async fn host_page(
    b: &FleetBackend,
    req: &RequestCtx,
    filter: HostFilter,
) -> Result<Page<HostSummary>> {
    req.fleet_admin()?;
    let place = Place {
        page: filter.page.max(1),
        ..Place::default()
    };
    let order = list::order(&filter.sort, &HOST_ORDERS)?;
    let state = list::state_filter(
        &filter.state,
        ["connected", "lost", "connecting", "maintenance"],
    )?;
    let (search, pattern) = list::search_pattern(&filter.search)?;
    let cond =
        "($1 = '' OR h.name ILIKE $2 OR EXISTS (SELECT 1 FROM unnest(h.labels) l WHERE l ILIKE $2))
         AND ($3 = '' OR ($3 = 'maintenance' AND h.maintenance) OR h.state = $3)";
    let mut args = sqlx::postgres::PgArguments::default();
    list::arg(&mut args, search)?;
    list::arg(&mut args, &pattern)?;
    list::arg(&mut args, state)?;
    let w = Window::new(order, &place, &args, HOSTS_PER_PAGE)?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let rows: Vec<HostRow> = sqlx::query_as_with(
        &format!("{HOST_QUERY} WHERE {cond} ORDER BY {} {}", w.pick, w.limit),
        w.args,
    )
    .fetch_all(&mut *tx)
    .await?;
    let total: i64 =
        sqlx::query_scalar_with(&format!("SELECT count(*) FROM hosts h WHERE {cond}"), args)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Page {
        items: rows.into_iter().map(|r| b.summary(r)).collect(),
        page: place.page,
        per_page: HOSTS_PER_PAGE,
        total,
        before: None,
        after: None,
    })
}

pub(super) async fn register(
    b: &FleetBackend,
    req: &RequestCtx,
    form: &HostForm,
) -> Result<HostSummary> {
    req.fleet_admin()?;
    let NewHost {
        name,
        uri,
        labels,
        schedulable,
        maintenance,
    } = NewHost::try_from(form)?;
    let simulated_file = simulated_file(&uri, b.simulated_fleets.as_deref())?;
    let ssh_host_key = pin_ssh_host_key(&uri, &form.ssh_host_key).await?;
    let open = crate::hypervisor::remote::effective(&uri, ssh_host_key.as_deref())
        .map_err(|e| AppError::field("uri", format!("Could not connect: {e}")))?;
    // Saving tests the connection; libvirt's own words go next to the URI, except for a
    // simulated host's file, whose parse errors would quote the file's content.
    let facts = crate::hypervisor::probe(&open).await.map_err(|e| {
        let message = if simulated_file {
            "Could not connect: that file is not a libvirt test-driver node file.".to_string()
        } else {
            format!("Could not connect: {e}")
        };
        AppError::field("uri", message)
    })?;
    let simulated = crate::hypervisor::is_test_driver(&uri);
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO hosts (name, uri, labels, schedulable, maintenance, simulated, cpus, memory_kib, lib_version, hv_type, hv_version, ssh_host_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
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
    .bind(&ssh_host_key)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("host.register", "host", id).after(json!({
            "name": name, "uri": uri, "labels": labels, "schedulable": schedulable, "maintenance": maintenance,
            "ssh_host_key": ssh_host_key,
        })),
    )
    .await?;
    let summary = b.host_summary(&mut tx, id).await?;
    tx.commit().await?;
    // The replica ranked first for the new host starts its actor: this one now, if it is.
    if let Err(e) = b.hypervisors.claim_now().await {
        tracing::warn!(host = %id, error = %e, "host lease round after registration");
    }
    Ok(summary)
}

pub(super) async fn host(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    search: &str,
    page: u32,
) -> Result<HostDetail> {
    req.fleet_admin()?;
    if search.chars().count() > 100 {
        return Err(AppError::field("search", "Search for at most 100 characters.").into());
    }
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let host = b.host_summary(&mut tx, host_id).await?;
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
    .await?;
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
    .await?;
    let domains = b
        .domains_page(
            &mut tx,
            "d.host_id = $1 AND d.missing_since IS NULL",
            Some(host_id),
            search.trim(),
            &Place {
                page,
                ..Place::default()
            },
        )
        .await?;
    let missing: Vec<DomainRow> = sqlx::query_as(&format!(
        "{DOMAIN_QUERY} WHERE d.host_id = $1 AND d.missing_since IS NOT NULL
         ORDER BY d.missing_since DESC LIMIT 100"
    ))
    .bind(host_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
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

pub(super) async fn set_domain_type(
    b: &FleetBackend,
    req: &RequestCtx,
    host_id: Uuid,
    domain_type: &str,
) -> Result<()> {
    req.fleet_admin()?;
    let value = match domain_type.trim() {
        "" => None,
        "kvm" => Some("kvm"),
        "qemu" => Some("qemu"),
        _ => return Err(AppError::field("domain_type", "Choose detected, kvm or qemu.").into()),
    };
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    let before: Option<Option<String>> =
        sqlx::query_scalar("SELECT domain_type FROM hosts WHERE id = $1 FOR UPDATE")
            .bind(host_id)
            .fetch_optional(&mut *tx)
            .await?;
    let before = before.ok_or_else(|| AppError::NotFound("Host".into()))?;
    sqlx::query("UPDATE hosts SET domain_type = $2 WHERE id = $1")
        .bind(host_id)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("host.domain_type", "host", host_id)
            .before(json!({ "domain_type": before }))
            .after(json!({ "domain_type": value })),
    )
    .await?;
    Ok(tx.commit().await?)
}

pub(super) async fn reconcile(b: &FleetBackend, req: &RequestCtx, host_id: Uuid) -> Result<()> {
    req.fleet_admin()?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    b.host_summary(&mut tx, host_id).await?;
    audit::record(
        &mut tx,
        &Origin::of(req),
        Event::new("host.reconcile", "host", host_id),
    )
    .await?;
    tx.commit().await?;
    Ok(b.hypervisors
        .reconcile(host_id)
        .await
        .map(|_| ())
        .map_err(AppError::Conflict)?)
}

/// A host name: lowercase letters, digits and hyphens, at most 63, starting alphanumeric.
/// For a host reached over SSH with the check on: the key it presents now, if the fleet
/// admin confirmed it (typed as the key or its fingerprint). Anything else is a field error
/// naming the fingerprint the host presented, so the admin can compare it with the host's
/// own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there).
async fn pin_ssh_host_key(uri: &str, confirmed: &str) -> Result<Option<String>, AppError> {
    use crate::hypervisor::remote;
    if !remote::is_ssh(uri) || remote::unverified(uri) {
        return Ok(None);
    }
    let presented = remote::presented_keys(uri)
        .await
        .map_err(|e| AppError::field("uri", format!("Could not connect: {e}")))?;
    let confirmed = confirmed.trim();
    let typed = remote::parse_key(confirmed).map(|(_, f)| f);
    if let Some((key, _)) = presented.iter().find(|(k, f)| {
        !confirmed.is_empty() && (f == confirmed || Some(f) == typed.as_ref() || k == confirmed)
    }) {
        return Ok(Some(key.clone()));
    }
    let offered = presented
        .iter()
        .map(|(k, f)| format!("{f} ({})", k.split(' ').next().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ");
    let message = if confirmed.is_empty() {
        format!("The host presents {offered}. Check that this is its key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host) and enter it here, or add no_verify=1 to the URI to skip the check.")
    } else {
        format!("The host presents {offered}, not the key entered: do not register it until you know why.")
    };
    Err(AppError::field("ssh_host_key", message))
}

/// A host registration that passed every check that needs neither the database nor the
/// host (saving connects to it; a simulated host's file is checked then).
#[derive(Debug, PartialEq)]
pub(super) struct NewHost {
    pub(super) name: String,
    pub(super) uri: String,
    /// Lower-case, in the order typed.
    pub(super) labels: Vec<String>,
    pub(super) schedulable: bool,
    pub(super) maintenance: bool,
}

impl TryFrom<&HostForm> for NewHost {
    type Error = AppError;

    /// Every bad field is named at once.
    fn try_from(form: &HostForm) -> Result<Self, AppError> {
        let (name, uri, labels) = (
            parse_host_name(&form.name),
            parse_uri(&form.uri),
            parse_labels(&form.labels),
        )
            .all_valid()?;
        Ok(NewHost {
            name,
            uri,
            labels,
            schedulable: form.schedulable,
            maintenance: form.maintenance,
        })
    }
}

pub(super) fn parse_host_name(raw: &str) -> Result<String, AppError> {
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
pub(super) fn parse_uri(raw: &str) -> Result<String, AppError> {
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
pub(super) fn simulated_file(
    uri: &str,
    allowed: Option<&std::path::Path>,
) -> Result<bool, AppError> {
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

pub(super) fn parse_labels(raw: &str) -> Result<Vec<String>, AppError> {
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
pub(super) struct HostRow {
    pub(super) id: Uuid,
    pub(super) name: String,
    pub(super) uri: String,
    pub(super) labels: Vec<String>,
    pub(super) schedulable: bool,
    pub(super) maintenance: bool,
    pub(super) simulated: bool,
    pub(super) state: String,
    pub(super) state_reason: Option<String>,
    pub(super) state_since: time::OffsetDateTime,
    pub(super) cpus: Option<i32>,
    pub(super) memory_kib: Option<i64>,
    pub(super) free_memory_kib: Option<i64>,
    pub(super) lib_version: Option<i64>,
    pub(super) hv_type: Option<String>,
    pub(super) hv_version: Option<i64>,
    pub(super) last_sync_at: Option<time::OffsetDateTime>,
    pub(super) vcpus_allocated: i64,
    pub(super) memory_allocated_kib: i64,
    pub(super) domains: i64,
    pub(super) running: i64,
    pub(super) storage_capacity: i64,
    pub(super) storage_available: i64,
    pub(super) domain_type: Option<String>,
    pub(super) ssh_host_key: Option<String>,
}

pub(super) const HOST_QUERY: &str = "
    SELECT h.id, h.name, h.uri, h.labels, h.schedulable, h.maintenance, h.simulated, h.state, h.state_reason,
           h.state_since, h.cpus, h.memory_kib, h.free_memory_kib, h.lib_version, h.hv_type, h.hv_version,
           h.last_sync_at, h.domain_type, h.ssh_host_key,
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
        let ssh_unverified = crate::hypervisor::remote::is_ssh(&r.uri)
            && crate::hypervisor::remote::unverified(&r.uri);
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
            // Set by `FleetBackend::summary` against the configured minimums.
            needs_update: false,
            update_reason: None,
            lib_version: r.lib_version.map(version_string),
            hv_type: r.hv_type,
            domain_type: r.domain_type,
            hv_version: r.hv_version.map(version_string),
            last_sync_at: r.last_sync_at,
            ssh_host_key: r
                .ssh_host_key
                .as_deref()
                .and_then(crate::hypervisor::remote::parse_key)
                .map(|(_, fingerprint)| fingerprint),
            ssh_unverified,
        }
    }
}

impl FleetBackend {
    pub(super) async fn host_summary(&self, tx: &mut db::Tx, id: Uuid) -> Result<HostSummary> {
        let row: Option<HostRow> = sqlx::query_as(&format!("{HOST_QUERY} WHERE h.id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row
            .map(|r| self.summary(r))
            .ok_or_else(|| AppError::NotFound("Host".into()))?)
    }
}

impl FleetBackend {
    /// NotFound unless the host is registered.
    pub(super) async fn known_host(&self, host_id: Uuid) -> Result<()> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(found
            .map(|_| ())
            .ok_or_else(|| AppError::NotFound("Host".into()))?)
    }
}

/// Why a host needs an update: its libvirt, or its QEMU, below the fleet's minimum
/// (`(libvirt, qemu)`, libvirt's numbering). Hosts not yet inventoried are not judged.
pub fn outdated(
    lib: Option<i64>,
    hv_type: Option<&str>,
    hv: Option<i64>,
    (min_lib, min_qemu): (i64, i64),
) -> Option<String> {
    let mut why = vec![];
    if let Some(v) = lib.filter(|v| *v > 0 && *v < min_lib) {
        why.push(format!(
            "libvirt {} (minimum {})",
            version_string(v),
            version_string(min_lib)
        ));
    }
    if let Some(v) = hv.filter(|v| *v > 0 && *v < min_qemu) {
        if hv_type.is_some_and(|t| t.eq_ignore_ascii_case("qemu")) {
            why.push(format!(
                "QEMU {} (minimum {})",
                version_string(v),
                version_string(min_qemu)
            ));
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}
