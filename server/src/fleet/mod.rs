//! The backend of the `Fleet` seam (fleet admins, and VM owners for their VMs). Its trait impl
//! here is the table of contents: `hosts` (registration, host list and page), `vms` (a domain's
//! page, charts, actions, adoption), `pools` (storage and networks), `dashboard` (figures,
//! charts, drift); `charts` renders charts and `consoles` proxies consoles.
pub mod charts;
pub mod consoles;
mod dashboard;
mod hosts;
mod pools;
pub mod rebalance;
mod vms;
use crate::accounts::AccountsBackend;
use crate::hypervisor::Hypervisors;
use crate::metering::metrics::Range;
use crate::platform::db::{self, Scope};
use crate::platform::error::seam;
use app::error::AppError;
use app::fleet::{
    ChartView, DomainSummary, FleetDashboard, HostDetail, HostFilter, HostForm, HostSummary,
    VmDetail, VolumeInfo,
};
use app::seam::{Fleet, RequestCtx};
use app::{Page, Place};
use async_trait::async_trait;
pub use dashboard::Kept;
use hosts::*;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub const DOMAINS_PER_PAGE: u32 = 50;
/// Host cards per page on the hosts page.
pub const HOSTS_PER_PAGE: u32 = 24;

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
    /// This process's replica id (the dashboard marks it among the replicas).
    pub replica: Uuid,
    pub dashboard: Arc<Kept<FleetDashboard>>,
    /// Totals and page ends of the domain lists (drift, a host's domains) by (filter, host,
    /// search).
    pub domain_lists: crate::platform::list::Known<(&'static str, Option<Uuid>, String)>,
    /// Rendered fleet charts per range, for one sample period.
    pub charts: std::collections::HashMap<Range, Arc<Kept<Vec<ChartView>>>>,
    /// What "now" is for the charts' ranges (tests move it).
    pub clock: Arc<dyn crate::platform::clock::Clock>,
    /// The oldest libvirt and QEMU versions the fleet accepts (libvirt's numbering).
    pub min_versions: (i64, i64),
}

impl FleetBackend {
    /// The host as pages show it, with its vCPU capacity under this server's overcommit.
    fn summary(&self, row: HostRow) -> HostSummary {
        let versions = (row.lib_version, row.hv_type.clone(), row.hv_version);
        let mut h = HostSummary::from(row);
        h.vcpu_capacity = (f64::from(h.cpus.unwrap_or(0)) * self.vcpu_overcommit).floor() as i64;
        h.update_reason = hosts::outdated(
            versions.0,
            versions.1.as_deref(),
            versions.2,
            self.min_versions,
        );
        h.needs_update = h.update_reason.is_some();
        h
    }
}

#[async_trait]
impl Fleet for FleetBackend {
    async fn rebalance(&self, req: &RequestCtx) -> Result<app::fleet::Rebalancing, AppError> {
        seam(rebalance_advice(self, req)).await
    }

    async fn move_vm(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        target_host: Uuid,
    ) -> Result<(), AppError> {
        seam(crate::provisioning::migration::request(
            &self.pool,
            &self.queue,
            self.vcpu_overcommit,
            req,
            crate::provisioning::migration::Move {
                host_id,
                vm: uuid,
                target: target_host,
            },
            self.clock.now(),
        ))
        .await
    }

    async fn hosts(&self, req: &RequestCtx) -> Result<Vec<HostSummary>, AppError> {
        Ok(hosts::hosts(self, req).await?)
    }

    async fn host_page(
        &self,
        req: &RequestCtx,
        filter: HostFilter,
    ) -> Result<Page<HostSummary>, AppError> {
        Ok(hosts::host_page(self, req, filter).await?)
    }

    #[tracing::instrument(skip_all)]
    async fn charts(&self, req: &RequestCtx, range: &str) -> Result<Vec<ChartView>, AppError> {
        dashboard::charts(self, req, range).await
    }

    async fn vm_charts(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        range: &str,
    ) -> Result<Vec<ChartView>, AppError> {
        Ok(vms::vm_charts(self, req, host_id, uuid, range).await?)
    }

    async fn dashboard(&self, req: &RequestCtx) -> Result<FleetDashboard, AppError> {
        dashboard::dashboard(self, req).await
    }

    async fn register(&self, req: &RequestCtx, form: HostForm) -> Result<HostSummary, AppError> {
        Ok(hosts::register(self, req, &form).await?)
    }

    async fn host(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        search: &str,
        page: u32,
    ) -> Result<HostDetail, AppError> {
        Ok(hosts::host(self, req, host_id, search, page).await?)
    }

    async fn forget(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<(), AppError> {
        Ok(vms::forget(self, req, host_id, uuid).await?)
    }

    async fn set_domain_type(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        domain_type: &str,
    ) -> Result<(), AppError> {
        Ok(hosts::set_domain_type(self, req, host_id, domain_type).await?)
    }

    async fn reconcile(&self, req: &RequestCtx, host_id: Uuid) -> Result<(), AppError> {
        Ok(hosts::reconcile(self, req, host_id).await?)
    }

    async fn vm(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<VmDetail, AppError> {
        Ok(vms::vm(self, req, host_id, uuid).await?)
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
        Ok(vms::vm_action(self, req, host_id, uuid, action, confirm).await?)
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
        Ok(vms::adopt(self, req, host_id, uuid, tenant_id, owner_email).await?)
    }

    #[tracing::instrument(skip_all)]
    async fn create_pool(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        path: &str,
    ) -> Result<(), AppError> {
        pools::create_pool(self, req, host_id, name, path).await
    }

    async fn volumes(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        pool: &str,
    ) -> Result<Vec<VolumeInfo>, AppError> {
        pools::volumes(self, req, host_id, pool).await
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
        pools::create_volume(self, req, host_id, pool, name, kind, capacity_gib, source).await
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
        pools::delete_volume(self, req, host_id, pool, name, confirm).await
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
        pools::define_network(self, req, host_id, name, mode, address, prefix, bridge).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_action(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        op: &str,
    ) -> Result<(), AppError> {
        pools::network_action(self, req, host_id, name, op).await
    }

    async fn drift(&self, req: &RequestCtx, place: Place) -> Result<Page<DomainSummary>, AppError> {
        Ok(dashboard::drift(self, req, place).await?)
    }
}

/// Points above the fleet's mean share of memory that make a host worth unloading.
const REBALANCE_MARGIN: f64 = 0.10;

async fn rebalance_advice(
    b: &FleetBackend,
    req: &RequestCtx,
) -> crate::platform::error::Result<app::fleet::Rebalancing> {
    req.fleet_admin()?;
    let mut tx = db::begin(&b.pool, Scope::fleet()).await?;
    // Allocation as placement counts it: domains not off on connected, schedulable hosts.
    let hosts: Vec<(Uuid, String, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT h.id, h.name, h.memory_kib / 1024.0::float8, coalesce(sum(d.memory_kib), 0) / 1024.0::float8,
                coalesce(h.cpus, 0) * $1::float8, coalesce(sum(d.vcpus), 0)::float8
         FROM hosts h LEFT JOIN domains d ON d.host_id = h.id AND d.missing_since IS NULL
              AND d.state NOT IN ('shutoff', 'crashed')
         WHERE h.state = 'connected' AND h.schedulable AND NOT h.maintenance AND h.memory_kib > 0
         GROUP BY h.id ORDER BY h.name",
    )
    .bind(b.vcpu_overcommit)
    .fetch_all(&mut *tx)
    .await?;
    #[derive(sqlx::FromRow)]
    struct VmRow {
        uuid: Uuid,
        name: String,
        host_id: Uuid,
        vcpus: f64,
        memory_mib: f64,
        disk_gib: f64,
        image_hosts: Vec<Uuid>,
        free_gib: Vec<f64>,
    }
    let vms: Vec<VmRow> = sqlx::query_as(
        "SELECT v.uuid, v.name, v.host_id, v.vcpus::float8 AS vcpus, v.memory_mib::float8 AS memory_mib,
                v.disk_gib::float8 AS disk_gib, array_agg(ti.host_id ORDER BY ti.host_id) AS image_hosts,
                array_agg(coalesce(sp.available, 0) / 1073741824.0::float8 ORDER BY ti.host_id) AS free_gib
         FROM vms v JOIN template_images ti ON ti.template_id = v.template_id
         LEFT JOIN storage_pools sp ON sp.host_id = ti.host_id AND sp.name = ti.pool
         WHERE v.deleted_at IS NULL AND v.phase = 'running' AND v.host_id IS NOT NULL
         GROUP BY v.uuid ORDER BY v.name",
    )
    .fetch_all(&mut *tx)
    .await?;
    db::done(tx);
    let hosts: Vec<rebalance::Host> = hosts
        .into_iter()
        .map(
            |(id, name, memory_mib, used_mib, vcpu_capacity, vcpus)| rebalance::Host {
                id,
                name,
                memory_mib,
                used_mib,
                vcpu_capacity,
                vcpus,
            },
        )
        .collect();
    let vms: Vec<rebalance::Vm> = vms
        .into_iter()
        .map(|v| rebalance::Vm {
            id: v.uuid,
            name: v.name,
            host: v.host_id,
            vcpus: v.vcpus,
            memory_mib: v.memory_mib,
            disk_gib: v.disk_gib,
            targets: v.image_hosts.into_iter().zip(v.free_gib).collect(),
        })
        .collect();
    let total: f64 = hosts.iter().map(|h| h.memory_mib).sum();
    let used: f64 = hosts.iter().map(|h| h.used_mib).sum();
    let (moves, after) = rebalance::plan(hosts.clone(), vms.clone(), REBALANCE_MARGIN, 20);
    let pct = |h: &rebalance::Host| {
        if h.memory_mib > 0.0 {
            h.used_mib / h.memory_mib * 100.0
        } else {
            0.0
        }
    };
    // Fullest minus emptiest, in points (an over-allocated host's share passes 100 %).
    let spread = |hs: &[rebalance::Host]| {
        let loads: Vec<f64> = hs.iter().map(pct).collect();
        match (
            loads.iter().copied().reduce(f64::max),
            loads.iter().copied().reduce(f64::min),
        ) {
            (Some(max), Some(min)) => max - min,
            _ => 0.0,
        }
    };
    let name_of = |id: Uuid| {
        hosts
            .iter()
            .find(|h| h.id == id)
            .map(|h| h.name.clone())
            .unwrap_or_default()
    };
    Ok(app::fleet::Rebalancing {
        mean_pct: if total > 0.0 {
            used / total * 100.0
        } else {
            0.0
        },
        margin_pct: REBALANCE_MARGIN * 100.0,
        spread_before: if hosts.is_empty() {
            0.0
        } else {
            spread(&hosts)
        },
        spread_after: if after.is_empty() {
            0.0
        } else {
            spread(&after)
        },
        hosts: hosts
            .iter()
            .zip(&after)
            .map(|(b, a)| app::fleet::HostBalance {
                id: b.id,
                name: b.name.clone(),
                before_pct: pct(b),
                after_pct: pct(a),
            })
            .collect(),
        moves: moves
            .into_iter()
            .filter_map(|m| {
                let vm = vms.iter().find(|v| v.id == m.vm)?;
                Some(app::fleet::MoveAdvice {
                    vm: m.vm,
                    vm_name: vm.name.clone(),
                    from_id: m.from,
                    from: name_of(m.from),
                    to_id: m.to,
                    to: name_of(m.to),
                    memory_mib: vm.memory_mib as i64,
                    vcpus: vm.vcpus as i32,
                })
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::hosts::{parse_host_name, parse_labels, parse_uri, NewHost};
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

    #[test]
    fn a_host_form_names_every_bad_field_at_once() {
        let form = HostForm {
            name: " kvm-01 ".into(),
            uri: " qemu:///system ".into(),
            labels: "GPU".into(),
            schedulable: true,
            maintenance: false,
            ssh_host_key: String::new(),
        };
        let host = NewHost::try_from(&form).unwrap();
        assert_eq!(
            (
                host.name.as_str(),
                host.uri.as_str(),
                host.labels,
                host.schedulable
            ),
            ("kvm-01", "qemu:///system", vec!["gpu".to_string()], true)
        );
        let bad = HostForm {
            name: "KVM 01".into(),
            uri: "http://kvm1".into(),
            labels: "bad label".into(),
            ..form
        };
        let err = NewHost::try_from(&bad).unwrap_err();
        for field in ["name", "uri", "labels"] {
            assert!(err.field_message(field).is_some(), "{field}: {err:?}");
        }
    }
}
