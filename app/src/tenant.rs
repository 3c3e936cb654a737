//! Tenants (organisations) and their members.
use crate::account::{OneTimePassword, TenantRole};
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

#[server(prefix = "/api", endpoint = "add_member")]
pub async fn add_member(
    tenant_id: Uuid,
    email: String,
    display_name: String,
    role: String,
) -> Result<Option<OneTimePassword>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .tenants
            .add_member(&req, tenant_id, &email, &display_name, &role)
            .await,
    )
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
