//! Quota check-and-reserve under contention: 100 submissions against one tenant's quota at
//! once, each in a transaction shaped like a real submission (insert the request, then
//! reserve last, then commit), on a fresh PostgreSQL database.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench quota
//!
//! Prints per round: how many reservations succeeded (must equal the limit), and the latency
//! of the reserve call (`quota::reserve`: waiting for the tenant's row lock, the check, the
//! ledger rows and the asynchronous commit), of the request's INSERT just before it (the same
//! load without the quota row: the control), and of the whole submission (waiting for a pooled
//! connection and the final flush included), p50/p99/max; then the medians over the rounds.
//!
//! The pool has the server's default size on 2 cores (`--db-connections`, 8); `QUOTA_BENCH_POOL=60`
//! gives every other submission a connection of its own, so all of them run in PostgreSQL at
//! once and compete for the two cores.
use concierge::platform::db::{self, Scope};
use concierge::provisioning::quota::{self, Amount};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use uuid::Uuid;

const SUBMISSIONS: usize = 100;
/// The server's default pool size on 2 cores; submissions beyond it wait for a connection.
const POOL: u32 = 8;
const LIMIT: i32 = 40;
const ROUNDS: usize = 7;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL (a server whose user may create databases)");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin.clone());
    let name = format!("concierge_bench_{}", Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base}/{name}");
    let pool_size: u32 = std::env::var("QUOTA_BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(POOL);
    println!("{SUBMISSIONS} submissions, pool of {pool_size} connections, {ROUNDS} rounds");
    let pool = db::prepare(&url, pool_size, uuid::Uuid::new_v4()).await?;
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;

    let user: Uuid = sqlx::query_scalar(
        "INSERT INTO users (email, display_name, password_hash) VALUES ('bench@example.com', 'Bench', 'x') RETURNING id",
    )
    .fetch_one(&owner)
    .await?;
    let template: Uuid = sqlx::query_scalar(
        "INSERT INTO templates (name, os, sizes, default_lease_days, max_lease_days, all_tenants, published)
         VALUES ('Bench', 'none', '[{\"name\":\"s\",\"vcpus\":1,\"memory_mib\":1024,\"disk_gib\":10}]', 1, 1, true, true) RETURNING id",
    )
    .fetch_one(&owner)
    .await?;
    // Warm the pool so connection set-up is not measured.
    let warm: Vec<_> = (0..pool_size).map(|_| pool.acquire()).collect();
    let conns = futures::future::try_join_all(warm).await?;
    drop(conns);

    let (mut p50s, mut p99s, mut tx_p99s) = (Vec::new(), Vec::new(), Vec::new());
    let mut insert_p99s = Vec::new();
    for round in 0..ROUNDS {
        let tenant: Uuid = sqlx::query_scalar(&format!(
            "INSERT INTO tenants (name) VALUES ('bench-{round}') RETURNING id"
        ))
        .fetch_one(&owner)
        .await?;
        sqlx::query("UPDATE tenant_quotas SET max_vcpus = $2, max_vms = 100000, max_memory_mib = 100000000, max_disk_gib = 10000000 WHERE tenant_id = $1")
            .bind(tenant)
            .bind(LIMIT)
            .execute(&owner)
            .await?;
        let barrier = Arc::new(Barrier::new(SUBMISSIONS));
        let tasks: Vec<_> = (0..SUBMISSIONS)
            .map(|_| {
                let (pool, barrier) = (pool.clone(), barrier.clone());
                tokio::spawn(async move {
                    let scope = Scope {
                        user: Some(user),
                        tenant: Some(tenant),
                        fleet: false,
                    };
                    barrier.wait().await;
                    let started = Instant::now();
                    let mut tx = db::begin(&pool, scope).await?;
                    let id = Uuid::new_v4();
                    let insert_start = Instant::now();
                    sqlx::query(
                        "INSERT INTO requests (id, tenant_id, requester_id, template_id, size_name, vcpus, memory_mib, disk_gib,
                                               count, name_prefix, lease_days, purpose, state, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, 's', 1, 1024, 10, 1, 'b', 1, 'bench', 'submitted', now(), now())",
                    )
                    .bind(id)
                    .bind(tenant)
                    .bind(user)
                    .bind(template)
                    .execute(&mut *tx)
                    .await?;
                    let insert = insert_start.elapsed();
                    let reserve_start = Instant::now();
                    let ok = quota::reserve(
                        &mut tx,
                        tenant,
                        user,
                        id,
                        Amount::vm(1, 1024, 10),
                        &[Uuid::new_v4()],
                        time::OffsetDateTime::now_utc(),
                    )
                    .await
                    .is_ok();
                    let reserve = reserve_start.elapsed();
                    if ok {
                        tx.commit().await?;
                    } else {
                        tx.rollback().await?;
                    }
                    Ok::<_, concierge::platform::error::Error>((ok, insert, reserve, started.elapsed()))
                })
            })
            .collect();
        let (mut inserts, mut reserves, mut totals) = (Vec::new(), Vec::new(), Vec::new());
        let mut succeeded = 0;
        for t in tasks {
            let (ok, insert, reserve, total) = t.await??;
            succeeded += usize::from(ok);
            inserts.push(insert);
            reserves.push(reserve);
            totals.push(total);
        }
        inserts.sort();
        reserves.sort();
        totals.sort();
        let used: i32 =
            sqlx::query_scalar("SELECT used_vcpus FROM tenant_quotas WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&owner)
                .await?;
        assert_eq!(succeeded as i32, LIMIT, "exactly the limit succeeds");
        assert_eq!(used, LIMIT, "usage never passes the limit");
        println!(
            "round {round}: {succeeded}/{SUBMISSIONS} reserved (limit {LIMIT}); reserve p50 {:.2} ms p99 {:.2} ms max {:.2} ms; insert (control) p99 {:.2} ms; whole submission p50 {:.2} ms p99 {:.2} ms",
            pct(&reserves, 0.5),
            pct(&reserves, 0.99),
            pct(&reserves, 1.0),
            pct(&inserts, 0.99),
            pct(&totals, 0.5),
            pct(&totals, 0.99),
        );
        p50s.push(pct(&reserves, 0.5));
        p99s.push(pct(&reserves, 0.99));
        tx_p99s.push(pct(&totals, 0.99));
        insert_p99s.push(pct(&inserts, 0.99));
    }
    println!(
        "median over {ROUNDS} rounds: reserve p50 {:.2} ms, reserve p99 {:.2} ms, insert (control) p99 {:.2} ms, whole submission p99 {:.2} ms",
        median(p50s),
        median(p99s),
        median(insert_p99s),
        median(tx_p99s)
    );
    pool.close().await;
    owner.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    Ok(())
}
