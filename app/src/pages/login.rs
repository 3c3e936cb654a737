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
    view! {
        <Title text="Sign in · Concierge"/>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                matches!(actor.await, Ok(Some(_))).then(|| view! { <Redirect path="/"/> })
            })}
        </Suspense>
        <section class="card narrow login">
            <h1>"Sign in"</h1>
            <p class="muted">"Request and manage virtual machines for your team."</p>
            <ActionForm action=login attr:class="form">
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
