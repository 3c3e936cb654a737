//! Webhooks: endpoints that tenant admins (for a tenant) and fleet admins (fleet-wide) point at
//! their own systems. Each event is sent as JSON signed per the Standard Webhooks scheme,
//! through the job queue, retried for a day; each endpoint keeps a delivery log.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The event types an endpoint can ask for, with how the form names them. The names are the
/// payload's `type` and are stored (`webhook_endpoints.event_types`): they are the stable
/// schema receivers rely on, so a rename is a breaking change.
pub const EVENT_TYPES: [(&str, &str); 17] = [
    ("request.submitted", "A request was submitted"),
    ("request.awaiting_approval", "A request waits for approval"),
    ("request.approved", "A request was approved"),
    ("request.rejected", "A request was rejected"),
    ("request.fulfilled", "A request's VMs are running"),
    ("request.failed", "A request failed"),
    ("request.expired", "A request expired undecided"),
    ("vm.lease_reminder", "A VM's lease ends soon"),
    ("vm.lease_expired", "A VM's lease ended (it was stopped)"),
    ("alert.firing", "An alert fires"),
    ("alert.resolved", "An alert resolves"),
    ("reclamation.proposed", "A rule proposes to reclaim a VM"),
    (
        "reclamation.done",
        "A VM was reclaimed (stopped or deleted)",
    ),
    (
        "quota.threshold",
        "A tenant's use reached 80 % or 100 % of a quota",
    ),
    ("host.lost", "A host is lost (fleet-wide endpoints)"),
    ("host.back", "A lost host is back (fleet-wide endpoints)"),
    (
        "webhook.test",
        "Test events (the \"Send test event\" button)",
    ),
];

/// Where an endpoint's events come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookScope {
    /// `None`: fleet-wide.
    pub tenant_id: Option<Uuid>,
    pub name: String,
}

/// One delivery of one event to one endpoint, as its log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The `webhook-id` header: the same on every attempt.
    pub message_id: String,
    pub event_type: String,
    /// "pending", "delivered" or "failed".
    pub state: String,
    pub attempts: i32,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub scope: WebhookScope,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it was turned off (by whom, or after which failures).
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The newest deliveries (at most 10).
    pub recent: Vec<WebhookDelivery>,
}

/// The webhooks page: where the actor may add endpoints, and the endpoints they manage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookOverview {
    pub scopes: Vec<WebhookScope>,
    pub endpoints: Vec<WebhookEndpoint>,
}

/// A new endpoint and its signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedWebhook {
    pub id: Uuid,
    pub secret: String,
}

/// What a new endpoint asks for, as the form sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWebhook {
    /// A tenant's UUID, or "fleet".
    pub scope: String,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
}

#[server(prefix = "/api", endpoint = "webhooks")]
pub async fn webhooks() -> Result<WebhookOverview, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.webhooks.overview(&req).await)
}

#[server(prefix = "/api", endpoint = "add_webhook")]
pub async fn add_webhook(
    scope: String,
    url: String,
    #[server(default)] description: String,
    #[server(default)] events: Vec<String>,
) -> Result<CreatedWebhook, AppError> {
    let req = crate::seam::request()?;
    let new = NewWebhook {
        scope,
        url,
        description,
        events,
    };
    crate::seam::reply(crate::seam::backend()?.webhooks.add(&req, new).await)
}

/// Turns an endpoint on (again) or off.
#[server(prefix = "/api", endpoint = "set_webhook_enabled")]
pub async fn set_webhook_enabled(id: Uuid, enabled: bool) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .webhooks
            .set_enabled(&req, id, enabled)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "remove_webhook")]
pub async fn remove_webhook(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.webhooks.remove(&req, id).await)
}

/// Sends a `webhook.test` event to one endpoint (whatever types it asked for).
#[server(prefix = "/api", endpoint = "send_test_webhook")]
pub async fn send_test_webhook(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.webhooks.send_test(&req, id).await)
}
