//! Failed sign-in counting over a sliding hour. Refusals are per (account, client address)
//! and per address, so nobody can lock the real user out of their account from elsewhere; on
//! the account alone, sign-ins are slowed down, never refused. Old failures age out.
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use app::error::AppError;
use serde_json::json;
use sqlx::types::ipnetwork::IpNetwork;
use sqlx::PgPool;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

const WINDOW: Duration = Duration::hours(1);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failures of one account from one address before that pair is refused.
    pub per_account_address: i64,
    /// Failures from one address (any account) before that address is refused.
    pub per_address: i64,
    /// Failures of one account (any address) before its sign-ins are slowed down.
    pub slow_after: i64,
    /// Added wait per failure beyond `slow_after`, and its cap.
    pub delay_step: std::time::Duration,
    pub max_delay: std::time::Duration,
}

/// What the counts allow for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Answer only after this wait: the account has many recent failures.
    Slow(std::time::Duration),
}

/// Refuses when this address, or this account from this address, has too many recent
/// failures; otherwise says how long to hold the attempt. Refusals are audited.
pub async fn check(
    pool: &PgPool,
    limits: Limits,
    account: &str,
    addr: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<Verdict> {
    let (by_account, by_addr, by_pair): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM login_failures WHERE account = $1 AND at > $3),
                (SELECT count(*) FROM login_failures WHERE $2::inet IS NOT NULL AND client_addr = $2 AND at > $3),
                (SELECT count(*) FROM login_failures
                  WHERE account = $1 AND client_addr IS NOT DISTINCT FROM $2::inet AND at > $3)",
    )
    .bind(account)
    .bind(addr.map(IpNetwork::from))
    .bind(now - WINDOW)
    .fetch_one(pool)
    .await?;
    let refusal = if by_addr >= limits.per_address {
        Some("Too many failed sign-ins from your network. Try again in an hour.")
    } else if by_pair >= limits.per_account_address {
        Some("Too many failed sign-ins to this account from your network. Try again in an hour, or from another network.")
    } else {
        None
    };
    if let Some(message) = refusal {
        audited(pool, account, addr, "session.login_refused", by_account).await?;
        return Err(AppError::TooManyRequests(message.into()).into());
    }
    Ok(verdict(limits, by_account))
}

/// The wait for an account with `failures` in the window: none up to `slow_after`, then one
/// step more per failure, up to the cap.
pub fn verdict(limits: Limits, failures: i64) -> Verdict {
    let over = failures - limits.slow_after;
    if over < 0 {
        return Verdict::Go;
    }
    let steps = u32::try_from(over + 1).unwrap_or(u32::MAX);
    Verdict::Slow(
        limits
            .delay_step
            .saturating_mul(steps)
            .min(limits.max_delay),
    )
}

/// Counts a failure and audits it (the account as typed: it may not exist).
pub async fn record_failure(
    pool: &PgPool,
    account: &str,
    addr: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("INSERT INTO login_failures (account, client_addr, at) VALUES ($1, $2, $3)")
        .bind(account)
        .bind(addr.map(IpNetwork::from))
        .bind(now)
        .execute(pool)
        .await?;
    audited(pool, account, addr, "session.login_failed", 0).await
}

async fn audited(
    pool: &PgPool,
    account: &str,
    addr: Option<IpAddr>,
    action: &str,
    failures: i64,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::default()).await?;
    let origin = Origin {
        actor_id: None,
        actor_email: Some(account.to_string()),
        client_addr: addr,
    };
    let mut event = Event::new(action, "account", account);
    if failures > 0 {
        event = event.after(json!({ "failures_in_last_hour": failures }));
    }
    audit::record(&mut tx, &origin, event).await?;
    Ok(tx.commit().await?)
}

/// Drops failures older than the window (run periodically).
pub async fn prune(pool: &PgPool, now: OffsetDateTime) -> Result<u64> {
    let mut tx = pool.begin().await?;
    if !crate::platform::cluster::once(&mut tx, "login_failures").await? {
        return Ok(0);
    }
    let pruned = sqlx::query("DELETE FROM login_failures WHERE at < $1")
        .bind(now - WINDOW)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_with_failures_and_stops_at_the_cap() {
        let limits = Limits {
            per_account_address: 10,
            per_address: 300,
            slow_after: 5,
            delay_step: std::time::Duration::from_millis(100),
            max_delay: std::time::Duration::from_millis(350),
        };
        assert_eq!(verdict(limits, 0), Verdict::Go);
        assert_eq!(verdict(limits, 4), Verdict::Go);
        assert_eq!(
            verdict(limits, 5),
            Verdict::Slow(std::time::Duration::from_millis(100))
        );
        assert_eq!(
            verdict(limits, 6),
            Verdict::Slow(std::time::Duration::from_millis(200))
        );
        assert_eq!(
            verdict(limits, 1_000_000),
            Verdict::Slow(std::time::Duration::from_millis(350))
        );
    }
}
