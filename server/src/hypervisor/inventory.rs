//! What a host runs, read from libvirt in one pass and written to PostgreSQL in batches.
use crate::platform::cluster::Fence;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use sqlx::PgPool;
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub hostname: Option<String>,
    pub cpus: i32,
    pub cpu_model: String,
    pub memory_kib: i64,
    pub free_memory_kib: i64,
    pub lib_version: i64,
    pub hv_type: String,
    pub hv_version: i64,
}

#[derive(Debug, Clone)]
pub struct PoolFacts {
    pub name: String,
    pub uuid: Option<Uuid>,
    pub pool_type: Option<String>,
    pub path: Option<String>,
    pub active: bool,
    pub capacity: i64,
    pub allocation: i64,
    pub available: i64,
}

#[derive(Debug, Clone)]
pub struct NetworkFacts {
    pub name: String,
    pub uuid: Option<Uuid>,
    pub active: bool,
    pub forward_mode: Option<String>,
    pub bridge: Option<String>,
}

/// Disks and NICs as the pages show them.
pub use app::fleet::{DiskInfo as Disk, NicInfo as Nic};

#[derive(Debug, Clone)]
pub struct DomainFacts {
    pub uuid: Uuid,
    pub name: String,
    pub state: &'static str,
    pub vcpus: i32,
    pub memory_kib: i64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// When libvirt was asked (wall clock, not the injected one: it orders this read against
    /// lifecycle events). A write never replaces a state observed later.
    pub observed_at: OffsetDateTime,
}

/// Facts compare by what the hypervisor says, not by when it was asked: a reconcile writes
/// only the domains that changed.
impl PartialEq for DomainFacts {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
            && self.name == other.name
            && self.state == other.state
            && self.vcpus == other.vcpus
            && self.memory_kib == other.memory_kib
            && self.disks == other.disks
            && self.nics == other.nics
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub host: HostFacts,
    pub pools: Vec<PoolFacts>,
    pub networks: Vec<NetworkFacts>,
    pub domains: Vec<DomainFacts>,
}

pub fn state_name(state: virt::domain::DomainStateEnum) -> &'static str {
    use virt::domain::DomainState::*;
    match state.unwrap_or(NoState) {
        NoState => "nostate",
        Running => "running",
        Blocked => "blocked",
        Paused => "paused",
        Shutdown => "shutdown",
        Shutoff => "shutoff",
        Crashed => "crashed",
        PMSuspended => "pmsuspended",
    }
}

/// Reads host, pools, networks and domains. `known` holds the domains seen last time: their
/// XML (disks, NICs) is only re-read when name, vCPUs or memory changed.
pub fn collect(
    conn: &Connect,
    known: &HashMap<Uuid, DomainFacts>,
) -> Result<Snapshot, virt::error::Error> {
    let node = conn.node_info()?;
    let host = HostFacts {
        hostname: conn.hostname().ok(),
        cpus: node.cpus as i32,
        cpu_model: node.model,
        memory_kib: node.memory as i64,
        free_memory_kib: conn.free_memory().map(|b| (b / 1024) as i64).unwrap_or(0),
        lib_version: conn.lib_version().map(i64::from).unwrap_or(0),
        hv_type: conn.driver_type().unwrap_or_default(),
        hv_version: conn.hyp_version().map(i64::from).unwrap_or(0),
    };
    let mut pools = Vec::new();
    for pool in conn.list_all_storage_pools(0)? {
        let info = pool.info()?;
        let xml = pool.xml_desc(0).unwrap_or_default();
        let doc = roxmltree::Document::parse(&xml).ok();
        let root = doc.as_ref().map(|d| d.root_element());
        pools.push(PoolFacts {
            name: pool.name()?,
            uuid: pool.uuid().ok(),
            pool_type: root.and_then(|r| r.attribute("type")).map(str::to_owned),
            path: root
                .and_then(|r| r.descendants().find(|n| n.has_tag_name("path")))
                .and_then(|n| n.text())
                .map(str::to_owned),
            active: pool.is_active().unwrap_or(false),
            capacity: info.capacity as i64,
            allocation: info.allocation as i64,
            available: info.available as i64,
        });
    }
    let mut networks = Vec::new();
    for net in conn.list_all_networks(0)? {
        let xml = net.xml_desc(0).unwrap_or_default();
        let doc = roxmltree::Document::parse(&xml).ok();
        let forward = doc.as_ref().and_then(|d| {
            d.descendants()
                .find(|n| n.has_tag_name("forward"))
                .map(|n| n.attribute("mode").unwrap_or("nat").to_owned())
        });
        networks.push(NetworkFacts {
            name: net.name()?,
            uuid: net.uuid().ok(),
            active: net.is_active().unwrap_or(false),
            forward_mode: Some(forward.unwrap_or_else(|| "isolated".into())),
            bridge: net.bridge_name().ok(),
        });
    }
    let mut domains = Vec::new();
    for dom in conn.list_all_domains(0)? {
        domains.push(domain_facts(&dom, known)?);
    }
    Ok(Snapshot {
        host,
        pools,
        networks,
        domains,
    })
}

pub fn domain_facts(
    dom: &Domain,
    known: &HashMap<Uuid, DomainFacts>,
) -> Result<DomainFacts, virt::error::Error> {
    let observed_at = OffsetDateTime::now_utc();
    let uuid = dom.uuid()?;
    let name = dom.name()?;
    let info = dom.info()?;
    let vcpus = info.nr_virt_cpu as i32;
    let memory_kib = info.max_mem as i64;
    let state = state_name(info.state);
    let (disks, nics) = match known.get(&uuid) {
        Some(k) if k.name == name && k.vcpus == vcpus && k.memory_kib == memory_kib => {
            (k.disks.clone(), k.nics.clone())
        }
        _ => devices(&dom.xml_desc(0)?),
    };
    Ok(DomainFacts {
        uuid,
        name,
        state,
        vcpus,
        memory_kib,
        disks,
        nics,
        observed_at,
    })
}

/// Disks and NICs from a domain's XML.
pub fn devices(xml: &str) -> (Vec<Disk>, Vec<Nic>) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return (Vec::new(), Vec::new());
    };
    let child_attr = |n: roxmltree::Node, tag: &str, attr: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.attribute(attr))
            .map(str::to_owned)
    };
    let disks = doc
        .descendants()
        .filter(|n| n.has_tag_name("disk"))
        .map(|n| Disk {
            target: child_attr(n, "target", "dev").unwrap_or_default(),
            device: n.attribute("device").unwrap_or("disk").to_owned(),
            format: child_attr(n, "driver", "type"),
            source: child_attr(n, "source", "file")
                .or_else(|| child_attr(n, "source", "dev"))
                .or_else(|| child_attr(n, "source", "volume")),
        })
        .collect();
    let nics = doc
        .descendants()
        .filter(|n| n.has_tag_name("interface"))
        .map(|n| Nic {
            kind: n.attribute("type").unwrap_or("user").to_owned(),
            mac: child_attr(n, "mac", "address"),
            source: child_attr(n, "source", "network")
                .or_else(|| child_attr(n, "source", "bridge")),
            model: child_attr(n, "model", "type"),
        })
        .collect();
    (disks, nics)
}

/// What changed since the previous snapshot, to keep database writes small.
pub struct Changes<'a> {
    pub upserts: Vec<&'a DomainFacts>,
    pub present: Vec<Uuid>,
}

pub fn diff<'a>(snapshot: &'a Snapshot, known: &HashMap<Uuid, DomainFacts>) -> Changes<'a> {
    Changes {
        upserts: snapshot
            .domains
            .iter()
            .filter(|d| known.get(&d.uuid) != Some(d))
            .collect(),
        present: snapshot.domains.iter().map(|d| d.uuid).collect(),
    }
}

/// Writes a snapshot: host facts, pools, networks, changed domains (one batched statement),
/// and marks vanished ones missing. `full` says whether `known` was loaded from the database
/// (then only differences are written).
pub async fn write(
    pool: &PgPool,
    fence: Fence,
    host_id: Uuid,
    snapshot: &Snapshot,
    upserts: &[&DomainFacts],
    present: &[Uuid],
    took_ms: i32,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    fence.hold(&mut tx, host_id).await?;
    let h = &snapshot.host;
    sqlx::query(
        "UPDATE hosts SET hostname = $2, cpus = $3, cpu_model = $4, memory_kib = $5, free_memory_kib = $6,
                lib_version = $7, hv_type = $8, hv_version = $9, last_sync_at = now(), last_sync_ms = $10,
                lease_epoch = $11
         WHERE id = $1",
    )
    .bind(host_id)
    .bind(&h.hostname)
    .bind(h.cpus)
    .bind(&h.cpu_model)
    .bind(h.memory_kib)
    .bind(h.free_memory_kib)
    .bind(h.lib_version)
    .bind(&h.hv_type)
    .bind(h.hv_version)
    .bind(took_ms)
    .bind(fence.epoch)
    .execute(&mut *tx)
    .await?;

    let p = &snapshot.pools;
    sqlx::query(
        "INSERT INTO storage_pools (host_id, name, uuid, pool_type, path, active, capacity, allocation, available, last_seen_at, missing_since)
         SELECT $1, * , now(), NULL FROM UNNEST($2::text[], $3::uuid[], $4::text[], $5::text[], $6::bool[], $7::int8[], $8::int8[], $9::int8[])
         ON CONFLICT (host_id, name) DO UPDATE SET uuid = excluded.uuid, pool_type = excluded.pool_type, path = excluded.path,
             active = excluded.active, capacity = excluded.capacity, allocation = excluded.allocation,
             available = excluded.available, last_seen_at = now(), missing_since = NULL",
    )
    .bind(host_id)
    .bind(p.iter().map(|x| x.name.clone()).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.uuid).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.pool_type.clone()).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.path.clone()).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.active).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.capacity).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.allocation).collect::<Vec<_>>())
    .bind(p.iter().map(|x| x.available).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE storage_pools SET missing_since = now() WHERE host_id = $1 AND missing_since IS NULL AND NOT (name = ANY($2))")
        .bind(host_id)
        .bind(p.iter().map(|x| x.name.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;

    let n = &snapshot.networks;
    sqlx::query(
        "INSERT INTO networks (host_id, name, uuid, active, forward_mode, bridge, last_seen_at, missing_since)
         SELECT $1, *, now(), NULL FROM UNNEST($2::text[], $3::uuid[], $4::bool[], $5::text[], $6::text[])
         ON CONFLICT (host_id, name) DO UPDATE SET uuid = excluded.uuid, active = excluded.active,
             forward_mode = excluded.forward_mode, bridge = excluded.bridge, last_seen_at = now(), missing_since = NULL",
    )
    .bind(host_id)
    .bind(n.iter().map(|x| x.name.clone()).collect::<Vec<_>>())
    .bind(n.iter().map(|x| x.uuid).collect::<Vec<_>>())
    .bind(n.iter().map(|x| x.active).collect::<Vec<_>>())
    .bind(n.iter().map(|x| x.forward_mode.clone()).collect::<Vec<_>>())
    .bind(n.iter().map(|x| x.bridge.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE networks SET missing_since = now() WHERE host_id = $1 AND missing_since IS NULL AND NOT (name = ANY($2))")
        .bind(host_id)
        .bind(n.iter().map(|x| x.name.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;

    upsert_domains(&mut tx, host_id, upserts).await?;
    // Vanished domains are kept and marked, never silently deleted.
    sqlx::query(
        "UPDATE domains SET missing_since = now(), last_seen_at = coalesce((SELECT last_sync_at FROM hosts WHERE id = $1), last_seen_at)
         WHERE host_id = $1 AND missing_since IS NULL AND NOT (uuid = ANY($2))",
    )
    .bind(host_id)
    .bind(present)
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

/// The domains the database holds for a host (present ones), as facts to diff against.
pub async fn load_known(pool: &PgPool, host_id: Uuid) -> Result<HashMap<Uuid, DomainFacts>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        uuid: Uuid,
        name: String,
        state: String,
        vcpus: i32,
        memory_kib: i64,
        disks: serde_json::Value,
        nics: serde_json::Value,
    }
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT uuid, name, state, vcpus, memory_kib, disks, nics FROM domains WHERE host_id = $1 AND missing_since IS NULL",
    )
    .bind(host_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (disks, nics) = (parse_disks(&r.disks), parse_nics(&r.nics));
            (
                r.uuid,
                DomainFacts {
                    uuid: r.uuid,
                    name: r.name,
                    state: static_state(&r.state),
                    vcpus: r.vcpus,
                    memory_kib: r.memory_kib,
                    disks,
                    nics,
                    observed_at: OffsetDateTime::UNIX_EPOCH,
                },
            )
        })
        .collect())
}

fn static_state(s: &str) -> &'static str {
    [
        "nostate",
        "running",
        "blocked",
        "paused",
        "shutdown",
        "shutoff",
        "crashed",
        "pmsuspended",
    ]
    .into_iter()
    .find(|k| *k == s)
    .unwrap_or("nostate")
}

pub fn parse_disks(v: &serde_json::Value) -> Vec<Disk> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|d| Disk {
                    target: d["target"].as_str().unwrap_or_default().to_owned(),
                    device: d["device"].as_str().unwrap_or_default().to_owned(),
                    format: d["format"].as_str().map(str::to_owned),
                    source: d["source"].as_str().map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn parse_nics(v: &serde_json::Value) -> Vec<Nic> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|d| Nic {
                    kind: d["kind"].as_str().unwrap_or_default().to_owned(),
                    mac: d["mac"].as_str().map(str::to_owned),
                    source: d["source"].as_str().map(str::to_owned),
                    model: d["model"].as_str().map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Applies many lifecycle events in one statement; returns the (host, domain) pairs whose row
/// existed and was updated.
pub async fn apply_events(
    pool: &PgPool,
    rows: &[(Uuid, Uuid, &str, &str, OffsetDateTime)],
    fence_of: impl Fn(Uuid) -> Option<Fence>,
) -> Result<std::collections::HashSet<(Uuid, Uuid)>> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    // Only the events of hosts whose lease this replica still holds (held until commit).
    let mut fences: Vec<(Uuid, Fence)> = rows
        .iter()
        .filter_map(|r| fence_of(r.0).map(|f| (r.0, f)))
        .collect();
    fences.sort_by_key(|(h, _)| *h);
    fences.dedup_by_key(|(h, _)| *h);
    let held: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "SELECT l.host_id FROM host_leases l
         JOIN UNNEST($1::uuid[], $2::uuid[], $3::int8[]) AS f (host_id, owner, epoch)
           ON l.host_id = f.host_id AND l.owner = f.owner AND l.epoch = f.epoch
         ORDER BY l.host_id FOR SHARE OF l",
    )
    .bind(fences.iter().map(|(h, _)| *h).collect::<Vec<_>>())
    .bind(fences.iter().map(|(_, f)| f.replica).collect::<Vec<_>>())
    .bind(fences.iter().map(|(_, f)| f.epoch).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let rows: Vec<_> = rows.iter().filter(|r| held.contains(&r.0)).collect();
    let done: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE domains d SET state = e.state, state_reason = e.reason, state_observed_at = e.seen,
                state_since = CASE WHEN d.state <> e.state THEN now() ELSE d.state_since END
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) AS e (host_id, uuid, state, reason, seen)
         WHERE d.host_id = e.host_id AND d.uuid = e.uuid
           -- A late event (\"stopped\" after a delete) must not bring an undefined domain back;
           -- a domain that really returns is re-read and un-marked by the refresh.
           AND d.missing_since IS NULL
           AND d.state_observed_at <= e.seen
         RETURNING d.host_id, d.uuid",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.into_iter().collect())
}

/// Inserts or updates domain rows in one statement (a reconcile's batch, or one refresh).
pub async fn upsert_domains(
    tx: &mut db::Tx,
    host_id: Uuid,
    upserts: &[&DomainFacts],
) -> Result<()> {
    if upserts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO domains AS d (host_id, uuid, name, state, vcpus, memory_kib, disks, nics, state_observed_at, managed, tenant_id, owner_id)
         SELECT $1, u.*, v.uuid IS NOT NULL, v.tenant_id, v.owner_id
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::jsonb[], $8::jsonb[], $9::timestamptz[])
              AS u (uuid, name, state, vcpus, memory_kib, disks, nics, observed_at)
         LEFT JOIN vms v ON v.uuid = u.uuid AND v.deleted_at IS NULL
         ON CONFLICT (host_id, uuid) DO UPDATE SET name = excluded.name,
             -- A portal VM is managed from its first sighting, whichever write comes first.
             managed = d.managed OR excluded.managed, tenant_id = coalesce(d.tenant_id, excluded.tenant_id),
             owner_id = coalesce(d.owner_id, excluded.owner_id),
             -- An older observation (read before an event this row already has) keeps the state.
             state_since = CASE WHEN d.state_observed_at > excluded.state_observed_at OR d.state = excluded.state
                                THEN d.state_since ELSE now() END,
             state = CASE WHEN d.state_observed_at > excluded.state_observed_at THEN d.state ELSE excluded.state END,
             state_observed_at = greatest(d.state_observed_at, excluded.state_observed_at),
             vcpus = excluded.vcpus, memory_kib = excluded.memory_kib,
             disks = excluded.disks, nics = excluded.nics, last_seen_at = now(), missing_since = NULL",
    )
    .bind(host_id)
    .bind(upserts.iter().map(|d| d.uuid).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| d.name.clone()).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| d.state.to_string()).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| d.vcpus).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| d.memory_kib).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| serde_json::to_value(&d.disks).unwrap_or_default()).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| serde_json::to_value(&d.nics).unwrap_or_default()).collect::<Vec<_>>())
    .bind(upserts.iter().map(|d| d.observed_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
