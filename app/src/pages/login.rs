use crate::account::Login;
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Redirect;

#[component]
pub fn LoginPage() -> impl IntoView {
    let actor = use_actor();
    let login = ServerAction::<Login>::new();
    let error = action_error(login);
    let query = leptos_router::hooks::use_query_map();
    let next = move || query.with_untracked(|q| q.get("next").unwrap_or_default());
    let expired = query.with_untracked(|q| q.get("expired").is_some());
    let deep_link = !next().is_empty();
    view! {
        <Title text="Sign in · Concierge"/>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                matches!(actor.await, Ok(Some(_))).then(|| view! { <Redirect path=crate::account::safe_next(&next())/> })
            })}
        </Suspense>
        <section class="card narrow login">
            <h1>"Sign in"</h1>
            <p class="muted">"Request and manage virtual machines for your team."</p>
            {if expired {
                Some(view! { <p class="notice warn" role="status" data-testid="session-expired">"Your session has ended. Sign in again to continue where you were."</p> }.into_any())
            } else if deep_link {
                Some(view! { <p class="notice" role="status">"Sign in to open that page."</p> }.into_any())
            } else {
                None
            }}
            <ActionForm action=login attr:class="form">
                <input type="hidden" name="next" value=next()/>
                <FormMessage error/>
                <label for="email">"E-mail"</label>
                <input id="email" name="email" type="email" autocomplete="username" required
                    aria-describedby="email-error"/>
                <FieldMessage error field="email"/>
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" autocomplete="current-password"
                    required aria-describedby="password-error"/>
                <FieldMessage error field="password"/>
                <button type="submit" class="primary" disabled=move || login.pending().get()>
                    "Sign in"
                </button>
            </ActionForm>
        </section>
    }
}
