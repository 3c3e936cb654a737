//! Usage and showback reports (managers, tenant admins, fleet admins) and rate cards.
use crate::account::{Actor, TenantRole};
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::error::AppError;
use crate::provisioning::list_templates;
use crate::reports::{list_rate_cards, usage_report, AddRateCard, EndRateCard, Report, ReportRow};
use crate::shell::use_actor;
use crate::url::urlencode;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

fn reader(a: &Actor) -> bool {
    a.fleet_admin
        || a.memberships
            .iter()
            .any(|m| matches!(m.role, TenantRole::Manager | TenantRole::TenantAdmin))
}

fn print_page() {
    #[cfg(feature = "hydrate")]
    {
        let _ = window().print();
    }
}

#[component]
pub fn ReportsPage() -> impl IntoView {
    view! {
        <Title text="Usage and cost · Concierge"/>
        <Guard allow=reader>
            <ReportsContent/>
        </Guard>
    }
}

#[component]
fn ReportsContent() -> impl IntoView {
    let query = use_query_map();
    let get = move |k: &str| query.with(|q| q.get(k).unwrap_or_default());
    let params = move || (get("tenant_id"), get("from"), get("to"), get("group_by"));
    let report = Resource::new(params, |(t, f, to, g)| usage_report(t, f, to, g));
    let error = Signal::derive(move || report.get().and_then(|r| r.err()));
    let actor = use_actor();
    view! {
        <div class="page-head no-print">
            <h1>"Usage and cost"</h1>
            <div class="actions-row">
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        actor.await.ok().flatten().filter(|a| a.fleet_admin).map(|_| view! { <a class="button" href="/rate-cards">"Rate cards"</a> })
                    })}
                </Suspense>
                <a class="button" href=move || { let (t, f, to, g) = params(); format!("/reports/usage.csv?tenant_id={}&from={}&to={}&group_by={}", urlencode(&t), urlencode(&f), urlencode(&to), urlencode(&g)) } download>"Download CSV"</a>
                // A handler, not an inline onclick: the CSP allows no inline script.
                <button type="button" on:click=move |_| print_page()>"Print"</button>
            </div>
        </div>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                let a = actor.await.ok().flatten()?;
                let (t, f, to, g) = params();
                let tenants: Vec<_> = a.memberships.iter()
                    .filter(|m| a.fleet_admin || matches!(m.role, TenantRole::Manager | TenantRole::TenantAdmin))
                    .map(|m| (m.tenant_id.to_string(), m.tenant_name.clone()))
                    .collect();
                Some(view! {
                    <form method="get" action="/reports" class="form row filters no-print">
                        <div class="field">
                            <label for="rep-tenant">"Organisation"</label>
                            <select id="rep-tenant" name="tenant_id" aria-describedby="tenant_id-error">
                                <option value="">{if a.fleet_admin { "All organisations" } else { "All of mine" }}</option>
                                {tenants.into_iter().map(|(id, name)| { let sel = id == t; view! { <option value=id selected=sel>{name}</option> } }).collect_view()}
                            </select>
                            <FieldMessage error field="tenant_id"/>
                        </div>
                        <div class="field">
                            <label for="rep-from">"From"</label>
                            <input id="rep-from" name="from" type="date" value=f aria-describedby="from-error"/>
                            <FieldMessage error field="from"/>
                        </div>
                        <div class="field">
                            <label for="rep-to">"To"</label>
                            <input id="rep-to" name="to" type="date" value=to aria-describedby="to-error"/>
                            <FieldMessage error field="to"/>
                        </div>
                        <div class="field">
                            <label for="rep-group">"Group by"</label>
                            <select id="rep-group" name="group_by" aria-describedby="group_by-error">
                                {[("tenant", "Organisation"), ("user", "User"), ("template", "Template"), ("vm", "VM")].into_iter().map(|(v, l)| view! { <option value=v selected=g == v>{l}</option> }).collect_view()}
                            </select>
                            <FieldMessage error field="group_by"/>
                        </div>
                        <button type="submit" class="primary">"Show"</button>
                    </form>
                })
            })}
        </Suspense>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match report.await {
                    Ok(r) => view! { <ReportView r/> }.into_any(),
                    Err(AppError::Invalid(_)) => view! { <p class="muted">"Correct the highlighted fields."</p> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

fn money(v: f64) -> String {
    format!("{v:.2}")
}

fn hours(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[component]
fn ReportRowView(row: ReportRow, total: bool) -> impl IntoView {
    let change = row.change_pct();
    view! {
        <tr class=if total { "total" } else { "" }>
            <th scope="row">{row.label.clone()}</th>
            <td class="num">{hours(row.vcpu_hours)}</td>
            <td class="num">{hours(row.memory_gib_hours)}</td>
            <td class="num">{hours(row.disk_gib_hours)}</td>
            <td class="num">{hours(row.powered_on_hours)}</td>
            <td class="num"><strong>{money(row.cost)}</strong></td>
            <td class="num">{money(row.previous_cost)}</td>
            <td class="num">{match change {
                Some(c) => {
                    let class = if c > 0.0 { "up" } else { "down" };
                    view! { <span class=class>{format!("{c:+.1} %")}</span> }.into_any()
                }
                None => view! { <span class="muted">"—"</span> }.into_any(),
            }}</td>
        </tr>
    }
}

#[component]
fn ReportView(r: Report) -> impl IntoView {
    let title = format!(
        "{} · {} to {} · by {}",
        r.tenant_name
            .clone()
            .unwrap_or_else(|| "All organisations".into()),
        r.from,
        r.to,
        r.group_by
    );
    let currency = if r.currency.is_empty() {
        "No rate card covers this period, so costs are zero.".to_string()
    } else {
        format!("Costs in {}.", r.currency)
    };
    view! {
        <section class="card report">
            <h2>{title}</h2>
            <p class="muted small">{format!("{currency} Compared with {} to {}. Allocated hours count while a VM exists; powered-on hours while it runs.", r.previous_from, r.previous_to)}</p>
            {if r.rows.is_empty() {
                view! { <p class="muted">"No usage in this period."</p> }.into_any()
            } else {
                view! {
                    <table class="table report-table">
                        <caption class="sr-only">"Usage and cost"</caption>
                        <thead><tr><th scope="col">{r.group_by.clone()}</th><th class="num" scope="col">"vCPU-hours"</th><th class="num" scope="col">"Memory GiB-h"</th><th class="num" scope="col">"Disk GiB-h"</th><th class="num" scope="col">"Powered-on h"</th><th class="num" scope="col">"Cost"</th><th class="num" scope="col">"Previous"</th><th class="num" scope="col">"Change"</th></tr></thead>
                        <tbody>
                            {r.rows.into_iter().map(|row| view! { <ReportRowView row total=false/> }).collect_view()}
                        </tbody>
                        <tfoot><ReportRowView row=r.total total=true/></tfoot>
                    </table>
                }.into_any()
            }}
        </section>
    }
}

#[component]
pub fn RateCardsPage() -> impl IntoView {
    view! {
        <Title text="Rate cards · Concierge"/>
        <Guard allow=fleet_admin>
            <RateCardsContent/>
        </Guard>
    }
}

#[component]
fn RateCardsContent() -> impl IntoView {
    let add = ServerAction::<AddRateCard>::new();
    let end = ServerAction::<EndRateCard>::new();
    let error = action_error(add);
    let end_error = action_error(end);
    let data = Resource::new(
        move || (add.version().get(), end.version().get()),
        |_| async move {
            (
                list_rate_cards().await,
                list_templates().await.unwrap_or_default(),
            )
        },
    );
    view! {
        <div class="page-head"><h1>"Rate cards"</h1><a href="/reports">"Usage and cost"</a></div>
        <p class="muted">"Prices per hour. A template's own card wins over the general one; the card valid in each hour prices that hour, so a change mid-period splits the period."</p>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (cards, templates) = data.await;
                view! {
                    {match cards {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No rate card yet: reports show usage without cost."</p> }.into_any(),
                        Ok(list) => {
                            let general = list.iter().any(|c| c.in_force && c.template_name.is_none());
                            view! {
                            {(!general).then(|| view! {
                                <p class="notice warn" data-testid="no-general-card">"No general rate card is in force today: VMs of templates without a card of their own cost 0.00 in reports. Add one below."</p>
                            })}
                            <FormMessage error=end_error/>
                            <FieldMessage error=end_error field="valid_to"/>
                            <div class="card table-card">
                            <table class="table">
                                <thead><tr><th>"Applies to"</th><th class="num">"vCPU-hour"</th><th class="num">"Memory GiB-hour"</th><th class="num">"Disk GiB-hour"</th><th>"Valid from"</th><th>"Valid to"</th><th>"End"</th></tr></thead>
                                <tbody>{list.into_iter().map(|c| {
                                    let label = c.template_name.clone().unwrap_or_else(|| "every template".into());
                                    let end_id = format!("rc-end-{}", c.id);
                                    let end_label = format!("End date of the card for {label}");
                                    view! {
                                    <tr data-rate-card=label.clone()>
                                        <td>{label.clone()} {c.in_force.then(|| view! { " " <span class="badge ok">"in force"</span> })}</td>
                                        <td class="num">{format!("{:.4} {}", c.vcpu_hour, c.currency)}</td>
                                        <td class="num">{format!("{:.4} {}", c.memory_gib_hour, c.currency)}</td>
                                        <td class="num">{format!("{:.4} {}", c.disk_gib_hour, c.currency)}</td>
                                        <td>{c.valid_from}</td>
                                        <td>{c.valid_to.clone().unwrap_or_else(|| "—".into())}</td>
                                        <td>
                                            <ActionForm action=end attr:class="inline">
                                                <input type="hidden" name="id" value=c.id.to_string()/>
                                                <label class="sr-only" for=end_id.clone()>{end_label}</label>
                                                <input id=end_id type="date" name="valid_to" class="compact" required value=c.valid_to.unwrap_or_default()/>
                                                <button type="submit" class="small">"Set end"</button>
                                            </ActionForm>
                                        </td>
                                    </tr>
                                }}).collect_view()}</tbody>
                            </table>
                            </div>
                        }.into_any()},
                        Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    }}
                    <section class="card">
                        <h2>"Add a rate card"</h2>
                        <p class="small muted">"To change prices, add a card for the same template from the day the new prices apply: from then on it wins over the older card, and past hours keep the prices they had."</p>
                        <FormMessage error/>
                        <ActionForm action=add attr:class="form row">
                            <div class="field">
                                <label for="rc-template">"Template"</label>
                                <select id="rc-template" name="template_id" aria-describedby="template_id-error">
                                    <option value="">"Every template"</option>
                                    {templates.into_iter().map(|t| view! { <option value=t.id.to_string()>{t.name}</option> }).collect_view()}
                                </select>
                                <FieldMessage error field="template_id"/>
                            </div>
                            <div class="field">
                                <label for="rc-currency">"Currency"</label>
                                <input id="rc-currency" name="currency" maxlength="3" placeholder="EUR" required aria-describedby="currency-error"/>
                                <FieldMessage error field="currency"/>
                            </div>
                            <div class="field">
                                <label for="rc-vcpu">"Per vCPU-hour"</label>
                                <input id="rc-vcpu" name="vcpu_hour" inputmode="decimal" placeholder="0.02" required aria-describedby="vcpu_hour-error"/>
                                <FieldMessage error field="vcpu_hour"/>
                            </div>
                            <div class="field">
                                <label for="rc-mem">"Per memory GiB-hour"</label>
                                <input id="rc-mem" name="memory_gib_hour" inputmode="decimal" placeholder="0.005" required aria-describedby="memory_gib_hour-error"/>
                                <FieldMessage error field="memory_gib_hour"/>
                            </div>
                            <div class="field">
                                <label for="rc-disk">"Per disk GiB-hour"</label>
                                <input id="rc-disk" name="disk_gib_hour" inputmode="decimal" placeholder="0.0001" required aria-describedby="disk_gib_hour-error"/>
                                <FieldMessage error field="disk_gib_hour"/>
                            </div>
                            <div class="field">
                                <label for="rc-from">"Valid from"</label>
                                <input id="rc-from" name="valid_from" type="date" required aria-describedby="valid_from-error"/>
                                <FieldMessage error field="valid_from"/>
                            </div>
                            <div class="field">
                                <label for="rc-to">"Valid to (optional)"</label>
                                <input id="rc-to" name="valid_to" type="date" aria-describedby="valid_to-error"/>
                                <FieldMessage error field="valid_to"/>
                            </div>
                            <button type="submit" class="primary">"Add rate card"</button>
                        </ActionForm>
                    </section>
                }
            })}
        </Suspense>
    }
}
