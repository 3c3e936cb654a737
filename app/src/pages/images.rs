//! The image library (fleet admins): what each base image is, where it is, uploads and copies.
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::components::guard::{fleet_admin, Guard};
use crate::components::timestamp::Timestamp;
use crate::fleet::{list_hosts, HostSummary};
use crate::images::{
    bytes_text, list_images, CopyImage, DeleteImage, DiscardImageCopy, Image, ImageCopy,
    RegisterImage,
};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn ImagesPage() -> impl IntoView {
    view! {
        <Title text="Images · Concierge"/>
        <Guard allow=fleet_admin>
            <ImagesContent/>
        </Guard>
    }
}

#[derive(Clone, Copy)]
struct Actions {
    copy: ServerAction<CopyImage>,
    discard: ServerAction<DiscardImageCopy>,
    delete: ServerAction<DeleteImage>,
}

#[component]
fn ImagesContent() -> impl IntoView {
    let register = ServerAction::<RegisterImage>::new();
    let actions = Actions {
        copy: ServerAction::new(),
        discard: ServerAction::new(),
        delete: ServerAction::new(),
    };
    let copy_error = action_error(actions.copy);
    let discard_error = action_error(actions.discard);
    let delete_error = action_error(actions.delete);
    // Copies in progress report every second; the page follows while there are any.
    let tick = RwSignal::new(0u32);
    let data = Resource::new(
        move || {
            (
                register.version().get(),
                actions.copy.version().get(),
                actions.discard.version().get(),
                actions.delete.version().get(),
                tick.get(),
            )
        },
        |_| async move { (list_images().await, list_hosts().await.unwrap_or_default()) },
    );
    #[cfg(feature = "hydrate")]
    {
        let busy = Signal::derive(move || {
            data.with(|d| {
                d.as_ref().is_some_and(|(images, _)| {
                    images.as_ref().is_ok_and(|list| {
                        list.iter()
                            .any(|i| i.copies.iter().any(|c| c.state == "copying"))
                    })
                })
            })
        });
        if let Ok(handle) = set_interval_with_handle(
            move || {
                if busy.get_untracked() {
                    tick.update(|t| *t += 1);
                }
            },
            std::time::Duration::from_secs(2),
        ) {
            on_cleanup(move || handle.clear());
        }
    }
    view! {
        <div class="page-head"><h1>"Images"</h1></div>
        <p class="muted">"Base images that templates boot from. Each is read once when it arrives: its format is detected from its bytes and kept, images that would make QEMU open other files (a backing file, an external data file) are refused, and its sizes and SHA-256 are recorded. Placement uses every host that holds a finished copy."</p>
        <FormMessage error=copy_error/>
        <FormMessage error=discard_error/>
        <FormMessage error=delete_error/>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (images, hosts) = data.await;
                match images {
                    Ok(list) => view! {
                        {list.is_empty().then(|| view! { <p class="muted">"No images yet: register a volume a host already holds, or upload a file, below."</p> })}
                        <div class="template-list">
                            {list.into_iter().map(|i| view! { <ImageCard image=i hosts=hosts.clone() actions/> }).collect_view()}
                        </div>
                        <section class="card">
                            <h2>"Upload an image file"</h2>
                            <UploadForm hosts=hosts.clone()/>
                        </section>
                        <section class="card">
                            <h2>"Register a volume a host already holds"</h2>
                            <RegisterForm hosts register/>
                        </section>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <script type="module" src="/images.js"></script>
    }
}

fn fact(label: &'static str, value: String) -> impl IntoView {
    view! { <div><span class="muted">{label}</span><strong>{value}</strong></div> }
}

fn copy_state(c: &ImageCopy) -> AnyView {
    match c.state.as_str() {
        "ready" => view! { <span class="badge ok">"ready"</span> }.into_any(),
        "failed" => view! {
            <span class="badge danger">"failed"</span>
            " "
            <span class="small">{c.error.clone().unwrap_or_default()}</span>
        }
        .into_any(),
        state => {
            let pct = c.percent().unwrap_or(0);
            let label = format!(
                "{} {} of {}",
                if state == "uploading" {
                    "uploaded"
                } else {
                    "copied"
                },
                bytes_text(c.bytes_done),
                bytes_text(c.bytes_total.unwrap_or_default())
            );
            view! {
                <span class="badge warn">{state.to_string()}</span>
                " "
                <progress max="100" value=pct.to_string() aria-label=label.clone()></progress>
                " "
                <span class="small">{format!("{pct}%")}</span>
                {c.error.clone().map(|e| view! { <span class="small form-error">{format!(" Retrying: {e}")}</span> })}
            }
            .into_any()
        }
    }
}

#[component]
fn ImageCard(image: Image, hosts: Vec<HostSummary>, actions: Actions) -> impl IntoView {
    let id = image.id;
    let in_use = !image.templates.is_empty();
    let others: Vec<HostSummary> = hosts
        .into_iter()
        .filter(|h| !image.copies.iter().any(|c| c.host_id == h.id))
        .collect();
    let default_pool = image
        .copies
        .first()
        .map(|c| c.pool.clone())
        .unwrap_or_else(|| "default".into());
    let can_copy = image.ready_hosts() > 0 && !others.is_empty();
    let sha = image.sha256.clone();
    view! {
        <article class="card" data-image=image.name.clone()>
            <div class="card-head">
                <h2>{image.name.clone()} " " <span class="badge muted">{image.format.clone()}</span></h2>
                {(!in_use).then(|| view! {
                    <ActionForm action=actions.delete attr:class="inline">
                        <input type="hidden" name="image" value=id.to_string()/>
                        <button type="submit" title="Forget the image; its volumes stay on the hosts">"Forget"</button>
                    </ActionForm>
                })}
            </div>
            <div class="grid facts">
                {fact("File size", image.size_bytes.map(bytes_text).unwrap_or_else(|| "not read".into()))}
                {fact("Disk size", image.virtual_size_bytes.map(bytes_text).unwrap_or_else(|| "not read".into()))}
                {fact("First boot", match &image.login_user {
                    Some(u) => format!("cloud-init; log in as {u}"),
                    None => "no cloud-init".into(),
                })}
                {fact("Used by", if in_use { image.templates.join(", ") } else { "no template".into() })}
                <div><span class="muted">"Added"</span><strong><Timestamp at=image.created_at/></strong></div>
            </div>
            <p class="small">
                <span class="muted">"SHA-256 "</span>
                {match sha {
                    Some(s) => view! { <code class="hash" data-sha256=s.clone()>{s.clone()}</code> }.into_any(),
                    None => view! { <span class="muted">"not read (a simulated host, or registered before the library)"</span> }.into_any(),
                }}
            </p>
            <div>
                <table class="table">
                    <caption class="sr-only">{format!("Copies of {}", image.name)}</caption>
                    <thead><tr><th scope="col">"Host"</th><th scope="col">"Volume"</th><th scope="col">"State"</th><th scope="col"><span class="sr-only">"Actions"</span></th></tr></thead>
                    <tbody>
                        {image.copies.iter().map(|c| {
                            let host = c.host_id.to_string();
                            let volume = match &c.kernel {
                                Some(k) => format!("{}/{} (boots {k})", c.pool, c.volume),
                                None => format!("{}/{}", c.pool, c.volume),
                            };
                            let uploading = c.state == "uploading";
                            let discardable = uploading || c.state == "failed";
                            view! {
                                <tr data-host=c.host_name.clone() data-state=c.state.clone()>
                                    <td>{c.host_name.clone()}</td>
                                    <td><code>{volume}</code></td>
                                    <td>{copy_state(c)}</td>
                                    <td class="actions-row">
                                        {uploading.then(|| view! {
                                            <form class="inline" data-resume-upload="" data-image=id.to_string() data-host=host.clone()>
                                                <label class="sr-only" for=format!("resume-{}-{host}", id)>"The same file, to resume"</label>
                                                <input type="file" id=format!("resume-{}-{host}", id) name="file" required/>
                                                <button type="submit">"Resume"</button>
                                                <span class="upload-status small" role="status" aria-live="polite"></span>
                                            </form>
                                        })}
                                        {discardable.then(|| view! {
                                            <ActionForm action=actions.discard attr:class="inline">
                                                <input type="hidden" name="image" value=id.to_string()/>
                                                <input type="hidden" name="host" value=host.clone()/>
                                                <button type="submit" class="danger">"Discard"</button>
                                            </ActionForm>
                                        })}
                                    </td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
            {can_copy.then(|| view! {
                <details>
                    <summary>"Copy to another host"</summary>
                    <ActionForm action=actions.copy attr:class="form">
                        <input type="hidden" name="image" value=id.to_string()/>
                        <div class="row">
                            <div class="field">
                                <label for=format!("copy-{id}-host")>"Host"</label>
                                <select id=format!("copy-{id}-host") name="host">
                                    {others.into_iter().map(|h| view! { <option value=h.id.to_string()>{h.name}</option> }).collect_view()}
                                </select>
                            </div>
                            <div class="field">
                                <label for=format!("copy-{id}-pool")>"Storage pool there"</label>
                                <input id=format!("copy-{id}-pool") name="pool" value=default_pool required/>
                            </div>
                        </div>
                        <button type="submit">"Copy"</button>
                    </ActionForm>
                </details>
            })}
        </article>
    }
}

/// Text for HTML built as a string.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Sent by `public/images.js` in chunks (an HTML form cannot stream a large file): the page
/// needs JavaScript for uploads, and says so without it. Nothing in it is reactive, so it is
/// markup the browser bundle does not carry (hydration keeps the server's).
#[component]
fn UploadForm(hosts: Vec<HostSummary>) -> impl IntoView {
    let options: String = hosts
        .iter()
        .filter(|h| !h.simulated)
        .map(|h| format!("<option value=\"{}\">{}</option>", h.id, escape(&h.name)))
        .collect();
    let field = |id: &str, name: &str, label: &str, input: String| {
        format!(
            "<div class=\"field\"><label for=\"up-{id}\">{label}</label>{input}<p class=\"field-error\" id=\"up-{name}-error\" hidden></p></div>"
        )
    };
    let html = format!(
        "<noscript><p class=\"form-error\">Uploading needs JavaScript; registering a volume does not.</p></noscript>\
         <p class=\"upload-status\" role=\"status\" aria-live=\"polite\"></p>\
         <div class=\"row\">{}{}</div><div class=\"row\">{}{}{}</div>\
         <progress class=\"upload-progress\" max=\"100\" value=\"0\" hidden aria-label=\"Upload progress\"></progress>\
         <button type=\"submit\">Upload</button>",
        field("name", "name", "Name", r#"<input id="up-name" name="name" required maxlength="80" placeholder="Debian 12 (cloud-init)" aria-describedby="up-name-error"/>"#.into()),
        field("file", "file", "Image file (qcow2)", r#"<input id="up-file" type="file" name="file" required aria-describedby="up-file-error"/>"#.into()),
        field("host", "host", "Host", format!(r#"<select id="up-host" name="host" aria-describedby="up-host-error">{options}</select>"#)),
        field("pool", "pool", "Storage pool", r#"<input id="up-pool" name="pool" value="default" required aria-describedby="up-pool-error"/>"#.into()),
        field("login", "login_user", "Login user (empty: no cloud-init)", r#"<input id="up-login" name="login_user" placeholder="debian" aria-describedby="up-login_user-error"/>"#.into()),
    );
    view! { <form id="image-upload" class="form" data-upload="" inner_html=html></form> }
}

#[component]
fn RegisterForm(hosts: Vec<HostSummary>, register: ServerAction<RegisterImage>) -> impl IntoView {
    let error = action_error(register);
    view! {
        <FormMessage error/>
        <ActionForm action=register attr:class="form">
            <div class="row">
                <div class="field">
                    <label for="reg-name">"Name"</label>
                    <input id="reg-name" name="name" required maxlength="80" aria-describedby="name-error"/>
                    <FieldMessage error field="name"/>
                </div>
                <div class="field">
                    <label for="reg-host">"Host"</label>
                    <select id="reg-host" name="host" aria-describedby="host-error">
                        {hosts.into_iter().map(|h| view! { <option value=h.id.to_string()>{h.name}</option> }).collect_view()}
                    </select>
                    <FieldMessage error field="host"/>
                </div>
                <div class="field">
                    <label for="reg-pool">"Storage pool"</label>
                    <input id="reg-pool" name="pool" required placeholder="default" aria-describedby="pool-error"/>
                    <FieldMessage error field="pool"/>
                </div>
                <div class="field">
                    <label for="reg-volume">"Volume"</label>
                    <input id="reg-volume" name="volume" required placeholder="debian-12.qcow2" aria-describedby="volume-error"/>
                    <FieldMessage error field="volume"/>
                </div>
            </div>
            <div class="row">
                <div class="field">
                    <label for="reg-kernel">"Kernel volume (direct boot, optional)"</label>
                    <input id="reg-kernel" name="kernel" placeholder="debian-12.vmlinuz" aria-describedby="kernel-error"/>
                    <FieldMessage error field="kernel"/>
                </div>
                <div class="field">
                    <label for="reg-initrd">"Initramfs volume"</label>
                    <input id="reg-initrd" name="initrd" placeholder="debian-12.initrd" aria-describedby="initrd-error"/>
                    <FieldMessage error field="initrd"/>
                </div>
                <div class="field">
                    <label for="reg-login">"Login user (empty: no cloud-init)"</label>
                    <input id="reg-login" name="login_user" placeholder="debian" aria-describedby="login_user-error"/>
                    <FieldMessage error field="login_user"/>
                </div>
            </div>
            <button type="submit">"Register"</button>
        </ActionForm>
    }
}
