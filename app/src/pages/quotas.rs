//! A tenant's quotas (tenant and per member), its approval policy and the ledger recount.
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::quota::QuotaLines;
use crate::provisioning::{
    get_tenant_quotas, mib_label, RecountQuota, SetPolicy, SetQuota, TenantQuotas,
};
use crate::shell::use_actor;
use crate::states::QuotaResource;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use uuid::Uuid;

#[component]
pub fn QuotasPage() -> impl IntoView {
    view! {
        <Title text="Quotas and approvals · Concierge"/>
        <Guard allow=anyone>
            <QuotasContent/>
        </Guard>
    }
}

#[component]
fn QuotasContent() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").and_then(|s| Uuid::parse_str(&s).ok()));
    let set_quota = ServerAction::<SetQuota>::new();
    let set_policy = ServerAction::<SetPolicy>::new();
    let recount = ServerAction::<RecountQuota>::new();
    let data = Resource::new(
        move || (id(), set_quota.version().get(), set_policy.version().get()),
        |(id, ..)| async move {
            match id {
                Some(id) => get_tenant_quotas(id).await,
                None => Err(crate::error::AppError::NotFound("Tenant".into())),
            }
        },
    );
    let actor = use_actor();
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let fleet = actor.await.ok().flatten().is_some_and(|a| a.fleet_admin);
                match data.await {
                    Ok(q) => view! { <QuotasView q fleet set_quota set_policy recount/> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn LimitFields(
    prefix: &'static str,
    error: Signal<Option<crate::error::AppError>>,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    vms: i64,
) -> impl IntoView {
    let f = move |n: &str| format!("{prefix}-{n}");
    view! {
        <div class="field">
            <label for=f("vcpus")>"vCPUs"</label>
            <input id=f("vcpus") name="vcpus" type="number" min="0" value=vcpus aria-describedby="vcpus-error"/>
            <FieldMessage error field="vcpus"/>
        </div>
        <div class="field">
            <label for=f("memory")>"Memory (GiB)"</label>
            <input id=f("memory") name="memory_gib" type="number" min="0" step="0.25" value=memory_mib as f64 / 1024.0 aria-describedby="memory_gib-error"/>
            <FieldMessage error field="memory_gib"/>
        </div>
        <div class="field">
            <label for=f("disk")>"Disk (GiB)"</label>
            <input id=f("disk") name="disk_gib" type="number" min="0" value=disk_gib aria-describedby="disk_gib-error"/>
            <FieldMessage error field="disk_gib"/>
        </div>
        <div class="field">
            <label for=f("vms")>"VMs"</label>
            <input id=f("vms") name="vms" type="number" min="0" value=vms aria-describedby="vms-error"/>
            <FieldMessage error field="vms"/>
        </div>
    }
}

fn limit(q: &TenantQuotas, resource: QuotaResource) -> i64 {
    q.lines
        .iter()
        .find(|l| l.resource == resource)
        .map(|l| l.limit)
        .unwrap_or(0)
}

#[component]
fn QuotasView(
    q: TenantQuotas,
    fleet: bool,
    set_quota: ServerAction<SetQuota>,
    set_policy: ServerAction<SetPolicy>,
    recount: ServerAction<RecountQuota>,
) -> impl IntoView {
    let quota_error = action_error(set_quota);
    let policy_error = action_error(set_policy);
    let tenant = q.tenant_id.to_string();
    let p = q.policy.clone();
    // The levels as rows, and one empty row to add a level.
    let mut rows: Vec<(String, Vec<String>)> = p
        .levels
        .iter()
        .map(|l| (l.mode.clone(), l.approvers.clone()))
        .collect();
    if rows.len() < 10 {
        rows.push((String::new(), Vec::new()));
    }
    let eligible = p.eligible_approvers.clone();
    let (t1, t2, t3, t4) = (
        tenant.clone(),
        tenant.clone(),
        tenant.clone(),
        tenant.clone(),
    );
    let (lv, lm, ld, ln) = (
        limit(&q, QuotaResource::Vcpus),
        limit(&q, QuotaResource::Memory),
        limit(&q, QuotaResource::Disk),
        limit(&q, QuotaResource::Vms),
    );
    view! {
        <div class="page-head">
            <h1>{format!("{}: quotas and approvals", q.tenant_name)}</h1>
            <a href=format!("/tenants/{tenant}")>"Members"</a>
        </div>
        <crate::components::runway::RunwaySection tenant=Some(q.tenant_id)/>
        <div class="grid">
            <section class="card">
                <h2>"Organisation quota"</h2>
                <QuotaLines lines=q.lines.clone() with_adding=false/>
                {fleet.then(|| view! {
                    <details>
                        <summary>"Change the organisation's limits"</summary>
                        <FormMessage error=quota_error/>
                        <ActionForm action=set_quota attr:class="form row">
                            <input type="hidden" name="tenant_id" value=t1.clone()/>
                            <LimitFields prefix="tq" error=quota_error vcpus=lv memory_mib=lm disk_gib=ld vms=ln/>
                            <button type="submit" class="primary">"Save limits"</button>
                        </ActionForm>
                    </details>
                })}
                <ActionForm action=recount attr:class="inline">
                    <input type="hidden" name="tenant_id" value=t2.clone()/>
                    <button type="submit">"Recount against existing VMs"</button>
                </ActionForm>
                {move || recount.value().get().map(|r| match r {
                    Ok(r) => view! {
                        <div class=if r.consistent { "notice" } else { "notice warn" } role="status">
                            <p>{if r.consistent { "The ledger matches the counters and the VMs that exist." } else { "The ledger and the VMs differ:" }}</p>
                            <table class="table small">
                                <thead><tr><th>"Resource"</th><th>"Counter"</th><th>"Ledger"</th><th>"Existing"</th></tr></thead>
                                <tbody>{r.lines.into_iter().map(|(n, a, b, c)| view! { <tr><td>{n}</td><td>{a}</td><td>{b}</td><td>{c}</td></tr> }).collect_view()}</tbody>
                            </table>
                            {(!r.mismatched.is_empty()).then(|| view! {
                                <p>"Not what their hypervisor runs:"</p>
                                <ul>{r.mismatched.into_iter().map(|m| view! { <li>{m}</li> }).collect_view()}</ul>
                            })}
                        </div>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                })}
            </section>
            <section class="card">
                <h2>"Personal quotas"</h2>
                {if q.users.is_empty() {
                    view! { <p class="muted">"No member has a personal quota: each is bounded by the organisation's."</p> }.into_any()
                } else {
                    view! {
                        <table class="table">
                            <thead><tr><th>"Member"</th><th>"Usage"</th></tr></thead>
                            <tbody>{q.users.clone().into_iter().map(|u| view! {
                                <tr><td>{u.email}</td><td><QuotaLines lines=u.lines with_adding=false/></td></tr>
                            }).collect_view()}</tbody>
                        </table>
                    }.into_any()
                }}
                <h3>"Set a member's quota"</h3>
                <FormMessage error=quota_error/>
                <ActionForm action=set_quota attr:class="form row">
                    <input type="hidden" name="tenant_id" value=t3.clone()/>
                    <div class="field">
                        <label for="uq-email">"Member's e-mail"</label>
                        <input id="uq-email" name="user_email" type="email" required aria-describedby="user_email-error"/>
                        <FieldMessage error=quota_error field="user_email"/>
                    </div>
                    <LimitFields prefix="uq" error=quota_error vcpus=4 memory_mib=8192 disk_gib=100 vms=4/>
                    <button type="submit" class="primary">"Save"</button>
                </ActionForm>
            </section>
        </div>
        <section class="card">
            <h2>"Approval policy"</h2>
            <p class="muted">{format!(
                "Now: requests of at most {} vCPUs and {} per VM, {} VMs and {} days are approved automatically; others need {} level(s); undecided requests expire after {} days.",
                p.auto_max_vcpus, mib_label(p.auto_max_memory_mib), p.auto_max_count, p.auto_max_lease_days, p.levels.len(), p.expire_days
            )}</p>
            <FormMessage error=policy_error/>
            <ActionForm action=set_policy attr:class="form">
                <input type="hidden" name="tenant_id" value=t4/>
                <div class="row">
                    <div class="field">
                        <label for="pol-vcpus">"Auto-approve up to vCPUs per VM"</label>
                        <input id="pol-vcpus" name="auto_max_vcpus" type="number" min="0" value=p.auto_max_vcpus aria-describedby="auto_max_vcpus-error"/>
                        <FieldMessage error=policy_error field="auto_max_vcpus"/>
                    </div>
                    <div class="field">
                        <label for="pol-mem">"…memory GiB per VM"</label>
                        <input id="pol-mem" name="auto_max_memory_gib" type="number" min="0" step="0.25" value=p.auto_max_memory_mib as f64 / 1024.0 aria-describedby="auto_max_memory_gib-error"/>
                        <FieldMessage error=policy_error field="auto_max_memory_gib"/>
                    </div>
                    <div class="field">
                        <label for="pol-count">"…VMs per request"</label>
                        <input id="pol-count" name="auto_max_count" type="number" min="0" value=p.auto_max_count aria-describedby="auto_max_count-error"/>
                        <FieldMessage error=policy_error field="auto_max_count"/>
                    </div>
                    <div class="field">
                        <label for="pol-lease">"…lease days"</label>
                        <input id="pol-lease" name="auto_max_lease_days" type="number" min="0" value=p.auto_max_lease_days aria-describedby="auto_max_lease_days-error"/>
                        <FieldMessage error=policy_error field="auto_max_lease_days"/>
                    </div>
                    <div class="field">
                        <label for="pol-expire">"Pending requests expire after (days)"</label>
                        <input id="pol-expire" name="expire_days" type="number" min="1" max="365" value=p.expire_days aria-describedby="expire_days-error"/>
                        <FieldMessage error=policy_error field="expire_days"/>
                    </div>
                </div>
                <div class="field">
                    <label for="pol-templates">"Only these templates are auto-approved (comma-separated names; empty: any)"</label>
                    <input id="pol-templates" name="auto_templates" value=p.auto_template_names.join(", ") aria-describedby="auto_templates-error"/>
                    <FieldMessage error=policy_error field="auto_templates"/>
                </div>
                <fieldset class="field levels" aria-describedby="levels-help levels-error">
                    <legend>"Approval levels, in order"</legend>
                    <p id="levels-help" class="small muted">"Each level must approve before the next is asked. \"Any\": one of the ticked approvers is enough; \"all\": every ticked approver must approve. Tick nobody to let any approver or admin of the organisation decide. Choose \"no level\" to remove a row."</p>
                    {rows.into_iter().enumerate().map(|(i, (mode, ticked))| {
                        let mode_id = format!("level-{i}-mode");
                        view! {
                            <div class="level-row" data-level=i + 1>
                                <div class="field">
                                    <label for=mode_id.clone()>{format!("Level {}", i + 1)}</label>
                                    <select id=mode_id name=format!("level[{i}][mode]")>
                                        <option value="" selected=mode.is_empty()>"no level"</option>
                                        <option value="any" selected=mode == "any">"any ticked approver"</option>
                                        <option value="all" selected=mode == "all">"all ticked approvers"</option>
                                    </select>
                                </div>
                                <div class="approver-picks" role="group" aria-label=format!("Approvers of level {}", i + 1)>
                                    {if eligible.is_empty() {
                                        view! { <span class="small muted">"No member is an approver or admin yet."</span> }.into_any()
                                    } else {
                                        eligible.iter().enumerate().map(|(j, email)| {
                                            let id = format!("level-{i}-approver-{j}");
                                            let for_id = id.clone();
                                            view! {
                                                <label class="check" for=for_id>
                                                    <input id=id type="checkbox" name=format!("level[{i}][approvers][]") value=email.clone() checked=ticked.contains(email)/>
                                                    " " {email.clone()}
                                                </label>
                                            }
                                        }).collect_view().into_any()
                                    }}
                                </div>
                            </div>
                        }
                    }).collect_view()}
                    <FieldMessage error=policy_error field="levels"/>
                </fieldset>
                <button type="submit" class="primary">"Save policy"</button>
            </ActionForm>
        </section>
    }
}
