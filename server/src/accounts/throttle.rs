//! Failed sign-in counting: per account and per client address, over a sliding hour. Nothing
//! locks for good: old failures simply age out.
use crate::db;
use app::error::AppError;
use sqlx::types::ipnetwork::IpNetwork;
use sqlx::PgPool;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

const WINDOW: Duration = Duration::hours(1);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_account: i64,
    pub per_address: i64,
}

/// Refuses when the account or the address has too many recent failures.
pub async fn check(
    pool: &PgPool,
    limits: Limits,
    account: &str,
    addr: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<(), AppError> {
    let (by_account, by_addr): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM login_failures WHERE account = $1 AND at > $3),
                (SELECT count(*) FROM login_failures WHERE $2::inet IS NOT NULL AND client_addr = $2 AND at > $3)",
    )
    .bind(account)
    .bind(addr.map(IpNetwork::from))
    .bind(now - WINDOW)
    .fetch_one(pool)
    .await
    .map_err(db::internal)?;
    if by_account >= limits.per_account || by_addr >= limits.per_address {
        return Err(AppError::TooManyRequests);
    }
    Ok(())
}

pub async fn record_failure(
    pool: &PgPool,
    account: &str,
    addr: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO login_failures (account, client_addr, at) VALUES ($1, $2, $3)")
        .bind(account)
        .bind(addr.map(IpNetwork::from))
        .bind(now)
        .execute(pool)
        .await
        .map_err(db::internal)?;
    Ok(())
}

/// Drops failures older than the window (run periodically).
pub async fn prune(pool: &PgPool, now: OffsetDateTime) -> Result<u64, AppError> {
    Ok(sqlx::query("DELETE FROM login_failures WHERE at < $1")
        .bind(now - WINDOW)
        .execute(pool)
        .await
        .map_err(db::internal)?
        .rows_affected())
}
