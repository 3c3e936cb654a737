//! VM lists: the VMs a user owns, with their leases; for tenant and fleet admins also every
//! VM they administer. Filtered, sorted and paginated on the server; the filters live in the
//! URL (a GET form), so they work without JavaScript and can be shared.
use crate::components::filters::QueryChoice;
use crate::components::guard::{anyone, Guard};
use crate::components::pager::{page_href, Pager};
use crate::components::timestamp::Timestamp;
use crate::live::ticker;
use crate::provisioning::{mib_label, my_vms, state_badge, VM_SORTS};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[component]
pub fn MyVmsPage() -> impl IntoView {
    view! {
        <Title text="My VMs · Concierge"/>
        <Guard allow=anyone>
            <MyVmsContent/>
        </Guard>
    }
}

#[component]
fn MyVmsContent() -> impl IntoView {
    let query = use_query_map();
    let get = move |k: &str| query.with(|q| q.get(k).unwrap_or_default());
    let page = move || query.with(|q| q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32));
    let tick = ticker(30_000);
    let pushed = crate::live::use_live(|e| e.kind == "domain");
    let actor = use_actor();
    let vms = Resource::new(
        move || {
            (
                page(),
                get("all") == "1",
                get("search"),
                get("state"),
                get("sort"),
                get("after"),
                get("before"),
                tick.get(),
                pushed.get(),
            )
        },
        |(page, all, search, state, sort, after, before, ..)| {
            my_vms(page, all, search, state, sort, after, before)
        },
    );
    let href = move |n: u32| {
        let filters: Vec<(&str, String)> = ["all", "search", "state", "sort"]
            .into_iter()
            .map(|k| (k, get(k)))
            .collect();
        page_href("/vms", n, &filters)
    };
    view! {
        <div class="page-head">
            <h1>{move || if get("all") == "1" { "All VMs" } else { "My VMs" }}</h1>
            <a class="button primary" href="/catalog">"New request"</a>
        </div>
        <form method="get" action="/vms" class="form row filters" role="search">
            {move || (get("all") == "1").then(|| view! { <input type="hidden" name="all" value="1"/> })}
            <label>"Name" <input type="search" name="search" prop:value=move || get("search") placeholder="part of a name"/></label>
            <label>"State"
                <QueryChoice name="state" options=vec![("", "any"), ("running", "running"), ("shutoff", "shut off"), ("paused", "paused"), ("failed", "failed"), ("pending", "pending")]/>
            </label>
            <label>"Sort"
                <QueryChoice name="sort" options=VM_SORTS.to_vec()/>
            </label>
            <button type="submit">"Apply"</button>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    let a = actor.await.ok().flatten()?;
                    let admin = a.fleet_admin || a.administered_tenants().next().is_some();
                    admin.then(|| if get("all") == "1" {
                        view! { <a href="/vms">"Only mine"</a> }.into_any()
                    } else {
                        view! { <a href="/vms?all=1">"All VMs I administer"</a> }.into_any()
                    })
                })}
            </Suspense>
        </form>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match vms.await {
                    Ok(p) if p.items.is_empty() => view! { <p class="muted">"No VMs match. Request some from the catalog, or change the filters."</p> }.into_any(),
                    Ok(p) => {
                        let pages = p.pages();
                        let soon: Vec<String> = p.items.iter().filter(|v| (0..=7).contains(&v.lease_days_left)).map(|v| v.name.clone()).collect();
                        let all = get("all") == "1";
                        view! {
                            {(!soon.is_empty() && !all).then(|| view! {
                                <p class="notice warn" role="status">{format!("Leases ending within 7 days: {}. Extend them from the VM page if you still need them.", soon.join(", "))}</p>
                            })}
                            <table class="table">
                                <thead><tr><th>"Name"</th><th>"State"</th><th>"CPU, 6 h"</th><th>"Size"</th><th>"Organisation"</th>{all.then(|| view! { <th>"Owner"</th> })}<th>"Template"</th><th>"Lease"</th></tr></thead>
                                <tbody>
                                    {p.items.into_iter().map(|v| {
                                        let href = match (v.host_id, v.request_id) {
                                            (Some(h), _) => format!("/vms/{h}/{}", v.uuid),
                                            (None, Some(r)) => format!("/requests/{r}"),
                                            _ => "#".into(),
                                        };
                                        let (lease, class) = v.lease_text();
                                        let state = v.shown_state().to_string();
                                        view! {
                                            <tr data-vm=v.name.clone()>
                                                <td data-label="Name"><a href=href>{v.name.clone()}</a></td>
                                                <td data-label="State"><span class=state_badge(&state) data-state=state.clone()>{state.clone()}</span></td>
                                                <td data-label="CPU, 6 h"><img class="sparkline" src=format!("/sparklines/cpu/{}", v.uuid) alt=format!("CPU of {} over the last 6 hours", v.name) width="120" height="28" loading="lazy"/></td>
                                                <td data-label="Size">{format!("{} vCPU · {} · {} GiB", v.vcpus, mib_label(v.memory_mib), v.disk_gib)}</td>
                                                <td data-label="Organisation">{v.tenant_name.clone()}</td>
                                                {all.then(|| view! { <td data-label="Owner">{v.owner_email.clone().unwrap_or_default()}</td> })}
                                                <td data-label="Template">{v.template_name.clone().unwrap_or_default()}</td>
                                                <td data-label="Lease"><span class="cell-value"><span class=class>{lease}</span>" "<span class="small muted"><Timestamp at=v.lease_ends_at/></span></span></td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <Pager page=p.page pages total=p.total href=href before=p.before.clone() after=p.after.clone()/>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}
