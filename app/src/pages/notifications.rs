//! The notification centre: what the portal told the signed-in user, newest first, kept
//! current by live events; each links to its object and can be marked read.
use crate::components::form::{action_error, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::timestamp::Timestamp;
use crate::notifications::{my_notifications, MarkNotificationsRead};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn NotificationsPage() -> impl IntoView {
    view! {
        <Title text="Notifications · Concierge"/>
        <Guard allow=anyone>
            <NotificationsContent/>
        </Guard>
    }
}

#[component]
fn NotificationsContent() -> impl IntoView {
    let mark = ServerAction::<MarkNotificationsRead>::new();
    let error = action_error(mark);
    let pushed = crate::live::use_live(|e| e.kind == "notification");
    let list = Resource::new(
        move || (mark.version().get(), pushed.get()),
        |_| my_notifications(),
    );
    view! {
        <h1>"Notifications"</h1>
        <p class="hint">
            "What the portal told you, newest first. Choose what you are told, and how, on "
            <a href="/account#notifications">"your account page"</a>"."
        </p>
        <FormMessage error=error/>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(items) if items.is_empty() => view! {
                        <p class="empty">"Nothing yet. You will be told here when a request of yours is decided or ready, when one waits for your approval, and before a lease ends."</p>
                    }.into_any(),
                    Ok(items) => {
                        let unread = items.iter().filter(|n| !n.read).count();
                        view! {
                            <div class="toolbar">
                                <p role="status">{format!("{unread} unread")}</p>
                                {(unread > 0).then(|| view! {
                                    <ActionForm action=mark attr:class="inline">
                                        <button type="submit" class="small">"Mark all read"</button>
                                    </ActionForm>
                                })}
                            </div>
                            <ul class="plain notifications">
                                {items.into_iter().map(|n| {
                                    let class = if n.read { "notification" } else { "notification unread" };
                                    view! {
                                        <li class=class>
                                            <p class="notification-title">
                                                {(!n.read).then(|| view! { <span class="sr-only">"Unread: "</span> })}
                                                <a href=n.link.clone()>{n.title.clone()}</a>
                                            </p>
                                            {(!n.body.is_empty()).then(|| view! { <p class="notification-body">{n.body.clone()}</p> })}
                                            // A div: a form may not sit inside a paragraph (the parser
                                            // would close it, and hydration would not find its nodes).
                                            <div class="meta">
                                                <Timestamp at=n.created_at/>
                                                {(!n.read).then(|| view! {
                                                    " "
                                                    <ActionForm action=mark attr:class="inline">
                                                        <input type="hidden" name="id" value=n.id.to_string()/>
                                                        <button type="submit" class="link">"Mark read"</button>
                                                    </ActionForm>
                                                })}
                                            </div>
                                        </li>
                                    }
                                }).collect_view()}
                            </ul>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}
