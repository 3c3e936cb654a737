//! My requests, one request (live while it is in flight), and the approver's inbox.
use crate::components::filters::QueryChoice;
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{anyone, Guard};
use crate::components::pager::{page_href, Pager};
use crate::components::quota::QuotaBars;
use crate::components::timestamp::Timestamp;
use crate::live::ticker;
use crate::provisioning::{
    approval_inbox, get_request, list_requests, mib_label, request_state_filters, state_badge,
    CancelRequest, DecideRequest, InboxItem, ManagedVm, RequestDetail, RequestState,
    RequestSummary, REQUEST_SORTS,
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use uuid::Uuid;

fn approver(a: &crate::account::Actor) -> bool {
    a.fleet_admin || !a.approver_tenants().is_empty()
}

fn size_text(r: &RequestSummary) -> String {
    format!(
        "{} × {} ({} vCPU, {}, {} GiB)",
        r.count,
        r.size_name,
        r.vcpus,
        mib_label(r.memory_mib),
        r.disk_gib
    )
}

#[component]
pub fn RequestsPage() -> impl IntoView {
    view! {
        <Title text="Requests · Concierge"/>
        <Guard allow=anyone>
            <RequestsContent/>
        </Guard>
    }
}

#[component]
fn RequestsContent() -> impl IntoView {
    let query = use_query_map();
    let get = move |k: &str| query.with(|q| q.get(k).unwrap_or_default());
    let all = move || get("all") == "1";
    let page = move || query.with(|q| q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1u32));
    let list = Resource::new(
        move || (page(), all(), get("search"), get("state"), get("sort")),
        |(page, all, search, state, sort)| list_requests(page, all, search, state, sort),
    );
    let href = move |n: u32| {
        let filters: Vec<(&str, String)> = ["all", "search", "state", "sort"]
            .into_iter()
            .map(|k| (k, get(k)))
            .collect();
        page_href("/requests", n, &filters)
    };
    let filtered = move || !(get("search").is_empty() && get("state").is_empty());
    let actor = crate::shell::use_actor();
    view! {
        <div class="page-head">
            <h1>{move || if all() { "All requests" } else { "My requests" }}</h1>
            <a class="button primary" href="/catalog">"New request"</a>
        </div>
        <form method="get" action="/requests" class="form row filters" role="search">
            {move || all().then(|| view! { <input type="hidden" name="all" value="1"/> })}
            <label>"Search" <input type="search" name="search" prop:value=move || get("search") placeholder="name, template, requester, purpose"/></label>
            <label>"State"
                <QueryChoice name="state" options=std::iter::once(("", "any")).chain(request_state_filters()).collect()/>
            </label>
            <label>"Sort"
                <QueryChoice name="sort" options=REQUEST_SORTS.to_vec()/>
            </label>
            <button type="submit">"Apply"</button>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    let a = actor.await.ok().flatten()?;
                    approver(&a).then(|| if all() {
                        view! { <a href="/requests">"Only mine"</a> }.into_any()
                    } else {
                        view! { <a href="/requests?all=1">"All in my organisations"</a> }.into_any()
                    })
                })}
            </Suspense>
        </form>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(p) if p.items.is_empty() && filtered() => view! { <p class="muted">"No requests match. Change the filters."</p> }.into_any(),
                    Ok(p) if p.items.is_empty() => view! { <p class="muted">"No requests yet. Pick a template in the catalog to ask for VMs."</p> }.into_any(),
                    Ok(p) => {
                        let pages = p.pages();
                        let all = all();
                        view! {
                            <table class="table">
                                <thead><tr><th>"Submitted"</th><th>"Template"</th><th>"Size"</th><th>"Name"</th>{all.then(|| view! { <th>"Requester"</th> })}<th>"State"</th></tr></thead>
                                <tbody>
                                    {p.items.into_iter().map(|r| {
                                        let href = format!("/requests/{}", r.id);
                                        view! {
                                            <tr>
                                                <td data-label="Submitted"><Timestamp at=r.created_at/></td>
                                                <td data-label="Template"><a href=href>{r.template_name.clone()}</a></td>
                                                <td data-label="Size">{size_text(&r)}</td>
                                                <td data-label="Name" class="mono small">{r.name_prefix.clone()}</td>
                                                {all.then(|| view! { <td data-label="Requester">{r.requester_email.clone()}</td> })}
                                                <td data-label="State"><span class=r.state.badge()>{r.state_label()}</span></td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <Pager page=p.page pages total=p.total href/>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

fn id_untracked(params: Memo<leptos_router::params::ParamsMap>) -> Option<Uuid> {
    params.with_untracked(|p| p.get("id").and_then(|s| Uuid::parse_str(&s).ok()))
}

#[component]
pub fn RequestPage() -> impl IntoView {
    view! {
        <Title text="Request · Concierge"/>
        <Guard allow=anyone>
            <RequestContent/>
        </Guard>
    }
}

#[component]
fn RequestContent() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").and_then(|s| Uuid::parse_str(&s).ok()));
    let cancel = ServerAction::<CancelRequest>::new();
    let decide = ServerAction::<DecideRequest>::new();
    // Pushed: this request's log lines and its VMs' state changes; a slow poll backs it up
    // (a proxy may swallow server-sent events) while the request is still moving.
    let vm_ids = RwSignal::new(Vec::<Uuid>::new());
    let pushed = crate::live::use_live(move |e| {
        (e.request_id.is_some() && e.request_id == id_untracked(params))
            || e.uuid
                .is_some_and(|u| vm_ids.with_untracked(|v| v.contains(&u)))
    });
    let tick = ticker(5000);
    let live = RwSignal::new(true);
    let detail = Resource::new(
        move || {
            let t = if live.get() { tick.get() } else { 0 };
            (
                id(),
                t,
                pushed.get(),
                cancel.version().get(),
                decide.version().get(),
            )
        },
        |(id, ..)| async move {
            match id {
                Some(id) => get_request(id).await,
                None => Err(crate::error::AppError::NotFound("Request".into())),
            }
        },
    );
    // Changes of the request's state or its VMs', announced to screen readers (the page itself
    // re-renders quietly).
    let announce = RwSignal::new(String::new());
    Effect::new(move |prev: Option<Option<(String, Vec<String>)>>| {
        let now = detail.get().and_then(|r| r.ok()).map(|d| {
            live.set(d.in_flight());
            vm_ids.set(d.vms.iter().map(|v| v.uuid).collect());
            (
                d.request.state_label().to_string(),
                d.vms
                    .iter()
                    .map(|v| format!("{} {}", v.name, v.shown_state()))
                    .collect::<Vec<_>>(),
            )
        });
        if let (Some(Some(before)), Some(after)) = (&prev, &now) {
            if before.0 != after.0 {
                announce.set(format!("Request {}.", after.0));
            } else if before.1 != after.1 {
                announce.set(format!("VMs: {}.", after.1.join(", ")));
            }
        }
        now.or(prev.flatten())
    });
    view! {
        <p class="sr-only" role="status" aria-live="polite">{move || announce.get()}</p>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(d) => view! { <RequestView d cancel decide/> }.into_any(),
                    Err(error) => view! { <crate::pages::not_found::LoadFailed error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// Where a request is on its way: the state machine as steps.
fn steps(state: RequestState) -> Vec<(&'static str, &'static str)> {
    let reached = RequestState::PATH.iter().position(|s| *s == state);
    let labels = [
        "Submitted",
        "Approval",
        "Approved",
        "Provisioning",
        "Running",
    ];
    labels
        .into_iter()
        .enumerate()
        .map(|(i, label)| {
            let class = match reached {
                Some(r) if i < r => "done",
                Some(r) if i == r && state == RequestState::Fulfilled => "done",
                Some(r) if i == r => "current",
                _ => "todo",
            };
            (label, class)
        })
        .collect()
}

#[component]
fn RequestView(
    d: RequestDetail,
    cancel: ServerAction<CancelRequest>,
    decide: ServerAction<DecideRequest>,
) -> impl IntoView {
    let r = d.request.clone();
    let cancel_error = action_error(cancel);
    let decide_error = action_error(decide);
    let id = r.id.to_string();
    let id2 = id.clone();
    let terminal = !r.state.in_flight() && r.state != RequestState::Fulfilled;
    view! {
        <div class="page-head">
            <h1>{format!("{} · {}", r.template_name, r.name_prefix)} " " <span class=r.state.badge() data-state=r.state.as_str()>{r.state_label()}</span></h1>
            <a href="/requests">"← Requests"</a>
        </div>
        {(!terminal).then(|| view! {
            <ol class="steps" aria-label="Progress">
                {steps(r.state).into_iter().map(|(label, class)| view! { <li class=class>{label}</li> }).collect_view()}
            </ol>
        })}
        {r.reason.clone().map(|why| view! { <p class="notice warn">{format!("{}: {why}", r.state.label())}</p> })}
        {(!d.waiting_for.is_empty()).then(|| view! {
            <p class="notice">{format!("Waiting for approval at level {}: {}.", d.level.unwrap_or(1), d.waiting_for.join(", "))}</p>
        })}
        <section class="card">
            <div class="grid facts">
                <div><span class="muted">"Organisation"</span><strong>{r.tenant_name.clone()}</strong></div>
                <div><span class="muted">"Requested by"</span><strong>{r.requester_email.clone()}</strong></div>
                <div><span class="muted">"Size"</span><strong>{size_text(&r)}</strong></div>
                <div><span class="muted">"Lease"</span><strong>{format!("{} days", r.lease_days)}</strong></div>
                <div><span class="muted">"Network"</span><strong>{r.network_text()}</strong></div>
                <div><span class="muted">"Submitted"</span><strong><Timestamp at=r.created_at/></strong></div>
            </div>
            <p><span class="muted">"Purpose: "</span>{r.purpose.clone()}</p>
            {(!d.user_data.is_empty()).then(|| view! {
                <details class="user-data">
                    <summary>"Cloud-config from the requester"</summary>
                    <pre class="mono small">{d.user_data.clone()}</pre>
                </details>
            })}
            {d.can_cancel.then(|| view! {
                <FormMessage error=cancel_error/>
                <ActionForm action=cancel attr:class="inline">
                    <input type="hidden" name="id" value=id.clone()/>
                    <button type="submit" class="danger">"Cancel request"</button>
                </ActionForm>
            })}
        </section>
        {d.can_decide.then(|| view! {
            <section class="card">
                <h2>"Your decision"</h2>
                <DecisionForm id=id2.clone() decide error=decide_error/>
            </section>
        })}
        {(!d.vms.is_empty()).then(|| view! { <VmTable vms=d.vms.clone()/> })}
        <section class="card">
            <h2>"History"</h2>
            <ol class="timeline">
                {d.events.into_iter().map(|e| view! {
                    <li class=format!("event-{}", e.kind)>
                        <Timestamp at=e.at/>
                        " "
                        <span>{e.message}</span>
                        {e.actor_email.map(|a| view! { <span class="muted small">{format!(" — {a}")}</span> })}
                    </li>
                }).collect_view()}
            </ol>
        </section>
    }
}

#[component]
fn VmTable(vms: Vec<ManagedVm>) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Machines"</h2>
            <table class="table">
                <thead><tr><th>"Name"</th><th>"Progress"</th><th>"State"</th><th>"Host"</th></tr></thead>
                <tbody>
                    {vms.into_iter().map(|v| {
                        let link = v.host_id.map(|h| format!("/vms/{h}/{}", v.uuid));
                        let name = v.name.clone();
                        view! {
                            <tr data-vm=v.name.clone()>
                                <td data-label="Name">{match link { Some(l) => view! { <a href=l>{name}</a> }.into_any(), None => view! { <span>{name}</span> }.into_any() }}</td>
                                <td data-label="Progress"><span class="cell-value"><span class=state_badge(v.phase.as_str())>{v.phase.as_str()}</span>{v.error.clone().map(|e| view! { " " <span class="small muted">{e}</span> })}</span></td>
                                <td data-label="State" class="vm-state">{v.state.clone().unwrap_or_else(|| "—".into())}</td>
                                <td data-label="Host">{v.host_name.clone().unwrap_or_else(|| "—".into())}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
}

#[component]
fn DecisionForm(
    id: String,
    decide: ServerAction<DecideRequest>,
    error: Signal<Option<crate::error::AppError>>,
    #[prop(default = true)] fits: bool,
) -> impl IntoView {
    let field_id = format!("reason-{id}");
    view! {
        <FormMessage error/>
        <ActionForm action=decide attr:class="form row">
            <input type="hidden" name="id" value=id.clone()/>
            <div class="field wide">
                <label for=field_id.clone()>"Reason (required to reject)"</label>
                <input id=field_id name="reason" maxlength="1000" aria-describedby="reason-error"/>
                <FieldMessage error field="reason"/>
            </div>
            <button type="submit" name="decision" value="approve" class="primary">
                {if fits { "Approve" } else { "Approve and wait for capacity" }}
            </button>
            <button type="submit" name="decision" value="reject" class="danger">"Reject"</button>
        </ActionForm>
    }
}

#[component]
pub fn InboxPage() -> impl IntoView {
    view! {
        <Title text="Approvals · Concierge"/>
        <Guard allow=approver>
            <InboxContent/>
        </Guard>
    }
}

#[component]
fn InboxContent() -> impl IntoView {
    let decide = ServerAction::<DecideRequest>::new();
    let error = action_error(decide);
    // The cards share one action: its error belongs to the card last submitted (known once
    // the page runs in the browser; before that, the page shows it above the cards).
    let last = RwSignal::new(None::<String>);
    let unplaced = Signal::derive(move || last.get().is_none().then(|| error.get()).flatten());
    // New requests, and decisions taken elsewhere, arrive as live events (no polling).
    let pushed = crate::live::use_live(|e| e.kind == "request");
    let items = Resource::new(
        move || (decide.version().get(), pushed.get()),
        |_| approval_inbox(),
    );
    view! {
        <div class="page-head"><h1>"Approvals"</h1><a class="button" href="/requests?all=1">"All requests"</a></div>
        <FormMessage error=unplaced/>
        <FieldMessage error=unplaced field="reason"/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match items.await {
                    Ok(list) if list.is_empty() => view! { <p class="muted">"Nothing is waiting for you."</p> }.into_any(),
                    Ok(list) => view! {
                        <div class="inbox">
                            {list.into_iter().map(|item| view! { <InboxCard item decide error last/> }).collect_view()}
                        </div>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn InboxCard(
    item: InboxItem,
    decide: ServerAction<DecideRequest>,
    error: Signal<Option<crate::error::AppError>>,
    last: RwSignal<Option<String>>,
) -> impl IntoView {
    let r = item.request.clone();
    let href = format!("/requests/{}", r.id);
    let id = r.id.to_string();
    let mine = id.clone();
    let error = Signal::derive(move || {
        (last.get().as_deref() == Some(mine.as_str()))
            .then(|| error.get())
            .flatten()
    });
    view! {
        <article class="card inbox-item" data-request=r.id.to_string()
            on:submit=move |_| last.set(Some(id.clone()))>
            <div class="card-head">
                <h2><a href=href>{format!("{} · {}", r.template_name, r.name_prefix)}</a></h2>
                <span class="badge">{format!("level {}", item.level)}</span>
            </div>
            <p>
                <strong>{r.requester_email.clone()}</strong>
                {format!(" ({} VMs now) asks for {} for {} days in {}, on {}.", item.requester_vms, size_text(&r), r.lease_days, r.tenant_name, r.network_text())}
            </p>
            <p><span class="muted">"Purpose: "</span>{r.purpose.clone()}</p>
            {(!item.user_data.is_empty()).then(|| view! {
                <div class="user-data" data-testid="requester-user-data">
                    <p class="notice warn small">"The requester adds their own cloud-config: it runs as root on first boot. Read it before approving."</p>
                    <pre class="mono small">{item.user_data.clone()}</pre>
                </div>
            })}
            <div class="grid">
                <div>
                    <h3>"Quota if approved"</h3>
                    <QuotaBars effect=item.effect.clone() with_adding=true/>
                </div>
                <div>
                    <h3>"Placement preview"</h3>
                    <p class="small">{item.placement.clone()}</p>
                    {(!item.fits).then(|| view! {
                        <p class="notice warn small" data-testid="waits-for-capacity">
                            "Approving reserves the quota now; the VM then waits until a host has room, and starts on its own when one does."
                        </p>
                    })}
                </div>
            </div>
            <DecisionForm id=r.id.to_string() decide error fits=item.fits/>
        </article>
    }
}
