//! Pieces of the lists' filter forms: plain GET forms whose values live in the URL, so a
//! filtered list works before hydration and can be bookmarked or shared.
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// A `<select>` named `name` whose choice is the URL's `name` parameter; with none in the URL
/// the first option is chosen (the list's default).
#[component]
pub fn QueryChoice(
    name: &'static str,
    options: Vec<(&'static str, &'static str)>,
    #[prop(optional)] id: Option<&'static str>,
) -> impl IntoView {
    let query = use_query_map();
    view! {
        <select name=name id=id>
            {move || {
                let current = query.with(|q| q.get(name).unwrap_or_default());
                options
                    .iter()
                    .enumerate()
                    .map(|(i, (value, label))| {
                        let selected = *value == current || (current.is_empty() && i == 0);
                        view! { <option value=*value selected=selected>{*label}</option> }
                    })
                    .collect_view()
            }}
        </select>
    }
}
