use crate::account::{my_sessions, my_ssh_keys, AddSshKey, EndSession, RemoveSshKey};
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::timestamp::Timestamp;
use crate::notifications::{notification_preferences, SetNotificationPreferences};
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
        <crate::pages::two_factor::TwoFactorSection/>
        <SshKeysSection/>
        <NotificationsSection/>
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

/// The user's SSH public keys: every VM they own gets them at first boot (cloud-init).
#[component]
fn SshKeysSection() -> impl IntoView {
    let add = ServerAction::<AddSshKey>::new();
    let remove = ServerAction::<RemoveSshKey>::new();
    let error = action_error(add);
    let remove_error = action_error(remove);
    let form = reset_on_success(add);
    let keys = Resource::new(
        move || (add.version().get(), remove.version().get()),
        |_| my_ssh_keys(),
    );
    view! {
        <section class="card" id="ssh-keys" aria-labelledby="ssh-keys-title">
            <h2 id="ssh-keys-title">"SSH keys"</h2>
            <p class="muted">"VMs you request from a template with cloud-init get these keys for its login user when they first start. Keys added later reach new VMs only."</p>
            <FormMessage error=remove_error/>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty" id="ssh-keys-empty">"No keys yet: without one you cannot log into your VMs over SSH."</p>
                        }.into_any(),
                        Ok(list) => view! {
                            <table class="table" id="ssh-key-list">
                                <thead><tr><th>"Key"</th><th>"Fingerprint"</th><th>"Added"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|k| {
                                        let label = if k.comment.is_empty() { k.algorithm.clone() } else { format!("{} ({})", k.comment, k.algorithm) };
                                        view! {
                                            <tr>
                                                <td data-label="Key">{label.clone()}</td>
                                                <td data-label="Fingerprint"><code class="fingerprint">{k.fingerprint.clone()}</code></td>
                                                <td data-label="Added"><Timestamp at=k.created_at/></td>
                                                <td>
                                                    <ActionForm action=remove attr:class="inline">
                                                        <input type="hidden" name="id" value=k.id.to_string()/>
                                                        <button type="submit" class="small danger" aria-label=format!("Remove key {label}")>"Remove"</button>
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
            <ActionForm action=add node_ref=form attr:class="form" attr:id="add-ssh-key">
                <FormMessage error/>
                <label for="key">"Public key"</label>
                <textarea id="key" name="key" rows="3" required aria-describedby="key-help key-error"
                    placeholder="ssh-ed25519 AAAAC3Nza… you@laptop" spellcheck="false" autocomplete="off"></textarea>
                <p class="muted small" id="key-help">"One line from a .pub file, e.g. the output of "<code>"cat ~/.ssh/id_ed25519.pub"</code>". Ed25519, ECDSA or RSA (2048 bits or more)."</p>
                <FieldMessage error field="key"/>
                <button type="submit" class="primary">"Add key"</button>
            </ActionForm>
        </section>
    }
}

/// Which notifications the user gets, in the app and by e-mail (everything until they choose).
#[component]
fn NotificationsSection() -> impl IntoView {
    let save = ServerAction::<SetNotificationPreferences>::new();
    let error = action_error(save);
    let prefs = Resource::new(move || save.version().get(), |_| notification_preferences());
    let saved = move || save.value().with(|v| matches!(v, Some(Ok(()))));
    view! {
        <section class="card" id="notifications" aria-labelledby="notifications-title">
            <h2 id="notifications-title">"Notifications"</h2>
            <p class="muted">"What you are told, and how. Everything is on until you choose; e-mail goes to the address you sign in with."</p>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match prefs.await {
                        Ok(list) => view! {
                            <ActionForm action=save attr:class="form" attr:id="notification-preferences">
                                <FormMessage error/>
                                <table class="table compact">
                                    <thead><tr><th scope="col">"When"</th><th scope="col">"In the app"</th><th scope="col">"By e-mail"</th></tr></thead>
                                    <tbody>
                                        {list.into_iter().map(|p| {
                                            let kind = p.kind.as_str();
                                            let label = p.kind.label();
                                            view! {
                                                <tr>
                                                    <td data-label="When">{label}</td>
                                                    <td data-label="In the app">
                                                        <input type="checkbox" name="in_app[]" value=kind checked=p.in_app
                                                            aria-label=format!("{label}: in the app")/>
                                                    </td>
                                                    <td data-label="By e-mail">
                                                        <input type="checkbox" name="email[]" value=kind checked=p.email
                                                            aria-label=format!("{label}: by e-mail")/>
                                                    </td>
                                                </tr>
                                            }
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                <button type="submit" class="primary">"Save notification settings"</button>
                                {move || saved().then(|| view! { <p class="notice ok" role="status">"Saved."</p> })}
                            </ActionForm>
                        }.into_any(),
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
