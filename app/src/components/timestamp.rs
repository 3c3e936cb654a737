use leptos::prelude::*;
use time::{format_description::well_known::Rfc3339, macros::format_description, OffsetDateTime};

/// A point in time, shown in UTC to the minute, machine-readable in `datetime`.
#[component]
pub fn Timestamp(at: OffsetDateTime) -> impl IntoView {
    let machine = at.format(&Rfc3339).unwrap_or_default();
    let human = at
        .to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default();
    view! { <time datetime=machine>{human}</time> }
}
