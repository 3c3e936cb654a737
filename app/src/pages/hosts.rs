use crate::components::capacity::{gib, CpuCapacity, MemoryCapacity};
use crate::components::filters::QueryChoice;
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::components::pager::{page_href, Pager};
use crate::components::timestamp::Timestamp;
use crate::fleet::{
    get_host, host_page, list_drift, DomainSummary, ForgetDomain, HostSummary, ReconcileHost,
    RegisterHost, SetHostDomainType, HOST_SORTS,
};
use crate::fleet::{
    list_volumes, CreatePool, CreateVolume, DefineNetwork, DeleteVolume, NetworkAction,
};
use crate::url::urlencode;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use uuid::Uuid;

fn bytes(b: i64) -> String {
    format!("{:.0} GiB", b as f64 / 1_073_741_824.0)
}

#[component]
fn StateBadge(state: String) -> impl IntoView {
    let class = match state.as_str() {
        "connected" | "running" => "badge ok",
        "lost" | "crashed" => "badge danger",
        "connecting" | "paused" | "pmsuspended" => "badge warn",
        _ => "badge muted",
    };
    view! { <span class=class>{state}</span> }
}

/// A labelled capacity meter: `used` of `total`.
#[component]
fn Capacity(label: &'static str, used: f64, total: f64, text: String) -> impl IntoView {
    view! {
        <div class="capacity">
            <span class="capacity-label">{label}</span>
            <meter min="0" max=total.max(1.0) value=used high=total * 0.85 optimum=0 title=text.clone()></meter>
            <span class="capacity-text">{text}</span>
        </div>
    }
}

#[component]
fn HostCapacity(h: HostSummary) -> impl IntoView {
    let used_storage = (h.storage_capacity - h.storage_available) as f64;
    let storage_text = format!(
        "{} of {} used",
        bytes(h.storage_capacity - h.storage_available),
        bytes(h.storage_capacity)
    );
    view! {
        <CpuCapacity allocated=h.vcpus_allocated cpus=i64::from(h.cpus.unwrap_or(0)) capacity=h.vcpu_capacity/>
        <MemoryCapacity allocated_kib=h.memory_allocated_kib total_kib=h.memory_kib.unwrap_or(0)/>
        <Capacity label="Storage" used=used_storage total=h.storage_capacity as f64 text=storage_text/>
    }
}

#[component]
pub fn HostsPage() -> impl IntoView {
    view! {
        <Title text="Hosts · Concierge"/>
        <Guard allow=fleet_admin>
            <HostsContent/>
        </Guard>
    }
}

#[component]
fn HostsContent() -> impl IntoView {
    let register = ServerAction::<RegisterHost>::new();
    let error = action_error(register);
    let form = reset_on_success(register);
    let query = use_query_map();
    let get = move |k: &str| query.with(|q| q.get(k).unwrap_or_default());
    let page = move || query.with(|q| q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32));
    let hosts = Resource::new(
        move || {
            (
                register.version().get(),
                page(),
                get("search"),
                get("state"),
                get("sort"),
            )
        },
        |(_, page, search, state, sort)| host_page(page, search, state, sort),
    );
    let href = move |n: u32| {
        let filters: Vec<(&str, String)> = ["search", "state", "sort"]
            .into_iter()
            .map(|k| (k, get(k)))
            .collect();
        page_href("/hosts", n, &filters)
    };
    view! {
        <div class="page-head">
            <h1>"Hosts"</h1>
            <a class="button" href="/drift">"Unmanaged domains (drift)"</a>
        </div>
        <form method="get" action="/hosts" class="form row filters" role="search">
            <label>"Name or label" <input type="search" name="search" prop:value=move || get("search")/></label>
            <label>"State"
                <QueryChoice name="state" options=vec![("", "any"), ("connected", "connected"), ("lost", "lost"), ("connecting", "connecting"), ("maintenance", "in maintenance")]/>
            </label>
            <label>"Sort"
                <QueryChoice name="sort" options=HOST_SORTS.to_vec()/>
            </label>
            <button type="submit">"Apply"</button>
        </form>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match hosts.await {
                    Ok(p) if p.items.is_empty() && p.total == 0 && get("search").is_empty() && get("state").is_empty() => view! { <p class="muted">"No hosts yet: register one below."</p> }.into_any(),
                    Ok(p) if p.items.is_empty() => view! { <p class="muted">"No host matches these filters."</p> }.into_any(),
                    Ok(p) => {
                        let pages = p.pages();
                        view! {
                            <div class="host-grid">
                                {p.items.into_iter().map(|h| view! { <HostCard h/> }).collect_view()}
                            </div>
                            <Pager page=p.page pages total=p.total href=href/>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <section class="card">
            <h2>"Register a host"</h2>
            <p class="muted">"Saving opens a connection to test it. Use qemu:///system, qemu:///session, qemu+ssh://user@host/system, qemu+tls://host/system, or test:///path/node.xml for a simulated host."</p>
            <FormMessage error/>
            <ActionForm action=register node_ref=form attr:class="form row">
                <div class="field">
                    <label for="host-name">"Name"</label>
                    <input id="host-name" name="name" required maxlength="63" placeholder="kvm-01" aria-describedby="name-error"/>
                    <FieldMessage error field="name"/>
                </div>
                <div class="field wide">
                    <label for="host-uri">"libvirt URI"</label>
                    <input id="host-uri" name="uri" required maxlength="500" placeholder="qemu+ssh://root@kvm-01/system" aria-describedby="uri-error"/>
                    <FieldMessage error field="uri"/>
                </div>
                <div class="field wide">
                    <label for="host-key">"SSH host key (qemu+ssh hosts)"</label>
                    <input id="host-key" name="ssh_host_key" maxlength="2000" placeholder="SHA256:… or ssh-ed25519 AAAA…" aria-describedby="ssh_host_key-error ssh_host_key-help"/>
                    <small id="ssh_host_key-help" class="muted">"Leave empty to be shown the key the host presents, then confirm it here."</small>
                    <FieldMessage error field="ssh_host_key"/>
                </div>
                <div class="field">
                    <label for="host-labels">"Labels"</label>
                    <input id="host-labels" name="labels" placeholder="ssd, rack-1" aria-describedby="labels-error"/>
                    <FieldMessage error field="labels"/>
                </div>
                <label class="check"><input type="checkbox" name="schedulable" value="true" checked/>" Schedulable"</label>
                <label class="check"><input type="checkbox" name="maintenance" value="true"/>" Maintenance"</label>
                <button type="submit" class="primary" disabled=move || register.pending().get()>
                    {move || if register.pending().get() { "Connecting…" } else { "Register host" }}
                </button>
            </ActionForm>
        </section>
        <RebalanceSection/>
    }
}

/// Rebalancing advice: the hosts' memory shares now and after the advised moves.
#[component]
fn RebalanceSection() -> impl IntoView {
    let moving = ServerAction::<crate::fleet::MoveVm>::new();
    let move_error = action_error(moving);
    let advice = Resource::new(
        move || moving.version().get(),
        |_| crate::fleet::rebalance_advice(),
    );
    view! {
        <section class="card" aria-labelledby="rebalance-title" id="rebalance">
            <h2 id="rebalance-title">"Rebalancing advice"</h2>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match advice.await {
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                        Ok(a) => view! {
                            <p class="muted small">{format!(
                                "Memory allocated is {:.0} % of the fleet's on average; hosts more than {:.0} points above it are worth unloading. Moves keep each VM's template image, pool space, memory and vCPU overcommit. A move copies the VM's disk to the other host while the VM is off: at once when it is off, otherwise when its owner next shuts it down (they are told); it stays off until they start it.",
                                a.mean_pct, a.margin_pct)}</p>
                            {if a.moves.is_empty() {
                                let why = if a.hosts.len() < 2 {
                                    "Nothing to move: there is one host to place VMs on.".to_string()
                                } else {
                                    format!("Nothing to move: the hosts are within {:.0} points of each other.", a.spread_before)
                                };
                                view! { <p class="empty">{why}</p> }.into_any()
                            } else {
                                view! {
                                    <p>{format!("{} move{} would narrow the gap between the fullest and the emptiest host from {:.0} to {:.0} points:", a.moves.len(), if a.moves.len() == 1 { "" } else { "s" }, a.spread_before, a.spread_after)}</p>
                                    <FormMessage error=move_error/>
                                    {move || moving.value().get().and_then(|r| r.ok()).map(|_| view! {
                                        <p class="notice ok" role="status">"Move requested: it happens while the VM is off; its operation log shows it."</p>
                                    })}
                                    <table class="table" id="rebalance-moves">
                                        <thead><tr><th>"VM"</th><th>"From"</th><th>"To"</th><th>"Size"</th><th>"Move"</th></tr></thead>
                                        <tbody>
                                            {a.moves.into_iter().map(|m| view! {
                                                <tr>
                                                    <td data-label="VM"><a href=format!("/vms/{}/{}", m.from_id, m.vm)>{m.vm_name}</a></td>
                                                    <td data-label="From">{m.from}</td>
                                                    <td data-label="To">{m.to.clone()}</td>
                                                    <td data-label="Size">{format!("{} vCPU, {:.1} GiB", m.vcpus, m.memory_mib as f64 / 1024.0)}</td>
                                                    <td data-label="Move">
                                                        <ActionForm action=moving attr:class="inline">
                                                            <input type="hidden" name="host_id" value=m.from_id.to_string()/>
                                                            <input type="hidden" name="uuid" value=m.vm.to_string()/>
                                                            <input type="hidden" name="target_host" value=m.to_id.to_string()/>
                                                            <button type="submit">{format!("Move to {}", m.to)}</button>
                                                        </ActionForm>
                                                    </td>
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                }.into_any()
                            }}
                            <table class="table compact" id="rebalance-hosts">
                                <thead><tr><th>"Host"</th><th>"Memory allocated now"</th><th>"After the moves"</th></tr></thead>
                                <tbody>
                                    {a.hosts.into_iter().map(|h| view! {
                                        <tr>
                                            // Plain text: the list above links each host once (a second link of
                                            // the same name would make "the host's link" ambiguous).
                                            <td data-label="Host">{h.name}</td>
                                            <td data-label="Now">{format!("{:.0} %", h.before_pct)}</td>
                                            <td data-label="After">{format!("{:.0} %", h.after_pct)}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn HostCard(h: HostSummary) -> impl IntoView {
    let href = format!("/hosts/{}", h.id);
    let flags = h.clone();
    view! {
        <article class="card host-card">
            <div class="card-head">
                <h2><a href=href>{h.name.clone()}</a></h2>
                <StateBadge state=h.state.clone()/>
            </div>
            <p class="muted mono small">{h.uri.clone()}</p>
            {h.state_reason.clone().filter(|_| h.state != "connected").map(|r| view! { <p class="field-error">{r}</p> })}
            <p class="flags">
                {flags.simulated.then(|| view! { <span class="badge muted">"simulated"</span> " " })}
                {flags.ssh_unverified.then(|| view! { <span class="badge warn" title="no_verify=1: the SSH host key is not checked">"host key not verified"</span> " " })}
                {flags.ssh_host_key.clone().map(|f| view! { <span class="badge ok mono" title="Every connection checks the host presents this SSH key">{format!("key {f}")}</span> " " })}
                {flags.maintenance.then(|| view! { <span class="badge warn">"maintenance"</span> " " })}
                {(!flags.schedulable).then(|| view! { <span class="badge muted">"not schedulable"</span> " " })}
                {flags.update_reason.clone().map(|why| view! { <span class="badge danger" title=why.clone()>"needs update"</span> " " <span class="small muted">{why}</span> " " })}
                {flags.labels.iter().map(|l| view! { <span class="badge">{l.clone()}</span> " " }).collect_view()}
            </p>
            <HostCapacity h=h.clone()/>
            <p class="muted small">
                {format!("{} domain{}, {} running · libvirt {} · {} {}", h.domains, if h.domains == 1 { "" } else { "s" }, h.running,
                    h.lib_version.clone().unwrap_or_else(|| "?".into()),
                    h.hv_type.clone().unwrap_or_default(), h.hv_version.clone().unwrap_or_default())}
            </p>
        </article>
    }
}

#[component]
pub fn HostPage() -> impl IntoView {
    view! {
        <Title text="Host · Concierge"/>
        <Guard allow=fleet_admin>
            <HostContent/>
        </Guard>
    }
}

#[component]
fn HostContent() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.with(|p| p.get("id").and_then(|s| Uuid::parse_str(&s).ok()));
    let search = move || query.with(|q| q.get("q").unwrap_or_default());
    let page = move || query.with(|q| q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32));
    let reconcile = ServerAction::<ReconcileHost>::new();
    let reconcile_error = action_error(reconcile);
    // Network changes come back through the host's detail, so it refetches after each.
    let net_op = ServerAction::<NetworkAction>::new();
    let net_define = ServerAction::<DefineNetwork>::new();
    let forget = ServerAction::<ForgetDomain>::new();
    let forget_error = action_error(forget);
    let virt = ServerAction::<SetHostDomainType>::new();
    let virt_error = action_error(virt);
    let detail = Resource::new(
        move || {
            (
                id(),
                search(),
                page(),
                reconcile.version().get()
                    + net_op.version().get()
                    + net_define.version().get()
                    + forget.version().get()
                    + virt.version().get(),
            )
        },
        |(id, s, p, _)| async move {
            match id {
                Some(id) => get_host(id, s, p).await,
                None => Err(crate::error::AppError::NotFound("Host".into())),
            }
        },
    );
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(d) => {
                        let h = d.host.clone();
                        let hid = h.id.to_string();
                        let s = search();
                        let base = format!("/hosts/{}", h.id);
                        let base2 = base.clone();
                        let pool_names: Vec<String> = d.pools.iter().filter(|p| p.active && !p.missing).map(|p| p.name.clone()).collect();
                        view! {
                            <div class="page-head">
                                <h1>{h.name.clone()} " " <StateBadge state=h.state.clone()/></h1>
                                <ActionForm action=reconcile attr:class="inline">
                                    <input type="hidden" name="host_id" value=hid/>
                                    <button type="submit">{move || if reconcile.pending().get() { "Reconciling…" } else { "Reconcile now" }}</button>
                                </ActionForm>
                            </div>
                            <FormMessage error=reconcile_error/>
                            <section class="card">
                                <p class="mono small">{h.uri.clone()}</p>
                                {h.state_reason.clone().filter(|_| h.state != "connected").map(|r| view! { <p class="field-error">{r}</p> })}
                                <HostCapacity h=h.clone()/>
                                <p class="muted small">
                                    {format!("{} CPUs · libvirt {} · {} {} · ", h.cpus.unwrap_or(0),
                                        h.lib_version.clone().unwrap_or_else(|| "?".into()),
                                        h.hv_type.clone().unwrap_or_default(), h.hv_version.clone().unwrap_or_default())}
                                    "last reconcile: "
                                    {h.last_sync_at.map(|t| view! { <Timestamp at=t/> }.into_any()).unwrap_or_else(|| view! { "never" }.into_any())}
                                </p>
                                {(!h.simulated).then(|| {
                                    let chosen = h.domain_type.clone().unwrap_or_default();
                                    let hid = h.id.to_string();
                                    view! {
                                        <FormMessage error=virt_error/>
                                        <ActionForm action=virt attr:class="form row" attr:id="domain-type-form">
                                            <input type="hidden" name="host_id" value=hid/>
                                            <div class="field">
                                                <label for="domain-type">"Virtualization for new VMs"</label>
                                                <select id="domain-type" name="domain_type" aria-describedby="domain-type-help domain_type-error">
                                                    {[("", "Detected (KVM when offered)"), ("kvm", "KVM"), ("qemu", "QEMU emulation (TCG)")].into_iter().map(|(v, l)| view! {
                                                        <option value=v selected=chosen == v>{l}</option>
                                                    }).collect_view()}
                                                </select>
                                                <p class="muted small" id="domain-type-help">"Choose TCG where KVM is offered but guest kernels fail under it (some nested hosts)."</p>
                                                <FieldMessage error=virt_error field="domain_type"/>
                                            </div>
                                            <button type="submit">"Save"</button>
                                        </ActionForm>
                                    }
                                })}
                            </section>
                            <div class="grid">
                                <section class="card">
                                    <h2>"Storage pools"</h2>
                                    <table class="table">
                                        <thead><tr><th>"Name"</th><th>"Type"</th><th>"Path"</th><th>"Free"</th></tr></thead>
                                        <tbody>
                                            {d.pools.into_iter().map(|p| view! {
                                                <tr>
                                                    <td>{p.name}{p.missing.then(|| view! { " " <span class="badge warn">"missing"</span> })}</td>
                                                    <td>{p.pool_type.unwrap_or_default()}</td>
                                                    <td class="mono small">{p.path.unwrap_or_default()}</td>
                                                    <td>{format!("{} of {}", bytes(p.available), bytes(p.capacity))}</td>
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                </section>
                                <NetworksCard host=h.id networks=d.networks.clone() op=net_op define=net_define/>
                            </div>
                            <StorageCard host=h.id pools=pool_names/>
                            <section class="card">
                                <div class="card-head">
                                    <h2>"Domains"</h2>
                                    <form method="get" action=base class="form row search">
                                        <label class="sr-only" for="domain-search">"Search domains"</label>
                                        <input id="domain-search" name="q" type="search" placeholder="Search by name" value=s.clone()/>
                                        <button type="submit">"Search"</button>
                                    </form>
                                </div>
                                <DomainTable page=d.domains.clone() show_host=false/>
                                <Pager page=d.domains.page pages=d.domains.pages() total=d.domains.total
                                    href=move |p| format!("{base2}?q={}&page={p}", urlencode(&s))/>
                            </section>
                            {(!d.missing.is_empty()).then(|| view! { <MissingDomains list=d.missing.clone() forget error=forget_error/> })}
                        }.into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn DomainTable(page: crate::Page<DomainSummary>, show_host: bool) -> impl IntoView {
    view! {
        <table class="table">
            <thead><tr>
                <th>"Name"</th>{show_host.then(|| view! { <th>"Host"</th> })}<th>"State"</th><th>"vCPUs"</th><th>"Memory"</th><th>"Tenant / owner"</th><th>"Since"</th>
            </tr></thead>
            <tbody>
                {page.items.into_iter().map(|d| view! {
                    <tr>
                        <td><a href=format!("/vms/{}/{}", d.host_id, d.uuid)>{d.name.clone()}</a>{d.missing.then(|| view! { " " <span class="badge warn">"missing"</span> })}</td>
                        {show_host.then(|| view! { <td><a href=format!("/hosts/{}", d.host_id)>{d.host_name.clone()}</a></td> })}
                        <td><StateBadge state=d.state.clone()/></td>
                        <td>{d.vcpus}</td>
                        <td>{gib(d.memory_kib)}</td>
                        <td>{if d.managed {
                            format!("{} / {}", d.tenant_name.clone().unwrap_or_default(), d.owner_email.clone().unwrap_or_else(|| "—".into()))
                        } else { "unmanaged".to_string() }}</td>
                        <td><Timestamp at=d.state_since/></td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
pub fn DriftPage() -> impl IntoView {
    view! {
        <Title text="Drift · Concierge"/>
        <Guard allow=fleet_admin>
            <DriftContent/>
        </Guard>
    }
}

#[component]
fn DriftContent() -> impl IntoView {
    let query = use_query_map();
    let place = move || {
        query.with(|q| {
            (
                q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32),
                q.get("after").unwrap_or_default(),
                q.get("before").unwrap_or_default(),
            )
        })
    };
    let drift = Resource::new(place, |(page, after, before)| {
        list_drift(page, after, before)
    });
    view! {
        <h1>"Unmanaged domains"</h1>
        <p class="muted">"Domains found on hosts that Concierge did not create. They stay listed here until they are adopted into a tenant or removed."</p>
        <section class="card">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match drift.await {
                        Ok(p) if p.items.is_empty() => view! { <p class="muted">"No drift: every domain is managed."</p> }.into_any(),
                        Ok(p) => {
                            let (pg, pages, total) = (p.page, p.pages(), p.total);
                            let (before, after) = (p.before.clone(), p.after.clone());
                            view! {
                                <DomainTable page=p show_host=true/>
                                <Pager page=pg pages total href=|n| format!("/drift?page={n}") before after/>
                            }.into_any()
                        }
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// Pools and volumes of one host: create a `dir` pool; list, create (blank, linked clone,
/// full copy) and delete volumes.
#[component]
fn StorageCard(host: Uuid, pools: Vec<String>) -> impl IntoView {
    let create_pool = ServerAction::<CreatePool>::new();
    let create_volume = ServerAction::<CreateVolume>::new();
    let delete_volume = ServerAction::<DeleteVolume>::new();
    let pool_error = action_error(create_pool);
    let volume_error = action_error(create_volume);
    let delete_error = action_error(delete_volume);
    let selected = RwSignal::new(pools.first().cloned().unwrap_or_default());
    let volumes = Resource::new(
        move || {
            (
                selected.get(),
                create_volume.version().get(),
                delete_volume.version().get(),
            )
        },
        move |(pool, ..)| async move {
            if pool.is_empty() {
                Ok(Vec::new())
            } else {
                list_volumes(host, pool).await
            }
        },
    );
    let hid = host.to_string();
    let (hid2, hid3) = (hid.clone(), hid.clone());
    let options = pools.clone();
    view! {
        <section class="card">
            <h2>"Volumes"</h2>
            <div class="form row">
                <div class="field">
                    <label for="volume-pool">"Pool"</label>
                    <select id="volume-pool" on:change=move |ev| selected.set(event_target_value(&ev))>
                        {options.into_iter().map(|p| view! { <option value=p.clone()>{p.clone()}</option> }).collect_view()}
                    </select>
                </div>
            </div>
            <FormMessage error=delete_error/>
            <FieldMessage error=delete_error field="confirm"/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || {
                    let hid = hid3.clone();
                    Suspend::new(async move {
                        match volumes.await {
                            Ok(list) if list.is_empty() => view! { <p class="muted">"No volumes in this pool."</p> }.into_any(),
                            Ok(list) => view! {
                                <table class="table volumes">
                                    <thead><tr><th>"Volume"</th><th class="num">"Size"</th><th class="num">"On disk"</th><th>"Used by"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                    <tbody>{list.into_iter().map(|v| {
                                        let (hid, pool) = (hid.clone(), selected.get_untracked());
                                        let confirm_id = format!("confirm-volume-{}", v.name);
                                        let in_use = !v.used_by.is_empty();
                                        let (name2, name3) = (v.name.clone(), v.name.clone());
                                        view! {
                                            <tr class="volume" data-volume=v.name.clone()>
                                                <td class="mono">{v.name.clone()}</td>
                                                <td class="num">{size_label(v.capacity_bytes)}</td>
                                                <td class="num">{size_label(v.allocation_bytes)}</td>
                                                <td class="small">{if in_use { v.used_by.join("; ") } else { "nothing".to_string() }}</td>
                                                <td>
                                                    {if in_use {
                                                        view! { <span class="small muted">"in use"</span> }.into_any()
                                                    } else {
                                                        view! {
                                                            <details class="danger-zone compact">
                                                                <summary>"Delete…"</summary>
                                                                <ActionForm action=delete_volume attr:class="inline">
                                                                    <input type="hidden" name="host_id" value=hid/>
                                                                    <input type="hidden" name="pool" value=pool/>
                                                                    <input type="hidden" name="name" value=name2.clone()/>
                                                                    <label class="sr-only" for=confirm_id.clone()>{format!("Type {name2} to confirm")}</label>
                                                                    <input id=confirm_id name="confirm" class="compact" autocomplete="off" placeholder=name3/>
                                                                    <button type="submit" class="small danger">"Delete volume"</button>
                                                                </ActionForm>
                                                            </details>
                                                        }.into_any()
                                                    }}
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}</tbody>
                                </table>
                            }.into_any(),
                            Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                        }
                    })
                }}
            </Suspense>
            <h3>"New volume"</h3>
            <FormMessage error=volume_error/>
            <ActionForm action=create_volume attr:class="form row">
                <input type="hidden" name="host_id" value=hid.clone()/>
                <input type="hidden" name="pool" value=move || selected.get()/>
                <div class="field">
                    <label for="volume-name">"Name"</label>
                    <input id="volume-name" name="name" required placeholder="web-1.qcow2" aria-describedby="name-error"/>
                    <FieldMessage error=volume_error field="name"/>
                </div>
                <div class="field">
                    <label for="volume-kind">"Kind"</label>
                    <select id="volume-kind" name="kind">
                        <option value="blank">"Blank qcow2"</option>
                        <option value="linked">"Linked clone of…"</option>
                        <option value="copy">"Full copy of…"</option>
                    </select>
                    <FieldMessage error=volume_error field="kind"/>
                </div>
                <div class="field">
                    <label for="volume-size">"Size (GiB, blank only)"</label>
                    <input id="volume-size" name="capacity_gib" inputmode="numeric" placeholder="20" aria-describedby="capacity_gib-error"/>
                    <FieldMessage error=volume_error field="capacity_gib"/>
                </div>
                <div class="field">
                    <label for="volume-source">"Source volume (clones)"</label>
                    <input id="volume-source" name="source" placeholder="base.qcow2" aria-describedby="source-error"/>
                    <FieldMessage error=volume_error field="source"/>
                </div>
                <button type="submit" class="primary">"Create volume"</button>
            </ActionForm>
            <h3>"New directory pool"</h3>
            <FormMessage error=pool_error/>
            <ActionForm action=create_pool attr:class="form row">
                <input type="hidden" name="host_id" value=hid2/>
                <div class="field">
                    <label for="pool-name">"Name"</label>
                    <input id="pool-name" name="name" required placeholder="images" aria-describedby="name-error"/>
                    <FieldMessage error=pool_error field="name"/>
                </div>
                <div class="field wide">
                    <label for="pool-path">"Directory"</label>
                    <input id="pool-path" name="path" required placeholder="/var/lib/libvirt/images" aria-describedby="path-error"/>
                    <FieldMessage error=pool_error field="path"/>
                </div>
                <button type="submit">"Create pool"</button>
            </ActionForm>
        </section>
    }
}

/// A host's virtual networks: start, stop, delete, and define new ones.
#[component]
fn NetworksCard(
    host: Uuid,
    networks: Vec<crate::fleet::NetworkInfo>,
    op: ServerAction<NetworkAction>,
    define: ServerAction<DefineNetwork>,
) -> impl IntoView {
    let op_error = action_error(op);
    let define_error = action_error(define);
    let hid = host.to_string();
    let rows = networks
        .into_iter()
        .map(|n| {
            let buttons = if n.missing {
                view! { <span class="badge warn">"missing"</span> }.into_any()
            } else {
                [(if n.active { "stop" } else { "start" }, if n.active { "Stop" } else { "Start" }), ("delete", "Delete")]
                    .into_iter()
                    .map(|(o, label)| {
                        let (hid, name) = (hid.clone(), n.name.clone());
                        view! {
                            <ActionForm action=op attr:class="inline">
                                <input type="hidden" name="host_id" value=hid/>
                                <input type="hidden" name="name" value=name/>
                                <input type="hidden" name="op" value=o/>
                                <button type="submit" class=if o == "delete" { "small danger" } else { "small" }>{label}</button>
                            </ActionForm>
                        }
                    })
                    .collect_view()
                    .into_any()
            };
            view! {
                <tr>
                    <td>{n.name.clone()}</td>
                    <td>{n.forward_mode.clone().unwrap_or_default()}</td>
                    <td>{if n.active { "active" } else { "inactive" }}</td>
                    <td>{buttons}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="card">
            <h2>"Networks"</h2>
            <FormMessage error=op_error/>
            <table class="table">
                <thead><tr><th>"Name"</th><th>"Mode"</th><th>"State"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
            <h3>"New network"</h3>
            <FormMessage error=define_error/>
            <ActionForm action=define attr:class="form row">
                <input type="hidden" name="host_id" value=host.to_string()/>
                <div class="field">
                    <label for="net-name">"Name"</label>
                    <input id="net-name" name="name" required maxlength="32" aria-describedby="name-error"/>
                    <FieldMessage error=define_error field="name"/>
                </div>
                <div class="field">
                    <label for="net-mode">"Mode"</label>
                    <select id="net-mode" name="mode">
                        <option value="nat">"NAT"</option>
                        <option value="isolated">"Isolated"</option>
                        <option value="bridge">"Host bridge"</option>
                    </select>
                    <FieldMessage error=define_error field="mode"/>
                </div>
                <div class="field">
                    <label for="net-address">"Gateway address"</label>
                    <input id="net-address" name="address" placeholder="10.20.0.1" aria-describedby="address-error"/>
                    <FieldMessage error=define_error field="address"/>
                </div>
                <div class="field">
                    <label for="net-prefix">"Prefix length"</label>
                    <input id="net-prefix" name="prefix" placeholder="24" inputmode="numeric" aria-describedby="prefix-error"/>
                    <FieldMessage error=define_error field="prefix"/>
                </div>
                <div class="field">
                    <label for="net-bridge">"Bridge (bridge mode)"</label>
                    <input id="net-bridge" name="bridge" placeholder="br0" aria-describedby="bridge-error"/>
                    <FieldMessage error=define_error field="bridge"/>
                </div>
                <button type="submit">"Define network"</button>
            </ActionForm>
        </section>
    }
}

/// Domains the host no longer has: kept apart from the live ones, until a fleet admin forgets
/// them (a portal VM's record is then closed and its quota released).
#[component]
fn MissingDomains(
    list: Vec<DomainSummary>,
    forget: ServerAction<ForgetDomain>,
    error: Signal<Option<crate::error::AppError>>,
) -> impl IntoView {
    view! {
        <section class="card" data-testid="missing-domains">
            <h2>{format!("Missing from the host ({})", list.len())}</h2>
            <p class="small muted">"These domains were on this host and are gone. Their records stay until you forget them; forgetting a portal VM also closes its record and releases its quota."</p>
            <FormMessage error/>
            <table class="table">
                <thead><tr><th>"Name"</th><th>"Last state"</th><th>"Tenant / owner"</th><th>"Last change"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                <tbody>{list.into_iter().map(|d| view! {
                    <tr>
                        <td><a href=format!("/vms/{}/{}", d.host_id, d.uuid)>{d.name.clone()}</a></td>
                        <td>{d.state.clone()}</td>
                        <td>{d.owner_email.clone().or(d.tenant_name.clone()).unwrap_or_else(|| "unmanaged".into())}</td>
                        <td><Timestamp at=d.state_since/></td>
                        <td>
                            <ActionForm action=forget attr:class="inline">
                                <input type="hidden" name="host_id" value=d.host_id.to_string()/>
                                <input type="hidden" name="uuid" value=d.uuid.to_string()/>
                                <button type="submit" class="small" aria-label=format!("Forget {}", d.name)>"Forget"</button>
                            </ActionForm>
                        </td>
                    </tr>
                }).collect_view()}</tbody>
            </table>
        </section>
    }
}

/// Bytes as GiB (MiB below one GiB).
fn size_label(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
    } else {
        format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20))
    }
}
