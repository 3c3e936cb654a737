//! Monitoring and reports at fleet scale: 100 simulated hosts (libvirt's test driver), 10,000
//! portal VMs in 20 tenants, a year of usage (hourly for the last 30 days, daily before) and
//! metrics buckets, served by the real server in this process over a fresh database.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench fleet
//!
//! Measures (medians of RUNS):
//! - the fleet dashboard and the paginated list of every VM, at a fixed 500 requests/s with
//!   `oha` (open loop, latency corrected for coordinated omission): p50, p99;
//! - a year's usage report for the largest tenant (4,000 VMs), grouped by tenant and by VM;
//! - a lifecycle change → the event on an open page's `/live` stream, and the page's refetch.
use app::url::urlencode;
use concierge::config::Config;
use concierge::hypervisor::simulation;
use concierge::platform::clock::SystemClock;
use concierge::platform::list;
use concierge::Server;
use futures::StreamExt;
use sqlx::postgres::PgPoolOptions;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

// The server's allocator, so the figures are the server binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOSTS: usize = 100;
const DOMAINS: usize = 100;
/// Domains per host that no tenant owns: 5,000 in all, 100 pages of the drift list.
const DRIFT: usize = 50;
const RUNS: usize = 3;
const RATE: u32 = 500;
const ADMIN_PASSWORD: &str = "bench-admin-password";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The seed, as SQL over the inventory the hosts reported: tenants, users, portal VMs, a year
/// of usage and metric buckets.
const SEED: &[(&str, &str)] = &[
    ("tenants", "INSERT INTO tenants (name) SELECT format('Tenant %s', lpad(g::text, 2, '0')) FROM generate_series(1, 20) g"),
    ("users", "INSERT INTO users (email, display_name, password_hash, must_change_password)
               SELECT format('user%s@bench.local', g), format('User %s', g), $1, false FROM generate_series(1, 200) g"),
    ("memberships", "INSERT INTO memberships (tenant_id, user_id, role)
               SELECT t.id, u.id, 'requester' FROM users u
               JOIN tenants t ON t.name = format('Tenant %s', lpad((1 + (substring(u.email from 'user(\\d+)@')::int % 20))::text, 2, '0'))
               WHERE u.email LIKE '%@bench.local'"),
    // 40 % of the VMs in Tenant 01 (the largest), the rest spread over the others.
    // 10,000 of the 15,000 domains; the rest stay drift.
    ("managed domains", "WITH n AS (SELECT host_id, uuid, row_number() OVER (ORDER BY uuid) AS i FROM domains ORDER BY uuid LIMIT 10000),
               pick AS (SELECT host_id, uuid, i, CASE WHEN i % 10 < 4 THEN 1 ELSE 2 + (i % 19) END AS t FROM n),
               owners AS (SELECT m.tenant_id, m.user_id, t.name, row_number() OVER (PARTITION BY m.tenant_id ORDER BY m.user_id) AS k
                          FROM memberships m JOIN tenants t ON t.id = m.tenant_id)
               UPDATE domains d SET managed = true, tenant_id = o.tenant_id, owner_id = o.user_id
               FROM pick p JOIN owners o ON o.name = format('Tenant %s', lpad(p.t::text, 2, '0')) AND o.k = 1 + p.i % 10
               WHERE d.host_id = p.host_id AND d.uuid = p.uuid"),
    ("vms", "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib, host_id, phase, lease_ends_at, created_at, updated_at)
               SELECT uuid, tenant_id, owner_id, name, vcpus, memory_kib / 1024, 20, host_id, 'running',
                      now() + interval '30 days', now() - interval '400 days', now() - interval '400 days'
               FROM domains WHERE managed"),
    ("usage, hourly for 30 days", "INSERT INTO usage_hourly (vm_uuid, hour, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
               SELECT v.uuid, h, v.tenant_id, v.owner_id, NULL, v.vcpus, v.memory_mib / 1024.0, v.disk_gib, 1.0
               FROM vms v CROSS JOIN generate_series(date_trunc('hour', now()) - interval '30 days', date_trunc('hour', now()) - interval '1 hour', interval '1 hour') h"),
    ("usage, daily before", "INSERT INTO usage_hourly (vm_uuid, hour, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
               SELECT v.uuid, d, v.tenant_id, v.owner_id, NULL, 24 * v.vcpus, 24 * v.memory_mib / 1024.0, 24 * v.disk_gib, 24.0
               FROM vms v CROSS JOIN generate_series(date_trunc('day', now()) - interval '365 days', date_trunc('hour', now()) - interval '31 days', interval '1 day') d"),
    ("usage, monthly totals", "INSERT INTO usage_monthly (vm_uuid, month, tenant_id, owner_id, template_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
               SELECT vm_uuid, date_trunc('month', hour, 'UTC'), tenant_id, owner_id, template_id,
                      sum(vcpu_hours), sum(memory_gib_hours), sum(disk_gib_hours), sum(powered_on_hours)
               FROM usage_hourly GROUP BY 1, 2, 3, 4, 5"),
    ("usage watermark", "INSERT INTO usage_watermark (hour) VALUES (date_trunc('hour', now()))
               ON CONFLICT (id) DO UPDATE SET hour = EXCLUDED.hour"),
    ("rate card", "INSERT INTO rate_cards (currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from)
               VALUES ('EUR', 0.01, 0.005, 0.0001, now() - interval '2 years')"),
    // Host buckets: 5-minute for a day, hourly for 30 days, daily for a year.
    ("host metric buckets", "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, n, rate_n, cpu_min, cpu_sum, cpu_max, mem_min, mem_sum, mem_max, vms_min, vms_sum, vms_max)
               SELECT r.res, h.id, b, true, h.id, r.n, r.n, 10, r.n * (30 + 20 * sin(extract(epoch FROM b) / 20000 + hashtext(h.name) % 7)), 80,
                      1 << 30, r.n * (100::float8 * (1 << 30)), 200::int8 << 30, 60, r.n * 66.0, 70
               FROM hosts h,
                    (VALUES (300, 20, interval '1 day'), (3600, 240, interval '30 days'), (86400, 5760, interval '365 days')) AS r(res, n, span),
                    LATERAL generate_series(to_timestamp(floor(extract(epoch FROM now() - r.span) / r.res) * r.res), now() - make_interval(secs => r.res), make_interval(secs => r.res)) b
               ON CONFLICT DO NOTHING"),
    // VM buckets for the lists' sparklines: 5-minute for the last 6 hours.
    ("VM metric buckets", "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n, cpu_min, cpu_sum, cpu_max, mem_min, mem_sum, mem_max)
               SELECT 300, v.uuid, b, false, v.host_id, v.tenant_id, 20, 20, 1, 20 * (10 + 10 * sin(extract(epoch FROM b) / 3000)), 50, 1 << 29, 20::float8 * (1 << 29), 1 << 29
               FROM vms v, generate_series(to_timestamp(floor(extract(epoch FROM now() - interval '6 hours') / 300) * 300), now() - interval '5 minutes', interval '5 minutes') b
               ON CONFLICT DO NOTHING"),
    ("metric watermarks", "INSERT INTO metric_watermarks (resolution, upto)
               SELECT r, to_timestamp(floor(extract(epoch FROM now() - interval '30 seconds') / r) * r) FROM unnest(ARRAY[300, 3600, 86400]) r
               ON CONFLICT (resolution) DO UPDATE SET upto = EXCLUDED.upto"),
    // As autovacuum leaves a settled database: statistics, and visibility maps for the lists'
    // index-only scans.
    ("vacuum", "VACUUM ANALYZE"),
];

/// Signs in over HTTP and returns the session cookie (`name=value`).
async fn sign_in(base: &str, email: &str, password: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/login"))
        .header("Origin", base)
        .header("Sec-Fetch-Site", "same-origin")
        .form(&[("email", email), ("password", password)])
        .send()
        .await
        .expect("login");
    assert!(res.status().is_success(), "login: {}", res.status());
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("concierge="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// `oha` at a fixed rate for `secs`; returns (requests/s, p50 ms, p99 ms, status codes).
/// With `form`, a server-function call (POST, same-origin) instead of a page.
fn oha(url: &str, cookie: &str, secs: u32, form: Option<&str>) -> (f64, f64, f64, String) {
    let mut cmd = Command::new("oha");
    cmd.args([
        "-z",
        &format!("{secs}s"),
        "-c",
        "32",
        "-q",
        &RATE.to_string(),
    ])
    .args([
        "--latency-correction",
        "--no-tui",
        "--output-format",
        "json",
    ])
    .args(["-H", &format!("Cookie: {cookie}")]);
    // A page asks for HTML; a server-function call must not, or it is answered as a form
    // posted without JavaScript (a redirect back).
    if form.is_none() {
        cmd.args(["-H", "Accept: text/html"]);
    }
    if let Some(body) = form {
        let origin = url.split("/api/").next().unwrap_or(url);
        cmd.args([
            "-m",
            "POST",
            "-d",
            body,
            "-T",
            "application/x-www-form-urlencoded",
        ])
        .args([
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Sec-Fetch-Site: same-origin",
        ]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("oha on PATH (cargo install oha)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha's JSON");
    let p = &v["latencyPercentiles"];
    let codes = v["statusCodeDistribution"].to_string();
    (
        v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p["p50"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        p["p99"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        codes,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL (a server whose user may create databases)");
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
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    result
}

async fn run(url: &str) -> anyhow::Result<()> {
    let mut config = Config::for_tests(url);
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.db_connections = 16;
    config.reconcile_seconds = 3600;
    config.lease_check_seconds = 3600;
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", server.addr);
    let state = server.state.clone();
    tokio::spawn(server.run());
    let owner = PgPoolOptions::new().max_connections(2).connect(url).await?;

    // 100 simulated hosts, 100 domains each, inventoried by the server's own host actors.
    let dir =
        std::env::temp_dir().join(format!("concierge-fleet-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    for h in 0..HOSTS {
        let host = format!("bench-{h:03}");
        let uri = simulation::write_node(&dir, &host, DOMAINS + DRIFT)?;
        sqlx::query("INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true)")
            .bind(&host)
            .bind(&uri)
            .execute(&owner)
            .await?;
    }
    state.hypervisors.claim_now().await?;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM domains")
            .fetch_one(&owner)
            .await?;
        if n as usize == HOSTS * (DOMAINS + DRIFT) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "inventory: {} domains on {HOSTS} hosts in {:.1} s",
        HOSTS * (DOMAINS + DRIFT),
        t.elapsed().as_secs_f64()
    );
    let hash = state.accounts.hasher.hash("bench-password").await?;
    for (what, sql) in SEED {
        let t = Instant::now();
        let done = if sql.contains("$1") {
            sqlx::query(sql).bind(&hash).execute(&owner).await?
        } else {
            sqlx::query(sql).execute(&owner).await?
        };
        println!(
            "seed {what}: {} rows in {:.1} s",
            done.rows_affected(),
            t.elapsed().as_secs_f64()
        );
    }
    sqlx::query("UPDATE users SET must_change_password = false WHERE lower(email) = 'admin@concierge.local'")
        .execute(&owner)
        .await?;
    let admin = sign_in(&base, "admin@concierge.local", ADMIN_PASSWORD).await;
    // FLEET_HOLD=SECONDS keeps the seeded server up for profiling (perf, psql) before measuring.
    if let Some(secs) = std::env::var("FLEET_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("holding {secs} s: {base} (Cookie: {admin}), database {url}");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    // Pages (and, to tell rendering from data, the server functions behind them) at a fixed
    // 500 requests/s. FLEET_BENCH=pages,api,report,events picks parts (default: all).
    let parts = std::env::var("FLEET_BENCH").unwrap_or_else(|_| "pages,api,report,events".into());
    let mut targets: Vec<(&str, String, Option<&str>)> = Vec::new();
    if parts.contains("pages") {
        // Page 100 as its Next link reaches it: after the last row of page 99.
        let (lease, name, uuid): (time::OffsetDateTime, String, uuid::Uuid) = sqlx::query_as(
            "SELECT lease_ends_at, name, uuid FROM vms WHERE deleted_at IS NULL
             ORDER BY lease_ends_at, name, uuid OFFSET 99 * 25 - 1 LIMIT 1",
        )
        .fetch_one(&owner)
        .await?;
        let vm_cursor = list::cursor(&[list::timestamp(lease), name, uuid.to_string()]);
        let (name, host, uuid): (String, uuid::Uuid, uuid::Uuid) = sqlx::query_as(
            "SELECT name, host_id, uuid FROM domains WHERE NOT managed AND missing_since IS NULL
             ORDER BY name, host_id, uuid OFFSET 99 * 50 - 1 LIMIT 1",
        )
        .fetch_one(&owner)
        .await?;
        let drift_cursor = list::cursor(&[name, host.to_string(), uuid.to_string()]);
        targets.extend([
            ("fleet dashboard", "/dashboard".into(), None),
            ("every VM, page 1 by name", "/vms?all=1".into(), None),
            (
                "every VM, page 100 by lease, by number",
                "/vms?all=1&sort=lease&page=100".into(),
                None,
            ),
            (
                "every VM, page 100 by lease, after page 99",
                format!(
                    "/vms?all=1&sort=lease&page=100&after={}",
                    urlencode(&vm_cursor)
                ),
                None,
            ),
            ("drift, page 1", "/drift".into(), None),
            ("drift, page 100 by number", "/drift?page=100".into(), None),
            (
                "drift, page 100 after page 99",
                format!("/drift?page=100&after={}", urlencode(&drift_cursor)),
                None,
            ),
        ]);
    }
    if parts.contains("api") {
        targets.extend([
            (
                "server fn fleet_dashboard",
                "/api/fleet_dashboard".into(),
                Some(""),
            ),
            (
                "server fn my_vms (every VM, page 1)",
                "/api/my_vms".into(),
                Some("all=true"),
            ),
        ]);
    }
    for (what, path, form) in targets {
        if form.is_none() {
            let page = reqwest::Client::new()
                .get(format!("{base}{path}"))
                .header("Cookie", &admin)
                .send()
                .await?
                .text()
                .await?;
            println!("{what}: {} KiB of HTML", page.len() / 1024);
            assert!(
                page.contains("class=\"chart-frame\"")
                    || page.contains("/sparklines/cpu/")
                    || page.matches("unmanaged").count() >= 50,
                "{what} renders its chart frames, sparklines or drift rows"
            );
        }
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for i in 0..RUNS {
            let (rps, a, b, codes) = oha(&format!("{base}{path}"), &admin, 15, form);
            println!("{what} run {i}: {rps:.0} req/s, p50 {a:.2} ms, p99 {b:.2} ms, codes {codes}");
            p50.push(a);
            p99.push(b);
        }
        println!(
            "{what} at {RATE}/s: median p50 {:.2} ms, median p99 {:.2} ms",
            median(p50),
            median(p99)
        );
    }

    if !parts.contains("report") && !parts.contains("events") {
        return Ok(());
    }
    // A year's report for the largest tenant.
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'Tenant 01'")
        .fetch_one(&owner)
        .await?;
    let vms: i64 = sqlx::query_scalar("SELECT count(*) FROM vms WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&owner)
        .await?;
    let today = time::OffsetDateTime::now_utc().date();
    let from = (today - time::Duration::days(365)).to_string();
    let client = reqwest::Client::new();
    for group in ["tenant", "vm"] {
        let mut ms = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let res = client
                .post(format!("{base}/api/usage_report"))
                .header("Cookie", &admin)
                .header("Origin", &base)
                .header("Sec-Fetch-Site", "same-origin")
                .form(&[
                    ("tenant_id", tenant.to_string()),
                    ("from", from.clone()),
                    ("to", today.to_string()),
                    ("group_by", group.to_string()),
                ])
                .send()
                .await?;
            let status = res.status();
            let body = res.text().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(status.is_success(), "report: {status} {body}");
        }
        println!(
            "year report, largest tenant ({vms} VMs), by {group}: median {:.0} ms (runs {ms:.0?})",
            median(ms.clone())
        );
    }

    // Lifecycle change → event on an open page's live stream, then that page's refetch.
    let running: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "SELECT host_id, uuid FROM domains WHERE state = 'running' ORDER BY uuid LIMIT 20",
    )
    .fetch_all(&owner)
    .await?;
    let live = client
        .get(format!("{base}/live"))
        .header("Cookie", &admin)
        .send()
        .await?;
    let mut stream = live.bytes_stream();
    let mut to_event = Vec::new();
    let mut refetch = Vec::new();
    for (i, (host, uuid)) in running.iter().enumerate() {
        for action in ["force_off", "start"] {
            let t = Instant::now();
            let res = client
                .post(format!("{base}/api/vm_action"))
                .header("Cookie", &admin)
                .header("Origin", &base)
                .header("Sec-Fetch-Site", "same-origin")
                .form(&[
                    ("host_id", host.to_string()),
                    ("uuid", uuid.to_string()),
                    ("action", action.to_string()),
                ])
                .send()
                .await?;
            assert!(res.status().is_success(), "{action} #{i}: {}", res.status());
            let want = uuid.to_string();
            loop {
                let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .expect("the event arrives within 5 s")
                    .expect("the stream stays open")?;
                if String::from_utf8_lossy(&chunk).contains(&want) {
                    break;
                }
            }
            to_event.push(t.elapsed().as_secs_f64() * 1000.0);
            let r = Instant::now();
            let res = client
                .post(format!("{base}/api/fleet_dashboard"))
                .header("Cookie", &admin)
                .header("Origin", &base)
                .header("Sec-Fetch-Site", "same-origin")
                .send()
                .await?;
            assert!(res.status().is_success());
            let _ = res.bytes().await?;
            refetch.push(r.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let total: Vec<f64> = to_event.iter().zip(&refetch).map(|(a, b)| a + b).collect();
    println!(
        "action → event on /live: median {:.0} ms, p95 {:.0} ms; + dashboard refetch: median {:.0} ms, max {:.0} ms ({} changes)",
        median(to_event.clone()),
        pct(to_event.clone(), 0.95),
        median(total.clone()),
        pct(total.clone(), 1.0),
        total.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
