//! Server-drawn charts (SVG from the backend) and the range picker that chooses their span.
use crate::fleet::{ChartView, RANGES};
use leptos::prelude::*;

/// The charts in a grid, each a figure with its text alternative as the caption.
#[component]
pub fn ChartGrid(charts: Vec<ChartView>) -> impl IntoView {
    view! {
        <div class="charts">
            {charts.into_iter().map(|c| view! {
                <figure class="card chart" data-chart=c.title.clone()>
                    <h3 class="chart-title">{c.title.clone()}</h3>
                    <div class="chart-frame" inner_html=c.svg></div>
                    <figcaption class="small muted">{c.summary}</figcaption>
                </figure>
            }).collect_view()}
        </div>
    }
}

/// Links (not a form) so the range is in the URL, can be shared, and works without JavaScript.
#[component]
pub fn RangePicker(current: String, base: String) -> impl IntoView {
    let current = if current.is_empty() {
        "24h".to_string()
    } else {
        current
    };
    view! {
        <nav class="range-picker" aria-label="Chart range">
            {RANGES.iter().map(|(value, label)| {
                let selected = *value == current;
                view! {
                    <a
                        href=format!("{base}?range={value}")
                        class=if selected { "range selected" } else { "range" }
                        aria-current=selected.then_some("true")
                    >{*label}</a>
                }
            }).collect_view()}
        </nav>
    }
}
