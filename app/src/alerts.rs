//! Alerts: threshold rules on host and VM metrics (for a duration, with a severity), faults
//! (crashed or I/O-paused domains, lost or flapping hosts, failing provisioning) and anomalies
//! (a VM unlike its own history at that hour of day); each fires once and resolves once.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub const METRICS: [(&str, &str); 5] = [
    ("cpu", "CPU (% of its vCPUs or cores)"),
    ("memory", "Memory (% of its size)"),
    ("disk", "Disk reads + writes (KiB/s)"),
    ("network", "Network in + out (KiB/s)"),
    (
        "headroom",
        "Hosts: capacity headroom (% of memory and of vCPUs after overcommit still free to place VMs)",
    ),
];

pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: Uuid,
    /// threshold, fault or anomaly.
    pub kind: String,
    pub severity: String,
    pub title: String,
    pub detail: String,
    /// vm, host or fleet.
    pub subject_kind: String,
    pub subject: Uuid,
    pub subject_name: String,
    pub host_id: Option<Uuid>,
    pub tenant_name: Option<String>,
    /// firing or resolved.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

impl Alert {
    /// The page of its subject.
    pub fn link(&self) -> String {
        match (self.subject_kind.as_str(), self.host_id) {
            ("vm", Some(h)) => format!("/vms/{h}/{}", self.subject),
            ("host", _) => format!("/hosts/{}", self.subject),
            _ => "/dashboard".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub id: Uuid,
    pub scope_name: String,
    pub name: String,
    pub subject: String,
    pub metric: String,
    pub above: bool,
    pub threshold: f64,
    pub for_minutes: i32,
    pub severity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertsOverview {
    /// Where the actor may add rules ("fleet" or a tenant's UUID, and a name).
    pub scopes: Vec<(String, String)>,
    pub rules: Vec<AlertRule>,
    /// Firing first, then the newest resolved (at most 200).
    pub alerts: Vec<Alert>,
}

#[server(prefix = "/api", endpoint = "alerts")]
pub async fn alerts() -> Result<AlertsOverview, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.alerts.overview(&req).await)
}

/// Firing alerts about one VM (its page).
#[server(prefix = "/api", endpoint = "vm_alerts")]
pub async fn vm_alerts(host_id: Uuid, uuid: Uuid) -> Result<Vec<Alert>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .alerts
            .for_vm(&req, host_id, uuid)
            .await,
    )
}

/// What a new rule asks for, as the form sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRuleForm {
    /// "fleet" or a tenant's UUID.
    pub scope: String,
    pub name: String,
    /// vm or host.
    pub subject: String,
    pub metric: String,
    /// "above" or "below".
    pub direction: String,
    pub threshold: String,
    pub for_minutes: String,
    pub severity: String,
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "add_alert_rule")]
pub async fn add_alert_rule(
    #[server(default)] scope: String,
    #[server(default)] name: String,
    #[server(default)] subject: String,
    #[server(default)] metric: String,
    #[server(default)] direction: String,
    #[server(default)] threshold: String,
    #[server(default)] for_minutes: String,
    #[server(default)] severity: String,
) -> Result<Uuid, AppError> {
    let req = crate::seam::request()?;
    let form = AlertRuleForm {
        scope,
        name,
        subject,
        metric,
        direction,
        threshold,
        for_minutes,
        severity,
    };
    crate::seam::reply(crate::seam::backend()?.alerts.add_rule(&req, form).await)
}

#[server(prefix = "/api", endpoint = "remove_alert_rule")]
pub async fn remove_alert_rule(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.alerts.remove_rule(&req, id).await)
}
