//! Which replica runs each host's actor. Every few seconds each replica, in database time:
//! ranks the live replicas for every host by rendezvous hashing (computed by PostgreSQL, so
//! every replica and version ranks alike), renews the leases of the hosts it ranks first
//! for, hands back the ones it no longer does (a replica joined), and claims those it ranks
//! first for whose lease is free or expired — or any lease expired for longer than a round
//! (its first-ranked replica is not claiming). A claim raises the epoch; the actor started
//! under it writes only while the lease still names it (`cluster::Fence`). A replica that
//! finds it lost a lease stops that actor at once.
use super::Hypervisors;
use crate::platform::cluster::{Fence, ALIVE_SECONDS};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How often a replica renews and claims.
pub const ROUND_EVERY: Duration = Duration::from_secs(2);
/// How long a lease lasts unrenewed: three rounds. A replica killed outright loses its hosts
/// this long after its last round, and they are claimed at the next round after that.
pub const LEASE_SECONDS: f64 = 6.0;

/// What one round changed (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub claimed: Vec<Uuid>,
    pub released: Vec<Uuid>,
    pub lost: Vec<Uuid>,
    /// Hosts this replica owns after the round.
    pub owned: usize,
}

#[derive(sqlx::FromRow)]
struct HostLease {
    id: Uuid,
    uri: String,
    ssh_host_key: Option<String>,
    /// The live replica ranked first for the host (None: no replica is live, not even this
    /// one — its own heartbeat is late).
    desired: Option<Uuid>,
    owner: Option<Uuid>,
    epoch: Option<i64>,
    /// The lease names an owner and has not expired.
    held: bool,
    /// Expired for longer than a round: its first-ranked replica is not claiming it.
    abandoned: bool,
}

/// One round for replica `me`: renew, hand back, claim, then start and stop actors to match.
pub async fn round(hv: &Hypervisors, me: Uuid) -> Result<Round> {
    let mut tx = db::begin(&hv.pool, Scope::fleet()).await?;
    let hosts: Vec<HostLease> = sqlx::query_as(
        "WITH live AS (
             SELECT id FROM replicas
             WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
         ), desired AS (
             SELECT DISTINCT ON (h.id) h.id AS host_id, r.id AS replica
             FROM hosts h CROSS JOIN live r
             ORDER BY h.id, hashtextextended(h.id::text || r.id::text, 0) DESC
         )
         SELECT h.id, h.uri, h.ssh_host_key, d.replica AS desired, l.owner, l.epoch,
                coalesce(l.owner IS NOT NULL AND l.expires_at > now(), false) AS held,
                coalesce(l.expires_at < now() - make_interval(secs => $2), false) AS abandoned
         FROM hosts h
         LEFT JOIN desired d ON d.host_id = h.id
         LEFT JOIN host_leases l ON l.host_id = h.id",
    )
    .bind(ALIVE_SECONDS)
    .bind(ROUND_EVERY.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    db::done(tx);
    // What this machine opens for each host (an SSH host through its pinned key).
    let uris: HashMap<Uuid, String> = hosts
        .iter()
        .filter_map(
            |h| match super::remote::effective(&h.uri, h.ssh_host_key.as_deref()) {
                Ok(uri) => Some((h.id, uri)),
                Err(e) => {
                    tracing::warn!(host = %h.id, error = %e, "host cannot be opened");
                    None
                }
            },
        )
        .collect();
    hv.remember_uris(uris.iter().map(|(id, uri)| (*id, uri.clone())));

    let mine = |h: &HostLease| h.held && h.owner == Some(me);
    let (keep, hand_back): (Vec<&HostLease>, Vec<&HostLease>) = hosts
        .iter()
        .filter(|h| mine(h))
        .partition(|h| h.desired == Some(me) || h.desired.is_none());
    let wanted: Vec<&HostLease> = hosts
        .iter()
        .filter(|h| !h.held && (h.desired == Some(me) || h.abandoned))
        .collect();

    // A lease that lapsed in its owner's hands: if that replica stopped beating, end its
    // database sessions first, or a transaction it was paused in keeps the lease row locked.
    if hosts
        .iter()
        .any(|h| !h.held && h.owner.is_some_and(|o| o != me))
    {
        if let Err(e) = crate::platform::cluster::fence_gone(&hv.pool).await {
            tracing::warn!(error = %e, "ending a gone replica's database sessions");
        }
    }

    let mut out = Round::default();
    // Renewals commit on their own, so no wait on another's lock below can cost this replica
    // its own leases.
    let mut tx = db::begin(&hv.pool, Scope::fleet()).await?;
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    // Renew: the leases still naming this replica and the epoch its actors run under.
    let renewed: Vec<(Uuid, i64)> = sqlx::query_as(
        "UPDATE host_leases l SET expires_at = now() + make_interval(secs => $4)
         FROM UNNEST($1::uuid[], $2::int8[]) AS k (host_id, epoch)
         WHERE l.host_id = k.host_id AND l.epoch = k.epoch AND l.owner = $3 AND l.expires_at > now()
         RETURNING l.host_id, l.epoch",
    )
    .bind(keep.iter().map(|h| h.id).collect::<Vec<_>>())
    .bind(
        keep.iter()
            .map(|h| h.epoch.unwrap_or(0))
            .collect::<Vec<_>>(),
    )
    .bind(me)
    .bind(LEASE_SECONDS)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // A claim waits at most 2 s for a row another holds; it is tried again next round.
    let (released, claimed) = match hand_back_and_claim(hv, me, &hand_back, &wanted).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "handing back and claiming host leases");
            (Vec::new(), Vec::new())
        }
    };

    // The actors follow the leases: one per host held, under the epoch held.
    let held: HashMap<Uuid, i64> = renewed.iter().chain(claimed.iter()).copied().collect();
    for (id, epoch) in &held {
        let fence = Fence {
            replica: me,
            epoch: *epoch,
        };
        if hv.running_under(*id) != Some(fence) {
            if let Some(uri) = uris.get(id) {
                hv.start(*id, uri.to_string(), fence);
            }
        }
    }
    for id in hv.running() {
        if !held.contains_key(&id) {
            hv.stop(id);
            if released.contains(&id) {
                out.released.push(id);
            } else {
                tracing::warn!(host = %id, "this replica lost the host's lease: its actor stopped");
                out.lost.push(id);
            }
        }
    }
    out.claimed = claimed.into_iter().map(|(id, _)| id).collect();
    out.owned = held.len();
    Ok(out)
}

/// Hands back `hand_back` and claims `wanted` (those nobody holds) in one transaction.
async fn hand_back_and_claim(
    hv: &Hypervisors,
    me: Uuid,
    hand_back: &[&HostLease],
    wanted: &[&HostLease],
) -> Result<(Vec<Uuid>, Vec<(Uuid, i64)>)> {
    let mut tx = db::begin(&hv.pool, Scope::fleet()).await?;
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    // Hand back what another live replica ranks first for: it claims it at its next round.
    let released: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE host_leases l SET owner = NULL, expires_at = now()
         FROM UNNEST($1::uuid[], $2::int8[]) AS k (host_id, epoch)
         WHERE l.host_id = k.host_id AND l.epoch = k.epoch AND l.owner = $3
         RETURNING l.host_id",
    )
    .bind(hand_back.iter().map(|h| h.id).collect::<Vec<_>>())
    .bind(
        hand_back
            .iter()
            .map(|h| h.epoch.unwrap_or(0))
            .collect::<Vec<_>>(),
    )
    .bind(me)
    .fetch_all(&mut *tx)
    .await?;
    // Claim: only a lease nobody holds (released, expired, or none yet); a new epoch.
    let claimed: Vec<(Uuid, i64)> = sqlx::query_as(
        "INSERT INTO host_leases (host_id, owner, epoch, expires_at)
         SELECT k.host_id, $2, 1, now() + make_interval(secs => $3) FROM UNNEST($1::uuid[]) AS k (host_id)
         WHERE EXISTS (SELECT 1 FROM hosts WHERE id = k.host_id)
         ON CONFLICT (host_id) DO UPDATE SET owner = excluded.owner, epoch = host_leases.epoch + 1,
             expires_at = excluded.expires_at
         WHERE host_leases.owner IS NULL OR host_leases.expires_at <= now()
         RETURNING host_id, epoch",
    )
    .bind(wanted.iter().map(|h| h.id).collect::<Vec<_>>())
    .bind(me)
    .bind(LEASE_SECONDS)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((released, claimed))
}

/// Hands back every lease this replica holds (a graceful stop): the others claim them at
/// their next round instead of waiting for the leases to expire.
pub async fn release_all(hv: &Hypervisors, me: Uuid) -> Result<u64> {
    hv.stop_all();
    let mut tx = db::begin(&hv.pool, Scope::fleet()).await?;
    let n = sqlx::query("UPDATE host_leases SET owner = NULL, expires_at = now() WHERE owner = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}
