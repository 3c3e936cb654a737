//! The tamper-evident audit trail's costs (issue 19):
//!
//! 1. Append overhead: 100 concurrent audited actions in one tenant (each a transaction that
//!    updates a row and writes its audit row, as every action does), p99 latency with the
//!    chain's seal on and, as the control in the same run, with its trigger switched off;
//!    alternating rounds, medians. Target: < 2 ms added at p99.
//! 2. `audit verify` of 1,000,000 rows in one chain (the library call the command makes), and
//!    as the control the same rows only streamed from PostgreSQL, not hashed. Target: < 10 s.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench audit
use concierge::config::Config;
use concierge::platform::audit::{self, integrity, Event, Origin};
use concierge::platform::clock::SystemClock;
use concierge::platform::db::{self, Scope};
use concierge::Server;
use futures::TryStreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WRITERS: usize = 100;
const ACTIONS_PER_WRITER: usize = 40;
const ROUNDS: usize = 3;
const VERIFY_ROWS: i64 = 1_000_000;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One round: every writer runs its actions back to back; answers (p50, p99) in ms.
async fn round(pool: &sqlx::PgPool, tenant: Uuid) -> anyhow::Result<(f64, f64)> {
    let mut tasks = vec![];
    for w in 0..WRITERS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(ACTIONS_PER_WRITER);
            for i in 0..ACTIONS_PER_WRITER {
                let started = Instant::now();
                let mut tx = db::begin(&pool, Scope::tenant(tenant)).await?;
                sqlx::query("UPDATE bench_things SET n = n + 1 WHERE id = $1")
                    .bind(w as i32)
                    .execute(&mut *tx)
                    .await?;
                audit::record(
                    &mut tx,
                    &Origin {
                        actor_email: Some(format!("writer{w}@example.com")),
                        ..Origin::default()
                    },
                    Event::new("bench.action", "thing", w)
                        .tenant(tenant)
                        .after(serde_json::json!({ "n": i })),
                )
                .await?;
                tx.commit().await?;
                took.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(took)
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((percentile(&mut all, 0.5), percentile(&mut all, 0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL (a server whose user may create databases)");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let name = format!("concierge_bench_{}", Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base}/{name}");
    let mut config = Config::for_tests(&url);
    config.local_host = false;
    // One connection per writer would exceed PostgreSQL's default of 100 with the rest of
    // the machine's clients; 60 keeps every core busy and the queue short.
    config.db_connections = 60;
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let pool = server.state.pool.clone();
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ('Bench') RETURNING id")
            .fetch_one(&owner)
            .await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE bench_things (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO bench_things SELECT g, 0 FROM generate_series(0, {}) g;
         GRANT SELECT, UPDATE ON bench_things TO concierge_app;",
        WRITERS
    ))
    .execute(&owner)
    .await?;

    println!(
        "append: {WRITERS} concurrent writers × {ACTIONS_PER_WRITER} audited actions in one tenant, {ROUNDS} rounds each way"
    );
    round(&pool, tenant).await?; // warm-up
    let (mut on, mut off) = (vec![], vec![]);
    for r in 0..ROUNDS {
        for sealed in [false, true] {
            sqlx::raw_sql(if sealed {
                "ALTER TABLE audit_log ENABLE TRIGGER audit_seal"
            } else {
                "ALTER TABLE audit_log DISABLE TRIGGER audit_seal"
            })
            .execute(&owner)
            .await?;
            let (p50, p99) = round(&pool, tenant).await?;
            println!(
                "  round {r} {:>9}: p50 {p50:6.2} ms  p99 {p99:6.2} ms",
                if sealed { "chained" } else { "control" }
            );
            if sealed { &mut on } else { &mut off }.push(p99);
        }
    }
    let (p_on, p_off) = (median(on), median(off));
    println!(
        "append p99 median: chained {p_on:.2} ms, control {p_off:.2} ms, added {:.2} ms (target < 2 ms)",
        p_on - p_off
    );
    // The control rounds' rows were never sealed: seal them now so the chain verifies.
    sqlx::raw_sql("SELECT audit_seal_pending(0)")
        .execute(&owner)
        .await?;

    // 1,000,000 rows in one chain (sealed at the commit of this one statement).
    let have: i64 = sqlx::query_scalar("SELECT seq FROM audit_chains WHERE chain = $1")
        .bind(tenant)
        .fetch_one(&owner)
        .await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor_email, action, object_type, object_id, after, client_addr)
         SELECT $1, 'writer' || (g % 100) || '@example.com', 'bench.bulk', 'thing', g::text,
                jsonb_build_object('n', g, 'name', 'bench-' || g), '192.0.2.1'
         FROM generate_series(1, $2) g",
    )
    .bind(tenant)
    .bind(VERIFY_ROWS - have)
    .execute(&owner)
    .await?;
    println!(
        "\nverify: {VERIFY_ROWS} rows in one chain (written and sealed in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    sqlx::raw_sql("VACUUM ANALYZE audit_log")
        .execute(&owner)
        .await?;
    let (mut verify, mut stream) = (vec![], vec![]);
    for r in 0..ROUNDS {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let started = Instant::now();
        let sql = format!(
            "SELECT {} FROM audit_log a WHERE a.chain = $1 AND a.seq > 0 ORDER BY a.seq",
            audit::chain::SEALED_COLUMNS
        );
        let mut rows = sqlx::query_as::<_, audit::chain::SealedRow>(&sql)
            .bind(tenant)
            .fetch(&mut conn);
        let mut n = 0u64;
        while rows.try_next().await?.is_some() {
            n += 1;
        }
        drop(rows);
        let streamed = started.elapsed();
        let started = Instant::now();
        let outcomes = integrity::verify(
            &mut conn,
            integrity::Verify {
                chains: Some(vec![tenant]),
                ..Default::default()
            },
        )
        .await?;
        let took = started.elapsed();
        assert_eq!(outcomes[0].problem, None, "{outcomes:?}");
        assert_eq!(outcomes[0].intact_to, VERIFY_ROWS);
        println!(
            "  round {r}: verify {:.2} s (intact up to {}); control, rows streamed only: {:.2} s ({n} rows)",
            took.as_secs_f64(),
            outcomes[0].intact_to,
            streamed.as_secs_f64()
        );
        verify.push(took.as_secs_f64());
        stream.push(streamed.as_secs_f64());
    }
    println!(
        "verify median: {:.2} s (target < 10 s); streaming alone {:.2} s",
        median(verify),
        median(stream)
    );

    drop(pool);
    owner.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await;
    Ok(())
}
