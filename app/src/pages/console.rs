//! A VM's console in the browser: xterm.js (serial) or noVNC (graphical), both driven by
//! `/console.js`, which asks for a ticket and opens the WebSocket proxy.
use crate::components::guard::{anyone, Guard};
use crate::fleet::get_vm;
use leptos::prelude::*;
use leptos_meta::{Stylesheet, Title};
use leptos_router::hooks::use_params_map;
use uuid::Uuid;

#[component]
pub fn ConsolePage() -> impl IntoView {
    view! {
        <Title text="Console · Concierge"/>
        <Guard allow=anyone>
            <ConsoleContent/>
        </Guard>
    }
}

#[component]
fn ConsoleContent() -> impl IntoView {
    let params = use_params_map();
    let ids = move || {
        params.with(|p| {
            let host = p.get("host").and_then(|s| Uuid::parse_str(&s).ok());
            let uuid = p.get("uuid").and_then(|s| Uuid::parse_str(&s).ok());
            let kind = p.get("kind").filter(|k| k == "serial" || k == "graphical");
            (host, uuid, kind)
        })
    };
    let vm = Resource::new(ids, |(host, uuid, kind)| async move {
        match (host, uuid, kind) {
            (Some(h), Some(u), Some(k)) => {
                let d = get_vm(h, u).await?;
                // The name its owner gave it; libvirt's carries a suffix.
                let name = match d.domain.managed {
                    true => crate::provisioning::get_managed_vm(u)
                        .await
                        .ok()
                        .flatten()
                        .map(|m| m.name),
                    false => None,
                }
                .unwrap_or_else(|| d.domain.name.clone());
                Ok((d, k, name))
            }
            _ => Err(crate::error::AppError::NotFound("Console".into())),
        }
    });
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match vm.await {
                    Ok((d, kind, name)) => {
                        let dom = d.domain;
                        let back = format!("/vms/{}/{}", dom.host_id, dom.uuid);
                        let other = if kind == "serial" { "graphical" } else { "serial" };
                        let other_href = format!("{back}/console/{other}");
                        let serial = kind == "serial";
                        view! {
                            <Stylesheet href="/vendor/xterm/xterm.css"/>
                            <div class="page-head">
                                <h1>{format!("{} console of {}", if serial { "Serial" } else { "Graphical" }, name)}</h1>
                                <p class="actions-row">
                                    <a class="button" rel="external" href=other_href>{if serial { "Graphical console" } else { "Serial console" }}</a>
                                    <a class="button" href=back>"Back to the VM"</a>
                                </p>
                            </div>
                            <p id="console-status" class="muted" role="status" aria-live="polite">"Connecting…"</p>
                            <div id="console" class=if serial { "console serial" } else { "console graphical" }
                                data-host=dom.host_id.to_string() data-uuid=dom.uuid.to_string() data-kind=kind.clone()
                                aria-label=if serial { "Serial console: type here" } else { "Graphical console" }
                                tabindex="0"></div>
                            <p class="small muted">
                                {if serial {
                                    "The guest's first serial port: boot messages and a login prompt. Templates with cloud-init lock passwords, so log in with SSH (see the VM page); Ctrl+] is not needed here, closing the page ends the console."
                                } else {
                                    "The guest's screen. Keyboard and mouse go to the VM while this area has focus; closing the page ends the console."
                                }}
                            </p>
                            <script type="module" src="/console.js"></script>
                        }.into_any()
                    }
                    Err(error) => view! { <crate::pages::not_found::LoadFailed error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}
