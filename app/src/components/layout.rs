use crate::account::{Actor, Logout};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_router::components::A;

#[component]
pub fn Layout(children: Children) -> impl IntoView {
    let actor = use_actor();
    view! {
        <a class="skip" href="#main">"Skip to content"</a>
        <header class="topbar">
            <a class="brand" href="/">
                <span class="brand-mark" aria-hidden="true">"◆"</span>
                " Concierge"
            </a>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    actor.await.ok().flatten().filter(|a| !a.must_change_password && !a.must_enrol_two_factor).map(|a| view! { <Nav actor=a/> })
                })}
            </Transition>
        </header>
        <main id="main" class="content">{children()}</main>
        <footer class="footer">"Concierge · self-service virtual machines"</footer>
    }
}

#[component]
fn Nav(actor: Actor) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    let admin_links = actor
        .administered_tenants()
        .map(|m| {
            let href = format!("/tenants/{}", m.tenant_id);
            let label = format!("{} members", m.tenant_name);
            view! { <A href=href>{label}</A> }
        })
        .collect_view();
    let fleet = actor.fleet_admin;
    let sees_audit = fleet || actor.administered_tenants().next().is_some();
    let requester = actor
        .memberships
        .iter()
        .any(|m| actor.may_request(m.tenant_id));
    let approver = fleet || !actor.approver_tenants().is_empty();
    let reports = fleet
        || actor.memberships.iter().any(|m| {
            matches!(
                m.role,
                crate::account::TenantRole::Manager | crate::account::TenantRole::TenantAdmin
            )
        });
    let path = leptos_router::hooks::use_location().pathname;
    let under =
        move |prefix: &str| path.with(|p| p == prefix || p.starts_with(&format!("{prefix}/")));
    // On a phone the menu folds behind one control (a checkbox, so it works without
    // JavaScript too); it folds again after each navigation.
    let toggle = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        path.track();
        if let Some(t) = toggle.get_untracked() {
            t.set_checked(false);
        }
    });
    view! {
        <input type="checkbox" id="nav-toggle" class="nav-toggle" node_ref=toggle aria-controls="main-nav" aria-label="Menu"/>
        <label for="nav-toggle" class="nav-toggle-label">
            <span aria-hidden="true">"☰ "</span>"Menu"
        </label>
        <nav class="nav" id="main-nav" aria-label="Main">
            <A href="/">"Home"</A>
            {requester.then(|| view! {
                // The request form (/requests/new) is where the catalog leads: it belongs to
                // Catalog, not to the list of requests.
                <a href="/catalog" aria-current=move || (under("/catalog") || under("/requests/new")).then_some("page")>"Catalog"</a>
                <A href="/vms">"My VMs"</A>
                <a href="/requests" aria-current=move || (under("/requests") && !under("/requests/new")).then_some("page")>"Requests"</a>
            })}
            {approver.then(|| view! { <A href="/approvals">"Approvals" <WaitingBadge/></A> })}
            {reports.then(|| view! { <A href="/reports">"Reports"</A> })}
            // Managers read what reclamation freed; admins find it beside Audit.
            {(reports && !sees_audit).then(|| view! { <A href="/reclamation">"Reclamation"</A> })}
            {(!fleet).then_some(admin_links)}
            {fleet.then(|| view! {
                <A href="/dashboard">"Dashboard"</A>
                <A href="/templates">"Templates"</A>
                <A href="/images">"Images"</A>
                <A href="/hosts">"Hosts"</A>
                <A href="/tenants">"Tenants"</A>
                <A href="/users">"Users"</A>
            })}
            {sees_audit.then(|| view! {
                <A href="/audit">"Audit"</A>
                <A href="/alerts">"Alerts"</A>
                <A href="/reclamation">"Reclamation"</A>
                <A href="/webhooks">"Webhooks"</A>
            })}
        </nav>
        <div class="usermenu">
            <A href="/notifications" attr:class="bell">
                // A drawn bell (style/main.css), not an emoji: machines without an emoji font
                // show a box.
                <span class="bell-icon" aria-hidden="true"></span>
                <span class="sr-only">"Notifications"</span>
                <UnreadBadge/>
            </A>
            <A href="/account">
                <span class="avatar" aria-hidden="true">{initials(&actor.display_name)}</span>
                <span class="who">{actor.display_name.clone()}</span>
            </A>
            <ActionForm action=logout attr:class="inline">
                <button type="submit" class="link">"Sign out"</button>
            </ActionForm>
        </div>
    }
}

fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|w| w.chars().next())
        .take(2)
        .collect::<String>()
        .to_uppercase()
}

/// How many requests wait for the approver, kept current by live events. Fetched in the
/// browser only, after the page is up: no resource, so the server-rendered navigation never
/// waits for it (and the page stays one query lighter).
#[component]
fn WaitingBadge() -> impl IntoView {
    let pushed = crate::live::use_live(|e| e.kind == "request");
    let count = RwSignal::new(None::<u32>);
    // Effects run in the browser only.
    Effect::new(move |_| {
        pushed.track();
        leptos::task::spawn_local(async move {
            if let Ok(n) = crate::provisioning::approvals_waiting().await {
                count.try_set(Some(n));
            }
        });
    });
    move || {
        count.get().filter(|n| *n > 0).map(|n| {
            view! {
                " "
                <span class="count-badge" aria-label=format!("{n} waiting")>{n.to_string()}</span>
            }
        })
    }
}

/// The bell's count of unread notifications, kept current by live events (only the
/// recipient's pages hear of theirs). Like `WaitingBadge`, fetched in the browser only.
#[component]
fn UnreadBadge() -> impl IntoView {
    let pushed = crate::live::use_live(|e| e.kind == "notification");
    let count = RwSignal::new(None::<u32>);
    Effect::new(move |_| {
        pushed.track();
        leptos::task::spawn_local(async move {
            if let Ok(n) = crate::notifications::unread_notifications().await {
                count.try_set(Some(n));
            }
        });
    });
    move || {
        count.get().filter(|n| *n > 0).map(|n| {
            view! {
                " "
                <span class="count-badge" id="unread-count" aria-label=format!("{n} unread")>{n.to_string()}</span>
            }
        })
    }
}
