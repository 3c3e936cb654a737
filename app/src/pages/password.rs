use crate::account::ChangePassword;
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::shell::use_actor;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Redirect;

/// Change one's password; the only page open to an account that still has a one-time password.
#[component]
pub fn PasswordPage() -> impl IntoView {
    let actor = use_actor();
    let change = ServerAction::<ChangePassword>::new();
    let error = action_error(change);
    view! {
        <Title text="Change password · Concierge"/>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match actor.await {
                    Ok(Some(a)) => a.must_change_password.then(|| view! {
                        <p class="notice">"Welcome! Choose your own password to replace the one-time password you were given."</p>
                    }).into_any(),
                    _ => view! { <Redirect path="/login"/> }.into_any(),
                }
            })}
        </Suspense>
        <section class="card narrow">
            <h1>"Change password"</h1>
            <p class="muted">"At least 8 characters; a passphrase of a few words works well. Common passwords are refused."</p>
            <ActionForm action=change attr:class="form">
                <FormMessage error/>
                <label for="current_password">"Current password"</label>
                <input id="current_password" name="current_password" type="password"
                    autocomplete="current-password" required/>
                <FieldMessage error field="current_password"/>
                <label for="new_password">"New password"</label>
                <input id="new_password" name="new_password" type="password"
                    autocomplete="new-password" required minlength="8" maxlength="128"/>
                <FieldMessage error field="new_password"/>
                <label for="confirm_password">"Repeat new password"</label>
                <input id="confirm_password" name="confirm_password" type="password"
                    autocomplete="new-password" required/>
                <FieldMessage error field="confirm_password"/>
                <button type="submit" class="primary">"Change password"</button>
            </ActionForm>
        </section>
    }
}
