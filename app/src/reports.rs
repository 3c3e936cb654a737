//! Usage and showback reports, and the rate cards that price usage.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a report is about, as typed in its form (the backend parses it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportQuery {
    /// Empty: every tenant the viewer may report on.
    pub tenant_id: String,
    /// YYYY-MM-DD, inclusive.
    pub from: String,
    /// YYYY-MM-DD, inclusive.
    pub to: String,
    /// tenant, user, template or vm.
    pub group_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub key: String,
    pub label: String,
    pub vcpu_hours: f64,
    pub memory_gib_hours: f64,
    pub disk_gib_hours: f64,
    pub powered_on_hours: f64,
    pub cost: f64,
    /// The cost over the period of the same length just before.
    pub previous_cost: f64,
}

impl ReportRow {
    /// Change against the previous period in percent (None when it cost nothing).
    pub fn change_pct(&self) -> Option<f64> {
        (self.previous_cost > 0.0)
            .then(|| (self.cost - self.previous_cost) / self.previous_cost * 100.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub previous_from: String,
    pub previous_to: String,
    pub group_by: String,
    pub tenant_name: Option<String>,
    pub currency: String,
    pub rows: Vec<ReportRow>,
    pub total: ReportRow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateCard {
    pub id: Uuid,
    pub template_name: Option<String>,
    pub currency: String,
    pub vcpu_hour: f64,
    pub memory_gib_hour: f64,
    pub disk_gib_hour: f64,
    pub valid_from: String,
    pub valid_to: Option<String>,
    /// Valid now.
    #[serde(default)]
    pub in_force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCardForm {
    /// Empty: every template without a card of its own.
    pub template_id: String,
    pub currency: String,
    pub vcpu_hour: String,
    pub memory_gib_hour: String,
    pub disk_gib_hour: String,
    pub valid_from: String,
    pub valid_to: String,
}

#[server(prefix = "/api", endpoint = "usage_report")]
pub async fn usage_report(
    #[server(default)] tenant_id: String,
    #[server(default)] from: String,
    #[server(default)] to: String,
    #[server(default)] group_by: String,
) -> Result<Report, AppError> {
    let req = crate::seam::request()?;
    let q = ReportQuery {
        tenant_id,
        from,
        to,
        group_by,
    };
    crate::seam::reply(crate::seam::backend()?.reports.report(&req, q).await)
}

#[server(prefix = "/api", endpoint = "list_rate_cards")]
pub async fn list_rate_cards() -> Result<Vec<RateCard>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.reports.rate_cards(&req).await)
}

/// Ends a rate card on a date (the hours before keep their price).
#[server(prefix = "/api", endpoint = "end_rate_card")]
pub async fn end_rate_card(id: Uuid, #[server(default)] valid_to: String) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .reports
            .end_rate_card(&req, id, &valid_to)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "add_rate_card")]
pub async fn add_rate_card(
    #[server(default)] template_id: String,
    #[server(default)] currency: String,
    #[server(default)] vcpu_hour: String,
    #[server(default)] memory_gib_hour: String,
    #[server(default)] disk_gib_hour: String,
    #[server(default)] valid_from: String,
    #[server(default)] valid_to: String,
) -> Result<Uuid, AppError> {
    let req = crate::seam::request()?;
    let form = RateCardForm {
        template_id,
        currency,
        vcpu_hour,
        memory_gib_hour,
        disk_gib_hour,
        valid_from,
        valid_to,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .reports
            .add_rate_card(&req, form)
            .await,
    )
}
