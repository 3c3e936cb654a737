//! Fleet reconcile benchmark: 100 simulated hosts × 100 domains (libvirt's test driver with
//! `test:///…node.xml` files) against a fresh PostgreSQL database.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench reconcile
//!
//! Prints, over several rounds: the wall time of a full reconcile of every host (re-read
//! everything, write all 10,000 rows) and of a steady-state reconcile (nothing changed),
//! and the process's resident memory with the inventory loaded.
use concierge::hypervisor::{simulation, Hypervisors};
use concierge::platform::db;
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};

const HOSTS: usize = 100;
const DOMAINS: usize = 100;
const ROUNDS: usize = 5;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
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
    let name = format!("concierge_bench_{}", uuid::Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base}/{name}");
    let replica_id = uuid::Uuid::new_v4();
    let pool = db::prepare(&url, 16, replica_id).await?;

    let dir =
        std::env::temp_dir().join(format!("concierge-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut ids = Vec::new();
    for h in 0..HOSTS {
        let uri = simulation::write_node(&dir, &format!("bench-{h:03}"), DOMAINS)?;
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true) RETURNING id",
        )
        .bind(format!("bench-{h:03}"))
        .bind(uri)
        .fetch_one(&maint_owner(&url).await?)
        .await?;
        ids.push(id);
    }
    let rss_before = rss_mib();
    // Baseline: libvirt's test driver keeps each simulated host inside our process. Opening
    // and listing them without Concierge shows what of the RSS is libvirt's, not ours.
    if std::env::var("RSS_BASELINE").is_ok_and(|v| v == "1") {
        concierge::hypervisor::events::ensure_event_loop();
        let uris: Vec<String> = sqlx::query_scalar("SELECT uri FROM hosts ORDER BY name")
            .fetch_all(&maint_owner(&url).await?)
            .await?;
        let mut conns = Vec::new();
        for uri in uris {
            let c = virt::connect::Connect::open(Some(&uri))?;
            let n = c.list_all_domains(0)?.len();
            assert_eq!(n, DOMAINS);
            conns.push(c);
        }
        println!(
            "baseline: {HOSTS} test-driver hosts opened and listed without Concierge: RSS {:.0} MiB (before {:.0} MiB)",
            rss_mib(),
            rss_before
        );
        for c in conns {
            concierge::hypervisor::events::close(c);
        }
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&maint)
            .await?;
        return Ok(());
    }
    let replica =
        concierge::platform::cluster::Replica::register(&pool, "bench", replica_id).await?;
    let hv = Hypervisors::new(pool.clone(), replica.id, Duration::from_secs(3600), None);
    let opened = Instant::now();
    hv.claim_now().await?;
    // Wait for every host's first reconcile (it runs right after its connection opens).
    let owner = maint_owner(&url).await?;
    loop {
        let synced: i64 =
            sqlx::query_scalar("SELECT count(*) FROM hosts WHERE last_sync_at IS NOT NULL")
                .fetch_one(&owner)
                .await?;
        if synced as usize == HOSTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "open + first reconcile of {HOSTS} hosts × {DOMAINS} domains: {:.0} ms",
        opened.elapsed().as_secs_f64() * 1000.0
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM domains")
        .fetch_one(&owner)
        .await?;
    assert_eq!(rows as usize, HOSTS * DOMAINS);

    let mut full = Vec::new();
    let mut steady = Vec::new();
    for round in 0..ROUNDS {
        let t = Instant::now();
        let results = hv.reconcile_all(true).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let written: usize = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.written)
            .sum();
        assert_eq!(
            written,
            HOSTS * DOMAINS,
            "a full reconcile rewrites every row"
        );
        full.push(ms);
        let t = Instant::now();
        let results = hv.reconcile_all(false).await;
        let ms2 = t.elapsed().as_secs_f64() * 1000.0;
        assert!(results
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|r| r.written == 0)));
        steady.push(ms2);
        println!("round {round}: full reconcile (10,000 rows written) {ms:.0} ms; steady state (0 written) {ms2:.0} ms");
    }
    println!(
        "median of {ROUNDS}: full {:.0} ms, steady {:.0} ms; RSS {:.0} MiB (before hosts {:.0} MiB)",
        median(full),
        median(steady),
        rss_mib(),
        rss_before
    );
    // Lifecycle events → rows: suspend and resume domains on every host, then read how long
    // each event took from libvirt's callback to its committed row.
    hv.event_latencies.lock().expect("latencies").clear();
    let targets: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "SELECT DISTINCT ON (host_id) host_id, uuid FROM domains WHERE state = 'running' ORDER BY host_id, name",
    )
    .fetch_all(&owner)
    .await?;
    for _ in 0..5 {
        let suspends = targets
            .iter()
            .map(|(h, u)| hv.lifecycle(*h, *u, concierge::hypervisor::connection::Action::Suspend));
        for r in futures::future::join_all(suspends).await {
            r.map_err(anyhow::Error::msg)?;
        }
        let resumes = targets
            .iter()
            .map(|(h, u)| hv.lifecycle(*h, *u, concierge::hypervisor::connection::Action::Resume));
        for r in futures::future::join_all(resumes).await {
            r.map_err(anyhow::Error::msg)?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat: Vec<f64> = hv
        .event_latencies
        .lock()
        .expect("latencies")
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if !lat.is_empty() {
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "lifecycle event -> row: {} events from {} hosts at once, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            targets.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    hv.stop_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pool.close().await;
    owner.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn maint_owner(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(PgPoolOptions::new().max_connections(1).connect(url).await?)
}
