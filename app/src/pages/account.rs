use crate::account::{my_sessions, EndSession};
use crate::components::form::{action_error, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::timestamp::Timestamp;
use crate::tenant::{my_invitations, AcceptInvitation, DeclineInvitation};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[component]
pub fn AccountPage() -> impl IntoView {
    view! {
        <Title text="Account · Concierge"/>
        <Guard allow=anyone>
            <AccountContent/>
        </Guard>
    }
}

#[component]
fn AccountContent() -> impl IntoView {
    let end = ServerAction::<EndSession>::new();
    let error = action_error(end);
    let sessions = Resource::new(move || end.version().get(), |_| my_sessions());
    let changed = move || use_query_map().with(|q| q.get("changed").is_some());
    let accept = ServerAction::<AcceptInvitation>::new();
    let decline = ServerAction::<DeclineInvitation>::new();
    let accept_error = action_error(accept);
    let decline_error = action_error(decline);
    let invitations = Resource::new(
        move || (accept.version().get(), decline.version().get()),
        |_| my_invitations(),
    );
    view! {
        <h1>"Your account"</h1>
        {move || changed().then(|| view! { <p class="notice ok" role="status">"Your password was changed."</p> })}
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match invitations.await {
                    Ok(list) if list.is_empty() => None,
                    Ok(list) => Some(view! {
                        <section class="card" aria-labelledby="invitations-title">
                            <h2 id="invitations-title">"Invitations"</h2>
                            <FormMessage error=accept_error/>
                            <FormMessage error=decline_error/>
                            <ul class="plain">
                                {list.into_iter().map(|i| view! {
                                    <li class="invitation">
                                        <p>
                                            <strong>{i.tenant_name.clone()}</strong>
                                            " invites you as " {i.role.label()}
                                            {i.invited_by.clone().map(|by| format!(" ({by})"))}
                                            ". Expires " <Timestamp at=i.expires_at/> "."
                                        </p>
                                        <ActionForm action=accept attr:class="inline">
                                            <input type="hidden" name="id" value=i.id.to_string()/>
                                            <button type="submit" class="small primary">"Accept"</button>
                                        </ActionForm>
                                        " "
                                        <ActionForm action=decline attr:class="inline">
                                            <input type="hidden" name="id" value=i.id.to_string()/>
                                            <button type="submit" class="small">"Decline"</button>
                                        </ActionForm>
                                    </li>
                                }).collect_view()}
                            </ul>
                        </section>
                    }),
                    Err(_) => None,
                }
            })}
        </Suspense>
        <section class="card">
            <div class="card-head">
                <h2>"Password"</h2>
                <a class="button" href="/password">"Change password"</a>
            </div>
        </section>
        <section class="card">
            <h2>"Signed-in sessions"</h2>
            <p class="muted">"End any session you do not recognise. Sessions also end after 30 minutes without activity and 12 hours after signing in."</p>
            <FormMessage error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match sessions.await {
                        Ok(list) => view! {
                            <table class="table">
                                <thead><tr><th>"Signed in"</th><th>"Last active"</th><th>"Address"</th><th>"Browser"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|s| view! {
                                        <tr>
                                            <td><Timestamp at=s.created_at/></td>
                                            <td><Timestamp at=s.last_seen_at/></td>
                                            <td>{s.client_addr.clone().unwrap_or_default()}</td>
                                            <td class="ua">{s.user_agent.clone().unwrap_or_default()}</td>
                                            <td>
                                                {if s.current {
                                                    view! { <span class="badge ok">"this session"</span> }.into_any()
                                                } else {
                                                    view! {
                                                        <ActionForm action=end attr:class="inline">
                                                            <input type="hidden" name="session_id" value=s.id.to_string()/>
                                                            <button type="submit" class="small danger">"End session"</button>
                                                        </ActionForm>
                                                    }.into_any()
                                                }}
                                            </td>
                                        </tr>
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
