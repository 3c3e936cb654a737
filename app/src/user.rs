//! User accounts as fleet admins manage them.
use crate::account::{OneTimePassword, TenantRole};
use crate::error::AppError;
use crate::Page;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub fleet_admin: bool,
    pub disabled: bool,
    pub must_change_password: bool,
    pub tenants: Vec<(String, TenantRole)>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[server(prefix = "/api", endpoint = "list_users")]
pub async fn list_users(search: String, page: u32) -> Result<Page<UserSummary>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .list_users(&req, &search, page)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "create_user")]
pub async fn create_user(
    email: String,
    display_name: String,
    #[server(default)] fleet_admin: bool,
) -> Result<OneTimePassword, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .create_user(&req, &email, &display_name, fleet_admin)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "set_fleet_admin")]
pub async fn set_fleet_admin(user_id: Uuid, fleet_admin: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .set_fleet_admin(&req, user_id, fleet_admin)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "set_user_disabled")]
pub async fn set_user_disabled(user_id: Uuid, disabled: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .set_user_disabled(&req, user_id, disabled)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "reset_password")]
pub async fn reset_password(user_id: Uuid) -> Result<OneTimePassword, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .reset_password(&req, user_id)
            .await,
    )
}
