use crate::components::chart::{ChartGrid, RangePicker};
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::timestamp::Timestamp;
use crate::fleet::{get_vm, vm_charts, AdoptVm, VmAction, VmDetail, VM_ACTIONS};
use crate::provisioning::{
    get_managed_vm, list_snapshots, ExtendLease, ManagedVm, ResizeVm, Snapshot, SnapshotAction,
};
use crate::tenant::list_tenants;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use uuid::Uuid;

#[component]
pub fn VmPage() -> impl IntoView {
    view! {
        <Title text="VM · Concierge"/>
        <Guard allow=anyone>
            <VmContent/>
            <VmCharts/>
        </Guard>
    }
}

/// CPU, memory, disk and network over the chosen range: a sibling of the page's resource.
#[component]
fn VmCharts() -> impl IntoView {
    let params = use_params_map();
    let query = leptos_router::hooks::use_query_map();
    let range = move || query.with(|q| q.get("range").unwrap_or_default());
    let ids = move || {
        params.with(|p| {
            let host = p.get("host").and_then(|s| Uuid::parse_str(&s).ok());
            let uuid = p.get("uuid").and_then(|s| Uuid::parse_str(&s).ok());
            host.zip(uuid)
        })
    };
    let tick = crate::live::ticker(60_000);
    let charts = Resource::new(
        move || (ids(), range(), tick.get()),
        |(ids, range, _)| async move {
            match ids {
                Some((h, u)) => vm_charts(h, u, range).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let base = move || {
        ids()
            .map(|(h, u)| format!("/vms/{h}/{u}"))
            .unwrap_or_default()
    };
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                match charts.await {
                    Ok(Some(c)) => Some(view! {
                        <section class="chart-section">
                            <div class="card-head">
                                <h2>"Metrics"</h2>
                                <RangePicker current=range() base=base()/>
                            </div>
                            <ChartGrid charts=c/>
                        </section>
                    }.into_any()),
                    // The page above already says why the VM cannot be shown.
                    Ok(None) | Err(_) => None,
                }
            })}
        </Transition>
    }
}

/// A duration as people read it: "9 ms", "4.2 s", "2 min 5 s".
fn took(ms: i32) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", f64::from(ms) / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Which actions make sense in a state (the backend accepts any; libvirt has the last word).
fn offered(state: &str, action: &str) -> bool {
    match action {
        "start" => state == "shutoff" || state == "crashed",
        "shutdown" | "reboot" | "suspend" => state == "running",
        "resume" => state == "paused",
        "force_off" => state != "shutoff",
        _ => false,
    }
}

fn ids_untracked(params: Memo<leptos_router::params::ParamsMap>) -> Option<(Uuid, Uuid)> {
    params.with_untracked(|p| {
        let host = p.get("host").and_then(|s| Uuid::parse_str(&s).ok());
        let uuid = p.get("uuid").and_then(|s| Uuid::parse_str(&s).ok());
        host.zip(uuid)
    })
}

#[component]
fn VmContent() -> impl IntoView {
    let params = use_params_map();
    let ids = move || {
        params.with(|p| {
            let host = p.get("host").and_then(|s| Uuid::parse_str(&s).ok());
            let uuid = p.get("uuid").and_then(|s| Uuid::parse_str(&s).ok());
            host.zip(uuid)
        })
    };
    let act = ServerAction::<VmAction>::new();
    let adopt = ServerAction::<AdoptVm>::new();
    let act_error = action_error(act);
    let adopt_error = action_error(adopt);
    // The VM's state changes arrive pushed (another browser, the hypervisor, a lease).
    let pushed = crate::live::use_live(move |e| {
        e.uuid.is_some() && e.uuid == ids_untracked(params).map(|(_, u)| u)
    });
    let panel = PanelActions {
        extend: ServerAction::<ExtendLease>::new(),
        resize: ServerAction::<ResizeVm>::new(),
        snap: ServerAction::<SnapshotAction>::new(),
    };
    // One resource for the whole page (a nested one would not hydrate cleanly): the domain,
    // and for portal VMs their lease and snapshots.
    let vm = Resource::new(
        move || {
            (
                ids(),
                act.version().get(),
                adopt.version().get(),
                pushed.get(),
                panel.extend.version().get(),
                panel.resize.version().get(),
                panel.snap.version().get(),
            )
        },
        |(ids, ..)| async move {
            let (h, u) = ids.ok_or_else(|| crate::error::AppError::NotFound("VM".into()))?;
            let d = get_vm(h, u).await?;
            let managed = if d.domain.managed {
                match get_managed_vm(u).await.ok().flatten() {
                    Some(m) => Some((m, list_snapshots(u).await.unwrap_or_default())),
                    None => None,
                }
            } else {
                None
            };
            // Unmanaged: the tenants it may be adopted into (fleet admins only; others get none).
            let tenants = if d.domain.managed {
                Vec::new()
            } else {
                list_tenants().await.unwrap_or_default()
            };
            Ok::<_, crate::error::AppError>((d, managed, tenants))
        },
    );
    // State changes (pushed from the hypervisor) announced to screen readers.
    let announce = RwSignal::new(String::new());
    Effect::new(move |prev: Option<Option<String>>| {
        let now = vm
            .get()
            .and_then(|r| r.ok())
            .map(|(d, ..)| d.domain.state.clone());
        if let (Some(Some(before)), Some(after)) = (&prev, &now) {
            if before != after {
                announce.set(format!("The VM is now {after}."));
            }
        }
        now.or(prev.flatten())
    });
    view! {
        <p class="sr-only" role="status" aria-live="polite">{move || announce.get()}</p>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match vm.await {
                    Ok((d, managed, tenants)) => view! { <VmView d managed tenants panel act act_error adopt adopt_error/> }.into_any(),
                    Err(error) => view! { <crate::pages::not_found::LoadFailed error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// The actions of the lease, resize and snapshot forms (owned by the page so that the page's
/// one resource refetches after them).
#[derive(Clone, Copy)]
struct PanelActions {
    extend: ServerAction<ExtendLease>,
    resize: ServerAction<ResizeVm>,
    snap: ServerAction<SnapshotAction>,
}

#[component]
fn VmView(
    d: VmDetail,
    managed: Option<(ManagedVm, Vec<Snapshot>)>,
    tenants: Vec<crate::tenant::TenantSummary>,
    panel: PanelActions,
    act: ServerAction<VmAction>,
    act_error: Signal<Option<crate::error::AppError>>,
    adopt: ServerAction<AdoptVm>,
    adopt_error: Signal<Option<crate::error::AppError>>,
) -> impl IntoView {
    let dom = d.domain.clone();
    let host = dom.host_id.to_string();
    let uuid = dom.uuid.to_string();
    let state = dom.state.clone();
    // A graceful shutdown in progress: the guest was asked, the deadline has not passed.
    let shutting_down = d
        .operations
        .iter()
        .find(|o| o.operation == "shutdown" && o.status == "running")
        .map(|o| o.detail.clone().unwrap_or_default());
    let buttons = VM_ACTIONS
        .iter()
        .filter(|(a, _)| offered(&state, a) && !(shutting_down.is_some() && *a == "shutdown"))
        .map(|(a, label)| {
            let (host, uuid) = (host.clone(), uuid.clone());
            let danger = *a == "force_off";
            view! {
                <ActionForm action=act attr:class="inline">
                    <input type="hidden" name="host_id" value=host/>
                    <input type="hidden" name="uuid" value=uuid/>
                    <input type="hidden" name="action" value=*a/>
                    <button type="submit" class=if danger { "danger" } else { "" } disabled=move || act.pending().get()>{*label}</button>
                </ActionForm>
            }
        })
        .collect_view();
    let (host2, uuid2, host3, uuid3) = (host.clone(), uuid.clone(), host.clone(), uuid.clone());
    // One name everywhere: the one its owner gave it (as in the lists); libvirt's own name,
    // which carries a suffix to stay unique on the host, is a detail.
    let name = managed
        .as_ref()
        .map(|(m, _)| m.name.clone())
        .unwrap_or_else(|| dom.name.clone());
    let libvirt_name = (name != dom.name).then(|| dom.name.clone());
    // Host pages are for fleet admins: others see where it runs, without a link they cannot use.
    let fleet_admin = crate::shell::use_actor()
        .get_untracked()
        .and_then(|a| a.ok().flatten())
        .is_some_and(|a| a.fleet_admin);
    view! {
        <div class="page-head">
            <h1>{name.clone()} " " <span class=format!("badge {}", match dom.state.as_str() { "running" => "ok", "paused" | "pmsuspended" | "shutdown" => "warn", "crashed" => "danger", _ => "muted" })>{dom.state.clone()}</span>
                {shutting_down.is_some().then(|| view! { " " <span class="badge warn" data-testid="shutting-down">"shutting down…"</span> })}
            </h1>
            {if fleet_admin {
                view! { <a href=format!("/hosts/{}", dom.host_id)>{format!("on {}", dom.host_name)}</a> }.into_any()
            } else {
                view! { <span class="muted">{format!("on {}", dom.host_name)}</span> }.into_any()
            }}
        </div>
        <crate::pages::alerts::VmAlerts host=dom.host_id vm=dom.uuid/>
        {dom.missing.then(|| view! { <p class="notice warn">"This VM is no longer on its host; its record is kept."</p> })}
        {shutting_down.filter(|d| !d.is_empty()).map(|d| view! { <p class="notice" role="status">{d}</p> })}
        <section class="card">
            <div class="grid facts">
                <div><span class="muted">"vCPUs"</span><strong>{dom.vcpus}</strong></div>
                <div><span class="muted">"Memory"</span><strong>{format!("{} MiB", dom.memory_kib / 1024)}</strong></div>
                <div><span class="muted">"Tenant"</span><strong>{dom.tenant_name.clone().unwrap_or_else(|| "unmanaged".into())}</strong></div>
                <div><span class="muted">"Owner"</span><strong>{dom.owner_email.clone().unwrap_or_else(|| "—".into())}</strong></div>
                <div><span class="muted">"State since"</span><strong><Timestamp at=dom.state_since/></strong></div>
                {libvirt_name.map(|n| view! { <div><span class="muted">"Name on the host"</span><strong>{n}</strong></div> })}
            </div>
        </section>
        {(!dom.missing).then(|| view! {
            <section class="card">
                <h2>"Actions"</h2>
                <FormMessage error=act_error/>
                <div class="actions-row">{buttons}</div>
                {(state == "running").then(|| {
                    let base = format!("/vms/{}/{}/console", host, uuid);
                    view! {
                        <p class="actions-row consoles">
                            // Full page loads: the console page runs its own script.
                            <a class="button" rel="external" href=format!("{base}/serial")>"Serial console"</a>
                            <a class="button" rel="external" href=format!("{base}/graphical")>"Graphical console"</a>
                        </p>
                    }
                })}
                <details class="danger-zone">
                    <summary>"Delete this VM"</summary>
                    <ActionForm action=act attr:class="form row">
                        <input type="hidden" name="host_id" value=host2/>
                        <input type="hidden" name="uuid" value=uuid2/>
                        <input type="hidden" name="action" value="delete"/>
                        <div class="field">
                            <label for="confirm">{format!("Type {name} to confirm")}</label>
                            <input id="confirm" name="confirm" autocomplete="off" aria-describedby="confirm-error"/>
                            <FieldMessage error=act_error field="confirm"/>
                        </div>
                        <button type="submit" class="danger">"Delete VM"</button>
                    </ActionForm>
                </details>
            </section>
        })}
        {(!dom.managed && !tenants.is_empty()).then(|| view! { <AdoptForm host=host3 uuid=uuid3 tenants adopt adopt_error/> })}
        {managed.filter(|_| !dom.missing).map(|(vm, snaps)| view! { <ManagedPanel vm snaps panel state=dom.state.clone()/> })}
        <div class="grid">
            <section class="card">
                <h2>"Disks"</h2>
                <table class="table">
                    <thead><tr><th>"Target"</th><th>"Device"</th><th>"Format"</th><th>"Source"</th></tr></thead>
                    <tbody>{d.disks.into_iter().map(|k| view! {
                        <tr><td data-label="Target">{k.target}</td><td data-label="Device">{k.device}</td><td data-label="Format">{k.format.unwrap_or_default()}</td><td data-label="Source" class="mono small wrap">{k.source.unwrap_or_default()}</td></tr>
                    }).collect_view()}</tbody>
                </table>
            </section>
            <section class="card">
                <h2>"Network interfaces"</h2>
                <table class="table">
                    <thead><tr><th>"Type"</th><th>"MAC"</th><th>"Source"</th><th>"Model"</th></tr></thead>
                    <tbody>{d.nics.into_iter().map(|n| view! {
                        <tr><td data-label="Type">{n.kind}</td><td data-label="MAC" class="mono small">{n.mac.unwrap_or_default()}</td><td data-label="Source">{n.source.unwrap_or_default()}</td><td data-label="Model">{n.model.unwrap_or_default()}</td></tr>
                    }).collect_view()}</tbody>
                </table>
            </section>
        </div>
        <section class="card">
            <h2>"Recent operations"</h2>
            <table class="table">
                <thead><tr><th>"When"</th><th>"Action"</th><th>"By"</th><th>"Result"</th><th>"Took"</th></tr></thead>
                <tbody>{d.operations.into_iter().map(|o| view! {
                    <tr>
                        <td data-label="When"><Timestamp at=o.started_at/></td>
                        <td data-label="Action">{o.operation}</td>
                        <td data-label="By">{o.actor_email.unwrap_or_else(|| "—".into())}</td>
                        <td data-label="Result">
                            <span class=match o.status.as_str() { "succeeded" => "badge ok", "failed" => "badge danger", _ => "badge warn" }>{o.status.clone()}</span>
                            {o.error.map(|e| view! { " " <span class="small muted">{e}</span> })}
                            {o.detail.filter(|_| o.status != "running").map(|e| view! { " " <span class="small muted">{e}</span> })}
                        </td>
                        <td data-label="Took">{o.duration_ms.map(took).unwrap_or_default()}</td>
                    </tr>
                }).collect_view()}</tbody>
            </table>
        </section>
    }
}

#[component]
fn AdoptForm(
    host: String,
    uuid: String,
    tenants: Vec<crate::tenant::TenantSummary>,
    adopt: ServerAction<AdoptVm>,
    adopt_error: Signal<Option<crate::error::AppError>>,
) -> impl IntoView {
    // Props only, no resource of its own: a resource created inside the page's Suspend would
    // not hydrate cleanly.
    let list = tenants;
    {
        view! {
            <section class="card">
                <h2>"Adopt into a tenant"</h2>
                <p class="muted">"This domain was not created by Concierge. Adopting it gives it a tenant and an owner, who can then manage it."</p>
                <FormMessage error=adopt_error/>
                <ActionForm action=adopt attr:class="form row">
                    <input type="hidden" name="host_id" value=host/>
                    <input type="hidden" name="uuid" value=uuid/>
                    <div class="field">
                        <label for="adopt-tenant">"Tenant"</label>
                        <select id="adopt-tenant" name="tenant_id">
                            {list.into_iter().map(|t| view! { <option value=t.id.to_string()>{t.name}</option> }).collect_view()}
                        </select>
                    </div>
                    <div class="field">
                        <label for="adopt-owner">"Owner's e-mail"</label>
                        <input id="adopt-owner" name="owner_email" type="email" required aria-describedby="owner_email-error"/>
                        <FieldMessage error=adopt_error field="owner_email"/>
                    </div>
                    <button type="submit" class="primary">"Adopt"</button>
                </ActionForm>
            </section>
        }
    }
}

/// Lease, resize and snapshots of a VM the portal manages (nothing for other domains).
#[component]
fn ManagedPanel(
    vm: ManagedVm,
    snaps: Vec<Snapshot>,
    panel: PanelActions,
    state: String,
) -> impl IntoView {
    let (extend, resize, snap) = (panel.extend, panel.resize, panel.snap);
    let (extend_error, resize_error, snap_error) = (
        action_error(extend),
        action_error(resize),
        action_error(snap),
    );
    let uuid = vm.uuid;
    let shutoff = state == "shutoff";
    let (lease, class) = vm.lease_text();
    let id = uuid.to_string();
    let (id2, id3, id4) = (id.clone(), id.clone(), id.clone());
    let network = vm.network.clone();
    let login = vm.ssh.clone().map(|ssh| {
        let addresses = vm.guest_addresses.join(", ");
        let how = match network {
            Some(n) => format!("On the libvirt network {n}: SSH goes to the guest's own address."),
            None => "User-mode networking: SSH arrives through a port forwarded on the host.".to_string(),
        };
        view! {
            <section class="card" id="login" aria-labelledby="login-title">
                <h2 id="login-title">"Log in"</h2>
                {match ssh.ready_at {
                    Some(at) => view! {
                        <p><span class="badge ok" id="ssh-ready">"ready"</span>" SSH answered "<Timestamp at/>"."</p>
                    }.into_any(),
                    None => view! {
                        <p><span class="badge warn" id="ssh-waiting">"booting"</span>" The guest is starting and cloud-init is writing your SSH keys; this takes about a minute. This page updates by itself."</p>
                    }.into_any(),
                }}
                <p class="ssh-command"><code id="ssh-command" style="user-select: all">{ssh.command()}</code></p>
                <p class="small muted">
                    {format!("Log in as {} with a key from ", ssh.user)}
                    <a href="/account#ssh-keys">"your account page"</a>
                    " (the keys it had when this VM was created). Passwords are off."
                </p>
                {(!addresses.is_empty()).then(|| view! {
                    <p class="small" id="guest-addresses">"Guest addresses (its agent's word, or the network's DHCP lease): " <span class="mono">{addresses}</span></p>
                })}
                <p class="small muted" id="guest-network">{how}</p>
            </section>
        }
    });
    view! {
                    {login}
                    <div class="grid">
                        <section class="card">
                            <h2>"Lease"</h2>
                            <p><span class=class>{lease}</span>" "<Timestamp at=vm.lease_ends_at/></p>
                            <p class="small muted">{format!("Owners may extend up to {} days from today; an approver can grant more. At the end the VM is stopped, then deleted after a grace period.", vm.max_lease_days.unwrap_or(30))}</p>
                            <FormMessage error=extend_error/>
                            <ActionForm action=extend attr:class="form row">
                                <input type="hidden" name="uuid" value=id/>
                                <div class="field">
                                    <label for="extend-days">"Extend by (days)"</label>
                                    <input id="extend-days" name="days" type="number" min="1" value="7" aria-describedby="days-error"/>
                                    <FieldMessage error=extend_error field="days"/>
                                </div>
                                <button type="submit">"Extend lease"</button>
                            </ActionForm>
                        </section>
                        <section class="card">
                            <h2>"Resize"</h2>
                            {if shutoff {
                                view! {
                                    <FormMessage error=resize_error/>
                                    <ActionForm action=resize attr:class="form row">
                                        <input type="hidden" name="uuid" value=id2/>
                                        <div class="field">
                                            <label for="resize-vcpus">"vCPUs"</label>
                                            <input id="resize-vcpus" name="vcpus" type="number" min="1" max="128" value=vm.vcpus aria-describedby="vcpus-error"/>
                                            <FieldMessage error=resize_error field="vcpus"/>
                                        </div>
                                        <div class="field">
                                            <label for="resize-mem">"Memory (GiB)"</label>
                                            <input id="resize-mem" name="memory_gib" type="number" min="0.25" step="0.25" value=vm.memory_mib as f64 / 1024.0 aria-describedby="memory_gib-error"/>
                                            <FieldMessage error=resize_error field="memory_gib"/>
                                        </div>
                                        <button type="submit">"Resize"</button>
                                    </ActionForm>
                                }.into_any()
                            } else {
                                view! { <p class="muted">"Shut the VM off to change its vCPUs or memory. The quota is checked again."</p> }.into_any()
                            }}
                        </section>
                    </div>
                    <section class="card">
                        <h2>"Snapshots"</h2>
                        <FormMessage error=snap_error/>
                        {if snaps.is_empty() {
                            view! { <p class="muted">"No snapshots."</p> }.into_any()
                        } else {
                            view! {
                                <table class="table">
                                    <thead><tr><th>"Name"</th><th>"Description"</th><th>"Taken"</th><th>"By"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                    <tbody>{snaps.into_iter().map(|s| {
                                        let (a, b) = (id3.clone(), id3.clone());
                                        let (n1, n2) = (s.name.clone(), s.name.clone());
                                        view! {
                                            <tr>
                                                <td data-label="Name" class="mono">{s.name}</td>
                                                <td data-label="Description">{s.description}</td>
                                                <td data-label="Taken"><Timestamp at=s.created_at/></td>
                                                <td data-label="By">{s.created_by.unwrap_or_default()}</td>
                                                <td class="actions-row">
                                                    <details class="confirm">
                                                        <summary>"Revert…"</summary>
                                                        <p class="small">"The VM returns to this snapshot: its disk, and its vCPUs and memory as they were then (the quota follows). What changed since is lost."</p>
                                                        <ActionForm action=snap attr:class="inline">
                                                            <input type="hidden" name="uuid" value=a/><input type="hidden" name="op" value="revert"/><input type="hidden" name="name" value=n1.clone()/>
                                                            <button type="submit" class="danger">{format!("Revert to {n1}")}</button>
                                                        </ActionForm>
                                                    </details>
                                                    <ActionForm action=snap attr:class="inline">
                                                        <input type="hidden" name="uuid" value=b/><input type="hidden" name="op" value="delete"/><input type="hidden" name="name" value=n2/>
                                                        <button type="submit" class="danger">"Delete"</button>
                                                    </ActionForm>
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}</tbody>
                                </table>
                            }.into_any()
                        }}
                        <ActionForm action=snap attr:class="form row">
                            <input type="hidden" name="uuid" value=id4/>
                            <input type="hidden" name="op" value="create"/>
                            <div class="field">
                                <label for="snap-name">"Name"</label>
                                <input id="snap-name" name="name" required maxlength="64" placeholder="before-upgrade" aria-describedby="name-error"/>
                                <FieldMessage error=snap_error field="name"/>
                            </div>
                            <div class="field wide">
                                <label for="snap-desc">"Description"</label>
                                <input id="snap-desc" name="description" maxlength="200"/>
                            </div>
                            <button type="submit">"Take snapshot"</button>
                        </ActionForm>
                    </section>
    }
}
