//! Notifications: who is told what when something happens, in the app and by e-mail. Each is
//! written in the transaction of the event it announces (`send`), so it exists exactly when
//! the event committed; its e-mail is a `mail` job keyed by the notification (`mail`). The
//! same events go to webhooks (`webhooks::publish`), also in the event's transaction.
pub mod mail;
pub mod webhooks;

use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use crate::provisioning::approval::Policy;
use app::error::AppError;
use app::notifications::{Notification, NotificationKind, Preference};
use app::seam::{Notifications, RequestCtx};
use async_trait::async_trait;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// One notification to one person.
pub struct Notice {
    pub user: Uuid,
    pub tenant: Option<Uuid>,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    /// A path inside the portal.
    pub link: String,
}

/// Writes `notice` as its recipient wants it (in the app, by e-mail, both or neither) inside
/// the caller's transaction; `add_notification` queues its e-mail.
/// `send` to `user` when there is one (a VM's owner may have been removed).
pub async fn send_if(
    tx: &mut Tx,
    user: Option<Uuid>,
    notice: impl FnOnce(Uuid) -> Notice,
    at: OffsetDateTime,
) -> Result<()> {
    match user {
        Some(u) => send(tx, notice(u), at).await,
        None => Ok(()),
    }
}

pub async fn send(tx: &mut Tx, notice: Notice, at: OffsetDateTime) -> Result<()> {
    sqlx::query("SELECT add_notification($1, $2, $3, $4, $5, $6, $7)")
        .bind(notice.user)
        .bind(notice.tenant)
        .bind(notice.kind.as_str())
        .bind(&notice.title)
        .bind(&notice.body)
        .bind(&notice.link)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The request facts a notice names.
#[derive(sqlx::FromRow)]
struct RequestFacts {
    requester_id: Uuid,
    level: Option<i32>,
    name_prefix: String,
    count: i32,
    state: String,
    template_name: String,
}

/// Tells the people concerned about a line written to a request's log (`requests::log`):
/// its approvers when it waits for them, its requester when it is decided, fulfilled, failed
/// or expired. Other lines (placement, progress) tell nobody.
pub async fn on_request_event(
    tx: &mut Tx,
    request: Uuid,
    tenant: Uuid,
    kind: &str,
    message: &str,
    at: OffsetDateTime,
) -> Result<()> {
    let event_type = match kind {
        "submitted" => "request.submitted",
        "pending_approval" => "request.awaiting_approval",
        "approved" => "request.approved",
        "rejected" => "request.rejected",
        "fulfilled" => "request.fulfilled",
        "failed" => "request.failed",
        "expired" => "request.expired",
        _ => return Ok(()),
    };
    let for_requester = match kind {
        "approved" => Some(NotificationKind::RequestApproved),
        "rejected" => Some(NotificationKind::RequestRejected),
        "fulfilled" => Some(NotificationKind::RequestFulfilled),
        "failed" => Some(NotificationKind::RequestFailed),
        "expired" => Some(NotificationKind::RequestExpired),
        "submitted" | "pending_approval" => None,
        _ => return Ok(()),
    };
    let Some(r): Option<RequestFacts> = sqlx::query_as(
        "SELECT r.requester_id, r.level, r.name_prefix, r.count, r.state::text AS state,
                coalesce(t.name, 'a removed template') AS template_name
         FROM requests r LEFT JOIN templates t ON t.id = r.template_id WHERE r.id = $1",
    )
    .bind(request)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    // A VM's own failure line comes before the request's: the requester hears once, when the
    // request is closed as failed (its line says how many VMs failed).
    if kind == "failed" && r.state != "failed" {
        return Ok(());
    }
    let what = if r.count == 1 {
        format!("{} ({})", r.name_prefix, r.template_name)
    } else {
        format!("{} ({} × {})", r.name_prefix, r.count, r.template_name)
    };
    let link = format!("/requests/{request}");
    webhooks::publish(
        tx,
        Some(tenant),
        event_type,
        serde_json::json!({
            "request_id": request,
            "tenant_id": tenant,
            "requester_id": r.requester_id,
            "name_prefix": r.name_prefix,
            "count": r.count,
            "template": r.template_name,
            "message": message,
            "path": link,
        }),
        at,
    )
    .await?;
    if kind == "submitted" {
        return Ok(());
    }
    match for_requester {
        Some(k) => {
            let title = match k {
                NotificationKind::RequestApproved => format!("Approved: {what}"),
                NotificationKind::RequestRejected => format!("Rejected: {what}"),
                NotificationKind::RequestFulfilled => format!("Ready: {what}"),
                NotificationKind::RequestFailed => format!("A VM failed: {what}"),
                _ => format!("Expired undecided: {what}"),
            };
            send(
                tx,
                Notice {
                    user: r.requester_id,
                    tenant: Some(tenant),
                    kind: k,
                    title,
                    body: message.to_string(),
                    link,
                },
                at,
            )
            .await
        }
        None => {
            for approver in approvers(tx, tenant, r.level, r.requester_id).await? {
                send(
                    tx,
                    Notice {
                        user: approver,
                        tenant: Some(tenant),
                        kind: NotificationKind::ApprovalWaiting,
                        title: format!("Waiting for your approval: {what}"),
                        body: message.to_string(),
                        link: "/approvals".into(),
                    },
                    at,
                )
                .await?;
            }
            Ok(())
        }
    }
}

/// Who decides a request of `tenant` at `level`: the level's named approvers who are still
/// members, else every approver and tenant admin of the tenant; never the requester.
async fn approvers(
    tx: &mut Tx,
    tenant: Uuid,
    level: Option<i32>,
    requester: Uuid,
) -> Result<Vec<Uuid>> {
    let named = match level {
        Some(l) => Policy::load(tx, tenant)
            .await?
            .level(l)
            .map(|l| l.approvers.clone())
            .unwrap_or_default(),
        None => return Ok(Vec::new()),
    };
    Ok(sqlx::query_scalar(
        "SELECT user_id FROM memberships
         WHERE tenant_id = $1 AND user_id <> $2
           AND (CASE WHEN cardinality($3::uuid[]) > 0 THEN user_id = ANY($3)
                     ELSE role IN ('approver', 'tenant_admin') END)
         ORDER BY user_id",
    )
    .bind(tenant)
    .bind(requester)
    .bind(&named)
    .fetch_all(&mut **tx)
    .await?)
}

pub struct NotificationsBackend {
    pub pool: PgPool,
}

fn own(user: Uuid) -> Scope {
    Scope {
        user: Some(user),
        ..Scope::default()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    kind: String,
    title: String,
    body: String,
    link: String,
    created_at: OffsetDateTime,
    read_at: Option<OffsetDateTime>,
}

#[async_trait]
impl Notifications for NotificationsBackend {
    async fn list(&self, req: &RequestCtx) -> Result<Vec<Notification>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, kind, title, body, link, created_at, read_at FROM notifications
                 WHERE user_id = $1 AND in_app ORDER BY created_at DESC, id LIMIT 100",
            )
            .bind(actor.user_id)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(rows
                .into_iter()
                .filter_map(|r| {
                    Some(Notification {
                        id: r.id,
                        kind: NotificationKind::parse(&r.kind)?,
                        title: r.title,
                        body: r.body,
                        link: r.link,
                        created_at: r.created_at,
                        read: r.read_at.is_some(),
                    })
                })
                .collect())
        })
        .await
    }

    async fn unread(&self, req: &RequestCtx) -> Result<u32, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND in_app AND read_at IS NULL",
            )
            .bind(actor.user_id)
            .fetch_one(&mut *tx)
            .await?;
            db::done(tx);
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn mark_read(&self, req: &RequestCtx, id: Option<Uuid>) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let marked = sqlx::query(
                "UPDATE notifications SET read_at = now()
                 WHERE user_id = $1 AND read_at IS NULL AND ($2::uuid IS NULL OR id = $2)",
            )
            .bind(actor.user_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked == 0 {
                // Already read is fine; someone else's (or no such) notification is not found.
                if let Some(id) = id {
                    let mine: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM notifications WHERE id = $1 AND user_id = $2)",
                    )
                    .bind(id)
                    .bind(actor.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if !mine {
                        return Err(AppError::NotFound("No such notification.".into()).into());
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn preferences(&self, req: &RequestCtx) -> Result<Vec<Preference>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let rows: Vec<(String, String, bool)> = sqlx::query_as(
                "SELECT kind, channel, enabled FROM notification_preferences WHERE user_id = $1",
            )
            .bind(actor.user_id)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            let wanted = |kind: NotificationKind, channel: &str| {
                rows.iter()
                    .find(|(k, c, _)| k == kind.as_str() && c == channel)
                    .is_none_or(|(_, _, on)| *on)
            };
            Ok(NotificationKind::ALL
                .into_iter()
                .map(|kind| Preference {
                    kind,
                    in_app: wanted(kind, "in_app"),
                    email: wanted(kind, "email"),
                })
                .collect())
        })
        .await
    }

    async fn set_preferences(
        &self,
        req: &RequestCtx,
        in_app: &[String],
        email: &[String],
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            for (field, values) in [("in_app", in_app), ("email", email)] {
                if let Some(bad) = values.iter().find(|v| NotificationKind::parse(v).is_none()) {
                    return Err(AppError::field(
                        field,
                        format!("There is no kind of notification called \"{bad}\"."),
                    )
                    .into());
                }
            }
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            for kind in NotificationKind::ALL {
                for (channel, values) in [("in_app", in_app), ("email", email)] {
                    sqlx::query(
                        "INSERT INTO notification_preferences (user_id, kind, channel, enabled)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (user_id, kind, channel) DO UPDATE SET enabled = EXCLUDED.enabled",
                    )
                    .bind(actor.user_id)
                    .bind(kind.as_str())
                    .bind(channel)
                    .bind(values.iter().any(|v| v == kind.as_str()))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            crate::platform::audit::record(
                &mut tx,
                &crate::platform::audit::Origin::of(req),
                crate::platform::audit::Event::new(
                    "user.notification_preferences",
                    "user",
                    actor.user_id,
                )
                .after(serde_json::json!({ "in_app": in_app, "email": email })),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
