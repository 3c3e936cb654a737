//! Tenants (organisations) and their members.
use crate::account::TenantRole;
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub id: Uuid,
    pub name: String,
    pub suspended: bool,
    pub member_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: TenantRole,
    pub disabled: bool,
}

/// An invitation just made. The code is shown only now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInvitation {
    pub email: String,
    pub code: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// An open invitation, as the tenant's admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInvitation {
    pub id: Uuid,
    pub email: String,
    pub role: TenantRole,
    pub invited_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// An open invitation, as its invitee sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MyInvitation {
    pub id: Uuid,
    pub tenant_name: String,
    pub role: TenantRole,
    pub invited_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The join form, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinForm {
    pub email: String,
    pub code: String,
    pub display_name: String,
    pub password: String,
    pub confirm_password: String,
}

#[server(prefix = "/api", endpoint = "list_tenants")]
pub async fn list_tenants() -> Result<Vec<TenantSummary>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.tenants.list(&req).await)
}

#[server(prefix = "/api", endpoint = "get_tenant")]
pub async fn get_tenant(tenant_id: Uuid) -> Result<TenantSummary, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.tenants.get(&req, tenant_id).await)
}

#[server(prefix = "/api", endpoint = "create_tenant")]
pub async fn create_tenant(name: String) -> Result<TenantSummary, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.tenants.create(&req, &name).await)
}

#[server(prefix = "/api", endpoint = "rename_tenant")]
pub async fn rename_tenant(tenant_id: Uuid, name: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .rename(&req, tenant_id, &name)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "set_tenant_suspended")]
pub async fn set_tenant_suspended(tenant_id: Uuid, suspended: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .set_suspended(&req, tenant_id, suspended)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "list_members")]
pub async fn list_members(tenant_id: Uuid) -> Result<Vec<Member>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .members(&req, tenant_id)
            .await,
    )
}

/// Invites `email` to the tenant. The answer is the same whether the address has an account
/// or not: an invitation whose code is shown once, for the admin to hand over.
#[server(prefix = "/api", endpoint = "add_member")]
pub async fn add_member(
    tenant_id: Uuid,
    email: String,
    #[server(default)] display_name: String,
    role: String,
) -> Result<NewInvitation, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .invitations
            .invite(&req, tenant_id, &email, &display_name, &role)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "list_invitations")]
pub async fn list_invitations(tenant_id: Uuid) -> Result<Vec<PendingInvitation>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .invitations
            .pending(&req, tenant_id)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "revoke_invitation")]
pub async fn revoke_invitation(tenant_id: Uuid, id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .invitations
            .revoke(&req, tenant_id, id)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "my_invitations")]
pub async fn my_invitations() -> Result<Vec<MyInvitation>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.invitations.mine(&req).await)
}

#[server(prefix = "/api", endpoint = "accept_invitation")]
pub async fn accept_invitation(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .invitations
            .answer(&req, id, true)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "decline_invitation")]
pub async fn decline_invitation(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .invitations
            .answer(&req, id, false)
            .await,
    )
}

/// Creates the invitee's account with an invitation code, joins the tenant and signs in.
#[server(prefix = "/api", endpoint = "join")]
pub async fn join(
    #[server(default)] email: String,
    #[server(default)] code: String,
    #[server(default)] display_name: String,
    #[server(default)] password: String,
    #[server(default)] confirm_password: String,
) -> Result<(), AppError> {
    let form = JoinForm {
        email,
        code,
        display_name,
        password,
        confirm_password,
    };
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.invitations.join(&req, form).await)?;
    leptos_axum::redirect("/");
    Ok(())
}

#[server(prefix = "/api", endpoint = "set_member_role")]
pub async fn set_member_role(tenant_id: Uuid, user_id: Uuid, role: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .set_member_role(&req, tenant_id, user_id, &role)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "remove_member")]
pub async fn remove_member(tenant_id: Uuid, user_id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .remove_member(&req, tenant_id, user_id)
            .await,
    )
}
