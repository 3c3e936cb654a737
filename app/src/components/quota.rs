//! Quota meters: usage (and what a request would add) against each limit.
use crate::provisioning::{QuotaEffect, QuotaLine};
use leptos::prelude::*;

#[component]
pub fn QuotaLines(lines: Vec<QuotaLine>, with_adding: bool) -> impl IntoView {
    view! {
        <div class="quota-lines">
            {lines.into_iter().map(|l| {
                let total = if with_adding { l.used + l.adding } else { l.used };
                let over = total > l.limit;
                let text = l.describe(with_adding);
                let title = format!("{}: {}", l.label(), text);
                view! {
                    <div class=if over { "capacity over" } else { "capacity" }>
                        <span class="capacity-label">{l.label()}</span>
                        <meter min="0" max=(l.limit.max(1)) as f64 value=total as f64 high=l.limit as f64 * 0.85 optimum=0 title=title></meter>
                        <span class="capacity-text">{text}{(with_adding && l.adding > 0).then(|| view! { <span class="muted">{format!(" (+{})", if l.resource == crate::states::QuotaResource::Memory { crate::provisioning::mib_label(l.adding) } else { l.adding.to_string() })}</span> })}</span>
                    </div>
                }
            }).collect_view()}
        </div>
    }
}

#[component]
pub fn QuotaBars(effect: QuotaEffect, with_adding: bool) -> impl IntoView {
    let has_user = !effect.user.is_empty();
    view! {
        {effect.overflow.clone().map(|m| view! { <p class="notice warn" role="alert">{m}</p> })}
        <h3 class="small muted">"Organisation"</h3>
        <QuotaLines lines=effect.tenant.clone() with_adding/>
        {has_user.then(|| view! {
            <h3 class="small muted">"Your personal quota"</h3>
            <QuotaLines lines=effect.user.clone() with_adding/>
        })}
    }
}
