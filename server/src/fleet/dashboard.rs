//! The fleet dashboard, its charts, and the drift list.
use super::*;
use crate::metering::metrics::Range;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::list::{self, asc, Order};
use app::error::AppError;
use app::fleet::{Anomaly, BusyHost, ChartUnit, ChartView, DomainSummary, FleetDashboard};
use app::seam::RequestCtx;
use app::{Page, Place};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

#[tracing::instrument(skip_all)]
pub(super) async fn charts(
    b: &FleetBackend,
    req: &RequestCtx,
    range: &str,
) -> Result<Vec<ChartView>, AppError> {
    req.fleet_admin()?;
    let range = parse_range(range)?;
    // Every fleet admin sees the same charts; they change once per sample period.
    let (pool, clock) = (b.pool.clone(), b.clock.clone());
    Ok(b.charts[&range]
        .get(0, move || fleet_charts(pool.clone(), range, clock.now()))
        .await?)
}

pub(super) async fn dashboard(
    b: &FleetBackend,
    req: &RequestCtx,
) -> Result<FleetDashboard, AppError> {
    req.fleet_admin()?;
    // Versioned by the live-event generation: after an event the figures are computed
    // again before answering (the page refetches because of that event).
    let generation = b.live_generation.load(std::sync::atomic::Ordering::Relaxed);
    let (pool, overcommit, replica) = (b.pool.clone(), b.vcpu_overcommit, b.replica);
    let minimums = b.min_versions;
    Ok(b.dashboard
        .get(generation, move || {
            dashboard_figures(pool.clone(), overcommit, replica, minimums)
        })
        .await?)
}

pub(super) async fn drift(
    b: &FleetBackend,
    req: &RequestCtx,
    place: Place,
) -> Result<Page<DomainSummary>> {
    req.fleet_admin()?;
    let mut tx = db::begin_generic(&b.pool, Scope::fleet()).await?;
    let page = b
        .domains_page(
            &mut tx,
            "NOT d.managed AND d.missing_since IS NULL AND ($1::uuid IS NULL OR d.host_id = $1)",
            None,
            "",
            &place,
        )
        .await?;
    db::done(tx);
    Ok(page)
}

/// The fleet dashboard's figures, read from the inventory and the requests.
pub(super) async fn dashboard_figures(
    pool: PgPool,
    vcpu_overcommit: f64,
    replica: Uuid,
    minimums: (i64, i64),
) -> Result<FleetDashboard> {
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
        .await?;
    let vms_by_state: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM domains WHERE missing_since IS NULL GROUP BY state ORDER BY count(*) DESC, state",
        )
        .fetch_all(&mut *tx)
        .await?;
    let top_tenants: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT t.name, coalesce(sum(d.vcpus), 0)::int8, coalesce(sum(d.memory_kib), 0)::int8, count(*)
             FROM domains d JOIN tenants t ON t.id = d.tenant_id
             WHERE d.missing_since IS NULL GROUP BY t.name ORDER BY 2 DESC, 3 DESC LIMIT 5",
        )
        .fetch_all(&mut *tx)
        .await?;
    // The fullest hosts by memory (what placement runs out of first), with their vCPUs.
    #[derive(sqlx::FromRow)]
    struct Busy {
        id: Uuid,
        name: String,
        state: String,
        cpus: i64,
        vcpus_allocated: i64,
        memory_kib: i64,
        memory_allocated_kib: i64,
    }
    let busiest: Vec<Busy> = sqlx::query_as(
            "SELECT h.id, h.name, h.state, coalesce(h.cpus, 0)::int8 AS cpus,
                    coalesce(a.vcpus, 0)::int8 AS vcpus_allocated, coalesce(h.memory_kib, 0)::int8 AS memory_kib,
                    coalesce(a.memory_kib, 0)::int8 AS memory_allocated_kib
             FROM hosts h LEFT JOIN (
                 SELECT host_id, sum(vcpus) AS vcpus, sum(memory_kib) AS memory_kib FROM domains
                 WHERE missing_since IS NULL AND state NOT IN ('shutoff', 'crashed') GROUP BY host_id
             ) a ON a.host_id = h.id
             ORDER BY coalesce(a.memory_kib, 0)::float8 / greatest(h.memory_kib, 1) DESC, h.name
             LIMIT 8",
        )
        .fetch_all(&mut *tx)
        .await?;
    let replicas = crate::platform::cluster::replicas(&mut tx, replica).await?;
    #[derive(sqlx::FromRow)]
    struct Unusual {
        subject: Uuid,
        host_id: Option<Uuid>,
        subject_name: String,
        tenant_name: Option<String>,
        detail: String,
        started_at: time::OffsetDateTime,
    }
    let anomalies: Vec<Unusual> = sqlx::query_as(
        "SELECT a.subject, a.host_id, a.subject_name, t.name AS tenant_name, a.detail, a.started_at
         FROM alerts a LEFT JOIN tenants t ON t.id = a.tenant_id
         WHERE a.kind = 'anomaly' AND a.state = 'firing' ORDER BY a.started_at DESC LIMIT 10",
    )
    .fetch_all(&mut *tx)
    .await?;
    // Hosts below the minimum versions; few hosts (hundreds), so judged here by the same rule
    // as the host list.
    #[derive(sqlx::FromRow)]
    struct Versions {
        id: Uuid,
        name: String,
        lib_version: Option<i64>,
        hv_type: Option<String>,
        hv_version: Option<i64>,
    }
    let versions: Vec<Versions> = sqlx::query_as(
        "SELECT id, name, lib_version, hv_type, hv_version FROM hosts ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let outdated_hosts = versions
        .into_iter()
        .filter_map(|v| {
            super::hosts::outdated(v.lib_version, v.hv_type.as_deref(), v.hv_version, minimums).map(
                |reason| app::fleet::OutdatedHost {
                    id: v.id,
                    name: v.name,
                    reason,
                },
            )
        })
        .collect();
    Ok(FleetDashboard {
        outdated_hosts,
        minimum_versions: format!(
            "libvirt {}, QEMU {}",
            app::fleet::version_string(minimums.0),
            app::fleet::version_string(minimums.1)
        ),
        replicas,
        anomalies: anomalies
            .into_iter()
            .map(|a| Anomaly {
                vm: a.subject,
                host_id: a.host_id,
                vm_name: a.subject_name,
                tenant_name: a.tenant_name,
                detail: a.detail,
                since: a.started_at,
            })
            .collect(),
        busiest_hosts: busiest
            .into_iter()
            .map(|b| BusyHost {
                id: b.id,
                name: b.name,
                state: b.state,
                cpus: b.cpus,
                vcpus_allocated: b.vcpus_allocated,
                memory_kib: b.memory_kib,
                memory_allocated_kib: b.memory_allocated_kib,
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

pub(super) async fn fleet_charts(
    pool: PgPool,
    range: Range,
    now: time::OffsetDateTime,
) -> Result<Vec<ChartView>> {
    let series = crate::metering::metrics::fleet_series(&pool, range, now).await?;
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

    pub(super) fn current(&self, version: u64) -> Option<(bool, T)> {
        let guard = self.value.read().expect("kept value");
        match &*guard {
            Some((v, at, value)) if *v == version => {
                Some((at.elapsed() >= self.ttl, value.clone()))
            }
            _ => None,
        }
    }

    pub(super) fn store(&self, version: u64, value: T) {
        *self.value.write().expect("kept value") =
            Some((version, std::time::Instant::now(), value));
    }

    pub async fn get<F, Fut>(self: &Arc<Self>, version: u64, compute: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
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

pub(super) fn parse_range(range: &str) -> Result<Range, AppError> {
    let range = if range.is_empty() { "24h" } else { range };
    Range::parse(range)
        .ok_or_else(|| AppError::field("range", "Choose a range of 6h, 24h, 7d, 30d or 1y."))
}

pub(super) fn chart_view(
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

#[derive(sqlx::FromRow)]
pub(super) struct DomainRow {
    pub(super) host_id: Uuid,
    pub(super) host_name: String,
    pub(super) uuid: Uuid,
    pub(super) name: String,
    pub(super) state: String,
    pub(super) vcpus: i32,
    pub(super) memory_kib: i64,
    pub(super) managed: bool,
    pub(super) tenant_name: Option<String>,
    pub(super) owner_email: Option<String>,
    pub(super) missing: bool,
    pub(super) state_since: time::OffsetDateTime,
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

pub(super) const DOMAIN_QUERY: &str = "
    SELECT d.host_id, h.name AS host_name, d.uuid, d.name, d.state, d.vcpus, d.memory_kib, d.managed,
           t.name AS tenant_name, u.email AS owner_email, d.missing_since IS NOT NULL AS missing,
           d.state_since
    FROM domains d JOIN hosts h ON h.id = d.host_id
    LEFT JOIN tenants t ON t.id = d.tenant_id LEFT JOIN users u ON u.id = d.owner_id";

/// Domains by name; `domains_drift_order` serves it for the drift list.
const DOMAIN_ORDER: Order = Order {
    name: "name",
    key: &[
        asc("d.name", "text"),
        asc("d.host_id", "uuid"),
        asc("d.uuid", "uuid"),
    ],
};

impl FleetBackend {
    /// A page of the domains that `filter` (over `$1`, the host or NULL) keeps, found by name.
    pub(super) async fn domains_page(
        &self,
        tx: &mut db::Tx,
        filter: &'static str,
        bind_host: Option<Uuid>,
        search: &str,
        place: &Place,
    ) -> Result<Page<DomainSummary>> {
        let place = Place {
            page: place.page.max(1),
            ..place.clone()
        };
        let mut args = sqlx::postgres::PgArguments::default();
        list::arg(&mut args, bind_host)?;
        list::arg(&mut args, list::escape_like(search))?;
        let from_where =
            format!("FROM domains d WHERE {filter} AND ($2 = '' OR d.name ILIKE '%' || $2 || '%')");
        let (w, total) = self
            .domain_lists
            .window(
                tx,
                (filter, bind_host, search.to_string()),
                &DOMAIN_ORDER,
                &from_where,
                &args,
                &place,
                DOMAINS_PER_PAGE,
            )
            .await?;
        let rows: Vec<DomainRow> = sqlx::query_as_with(
            &format!(
                "{DOMAIN_QUERY} WHERE (d.host_id, d.uuid) IN (
                     SELECT d.host_id, d.uuid {from_where} {} ORDER BY {} {})
                 ORDER BY {}",
                w.after, w.pick, w.limit, w.show
            ),
            w.args,
        )
        .fetch_all(&mut **tx)
        .await?;
        let key = |r: &DomainRow| vec![r.name.clone(), r.host_id.to_string(), r.uuid.to_string()];
        Ok(list::keyset_page(
            &place,
            DOMAINS_PER_PAGE,
            total,
            rows,
            key,
            Into::into,
        ))
    }
}
