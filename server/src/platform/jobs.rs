//! A PostgreSQL job queue: jobs are enqueued in the transaction that decides them, claimed
//! with `FOR UPDATE SKIP LOCKED` under a lease the runner keeps extending (heartbeat), and
//! retried with backoff up to an attempt cap. A runner that dies stops beating; its lease
//! lapses and another worker takes the job over, so every handler must be idempotent.
use crate::platform::db::Tx;
use crate::platform::error::Result;
use async_trait::async_trait;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// What a job does; stored as its `as_str` in `jobs.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Build and start a portal VM (key: the VM).
    Provision,
    /// Remove a portal VM's domain and disk and release its quota (key: the VM).
    Delete,
    /// Wait for a guest asked to shut down; force it off at the deadline (key: the domain).
    Shutdown,
    /// Wait for a new guest to answer on SSH; record its addresses (key: the VM).
    GuestReady,
    /// Copy an image to another host (key: `image_copy::copy_key`).
    ImageCopy,
    /// Send a notification's e-mail (key: the notification).
    Mail,
    /// Deliver an event to a webhook endpoint (key: the delivery).
    Webhook,
    /// Move a shut-off portal VM to another host (key: the VM).
    Migrate,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Delete => "delete",
            JobKind::Shutdown => "shutdown",
            JobKind::GuestReady => "guest_ready",
            JobKind::ImageCopy => "image_copy",
            JobKind::Mail => "mail",
            JobKind::Webhook => "webhook",
            JobKind::Migrate => "migrate",
        }
    }

    pub const ALL: [JobKind; 8] = [
        JobKind::Provision,
        JobKind::Delete,
        JobKind::Shutdown,
        JobKind::GuestReady,
        JobKind::ImageCopy,
        JobKind::Mail,
        JobKind::Webhook,
        JobKind::Migrate,
    ];

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub key: Uuid,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
}

/// How a run ended, short of success.
#[derive(Debug)]
pub enum Outcome {
    /// Try again later (counts as an attempt).
    Retry(String),
    /// Try again after this delay, which the handler chose (counts as an attempt).
    RetryIn(String, Duration),
    /// Nothing wrong, but not possible yet (no host has room): wait without using an attempt.
    Wait(String, Duration),
    /// Pointless to retry.
    Fail(String),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, job: &Job) -> Result<(), Outcome>;
    /// The job failed for good: undo what must be undone (release quota, mark failed).
    async fn failed(&self, job: &Job, error: &str);
}

/// Adds a job unless a live one with the same kind and key exists (then nothing happens).
pub async fn enqueue(
    tx: &mut Tx,
    kind: JobKind,
    key: Uuid,
    payload: serde_json::Value,
    max_attempts: i32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (kind, key, payload, max_attempts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, key) WHERE state IN ('queued', 'running') DO NOTHING",
    )
    .bind(kind.as_str())
    .bind(key)
    .bind(payload)
    .bind(max_attempts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Claims the oldest ready job, or one whose runner's lease lapsed, for `runner` (this
/// replica).
pub async fn claim(pool: &PgPool, lease: Duration, runner: Uuid) -> Result<Option<Job>> {
    Ok(sqlx::query_as(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                locked_until = now() + make_interval(secs => $1), locked_by = $2
         WHERE id = (SELECT id FROM jobs
                     WHERE (state = 'queued' AND run_at <= now()) OR (state = 'running' AND locked_until < now())
                     ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, key, payload, attempts, max_attempts",
    )
    .bind(lease.as_secs_f64())
    .bind(runner)
    .fetch_optional(pool)
    .await?)
}

// Heartbeats and outcomes are fenced by the runner: one paused past its lease (whose job
// another replica took over) neither extends the new lease nor overwrites its outcome.
pub async fn heartbeat(pool: &PgPool, id: i64, lease: Duration, runner: Uuid) -> Result<()> {
    sqlx::query("UPDATE jobs SET locked_until = now() + make_interval(secs => $2) WHERE id = $1 AND state = 'running' AND locked_by = $3")
        .bind(id)
        .bind(lease.as_secs_f64())
        .bind(runner)
        .execute(pool)
        .await?;
    Ok(())
}

async fn finish(
    pool: &PgPool,
    job: &Job,
    runner: Uuid,
    state: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = $2, last_error = coalesce($3, last_error), finished_at = now(), locked_until = NULL
         WHERE id = $1 AND state = 'running' AND locked_by = $4 AND attempts = $5",
    )
    .bind(job.id)
    .bind(state)
    .bind(error)
    .bind(runner)
    .bind(job.attempts)
    .execute(pool)
    .await?;
    Ok(())
}

async fn requeue(
    pool: &PgPool,
    job: &Job,
    runner: Uuid,
    error: &str,
    delay: Duration,
    refund_attempt: bool,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'queued', last_error = $2, run_at = now() + make_interval(secs => $3),
                locked_until = NULL, attempts = attempts - CASE WHEN $4 THEN 1 ELSE 0 END
         WHERE id = $1 AND state = 'running' AND locked_by = $5 AND attempts = $6",
    )
    .bind(job.id)
    .bind(error)
    .bind(delay.as_secs_f64())
    .bind(refund_attempt)
    .bind(runner)
    .bind(job.attempts)
    .execute(pool)
    .await?;
    Ok(())
}

/// Backoff after the n-th failed attempt: 1 s, 2 s, 4 s, … at most 5 minutes.
pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 9).saturating_sub(1)).min(Duration::from_secs(300))
}

/// Wakes idle workers at once when a job is enqueued in this process (other processes find
/// it on their next poll).
#[derive(Default)]
pub struct Queue {
    pub wake: Notify,
}

/// Runs `workers` loops that claim and run jobs until the process ends.
pub fn spawn_workers(
    pool: PgPool,
    queue: Arc<Queue>,
    handler: Arc<dyn Handler>,
    workers: usize,
    lease: Duration,
    runner: Uuid,
) {
    for _ in 0..workers.max(1) {
        let (pool, queue, handler) = (pool.clone(), queue.clone(), handler.clone());
        tokio::spawn(async move {
            loop {
                match claim(&pool, lease, runner).await {
                    Ok(Some(job)) => run_one(&pool, &*handler, job, lease, runner).await,
                    Ok(None) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified())
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming a job");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

#[tracing::instrument(skip_all, fields(job = job.id, kind = %job.kind, key = %job.key, attempt = job.attempts))]
async fn run_one(pool: &PgPool, handler: &dyn Handler, job: Job, lease: Duration, runner: Uuid) {
    let beat = {
        let pool = pool.clone();
        let id = job.id;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(lease / 3);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = heartbeat(&pool, id, lease, runner).await {
                    tracing::warn!(error = %e, "job heartbeat");
                }
            }
        })
    };
    let result = handler.run(&job).await;
    beat.abort();
    let written = match result {
        Ok(()) => finish(pool, &job, runner, "done", None).await,
        Err(Outcome::Wait(why, delay)) => requeue(pool, &job, runner, &why, delay, true).await,
        Err(Outcome::Retry(why)) if job.attempts < job.max_attempts => {
            tracing::info!(error = %why, "job will be retried");
            requeue(pool, &job, runner, &why, backoff(job.attempts), false).await
        }
        Err(Outcome::RetryIn(why, delay)) if job.attempts < job.max_attempts => {
            tracing::info!(error = %why, "job will be retried");
            requeue(pool, &job, runner, &why, delay, false).await
        }
        Err(Outcome::Retry(why)) | Err(Outcome::RetryIn(why, _)) | Err(Outcome::Fail(why)) => {
            tracing::warn!(error = %why, "job failed");
            handler.failed(&job, &why).await;
            finish(pool, &job, runner, "failed", Some(&why)).await
        }
    };
    if let Err(e) = written {
        // The lease lapses and the job runs again: handlers are idempotent.
        tracing::warn!(error = %e, "recording a job's outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_kinds_read_back_what_they_write() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(JobKind::parse("explode"), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(256));
    }
}
