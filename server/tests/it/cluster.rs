//! Several replicas on one database: they see each other, a change committed through one
//! reaches the others' caches within a second, cluster-wide work happens once, and a
//! reconnected listener makes pages refetch.

use crate::common::*;
use app::fleet::FleetDashboard;
use app::provisioning::TenantQuotas;
use concierge::platform::clock::Clock;
use futures::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(crate) async fn health(base: &str) -> Value {
    let res = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(res.status(), 200);
    res.json().await.expect("healthz answers JSON")
}

/// The replicas `/healthz` lists as alive, and the one that answered.
pub(crate) fn alive(h: &Value) -> (Vec<Uuid>, Uuid) {
    let ids = h["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["alive"] == true)
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    (ids, h["replica"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn replicas_see_each_other_and_a_stopped_one_is_gone_at_once() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let (ia, ib) = (a.state.replica.id, b.app.state.replica.id);
    assert_ne!(ia, ib);
    let (live, me) = alive(&health(&a.base).await);
    assert_eq!(me, ia);
    assert!(live.contains(&ia) && live.contains(&ib), "{live:?}");
    // The fleet dashboard lists both, marking the one that served the page.
    let admin = a.fleet_admin().await;
    let d: FleetDashboard = admin.call_as("fleet_dashboard", &[]).await.unwrap();
    let this: Vec<_> = d.replicas.iter().filter(|r| r.this).map(|r| r.id).collect();
    assert_eq!(this, [ia]);
    assert!(d
        .replicas
        .iter()
        .all(|r| r.alive && r.version == env!("CARGO_PKG_VERSION")));
    // Health answers without a session, and names no addresses.
    assert!(!health(&a.base).await.to_string().contains("127.0.0.1"));

    b.stop().await;
    let (live, _) = alive(&health(&a.base).await);
    assert_eq!(live, [ia], "a stopped replica is not counted on");
}

/// Two `concierge` processes on one database: a member removed through A is refused by B
/// within a second, and signing out on A ends the session on B as fast (B had both cached).
#[tokio::test]
async fn a_member_removed_through_one_replica_is_refused_on_the_other_within_a_second() {
    let url = fresh_database().await;
    let a = Process::start(&url, "replica A", &[]).await;
    let b = Process::start(&url, "replica B", &[]).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let accounts = Accounts::new(&db).await;
    let t = accounts.tenant("acme").await;
    let user = accounts
        .user("ann@example.com", Some((t, "tenant_admin")))
        .await;
    let on_a = a.client();
    on_a.login("ann@example.com", PASSWORD).await.unwrap();
    // The same browser reaching the other replica (cookies do not depend on the port).
    let on_b = Client {
        http: on_a.http.clone(),
        base: b.base.clone(),
    };
    let tenant = t.to_string();
    let quotas = || async {
        on_b.call_as::<TenantQuotas>("tenant_quotas", &[("tenant_id", &tenant)])
            .await
    };
    // B resolves and caches the actor (several reads, so the cache is warm).
    for _ in 0..3 {
        assert_eq!(quotas().await.unwrap().tenant_id, t);
    }
    let admin = a.admin().await;
    admin
        .call(
            "remove_member",
            &[("tenant_id", &tenant), ("user_id", &user.to_string())],
        )
        .await
        .expect("the fleet admin removes ann on replica A");
    let removed = Instant::now();
    loop {
        match quotas().await {
            Err((status, _)) => {
                assert!(matches!(status, 403 | 404), "{status}");
                break;
            }
            Ok(_) => assert!(
                removed.elapsed() < Duration::from_secs(1),
                "replica B still let ann in {:?} after A removed her",
                removed.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("B refused ann {:?} after A removed her", removed.elapsed());
    // Signing out everywhere on A ends the session on B as well.
    accounts.user("bob@example.com", None).await;
    let on_a = a.client();
    on_a.login("bob@example.com", PASSWORD).await.unwrap();
    let on_b = Client {
        http: on_a.http.clone(),
        base: b.base.clone(),
    };
    assert_eq!(on_b.whoami().await.as_deref(), Some("bob@example.com"));
    on_a.call("logout", &[]).await.expect("bob signs out on A");
    let out = Instant::now();
    while on_b.whoami().await.is_some() {
        assert!(
            out.elapsed() < Duration::from_secs(1),
            "B kept bob's session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill().await;
    b.kill().await;
}

#[tokio::test]
async fn cluster_work_runs_once_whichever_replicas_ask() {
    use concierge::metering::{metrics, usage};
    let a = spawn_app().await;
    let (b, c) = (a.replica().await, a.replica().await);
    let t = a.tenant("acme").await;
    let owner = a.user("ann@example.com", Some((t, "requester"))).await;
    // A running VM whose lease ends in 36 hours: its 7-day reminder is due now, its 1-day
    // reminder after 12 hours, its expiry after 36.
    let start = a.clock.now();
    sqlx::query(
        "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib, phase, lease_ends_at, created_at, updated_at)
         VALUES ($1, $2, $3, 'web-1', 1, 512, 10, 'running', $4, $5, $5)",
    )
    .bind(Uuid::new_v4())
    .bind(t)
    .bind(owner)
    .bind(start + time::Duration::hours(36))
    .bind(start - time::Duration::hours(2))
    .execute(&a.db)
    .await
    .unwrap();
    // 48 simulated hours (one clock for all three, as one database clock would be): at every
    // step the three replicas run their timers' work at the same moment. (Each server's own
    // timers run meanwhile too, whenever they like.)
    let replicas = [&a.state, &b.app.state, &c.app.state];
    for _ in 0..48 {
        a.clock.advance(time::Duration::hours(1));
        let now = a.clock.now();
        let ticks = futures::future::join_all(replicas.iter().map(|s| s.leases.tick())).await;
        assert!(ticks.into_iter().all(|t| t.is_ok()));
        let rolled =
            futures::future::join_all(replicas.iter().map(|s| usage::rollup(&s.pool, now, 24)))
                .await;
        assert!(rolled.into_iter().all(|r| r.is_ok()));
        let rolled = futures::future::join_all(
            replicas
                .iter()
                .map(|s| metrics::rollup(&s.pool, now, metrics::Retention::default())),
        )
        .await;
        assert!(rolled.into_iter().all(|r| r.is_ok()));
    }
    let count = |action: &'static str| {
        let db = a.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log WHERE action = $1")
                .bind(action)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("vm.lease.remind").await,
        2,
        "the 7-day and the 1-day reminder, once each"
    );
    assert_eq!(count("vm.lease.expire").await, 1);
    // Every complete hour of the VM's life rolled up exactly once.
    let (rows, hours): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT hour) FROM usage_hourly")
            .fetch_one(&a.db)
            .await
            .unwrap();
    assert_eq!(rows, hours, "one row per VM and hour");
    assert!(hours >= 48, "{hours} hours rolled up");
    // The monthly totals hold each hour once too.
    let (hourly, monthly): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT sum(vcpu_hours) FROM usage_hourly), (SELECT sum(vcpu_hours) FROM usage_monthly)",
    )
    .fetch_one(&a.db)
    .await
    .unwrap();
    assert!(
        (hourly - monthly).abs() < 1e-6,
        "hourly {hourly} vs monthly {monthly}"
    );
    // The lock itself: while one replica's transaction holds a task, another's turn is
    // skipped; once it ends, the next turn runs.
    use concierge::platform::{cluster, db};
    let mut first = db::begin(&a.state.pool, db::Scope::fleet()).await.unwrap();
    let mut second = db::begin(&b.app.state.pool, db::Scope::fleet())
        .await
        .unwrap();
    assert!(cluster::once(&mut first, "test").await.unwrap());
    assert!(!cluster::once(&mut second, "test").await.unwrap());
    first.commit().await.unwrap();
    second.rollback().await.unwrap();
    let mut third = db::begin(&c.app.state.pool, db::Scope::fleet())
        .await
        .unwrap();
    assert!(cluster::once(&mut third, "test").await.unwrap());
    third.rollback().await.unwrap();
    for r in [b, c] {
        r.stop().await;
    }
}

#[tokio::test]
async fn a_reconnected_listener_makes_open_pages_refetch() {
    let a = spawn_app().await;
    let admin = a.fleet_admin().await;
    let res = admin
        .http
        .get(format!("{}/live", a.base))
        .send()
        .await
        .expect("open /live");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let db_name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&a.db)
        .await
        .unwrap();
    // Cut the server's LISTEN connection, as a PostgreSQL restart or a network blip would.
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&db_name)
    .fetch_one(&a.db)
    .await
    .unwrap();
    assert_eq!(cut, 1, "one listener connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains(r#""kind":"lagged""#) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => {
                panic!("no refetch event after the listener reconnected: {other:?}, got {seen:?}")
            }
        }
    }
}

/// The lease rows: host → (owner, epoch).
async fn leases(app: &TestApp) -> std::collections::HashMap<Uuid, (Option<Uuid>, i64)> {
    sqlx::query_as::<_, (Uuid, Option<Uuid>, i64)>(
        "SELECT host_id, owner, epoch FROM host_leases WHERE expires_at > now()",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(h, o, e)| (h, (o, e)))
    .collect()
}

/// Registers `n` simulated hosts of `domains` domains each (straight into the database, as
/// many at once as an import would) and returns their ids.
async fn simulated_fleet(app: &TestApp, n: usize, domains: usize) -> Vec<Uuid> {
    let dir = std::env::temp_dir().join(format!("concierge-cluster-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let uri = concierge::hypervisor::simulation::write_node(&dir, &format!("c{i:02}"), domains)
            .unwrap();
        ids.push(
            sqlx::query_scalar(
                "INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true) RETURNING id",
            )
            .bind(format!("c{i:02}"))
            .bind(uri)
            .fetch_one(&app.db)
            .await
            .unwrap(),
        );
    }
    ids
}

#[tokio::test]
async fn every_host_has_one_owner_and_a_stopped_replicas_hosts_are_taken_over() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let (ia, ib) = (a.state.replica.id, b.app.state.replica.id);
    let hosts = simulated_fleet(&a, 20, 3).await;
    // Both replicas' rounds (as their timers would run them).
    for _ in 0..2 {
        a.state.hypervisors.claim_now().await.unwrap();
        b.app.state.hypervisors.claim_now().await.unwrap();
    }
    let owned = leases(&a).await;
    for h in &hosts {
        let (owner, _) = owned[h];
        let on_a = a.state.hypervisors.owns(*h);
        let on_b = b.app.state.hypervisors.owns(*h);
        assert!(on_a != on_b, "host {h}: actor on A {on_a}, on B {on_b}");
        assert_eq!(owner, Some(if on_a { ia } else { ib }));
    }
    let on_a = hosts.iter().filter(|h| owned[h].0 == Some(ia)).count();
    assert!(
        on_a > 0 && on_a < 20,
        "rendezvous spreads hosts: {on_a} of 20 on A"
    );
    // Every host inventoried, by whichever replica owns it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.scalar_i64("SELECT count(*) FROM domains").await < 60 {
        assert!(Instant::now() < deadline, "inventory incomplete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let epochs: Vec<i64> =
        sqlx::query_scalar("SELECT lease_epoch FROM hosts WHERE lease_epoch IS NOT NULL")
            .fetch_all(&a.db)
            .await
            .unwrap();
    assert_eq!(epochs.len(), 20, "each host's row written under its lease");

    // B stops (SIGTERM): it hands its leases back and A takes them at its next round.
    let from_b: Vec<Uuid> = hosts
        .iter()
        .copied()
        .filter(|h| owned[h].0 == Some(ib))
        .collect();
    b.stop().await;
    let stopped = Instant::now();
    loop {
        let now = leases(&a).await;
        if hosts
            .iter()
            .all(|h| now.get(h).is_some_and(|(o, _)| *o == Some(ia)))
        {
            for h in &from_b {
                assert!(now[h].1 > owned[h].1, "a takeover raises the epoch");
            }
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "A did not take B's hosts over within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hosts.iter().all(|h| a.state.hypervisors.owns(*h)));
}

#[tokio::test]
async fn a_replica_that_lost_a_lease_writes_nothing_for_the_host_and_steps_down() {
    use concierge::hypervisor::inventory;
    use concierge::platform::cluster::Fence;
    use concierge::platform::error::Error;
    let a = spawn_app().await;
    let hosts = simulated_fleet(&a, 1, 2).await;
    let host = hosts[0];
    a.state.hypervisors.claim_now().await.unwrap();
    assert!(a.state.hypervisors.owns(host));
    let (_, epoch) = leases(&a).await[&host];
    let stale = Fence {
        replica: a.state.replica.id,
        epoch,
    };
    // Another replica takes the host over (as after this one paused past its lease).
    let other = Uuid::new_v4();
    sqlx::query("UPDATE host_leases SET owner = $2, epoch = epoch + 1, expires_at = now() + interval '1 hour' WHERE host_id = $1")
        .bind(host)
        .bind(other)
        .execute(&a.db)
        .await
        .unwrap();
    sqlx::query("UPDATE hosts SET lease_epoch = $2, state = 'connected' WHERE id = $1")
        .bind(host)
        .bind(epoch + 1)
        .execute(&a.db)
        .await
        .unwrap();
    let before = a.snapshot().await;
    // Every kind of write the stale owner's actor makes is refused.
    let pool = &a.state.pool;
    let fenced =
        |r: concierge::platform::error::Result<()>| matches!(r, Err(Error::Fenced(h)) if h == host);
    assert!(fenced(
        concierge::hypervisor::set_host_state(pool, stale, host, "lost", Some("stale")).await
    ));
    let facts = inventory::DomainFacts {
        uuid: Uuid::new_v4(),
        name: "ghost".into(),
        state: "running",
        vcpus: 1,
        memory_kib: 1024,
        disks: Vec::new(),
        nics: Vec::new(),
        observed_at: time::OffsetDateTime::now_utc(),
    };
    assert!(fenced(
        concierge::hypervisor::write_domain(pool, Some(stale), host, &facts).await
    ));
    assert!(fenced(
        concierge::hypervisor::mark_missing(pool, Some(stale), host, facts.uuid).await
    ));
    let sample = concierge::metering::metrics::Sample::default();
    assert!(fenced(
        concierge::metering::metrics::write(
            pool,
            stale,
            host,
            time::OffsetDateTime::now_utc(),
            &sample,
            &[]
        )
        .await
    ));
    let applied = inventory::apply_events(
        pool,
        &[(
            host,
            facts.uuid,
            "shutoff",
            "stopped",
            time::OffsetDateTime::now_utc(),
        )],
        |_| Some(stale),
    )
    .await
    .unwrap();
    assert!(applied.is_empty());
    // The actor still running here steps down: at its next write, or at the next round.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.state.hypervisors.owns(host) {
        assert!(Instant::now() < deadline, "the stale actor kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        before,
        a.snapshot().await,
        "nothing written under the old epoch"
    );
    let written: i64 = sqlx::query_scalar("SELECT lease_epoch FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(written, epoch + 1);
}

#[tokio::test]
async fn actions_on_a_host_owned_by_another_replica_run_on_their_own_connection() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let admin = a.fleet_admin().await;
    // test:///default is one shared test driver per process: both replicas see one host.
    let host: app::fleet::HostSummary = admin
        .call_as(
            "register_host",
            &[
                ("name", "shared"),
                ("uri", "test:///default"),
                ("schedulable", "true"),
            ],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        a.state.hypervisors.claim_now().await.unwrap();
        b.app.state.hypervisors.claim_now().await.unwrap();
    }
    let (owner, visitor) = if a.state.hypervisors.owns(host.id) {
        (&a, &b.app)
    } else {
        (&b.app, &a)
    };
    assert!(owner.state.hypervisors.owns(host.id) && !visitor.state.hypervisors.owns(host.id));
    let domain: Uuid = loop {
        let found: Option<Uuid> =
            sqlx::query_scalar("SELECT uuid FROM domains WHERE host_id = $1 AND state = 'running'")
                .bind(host.id)
                .fetch_optional(&a.db)
                .await
                .unwrap();
        if let Some(d) = found {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A libvirt call from the replica that does not own the host.
    let name = visitor
        .state
        .hypervisors
        .call(host.id, move |conn| {
            conn.lookup_domain_by_uuid(domain)?.name()
        })
        .await
        .unwrap();
    assert_eq!(name, "test");
    // A lifecycle action from there: when it answers, the owner has already re-read the row.
    visitor
        .state
        .hypervisors
        .lifecycle(
            host.id,
            domain,
            concierge::hypervisor::connection::Action::Suspend,
        )
        .await
        .unwrap();
    let state: String =
        sqlx::query_scalar("SELECT state FROM domains WHERE host_id = $1 AND uuid = $2")
            .bind(host.id)
            .bind(domain)
            .fetch_one(&a.db)
            .await
            .unwrap();
    let seen_by_owner = owner
        .state
        .hypervisors
        .call(host.id, move |conn| {
            conn.lookup_domain_by_uuid(domain)?.state().map(|s| s.0)
        })
        .await
        .unwrap();
    let seen_by_visitor = visitor
        .state
        .hypervisors
        .call(host.id, move |conn| {
            conn.lookup_domain_by_uuid(domain)?.state().map(|s| s.0)
        })
        .await
        .unwrap();
    assert_eq!(
        state, "paused",
        "owner sees {seen_by_owner:?}, visitor {seen_by_visitor:?}"
    );
    visitor
        .state
        .hypervisors
        .lifecycle(
            host.id,
            domain,
            concierge::hypervisor::connection::Action::Resume,
        )
        .await
        .unwrap();
    b.stop().await;
}

/// Sends `signal` (KILL, STOP, CONT) to a child process.
pub(crate) fn signal(p: &Process, signal: &str) {
    let pid = p.child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Valid leases: host → (owner, epoch), read until `done` says yes or `within` passes.
pub(crate) async fn leases_until(
    db: &sqlx::PgPool,
    within: Duration,
    what: &str,
    done: impl Fn(&std::collections::HashMap<Uuid, (Uuid, i64)>) -> bool,
) -> (std::collections::HashMap<Uuid, (Uuid, i64)>, Duration) {
    let started = Instant::now();
    loop {
        let now: std::collections::HashMap<Uuid, (Uuid, i64)> =
            sqlx::query_as::<_, (Uuid, Uuid, i64)>(
                "SELECT host_id, owner, epoch FROM host_leases WHERE owner IS NOT NULL AND expires_at > now()",
            )
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|(h, o, e)| (h, (o, e)))
            .collect();
        if done(&now) {
            return (now, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three `concierge` processes on `url` (the first migrates; the others start against a
/// migrated database), their replica ids, and a small pool of the test's own.
pub(crate) async fn three_replicas(
    url: &str,
    env: &[(&str, &str)],
) -> (Vec<Process>, Vec<Uuid>, sqlx::PgPool) {
    let mut procs = vec![Process::start(url, "replica 1", env).await];
    for i in 2..=3 {
        procs.push(Process::start(url, &format!("replica {i}"), env).await);
    }
    let mut ids = Vec::new();
    for p in &procs {
        ids.push(alive(&health(&p.base).await).1);
    }
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap();
    (procs, ids, db)
}

/// Three `concierge` processes on one database and twenty simulated hosts: a replica killed
/// outright loses its hosts to the others within 10 s; one paused past its lease (SIGSTOP)
/// is taken over, and once resumed writes nothing under its old epoch and steps down.
#[tokio::test]
async fn real_replicas_take_over_a_killed_ones_hosts_and_fence_a_paused_one() {
    let url = fresh_database().await;
    let fleet =
        std::env::temp_dir().join(format!("concierge-replicas-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&fleet).unwrap();
    let fleet_dir = fleet.to_str().unwrap().to_string();
    let env = [
        ("CONCIERGE_LOCAL_HOST", "false"),
        ("CONCIERGE_SIMULATED_FLEETS_DIR", fleet_dir.as_str()),
        ("CONCIERGE_RECONCILE_SECONDS", "2"),
        ("CONCIERGE_SAMPLE_SECONDS", "2"),
        ("CONCIERGE_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let (mut procs, ids, db) = three_replicas(&url, &env).await;
    let mut hosts = Vec::new();
    for i in 0..20 {
        let uri =
            concierge::hypervisor::simulation::write_node(&fleet, &format!("r{i:02}"), 2).unwrap();
        hosts.push(
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true) RETURNING id",
            )
            .bind(format!("r{i:02}"))
            .bind(uri)
            .fetch_one(&db)
            .await
            .unwrap(),
        );
    }
    // Every host owned by one of the three, each running some.
    let all_owned = |l: &std::collections::HashMap<Uuid, (Uuid, i64)>, by: &[Uuid]| {
        hosts
            .iter()
            .all(|h| l.get(h).is_some_and(|(o, _)| by.contains(o)))
    };
    let (owned, _) = leases_until(&db, Duration::from_secs(15), "first claims", |l| {
        all_owned(l, &ids) && ids.iter().all(|r| l.values().any(|(o, _)| o == r))
    })
    .await;
    for (i, p) in procs.iter().enumerate() {
        let h = health(&p.base).await;
        let mine = h["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["this"] == true)
            .unwrap()["hosts"]
            .as_i64()
            .unwrap();
        let by_lease = owned.values().filter(|(o, _)| *o == ids[i]).count() as i64;
        assert_eq!(mine, by_lease, "replica {} counts its own hosts", i + 1);
    }

    // kill -9 the first: its hosts go to the other two within 10 s.
    let killed = ids[0];
    let its: Vec<Uuid> = hosts
        .iter()
        .copied()
        .filter(|h| owned[h].0 == killed)
        .collect();
    signal(&procs[0], "KILL");
    let (after_kill, took) = leases_until(
        &db,
        Duration::from_secs(10),
        "takeover after kill -9",
        |l| all_owned(l, &ids[1..]),
    )
    .await;
    for h in &its {
        assert!(after_kill[h].1 > owned[h].1, "a takeover raises the epoch");
    }
    eprintln!("takeover of {} hosts after kill -9: {took:?}", its.len());

    // SIGSTOP the second past its lease: the third takes everything.
    let paused = ids[1];
    let paused_hosts: Vec<Uuid> = hosts
        .iter()
        .copied()
        .filter(|h| after_kill[h].0 == paused)
        .collect();
    signal(&procs[1], "STOP");
    let (taken, took) = leases_until(
        &db,
        Duration::from_secs(12),
        "takeover of a paused replica",
        |l| all_owned(l, &ids[2..]),
    )
    .await;
    eprintln!(
        "takeover of {} hosts from a paused replica: {took:?}",
        paused_hosts.len()
    );
    // Let the new owner write its epoch into the hosts' rows, then resume the paused one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&procs[1], "CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Whatever the resumed replica tried to write for its old hosts was refused: no host row
    // carries an epoch older than its takeover.
    for h in &paused_hosts {
        let written: Option<i64> =
            sqlx::query_scalar("SELECT lease_epoch FROM hosts WHERE id = $1")
                .bind(h)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(
            written.is_some_and(|e| e >= taken[h].1),
            "host {h}: row written under epoch {written:?} after the takeover at epoch {}",
            taken[h].1
        );
    }
    let log = procs[1].log();
    assert!(
        log.contains("steps down") || log.contains("lost the host's lease"),
        "the resumed replica says it stepped down:\n{log}"
    );
    // Back and beating, it gets its share again; every host has one live owner.
    let live = [ids[1], ids[2]];
    leases_until(
        &db,
        Duration::from_secs(15),
        "rebalance after resume",
        |l| all_owned(l, &live) && l.values().any(|(o, _)| *o == paused),
    )
    .await;
    for p in procs.drain(..) {
        p.kill().await;
    }
}

/// A replica paused inside a transaction keeps its row locks: here the test opens that
/// transaction as the replica would (same `application_name`, the lease row taken FOR SHARE as
/// its host actor does while writing) and pauses the replica. The other replica ends the gone
/// replica's sessions and takes the host over; without that, its claim waits for ever.
#[tokio::test]
async fn a_paused_replicas_open_transaction_does_not_keep_its_hosts() {
    let url = fresh_database().await;
    let fleet = std::env::temp_dir().join(format!("concierge-paused-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&fleet).unwrap();
    let fleet_dir = fleet.to_str().unwrap().to_string();
    let env = [
        ("CONCIERGE_SIMULATED_FLEETS_DIR", fleet_dir.as_str()),
        ("CONCIERGE_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let a = Process::start(&url, "replica A", &env).await;
    let b = Process::start(&url, "replica B", &env).await;
    let (ida, idb) = (
        alive(&health(&a.base).await).1,
        alive(&health(&b.base).await).1,
    );
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    for i in 0..6 {
        let uri =
            concierge::hypervisor::simulation::write_node(&fleet, &format!("p{i:02}"), 1).unwrap();
        sqlx::query("INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true)")
            .bind(format!("p{i:02}"))
            .bind(uri)
            .execute(&db)
            .await
            .unwrap();
    }
    let (owned, _) = leases_until(&db, Duration::from_secs(15), "first claims", |l| {
        l.len() == 6
    })
    .await;
    // Pause the owner of one of them (rendezvous hashing may give one replica all six).
    let (&host, &(owner, _)) = owned.iter().next().unwrap();
    let (paused, other, idp, ido) = if owner == ida {
        (&a, &b, ida, idb)
    } else {
        (&b, &a, idb, ida)
    };

    // A's write in flight: its session, the lease row held FOR SHARE, never finished.
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut stuck = sqlx::ConnectOptions::connect(
        &options.application_name(&concierge::platform::cluster::application_name(idp)),
    )
    .await
    .unwrap();
    sqlx::Executor::execute(&mut stuck, "BEGIN").await.unwrap();
    sqlx::query("SELECT epoch FROM host_leases WHERE host_id = $1 FOR SHARE")
        .bind(host)
        .fetch_one(&mut stuck)
        .await
        .unwrap();
    signal(paused, "STOP");
    let (after, took) = leases_until(&db, Duration::from_secs(15), "takeover", |l| {
        l.get(&host).is_some_and(|(o, _)| *o == ido)
    })
    .await;
    assert!(after[&host].1 > owned[&host].1);
    eprintln!("host taken over {took:?} after the pause");
    // The gone replica's session was ended (its transaction, and its lock, with it).
    assert!(
        sqlx::query("SELECT 1").fetch_one(&mut stuck).await.is_err(),
        "the paused replica's session still answers"
    );
    signal(paused, "CONT");
    let _ = other;
    a.kill().await;
    b.kill().await;
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two real replicas behind HAProxy (Debian's, on loopback), a steady load of signed-in page
/// requests, and a rolling restart: each replica in turn gets SIGTERM, is waited for, and
/// is started again on its port. Not one request fails.
#[tokio::test]
async fn a_rolling_restart_behind_haproxy_fails_no_request() {
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("HAProxy is not installed (scripts/test installs Debian's haproxy)");
    let url = fresh_database().await;
    let ports = [free_port(), free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let start = |i: usize| {
        let (url, listen) = (url.clone(), listen[i].clone());
        async move {
            let env = [
                ("CONCIERGE_LISTEN", listen.as_str()),
                ("CONCIERGE_LOCAL_HOST", "false"),
                ("CONCIERGE_SHUTDOWN_DRAIN_SECONDS", "2"),
                ("CONCIERGE_SHUTDOWN_GRACE_SECONDS", "5"),
            ];
            Process::start(&url, &format!("replica {}", i + 1), &env).await
        }
    };
    let mut replicas = vec![start(0).await, start(1).await];
    let front = free_port();
    let dir = std::env::temp_dir().join(format!("concierge-haproxy-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             \x20 retries 3\n  option redispatch\n  retry-on conn-failure\n\
             frontend portal\n  bind 127.0.0.1:{front}\n  default_backend replicas\n\
             backend replicas\n  option httpchk GET /healthz\n  http-check expect status 200\n\
             \x20 default-server inter 300ms fall 1 rise 2\n\
             \x20 server r1 {} check\n  server r2 {} check\n",
            listen[0], listen[1]
        ),
    )
    .unwrap();
    let mut lb = tokio::process::Command::new(haproxy)
        .args(["-f", cfg.to_str().unwrap(), "-db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    let base = format!("http://127.0.0.1:{front}");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET must_change_password = false")
        .execute(&db)
        .await
        .unwrap();
    // HAProxy up, both replicas in its rotation (two good checks each).
    let up = Instant::now();
    while reqwest::get(format!("{base}/healthz"))
        .await
        .map(|r| r.status())
        .ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "HAProxy did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Signed in through the load balancer (the session lives in PostgreSQL).
    let admin = Client::new(&base);
    admin
        .login("admin@concierge.local", ADMIN_PASSWORD)
        .await
        .expect("signing in through HAProxy");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (admin, stop, base) = (admin.clone(), stop.clone(), base.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match admin.http.get(format!("{base}/account")).send().await {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) if body.contains("Sign out") => ok += 1,
                        Ok(_) => failed.push("a page without the signed-in navigation".to_string()),
                        Err(e) => failed.push(format!("body: {e}")),
                    },
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("{e}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        let old = replicas.remove(0);
        signal(&old, "TERM");
        let mut old = old;
        let exited = tokio::time::timeout(Duration::from_secs(20), old.child.wait())
            .await
            .unwrap_or_else(|_| panic!("replica {} did not stop within 20 s", i + 1))
            .unwrap();
        assert!(exited.success(), "replica {} stopped with {exited}", i + 1);
        let log = old.log();
        assert!(log.contains("draining"), "{log}");
        replicas.push(start(i).await);
        // Back in HAProxy's rotation (two good checks) before the next one goes.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    let _ = lb.kill().await;
    assert!(ok > 100, "only {ok} pages served");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(10)]
    );
    eprintln!("rolling restart behind HAProxy: {ok} pages served, none failed");
    for r in replicas {
        r.kill().await;
    }
}
