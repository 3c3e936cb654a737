use crate::audit::{list_audit, AUDIT_SORTS};
use crate::components::filters::QueryChoice;
use crate::components::guard::{any_admin, Guard};
use crate::components::pager::{page_href, Pager};
use crate::components::timestamp::Timestamp;
use crate::shell::use_actor;
use crate::tenant::list_tenants;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use uuid::Uuid;

#[component]
pub fn AuditPage() -> impl IntoView {
    view! {
        <Title text="Audit log · Concierge"/>
        <Guard allow=any_admin>
            <AuditContent/>
        </Guard>
    }
}

#[component]
fn AuditContent() -> impl IntoView {
    let query = use_query_map();
    let get = move |k: &'static str| query.with(|q| q.get(k).unwrap_or_default());
    let tenant = move || Uuid::parse_str(&get("tenant")).ok();
    let page = move || get("page").parse().unwrap_or(1u32);
    let entries = Resource::new(
        move || (tenant(), get("action"), get("actor"), get("sort"), page()),
        |(t, action, actor, sort, p)| list_audit(t, action, actor, sort, p),
    );
    let actor = use_actor();
    // Resolved during server rendering and handed to the browser with the page.
    let all_tenants = Resource::new(|| (), |_| list_tenants());
    view! {
        <h1>"Audit log"</h1>
        <section class="card">
            <form method="get" action="/audit" class="form row search">
                <div class="field">
                    <label for="audit-tenant">"Tenant"</label>
                    <Suspense fallback=|| ()>
                        {move || Suspend::new(async move {
                            let a = actor.await.ok().flatten()?;
                            let current = get("tenant");
                            // Fleet admins pick from every tenant, tenant admins from theirs.
                            let options = if a.fleet_admin {
                                all_tenants.await.unwrap_or_default().into_iter()
                                    .map(|t| (t.id.to_string(), t.name))
                                    .collect::<Vec<_>>()
                            } else {
                                a.administered_tenants()
                                    .map(|m| (m.tenant_id.to_string(), m.tenant_name.clone()))
                                    .collect::<Vec<_>>()
                            };
                            Some(view! {
                                <select id="audit-tenant" name="tenant">
                                    <option value="">{if a.fleet_admin { "All tenants" } else { "All my tenants" }}</option>
                                    {options.into_iter().map(|(id, name)| {
                                        let sel = id == current;
                                        view! { <option value=id selected=sel>{name}</option> }
                                    }).collect_view()}
                                </select>
                            })
                        })}
                    </Suspense>
                </div>
                <div class="field">
                    <label for="audit-action">"Action starts with"</label>
                    <input id="audit-action" name="action" value=move || get("action") placeholder="e.g. tenant."/>
                </div>
                <div class="field">
                    <label for="audit-actor">"Actor e-mail contains"</label>
                    <input id="audit-actor" name="actor" value=move || get("actor")/>
                </div>
                <div class="field">
                    <label for="audit-sort">"Sort"</label>
                    <QueryChoice name="sort" id="audit-sort" options=AUDIT_SORTS.to_vec()/>
                </div>
                <button type="submit">"Filter"</button>
            </form>
        </section>
        <section class="card">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match entries.await {
                        Ok(page) => {
                            let filters: Vec<(&str, String)> = ["tenant", "action", "actor", "sort"]
                                .into_iter()
                                .map(|k| (k, get(k)))
                                .collect();
                            let href = move |p: u32| page_href("/audit", p, &filters);
                            view! {
                                <table class="table audit">
                                    <thead><tr><th>"When"</th><th>"Who"</th><th>"Tenant"</th><th>"Action"</th><th>"Object"</th><th>"Change"</th><th>"From"</th></tr></thead>
                                    <tbody>
                                        {page.items.iter().cloned().map(|e| view! {
                                            <tr>
                                                <td><Timestamp at=e.at/></td>
                                                <td>{e.actor_email.unwrap_or_else(|| "—".into())}</td>
                                                <td>{e.tenant_name.unwrap_or_else(|| "—".into())}</td>
                                                <td><code>{e.action}</code></td>
                                                <td>{e.object_type}" "<span class="muted mono">{e.object_id.unwrap_or_default()}</span></td>
                                                <td class="change">
                                                    {e.before.map(|b| view! { <div><span class="muted">"before "</span><code>{b}</code></div> })}
                                                    {e.after.map(|a| view! { <div><span class="muted">"after "</span><code>{a}</code></div> })}
                                                </td>
                                                <td class="mono">{e.client_addr.unwrap_or_default()}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                {page.items.is_empty().then(|| view! { <p class="muted">"No entries match."</p> })}
                                <Pager page=page.page pages=page.pages() total=page.total href/>
                            }.into_any()
                        }
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
