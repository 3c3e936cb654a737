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

/// How long a resource lasts at its trend (Theil–Sen on daily peaks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runway {
    /// A tenant's, a host's name, or "Fleet".
    pub subject: String,
    pub resource: String,
    pub unit: String,
    /// The limit (quota, or capacity); 0 when none.
    pub capacity: f64,
    pub latest: f64,
    pub slope_per_day: f64,
    pub intercept: f64,
    /// Days until the limit at the trend; `None`: not within a year (or no trend yet).
    pub days: Option<f64>,
    /// The 80 % range of that estimate.
    pub days_low: Option<f64>,
    pub days_high: Option<f64>,
    /// Daily peaks (day number, value), oldest first.
    pub points: Vec<(f64, f64)>,
    /// Today's day number.
    pub today: f64,
    pub summary: String,
}

/// A tenant's quota runways, or with no tenant the fleet's and each host's (fleet admins).
#[server(prefix = "/api", endpoint = "capacity_runway")]
pub async fn capacity_runway(
    #[server(default)] tenant_id: Option<Uuid>,
) -> Result<Vec<Runway>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .reports
            .runways(&req, tenant_id)
            .await,
    )
}
