//! Webhooks: the endpoints a tenant admin (or fleet admin) sends events to, each with its
//! delivery log, a test button, and on/off; and the form that adds one and shows its secret
//! once.
use crate::components::form::{action_error, reset_on_success, FieldMessage, FormMessage};
use crate::components::guard::{any_admin, Guard};
use crate::components::timestamp::Timestamp;
use crate::webhooks::{
    webhooks, AddWebhook, RemoveWebhook, SendTestWebhook, SetWebhookEnabled, WebhookEndpoint,
    EVENT_TYPES,
};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn WebhooksPage() -> impl IntoView {
    view! {
        <Title text="Webhooks · Concierge"/>
        <Guard allow=any_admin>
            <WebhooksContent/>
        </Guard>
    }
}

#[component]
fn WebhooksContent() -> impl IntoView {
    let add = ServerAction::<AddWebhook>::new();
    let toggle = ServerAction::<SetWebhookEnabled>::new();
    let remove = ServerAction::<RemoveWebhook>::new();
    let test = ServerAction::<SendTestWebhook>::new();
    let add_error = action_error(add);
    let toggle_error = action_error(toggle);
    let remove_error = action_error(remove);
    let test_error = action_error(test);
    let form = reset_on_success(add);
    let overview = Resource::new(
        move || {
            (
                add.version().get(),
                toggle.version().get(),
                remove.version().get(),
                test.version().get(),
            )
        },
        |_| webhooks(),
    );
    let created = move || add.value().get().and_then(|r| r.ok());
    let tested = move || test.value().with(|v| matches!(v, Some(Ok(()))));
    view! {
        <h1>"Webhooks"</h1>
        <p class="hint">
            "Concierge POSTs each event you choose to your URL as JSON, signed per "
            <a href="https://www.standardwebhooks.com/" rel="noopener">"Standard Webhooks"</a>
            " (headers webhook-id, webhook-timestamp, webhook-signature). Only a 2xx answer counts; "
            "other answers are retried with growing delays for a day, then the endpoint is turned off and you are told. "
            "A 410 Gone turns it off at once. Redirects are not followed."
        </p>
        {move || created().map(|c| view! {
            <div class="notice ok" role="status" id="webhook-secret">
                <p><strong>"Endpoint added."</strong>" Its signing secret is shown this once: store it with your receiver."</p>
                <p><code class="secret">{c.secret}</code></p>
            </div>
        })}
        <FormMessage error=toggle_error/>
        <FormMessage error=remove_error/>
        <FormMessage error=test_error/>
        {move || tested().then(|| view! {
            <p class="notice" role="status">"Test event queued: its delivery appears in the log below within seconds."</p>
        })}
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Ok(o) => {
                        let scopes = o.scopes.clone();
                        let list = if o.endpoints.is_empty() {
                            view! { <p class="empty" id="webhooks-empty">"No endpoints yet."</p> }.into_any()
                        } else {
                            view! {
                                <ul class="plain webhooks" id="webhook-list">
                                    {o.endpoints.into_iter().map(|e| view! {
                                        <Endpoint e toggle remove test/>
                                    }).collect_view()}
                                </ul>
                            }.into_any()
                        };
                        view! {
                            {list}
                            <section class="card" aria-labelledby="add-webhook-title">
                                <h2 id="add-webhook-title">"Add an endpoint"</h2>
                                <ActionForm action=add node_ref=form attr:class="form" attr:id="add-webhook">
                                    <FormMessage error=add_error/>
                                    <label for="webhook-scope">"Events of"</label>
                                    <select id="webhook-scope" name="scope" aria-describedby="scope-error">
                                        {scopes.into_iter().map(|s| {
                                            let value = s.tenant_id.map(|t| t.to_string()).unwrap_or_else(|| "fleet".into());
                                            view! { <option value=value>{s.name}</option> }
                                        }).collect_view()}
                                    </select>
                                    <FieldMessage error=add_error field="scope"/>
                                    <label for="webhook-url">"URL"</label>
                                    <input id="webhook-url" name="url" type="url" required inputmode="url"
                                        placeholder="https://hooks.example.com/concierge" autocomplete="off"
                                        aria-describedby="url-error"/>
                                    <FieldMessage error=add_error field="url"/>
                                    <label for="webhook-description">"Description (optional)"</label>
                                    <input id="webhook-description" name="description" maxlength="200"
                                        placeholder="Chat channel #infra" aria-describedby="description-error"/>
                                    <FieldMessage error=add_error field="description"/>
                                    <fieldset class="checks" aria-describedby="events-error">
                                        <legend>"Events"</legend>
                                        {EVENT_TYPES.into_iter().map(|(t, label)| view! {
                                            <label class="check">
                                                <input type="checkbox" name="events[]" value=t/>
                                                " " {label} " " <code class="muted small">{t}</code>
                                            </label>
                                        }).collect_view()}
                                    </fieldset>
                                    <FieldMessage error=add_error field="events"/>
                                    <button type="submit" class="primary">"Add endpoint"</button>
                                </ActionForm>
                            </section>
                        }.into_any()
                    }
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Endpoint(
    e: WebhookEndpoint,
    toggle: ServerAction<SetWebhookEnabled>,
    remove: ServerAction<RemoveWebhook>,
    test: ServerAction<SendTestWebhook>,
) -> impl IntoView {
    let id = e.id.to_string();
    let (id_test, id_toggle) = (id.clone(), id.clone());
    let url = e.url.clone();
    let remove_label = format!("Remove the endpoint {}", e.url);
    let any_sent = !e.recent.is_empty();
    let state = if e.enabled { "on" } else { "off" };
    let title = if e.description.is_empty() {
        e.url.clone()
    } else {
        e.description.clone()
    };
    view! {
        <li class="card webhook" data-url=url>
            <div class="toolbar">
                <h2 class="webhook-title">{title}</h2>
                <span class=format!("badge {}", if e.enabled { "ok" } else { "warn" })>{state}</span>
            </div>
            <p class="muted small">
                <span class="sr-only">"URL: "</span><code>{e.url.clone()}</code>
                " · " {e.scope.name.clone()} " · added " <Timestamp at=e.created_at/>
            </p>
            {e.disabled_reason.clone().map(|r| view! { <p class="form-error">"Turned off: " {r}</p> })}
            <p class="small">"Events: " {e.event_types.join(", ")}</p>
            <div class="actions-row">
                <ActionForm action=test attr:class="inline">
                    <input type="hidden" name="id" value=id_test/>
                    <button type="submit" class="small" disabled=!e.enabled>"Send test event"</button>
                </ActionForm>
                <ActionForm action=toggle attr:class="inline">
                    <input type="hidden" name="id" value=id_toggle/>
                    <input type="hidden" name="enabled" value=(!e.enabled).to_string()/>
                    <button type="submit" class="small">{if e.enabled { "Turn off" } else { "Turn on" }}</button>
                </ActionForm>
                <ActionForm action=remove attr:class="inline">
                    <input type="hidden" name="id" value=id/>
                    <button type="submit" class="small danger" aria-label=remove_label>"Remove"</button>
                </ActionForm>
            </div>
            <details class="deliveries" open=any_sent>
                <summary>"Delivery log (newest 10)"</summary>
                {if !any_sent {
                    view! { <p class="muted">"Nothing sent yet."</p> }.into_any()
                } else {
                    view! {
                        <table class="table compact">
                            <thead><tr><th>"When"</th><th>"Event"</th><th>"State"</th><th>"Attempts"</th><th>"Answer"</th></tr></thead>
                            <tbody>
                                {e.recent.into_iter().map(|d| {
                                    let answer = match (d.last_status, d.last_error.clone()) {
                                        (Some(s), None) => format!("HTTP {s}"),
                                        (_, Some(err)) => err,
                                        (None, None) => "—".into(),
                                    };
                                    view! {
                                        <tr>
                                            <td data-label="When"><Timestamp at=d.created_at/></td>
                                            <td data-label="Event"><code title=d.message_id.clone()>{d.event_type.clone()}</code></td>
                                            <td data-label="State" class=format!("delivery-{}", d.state)>{d.state.clone()}</td>
                                            <td data-label="Attempts">{d.attempts}</td>
                                            <td data-label="Answer" class="wrap">{answer}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }}
            </details>
        </li>
    }
}
