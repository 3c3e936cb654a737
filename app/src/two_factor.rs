//! Two-factor sign-in: time-based one-time codes (RFC 6238) from an authenticator app, with
//! recovery codes; required per tenant by its admins or fleet-wide by the fleet admins.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where the signed-in user stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorStatus {
    pub enabled: bool,
    /// Who requires it of this user: "all of Concierge" or tenant names.
    pub required_by: Vec<String>,
    pub recovery_codes_left: i64,
}

/// A secret being set up: the app scans `qr_svg` (or takes `secret` typed in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// Base32, grouped by four for typing.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub uri: String,
    pub qr_svg: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCodes {
    pub codes: Vec<String>,
}

#[server(prefix = "/api", endpoint = "my_two_factor")]
pub async fn my_two_factor() -> Result<TwoFactorStatus, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.two_factor.status(&req).await)
}

/// Makes a new secret for the user to scan; nothing changes until `confirm_two_factor`.
#[server(prefix = "/api", endpoint = "start_two_factor")]
pub async fn start_two_factor() -> Result<Enrolment, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.two_factor.start(&req).await)
}

/// Turns two-factor sign-in on with the first code the app shows; answers the recovery codes.
#[server(prefix = "/api", endpoint = "confirm_two_factor")]
pub async fn confirm_two_factor(code: String) -> Result<RecoveryCodes, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .two_factor
            .confirm(&req, &code)
            .await,
    )
}

/// Turns it off (with a current code); refused while a tenant or the fleet requires it.
#[server(prefix = "/api", endpoint = "disable_two_factor")]
pub async fn disable_two_factor(code: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .two_factor
            .disable(&req, &code)
            .await,
    )
}

/// Replaces the recovery codes (with a current code).
#[server(prefix = "/api", endpoint = "new_recovery_codes")]
pub async fn new_recovery_codes(code: String) -> Result<RecoveryCodes, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .two_factor
            .new_recovery_codes(&req, &code)
            .await,
    )
}

/// Whether `tenant_id`'s members (or, without one, everyone) must use a second factor.
#[server(prefix = "/api", endpoint = "two_factor_policy")]
pub async fn two_factor_policy(
    #[server(default)] tenant_id: Option<Uuid>,
) -> Result<bool, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .two_factor
            .policy(&req, tenant_id)
            .await,
    )
}

/// Sets it: a tenant's admins for the tenant, fleet admins for a tenant or everyone.
#[server(prefix = "/api", endpoint = "set_two_factor_policy")]
pub async fn set_two_factor_policy(
    #[server(default)] tenant_id: Option<Uuid>,
    #[server(default)] required: Option<String>,
) -> Result<bool, AppError> {
    let req = crate::seam::request()?;
    let required = matches!(required.as_deref(), Some("on" | "true"));
    crate::seam::reply(
        crate::seam::backend()?
            .two_factor
            .set_policy(&req, tenant_id, required)
            .await,
    )
}

/// The second step of signing in: the code from the app (or a recovery code) for the
/// account whose password was just accepted.
#[server(prefix = "/api", endpoint = "login_code")]
pub async fn login_code(code: String, #[server(default)] next: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .login_code(&req, &code)
            .await,
    )?;
    leptos_axum::redirect(&crate::account::safe_next(&next));
    Ok(())
}
