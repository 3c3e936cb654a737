//! Alerts: what is firing (and what resolved lately), each linking to its VM or host, and the
//! threshold rules with the form that adds one. Also the banner a VM's page shows while an
//! alert about it fires.
use crate::alerts::{alerts, vm_alerts, AddAlertRule, Alert, RemoveAlertRule, METRICS, SEVERITIES};
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{any_admin, Guard};
use crate::components::timestamp::Timestamp;
use leptos::prelude::*;
use leptos_meta::Title;
use uuid::Uuid;

fn severity_class(a: &Alert) -> &'static str {
    match (a.state.as_str(), a.severity.as_str()) {
        ("resolved", _) => "badge muted",
        (_, "critical") => "badge danger",
        (_, "warning") => "badge warn",
        _ => "badge",
    }
}

#[component]
pub fn AlertsPage() -> impl IntoView {
    view! {
        <Title text="Alerts · Concierge"/>
        <Guard allow=any_admin>
            <AlertsContent/>
        </Guard>
    }
}

#[component]
fn AlertsContent() -> impl IntoView {
    let add = ServerAction::<AddAlertRule>::new();
    let remove = ServerAction::<RemoveAlertRule>::new();
    let error = action_error(add);
    let remove_error = action_error(remove);
    let form = reset_on_success(add);
    let pushed = crate::live::use_live(|e| e.kind == "notification");
    let overview = Resource::new(
        move || (add.version().get(), remove.version().get(), pushed.get()),
        |_| alerts(),
    );
    view! {
        <h1>"Alerts"</h1>
        <p class="hint">"Threshold rules you set, faults the portal sees (crashed or I/O-paused VMs, lost or flapping hosts, failing provisioning) and anomalies (a VM far from its own usual CPU at that hour). Each fires once and resolves once; you are told both times."</p>
        <FormMessage error=remove_error/>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(o) => {
                        let firing = o.alerts.iter().filter(|a| a.state == "firing").count();
                        view! {
                            <section class="card" aria-labelledby="alerts-title">
                                <h2 id="alerts-title">{format!("{firing} firing")}</h2>
                                {if o.alerts.is_empty() {
                                    view! { <p class="empty">"Nothing has fired."</p> }.into_any()
                                } else {
                                    view! {
                                        <table class="table" id="alert-list">
                                            <thead><tr><th>"Alert"</th><th>"Kind"</th><th>"Since"</th><th>"State"</th></tr></thead>
                                            <tbody>
                                                {o.alerts.into_iter().map(|a| {
                                                    let class = severity_class(&a);
                                                    view! {
                                                        <tr data-state=a.state.clone()>
                                                            <td data-label="Alert">
                                                                <a href=a.link()>{a.title.clone()}</a>
                                                                {(!a.detail.is_empty()).then(|| view! { <br/><span class="muted small">{a.detail.clone()}</span> })}
                                                                {a.tenant_name.clone().map(|t| view! { <br/><span class="muted small">{t}</span> })}
                                                            </td>
                                                            <td data-label="Kind">{a.kind.clone()}</td>
                                                            <td data-label="Since"><Timestamp at=a.started_at/></td>
                                                            <td data-label="State">
                                                                <span class=class>{if a.state == "firing" { a.severity.clone() } else { "resolved".into() }}</span>
                                                                {a.resolved_at.map(|r| view! { " " <Timestamp at=r/> })}
                                                            </td>
                                                        </tr>
                                                    }
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    }.into_any()
                                }}
                            </section>
                            <section class="card" aria-labelledby="alert-rules-title">
                                <h2 id="alert-rules-title">"Threshold rules"</h2>
                                {if o.rules.is_empty() {
                                    view! { <p class="empty">"No rules yet."</p> }.into_any()
                                } else {
                                    view! {
                                        <table class="table" id="alert-rules">
                                            <thead><tr><th>"Rule"</th><th>"For"</th><th>"Condition"</th><th><span class="sr-only">"Actions"</span></th></tr></thead>
                                            <tbody>
                                                {o.rules.into_iter().map(|r| {
                                                    let unit = if matches!(r.metric.as_str(), "cpu" | "memory") { "%" } else { "KiB/s" };
                                                    let condition = format!("{} {} {} {} {unit} for {} min ({})", r.subject, r.metric, if r.above { "above" } else { "below" }, r.threshold, r.for_minutes, r.severity);
                                                    view! {
                                                        <tr>
                                                            <td data-label="Rule">{r.name.clone()}</td>
                                                            <td data-label="For">{r.scope_name.clone()}</td>
                                                            <td data-label="Condition">{condition}</td>
                                                            <td>
                                                                <ActionForm action=remove attr:class="inline">
                                                                    <input type="hidden" name="id" value=r.id.to_string()/>
                                                                    <button type="submit" class="small danger" aria-label=format!("Remove the rule {}", r.name)>"Remove"</button>
                                                                </ActionForm>
                                                            </td>
                                                        </tr>
                                                    }
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    }.into_any()
                                }}
                                <ActionForm action=add node_ref=form attr:class="form rule-form" attr:id="add-alert-rule">
                                    <FormMessage error/>
                                    <div class="grid-2">
                                        <div>
                                            <label for="alert-scope">"Watch"</label>
                                            <select id="alert-scope" name="scope">
                                                {o.scopes.into_iter().map(|(v, n)| view! { <option value=v>{n}</option> }).collect_view()}
                                            </select>
                                            <FieldMessage error field="scope"/>
                                        </div>
                                        <div>
                                            <label for="alert-name">"Name"</label>
                                            <input id="alert-name" name="name" maxlength="80" required placeholder="CPU saturated" aria-describedby="name-error"/>
                                            <FieldMessage error field="name"/>
                                        </div>
                                        <div>
                                            <label for="alert-subject">"Of"</label>
                                            <select id="alert-subject" name="subject" aria-describedby="subject-error">
                                                <option value="vm">"VMs"</option>
                                                <option value="host">"Hosts (fleet-wide only)"</option>
                                            </select>
                                            <FieldMessage error field="subject"/>
                                        </div>
                                        <div>
                                            <label for="alert-metric">"Metric"</label>
                                            <select id="alert-metric" name="metric">
                                                {METRICS.into_iter().map(|(v, n)| view! { <option value=v>{n}</option> }).collect_view()}
                                            </select>
                                        </div>
                                        <div>
                                            <label for="alert-direction">"When it is"</label>
                                            <select id="alert-direction" name="direction">
                                                <option value="above">"above"</option>
                                                <option value="below">"below"</option>
                                            </select>
                                        </div>
                                        <div>
                                            <label for="alert-threshold">"Threshold"</label>
                                            <input id="alert-threshold" name="threshold" inputmode="decimal" required placeholder="90" aria-describedby="threshold-error"/>
                                            <FieldMessage error field="threshold"/>
                                        </div>
                                        <div>
                                            <label for="alert-for">"For (minutes)"</label>
                                            <input id="alert-for" name="for_minutes" inputmode="numeric" required placeholder="10" aria-describedby="for_minutes-error"/>
                                            <FieldMessage error field="for_minutes"/>
                                        </div>
                                        <div>
                                            <label for="alert-severity">"Severity"</label>
                                            <select id="alert-severity" name="severity">
                                                {SEVERITIES.into_iter().map(|s| view! { <option value=s selected=s == "warning">{s}</option> }).collect_view()}
                                            </select>
                                        </div>
                                    </div>
                                    <button type="submit" class="primary">"Add rule"</button>
                                </ActionForm>
                            </section>
                        }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// On a VM's page: what is firing about it (an anomaly, a fault, a threshold), if anything.
#[component]
pub fn VmAlerts(host: Uuid, vm: Uuid) -> impl IntoView {
    let list = Resource::new(move || (host, vm), |(h, v)| vm_alerts(h, v));
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                list.await.ok().filter(|l| !l.is_empty()).map(|l| view! {
                    <div class="notice warn" role="status" id="vm-alerts">
                        {l.into_iter().map(|a| view! {
                            <p><strong>{format!("{}: ", if a.kind == "anomaly" { "Anomaly".to_string() } else { a.severity.clone() })}</strong>{a.title.clone()}" — "{a.detail.clone()}</p>
                        }).collect_view()}
                    </div>
                })
            })}
        </Suspense>
    }
}
