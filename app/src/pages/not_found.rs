use leptos::prelude::*;

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
        res.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <section class="card narrow">
            <h1>"Page not found"</h1>
            <p>"There is nothing at this address."</p>
            <a href="/">"Back to the start page"</a>
        </section>
    }
}

/// What a page shows when the one object it is about cannot be loaded: the not-found page
/// (HTTP 404) when it does not exist for this viewer, else the error with its own status.
#[component]
pub fn LoadFailed(error: crate::error::AppError) -> impl IntoView {
    if matches!(error, crate::error::AppError::NotFound(_)) {
        return view! { <NotFound/> }.into_any();
    }
    #[cfg(feature = "ssr")]
    if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
        res.set_status(error.status());
    }
    view! { <p class="form-error" role="alert">{error.to_string()}</p> }.into_any()
}
