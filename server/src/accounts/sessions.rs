//! Browser sessions: the tower-sessions cookie points at a `user_sessions` row, which this
//! module creates at sign-in, resolves to an actor on every request, and ends.
use crate::platform::clock::Clock;
use crate::platform::db;
use crate::platform::error::Result;
use app::account::{Actor, Membership};
use app::error::AppError;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;
use uuid::Uuid;

const KEY: &str = "sid";
/// How stale `last_seen_at` may get before a request refreshes it (saves a write per request).
const TOUCH_EVERY: Duration = Duration::seconds(60);

/// Resolved actors by session, so most requests need no database round trip. Every committed
/// change to accounts, memberships or tenants bumps the generation, which retires all entries;
/// a load that raced with a change is not stored. Entries also expire after a few seconds,
/// which bounds staleness if another process changed the data.
pub struct ActorCache {
    generation: AtomicU64,
    entries: moka::sync::Cache<Uuid, Cached>,
}

#[derive(Clone)]
struct Cached {
    generation: u64,
    row: Arc<ActorRow>,
}

impl Default for ActorCache {
    fn default() -> Self {
        ActorCache {
            generation: AtomicU64::new(0),
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(5))
                .build(),
        }
    }
}

impl ActorCache {
    /// Call after committing any change that can alter a resolved actor.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self, id: Uuid) -> Option<Arc<ActorRow>> {
        let hit = self.entries.get(&id)?;
        (hit.generation == self.generation.load(Ordering::SeqCst)).then_some(hit.row)
    }

    fn forget(&self, id: Uuid) {
        self.entries.invalidate(&id);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Duration,
    pub absolute: Duration,
}

/// Starts a session for `user_id` under a fresh session id (no fixation).
pub async fn start(
    pool: &PgPool,
    session: &Session,
    user_id: Uuid,
    client_addr: Option<IpAddr>,
    user_agent: Option<&str>,
    now: OffsetDateTime,
) -> Result<Uuid> {
    // Signing in over an existing session (e.g. switching accounts) replaces it.
    if let Some(old) = session.get::<Uuid>(KEY).await? {
        sqlx::query("DELETE FROM user_sessions WHERE id = $1")
            .bind(old)
            .execute(pool)
            .await?;
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO user_sessions (user_id, created_at, last_seen_at, client_addr, user_agent)
         VALUES ($1, $2, $2, $3, $4) RETURNING id",
    )
    .bind(user_id)
    .bind(now)
    .bind(client_addr.map(sqlx::types::ipnetwork::IpNetwork::from))
    .bind(user_agent.map(|ua| ua.chars().take(300).collect::<String>()))
    .fetch_one(pool)
    .await?;
    session.cycle_id().await?;
    session.insert(KEY, id).await?;
    Ok(id)
}

/// Gives the current session a new id (after a privilege change such as a new password).
pub async fn rotate(session: &Session) -> Result<()> {
    Ok(session.cycle_id().await?)
}

/// Ends the session in the database and clears the cookie's record.
pub async fn end(pool: &PgPool, session: &Session) -> Result<Option<Uuid>> {
    let id: Option<Uuid> = session.get(KEY).await?;
    if let Some(id) = id {
        sqlx::query("DELETE FROM user_sessions WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    }
    session.flush().await?;
    Ok(id)
}

#[derive(sqlx::FromRow, Clone)]
struct ActorRow {
    user_id: Uuid,
    email: String,
    display_name: String,
    fleet_admin: bool,
    must_change_password: bool,
    disabled: bool,
    created_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
    memberships: sqlx::types::Json<Vec<Membership>>,
    must_enrol_two_factor: bool,
}

/// The actor behind this request's session, if it is still valid. Expired, ended and
/// disabled sessions are removed and the cookie's record cleared.
pub async fn resolve(
    pool: &PgPool,
    cache: &ActorCache,
    session: &Session,
    clock: &dyn Clock,
    timeouts: Timeouts,
) -> Result<Option<Actor>> {
    let Some(id) = session.get::<Uuid>(KEY).await? else {
        return Ok(None);
    };
    let Some(row) = load(pool, cache, id).await? else {
        // Ended elsewhere (sign-out on another device, user disabled, password reset).
        session.flush().await?;
        return Ok(None);
    };
    let now = clock.now();
    if row.expired(now, timeouts) {
        cache.forget(id);
        end(pool, session).await?;
        return Ok(None);
    }
    if now - row.last_seen_at > TOUCH_EVERY {
        sqlx::query("UPDATE user_sessions SET last_seen_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?;
        cache.forget(id);
        // Marks the record modified so the store extends its inactivity expiry too.
        session.insert("seen", now.unix_timestamp()).await?;
    }
    Ok(Some(row.actor(id)))
}

/// The session's actor as it is now, for a long-lived stream opened under it: `None` once the
/// session ended, expired or its user was disabled. Reads like `resolve` (mostly from the
/// cache) but changes nothing.
pub async fn current(
    pool: &PgPool,
    cache: &ActorCache,
    id: Uuid,
    clock: &dyn Clock,
    timeouts: Timeouts,
) -> Result<Option<Actor>, AppError> {
    Ok(load(pool, cache, id)
        .await?
        .filter(|row| !row.expired(clock.now(), timeouts))
        .map(|row| row.actor(id)))
}

/// The session's row with its user and memberships, from the cache or the database.
async fn load(pool: &PgPool, cache: &ActorCache, id: Uuid) -> Result<Option<Arc<ActorRow>>> {
    if let Some(row) = cache.get(id) {
        return Ok(Some(row));
    }
    let generation = cache.generation.load(Ordering::SeqCst);
    let row: Option<ActorRow> = sqlx::query_as("SELECT * FROM session_actor($1)")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let row = Arc::new(row);
    // A load that raced with a change is not stored.
    if generation == cache.generation.load(Ordering::SeqCst) {
        cache.entries.insert(
            id,
            Cached {
                generation,
                row: row.clone(),
            },
        );
    }
    Ok(Some(row))
}

impl ActorRow {
    fn expired(&self, now: OffsetDateTime, timeouts: Timeouts) -> bool {
        self.disabled
            || now - self.last_seen_at > timeouts.idle
            || now - self.created_at > timeouts.absolute
    }

    fn actor(&self, session_id: Uuid) -> Actor {
        Actor {
            user_id: self.user_id,
            session_id,
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            fleet_admin: self.fleet_admin,
            must_change_password: self.must_change_password,
            must_enrol_two_factor: self.must_enrol_two_factor,
            memberships: self.memberships.0.clone(),
        }
    }
}

/// Ends every session of a user at once (disabled, password reset, new privileges).
pub async fn end_all_for(tx: &mut db::Tx, user_id: Uuid) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM user_sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}
