//! Capacity runway: each resource's daily peaks, its trend projected forward (dashed) to the
//! day it meets the limit (a line), and the estimate in words with its range.
use crate::reports::{capacity_runway, Runway};
use leptos::prelude::*;
use uuid::Uuid;

const W: f64 = 320.0;
const H: f64 = 90.0;

#[component]
fn RunwayChart(r: Runway) -> impl IntoView {
    let first = r.points.first().map(|p| p.0).unwrap_or(0.0);
    // Show the projection as far as the exhaustion day, or 60 days ahead, at most a year.
    let end = r.today + r.days.unwrap_or(60.0).clamp(14.0, 365.0);
    let top = r
        .points
        .iter()
        .map(|p| p.1)
        .fold(r.capacity.max(1.0), f64::max)
        * 1.05;
    let x = move |d: f64| (d - first) / (end - first).max(1.0) * W;
    let y = move |v: f64| H - v / top * H;
    let peaks = r
        .points
        .iter()
        .map(|(d, v)| format!("{:.1},{:.1}", x(*d), y(*v)))
        .collect::<Vec<_>>()
        .join(" ");
    let at = |d: f64| r.intercept + r.slope_per_day * d;
    let trend = format!(
        "{:.1},{:.1} {:.1},{:.1}",
        x(r.today),
        y(at(r.today).min(top)),
        x(end),
        y(at(end).clamp(0.0, top))
    );
    let limit = y(r.capacity);
    let label = format!("{} {}: {}", r.subject, r.resource, r.summary);
    view! {
        <svg class="runway-chart" viewBox=format!("0 0 {W} {H}") role="img" aria-label=label preserveAspectRatio="none">
            {(r.capacity > 0.0).then(|| view! {
                <line class="limit" x1="0" x2=W y1=limit y2=limit/>
            })}
            <polyline class="peaks" points=peaks fill="none"/>
            {(r.points.len() >= 3).then(|| view! { <polyline class="trend" points=trend fill="none"/> })}
        </svg>
    }
}

/// The runways of a tenant's quotas, or of the fleet and its hosts (`tenant` empty).
#[component]
pub fn RunwaySection(tenant: Option<Uuid>) -> impl IntoView {
    let list = Resource::new(move || tenant, capacity_runway);
    view! {
        <section class="card" aria-labelledby="runway-title" id="runway">
            <h2 id="runway-title">"Capacity runway"</h2>
            <p class="muted small">"Daily peaks over the last 90 days (line), their Theil–Sen trend carried forward (dashed) and the limit (red). The range is where 80 % of the day-to-day slopes put it."</p>
            {tenant.is_none().then(|| view! { <p class="muted small">"Hosts: memory in use, vCPUs allocated and each pool's space; the twelve that run out soonest."</p> })}
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                        Ok(rs) if rs.is_empty() => view! { <p class="empty">"Nothing to forecast yet."</p> }.into_any(),
                        Ok(rs) => view! {
                            <div class="runways">
                                {rs.into_iter().map(|r| {
                                    let head = format!("{}: {}", r.subject, r.resource);
                                    let now = format!("{:.1} of {:.0} {}", r.latest, r.capacity, r.unit);
                                    let soon = r.days.is_some_and(|d| d < 30.0);
                                    let summary = r.summary.clone();
                                    view! {
                                        <div class=if soon { "runway soon" } else { "runway" }>
                                            <h3>{head}</h3>
                                            <p class="muted small">{now}</p>
                                            <RunwayChart r/>
                                            <p class="small">{summary}</p>
                                        </div>
                                    }
                                }).collect_view()}
                            </div>
                        }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
