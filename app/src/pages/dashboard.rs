//! The fleet dashboard (fleet admins): hosts, capacity, VMs by state, top consumers, pending
//! requests and drift, kept current by live updates.
use crate::components::capacity::{gib, CpuCapacity, MemoryCapacity};
use crate::components::chart::{ChartGrid, RangePicker};
use crate::components::guard::{fleet_admin, Guard};
use crate::components::timestamp::Timestamp;
use crate::fleet::{fleet_charts, get_fleet_dashboard, Anomaly, FleetDashboard, ReplicaInfo};
use crate::live::ticker;
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn DashboardPage() -> impl IntoView {
    view! {
        <Title text="Fleet dashboard · Concierge"/>
        <Guard allow=fleet_admin>
            <DashboardContent/>
            <FleetCharts/>
        </Guard>
    }
}

#[component]
fn DashboardContent() -> impl IntoView {
    let pushed = crate::live::use_live(|_| true);
    let tick = ticker(30_000);
    let data = Resource::new(
        move || (pushed.get(), tick.get()),
        |_| get_fleet_dashboard(),
    );
    view! {
        <div class="page-head"><h1>"Fleet"</h1><a class="button" href="/hosts">"Hosts"</a></div>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(d) => view! { <DashboardView d/> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
        <crate::components::runway::RunwaySection tenant=None/>
    }
}

/// CPU, memory and running VMs over the chosen range; a sibling of the dashboard's resource
/// (not nested in it), refreshed every minute.
#[component]
fn FleetCharts() -> impl IntoView {
    let query = leptos_router::hooks::use_query_map();
    let range = move || query.with(|q| q.get("range").unwrap_or_default());
    let tick = ticker(60_000);
    let charts = Resource::new(move || (range(), tick.get()), |(r, _)| fleet_charts(r));
    view! {
        <section class="chart-section">
            <div class="card-head">
                <h2>"Over time"</h2>
                {move || view! { <RangePicker current=range() base="/dashboard".to_string()/> }}
            </div>
            <Transition fallback=|| view! { <p class="muted">"Loading charts…"</p> }>
                {move || Suspend::new(async move {
                    match charts.await {
                        Ok(c) => view! { <ChartGrid charts=c/> }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn Stat(
    label: &'static str,
    value: String,
    #[prop(optional)] class: &'static str,
    #[prop(optional)] href: Option<&'static str>,
) -> impl IntoView {
    let inner =
        view! { <span class="stat-value">{value}</span><span class="stat-label">{label}</span> };
    match href {
        Some(h) => view! { <a class=format!("card stat {class}") href=h>{inner}</a> }.into_any(),
        None => view! { <div class=format!("card stat {class}")>{inner}</div> }.into_any(),
    }
}

#[component]
fn DashboardView(d: FleetDashboard) -> impl IntoView {
    let vcpu_cap = (d.cpus as f64 * d.vcpu_overcommit).floor() as i64;
    let total_vms: i64 = d.vms_by_state.iter().map(|(_, n)| n).sum();
    let max_state = d
        .vms_by_state
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(1)
        .max(1);
    let states_alt = d
        .vms_by_state
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let lost_class = if d.lost > 0 { "danger" } else { "" };
    let pending_class = if d.pending_requests > 0 { "warn" } else { "" };
    let drift_class = if d.drift > 0 { "warn" } else { "" };
    view! {
        <div class="stats">
            <Stat label="hosts connected" value=format!("{} / {}", d.connected, d.hosts) href="/hosts"/>
            <Stat label="hosts lost" value=d.lost.to_string() class=lost_class href="/hosts"/>
            <Stat label="VMs" value=total_vms.to_string()/>
            <Stat label="requests pending approval" value=d.pending_requests.to_string() class=pending_class href="/requests?all=1"/>
            <Stat label="being provisioned" value=d.provisioning.to_string()/>
            <Stat label="unmanaged domains (drift)" value=d.drift.to_string() class=drift_class href="/drift"/>
        </div>
        <div class="grid">
            <section class="card">
                <h2>"Capacity"</h2>
                <CpuCapacity allocated=d.vcpus_allocated cpus=d.cpus capacity=vcpu_cap/>
                <MemoryCapacity allocated_kib=d.memory_allocated_kib total_kib=d.memory_kib/>
                <p class="small muted">"Allocated to running domains on connected hosts."</p>
            </section>
            <section class="card">
                <h2 id="states-title">"VMs by state"</h2>
                <figure class="bars" aria-labelledby="states-title" aria-describedby="states-alt">
                    {d.vms_by_state.iter().map(|(s, n)| {
                        let pct = (*n as f64 / max_state as f64 * 100.0).max(1.0);
                        view! {
                            <div class="bar-row">
                                <span class="bar-label">{s.clone()}</span>
                                <span class=format!("bar state-{s}") style=format!("width: {pct:.1}%")></span>
                                <span class="bar-value">{*n}</span>
                            </div>
                        }
                    }).collect_view()}
                    <figcaption id="states-alt" class="sr-only">{states_alt}</figcaption>
                </figure>
            </section>
        </div>
        <section class="card">
            <div class="card-head"><h2>"Fullest hosts"</h2><a href="/hosts">{format!("All {} hosts", d.hosts)}</a></div>
            <table class="table host-load">
                <thead><tr><th>"Host"</th><th>"vCPUs allocated"</th><th>"Memory allocated"</th></tr></thead>
                <tbody>
                    {d.busiest_hosts.into_iter().map(|h| {
                        let crate::fleet::BusyHost { id, name, state, cpus, vcpus_allocated: vcpus, memory_kib: mem, memory_allocated_kib: mem_used } = h;
                        let vcap = (cpus as f64 * d.vcpu_overcommit).floor() as i64;
                        view! {
                            <tr>
                                <td data-label="Host"><span class="cell-value"><a href=format!("/hosts/{id}")>{name}</a>" "{(state != "connected").then(|| view! { <span class="badge danger">{state.clone()}</span> })}</span></td>
                                <td data-label="vCPUs"><span class="cell-value"><CpuCapacity allocated=vcpus cpus capacity=vcap compact=true/></span></td>
                                <td data-label="Memory"><span class="cell-value"><MemoryCapacity allocated_kib=mem_used total_kib=mem compact=true/></span></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
        <Unusual anomalies=d.anomalies/>
        <Versions outdated=d.outdated_hosts minimum=d.minimum_versions/>
        <section class="card">
            <h2>"Top consumers"</h2>
            {if d.top_tenants.is_empty() {
                view! { <p class="muted">"No managed VMs yet."</p> }.into_any()
            } else {
                view! {
                    <table class="table">
                        <thead><tr><th>"Organisation"</th><th class="num">"vCPUs"</th><th class="num">"Memory"</th><th class="num">"VMs"</th></tr></thead>
                        <tbody>{d.top_tenants.into_iter().map(|(t, v, m, n)| view! {
                            <tr><td data-label="Organisation">{t}</td><td data-label="vCPUs" class="num">{v}</td><td data-label="Memory" class="num">{gib(m)}</td><td data-label="VMs" class="num">{n}</td></tr>
                        }).collect_view()}</tbody>
                    </table>
                }.into_any()
            }}
        </section>
        <Replicas replicas=d.replicas/>
    }
}

/// VMs whose CPU is far from their own usual level at this hour (firing anomaly alerts).
#[component]
fn Versions(outdated: Vec<crate::fleet::OutdatedHost>, minimum: String) -> impl IntoView {
    view! {
        <section class="card" id="versions" aria-labelledby="versions-title">
            <div class="card-head"><h2 id="versions-title">{format!("Hosts needing an update: {}", outdated.len())}</h2><a href="/hosts">"All hosts"</a></div>
            <p class="muted small">{format!("Minimum: {minimum}.")}</p>
            {if outdated.is_empty() {
                view! { <p class="muted">"Every host runs at least the minimum versions."</p> }.into_any()
            } else {
                view! {
                    <table class="table">
                        <thead><tr><th>"Host"</th><th>"Below the minimum"</th></tr></thead>
                        <tbody>{outdated.into_iter().map(|h| view! {
                            <tr>
                                <td data-label="Host"><a href=format!("/hosts/{}", h.id)>{h.name}</a></td>
                                <td data-label="Below">{h.reason}</td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                }.into_any()
            }}
        </section>
    }
}

#[component]
fn Unusual(anomalies: Vec<Anomaly>) -> impl IntoView {
    view! {
        <section class="card" id="anomalies" aria-labelledby="anomalies-title">
            <div class="card-head"><h2 id="anomalies-title">{format!("Unusual now: {}", anomalies.len())}</h2><a href="/alerts">"All alerts"</a></div>
            {if anomalies.is_empty() {
                view! { <p class="muted">"No VM is behaving unlike its own history."</p> }.into_any()
            } else {
                view! {
                    <table class="table">
                        <thead><tr><th>"VM"</th><th>"What"</th><th>"Since"</th></tr></thead>
                        <tbody>{anomalies.into_iter().map(|a| {
                            let href = match a.host_id {
                                Some(h) => format!("/vms/{h}/{}", a.vm),
                                None => "/alerts".into(),
                            };
                            view! {
                                <tr>
                                    <td data-label="VM"><span class="cell-value"><a href=href>{a.vm_name}</a>{a.tenant_name.map(|t| view! { <br/><span class="muted small">{t}</span> })}</span></td>
                                    <td data-label="What">{a.detail}</td>
                                    <td data-label="Since"><Timestamp at=a.since/></td>
                                </tr>
                            }
                        }).collect_view()}</tbody>
                    </table>
                }.into_any()
            }}
        </section>
    }
}

/// The server processes sharing the database: one line each, so an operator sees a replica
/// that stopped beating (or one still running an old version) at a glance.
#[component]
fn Replicas(replicas: Vec<ReplicaInfo>) -> impl IntoView {
    let alive = replicas.iter().filter(|r| r.alive).count();
    view! {
        <section class="card">
            <h2>{format!("Server replicas: {alive} running")}</h2>
            <table class="table">
                <thead><tr><th>"Replica"</th><th>"Version"</th><th class="num">"Hosts"</th><th>"Started"</th><th>"Last heartbeat"</th><th>"State"</th></tr></thead>
                <tbody>{replicas.into_iter().map(|r| {
                    let (state, class) = match (r.alive, r.this) {
                        (true, true) => ("running (this page)", "badge ok"),
                        (true, false) => ("running", "badge ok"),
                        (false, _) => ("gone", "badge danger"),
                    };
                    view! {
                        <tr>
                            <td data-label="Replica"><code>{r.address}</code></td>
                            <td data-label="Version">{r.version}</td>
                            <td data-label="Hosts" class="num">{r.hosts}</td>
                            <td data-label="Started"><Timestamp at=r.started_at/></td>
                            <td data-label="Last heartbeat"><Timestamp at=r.heartbeat_at/></td>
                            <td data-label="State"><span class=class>{state}</span></td>
                        </tr>
                    }
                }).collect_view()}</tbody>
            </table>
        </section>
    }
}
