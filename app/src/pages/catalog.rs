//! The catalog and the request form.
use crate::account::Actor;
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::quota::QuotaBars;
use crate::provisioning::{catalog, quota_preview, HideTemplate, SubmitRequest, Template};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use uuid::Uuid;

/// The tenants where the actor may request, and the one the page is about (`?tenant=`, else
/// the first).
fn request_tenants(a: &Actor, wanted: Option<Uuid>) -> (Vec<(Uuid, String)>, Option<Uuid>) {
    let list: Vec<(Uuid, String)> = a
        .memberships
        .iter()
        .filter(|m| a.may_request(m.tenant_id))
        .map(|m| (m.tenant_id, m.tenant_name.clone()))
        .collect();
    let chosen = wanted
        .filter(|w| list.iter().any(|(id, _)| id == w))
        .or_else(|| list.first().map(|(id, _)| *id));
    (list, chosen)
}

#[component]
pub fn CatalogPage() -> impl IntoView {
    view! {
        <Title text="Catalog · Concierge"/>
        <Guard allow=anyone>
            <CatalogContent/>
        </Guard>
    }
}

#[component]
fn CatalogContent() -> impl IntoView {
    let actor = use_actor();
    let query = use_query_map();
    let wanted = move || query.with(|q| q.get("tenant").and_then(|t| Uuid::parse_str(&t).ok()));
    let search = move || query.with(|q| q.get("q").unwrap_or_default());
    let hide = ServerAction::<HideTemplate>::new();
    let items = Resource::new(
        move || (wanted(), search(), hide.version().get()),
        move |(wanted, search, _)| async move {
            let a = actor.await.ok().flatten();
            let (tenants, chosen) = match &a {
                Some(a) => request_tenants(a, wanted),
                None => (Vec::new(), None),
            };
            // Tenant admins also see what they hid, to show it again.
            let admin = matches!((&a, chosen), (Some(a), Some(t)) if a.administers(t));
            let list = match chosen {
                Some(t) => catalog(t, search, admin).await,
                None => Ok(Vec::new()),
            };
            (tenants, chosen, list, admin)
        },
    );
    view! {
        <div class="page-head">
            <h1>"Catalog"</h1>
            <a class="button" href="/requests">"My requests"</a>
        </div>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (tenants, chosen, list, admin) = items.await;
                let Some(tenant) = chosen else {
                    return view! { <p class="muted">"You cannot request VMs in any organisation. Ask a tenant admin for the requester role."</p> }.into_any();
                };
                let many = tenants.len() > 1;
                view! {
                    <form method="get" action="/catalog" class="form row filters" role="search">
                        {many.then(|| view! {
                            <div class="field">
                                <label for="cat-tenant">"Organisation"</label>
                                <select id="cat-tenant" name="tenant">
                                    {tenants.iter().map(|(id, name)| view! { <option value=id.to_string() selected=*id == tenant>{name.clone()}</option> }).collect_view()}
                                </select>
                            </div>
                        })}
                        {(!many).then(|| view! { <input type="hidden" name="tenant" value=tenant.to_string()/> })}
                        <div class="field wide">
                            <label for="cat-q">"Search templates"</label>
                            <input id="cat-q" name="q" type="search" value=search() placeholder="name, OS or description"/>
                        </div>
                        <button type="submit">"Search"</button>
                    </form>
                    {match list {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No templates match. Fleet admins publish templates; your tenant admin may hide some."</p> }.into_any(),
                        Ok(list) => view! {
                            <div class="catalog-grid">
                                {list.into_iter().map(|t| view! { <TemplateCard t tenant admin hide/> }).collect_view()}
                            </div>
                        }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }}
                }.into_any()
            })}
        </Suspense>
    }
}

#[component]
fn TemplateCard(
    t: Template,
    tenant: Uuid,
    admin: bool,
    hide: ServerAction<HideTemplate>,
) -> impl IntoView {
    let href = format!("/requests/new?tenant={tenant}&template={}", t.id);
    let hidden = t.hidden;
    let id = t.id.to_string();
    view! {
        <article class=if hidden { "card template-card hidden" } else { "card template-card" }>
            <div class="card-head">
                <h2>{t.name.clone()}</h2>
                {hidden.then(|| view! { <span class="badge warn">"hidden from your organisation"</span> })}
            </div>
            <p class="muted small">{t.os.clone()}</p>
            <p>{t.description.clone()}</p>
            <ul class="plain sizes">
                {t.sizes.iter().enumerate().map(|(i, s)| view! { <li>{s.label()} <SizeNotes offer=t.offer.clone() i/></li> }).collect_view()}
            </ul>
            <OfferNotes offer=t.offer.clone()/>
            <p class="small muted">{format!("Lease {} days by default, up to {}.", t.default_lease_days, t.max_lease_days)}</p>
            {(!t.networks.is_empty()).then(|| view! {
                <p class="small">{format!("Networks: {}.", t.networks.join(", "))}</p>
            })}
            <p class="small">{match &t.login_user {
                Some(user) => format!("Log in over SSH as {user} with the keys on your account page."),
                None => "No guest initialisation: bring your own way in (console).".to_string(),
            }}</p>
            <div class="actions-row">
                {(!hidden).then(|| view! { <a class="button primary" href=href>"Request"</a> })}
                {admin.then(|| view! {
                    <ActionForm action=hide attr:class="inline">
                        <input type="hidden" name="tenant_id" value=tenant.to_string()/>
                        <input type="hidden" name="id" value=id/>
                        <input type="hidden" name="hidden" value=(!hidden).to_string()/>
                        <button type="submit">{if hidden { "Show again" } else { "Hide from my organisation" }}</button>
                    </ActionForm>
                })}
            </div>
        </article>
    }
}

#[component]
pub fn NewRequestPage() -> impl IntoView {
    view! {
        <Title text="New request · Concierge"/>
        <Guard allow=anyone>
            <NewRequestContent/>
        </Guard>
    }
}

#[component]
fn NewRequestContent() -> impl IntoView {
    let actor = use_actor();
    let query = use_query_map();
    let ids = move || {
        query.with(|q| {
            (
                q.get("tenant").and_then(|t| Uuid::parse_str(&t).ok()),
                q.get("template").and_then(|t| Uuid::parse_str(&t).ok()),
            )
        })
    };
    let template = Resource::new(ids, move |(wanted, template)| async move {
        let a = actor.await.ok().flatten()?;
        let (_, tenant) = request_tenants(&a, wanted);
        let tenant = tenant?;
        let list = catalog(tenant, String::new(), false).await.ok()?;
        let t = list.into_iter().find(|t| Some(t.id) == template)?;
        Some((tenant, t))
    });
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match template.await {
                    Some((tenant, t)) => view! { <RequestForm tenant t/> }.into_any(),
                    None => view! {
                        <section class="card narrow">
                            <h1>"Choose a template"</h1>
                            <p>"That template is not in your catalog."</p>
                            <a href="/catalog">"Open the catalog"</a>
                        </section>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn RequestForm(tenant: Uuid, t: Template) -> impl IntoView {
    let submit = ServerAction::<SubmitRequest>::new();
    let error = action_error(submit);
    let first_size = t.sizes.first().map(|s| s.name.clone()).unwrap_or_default();
    let size = RwSignal::new(first_size);
    let count = RwSignal::new("1".to_string());
    let template_id = t.id;
    // The quota effect follows the form as the user types (after hydration; before it, the
    // server renders the effect of the defaults).
    let preview = Resource::new(
        move || (size.get(), count.get()),
        move |(size, count)| quota_preview(Some(tenant), Some(template_id), size, count),
    );
    let default_prefix = t
        .name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let default_prefix = if default_prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        default_prefix
    } else {
        format!("vm-{default_prefix}")
    };
    view! {
        <div class="page-head">
            <h1>{format!("Request {}", t.name)}</h1>
            <a href=format!("/catalog?tenant={tenant}")>"← Catalog"</a>
        </div>
        <div class="grid request-layout">
            <section class="card">
                <FormMessage error/>
                <ActionForm action=submit attr:class="form">
                    <input type="hidden" name="tenant_id" value=tenant.to_string()/>
                    <input type="hidden" name="template_id" value=t.id.to_string()/>
                    <fieldset class="field">
                        <legend>"Size"</legend>
                        {t.sizes.iter().enumerate().map(|(i, s)| {
                            let name = s.name.clone();
                            let n2 = name.clone();
                            view! {
                                <label class="check">
                                    <input type="radio" name="size" value=name.clone() checked=i == 0 on:change=move |_| size.set(n2.clone())/>
                                    " " {s.label()} <SizeNotes offer=t.offer.clone() i/>
                                </label>
                            }
                        }).collect_view()}
                        <FieldMessage error field="size"/>
                        <OfferNotes offer=t.offer.clone()/>
                    </fieldset>
                    <div class="field">
                        <label for="req-count">"How many"</label>
                        <input id="req-count" name="count" type="number" min="1" max="20" value="1" required aria-describedby="count-error"
                            on:input=move |ev| count.set(event_target_value(&ev))/>
                        <FieldMessage error field="count"/>
                    </div>
                    <div class="field">
                        <label for="req-prefix">"Name"</label>
                        <input id="req-prefix" name="name_prefix" required maxlength="50" value=default_prefix aria-describedby="name_prefix-error"/>
                        <p class="small muted">"Lowercase letters, digits and hyphens. Several VMs get -1, -2, … appended."</p>
                        <FieldMessage error field="name_prefix"/>
                    </div>
                    <div class="field">
                        <label for="req-lease">"Lease (days)"</label>
                        <input id="req-lease" name="lease_days" type="number" min="1" max=t.max_lease_days value=t.default_lease_days aria-describedby="lease_days-error"/>
                        <p class="small muted">{format!("At most {} days; you can extend later.", t.max_lease_days)}</p>
                        <FieldMessage error field="lease_days"/>
                    </div>
                    <div class="field">
                        <label for="req-purpose">"Purpose"</label>
                        <textarea id="req-purpose" name="purpose" required maxlength="1000" rows="3" placeholder="What are these machines for?" aria-describedby="purpose-error"></textarea>
                        <FieldMessage error field="purpose"/>
                    </div>
                    {(t.networks.len() > 1).then(|| view! {
                        <div class="field">
                            <label for="req-network">"Network"</label>
                            <select id="req-network" name="network" aria-describedby="network-help network-error">
                                {t.networks.iter().map(|n| {
                                    let label = if n == "user" { "user-mode networking (SSH through a forwarded port)".to_string() } else { n.clone() };
                                    view! { <option value=n.clone()>{label}</option> }
                                }).collect_view()}
                            </select>
                            <p class="muted small" id="network-help">"The VMs join this network; they are placed on hosts that have it."</p>
                            <FieldMessage error field="network"/>
                        </div>
                    })}
                    {t.allow_user_data.then(|| view! {
                        <div class="field">
                            <label for="req-user-data">"Your own cloud-config (optional, YAML)"</label>
                            <textarea id="req-user-data" name="user_data" rows="4" maxlength="16384" spellcheck="false"
                                placeholder="packages: [git, tmux]" aria-describedby="user-data-help user_data-error"></textarea>
                            <p class="muted small" id="user-data-help">"Runs on first boot with the template's own; approvers see it. Users, keys and host name are set for you."</p>
                            <FieldMessage error field="user_data"/>
                        </div>
                    })}
                    <button type="submit" class="primary" disabled=move || submit.pending().get()>
                        {move || if submit.pending().get() { "Submitting…" } else { "Submit request" }}
                    </button>
                </ActionForm>
            </section>
            <section class="card" aria-live="polite">
                <h2>"Quota after this request"</h2>
                <Transition fallback=|| view! { <p class="muted">"Checking quota…"</p> }>
                    {move || Suspend::new(async move {
                        match preview.await {
                            Ok(effect) => view! { <QuotaBars effect with_adding=true/> }.into_any(),
                            Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                        }
                    })}
                </Transition>
            </section>
        </div>
    }
}

/// Beside a size: whether it goes ahead without approval, and its monthly cost.
#[component]
fn SizeNotes(offer: Option<crate::provisioning::Offer>, i: usize) -> impl IntoView {
    offer.and_then(|o| o.sizes.get(i).cloned()).map(|s| {
        view! {
            " "
            {if s.needs_approval {
                view! { <span class="badge warn">"needs approval"</span> }.into_any()
            } else {
                view! { <span class="badge ok">"no approval needed"</span> }.into_any()
            }}
            {s.monthly_cost.map(|c| view! { " " <span class="small muted cost">{format!("≈ {c}")}</span> })}
        }
    })
}

/// Under the sizes: when any size needs approval, and why no cost is shown.
#[component]
fn OfferNotes(offer: Option<crate::provisioning::Offer>) -> impl IntoView {
    offer.map(|o| {
        view! {
            {(!o.approval_note.is_empty()).then(|| view! { <p class="small muted">{o.approval_note}</p> })}
            {o.cost_note.map(|n| view! { <p class="small muted">{n}</p> })}
        }
    })
}
