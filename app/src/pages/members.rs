use crate::account::TenantRole;
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{any_admin, Guard};
use crate::components::timestamp::Timestamp;
use crate::tenant::{
    get_tenant, list_invitations, list_members, AddMember, NewInvitation, RemoveMember,
    RevokeInvitation, SetMemberRole,
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use uuid::Uuid;

#[component]
pub fn MembersPage() -> impl IntoView {
    view! {
        <Title text="Members · Concierge"/>
        <Guard allow=any_admin>
            <MembersContent/>
        </Guard>
    }
}

/// Shows a new invitation's code once, for the admin to hand over with the join link.
#[component]
fn InvitationNotice(inv: NewInvitation) -> impl IntoView {
    let link = format!(
        "/join?email={}&code={}",
        crate::url::urlencode(&inv.email),
        crate::url::urlencode(&inv.code)
    );
    view! {
        <div class="notice ok otp" role="status">
            <p>
                "Invitation made for " <strong>{inv.email.clone()}</strong>
                ". If they already have an account, they accept it on their account page after signing in. "
                "Otherwise give them this code (shown only now) and the join page, where they choose their password:"
            </p>
            <code class="otp-value" data-testid="invitation-code">{inv.code.clone()}</code>
            <p><a href=link>"Join page with this code"</a>" · expires " <Timestamp at=inv.expires_at/></p>
        </div>
    }
}

#[component]
fn MembersContent() -> impl IntoView {
    let params = use_params_map();
    let tenant_id = move || params.with(|p| p.get("id").and_then(|s| Uuid::parse_str(&s).ok()));
    let add = ServerAction::<AddMember>::new();
    let set_role = ServerAction::<SetMemberRole>::new();
    let remove = ServerAction::<RemoveMember>::new();
    let revoke = ServerAction::<RevokeInvitation>::new();
    let revoke_error = action_error(revoke);
    let add_error = action_error(add);
    let add_form = reset_on_success(add);
    let role_error = action_error(set_role);
    let remove_error = action_error(remove);
    let tenant = Resource::new(tenant_id, |id| async move {
        match id {
            Some(id) => get_tenant(id).await,
            None => Err(crate::error::AppError::NotFound("Tenant".into())),
        }
    });
    let members = Resource::new(
        move || {
            (
                tenant_id(),
                add.version().get(),
                set_role.version().get(),
                remove.version().get(),
            )
        },
        |(id, ..)| async move {
            match id {
                Some(id) => list_members(id).await,
                None => Err(crate::error::AppError::NotFound("Tenant".into())),
            }
        },
    );
    let invitations = Resource::new(
        move || (tenant_id(), add.version().get(), revoke.version().get()),
        |(id, ..)| async move {
            match id {
                Some(id) => list_invitations(id).await,
                None => Err(crate::error::AppError::NotFound("Tenant".into())),
            }
        },
    );
    let new_invitation = move || add.value().get().and_then(|r| r.ok());
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match tenant.await {
                    Ok(t) => {
                        let id = t.id.to_string();
                        view! {
                            <div class="page-head">
                                <h1>{t.name.clone()} <span class="muted">" · members"</span></h1>
                                <a class="button" href=format!("/tenants/{id}/quotas")>"Quotas and approvals"</a>
                            </div>
                            {t.suspended.then(|| view! { <p class="notice warn">"This tenant is suspended: its members cannot use it until a fleet admin reactivates it."</p> })}
                            <crate::pages::two_factor::TwoFactorPolicy tenant=Some(t.id)/>
                            <section class="card">
                                <h2>"Invite a member"</h2>
                                <p class="muted">"They join once they accept: with their account if they have one, else by creating it with the code shown here once."</p>
                                {move || new_invitation().map(|inv| view! { <InvitationNotice inv/> })}
                                <FormMessage error=add_error/>
                                <ActionForm action=add node_ref=add_form attr:class="form row">
                                    <input type="hidden" name="tenant_id" value=id.clone()/>
                                    <div class="field">
                                        <label for="member-email">"E-mail"</label>
                                        <input id="member-email" name="email" type="email" required aria-describedby="email-error"/>
                                        <FieldMessage error=add_error field="email"/>
                                    </div>
                                    <div class="field">
                                        <label for="member-name">"Full name (optional)"</label>
                                        <input id="member-name" name="display_name" maxlength="100" aria-describedby="display_name-error"/>
                                        <FieldMessage error=add_error field="display_name"/>
                                    </div>
                                    <div class="field">
                                        <label for="member-role">"Role"</label>
                                        <RoleSelect id="member-role".to_string() selected=TenantRole::Requester/>
                                        <FieldMessage error=add_error field="role"/>
                                    </div>
                                    <button type="submit" class="primary">"Invite"</button>
                                </ActionForm>
                            </section>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <section class="card">
            <h2>"Open invitations"</h2>
            <FormMessage error=revoke_error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let tid = tenant_id().map(|t| t.to_string()).unwrap_or_default();
                    match invitations.await {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"None."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table">
                                <thead><tr><th>"E-mail"</th><th>"Role"</th><th>"Invited by"</th><th>"Expires"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|i| { let tid = tid.clone(); view! {
                                        <tr>
                                            <td>{i.email.clone()}</td>
                                            <td>{i.role.label()}</td>
                                            <td>{i.invited_by.clone().unwrap_or_default()}</td>
                                            <td><Timestamp at=i.expires_at/></td>
                                            <td>
                                                <ActionForm action=revoke attr:class="inline">
                                                    <input type="hidden" name="tenant_id" value=tid/>
                                                    <input type="hidden" name="id" value=i.id.to_string()/>
                                                    <button type="submit" class="small danger">"Revoke"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }}).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
        <section class="card">
            <h2>"Members"</h2>
            <FormMessage error=role_error/>
            <FieldMessage error=role_error field="role"/>
            <FormMessage error=remove_error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let tid = tenant_id().map(|t| t.to_string()).unwrap_or_default();
                    match members.await {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No members yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table">
                                <thead><tr><th>"Name"</th><th>"E-mail"</th><th>"Role"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|m| {
                                        let uid = m.user_id.to_string();
                                        let role_id = format!("role-{uid}");
                                        let (uid2, tid1, tid2) = (uid.clone(), tid.clone(), tid.clone());
                                        view! {
                                            <tr>
                                                <td>{m.display_name.clone()}{m.disabled.then(|| view! { " " <span class="badge warn">"disabled"</span> })}</td>
                                                <td>{m.email.clone()}</td>
                                                <td>
                                                    <ActionForm action=set_role attr:class="inline">
                                                        <input type="hidden" name="tenant_id" value=tid1/>
                                                        <input type="hidden" name="user_id" value=uid/>
                                                        <label class="sr-only" for=role_id.clone()>"Role"</label>
                                                        <RoleSelect id=role_id selected=m.role/>
                                                        <button type="submit" class="small">"Save"</button>
                                                    </ActionForm>
                                                </td>
                                                <td>
                                                    <ActionForm action=remove attr:class="inline">
                                                        <input type="hidden" name="tenant_id" value=tid2/>
                                                        <input type="hidden" name="user_id" value=uid2/>
                                                        <button type="submit" class="small danger">"Remove"</button>
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

#[component]
fn RoleSelect(id: String, selected: TenantRole) -> impl IntoView {
    view! {
        <select id=id name="role">
            {TenantRole::ALL.into_iter().map(|r| view! {
                <option value=r.as_str() selected=r == selected>{r.label()}</option>
            }).collect_view()}
        </select>
    }
}
