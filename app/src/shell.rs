use crate::account::{current_actor, Actor};
use crate::components::layout::Layout;
use crate::error::AppError;
use crate::pages;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    hooks::use_location,
    path, SsrMode,
};

/// The HTML document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    provide_csp_nonce();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <AutoReload options=options.clone()/>
                // Named after the bundle (a hash of its content), like the scripts.
                <link rel="stylesheet" href=format!("/pkg/{}.css", options.output_name)/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// Hands the nonce of this response's CSP header to Leptos, which puts it on its scripts.
#[cfg(feature = "ssr")]
fn provide_csp_nonce() {
    if let Some(nonce) = use_context::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<crate::seam::CspNonce>().cloned())
    {
        provide_context(leptos::nonce::Nonce::from_value(nonce.0));
    }
}

/// The signed-in actor, re-read on every navigation so role changes and ended sessions show.
pub type ActorResource = Resource<Result<Option<Actor>, AppError>>;

pub fn use_actor() -> ActorResource {
    expect_context::<ActorResource>()
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Title text="Concierge"/>
        <Router>
            <ActorProvider>
                <Layout>
                    <Routes fallback=pages::not_found::NotFound>
                        <Route path=path!("/login") view=pages::login::LoginPage ssr=SsrMode::Async/>
                        <Route path=path!("/login/code") view=pages::two_factor::LoginCodePage ssr=SsrMode::Async/>
                        <Route path=path!("/two-factor") view=pages::two_factor::TwoFactorPage ssr=SsrMode::Async/>
                        <Route path=path!("/join") view=pages::join::JoinPage ssr=SsrMode::Async/>
                        <Route path=path!("/") view=pages::home::HomePage ssr=SsrMode::Async/>
                        <Route path=path!("/password") view=pages::password::PasswordPage ssr=SsrMode::Async/>
                        <Route path=path!("/account") view=pages::account::AccountPage ssr=SsrMode::Async/>
                        <Route path=path!("/notifications") view=pages::notifications::NotificationsPage ssr=SsrMode::Async/>
                        <Route path=path!("/tenants") view=pages::tenants::TenantsPage ssr=SsrMode::Async/>
                        <Route path=path!("/tenants/:id") view=pages::members::MembersPage ssr=SsrMode::Async/>
                        <Route path=path!("/users") view=pages::users::UsersPage ssr=SsrMode::Async/>
                        <Route path=path!("/audit") view=pages::audit::AuditPage ssr=SsrMode::Async/>
                        <Route path=path!("/webhooks") view=pages::webhooks::WebhooksPage ssr=SsrMode::Async/>
                        <Route path=path!("/alerts") view=pages::alerts::AlertsPage ssr=SsrMode::Async/>
                        <Route path=path!("/reclamation") view=pages::reclamation::ReclamationPage ssr=SsrMode::Async/>
                        <Route path=path!("/proposals") view=pages::reclamation::ProposalsPage ssr=SsrMode::Async/>
                        <Route path=path!("/hosts") view=pages::hosts::HostsPage ssr=SsrMode::Async/>
                        <Route path=path!("/hosts/:id") view=pages::hosts::HostPage ssr=SsrMode::Async/>
                        <Route path=path!("/drift") view=pages::hosts::DriftPage ssr=SsrMode::Async/>
                        <Route path=path!("/vms/:host/:uuid") view=pages::vm::VmPage ssr=SsrMode::Async/>
                        <Route path=path!("/vms/:host/:uuid/console/:kind") view=pages::console::ConsolePage ssr=SsrMode::Async/>
                        <Route path=path!("/vms") view=pages::my_vms::MyVmsPage ssr=SsrMode::Async/>
                        <Route path=path!("/catalog") view=pages::catalog::CatalogPage ssr=SsrMode::Async/>
                        <Route path=path!("/requests/new") view=pages::catalog::NewRequestPage ssr=SsrMode::Async/>
                        <Route path=path!("/requests/:id") view=pages::requests::RequestPage ssr=SsrMode::Async/>
                        <Route path=path!("/requests") view=pages::requests::RequestsPage ssr=SsrMode::Async/>
                        <Route path=path!("/approvals") view=pages::requests::InboxPage ssr=SsrMode::Async/>
                        <Route path=path!("/dashboard") view=pages::dashboard::DashboardPage ssr=SsrMode::Async/>
                        <Route path=path!("/reports") view=pages::reports::ReportsPage ssr=SsrMode::Async/>
                        <Route path=path!("/rate-cards") view=pages::reports::RateCardsPage ssr=SsrMode::Async/>
                        <Route path=path!("/templates") view=pages::templates::TemplatesPage ssr=SsrMode::Async/>
                        <Route path=path!("/images") view=pages::images::ImagesPage ssr=SsrMode::Async/>
                        <Route path=path!("/tenants/:id/quotas") view=pages::quotas::QuotasPage ssr=SsrMode::Async/>
                    </Routes>
                </Layout>
            </ActorProvider>
        </Router>
    }
}

#[component]
fn ActorProvider(children: Children) -> impl IntoView {
    let location = use_location();
    let actor: ActorResource = Resource::new(move || location.pathname.get(), |_| current_actor());
    provide_context(actor);
    // Lets browser tests wait until the page is interactive.
    Effect::new(move |_| {
        #[cfg(feature = "hydrate")]
        if let Some(body) = leptos::prelude::document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });
    children()
}
