//! Page-level gate: who may open a page. The backend checks every operation again; this only
//! decides what to render (and sends anonymous visitors to the login page).
use crate::account::Actor;
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_router::components::Redirect;

#[component]
pub fn Guard(
    /// Whether the signed-in actor may see this page.
    allow: fn(&Actor) -> bool,
    children: ChildrenFn,
) -> impl IntoView {
    let actor = use_actor();
    let children = StoredValue::new(children);
    // Where to come back to after signing in (a deep link opened while signed out).
    let location = leptos_router::hooks::use_location();
    let back = move || {
        let path = location.pathname.get_untracked();
        let search = location.search.get_untracked();
        let query = search.trim_start_matches('?');
        let here = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        if here == "/" {
            "/login".to_string()
        } else {
            format!("/login?next={}", crate::url::urlencode(&here))
        }
    };
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let actor = actor.await;
                #[cfg(feature = "ssr")]
                first_poll_pending().await;
                match actor {
                    Ok(Some(a)) if a.must_change_password => {
                        view! { <Redirect path="/password"/> }.into_any()
                    }
                    Ok(Some(a)) if a.must_enrol_two_factor => {
                        view! { <Redirect path="/two-factor"/> }.into_any()
                    }
                    Ok(Some(a)) if allow(&a) => children.with_value(|c| c()).into_any(),
                    Ok(Some(_)) => view! { <Forbidden/> }.into_any(),
                    Ok(None) => view! { <Redirect path=back()/> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// On the server a `Suspense` invokes its children's closure up to three times (twice to
/// discover resources, once to render), and a `Suspend` that is ready at once builds its
/// view each time: every page behind a guard created its resources three times, loading and
/// serializing its data thrice. Pending once makes the discovery passes build nothing; the
/// render pass waits it out and builds the page once.
#[cfg(feature = "ssr")]
fn first_poll_pending() -> impl std::future::Future<Output = ()> {
    let mut polled = false;
    std::future::poll_fn(move |cx| {
        if polled {
            std::task::Poll::Ready(())
        } else {
            polled = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

#[component]
pub fn Forbidden() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
        res.set_status(http::StatusCode::FORBIDDEN);
    }
    view! {
        <section class="card narrow">
            <h1>"Not allowed"</h1>
            <p>"Your account does not have access to this page."</p>
            <a href="/">"Back to the start page"</a>
        </section>
    }
}

pub fn anyone(_: &Actor) -> bool {
    true
}

pub fn fleet_admin(a: &Actor) -> bool {
    a.fleet_admin
}

pub fn any_admin(a: &Actor) -> bool {
    a.fleet_admin || a.administered_tenants().next().is_some()
}

/// Fleet admins, and tenant admins and managers of a tenant not suspended (who read reports).
pub fn reads_reports(a: &Actor) -> bool {
    a.fleet_admin
        || a.memberships.iter().any(|m| {
            !m.tenant_suspended
                && matches!(
                    m.role,
                    crate::account::TenantRole::Manager | crate::account::TenantRole::TenantAdmin
                )
        })
}
