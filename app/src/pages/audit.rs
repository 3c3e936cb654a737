use crate::audit::{audit_chains, list_audit, ChainState, VerifyAudit, AUDIT_SORTS};
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
        <Integrity tenant=Signal::derive(tenant)/>
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

/// The chains' integrity: how many rows are sealed, the last signed checkpoint, the last
/// verification; a button to verify now and the exports an auditor verifies offline.
#[component]
fn Integrity(tenant: Signal<Option<Uuid>>) -> impl IntoView {
    let verify = ServerAction::<VerifyAudit>::new();
    let chains = Resource::new(
        move || (tenant.get(), verify.version().get()),
        |(t, _)| audit_chains(t),
    );
    let suffix = move || {
        tenant
            .get()
            .map(|t| format!("?tenant={t}"))
            .unwrap_or_default()
    };
    view! {
        <section class="card" aria-labelledby="integrity-title">
            <h2 id="integrity-title">"Integrity"</h2>
            <p class="muted">"Every entry is sealed into its tenant's hash chain when it is written, and the chains' heads are signed with a key kept outside the database. Verifying walks each chain from its first entry."</p>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match chains.await {
                        Ok(list) => view! { <ChainTable chains=list/> }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
            {move || verify.value().get().and_then(|r| r.err()).map(|e| view! { <p class="form-error" role="alert">{e.to_string()}</p> })}
            <div class="actions-row integrity-actions">
                <ActionForm action=verify attr:class="inline-form" attr:id="verify-audit">
                    <input type="hidden" name="tenant_id" value=move || tenant.get().map(|t| t.to_string()).unwrap_or_default()/>
                    <button type="submit" class="primary" disabled=move || verify.pending().get()>
                        {move || if verify.pending().get() { "Verifying…" } else { "Verify now" }}
                    </button>
                </ActionForm>
                <a class="button" href=move || format!("/audit/export.jsonl{}", suffix()) rel="external" download>"Export JSON Lines"</a>
                <a class="button" href=move || format!("/audit/export.csv{}", suffix()) rel="external" download>"Export CSV"</a>
                <a class="button" href=move || format!("/audit/checkpoints.json{}", suffix()) rel="external" download>"Signed checkpoints"</a>
            </div>
        </section>
    }
}

#[component]
fn ChainTable(chains: Vec<ChainState>) -> impl IntoView {
    if chains.is_empty() {
        return view! { <p class="empty">"Nothing recorded yet."</p> }.into_any();
    }
    view! {
        <table class="table chains">
                <thead><tr><th>"Chain"</th><th>"Entries"</th><th>"Last signed checkpoint"</th><th>"Last verified"</th><th>"State"</th></tr></thead>
                <tbody>
                    {chains.into_iter().map(|c| {
                        let name = c.name();
                        let state = match (&c.problem, c.checked_at) {
                            (Some(p), _) => view! {
                                <span class="badge danger">"Broken"</span>
                                <span class="problem">{format!(" intact up to {}, then {p}", c.intact_to.unwrap_or(0))}</span>
                            }.into_any(),
                            (None, Some(_)) => view! {
                                <span class="badge ok">"Intact"</span>
                                <span class="muted">{format!(" up to {}", c.intact_to.unwrap_or(0))}</span>
                            }.into_any(),
                            (None, None) => view! { <span class="muted">"Not verified yet"</span> }.into_any(),
                        };
                        view! {
                            <tr>
                                <td data-label="Chain">{name}</td>
                                <td data-label="Entries">{c.rows}</td>
                                <td data-label="Signed"><span class="cell-value">{match (c.checkpoint_seq, c.checkpoint_at) {
                                    (Some(s), Some(at)) => view! { "entry "{s}", "<Timestamp at/> }.into_any(),
                                    _ => view! { <span class="muted">"none yet"</span> }.into_any(),
                                }}</span></td>
                                <td data-label="Verified"><span class="cell-value">{match c.checked_at {
                                    Some(at) => view! { <Timestamp at/> }.into_any(),
                                    None => view! { <span class="muted">"never"</span> }.into_any(),
                                }}</span></td>
                                <td data-label="State" class="chain-state"><span class="cell-value">{state}</span></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
        </table>
    }
    .into_any()
}
