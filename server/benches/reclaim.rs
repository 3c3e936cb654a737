//! Reclamation rule evaluation at the scale: 10,000 portal VMs in 10 tenants, 30 days
//! of hourly metric buckets each (7.2 million rows), served by the real server in this process
//! over a fresh database.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench reclaim
//!
//! Measures (medians of RUNS): the idle rule over every tenant (the dry run and the periodic
//! check run this same statement), and the reports page's p50/p99 for 10 s of back-to-back
//! requests while nothing else runs (the control) and while the evaluation runs in a loop.
use concierge::config::Config;
use concierge::hypervisor::simulation;
use concierge::platform::clock::SystemClock;
use concierge::platform::db::{self, Scope};
use concierge::reclamation::rules::{self, Rule};
use concierge::Server;
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VMS: usize = 10_000;
const TENANTS: usize = 10;
const DAYS: i32 = 30;
const RUNS: usize = 3;
const ADMIN_PASSWORD: &str = "bench-admin-password";

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let base_url = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let name = format!("concierge_bench_{}", uuid::Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base_url}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base_url}/{name}");
    let result = run(&url).await;
    // RECLAIM_BENCH_KEEP=1 keeps the seeded database for EXPLAIN in psql.
    if std::env::var("RECLAIM_BENCH_KEEP").as_deref() == Ok("1") {
        println!("kept database {name}");
    } else {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&maint)
            .await?;
    }
    result
}

/// Back-to-back GETs of `path` for `secs`; each request's milliseconds.
async fn page_times(base: &str, cookie: &str, path: &str, secs: u64) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut ms = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        let res = client
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .header("Accept", "text/html")
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
        res.bytes().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(ms)
}

async fn run(url: &str) -> anyhow::Result<()> {
    let mut config = Config::for_tests(url);
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.reconcile_seconds = 3600;
    config.lease_check_seconds = 3600;
    config.reclamation_check_seconds = 3600;
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", server.addr);
    let state = server.state.clone();
    tokio::spawn(server.run());
    let owner = PgPoolOptions::new().max_connections(2).connect(url).await?;

    let dir = std::env::temp_dir().join(format!(
        "concierge-reclaim-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let uri = simulation::write_node(&dir, "bench", 0)?;
    let t = Instant::now();
    for sql in [
        format!("INSERT INTO hosts (name, uri, simulated) VALUES ('bench', '{uri}', true)"),
        format!("INSERT INTO tenants (name) SELECT 'Tenant ' || i FROM generate_series(1, {TENANTS}) i"),
        // Every third VM idle (1 % CPU), the others busy (30 %); hourly buckets of 12 samples.
        format!(
            "INSERT INTO vms (uuid, tenant_id, name, vcpus, memory_mib, disk_gib, host_id, phase,
                              lease_ends_at, created_at, updated_at)
             SELECT gen_random_uuid(), t.id, 'vm-' || i, 2, 4096, 20, h.id, 'running',
                    now() + interval '90 days', now() - interval '60 days', now()
             FROM generate_series(1, {VMS}) i
             JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM tenants) t ON t.n = i % {TENANTS}
             CROSS JOIN (SELECT id FROM hosts LIMIT 1) h"
        ),
        format!(
            "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n,
                                         cpu_min, cpu_sum, cpu_max, rd_sum, wr_sum, rx_sum, tx_sum)
             SELECT 3600, v.uuid, b, false, v.host_id, v.tenant_id, 12, 12, 0,
                    12 * CASE WHEN substr(v.name, 4)::int % 3 = 0 THEN 1 ELSE 30 END, 100,
                    12 * 1024.0, 0, 12 * 512.0, 0
             FROM vms v, generate_series(date_trunc('hour', now()) - interval '{DAYS} days',
                                         date_trunc('hour', now()) - interval '1 hour', interval '1 hour') b"
        ),
        "VACUUM ANALYZE".to_string(),
    ] {
        sqlx::query(&sql).execute(&owner).await?;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_rollups")
        .fetch_one(&owner)
        .await?;
    println!(
        "seed: {VMS} VMs, {rows} hourly buckets in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // The daily buckets with their hours, as the rollup writes them when each day completes.
    let t = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    concierge::metering::metrics::roll_days(
        &state.pool,
        now - time::Duration::days(i64::from(DAYS) + 1),
        now,
    )
    .await?;
    sqlx::query("VACUUM ANALYZE metric_rollups")
        .execute(&owner)
        .await?;
    println!("daily buckets rolled in {:.0} s", t.elapsed().as_secs_f64());

    sqlx::query("UPDATE users SET must_change_password = false WHERE lower(email) = 'admin@concierge.local'")
        .execute(&owner)
        .await?;
    let res = reqwest::Client::new()
        .post(format!("{base}/api/login"))
        .header("Origin", &base)
        .header("Sec-Fetch-Site", "same-origin")
        .form(&[
            ("email", "admin@concierge.local"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "login: {}", res.status());
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("concierge="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();

    let tenants: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&owner)
        .await?;
    let rule = Rule {
        kind: "idle".into(),
        enabled: true,
        days: DAYS,
        cpu_pct: 5.0,
        mem_pct: 50.0,
        io_kbps: 100.0,
        net_kbps: 20.0,
        share_pct: 90,
        action: "stop".into(),
        response_days: 7,
    };
    let evaluate = {
        let (pool, tenants, rule) = (state.pool.clone(), tenants.clone(), rule.clone());
        move || {
            let (pool, tenants, rule) = (pool.clone(), tenants.clone(), rule.clone());
            async move {
                let t = Instant::now();
                let mut tx = db::begin(&pool, Scope::fleet()).await?;
                let found =
                    rules::candidates(&mut tx, &tenants, &rule, time::OffsetDateTime::now_utc())
                        .await?;
                db::done(tx);
                anyhow::Ok((t.elapsed().as_secs_f64(), found.len()))
            }
        }
    };
    let mut evals = Vec::new();
    for round in 0..RUNS {
        let (secs, found) = evaluate().await?;
        anyhow::ensure!(
            found == VMS / 3,
            "found {found} idle VMs, expected {}",
            VMS / 3
        );
        println!(
            "round {}: idle rule over {VMS} VMs × {DAYS} days: {secs:.2} s ({found} match)",
            round + 1
        );
        evals.push(secs);
    }
    println!("median evaluation: {:.2} s (target < 2 s)", median(evals));

    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..RUNS {
        let q = page_times(&base, &cookie, "/reports", 10).await?;
        let running = Arc::new(AtomicBool::new(true));
        let looping = {
            let (running, evaluate) = (running.clone(), evaluate.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    evaluate().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        };
        let b = page_times(&base, &cookie, "/reports", 10).await?;
        running.store(false, Ordering::Relaxed);
        let n = looping.await??;
        println!(
            "reports page: quiet p50 {:.1} ms p99 {:.1} ms ({} requests); during {n} evaluations p50 {:.1} ms p99 {:.1} ms ({} requests)",
            percentile(q.clone(), 0.5),
            percentile(q.clone(), 0.99),
            q.len(),
            percentile(b.clone(), 0.5),
            percentile(b.clone(), 0.99),
            b.len()
        );
        quiet.push(percentile(q, 0.99));
        busy.push(percentile(b, 0.99));
    }
    let (q, b) = (median(quiet), median(busy));
    println!(
        "median reports page p99: quiet {q:.1} ms, during evaluation {b:.1} ms (×{:.2})",
        b / q
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
