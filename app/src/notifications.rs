//! What the portal tells each person: the notification centre (bell, list, mark read) and
//! their choice of kinds and channels. Notifications are written by the backend in the
//! transaction of the event they announce; e-mail goes out through the job queue.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a notification is about. The names are stored (`notifications.kind`,
/// `notification_preferences.kind`): renaming one is a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A request waits for the recipient's decision.
    ApprovalWaiting,
    RequestApproved,
    RequestRejected,
    /// Every VM of the request runs.
    RequestFulfilled,
    /// A VM of the request could not be provisioned.
    RequestFailed,
    /// A request nobody decided in time.
    RequestExpired,
    /// A VM's lease ends soon.
    LeaseReminder,
    /// A VM's lease ended: it was stopped.
    LeaseExpired,
    /// A tenant's use crossed 80 % or 100 % of a limit (its tenant admins).
    QuotaThreshold,
    /// A host stopped answering (fleet admins).
    HostLost,
    /// A lost host answers again (fleet admins).
    HostBack,
    /// A webhook endpoint was turned off after failing (whoever made it).
    WebhookDisabled,
    /// A rule proposes to reclaim a VM of the recipient, or carried it out.
    Reclamation,
    /// An alert fired or resolved (the tenant's admins, or fleet admins).
    Alert,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 14] = [
        NotificationKind::ApprovalWaiting,
        NotificationKind::RequestApproved,
        NotificationKind::RequestRejected,
        NotificationKind::RequestFulfilled,
        NotificationKind::RequestFailed,
        NotificationKind::RequestExpired,
        NotificationKind::LeaseReminder,
        NotificationKind::LeaseExpired,
        NotificationKind::QuotaThreshold,
        NotificationKind::HostLost,
        NotificationKind::HostBack,
        NotificationKind::WebhookDisabled,
        NotificationKind::Reclamation,
        NotificationKind::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::ApprovalWaiting => "approval_waiting",
            NotificationKind::RequestApproved => "request_approved",
            NotificationKind::RequestRejected => "request_rejected",
            NotificationKind::RequestFulfilled => "request_fulfilled",
            NotificationKind::RequestFailed => "request_failed",
            NotificationKind::RequestExpired => "request_expired",
            NotificationKind::LeaseReminder => "lease_reminder",
            NotificationKind::LeaseExpired => "lease_expired",
            NotificationKind::QuotaThreshold => "quota_threshold",
            NotificationKind::HostLost => "host_lost",
            NotificationKind::HostBack => "host_back",
            NotificationKind::WebhookDisabled => "webhook_disabled",
            NotificationKind::Reclamation => "reclamation",
            NotificationKind::Alert => "alert",
        }
    }

    pub fn parse(s: &str) -> Option<NotificationKind> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How the preferences page names it.
    pub fn label(self) -> &'static str {
        match self {
            NotificationKind::ApprovalWaiting => "A request waits for my approval",
            NotificationKind::RequestApproved => "My request was approved",
            NotificationKind::RequestRejected => "My request was rejected",
            NotificationKind::RequestFulfilled => "My VMs are running",
            NotificationKind::RequestFailed => "A VM of my request failed",
            NotificationKind::RequestExpired => "My request expired undecided",
            NotificationKind::LeaseReminder => "A VM's lease ends soon",
            NotificationKind::LeaseExpired => "A VM's lease ended",
            NotificationKind::QuotaThreshold => "A tenant I administer nears its quota",
            NotificationKind::HostLost => "A host is lost",
            NotificationKind::HostBack => "A lost host is back",
            NotificationKind::WebhookDisabled => "A webhook I made was turned off",
            NotificationKind::Reclamation => "A VM of mine is proposed for reclamation",
            NotificationKind::Alert => "An alert fires or resolves",
        }
    }
}

/// One notification as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: Uuid,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    /// A path inside the portal: the object it is about.
    pub link: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub read: bool,
}

/// A person's choice for one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    pub kind: NotificationKind,
    pub in_app: bool,
    pub email: bool,
}

/// The newest notifications of the signed-in user (at most 100).
#[server(prefix = "/api", endpoint = "my_notifications")]
pub async fn my_notifications() -> Result<Vec<Notification>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.notifications.list(&req).await)
}

/// How many of them are unread (the bell's count).
#[server(prefix = "/api", endpoint = "unread_notifications")]
pub async fn unread_notifications() -> Result<u32, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.notifications.unread(&req).await)
}

/// Marks one notification read, or all of them when `id` is empty.
#[server(prefix = "/api", endpoint = "mark_notifications_read")]
pub async fn mark_notifications_read(#[server(default)] id: Option<Uuid>) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .notifications
            .mark_read(&req, id)
            .await,
    )
}

#[server(prefix = "/api", endpoint = "notification_preferences")]
pub async fn notification_preferences() -> Result<Vec<Preference>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .notifications
            .preferences(&req)
            .await,
    )
}

/// Saves the preferences: the kinds wanted in the app and by e-mail (checkbox values,
/// `NotificationKind::as_str`); a kind not listed is off for that channel.
#[server(prefix = "/api", endpoint = "set_notification_preferences")]
pub async fn set_notification_preferences(
    #[server(default)] in_app: Vec<String>,
    #[server(default)] email: Vec<String>,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .notifications
            .set_preferences(&req, &in_app, &email)
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_what_they_write() {
        for k in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(NotificationKind::parse("nope"), None);
    }
}
