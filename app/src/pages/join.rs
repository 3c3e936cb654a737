use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::shell::use_actor;
use crate::tenant::Join;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

/// Where an invitee without an account creates one with the code their admin gave them.
/// Signed-in people answer invitations on their account page instead.
#[component]
pub fn JoinPage() -> impl IntoView {
    let actor = use_actor();
    let join = ServerAction::<Join>::new();
    let error = action_error(join);
    let query = use_query_map();
    let email = move || query.with(|q| q.get("email").unwrap_or_default());
    let code = move || query.with(|q| q.get("code").unwrap_or_default());
    view! {
        <Title text="Join · Concierge"/>
        <section class="card narrow login">
            <h1>"Join your team on Concierge"</h1>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    matches!(actor.await, Ok(Some(_))).then(|| view! {
                        <p class="notice" role="status">
                            "You are signed in. Invitations to your address are on "
                            <a href="/account">"your account page"</a>"."
                        </p>
                    })
                })}
            </Suspense>
            <p class="muted">
                "Enter the invitation code you were given and choose your password. "
                "Already have an account? " <a href="/login">"Sign in"</a>
                " and accept the invitation on your account page."
            </p>
            <ActionForm action=join attr:class="form">
                <FormMessage error/>
                <label for="join-email">"E-mail"</label>
                <input id="join-email" name="email" type="email" autocomplete="username" required
                    value=email aria-describedby="email-error"/>
                <FieldMessage error field="email"/>
                <label for="join-code">"Invitation code"</label>
                <input id="join-code" name="code" autocomplete="off" required value=code
                    aria-describedby="code-error"/>
                <FieldMessage error field="code"/>
                <label for="join-name">"Your name"</label>
                <input id="join-name" name="display_name" autocomplete="name" maxlength="100" required
                    aria-describedby="display_name-error"/>
                <FieldMessage error field="display_name"/>
                <label for="join-password">"Password"</label>
                <input id="join-password" name="password" type="password" autocomplete="new-password"
                    required aria-describedby="password-error"/>
                <FieldMessage error field="password"/>
                <label for="join-confirm">"Password again"</label>
                <input id="join-confirm" name="confirm_password" type="password" autocomplete="new-password"
                    required aria-describedby="confirm_password-error"/>
                <FieldMessage error field="confirm_password"/>
                <button type="submit" class="primary" disabled=move || join.pending().get()>
                    "Create my account and join"
                </button>
            </ActionForm>
        </section>
    }
}
