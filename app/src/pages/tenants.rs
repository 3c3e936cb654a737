use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::components::timestamp::Timestamp;
use crate::tenant::{list_tenants, CreateTenant, RenameTenant, SetTenantSuspended};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn TenantsPage() -> impl IntoView {
    view! {
        <Title text="Tenants · Concierge"/>
        <Guard allow=fleet_admin>
            <TenantsContent/>
        </Guard>
    }
}

#[component]
fn TenantsContent() -> impl IntoView {
    let create = ServerAction::<CreateTenant>::new();
    let rename = ServerAction::<RenameTenant>::new();
    let suspend = ServerAction::<SetTenantSuspended>::new();
    let create_error = action_error(create);
    let create_form = reset_on_success(create);
    let rename_error = action_error(rename);
    let suspend_error = action_error(suspend);
    let tenants = Resource::new(
        move || {
            (
                create.version().get(),
                rename.version().get(),
                suspend.version().get(),
            )
        },
        |_| list_tenants(),
    );
    view! {
        <h1>"Tenants"</h1>
        <section class="card">
            <h2>"New tenant"</h2>
            <ActionForm action=create node_ref=create_form attr:class="form row">
                <div class="field">
                    <label for="tenant-name">"Name"</label>
                    <input id="tenant-name" name="name" required maxlength="100" aria-describedby="name-error"/>
                    <FieldMessage error=create_error field="name"/>
                </div>
                <button type="submit" class="primary">"Create tenant"</button>
            </ActionForm>
            <FormMessage error=create_error/>
        </section>
        <section class="card">
            <FormMessage error=rename_error/>
            <FieldMessage error=rename_error field="name"/>
            <FormMessage error=suspend_error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match tenants.await {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No tenants yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table">
                                <thead><tr><th>"Name"</th><th>"Members"</th><th>"State"</th><th>"Created"</th><th>"Rename"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|t| {
                                        let id = t.id.to_string();
                                        let rename_id = format!("rename-{id}");
                                        let id2 = id.clone();
                                        let name = t.name.clone();
                                        view! {
                                            <tr>
                                                <td><a href=format!("/tenants/{}", t.id)>{t.name.clone()}</a></td>
                                                <td>{t.member_count}</td>
                                                <td>{if t.suspended {
                                                    view! { <span class="badge warn">"suspended"</span> }.into_any()
                                                } else {
                                                    view! { <span class="badge ok">"active"</span> }.into_any()
                                                }}</td>
                                                <td><Timestamp at=t.created_at/></td>
                                                <td>
                                                    <ActionForm action=rename attr:class="inline">
                                                        <input type="hidden" name="tenant_id" value=id/>
                                                        <label class="sr-only" for=rename_id.clone()>"New name"</label>
                                                        <input id=rename_id name="name" value=name required maxlength="100" class="compact"/>
                                                        <button type="submit" class="small">"Rename"</button>
                                                    </ActionForm>
                                                </td>
                                                <td>
                                                    <ActionForm action=suspend attr:class="inline">
                                                        <input type="hidden" name="tenant_id" value=id2/>
                                                        <input type="hidden" name="suspended" value=(!t.suspended).to_string()/>
                                                        <button type="submit" class=if t.suspended { "small" } else { "small danger" }>
                                                            {if t.suspended { "Reactivate" } else { "Suspend" }}
                                                        </button>
                                                    </ActionForm>
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
