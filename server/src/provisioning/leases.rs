//! Leases and stale requests, checked on a timer against the (controllable) clock: reminders
//! 7 days and 1 day before a lease ends, a stop at expiry, deletion after the grace period,
//! and expiry of requests nobody decided in time. One replica checks at a time
//! (`cluster::once`), and each step is one conditional UPDATE, so running the check twice
//! (or on two servers) does each thing once.
use crate::hypervisor::Hypervisors;
use crate::notifications::{self, Notice};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::jobs::{self, Queue};
use crate::provisioning::quota::{self, Release};
use crate::provisioning::requests::log;
use app::notifications::NotificationKind;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub struct Leases {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub hypervisors: Arc<Hypervisors>,
    pub queue: Arc<Queue>,
    pub grace: Duration,
}

/// What one check did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    pub requests_expired: usize,
    pub reminded: usize,
    pub stopped: usize,
    pub deleting: usize,
}

impl Leases {
    pub async fn tick(&self) -> Result<Tick> {
        let now = self.clock.now();
        let mut out = Tick::default();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        // One replica checks at a time; the conditional UPDATEs below would do each thing
        // once anyway, but a second checker would only queue on the same rows.
        if !crate::platform::cluster::once(&mut tx, "leases").await? {
            return Ok(out);
        }

        let expired: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "UPDATE requests SET state = 'expired', reason = 'Nobody decided in time.', updated_at = $1, level = NULL
             WHERE state = 'pending_approval' AND decide_by <= $1 RETURNING id, tenant_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (id, tenant) in &expired {
            quota::release(&mut tx, Release::Request(*id), "expired", now).await?;
            log(
                &mut tx,
                *id,
                *tenant,
                None,
                "expired",
                "Expired: nobody decided in time. Quota released.",
                now,
            )
            .await?;
            audit::record(
                &mut tx,
                &Origin::default(),
                Event::new("request.expire", "request", id).tenant(*tenant),
            )
            .await?;
        }
        out.requests_expired = expired.len();

        // The nearer reminder wins; each is sent once per lease end (an extension resets it).
        for days in [1i32, 7] {
            let reminded: Vec<LeaseEnd> = sqlx::query_as(
                "UPDATE vms SET reminded_days = $2
                 WHERE deleted_at IS NULL AND phase = 'running' AND lease_ends_at > $1
                   AND lease_ends_at <= $1 + make_interval(days => $2)
                   AND (reminded_days IS NULL OR reminded_days > $2)
                 RETURNING uuid, tenant_id, name, lease_ends_at, owner_id, host_id",
            )
            .bind(now)
            .bind(days)
            .fetch_all(&mut *tx)
            .await?;
            for LeaseEnd {
                uuid,
                tenant_id: tenant,
                name,
                lease_ends_at: ends,
                owner_id: owner,
                host_id: host,
            } in &reminded
            {
                audit::record(
                    &mut tx,
                    &Origin::default(),
                    Event::new("vm.lease.remind", "vm", uuid)
                        .tenant(*tenant)
                        .after(json!({ "name": name, "days": days, "lease_ends_at": ends.to_string() })),
                )
                .await?;
                notifications::webhooks::publish(
                    &mut tx,
                    Some(*tenant),
                    "vm.lease_reminder",
                    json!({ "vm_id": uuid, "tenant_id": tenant, "owner_id": owner, "name": name,
                            "lease_ends_at": ends.format(&time::format_description::well_known::Rfc3339).ok(),
                            "days": days, "path": vm_link(*host, *uuid) }),
                    now,
                )
                .await?;
                if let Some(owner) = owner {
                    let when = ends.date();
                    notifications::send(
                        &mut tx,
                        Notice {
                            user: *owner,
                            tenant: Some(*tenant),
                            kind: NotificationKind::LeaseReminder,
                            title: format!("{name}: its lease ends on {when}"),
                            body: format!(
                                "{name} will be stopped when its lease ends ({ends} UTC). Extend the lease on the VM's page if you still need it."
                            ),
                            link: vm_link(*host, *uuid),
                        },
                        now,
                    )
                    .await?;
                }
            }
            out.reminded += reminded.len();
        }

        let stopping: Vec<LeaseEnd> = sqlx::query_as(
            "UPDATE vms SET phase = 'expired', stopped_for_lease_at = $1, updated_at = $1
             WHERE deleted_at IS NULL AND phase = 'running' AND lease_ends_at <= $1 AND stopped_for_lease_at IS NULL
             RETURNING uuid, tenant_id, name, lease_ends_at, owner_id, host_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for LeaseEnd {
            uuid,
            tenant_id: tenant,
            name,
            owner_id: owner,
            host_id: host,
            ..
        } in &stopping
        {
            audit::record(
                &mut tx,
                &Origin::default(),
                Event::new("vm.lease.expire", "vm", uuid)
                    .tenant(*tenant)
                    .after(json!({ "name": name, "delete_after_days": self.grace.whole_days() })),
            )
            .await?;
            notifications::webhooks::publish(
                &mut tx,
                Some(*tenant),
                "vm.lease_expired",
                json!({ "vm_id": uuid, "tenant_id": tenant, "owner_id": owner, "name": name,
                        "delete_after_days": self.grace.whole_days(), "path": vm_link(*host, *uuid) }),
                now,
            )
            .await?;
            if let Some(owner) = owner {
                let days = self.grace.whole_days();
                notifications::send(
                    &mut tx,
                    Notice {
                        user: *owner,
                        tenant: Some(*tenant),
                        kind: NotificationKind::LeaseExpired,
                        title: format!("{name} was stopped: its lease ended"),
                        body: format!(
                            "{name} is stopped and will be deleted in {days} days unless its lease is extended."
                        ),
                        link: vm_link(*host, *uuid),
                    },
                    now,
                )
                .await?;
            }
        }
        out.stopped = stopping.len();

        let doomed: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT uuid, tenant_id, name FROM vms
             WHERE deleted_at IS NULL AND phase = 'expired' AND stopped_for_lease_at <= $1",
        )
        .bind(now - self.grace)
        .fetch_all(&mut *tx)
        .await?;
        for (uuid, tenant, name) in &doomed {
            sqlx::query("UPDATE vms SET phase = 'deleting', updated_at = $2 WHERE uuid = $1")
                .bind(uuid)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            jobs::enqueue(
                &mut tx,
                jobs::JobKind::Delete,
                *uuid,
                json!({ "reason": "lease expired" }),
                10,
            )
            .await?;
            audit::record(
                &mut tx,
                &Origin::default(),
                Event::new("vm.lease.delete", "vm", uuid)
                    .tenant(*tenant)
                    .after(json!({ "name": name })),
            )
            .await?;
        }
        out.deleting = doomed.len();
        tx.commit().await?;

        // Power off after the commit: a failure here is retried by the next reconcile-driven
        // state and the next tick (the VM stays marked expired).
        for LeaseEnd {
            uuid,
            tenant_id: tenant,
            host_id: host,
            ..
        } in stopping
        {
            if let Some(host) = host {
                crate::provisioning::shutdown::force_off_logged(
                    &self.pool,
                    &self.hypervisors,
                    host,
                    uuid,
                    tenant,
                    "The lease ended: stopped until it is extended or deleted.",
                )
                .await?;
            }
        }
        if out.deleting > 0 {
            self.queue.wake.notify_waiters();
        }
        Ok(out)
    }

    /// Checks every `every` until the process ends.
    pub fn spawn(self: Arc<Self>, every: std::time::Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.tick().await {
                    Ok(t) if t != Tick::default() => tracing::info!(?t, "lease check"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "lease check"),
                }
            }
        });
    }
}

/// A VM whose lease end the check acted on (reminded or stopped).
#[derive(sqlx::FromRow)]
struct LeaseEnd {
    uuid: Uuid,
    tenant_id: Uuid,
    name: String,
    lease_ends_at: OffsetDateTime,
    owner_id: Option<Uuid>,
    host_id: Option<Uuid>,
}

/// The VM's page, or the list when it has no host (yet).
pub(crate) fn vm_link(host: Option<Uuid>, uuid: Uuid) -> String {
    match host {
        Some(h) => format!("/vms/{h}/{uuid}"),
        None => "/vms".into(),
    }
}
