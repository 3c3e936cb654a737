//! The seam between pages and backend (ssr only). Server functions find the backend and the
//! request's authenticated actor in Leptos context; the `server` crate implements the traits.
use crate::account::{Actor, OneTimePassword, SessionInfo, SshKey};
use crate::alerts::{Alert, AlertRuleForm, AlertsOverview};
use crate::audit::{AuditEntry, AuditFilter, ChainState};
use crate::error::AppError;
use crate::fleet::{
    ChartView, DomainSummary, FleetDashboard, HostDetail, HostFilter, HostForm, HostSummary,
    VmDetail,
};
use crate::images::{Image, RegisterImageForm, UploadForm, UploadTarget};
use crate::notifications::{Notification, Preference};
use crate::provisioning::{
    HomePanels, InboxItem, LimitsForm, ManagedVm, PolicyForm, QuotaEffect, Recount, RequestDetail,
    RequestFilter, RequestForm, RequestSummary, Snapshot, Template, TemplateForm, TenantQuotas,
    VmFilter,
};
use crate::reclamation::{Preview, Proposal, ReclamationOverview, RuleForm};
use crate::reports::{RateCard, RateCardForm, Report, ReportQuery, Runway};
use crate::tenant::{
    JoinForm, Member, MyInvitation, NewInvitation, PendingInvitation, TenantSummary,
};
use crate::user::UserSummary;
use crate::webhooks::{CreatedWebhook, NewWebhook, WebhookOverview};
use crate::Page;
use async_trait::async_trait;
use leptos::prelude::use_context;
use std::net::IpAddr;
use std::sync::Arc;
use uuid::Uuid;

/// What the HTTP layer learned about one request: the session, the actor it resolves to
/// (if any) and where it came from. Put into the request's extensions by the server.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    pub session: tower_sessions::Session,
    pub actor: Option<Actor>,
    pub client_addr: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl RequestCtx {
    /// The signed-in actor, refusing anonymous requests and accounts that still have to
    /// replace their one-time password.
    pub fn actor(&self) -> Result<&Actor, AppError> {
        let actor = self.actor.as_ref().ok_or(AppError::Unauthenticated)?;
        if actor.must_change_password {
            return Err(AppError::PasswordChangeRequired);
        }
        if actor.must_enrol_two_factor {
            return Err(AppError::TwoFactorRequired);
        }
        Ok(actor)
    }

    /// The signed-in actor, who must be a fleet admin.
    pub fn fleet_admin(&self) -> Result<&Actor, AppError> {
        let actor = self.actor()?;
        if !actor.fleet_admin {
            return Err(AppError::Forbidden);
        }
        Ok(actor)
    }

    /// The signed-in actor even when a password change is pending (for that change itself).
    pub fn any_actor(&self) -> Result<&Actor, AppError> {
        self.actor.as_ref().ok_or(AppError::Unauthenticated)
    }
}

/// The per-response CSP nonce chosen by the server's header layer.
#[derive(Clone, Debug)]
pub struct CspNonce(pub String);

#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Checks the password; `SignIn::CodeNeeded` when the account uses a second factor (the
    /// session then remembers whose password was right, for `login_code`).
    async fn login(
        &self,
        req: &RequestCtx,
        email: &str,
        password: &str,
    ) -> Result<crate::account::SignIn, AppError>;
    async fn login_code(&self, req: &RequestCtx, code: &str) -> Result<(), AppError>;
    async fn logout(&self, req: &RequestCtx) -> Result<(), AppError>;
    async fn change_password(
        &self,
        req: &RequestCtx,
        current: &str,
        new: &str,
        confirm: &str,
    ) -> Result<(), AppError>;
    async fn sessions(&self, req: &RequestCtx) -> Result<Vec<SessionInfo>, AppError>;
    async fn end_session(&self, req: &RequestCtx, session_id: Uuid) -> Result<(), AppError>;

    async fn list_users(
        &self,
        req: &RequestCtx,
        search: &str,
        page: u32,
    ) -> Result<Page<UserSummary>, AppError>;
    async fn create_user(
        &self,
        req: &RequestCtx,
        email: &str,
        display_name: &str,
        fleet_admin: bool,
    ) -> Result<OneTimePassword, AppError>;
    async fn set_fleet_admin(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
        fleet_admin: bool,
    ) -> Result<(), AppError>;
    async fn set_user_disabled(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
        disabled: bool,
    ) -> Result<(), AppError>;
    async fn reset_password(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
    ) -> Result<OneTimePassword, AppError>;
}

/// Browser consoles: tickets for the WebSocket proxy (authorised like lifecycle actions).
#[async_trait]
pub trait Consoles: Send + Sync + 'static {
    async fn ticket(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        kind: &str,
    ) -> Result<crate::console::ConsoleTicket, AppError>;
}

/// A user's own SSH public keys (cloud-init writes them into the VMs the user owns).
#[async_trait]
pub trait SshKeys: Send + Sync + 'static {
    async fn list(&self, req: &RequestCtx) -> Result<Vec<SshKey>, AppError>;
    async fn add(&self, req: &RequestCtx, key: &str) -> Result<SshKey, AppError>;
    async fn remove(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError>;
}

/// The image library (fleet admins).
#[async_trait]
pub trait Images: Send + Sync + 'static {
    async fn images(&self, req: &RequestCtx) -> Result<Vec<Image>, AppError>;
    /// Registers a volume a host's pool already holds; returns the image's id.
    async fn register(&self, req: &RequestCtx, form: RegisterImageForm) -> Result<Uuid, AppError>;
    async fn start_upload(
        &self,
        req: &RequestCtx,
        form: UploadForm,
    ) -> Result<UploadTarget, AppError>;
    async fn resume_upload(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
    ) -> Result<UploadTarget, AppError>;
    /// Writes one chunk at `offset` (which must be where the upload stands); returns the
    /// bytes now stored.
    async fn upload_chunk(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
        offset: i64,
        bytes: Vec<u8>,
    ) -> Result<i64, AppError>;
    async fn finish_upload(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
    ) -> Result<(), AppError>;
    async fn discard(&self, req: &RequestCtx, image: Uuid, host: Uuid) -> Result<(), AppError>;
    async fn copy(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
        pool: String,
    ) -> Result<(), AppError>;
    async fn delete(&self, req: &RequestCtx, image: Uuid) -> Result<(), AppError>;
}

#[async_trait]
pub trait Tenants: Send + Sync + 'static {
    async fn list(&self, req: &RequestCtx) -> Result<Vec<TenantSummary>, AppError>;
    async fn get(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<TenantSummary, AppError>;
    async fn create(&self, req: &RequestCtx, name: &str) -> Result<TenantSummary, AppError>;
    async fn rename(&self, req: &RequestCtx, tenant_id: Uuid, name: &str) -> Result<(), AppError>;
    async fn set_suspended(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        suspended: bool,
    ) -> Result<(), AppError>;
    async fn members(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<Vec<Member>, AppError>;
    async fn set_member_role(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_id: Uuid,
        role: &str,
    ) -> Result<(), AppError>;
    async fn remove_member(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> Result<(), AppError>;
}

/// Joining tenants: invitations made by tenant admins, answered by their invitees.
#[async_trait]
pub trait Invitations: Send + Sync + 'static {
    async fn invite(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        email: &str,
        display_name: &str,
        role: &str,
    ) -> Result<NewInvitation, AppError>;
    async fn pending(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
    ) -> Result<Vec<PendingInvitation>, AppError>;
    async fn revoke(&self, req: &RequestCtx, tenant_id: Uuid, id: Uuid) -> Result<(), AppError>;
    async fn mine(&self, req: &RequestCtx) -> Result<Vec<MyInvitation>, AppError>;
    async fn answer(&self, req: &RequestCtx, id: Uuid, accept: bool) -> Result<(), AppError>;
    async fn join(&self, req: &RequestCtx, form: JoinForm) -> Result<(), AppError>;
}

#[async_trait]
pub trait TwoFactor: Send + Sync + 'static {
    async fn status(
        &self,
        req: &RequestCtx,
    ) -> Result<crate::two_factor::TwoFactorStatus, AppError>;
    async fn start(&self, req: &RequestCtx) -> Result<crate::two_factor::Enrolment, AppError>;
    async fn confirm(
        &self,
        req: &RequestCtx,
        code: &str,
    ) -> Result<crate::two_factor::RecoveryCodes, AppError>;
    async fn disable(&self, req: &RequestCtx, code: &str) -> Result<(), AppError>;
    async fn new_recovery_codes(
        &self,
        req: &RequestCtx,
        code: &str,
    ) -> Result<crate::two_factor::RecoveryCodes, AppError>;
    async fn policy(&self, req: &RequestCtx, tenant: Option<Uuid>) -> Result<bool, AppError>;
    async fn set_policy(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
        required: bool,
    ) -> Result<bool, AppError>;
}

#[async_trait]
pub trait AuditTrail: Send + Sync + 'static {
    async fn list(
        &self,
        req: &RequestCtx,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, AppError>;
    /// The chains' state (see `authz::audit_chains` for which).
    async fn chains(
        &self,
        req: &RequestCtx,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<ChainState>, AppError>;
    /// Verifies the chains from their first row and records what it found.
    async fn verify(
        &self,
        req: &RequestCtx,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<ChainState>, AppError>;
}

#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    async fn hosts(&self, req: &RequestCtx) -> Result<Vec<HostSummary>, AppError>;
    /// Which VMs moved where would even out the hosts (fleet admins).
    async fn rebalance(&self, req: &RequestCtx) -> Result<crate::fleet::Rebalancing, AppError>;
    /// Moves a portal VM to another host while it is off (fleet admins): at once when it is
    /// off, else when its owner next shuts it down.
    async fn move_vm(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        target_host: Uuid,
    ) -> Result<(), AppError>;
    async fn host_page(
        &self,
        req: &RequestCtx,
        filter: HostFilter,
    ) -> Result<Page<HostSummary>, AppError>;
    async fn dashboard(&self, req: &RequestCtx) -> Result<FleetDashboard, AppError>;
    /// Fleet charts over a range (fleet admins); an unknown range is a field error.
    async fn charts(&self, req: &RequestCtx, range: &str) -> Result<Vec<ChartView>, AppError>;
    async fn vm_charts(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        range: &str,
    ) -> Result<Vec<ChartView>, AppError>;
    async fn register(&self, req: &RequestCtx, form: HostForm) -> Result<HostSummary, AppError>;
    async fn host(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        search: &str,
        page: u32,
    ) -> Result<HostDetail, AppError>;
    async fn reconcile(&self, req: &RequestCtx, host_id: Uuid) -> Result<(), AppError>;
    /// kvm, qemu or "" (detected) for VMs defined on the host from now on (fleet admins).
    async fn set_domain_type(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        domain_type: &str,
    ) -> Result<(), AppError>;
    /// Forgets a domain that is missing from its host (fleet admins).
    async fn forget(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<(), AppError>;
    async fn drift(
        &self,
        req: &RequestCtx,
        place: crate::Place,
    ) -> Result<Page<DomainSummary>, AppError>;
    /// A VM for its owner, their tenant admins, or fleet admins; NotFound for anyone else.
    async fn vm(&self, req: &RequestCtx, host_id: Uuid, uuid: Uuid) -> Result<VmDetail, AppError>;
    async fn vm_action(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        action: &str,
        confirm: &str,
    ) -> Result<(), AppError>;
    async fn create_pool(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        path: &str,
    ) -> Result<(), AppError>;
    async fn volumes(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        pool: &str,
    ) -> Result<Vec<crate::fleet::VolumeInfo>, AppError>;
    #[allow(clippy::too_many_arguments)]
    async fn create_volume(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        pool: &str,
        name: &str,
        kind: &str,
        capacity_gib: &str,
        source: &str,
    ) -> Result<(), AppError>;
    /// Deletes a volume nothing depends on; `confirm` must repeat its name.
    async fn delete_volume(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        pool: &str,
        name: &str,
        confirm: &str,
    ) -> Result<(), AppError>;
    #[allow(clippy::too_many_arguments)]
    async fn define_network(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        mode: &str,
        address: &str,
        prefix: &str,
        bridge: &str,
    ) -> Result<(), AppError>;
    async fn network_action(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        name: &str,
        op: &str,
    ) -> Result<(), AppError>;
    async fn adopt(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        tenant_id: Uuid,
        owner_email: &str,
    ) -> Result<(), AppError>;
}

/// Templates: fleet admins curate them, tenants see the ones they may use.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Every template (fleet admins).
    async fn templates(&self, req: &RequestCtx) -> Result<Vec<Template>, AppError>;
    /// Creates or updates a template; returns its id.
    async fn save(&self, req: &RequestCtx, form: TemplateForm) -> Result<Uuid, AppError>;
    async fn set_published(
        &self,
        req: &RequestCtx,
        id: Uuid,
        published: bool,
    ) -> Result<(), AppError>;
    /// A tenant admin hides (or shows again) a published template for their tenant.
    async fn set_hidden(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        id: Uuid,
        hidden: bool,
    ) -> Result<(), AppError>;
    /// The published templates a member of `tenant_id` may request.
    async fn catalog(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        search: &str,
        include_hidden: bool,
    ) -> Result<Vec<Template>, AppError>;
}

/// Requests, approvals, quotas and the VMs they create.
#[async_trait]
pub trait Provisioning: Send + Sync + 'static {
    async fn preview(&self, req: &RequestCtx, form: RequestForm) -> Result<QuotaEffect, AppError>;
    async fn submit(&self, req: &RequestCtx, form: RequestForm) -> Result<Uuid, AppError>;
    /// The actor's own requests, or (`all`) every request of the tenants they approve for.
    async fn requests(
        &self,
        req: &RequestCtx,
        filter: RequestFilter,
    ) -> Result<Page<RequestSummary>, AppError>;
    async fn request(&self, req: &RequestCtx, id: Uuid) -> Result<RequestDetail, AppError>;
    async fn cancel(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError>;
    async fn decide(
        &self,
        req: &RequestCtx,
        id: Uuid,
        decision: &str,
        reason: &str,
    ) -> Result<(), AppError>;
    async fn inbox(&self, req: &RequestCtx) -> Result<Vec<InboxItem>, AppError>;
    /// How many requests the inbox holds, without what it shows of each.
    async fn waiting_count(&self, req: &RequestCtx) -> Result<u32, AppError>;
    /// The home page's panels for a member: their VMs, their requests in flight, what waits
    /// for their approval (approvers only) and the quota of the first tenant they request in.
    async fn home(&self, req: &RequestCtx) -> Result<HomePanels, AppError>;
    async fn quotas(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<TenantQuotas, AppError>;
    async fn set_quota(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_email: &str,
        limits: LimitsForm,
    ) -> Result<(), AppError>;
    async fn set_policy(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        form: PolicyForm,
    ) -> Result<(), AppError>;
    async fn recount(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<Recount, AppError>;
    /// The tenant's and the actor's own quota use, for any member.
    async fn my_quota(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<QuotaEffect, AppError>;
    async fn vms(&self, req: &RequestCtx, filter: VmFilter) -> Result<Page<ManagedVm>, AppError>;
    async fn managed_vm(&self, req: &RequestCtx, uuid: Uuid)
        -> Result<Option<ManagedVm>, AppError>;
    /// A portal VM's CPU over the last 6 hours as a small SVG, for lists (served as an image so
    /// list pages stay small; authorized like the VM itself).
    async fn cpu_sparkline(&self, req: &RequestCtx, uuid: Uuid) -> Result<String, AppError>;
    async fn extend_lease(&self, req: &RequestCtx, uuid: Uuid, days: &str) -> Result<(), AppError>;
    async fn resize(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        vcpus: &str,
        memory_gib: &str,
    ) -> Result<(), AppError>;
    async fn snapshots(&self, req: &RequestCtx, uuid: Uuid) -> Result<Vec<Snapshot>, AppError>;
    async fn snapshot_action(
        &self,
        req: &RequestCtx,
        uuid: Uuid,
        op: &str,
        name: &str,
        description: &str,
    ) -> Result<(), AppError>;
}

/// Usage, showback and the rate cards (managers and admins).
#[async_trait]
pub trait Reports: Send + Sync + 'static {
    async fn report(&self, req: &RequestCtx, query: ReportQuery) -> Result<Report, AppError>;
    async fn rate_cards(&self, req: &RequestCtx) -> Result<Vec<RateCard>, AppError>;
    async fn add_rate_card(&self, req: &RequestCtx, form: RateCardForm) -> Result<Uuid, AppError>;
    /// Sets the card's last day (exclusive end, at midnight UTC); `valid_to` is `YYYY-MM-DD`.
    async fn end_rate_card(
        &self,
        req: &RequestCtx,
        id: Uuid,
        valid_to: &str,
    ) -> Result<(), AppError>;
    /// Capacity runway: a tenant's quotas, or the fleet and its hosts (`None`).
    async fn runways(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
    ) -> Result<Vec<Runway>, AppError>;
}

/// The signed-in user's own notifications and their preferences.
#[async_trait]
pub trait Notifications: Send + Sync + 'static {
    async fn list(&self, req: &RequestCtx) -> Result<Vec<Notification>, AppError>;
    async fn unread(&self, req: &RequestCtx) -> Result<u32, AppError>;
    async fn mark_read(&self, req: &RequestCtx, id: Option<Uuid>) -> Result<(), AppError>;
    async fn preferences(&self, req: &RequestCtx) -> Result<Vec<Preference>, AppError>;
    async fn set_preferences(
        &self,
        req: &RequestCtx,
        in_app: &[String],
        email: &[String],
    ) -> Result<(), AppError>;
}

/// Webhook endpoints: a tenant's, managed by its admins; fleet-wide ones, by fleet admins.
#[async_trait]
pub trait Webhooks: Send + Sync + 'static {
    async fn overview(&self, req: &RequestCtx) -> Result<WebhookOverview, AppError>;
    async fn add(&self, req: &RequestCtx, new: NewWebhook) -> Result<CreatedWebhook, AppError>;
    async fn set_enabled(&self, req: &RequestCtx, id: Uuid, enabled: bool) -> Result<(), AppError>;
    async fn remove(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError>;
    async fn send_test(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError>;
}

/// Reclamation rules (tenant admins for their tenant, fleet admins for the fleet default),
/// their dry runs, and the proposals owners answer.
#[async_trait]
pub trait Reclamation: Send + Sync + 'static {
    async fn overview(&self, req: &RequestCtx) -> Result<ReclamationOverview, AppError>;
    async fn preview(&self, req: &RequestCtx, form: RuleForm) -> Result<Preview, AppError>;
    async fn save(&self, req: &RequestCtx, form: RuleForm) -> Result<(), AppError>;
    async fn mine(&self, req: &RequestCtx) -> Result<Vec<Proposal>, AppError>;
    async fn answer(
        &self,
        req: &RequestCtx,
        id: Uuid,
        answer: &str,
        reason: &str,
    ) -> Result<(), AppError>;
}

/// Alerts and their rules: tenant admins for their tenant's VMs, fleet admins for everything.
#[async_trait]
pub trait Alerts: Send + Sync + 'static {
    async fn overview(&self, req: &RequestCtx) -> Result<AlertsOverview, AppError>;
    async fn for_vm(&self, req: &RequestCtx, host: Uuid, vm: Uuid) -> Result<Vec<Alert>, AppError>;
    async fn add_rule(&self, req: &RequestCtx, form: AlertRuleForm) -> Result<Uuid, AppError>;
    async fn remove_rule(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError>;
}

/// Everything the server functions reach, provided once per request through context.
#[derive(Clone)]
pub struct Backend {
    pub accounts: Arc<dyn Accounts>,
    pub ssh_keys: Arc<dyn SshKeys>,
    pub consoles: Arc<dyn Consoles>,
    pub tenants: Arc<dyn Tenants>,
    pub invitations: Arc<dyn Invitations>,
    pub audit: Arc<dyn AuditTrail>,
    pub two_factor: Arc<dyn TwoFactor>,
    pub fleet: Arc<dyn Fleet>,
    pub catalog: Arc<dyn Catalog>,
    pub images: Arc<dyn Images>,
    pub provisioning: Arc<dyn Provisioning>,
    pub reports: Arc<dyn Reports>,
    pub notifications: Arc<dyn Notifications>,
    pub webhooks: Arc<dyn Webhooks>,
    pub reclamation: Arc<dyn Reclamation>,
    pub alerts: Arc<dyn Alerts>,
}

pub fn backend() -> Result<Backend, AppError> {
    use_context::<Backend>().ok_or_else(|| AppError::Internal("backend missing".into()))
}

pub fn request() -> Result<RequestCtx, AppError> {
    use_context::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<RequestCtx>().cloned())
        .ok_or_else(|| AppError::Internal("request context missing".into()))
}

/// Passes a server function's result through, giving errors their HTTP status for script
/// callers. Plain form posts keep the redirect back to the form (which shows the error).
pub fn reply<T>(result: Result<T, AppError>) -> Result<T, AppError> {
    if let Err(e) = &result {
        let plain_form = use_context::<http::request::Parts>().is_some_and(|parts| {
            parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/html"))
        });
        if !plain_form {
            if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
                res.set_status(e.status());
            }
        }
    }
    result
}
