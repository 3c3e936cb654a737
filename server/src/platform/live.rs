//! Live updates: one LISTEN connection per server forwards `concierge_live` notifications
//! (domain state changes, request log lines; see the migration) to a broadcast channel, and
//! `/live` streams to each open page the events its viewer may see, as server-sent events.
use crate::platform::error::Result;
use app::account::Actor;
use app::live::LiveEvent;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::Stream;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub const CHANNEL: &str = "concierge_live";

#[derive(Clone)]
pub struct Live {
    pub tx: broadcast::Sender<LiveEvent>,
    /// Bumped on every event (and listener reconnect): caches of fleet-wide figures compare it
    /// to know they are stale.
    pub generation: Arc<AtomicU64>,
}

impl Default for Live {
    fn default() -> Self {
        // Slow pages lag and skip (they refetch anyway); nobody blocks the listener.
        Live {
            tx: broadcast::channel(4096).0,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Live {
    /// Listens until the process ends, reconnecting after errors. Besides the page events it
    /// hears the cluster channel (`platform::cluster`): what other replicas (or hand-written
    /// statements) changed is passed to `on_cluster`, e.g. "actors" retires cached actors.
    pub fn spawn_listener(&self, pool: PgPool, on_cluster: impl Fn(&str) + Send + 'static) {
        let tx = self.tx.clone();
        let generation = self.generation.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        let channels = [CHANNEL, crate::platform::cluster::CHANNEL];
                        if let Err(e) = listener.listen_all(channels).await {
                            tracing::warn!(error = %e, "LISTEN failed");
                        } else {
                            if !std::mem::take(&mut first) {
                                // Listening again: whatever was sent while disconnected was
                                // not heard, so every cache starts over and every open page
                                // refetches.
                                tracing::info!("live listener listening again");
                                on_cluster(crate::platform::cluster::EVERYTHING);
                                generation.fetch_add(1, Ordering::Relaxed);
                                let _ = tx.send(LiveEvent::lagged());
                            }
                            loop {
                                // `try_recv`, not `recv`: `recv` reconnects silently and what
                                // was sent meanwhile is lost; `None` says the connection
                                // dropped, and a new listener is made below.
                                match listener.try_recv().await {
                                    Ok(Some(n)) if n.channel() == CHANNEL => {
                                        match serde_json::from_str::<LiveEvent>(n.payload()) {
                                            Ok(ev) => {
                                                generation.fetch_add(1, Ordering::Relaxed);
                                                let _ = tx.send(ev);
                                            }
                                            Err(e) => {
                                                tracing::warn!(error = %e, "bad live payload")
                                            }
                                        }
                                    }
                                    Ok(Some(n)) => on_cluster(n.payload()),
                                    Ok(None) => {
                                        tracing::warn!("live listener lost its connection");
                                        break;
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "live listener failed");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "live listener cannot connect"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

/// Whether `actor` may see `ev`: fleet admins everything; the VM's owner or the request's
/// requester; the approvers, admins and managers of its tenant. A `lagged` event names
/// nothing and goes to everyone.
pub fn visible(actor: &Actor, ev: &LiveEvent) -> bool {
    if ev.kind == "notification" {
        // Only its recipient hears of a notification, whatever else they may see.
        return ev.owner_id == Some(actor.user_id);
    }
    ev.is_lagged()
        || crate::platform::authz::sees_event(actor, ev.tenant_id, ev.owner_id, ev.requester_id)
}

/// Re-reads the viewer of a stream: their current actor, or `None` once their session ended
/// (signed out, disabled, password reset, timed out).
pub type Recheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<Actor>> + Send + Sync>;

/// How often an idle stream re-checks its viewer, so it closes soon after access ends even
/// when no event comes.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// The event stream of one page. Every event is filtered by the viewer's access as it is
/// now (a role removed an hour after the page opened counts), and the stream ends once the
/// viewer's session does.
pub fn stream(
    live: &Live,
    actor: Actor,
    recheck: Recheck,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    struct Viewer {
        rx: broadcast::Receiver<LiveEvent>,
        actor: Actor,
        recheck: Recheck,
        tick: tokio::time::Interval,
    }
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let viewer = Viewer {
        rx: live.tx.subscribe(),
        actor,
        recheck,
        tick,
    };
    let events = futures::stream::unfold(viewer, |mut v| async move {
        loop {
            tokio::select! {
                received = v.rx.recv() => match received {
                    Ok(ev) => {
                        v.actor = (v.recheck)().await?;
                        if visible(&v.actor, &ev) {
                            let data = serde_json::to_string(&ev).unwrap_or_default();
                            return Some((Ok(Event::default().data(data)), v));
                        }
                    }
                    // Missed some: tell the page to refetch everything it shows.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        v.actor = (v.recheck)().await?;
                        let data = serde_json::to_string(&LiveEvent::lagged()).unwrap_or_default();
                        return Some((Ok(Event::default().data(data)), v));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = v.tick.tick() => {
                    v.actor = (v.recheck)().await?;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Announces a change to a portal VM that is not a state change (its guest answered, its
/// addresses are known) to the pages showing it, at commit, like the database triggers do.
pub async fn notify_vm(
    tx: &mut crate::platform::db::Tx,
    uuid: uuid::Uuid,
    host_id: uuid::Uuid,
) -> Result<()> {
    sqlx::query(
        "SELECT pg_notify($1, json_build_object('kind', 'domain', 'host_id', $3::uuid, 'uuid', v.uuid,
                'state', d.state, 'tenant_id', v.tenant_id, 'owner_id', v.owner_id)::text)
         FROM vms v LEFT JOIN domains d ON d.host_id = $3 AND d.uuid = v.uuid
         WHERE v.uuid = $2",
    )
    .bind(CHANNEL)
    .bind(uuid)
    .bind(host_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Announces a change to a domain that is not a state change (adopted into a tenant): its new
/// owner's pages show it, and every server's kept list totals are recounted.
pub async fn notify_domain(
    tx: &mut crate::platform::db::Tx,
    host_id: uuid::Uuid,
    uuid: uuid::Uuid,
) -> Result<()> {
    sqlx::query(
        "SELECT pg_notify($1, json_build_object('kind', 'domain', 'host_id', d.host_id, 'uuid', d.uuid,
                'state', d.state, 'tenant_id', d.tenant_id, 'owner_id', d.owner_id)::text)
         FROM domains d WHERE d.host_id = $2 AND d.uuid = $3",
    )
    .bind(CHANNEL)
    .bind(host_id)
    .bind(uuid)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::account::{Membership, TenantRole};
    use uuid::Uuid;

    fn actor(role: Option<(Uuid, TenantRole)>) -> Actor {
        Actor {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            email: "a@example.com".into(),
            display_name: "A".into(),
            fleet_admin: false,
            must_change_password: false,
            must_enrol_two_factor: false,
            memberships: role
                .map(|(t, r)| {
                    vec![Membership {
                        tenant_id: t,
                        tenant_name: "T".into(),
                        role: r,
                        tenant_suspended: false,
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn events_reach_only_those_who_may_see_them() {
        let t = Uuid::new_v4();
        let other = Uuid::new_v4();
        let owner = actor(Some((t, TenantRole::Requester)));
        let ev = LiveEvent {
            kind: "domain".into(),
            host_id: None,
            uuid: Some(Uuid::new_v4()),
            state: Some("running".into()),
            tenant_id: Some(t),
            owner_id: Some(owner.user_id),
            request_id: None,
            requester_id: None,
        };
        assert!(visible(&owner, &ev));
        assert!(
            !visible(&actor(Some((t, TenantRole::Requester))), &ev),
            "another requester"
        );
        assert!(visible(&actor(Some((t, TenantRole::Approver))), &ev));
        assert!(visible(&actor(Some((t, TenantRole::Manager))), &ev));
        assert!(
            !visible(&actor(Some((other, TenantRole::TenantAdmin))), &ev),
            "another tenant"
        );
        let unmanaged = LiveEvent {
            tenant_id: None,
            owner_id: None,
            ..ev
        };
        assert!(!visible(
            &actor(Some((t, TenantRole::TenantAdmin))),
            &unmanaged
        ));
        let mut fleet = actor(None);
        fleet.fleet_admin = true;
        assert!(visible(&fleet, &unmanaged));
    }
}
