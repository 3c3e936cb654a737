//! Approval → running on a real hypervisor with 20 requests in flight: an in-process server
//! (8 job workers) on a fresh database, a dir pool with a blank qcow2 base image, a template,
//! and 20 one-VM requests submitted at once under a policy that approves them automatically.
//! The time of each VM is from its request's approval to its "running" line in the request
//! log (both written by the server). Everything created is deleted at the end.
//!
//!   scripts/libvirtd   # once: libvirtd + QEMU
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench provision
//!
//! CONCIERGE_BENCH_URI picks another hypervisor (default qemu:///system), PROVISION_BENCH_WORKERS
//! the number of job workers (default 8, the server's default); ROUNDS rounds.
use concierge::config::Config;
use concierge::platform::clock::SystemClock;
use concierge::Server;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const IN_FLIGHT: usize = 20;
const ROUNDS: usize = 3;

mod portal;
use portal::{cleanup, pct, Client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let uri = std::env::var("CONCIERGE_BENCH_URI").unwrap_or_else(|_| "qemu:///system".into());
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
    config.admin_password = Some("bench-admin-password".into());
    // The server's default (8) unless PROVISION_BENCH_WORKERS says otherwise.
    if let Some(n) = std::env::var("PROVISION_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.job_workers = n;
    } else {
        config.job_workers = 8;
    }
    // This machine has 2 cores: at the default overcommit (4) only 8 one-vCPU VMs fit, and
    // the other 12 would wait for room. The benchmark measures provisioning, not placement.
    config.vcpu_overcommit = 16.0;
    config.db_connections = 24;
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let base_url = format!("http://{}", server.addr);
    let state = server.state.clone();
    tokio::spawn(server.run());
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sqlx::query("UPDATE users SET must_change_password = false")
        .execute(&owner)
        .await?;
    let client = Client {
        http: reqwest::Client::builder().cookie_store(true).build()?,
        base: base_url,
    };
    client
        .call(
            "login",
            &[
                ("email", "admin@concierge.local"),
                ("password", "bench-admin-password"),
            ],
        )
        .await?;
    let host = client
        .call(
            "register_host",
            &[("name", "bench"), ("uri", &uri), ("schedulable", "true")],
        )
        .await?["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pool = "concierge-bench";
    let dir = "/var/lib/libvirt/concierge-bench";
    let _ = client
        .call(
            "create_pool",
            &[("host_id", &host), ("name", pool), ("path", dir)],
        )
        .await;
    let _ = client
        .call(
            "create_volume",
            &[
                ("host_id", &host),
                ("pool", pool),
                ("name", "bench-base.qcow2"),
                ("kind", "blank"),
                ("capacity_gib", "1"),
                ("source", ""),
            ],
        )
        .await;
    let _ = state.hypervisors.reconcile(host.parse()?).await;
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ('Bench') RETURNING id")
            .fetch_one(&owner)
            .await?;
    sqlx::query("UPDATE tenant_quotas SET max_vcpus = 1000, max_memory_mib = 10000000, max_disk_gib = 100000, max_vms = 1000 WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&owner)
        .await?;
    sqlx::query("UPDATE approval_policies SET auto_max_count = 1, auto_max_vcpus = 2, auto_max_memory_mib = 4096, auto_max_lease_days = 30 WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&owner)
        .await?;
    let template = client
        .call(
            "save_template",
            &[
                ("name", "Bench"),
                ("os", "none"),
                ("sizes", "tiny 1 0.25 1"),
                ("default_lease_days", "1"),
                ("max_lease_days", "1"),
                ("tenants", "*"),
                ("image_host", &host),
                ("image_pool", pool),
                ("image_volume", "bench-base.qcow2"),
            ],
        )
        .await?
        .as_str()
        .unwrap()
        .to_string();
    client
        .call(
            "publish_template",
            &[("id", &template), ("published", "true")],
        )
        .await?;
    sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) SELECT $1, id, 'requester' FROM users",
    )
    .bind(tenant)
    .execute(&owner)
    .await?;
    // The membership is new: sign in again so the session carries it.
    client
        .call(
            "login",
            &[
                ("email", "admin@concierge.local"),
                ("password", "bench-admin-password"),
            ],
        )
        .await?;

    let t = tenant.to_string();
    let mut all = Vec::new();
    for round in 0..ROUNDS {
        let submits: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let prefix = format!("bench-{round}-{i}");
                let (client, t, template) = (&client, t.clone(), template.clone());
                async move {
                    client
                        .call(
                            "submit_request",
                            &[
                                ("tenant_id", &t),
                                ("template_id", &template),
                                ("size", "tiny"),
                                ("count", "1"),
                                ("name_prefix", &prefix),
                                ("lease_days", "1"),
                                ("purpose", "benchmark"),
                            ],
                        )
                        .await
                }
            })
            .collect();
        for r in futures::future::join_all(submits).await {
            r?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM requests WHERE name_prefix LIKE $1 AND state IN ('fulfilled', 'failed')",
            )
            .bind(format!("bench-{round}-%"))
            .fetch_one(&owner)
            .await?;
            if done as usize == IN_FLIGHT {
                break;
            }
            if std::time::Instant::now() > deadline {
                cleanup(&client, &owner, &host).await;
                anyhow::bail!("round {round} did not finish");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut secs: Vec<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM (max(e.at) FILTER (WHERE e.kind = 'running') - min(e.at) FILTER (WHERE e.kind = 'approved')))::float8
             FROM requests r JOIN request_events e ON e.request_id = r.id
             WHERE r.name_prefix LIKE $1 GROUP BY r.id",
        )
        .bind(format!("bench-{round}-%"))
        .fetch_all(&owner)
        .await?;
        secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "round {round}: {IN_FLIGHT} VMs approval→running p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            pct(&secs, 0.5),
            pct(&secs, 0.99),
            pct(&secs, 1.0)
        );
        all.extend(secs);
        // Where the time went: the median of each step, from the request log's lines.
        let steps: Vec<(String, f64)> = sqlx::query_as(
            "WITH t AS (SELECT e.request_id, e.kind, min(e.at) AS at FROM request_events e
                        JOIN requests r ON r.id = e.request_id WHERE r.name_prefix LIKE $1
                        GROUP BY 1, 2),
                  s(kind, prev, ord) AS (VALUES ('placed', 'approved', 1), ('cloning', 'placed', 2),
                        ('defining', 'cloning', 3), ('starting', 'defining', 4), ('running', 'starting', 5))
             SELECT s.prev || ' → ' || s.kind,
                    (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM b.at - a.at)))::float8
             FROM s JOIN t b ON b.kind = s.kind JOIN t a ON a.kind = s.prev AND a.request_id = b.request_id
             GROUP BY s.prev, s.kind, s.ord ORDER BY s.ord",
        )
        .bind(format!("bench-{round}-%"))
        .fetch_all(&owner)
        .await?;
        let steps: Vec<String> = steps
            .iter()
            .map(|(step, secs)| format!("{step} {secs:.2} s"))
            .collect();
        let slowest: Vec<(String, f64)> = sqlx::query_as(
            "WITH r AS (SELECT r.id FROM requests r JOIN request_events e ON e.request_id = r.id
                        WHERE r.name_prefix LIKE $1 GROUP BY r.id
                        ORDER BY max(e.at) FILTER (WHERE e.kind = 'running') - min(e.at) FILTER (WHERE e.kind = 'approved') DESC LIMIT 1),
                  e AS (SELECT e.kind, e.at, lag(e.at) OVER (ORDER BY e.id) AS prev FROM request_events e JOIN r ON r.id = e.request_id)
             SELECT kind, coalesce(extract(epoch FROM at - prev), 0)::float8 FROM e",
        )
        .bind(format!("bench-{round}-%"))
        .fetch_all(&owner)
        .await?;
        let slowest: Vec<String> = slowest
            .iter()
            .map(|(kind, secs)| format!("{kind} +{secs:.2}"))
            .collect();
        println!("         slowest: {}", slowest.join(", "));
        let (retried, waited): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs j JOIN vms v ON v.uuid = j.key JOIN requests r ON r.id = v.request_id
                     WHERE j.kind = 'provision' AND j.attempts > 1 AND r.name_prefix LIKE $1),
                    (SELECT count(*) FROM request_events e JOIN requests r ON r.id = e.request_id
                     WHERE e.kind = 'waiting' AND r.name_prefix LIKE $1)",
        )
        .bind(format!("bench-{round}-%"))
        .fetch_one(&owner)
        .await?;
        println!(
            "         step medians: {}; jobs retried: {retried}; waited for room: {waited}",
            steps.join(", ")
        );
        cleanup(&client, &owner, &host).await;
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "all {} VMs: approval→running p50 {:.2} s, p99 {:.2} s",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
    let _ = client
        .call(
            "delete_volume",
            &[
                ("host_id", &host),
                ("pool", pool),
                ("name", "bench-base.qcow2"),
            ],
        )
        .await;
    state.hypervisors.stop_all();
    owner.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    Ok(())
}
