//! Pieces every form uses: messages next to fields and above the form.
use crate::error::AppError;
use leptos::prelude::*;
use leptos::server_fn::ServerFn;

/// The error of an action's last run, if it failed.
pub fn action_error<S>(action: ServerAction<S>) -> Signal<Option<AppError>>
where
    S: ServerFn<Error = AppError> + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
{
    Signal::derive(move || {
        action
            .value()
            .with(|v| v.as_ref().and_then(|r| r.as_ref().err().cloned()))
    })
}

/// The message for one field, placed right under its control.
#[component]
pub fn FieldMessage(error: Signal<Option<AppError>>, field: &'static str) -> impl IntoView {
    let id = format!("{field}-error");
    move || {
        error
            .with(|e| e.as_ref().and_then(|e| e.field_message(field)))
            .map(|message| {
                view! { <p class="field-error" id=id.clone() role="alert">{message}</p> }
            })
    }
}

/// The message for errors that belong to no single field.
#[component]
pub fn FormMessage(error: Signal<Option<AppError>>) -> impl IntoView {
    move || {
        error
            .with(|e| e.as_ref().and_then(|e| e.form_message()))
            .map(|message| {
                view! { <p class="form-error" role="alert">{message}</p> }
            })
    }
}

/// A form reference that clears the form after each successful run of `action`, so the next
/// entry starts blank.
pub fn reset_on_success<S>(action: ServerAction<S>) -> NodeRef<leptos::html::Form>
where
    S: ServerFn<Error = AppError> + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
{
    let form = NodeRef::<leptos::html::Form>::new();
    Effect::new(move |_| {
        if action.value().with(|v| matches!(v, Some(Ok(_)))) {
            if let Some(f) = form.get_untracked() {
                f.reset();
            }
        }
    });
    form
}

/// Text for inside a `<textarea>`. Leptos writes a textarea's children unescaped on the server
/// (it treats the element like `<script>`), so user text holding `</textarea>` would end the
/// element and inject markup; in the browser the text becomes a text node and needs nothing.
pub fn textarea_text(text: String) -> String {
    #[cfg(feature = "ssr")]
    {
        text.replace('&', "&amp;").replace('<', "&lt;")
    }
    #[cfg(not(feature = "ssr"))]
    {
        text
    }
}
