use crate::components::guard::{anyone, Guard};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn HomePage() -> impl IntoView {
    view! {
        <Title text="Home · Concierge"/>
        <Guard allow=anyone>
            <HomeContent/>
        </Guard>
    }
}

#[component]
fn HomeContent() -> impl IntoView {
    let actor = use_actor();
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                let a = actor.await.ok().flatten()?;
                let first = a.display_name.split_whitespace().next().unwrap_or("").to_string();
                let tenants = a.memberships.clone();
                Some(view! {
                    <h1>{format!("Welcome, {first}")}</h1>
                    <div class="grid">
                        <section class="card">
                            <h2>"Your organisations"</h2>
                            {if tenants.is_empty() {
                                view! { <p class="muted">"You are not a member of any organisation yet. Ask an administrator to add you."</p> }.into_any()
                            } else {
                                view! {
                                    <ul class="plain">
                                        {tenants.into_iter().map(|m| view! {
                                            <li>
                                                <strong>{m.tenant_name.clone()}</strong>
                                                " "
                                                <span class="badge">{m.role.label()}</span>
                                                {m.tenant_suspended.then(|| view! { " " <span class="badge warn">"suspended"</span> })}
                                            </li>
                                        }).collect_view()}
                                    </ul>
                                }.into_any()
                            }}
                        </section>
                        {a.fleet_admin.then(|| view! {
                            <section class="card">
                                <h2>"Fleet administration"</h2>
                                <ul class="plain links">
                                    <li><a href="/tenants">"Tenants"</a>" — create, rename, suspend organisations"</li>
                                    <li><a href="/users">"Users"</a>" — accounts, fleet admins, one-time passwords"</li>
                                    <li><a href="/audit">"Audit log"</a>" — every change, who made it and from where"</li>
                                </ul>
                            </section>
                        })}
                        <section class="card">
                            <h2>"Your account"</h2>
                            <p>{a.email.clone()}</p>
                            <a href="/account">"Sessions and password"</a>
                        </section>
                    </div>
                })
            })}
        </Suspense>
        // Outside the Suspense above: a resource created inside another's Suspend does not
        // hydrate cleanly.
        <div class="grid home-dashboard"><TenantDashboard/></div>
    }
}

/// What a member needs at a glance: their VMs, their quota, requests in flight and, for
/// approvers, what waits for them. Kept current by live updates.
#[component]
fn TenantDashboard() -> impl IntoView {
    use crate::provisioning::{read_home_panels, state_badge};
    let actor = use_actor();
    let pushed = crate::live::use_live(|e| e.kind == "domain" || e.kind == "request");
    // One call, one transaction for the four panels.
    let data = Resource::new(
        move || pushed.get(),
        move |_| async move {
            let actor = actor.await.ok().flatten();
            let member = actor.as_ref().is_some_and(|a| !a.memberships.is_empty());
            // Managers only read reports: no links to requesting they cannot follow.
            let requests = actor
                .as_ref()
                .is_some_and(|a| a.memberships.iter().any(|m| a.may_request(m.tenant_id)));
            // Requests in flight are filtered on the server, so none hides behind older ones.
            match read_home_panels().await {
                Ok(p) => (
                    member,
                    requests,
                    Some(p.vms),
                    Some(p.requests),
                    p.waiting,
                    p.quota,
                ),
                Err(_) => (member, requests, None, None, None, None),
            }
        },
    );
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                let (member, may_request, vms, requests, waiting, quota) = data.await;
                if !member {
                    return None;
                }
                let in_flight = requests.map(|p| p.items).unwrap_or_default();
                Some(view! {
                    <section class="card">
                        <div class="card-head"><h2>"Your VMs"</h2>{may_request.then(|| view! { <a href="/vms">"All"</a> })}</div>
                        {match vms {
                            Some(p) if !p.items.is_empty() => view! {
                                <ul class="plain vm-list">
                                    {p.items.into_iter().take(6).map(|v| {
                                        let (lease, class) = v.lease_text();
                                        let state = v.shown_state().to_string();
                                        let href = v.host_id.map(|h| format!("/vms/{h}/{}", v.uuid)).unwrap_or_else(|| "/vms".into());
                                        view! {
                                            <li data-vm=v.name.clone()>
                                                <a href=href>{v.name.clone()}</a>" "
                                                <span class=state_badge(&state)>{state.clone()}</span>" "
                                                <img class="sparkline" src=format!("/sparklines/cpu/{}", v.uuid) alt=format!("CPU of {} over the last 6 hours", v.name) width="120" height="28" loading="lazy"/>" "
                                                <span class=class>{lease}</span>
                                            </li>
                                        }
                                    }).collect_view()}
                                </ul>
                            }.into_any(),
                            _ if may_request => view! { <p class="muted">"None yet. "<a href="/catalog">"Request one from the catalog."</a></p> }.into_any(),
                            _ => view! { <p class="muted">"None."</p> }.into_any(),
                        }}
                    </section>
                    <section class="card">
                        <div class="card-head"><h2>"Requests"</h2>{may_request.then(|| view! { <a href="/requests">"All"</a> })}</div>
                        {waiting.filter(|n| *n > 0).map(|n| view! { <p class="notice warn"><a href="/approvals">{format!("{n} request(s) wait for your approval.")}</a></p> })}
                        {if in_flight.is_empty() {
                            view! { <p class="muted">"Nothing in flight."</p> }.into_any()
                        } else {
                            view! {
                                <ul class="plain">
                                    {in_flight.into_iter().map(|r| view! {
                                        <li><a href=format!("/requests/{}", r.id)>{format!("{} · {}", r.template_name, r.name_prefix)}</a>" "<span class=r.state.badge()>{r.state_label()}</span></li>
                                    }).collect_view()}
                                </ul>
                            }.into_any()
                        }}
                    </section>
                    {quota.map(|(name, q)| view! {
                        <section class="card">
                            <h2>{format!("Quota in {name}")}</h2>
                            <crate::components::quota::QuotaBars effect=q with_adding=false/>
                        </section>
                    })}
                })
            })}
        </Transition>
    }
}
