//! Self-service provisioning: templates and the catalog, requests, approvals, quotas, and the
//! VMs that requests create.
use crate::error::AppError;
pub use crate::states::RequestState;
use crate::states::{QuotaResource, VmPhase};
use crate::Page;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One allowed size (flavor) of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub name: String,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

impl Size {
    pub fn label(&self) -> String {
        format!(
            "{} · {} vCPU · {} · {} GiB disk",
            self.name,
            self.vcpus,
            mib_label(self.memory_mib),
            self.disk_gib
        )
    }
}

pub fn mib_label(mib: i64) -> String {
    if mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateImage {
    pub host_id: Uuid,
    pub host_name: String,
    pub pool: String,
    pub volume: String,
    /// Direct kernel boot: kernel and initramfs volumes in the same pool.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub os: String,
    pub sizes: Vec<Size>,
    pub default_lease_days: i32,
    pub max_lease_days: i32,
    pub published: bool,
    pub all_tenants: bool,
    pub tenant_ids: Vec<Uuid>,
    pub tenant_names: Vec<String>,
    pub images: Vec<TemplateImage>,
    /// Networks its VMs may join (`user`: user-mode networking); empty means `user` alone.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The library image it boots.
    #[serde(default)]
    pub image_id: Option<Uuid>,
    #[serde(default)]
    pub image_name: Option<String>,
    /// Hidden by the viewer's tenant (catalog views for tenant admins).
    pub hidden: bool,
    /// The user cloud-init creates with the owner's SSH keys; None: no guest initialisation.
    #[serde(default)]
    pub login_user: Option<String>,
    /// The admin-approved cloud-config merged into every VM's user-data (fleet admins only).
    #[serde(default)]
    pub user_data: String,
    /// Requesters may add their own cloud-config (shown to approvers).
    #[serde(default)]
    pub allow_user_data: bool,
    /// In the catalog: what choosing it means for the viewer's tenant.
    #[serde(default)]
    pub offer: Option<Offer>,
}

/// What a template offers a requester in one tenant: which sizes go ahead without approval,
/// and what each costs a month by the rate card in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// One per size, in the template's order.
    pub sizes: Vec<SizeOffer>,
    /// When a request needs approval whatever its size ("more than 2 VMs, or longer than 14
    /// days"); empty when the size alone decides.
    pub approval_note: String,
    /// Why no cost is shown, when none is.
    pub cost_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeOffer {
    pub needs_approval: bool,
    /// "12.41 EUR a month", running all month.
    pub monthly_cost: Option<String>,
}

/// One resource line of a quota: what is in use (reserved or allocated), what a request would
/// add, and the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLine {
    pub resource: QuotaResource,
    pub used: i64,
    pub adding: i64,
    pub limit: i64,
}

impl QuotaLine {
    pub fn label(&self) -> &'static str {
        self.resource.label()
    }

    /// An amount of this resource for people: memory in GiB, disk with its unit.
    pub fn amount(&self, v: i64) -> String {
        match self.resource {
            QuotaResource::Memory => mib_label(v),
            QuotaResource::Disk => format!("{v} GiB"),
            _ => v.to_string(),
        }
    }

    /// "6 of 16 vCPUs" style, memory in GiB.
    pub fn describe(&self, with_adding: bool) -> String {
        let total = if with_adding {
            self.used + self.adding
        } else {
            self.used
        };
        match self.resource {
            QuotaResource::Memory => format!("{} of {}", mib_label(total), mib_label(self.limit)),
            QuotaResource::Disk => format!("{} of {} GiB disk", total, self.limit),
            QuotaResource::Vcpus => format!("{} of {} vCPUs", total, self.limit),
            QuotaResource::Vms => format!("{} of {} VMs", total, self.limit),
        }
    }

    pub fn overflows(&self) -> bool {
        self.used + self.adding > self.limit
    }
}

/// What a request would do to the tenant's and the requester's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaEffect {
    pub tenant: Vec<QuotaLine>,
    /// Empty when the user has no personal quota in this tenant.
    pub user: Vec<QuotaLine>,
    /// The first resource that would overflow, named for the user.
    pub overflow: Option<String>,
}

/// The home page's panels, read in one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomePanels {
    pub vms: Page<ManagedVm>,
    pub requests: Page<RequestSummary>,
    /// Requests waiting for this actor's decision; None for those who approve nothing.
    pub waiting: Option<u32>,
    /// The quota of the first tenant the actor may request in, with its name.
    pub quota: Option<(String, QuotaEffect)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub requester_email: String,
    pub template_name: String,
    pub size_name: String,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub count: i32,
    pub name_prefix: String,
    pub lease_days: i32,
    pub purpose: String,
    pub state: RequestState,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The libvirt network chosen; None: user-mode networking.
    #[serde(default)]
    pub network: Option<String>,
}

impl RequestSummary {
    pub fn network_text(&self) -> String {
        self.network
            .clone()
            .unwrap_or_else(|| "user-mode networking".into())
    }

    pub fn state_label(&self) -> &'static str {
        self.state.label()
    }
}

/// The badge of a VM's state or phase (a request's: `RequestState::badge`).
pub fn state_badge(state: &str) -> &'static str {
    match state {
        "running" => "badge ok",
        "failed" | "expired" | "crashed" => "badge danger",
        "deleted" => "badge muted",
        _ => "badge warn",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor_email: Option<String>,
    pub kind: String,
    pub message: String,
}

/// A VM the portal manages, as its owner (or their admins) see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedVm {
    pub uuid: Uuid,
    pub name: String,
    pub tenant_name: String,
    pub owner_email: Option<String>,
    pub template_name: Option<String>,
    pub host_id: Option<Uuid>,
    pub host_name: Option<String>,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// Where the portal is with it: pending, placing, …, running, expired, failed, …
    pub phase: VmPhase,
    /// What the hypervisor reports, once the domain exists.
    pub state: Option<String>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub lease_ends_at: OffsetDateTime,
    /// Days until the lease ends (negative once expired).
    pub lease_days_left: i64,
    pub request_id: Option<Uuid>,
    pub max_lease_days: Option<i32>,
    /// How to log in, once the template's image takes cloud-init: `ssh -p PORT USER@HOST`.
    #[serde(default)]
    pub ssh: Option<SshAccess>,
    /// The guest's own addresses, as its agent reports them (or the network's DHCP leases).
    #[serde(default)]
    pub guest_addresses: Vec<String>,
    /// The libvirt network it joined; None: user-mode networking.
    #[serde(default)]
    pub network: Option<String>,
}

/// Where a VM's SSH answers (user-mode networking forwards a host port to the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAccess {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// When the guest first answered; None while it boots.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ready_at: Option<OffsetDateTime>,
}

impl SshAccess {
    /// The command to paste into a terminal.
    pub fn command(&self) -> String {
        if self.port == 22 {
            format!("ssh {}@{}", self.user, self.host)
        } else {
            format!("ssh -p {} {}@{}", self.port, self.user, self.host)
        }
    }
}

impl ManagedVm {
    /// What a list shows: the hypervisor's state once the domain exists, else the phase.
    pub fn shown_state(&self) -> &str {
        self.state.as_deref().unwrap_or(self.phase.as_str())
    }

    /// "in 6 days", "tomorrow", "expired 2 days ago", with a warning class from 7 days on.
    pub fn lease_text(&self) -> (String, &'static str) {
        let d = self.lease_days_left;
        let text = match d {
            d if d < 0 => format!("expired {} days ago", -d),
            0 => "ends today".to_string(),
            1 => "ends tomorrow".to_string(),
            d => format!("ends in {d} days"),
        };
        let class = if d <= 1 {
            "badge danger"
        } else if d <= 7 {
            "badge warn"
        } else {
            "badge muted"
        };
        (text, class)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestDetail {
    pub request: RequestSummary,
    pub events: Vec<RequestEvent>,
    pub vms: Vec<ManagedVm>,
    /// Who still has to approve at the current level (names), when pending.
    pub waiting_for: Vec<String>,
    pub level: Option<i32>,
    pub can_cancel: bool,
    pub can_decide: bool,
    /// The requester's own cloud-config, if they gave one.
    #[serde(default)]
    pub user_data: String,
}

impl RequestDetail {
    /// Still changing: the page keeps refreshing itself.
    pub fn in_flight(&self) -> bool {
        self.request.state.in_flight()
    }
}

/// One pending request in an approver's inbox, with what deciding needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub request: RequestSummary,
    pub effect: QuotaEffect,
    pub requester_vms: i64,
    pub placement: String,
    /// Whether a host has room now; if not, approving makes the VM wait for capacity.
    pub fits: bool,
    pub level: i32,
    /// The requester's own cloud-config, for the approver to read before deciding.
    #[serde(default)]
    pub user_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserQuota {
    pub user_id: Uuid,
    pub email: String,
    pub lines: Vec<QuotaLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalLevel {
    pub level: i32,
    /// any or all.
    pub mode: String,
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    pub auto_max_vcpus: i32,
    pub auto_max_memory_mib: i64,
    pub auto_max_count: i32,
    pub auto_max_lease_days: i32,
    pub auto_template_ids: Vec<Uuid>,
    pub auto_template_names: Vec<String>,
    pub expire_days: i32,
    pub levels: Vec<ApprovalLevel>,
    /// Members who may be named as approvers (approvers and tenant admins), by e-mail.
    #[serde(default)]
    pub eligible_approvers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuotas {
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub lines: Vec<QuotaLine>,
    pub users: Vec<UserQuota>,
    pub policy: ApprovalPolicy,
}

/// A comparison of the ledger with the VMs that exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recount {
    /// (resource, counter, ledger, existing VMs)
    pub lines: Vec<(String, i64, i64, i64)>,
    /// VMs whose recorded size is not what their hypervisor runs, described.
    #[serde(default)]
    pub mismatched: Vec<String>,
    pub consistent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: Option<String>,
}

// ---- server functions: templates and catalog -------------------------------------------

#[server(prefix = "/api", endpoint = "list_templates")]
pub async fn list_templates() -> Result<Vec<Template>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.catalog.templates(&req).await)
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "save_template")]
pub async fn save_template(
    #[server(default)] id: Option<Uuid>,
    name: String,
    #[server(default)] description: String,
    os: String,
    sizes: String,
    default_lease_days: String,
    max_lease_days: String,
    #[server(default)] tenants: String,
    #[server(default)] image_id: String,
    #[server(default)] image_host: String,
    #[server(default)] image_pool: String,
    #[server(default)] image_volume: String,
    #[server(default)] image_kernel: String,
    #[server(default)] image_initrd: String,
    #[server(default)] login_user: String,
    #[server(default)] user_data: String,
    #[server(default)] allow_user_data: String,
    #[server(default)] networks: String,
) -> Result<Uuid, AppError> {
    let req = crate::seam::request()?;
    // An empty choice ("keep the current images") is no host.
    let image_host = Uuid::parse_str(image_host.trim()).ok();
    let image_id = Uuid::parse_str(image_id.trim()).ok();
    let form = crate::provisioning::TemplateForm {
        id,
        name,
        description,
        os,
        sizes,
        default_lease_days,
        max_lease_days,
        tenants,
        image_id,
        image_host,
        image_pool,
        image_volume,
        image_kernel,
        image_initrd,
        login_user,
        user_data,
        allow_user_data,
        networks,
    };
    crate::seam::reply(crate::seam::backend()?.catalog.save(&req, form).await)
}

/// What the template form sends, as typed (the backend parses it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateForm {
    pub id: Option<Uuid>,
    pub name: String,
    pub description: String,
    pub os: String,
    /// One size per line: `name vcpus memory_gib disk_gib`.
    pub sizes: String,
    pub default_lease_days: String,
    pub max_lease_days: String,
    /// `*` for every tenant, else comma-separated tenant names.
    pub tenants: String,
    /// The library image the template boots (the page's choice).
    #[serde(default)]
    pub image_id: Option<Uuid>,
    /// Shortcut for scripts: a volume named by host, pool and name, registered as an image
    /// on the way (or added as a copy of the template's image on another host).
    pub image_host: Option<Uuid>,
    pub image_pool: String,
    pub image_volume: String,
    /// Kernel and initramfs volumes for images without a boot loader (both or neither).
    #[serde(default)]
    pub image_kernel: String,
    #[serde(default)]
    pub image_initrd: String,
    /// Empty: the image takes no cloud-init.
    #[serde(default)]
    pub login_user: String,
    /// Networks, comma-separated (`user`: user-mode networking); empty: `user`.
    #[serde(default)]
    pub networks: String,
    #[serde(default)]
    pub user_data: String,
    /// "on" (a checked box) lets requesters add their own cloud-config.
    #[serde(default)]
    pub allow_user_data: String,
}

#[server(prefix = "/api", endpoint = "publish_template")]
pub async fn publish_template(id: Uuid, published: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .catalog
            .set_published(&req, id, published)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "hide_template")]
pub async fn hide_template(tenant_id: Uuid, id: Uuid, hidden: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .catalog
            .set_hidden(&req, tenant_id, id, hidden)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "catalog")]
pub async fn catalog(
    tenant_id: Uuid,
    #[server(default)] search: String,
    #[server(default)] include_hidden: bool,
) -> Result<Vec<Template>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .catalog
            .catalog(&req, tenant_id, &search, include_hidden)
            .await,
    )
}

// ---- requests and approvals -------------------------------------------------------------

/// What the request form sends, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestForm {
    pub tenant_id: Option<Uuid>,
    pub template_id: Option<Uuid>,
    pub size: String,
    pub count: String,
    pub name_prefix: String,
    pub lease_days: String,
    pub purpose: String,
    /// The requester's own cloud-config, where the template allows it.
    #[serde(default)]
    pub user_data: String,
    /// The network chosen among the template's (empty: its first).
    #[serde(default)]
    pub network: String,
}

#[server(prefix = "/api", endpoint = "quota_preview")]
pub async fn quota_preview(
    #[server(default)] tenant_id: Option<Uuid>,
    #[server(default)] template_id: Option<Uuid>,
    #[server(default)] size: String,
    #[server(default)] count: String,
) -> Result<QuotaEffect, AppError> {
    let req = crate::seam::request()?;
    let form = RequestForm {
        tenant_id,
        template_id,
        size,
        count,
        ..RequestForm::default()
    };
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .preview(&req, form)
            .await,
    )
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "submit_request")]
pub async fn submit_request(
    #[server(default)] tenant_id: Option<Uuid>,
    #[server(default)] template_id: Option<Uuid>,
    #[server(default)] size: String,
    #[server(default)] count: String,
    #[server(default)] name_prefix: String,
    #[server(default)] lease_days: String,
    #[server(default)] purpose: String,
    #[server(default)] user_data: String,
    #[server(default)] network: String,
) -> Result<Uuid, AppError> {
    let req = crate::seam::request()?;
    let form = RequestForm {
        tenant_id,
        template_id,
        size,
        count,
        name_prefix,
        lease_days,
        purpose,
        user_data,
        network,
    };
    let id = crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .submit(&req, form)
            .await,
    )?;
    leptos_axum::redirect(&format!("/requests/{id}"));
    Ok(id)
}

/// Which requests a list shows: one's own, or (`all`) every request of the tenants one
/// approves for (fleet admins: every request); filtered by text and state, sorted, one page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFilter {
    pub page: u32,
    pub all: bool,
    /// Part of the name prefix, template, requester's e-mail or purpose.
    pub search: String,
    /// One of [`request_state_filters`]: a state, or `open` for every state still in flight;
    /// empty for any.
    pub state: String,
    /// newest (default), oldest, state or template.
    pub sort: String,
}

/// The states a request list can be narrowed to, with their labels; `open` groups the
/// states still in flight.
pub fn request_state_filters() -> Vec<(&'static str, &'static str)> {
    std::iter::once(("open", "Still open"))
        .chain(RequestState::ALL.map(|s| (s.as_str(), s.label())))
        .collect()
}

pub const REQUEST_SORTS: [(&str, &str); 4] = [
    ("newest", "Newest"),
    ("oldest", "Oldest"),
    ("state", "State"),
    ("template", "Template"),
];

#[server(prefix = "/api", endpoint = "list_requests")]
pub async fn list_requests(
    #[server(default)] page: u32,
    #[server(default)] all: bool,
    #[server(default)] search: String,
    #[server(default)] state: String,
    #[server(default)] sort: String,
) -> Result<Page<RequestSummary>, AppError> {
    let req = crate::seam::request()?;
    let filter = RequestFilter {
        page,
        all,
        search,
        state,
        sort,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .requests(&req, filter)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "get_request")]
pub async fn get_request(id: Uuid) -> Result<RequestDetail, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.provisioning.request(&req, id).await)
}

#[server(prefix = "/api", endpoint = "cancel_request")]
pub async fn cancel_request(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.provisioning.cancel(&req, id).await)
}

#[server(prefix = "/api", endpoint = "decide_request")]
pub async fn decide_request(
    id: Uuid,
    decision: String,
    #[server(default)] reason: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .decide(&req, id, &decision, &reason)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "approval_inbox")]
pub async fn approval_inbox() -> Result<Vec<InboxItem>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.provisioning.inbox(&req).await)
}

#[server(prefix = "/api", endpoint = "home_panels")]
pub async fn read_home_panels() -> Result<HomePanels, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.provisioning.home(&req).await)
}

#[server(prefix = "/api", endpoint = "approvals_waiting")]
pub async fn approvals_waiting() -> Result<u32, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .waiting_count(&req)
            .await,
    )
}

// ---- quotas and policy ------------------------------------------------------------------

#[server(prefix = "/api", endpoint = "tenant_quotas")]
pub async fn get_tenant_quotas(tenant_id: Uuid) -> Result<TenantQuotas, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .quotas(&req, tenant_id)
            .await,
    )
}

/// Limits as typed: vCPUs, memory GiB, disk GiB, VM count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsForm {
    pub vcpus: String,
    pub memory_gib: String,
    pub disk_gib: String,
    pub vms: String,
}

#[server(prefix = "/api", endpoint = "set_quota")]
pub async fn set_quota(
    tenant_id: Uuid,
    /// Empty for the tenant's own quota; a member's e-mail for theirs.
    #[server(default)]
    user_email: String,
    #[server(default)] vcpus: String,
    #[server(default)] memory_gib: String,
    #[server(default)] disk_gib: String,
    #[server(default)] vms: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    let limits = LimitsForm {
        vcpus,
        memory_gib,
        disk_gib,
        vms,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .set_quota(&req, tenant_id, &user_email, limits)
            .await,
    )
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "set_policy")]
pub async fn set_policy(
    tenant_id: Uuid,
    #[server(default)] auto_max_vcpus: String,
    #[server(default)] auto_max_memory_gib: String,
    #[server(default)] auto_max_count: String,
    #[server(default)] auto_max_lease_days: String,
    #[server(default)] expire_days: String,
    /// One level per line: `any|all: a@x, b@y` (no e-mails: any approver of the tenant).
    #[server(default)]
    levels: String,
    /// Comma-separated template names that may be auto-approved; empty: any template.
    #[server(default)]
    auto_templates: String,
    /// The page's level rows (`level[0][mode]`, `level[0][approvers][]`); when present they
    /// replace `levels`.
    #[server(default)]
    level: Vec<LevelForm>,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    let form = PolicyForm {
        auto_max_vcpus,
        auto_max_memory_gib,
        auto_max_count,
        auto_max_lease_days,
        expire_days,
        levels,
        auto_templates,
        level,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .set_policy(&req, tenant_id, form)
            .await,
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyForm {
    pub auto_max_vcpus: String,
    pub auto_max_memory_gib: String,
    pub auto_max_count: String,
    pub auto_max_lease_days: String,
    pub expire_days: String,
    pub levels: String,
    pub auto_templates: String,
    /// The form's levels, one row each (the page sends these; API clients may send `levels`
    /// as text instead). A row with an empty mode is dropped.
    pub level: Vec<LevelForm>,
}

/// One approval level as the policy form sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelForm {
    /// `any`, `all`, or empty to drop the row.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub approvers: Vec<String>,
}

#[server(prefix = "/api", endpoint = "recount_quota")]
pub async fn recount_quota(tenant_id: Uuid) -> Result<Recount, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .recount(&req, tenant_id)
            .await,
    )
}

// ---- VMs --------------------------------------------------------------------------------

/// Which VMs a list shows: one's own, or (`all`) every VM of the tenants one administers
/// (fleet admins: every portal VM); filtered by name and state, sorted, one page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFilter {
    pub page: u32,
    pub all: bool,
    pub search: String,
    /// A state or provisioning phase (running, shutoff, failed, …); empty for any.
    pub state: String,
    /// name (default), lease, created or state.
    pub sort: String,
    /// Keyset cursors from the page the reader came from (see `Place`).
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub before: String,
}

impl VmFilter {
    pub fn place(&self) -> crate::Place {
        crate::Place {
            page: self.page,
            after: self.after.clone(),
            before: self.before.clone(),
        }
    }
}

pub const VM_SORTS: [(&str, &str); 4] = [
    ("name", "Name"),
    ("lease", "Lease end"),
    ("created", "Newest"),
    ("state", "State"),
];

#[server(prefix = "/api", endpoint = "my_vms")]
pub async fn my_vms(
    #[server(default)] page: u32,
    #[server(default)] all: bool,
    #[server(default)] search: String,
    #[server(default)] state: String,
    #[server(default)] sort: String,
    #[server(default)] after: String,
    #[server(default)] before: String,
) -> Result<Page<ManagedVm>, AppError> {
    let req = crate::seam::request()?;
    let filter = VmFilter {
        page,
        all,
        search,
        state,
        sort,
        after,
        before,
    };
    crate::seam::reply(crate::seam::backend()?.provisioning.vms(&req, filter).await)
}

#[server(prefix = "/api", endpoint = "get_managed_vm")]
pub async fn get_managed_vm(uuid: Uuid) -> Result<Option<ManagedVm>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .managed_vm(&req, uuid)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "extend_lease")]
pub async fn extend_lease(uuid: Uuid, days: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .extend_lease(&req, uuid, &days)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "resize_vm")]
pub async fn resize_vm(uuid: Uuid, vcpus: String, memory_gib: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .resize(&req, uuid, &vcpus, &memory_gib)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "list_snapshots")]
pub async fn list_snapshots(uuid: Uuid) -> Result<Vec<Snapshot>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .snapshots(&req, uuid)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "snapshot_action")]
pub async fn snapshot_action(
    uuid: Uuid,
    op: String,
    name: String,
    #[server(default)] description: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .snapshot_action(&req, uuid, &op, &name, &description)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "my_quota")]
pub async fn my_quota(tenant_id: Uuid) -> Result<QuotaEffect, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .provisioning
            .my_quota(&req, tenant_id)
            .await,
    )
}
