use leptos::prelude::*;

/// The link to page `n` of a filtered list: the page number, then each non-empty filter value
/// (as the URL's query had it) under its key.
pub fn page_href(base: &str, n: u32, filters: &[(&str, String)]) -> String {
    let mut q = vec![format!("page={n}")];
    for (k, v) in filters {
        if !v.is_empty() {
            q.push(format!("{k}={}", crate::url::urlencode(v)));
        }
    }
    format!("{base}?{}", q.join("&"))
}

/// Previous/next links for a server-side paginated list; `href` builds the link for a page.
#[component]
pub fn Pager(
    page: u32,
    pages: u32,
    total: i64,
    href: impl Fn(u32) -> String + Send + Sync + 'static,
) -> impl IntoView {
    let prev = (page > 1).then(|| href(page - 1));
    let next = (page < pages).then(|| href(page + 1));
    view! {
        <nav class="pager" aria-label="Pagination">
            {prev.map(|h| view! { <a href=h rel="prev">"← Previous"</a> })}
            <span>{format!("Page {page} of {pages} · {total} in all")}</span>
            {next.map(|h| view! { <a href=h rel="next">"Next →"</a> })}
        </nav>
    }
}
