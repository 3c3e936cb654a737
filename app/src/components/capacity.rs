//! How full a host (or the whole fleet) is, with one definition on every page: vCPUs against
//! what placement may allocate (CPUs × the overcommit ratio), memory against physical memory.
//! Allocation beyond either is flagged, never shown as an ordinary fraction.
use leptos::prelude::*;

pub fn gib(kib: i64) -> String {
    let g = kib as f64 / 1_048_576.0;
    if g < 10.0 && g.fract() != 0.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{g:.0} GiB")
    }
}

/// `allocated` vCPUs of `capacity` (= `cpus` × overcommit).
#[component]
pub fn CpuCapacity(
    allocated: i64,
    cpus: i64,
    capacity: i64,
    /// In a table cell: no label column.
    #[prop(optional)]
    compact: bool,
) -> impl IntoView {
    let ratio = if cpus > 0 {
        capacity as f64 / cpus as f64
    } else {
        0.0
    };
    let text = format!("{allocated} of {capacity} vCPUs ({cpus} CPUs × {ratio:.0})");
    let over = (allocated > capacity).then(|| format!("{} vCPUs over", allocated - capacity));
    view! { <Line label="vCPUs" used=allocated as f64 total=capacity as f64 text over compact/> }
}

#[component]
pub fn MemoryCapacity(
    allocated_kib: i64,
    total_kib: i64,
    #[prop(optional)] compact: bool,
) -> impl IntoView {
    let text = format!("{} of {}", gib(allocated_kib), gib(total_kib));
    let over =
        (allocated_kib > total_kib).then(|| format!("{} over", gib(allocated_kib - total_kib)));
    view! { <Line label="Memory" used=allocated_kib as f64 total=total_kib as f64 text over compact/> }
}

#[component]
fn Line(
    label: &'static str,
    used: f64,
    total: f64,
    text: String,
    over: Option<String>,
    compact: bool,
) -> impl IntoView {
    let title = text.clone();
    let meter = view! {
        <meter min="0" max=total.max(1.0) value=used.min(total.max(1.0)) high=total * 0.85 optimum=0 title=title aria-label=label></meter>
    };
    let flag = over.map(|o| {
        view! { <span class="badge danger capacity-flag">{format!("over-allocated: {o}")}</span> }
    });
    if compact {
        view! { <span class="cell-meter">{meter}<span class="capacity-text">{text}</span>{flag}</span> }.into_any()
    } else {
        // The flag takes a line of its own under the figures: a narrow card has no room beside.
        view! {
            <div class="capacity">
                <span class="capacity-label">{label}</span>
                {meter}
                <span class="capacity-text">{text}</span>
                {flag}
            </div>
        }
        .into_any()
    }
}
