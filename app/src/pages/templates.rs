//! Fleet template management.
use crate::components::form::{action_error, textarea_text, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::images::{list_images, Image};
use crate::provisioning::{list_templates, PublishTemplate, SaveTemplate, Template};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn TemplatesPage() -> impl IntoView {
    view! {
        <Title text="Templates · Concierge"/>
        <Guard allow=fleet_admin>
            <TemplatesContent/>
        </Guard>
    }
}

fn sizes_text(t: &Template) -> String {
    t.sizes
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {}",
                s.name,
                s.vcpus,
                s.memory_mib as f64 / 1024.0,
                s.disk_gib
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[component]
fn TemplatesContent() -> impl IntoView {
    let save = ServerAction::<SaveTemplate>::new();
    let publish = ServerAction::<PublishTemplate>::new();
    let publish_error = action_error(publish);
    let data = Resource::new(
        move || (save.version().get(), publish.version().get()),
        |_| async move {
            (
                list_templates().await,
                list_images().await.unwrap_or_default(),
            )
        },
    );
    view! {
        <div class="page-head"><h1>"Templates"</h1></div>
        <FormMessage error=publish_error/>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (templates, images) = data.await;
                match templates {
                    Ok(list) => view! {
                        {list.is_empty().then(|| view! { <p class="muted">"No templates yet: create the first one below."</p> })}
                        <div class="template-list">
                            {list.into_iter().map(|t| view! { <TemplateRow t images=images.clone() save publish/> }).collect_view()}
                        </div>
                        <section class="card">
                            <h2>"New template"</h2>
                            <TemplateForm t=None images save/>
                        </section>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn TemplateRow(
    t: Template,
    images: Vec<Image>,
    save: ServerAction<SaveTemplate>,
    publish: ServerAction<PublishTemplate>,
) -> impl IntoView {
    let id = t.id.to_string();
    let offered = if t.all_tenants {
        "every tenant".to_string()
    } else if t.tenant_names.is_empty() {
        "no tenant yet".to_string()
    } else {
        t.tenant_names.join(", ")
    };
    let ready_on = t
        .images
        .iter()
        .map(|i| match &i.kernel {
            Some(k) => format!("{}: {}/{} (boots {k})", i.host_name, i.pool, i.volume),
            None => format!("{}: {}/{}", i.host_name, i.pool, i.volume),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let published = t.published;
    let t2 = t.clone();
    view! {
        <article class="card" data-template=t.name.clone()>
            <div class="card-head">
                <h2>{t.name.clone()} " " {if published { view! { <span class="badge ok">"published"</span> } } else { view! { <span class="badge muted">"draft"</span> } }}</h2>
                <ActionForm action=publish attr:class="inline">
                    <input type="hidden" name="id" value=id.clone()/>
                    <input type="hidden" name="published" value=(!published).to_string()/>
                    <button type="submit">{if published { "Unpublish" } else { "Publish" }}</button>
                </ActionForm>
            </div>
            <p class="muted small">{t.os.clone()}</p>
            <p>{t.description.clone()}</p>
            <div class="grid facts">
                <div><span class="muted">"Sizes"</span><strong>{t.sizes.iter().map(|s| s.label()).collect::<Vec<_>>().join(" | ")}</strong></div>
                <div><span class="muted">"Lease"</span><strong>{format!("{} days, at most {}", t.default_lease_days, t.max_lease_days)}</strong></div>
                <div><span class="muted">"Offered to"</span><strong>{offered}</strong></div>
                <div><span class="muted">"Image"</span><strong>{t.image_name.clone().unwrap_or_else(|| "none".into())}</strong></div>
                <div><span class="muted">"Networks"</span><strong>{if t.networks.is_empty() { "user-mode".to_string() } else { t.networks.join(", ") }}</strong></div>
                <div><span class="muted">"Ready on"</span><strong>{if ready_on.is_empty() { "no host yet".to_string() } else { ready_on }}</strong></div>
                <div><span class="muted">"First boot"</span><strong>{match &t.login_user {
                    Some(u) => format!("cloud-init: log in as {u} with the owner's keys{}", if t.user_data.trim().is_empty() { "" } else { ", plus the snippet" }),
                    None => "no cloud-init".to_string(),
                }}</strong></div>
            </div>
            <details>
                <summary>"Edit"</summary>
                <TemplateForm t=Some(t2) images save/>
            </details>
        </article>
    }
}

#[component]
fn TemplateForm(
    t: Option<Template>,
    images: Vec<Image>,
    save: ServerAction<SaveTemplate>,
) -> impl IntoView {
    let current = t.as_ref().and_then(|t| t.image_id);
    let error = action_error(save);
    let key = t
        .as_ref()
        .map(|t| t.id.simple().to_string())
        .unwrap_or_else(|| "new".into());
    let f = move |name: &str| format!("tpl-{key}-{name}");
    let tenants = t
        .as_ref()
        .map(|t| {
            if t.all_tenants {
                "*".to_string()
            } else {
                t.tenant_names.join(", ")
            }
        })
        .unwrap_or_default();
    view! {
        <FormMessage error/>
        <ActionForm action=save attr:class="form">
            {t.as_ref().map(|t| view! { <input type="hidden" name="id" value=t.id.to_string()/> })}
            <div class="row">
                <div class="field">
                    <label for=f("name")>"Name"</label>
                    <input id=f("name") name="name" required maxlength="80" value=t.as_ref().map(|t| t.name.clone()) aria-describedby="name-error"/>
                    <FieldMessage error field="name"/>
                </div>
                <div class="field">
                    <label for=f("os")>"Operating system"</label>
                    <input id=f("os") name="os" required maxlength="80" value=t.as_ref().map(|t| t.os.clone()) aria-describedby="os-error"/>
                    <FieldMessage error field="os"/>
                </div>
            </div>
            <div class="field">
                <label for=f("description")>"Description"</label>
                <textarea id=f("description") name="description" maxlength="2000" rows="2">{t.as_ref().map(|t| textarea_text(t.description.clone()))}</textarea>
                <FieldMessage error field="description"/>
            </div>
            <div class="row">
                <div class="field">
                    <label for=f("sizes")>"Sizes: one per line, name vCPUs memory-GiB disk-GiB"</label>
                    <textarea id=f("sizes") name="sizes" rows="3" required placeholder="small 1 2 20\nlarge 4 8 80" aria-describedby="sizes-error">{t.as_ref().map(|t| textarea_text(sizes_text(t)))}</textarea>
                    <FieldMessage error field="sizes"/>
                </div>
                <div class="field">
                    <label for=f("default")>"Default lease (days)"</label>
                    <input id=f("default") name="default_lease_days" type="number" min="1" max="3650" required value=t.as_ref().map(|t| t.default_lease_days.to_string()).unwrap_or_else(|| "30".into()) aria-describedby="default_lease_days-error"/>
                    <FieldMessage error field="default_lease_days"/>
                </div>
                <div class="field">
                    <label for=f("max")>"Maximum lease (days)"</label>
                    <input id=f("max") name="max_lease_days" type="number" min="1" max="3650" required value=t.as_ref().map(|t| t.max_lease_days.to_string()).unwrap_or_else(|| "90".into()) aria-describedby="max_lease_days-error"/>
                    <FieldMessage error field="max_lease_days"/>
                </div>
            </div>
            <div class="field">
                <label for=f("tenants")>"Tenants (comma-separated names, or * for every tenant)"</label>
                <input id=f("tenants") name="tenants" value=tenants aria-describedby="tenants-error"/>
                <FieldMessage error field="tenants"/>
            </div>
            <div class="field">
                <label for=f("image")>"Base image"</label>
                <select id=f("image") name="image_id" required aria-describedby="image_id-error image-help">
                    {t.is_none().then(|| view! { <option value="">"Choose an image…"</option> })}
                    {images.into_iter().filter(|i| i.format == "qcow2" && i.ready_hosts() > 0).map(|i| {
                        let selected = current == Some(i.id);
                        let label = format!(
                            "{} · on {} host{} · {}",
                            i.name,
                            i.ready_hosts(),
                            if i.ready_hosts() == 1 { "" } else { "s" },
                            match &i.login_user { Some(u) => format!("cloud-init, log in as {u}"), None => "no cloud-init".into() },
                        );
                        view! { <option value=i.id.to_string() selected=selected>{label}</option> }
                    }).collect_view()}
                </select>
                <p class="small muted" id="image-help">"Images are registered, uploaded and copied between hosts on the " <a href="/images">"Images"</a> " page; VMs of this template are placed on the hosts that hold it."</p>
                <FieldMessage error field="image_id"/>
            </div>
            <div class="field">
                <label for=f("networks")>"Networks (comma-separated libvirt network names; user: user-mode networking with an SSH port forward)"</label>
                <input id=f("networks") name="networks" placeholder="user" value=t.as_ref().map(|t| if t.networks.is_empty() { "user".to_string() } else { t.networks.join(", ") }).unwrap_or_else(|| "user".into()) aria-describedby="networks-error"/>
                <FieldMessage error field="networks"/>
            </div>
            <fieldset>
                <legend>"First boot (cloud-init)"</legend>
                <div class="field">
                    <label for=f("login_user")>"Login user (empty: the image's own)"</label>
                    <input id=f("login_user") name="login_user" maxlength="32" placeholder="debian" value=t.as_ref().and_then(|t| t.login_user.clone()) aria-describedby="login_user-error"/>
                    <FieldMessage error field="login_user"/>
                </div>
                <div class="field">
                    <label for=f("user_data")>"Extra cloud-config for every VM (YAML; the portal sets users, keys and host name)"</label>
                    <textarea id=f("user_data") name="user_data" rows="3" placeholder="packages: [htop]" spellcheck="false" aria-describedby="user_data-error">{t.as_ref().map(|t| textarea_text(t.user_data.clone()))}</textarea>
                    <FieldMessage error field="user_data"/>
                </div>
                <label class="check">
                    <input type="checkbox" name="allow_user_data" value="on"
                        checked=t.as_ref().is_some_and(|t| t.allow_user_data) aria-describedby="allow_user_data-error"/>
                    " Requesters may add their own cloud-config (approvers see it)"
                </label>
                <FieldMessage error field="allow_user_data"/>
            </fieldset>
            <button type="submit" class="primary">{if t.is_some() { "Save template" } else { "Create template" }}</button>
        </ActionForm>
    }
}
