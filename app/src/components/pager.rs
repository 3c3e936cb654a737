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
/// A list paged by keyset passes the page's cursors (`Page::before`, `Page::after`): the links
/// then carry them, except the one back to page 1, which needs none.
#[component]
pub fn Pager(
    page: u32,
    pages: u32,
    total: i64,
    href: impl Fn(u32) -> String + Send + Sync + 'static,
    #[prop(default = None)] before: Option<String>,
    #[prop(default = None)] after: Option<String>,
) -> impl IntoView {
    let with = |link: String, key: &str, cursor: Option<String>| match cursor {
        Some(c) => format!("{link}&{key}={}", crate::url::urlencode(&c)),
        None => link,
    };
    let prev = (page > 1).then(|| {
        let link = href(page - 1);
        if page == 2 {
            link
        } else {
            with(link, "before", before)
        }
    });
    let next = (page < pages).then(|| with(href(page + 1), "after", after));
    view! {
        <nav class="pager" aria-label="Pagination">
            {prev.map(|h| view! { <a href=h rel="prev">"← Previous"</a> })}
            <span>{format!("Page {page} of {pages} · {total} in all")}</span>
            {next.map(|h| view! { <a href=h rel="next">"Next →"</a> })}
        </nav>
    }
}
