//! A graceful shutdown and its deadline. The ACPI request returns at once and proves nothing:
//! the operation stays "running" (the VM page shows "shutting down…") until the hypervisor
//! reports the domain off, or the deadline passes and it is forced off. The wait is a job in
//! the queue, so a restart of the server does not lose the promised force-off.
use crate::hypervisor::{connection::Action, inventory::state_name, Hypervisors};
use crate::platform::db::{self, Scope};
use crate::platform::error::{Error, Result};
use crate::platform::jobs::{Job, JobKind, Outcome};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// How often the hypervisor is asked whether the guest is off yet.
const POLL: Duration = Duration::from_secs(1);

/// Forces a domain off for the system (an ended lease, a reclaimed VM) and records it in the
/// VM's operation log with `detail`, failed or not: the log is where its owner looks.
pub async fn force_off_logged(
    pool: &PgPool,
    hv: &Hypervisors,
    host: Uuid,
    vm: Uuid,
    tenant: Uuid,
    detail: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    let result = hv.lifecycle(host, vm, Action::ForceOff).await;
    if let Err(e) = &result {
        tracing::info!(%vm, error = %e, "forcing a VM off (it may be off already)");
    }
    let mut log = db::begin(pool, Scope::fleet()).await?;
    sqlx::query(
        "INSERT INTO domain_operations (host_id, domain_uuid, tenant_id, operation, status, error, detail, finished_at, duration_ms)
         VALUES ($1, $2, $3, 'force_off', $4, $5, $6, now(), $7)",
    )
    .bind(host)
    .bind(vm)
    .bind(tenant)
    .bind(if result.is_ok() { "succeeded" } else { "failed" })
    .bind(result.err())
    .bind(detail)
    .bind(i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX))
    .execute(&mut *log)
    .await?;
    Ok(log.commit().await?)
}

/// Queues the watch for operation `op_id` (in the transaction that records the request).
pub async fn watch(
    tx: &mut db::Tx,
    host_id: Uuid,
    uuid: Uuid,
    op_id: i64,
    timeout: Duration,
) -> Result<()> {
    let deadline = OffsetDateTime::now_utc() + timeout;
    crate::platform::jobs::enqueue(
        tx,
        JobKind::Shutdown,
        uuid,
        json!({
            "host_id": host_id,
            "operation_id": op_id,
            "deadline": deadline.unix_timestamp(),
            "timeout_seconds": timeout.as_secs(),
        }),
        // Attempts count only libvirt failures of the force-off itself.
        5,
    )
    .await
}

/// One look at the guest: off (done), still up before the deadline (look again soon), or
/// still up after it (forced off, and the operation says so).
pub async fn check(pool: &PgPool, hv: &Hypervisors, job: &Job) -> Result<(), Outcome> {
    let field = |k: &str| job.payload.get(k).cloned().unwrap_or_default();
    let host_id: Uuid = serde_json::from_value(field("host_id"))
        .map_err(|_| Outcome::Fail("shutdown job without a host".into()))?;
    let op_id = field("operation_id")
        .as_i64()
        .ok_or_else(|| Outcome::Fail("shutdown job without an operation".into()))?;
    let deadline = field("deadline").as_i64().unwrap_or(0);
    let timeout = field("timeout_seconds").as_u64().unwrap_or(0);
    let uuid = job.key;

    let state = hv
        .call(host_id, move |conn| {
            let dom = conn.lookup_domain_by_uuid(uuid)?;
            Ok(state_name(dom.info()?.state))
        })
        .await;
    match state {
        // Gone from the host (deleted meanwhile): nothing left to force.
        Err(e) if e.contains("not found") || e.contains("no domain") => {
            return finish(
                pool,
                op_id,
                "succeeded",
                None,
                Some("The VM left its host before it shut down.".into()),
            )
            .await;
        }
        Err(e) => return Err(Outcome::Retry(format!("reading the guest's state: {e}"))),
        Ok("shutoff") | Ok("crashed") => {
            return finish(
                pool,
                op_id,
                "succeeded",
                None,
                Some("The guest shut down.".into()),
            )
            .await;
        }
        Ok(_) => {}
    }
    if OffsetDateTime::now_utc().unix_timestamp() < deadline {
        return Err(Outcome::Wait(
            "waiting for the guest to shut down".into(),
            POLL,
        ));
    }
    tracing::info!(%host_id, %uuid, timeout, "graceful shutdown timed out; forcing off");
    match hv.lifecycle(host_id, uuid, Action::ForceOff).await {
        Ok(()) => {
            finish(
                pool,
                op_id,
                "succeeded",
                None,
                Some(format!(
                    "The guest did not shut down within {timeout} s; it was forced off."
                )),
            )
            .await
        }
        // The guest may have gone off between the look and the force.
        Err(e) if e.contains("not running") => {
            finish(
                pool,
                op_id,
                "succeeded",
                None,
                Some("The guest shut down.".into()),
            )
            .await
        }
        Err(e) if job.attempts < job.max_attempts => Err(Outcome::Retry(format!(
            "forcing off after the timeout: {e}"
        ))),
        Err(e) => {
            finish(
                pool,
                op_id,
                "failed",
                Some(format!(
                    "The guest did not shut down within {timeout} s and forcing it off failed: {e}"
                )),
                None,
            )
            .await
        }
    }
}

/// The job gave up (the queue's attempt cap): the operation must not stay "running".
pub async fn abandoned(pool: &PgPool, job: &Job, error: &str) {
    if let Some(op_id) = job.payload.get("operation_id").and_then(|v| v.as_i64()) {
        let _ = finish(pool, op_id, "failed", Some(error.to_string()), None).await;
    }
}

async fn finish(
    pool: &PgPool,
    op_id: i64,
    status: &str,
    error: Option<String>,
    detail: Option<String>,
) -> Result<(), Outcome> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query(
        "UPDATE domain_operations SET status = $2, error = $3, detail = $4, finished_at = now(),
                duration_ms = (extract(epoch FROM now() - started_at) * 1000)::int
         WHERE id = $1 AND status = 'running'",
    )
    .bind(op_id)
    .bind(status)
    .bind(error)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    // The VM page follows operations through the live stream.
    sqlx::query(
        "SELECT pg_notify('concierge_live', json_build_object(
                    'kind', 'operation', 'host_id', o.host_id, 'uuid', o.domain_uuid,
                    'tenant_id', d.tenant_id, 'owner_id', d.owner_id)::text)
         FROM domain_operations o LEFT JOIN domains d ON d.host_id = o.host_id AND d.uuid = o.domain_uuid
         WHERE o.id = $1",
    )
    .bind(op_id)
    .execute(&mut *tx)
        .await?;
    Ok(tx.commit().await.map_err(Error::from)?)
}
