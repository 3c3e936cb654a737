use crate::account::OneTimePassword;
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::components::pager::Pager;
use crate::url::urlencode;
use crate::user::{list_users, CreateUser, ResetPassword, SetFleetAdmin, SetUserDisabled};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[component]
pub fn UsersPage() -> impl IntoView {
    view! {
        <Title text="Users · Concierge"/>
        <Guard allow=fleet_admin>
            <UsersContent/>
        </Guard>
    }
}

#[component]
fn UsersContent() -> impl IntoView {
    let query = use_query_map();
    let search = move || query.with(|q| q.get("q").unwrap_or_default());
    let page = move || query.with(|q| q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32));
    let create = ServerAction::<CreateUser>::new();
    let admin = ServerAction::<SetFleetAdmin>::new();
    let disable = ServerAction::<SetUserDisabled>::new();
    let reset = ServerAction::<ResetPassword>::new();
    let create_error = action_error(create);
    let create_form = reset_on_success(create);
    let admin_error = action_error(admin);
    let disable_error = action_error(disable);
    let reset_error = action_error(reset);
    let users = Resource::new(
        move || {
            (
                search(),
                page(),
                create.version().get(),
                admin.version().get(),
                disable.version().get(),
                reset.version().get(),
            )
        },
        |(s, p, ..)| list_users(s, p),
    );
    let otp = move || {
        reset
            .value()
            .get()
            .and_then(|r| r.ok())
            .or_else(|| create.value().get().and_then(|r| r.ok()))
    };
    view! {
        <h1>"Users"</h1>
        <crate::pages::two_factor::TwoFactorPolicy tenant=None/>
        <section class="card">
            <h2>"New user"</h2>
            {move || otp().map(|otp| view! { <OneTimePasswordNotice otp/> })}
            <FormMessage error=create_error/>
            <ActionForm action=create node_ref=create_form attr:class="form row">
                <div class="field">
                    <label for="user-email">"E-mail"</label>
                    <input id="user-email" name="email" type="email" required aria-describedby="email-error"/>
                    <FieldMessage error=create_error field="email"/>
                </div>
                <div class="field">
                    <label for="user-name">"Full name"</label>
                    <input id="user-name" name="display_name" required maxlength="100" aria-describedby="display_name-error"/>
                    <FieldMessage error=create_error field="display_name"/>
                </div>
                <label class="check">
                    <input type="checkbox" name="fleet_admin" value="true"/>
                    " Fleet admin"
                </label>
                <button type="submit" class="primary">"Create user"</button>
            </ActionForm>
        </section>
        <section class="card">
            <form method="get" action="/users" class="form row search">
                <label class="sr-only" for="user-search">"Search"</label>
                <input id="user-search" name="q" type="search" placeholder="Search e-mail or name" value=search/>
                <button type="submit">"Search"</button>
            </form>
            <FormMessage error=admin_error/>
            <FormMessage error=disable_error/>
            <FormMessage error=reset_error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match users.await {
                        Ok(page) => {
                            let s = search();
                            let pager = view! { <Pager page=page.page pages=page.pages() total=page.total href=move |p| format!("/users?q={}&page={p}", urlencode(&s))/> };
                            view! {
                                <table class="table">
                                    <thead><tr><th>"Name"</th><th>"E-mail"</th><th>"Tenants"</th><th>"Flags"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                    <tbody>
                                        {page.items.into_iter().map(|u| {
                                            let id = u.id.to_string();
                                            let (id2, id3) = (id.clone(), id.clone());
                                            view! {
                                                <tr>
                                                    <td>{u.display_name.clone()}</td>
                                                    <td>{u.email.clone()}</td>
                                                    <td>{u.tenants.iter().map(|(t, r)| format!("{t} ({})", r.label())).collect::<Vec<_>>().join(", ")}</td>
                                                    <td>
                                                        {u.fleet_admin.then(|| view! { <span class="badge">"fleet admin"</span> " " })}
                                                        {u.disabled.then(|| view! { <span class="badge warn">"disabled"</span> " " })}
                                                        {u.must_change_password.then(|| view! { <span class="badge muted">"one-time password"</span> })}
                                                    </td>
                                                    <td class="actions">
                                                        <ActionForm action=admin attr:class="inline">
                                                            <input type="hidden" name="user_id" value=id/>
                                                            <input type="hidden" name="fleet_admin" value=(!u.fleet_admin).to_string()/>
                                                            <button type="submit" class="small">{if u.fleet_admin { "Revoke fleet admin" } else { "Make fleet admin" }}</button>
                                                        </ActionForm>
                                                        <ActionForm action=disable attr:class="inline">
                                                            <input type="hidden" name="user_id" value=id2/>
                                                            <input type="hidden" name="disabled" value=(!u.disabled).to_string()/>
                                                            <button type="submit" class=if u.disabled { "small" } else { "small danger" }>{if u.disabled { "Enable" } else { "Disable" }}</button>
                                                        </ActionForm>
                                                        <ActionForm action=reset attr:class="inline">
                                                            <input type="hidden" name="user_id" value=id3/>
                                                            <button type="submit" class="small">"Reset password"</button>
                                                        </ActionForm>
                                                    </td>
                                                </tr>
                                            }
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                {pager}
                            }.into_any()
                        }
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// Shows a newly issued one-time password once, for the admin to hand over.
#[component]
fn OneTimePasswordNotice(otp: OneTimePassword) -> impl IntoView {
    view! {
        <div class="notice ok otp" role="status">
            <p>
                "Account created for " <strong>{otp.email.clone()}</strong>
                ". Give them this one-time password; it is shown only now and must be changed at first sign-in:"
            </p>
            <code class="otp-value" data-testid="otp">{otp.password.clone()}</code>
        </div>
    }
}
