//! Placement: which host gets a VM. Candidates are the connected, schedulable hosts not in
//! maintenance that hold the template's base image; each must have the memory (its total less
//! a reserve for the host itself, the memory of its active domains and of VMs placed there but
//! not yet running; libvirt's own "free memory" counts the page cache as used, so it is not
//! trusted), the vCPUs (within the overcommit ratio) and the pool space. The one with most
//! free memory wins.
use crate::platform::db::Tx;
use crate::platform::error::Result;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub host_id: Uuid,
    pub host_name: String,
    pub state: String,
    pub schedulable: bool,
    pub maintenance: bool,
    pub cpus: Option<i32>,
    pub memory_kib: Option<i64>,
    /// Memory of active domains.
    pub active_memory_kib: i64,
    pub pool: String,
    pub volume: String,
    pub pool_available: Option<i64>,
    pub pool_active: Option<bool>,
    /// vCPUs of active domains plus VMs placed but not yet running.
    pub vcpus_allocated: i64,
    /// Memory of VMs placed here that libvirt does not count yet.
    pub pending_memory_mib: i64,
    /// Disk promised to VMs placed here but not yet created.
    pub pending_disk_gib: i64,
}

#[derive(Debug, Clone)]
pub struct Need {
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub host_id: Uuid,
    pub host_name: String,
    pub pool: String,
    pub base_volume: String,
    pub reason: String,
}

const GIB: i64 = 1024 * 1024 * 1024;
/// Memory kept for the host's own processes.
pub const HOST_RESERVE_MIB: i64 = 512;

/// The hosts that hold `template`'s image (and, for a libvirt `network`, have it active),
/// with what placement weighs.
pub async fn candidates(
    tx: &mut Tx,
    template: Uuid,
    network: Option<&str>,
) -> Result<Vec<Candidate>> {
    Ok(sqlx::query_as(
        "SELECT h.id AS host_id, h.name AS host_name, h.state, h.schedulable, h.maintenance, h.cpus,
                h.memory_kib, (SELECT coalesce(sum(d.memory_kib), 0) FROM domains d
                  WHERE d.host_id = h.id AND d.missing_since IS NULL AND d.state NOT IN ('shutoff', 'crashed'))::int8 AS active_memory_kib,
                i.pool, i.volume, p.available AS pool_available, p.active AS pool_active,
                (SELECT coalesce(sum(d.vcpus), 0) FROM domains d
                  WHERE d.host_id = h.id AND d.missing_since IS NULL AND d.state NOT IN ('shutoff', 'crashed'))
                + (SELECT coalesce(sum(v.vcpus), 0) FROM vms v
                  WHERE v.host_id = h.id AND vm_phase_building(v.phase))::int8 AS vcpus_allocated,
                (SELECT coalesce(sum(v.memory_mib), 0) FROM vms v
                  WHERE v.host_id = h.id AND vm_phase_building(v.phase))::int8 AS pending_memory_mib,
                (SELECT coalesce(sum(v.disk_gib), 0) FROM vms v
                  WHERE v.host_id = h.id AND v.phase IN ('placing', 'cloning'))::int8 AS pending_disk_gib
         FROM template_images i JOIN hosts h ON h.id = i.host_id
         LEFT JOIN storage_pools p ON p.host_id = i.host_id AND p.name = i.pool
         WHERE i.template_id = $1
           AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM networks n WHERE n.host_id = h.id AND n.name = $2
                                            AND n.active AND n.missing_since IS NULL))
         ORDER BY h.name",
    )
    .bind(template)
    .bind(network)
    .fetch_all(&mut **tx)
    .await?)
}

/// Picks a host, or says why none fits (host by host).
pub fn choose(candidates: &[Candidate], need: &Need, overcommit: f64) -> Result<Choice, String> {
    if candidates.is_empty() {
        return Err(
            "No host holds this template's base image (and the chosen network, if any).".into(),
        );
    }
    let mut fits = Vec::new();
    let mut skipped = Vec::new();
    for c in candidates {
        let free_mib = (c.memory_kib.unwrap_or(0) - c.active_memory_kib) / 1024
            - HOST_RESERVE_MIB
            - c.pending_memory_mib;
        let vcpu_cap = (f64::from(c.cpus.unwrap_or(0)) * overcommit).floor() as i64;
        let disk_free_gib = c.pool_available.unwrap_or(0) / GIB - c.pending_disk_gib;
        let why = if c.state != "connected" {
            Some(format!("{} is {}", c.host_name, c.state))
        } else if c.maintenance {
            Some(format!("{} is in maintenance", c.host_name))
        } else if !c.schedulable {
            Some(format!("{} is not schedulable", c.host_name))
        } else if c.pool_active != Some(true) {
            Some(format!("{}'s pool {} is not active", c.host_name, c.pool))
        } else if free_mib < need.memory_mib {
            Some(format!(
                "{} has {} MiB free memory, {} needed",
                c.host_name, free_mib, need.memory_mib
            ))
        } else if c.vcpus_allocated + i64::from(need.vcpus) > vcpu_cap {
            Some(format!(
                "{} has {} of {} vCPUs allocated (overcommit {overcommit})",
                c.host_name, c.vcpus_allocated, vcpu_cap
            ))
        } else if disk_free_gib < need.disk_gib {
            Some(format!(
                "{}'s pool {} has {} GiB free, {} needed",
                c.host_name, c.pool, disk_free_gib, need.disk_gib
            ))
        } else {
            None
        };
        match why {
            Some(w) => skipped.push(w),
            None => fits.push((c, free_mib, vcpu_cap, disk_free_gib)),
        }
    }
    let Some((best, free_mib, cap, disk)) = fits
        .iter()
        .max_by_key(|(c, free, ..)| (*free, std::cmp::Reverse(c.host_name.clone())))
    else {
        return Err(format!("No host fits: {}.", skipped.join("; ")));
    };
    Ok(Choice {
        host_id: best.host_id,
        host_name: best.host_name.clone(),
        pool: best.pool.clone(),
        base_volume: best.volume.clone(),
        reason: format!(
            "Placed on {}: most free memory ({} MiB) of {} fitting host(s); {} of {} vCPUs allocated; {} GiB free in pool {}.",
            best.host_name,
            free_mib,
            fits.len(),
            best.vcpus_allocated,
            cap,
            disk,
            best.pool
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, free_mib: i64) -> Candidate {
        Candidate {
            host_id: Uuid::new_v4(),
            host_name: name.into(),
            state: "connected".into(),
            schedulable: true,
            maintenance: false,
            cpus: Some(4),
            memory_kib: Some((free_mib + HOST_RESERVE_MIB) * 1024),
            active_memory_kib: 0,
            pool: "default".into(),
            volume: "base.qcow2".into(),
            pool_available: Some(100 * GIB),
            pool_active: Some(true),
            vcpus_allocated: 0,
            pending_memory_mib: 0,
            pending_disk_gib: 0,
        }
    }

    fn need() -> Need {
        Need {
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 20,
        }
    }

    #[test]
    fn most_free_memory_wins_and_unfit_hosts_are_named() {
        let mut lost = host("a", 64_000);
        lost.state = "lost".into();
        let mut maint = host("b", 64_000);
        maint.maintenance = true;
        let mut busy = host("c", 64_000);
        busy.vcpus_allocated = 15;
        let small = host("d", 3000);
        let big = host("e", 8000);
        let c = choose(
            &[lost.clone(), maint.clone(), busy.clone(), small, big],
            &need(),
            4.0,
        )
        .unwrap();
        assert_eq!(c.host_name, "e");
        assert!(c.reason.contains("of 2 fitting"));
        let e = choose(&[lost, maint, busy, host("f", 1000)], &need(), 4.0).unwrap_err();
        assert!(e.contains("a is lost"), "{e}");
        assert!(e.contains("b is in maintenance"), "{e}");
        assert!(e.contains("c has 15 of 16 vCPUs"), "{e}");
        assert!(e.contains("f has 1000 MiB free memory"), "{e}");
    }

    #[test]
    fn pending_placements_count() {
        let mut h = host("a", 4096);
        h.pending_memory_mib = 3000;
        assert!(choose(&[h], &need(), 4.0).is_err());
        let mut h = host("a", 64_000);
        h.pending_disk_gib = 90;
        assert!(choose(&[h], &need(), 4.0).unwrap_err().contains("GiB free"));
    }
}
