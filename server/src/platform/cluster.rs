//! Several server processes (replicas) on one database. Each registers a `replicas` row and
//! beats in database time, so replicas agree on who is alive whatever their own clocks say;
//! work that must happen once per cluster (timers, rollups) runs under a transaction-level
//! advisory lock (`once`), and caches learn of changes made elsewhere through the
//! `concierge_cluster` channel (`platform::live` listens to it).
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::Result;
use app::fleet::ReplicaInfo;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The channel on which committed changes tell every replica's caches (see the migration).
pub const CHANNEL: &str = "concierge_cluster";
/// The cluster channel's word for "anything may have changed" (a listener reconnected).
pub const EVERYTHING: &str = "everything";
/// ... for "accounts, memberships, tenants or sessions changed" (the migration's triggers).
pub const ACTORS: &str = "actors";
/// How often a replica beats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A replica whose last beat is older than this (three missed beats) counts as gone.
pub const ALIVE_SECONDS: f64 = 6.0;

/// The `application_name` of a replica's database connections.
pub fn application_name(replica: Uuid) -> String {
    format!("concierge {replica}")
}

/// Ends the database sessions of replicas that stopped beating without saying goodbye (killed
/// or paused): a paused replica's open transaction would otherwise keep its row locks, e.g.
/// on the leases the others must claim, for as long as it stays paused. Returns how many
/// sessions were ended. Replicas that stopped gracefully are left to finish their requests.
pub async fn fence_gone(pool: &PgPool) -> Result<i32> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let ended: i32 = sqlx::query_scalar("SELECT fence_gone_replicas($1)")
        .bind(ALIVE_SECONDS)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if ended > 0 {
        tracing::warn!(
            sessions = ended,
            "ended the database sessions of replicas that stopped beating"
        );
    }
    Ok(ended)
}

/// This process, as the other replicas see it.
pub struct Replica {
    pub id: Uuid,
    address: String,
    pool: PgPool,
}

impl Replica {
    /// Registers this process; rows of replicas gone for a day are dropped on the way.
    pub async fn register(pool: &PgPool, address: &str, id: Uuid) -> Result<Replica> {
        let mut tx = db::begin(pool, Scope::fleet()).await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let replica = Replica {
            id,
            address: address.to_string(),
            pool: pool.clone(),
        };
        replica.beat().await?;
        Ok(replica)
    }

    /// Beats until the process ends. A beat that finds no row (pruned after a pause of a day)
    /// registers again under the same id; a replica marked stopped stays stopped.
    pub fn spawn_heartbeat(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.beat().await {
                    tracing::warn!(error = %e, "replica heartbeat");
                }
            }
        });
    }

    async fn beat(&self) -> Result<()> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query(
            "INSERT INTO replicas (id, address, version) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now() WHERE replicas.stopped_at IS NULL",
        )
        .bind(self.id)
        .bind(&self.address)
        .bind(env!("CARGO_PKG_VERSION"))
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    /// Marks this replica stopped, so the others stop counting on it at once.
    pub async fn stop(&self) -> Result<()> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query("UPDATE replicas SET stopped_at = now() WHERE id = $1")
            .bind(self.id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }
}

/// Every replica heard from in the last day with the hosts it holds leases for, the live
/// ones first, then by start.
pub async fn replicas(tx: &mut Tx, me: Uuid) -> Result<Vec<ReplicaInfo>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        address: String,
        version: String,
        started_at: time::OffsetDateTime,
        heartbeat_at: time::OffsetDateTime,
        alive: bool,
        hosts: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, address, version, started_at, heartbeat_at,
                stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1) AS alive,
                (SELECT count(*) FROM host_leases l WHERE l.owner = r.id AND l.expires_at > now()) AS hosts
         FROM replicas r ORDER BY 6 DESC, started_at",
    )
    .bind(ALIVE_SECONDS)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ReplicaInfo {
            this: r.id == me,
            id: r.id,
            address: r.address,
            version: r.version,
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
            alive: r.alive,
            hosts: r.hosts,
        })
        .collect())
}

/// Whether this transaction is the one replica doing `task` now (a transaction-level
/// advisory lock, released at commit or rollback). Another replica already at it makes this
/// false at once: the caller skips its turn, and watermarks make the next turn pick up
/// whatever was skipped.
pub async fn once(tx: &mut Tx, task: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('concierge.' || $1))")
            .bind(task)
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// The right to write a host's observations: the replica and the lease epoch its actor was
/// started under (see the `host_leases` migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub replica: Uuid,
    pub epoch: i64,
}

impl Fence {
    /// Takes the host's lease row FOR SHARE in `tx` if it still names this owner and epoch:
    /// the lease cannot change hands until `tx` ends, so everything `tx` writes for the host
    /// is this owner's. Otherwise `Error::Fenced`, and the caller writes nothing.
    pub async fn hold(&self, tx: &mut Tx, host: Uuid) -> Result<()> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT epoch FROM host_leases WHERE host_id = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
        )
        .bind(host)
        .bind(self.replica)
        .bind(self.epoch)
        .fetch_optional(&mut **tx)
        .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(crate::platform::error::Error::Fenced(host)),
        }
    }
}
