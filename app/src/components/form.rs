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

/// The message for one field, placed right under its control (which names it in its
/// `aria-describedby`). Not an alert of its own: the form's summary announces once.
#[component]
pub fn FieldMessage(error: Signal<Option<AppError>>, field: &'static str) -> impl IntoView {
    let id = format!("{field}-error");
    move || {
        error
            .with(|e| e.as_ref().and_then(|e| e.field_message(field)))
            .map(|message| {
                view! { <p class="field-error" id=id.clone()>{message}</p> }
            })
    }
}

/// Above a form: the error that belongs to no field, or a summary of the fields to correct.
/// It is the one announcement (`role=alert`); in the browser it also marks the fields in
/// error (`aria-invalid`) and moves focus to the first of them.
#[component]
pub fn FormMessage(error: Signal<Option<AppError>>) -> impl IntoView {
    let node = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let fields: Vec<String> = error.with(|e| match e {
            Some(AppError::Invalid(list)) => list.iter().map(|f| f.field.clone()).collect(),
            _ => Vec::new(),
        });
        if let Some(summary) = node.get() {
            mark_fields(&summary, &fields);
        }
    });
    move || {
        error.with(|e| {
            e.as_ref().map(|e| {
                let message = match e {
                    AppError::Invalid(list) if list.len() == 1 => {
                        "Please correct the marked field below.".to_string()
                    }
                    AppError::Invalid(list) => {
                        format!("Please correct the {} marked fields below.", list.len())
                    }
                    other => other.to_string(),
                };
                view! { <div class="form-error" role="alert" node_ref=node>{message}</div> }
            })
        })
    }
}

/// Marks the controls described by `{field}-error` near `summary` as invalid (clearing the
/// others) and focuses the first.
#[cfg(feature = "hydrate")]
fn mark_fields(summary: &web_sys::HtmlDivElement, fields: &[String]) {
    use wasm_bindgen::JsCast;
    // The form's own section: pages with several forms repeat field names.
    let Ok(Some(scope)) = summary.closest("form, article, section, main") else {
        return;
    };
    if let Ok(marked) = scope.query_selector_all("[aria-invalid=true]") {
        for i in 0..marked.length() {
            if let Some(el) = marked
                .item(i)
                .and_then(|n| n.dyn_into::<web_sys::Element>().ok())
            {
                let _ = el.remove_attribute("aria-invalid");
            }
        }
    }
    let mut first = None;
    for field in fields {
        let selector = format!("[aria-describedby~=\"{field}-error\"]");
        if let Ok(Some(el)) = scope.query_selector(&selector) {
            let _ = el.set_attribute("aria-invalid", "true");
            first.get_or_insert(el);
        }
    }
    if let Some(el) = first.and_then(|el| el.dyn_into::<web_sys::HtmlElement>().ok()) {
        let _ = el.focus();
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
                // The fields an earlier error marked are blank and valid again.
                #[cfg(feature = "hydrate")]
                if let Ok(marked) = f.query_selector_all("[aria-invalid=true]") {
                    use wasm_bindgen::JsCast;
                    for i in 0..marked.length() {
                        if let Some(el) = marked
                            .item(i)
                            .and_then(|n| n.dyn_into::<web_sys::Element>().ok())
                        {
                            let _ = el.remove_attribute("aria-invalid");
                        }
                    }
                }
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
