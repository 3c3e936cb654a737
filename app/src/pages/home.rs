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
    }
}
