//! Reclamation: admins try a rule (the dry run lists the VMs it would propose now, with the
//! evidence), then save it enabled or not; they see the proposals and what was reclaimed.
//! Owners answer proposals about their VMs on `/proposals`.
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{anyone, reads_reports, Guard};
use crate::components::timestamp::Timestamp;
use crate::reclamation::{
    kind_label, my_reclamation_proposals, reclamation, AnswerReclamationProposal, Candidate,
    Figure, PreviewReclamationRule, Proposal, SaveReclamationRule, ACTIONS, RULE_KINDS,
};
use leptos::prelude::*;
use leptos_meta::Title;

/// Daily CPU as a small line: the evidence at a glance (the figures say it in words).
#[component]
pub fn Sparkline(values: Vec<f32>) -> impl IntoView {
    if values.len() < 2 {
        return view! { <span class="muted small">"—"</span> }.into_any();
    }
    let top = values.iter().copied().fold(10.0f32, f32::max);
    let step = 120.0 / (values.len() - 1) as f32;
    let points = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f32 * step, 28.0 - v / top * 26.0))
        .collect::<Vec<_>>()
        .join(" ");
    let low = values.iter().copied().fold(f32::MAX, f32::min);
    let high = values.iter().copied().fold(0.0f32, f32::max);
    let label = format!(
        "Daily mean CPU over {} days: from {low:.1} % to {high:.1} %",
        values.len()
    );
    view! {
        <svg class="sparkline" viewBox="0 0 120 30" width="120" height="30" role="img" aria-label=label>
            <polyline points=points fill="none" stroke="currentColor" stroke-width="1.5"/>
        </svg>
    }
    .into_any()
}

fn figures(list: Vec<Figure>) -> impl IntoView {
    view! {
        <dl class="figures">
            {list.into_iter().map(|f| view! { <div><dt>{f.label}</dt><dd>{f.value}</dd></div> }).collect_view()}
        </dl>
    }
}

fn vm_link(host: Option<uuid::Uuid>, vm: uuid::Uuid) -> String {
    match host {
        Some(h) => format!("/vms/{h}/{vm}"),
        None => "/vms".into(),
    }
}

#[component]
pub fn ReclamationPage() -> impl IntoView {
    view! {
        <Title text="Reclamation · Concierge"/>
        <Guard allow=reads_reports>
            <ReclamationContent/>
        </Guard>
    }
}

#[component]
fn ReclamationContent() -> impl IntoView {
    let preview = ServerAction::<PreviewReclamationRule>::new();
    let save = ServerAction::<SaveReclamationRule>::new();
    let preview_error = action_error(preview);
    let save_error = action_error(save);
    let overview = Resource::new(move || save.version().get(), |_| reclamation());
    let saved = move || save.value().with(|v| matches!(v, Some(Ok(()))));
    view! {
        <h1>"Reclamation"</h1>
        <p class="hint">
            "Rules find VMs that are idle, oversized (shrunk to a smaller size of their template at their next stop), long powered off, or whose owner left. Try a rule first: the dry run lists what it would propose now, with the evidence. "
            "An enabled rule proposes; the owner keeps the VM (with a reason) or accepts; without an answer the rule's action happens when the response window ends."
        </p>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(o) => {
                        let scopes = o.scopes.clone();
                        // Managers read the rules, proposals and report; admins also try and save rules.
                        let sets_rules = !scopes.is_empty();
                        view! {
                            <section class="card" aria-labelledby="rule-title" hidden=!sets_rules>
                                <h2 id="rule-title">"Try a rule"</h2>
                                <ActionForm action=preview attr:class="form rule-form" attr:id="rule-form">
                                    <FormMessage error=preview_error/>
                                    <div class="grid-2">
                                        <div>
                                            <label for="rule-scope">"For"</label>
                                            <select id="rule-scope" name="scope">
                                                {scopes.into_iter().map(|(v, n)| view! { <option value=v>{n}</option> }).collect_view()}
                                            </select>
                                            <FieldMessage error=preview_error field="scope"/>
                                        </div>
                                        <div>
                                            <label for="rule-kind">"Looks for"</label>
                                            <select id="rule-kind" name="kind">
                                                {RULE_KINDS.into_iter().map(|(v, n)| view! { <option value=v>{n}</option> }).collect_view()}
                                            </select>
                                            <FieldMessage error=preview_error field="kind"/>
                                        </div>
                                        <Field id="rule-days" label="Days" name="days" mode="numeric" placeholder="14 (idle, oversized), 30 (powered off)" error=preview_error/>
                                        <Field id="rule-cpu" label="CPU below (% of its vCPUs)" name="cpu_pct" mode="decimal" placeholder="5 idle; 25 oversized (95th pct.)" error=preview_error/>
                                        <Field id="rule-mem" label="Oversized: memory below (% of size)" name="mem_pct" mode="decimal" placeholder="50 (95th percentile in use)" error=preview_error/>
                                        <Field id="rule-io" label="Idle: disk below (KiB/s)" name="io_kbps" mode="decimal" placeholder="100" error=preview_error/>
                                        <Field id="rule-net" label="Idle: network below (KiB/s)" name="net_kbps" mode="decimal" placeholder="20" error=preview_error/>
                                        <Field id="rule-share" label="Idle: share of each day's hours (%)" name="share_pct" mode="numeric" placeholder="90" error=preview_error/>
                                        <div>
                                            <label for="rule-action">"Without an answer"</label>
                                            <select id="rule-action" name="action" aria-describedby="action-error">
                                                <option value="">"Stop (shrink when oversized)"</option>
                                                {ACTIONS.into_iter().map(|(v, n)| view! { <option value=v>{n}</option> }).collect_view()}
                                            </select>
                                            <FieldMessage error=preview_error field="action"/>
                                        </div>
                                        <Field id="rule-response" label="Days to answer" name="response_days" mode="numeric" placeholder="7" error=preview_error/>
                                    </div>
                                    <button type="submit" class="primary">"Dry run"</button>
                                </ActionForm>
                                {move || preview.value().get().and_then(|r| r.ok()).map(|p| {
                                    let r = p.rule.clone();
                                    let n = p.candidates.len();
                                    view! {
                                        <div class="dry-run" id="dry-run">
                                            <h3>{format!("Dry run: {} — {n} VM{} would be proposed now", kind_label(&r.kind), if n == 1 { "" } else { "s" })}</h3>
                                            {if p.candidates.is_empty() {
                                                view! { <p class="empty">"No VM matches this rule now."</p> }.into_any()
                                            } else {
                                                view! { <CandidateTable rows=p.candidates.clone()/> }.into_any()
                                            }}
                                            <ActionForm action=save attr:class="form inline-form" attr:id="save-rule">
                                                <FormMessage error=save_error/>
                                                <input type="hidden" name="scope" value=r.scope.clone()/>
                                                <input type="hidden" name="kind" value=r.kind.clone()/>
                                                <input type="hidden" name="days" value=r.days.clone()/>
                                                <input type="hidden" name="cpu_pct" value=r.cpu_pct.clone()/>
                                                <input type="hidden" name="mem_pct" value=r.mem_pct.clone()/>
                                                <input type="hidden" name="io_kbps" value=r.io_kbps.clone()/>
                                                <input type="hidden" name="net_kbps" value=r.net_kbps.clone()/>
                                                <input type="hidden" name="share_pct" value=r.share_pct.clone()/>
                                                <input type="hidden" name="action" value=r.action.clone()/>
                                                <input type="hidden" name="response_days" value=r.response_days.clone()/>
                                                <label class="check"><input type="checkbox" name="enabled" value="on"/>" Enabled: propose these VMs to their owners"</label>
                                                <button type="submit" class="primary">"Save this rule"</button>
                                            </ActionForm>
                                            {move || saved().then(|| view! { <p class="notice ok" role="status">"Rule saved."</p> })}
                                        </div>
                                    }
                                })}
                            </section>
                            <section class="card" aria-labelledby="rules-title">
                                <h2 id="rules-title">"Rules"</h2>
                                {if o.rules.is_empty() {
                                    view! { <p class="empty">"No rules yet: nothing is proposed."</p> }.into_any()
                                } else {
                                    view! {
                                        <table class="table" id="rules">
                                            <thead><tr><th>"For"</th><th>"Looks for"</th><th>"Thresholds"</th><th>"Then"</th><th>"State"</th></tr></thead>
                                            <tbody>
                                                {o.rules.into_iter().map(|r| {
                                                    let thresholds = match r.kind.as_str() {
                                                        "idle" => format!("{} days; CPU < {} %, disk < {} KiB/s, network < {} KiB/s for {} % of each day", r.days, r.cpu_pct, r.io_kbps, r.net_kbps, r.share_pct),
                                                        "oversized" => format!("{} days; 95th percentile of CPU < {} %, of memory in use < {} %", r.days, r.cpu_pct, r.mem_pct),
                                                        "powered_off" => format!("off for {} days", r.days),
                                                        _ => "owner not a member".into(),
                                                    };
                                                    view! {
                                                        <tr>
                                                            <td data-label="For">{r.scope_name}</td>
                                                            <td data-label="Looks for">{kind_label(&r.kind)}</td>
                                                            <td data-label="Thresholds">{thresholds}</td>
                                                            <td data-label="Then">{format!("{} after {} days without an answer", r.action, r.response_days)}</td>
                                                            <td data-label="State"><span class=if r.enabled { "badge ok" } else { "badge muted" }>{if r.enabled { "enabled" } else { "off" }}</span></td>
                                                        </tr>
                                                    }
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    }.into_any()
                                }}
                            </section>
                            <section class="card" aria-labelledby="proposals-title">
                                <h2 id="proposals-title">"Proposals"</h2>
                                {if o.proposals.is_empty() {
                                    view! { <p class="empty">"None yet."</p> }.into_any()
                                } else {
                                    view! {
                                        <table class="table" id="proposals">
                                            <thead><tr><th>"VM"</th><th>"Rule"</th><th>"Evidence"</th><th>"Then"</th><th>"State"</th></tr></thead>
                                            <tbody>
                                                {o.proposals.into_iter().map(|p| view! {
                                                    <tr>
                                                        <td data-label="VM"><a href=vm_link(p.host_id, p.vm)>{p.vm_name.clone()}</a><br/><span class="muted small">{p.tenant_name.clone()} " · " {p.owner.clone().unwrap_or_else(|| "no owner".into())}</span></td>
                                                        <td data-label="Rule">{kind_label(&p.kind)}</td>
                                                        <td data-label="Evidence"><Sparkline values=p.daily_cpu.clone()/>{figures(p.figures.clone())}</td>
                                                        <td data-label="Then">{p.action.clone()} " on " <Timestamp at=p.respond_by/></td>
                                                        <td data-label="State">{p.state.clone()}{p.reason.clone().map(|r| view! { <br/><span class="muted small">{format!("“{r}”")}</span> })}</td>
                                                    </tr>
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    }.into_any()
                                }}
                            </section>
                            <section class="card" aria-labelledby="report-title">
                                <h2 id="report-title">"Reclaimed"</h2>
                                {if o.report.is_empty() {
                                    view! { <p class="empty">"Nothing reclaimed yet."</p> }.into_any()
                                } else {
                                    view! {
                                        <table class="table" id="reclaimed">
                                            <thead><tr><th>"Month"</th><th>"Tenant"</th><th>"VMs"</th><th>"vCPUs"</th><th>"Memory"</th><th>"Disk"</th><th>"Cost a month"</th></tr></thead>
                                            <tbody>
                                                {o.report.into_iter().map(|m| view! {
                                                    <tr>
                                                        <td data-label="Month">{m.month}</td>
                                                        <td data-label="Tenant">{m.tenant_name}</td>
                                                        <td data-label="VMs">{m.vms}</td>
                                                        <td data-label="vCPUs">{m.vcpus}</td>
                                                        <td data-label="Memory">{format!("{:.1} GiB", m.memory_mib as f64 / 1024.0)}</td>
                                                        <td data-label="Disk">{format!("{} GiB", m.disk_gib)}</td>
                                                        <td data-label="Cost a month">{match m.monthly_cost {
                                                            Some(c) => format!("{c:.2} {}", m.currency.unwrap_or_default()),
                                                            None => "no rate card".into(),
                                                        }}</td>
                                                    </tr>
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    }.into_any()
                                }}
                            </section>
                        }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// One text field of the rule form, with its message.
#[component]
fn Field(
    id: &'static str,
    label: &'static str,
    name: &'static str,
    mode: &'static str,
    placeholder: &'static str,
    error: Signal<Option<crate::error::AppError>>,
) -> impl IntoView {
    view! {
        <div>
            <label for=id>{label}</label>
            <input id=id name=name inputmode=mode placeholder=placeholder aria-describedby=format!("{name}-error")/>
            <FieldMessage error field=name/>
        </div>
    }
}

#[component]
fn CandidateTable(rows: Vec<Candidate>) -> impl IntoView {
    view! {
        <table class="table" id="candidates">
            <thead><tr><th>"VM"</th><th>"Owner"</th><th>"Daily CPU"</th><th>"Evidence"</th></tr></thead>
            <tbody>
                {rows.into_iter().map(|c| view! {
                    <tr>
                        <td data-label="VM"><a href=vm_link(c.host_id, c.vm)>{c.name.clone()}</a><br/><span class="muted small">{c.tenant_name.clone()}</span></td>
                        <td data-label="Owner">{c.owner.clone().unwrap_or_else(|| "none".into())}</td>
                        <td data-label="Daily CPU"><Sparkline values=c.daily_cpu.clone()/></td>
                        <td data-label="Evidence">{figures(c.figures.clone())}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
pub fn ProposalsPage() -> impl IntoView {
    view! {
        <Title text="Reclamation proposals · Concierge"/>
        <Guard allow=anyone>
            <ProposalsContent/>
        </Guard>
    }
}

#[component]
fn ProposalsContent() -> impl IntoView {
    let answer = ServerAction::<AnswerReclamationProposal>::new();
    let error = action_error(answer);
    let list = Resource::new(
        move || answer.version().get(),
        |_| my_reclamation_proposals(),
    );
    view! {
        <h1>"Reclamation proposals"</h1>
        <p class="hint">"A rule of your tenant found these VMs of yours unused. Keep one (say why: the rule then leaves it alone for 90 days), or accept and it is reclaimed now. Without an answer, the action happens on the date shown."</p>
        <FormMessage error/>
        <FieldMessage error field="reason"/>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(items) if items.is_empty() => view! { <p class="empty">"Nothing to answer: none of your VMs is proposed for reclamation."</p> }.into_any(),
                    Ok(items) => view! {
                        <ul class="plain proposals">
                            {items.into_iter().map(|p| view! { <ProposalCard p answer/> }).collect_view()}
                        </ul>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn ProposalCard(p: Proposal, answer: ServerAction<AnswerReclamationProposal>) -> impl IntoView {
    let (id_keep, id_accept) = (p.id.to_string(), p.id.to_string());
    let reason_id = format!("reason-{}", p.id);
    let reason_for = reason_id.clone();
    let open = p.state == "open";
    let verb = match p.action.as_str() {
        "delete" => "Delete",
        "shrink" => "Shrink at its next stop",
        _ => "Stop",
    };
    view! {
        <li class="card proposal" data-vm=p.vm_name.clone()>
            <h2 class="webhook-title"><a href=vm_link(p.host_id, p.vm)>{p.vm_name.clone()}</a> " — " {kind_label(&p.kind)}</h2>
            <p class="muted small">{p.tenant_name.clone()} " · proposed " <Timestamp at=p.created_at/></p>
            <div class="evidence"><Sparkline values=p.daily_cpu.clone()/>{figures(p.figures.clone())}</div>
            {if open {
                view! {
                    <p><strong>{format!("{verb} on ")}<Timestamp at=p.respond_by/></strong>" unless you keep it."</p>
                    <div class="actions-row">
                        <ActionForm action=answer attr:class="keep-form">
                            <input type="hidden" name="id" value=id_keep/>
                            <input type="hidden" name="answer" value="keep"/>
                            <label for=reason_for>"Why it is still needed"</label>
                            <div class="keep-row">
                            <input id=reason_id name="reason" required maxlength="500" placeholder="Nightly batch jobs run here" aria-describedby="reason-error"/>
                            <button type="submit">"Keep"</button>
                            </div>
                        </ActionForm>
                        <ActionForm action=answer attr:class="inline">
                            <input type="hidden" name="id" value=id_accept/>
                            <input type="hidden" name="answer" value="accept"/>
                            <button type="submit" class="danger">{format!("Accept: {} now", verb.to_lowercase())}</button>
                        </ActionForm>
                    </div>
                }.into_any()
            } else {
                let state = if p.state == "waiting" { "accepted: shrunk at its next stop".to_string() } else { p.state.clone() };
                view! { <p>"Answered: " {state} {p.reason.clone().map(|r| format!(" (“{r}”)"))}</p> }.into_any()
            }}
        </li>
    }
}
